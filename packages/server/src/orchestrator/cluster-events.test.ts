import { describe, expect, test } from 'vitest';
import { ManualClock } from '../domain/clock.js';
import type { ClusterChannel } from '../domain/cluster.js';
import { silentLogger } from '../domain/logger.js';
import { CLUSTER_SEND_BATCH_MAX, ClusterEventBus } from './cluster-events.js';
import type { BatchingClusterChannel } from './cluster-events.js';
import type { StacyEvent } from './events.js';

/** An in-memory stand-in for LISTEN/NOTIFY: every subscriber gets every payload, in order. */
class FakeNetwork {
  readonly sent: string[] = [];
  /** Sizes of the round trips that carried them (publish = 1, publishMany = its length). */
  readonly trips: number[] = [];
  private readonly handlers = new Set<(p: string) => void>();
  private readonly resyncs = new Set<() => void>();
  failing = false;

  channel(): ClusterChannel & { closed: boolean } {
    let mine: ((p: string) => void) | undefined;
    const ch = {
      closed: false,
      publish: async (payload: string): Promise<void> => {
        await Promise.resolve();
        if (this.failing) throw new Error('database is down');
        this.trips.push(1);
        this.sent.push(payload);
        for (const h of this.handlers) h(payload);
      },
      subscribe: async (handler: (p: string) => void, onResync?: () => void): Promise<void> => {
        mine = handler;
        this.handlers.add(handler);
        if (onResync !== undefined) this.resyncs.add(onResync);
      },
      close: async (): Promise<void> => {
        ch.closed = true;
        if (mine !== undefined) this.handlers.delete(mine);
      },
    };
    return ch;
  }

  /** A channel that also sends batches in one round trip, as PgClusterChannel does. */
  batchingChannel(): BatchingClusterChannel & { closed: boolean } {
    const ch = this.channel();
    return Object.assign(ch, {
      publishMany: async (payloads: readonly string[]): Promise<void> => {
        await Promise.resolve();
        if (this.failing) throw new Error('database is down');
        this.trips.push(payloads.length);
        for (const payload of payloads) {
          this.sent.push(payload);
          for (const h of this.handlers) h(payload);
        }
      },
    });
  }

  /** Every listener's connection came back after a gap. */
  reconnect(): void {
    for (const r of this.resyncs) r();
  }

  /** Delivers a raw payload as if another process had sent it. */
  inject(payload: string): void {
    for (const h of this.handlers) h(payload);
  }
}

async function pair(net: FakeNetwork, clock = new ManualClock()) {
  const a = new ClusterEventBus({ clock, channel: net.channel(), logger: silentLogger });
  const b = new ClusterEventBus({ clock, channel: net.channel(), logger: silentLogger });
  await a.start();
  await b.start();
  return { a, b };
}

function collect(bus: ClusterEventBus): StacyEvent[] {
  const seen: StacyEvent[] = [];
  bus.subscribe((e) => seen.push(e));
  return seen;
}

describe('ClusterEventBus', () => {
  test('tells its resync listeners when the channel resumes after a gap', async () => {
    const net = new FakeNetwork();
    const { a } = await pair(net);
    let resyncs = 0;
    const off = a.onResync(() => (resyncs += 1));
    net.reconnect();
    expect(resyncs).toBe(1);
    off();
    net.reconnect();
    expect(resyncs).toBe(1);
  });

  test('an event published on one control plane reaches subscribers of both, once each', async () => {
    const net = new FakeNetwork();
    const { a, b } = await pair(net);
    const onA = collect(a);
    const onB = collect(b);
    const ev = a.publish('sandbox.created', 'sb-00000001', { worker_id: 'w1' });
    expect(onA).toEqual([ev]);
    await a.flushed();
    expect(onA).toHaveLength(1);
    expect(onB).toHaveLength(1);
    expect(onB[0]).toMatchObject({
      type: 'sandbox.created',
      sandbox_id: 'sb-00000001',
      timestamp: ev.timestamp,
      data: { worker_id: 'w1' },
    });
    expect(b.receivedTotal).toBe(1);
    expect(a.receivedTotal).toBe(0);
  });

  test('ids are numbered per control plane, and Last-Event-ID replay covers remote events', async () => {
    const net = new FakeNetwork();
    const { a, b } = await pair(net);
    b.publish('worker.registered', undefined, { worker_id: 'w2' });
    b.publish('worker.registered', undefined, { worker_id: 'w3' });
    await b.flushed();
    a.publish('sandbox.running', 'sb-00000002');
    await a.flushed();
    const onA = a.since('evt-0');
    expect(onA.map((e) => e.id)).toEqual(['evt-1', 'evt-2', 'evt-3']);
    expect(onA.map((e) => e.type)).toEqual([
      'worker.registered',
      'worker.registered',
      'sandbox.running',
    ]);
    expect(a.since('evt-2').map((e) => e.type)).toEqual(['sandbox.running']);
    expect(b.since('evt-0').map((e) => e.id)).toEqual(['evt-1', 'evt-2', 'evt-3']);
  });

  test('keeps the order of one control plane’s events on the channel', async () => {
    const net = new FakeNetwork();
    const { a, b } = await pair(net);
    const onB = collect(b);
    for (let i = 0; i < 50; i++) a.publish('exec.started', `sb-${String(i).padStart(8, '0')}`);
    await a.flushed();
    expect(onB.map((e) => e.sandbox_id)).toEqual(
      Array.from({ length: 50 }, (_, i) => `sb-${String(i).padStart(8, '0')}`),
    );
  });

  test('a database that refuses the message leaves local delivery intact and counts it unsent', async () => {
    const net = new FakeNetwork();
    const { a, b } = await pair(net);
    const onA = collect(a);
    const onB = collect(b);
    net.failing = true;
    a.publish('sandbox.destroyed', 'sb-00000003');
    await a.flushed();
    expect(onA).toHaveLength(1);
    expect(onB).toHaveLength(0);
    expect(a.unsentTotal).toBe(1);
    net.failing = false;
    a.publish('sandbox.destroyed', 'sb-00000004');
    await a.flushed();
    expect(onB.map((e) => e.sandbox_id)).toEqual(['sb-00000004']);
  });

  test('drops beyond maxPending instead of queueing without bound', async () => {
    const net = new FakeNetwork();
    const clock = new ManualClock();
    const a = new ClusterEventBus({
      clock,
      channel: net.channel(),
      logger: silentLogger,
      maxPending: 3,
    });
    for (let i = 0; i < 10; i++) a.publish('exec.started', 'sb-00000005');
    await a.flushed();
    expect(net.sent).toHaveLength(3);
    expect(a.unsentTotal).toBe(7);
    expect(a.publishedTotal).toBe(10);
  });

  test('ignores malformed or foreign payloads, and its own messages', async () => {
    const net = new FakeNetwork();
    const { a } = await pair(net);
    const onA = collect(a);
    for (const junk of [
      'not json',
      '[]',
      '{"v":2,"o":"x","e":{"type":"sandbox.created","timestamp":"t"}}',
      '{"v":1,"o":"x","e":{"type":5,"timestamp":"t"}}',
      '{"v":1,"e":{"type":"sandbox.created","timestamp":"t"}}',
    ]) {
      net.inject(junk);
    }
    net.inject(
      JSON.stringify({
        v: 1,
        o: a.instanceId,
        e: { type: 'sandbox.created', timestamp: '2026-01-01T00:00:00.000Z' },
      }),
    );
    expect(onA).toEqual([]);
    net.inject(
      JSON.stringify({
        v: 1,
        o: 'cp-other',
        e: { type: 'sandbox.created', timestamp: '2026-01-01T00:00:00.000Z', data: [1] },
      }),
    );
    expect(onA).toHaveLength(1);
    expect(onA[0]).not.toHaveProperty('data');
  });

  test('close sends what is queued, then closes the channel; later events stay local', async () => {
    const net = new FakeNetwork();
    const clock = new ManualClock();
    const channel = net.channel();
    const a = new ClusterEventBus({ clock, channel, logger: silentLogger });
    await a.start();
    a.publish('sandbox.created', 'sb-00000006');
    await a.close();
    expect(net.sent).toHaveLength(1);
    expect(channel.closed).toBe(true);
    const onA = collect(a);
    a.publish('sandbox.created', 'sb-00000007');
    await a.flushed();
    expect(onA).toHaveLength(1);
    expect(net.sent).toHaveLength(1);
  });

  test('events published together share one round trip, in order; later ones the next', async () => {
    const net = new FakeNetwork();
    const clock = new ManualClock();
    const a = new ClusterEventBus({ clock, channel: net.batchingChannel(), logger: silentLogger });
    const b = new ClusterEventBus({ clock, channel: net.channel(), logger: silentLogger });
    await a.start();
    await b.start();
    const onB = collect(b);
    a.publish('sandbox.created', 'sb-00000010');
    a.publish('sandbox.running', 'sb-00000010');
    await a.flushed();
    expect(net.trips).toEqual([2]);
    // Equal events are still distinct messages (a database may fold equal ones sent together).
    a.publish('exec.started', 'sb-00000010');
    a.publish('exec.started', 'sb-00000010');
    await a.flushed();
    expect(new Set(net.sent).size).toBe(4);
    expect(onB.map((e) => e.type)).toEqual([
      'sandbox.created',
      'sandbox.running',
      'exec.started',
      'exec.started',
    ]);
    // While one batch is on its way, new events queue up for the next.
    const n = CLUSTER_SEND_BATCH_MAX + 10;
    for (let i = 0; i < n; i++) a.publish('exec.started', `sb-${String(i).padStart(8, '0')}`);
    await Promise.resolve();
    a.publish('sandbox.destroyed', 'sb-99999999');
    await a.flushed();
    expect(net.trips.slice(2)).toEqual([CLUSTER_SEND_BATCH_MAX, 11]);
    expect(onB.slice(4).map((e) => e.sandbox_id)).toEqual([
      ...Array.from({ length: n }, (_, i) => `sb-${String(i).padStart(8, '0')}`),
      'sb-99999999',
    ]);
    expect(a.unsentTotal).toBe(0);
  });

  test('a refused batch counts every event in it unsent; sending goes on afterwards', async () => {
    const net = new FakeNetwork();
    const clock = new ManualClock();
    const a = new ClusterEventBus({ clock, channel: net.batchingChannel(), logger: silentLogger });
    net.failing = true;
    a.publish('sandbox.created', 'sb-00000011');
    a.publish('sandbox.running', 'sb-00000011');
    await a.flushed();
    expect(a.unsentTotal).toBe(2);
    net.failing = false;
    a.publish('sandbox.destroyed', 'sb-00000011');
    await a.flushed();
    expect(net.sent).toHaveLength(1);
    expect(a.unsentTotal).toBe(2);
  });
});
