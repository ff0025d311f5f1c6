/**
 * What several control planes on one Postgres database share besides rows:
 * events over LISTEN/NOTIFY (payloads too large for NOTIFY go through the
 * `cluster_events` table) and a session advisory lock that elects the one
 * control plane running the reaper and liveness sweeps.
 *
 * Both hold their own connections, apart from the store's pool: LISTEN and
 * a session lock need one session that lives as long as they do.
 */
import pg from 'pg';
import type { ClusterChannel, LeaderLock } from '../../domain/cluster.js';
import type { Logger } from '../../domain/logger.js';
import { describePostgresDsn, postgresRedactor } from './open-postgres.js';

/** The NOTIFY channel of StacyVM events. */
export const PG_EVENTS_CHANNEL = 'stacyvm_events';
/**
 * Largest payload (bytes) sent inline with NOTIFY; Postgres refuses 8000
 * and more. A longer one is stored in `cluster_events` and only its row id
 * (`#<id>`) is sent.
 */
export const PG_NOTIFY_INLINE_MAX_BYTES = 7500;
/** One inline notification. */
const NOTIFY_ONE = 'select pg_notify($1, $2)';
/**
 * Several inline notifications in one statement: the function scan yields
 * the array's elements in order, and NOTIFYs of one transaction reach
 * listeners in the order they were sent.
 */
const NOTIFY_MANY = 'select pg_notify($1, p) from unnest($2::text[]) as p';
/** Key of the session advisory lock held by the control plane that runs the sweeps ("STACSW"). */
export const PG_SWEEP_LOCK_KEY = 0x535441435357;
/** How long a stored large event is kept for listeners to fetch. */
export const PG_STORED_EVENT_TTL_MS = 10 * 60_000;

const CONNECT_TIMEOUT_MS = 10_000;
/** Longest one statement of these connections may take (client side). */
const QUERY_TIMEOUT_MS = 10_000;
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 10_000;
/** How often old `cluster_events` rows are deleted, at most. */
const PRUNE_EVERY_MS = 60_000;
/** A held lock is re-checked against the database at most this often. */
const LEAD_CHECK_EVERY_MS = 500;

function clientConfig(dsn: string, applicationName: string): pg.ClientConfig {
  return {
    connectionString: dsn.trim(),
    application_name: applicationName,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
    keepAlive: true,
  };
}

function message(err: unknown): string {
  if (err instanceof AggregateError && err.message === '') {
    const inner = err.errors.map((e) => message(e)).filter((m) => m !== '');
    if (inner.length > 0) return [...new Set(inner)].join('; ');
  }
  return err instanceof Error ? err.message : String(err);
}

export interface PgClusterOptions {
  /** `database.dsn`. */
  dsn: string;
  logger: Logger;
  /** Time source for stored-event ages; default `Date.now`. */
  nowMs?: () => number;
}

/**
 * The events channel: NOTIFY on {@link PG_EVENTS_CHANNEL} to send, one
 * dedicated LISTEN connection to receive (reconnected with backoff after a
 * loss). Sending goes through a small pool of its own.
 */
export class PgClusterChannel implements ClusterChannel {
  private readonly pool: pg.Pool;
  private readonly target: string;
  private readonly redact: (text: string) => string;
  private readonly nowMs: () => number;
  private listener: pg.Client | undefined;
  private handler: ((payload: string) => void) | undefined;
  private onResync: (() => void) | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs = RECONNECT_MIN_MS;
  private closed = false;
  private lastPruneMs = 0;
  private connecting: Promise<void> | undefined;
  /** Connections of the listener so far (1 after the first). */
  private connects = 0;

  constructor(private readonly o: PgClusterOptions) {
    this.target = describePostgresDsn(o.dsn).description;
    this.redact = postgresRedactor(o.dsn);
    this.nowMs = o.nowMs ?? Date.now;
    this.pool = new pg.Pool({ ...clientConfig(o.dsn, 'stacyvm-events'), max: 2 });
    this.pool.on('error', () => undefined);
    this.pool.on('connect', (c) => {
      c.on('error', () => undefined);
    });
  }

  /** Whether the LISTEN connection is up. */
  get listening(): boolean {
    return this.listener !== undefined;
  }

  async publish(payload: string): Promise<void> {
    return this.publishMany([payload]);
  }

  /**
   * Sends several payloads in order, in as few statements as it can: a run of
   * inline payloads goes out as one `pg_notify` per element of one array
   * parameter (one round trip, one transaction, delivered in array order), a
   * large payload with its own statement as {@link publish} does. Payloads
   * equal to one earlier in the same run start a new statement: PostgreSQL
   * folds identical notifications of one transaction into one.
   */
  async publishMany(payloads: readonly string[]): Promise<void> {
    if (this.closed) throw new Error('the cluster channel is closed');
    try {
      let run: string[] = [];
      let seen = new Set<string>();
      const flush = async (): Promise<void> => {
        if (run.length === 0) return;
        const values = run;
        run = [];
        seen = new Set();
        if (values.length === 1) {
          await this.pool.query({
            name: 'stacy_notify_one',
            text: NOTIFY_ONE,
            values: [PG_EVENTS_CHANNEL, values[0]],
          });
        } else {
          await this.pool.query({
            name: 'stacy_notify_many',
            text: NOTIFY_MANY,
            values: [PG_EVENTS_CHANNEL, values],
          });
        }
      };
      for (const payload of payloads) {
        if (Buffer.byteLength(payload, 'utf8') > PG_NOTIFY_INLINE_MAX_BYTES) {
          await flush();
          await this.publishStored(payload);
          continue;
        }
        if (seen.has(payload)) await flush();
        run.push(payload);
        seen.add(payload);
      }
      await flush();
    } catch (err) {
      throw new Error(`${this.target}: ${this.redact(message(err))}`);
    }
  }

  /** A payload too large for NOTIFY: stored in `cluster_events`, its row id notified. */
  private async publishStored(payload: string): Promise<void> {
    // One statement: the row and the notification commit together, so a
    // listener that gets the id finds the row.
    await this.pool.query(
      `with stored as (insert into cluster_events (payload, created_at) values ($2, $3) returning id)
         select pg_notify($1, '#' || id) from stored`,
      [PG_EVENTS_CHANNEL, payload, this.nowMs()],
    );
    this.prune();
  }

  async subscribe(handler: (payload: string) => void, onResync?: () => void): Promise<void> {
    this.handler = handler;
    this.onResync = onResync;
    await this.connect();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    await this.connecting?.catch(() => undefined);
    const l = this.listener;
    this.listener = undefined;
    if (l !== undefined) await l.end().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }

  private connect(): Promise<void> {
    this.connecting ??= this.open().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async open(): Promise<void> {
    if (this.closed || this.listener !== undefined) return;
    const c = new pg.Client(clientConfig(this.o.dsn, 'stacyvm-listen'));
    let lost = false;
    const onLost = (err: unknown): void => {
      if (lost) return;
      lost = true;
      if (this.listener === c) this.listener = undefined;
      void c.end().catch(() => undefined);
      if (this.closed) return;
      this.o.logger.warn(
        { database: this.target, err: this.redact(message(err)), retry_in_ms: this.backoffMs },
        'lost the connection that listens for other control planes’ events; reconnecting',
      );
      this.scheduleReconnect();
    };
    c.on('error', onLost);
    c.on('end', () => onLost(new Error('connection ended')));
    c.on('notification', (n) => {
      if (n.channel !== PG_EVENTS_CHANNEL || n.payload === undefined) return;
      this.receive(n.payload);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${PG_EVENTS_CHANNEL}`);
    } catch (err) {
      onLost(err);
      return;
    }
    if (lost) return;
    if (this.closed) {
      await c.end().catch(() => undefined);
      return;
    }
    this.listener = c;
    this.backoffMs = RECONNECT_MIN_MS;
    this.connects += 1;
    if (this.connects > 1) {
      this.o.logger.info(
        { database: this.target },
        'listening for other control planes’ events again (events sent meanwhile were missed)',
      );
      try {
        this.onResync?.();
      } catch {
        // A failing callback must not stop the listener.
      }
    }
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer !== undefined) return;
    const wait = this.backoffMs;
    this.backoffMs = Math.min(RECONNECT_MAX_MS, this.backoffMs * 2);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, wait);
    this.reconnectTimer.unref();
  }

  private receive(payload: string): void {
    const handler = this.handler;
    if (handler === undefined) return;
    if (!payload.startsWith('#')) {
      handler(payload);
      return;
    }
    const id = payload.slice(1);
    if (!/^\d{1,19}$/.test(id)) return;
    this.pool
      .query<{ payload: string }>('select payload from cluster_events where id = $1', [id])
      .then(
        (r) => {
          const row = r.rows[0];
          if (row !== undefined) handler(row.payload);
        },
        (err: unknown) =>
          this.o.logger.warn(
            { database: this.target, event_row: id, err: this.redact(message(err)) },
            'cannot fetch a large event sent by another control plane',
          ),
      );
  }

  private prune(): void {
    const now = this.nowMs();
    if (now - this.lastPruneMs < PRUNE_EVERY_MS) return;
    this.lastPruneMs = now;
    this.pool
      .query('delete from cluster_events where created_at < $1', [now - PG_STORED_EVENT_TTL_MS])
      .catch(() => undefined);
  }
}

export interface PgLeaderLockOptions {
  dsn: string;
  logger: Logger;
  /** Advisory lock key; default {@link PG_SWEEP_LOCK_KEY}. */
  key?: number;
  /** What is led, for log lines. */
  what?: string;
}

/**
 * A session advisory lock (`pg_try_advisory_lock`) on a dedicated
 * connection. Non-blocking: {@link tryLead} answers at once. The lock goes
 * with the session, so a holder that dies (SIGKILL, lost host) frees it as
 * soon as Postgres notices the connection is gone.
 */
export class PgLeaderLock implements LeaderLock {
  private client: pg.Client | undefined;
  private held = false;
  private checkedAtMs = 0;
  private running: Promise<boolean> | undefined;
  private closed = false;
  private announcedFollower = false;
  private readonly key: number;
  private readonly what: string;
  private readonly target: string;
  private readonly redact: (text: string) => string;

  constructor(private readonly o: PgLeaderLockOptions) {
    this.key = o.key ?? PG_SWEEP_LOCK_KEY;
    this.what = o.what ?? 'the reaper and liveness sweeps';
    this.target = describePostgresDsn(o.dsn).description;
    this.redact = postgresRedactor(o.dsn);
  }

  get leading(): boolean {
    return this.held;
  }

  tryLead(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    this.running ??= this.attempt().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.running?.catch(() => undefined);
    const c = this.client;
    this.client = undefined;
    if (c === undefined) return;
    if (this.held) {
      await c.query('select pg_advisory_unlock($1)', [this.key]).catch(() => undefined);
      this.held = false;
    }
    await c.end().catch(() => undefined);
  }

  private async attempt(): Promise<boolean> {
    try {
      if (this.held && this.client !== undefined) {
        if (Date.now() - this.checkedAtMs < LEAD_CHECK_EVERY_MS) return true;
        await this.client.query('select 1');
        this.checkedAtMs = Date.now();
        return true;
      }
      const c = this.client ?? (await this.open());
      const r = await c.query<{ locked: boolean }>('select pg_try_advisory_lock($1) as locked', [
        this.key,
      ]);
      const locked = r.rows[0]?.locked === true;
      if (locked) {
        this.held = true;
        this.checkedAtMs = Date.now();
        this.announcedFollower = false;
        this.o.logger.info({ database: this.target }, `this control plane now runs ${this.what}`);
      } else if (!this.announcedFollower) {
        this.announcedFollower = true;
        this.o.logger.info(
          { database: this.target },
          `another control plane runs ${this.what}; this one stands by`,
        );
      }
      return locked;
    } catch (err) {
      this.drop(err);
      return false;
    }
  }

  private async open(): Promise<pg.Client> {
    const c = new pg.Client(clientConfig(this.o.dsn, 'stacyvm-leader'));
    c.on('error', (err) => {
      if (this.client === c) this.drop(err);
    });
    try {
      await c.connect();
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      await c.end().catch(() => undefined);
      throw new Error('closed');
    }
    this.client = c;
    return c;
  }

  /** Forgets a broken session: the lock went with it. */
  private drop(err: unknown): void {
    const c = this.client;
    this.client = undefined;
    if (c !== undefined) void c.end().catch(() => undefined);
    if (this.held) {
      this.held = false;
      this.announcedFollower = false;
      this.o.logger.warn(
        { database: this.target, err: this.redact(message(err)) },
        `lost the database session that made this control plane run ${this.what}; will try to take over again`,
      );
    }
  }
}
