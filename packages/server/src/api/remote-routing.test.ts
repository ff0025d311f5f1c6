/**
 * The control plane routing every sandbox operation to a remote worker: a
 * real control plane (SQLite file) and a real worker RPC server over
 * loopback HTTP, each with its own mock provider directory. The worker's
 * heartbeats are sent through the API as the worker process would.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { silentLogger } from '../domain/logger.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import type { WorkerRpcServer } from '../worker/rpc-server.js';
import { startWorkerRpcServer } from '../worker/rpc-server.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const ADMIN_KEY = 'admin-key-0123456789abcdef0123456789abcd';
const W_TOKEN = 'worker-a-token-0123456789abcdef0123456789';

const api = { 'x-api-key': API_KEY };
const admin = { 'x-admin-api-key': ADMIN_KEY };

interface RemoteWorker {
  runtime: WorkerRuntime;
  server: WorkerRpcServer;
}

async function startWorker(id: string, dir: string): Promise<RemoteWorker> {
  const runtime = new WorkerRuntime({
    workerId: id,
    providers: [new MockProvider({ baseDir: join(dir, `mock-${id}`) })],
    defaultProvider: 'mock',
    logger: silentLogger,
  });
  await runtime.start();
  const server = await startWorkerRpcServer({
    runtime,
    workerId: id,
    auth: { staticTokens: [W_TOKEN], signingKeys: [], revokedTokenIds: [], nowMs: Date.now },
    host: '127.0.0.1',
    port: 0,
    logger: silentLogger,
  });
  return { runtime, server };
}

describe('control plane → remote worker routing over worker RPC', () => {
  let dir: string;
  let h: Harness;
  let w: RemoteWorker;
  let id = '';

  const configure = (c: Harness['config']): void => {
    c.database.path = join(dir, 'cp.db');
    c.auth.api_key = API_KEY;
    c.auth.admin_api_key = ADMIN_KEY;
    c.auth.admin_fallback_enabled = false;
    c.auth.worker_tokens = [`worker-a=${W_TOKEN}`];
  };

  const beat = (status = 'online') =>
    h.request({
      method: 'POST',
      url: '/api/v1/worker/worker-a/heartbeat',
      headers: { 'x-worker-id': 'worker-a', 'x-worker-token': W_TOKEN },
      body: {
        hostname: 'host-a',
        status,
        providers: ['mock'],
        capabilities: ['remote_worker', 'heartbeat', 'rpc'],
        capacity: { max_sandboxes: 0, preview_domain: 'worker-a.test', rpc_url: w.server.url },
      },
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-remote-'));
    w = await startWorker('worker-a', dir);
    h = await startHarness(configure);
    expect((await beat()).statusCode).toBe(200);
    // The seed doc's trick: without `local`, the next spawn must go remote.
    await h.request({ method: 'DELETE', url: '/api/v1/admin/workers/local', headers: admin });
  });
  afterAll(async () => {
    await h.close();
    await w.server.close();
    await w.runtime.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('spawns on the remote worker, which holds the lease and the runtime', async () => {
    const pre = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes/admission',
      headers: api,
      body: { provider: 'mock' },
    });
    expect(pre.json()).toMatchObject({
      allowed: true,
      selected_worker_id: 'worker-a',
      worker_reason: 'remote_worker_selected',
    });
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      headers: api,
      body: { image: 'alpine:latest', provider: 'mock', ttl: '5m' },
    });
    expect(res.statusCode, res.body).toBe(201);
    const sb = res.json<{ id: string; worker_id: string; state: string }>();
    expect(sb).toMatchObject({ worker_id: 'worker-a', state: 'running' });
    id = sb.id;
    expect((await h.cp.store.leases.get(id))?.holderId).toBe('worker-a');
    // The runtime lives on the worker, not on the control plane's provider.
    expect(await w.runtime.listRuntimes('mock')).toContain(id);
    const get = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}`, headers: api });
    expect(get.json()).toMatchObject({ id, state: 'running', worker_id: 'worker-a' });
  });

  it('exec, streamed exec, files and logs go to the worker; exec logs stay on the control plane', async () => {
    const exec = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/exec`,
      headers: api,
      body: { command: 'echo remote worker ok; echo oops >&2; exit 3' },
    });
    expect(exec.statusCode, exec.body).toBe(200);
    expect(exec.json()).toMatchObject({
      exit_code: 3,
      stdout: 'remote worker ok\n',
      stderr: 'oops\n',
    });

    const stream = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/exec`,
      headers: api,
      body: { command: 'printf "line 1\\nline 2\\n"', stream: true },
    });
    expect(stream.statusCode).toBe(200);
    const lines = stream.body
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { stream: string; data: string; exit_code?: number });
    expect(
      lines
        .filter((l) => l.stream === 'stdout')
        .map((l) => l.data)
        .join(''),
    ).toBe('line 1\nline 2\n');
    expect(lines.at(-1)).toMatchObject({ stream: 'exit', exit_code: 0 });

    const write = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/files`,
      headers: api,
      body: { path: '/workspace/remote.txt', content: 'remote file' },
    });
    expect(write.statusCode, write.body).toBe(200);
    const read = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${id}/files?path=/workspace/remote.txt`,
      headers: api,
    });
    expect(read.body).toBe('remote file');
    const bin = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const put = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/files`,
      headers: api,
      body: { path: '/workspace/bin', content: bin.toString('base64'), encoding: 'base64' },
    });
    expect(put.statusCode, put.body).toBe(200);
    const back = await h.cp.app.inject({
      method: 'GET',
      url: `/api/v1/sandboxes/${id}/files?path=/workspace/bin`,
      headers: api,
    });
    expect(back.rawPayload.equals(bin)).toBe(true);
    const list = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${id}/files/list?path=/workspace`,
      headers: api,
    });
    expect(JSON.stringify(list.json())).toContain('remote.txt');
    const logs = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${id}/logs?lines=50`,
      headers: api,
    });
    expect(logs.statusCode, logs.body).toBe(200);

    await h.cp.sandboxes.drain();
    const execs = await h.cp.store.execLogs.list(id, 10);
    expect(execs.map((e) => [e.exitCode, e.streamed])).toEqual(
      expect.arrayContaining([
        [3, false],
        [0, true],
      ]),
    );
  });

  it("the worker's errors arrive with their own codes: 404, 408, 400", async () => {
    const missing = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${id}/files?path=/workspace/nope.txt`,
      headers: api,
    });
    expect(missing.statusCode).toBe(404);
    expect(missing.json<{ code: string }>().code).toBe('NOT_FOUND');
    // A missing file is not a missing sandbox: it is still running.
    const still = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}`, headers: api });
    expect(still.json()).toMatchObject({ state: 'running' });

    const slow = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/exec`,
      headers: api,
      body: { command: 'sleep 5', timeout: '300ms' },
    });
    expect(slow.statusCode).toBe(408);
    expect(slow.json<{ code: string }>().code).toBe('TIMEOUT');

    const escape = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/files`,
      headers: api,
      body: { path: '/workspace/../../etc/passwd', content: 'x' },
    });
    expect(escape.statusCode).toBe(400);
  });

  it('a worker that refuses the stale generation of a lease: 409, nothing changes hands', async () => {
    const lease = await h.cp.store.leases.get(id);
    expect(lease).toBeDefined();
    // The worker has seen the current generation; an older one is fenced off.
    await expect(
      (async () =>
        w.runtime.status({
          sandboxId: id,
          provider: 'mock',
          runtimeId: id,
          lease: { resourceId: id, holderId: 'worker-a', generation: (lease?.generation ?? 1) - 1 },
        }))(),
    ).rejects.toMatchObject({ code: 'CONFLICT' });
  });

  it('a control plane restart while the worker runs keeps routing to it before its next beat', async () => {
    await h.close();
    h = await startHarness(configure);
    const exec = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/exec`,
      headers: api,
      body: { command: 'cat remote.txt' },
    });
    expect(exec.statusCode, exec.body).toBe(200);
    expect(exec.json()).toMatchObject({ exit_code: 0, stdout: 'remote file' });
  });

  it('a runtime removed behind the control plane’s back turns into 404 and a destroyed record', async () => {
    // The restart re-registered `local`; take it out again so the spawn goes remote.
    await h.request({ method: 'DELETE', url: '/api/v1/admin/workers/local', headers: admin });
    const spawn = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      headers: api,
      body: { provider: 'mock' },
    });
    const other = spawn.json<{ id: string; worker_id: string }>();
    expect(other.worker_id).toBe('worker-a');
    await w.runtime.destroy({ sandboxId: other.id, provider: 'mock', runtimeId: other.id });
    const get = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${other.id}`,
      headers: api,
    });
    expect(get.statusCode).toBe(404);
    expect((await h.cp.store.sandboxes.get(other.id))?.state).toBe('destroyed');
  });

  it('admin drain reaches the worker: it refuses new sandboxes and keeps serving its own', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/admin/workers/worker-a/drain',
      headers: admin,
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({ id: 'worker-a', status: 'draining' });
    expect(w.runtime.state).toBe('draining');
    await h.request({ method: 'DELETE', url: '/api/v1/admin/workers/local', headers: admin });
    const pre = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes/admission',
      headers: api,
      body: { provider: 'mock' },
    });
    expect(pre.json<{ allowed: boolean }>().allowed).toBe(false);
    const exec = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/exec`,
      headers: api,
      body: { command: 'echo still here' },
    });
    expect(exec.json()).toMatchObject({ exit_code: 0, stdout: 'still here\n' });
  });

  it('destroy goes to the worker and releases the lease; a second destroy is 404', async () => {
    const del = await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${id}`, headers: api });
    expect(del.statusCode, del.body).toBe(200);
    expect(await w.runtime.listRuntimes('mock')).not.toContain(id);
    expect((await h.cp.store.leases.get(id))?.holderId ?? '').toBe('');
    const again = await h.request({
      method: 'DELETE',
      url: `/api/v1/sandboxes/${id}`,
      headers: api,
    });
    expect(again.statusCode).toBe(404);
  });
});

describe('a remote worker that vanishes', () => {
  it('mid-stream: the API stream ends with an error, not a clean exit; a later exec is 503', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-remote-'));
    const w = await startWorker('worker-a', dir);
    const h = await startHarness((c) => {
      c.database.path = join(dir, 'cp.db');
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.admin_fallback_enabled = false;
      c.auth.worker_tokens = [`worker-a=${W_TOKEN}`];
    });
    try {
      await h.request({
        method: 'POST',
        url: '/api/v1/worker/worker-a/heartbeat',
        headers: { 'x-worker-id': 'worker-a', 'x-worker-token': W_TOKEN },
        body: { hostname: 'h', providers: ['mock'], capacity: { rpc_url: w.server.url } },
      });
      await h.request({ method: 'DELETE', url: '/api/v1/admin/workers/local', headers: admin });
      const id = await h.spawn({ provider: 'mock' });
      expect((await h.cp.store.sandboxes.get(id))?.workerId).toBe('worker-a');
      await h.cp.app.listen({ host: '127.0.0.1', port: 0 });
      const addr = h.cp.app.server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/sandboxes/${id}/exec`, {
        method: 'POST',
        headers: { ...api, 'content-type': 'application/json' },
        body: JSON.stringify({
          command: 'for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.3; done',
          stream: true,
        }),
        signal: AbortSignal.timeout(15_000),
      });
      const reader = res.body!.getReader();
      const first = await reader.read();
      expect(new TextDecoder().decode(first.value)).toContain('tick 1');
      // The worker goes away without a word: connections cut, server gone.
      await w.server.close(0);
      let rest = '';
      for (;;) {
        const chunk = await reader.read().catch(() => ({ done: true, value: undefined }));
        if (chunk.done) break;
        rest += new TextDecoder().decode(chunk.value);
      }
      const lines = rest
        .trim()
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as { stream: string; exit_code?: number });
      expect(lines.some((l) => l.stream === 'exit' && l.exit_code === 0)).toBe(false);
      const after = await h.request({
        method: 'POST',
        url: `/api/v1/sandboxes/${id}/exec`,
        headers: api,
        body: { command: 'true' },
      });
      expect(after.statusCode, after.body).toBe(503);
      expect(after.body).not.toContain(W_TOKEN);
    } finally {
      await h.close();
      await w.runtime.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
