/**
 * Publishes sandbox preview routes to Redis in the layout Traefik's Redis
 * provider reads (`{root}/http/routers/{name}/rule`, …). A sandbox's keys
 * are written when it starts running and deleted when it is destroyed or
 * expires; a full resync at start and every interval rewrites every route
 * and deletes keys under the root that carry our name prefix but match no
 * running sandbox (left by a crash, another control plane or a missed event).
 *
 * Every write is one MULTI/EXEC, so Traefik never sees a router without its
 * service. Work is serialised: a sandbox's keys always end up matching its
 * state at the time of the last event about it.
 */
import type { Logger } from '../domain/logger.js';
import type { RedisReply } from './redis-client.js';
import type { TraefikBuildOptions, TraefikRouteSource } from './traefik-config.js';
import {
  belongsToStem,
  buildTraefikConfig,
  flattenTraefikKv,
  kvKeyOwner,
  sandboxNameStem,
} from './traefik-config.js';

/** What the publisher needs of a Redis connection; `RedisClient` has it. */
export interface TraefikKv {
  scanAll(match: string): Promise<string[]>;
  transaction(commands: readonly (readonly (string | number)[])[]): Promise<RedisReply[]>;
  close(): Promise<void>;
}

/** Where the routes come from (the sandbox store and preview settings). */
export interface TraefikRouteCatalog {
  /** The sources of every sandbox that should have routes (running ones). */
  all(): Promise<TraefikRouteSource[]>;
  /** One sandbox's source; undefined when it should have no routes (gone, not running). */
  one(sandboxId: string): Promise<TraefikRouteSource | undefined>;
}

/** The part of a bus event the publisher reads. */
export interface RouteEvent {
  type: string;
  sandbox_id?: string;
}

/** Event types after which a sandbox's routes are re-evaluated. */
export const ROUTE_EVENTS: ReadonlySet<string> = new Set([
  'sandbox.running',
  'sandbox.destroyed',
  'sandbox.expired',
  'sandbox.error',
  'sandbox.state_changed',
]);

export interface TraefikRedisPublisherOptions {
  kv: TraefikKv;
  catalog: TraefikRouteCatalog;
  build: TraefikBuildOptions;
  /** `traefik.redis.root_key`, e.g. `traefik`. */
  rootKey: string;
  /** Subscribes to lifecycle events; returns the unsubscribe function. */
  subscribe: (listener: (event: RouteEvent) => void) => () => void;
  /** Full resync period; 0 = only at start. */
  resyncIntervalMs: number;
  logger: Logger;
}

/** What one write changed. */
export interface SyncResult {
  set: number;
  deleted: number;
}

function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

export class TraefikRedisPublisher {
  private queue: Promise<unknown> = Promise.resolve();
  private unsubscribe: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: TraefikRedisPublisherOptions) {}

  /**
   * Subscribes to events, runs the first resync and starts the periodic one.
   * A first resync that fails is logged, not thrown: Redis may come up later
   * and the next resync repairs everything.
   */
  async start(): Promise<void> {
    this.unsubscribe = this.o.subscribe((event) => {
      if (!ROUTE_EVENTS.has(event.type) || event.sandbox_id === undefined) return;
      const id = event.sandbox_id;
      void this.enqueue(() => this.writeSandbox(id)).catch((err: unknown) =>
        this.o.logger.warn(
          { sandbox_id: id, err: (err as Error).message },
          'traefik redis: route update failed; the next resync repairs it',
        ),
      );
    });
    try {
      const r = await this.resync();
      this.o.logger.info({ ...r, root_key: this.o.rootKey }, 'traefik redis: routes published');
    } catch (err) {
      this.o.logger.warn(
        { err: (err as Error).message },
        'traefik redis: first resync failed; retrying every resync interval',
      );
    }
    if (this.o.resyncIntervalMs > 0 && !this.stopped) {
      this.timer = setInterval(() => {
        void this.resync().catch((err: unknown) =>
          this.o.logger.warn({ err: (err as Error).message }, 'traefik redis: resync failed'),
        );
      }, this.o.resyncIntervalMs);
      this.timer.unref();
    }
  }

  /** Rewrites every route and deletes stale keys of ours under the root. */
  resync(): Promise<SyncResult> {
    return this.enqueue(async () => {
      const desired = flattenTraefikKv(
        buildTraefikConfig(await this.o.catalog.all(), this.o.build),
        this.o.rootKey,
      );
      const existing = await this.ourKeys();
      const stale = existing.filter((k) => !desired.has(k));
      return this.apply(desired, stale);
    });
  }

  /** Re-evaluates one sandbox now (what an event triggers). */
  syncSandbox(sandboxId: string): Promise<SyncResult> {
    return this.enqueue(() => this.writeSandbox(sandboxId));
  }

  /** Resolves when queued work is done. */
  async idle(): Promise<void> {
    for (;;) {
      const q = this.queue;
      await q.catch(() => undefined);
      if (q === this.queue) return;
    }
  }

  /** Stops listening and the timer, waits for queued work, closes the connection. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.idle();
    await this.o.kv.close();
  }

  private enqueue<T>(job: () => Promise<T>): Promise<T> {
    const run = this.queue.then(job, job);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async writeSandbox(sandboxId: string): Promise<SyncResult> {
    const stem = sandboxNameStem(this.o.build.namePrefix, sandboxId);
    const source = await this.o.catalog.one(sandboxId);
    const desired = flattenTraefikKv(
      buildTraefikConfig(source === undefined ? [] : [source], this.o.build),
      this.o.rootKey,
    );
    const root = globEscape(this.o.rootKey);
    const pattern = globEscape(stem);
    const found = [
      ...(await this.o.kv.scanAll(`${root}/http/routers/${pattern}-*`)),
      ...(await this.o.kv.scanAll(`${root}/http/services/${pattern}-*`)),
    ];
    const mine = found.filter((k) => {
      const owner = kvKeyOwner(k, this.o.rootKey);
      return owner !== undefined && belongsToStem(owner.name, stem);
    });
    return this.apply(
      desired,
      mine.filter((k) => !desired.has(k)),
    );
  }

  /** Keys under the root whose router, service or middleware name has our prefix. */
  private async ourKeys(): Promise<string[]> {
    const root = globEscape(this.o.rootKey);
    const prefix = globEscape(this.o.build.namePrefix);
    const out: string[] = [];
    for (const kind of ['routers', 'services', 'middlewares']) {
      const keys = await this.o.kv.scanAll(`${root}/http/${kind}/${prefix}*`);
      for (const k of keys) {
        const owner = kvKeyOwner(k, this.o.rootKey);
        if (owner?.name.startsWith(this.o.build.namePrefix) === true) out.push(k);
      }
    }
    return out;
  }

  private async apply(desired: Map<string, string>, stale: string[]): Promise<SyncResult> {
    const commands: (string | number)[][] = [];
    if (stale.length > 0) commands.push(['DEL', ...stale]);
    for (const [k, v] of desired) commands.push(['SET', k, v]);
    await this.o.kv.transaction(commands);
    return { set: desired.size, deleted: stale.length };
  }
}
