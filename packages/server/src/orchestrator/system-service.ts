import type { Clock } from '../domain/clock.js';
import { formatDurationMs } from '../domain/duration.js';
import { notFound } from '../domain/errors.js';
import { LIVE_STATES } from '../domain/sandbox.js';
import type { ProviderInfo, WorkerClient } from '../rpc/worker-client.js';
import type { Store } from '../store/store.js';
import type { EventBus } from './events.js';
import type { GaugeSample, Metrics } from './metrics.js';

export interface SystemServiceOptions {
  store: Store;
  local: WorkerClient;
  events: EventBus;
  metrics: Metrics;
  clock: Clock;
  version: string;
  startedAtMs: number;
  staleAfterMs: number;
}

export interface ProviderDetail {
  info: ProviderInfo;
  sandboxCount: number;
}

/** Health, readiness, providers and metrics. */
export class SystemService {
  private draining = false;

  constructor(private readonly o: SystemServiceOptions) {}

  get version(): string {
    return this.o.version;
  }

  uptime(): string {
    const ms = this.o.clock.nowMs() - this.o.startedAtMs;
    return formatDurationMs(Math.max(0, Math.round(ms / 1000) * 1000));
  }

  /** Marks the process as shutting down: readiness fails so balancers stop sending. */
  setDraining(): void {
    this.draining = true;
  }

  async ready(): Promise<{
    ready: boolean;
    store: { healthy: boolean; error?: string };
    providers: ProviderInfo[];
  }> {
    let store: { healthy: boolean; error?: string } = { healthy: true };
    try {
      await this.o.store.ping();
    } catch (err) {
      store = { healthy: false, error: (err as Error).message };
    }
    const providers = await this.o.local.providers();
    const ready = !this.draining && store.healthy && providers.some((p) => p.healthy);
    return { ready, store, providers };
  }

  providers(): Promise<ProviderInfo[]> {
    return this.o.local.providers();
  }

  async provider(name: string): Promise<ProviderDetail> {
    const all = await this.o.local.providers();
    const info = all.find((p) => p.name === name);
    if (info === undefined) throw notFound(`provider not found: ${name}`);
    const sandboxes = await this.o.store.sandboxes.list({ states: [...LIVE_STATES] });
    return { info, sandboxCount: sandboxes.filter((s) => s.provider === name).length };
  }

  async testProviders(): Promise<Record<string, boolean>> {
    const out: Record<string, boolean> = {};
    for (const p of await this.o.local.providers()) {
      const h = await this.o.local.providerHealth(p.name);
      out[p.name] = h.healthy;
    }
    return out;
  }

  /** Prometheus exposition of store-derived gauges plus operation counters. */
  async prometheus(): Promise<string> {
    const now = this.o.clock.nowMs();
    const gauges: GaugeSample[] = [
      {
        name: 'stacyvm_uptime_seconds',
        help: 'Seconds since the control plane started.',
        value: Math.round((now - this.o.startedAtMs) / 1000),
      },
    ];
    const mem = process.memoryUsage();
    gauges.push(
      { name: 'stacyvm_runtime_memory_rss_bytes', help: 'Resident set size.', value: mem.rss },
      {
        name: 'stacyvm_runtime_memory_heap_used_bytes',
        help: 'V8 heap in use.',
        value: mem.heapUsed,
      },
    );
    const live = await this.o.store.sandboxes.list({ states: [...LIVE_STATES] });
    const byState = new Map<string, number>(LIVE_STATES.map((s) => [s, 0]));
    const byProvider = new Map<string, number>();
    const byWorker = new Map<string, number>();
    for (const s of live) {
      byState.set(s.state, (byState.get(s.state) ?? 0) + 1);
      byProvider.set(s.provider, (byProvider.get(s.provider) ?? 0) + 1);
      byWorker.set(s.workerId, (byWorker.get(s.workerId) ?? 0) + 1);
    }
    for (const [state, n] of byState) {
      gauges.push({
        name: 'stacyvm_sandboxes_total',
        help: 'Live sandboxes by state.',
        labels: { state },
        value: n,
      });
    }
    for (const [provider, n] of byProvider) {
      gauges.push({
        name: 'stacyvm_sandboxes_by_provider_total',
        help: 'Live sandboxes by provider.',
        labels: { provider },
        value: n,
      });
    }
    for (const [worker, n] of byWorker) {
      gauges.push({
        name: 'stacyvm_sandboxes_by_worker_total',
        help: 'Live sandboxes by worker.',
        labels: { worker },
        value: n,
      });
    }
    for (const p of await this.o.local.providers()) {
      gauges.push(
        {
          name: 'stacyvm_provider_healthy',
          help: 'Whether a provider answered its health check (1) or not (0).',
          labels: { provider: p.name, default: String(p.isDefault) },
          value: p.healthy ? 1 : 0,
        },
        {
          name: 'stacyvm_provider_health_latency_milliseconds',
          help: 'Latency of the last provider health check.',
          labels: { provider: p.name },
          value: p.latencyMs,
        },
      );
    }
    const workers = await this.o.store.workers.list();
    const stale = workers.filter((w) => now - w.lastHeartbeatMs > this.o.staleAfterMs).length;
    const online = workers.filter((w) => w.status === 'online').length - stale;
    for (const [status, n] of [
      ['total', workers.length],
      ['online', Math.max(0, online)],
      ['stale', stale],
    ] as const) {
      gauges.push({
        name: 'stacyvm_workers_total',
        help: 'Registered workers.',
        labels: { status },
        value: n,
      });
    }
    const leases = await this.o.store.leases.list();
    const activeLeases = leases.filter((l) => l.holderId !== '' && l.expiresAtMs > now).length;
    gauges.push(
      {
        name: 'stacyvm_leases_total',
        help: 'Leases by status.',
        labels: { status: 'total' },
        value: leases.length,
      },
      {
        name: 'stacyvm_leases_total',
        help: 'Leases by status.',
        labels: { status: 'active' },
        value: activeLeases,
      },
      {
        name: 'stacyvm_events_total',
        help: 'Events published.',
        value: this.o.events.publishedTotal,
        type: 'counter',
      },
      {
        name: 'stacyvm_event_subscribers',
        help: 'Open event subscriptions.',
        value: this.o.events.subscriberCount,
      },
      {
        name: 'stacyvm_event_history_size',
        help: 'Events kept for replay.',
        value: this.o.events.historyLength,
      },
    );
    return this.o.metrics.render(gauges);
  }
}
