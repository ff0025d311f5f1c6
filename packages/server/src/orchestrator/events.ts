import type { Clock } from '../domain/clock.js';

/** Lifecycle event types published on the bus (reference §1.11 plus our additions). */
export type EventType =
  | 'sandbox.created'
  | 'sandbox.running'
  | 'sandbox.destroyed'
  | 'sandbox.expired'
  | 'sandbox.error'
  | 'sandbox.extended'
  | 'sandbox.state_changed'
  | 'exec.started'
  | 'exec.completed'
  | 'exec.failed'
  | 'exec.timeout'
  | 'file.written'
  | 'file.read'
  | 'file.deleted'
  | 'file.moved'
  | 'operation.failed'
  | 'worker.registered'
  | 'worker.removed'
  | 'worker.status_changed'
  | 'worker.draining';

/** Wire shape of an event (SSE `data:` payload). */
export interface StacyEvent {
  id: string;
  type: EventType;
  sandbox_id?: string;
  timestamp: string;
  data?: Record<string, unknown>;
}

export type EventListener = (event: StacyEvent) => void;

export interface EventBusOptions {
  clock: Clock;
  /** Events kept for `Last-Event-ID` replay. */
  historySize?: number;
}

/**
 * In-process pub/sub with a bounded history so a reconnecting SSE client can
 * resume from `Last-Event-ID` instead of silently missing events.
 */
export class EventBus {
  private readonly listeners = new Set<EventListener>();
  private readonly resyncListeners = new Set<() => void>();
  private readonly history: StacyEvent[] = [];
  private readonly historySize: number;
  private seq = 0;
  private published = 0;

  constructor(private readonly options: EventBusOptions) {
    this.historySize = options.historySize ?? 1000;
  }

  publish(type: EventType, sandboxId?: string, data?: Record<string, unknown>): StacyEvent {
    const fields: Omit<StacyEvent, 'id'> = {
      type,
      timestamp: new Date(this.options.clock.nowMs()).toISOString(),
    };
    if (sandboxId !== undefined) fields.sandbox_id = sandboxId;
    if (data !== undefined) fields.data = data;
    return this.deliver(fields);
  }

  /**
   * Numbers an event with this bus's next id (`evt-N`), keeps it for replay
   * and hands it to every subscriber. Ids are this process's own: an event
   * from another control plane gets a local id here.
   */
  protected deliver(fields: Omit<StacyEvent, 'id'>): StacyEvent {
    this.seq += 1;
    this.published += 1;
    const event: StacyEvent = { id: `evt-${this.seq}`, ...fields };
    this.history.push(event);
    if (this.history.length > this.historySize) this.history.shift();
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // A failing subscriber must not break publishers or other subscribers.
      }
    }
    return event;
  }

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /**
   * Calls `listener` whenever events may have been missed (another control
   * plane's events while the cluster connection was down), so state derived
   * from events can be dropped. Returns the unsubscribe function.
   */
  onResync(listener: () => void): () => void {
    this.resyncListeners.add(listener);
    return () => {
      this.resyncListeners.delete(listener);
    };
  }

  /** Tells {@link onResync} listeners that events may have been missed. */
  resync(): void {
    for (const listener of this.resyncListeners) {
      try {
        listener();
      } catch {
        // As with events: one failing listener does not stop the others.
      }
    }
  }

  /** Events after `lastEventId` still in history; none when the id is malformed. */
  since(lastEventId: string): StacyEvent[] {
    const n = Number(/^evt-(\d+)$/.exec(lastEventId)?.[1] ?? NaN);
    if (!Number.isFinite(n)) return [];
    return this.history.filter((e) => Number(e.id.slice(4)) > n);
  }

  get subscriberCount(): number {
    return this.listeners.size;
  }

  get publishedTotal(): number {
    return this.published;
  }

  get historyLength(): number {
    return this.history.length;
  }
}
