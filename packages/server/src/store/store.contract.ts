import { test as base, describe, expect } from 'vitest';
import { StacyError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import type { LeaseToken } from '../domain/lease.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import type { TemplateRecord } from '../domain/template.js';
import { LATEST_SCHEMA_VERSION, MIGRATIONS } from './migrations.js';
import { AUDIT_APPEND_BATCH_MAX } from './store.js';
import type { AuditEntry, ExecLogEntry, Store, WorkerHeartbeat } from './store.js';

/** What a dialect hands the contract suite for one test. */
export interface StoreContractFixture {
  /** A store over an empty database that has not been migrated yet. */
  store: Store;
  /** Removes what the fixture created (files, schemas); runs after close. */
  cleanup?: () => Promise<void>;
}

const T0 = Date.UTC(2026, 0, 1);
const MINUTE = 60_000;

function sandbox(id: string, over: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    id,
    state: 'running',
    provider: 'mock',
    image: 'alpine:3.20',
    memoryMb: 512,
    vcpus: 1,
    ownerId: 'alice',
    tenantId: '',
    vmId: `vm-${id}`,
    workerId: 'local',
    metadata: { purpose: 'test' },
    ports: [3000],
    createdAtMs: T0,
    updatedAtMs: T0,
    expiresAtMs: T0 + 10 * MINUTE,
    ...over,
  };
}

function template(name: string, over: Partial<TemplateRecord> = {}): TemplateRecord {
  return {
    name,
    version: 1,
    image: 'python:3.12-slim',
    provider: 'mock',
    description: 'Python with requests',
    memoryMb: 256,
    vcpus: 2,
    ttlSeconds: 600,
    env: { PIP_NO_CACHE_DIR: '1', GREETING: "it's ü" },
    setup: ['pip install requests', 'echo done > /workspace/ready'],
    metadata: { team: 'data' },
    ports: [3000, 8080],
    createdAtMs: T0,
    updatedAtMs: T0,
    ...over,
  };
}

/** A worker heartbeat for tests; `over` replaces any field. */
export function heartbeat(id: string, over: Partial<WorkerHeartbeat> = {}): WorkerHeartbeat {
  return {
    id,
    hostname: `${id}.example`,
    status: 'online',
    providers: ['mock'],
    capabilities: ['exec'],
    capacity: { max_sandboxes: 10 },
    ...over,
  };
}

function execLog(sandboxId: string, createdAtMs: number, command = 'echo'): ExecLogEntry {
  return {
    sandboxId,
    command,
    args: ['hi', "it's"],
    mode: 'argv',
    exitCode: 0,
    stdout: 'hi\n',
    stderr: '',
    truncated: false,
    durationMs: 12,
    timedOut: false,
    streamed: false,
    createdAtMs,
  };
}

function audit(createdAtMs: number, over: Partial<AuditEntry> = {}): AuditEntry {
  return {
    actor: 'alice',
    action: 'exec',
    sandboxId: 'sb-00000001',
    resource: '',
    status: 'success',
    detail: 'exit=0',
    requestId: 'req-1',
    createdAtMs,
    ...over,
  };
}

async function expectStacyError(
  promise: Promise<unknown>,
  code: ErrorCode,
  message?: RegExp,
): Promise<StacyError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  const se = err as StacyError;
  expect(se.code).toBe(code);
  if (message !== undefined) expect(se.message).toMatch(message);
  return se;
}

/**
 * Registers the behaviour every {@link Store} dialect must show, unchanged
 * across dialects. `makeStore` must return a store over a fresh, empty,
 * unmigrated database; the suite migrates it where needed and closes it.
 * Times are passed explicitly, so nothing sleeps.
 */
export function describeStoreContract(
  name: string,
  makeStore: () => Promise<StoreContractFixture>,
): void {
  const test = base.extend<{ fresh: Store; store: Store }>({
    // eslint-disable-next-line no-empty-pattern
    fresh: async ({}, use) => {
      const { store, cleanup } = await makeStore();
      try {
        await use(store);
      } finally {
        await store.close();
        await cleanup?.();
      }
    },
    store: async ({ fresh }, use) => {
      await fresh.migrate();
      await use(fresh);
    },
  });

  describe(`store contract: ${name}`, () => {
    describe('schema', () => {
      test('applies every migration once and reports the latest version', async ({ fresh }) => {
        expect(await fresh.schemaVersion()).toBe(0);
        expect(await fresh.migrate()).toEqual(MIGRATIONS.map((m) => m.version));
        expect(await fresh.schemaVersion()).toBe(LATEST_SCHEMA_VERSION);
        expect(await fresh.migrate()).toEqual([]);
        expect(await fresh.schemaVersion()).toBe(LATEST_SCHEMA_VERSION);
      });

      test('answers a ping and closes idempotently, refusing work afterwards', async ({
        store,
      }) => {
        await store.ping();
        await store.close();
        await store.close();
        await expectStacyError(store.sandboxes.get('sb-00000001'), 'UNAVAILABLE', /closed/);
      });
    });

    describe('sandboxes', () => {
      test('round-trips a record through insert and get', async ({ store }) => {
        const rec = sandbox('sb-00000001', {
          metadata: { a: '1', 'b c': 'ü' },
          ports: [3000, 8080],
          tenantId: 't1',
        });
        await store.sandboxes.insert(rec);
        expect(await store.sandboxes.get(rec.id)).toEqual(rec);
        expect(await store.sandboxes.get('sb-ffffffff')).toBeUndefined();
      });

      test('round-trips a default exec environment, and omits an empty one', async ({ store }) => {
        const withEnv = sandbox('sb-00000001', { env: { A: '1', B_2: 'x y', C: '' } });
        await store.sandboxes.insert(withEnv);
        expect(await store.sandboxes.get(withEnv.id)).toEqual(withEnv);
        const moved = await store.sandboxes.transition(withEnv.id, ['running'], 'destroying');
        expect(moved?.env).toEqual({ A: '1', B_2: 'x y', C: '' });
        await store.sandboxes.insert(sandbox('sb-00000002', { env: {} }));
        const empty = await store.sandboxes.get('sb-00000002');
        expect(empty).not.toHaveProperty('env');
        expect(empty).toEqual(sandbox('sb-00000002'));
      });

      test('refuses a duplicate id with CONFLICT and keeps the original', async ({ store }) => {
        await store.sandboxes.insert(sandbox('sb-00000001'));
        await expectStacyError(
          store.sandboxes.insert(sandbox('sb-00000001', { image: 'other' })),
          'CONFLICT',
          /sb-00000001/,
        );
        expect((await store.sandboxes.get('sb-00000001'))?.image).toBe('alpine:3.20');
      });

      test('lists newest first by creation time, then by id', async ({ store }) => {
        await store.sandboxes.insert(sandbox('sb-0000000a', { createdAtMs: T0 }));
        await store.sandboxes.insert(sandbox('sb-0000000b', { createdAtMs: T0 + 1 }));
        await store.sandboxes.insert(sandbox('sb-0000000c', { createdAtMs: T0 + 1 }));
        await store.sandboxes.insert(sandbox('sb-0000000d', { createdAtMs: T0 + 2 }));
        const ids = (await store.sandboxes.list()).map((s) => s.id);
        expect(ids).toEqual(['sb-0000000d', 'sb-0000000c', 'sb-0000000b', 'sb-0000000a']);
        const limited = (await store.sandboxes.list({ limit: 2 })).map((s) => s.id);
        expect(limited).toEqual(['sb-0000000d', 'sb-0000000c']);
      });

      test('hides destroyed records from lists and counts unless asked, but get still finds them', async ({
        store,
      }) => {
        await store.sandboxes.insert(sandbox('sb-00000001'));
        await store.sandboxes.insert(sandbox('sb-00000002', { state: 'destroyed' }));
        expect((await store.sandboxes.list()).map((s) => s.id)).toEqual(['sb-00000001']);
        expect(await store.sandboxes.count()).toBe(1);
        expect(await store.sandboxes.count({ includeDestroyed: true })).toBe(2);
        expect(await store.sandboxes.list({ includeDestroyed: true })).toHaveLength(2);
        expect(await store.sandboxes.list({ states: ['destroyed'] })).toHaveLength(1);
        expect((await store.sandboxes.get('sb-00000002'))?.state).toBe('destroyed');
      });

      test('filters lists and counts by worker, owner, tenant, states and expiry', async ({
        store,
      }) => {
        await store.sandboxes.insert(
          sandbox('sb-00000001', { workerId: 'w1', ownerId: 'alice', tenantId: 't1' }),
        );
        await store.sandboxes.insert(
          sandbox('sb-00000002', {
            workerId: 'w2',
            ownerId: 'bob',
            state: 'creating',
            expiresAtMs: T0 + MINUTE,
          }),
        );
        await store.sandboxes.insert(
          sandbox('sb-00000003', { workerId: 'w1', ownerId: 'bob', state: 'error' }),
        );
        const ids = async (f: Parameters<Store['sandboxes']['list']>[0]): Promise<string[]> =>
          (await store.sandboxes.list(f)).map((s) => s.id).sort();
        expect(await ids({ workerId: 'w1' })).toEqual(['sb-00000001', 'sb-00000003']);
        expect(await ids({ ownerId: 'bob' })).toEqual(['sb-00000002', 'sb-00000003']);
        expect(await ids({ tenantId: 't1' })).toEqual(['sb-00000001']);
        expect(await ids({ states: ['creating', 'error'] })).toEqual([
          'sb-00000002',
          'sb-00000003',
        ]);
        expect(await ids({ states: [] })).toEqual([]);
        expect(await ids({ expiresBeforeMs: T0 + 2 * MINUTE })).toEqual(['sb-00000002']);
        expect(await ids({ workerId: 'w1', ownerId: 'bob' })).toEqual(['sb-00000003']);
        expect(await store.sandboxes.count({ workerId: 'w1' })).toBe(2);
        expect(await store.sandboxes.count({ ownerId: 'bob', states: ['error'] })).toBe(1);
        expect(await store.sandboxes.count({ states: [] })).toBe(0);
        const byWorker = await store.sandboxes.countByWorker();
        expect(Object.fromEntries(byWorker)).toEqual({ w1: 2, w2: 1 });
        const running = await store.sandboxes.countByWorker({ states: ['running'] });
        expect(Object.fromEntries(running)).toEqual({ w1: 1 });
        expect((await store.sandboxes.countByWorker({ states: [] })).size).toBe(0);
      });

      test('transitions only from a listed state, applying the patch and the time', async ({
        store,
      }) => {
        await store.sandboxes.insert(sandbox('sb-00000001', { state: 'creating' }));
        const moved = await store.sandboxes.transition(
          'sb-00000001',
          ['creating'],
          'running',
          { vmId: 'ctr-1', workerId: 'w9', provider: 'docker', expiresAtMs: T0 + 99 * MINUTE },
          T0 + 5,
        );
        expect(moved).toMatchObject({
          state: 'running',
          vmId: 'ctr-1',
          workerId: 'w9',
          provider: 'docker',
          expiresAtMs: T0 + 99 * MINUTE,
          updatedAtMs: T0 + 5,
          createdAtMs: T0,
        });
        expect(await store.sandboxes.get('sb-00000001')).toEqual(moved);
      });

      test('returns undefined and changes nothing when the state does not match', async ({
        store,
      }) => {
        const rec = sandbox('sb-00000001', { state: 'running' });
        await store.sandboxes.insert(rec);
        expect(
          await store.sandboxes.transition(
            'sb-00000001',
            ['creating', 'error'],
            'destroyed',
            { vmId: 'x' },
            T0 + 5,
          ),
        ).toBeUndefined();
        expect(
          await store.sandboxes.transition('sb-00000001', [], 'destroyed', {}, T0 + 5),
        ).toBeUndefined();
        expect(
          await store.sandboxes.transition('sb-ffffffff', ['running'], 'destroyed', {}, T0 + 5),
        ).toBeUndefined();
        expect(await store.sandboxes.get('sb-00000001')).toEqual(rec);
      });

      test('updates fields only while the record is in one of the given states', async ({
        store,
      }) => {
        const rec = sandbox('sb-00000001', { state: 'running' });
        await store.sandboxes.insert(rec);
        expect(
          await store.sandboxes.update('sb-00000001', ['creating'], { expiresAtMs: 1 }, T0 + 1),
        ).toBeUndefined();
        expect(await store.sandboxes.get('sb-00000001')).toEqual(rec);
        const updated = await store.sandboxes.update(
          'sb-00000001',
          ['running', 'unhealthy'],
          { expiresAtMs: T0 + 60 * MINUTE },
          T0 + 2,
        );
        expect(updated).toEqual({ ...rec, expiresAtMs: T0 + 60 * MINUTE, updatedAtMs: T0 + 2 });
      });

      test('lets exactly one of many concurrent transitions of a record win', async ({ store }) => {
        await store.sandboxes.insert(sandbox('sb-00000001', { state: 'running' }));
        const results = await Promise.all(
          Array.from({ length: 12 }, (_, i) =>
            store.sandboxes.transition('sb-00000001', ['running'], 'destroyed', {}, T0 + i + 1),
          ),
        );
        const winners = results.filter((r) => r !== undefined);
        expect(winners).toHaveLength(1);
        expect(winners[0]?.state).toBe('destroyed');
        expect(await store.sandboxes.get('sb-00000001')).toEqual(winners[0]);
      });

      test('reads a record with the lease on it in one call, as get and leases.get do', async ({
        store,
      }) => {
        const a = sandbox('sb-00000001', { env: { A: '1' }, tenantId: 't1' });
        const b = sandbox('sb-00000002', { workerId: 'w2' });
        await store.sandboxes.insert(a);
        await store.sandboxes.insert(b);
        expect(await store.sandboxes.getWithLease('sb-ffffffff')).toBeUndefined();
        // No lease row: no lease key at all.
        const bare = await store.sandboxes.getWithLease(a.id);
        expect(bare).toEqual({ sandbox: a });
        expect(bare).not.toHaveProperty('lease');

        const lease = await store.leases.acquire({
          resourceId: a.id,
          resourceType: 'sandbox',
          holderId: 'local',
          ttlMs: MINUTE,
          nowMs: T0,
        });
        await store.leases.acquire({
          resourceId: b.id,
          resourceType: 'sandbox',
          holderId: 'w9',
          ttlMs: 2 * MINUTE,
          nowMs: T0,
        });
        // Alternating ids: each call reads its own row (the statement is reused).
        for (let i = 0; i < 3; i++) {
          expect(await store.sandboxes.getWithLease(a.id)).toEqual({ sandbox: a, lease });
          expect(await store.sandboxes.getWithLease(b.id)).toEqual({
            sandbox: b,
            lease: await store.leases.get(b.id),
          });
        }
        // Whoever holds it, released (holder '', expiry 0) or not, and on destroyed records too.
        expect((await store.sandboxes.getWithLease(b.id))?.lease?.holderId).toBe('w9');
        expect(await store.leases.release(lease, T0 + 1)).toBe(true);
        await store.sandboxes.transition(a.id, ['running'], 'destroyed', {}, T0 + 2);
        const gone = await store.sandboxes.getWithLease(a.id);
        expect(gone?.sandbox).toEqual(await store.sandboxes.get(a.id));
        expect(gone?.sandbox.state).toBe('destroyed');
        expect(gone?.lease).toEqual({
          ...lease,
          holderId: '',
          expiresAtMs: 0,
        });
        expect(gone?.lease).toEqual(await store.leases.get(a.id));
      });
    });

    describe('leases', () => {
      const acquire = (
        store: Store,
        holderId: string,
        nowMs: number,
        ttlMs = MINUTE,
        resourceId = 'sb-00000001',
      ) => store.leases.acquire({ resourceId, resourceType: 'sandbox', holderId, ttlMs, nowMs });
      const token = (holderId: string, generation: number): LeaseToken => ({
        resourceId: 'sb-00000001',
        holderId,
        generation,
      });

      test('acquires a free lease at generation 1 and renews it without a new generation', async ({
        store,
      }) => {
        const lease = await acquire(store, 'w1', T0);
        expect(lease).toEqual({
          resourceId: 'sb-00000001',
          resourceType: 'sandbox',
          holderId: 'w1',
          generation: 1,
          expiresAtMs: T0 + MINUTE,
        });
        expect(await store.leases.get('sb-00000001')).toEqual(lease);
        const renewed = await store.leases.renew(token('w1', 1), 5 * MINUTE, T0 + 30_000);
        expect(renewed).toEqual({ ...lease, expiresAtMs: T0 + 30_000 + 5 * MINUTE });
        expect(await store.leases.get('sb-00000001')).toEqual(renewed);
      });

      test('grows the generation on every acquisition, also across a release', async ({
        store,
      }) => {
        expect((await acquire(store, 'w1', T0)).generation).toBe(1);
        expect((await acquire(store, 'w1', T0 + 1)).generation).toBe(2);
        expect(await store.leases.release(token('w1', 2), T0 + 2)).toBe(true);
        const released = await store.leases.get('sb-00000001');
        expect(released).toMatchObject({ holderId: '', generation: 2 });
        expect((await acquire(store, 'w2', T0 + 3)).generation).toBe(3);
        expect((await acquire(store, 'w2', T0 + 4)).generation).toBe(4);
      });

      test('refuses a stale generation on renew and release', async ({ store }) => {
        await acquire(store, 'w1', T0);
        const current = await acquire(store, 'w1', T0 + 1);
        await expectStacyError(
          store.leases.renew(token('w1', 1), MINUTE, T0 + 2),
          'CONFLICT',
          /stale generation/,
        );
        expect(await store.leases.release(token('w1', 1), T0 + 2)).toBe(false);
        expect(await store.leases.get('sb-00000001')).toEqual(current);
      });

      test('refuses another holder while the lease is unexpired, naming holder and expiry', async ({
        store,
      }) => {
        const held = await acquire(store, 'w1', T0);
        await expectStacyError(
          acquire(store, 'w2', T0 + MINUTE - 1),
          'CONFLICT',
          new RegExp(`held by w1 until ${new Date(T0 + MINUTE).toISOString()}`),
        );
        await expectStacyError(
          store.leases.renew(token('w2', 1), MINUTE, T0 + 1),
          'CONFLICT',
          /not held by w2/,
        );
        expect(await store.leases.release(token('w2', 1), T0 + 1)).toBe(false);
        expect(await store.leases.get('sb-00000001')).toEqual(held);
      });

      test('hands an expired lease to another holder with the next generation', async ({
        store,
      }) => {
        await acquire(store, 'w1', T0);
        const taken = await acquire(store, 'w2', T0 + MINUTE);
        expect(taken).toMatchObject({
          holderId: 'w2',
          generation: 2,
          expiresAtMs: T0 + 2 * MINUTE,
        });
        await expectStacyError(
          store.leases.renew(token('w1', 1), MINUTE, T0 + MINUTE + 1),
          'CONFLICT',
          /not held by w1/,
        );
        expect(await store.leases.release(token('w1', 1), T0 + MINUTE + 1)).toBe(false);
        expect(await store.leases.get('sb-00000001')).toEqual(taken);
      });

      test('refuses to renew an expired lease', async ({ store }) => {
        await acquire(store, 'w1', T0);
        await expectStacyError(
          store.leases.renew(token('w1', 1), MINUTE, T0 + MINUTE),
          'CONFLICT',
          /expired/,
        );
        await expectStacyError(
          store.leases.renew(
            { resourceId: 'sb-ffffffff', holderId: 'w1', generation: 1 },
            MINUTE,
            T0,
          ),
          'CONFLICT',
        );
      });

      test('releases only once and reports a release of an unknown lease as false', async ({
        store,
      }) => {
        await acquire(store, 'w1', T0);
        expect(await store.leases.release(token('w1', 1), T0 + 1)).toBe(true);
        expect(await store.leases.release(token('w1', 1), T0 + 2)).toBe(false);
        await expectStacyError(
          store.leases.renew(token('w1', 1), MINUTE, T0 + 3),
          'CONFLICT',
          /not held/,
        );
        expect(
          await store.leases.release(
            { resourceId: 'sb-ffffffff', holderId: 'w1', generation: 1 },
            T0,
          ),
        ).toBe(false);
      });

      test('lets exactly one of many concurrent acquirers of a free lease win', async ({
        store,
      }) => {
        const outcomes = await Promise.allSettled(
          Array.from({ length: 16 }, (_, i) => acquire(store, `w${i}`, T0)),
        );
        const won = outcomes.filter((o) => o.status === 'fulfilled');
        expect(won).toHaveLength(1);
        for (const o of outcomes) {
          if (o.status === 'rejected') {
            expect(o.reason).toBeInstanceOf(StacyError);
            expect((o.reason as StacyError).code).toBe('CONFLICT');
          }
        }
        const lease = await store.leases.get('sb-00000001');
        expect(lease?.generation).toBe(1);
        expect(won[0]?.status === 'fulfilled' ? won[0].value : undefined).toEqual(lease);
      });

      test('lists leases ordered by resource id', async ({ store }) => {
        await acquire(store, 'w1', T0, MINUTE, 'sb-0000000b');
        await acquire(store, 'w1', T0, MINUTE, 'sb-0000000a');
        expect((await store.leases.list()).map((l) => l.resourceId)).toEqual([
          'sb-0000000a',
          'sb-0000000b',
        ]);
        expect(await store.leases.get('sb-0000000c')).toBeUndefined();
      });
    });

    describe('workers', () => {
      test('upserts heartbeats keeping the creation time', async ({ store }) => {
        const first = await store.workers.upsertHeartbeat(heartbeat('w1'), T0);
        expect(first).toEqual({
          id: 'w1',
          hostname: 'w1.example',
          status: 'online',
          providers: ['mock'],
          capabilities: ['exec'],
          capacity: { max_sandboxes: 10 },
          lastHeartbeatMs: T0,
          createdAtMs: T0,
          updatedAtMs: T0,
        });
        const second = await store.workers.upsertHeartbeat(
          heartbeat('w1', {
            status: 'draining',
            providers: ['mock', 'docker'],
            capacity: { max_sandboxes: 3 },
          }),
          T0 + MINUTE,
        );
        expect(second).toMatchObject({
          status: 'draining',
          providers: ['mock', 'docker'],
          capacity: { max_sandboxes: 3 },
          lastHeartbeatMs: T0 + MINUTE,
          createdAtMs: T0,
          updatedAtMs: T0 + MINUTE,
        });
        expect(await store.workers.get('w1')).toEqual(second);
      });

      test('lists workers ordered by id', async ({ store }) => {
        for (const id of ['w-b', 'local', 'w-a']) {
          await store.workers.upsertHeartbeat(heartbeat(id), T0);
        }
        expect((await store.workers.list()).map((w) => w.id)).toEqual(['local', 'w-a', 'w-b']);
      });

      test('lists workers with their sandbox counts in one read, also of ids without a worker row', async ({
        store,
      }) => {
        const empty = await store.workers.listWithSandboxCounts({ states: ['running'] });
        expect(empty.workers).toEqual([]);
        expect(empty.sandboxesByWorker.size).toBe(0);
        for (const id of ['w-b', 'local', 'w-a']) {
          await store.workers.upsertHeartbeat(heartbeat(id), T0);
        }
        await store.sandboxes.insert(sandbox('sb-00000001', { workerId: 'w-a' }));
        await store.sandboxes.insert(sandbox('sb-00000002', { workerId: 'w-a' }));
        await store.sandboxes.insert(sandbox('sb-00000003', { workerId: 'gone' }));
        await store.sandboxes.insert(
          sandbox('sb-00000004', { workerId: 'local', state: 'destroyed' }),
        );
        await store.sandboxes.insert(sandbox('sb-00000005', { workerId: 'w-b', state: 'error' }));
        const live = await store.workers.listWithSandboxCounts({ states: ['running', 'error'] });
        expect(live.workers).toEqual(await store.workers.list());
        expect(Object.fromEntries(live.sandboxesByWorker)).toEqual({ 'w-a': 2, gone: 1, 'w-b': 1 });
        expect(live.sandboxesByWorker).toEqual(
          await store.sandboxes.countByWorker({ states: ['running', 'error'] }),
        );
        const all = await store.workers.listWithSandboxCounts({ includeDestroyed: true });
        expect(Object.fromEntries(all.sandboxesByWorker)).toEqual({
          'w-a': 2,
          gone: 1,
          'w-b': 1,
          local: 1,
        });
        const none = await store.workers.listWithSandboxCounts({ states: [] });
        expect(none.workers.map((w) => w.id)).toEqual(['local', 'w-a', 'w-b']);
        expect(none.sandboxesByWorker.size).toBe(0);
      });

      test('deletes a worker and sets a status, reporting whether the row existed', async ({
        store,
      }) => {
        await store.workers.upsertHeartbeat(heartbeat('w1'), T0);
        expect(await store.workers.setStatus('w1', 'offline', T0 + 5)).toBe(true);
        expect(await store.workers.get('w1')).toMatchObject({
          status: 'offline',
          updatedAtMs: T0 + 5,
          lastHeartbeatMs: T0,
        });
        expect(await store.workers.setStatus('nope', 'offline', T0)).toBe(false);
        expect(await store.workers.delete('w1')).toBe(true);
        expect(await store.workers.delete('w1')).toBe(false);
        expect(await store.workers.get('w1')).toBeUndefined();
        expect(await store.workers.list()).toEqual([]);
      });
    });

    describe('templates', () => {
      test('round-trips a template through insert and get', async ({ store }) => {
        const rec = template('python-dev');
        await store.templates.insert(rec);
        expect(await store.templates.get('python-dev')).toEqual(rec);
        expect(await store.templates.get('nope')).toBeUndefined();
        const bare = template('bare', { env: {}, setup: [], metadata: {}, ports: [] });
        await store.templates.insert(bare);
        expect(await store.templates.get('bare')).toEqual(bare);
      });

      test('refuses a duplicate name with CONFLICT and keeps the original', async ({ store }) => {
        await store.templates.insert(template('web'));
        await expectStacyError(
          store.templates.insert(template('web', { image: 'other' })),
          'CONFLICT',
          /template web already exists/,
        );
        expect((await store.templates.get('web'))?.image).toBe('python:3.12-slim');
      });

      test('lists by name', async ({ store }) => {
        for (const n of ['node', 'alpine', 'python-dev', 'go.1']) {
          await store.templates.insert(template(n));
        }
        expect((await store.templates.list()).map((t) => t.name)).toEqual([
          'alpine',
          'go.1',
          'node',
          'python-dev',
        ]);
      });

      test('replaces content, keeps name and creation time, and bumps the version', async ({
        store,
      }) => {
        await store.templates.insert(template('web'));
        const next = template('web', {
          version: 99,
          image: 'node:20',
          provider: '',
          description: '',
          memoryMb: 1024,
          vcpus: 4,
          ttlSeconds: 60,
          env: { NODE_ENV: 'production' },
          setup: ['npm ci'],
          metadata: {},
          ports: [],
          createdAtMs: T0 + 500,
          updatedAtMs: T0 + 1000,
        });
        const replaced = await store.templates.replace(next);
        expect(replaced).toEqual({ ...next, version: 2, createdAtMs: T0 });
        expect(await store.templates.get('web')).toEqual(replaced);
        expect((await store.templates.replace(next))?.version).toBe(3);
        expect(await store.templates.replace(template('missing'))).toBeUndefined();
        expect(await store.templates.get('missing')).toBeUndefined();
      });

      test('gives concurrent replacements distinct versions', async ({ store }) => {
        await store.templates.insert(template('web'));
        const versions = await Promise.all(
          Array.from({ length: 8 }, (_, i) =>
            store.templates.replace(template('web', { memoryMb: 100 + i })),
          ),
        );
        expect(versions.map((v) => v?.version).sort((a, b) => (a ?? 0) - (b ?? 0))).toEqual([
          2, 3, 4, 5, 6, 7, 8, 9,
        ]);
        expect((await store.templates.get('web'))?.version).toBe(9);
      });

      test('deletes by name, reporting whether a row went', async ({ store }) => {
        await store.templates.insert(template('web'));
        expect(await store.templates.delete('web')).toBe(true);
        expect(await store.templates.delete('web')).toBe(false);
        expect(await store.templates.get('web')).toBeUndefined();
        expect(await store.templates.list()).toEqual([]);
        await store.templates.insert(template('web', { image: 'again' }));
        expect((await store.templates.get('web'))?.version).toBe(1);
      });
    });

    describe('exec logs', () => {
      test('round-trips entries of one sandbox newest first within the limit', async ({
        store,
      }) => {
        const a = await store.execLogs.append(execLog('sb-00000001', T0, 'first'));
        const b = await store.execLogs.append({
          ...execLog('sb-00000001', T0 + 1, 'second'),
          exitCode: 124,
          truncated: true,
          timedOut: true,
          streamed: true,
          stderr: 'killed',
          mode: 'shell',
          args: [],
        });
        await store.execLogs.append(execLog('sb-00000002', T0 + 2, 'other'));
        expect(b).toBeGreaterThan(a);
        const logs = await store.execLogs.list('sb-00000001', 10);
        expect(logs.map((l) => l.command)).toEqual(['second', 'first']);
        expect(logs[0]).toEqual({
          ...execLog('sb-00000001', T0 + 1, 'second'),
          id: b,
          exitCode: 124,
          truncated: true,
          timedOut: true,
          streamed: true,
          stderr: 'killed',
          mode: 'shell',
          args: [],
        });
        expect(logs[1]).toEqual({ ...execLog('sb-00000001', T0, 'first'), id: a });
        expect((await store.execLogs.list('sb-00000001', 1)).map((l) => l.command)).toEqual([
          'second',
        ]);
        expect(await store.execLogs.list('sb-ffffffff', 10)).toEqual([]);
      });
    });

    describe('audit', () => {
      test('round-trips entries newest first with sandbox and action filters', async ({
        store,
      }) => {
        const first = await store.audit.append(audit(T0, { action: 'sandbox.spawn' }));
        const second = await store.audit.append(audit(T0 + 1, { status: 'failure' }));
        await store.audit.append(audit(T0 + 2, { sandboxId: 'sb-00000002' }));
        expect(second).toBeGreaterThan(first);
        const all = await store.audit.list();
        expect(all.map((e) => e.createdAtMs)).toEqual([T0 + 2, T0 + 1, T0]);
        expect(all[1]).toEqual({ ...audit(T0 + 1, { status: 'failure' }), id: second });
        const bySandbox = await store.audit.list({ sandboxId: 'sb-00000001' });
        expect(bySandbox.map((e) => e.id)).toEqual([second, first]);
        const byAction = await store.audit.list({ sandboxId: 'sb-00000001', action: 'exec' });
        expect(byAction.map((e) => e.id)).toEqual([second]);
        expect(await store.audit.list({ limit: 1 })).toHaveLength(1);
      });

      test('appends many entries in the order given, over several statements', async ({
        store,
      }) => {
        const first = await store.audit.append(audit(T0, { requestId: 'before' }));
        // All with one timestamp, so only the ids order them.
        const n = AUDIT_APPEND_BATCH_MAX * 2 + 3;
        const entries = Array.from({ length: n }, (_, i) =>
          audit(T0 + 1, {
            requestId: `req-${i}`,
            action: i % 2 === 0 ? 'sandbox.spawn' : 'sandbox.destroy',
            detail: i === 1 ? 'y'.repeat(3000) : `n=${i}`,
            resource: i === 2 ? 'nul\0byte' : '',
          }),
        );
        await store.audit.appendMany(entries);
        await store.audit.appendMany([]);
        const listed = (await store.audit.list({ limit: n + 10 })).reverse();
        expect(listed).toHaveLength(n + 1);
        expect(listed[0]?.id).toBe(first);
        const ids = listed.map((e) => e.id ?? 0);
        expect([...ids].sort((a, b) => a - b)).toEqual(ids);
        expect(listed.slice(1).map((e) => e.requestId)).toEqual(entries.map((e) => e.requestId));
        expect(listed[1]).toEqual({ ...entries[0], id: listed[1]?.id });
        expect(listed[2]?.detail).toBe('y'.repeat(2048));
        expect(listed[3]?.resource).toBe('nul\uFFFDbyte');
      });

      test('caps stored detail at 2048 characters', async ({ store }) => {
        await store.audit.append(audit(T0, { detail: 'x'.repeat(5000) }));
        const [entry] = await store.audit.list();
        expect(entry?.detail).toBe('x'.repeat(2048));
      });

      test('lists 100 entries by default and at most 1000', async ({ store }) => {
        await Promise.all(
          Array.from({ length: 1005 }, (_, i) => store.audit.append(audit(T0 + i))),
        );
        const byDefault = await store.audit.list();
        expect(byDefault).toHaveLength(100);
        expect(byDefault[0]?.createdAtMs).toBe(T0 + 1004);
        expect(await store.audit.list({ limit: 5000 })).toHaveLength(1000);
      });
    });
  });
}
