/**
 * Two `stacyvm serve` processes (cp-a, cp-b) and two `stacyvm worker`
 * processes (w1, w2) on one Postgres database, all on 127.0.0.1, as a user
 * runs them. w1 heartbeats through a failover proxy (a load balancer in
 * front of cp-a, then cp-b), w2 straight to cp-b. cp-a serves its own
 * worker to the other control planes (worker.listen_addr); cp-b does not.
 *
 * Sandboxes are spawned through cp-a and driven through cp-b; an SSE
 * subscriber on cp-b sees cp-a's spawns. Then cp-a is SIGKILLed: cp-b keeps
 * serving every remote sandbox, takes the sweeps over (reaper and liveness),
 * and the lease rows stay single-holder with generations that never go back.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from 'vitest';
import type { FailoverProxy } from '../support/failover-proxy.js';
import { startFailoverProxy } from '../support/failover-proxy.js';
import type { TestDatabase } from '../support/pg-cluster.js';
import { createTestDatabase, withAdmin } from '../support/pg-cluster.js';
import type { ServerProcess } from './server-process.js';
import { CLI, cleanup, serverEnv, startServer, tempDir } from './server-process.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');

const secret = (): string => randomBytes(24).toString('hex');
const API_KEY = secret();
const ADMIN_KEY = secret();
const WORKER_TOKEN = secret();
const CP_A_TOKEN = secret();
const CP_B_TOKEN = secret();
const STALE_AFTER = '4s';
const SWEEP_INTERVAL = '500ms';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are asserted on loosely
type Json = any;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `get` returns a value; fails after `ms`, saying what it waited for. */
async function until<T>(
  what: string,
  get: () => T | undefined | Promise<T | undefined>,
  ms = 20_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
}

interface Answer {
  status: number;
  body: Json;
  text: string;
  type: string;
}

async function call(base: string, method: string, path: string, body?: unknown): Promise<Answer> {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: {
      'x-api-key': API_KEY,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let parsed: Json;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, body: parsed, text, type: res.headers.get('content-type') ?? '' };
}

/** Runs a streamed exec and returns its stdout and exit code from the NDJSON lines. */
async function streamExec(base: string, id: string, command: string) {
  const r = await call(base, 'POST', `/sandboxes/${id}/exec`, { command, stream: true });
  expect(r.status, r.text).toBe(200);
  expect(r.type).toContain('application/x-ndjson');
  let stdout = '';
  let exitCode: number | undefined;
  for (const line of r.text.split('\n').filter((l) => l.trim() !== '')) {
    const ev = JSON.parse(line) as { stream: string; data?: string; exit_code?: number };
    if (ev.stream === 'stdout') stdout += ev.data ?? '';
    if (ev.stream === 'exit') exitCode = ev.exit_code;
  }
  return { stdout, exitCode };
}

interface WorkerProcess {
  child: ChildProcess;
  logs(): string;
  stop(): Promise<void>;
}

function startWorker(id: string, controlPlaneUrl: string, dir: string): WorkerProcess {
  const env = serverEnv(dir, {
    STACYVM_WORKER_ID: id,
    STACYVM_WORKER_CONTROL_PLANE_URL: controlPlaneUrl,
    STACYVM_WORKER_LISTEN_ADDR: '127.0.0.1:0',
    STACYVM_WORKER_HEARTBEAT_INTERVAL: '500ms',
    STACYVM_WORKER_SHUTDOWN_TIMEOUT: '2s',
    STACYVM_AUTH_WORKER_TOKEN: WORKER_TOKEN,
    STACYVM_PROVIDERS_DEFAULT: 'mock',
    STACYVM_PROVIDERS_MOCK_BASE_DIR: join(dir, `mock-${id}`),
    STACYVM_PREVIEW_ENABLED: 'false',
  });
  const child = spawn(process.execPath, [CLI, 'worker'], {
    cwd: dir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    logs: () => out,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

interface LeaseRow {
  resource_id: string;
  holder_id: string;
  generation: string;
  expires_at: string;
}

describe.skipIf(adminDsn === '')(
  `two control planes and two workers on one postgres${skipReason ? ` (${skipReason})` : ''}`,
  () => {
    let db: TestDatabase;
    let dir: string;
    let proxy: FailoverProxy;
    let cpA: ServerProcess;
    let cpB: ServerProcess;
    const workers: WorkerProcess[] = [];
    const ids: Record<'local' | 's1' | 's2', string> = { local: '', s1: '', s2: '' };
    const sse = { text: '', abort: new AbortController() };
    let leasesBefore = new Map<string, number>();

    const cpEnv = (id: string, extra: Record<string, string>): Record<string, string> => ({
      STACYVM_DATABASE_DRIVER: 'postgres',
      STACYVM_DATABASE_DSN: db.dsn,
      STACYVM_AUTH_API_KEY: API_KEY,
      STACYVM_AUTH_ADMIN_API_KEY: ADMIN_KEY,
      STACYVM_AUTH_WORKER_TOKEN: WORKER_TOKEN,
      // Each control plane's own worker opens only to its own entry (the same list everywhere).
      STACYVM_AUTH_WORKER_TOKENS: `cp-a=${CP_A_TOKEN},cp-b=${CP_B_TOKEN}`,
      STACYVM_SERVER_LOCAL_WORKER_ID: id,
      STACYVM_SERVER_REAPER_INTERVAL: SWEEP_INTERVAL,
      STACYVM_SERVER_WORKER_STALE_AFTER: STALE_AFTER,
      STACYVM_PROVIDERS_DEFAULT: 'mock',
      STACYVM_PREVIEW_ENABLED: 'false',
      ...extra,
    });

    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'multicp');
      dir = tempDir();
      proxy = await startFailoverProxy();
      cpA = await startServer({
        env: cpEnv('cp-a', {
          // Serve cp-a's own worker to cp-b; it takes one sandbox, then placement moves on.
          STACYVM_WORKER_LISTEN_ADDR: '127.0.0.1:0',
          STACYVM_SERVER_LOCAL_WORKER_MAX_SANDBOXES: '1',
        }),
      });
      // cp-a starts first, so it is the one that takes the sweeps.
      await until('cp-a leads the sweeps', () =>
        cpA.logs().includes('this control plane now runs the reaper and liveness sweeps')
          ? true
          : undefined,
      );
      cpB = await startServer({ env: cpEnv('cp-b', {}) });
      proxy.setBackends([cpA.url, cpB.url]);
      workers.push(startWorker('w1', proxy.url, dir), startWorker('w2', cpB.url, dir));
      for (const w of ['w1', 'w2']) {
        await until(`${w} registered with an rpc_url`, async () => {
          const r = await call(cpB.url, 'GET', `/workers/${w}`);
          return r.status === 200 && r.body.status === 'online' && r.body.capacity?.rpc_url
            ? true
            : undefined;
        });
      }
      // An SSE subscriber on cp-b, reading for the whole test.
      void fetch(`${cpB.url}/api/v1/events`, {
        headers: { 'x-api-key': API_KEY },
        signal: sse.abort.signal,
      })
        .then(async (res) => {
          const reader = res.body!.getReader();
          const dec = new TextDecoder();
          for (;;) {
            const { done, value } = await reader.read();
            if (done) return;
            sse.text += dec.decode(value, { stream: true });
          }
        })
        .catch(() => undefined);
      await until('SSE connected', () => (sse.text.includes(': connected') ? true : undefined));
    }, 90_000);

    afterAll(async () => {
      sse.abort.abort();
      await Promise.all(workers.map((w) => w.stop()));
      await cpB?.stop();
      await cpA?.stop('SIGKILL');
      await proxy?.close();
      if (cpA !== undefined) cleanup(cpA.dir);
      if (cpB !== undefined) cleanup(cpB.dir);
      if (dir !== undefined) cleanup(dir);
      await db?.drop();
    }, 60_000);

    const dumpLogs = (): void => {
      onTestFailed(() => {
        const tail = (s: string) => s.split('\n').slice(-40).join('\n');
        process.stderr.write(
          `--- cp-a\n${tail(cpA.logs())}\n--- cp-b\n${tail(cpB.logs())}\n` +
            `--- w1\n${tail(workers[0]?.logs() ?? '')}\n--- w2\n${tail(workers[1]?.logs() ?? '')}\n`,
        );
      });
    };

    const sseEvents = (): Array<{ id: string; type: string; sandbox_id?: string }> =>
      sse.text
        .split('\n')
        .filter((l) => l.startsWith('data: '))
        .map((l) => JSON.parse(l.slice(6)) as { id: string; type: string; sandbox_id?: string });

    async function leases(): Promise<Map<string, LeaseRow[]>> {
      const rows = await withAdmin(db.dsn, async (c) => {
        const r = await c.query<LeaseRow>(
          'select resource_id, holder_id, generation, expires_at from leases',
        );
        return r.rows;
      });
      const by = new Map<string, LeaseRow[]>();
      for (const row of rows) by.set(row.resource_id, [...(by.get(row.resource_id) ?? []), row]);
      return by;
    }

    /** Every running sandbox has exactly one lease row, held by its worker and unexpired. */
    async function checkLeases(): Promise<Map<string, number>> {
      const sandboxes = await withAdmin(db.dsn, async (c) => {
        const r = await c.query<{ id: string; worker_id: string }>(
          "select id, worker_id from sandboxes where state = 'running'",
        );
        return r.rows;
      });
      const all = await leases();
      const gens = new Map<string, number>();
      for (const [resource, rows] of all) {
        expect(rows, `lease rows of ${resource}`).toHaveLength(1);
        gens.set(resource, Number(rows[0]!.generation));
      }
      const now = Date.now();
      for (const s of sandboxes) {
        const rows = all.get(s.id) ?? [];
        expect(rows, `lease of ${s.id}`).toHaveLength(1);
        expect(rows[0]!.holder_id, `holder of ${s.id}`).toBe(s.worker_id);
        expect(Number(rows[0]!.expires_at), `expiry of ${s.id}`).toBeGreaterThan(now);
      }
      return gens;
    }

    it('spawns through cp-a on its own worker and on both remote workers', async () => {
      dumpLogs();
      const spawnA = async () => {
        const r = await call(cpA.url, 'POST', '/sandboxes', { provider: 'mock', ttl: '10m' });
        expect(r.status, r.text).toBe(201);
        return r.body as { id: string; worker_id: string };
      };
      const local = await spawnA();
      expect(local.worker_id).toBe('cp-a');
      const s1 = await spawnA();
      const s2 = await spawnA();
      // cp-a's own worker is full (1), cp-b's is unreachable from cp-a: the least-loaded remote, by id.
      expect([s1.worker_id, s2.worker_id]).toEqual(['w1', 'w2']);
      ids.local = local.id;
      ids.s1 = s1.id;
      ids.s2 = s2.id;
    });

    it('cp-b serves every one of them: get, exec, stream, files', async () => {
      dumpLogs();
      for (const [name, id] of Object.entries(ids)) {
        const got = await call(cpB.url, 'GET', `/sandboxes/${id}`);
        expect(got.status, `${name}: ${got.text}`).toBe(200);
        expect(got.body.state).toBe('running');
        const exec = await call(cpB.url, 'POST', `/sandboxes/${id}/exec`, {
          command: `echo ${name} via cp-b`,
        });
        expect(exec.status, exec.text).toBe(200);
        expect(exec.body).toMatchObject({ exit_code: 0, stdout: `${name} via cp-b\n` });
        const streamed = await streamExec(cpB.url, id, 'printf "line 1\\nline 2\\n"');
        expect(streamed).toEqual({ stdout: 'line 1\nline 2\n', exitCode: 0 });
        const put = await call(cpB.url, 'POST', `/sandboxes/${id}/files`, {
          path: '/workspace/note.txt',
          content: `${name} note`,
        });
        expect(put.status, put.text).toBe(200);
        const read = await call(cpA.url, 'GET', `/sandboxes/${id}/files?path=/workspace/note.txt`);
        expect(read.text).toBe(`${name} note`);
      }
    });

    it('an SSE subscriber on cp-b saw the spawns made through cp-a, with cp-b’s own ids', async () => {
      dumpLogs();
      for (const id of Object.values(ids)) {
        await until(`sandbox.created of ${id} on cp-b`, () =>
          sseEvents().some((e) => e.type === 'sandbox.created' && e.sandbox_id === id)
            ? true
            : undefined,
        );
      }
      const seen = sseEvents().map((e) => Number(e.id.slice(4)));
      expect(seen).toEqual([...seen].sort((x, y) => x - y));
      expect(new Set(seen).size).toBe(seen.length);
    });

    it('only the leader (cp-a) runs the full reaper sweep while both run', async () => {
      dumpLogs();
      const r = await call(cpB.url, 'POST', '/sandboxes', { provider: 'mock', ttl: '1s' });
      expect(r.status, r.text).toBe(201);
      // cp-b places on its own worker first; that one is cp-b's to reap whoever leads.
      const first = r.body as { id: string; worker_id: string };
      expect(first.worker_id).toBe('cp-b');
      const onRemote = await call(cpA.url, 'POST', '/sandboxes', { provider: 'mock', ttl: '1s' });
      expect(onRemote.status, onRemote.text).toBe(201);
      expect(['w1', 'w2']).toContain(onRemote.body.worker_id);
      for (const id of [first.id, onRemote.body.id as string]) {
        await until(`${id} reaped`, async () =>
          (await call(cpB.url, 'GET', `/sandboxes/${id}`)).status === 404 ? true : undefined,
        );
      }
      // The sweep logs once it is done, which may be just after the record reads 404.
      await until('cp-a logged its full sweep', () =>
        /"destroyed":\d+,"scope":"all".*reaper destroyed expired sandboxes/.test(cpA.logs())
          ? true
          : undefined,
      );
      expect(cpB.logs()).not.toContain('"scope":"all"');
      expect(cpB.logs()).toContain(
        'another control plane runs the reaper and liveness sweeps; this one stands by',
      );
      leasesBefore = await checkLeases();
    });

    it('after SIGKILL of cp-a, cp-b keeps serving every remote sandbox and takes over the sweeps', async () => {
      dumpLogs();
      // Until now w1's heartbeats went to cp-a through the proxy.
      expect(proxy.counts[cpA.url] ?? 0).toBeGreaterThan(0);
      expect(proxy.counts[cpB.url] ?? 0).toBe(0);
      expect(await cpA.stop('SIGKILL')).toBeNull();
      // Sweeps: cp-a's session died with it, so cp-b takes the lock at its next tick.
      await until('cp-b leads the sweeps', () =>
        cpB.logs().includes('this control plane now runs the reaper and liveness sweeps')
          ? true
          : undefined,
      );
      for (const id of [ids.s1, ids.s2]) {
        const exec = await call(cpB.url, 'POST', `/sandboxes/${id}/exec`, {
          command: 'echo after the kill',
        });
        expect(exec.status, exec.text).toBe(200);
        expect(exec.body.stdout).toBe('after the kill\n');
        expect(await streamExec(cpB.url, id, 'echo streamed after the kill')).toEqual({
          stdout: 'streamed after the kill\n',
          exitCode: 0,
        });
        const read = await call(cpB.url, 'GET', `/sandboxes/${id}/files?path=/workspace/note.txt`);
        expect(read.status, read.text).toBe(200);
      }
      // w1 heartbeats went through the proxy to cp-a; they now reach cp-b, so w1 never goes stale.
      await until('w1 beats to cp-b', () => ((proxy.counts[cpB.url] ?? 0) > 0 ? true : undefined));
      const liveBefore = await call(cpB.url, 'GET', `/sandboxes/${ids.s1}`);
      expect(liveBefore.body.state).toBe('running');

      // The reaper now runs on cp-b: a remote worker's sandbox is only in its full sweep.
      const shortened = await call(cpB.url, 'POST', `/sandboxes/${ids.s2}/extend`, { ttl: '1s' });
      expect(shortened.status, shortened.text).toBe(200);
      await until('s2 reaped by cp-b', async () =>
        (await call(cpB.url, 'GET', `/sandboxes/${ids.s2}`)).status === 404 ? true : undefined,
      );
      await until('cp-b logged its full sweep', () =>
        /"scope":"all".*reaper destroyed expired sandboxes/.test(cpB.logs()) ? true : undefined,
      );

      // The liveness sweep runs on cp-b too: cp-a's own worker stopped beating.
      await until(
        'cp-a’s sandbox marked unhealthy',
        async () => {
          const r = await call(cpB.url, 'GET', `/sandboxes/${ids.local}`);
          return r.body?.state === 'unhealthy' ? true : undefined;
        },
        20_000,
      );
      // Still served where it can be: destroy of a remote sandbox through cp-b.
      const gone = await call(cpB.url, 'DELETE', `/sandboxes/${ids.s1}`);
      expect(gone.status, gone.text).toBe(200);
      expect((await call(cpB.url, 'GET', `/sandboxes/${ids.s1}`)).status).toBe(404);

      // Leases: one row per resource, held by the sandbox's worker, generations never went back.
      const after = await checkLeases();
      for (const [resource, gen] of leasesBefore) {
        expect(after.get(resource), `generation of ${resource}`).toBeGreaterThanOrEqual(gen);
      }
      const released = await leases();
      for (const id of [ids.s1, ids.s2]) expect(released.get(id)?.[0]?.holder_id).toBe('');
    });
  },
);
