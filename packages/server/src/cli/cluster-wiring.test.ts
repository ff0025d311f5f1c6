import { mkdtempSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { defaultConfig } from '../config/schema.js';
import { ManualClock } from '../domain/clock.js';
import { StacyError } from '../domain/errors.js';
import type { ExecSpec } from '../domain/exec.js';
import { issueWorkerToken, WORKER_AUDIENCE_RPC } from '../domain/worker-token.js';
import { HttpWorkerClient } from '../rpc/http-worker-client.js';
import { createSqliteStore } from '../store/sqlite/open-sqlite.js';
import type { Store } from '../store/store.js';
import {
  API_PORT_CAPACITY_KEY,
  checkOwnWorkerId,
  ownWorkerCapabilities,
  ownWorkerId,
  ownWorkerRpcAuth,
} from './cluster-wiring.js';
import { createControlPlane } from './control-plane.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const ADMIN_KEY = 'admin-key-0123456789abcdef0123456789abcd';
const CP_A_TOKEN = 'cp-a-own-token-0123456789abcdef0123456789';
const SHARED = 'shared-worker-token-0123456789abcdef0123';
const SIGNING_KEY = 'signing-key-0123456789abcdef0123456789ab';
const MIN = 60_000;

async function rejection(p: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

describe('own worker id', () => {
  it('is server.local_worker_id; a bad one is BAD_REQUEST naming the key', () => {
    const c = defaultConfig();
    expect(ownWorkerId(c)).toBe('local');
    c.server.local_worker_id = 'auto';
    c.server.port = 7500;
    expect(ownWorkerId(c, 'cp.host')).toBe('local-cp.host-7500');
    c.server.local_worker_id = 'no spaces';
    let err: unknown;
    try {
      ownWorkerId(c);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StacyError);
    expect((err as StacyError).code).toBe('BAD_REQUEST');
    expect((err as StacyError).details?.[0]?.field).toBe('server.local_worker_id');
  });

  it('carries control_plane, plus rpc when it is served', () => {
    expect(ownWorkerCapabilities('local', false)).toEqual([
      'api',
      'control_plane',
      'single_node',
      'spawn',
      'exec',
      'files',
    ]);
    expect(ownWorkerCapabilities('cp-a', true)).toEqual([
      'api',
      'control_plane',
      'spawn',
      'exec',
      'files',
      'rpc',
      'exec_stream_ndjson',
    ]);
  });

  it('accepts its own per-worker token only: never the shared token or signed tokens', () => {
    const c = defaultConfig();
    c.auth.worker_token = SHARED;
    c.auth.worker_signing_key = SIGNING_KEY;
    c.auth.worker_signing_keys = [' old ', SIGNING_KEY];
    const clock = new ManualClock();
    // Remote workers hold the shared token and the signing key: neither opens
    // a control plane's own worker.
    const shared = ownWorkerRpcAuth(c, 'cp-a', new Map([['w1', 'x']]), clock);
    expect(shared.staticTokens).toEqual([]);
    expect(shared.signingKeys).toEqual([]);
    const own = ownWorkerRpcAuth(c, 'cp-a', new Map([['cp-a', ' mine ']]), clock);
    expect(own.staticTokens).toEqual(['mine']);
    expect(own.signingKeys).toEqual([]);
  });
});

describe('checkOwnWorkerId', () => {
  let dir: string;
  let store: Store;
  const clock = new ManualClock();
  const me = { hostname: 'cp-host-1', apiPort: 7423 };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-ownid-'));
    store = await createSqliteStore({ path: join(dir, 'db.sqlite'), clock });
    await store.migrate();
  });
  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const beat = (id: string, host: string, capabilities: string[], capacity = {}) =>
    store.workers.upsertHeartbeat(
      { id, hostname: host, status: 'online', providers: ['mock'], capabilities, capacity },
      clock.nowMs(),
    );

  it('lets an unknown id, its own earlier record, and a pre-upgrade record through', async () => {
    await checkOwnWorkerId(store, 'fresh', me, clock.nowMs(), 2 * MIN);
    await beat('cp-a', 'cp-host-1', ['control_plane'], { [API_PORT_CAPACITY_KEY]: 7423 });
    await checkOwnWorkerId(store, 'cp-a', me, clock.nowMs(), 2 * MIN);
    await beat('local', 'elsewhere', ['api', 'single_node']);
    await checkOwnWorkerId(store, 'local', me, clock.nowMs(), 2 * MIN);
  });

  it('refuses an id a live control plane elsewhere beats under, until its record is stale', async () => {
    await beat('cp-b', 'cp-host-2', ['control_plane'], { [API_PORT_CAPACITY_KEY]: 7423 });
    const err = await rejection(checkOwnWorkerId(store, 'cp-b', me, clock.nowMs(), 2 * MIN));
    expect(err.code).toBe('CONFLICT');
    expect(err.message).toContain(
      'server.local_worker_id "cp-b" is in use by the control plane on cp-host-2 (API port 7423)',
    );
    expect(err.message).toContain('give each control plane its own server.local_worker_id');
    // Same host, another API port: a second control plane on this host.
    await beat('cp-c', 'cp-host-1', ['control_plane'], { [API_PORT_CAPACITY_KEY]: 7424 });
    expect(
      (await rejection(checkOwnWorkerId(store, 'cp-c', me, clock.nowMs(), 2 * MIN))).code,
    ).toBe('CONFLICT');
    await checkOwnWorkerId(store, 'cp-b', me, clock.nowMs() + 3 * MIN, 2 * MIN);
  });

  it('refuses the id of a remote worker whatever its age', async () => {
    await beat('w7', 'worker-host', ['remote_worker', 'heartbeat']);
    const err = await rejection(checkOwnWorkerId(store, 'w7', me, clock.nowMs() + 60 * MIN, MIN));
    expect(err.message).toContain('is registered by a remote worker (host worker-host)');
  });
});

describe('a control plane that serves its own worker to the others (worker.listen_addr)', () => {
  let h: Harness;
  const auth = { 'x-api-key': ADMIN_KEY };

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.worker_token = SHARED;
      c.auth.worker_signing_key = SIGNING_KEY;
      c.auth.worker_tokens = [`cp-a=${CP_A_TOKEN}`];
      c.server.local_worker_id = 'cp-a';
      c.worker.listen_addr = '127.0.0.1:0';
    });
  });
  afterAll(async () => {
    await h.close();
  });

  async function ownRecord(): Promise<{
    capabilities: string[];
    capacity: Record<string, unknown>;
  }> {
    const res = await h.request({ method: 'GET', url: '/api/v1/workers/cp-a', headers: auth });
    expect(res.statusCode, res.body).toBe(200);
    return res.json();
  }

  it('registers under its id with control_plane and the rpc_url it listens on', async () => {
    const rec = await ownRecord();
    expect(rec.capabilities).toEqual(expect.arrayContaining(['control_plane', 'rpc']));
    expect(rec.capacity['rpc_url']).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(rec.capacity[API_PORT_CAPACITY_KEY]).toBe(h.config.server.port);
    const local = await h.request({ method: 'GET', url: '/api/v1/workers/local', headers: auth });
    expect(local.statusCode).toBe(404);
  });

  it('serves its sandboxes over worker RPC to its own auth.worker_tokens entry only', async () => {
    const id = await h.spawn({ ttl: '10m' });
    const sandbox = await h.request({
      method: 'GET',
      url: `/api/v1/sandboxes/${id}`,
      headers: auth,
    });
    expect(sandbox.json()).toMatchObject({ worker_id: 'cp-a' });
    const lease = await h.cp.store.leases.get(id);
    expect(lease?.holderId).toBe('cp-a');
    const rpcUrl = String((await ownRecord()).capacity['rpc_url']);
    const ref = {
      sandboxId: id,
      provider: 'mock',
      runtimeId: id,
      lease: {
        resourceId: id,
        holderId: 'cp-a',
        generation: lease!.generation,
        expiresAtMs: lease!.expiresAtMs,
      },
    };
    const spec: ExecSpec = {
      command: 'echo over rpc',
      args: [],
      mode: 'shell',
      env: {},
      workdir: '',
      timeoutMs: 10_000,
    };
    const client = new HttpWorkerClient({ workerId: 'cp-a', rpcUrl, token: () => CP_A_TOKEN });
    try {
      const out = await client.exec(ref, spec);
      expect(out.stdout).toBe('over rpc\n');
    } finally {
      await client.close();
    }
    // What every remote worker holds (the shared token, tokens minted with the
    // signing key) must not open a control plane's own worker.
    for (const token of [
      () => SHARED,
      () =>
        issueWorkerToken(
          { workerId: 'cp-a', audience: WORKER_AUDIENCE_RPC, ttlMs: MIN },
          SIGNING_KEY,
          Date.now(),
        ).token,
      () => 'nope',
    ]) {
      const wrong = new HttpWorkerClient({ workerId: 'cp-a', rpcUrl, token });
      try {
        const err = await rejection(wrong.status(ref));
        expect(err.message).toContain("worker cp-a refused the control plane's RPC credentials");
      } finally {
        await wrong.close();
      }
    }
  });

  it('refuses heartbeats under its own id, "local", and any control plane’s id', async () => {
    await h.cp.store.workers.upsertHeartbeat(
      {
        id: 'cp-z',
        hostname: 'other-cp',
        status: 'online',
        providers: ['mock'],
        capabilities: ['api', 'control_plane'],
        capacity: {},
      },
      Date.now(),
    );
    const body = { hostname: 'impostor', providers: ['mock'], capabilities: ['remote_worker'] };
    for (const id of ['cp-a', 'local', 'cp-z']) {
      const res = await h.request({
        method: 'POST',
        url: `/api/v1/worker/${id}/heartbeat`,
        body,
        // cp-a's own entry is the only credential for its id; even that may not beat as a worker.
        headers: { 'x-worker-id': id, 'x-worker-token': id === 'cp-a' ? CP_A_TOKEN : SHARED },
      });
      expect(res.statusCode, `${id}: ${res.body}`).toBe(403);
      expect(res.json().message).toContain(`worker id "${id}" is reserved`);
    }
    const ok = await h.request({
      method: 'POST',
      url: '/api/v1/worker/w-ok/heartbeat',
      body,
      headers: { 'x-worker-id': 'w-ok', 'x-worker-token': SHARED },
    });
    expect(ok.statusCode, ok.body).toBe(200);
    expect((await h.cp.store.workers.get('cp-z'))?.hostname).toBe('other-cp');
  });

  it('refuses to drain another control plane’s own worker', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/admin/workers/cp-z/drain',
      headers: auth,
    });
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().message).toContain('own worker of another control plane');
  });
});

describe('createControlPlane refusals about its own worker', () => {
  it('refuses worker.listen_addr without any credential to check callers, leaving nothing open', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-owncred-'));
    try {
      const c = defaultConfig();
      c.database.path = join(dir, 'db.sqlite');
      c.providers.mock.base_dir = join(dir, 'mock');
      c.providers.docker.enabled = false;
      c.worker.listen_addr = '127.0.0.1:0';
      const err = await rejection(
        createControlPlane({ config: c, logger: pino({ level: 'silent' }) }),
      );
      expect(err.code).toBe('BAD_REQUEST');
      expect(err.message).toContain('has no credential to check them');
      // The store was closed: a second start on the same file works.
      c.worker.listen_addr = '';
      const cp = await createControlPlane({ config: c, logger: pino({ level: 'silent' }) });
      await cp.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses an own-worker id a live control plane on another host uses', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-ownid2-'));
    try {
      const c = defaultConfig();
      c.database.path = join(dir, 'db.sqlite');
      c.providers.mock.base_dir = join(dir, 'mock');
      c.providers.docker.enabled = false;
      const seed = await createSqliteStore({ path: c.database.path });
      await seed.migrate();
      await seed.workers.upsertHeartbeat(
        {
          id: 'local',
          hostname: `not-${hostname()}`,
          status: 'online',
          providers: ['mock'],
          capabilities: ['api', 'control_plane'],
          capacity: { [API_PORT_CAPACITY_KEY]: 7423 },
        },
        Date.now(),
      );
      await seed.close();
      const err = await rejection(
        createControlPlane({ config: c, logger: pino({ level: 'silent' }) }),
      );
      expect(err.code).toBe('CONFLICT');
      expect(err.message).toContain('server.local_worker_id "local" is in use');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
