/**
 * Traefik dynamic configuration for sandbox previews, as pure functions.
 *
 * One router per (sandbox, declared port) with the rule
 * ``Host(`{port}-{sandbox-id}.{preview_domain}`)`` and one service that
 * sends the request, Host header kept, to a StacyVM preview gateway, which
 * finds the sandbox port from that Host. The same configuration is served
 * to Traefik's HTTP provider as JSON and written to a KV store (Redis) with
 * {@link flattenTraefikKv}.
 *
 * Names are Traefik-safe (`[a-z0-9_-]`, no `@`, `/` or `.`), lower case
 * (KV keys are case-insensitive) and start with a configured prefix, so a
 * resync can tell its own keys from anyone else's under the same root.
 *
 * The configuration always holds at least one element (the
 * `{prefix}redirect-https` middleware): Traefik ignores an empty
 * configuration from a provider, which would keep the last deleted route
 * alive (traefik/traefik#8092).
 */
import { createHash } from 'node:crypto';
import { isPreviewDomain, isPreviewPort, previewHostname } from '../domain/preview.js';

/** Where the routes of one sandbox point. */
export interface TraefikRouteSource {
  sandboxId: string;
  /** Ports declared at spawn; a router each. */
  ports: readonly number[];
  /** The sandbox's preview domain (its worker's, else `server.preview_domain`). */
  domain: string;
  /**
   * Base URL of the preview gateway that reaches this sandbox (it routes by
   * the Host header). Undefined: no route (nothing can reach the sandbox).
   */
  upstreamUrl: string | undefined;
}

/** How routers are built (the `traefik.*` configuration keys). */
export interface TraefikBuildOptions {
  /** Prefix of every router, service and middleware name, e.g. `stacyvm-`. */
  namePrefix: string;
  /** Entry points of the preview routers; empty = all of Traefik's entry points. */
  entryPoints: readonly string[];
  /** Routers terminate TLS. */
  tls: boolean;
  /** With `tls`: the ACME certificate resolver; empty = certificates from the TLS store. */
  certResolver: string;
  /** With `tls` and a resolver: ask for one wildcard certificate per preview domain, not one per host. */
  wildcardCert: boolean;
  /** Middlewares (Traefik references, e.g. `ratelimit@file`) put on every preview router. */
  middlewares: readonly string[];
  /**
   * Entry points that get a second router per sandbox port which redirects
   * to https with the `{prefix}redirect-https` middleware. Empty = none.
   */
  redirectEntryPoints: readonly string[];
}

export interface TraefikRouterTls {
  certResolver?: string;
  domains?: { main: string; sans?: string[] }[];
}

export interface TraefikRouter {
  rule: string;
  service: string;
  entryPoints?: string[];
  middlewares?: string[];
  tls?: TraefikRouterTls;
}

export interface TraefikService {
  loadBalancer: { servers: { url: string }[]; passHostHeader: boolean };
}

export interface TraefikMiddleware {
  redirectScheme: { scheme: 'https'; permanent: boolean };
}

/**
 * A Traefik dynamic configuration (the `http` part). Empty maps are left
 * out: the file and HTTP providers refuse a section without elements.
 */
export interface TraefikDynamicConfig {
  http: {
    routers?: Record<string, TraefikRouter>;
    services?: Record<string, TraefikService>;
    middlewares: Record<string, TraefikMiddleware>;
  };
}

/** Name suffix of the https-redirect routers. */
export const REDIRECT_ROUTER_SUFFIX = '-redirect';
/** Name (after the prefix) of the always-present redirect middleware. */
export const REDIRECT_MIDDLEWARE = 'redirect-https';

const NAME_PREFIX = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const ENTRY_POINT = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const RESOLVER = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const MIDDLEWARE_REF = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(@[A-Za-z0-9][A-Za-z0-9_-]{0,63})?$/;
const ROOT_KEY = /^[A-Za-z0-9_.-]{1,64}(\/[A-Za-z0-9_.-]{1,64}){0,7}$/;
const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** Problems with build options, one line each; empty when they are usable. */
export function traefikOptionProblems(o: TraefikBuildOptions): string[] {
  const out: string[] = [];
  if (!NAME_PREFIX.test(o.namePrefix)) {
    out.push(
      'traefik.name_prefix: 1-32 characters of a-z, 0-9, "_" and "-", starting with a letter or digit',
    );
  }
  for (const ep of [...o.entryPoints, ...o.redirectEntryPoints]) {
    if (!ENTRY_POINT.test(ep)) {
      out.push(`traefik entry point ${JSON.stringify(ep)}: letters, digits, "_" and "-" only`);
    }
  }
  if (o.certResolver !== '' && !RESOLVER.test(o.certResolver)) {
    out.push('traefik.cert_resolver: letters, digits, "_" and "-" only');
  }
  for (const m of o.middlewares) {
    if (!MIDDLEWARE_REF.test(m)) {
      out.push(`traefik.middlewares: ${JSON.stringify(m)} is not a middleware name[@provider]`);
    }
  }
  return out;
}

/** Why a KV root key is unusable, or undefined. */
export function rootKeyProblem(rootKey: string): string | undefined {
  return ROOT_KEY.test(rootKey)
    ? undefined
    : 'traefik.redis.root_key: path segments of letters, digits, "_", "." and "-" joined by "/"';
}

/** Why an upstream (preview gateway) URL is unusable, or undefined. */
export function upstreamUrlProblem(value: string): string | undefined {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    return 'not a URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return 'must be http:// or https://';
  if (u.username !== '' || u.password !== '') return 'must not carry credentials';
  if (u.search !== '' || u.hash !== '') return 'must not have a query or fragment';
  if (u.pathname !== '/' && u.pathname !== '') return 'must not have a path';
  return undefined;
}

/** A Traefik-safe name part: lower case, `[a-z0-9_-]`, with a hash suffix when anything was replaced. */
export function sanitizeTraefikName(raw: string): string {
  const lower = raw.toLowerCase();
  const clean = lower.replace(/[^a-z0-9_-]/g, '-').slice(0, 64);
  if (clean === raw && clean !== '') return clean;
  const hash = createHash('sha256').update(raw).digest('hex').slice(0, 8);
  return `${clean === '' ? 'x' : clean}-${hash}`;
}

/** The name stem of one sandbox's routers and services: `{prefix}{id}`. */
export function sandboxNameStem(prefix: string, sandboxId: string): string {
  return `${prefix}${sanitizeTraefikName(sandboxId)}`;
}

/** The router and service name of one sandbox port: `{prefix}{id}-{port}`. */
export function traefikRouteName(prefix: string, sandboxId: string, port: number): string {
  return `${sandboxNameStem(prefix, sandboxId)}-${port}`;
}

/** Whether `name` is one of the routers or services of the sandbox with this stem. */
export function belongsToStem(name: string, stem: string): boolean {
  if (!name.startsWith(`${stem}-`)) return false;
  const rest = name.slice(stem.length + 1);
  return new RegExp(`^\\d{1,5}(?:${REDIRECT_ROUTER_SUFFIX})?$`).test(rest);
}

/** The name of the shared https-redirect middleware. */
export function redirectMiddlewareName(prefix: string): string {
  return `${prefix}${REDIRECT_MIDDLEWARE}`;
}

function normalizeUpstream(url: string): string {
  return url.replace(/\/+$/, '');
}

/**
 * The dynamic configuration for these sandboxes. Deterministic: sandboxes
 * sorted by id and ports ascending, so equal inputs give byte-equal JSON
 * (and an equal ETag). A sandbox whose id is not a DNS label, whose domain
 * is not a preview domain or that has no upstream gets no route.
 */
export function buildTraefikConfig(
  sources: readonly TraefikRouteSource[],
  o: TraefikBuildOptions,
): TraefikDynamicConfig {
  const routers: Record<string, TraefikRouter> = {};
  const services: Record<string, TraefikService> = {};
  const redirect = redirectMiddlewareName(o.namePrefix);
  const sorted = [...sources].sort((a, b) =>
    a.sandboxId < b.sandboxId ? -1 : a.sandboxId > b.sandboxId ? 1 : 0,
  );
  for (const s of sorted) {
    if (s.upstreamUrl === undefined || s.upstreamUrl === '') continue;
    const domain = s.domain.toLowerCase();
    if (!DNS_LABEL.test(s.sandboxId) || !isPreviewDomain(domain)) continue;
    const url = normalizeUpstream(s.upstreamUrl);
    const ports = [...new Set(s.ports)].filter(isPreviewPort).sort((a, b) => a - b);
    for (const port of ports) {
      const label = `${port}-${s.sandboxId}`;
      if (label.length > 63) continue;
      const name = traefikRouteName(o.namePrefix, s.sandboxId, port);
      const rule = `Host(\`${previewHostname(port, s.sandboxId, domain)}\`)`;
      const router: TraefikRouter = { rule, service: name };
      if (o.entryPoints.length > 0) router.entryPoints = [...o.entryPoints];
      if (o.middlewares.length > 0) router.middlewares = [...o.middlewares];
      if (o.tls) {
        const tls: TraefikRouterTls = {};
        if (o.certResolver !== '') {
          tls.certResolver = o.certResolver;
          if (o.wildcardCert) tls.domains = [{ main: domain, sans: [`*.${domain}`] }];
        }
        router.tls = tls;
      }
      routers[name] = router;
      if (o.redirectEntryPoints.length > 0) {
        routers[`${name}${REDIRECT_ROUTER_SUFFIX}`] = {
          rule,
          service: name,
          entryPoints: [...o.redirectEntryPoints],
          middlewares: [redirect],
        };
      }
      services[name] = { loadBalancer: { servers: [{ url }], passHostHeader: true } };
    }
  }
  const http: TraefikDynamicConfig['http'] = {
    middlewares: { [redirect]: { redirectScheme: { scheme: 'https', permanent: true } } },
  };
  if (Object.keys(routers).length > 0) {
    http.routers = routers;
    http.services = services;
  }
  return { http };
}

type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

function flattenInto(out: Map<string, string>, prefix: string, value: Json): void {
  if (value === null) return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => flattenInto(out, `${prefix}/${i}`, v));
    return;
  }
  if (typeof value === 'object') {
    const entries = Object.entries(value);
    // An empty object (e.g. `tls: {}`) is the KV key set to "true".
    if (entries.length === 0) {
      out.set(prefix, 'true');
      return;
    }
    for (const [k, v] of entries) flattenInto(out, `${prefix}/${k}`, v);
    return;
  }
  out.set(prefix, String(value));
}

/**
 * The KV layout Traefik's KV providers read: `{root}/http/routers/{name}/rule`,
 * `…/entryPoints/0`, `{root}/http/services/{name}/loadBalancer/servers/0/url`,
 * and so on. Keys keep the JSON field case (Traefik reads them
 * case-insensitively).
 */
export function flattenTraefikKv(
  config: TraefikDynamicConfig,
  rootKey: string,
): Map<string, string> {
  const out = new Map<string, string>();
  flattenInto(out, rootKey, config as unknown as Json);
  return out;
}

/** The kind and name a KV key under `{root}/http/` is about, if any. */
export function kvKeyOwner(
  key: string,
  rootKey: string,
): { kind: 'routers' | 'services' | 'middlewares'; name: string } | undefined {
  const head = `${rootKey}/http/`;
  if (!key.startsWith(head)) return undefined;
  const [kind, name] = key.slice(head.length).split('/');
  if (kind !== 'routers' && kind !== 'services' && kind !== 'middlewares') return undefined;
  if (name === undefined || name === '') return undefined;
  return { kind, name };
}
