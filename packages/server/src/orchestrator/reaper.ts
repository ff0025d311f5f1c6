import type { Logger } from '../domain/logger.js';
import type { SandboxService } from './sandbox-service.js';

export interface ReaperOptions {
  service: SandboxService;
  intervalMs: number;
  logger: Logger;
}

/** Destroys expired sandboxes on a fixed interval; never overlaps itself. */
export class Reaper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;

  constructor(private readonly o: ReaperOptions) {}

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => void this.tick(), this.o.intervalMs);
    this.timer.unref();
  }

  /** One sweep; returns how many sandboxes it destroyed. */
  async tick(): Promise<number> {
    if (this.running !== undefined) return this.running;
    this.running = this.o.service
      .prune({ requestId: 'reaper', actor: 'system:reaper' })
      .then((n) => {
        if (n > 0) this.o.logger.info({ destroyed: n }, 'reaper destroyed expired sandboxes');
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
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
