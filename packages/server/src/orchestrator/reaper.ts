import type { LeaderLock } from '../domain/cluster.js';
import type { Logger } from '../domain/logger.js';
import type { SandboxService } from './sandbox-service.js';

export interface ReaperOptions {
  service: SandboxService;
  intervalMs: number;
  logger: Logger;
  /**
   * With several control planes: only the holder of this lock sweeps every
   * sandbox on its timer; the others sweep only their own worker's (which
   * may be reachable from nowhere else). Destroys are compare-and-set, so
   * overlapping sweeps (also a holder that lost its session without noticing
   * yet) only waste work.
   */
  leader?: Pick<LeaderLock, 'tryLead'>;
}

/** Destroys expired sandboxes on a fixed interval; never overlaps itself. */
export class Reaper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  private stopped = false;

  constructor(private readonly o: ReaperOptions) {}

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => void this.tickIfLeader(), this.o.intervalMs);
    this.timer.unref();
  }

  /**
   * What the timer runs: a full sweep when this control plane leads (always
   * without a lock) and its number of destroyed sandboxes; else a sweep of
   * its own worker's sandboxes only, and undefined.
   */
  async tickIfLeader(): Promise<number | undefined> {
    const leads = this.o.leader === undefined || (await this.o.leader.tryLead());
    // stop() may have come while the lock was asked: no sweep may start after it.
    if (this.stopped) return undefined;
    if (leads) return this.tick();
    await this.sweep('own');
    return undefined;
  }

  /** One sweep of every expired sandbox; returns how many it destroyed. */
  tick(): Promise<number> {
    return this.sweep('all');
  }

  private sweep(scope: 'all' | 'own'): Promise<number> {
    if (this.running !== undefined) return this.running;
    const ctx = { requestId: 'reaper', actor: 'system:reaper' };
    this.running = (scope === 'all' ? this.o.service.prune(ctx) : this.o.service.pruneOwn(ctx))
      .then((n) => {
        if (n > 0) {
          this.o.logger.info({ destroyed: n, scope }, 'reaper destroyed expired sandboxes');
        }
        return n;
      })
      .catch((err: unknown) => {
        this.o.logger.error({ err: (err as Error).message }, 'reaper sweep failed');
        return 0;
      })
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  /** Stops the timer and waits for a sweep in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
