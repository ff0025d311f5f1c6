import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BadRequestError,
  Client,
  ConflictError,
  NotFoundError,
  ResourceLimitError,
  Sandbox,
  SandboxNotFoundError,
} from '../../src/index.js';
import { API_KEY, caught, startSdkServer } from './support.js';
import type { SdkServer } from './support.js';

describe('Client against a real stacyvm serve', () => {
  let srv: SdkServer;
  let client: Client;
  beforeAll(async () => {
    srv = await startSdkServer();
    client = srv.client();
  });
  afterAll(async () => {
    await srv?.stop();
  });

  it('accepts a URL string, a trailing slash and a trailing /api/v1', async () => {
    for (const base of [srv.url, `${srv.url}/`, `${srv.url}/api/v1`, `${srv.url}/api/v1/`]) {
      const c = new Client(base);
      expect(c.baseUrl).toBe(srv.url);
      expect((await c.health()).status).toBe('ok');
    }
    expect(new Client().baseUrl).toBe('http://127.0.0.1:7423');
    expect(new Client({ host: 'example.test', port: 9 }).baseUrl).toBe('http://example.test:9');
  });

  it('health, providers, workers', async () => {
    const health = await client.health();
    expect(health).toMatchObject({ status: 'ok' });
    expect(typeof health.version).toBe('string');
    const providers = await client.providers();
    expect(providers.map((p) => p.name)).toContain('mock');
    expect(providers.find((p) => p.name === 'mock')).toMatchObject({
      healthy: true,
      default: true,
    });
    const workers = await client.workers();
    expect(workers.find((w) => w.id === 'local')).toMatchObject({ status: 'online', stale: false });
  });

  it('spawn sends every option; the sandbox exposes the server object', async () => {
    const sb = await client.spawn({
      image: 'alpine:3.20',
      provider: 'mock',
      memoryMb: 256,
      vcpus: 2,
      ttl: '15m',
      ownerId: 'alice',
      metadata: { job: 'sdk-e2e' },
      ports: [3000, 8080],
    });
    try {
      expect(sb).toBeInstanceOf(Sandbox);
      expect(sb.id).toMatch(/^sb-[0-9a-f]{8}$/);
      expect(sb.state).toBe('running');
      expect(sb.provider).toBe('mock');
      expect(sb.image).toBe('alpine:3.20');
      expect(sb.memoryMb).toBe(256);
      expect(sb.vcpus).toBe(2);
      expect(sb.ownerId).toBe('alice');
      expect(sb.metadata).toEqual({ job: 'sdk-e2e' });
      expect(sb.ports).toEqual([3000, 8080]);
      expect(sb.workerId).toBe('local');
      expect(sb.previewDomain).toBe('localhost');
      const ttlMs = Date.parse(sb.expiresAt) - Date.parse(sb.createdAt);
      expect(ttlMs).toBe(15 * 60_000);
      expect(Date.parse(sb.updatedAt)).toBeGreaterThanOrEqual(Date.parse(sb.createdAt));
      // The raw JSON is kept whole.
      expect(sb.info).toMatchObject({ id: sb.id, memory_mb: 256, worker_id: 'local' });
      expect(JSON.parse(JSON.stringify(sb))).toEqual(sb.info);
      expect(String(sb)).toBe(`Sandbox(id="${sb.id}", state="running")`);
    } finally {
      await sb.destroy();
    }
  });

  it('accepts the 0.1 SDK option names and a TTL in milliseconds', async () => {
    const sb = await client.spawn({ memory_mb: 128, owner_id: 'bob', ttl: 90_000 });
    try {
      expect(sb.memoryMb).toBe(128);
      expect(sb.ownerId).toBe('bob');
      expect(Date.parse(sb.expiresAt) - Date.parse(sb.createdAt)).toBe(90_000);
    } finally {
      await sb.destroy();
    }
  });

  it('userId is sent as X-User-ID and wins over ownerId', async () => {
    const c = srv.client({ userId: 'carol' });
    const sb = await c.spawn({ ownerId: 'ignored' });
    try {
      expect(sb.ownerId).toBe('carol');
    } finally {
      await sb.destroy();
    }
  });

  it('get, list, destroy; a destroyed sandbox is a NotFoundError', async () => {
    const sb = await client.spawn({});
    const got = await client.get(sb.id);
    expect(got.id).toBe(sb.id);
    expect(got.info).toEqual(sb.info);
    const listed = await client.list();
    expect(listed.map((s) => s.id)).toContain(sb.id);
    expect(listed.find((s) => s.id === sb.id)).toMatchObject({ state: 'running' });
    await sb.destroy();
    expect(sb.state).toBe('destroyed');
    expect((await client.list()).map((s) => s.id)).not.toContain(sb.id);
    const err = await caught(() => client.get(sb.id));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err).toBeInstanceOf(SandboxNotFoundError);
    expect(err).toMatchObject({ code: 'NOT_FOUND', status: 404 });
    await expect(sb.destroy()).rejects.toBeInstanceOf(NotFoundError);
  });

  it('prune returns the number destroyed', async () => {
    expect(await client.prune()).toBe(0);
  });

  it('admission decides without creating', async () => {
    const before = (await client.list()).length;
    const ok = await client.admission({ ttl: '1h' });
    expect(ok).toMatchObject({ allowed: true, queueable: false, selected_worker_id: 'local' });
    const tooLong = await client.admission({ ttl: '48h' });
    expect(tooLong).toMatchObject({ allowed: false, reason: 'max_ttl' });
    expect((await client.list()).length).toBe(before);
  });

  it('spawn errors: bad field → BadRequestError with details; TTL too long → ResourceLimitError; unknown provider → NotFoundError', async () => {
    const bad = await caught(() => client.spawn({ vcpus: 0 }));
    expect(bad).toBeInstanceOf(BadRequestError);
    expect((bad as BadRequestError).details).toEqual([
      { field: 'body.vcpus', problem: expect.any(String) as string },
    ]);
    const limit = await caught(() => client.spawn({ ttl: '48h' }));
    expect(limit).toBeInstanceOf(ResourceLimitError);
    expect(limit).toMatchObject({ status: 429, retryable: true });
    const noProvider = await caught(() => client.spawn({ provider: 'nope' }));
    expect(noProvider).toBeInstanceOf(NotFoundError);
    expect((noProvider as Error).message).toContain('provider not found');
  });

  it('withSandbox destroys the sandbox after success and after a throw', async () => {
    let id = '';
    const out = await client.withSandbox({}, async (sb) => {
      id = sb.id;
      return (await sb.exec('echo inside')).stdout;
    });
    expect(out).toBe('inside\n');
    await expect(client.get(id)).rejects.toBeInstanceOf(NotFoundError);

    const boom = new Error('callback failed');
    let id2 = '';
    const err = await caught(() =>
      client.withSandbox({}, (sb) => {
        id2 = sb.id;
        throw boom;
      }),
    );
    expect(err).toBe(boom);
    await expect(client.get(id2)).rejects.toBeInstanceOf(NotFoundError);

    // A callback that destroys the sandbox itself does not make withSandbox fail.
    expect(await client.withSandbox({}, async (sb) => (await sb.destroy(), 'done'))).toBe('done');
  });

  it('poolStatus and quotaSummary (0.1 API) are not served yet: NotFoundError', async () => {
    await expect(client.poolStatus()).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.quotaSummary()).rejects.toBeInstanceOf(NotFoundError);
  });

  it('templates: create → get → list → spawn (env and setup applied) → update → delete', async () => {
    const name = `sdk-e2e-${Date.now().toString(36)}`;
    const created = await client.templates.create({
      name,
      image: 'alpine:3.20',
      provider: 'mock',
      description: 'SDK round trip',
      memoryMb: 256,
      vcpus: 2,
      ttl: '10m',
      env: { GREETING: 'hello from template', SHARED: 'template' },
      // Relative path: the mock provider runs commands in the sandbox's workspace on the host.
      setup: ['echo "$GREETING" > setup.txt', 'echo second >> setup.txt'],
      metadata: { team: 'sdk' },
      ports: [3000, 8080],
    });
    expect(created).toMatchObject({
      name,
      version: 1,
      image: 'alpine:3.20',
      provider: 'mock',
      memory_mb: 256,
      cpu_cores: 2,
      ttl_seconds: 600,
      env: { GREETING: 'hello from template', SHARED: 'template' },
      setup: ['echo "$GREETING" > setup.txt', 'echo second >> setup.txt'],
      metadata: { team: 'sdk' },
      ports: [3000, 8080],
    });
    expect(await client.templates.get(name)).toEqual(created);
    expect((await client.templates.list()).map((t) => t.name)).toContain(name);
    const dup = await caught(() => client.templates.save({ name, image: 'x' }));
    expect(dup).toBeInstanceOf(ConflictError);

    const sb = await client.templates.spawn(name, { ttl: '5m', metadata: { run: '1' } });
    try {
      expect(sb).toBeInstanceOf(Sandbox);
      expect(sb).toMatchObject({ image: 'alpine:3.20', provider: 'mock', memoryMb: 256, vcpus: 2 });
      expect(sb.ports).toEqual([3000, 8080]);
      expect(sb.metadata).toEqual({ team: 'sdk', run: '1', template: name });
      expect(Date.parse(sb.expiresAt) - Date.parse(sb.createdAt)).toBe(5 * 60_000);
      expect(await sb.readFile('/workspace/setup.txt')).toBe('hello from template\nsecond\n');
      expect((await sb.exec('echo "$GREETING / $SHARED"')).stdout).toBe(
        'hello from template / template\n',
      );
      expect((await sb.exec('echo "$SHARED"', { env: { SHARED: 'request' } })).stdout).toBe(
        'request\n',
      );
      const logged = (await sb.execs()).map((e) => e.command);
      expect(logged).toEqual(expect.arrayContaining(['echo second >> setup.txt']));
    } finally {
      await sb.destroy();
    }

    const updated = await client.templates.update(name, {
      ...created,
      setup: ['echo "$MISSING_TOOL" && exit 4'],
    });
    expect(updated).toMatchObject({ version: 2, setup: ['echo "$MISSING_TOOL" && exit 4'] });
    const before = (await client.list()).length;
    const failed = await caught(() => client.templates.spawn(name));
    expect(failed).toBeInstanceOf(BadRequestError);
    expect((failed as BadRequestError).message).toMatch(
      /setup command 1 of 1 .* exited with code 4/,
    );
    expect((failed as BadRequestError).details).toEqual([
      { field: 'setup[0]', problem: 'exited with code 4' },
    ]);
    expect((await client.list()).length).toBe(before);

    const bad = await caught(() => client.templates.create({ name: 'Bad Name', image: 'x' }));
    expect(bad).toBeInstanceOf(BadRequestError);
    expect((bad as BadRequestError).details?.[0]?.field).toBe('name');

    await client.templates.delete(name);
    expect(await caught(() => client.templates.get(name))).toBeInstanceOf(NotFoundError);
    expect(await caught(() => client.templates.spawn(name))).toBeInstanceOf(NotFoundError);
  });

  it('custom fetch and headers are used', async () => {
    const seen: { url: string; headers: Record<string, string> }[] = [];
    const c = new Client({
      baseUrl: srv.url,
      apiKey: API_KEY,
      headers: { 'X-Request-ID': 'sdk-custom-1' },
      fetch: async (url, init) => {
        seen.push({ url, headers: init.headers as Record<string, string> });
        return fetch(url, init);
      },
    });
    const err = await caught(() => c.get('sb-00000000'));
    expect(err).toMatchObject({ requestId: 'sdk-custom-1', status: 404 });
    expect(seen).toEqual([
      {
        url: `${srv.url}/api/v1/sandboxes/sb-00000000`,
        headers: { 'X-Request-ID': 'sdk-custom-1', 'X-API-Key': API_KEY },
      },
    ]);
  });
});
