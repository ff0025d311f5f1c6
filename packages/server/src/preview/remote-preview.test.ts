/**
 * Previews of a sandbox on a remote worker, all in-process on loopback: a
 * real control plane (API and preview gateway listening), a real worker
 * agent (heartbeats, worker RPC server) with its own mock provider and its
 * own preview gateway. The control plane's gateway relays to the worker's
 * (Host unchanged, worker credential in headers); the worker resolves the
 * sandbox in its own runtime.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { httpCall, openWs, startUpstream } from '../../test/support/preview-upstream.js';
import type { Upstream } from '../../test/support/preview-upstream.js';
import { silentLogger } from '../domain/logger.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import { WorkerAgent } from '../worker/worker-agent.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';
import { createPreviewGateway } from './gateway.js';
import type { PreviewGateway } from './gateway.js';
import { createRuntimeResolver } from './runtime-resolver.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const ADMIN_KEY = 'admin-key-0123456789abcdef0123456789abcd';
const W_TOKEN = 'worker-a-token-0123456789abcdef0123456789';
const api = { 'x-api-key': API_KEY };

describe('previews of sandboxes on a remote worker', () => {
  let dir: string;
  let h: Harness;
  let up: Upstream;
  let runtime: WorkerRuntime;
  let agent: WorkerAgent;
  let workerGateway: PreviewGateway;
  let workerGatewayPort = 0;
  let gw = 0;
  let id = '';
  let host = '';

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-remote-preview-'));
    up = await startUpstream();
    h = await startHarness((c) => {
      c.database.path = join(dir, 'cp.db');
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.admin_fallback_enabled = false;
      c.auth.worker_tokens = [`worker-a=${W_TOKEN}`];
      c.preview.private = true;
    });
    const cpUrl = await h.cp.app.listen({ host: '127.0.0.1', port: 0 });
    gw = (await h.cp.listenPreview('127.0.0.1:0'))!.port;

    runtime = new WorkerRuntime({
      workerId: 'worker-a',
      providers: [new MockProvider({ baseDir: join(dir, 'mock-worker-a') })],
      defaultProvider: 'mock',
      logger: silentLogger,
    });
    workerGateway = createPreviewGateway({
      domains: () => ['worker-a.test'],
      resolve: createRuntimeResolver(runtime),
      hopAuth: (wid, token) => agent.checkRpcCredentials(wid, token),
      publicScheme: 'http',
      logger: silentLogger,
    });
    workerGatewayPort = (await workerGateway.listen('127.0.0.1', 0)).port;
    const previewUrl = `http://127.0.0.1:${workerGatewayPort}`;
    agent = new WorkerAgent({
      workerId: 'worker-a',
      controlPlaneUrl: cpUrl,
      listenAddr: '127.0.0.1:0',
      advertiseAddr: '',
      previewDomain: 'worker-a.test',
      previewUrl: () => previewUrl,
      heartbeatIntervalMs: 60_000,
      shutdownTimeoutMs: 1_000,
      maxSandboxes: 0,
      maxSandboxesPerOwner: 0,
      runtime,
      tokenSource: { kind: 'static', token: W_TOKEN },
      rpcAuth: { signingKeys: [], revokedTokenIds: [] },
      logger: silentLogger,
    });
    await agent.start();
    // Without `local`, the spawn must go to the remote worker.
    await h.request({
      method: 'DELETE',
      url: '/api/v1/admin/workers/local',
      headers: { 'x-admin-api-key': ADMIN_KEY },
    });
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      headers: api,
      body: { provider: 'mock', ports: [up.port] },
    });
    expect(res.statusCode, res.body).toBe(201);
    const sb = res.json<{ id: string; worker_id: string; preview_domain: string }>();
    expect(sb.worker_id).toBe('worker-a');
    expect(sb.preview_domain).toBe('worker-a.test');
    id = sb.id;
    host = `${up.port}-${id}.worker-a.test:${gw}`;
  });
  afterAll(async () => {
    await agent.stopNow('test over');
    await workerGateway.close(0);
    await h.close();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function token(port = up.port, box = id): Promise<{ token: string; url: string }> {
    const p = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${box}/preview/${port}`,
      headers: api,
    });
    expect(p.statusCode, p.body).toBe(200);
    return p.json<{ token: string; url: string }>();
  }

  it('builds the URL with the worker’s preview domain and the control plane’s gateway port', async () => {
    const p = await token();
    expect(p.url).toBe(`http://${host}`);
  });

  it('relays HTTP through the worker’s gateway: Host unchanged, no credential reaches the app', async () => {
    const { token: t } = await token();
    const r = await httpCall(gw, host, '/echo?via=cp', {
      headers: { 'x-stacyvm-preview-token': t, 'x-forwarded-for': '198.51.100.7' },
    });
    expect(r.status, r.body).toBe(200);
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
    expect(seen.url).toBe('/echo?via=cp');
    expect(seen.headers['host']).toBe(host);
    // X-Forwarded-* are the control plane's (the client's address appended), not the relay hop's.
    expect(seen.headers['x-forwarded-for']).toBe('198.51.100.7, 127.0.0.1');
    expect(seen.headers['x-forwarded-host']).toBe(host);
    expect(seen.headers['x-forwarded-port']).toBe(String(gw));
    for (const secret of ['x-worker-token', 'x-worker-id', 'x-stacyvm-preview-token']) {
      expect(seen.headers[secret], secret).toBeUndefined();
    }
    expect(JSON.stringify(seen.headers)).not.toContain(W_TOKEN);
  });

  it('relays WebSocket upgrades both ways', async () => {
    const { token: t } = await token();
    const { ws, next } = await openWs(gw, host, '/live', { 'x-stacyvm-preview-token': t });
    try {
      expect(await next()).toBe('hello from upstream');
      ws.send('over two hops');
      expect(await next()).toBe('echo:over two hops');
    } finally {
      ws.close();
    }
  });

  it('still requires the preview token at the control plane', async () => {
    const r = await httpCall(gw, host, '/echo');
    expect(r.status).toBe(401);
  });

  it('serves only the control plane at the worker gateway', async () => {
    const direct = await httpCall(workerGatewayPort, host, '/echo');
    expect(direct.status).toBe(401);
    expect(direct.headers['x-stacyvm-preview-error']).toBe('relay_unauthorized');
    const forged = await httpCall(workerGatewayPort, host, '/echo', {
      headers: { 'x-worker-id': 'worker-a', 'x-worker-token': 'not-the-token' },
    });
    expect(forged.status).toBe(401);
    await expect(openWs(workerGatewayPort, host)).rejects.toMatchObject({ status: 401 });
  });

  it('lets the worker answer for what it holds: a runtime gone from the worker is 404', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      headers: api,
      body: { provider: 'mock', ports: [up.port] },
    });
    const box = res.json<{ id: string }>().id;
    // Removed behind the control plane's back: its record still says running.
    await runtime.destroy({ sandboxId: box, provider: 'mock', runtimeId: box });
    const { token: t } = await token(up.port, box);
    const r = await httpCall(gw, `${up.port}-${box}.worker-a.test`, '/echo', {
      headers: { 'x-stacyvm-preview-token': t },
    });
    expect(r.status).toBe(404);
    expect(r.headers['x-stacyvm-preview-error']).toBe('sandbox_not_found');
  });

  it('refuses a remote sandbox addressed under another preview domain', async () => {
    const { token: t } = await token();
    const r = await httpCall(gw, `${up.port}-${id}.localhost`, '/echo', {
      headers: { 'x-stacyvm-preview-token': t },
    });
    expect(r.status).toBe(404);
  });

  it('refuses a relayed request that comes back to the control plane gateway (no loop)', async () => {
    const r = await httpCall(gw, host, '/echo', {
      headers: { 'x-stacyvm-preview-relay': '1' },
    });
    expect(r.status).toBe(508);
  });
});
