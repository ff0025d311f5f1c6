/**
 * `GET /api/v1/traefik/config` (Traefik HTTP provider) on a real control
 * plane: who may read it, ETag/304, routes appearing on spawn and going
 * away on destroy and expiry, remote-worker sandboxes, local Docker ones,
 * and a request that follows a generated route through the preview gateway
 * to the app in the sandbox, as Traefik would send it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { httpCall, startUpstream } from '../../test/support/preview-upstream.js';
import type { Upstream } from '../../test/support/preview-upstream.js';
import { TraefikDynamicConfigSchema } from '../../test/support/traefik-schema.js';
import { silentLogger } from '../domain/logger.js';
import type { TraefikDynamicConfig } from '../preview/traefik-config.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import type { WorkerRpcServer } from '../worker/rpc-server.js';
import { startWorkerRpcServer } from '../worker/rpc-server.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const ADMIN_KEY = 'admin-key-0123456789abcdef0123456789abcd';
const TOKEN = 'traefik-provider-token-0123456789abcdef01';
const URL_PATH = '/api/v1/traefik/config';
const UPSTREAM = 'http://stacyvm.internal:7480';

const api = { 'x-api-key': API_KEY };
const bearer = { authorization: `Bearer ${TOKEN}` };

async function config(h: Harness, headers: Record<string, string> = bearer) {
  const res = await h.request({ method: 'GET', url: URL_PATH, headers });
  expect(res.statusCode, res.body).toBe(200);
  const body = res.json<TraefikDynamicConfig>();
  expect([...Value.Errors(TraefikDynamicConfigSchema, body)].map((e) => e.path)).toEqual([]);
  return { body, etag: String(res.headers.etag), res };
}

function routerNames(c: TraefikDynamicConfig): string[] {
  return Object.keys(c.http.routers ?? {}).sort();
}

describe('GET /traefik/config: access and caching', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.admin_fallback_enabled = false;
      c.traefik.http_provider_token = TOKEN;
      c.traefik.upstream_url = UPSTREAM;
    });
  });
  afterAll(async () => {
    await h.close();
  });

  const status = async (headers: Record<string, string>) =>
    (await h.request({ method: 'GET', url: URL_PATH, headers })).statusCode;

  it('accepts the provider token (any case of "Bearer") and the admin key, in either header', async () => {
    expect(await status(bearer)).toBe(200);
    expect(await status({ authorization: `bearer ${TOKEN}` })).toBe(200);
    expect(await status({ 'x-admin-api-key': ADMIN_KEY })).toBe(200);
    expect(await status({ 'x-api-key': ADMIN_KEY })).toBe(200);
    // A wrong token does not spoil a valid admin key.
    expect(await status({ authorization: 'Bearer nope', 'x-admin-api-key': ADMIN_KEY })).toBe(200);
  });

  it('refuses no credentials and wrong ones (401) and the plain API key (403), never echoing a token', async () => {
    const none = await h.request({ method: 'GET', url: URL_PATH });
    expect(none.statusCode).toBe(401);
    expect(none.json()).toMatchObject({ code: 'UNAUTHORIZED' });
    const wrong = await h.request({
      method: 'GET',
      url: URL_PATH,
      headers: { authorization: `Bearer ${TOKEN}x` },
    });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.json()).toMatchObject({
      code: 'UNAUTHORIZED',
      message: 'invalid Traefik provider token',
    });
    expect(wrong.body).not.toContain(TOKEN);
    expect(await status({ authorization: TOKEN })).toBe(401);
    expect(await status({ authorization: `Basic ${TOKEN}` })).toBe(401);
    expect(await status({ 'x-api-key': TOKEN })).toBe(401);
    const apiOnly = await h.request({ method: 'GET', url: URL_PATH, headers: api });
    expect(apiOnly.statusCode).toBe(403);
    expect(apiOnly.json()).toMatchObject({ code: 'FORBIDDEN' });
  });

  it('sends a strong ETag, answers a matching If-None-Match with 304, and changes with the routes', async () => {
    const first = await config(h);
    expect(first.etag).toMatch(/^"[A-Za-z0-9_-]{27}"$/);
    expect(first.res.headers['cache-control']).toBe('no-cache');
    expect(first.res.headers['content-type']).toMatch(/^application\/json/);
    const again = await config(h);
    expect(again.etag).toBe(first.etag);

    for (const inm of [first.etag, `W/${first.etag}`, `"other", ${first.etag}`, '*']) {
      const res = await h.request({
        method: 'GET',
        url: URL_PATH,
        headers: { ...bearer, 'if-none-match': inm },
      });
      expect(res.statusCode, inm).toBe(304);
      expect(res.body).toBe('');
      expect(res.headers.etag).toBe(first.etag);
    }
    const stale = await h.request({
      method: 'GET',
      url: URL_PATH,
      headers: { ...bearer, 'if-none-match': '"something-else"' },
    });
    expect(stale.statusCode).toBe(200);
    // Unauthenticated conditional requests learn nothing.
    const anon = await h.request({
      method: 'GET',
      url: URL_PATH,
      headers: { 'if-none-match': first.etag },
    });
    expect(anon.statusCode).toBe(401);

    const id = await h.spawn({ ports: [3000] });
    const after = await config(h);
    expect(after.etag).not.toBe(first.etag);
    expect(routerNames(after.body)).toEqual([`stacyvm-${id}-3000`]);
    const old = await h.request({
      method: 'GET',
      url: URL_PATH,
      headers: { ...bearer, 'if-none-match': first.etag },
    });
    expect(old.statusCode).toBe(200);
  });
});

describe('GET /traefik/config: who may read it in other auth set-ups', () => {
  it('is open when no key and no token are configured, like every other route', async () => {
    const h = await startHarness();
    try {
      expect((await h.request({ method: 'GET', url: URL_PATH })).statusCode).toBe(200);
    } finally {
      await h.close();
    }
  });

  it('with only a provider token, requires it', async () => {
    const h = await startHarness((c) => {
      c.traefik.http_provider_token = TOKEN;
    });
    try {
      expect((await h.request({ method: 'GET', url: URL_PATH })).statusCode).toBe(401);
      expect((await h.request({ method: 'GET', url: URL_PATH, headers: bearer })).statusCode).toBe(
        200,
      );
    } finally {
      await h.close();
    }
  });

  it('accepts the API key as admin when no admin key is set and the fallback is on', async () => {
    const h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_fallback_enabled = true;
    });
    try {
      expect((await h.request({ method: 'GET', url: URL_PATH, headers: api })).statusCode).toBe(
        200,
      );
      // No token configured: a bearer is not a credential.
      expect((await h.request({ method: 'GET', url: URL_PATH, headers: bearer })).statusCode).toBe(
        401,
      );
    } finally {
      await h.close();
    }
  });

  it('refuses to start with an unusable traefik section', async () => {
    await expect(
      startHarness((c) => {
        c.traefik.name_prefix = 'Bad.Prefix';
        c.traefik.upstream_url = 'http://u:p@gw:1';
      }),
    ).rejects.toThrow(/traefik\.name_prefix.*traefik\.upstream_url must not carry credentials/);
  });
});

describe('GET /traefik/config: routes follow the sandboxes', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.traefik.http_provider_token = TOKEN;
      c.traefik.upstream_url = UPSTREAM;
      c.traefik.entry_points = ['websecure'];
      c.traefik.tls = true;
      c.traefik.cert_resolver = 'le';
      c.server.preview_domain = 'preview.example.com';
    });
  });
  afterAll(async () => {
    await h.close();
  });

  it('spawn → one router per declared port; destroy → gone (the configuration stays non-empty)', async () => {
    const id = await h.spawn({ ports: [5173, 3000] });
    const { body } = await config(h);
    expect(routerNames(body)).toEqual([`stacyvm-${id}-3000`, `stacyvm-${id}-5173`]);
    expect(body.http.routers?.[`stacyvm-${id}-5173`]).toEqual({
      rule: `Host(\`5173-${id}.preview.example.com\`)`,
      service: `stacyvm-${id}-5173`,
      entryPoints: ['websecure'],
      tls: {
        certResolver: 'le',
        domains: [{ main: 'preview.example.com', sans: ['*.preview.example.com'] }],
      },
    });
    expect(body.http.services?.[`stacyvm-${id}-5173`]).toEqual({
      loadBalancer: { servers: [{ url: UPSTREAM }], passHostHeader: true },
    });

    const del = await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${id}`, headers: api });
    expect(del.statusCode, del.body).toBeLessThan(300);
    const after = await config(h);
    expect(after.body.http.routers).toBeUndefined();
    expect(after.body.http.services).toBeUndefined();
    expect(Object.keys(after.body.http.middlewares)).toEqual(['stacyvm-redirect-https']);
  });

  it('an expired sandbox loses its routes when the reaper destroys it', async () => {
    const id = await h.spawn({ ports: [8080], ttl: '1s' });
    expect(routerNames((await config(h)).body)).toEqual([`stacyvm-${id}-8080`]);
    await new Promise((r) => setTimeout(r, 1_100));
    expect(await h.cp.reaper.tick()).toBe(1);
    expect(routerNames((await config(h)).body)).toEqual([]);
  });

  it('leaves local Docker sandboxes to the Docker labels unless include_local_docker', async () => {
    expect(routerNames((await config(h)).body)).toEqual([]);
    await insertDockerRecord(h, 'sb-d0c4e400');
    expect(routerNames((await config(h)).body)).toEqual([]);
    const h2 = await startHarness((c) => {
      c.traefik.include_local_docker = true;
      c.traefik.upstream_url = UPSTREAM;
    });
    try {
      await insertDockerRecord(h2, 'sb-d0c4e401');
      expect(routerNames((await config(h2, {})).body)).toEqual(['stacyvm-sb-d0c4e401-3000']);
    } finally {
      await h2.close();
    }
  });
});

/** A running local Docker sandbox as the store records it (Docker itself is off in the harness). */
async function insertDockerRecord(h: Harness, id: string): Promise<void> {
  const now = Date.now();
  await h.cp.store.sandboxes.insert({
    id,
    state: 'running',
    provider: 'docker',
    image: 'alpine:latest',
    memoryMb: 64,
    vcpus: 1,
    ownerId: '',
    tenantId: '',
    vmId: id,
    workerId: 'local',
    metadata: {},
    ports: [3000],
    createdAtMs: now,
    updatedAtMs: now,
    expiresAtMs: now + 600_000,
  });
}

describe('GET /traefik/config: sandboxes on a remote worker', () => {
  const W_TOKEN = 'worker-a-token-0123456789abcdef0123456789';
  let dir: string;
  let h: Harness;
  let runtime: WorkerRuntime;
  let server: WorkerRpcServer;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-traefik-remote-'));
    runtime = new WorkerRuntime({
      workerId: 'worker-a',
      providers: [new MockProvider({ baseDir: join(dir, 'mock-worker-a') })],
      defaultProvider: 'mock',
      logger: silentLogger,
    });
    await runtime.start();
    server = await startWorkerRpcServer({
      runtime,
      workerId: 'worker-a',
      auth: { staticTokens: [W_TOKEN], signingKeys: [], revokedTokenIds: [], nowMs: Date.now },
      host: '127.0.0.1',
      port: 0,
      logger: silentLogger,
    });
    h = await startHarness((c) => {
      c.database.path = join(dir, 'cp.db');
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.admin_fallback_enabled = false;
      c.auth.worker_tokens = [`worker-a=${W_TOKEN}`];
      c.traefik.http_provider_token = TOKEN;
      c.traefik.upstream_url = UPSTREAM;
    });
    const beat = await h.request({
      method: 'POST',
      url: '/api/v1/worker/worker-a/heartbeat',
      headers: { 'x-worker-id': 'worker-a', 'x-worker-token': W_TOKEN },
      body: {
        hostname: 'host-a',
        status: 'online',
        providers: ['mock'],
        capabilities: ['remote_worker', 'heartbeat', 'rpc'],
        capacity: {
          preview_domain: 'worker-a.test',
          rpc_url: server.url,
          preview_url: 'http://10.9.9.9:7480',
        },
      },
    });
    expect(beat.statusCode, beat.body).toBe(200);
    // Without `local`, the next spawn must go remote.
    await h.request({
      method: 'DELETE',
      url: '/api/v1/admin/workers/local',
      headers: { 'x-admin-api-key': ADMIN_KEY },
    });
  });
  afterAll(async () => {
    await h.close();
    await server.close();
    await runtime.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('routes under the worker’s preview domain, through the control plane’s gateway', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      headers: api,
      body: { provider: 'mock', ports: [3000] },
    });
    expect(res.statusCode, res.body).toBe(201);
    const sb = res.json<{ id: string; worker_id: string }>();
    expect(sb.worker_id).toBe('worker-a');
    const { body } = await config(h);
    expect(body.http.routers?.[`stacyvm-${sb.id}-3000`]?.rule).toBe(
      `Host(\`3000-${sb.id}.worker-a.test\`)`,
    );
    // The worker's own gateway only serves its control plane: Traefik never goes there.
    expect(body.http.services?.[`stacyvm-${sb.id}-3000`]?.loadBalancer.servers).toEqual([
      { url: UPSTREAM },
    ]);
    await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${sb.id}`, headers: api });
    expect(routerNames((await config(h)).body)).toEqual([]);
  });
});

describe('a generated route, followed as Traefik does, reaches the app in the sandbox', () => {
  let h: Harness;
  let app: Upstream;

  beforeAll(async () => {
    app = await startUpstream();
    h = await startHarness((c) => {
      c.preview.listen_addr = '127.0.0.1:0';
    });
  });
  afterAll(async () => {
    await h.close();
    await app.close();
  });

  it('upstream = the bound gateway; Host from the rule; passHostHeader keeps it', async () => {
    const bound = await h.cp.listenPreview('127.0.0.1:0');
    expect(bound).toBeDefined();
    const id = await h.spawn({ ports: [app.port] });
    const { body } = await config(h, {});
    const name = `stacyvm-${id}-${app.port}`;
    const router = body.http.routers?.[name];
    const service = body.http.services?.[name];
    expect(service?.loadBalancer.passHostHeader).toBe(true);
    const url = new URL(service?.loadBalancer.servers[0]?.url ?? '');
    expect(url.port).toBe(String(bound?.port));
    const host = /^Host\(`([^`]+)`\)$/.exec(router?.rule ?? '')?.[1] ?? '';
    expect(host).toBe(`${app.port}-${id}.localhost`);
    const answer = await httpCall(Number(url.port), host, '/echo?via=traefik');
    expect(answer.status, answer.body).toBe(200);
    expect(app.seen.some((r) => r.url === '/echo?via=traefik')).toBe(true);
  });
});
