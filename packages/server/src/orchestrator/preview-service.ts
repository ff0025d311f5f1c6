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
}

export interface PreviewServiceOptions {
  sandboxes: SandboxService;
  workers: WorkerDirectory;
  clock: Clock;
  logger: Logger;
  settings: PreviewSettings;
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
  private readonly workerUrls = new Map<string, string>();
  private readonly lastExtendMs = new Map<string, number>();
  private readonly pending = new Set<Promise<void>>();
  private publicPortValue: number;

  constructor(private readonly o: PreviewServiceOptions) {
    this.publicPortValue = o.settings.publicPort;
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
    const domain = w.capacity['preview_domain'];
    if (typeof domain === 'string' && isPreviewDomain(domain.trim())) {
      this.workerDomains.set(w.id, domain.trim().toLowerCase());
    } else {
      this.workerDomains.delete(w.id);
    }
    const url = w.capacity['preview_url'];
    if (typeof url === 'string' && isHttpUrl(url.trim())) this.workerUrls.set(w.id, url.trim());
    else this.workerUrls.delete(w.id);
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

  /** Every domain the gateway serves. */
  domains(): string[] {
    const all = new Set<string>();
    if (this.o.settings.defaultDomain !== '') {
      all.add(this.o.settings.defaultDomain.toLowerCase());
    }
    for (const d of this.workerDomains.values()) all.add(d);
    return [...all];
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
    const up = await client.previewUpstream(ref, t.port, signal === undefined ? {} : { signal });
    this.touch(rec);
    return up;
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
