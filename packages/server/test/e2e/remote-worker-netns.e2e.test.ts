/**
 * A control plane and a remote worker on two "hosts" (network namespaces of
 * this test, joined by a veth pair with 127.77.0.x addresses), driven through
 * the built binary. The worker is SIGKILLed in the middle of a streamed exec:
 * the stream must end with an error (not hang, not look successful), the
 * liveness sweep must mark the sandbox unhealthy within the stale window, and
 * the restarted worker must take the sandbox back with its files. Plus bad
 * input across hosts: a worker presenting another worker's token, and worker
 * RPC naming another worker.
 *
 * The test process stays in the host namespace and reaches the services
 * through Unix-socket relays running inside the namespaces (see
 * test/support/netns.ts): no host interface, route or sysctl is changed.
 *
 * Needs root and `ip netns`: skipped with the reason otherwise, and failing
 * under CI=true, where it must run.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { stringify } from 'yaml';
import {
  createNetnsPair,
  httpOverSocket,
  netnsUnavailableReason,
  pollUntil,
  removeStaleNamespaces,
  spawnInNetns,
  startRelay,
  streamOverSocket,
  verifyConnectivity,
} from '../support/netns.js';
import type { HttpAnswer, NetnsPair, NsProcess } from '../support/netns.js';
import { CLI } from './server-process.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are asserted on loosely
type Json = any;

const unavailable = netnsUnavailableReason();
const underCi = process.env['CI'] === 'true';

// Both namespaces are this test's own and empty, so fixed ports cannot collide
// with anything, and the restarted worker can listen where it did before.
const CP_PORT = 7423;
const WORKER_RPC_PORT = 7430;
const IMPOSTOR_RPC_PORT = 7431;
const PROBE_PORT = 9009;
const HEARTBEAT_INTERVAL_MS = 1000;
const STALE_AFTER_MS = 3000;

const secret = (): string => randomBytes(24).toString('hex');
const API_KEY = secret();
const ADMIN_KEY = secret();
const TOKEN_A = secret();
const TOKEN_B = secret();

const TICK_COMMAND = 'for i in $(seq 1 100); do echo tick $i; sleep 0.2; done';

/** Environment of a child: no inherited STACYVM_* settings, its own HOME and config. */
function childEnv(home: string, configPath: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  }
  return { ...env, HOME: home, STACYVM_CONFIG: configPath };
}

function since(t: number): number {
  return Date.now() - t;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

if (unavailable !== undefined && underCi) {
  describe('remote worker across network namespaces', () => {
    it('runs under CI', () => {
      throw new Error(`CI=true but this suite cannot run: ${unavailable}`);
    });
  });
}

describe.skipIf(unavailable !== undefined)(
  `remote worker across network namespaces${unavailable === undefined ? '' : ` (skipped: ${unavailable})`}`,
  () => {
    let dir = '';
    let pair: NetnsPair | undefined;
    const processes: NsProcess[] = [];
    let cp: NsProcess | undefined;
    let worker: NsProcess | undefined;
    let cpSock = '';
    let workerToCpSock = '';
    let workerRpcSock = '';
    let workerConfig = '';
    let workerMockDir = '';
    let cpMockDir = '';
    const timings: Record<string, number> = {};
    const observed: Record<string, string> = {};

    let sandboxId = '';
    let workerHostname = '';
    const marker = `written before the kill ${secret()}`;

    const api = (method: string, path: string, body?: unknown): Promise<HttpAnswer> =>
      httpOverSocket(cpSock, {
        method,
        path: `/api/v1${path}`,
        headers: { 'x-api-key': API_KEY },
        ...(body === undefined ? {} : { body }),
      });

    function startWorker(configPath: string, name: string): NsProcess {
      if (pair === undefined) throw new Error('no namespaces');
      const p = spawnInNetns(pair.workerNs, process.execPath, [CLI, 'worker'], {
        env: childEnv(dir, configPath),
        cwd: dir,
        name,
      });
      processes.push(p);
      return p;
    }

    function writeWorkerConfig(
      file: string,
      id: string,
      token: string,
      rpcPort: number,
      mockDir: string,
    ): string {
      if (pair === undefined) throw new Error('no namespaces');
      const path = join(dir, file);
      writeFileSync(
        path,
        stringify({
          worker: {
            id,
            control_plane_url: `http://${pair.cpAddr}:${CP_PORT}`,
            listen_addr: `${pair.workerAddr}:${rpcPort}`,
            heartbeat_interval: `${HEARTBEAT_INTERVAL_MS}ms`,
            shutdown_timeout: '2s',
          },
          providers: {
            default: 'mock',
            // Fixed, so the restarted worker finds the sandboxes the killed one made.
            mock: { enabled: true, base_dir: mockDir },
            docker: { enabled: false },
          },
          auth: { worker_token: token },
          logging: { level: 'info' },
        }),
        { mode: 0o600 },
      );
      return path;
    }

    function dumpLogsOnFailure(): void {
      onTestFailed(() => {
        const tail = (s: string): string => s.split('\n').slice(-60).join('\n');
        console.error(`--- control plane log ---\n${tail(cp?.logs() ?? '')}`);
        console.error(`--- worker log ---\n${tail(worker?.logs() ?? '')}`);
      });
    }

    async function teardown(): Promise<void> {
      await Promise.all(processes.map((p) => p.stop('SIGKILL')));
      processes.length = 0;
      pair?.destroy();
      pair = undefined;
      if (dir !== '') rmSync(dir, { recursive: true, force: true });
    }

    beforeAll(async () => {
      const runStart = Date.now();
      const removed = removeStaleNamespaces('svm', runStart);
      if (removed.length > 0) console.warn(`removed leftover namespaces: ${removed.join(', ')}`);
      dir = mkdtempSync(join(tmpdir(), 'stacyvm-netns-'));
      try {
        pair = createNetnsPair({ prefix: 'svm', runStartMs: runStart, subnet: '127.77.0' });
        await verifyConnectivity(pair.cpNs, pair.workerNs, pair.workerAddr, PROBE_PORT);
        await verifyConnectivity(pair.workerNs, pair.cpNs, pair.cpAddr, PROBE_PORT);
        timings['network_setup_ms'] = since(runStart);

        cpMockDir = join(dir, 'cp-mock');
        workerMockDir = join(dir, 'worker-a-mock');
        const cpConfig = join(dir, 'control-plane.yaml');
        writeFileSync(
          cpConfig,
          stringify({
            server: {
              host: pair.cpAddr,
              port: CP_PORT,
              reaper_interval: '1s',
              worker_stale_after: `${STALE_AFTER_MS}ms`,
            },
            database: { driver: 'sqlite', path: join(dir, 'stacyvm.db') },
            providers: {
              default: 'mock',
              mock: { enabled: true, base_dir: cpMockDir },
              docker: { enabled: false },
            },
            auth: {
              api_key: API_KEY,
              admin_api_key: ADMIN_KEY,
              admin_fallback_enabled: false,
              worker_tokens: [`worker-a=${TOKEN_A}`, `worker-b=${TOKEN_B}`],
            },
            logging: { level: 'info' },
          }),
          { mode: 0o600 },
        );
        workerConfig = writeWorkerConfig(
          'worker-a.yaml',
          'worker-a',
          TOKEN_A,
          WORKER_RPC_PORT,
          workerMockDir,
        );

        const cpStart = Date.now();
        cp = spawnInNetns(pair.cpNs, process.execPath, [CLI, 'serve'], {
          env: childEnv(dir, cpConfig),
          cwd: dir,
          name: 'control plane',
        });
        processes.push(cp);
        await cp.waitFor(/control plane listening/, 20_000);
        timings['cp_start_ms'] = since(cpStart);

        cpSock = join(dir, 'cp-api.sock');
        workerToCpSock = join(dir, 'worker-to-cp.sock');
        workerRpcSock = join(dir, 'worker-rpc.sock');
        processes.push(await startRelay(pair.cpNs, cpSock, pair.cpAddr, CP_PORT));
        processes.push(await startRelay(pair.workerNs, workerToCpSock, pair.cpAddr, CP_PORT));
        processes.push(
          await startRelay(pair.workerNs, workerRpcSock, pair.workerAddr, WORKER_RPC_PORT),
        );

        const workerStart = Date.now();
        worker = startWorker(workerConfig, 'worker-a');
        await worker.waitFor(/worker registered with the control plane/, 20_000);
        timings['worker_start_ms'] = since(workerStart);
      } catch (err) {
        console.error(`--- control plane log ---\n${cp?.logs() ?? ''}`);
        console.error(`--- worker log ---\n${worker?.logs() ?? ''}`);
        await teardown();
        throw err;
      }
    }, 90_000);

    afterAll(async () => {
      await teardown();
      console.info(`remote-worker-netns: ${JSON.stringify({ timings, observed })}`);
    });

    it('registers worker-a across the namespaces and places and runs a sandbox on it', async () => {
      dumpLogsOnFailure();
      const registered: Json = await pollUntil(
        'worker-a registered and fresh',
        async () => {
          const r = await api('GET', '/workers');
          const w = (r.json as Json[]).find((x: Json) => x.id === 'worker-a');
          return w?.status === 'online' && w.stale === false ? w : undefined;
        },
        15_000,
      );
      expect(registered.capacity.rpc_url).toBe(`http://127.77.0.2:${WORKER_RPC_PORT}`);
      workerHostname = registered.hostname as string;

      // The control plane's own worker would be preferred: remove it so placement goes remote.
      const del = await httpOverSocket(cpSock, {
        method: 'DELETE',
        path: '/api/v1/admin/workers/local',
        headers: { 'x-admin-api-key': ADMIN_KEY },
      });
      expect(del.status).toBe(200);

      const spawned = await api('POST', '/sandboxes', { provider: 'mock', ttl: '10m' });
      expect(spawned.status, spawned.text).toBe(201);
      expect(spawned.json).toMatchObject({ worker_id: 'worker-a', state: 'running' });
      sandboxId = (spawned.json as Json).id as string;
      // Its runtime lives in the worker's mock directory, not the control plane's.
      expect(existsSync(join(workerMockDir, sandboxId))).toBe(true);
      expect(existsSync(join(cpMockDir, sandboxId))).toBe(false);

      const hi = await api('POST', `/sandboxes/${sandboxId}/exec`, { command: 'echo hi' });
      expect(hi.status, hi.text).toBe(200);
      expect(hi.json).toMatchObject({ stdout: 'hi\n', exit_code: 0 });

      const wrote = await api('POST', `/sandboxes/${sandboxId}/files`, {
        path: '/workspace/before-kill.txt',
        content: marker,
      });
      expect(wrote.status, wrote.text).toBe(200);
    });

    it('a SIGKILLed worker cuts the running stream with an error; the sweep marks the sandbox unhealthy', async () => {
      dumpLogsOnFailure();
      expect(sandboxId).not.toBe('');
      const stream = streamOverSocket(cpSock, {
        method: 'POST',
        path: `/api/v1/sandboxes/${sandboxId}/exec`,
        headers: { 'x-api-key': API_KEY },
        body: { command: TICK_COMMAND, stream: true },
      });
      try {
        expect(await withTimeout(stream.status, 10_000, 'stream headers')).toBe(200);
        await stream.waitFor(/"tick 3\\n"/, 15_000);

        const victim = worker;
        if (victim === undefined) throw new Error('no worker');
        const killedAt = Date.now();
        // The whole process at once: no drain, no offline heartbeat.
        process.kill(victim.pid, 'SIGKILL');
        expect(await withTimeout(victim.exited, 5_000, 'worker exit')).toBe('SIGKILL');

        const end = await withTimeout(stream.ended, 15_000, 'the cut stream to end');
        timings['stream_end_after_kill_ms'] = since(killedAt);

        const text = stream.text();
        const complete = text.slice(0, text.lastIndexOf('\n') + 1);
        const lines = complete
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l));
        const stdout = lines
          .filter((l: Json) => l.stream === 'stdout')
          .map((l: Json) => l.data as string)
          .join('');
        expect(stdout).toContain('tick 3\n');
        expect(stdout).not.toContain('tick 100\n');
        // Never a normal exit: an error line closes a complete response, or the connection is cut.
        expect(lines.some((l: Json) => l.stream === 'exit')).toBe(false);
        observed['cut_stream_end'] = end.complete
          ? `complete response, last line ${JSON.stringify(lines.at(-1))}`
          : `connection cut (${end.error ?? 'no error'})`;
        if (end.complete) {
          expect(lines.at(-1)).toMatchObject({ stream: 'error', code: 'UNAVAILABLE' });
        }

        const unhealthy = await pollUntil(
          'sandbox unhealthy',
          async () => {
            const r = await api('GET', `/sandboxes/${sandboxId}`);
            return (r.json as Json)?.state === 'unhealthy' ? r : undefined;
          },
          STALE_AFTER_MS + 10_000,
          100,
        );
        expect(unhealthy.status).toBe(200);
        const tookMs = since(killedAt);
        timings['unhealthy_after_kill_ms'] = tookMs;
        // The stale window decided it (the last beat was at most one interval before the kill).
        expect(tookMs).toBeGreaterThanOrEqual(STALE_AFTER_MS - HEARTBEAT_INTERVAL_MS - 500);

        const w = await api('GET', '/workers/worker-a');
        expect(w.json).toMatchObject({ id: 'worker-a', stale: true });
        const refused = await api('POST', `/sandboxes/${sandboxId}/exec`, { command: 'echo no' });
        expect(refused.status, refused.text).toBe(409);
      } finally {
        stream.abort();
      }
    });

    it('the restarted worker (same id and config) takes the sandbox back with its files', async () => {
      dumpLogsOnFailure();
      expect(sandboxId).not.toBe('');
      const restartAt = Date.now();
      worker = startWorker(workerConfig, 'worker-a (restarted)');
      await worker.waitFor(/worker registered with the control plane/, 20_000);
      await pollUntil(
        'sandbox running again',
        async () => {
          const r = await api('GET', `/sandboxes/${sandboxId}`);
          return (r.json as Json)?.state === 'running' ? r : undefined;
        },
        15_000,
        100,
      );
      timings['running_after_restart_ms'] = since(restartAt);

      const cat = await api('POST', `/sandboxes/${sandboxId}/exec`, {
        // The mock provider runs commands on the host in the sandbox's workspace directory.
        command: 'cat "$WORKSPACE/before-kill.txt"',
      });
      expect(cat.status, cat.text).toBe(200);
      expect(cat.json).toMatchObject({ stdout: marker, exit_code: 0 });

      const file = await httpOverSocket(cpSock, {
        method: 'GET',
        path: `/api/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent('/workspace/before-kill.txt')}`,
        headers: { 'x-api-key': API_KEY },
      });
      expect(file.status).toBe(200);
      expect(file.text).toBe(marker);

      const streamed = await httpOverSocket(cpSock, {
        method: 'POST',
        path: `/api/v1/sandboxes/${sandboxId}/exec`,
        headers: { 'x-api-key': API_KEY },
        body: { command: 'echo again; echo oops >&2', stream: true },
      });
      const lines = streamed.text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l));
      expect(lines).toContainEqual({ stream: 'stdout', data: 'again\n' });
      expect(lines).toContainEqual({ stream: 'stderr', data: 'oops\n' });
      expect(lines.at(-1)).toMatchObject({ stream: 'exit', exit_code: 0 });
    });

    it("refuses a worker presenting another worker's token; it never shows up as either", async () => {
      dumpLogsOnFailure();
      expect(workerHostname).not.toBe('');
      // A real worker process on the worker host, claiming worker-b with worker-a's token.
      const impostorConfig = writeWorkerConfig(
        'worker-b-impostor.yaml',
        'worker-b',
        TOKEN_A,
        IMPOSTOR_RPC_PORT,
        join(dir, 'worker-b-mock'),
      );
      const impostor = startWorker(impostorConfig, 'worker-b (impostor)');
      expect(await withTimeout(impostor.exited, 20_000, 'impostor worker exit')).toBe(1);
      expect(impostor.logs()).toMatch(/HTTP 401/);
      expect(impostor.logs()).not.toContain(TOKEN_A);

      const beat = (route: string, id: string, token: string): Promise<HttpAnswer> =>
        httpOverSocket(workerToCpSock, {
          method: 'POST',
          path: `/api/v1/worker/${route}/heartbeat`,
          headers: { 'x-worker-id': id, 'x-worker-token': token },
          body: {
            hostname: 'impostor',
            status: 'online',
            capacity: { rpc_url: 'http://127.77.0.2:9' },
          },
        });
      // worker-b with worker-a's token, and worker-a with worker-b's: wrong credentials.
      expect((await beat('worker-b', 'worker-b', TOKEN_A)).status).toBe(401);
      expect((await beat('worker-a', 'worker-a', TOKEN_B)).status).toBe(401);
      // worker-b's own valid credential does not let it beat for worker-a.
      const mismatch = await beat('worker-a', 'worker-b', TOKEN_B);
      expect(mismatch.status).toBe(403);
      expect(mismatch.json).toMatchObject({ code: 'FORBIDDEN' });

      const workers = (await api('GET', '/workers')).json as Json[];
      expect(workers.map((w: Json) => w.id)).not.toContain('worker-b');
      const a = workers.find((w: Json) => w.id === 'worker-a');
      expect(a).toMatchObject({
        hostname: workerHostname,
        status: 'online',
        capacity: { rpc_url: `http://127.77.0.2:${WORKER_RPC_PORT}` },
      });
    });

    it('worker RPC refuses a call that names another worker, even with valid credentials', async () => {
      dumpLogsOnFailure();
      expect(sandboxId).not.toBe('');
      const rpc = (headerId: string, token: string, workerId: string): Promise<HttpAnswer> =>
        httpOverSocket(workerRpcSock, {
          method: 'POST',
          path: '/rpc',
          headers: { 'x-worker-id': headerId, 'x-worker-token': token },
          body: {
            id: `e2e-${workerId}`,
            method: 'worker.status',
            worker_id: workerId,
            params: { sandbox_id: sandboxId, provider: 'mock' },
          },
        });
      // The control plane's credential for worker-a works for worker-a ...
      const ok = await rpc('worker-a', TOKEN_A, 'worker-a');
      expect(ok.status, ok.text).toBe(200);
      expect(ok.json).toMatchObject({ worker_id: 'worker-a', result: { state: 'running' } });
      // ... but a call for a sandbox on another worker is refused ...
      const other = await rpc('worker-a', TOKEN_A, 'worker-b');
      expect(other.status, other.text).toBe(403);
      expect(other.json).toMatchObject({
        code: 'FORBIDDEN',
        message: 'worker RPC request targets a different worker',
      });
      // ... and so are credentials that are not worker-a's.
      expect((await rpc('worker-b', TOKEN_A, 'worker-b')).status).toBe(401);
      expect((await rpc('worker-a', TOKEN_B, 'worker-a')).status).toBe(401);
    });

    it('destroys the sandbox on the worker; the record and its exec log then answer 404', async () => {
      dumpLogsOnFailure();
      expect(sandboxId).not.toBe('');
      const log = await api('GET', `/sandboxes/${sandboxId}/execs`);
      expect(log.status).toBe(200);
      const rows = log.json as Json[];
      expect(rows).toContainEqual(
        expect.objectContaining({ command: 'echo hi', exit_code: 0, stdout: 'hi\n' }),
      );
      // The cut stream is recorded as cut: exit -1, with the output seen before the kill.
      const cut = rows.find((r: Json) => r.command === TICK_COMMAND);
      expect(cut).toMatchObject({ exit_code: -1, streamed: true });
      expect(String(cut?.stdout)).toContain('tick 1');

      const del = await api('DELETE', `/sandboxes/${sandboxId}`);
      expect(del.status, del.text).toBe(200);
      expect(existsSync(join(workerMockDir, sandboxId))).toBe(false);
      expect((await api('GET', `/sandboxes/${sandboxId}`)).status).toBe(404);
      expect((await api('GET', `/sandboxes/${sandboxId}/execs`)).status).toBe(404);
      expect((await api('DELETE', `/sandboxes/${sandboxId}`)).status).toBe(404);
    });
  },
);
