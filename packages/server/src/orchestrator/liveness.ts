import type { Clock } from '../domain/clock.js';
import type { LeaderLock } from '../domain/cluster.js';
import type { Logger } from '../domain/logger.js';
import type { Store } from '../store/store.js';
import type { EventBus } from './events.js';

export interface LivenessOptions {
  store: Store;
  clock: Clock;
  events: EventBus;
  logger: Logger;
  /** The control plane's own worker, which is never swept. */
  localWorkerId: string;
  staleAfterMs: number;
  intervalMs: number;
  /** With several control planes: only the holder of this lock sweeps on its timer. */
  leader?: Pick<LeaderLock, 'tryLead'>;
}

export interface SweepResult {
  unhealthy: string[];
  expired: string[];
  recovered: string[];
}

/**
 * The continuous worker-liveness sweep (the Go original only does this once,
 * at start). Sandboxes of a worker that stopped heartbeating become
 * `unhealthy`; those also past their expiry become `expired` with the lease
 * released; when the worker beats again, `unhealthy` ones return to
 * `running`. A draining worker still serves its sandboxes, so it counts as
 * alive. Every change is a compare-and-set, so several control planes
 * sweeping at once do no harm; with a `leader` lock only its holder sweeps.
 */
export class LivenessSweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<SweepResult> | undefined;
  private stopped = false;

  constructor(private readonly o: LivenessOptions) {}

  async sweep(): Promise<SweepResult> {
    const now = this.o.clock.nowMs();
    const out: SweepResult = { unhealthy: [], expired: [], recovered: [] };
    const workers = new Map((await this.o.store.workers.list()).map((w) => [w.id, w]));
    const sandboxes = await this.o.store.sandboxes.list({ states: ['running', 'unhealthy'] });
    for (const s of sandboxes) {
      if (s.workerId === this.o.localWorkerId) continue;
      const w = workers.get(s.workerId);
      const alive =
        w !== undefined &&
        (w.status === 'online' || w.status === 'draining') &&
        now - w.lastHeartbeatMs <= this.o.staleAfterMs;
      if (alive) {
        if (s.state !== 'unhealthy') continue;
        if (await this.o.store.sandboxes.transition(s.id, ['unhealthy'], 'running', {}, now)) {
          out.recovered.push(s.id);
          this.o.events.publish('sandbox.state_changed', s.id, {
            from: 'unhealthy',
            to: 'running',
            reason: 'worker_recovered',
            worker_id: s.workerId,
          });
        }
        continue;
      }
      if (s.expiresAtMs <= now) {
        const done = await this.o.store.sandboxes.transition(
          s.id,
          ['running', 'unhealthy'],
          'expired',
          {},
          now,
        );
        if (done === undefined) continue;
        const lease = await this.o.store.leases.get(s.id);
        if (lease !== undefined && lease.holderId === s.workerId) {
          await this.o.store.leases.release(
            { resourceId: s.id, holderId: lease.holderId, generation: lease.generation },
            now,
          );
        }
        out.expired.push(s.id);
        this.o.events.publish('sandbox.expired', s.id, {
          reason: 'worker_unreachable',
          worker_id: s.workerId,
        });
      } else if (s.state === 'running') {
        if (await this.o.store.sandboxes.transition(s.id, ['running'], 'unhealthy', {}, now)) {
          out.unhealthy.push(s.id);
          this.o.events.publish('sandbox.state_changed', s.id, {
            from: 'running',
            to: 'unhealthy',
            reason:
              w === undefined
                ? 'worker_unknown'
                : `worker_${w.status === 'online' ? 'stale' : w.status}`,
            worker_id: s.workerId,
          });
        }
      }
    }
    if (out.unhealthy.length + out.expired.length + out.recovered.length > 0) {
      this.o.logger.info({ ...out }, 'liveness sweep changed sandbox states');
    }
    return out;
  }

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => void this.tick(), this.o.intervalMs);
    this.timer.unref();
  }

  /** What the timer runs: a sweep when this control plane leads (always without a lock). */
  async tick(): Promise<void> {
    if (this.running !== undefined || this.stopped) return;
    if (this.o.leader !== undefined && !(await this.o.leader.tryLead())) return;
    if (this.running !== undefined || this.stopped) return;
    this.running = this.sweep();
    try {
      await this.running;
    } catch (err) {
      this.o.logger.error({ err: (err as Error).message }, 'liveness sweep failed');
    } finally {
      this.running = undefined;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.running?.catch(() => undefined);
  }
}
