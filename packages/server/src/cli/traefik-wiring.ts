/**
 * Wires the Traefik integration into the control plane: the route catalog
 * (running sandboxes from the store, their preview domains from the worker
 * registry, and where Traefik reaches them), the dynamic configuration for
 * `GET /api/v1/traefik/config`, and the optional Redis publisher.
 *
 * Every generated route points at the control plane's preview gateway
 * (`traefik.upstream_url`, else `preview.listen_addr`): the gateway resolves
 * the sandbox from the Host header, reaches local sandboxes itself and
 * relays to a remote worker's gateway with the worker credential. Workers'
 * own gateways (`capacity.preview_url`) serve only their control plane, so
 * Traefik is never pointed at them directly; private-preview tokens are
 * checked by the gateway on the way.
 */
import type { StacyConfig } from '../config/schema.js';
import { durationMs } from '../config/load-config.js';
import type { Logger } from '../domain/logger.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import type { EventBus } from '../orchestrator/events.js';
import type { PreviewService } from '../orchestrator/preview-service.js';
import { RedisClient, parseRedisAddress } from '../preview/redis-client.js';
import type {
  TraefikBuildOptions,
  TraefikDynamicConfig,
  TraefikRouteSource,
} from '../preview/traefik-config.js';
import {
  buildTraefikConfig,
  rootKeyProblem,
  traefikOptionProblems,
  upstreamUrlProblem,
} from '../preview/traefik-config.js';
import type { TraefikRouteCatalog } from '../preview/traefik-redis-publisher.js';
import { TraefikRedisPublisher } from '../preview/traefik-redis-publisher.js';
import type { Store } from '../store/store.js';
import { isWildcardHost, parseListenAddr } from '../worker/worker-agent.js';

/** The build options from the `traefik` section. */
export function traefikBuildOptions(config: StacyConfig): TraefikBuildOptions {
  const t = config.traefik;
  return {
    namePrefix: t.name_prefix,
    entryPoints: t.entry_points,
    tls: t.tls,
    certResolver: t.cert_resolver,
    wildcardCert: t.wildcard_cert,
    middlewares: t.middlewares,
    redirectEntryPoints: t.redirect_entry_points,
  };
}

/** Refuses an unusable `traefik` section at start-up, naming every problem. */
export function checkTraefikConfig(config: StacyConfig): void {
  const t = config.traefik;
  const problems = traefikOptionProblems(traefikBuildOptions(config));
  if (t.upstream_url !== '') {
    const p = upstreamUrlProblem(t.upstream_url);
    if (p !== undefined) problems.push(`traefik.upstream_url ${p}`);
  }
  if (t.redis.enabled) {
    const p = rootKeyProblem(t.redis.root_key);
    if (p !== undefined) problems.push(p);
    try {
      parseRedisAddress(t.redis.address);
    } catch (err) {
      problems.push(`traefik.redis.address: ${(err as Error).message}`);
    }
  }
  if (problems.length > 0) throw new Error(`invalid traefik configuration: ${problems.join('; ')}`);
}

/**
 * Where Traefik sends preview requests: `traefik.upstream_url`, else the
 * control plane's gateway at `preview.listen_addr` (its bound port once
 * listening; a wildcard host becomes loopback). Undefined when the gateway
 * is off and no URL is set.
 */
export function gatewayUpstreamUrl(
  config: StacyConfig,
  boundPort: number | undefined,
): string | undefined {
  if (config.traefik.upstream_url !== '') return config.traefik.upstream_url;
  if (!config.preview.enabled) return undefined;
  const { host, port } = parseListenAddr(config.preview.listen_addr, 'preview.listen_addr');
  const p = boundPort ?? port;
  if (p === 0) return undefined;
  let h = host;
  if (isWildcardHost(h)) h = h.includes(':') ? '::1' : '127.0.0.1';
  if (h.includes(':')) h = `[${h}]`;
  return `http://${h}:${p}`;
}

export interface TraefikCatalogDeps {
  config: StacyConfig;
  store: Store;
  previews: Pick<PreviewService, 'domainOf'>;
  localWorkerId: string;
  /** The preview gateway's bound port, once it listens. */
  gatewayPort: () => number | undefined;
}

/** Running sandboxes → route sources. */
export function createTraefikCatalog(d: TraefikCatalogDeps): TraefikRouteCatalog {
  const t = d.config.traefik;
  const source = (rec: SandboxRecord): TraefikRouteSource | undefined => {
    if (rec.state !== 'running') return undefined;
    // Traefik's Docker provider routes these from their labels already.
    const local = rec.workerId === d.localWorkerId;
    if (local && rec.provider === 'docker' && !t.include_local_docker) return undefined;
    return {
      sandboxId: rec.id,
      ports: rec.ports,
      domain: d.previews.domainOf(rec),
      upstreamUrl: gatewayUpstreamUrl(d.config, d.gatewayPort()),
    };
  };
  return {
    all: async () => {
      const recs = await d.store.sandboxes.list({ states: ['running'] });
      return recs.map(source).filter((s): s is TraefikRouteSource => s !== undefined);
    },
    one: async (id) => {
      const rec = await d.store.sandboxes.get(id);
      return rec === undefined ? undefined : source(rec);
    },
  };
}

/** The dynamic configuration `GET /api/v1/traefik/config` serves. */
export function traefikDynamicConfig(
  config: StacyConfig,
  catalog: TraefikRouteCatalog,
): () => Promise<TraefikDynamicConfig> {
  const build = traefikBuildOptions(config);
  return async () => buildTraefikConfig(await catalog.all(), build);
}

/** The Redis publisher when `traefik.redis.enabled`, not started. */
export function createTraefikPublisher(o: {
  config: StacyConfig;
  catalog: TraefikRouteCatalog;
  events: EventBus;
  logger: Logger;
}): TraefikRedisPublisher | undefined {
  const r = o.config.traefik.redis;
  if (!r.enabled) return undefined;
  const { host, port } = parseRedisAddress(r.address);
  const kv = new RedisClient({
    host,
    port,
    username: r.username,
    password: r.password,
    db: r.db,
    timeoutMs: durationMs(r.timeout),
  });
  return new TraefikRedisPublisher({
    kv,
    catalog: o.catalog,
    build: traefikBuildOptions(o.config),
    rootKey: r.root_key,
    subscribe: (listener) => o.events.subscribe(listener),
    resyncIntervalMs: durationMs(r.resync_interval),
    logger: o.logger,
  });
}
