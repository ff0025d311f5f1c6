import { randomBytes } from 'node:crypto';
import type { ClusterChannel } from '../domain/cluster.js';
import type { Logger } from '../domain/logger.js';
import type { EventBusOptions, EventType, StacyEvent } from './events.js';
import { EventBus } from './events.js';
import { SerialBatcher } from './serial-batcher.js';

/**
 * A cluster channel that may also send several messages in one round trip.
 * `publishMany` delivers the payloads in order, as `publish` one after the
 * other would; without it the bus sends them one at a time.
 */
export interface BatchingClusterChannel extends ClusterChannel {
  publishMany?(payloads: readonly string[]): Promise<void>;
}

export interface ClusterEventBusOptions extends EventBusOptions {
  /** The channel every control plane on the database listens on. */
  channel: BatchingClusterChannel;
  logger: Logger;
  /** This process's id on the channel, to skip its own messages; random by default. */
  instanceId?: string;
  /** Messages waiting to go out at most; beyond it new ones are dropped (and counted). */
  maxPending?: number;
}

/** The wire form of one event on the cluster channel. */
interface ClusterMessage {
  v: 1;
  /** Instance id of the control plane that published it. */
  o: string;
  /**
   * Its number among the publisher's messages: no two messages are the same
   * text, so a database that folds identical notifications sent together
   * (PostgreSQL does, within one transaction) never drops one.
   */
  n: number;
  e: Omit<StacyEvent, 'id'>;
}

const DEFAULT_MAX_PENDING = 10_000;
/** Messages sent in one round trip at most. */
export const CLUSTER_SEND_BATCH_MAX = 64;
/** Least time between two "cannot publish" warnings. */
const WARN_EVERY_MS = 10_000;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The event of a channel message, or undefined when it is not one of ours. */
function parseMessage(
  payload: string,
): { origin: string; event: Omit<StacyEvent, 'id'> } | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (!isRecord(raw) || raw['v'] !== 1 || typeof raw['o'] !== 'string' || !isRecord(raw['e'])) {
    return undefined;
  }
  const e = raw['e'];
  if (typeof e['type'] !== 'string' || typeof e['timestamp'] !== 'string') return undefined;
  const event: Omit<StacyEvent, 'id'> = {
    type: e['type'] as EventType,
    timestamp: e['timestamp'],
  };
  if (typeof e['sandbox_id'] === 'string') event.sandbox_id = e['sandbox_id'];
  if (isRecord(e['data'])) event.data = e['data'];
  return { origin: raw['o'], event };
}

/**
 * The event bus of a control plane that shares its database with others:
 * every event is delivered to this process's subscribers at once (as the
 * plain {@link EventBus} does) and sent on the cluster channel, and events
 * other control planes send arrive here and reach this process's SSE
 * subscribers too. Each process numbers events itself, so `Last-Event-ID`
 * replay works against the control plane that gave out the id.
 *
 * Sending is ordered and never blocks a publisher: the events published
 * while nothing is being sent (e.g. `sandbox.created` and `sandbox.running`
 * of one spawn) go out together in one round trip when the channel can
 * batch, then whatever queued up meanwhile, and so on. When the database
 * cannot take messages they are dropped with a warning (local subscribers
 * still got them).
 */
export class ClusterEventBus extends EventBus {
  readonly instanceId: string;
  private readonly channel: BatchingClusterChannel;
  private readonly logger: Logger;
  /** Payloads waiting to be sent, oldest first, sent by one loop in batches. */
  private readonly outbox: SerialBatcher<string>;
  private sent = 0;
  private dropped = 0;
  private failed = 0;
  private received = 0;
  private lastWarnMs = 0;
  private closed = false;

  constructor(o: ClusterEventBusOptions) {
    super(o);
    this.channel = o.channel;
    this.logger = o.logger;
    this.instanceId = o.instanceId ?? `cp-${randomBytes(8).toString('hex')}`;
    this.outbox = new SerialBatcher({
      maxBatch: CLUSTER_SEND_BATCH_MAX,
      maxPending: o.maxPending ?? DEFAULT_MAX_PENDING,
      write: (batch) => this.sendBatch(batch),
    });
  }

  /** Starts taking events from the other control planes. */
  start(): Promise<void> {
    return this.channel.subscribe(
      (payload) => this.receive(payload),
      () => this.resync(),
    );
  }

  override publish(
    type: EventType,
    sandboxId?: string,
    data?: Record<string, unknown>,
  ): StacyEvent {
    const event = super.publish(type, sandboxId, data);
    this.send(event);
    return event;
  }

  /** Events from other control planes delivered here so far. */
  get receivedTotal(): number {
    return this.received;
  }

  /** Events that could not be sent (database refused, or too many waiting). */
  get unsentTotal(): number {
    return this.dropped + this.failed;
  }

  /** Waits until every event published so far has been sent (or given up on). */
  flushed(): Promise<void> {
    return this.outbox.idle();
  }

  /** Stops listening after sending what is queued. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flushed();
    await this.channel.close();
  }

  private send(event: StacyEvent): void {
    if (this.closed) return;
    const { id: _localId, ...fields } = event;
    const message: ClusterMessage = { v: 1, o: this.instanceId, n: this.sent + 1, e: fields };
    // Events published back to back (before the send loop runs) share one round trip.
    if (!this.outbox.push(JSON.stringify(message))) {
      this.dropped += 1;
      this.warn('too many events waiting to be sent to the other control planes; dropping');
      return;
    }
    this.sent += 1;
  }

  /** Sends one batch in order: one round trip when the channel can batch. Never rejects. */
  private async sendBatch(batch: string[]): Promise<void> {
    if (batch.length > 1 && this.channel.publishMany !== undefined) {
      try {
        await this.channel.publishMany(batch);
      } catch (err) {
        this.sendFailed(batch.length, err);
      }
      return;
    }
    for (const payload of batch) {
      try {
        await this.channel.publish(payload);
      } catch (err) {
        this.sendFailed(1, err);
      }
    }
  }

  private sendFailed(count: number, err: unknown): void {
    this.failed += count;
    this.warn(`cannot send an event to the other control planes: ${(err as Error).message}`);
  }

  private receive(payload: string): void {
    const msg = parseMessage(payload);
    if (msg === undefined) {
      this.logger.debug({ bytes: payload.length }, 'ignored a malformed cluster event message');
      return;
    }
    if (msg.origin === this.instanceId) return;
    this.received += 1;
    this.deliver(msg.event);
  }

  private warn(message: string): void {
    const now = Date.now();
    if (now - this.lastWarnMs < WARN_EVERY_MS) return;
    this.lastWarnMs = now;
    this.logger.warn({ unsent_total: this.dropped + this.failed }, message);
  }
}
