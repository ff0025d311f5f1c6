/**
 * `/api/v1/templates`: validation, CRUD, and spawn-from-template through a
 * real control plane (SQLite file, mock provider), locally and on a remote
 * worker over worker RPC.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
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
const api = { 'x-api-key': API_KEY };

interface ErrorWire {
  code: string;
  message: string;
  details?: { field: string; problem: string }[];
}

interface SandboxWire {
  id: string;
  state: string;
  image: string;
  provider: string;
  memory_mb: number;
  vcpus: number;
  owner_id?: string;
  worker_id: string;
  ports: number[];
  metadata?: Record<string, string>;
  created_at: string;
  expires_at: string;
}

const lifetimeMs = (s: SandboxWire): number => Date.parse(s.expires_at) - Date.parse(s.created_at);

describe('templates API', () => {
  let h: Harness;
  const post = (url: string, body?: unknown, headers: Record<string, string> = api) =>
    h.request({ method: 'POST', url, headers, ...(body === undefined ? {} : { body }) });
  const create = (body: Record<string, unknown>) => post('/api/v1/templates', body);
  const exec = async (id: string, body: Record<string, unknown>) => {
    const res = await post(`/api/v1/sandboxes/${id}/exec`, body);
    expect(res.statusCode, res.body).toBe(200);
    return res.json<{ exit_code: number; stdout: string; stderr: string }>();
  };
  const liveIds = async (): Promise<string[]> =>
    (await h.cp.store.sandboxes.list()).map((s) => s.id);

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  describe('validation: a clear 400 naming the field', () => {
    const cases: [string, Record<string, unknown>, string, RegExp][] = [
      ['missing name', { image: 'alpine' }, 'name', /is required/],
      ['upper-case name', { name: 'Py', image: 'alpine' }, 'name', /must match/],
      ['name starting with a dot', { name: '.x', image: 'alpine' }, 'name', /must match/],
      ['64-character name', { name: 'a'.repeat(64), image: 'alpine' }, 'name', /must match/],
      ['missing image', { name: 'x' }, 'image', /is required/],
      ['image with spaces', { name: 'x', image: 'a b' }, 'image', /without whitespace/],
      ['memory below 16', { name: 'x', image: 'a', memory_mb: 8 }, 'body.memory_mb', />= 16/],
      ['too many cpus', { name: 'x', image: 'a', cpu_cores: 512 }, 'body.cpu_cores', /<= 256/],
      [
        'cpu_cores and vcpus disagree',
        { name: 'x', image: 'a', cpu_cores: 2, vcpus: 3 },
        'vcpus',
        /disagrees with cpu_cores/,
      ],
      ['ttl above max_ttl', { name: 'x', image: 'a', ttl: '48h' }, 'ttl', /exceeds max_ttl/],
      [
        'ttl_seconds above max_ttl',
        { name: 'x', image: 'a', ttl_seconds: 90_000 },
        'ttl_seconds',
        /exceeds max_ttl 24h0m0s/,
      ],
      ['ttl_seconds 0', { name: 'x', image: 'a', ttl_seconds: 0 }, 'body.ttl_seconds', />= 1/],
      ['unparsable ttl', { name: 'x', image: 'a', ttl: 'forever' }, 'ttl', /invalid duration/],
      ['fractional ttl', { name: 'x', image: 'a', ttl: '1500ms' }, 'ttl', /whole seconds/],
      [
        'ttl and ttl_seconds disagree',
        { name: 'x', image: 'a', ttl: '1m', ttl_seconds: 30 },
        'ttl_seconds',
        /disagrees/,
      ],
      [
        'bad env name',
        { name: 'x', image: 'a', env: { '1BAD': 'v' } },
        'env.1BAD',
        /valid environment variable name/,
      ],
      ['env value with NUL', { name: 'x', image: 'a', env: { A: 'x\0y' } }, 'env.A', /NUL/],
      [
        '33 setup commands',
        { name: 'x', image: 'a', setup: Array.from({ length: 33 }, () => 'true') },
        'setup',
        /at most 32 commands/,
      ],
      [
        'setup command above 8 KiB',
        { name: 'x', image: 'a', setup: ['true', `echo ${'x'.repeat(8192)}`] },
        'setup[1]',
        /at most 8192 bytes/,
      ],
      ['empty setup command', { name: 'x', image: 'a', setup: ['  '] }, 'setup[0]', /empty/],
      [
        'setup and setup_commands disagree',
        { name: 'x', image: 'a', setup: ['a'], setup_commands: ['b'] },
        'setup_commands',
        /disagrees with setup/,
      ],
      [
        'reserved metadata key',
        { name: 'x', image: 'a', metadata: { template: 'y' } },
        'metadata.template',
        /reserved/,
      ],
      ['port 0', { name: 'x', image: 'a', ports: [0] }, 'body.ports.0', />= 1/],
      [
        'allowed_hosts (stored but never applied by the Go original)',
        { name: 'x', image: 'a', allowed_hosts: ['pypi.org'] },
        'allowed_hosts',
        /not supported/,
      ],
      ['pool_size', { name: 'x', image: 'a', pool_size: 2 }, 'pool_size', /not supported/],
    ];
    it.each(cases)('%s', async (_what, body, field, problem) => {
      const res = await create(body);
      expect(res.statusCode, res.body).toBe(400);
      const err = res.json<ErrorWire>();
      expect(err.code).toBe('BAD_REQUEST');
      const detail = err.details?.find((d) => d.field === field);
      expect(detail, JSON.stringify(err)).toBeDefined();
      expect(detail?.problem).toMatch(problem);
      expect(await h.cp.store.templates.list()).toEqual([]);
    });
  });

  it('creates with defaults, lists by name, gets, replaces and deletes', async () => {
    const a = await create({ name: 'zeta', image: 'alpine:3.20' });
    expect(a.statusCode, a.body).toBe(201);
    expect(a.json()).toMatchObject({
      name: 'zeta',
      version: 1,
      image: 'alpine:3.20',
      provider: '',
      description: '',
      memory_mb: h.config.defaults.memory_mb,
      cpu_cores: h.config.defaults.vcpus,
      ttl_seconds: 30 * 60,
      env: {},
      setup: [],
      metadata: {},
      ports: [3000],
    });
    // The 0.1 SDK names (vcpus, ttl) and setup_commands are accepted too.
    const b = await create({
      name: 'alpha',
      image: 'node:20',
      vcpus: 2,
      ttl: '2m',
      setup_commands: ['npm -v'],
      allowed_hosts: [],
      pool_size: 0,
      version: 7,
    });
    expect(b.statusCode, b.body).toBe(201);
    expect(b.json()).toMatchObject({
      cpu_cores: 2,
      ttl_seconds: 120,
      setup: ['npm -v'],
      version: 1,
    });
    expect((await create({ name: 'zeta', image: 'other' })).json()).toMatchObject({
      code: 'CONFLICT',
      message: 'template zeta already exists',
    });

    const list = await h.request({ method: 'GET', url: '/api/v1/templates', headers: api });
    expect(list.json<{ name: string }[]>().map((t) => t.name)).toEqual(['alpha', 'zeta']);

    const got = await h.request({ method: 'GET', url: '/api/v1/templates/alpha', headers: api });
    expect(got.json()).toEqual(b.json());

    // PUT is a full replacement; a GET body can be sent back as it is.
    const edited = { ...got.json<Record<string, unknown>>(), image: 'node:22', setup: [] };
    const put = await h.request({
      method: 'PUT',
      url: '/api/v1/templates/alpha',
      headers: api,
      body: edited,
    });
    expect(put.statusCode, put.body).toBe(200);
    expect(put.json()).toMatchObject({
      name: 'alpha',
      version: 2,
      image: 'node:22',
      cpu_cores: 2,
      setup: [],
      created_at: got.json<{ created_at: string }>().created_at,
    });
    const mismatch = await h.request({
      method: 'PUT',
      url: '/api/v1/templates/alpha',
      headers: api,
      body: { name: 'beta', image: 'x' },
    });
    expect(mismatch.statusCode).toBe(400);
    expect(mismatch.json<ErrorWire>().details?.[0]?.field).toBe('name');
    const putMissing = await h.request({
      method: 'PUT',
      url: '/api/v1/templates/nope',
      headers: api,
      body: { image: 'x' },
    });
    expect(putMissing.statusCode).toBe(404);

    for (const name of ['alpha', 'zeta']) {
      const del = await h.request({
        method: 'DELETE',
        url: `/api/v1/templates/${name}`,
        headers: api,
      });
      expect(del.statusCode).toBe(200);
      expect(del.json()).toEqual({ status: 'deleted' });
    }
    const again = await h.request({
      method: 'DELETE',
      url: '/api/v1/templates/alpha',
      headers: api,
    });
    expect(again.json()).toMatchObject({ code: 'NOT_FOUND', message: 'template not found: alpha' });
    const gone = await h.request({ method: 'GET', url: '/api/v1/templates/alpha', headers: api });
    expect(gone.statusCode).toBe(404);
    const audit = await h.cp.store.audit.list({ action: 'template.delete' });
    expect(audit.map((e) => e.resource).sort()).toEqual(['template:alpha', 'template:zeta']);
  });

  it('needs a key: the API key manages and spawns templates', async () => {
    expect((await h.request({ method: 'GET', url: '/api/v1/templates' })).statusCode).toBe(401);
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/templates',
      body: { name: 'k', image: 'a' },
    });
    expect(res.statusCode).toBe(401);
  });

  it('spawn applies everything, over a body-less POST too', async () => {
    const res = await create({
      name: 'py-dev',
      image: 'python:3.12-slim',
      provider: 'mock',
      description: 'Python with a greeting',
      memory_mb: 256,
      cpu_cores: 2,
      ttl_seconds: 600,
      ports: [8080, 3000],
      metadata: { team: 'data', run: 'default' },
      env: { GREETING: 'hello', SHARED: 'template' },
      // Relative: the mock provider runs commands on the host, in the sandbox's workspace.
      setup: ['echo "$GREETING" > setup.txt', 'echo second >> setup.txt'],
    });
    expect(res.statusCode, res.body).toBe(201);

    const sp = await post('/api/v1/templates/py-dev/spawn', undefined);
    expect(sp.statusCode, sp.body).toBe(201);
    const sb = sp.json<SandboxWire>();
    expect(sb).toMatchObject({
      state: 'running',
      image: 'python:3.12-slim',
      provider: 'mock',
      memory_mb: 256,
      vcpus: 2,
      worker_id: 'local',
      ports: [3000, 8080],
      metadata: { team: 'data', run: 'default', template: 'py-dev' },
    });
    expect(lifetimeMs(sb)).toBe(600_000);

    const file = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${sb.id}/files?path=/workspace/setup.txt`,
      headers: api,
    });
    expect(file.body).toBe('hello\nsecond\n');
    expect((await exec(sb.id, { command: 'echo "$GREETING $SHARED"' })).stdout).toBe(
      'hello template\n',
    );
    // A request's env wins per variable; argv mode gets the env as well.
    expect(
      (await exec(sb.id, { command: 'echo "$GREETING $SHARED"', env: { SHARED: 'request' } }))
        .stdout,
    ).toBe('hello request\n');
    expect(
      (await exec(sb.id, { command: 'sh', args: ['-c', 'echo $GREETING'], mode: 'argv' })).stdout,
    ).toBe('hello\n');
    const stream = await post(`/api/v1/sandboxes/${sb.id}/exec`, {
      command: 'echo "$GREETING"',
      stream: true,
    });
    expect(stream.body).toContain('{"stream":"stdout","data":"hello\\n"}');

    // The setup commands are in the exec log.
    await h.cp.sandboxes.drain();
    const execs = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${sb.id}/execs?limit=50`,
      headers: api,
    });
    const commands = execs.json<{ command: string; exit_code: number }[]>().map((e) => e.command);
    expect(commands.slice(-2)).toEqual([
      'echo second >> setup.txt',
      'echo "$GREETING" > setup.txt',
    ]);
  });

  it('spawn overrides ttl, owner (X-User-ID wins) and metadata', async () => {
    expect(
      (await create({ name: 'over', image: 'a', metadata: { a: '1', b: '2' } })).statusCode,
    ).toBe(201);
    const sp = await post(
      '/api/v1/templates/over/spawn',
      { ttl: '5m', owner_id: 'body-owner', metadata: { b: 'x', template: 'spoof' } },
      { ...api, 'x-user-id': 'header-owner' },
    );
    expect(sp.statusCode, sp.body).toBe(201);
    const sb = sp.json<SandboxWire>();
    expect(sb.owner_id).toBe('header-owner');
    expect(sb.metadata).toEqual({ a: '1', b: 'x', template: 'over' });
    expect(lifetimeMs(sb)).toBe(5 * 60_000);
    const tooLong = await post('/api/v1/templates/over/spawn', { ttl: '48h' });
    expect(tooLong.statusCode).toBe(429);
    const unknown = await post('/api/v1/templates/nope/spawn', {});
    expect(unknown.json()).toMatchObject({
      code: 'NOT_FOUND',
      message: 'template not found: nope',
    });
    const badProvider = await post('/api/v1/templates/over/spawn', { provider: 'nope' });
    expect(badProvider.statusCode).toBe(404);
  });

  it('a failing setup command fails the spawn (400 naming it) and leaves nothing behind', async () => {
    expect(
      (
        await create({
          name: 'broken',
          image: 'a',
          setup: ['echo ok', 'echo "missing thing" >&2; exit 7', 'echo never'],
        })
      ).statusCode,
    ).toBe(201);
    const before = await liveIds();
    const runtimes = (): string[] =>
      readdirSync(h.config.providers.mock.base_dir)
        .filter((e) => /^sb-[0-9a-f]{8}$/.test(e))
        .sort();
    const runtimesBefore = runtimes();
    const res = await post('/api/v1/templates/broken/spawn', {});
    expect(res.statusCode, res.body).toBe(400);
    const err = res.json<ErrorWire>();
    expect(err.message).toBe(
      'spawn failed: setup command 2 of 3 ("echo \\"missing thing\\" >&2; exit 7") exited with code 7: missing thing',
    );
    expect(err.details).toEqual([
      { field: 'setup[1]', problem: 'exited with code 7: missing thing' },
    ]);
    expect(await liveIds()).toEqual(before);
    const [failed] = await h.cp.store.sandboxes.list({ states: ['destroyed'] });
    expect(failed?.metadata['template']).toBe('broken');
    const id = failed?.id ?? '';
    expect(existsSync(join(h.config.providers.mock.base_dir, id))).toBe(false);
    expect(runtimes()).toEqual(runtimesBefore);
    expect((await h.cp.store.leases.get(id))?.holderId).toBe('');
    await h.cp.sandboxes.drain();
    expect((await h.cp.store.execLogs.list(id, 10)).map((e) => e.exitCode).sort()).toEqual([0, 7]);
  });
});

describe('templates on a remote worker', () => {
  const W_TOKEN = 'worker-a-token-0123456789abcdef0123456789';
  let dir: string;
  let h: Harness;
  let runtime: WorkerRuntime;
  let server: WorkerRpcServer;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-tpl-remote-'));
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
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.worker_tokens = [`worker-a=${W_TOKEN}`];
    });
    const beat = await h.request({
      method: 'POST',
      url: '/api/v1/worker/worker-a/heartbeat',
      headers: { 'x-worker-id': 'worker-a', 'x-worker-token': W_TOKEN },
      body: {
        hostname: 'host-a',
        providers: ['mock'],
        capabilities: ['remote_worker', 'heartbeat', 'rpc'],
        capacity: { rpc_url: server.url },
      },
    });
    expect(beat.statusCode, beat.body).toBe(200);
    // Without `local`, spawns go to worker-a.
    await h.request({
      method: 'DELETE',
      url: '/api/v1/admin/workers/local',
      headers: { 'x-admin-api-key': ADMIN_KEY },
    });
  });
  afterAll(async () => {
    await h?.close();
    await server?.close();
    await runtime?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs setup and applies env on the worker; a failed setup removes the remote runtime', async () => {
    const mk = await h.request({
      method: 'POST',
      url: '/api/v1/templates',
      headers: api,
      body: {
        name: 'remote',
        image: 'alpine',
        env: { WHERE: 'worker-a' },
        setup: ['echo "$WHERE" > where.txt'],
      },
    });
    expect(mk.statusCode, mk.body).toBe(201);
    const sp = await h.request({
      method: 'POST',
      url: '/api/v1/templates/remote/spawn',
      headers: api,
      body: {},
    });
    expect(sp.statusCode, sp.body).toBe(201);
    const sb = sp.json<SandboxWire>();
    expect(sb.worker_id).toBe('worker-a');
    expect(await runtime.listRuntimes('mock')).toContain(sb.id);
    const out = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${sb.id}/exec`,
      headers: api,
      body: { command: 'cat where.txt; echo "$WHERE"' },
    });
    expect(out.json()).toMatchObject({ exit_code: 0, stdout: 'worker-a\nworker-a\n' });

    const bad = await h.request({
      method: 'PUT',
      url: '/api/v1/templates/remote',
      headers: api,
      body: { image: 'alpine', setup: ['exit 9'] },
    });
    expect(bad.statusCode, bad.body).toBe(200);
    const failed = await h.request({
      method: 'POST',
      url: '/api/v1/templates/remote/spawn',
      headers: api,
    });
    expect(failed.statusCode, failed.body).toBe(400);
    expect(failed.json<ErrorWire>().message).toMatch(
      /setup command 1 of 1 \("exit 9"\) exited with code 9/,
    );
    expect(await runtime.listRuntimes('mock')).toEqual([sb.id]);
    expect((await h.cp.store.sandboxes.list()).map((s) => s.id)).toEqual([sb.id]);
  });
});
