import type { Clock } from '../domain/clock.js';
import { formatDurationMs } from '../domain/duration.js';
import { conflict, invalidField, notFound, StacyError } from '../domain/errors.js';
import type { Lease } from '../domain/lease.js';
import type { Logger } from '../domain/logger.js';
import type { WorkerRecord } from '../domain/worker.js';
import {
  CONTROL_PLANE_CAPABILITY,
  DEFAULT_STALE_AFTER_MS,
  isWorkerStale,
  LOCAL_WORKER_ID,
} from '../domain/worker.js';
import type { CallOptions } from '../providers/provider.js';
import type { Store, WorkerHeartbeat } from '../store/store.js';
import type { EventBus } from './events.js';

export interface WorkerServiceOptions {
  store: Store;
  clock: Clock;
  events: EventBus;
  logger: Logger;
  staleAfterMs?: number;
  /** The control plane's own worker id (drained by stopping the control plane, not remotely). */
  localWorkerId?: string;
  /** Reaches remote workers (drain requests). */
  remotes?: {
    remote(workerId: string): { shutdown(opts?: CallOptions): Promise<void> } | undefined;
  };
  /**
   * Told of every accepted heartbeat with the worker's previous record (if
   * any): the composition root uses it to learn RPC addresses and to
   * reconcile a worker that came back.
   */
  onHeartbeat?: (record: WorkerRecord, previous: WorkerRecord | undefined) => void;
}

/** Longest lease a worker may ask for in one renewal. */
export const MAX_LEASE_RENEW_MS = 24 * 60 * 60 * 1000;

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

  /**
   * A heartbeat a worker process sent (the worker route). The ids of
   * control planes' own workers are refused: `local`, this control plane's
   * own id, and any id whose registry record carries the `control_plane`
   * capability (another control plane's), since a worker claiming one would
   * take over that control plane's sandboxes.
   */
  async remoteHeartbeat(hb: WorkerHeartbeat): Promise<WorkerRecord> {
    const own = this.o.localWorkerId ?? LOCAL_WORKER_ID;
    if (hb.id === LOCAL_WORKER_ID || hb.id === own) {
      throw new StacyError('FORBIDDEN', `worker id "${hb.id}" is reserved`);
    }
    const existing = await this.o.store.workers.get(hb.id);
    if (existing?.capabilities.includes(CONTROL_PLANE_CAPABILITY) === true) {
      throw new StacyError(
        'FORBIDDEN',
        `worker id "${hb.id}" is reserved: a control plane's own worker is registered under it`,
      );
    }
    // Capabilities that mark a control plane's own worker are not a remote
    // worker's to claim (they would make it undrainable and lock its id).
    const capabilities = hb.capabilities.filter((c) => c !== CONTROL_PLANE_CAPABILITY);
    return this.heartbeat({ ...hb, capabilities }, existing);
  }

  async heartbeat(hb: WorkerHeartbeat, known?: WorkerRecord): Promise<WorkerRecord> {
    const hook = this.o.onHeartbeat;
    const previous =
      known ?? (hook === undefined ? undefined : await this.o.store.workers.get(hb.id));
    const record = await this.o.store.workers.upsertHeartbeat(hb, this.o.clock.nowMs());
    if (previous === undefined) {
      this.o.events.publish('worker.registered', undefined, { worker_id: hb.id });
    } else if (previous.status !== record.status) {
      this.o.events.publish('worker.status_changed', undefined, {
        worker_id: hb.id,
        from: previous.status,
        to: record.status,
      });
    }
    hook?.(record, previous);
    return record;
  }

  /**
   * Drains a remote worker: it refuses new sandboxes and keeps serving the
   * ones it has. The registry shows `draining` at once, so placement stops
   * choosing it before its next heartbeat.
   */
  async drain(id: string, opts?: CallOptions): Promise<WorkerRecord> {
    const w = await this.get(id);
    if (id === (this.o.localWorkerId ?? LOCAL_WORKER_ID)) {
      throw new StacyError(
        'BAD_REQUEST',
        `worker "${id}" is the control plane's own worker; it drains when the control plane stops (SIGTERM)`,
      );
    }
    if (w.capabilities.includes(CONTROL_PLANE_CAPABILITY)) {
      throw new StacyError(
        'BAD_REQUEST',
        `worker "${id}" is the own worker of another control plane; it drains when that control plane stops (SIGTERM)`,
      );
    }
    const client = this.o.remotes?.remote(id);
    if (client === undefined) {
      throw new StacyError(
        'UNAVAILABLE',
        `worker "${id}" cannot be reached: it advertises no usable rpc_url or the control plane has no credential for it`,
      );
    }
    await client.shutdown(opts);
    await this.o.store.workers.setStatus(id, 'draining', this.o.clock.nowMs());
    this.o.events.publish('worker.draining', undefined, { worker_id: id, requested_by: 'admin' });
    this.o.logger.info({ worker_id: id }, 'worker drain requested');
    return { ...w, status: 'draining' };
  }

  /**
   * A worker extends its lease on a sandbox it holds. Same holder, same
   * generation, not lapsed; otherwise CONFLICT.
   */
  async renewLease(workerId: string, resourceId: string, ttlMs: number): Promise<Lease> {
    if (!(ttlMs > 0)) throw invalidField('ttl', 'ttl must be a positive duration');
    if (ttlMs > MAX_LEASE_RENEW_MS) {
      throw invalidField('ttl', `ttl must be at most ${formatDurationMs(MAX_LEASE_RENEW_MS)}`);
    }
    const lease = await this.o.store.leases.get(resourceId);
    if (lease === undefined || lease.holderId !== workerId) {
      throw conflict(`lease on ${resourceId} is not held by worker ${workerId}`);
    }
    return this.o.store.leases.renew(
      { resourceId, holderId: workerId, generation: lease.generation },
      ttlMs,
      this.o.clock.nowMs(),
    );
  }

  /**
   * Keeps the control plane's own worker registered: once now and then on an
   * interval, so deleting it through the admin API is undone at the next beat.
   */
  async startLocalHeartbeat(hb: () => WorkerHeartbeat, intervalMs: number): Promise<void> {
    await this.heartbeat(hb());
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
