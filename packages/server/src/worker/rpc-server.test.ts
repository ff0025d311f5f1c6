/**
 * Worker RPC server at the protocol level: plain HTTP requests, checked byte
 * by byte against the wire contract in `rpc/protocol.ts` (reference §3.6).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { silentLogger } from '../domain/logger.js';
import { issueWorkerToken } from '../domain/worker-token.js';
import { newSandboxId } from '../domain/sandbox.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import { generateTestPki } from '../rpc/worker-client.contract.js';
import type { TestPki } from '../rpc/worker-client.contract.js';
import { startWorkerRpcServer } from './rpc-server.js';
import type { WorkerRpcServer, WorkerRpcServerOptions } from './rpc-server.js';
import { WorkerRuntime } from './worker-runtime.js';

const WORKER = 'worker-a';
const STATIC = 'worker-a-static';
const PER_WORKER = 'worker-a-own-token';
const KEY = 'rpc-server-test-signing-key-00001';

interface Harness {
  rt: WorkerRuntime;
  server: WorkerRpcServer;
  dir: string;
  shutdowns: number;
  close(): Promise<void>;
}

async function harness(overrides: Partial<WorkerRpcServerOptions> = {}): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'stacyvm-rpc-server-'));
  const rt = new WorkerRuntime({
    workerId: WORKER,
    providers: [new MockProvider({ baseDir: dir })],
    defaultProvider: 'mock',
    logger: silentLogger,
  });
  await rt.start();
  const h = { rt, dir, shutdowns: 0 } as Harness;
  h.server = await startWorkerRpcServer({
    runtime: rt,
    workerId: WORKER,
    auth: {
      staticTokens: [STATIC, PER_WORKER],
      signingKeys: [KEY],
      revokedTokenIds: ['revoked-jti'],
      nowMs: () => Date.now(),
    },
    host: '127.0.0.1',
    port: 0,
    logger: silentLogger,
    maxJsonBodyBytes: 1024 * 1024,
    renewLease: async (resourceId) => ({
      resource_id: resourceId,
      holder_id: WORKER,
      generation: 7,
      expires_at: '2030-01-01T00:00:00Z',
    }),
    onShutdown: () => {
      h.shutdowns++;
    },
    ...overrides,
  });
  h.close = async () => {
    await h.server.close(500);
    await rt.stop();
    await rm(dir, { recursive: true, force: true });
  };
  return h;
}

const auth = (token = STATIC, workerId = WORKER): Record<string, string> => ({
  'X-Worker-ID': workerId,
  'X-Worker-Token': token,
});

function lease(
  sandboxId: string,
  o: { holder?: string; expiresAt?: string; generation?: number } = {},
) {
  return {
    resource_id: sandboxId,
    holder_id: o.holder ?? WORKER,
    generation: o.generation ?? 1,
    expires_at: o.expiresAt ?? new Date(Date.now() + 600_000).toISOString(),
  };
}

function signed(
  o: {
    workerId?: string;
    audience?: 'worker:rpc' | 'worker:control-plane';
    tokenId?: string;
    nowMs?: number;
  } = {},
): string {
  return issueWorkerToken(
    {
      workerId: o.workerId ?? WORKER,
      audience: o.audience ?? 'worker:rpc',
      ttlMs: 60_000,
      ...(o.tokenId === undefined ? {} : { tokenId: o.tokenId }),
    },
    KEY,
    o.nowMs ?? Date.now(),
  ).token;
}

describe('worker RPC server', () => {
  let h: Harness;
  let url: string;

  beforeAll(async () => {
    h = await harness();
    url = h.server.url;
  });
  afterAll(async () => {
    await h.close();
  });

  async function rpc(
    body: unknown,
    headers: Record<string, string> = auth(),
  ): Promise<{ status: number; json: Record<string, unknown>; headers: Headers }> {
    const res = await fetch(`${url}/rpc`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    return {
      status: res.status,
      json: (await res.json()) as Record<string, unknown>,
      headers: res.headers,
    };
  }

  async function spawn(): Promise<string> {
    const id = newSandboxId();
    const r = await rpc({
      id: `spawn-${id}`,
      method: 'worker.spawn',
      worker_id: WORKER,
      lease: lease(id),
      params: { sandbox_id: id, image: 'x', provider: 'mock', memory_mb: 64, vcpus: 1, ttl: '5m' },
    });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    return id;
  }

  describe('routing and authentication', () => {
    test('GET /health answers without credentials', async () => {
      const res = await fetch(`${url}/health`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ status: 'ok', worker_id: WORKER, state: 'active' });
    });

    test('a non-POST /rpc is 405 in the API error envelope', async () => {
      const res = await fetch(`${url}/rpc`, { headers: auth() });
      expect(res.status).toBe(405);
      expect(await res.json()).toEqual({ code: 'BAD_REQUEST', message: 'method not allowed' });
    });

    test('an unknown path is 404', async () => {
      const res = await fetch(`${url}/nope`, { method: 'POST', headers: auth() });
      expect(res.status).toBe(404);
    });

    const refused = {
      'no token': { 'X-Worker-ID': WORKER },
      'no worker id': { 'X-Worker-Token': STATIC },
      'a wrong token': auth('not-the-token'),
      "another worker's id with a valid token": auth(STATIC, 'worker-b'),
      'a signed token for another worker': auth(signed({ workerId: 'worker-b' })),
      'an expired signed token': auth(signed({ nowMs: Date.now() - 120_000 })),
      'a revoked signed token': auth(signed({ tokenId: 'revoked-jti' })),
      'a signed token with audience worker:control-plane': auth(
        signed({ audience: 'worker:control-plane' }),
      ),
    };
    for (const [what, headers] of Object.entries(refused)) {
      test(`refuses ${what} with 401`, async () => {
        const r = await rpc({ id: 'p', method: 'worker.providers', worker_id: WORKER }, headers);
        expect(r.status).toBe(401);
        expect(r.json).toEqual({
          code: 'UNAUTHORIZED',
          message: 'invalid or missing worker RPC credentials',
        });
      });
    }

    const accepted = {
      'the static token': auth(STATIC),
      'the per-worker token': auth(PER_WORKER),
      'a signed worker:rpc token': auth(signed()),
      'a Bearer token': { 'X-Worker-ID': WORKER, Authorization: `Bearer ${signed()}` },
    };
    for (const [what, headers] of Object.entries(accepted)) {
      test(`accepts ${what}`, async () => {
        const r = await rpc({ id: 'p', method: 'worker.providers', worker_id: WORKER }, headers);
        expect(r.status).toBe(200);
        expect(r.json).toMatchObject({ id: 'p', worker_id: WORKER });
        expect((r.json['result'] as { providers: { name: string }[] }).providers[0]?.name).toBe(
          'mock',
        );
      });
    }

    test('unparsable JSON is 400 invalid worker RPC request', async () => {
      for (const body of ['{not json', '[1,2]', '"text"']) {
        const r = await rpc(body);
        expect(r.status).toBe(400);
        expect(r.json).toEqual({ code: 'BAD_REQUEST', message: 'invalid worker RPC request' });
      }
    });

    test('an envelope for another worker is 403', async () => {
      const r = await rpc({ id: 'x', method: 'worker.providers', worker_id: 'worker-b' });
      expect(r.status).toBe(403);
      expect(r.json).toEqual({
        code: 'FORBIDDEN',
        message: 'worker RPC request targets a different worker',
      });
    });

    test('an oversized JSON body is 413', async () => {
      const r = await rpc({
        id: 'big',
        method: 'worker.providers',
        worker_id: WORKER,
        params: { pad: 'x'.repeat(2 * 1024 * 1024) },
      });
      expect(r.status).toBe(413);
      expect(r.json['code']).toBe('PAYLOAD_TOO_LARGE');
    });
  });

  describe('envelope validation', () => {
    const cases: [string, Record<string, unknown>, string, RegExp][] = [
      [
        'a missing id',
        { method: 'worker.status', worker_id: WORKER, params: {} },
        'id',
        /id is required/,
      ],
      [
        'a missing worker_id',
        { id: 'a', method: 'worker.status', params: {} },
        'worker_id',
        /worker_id is required/,
      ],
      [
        'missing params',
        { id: 'a', method: 'worker.status', worker_id: WORKER },
        'params',
        /params are required/,
      ],
      [
        'a lease with a bad generation',
        {
          id: 'a',
          method: 'worker.status',
          worker_id: WORKER,
          params: {},
          lease: { resource_id: 'sb-1', holder_id: WORKER, generation: -1 },
        },
        'lease.generation',
        /lease\.generation/,
      ],
      [
        'an unknown method',
        { id: 'a', method: 'worker.nope', worker_id: WORKER, params: {} },
        'method',
        /unknown worker method: worker\.nope/,
      ],
    ];
    for (const [what, body, field, message] of cases) {
      test(`${what} is 400 naming ${field}`, async () => {
        const r = await rpc(body);
        expect(r.status).toBe(400);
        expect(r.json['error']).toMatch(/^invalid worker message: /);
        expect(r.json['error']).toMatch(message);
        expect(r.json['code']).toBe('BAD_REQUEST');
        expect(r.json['details']).toEqual([expect.objectContaining({ field })]);
        expect(r.json['worker_id']).toBe(WORKER);
      });
    }

    test('bad params are 400 naming the param', async () => {
      const id = newSandboxId();
      const r = await rpc({
        id: 'e',
        method: 'worker.exec',
        worker_id: WORKER,
        params: { sandbox_id: id, provider: 'mock', command: 'echo', timeout: '5 parsecs' },
      });
      expect(r.status).toBe(400);
      expect(r.json).toMatchObject({ id: 'e', code: 'BAD_REQUEST' });
      expect(r.json['error']).toMatch(/^invalid params\.timeout: /);
    });

    test('worker.heartbeat is 501', async () => {
      const r = await rpc({ id: 'hb', method: 'worker.heartbeat', worker_id: WORKER, params: {} });
      expect(r.status).toBe(501);
      expect(r.json).toEqual({
        id: 'hb',
        worker_id: WORKER,
        error: 'worker RPC method is not implemented by this worker runtime',
      });
    });
  });

  describe('leases', () => {
    const spawnParams = (id: string): Record<string, unknown> => ({
      sandbox_id: id,
      image: 'x',
      provider: 'mock',
      memory_mb: 64,
      vcpus: 1,
      ttl: '5m',
    });

    const refusals: [string, (id: string) => unknown, RegExp][] = [
      ['missing', () => undefined, /lease token is required/],
      [
        'held by another worker',
        (id) => lease(id, { holder: 'worker-b' }),
        /lease holder does not match worker/,
      ],
      [
        'for another sandbox',
        () => lease(newSandboxId()),
        /lease resource does not match spawn request/,
      ],
      [
        'expired',
        (id) => lease(id, { expiresAt: new Date(Date.now() - 1000).toISOString() }),
        /lease token is expired/,
      ],
    ];
    for (const [what, make, message] of refusals) {
      test(`spawn with a lease ${what} is 403 and spawns nothing`, async () => {
        const id = newSandboxId();
        const l = make(id);
        const r = await rpc({
          id: `spawn-${id}`,
          method: 'worker.spawn',
          worker_id: WORKER,
          params: spawnParams(id),
          ...(l === undefined ? {} : { lease: l }),
        });
        expect(r.status).toBe(403);
        expect(r.json).toMatchObject({ id: `spawn-${id}`, worker_id: WORKER, code: 'FORBIDDEN' });
        expect(r.json['error']).toMatch(message);
        expect(await h.rt.listRuntimes('mock')).not.toContain(id);
      });
    }

    test('spawn with a valid lease answers the reference result', async () => {
      const id = newSandboxId();
      const r = await rpc({
        id: `spawn-${id}`,
        method: 'worker.spawn',
        worker_id: WORKER,
        lease: lease(id),
        params: { ...spawnParams(id), metadata: { a: 'b' } },
      });
      expect(r.status).toBe(200);
      expect(r.json).toEqual({
        id: `spawn-${id}`,
        worker_id: WORKER,
        result: {
          sandbox_id: id,
          runtime_id: id,
          state: 'running',
          provider: 'mock',
          worker_id: WORKER,
          metadata: { a: 'b' },
        },
      });
    });

    test('destroy needs the lease; an older generation is 409', async () => {
      const id = await spawn();
      const params = { sandbox_id: id, provider: 'mock' };
      const noLease = await rpc({ id: 'd', method: 'worker.destroy', worker_id: WORKER, params });
      expect(noLease.status).toBe(403);
      const newer = await rpc({
        id: 's',
        method: 'worker.status',
        worker_id: WORKER,
        params,
        lease: lease(id, { generation: 3 }),
      });
      expect(newer.status).toBe(200);
      const stale = await rpc({
        id: 'd',
        method: 'worker.destroy',
        worker_id: WORKER,
        params,
        lease: lease(id, { generation: 2 }),
      });
      expect(stale.status).toBe(409);
      expect(stale.json).toMatchObject({ code: 'CONFLICT' });
      const ok = await rpc({
        id: 'd',
        method: 'worker.destroy',
        worker_id: WORKER,
        params,
        lease: lease(id, { generation: 3 }),
      });
      expect(ok.status).toBe(200);
      expect(ok.json).toEqual({ id: 'd', worker_id: WORKER });
      const gone = await rpc({ id: 's', method: 'worker.status', worker_id: WORKER, params });
      expect(gone.status).toBe(404);
      expect(gone.json).toEqual({
        id: 's',
        worker_id: WORKER,
        error: `sandbox not found: ${id}`,
        code: 'NOT_FOUND',
      });
    });

    test('renew_lease forwards to the control plane; a mismatched resource is 403', async () => {
      const ok = await rpc({
        id: 'r',
        method: 'worker.renew_lease',
        worker_id: WORKER,
        lease: lease('sb-00000001'),
        params: { resource_id: 'sb-00000001', ttl: '5m' },
      });
      expect(ok.status).toBe(200);
      expect(ok.json['result']).toEqual({
        lease: {
          resource_id: 'sb-00000001',
          holder_id: WORKER,
          generation: 7,
          expires_at: '2030-01-01T00:00:00Z',
        },
      });
      const other = await rpc({
        id: 'r',
        method: 'worker.renew_lease',
        worker_id: WORKER,
        lease: lease('sb-00000001'),
        params: { resource_id: 'sb-00000002', ttl: '5m' },
      });
      expect(other.status).toBe(403);
      expect(other.json['error']).toMatch(/lease resource does not match renewal request/);
    });
  });

  describe('exec', () => {
    test('worker.exec answers the reference result plus timed_out and duration_ms', async () => {
      const id = await spawn();
      const r = await rpc({
        id: `exec-${id}`,
        method: 'worker.exec',
        worker_id: WORKER,
        params: {
          sandbox_id: id,
          provider: 'mock',
          command: 'echo $X; echo e >&2; exit 2',
          env: { X: 'y' },
          timeout: '10s',
        },
      });
      expect(r.status).toBe(200);
      expect(r.json['result']).toMatchObject({
        sandbox_id: id,
        exit_code: 2,
        stdout: 'y\n',
        stderr: 'e\n',
        timed_out: false,
      });
    });

    test('NDJSON stream: one envelope per line as chunks arrive, base64 for non-UTF-8, a final exit line', async () => {
      const id = await spawn();
      const started = performance.now();
      const res = await fetch(`${url}/rpc`, {
        method: 'POST',
        headers: { ...auth(), 'Content-Type': 'application/json', Accept: 'application/x-ndjson' },
        body: JSON.stringify({
          id: `exec-stream-${id}`,
          method: 'worker.exec_stream',
          worker_id: WORKER,
          params: {
            sandbox_id: id,
            provider: 'mock',
            command: "printf 'one\\n'; sleep 0.6; printf '\\377\\376' >&2; printf 'two\\n'; exit 5",
          },
        }),
      });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('application/x-ndjson');
      const lines: { atMs: number; obj: Record<string, unknown> }[] = [];
      const decoder = new TextDecoder();
      let buf = '';
      for await (const chunk of res.body!) {
        buf += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf('\n')) !== -1) {
          lines.push({ atMs: performance.now() - started, obj: JSON.parse(buf.slice(0, nl)) });
          buf = buf.slice(nl + 1);
        }
      }
      expect(buf).toBe('');
      for (const l of lines) {
        expect(l.obj['id']).toBe(`exec-stream-${id}`);
        expect(l.obj['worker_id']).toBe(WORKER);
      }
      const results = lines.map((l) => l.obj['result'] as Record<string, unknown>);
      expect(results[0]).toEqual({ stream: 'stdout', data: 'one\n' });
      expect(lines[0]!.atMs).toBeLessThan(500);
      expect(results).toContainEqual({ stream: 'stderr', data: '//4=', encoding: 'base64' });
      expect(results).toContainEqual({ stream: 'stdout', data: 'two\n' });
      const last = results[results.length - 1];
      expect(last).toMatchObject({ stream: 'exit', exit_code: 5, timed_out: false });
      expect(last?.['duration_ms']).toBeGreaterThan(500);
      expect(lines[lines.length - 1]!.atMs).toBeGreaterThan(550);
    });

    test('exec_stream without NDJSON answers the buffered reference form', async () => {
      const id = await spawn();
      const r = await rpc({
        id: 'b',
        method: 'worker.exec_stream',
        worker_id: WORKER,
        params: { sandbox_id: id, provider: 'mock', command: 'echo a; echo b >&2' },
      });
      expect(r.status).toBe(200);
      const result = r.json['result'] as Record<string, unknown>;
      expect(result).toMatchObject({ sandbox_id: id, exit_code: 0, timed_out: false });
      expect(result['chunks']).toEqual(
        expect.arrayContaining([
          { stream: 'stdout', data: 'a\n' },
          { stream: 'stderr', data: 'b\n' },
        ]),
      );
    });

    test('an exec_stream on an unknown sandbox ends with an error line carrying the code', async () => {
      const ghost = newSandboxId();
      const res = await fetch(`${url}/rpc`, {
        method: 'POST',
        headers: { ...auth(), 'X-Worker-Stream': 'ndjson' },
        body: JSON.stringify({
          id: 'g',
          method: 'worker.exec_stream',
          worker_id: WORKER,
          params: { sandbox_id: ghost, provider: 'mock', command: 'echo hi' },
        }),
      });
      const lines = (await res.text())
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as unknown);
      expect(lines).toEqual([
        { id: 'g', worker_id: WORKER, error: `sandbox not found: ${ghost}`, code: 'NOT_FOUND' },
      ]);
    });

    test('when the control plane disconnects mid-stream, the command is killed', async () => {
      const id = await spawn();
      const ac = new AbortController();
      const res = await fetch(`${url}/rpc`, {
        method: 'POST',
        headers: { ...auth(), Accept: 'application/x-ndjson' },
        signal: ac.signal,
        body: JSON.stringify({
          id: 'k',
          method: 'worker.exec_stream',
          worker_id: WORKER,
          params: {
            sandbox_id: id,
            provider: 'mock',
            command: 'echo $$; exec sleep 30',
            timeout: '60s',
          },
        }),
      });
      const reader = res.body!.getReader();
      let text = '';
      while (!text.includes('\n')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      const first = JSON.parse(text.slice(0, text.indexOf('\n'))) as { result: { data: string } };
      const pid = Number(first.result.data.trim());
      expect(Number.isInteger(pid) && pid > 1).toBe(true);
      const alive = (): boolean => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      };
      expect(alive()).toBe(true);
      ac.abort();
      const deadline = Date.now() + 5000;
      while (alive() && Date.now() < deadline) await sleep(50);
      expect(alive()).toBe(false);
    });
  });

  describe('files', () => {
    test('reference JSON file_write/file_read carry base64 content', async () => {
      const id = await spawn();
      const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      const w = await rpc({
        id: 'w',
        method: 'worker.file_write',
        worker_id: WORKER,
        params: {
          sandbox_id: id,
          provider: 'mock',
          path: '/workspace/a.bin',
          content: bytes.toString('base64'),
          mode: '0600',
        },
      });
      expect(w.status).toBe(200);
      expect(w.json).toEqual({ id: 'w', worker_id: WORKER });
      const r = await rpc({
        id: 'r',
        method: 'worker.file_read',
        worker_id: WORKER,
        params: { sandbox_id: id, provider: 'mock', path: '/workspace/a.bin' },
      });
      expect(r.json['result']).toEqual({ sandbox_id: id, content: bytes.toString('base64') });
      const st = await rpc({
        id: 's',
        method: 'worker.file_stat',
        worker_id: WORKER,
        params: { sandbox_id: id, provider: 'mock', path: 'a.bin' },
      });
      expect(st.json['result']).toMatchObject({
        sandbox_id: id,
        file: { path: '/workspace/a.bin', name: 'a.bin', size: 256, mode: '0600', is_dir: false },
      });
      expect((st.json['result'] as { file: { mod_time: string } }).file.mod_time).toMatch(
        /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
      );
    });

    test('raw file_write streams a large body and raw file_read streams it back with size and mode', async () => {
      const id = await spawn();
      const size = 12 * 1024 * 1024 + 7;
      const data = Buffer.alloc(size);
      for (let i = 0; i < size; i += 4096) data.writeUInt32BE(i, i);
      const envelope = {
        id: `file-write-${id}`,
        method: 'worker.file_write',
        worker_id: WORKER,
        params: { sandbox_id: id, provider: 'mock', path: '/workspace/dir/bïg.bin', mode: '0640' },
      };
      const header = JSON.stringify(envelope).replace(
        /[\u007f-\uffff]/g,
        (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
      );
      const w = await fetch(`${url}/rpc/file_write`, {
        method: 'POST',
        headers: { ...auth(), 'Content-Type': 'application/octet-stream', 'X-Worker-RPC': header },
        body: data,
      });
      expect(w.status).toBe(200);
      expect(await w.json()).toEqual({ id: `file-write-${id}`, worker_id: WORKER });

      const r = await fetch(`${url}/rpc/file_read`, {
        method: 'POST',
        headers: auth(),
        body: JSON.stringify({
          id: `file-read-${id}`,
          method: 'worker.file_read',
          worker_id: WORKER,
          params: { sandbox_id: id, provider: 'mock', path: '/workspace/dir/bïg.bin' },
        }),
      });
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe('application/octet-stream');
      expect(r.headers.get('x-file-size')).toBe(String(size));
      expect(r.headers.get('x-file-mode')).toBe('0640');
      const back = Buffer.from(await r.arrayBuffer());
      expect(back.byteLength).toBe(size);
      expect(createHash('sha256').update(back).digest('hex')).toBe(
        createHash('sha256').update(data).digest('hex'),
      );
    });

    test('raw file_read of a missing file is a 404 envelope; a wrong method on the raw path is 400', async () => {
      const id = await spawn();
      const missing = await fetch(`${url}/rpc/file_read`, {
        method: 'POST',
        headers: auth(),
        body: JSON.stringify({
          id: 'm',
          method: 'worker.file_read',
          worker_id: WORKER,
          params: { sandbox_id: id, provider: 'mock', path: '/workspace/none' },
        }),
      });
      expect(missing.status).toBe(404);
      expect(await missing.json()).toMatchObject({ id: 'm', code: 'NOT_FOUND' });
      const wrong = await fetch(`${url}/rpc/file_read`, {
        method: 'POST',
        headers: auth(),
        body: JSON.stringify({
          id: 'x',
          method: 'worker.file_stat',
          worker_id: WORKER,
          params: { sandbox_id: id, provider: 'mock', path: '/workspace' },
        }),
      });
      expect(wrong.status).toBe(400);
      const noHeader = await fetch(`${url}/rpc/file_write`, {
        method: 'POST',
        headers: auth(),
        body: 'x',
      });
      expect(noHeader.status).toBe(400);
    });
  });
});

describe('worker RPC server: shutdown', () => {
  test('worker.shutdown drains the runtime and calls onShutdown; spawns are then 503', async () => {
    const h = await harness();
    try {
      const post = (body: unknown): Promise<Response> =>
        fetch(`${h.server.url}/rpc`, {
          method: 'POST',
          headers: auth(),
          body: JSON.stringify(body),
        });
      const res = await post({ id: 'sd', method: 'worker.shutdown', worker_id: WORKER });
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ id: 'sd', worker_id: WORKER });
      expect(h.shutdowns).toBe(1);
      const health = await (await fetch(`${h.server.url}/health`)).json();
      expect(health).toMatchObject({ state: 'draining' });
      const id = newSandboxId();
      const spawn = await post({
        id: 'sp',
        method: 'worker.spawn',
        worker_id: WORKER,
        lease: lease(id),
        params: { sandbox_id: id, provider: 'mock', image: 'x', memory_mb: 1, vcpus: 1, ttl: '1m' },
      });
      expect(spawn.status).toBe(503);
      expect(await spawn.json()).toMatchObject({
        code: 'UNAVAILABLE',
        error: expect.stringMatching(/draining/),
      });
      const renew = await post({
        id: 'rn',
        method: 'worker.renew_lease',
        worker_id: WORKER,
        lease: lease('sb-00000001'),
        params: { resource_id: 'sb-00000001', ttl: '1m' },
      });
      expect(renew.status).toBe(200);
    } finally {
      await h.close();
    }
  });

  test('without a lease renewer, worker.renew_lease is 503', async () => {
    const h = await harness({ renewLease: undefined });
    try {
      const res = await fetch(`${h.server.url}/rpc`, {
        method: 'POST',
        headers: auth(),
        body: JSON.stringify({
          id: 'rn',
          method: 'worker.renew_lease',
          worker_id: WORKER,
          lease: lease('sb-00000001'),
          params: { resource_id: 'sb-00000001', ttl: '1m' },
        }),
      });
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ error: 'lease renewer unavailable' });
    } finally {
      await h.close();
    }
  });
});

describe('worker RPC server: mTLS', () => {
  let pkiDir: string;
  let pki: TestPki;
  let h: Harness;
  beforeAll(async () => {
    pkiDir = await mkdtemp(join(tmpdir(), 'stacyvm-rpc-pki-'));
    pki = await generateTestPki(pkiDir);
    h = await harness({ tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca } });
  }, 60_000);
  afterAll(async () => {
    await h.close();
    await rm(pkiDir, { recursive: true, force: true });
  });

  const get = async (connect: ConstructorParameters<typeof Agent>[0]): Promise<number> => {
    const dispatcher = new Agent(connect);
    try {
      const res = await undiciFetch(`${h.server.url}/health`, { dispatcher });
      await res.arrayBuffer();
      return res.status;
    } finally {
      await dispatcher.close();
    }
  };

  test('serves https and a client with a certificate from the CA', async () => {
    expect(h.server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(await get({ connect: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } })).toBe(
      200,
    );
  });

  test('refuses a client without a certificate', async () => {
    await expect(get({ connect: { ca: pki.ca } })).rejects.toThrow();
  });

  test('refuses a client whose certificate another CA signed', async () => {
    await expect(
      get({ connect: { ca: pki.ca, cert: pki.strangerCert, key: pki.strangerKey } }),
    ).rejects.toThrow();
  });
});
