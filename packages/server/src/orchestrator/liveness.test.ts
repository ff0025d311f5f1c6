import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../domain/clock.js';
import { silentLogger } from '../domain/logger.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import { createSqliteStore } from '../store/sqlite/open-sqlite.js';
import type { Store } from '../store/store.js';
import { EventBus } from './events.js';
import { LivenessSweeper } from './liveness.js';

const MIN = 60_000;

function record(id: string, workerId: string, clock: ManualClock, ttlMs: number): SandboxRecord {
  const now = clock.nowMs();
  return {
    id,
    state: 'running',
    provider: 'docker',
    image: 'x',
    memoryMb: 256,
    vcpus: 1,
    ownerId: '',
    tenantId: '',
    vmId: '',
    workerId,
    metadata: {},
    ports: [3000],
    createdAtMs: now,
    updatedAtMs: now,
    expiresAtMs: now + ttlMs,
  };
}

describe('worker liveness sweep', () => {
  let dir: string;
  let store: Store;
  let clock: ManualClock;
  let events: EventBus;
  let sweeper: LivenessSweeper;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-liveness-'));
    clock = new ManualClock();
    store = await createSqliteStore({ path: join(dir, 'db.sqlite'), clock });
    await store.migrate();
    events = new EventBus({ clock });
    sweeper = new LivenessSweeper({
      store,
      clock,
      events,
      logger: silentLogger,
      localWorkerId: 'local',
      staleAfterMs: 2 * MIN,
      intervalMs: 1000,
    });
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const beat = (id: string, status = 'online') =>
    store.workers.upsertHeartbeat(
      { id, hostname: id, status, providers: ['docker'], capabilities: [], capacity: {} },
      clock.nowMs(),
    );
  const state = async (id: string) => (await store.sandboxes.get(id))?.state;

  it('marks sandboxes of a silent worker unhealthy and brings them back when it beats again', async () => {
    await beat('w1');
    await store.sandboxes.insert(record('sb-00000001', 'w1', clock, 60 * MIN));
    expect(await sweeper.sweep()).toEqual({ unhealthy: [], expired: [], recovered: [] });
    clock.advance(3 * MIN);
    expect((await sweeper.sweep()).unhealthy).toEqual(['sb-00000001']);
    expect(await state('sb-00000001')).toBe('unhealthy');
    await beat('w1');
    expect((await sweeper.sweep()).recovered).toEqual(['sb-00000001']);
    expect(await state('sb-00000001')).toBe('running');
  });

  it('expires sandboxes of a silent worker past their TTL and releases their lease', async () => {
    await beat('w1');
    await store.sandboxes.insert(record('sb-00000002', 'w1', clock, 5 * MIN));
    await store.leases.acquire({
      resourceId: 'sb-00000002',
      resourceType: 'sandbox',
      holderId: 'w1',
      ttlMs: 10 * MIN,
      nowMs: clock.nowMs(),
    });
    clock.advance(6 * MIN);
    const seen: string[] = [];
    events.subscribe((e) => seen.push(e.type));
    expect((await sweeper.sweep()).expired).toEqual(['sb-00000002']);
    expect(await state('sb-00000002')).toBe('expired');
    expect((await store.leases.get('sb-00000002'))?.holderId).toBe('');
    expect(seen).toContain('sandbox.expired');
    // A late heartbeat does not resurrect an expired sandbox.
    await beat('w1');
    await sweeper.sweep();
    expect(await state('sb-00000002')).toBe('expired');
  });

  it('treats a draining worker as alive, an offline or unknown one as gone, and never sweeps local', async () => {
    await beat('w-drain', 'draining');
    await beat('w-off', 'offline');
    await store.sandboxes.insert(record('sb-00000003', 'w-drain', clock, 60 * MIN));
    await store.sandboxes.insert(record('sb-00000004', 'w-off', clock, 60 * MIN));
    await store.sandboxes.insert(record('sb-00000005', 'w-nobody', clock, 60 * MIN));
    await store.sandboxes.insert(record('sb-00000006', 'local', clock, 60 * MIN));
    const r = await sweeper.sweep();
    expect(r.unhealthy.sort()).toEqual(['sb-00000004', 'sb-00000005']);
    expect(await state('sb-00000003')).toBe('running');
    expect(await state('sb-00000006')).toBe('running');
  });

  it('sweeps on its timer only while it holds the leader lock', async () => {
    let leading = false;
    let asked = 0;
    const gated = new LivenessSweeper({
      store,
      clock,
      events,
      logger: silentLogger,
      localWorkerId: 'local',
      staleAfterMs: 2 * MIN,
      intervalMs: 1000,
      leader: {
        tryLead: async () => {
          asked += 1;
          return leading;
        },
      },
    });
    await beat('w1');
    await store.sandboxes.insert(record('sb-00000007', 'w1', clock, 60 * MIN));
    clock.advance(3 * MIN);
    await gated.tick();
    expect(asked).toBe(1);
    expect(await state('sb-00000007')).toBe('running');
    leading = true;
    await gated.tick();
    expect(await state('sb-00000007')).toBe('unhealthy');
    // Stopped: no sweep starts, not even for a leader.
    await beat('w1');
    await gated.stop();
    await gated.tick();
    expect(await state('sb-00000007')).toBe('unhealthy');
  });

  it('two sweepers at once (a leader that lost its session late) change each sandbox once', async () => {
    const other = new LivenessSweeper({
      store,
      clock,
      events,
      logger: silentLogger,
      localWorkerId: 'cp-b',
      staleAfterMs: 2 * MIN,
      intervalMs: 1000,
    });
    await beat('w1');
    for (let i = 10; i < 20; i++) {
      await store.sandboxes.insert(record(`sb-000000${i}`, 'w1', clock, 60 * MIN));
    }
    clock.advance(3 * MIN);
    const seen: string[] = [];
    events.subscribe((e) => seen.push(`${e.type}:${e.sandbox_id ?? ''}`));
    const [x, y] = await Promise.all([sweeper.sweep(), other.sweep()]);
    expect([...x.unhealthy, ...y.unhealthy].sort()).toEqual(
      Array.from({ length: 10 }, (_, i) => `sb-000000${i + 10}`),
    );
    expect(seen).toHaveLength(10);
  });
});
