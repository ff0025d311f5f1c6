import { describe, expect, it } from 'vitest';
import { ManualClock } from '../domain/clock.js';
import { conflict, notFound } from '../domain/errors.js';
import { silentLogger } from '../domain/logger.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import type { PreviewUpstream, WorkerClient, WorkerDirectory } from '../rpc/worker-client.js';
import { EventBus } from './events.js';
import { PreviewService } from './preview-service.js';
import type { PreviewSettings } from './preview-service.js';
import type { SandboxService } from './sandbox-service.js';

const DOMAIN = 'localhost';

function record(id: string, over: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    id,
    state: 'running',
    provider: 'mock',
    image: 'img',
    memoryMb: 256,
    vcpus: 1,
    ownerId: 'o',
    tenantId: 't1',
    vmId: '',
    workerId: 'w1',
    metadata: {},
    ports: [3000],
    createdAtMs: 0,
    updatedAtMs: 0,
    expiresAtMs: Date.UTC(2030, 0, 1),
    ...over,
  };
}

/** A store of sandboxes and a worker that count how often they are asked. */
function setup(opts: { ttlMs: number; max?: number; withEvents?: boolean }) {
  const clock = new ManualClock();
  const events = new EventBus({ clock });
  const sandboxes = new Map<string, SandboxRecord>();
  const calls = { get: 0, upstream: 0 };
  let nextPort = 40_000;
  const stubSandboxes = {
    limits: { maxTtlMs: 0 },
    get: (id: string, ctx: { tenantId?: string }): Promise<SandboxRecord> => {
      calls.get += 1;
      const rec = sandboxes.get(id);
      if (rec === undefined || rec.state === 'destroyed') {
        return Promise.reject(notFound(`sandbox not found: ${id}`));
      }
      if (ctx.tenantId !== undefined && ctx.tenantId !== rec.tenantId) {
        return Promise.reject(notFound(`sandbox not found: ${id}`));
      }
      return Promise.resolve(rec);
    },
    extend: () => Promise.reject(conflict('not in this test')),
  } as unknown as SandboxService;
  const client = {
    previewUpstream: (): Promise<PreviewUpstream> => {
      calls.upstream += 1;
      nextPort += 1;
      return Promise.resolve({ kind: 'direct', host: '127.0.0.1', port: nextPort });
    },
  } as unknown as WorkerClient;
  const workers: WorkerDirectory = { client: () => client };
  const settings: PreviewSettings = {
    enabled: true,
    defaultDomain: DOMAIN,
    scheme: 'http',
    publicPort: 0,
    private: false,
    tokenTtlMs: 60_000,
    tokenKey: 'k',
    extendOnTrafficMs: 0,
    resolveCacheTtlMs: opts.ttlMs,
  };
  const service = new PreviewService({
    sandboxes: stubSandboxes,
    workers,
    clock,
    logger: silentLogger,
    settings,
    ...(opts.withEvents === false ? {} : { events }),
    ...(opts.max === undefined ? {} : { resolveCacheMax: opts.max }),
  });
  const target = (sandboxId: string, port = 3000, tenantId?: string) => ({
    sandboxId,
    port,
    domain: DOMAIN,
    ...(tenantId === undefined ? {} : { tenantId }),
  });
  return { clock, events, sandboxes, calls, service, target };
}

describe('PreviewService resolution cache', () => {
  it('answers repeated resolutions without the store or the worker', async () => {
    const s = setup({ ttlMs: 1_000 });
    s.sandboxes.set('sb-00000001', record('sb-00000001'));
    const first = await s.service.resolve(s.target('sb-00000001'));
    for (let i = 0; i < 5; i++) {
      expect(await s.service.resolve(s.target('sb-00000001'))).toEqual(first);
    }
    expect(s.calls).toEqual({ get: 1, upstream: 1 });
    // Another port, or a tenant header, is another entry.
    await s.service.resolve(s.target('sb-00000001', 3001));
    await s.service.resolve(s.target('sb-00000001', 3000, 't1'));
    expect(s.calls).toEqual({ get: 3, upstream: 3 });
    await expect(s.service.resolve(s.target('sb-00000001', 3000, 't2'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    expect(s.service.resolveCacheSize).toBe(3);
  });

  it('drops a destroyed sandbox at once: the next resolution is NOT_FOUND', async () => {
    const s = setup({ ttlMs: 60_000 });
    s.sandboxes.set('sb-00000002', record('sb-00000002'));
    s.sandboxes.set('sb-00000003', record('sb-00000003'));
    await s.service.resolve(s.target('sb-00000002'));
    await s.service.resolve(s.target('sb-00000003'));
    s.sandboxes.set('sb-00000002', record('sb-00000002', { state: 'destroyed' }));
    s.events.publish('sandbox.destroyed', 'sb-00000002', { reason: 'api' });
    await expect(s.service.resolve(s.target('sb-00000002'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    // The other sandbox keeps its entry.
    const before = s.calls.get;
    await s.service.resolve(s.target('sb-00000003'));
    expect(s.calls.get).toBe(before);
  });

  it('drops a sandbox on its other lifecycle events', async () => {
    const s = setup({ ttlMs: 60_000 });
    s.sandboxes.set('sb-00000004', record('sb-00000004'));
    for (const type of ['sandbox.expired', 'sandbox.state_changed', 'sandbox.error'] as const) {
      await s.service.resolve(s.target('sb-00000004'));
      const before = s.calls.get;
      s.events.publish(type, 'sb-00000004');
      await s.service.resolve(s.target('sb-00000004'));
      expect(s.calls.get, type).toBe(before + 1);
    }
    s.sandboxes.set('sb-00000004', record('sb-00000004', { state: 'unhealthy' }));
    s.events.publish('sandbox.state_changed', 'sb-00000004');
    await expect(s.service.resolve(s.target('sb-00000004'))).rejects.toMatchObject({
      code: 'CONFLICT',
    });
  });

  it('does not store a resolution an event invalidated while it ran', async () => {
    const s = setup({ ttlMs: 60_000 });
    s.sandboxes.set('sb-00000005', record('sb-00000005'));
    const pending = s.service.resolve(s.target('sb-00000005'));
    s.events.publish('sandbox.state_changed', 'sb-00000005');
    await pending;
    expect(s.service.resolveCacheSize).toBe(0);
  });

  it('expires entries after the TTL', async () => {
    const s = setup({ ttlMs: 1_000, withEvents: false });
    s.sandboxes.set('sb-00000006', record('sb-00000006'));
    await s.service.resolve(s.target('sb-00000006'));
    s.clock.advance(999);
    await s.service.resolve(s.target('sb-00000006'));
    expect(s.calls.get).toBe(1);
    // Without events, a change is seen once the entry is older than the TTL.
    s.sandboxes.delete('sb-00000006');
    s.clock.advance(1);
    await expect(s.service.resolve(s.target('sb-00000006'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    expect(s.calls.get).toBe(2);
    expect(s.service.resolveCacheSize).toBe(0);
  });

  it('answers cached() synchronously only with a fresh entry: none before a resolve, after the TTL or after an event', async () => {
    const s = setup({ ttlMs: 1_000 });
    s.sandboxes.set('sb-0000000a', record('sb-0000000a'));
    expect(s.service.cached(s.target('sb-0000000a'))).toBeUndefined();
    const first = await s.service.resolve(s.target('sb-0000000a'));
    expect(s.service.cached(s.target('sb-0000000a'))).toEqual(first);
    // Another port or tenant is another entry.
    expect(s.service.cached(s.target('sb-0000000a', 3001))).toBeUndefined();
    expect(s.service.cached(s.target('sb-0000000a', 3000, 't1'))).toBeUndefined();
    s.clock.advance(1_000);
    expect(s.service.cached(s.target('sb-0000000a'))).toBeUndefined();
    expect(s.service.resolveCacheSize).toBe(0);
    await s.service.resolve(s.target('sb-0000000a'));
    s.events.publish('sandbox.state_changed', 'sb-0000000a');
    expect(s.service.cached(s.target('sb-0000000a'))).toBeUndefined();
    expect(s.calls).toEqual({ get: 2, upstream: 2 });
    // With the cache off nothing is ever held.
    const off = setup({ ttlMs: 0 });
    off.sandboxes.set('sb-0000000b', record('sb-0000000b'));
    await off.service.resolve(off.target('sb-0000000b'));
    expect(off.service.cached(off.target('sb-0000000b'))).toBeUndefined();
  });

  it('drops everything when the event stream had a gap (cluster connection back after a loss)', async () => {
    const s = setup({ ttlMs: 60_000 });
    s.sandboxes.set('sb-0000000c', record('sb-0000000c'));
    await s.service.resolve(s.target('sb-0000000c'));
    expect(s.service.resolveCacheSize).toBe(1);
    s.events.resync();
    expect(s.service.resolveCacheSize).toBe(0);
    await s.service.resolve(s.target('sb-0000000c'));
    expect(s.calls.get).toBe(2);
  });

  it('never caches failures', async () => {
    const s = setup({ ttlMs: 60_000 });
    await expect(s.service.resolve(s.target('sb-00000007'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    s.sandboxes.set('sb-00000007', record('sb-00000007'));
    await expect(s.service.resolve(s.target('sb-00000007'))).resolves.toMatchObject({
      kind: 'direct',
    });
    expect(s.calls.get).toBe(2);
  });

  it('with a TTL of 0 asks the store and the worker every time', async () => {
    const s = setup({ ttlMs: 0 });
    s.sandboxes.set('sb-00000008', record('sb-00000008'));
    for (let i = 0; i < 3; i++) await s.service.resolve(s.target('sb-00000008'));
    expect(s.calls).toEqual({ get: 3, upstream: 3 });
    expect(s.service.resolveCacheSize).toBe(0);
    expect(s.events.subscriberCount).toBe(0);
  });

  it('keeps at most the configured number of entries, least recently used out first', async () => {
    const s = setup({ ttlMs: 60_000, max: 3 });
    const ids = ['sb-00000011', 'sb-00000012', 'sb-00000013', 'sb-00000014'];
    for (const id of ids) s.sandboxes.set(id, record(id));
    await s.service.resolve(s.target(ids[0]!));
    await s.service.resolve(s.target(ids[1]!));
    await s.service.resolve(s.target(ids[2]!));
    await s.service.resolve(s.target(ids[0]!)); // hit: now the most recently used
    await s.service.resolve(s.target(ids[3]!)); // evicts ids[1]
    expect(s.service.resolveCacheSize).toBe(3);
    const before = s.calls.get;
    await s.service.resolve(s.target(ids[0]!));
    await s.service.resolve(s.target(ids[2]!));
    await s.service.resolve(s.target(ids[3]!));
    expect(s.calls.get).toBe(before);
    await s.service.resolve(s.target(ids[1]!));
    expect(s.calls.get).toBe(before + 1);
    expect(s.service.resolveCacheSize).toBe(3);
  });

  it('drops everything on worker events and when a worker changes its preview domain', async () => {
    const s = setup({ ttlMs: 60_000 });
    s.sandboxes.set('sb-00000021', record('sb-00000021'));
    await s.service.resolve(s.target('sb-00000021'));
    s.events.publish('worker.status_changed', undefined, { worker_id: 'w1' });
    expect(s.service.resolveCacheSize).toBe(0);
    await s.service.resolve(s.target('sb-00000021'));
    s.service.observeWorker({ id: 'w1', capacity: { preview_domain: 'w1.example.com' } });
    expect(s.service.resolveCacheSize).toBe(0);
    // The sandbox now lives under its worker's domain only.
    await expect(s.service.resolve(s.target('sb-00000021'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
  });

  it('close() stops listening and empties the cache', async () => {
    const s = setup({ ttlMs: 60_000 });
    s.sandboxes.set('sb-00000031', record('sb-00000031'));
    expect(s.events.subscriberCount).toBe(1);
    await s.service.resolve(s.target('sb-00000031'));
    s.service.close();
    expect(s.events.subscriberCount).toBe(0);
    expect(s.service.resolveCacheSize).toBe(0);
  });
});

describe('PreviewService worker gateway URLs', () => {
  it('uses a worker preview_url only on the host of its own rpc_url (no open proxy)', () => {
    const s = setup({ ttlMs: 0 });
    s.service.observeWorker({
      id: 'w1',
      capacity: { rpc_url: 'http://10.1.2.3:7430', preview_url: 'http://10.1.2.3:7481' },
    });
    expect(s.service.previewUrlOf('w1')).toBe('http://10.1.2.3:7481');
    s.service.observeWorker({
      id: 'w1',
      capacity: { rpc_url: 'http://10.1.2.3:7430', preview_url: 'http://169.254.169.254' },
    });
    expect(s.service.previewUrlOf('w1')).toBeUndefined();
    s.service.observeWorker({ id: 'w2', capacity: { preview_url: 'http://10.1.2.4:7481' } });
    expect(s.service.previewUrlOf('w2')).toBeUndefined();
  });
});
