import type { Clock } from '../domain/clock.js';
import { formatDurationMs } from '../domain/duration.js';
import { conflict, notFound, unavailable } from '../domain/errors.js';
import type { Logger } from '../domain/logger.js';
import {
  PREVIEW_TOKEN_QUERY,
  buildPreviewUrl,
  isPreviewDomain,
  signPreviewToken,
  visiblePreviewPort,
} from '../domain/preview.js';
import type { PreviewScheme } from '../domain/preview.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import type { WorkerRecord } from '../domain/worker.js';
import type { PreviewUpstream, RuntimeRef, WorkerDirectory } from '../rpc/worker-client.js';
import type { EventBus, StacyEvent } from './events.js';
import type { CallContext, SandboxService } from './sandbox-service.js';

/** Preview settings, resolved from `server.preview_domain` and the `preview` config section. */
export interface PreviewSettings {
  /** Whether this control plane runs the built-in gateway. */
  enabled: boolean;
  /** `server.preview_domain`: the domain of sandboxes on the local worker (and the fallback). */
  defaultDomain: string;
  scheme: PreviewScheme;
  /** The public gateway port; 0 while unknown (then left out of URLs). */
  publicPort: number;
  /** Whether every preview needs a token. */
  private: boolean;
  tokenTtlMs: number;
  /** HMAC key of preview tokens. */
  tokenKey: Uint8Array | string;
  /** Traffic extends a sandbox's expiry to now + this (0 = off), at most `max_ttl`. */
  extendOnTrafficMs: number;
  /**
   * `preview.resolve_cache_ttl`: how long a successful resolution is reused
   * (0 or absent = every request reads the store and asks the worker).
   */
  resolveCacheTtlMs?: number;
}

export interface PreviewServiceOptions {
  sandboxes: SandboxService;
  workers: WorkerDirectory;
  clock: Clock;
  logger: Logger;
  settings: PreviewSettings;
  /**
   * Lifecycle events (the cluster bus with several control planes): any
   * event of a sandbox drops its cached resolutions at once, a worker event
   * drops them all, and so does a gap in the cluster events (the connection
   * to the database came back). Without it only the TTL bounds staleness.
   */
  events?: Pick<EventBus, 'subscribe' | 'onResync'>;
  /** Most cached resolutions (least recently used ones go first); default 10,000. */
  resolveCacheMax?: number;
}

/** Default bound of the resolution cache. */
export const PREVIEW_RESOLVE_CACHE_MAX = 10_000;

interface CachedResolution {
  upstream: PreviewUpstream;
  rec: SandboxRecord;
  expiresAtMs: number;
}

/** The preview of one sandbox port, as `GET /sandboxes/{id}/preview/{port}` returns it. */
export interface PreviewInfo {
  url: string;
  port: number;
  sandboxId: string;
  private: boolean;
  /** Private previews: the token (header `X-StacyVM-Preview-Token`, or the `open_url`). */
  token?: string;
  expiresAtMs?: number;
  /** Private previews: `url` with the token as a query parameter, for a browser (it becomes a cookie). */
  openUrl?: string;
}

/** Where clients build a sandbox's preview URLs from. */
export interface PreviewWire {
  domain: string;
  scheme: PreviewScheme;
  /** The public gateway port, when it is not the scheme's default. */
  port?: number;
}

/** What the gateway asks the control plane to resolve. */
export interface PreviewRequestTarget {
  sandboxId: string;
  port: number;
  domain: string;
  tenantId?: string;
}

const CTX = { requestId: 'preview-gateway', actor: 'system:preview' };

/**
 * Previews as the control plane sees them: URLs and tokens for the API, the
 * preview domain of each worker (from its heartbeats), and the resolver the
 * gateway uses to find a sandbox port (local provider, or the owning
 * worker's gateway).
 */
export class PreviewService {
  private readonly workerDomains = new Map<string, string>();
  /** {@link domains}, computed again only when a worker's domain changes. */
  private domainList: string[] | undefined;
  private readonly workerUrls = new Map<string, string>();
  private readonly lastExtendMs = new Map<string, number>();
  private readonly pending = new Set<Promise<void>>();
  private publicPortValue: number;
  /** Successful resolutions by target, least recently used first. */
  private readonly cache = new Map<string, CachedResolution>();
  /** Cache keys of each sandbox, so its events drop them without a scan. */
  private readonly cacheKeysBySandbox = new Map<string, Set<string>>();
  /** Bumped by every invalidation: a resolution that raced one is not stored. */
  private invalidations = 0;
  private readonly cacheTtlMs: number;
  private readonly cacheMax: number;
  private readonly unsubscribe: (() => void) | undefined;
  private readonly unsubscribeResync: (() => void) | undefined;

  constructor(private readonly o: PreviewServiceOptions) {
    this.publicPortValue = o.settings.publicPort;
    this.cacheTtlMs = Math.max(0, o.settings.resolveCacheTtlMs ?? 0);
    this.cacheMax = Math.max(1, o.resolveCacheMax ?? PREVIEW_RESOLVE_CACHE_MAX);
    this.unsubscribe =
      this.cacheTtlMs > 0 ? o.events?.subscribe((e) => this.onEvent(e)) : undefined;
    // Events missed while the cluster connection was down: nothing cached can be trusted.
    this.unsubscribeResync =
      this.cacheTtlMs > 0 ? o.events?.onResync(() => this.invalidate()) : undefined;
  }

  /** Stops listening to lifecycle events (the cache is then bounded by its TTL alone). */
  close(): void {
    this.unsubscribe?.();
    this.unsubscribeResync?.();
    this.clearCache();
  }

  /** Cached resolutions held now (for tests and metrics). */
  get resolveCacheSize(): number {
    return this.cache.size;
  }

  get settings(): Readonly<PreviewSettings> {
    return this.o.settings;
  }

  /** The public gateway port (0 while unknown). */
  get publicPort(): number {
    return this.publicPortValue;
  }

  /** Sets the public port once the gateway is bound (when `preview.public_port` is 0). */
  setPublicPort(port: number): void {
    this.publicPortValue = port;
  }

  /** Learns a worker's preview domain and gateway URL from its heartbeat. */
  observeWorker(w: Pick<WorkerRecord, 'id' | 'capacity'>): void {
    const before = [this.workerDomains.get(w.id), this.workerUrls.get(w.id)];
    const domain = w.capacity['preview_domain'];
    if (typeof domain === 'string' && isPreviewDomain(domain.trim())) {
      this.workerDomains.set(w.id, domain.trim().toLowerCase());
    } else {
      this.workerDomains.delete(w.id);
    }
    const url = w.capacity['preview_url'];
    if (typeof url === 'string' && isHttpUrl(url.trim()) && sameHost(url, w.capacity['rpc_url'])) {
      this.workerUrls.set(w.id, url.trim());
    } else {
      // A gateway URL on another host than the worker's own RPC address
      // would let a worker point the control plane's gateway anywhere
      // (cloud metadata, internal services): such a URL is not used.
      this.workerUrls.delete(w.id);
    }
    // Resolutions depend on both: drop them when a worker changes either.
    if (before[0] !== this.workerDomains.get(w.id)) this.domainList = undefined;
    if (before[0] !== this.workerDomains.get(w.id) || before[1] !== this.workerUrls.get(w.id)) {
      this.invalidate();
    }
  }

  /** The preview gateway URL a worker advertises (`capacity.preview_url`). */
  previewUrlOf(workerId: string): string | undefined {
    return this.workerUrls.get(workerId);
  }

  /** The preview domain of a sandbox: its worker's, else `server.preview_domain`. */
  domainOf(rec: Pick<SandboxRecord, 'workerId'>): string {
    return this.workerDomains.get(rec.workerId) ?? this.o.settings.defaultDomain;
  }

  /** The preview fields of a sandbox's wire object. */
  wire(rec: Pick<SandboxRecord, 'workerId'>): PreviewWire {
    const out: PreviewWire = { domain: this.domainOf(rec), scheme: this.o.settings.scheme };
    const port = visiblePreviewPort(this.o.settings.scheme, this.publicPortValue);
    if (port !== undefined) out.port = port;
    return out;
  }

  /** Every domain the gateway serves (the gateway asks per request: kept until a worker's changes). */
  domains(): readonly string[] {
    if (this.domainList !== undefined) return this.domainList;
    const all = new Set<string>();
    if (this.o.settings.defaultDomain !== '') {
      all.add(this.o.settings.defaultDomain.toLowerCase());
    }
    for (const d of this.workerDomains.values()) all.add(d);
    this.domainList = [...all];
    return this.domainList;
  }

  /** The URL (and, for private previews, a token) of one sandbox port. NOT_FOUND for unknown ids. */
  async describe(id: string, port: number, ctx: CallContext): Promise<PreviewInfo> {
    const rec = await this.o.sandboxes.get(id, ctx);
    const s = this.o.settings;
    const url = buildPreviewUrl(port, rec.id, {
      scheme: s.scheme,
      domain: this.domainOf(rec),
      publicPort: this.publicPortValue,
    });
    const info: PreviewInfo = { url, port, sandboxId: rec.id, private: s.private };
    if (s.private) {
      const expiresAtMs = this.o.clock.nowMs() + s.tokenTtlMs;
      const token = signPreviewToken({ sandboxId: rec.id, port, expiresAtMs }, s.tokenKey);
      info.token = token;
      info.expiresAtMs = Math.ceil(expiresAtMs / 1000) * 1000;
      info.openUrl = `${url}/?${PREVIEW_TOKEN_QUERY}=${encodeURIComponent(token)}`;
    }
    return info;
  }

  /**
   * The gateway's resolver: the sandbox must exist (and be the caller's
   * tenant's when one is named), be addressed under its own preview domain,
   * and be running. Its worker says how to reach the port.
   */
  async resolve(t: PreviewRequestTarget, signal?: AbortSignal): Promise<PreviewUpstream> {
    if (this.cacheTtlMs <= 0) return this.resolveUncached(t, signal);
    const held = this.cached(t);
    if (held !== undefined) return held;
    const key = cacheKey(t);
    const generation = this.invalidations;
    const { upstream, rec } = await this.lookup(t, signal);
    // Failures are never cached; nor is a resolution an event invalidated meanwhile.
    if (generation === this.invalidations) {
      this.store(key, t.sandboxId, {
        upstream,
        rec,
        expiresAtMs: this.o.clock.nowMs() + this.cacheTtlMs,
      });
    }
    this.touch(rec);
    return upstream;
  }

  /**
   * The cached resolution of a target, if one is held and fresh (the
   * sandbox's traffic counts as with {@link resolve}); else undefined, and
   * {@link resolve} does the work. Lets the gateway proxy without a promise.
   */
  cached(t: PreviewRequestTarget): PreviewUpstream | undefined {
    if (this.cacheTtlMs <= 0) return undefined;
    const key = cacheKey(t);
    const hit = this.cache.get(key);
    if (hit === undefined) return undefined;
    this.cache.delete(key);
    if (hit.expiresAtMs <= this.o.clock.nowMs()) {
      this.forgetKey(t.sandboxId, key);
      return undefined;
    }
    this.cache.set(key, hit); // most recently used last
    this.touch(hit.rec);
    return hit.upstream;
  }

  private async resolveUncached(
    t: PreviewRequestTarget,
    signal?: AbortSignal,
  ): Promise<PreviewUpstream> {
    const { upstream, rec } = await this.lookup(t, signal);
    this.touch(rec);
    return upstream;
  }

  private async lookup(
    t: PreviewRequestTarget,
    signal?: AbortSignal,
  ): Promise<{ upstream: PreviewUpstream; rec: SandboxRecord }> {
    const rec = await this.o.sandboxes.get(
      t.sandboxId,
      t.tenantId === undefined ? {} : { tenantId: t.tenantId },
    );
    if (this.domainOf(rec) !== t.domain) throw notFound(`sandbox not found: ${t.sandboxId}`);
    if (rec.state !== 'running') {
      throw conflict(`sandbox ${rec.id} is ${rec.state}, not running`);
    }
    const w = this.o.workers;
    const client = w.client(rec.workerId) ?? (await w.resolve?.(rec.workerId));
    if (client === undefined) {
      const why = w.whyUnreachable?.(rec.workerId);
      throw unavailable(
        `worker ${rec.workerId} of sandbox ${rec.id} is not reachable${why === undefined ? '' : `: ${why}`}`,
      );
    }
    const ref: RuntimeRef = {
      sandboxId: rec.id,
      provider: rec.provider,
      runtimeId: rec.vmId === '' ? rec.id : rec.vmId,
    };
    const upstream = await client.previewUpstream(
      ref,
      t.port,
      signal === undefined ? {} : { signal },
    );
    return { upstream, rec };
  }

  private store(key: string, sandboxId: string, entry: CachedResolution): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
    let keys = this.cacheKeysBySandbox.get(sandboxId);
    if (keys === undefined) {
      keys = new Set();
      this.cacheKeysBySandbox.set(sandboxId, keys);
    }
    keys.add(key);
    while (this.cache.size > this.cacheMax) {
      const oldest = this.cache.keys().next();
      if (oldest.done === true) break;
      const old = this.cache.get(oldest.value);
      this.cache.delete(oldest.value);
      if (old !== undefined) this.forgetKey(old.rec.id, oldest.value);
    }
  }

  private forgetKey(sandboxId: string, key: string): void {
    this.cache.delete(key);
    const keys = this.cacheKeysBySandbox.get(sandboxId);
    if (keys === undefined) return;
    keys.delete(key);
    if (keys.size === 0) this.cacheKeysBySandbox.delete(sandboxId);
  }

  /** Drops the cached resolutions of one sandbox (every one when no id is given). */
  invalidate(sandboxId?: string): void {
    this.invalidations += 1;
    if (sandboxId === undefined) {
      this.clearCache();
      return;
    }
    const keys = this.cacheKeysBySandbox.get(sandboxId);
    if (keys === undefined) return;
    for (const key of keys) this.cache.delete(key);
    this.cacheKeysBySandbox.delete(sandboxId);
  }

  private clearCache(): void {
    this.cache.clear();
    this.cacheKeysBySandbox.clear();
  }

  private onEvent(e: StacyEvent): void {
    if (e.type.startsWith('sandbox.')) {
      if (e.sandbox_id !== undefined) this.invalidate(e.sandbox_id);
    } else if (e.type.startsWith('worker.')) {
      this.invalidate();
    }
  }

  /** Waits for expiry extensions still being written (call before closing the store). */
  async drain(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  /**
   * Preview traffic keeps a sandbox alive: once less than half of
   * `extend_ttl_on_traffic` is left, the expiry becomes now + that (bounded
   * by max_ttl). At most one extension per sandbox per tenth of the window.
   */
  private touch(rec: SandboxRecord): void {
    const ext = this.o.settings.extendOnTrafficMs;
    if (ext <= 0) return;
    const now = this.o.clock.nowMs();
    if (rec.expiresAtMs - now > ext / 2) return;
    const last = this.lastExtendMs.get(rec.id);
    if (last !== undefined && now - last < Math.max(1_000, ext / 10)) return;
    this.lastExtendMs.set(rec.id, now);
    if (this.lastExtendMs.size > 10_000) {
      for (const [id, at] of this.lastExtendMs) if (now - at > ext) this.lastExtendMs.delete(id);
    }
    const max = this.o.sandboxes.limits.maxTtlMs;
    const ttlMs = max > 0 ? Math.min(ext, max) : ext;
    const run = this.o.sandboxes
      .extend(rec.id, formatDurationMs(ttlMs), { ...CTX, requestId: `preview-${rec.id}` })
      .then(
        () => undefined,
        (err: unknown) =>
          this.o.logger.debug(
            { sandbox_id: rec.id, err: (err as Error).message },
            'preview traffic could not extend the sandbox',
          ),
      );
    this.pending.add(run);
    void run.finally(() => this.pending.delete(run));
  }
}

/** Everything a resolution depends on besides the sandbox itself. */
function cacheKey(t: PreviewRequestTarget): string {
  return `${t.sandboxId}\n${t.port}\n${t.domain}\n${t.tenantId === undefined ? '-' : `+${t.tenantId}`}`;
}

function isHttpUrl(value: string): boolean {
  try {
    const u = new URL(value);
    return (
      (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === ''
    );
  } catch {
    return false;
  }
}

/** True when `url` names the same host as the worker's advertised `rpc_url`. */
function sameHost(url: string, rpcUrl: unknown): boolean {
  if (typeof rpcUrl !== 'string') return false;
  try {
    return new URL(url.trim()).hostname === new URL(rpcUrl.trim()).hostname;
  } catch {
    return false;
  }
}
