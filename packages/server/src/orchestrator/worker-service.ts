import type { Clock } from '../domain/clock.js';
import { notFound } from '../domain/errors.js';
import type { Logger } from '../domain/logger.js';
import type { WorkerRecord } from '../domain/worker.js';
import { DEFAULT_STALE_AFTER_MS, isWorkerStale } from '../domain/worker.js';
import type { Store, WorkerHeartbeat } from '../store/store.js';
import type { EventBus } from './events.js';

export interface WorkerServiceOptions {
  store: Store;
  clock: Clock;
  events: EventBus;
  logger: Logger;
  staleAfterMs?: number;
}

/** The worker registry as the API sees it. */
export class WorkerService {
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: WorkerServiceOptions) {}

  get staleAfterMs(): number {
    return this.o.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;
  }

  list(): Promise<WorkerRecord[]> {
    return this.o.store.workers.list();
  }

  async get(id: string): Promise<WorkerRecord> {
    const w = await this.o.store.workers.get(id);
    if (w === undefined) throw notFound(`not found: worker "${id}"`);
    return w;
  }

  isStale(w: WorkerRecord): boolean {
    return isWorkerStale(w, this.o.clock.nowMs(), this.staleAfterMs);
  }

  async remove(id: string): Promise<void> {
    if (!(await this.o.store.workers.delete(id))) throw notFound(`not found: worker "${id}"`);
    this.o.events.publish('worker.removed', undefined, { worker_id: id });
  }

  heartbeat(hb: WorkerHeartbeat): Promise<WorkerRecord> {
    return this.o.store.workers.upsertHeartbeat(hb, this.o.clock.nowMs());
  }

  /**
   * Keeps the control plane's own worker registered: once now and then on an
   * interval, so deleting it through the admin API is undone at the next beat.
   */
  async startLocalHeartbeat(hb: () => WorkerHeartbeat, intervalMs: number): Promise<void> {
    await this.heartbeat(hb());
    this.o.events.publish('worker.registered', undefined, { worker_id: hb().id });
    this.timer = setInterval(() => {
      this.heartbeat(hb()).catch((err: unknown) =>
        this.o.logger.warn({ err: (err as Error).message }, 'local worker heartbeat failed'),
      );
    }, intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}
