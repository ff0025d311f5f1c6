/**
 * Live-preview URLs, hosts and tokens, as pure functions (only `node:crypto`).
 *
 * A preview URL is `http(s)://{port}-{sandbox-id}.{preview_domain}[:gateway-port]`
 * for any port 1–65535 inside the sandbox. The gateway parses the Host header
 * back into (port, sandbox id, domain) with {@link parsePreviewHost}; the API
 * and the SDKs build URLs with {@link buildPreviewUrl}.
 *
 * Private previews carry a token: an HMAC-SHA256 over (sandbox id, port,
 * expiry) with a key only the control plane knows. Tokens are scoped to one
 * sandbox port and never appear in a log line or an error message.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { isSandboxId } from './sandbox.js';

/** Scheme of public preview URLs. */
export type PreviewScheme = 'http' | 'https';

/** Request header carrying a preview token. */
export const PREVIEW_TOKEN_HEADER = 'x-stacyvm-preview-token';
/** Query parameter carrying a preview token (the gateway turns it into a cookie). */
export const PREVIEW_TOKEN_QUERY = 'stacyvm_preview_token';
/** Cookie carrying a preview token; host-only, so scoped to one sandbox port. */
export const PREVIEW_TOKEN_COOKIE = 'stacyvm_preview_token';

/** Lowest and highest port a preview may address. */
export const MIN_PREVIEW_PORT = 1;
export const MAX_PREVIEW_PORT = 65535;

/** Whether `port` is a TCP port a preview may address (1–65535). */
export function isPreviewPort(port: number): boolean {
  return Number.isInteger(port) && port >= MIN_PREVIEW_PORT && port <= MAX_PREVIEW_PORT;
}

/**
 * Parses a decimal port written as in a URL (no sign, no leading zeros).
 * Undefined when the text is not such a number or is out of range.
 */
export function parsePreviewPort(text: string): number | undefined {
  if (!/^[1-9]\d{0,4}$/.test(text)) return undefined;
  const port = Number(text);
  return isPreviewPort(port) ? port : undefined;
}

const DOMAIN =
  /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** Whether `domain` can be a preview domain: a lower- or upper-case DNS name. */
export function isPreviewDomain(domain: string): boolean {
  return DOMAIN.test(domain.toLowerCase());
}

/** The host name of a preview: `{port}-{sandbox-id}.{domain}`. */
export function previewHostname(port: number, sandboxId: string, domain: string): string {
  return `${port}-${sandboxId}.${domain.toLowerCase()}`;
}

/** The default port of a scheme, which URLs leave out. */
export function defaultPortOf(scheme: PreviewScheme): number {
  return scheme === 'https' ? 443 : 80;
}

/**
 * The port a preview URL shows: undefined when it is the scheme's default (or
 * 0 = unknown), so clients append `:{port}` only when it is set.
 */
export function visiblePreviewPort(scheme: PreviewScheme, port: number): number | undefined {
  if (!Number.isInteger(port) || port <= 0 || port === defaultPortOf(scheme)) return undefined;
  return port;
}

/** Where previews are published: scheme, domain and the public gateway port. */
export interface PreviewUrlOptions {
  scheme: PreviewScheme;
  domain: string;
  /** The public gateway port; 0, undefined or the scheme's default are left out of the URL. */
  publicPort?: number;
}

/** `http(s)://{port}-{sandbox-id}.{domain}[:public-port]`, without a trailing slash. */
export function buildPreviewUrl(port: number, sandboxId: string, o: PreviewUrlOptions): string {
  const visible = visiblePreviewPort(o.scheme, o.publicPort ?? 0);
  const suffix = visible === undefined ? '' : `:${visible}`;
  return `${o.scheme}://${previewHostname(port, sandboxId, o.domain)}${suffix}`;
}

/** Why a Host header does not address a preview. */
export type PreviewHostProblem =
  /** No Host, or not a syntactically valid `host[:port]`. → 400 */
  | 'malformed'
  /** The preview port is 0, above 65535, or written with leading zeros. → 400 */
  | 'port_out_of_range'
  /** The host is not under a configured preview domain. → 404 */
  | 'unknown_domain'
  /** Under a preview domain, but the first label is not `{port}-{sandbox-id}`. → 404 */
  | 'not_a_preview_host';

/** A Host header that addresses a preview. */
export interface PreviewHost {
  ok: true;
  port: number;
  sandboxId: string;
  /** The configured preview domain it matched, lower case. */
  domain: string;
  /** The whole host name, lower case, without the port or a trailing dot. */
  hostname: string;
  /** The port in the Host header, when one was given. */
  hostPort?: number;
}

/** A Host header that does not; `status` is what the gateway answers. */
export interface PreviewHostRefusal {
  ok: false;
  status: 400 | 404;
  problem: PreviewHostProblem;
  message: string;
}

const HOSTNAME_CHARS = /^[a-z0-9.-]+$/;
const PREVIEW_LABEL = /^(\d+)-(.+)$/;

function refuse(problem: PreviewHostProblem, message: string): PreviewHostRefusal {
  const status = problem === 'malformed' || problem === 'port_out_of_range' ? 400 : 404;
  return { ok: false, status, problem, message };
}

/**
 * Parses a Host header `{port}-{sandbox-id}.{domain}[:p]` (case-insensitive,
 * one trailing dot tolerated). `domains` are the configured preview domains;
 * a host under any other domain, or a sub-domain of one, is refused.
 */
export function parsePreviewHost(
  raw: string | undefined,
  domains: readonly string[],
): PreviewHost | PreviewHostRefusal {
  if (raw === undefined || raw === '') return refuse('malformed', 'the request has no Host header');
  let host = raw.toLowerCase();
  if (host.length > 300) return refuse('malformed', 'the Host header is too long');
  if (host.startsWith('[')) {
    return refuse('unknown_domain', 'an IP address is not a preview host');
  }
  let hostPort: number | undefined;
  const colon = host.lastIndexOf(':');
  if (colon >= 0) {
    const text = host.slice(colon + 1);
    if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) {
      return refuse('malformed', 'the Host header has an invalid port');
    }
    hostPort = Number(text);
    host = host.slice(0, colon);
  }
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host === '' || !HOSTNAME_CHARS.test(host) || host.split('.').some((l) => l === '')) {
    return refuse('malformed', 'the Host header is not a valid host name');
  }
  const dot = host.indexOf('.');
  const label = dot < 0 ? host : host.slice(0, dot);
  const domain = dot < 0 ? '' : host.slice(dot + 1);
  const known = domains.some((d) => d !== '' && d.toLowerCase() === domain);
  if (!known) return refuse('unknown_domain', `${host} is not under a preview domain`);
  const m = PREVIEW_LABEL.exec(label);
  if (m === null) {
    return refuse('not_a_preview_host', `${host} is not a preview host ({port}-{sandbox-id})`);
  }
  const portText = m[1] ?? '';
  const sandboxId = m[2] ?? '';
  const port = parsePreviewPort(portText);
  if (port === undefined) {
    return refuse('port_out_of_range', `preview port ${portText} is not a port from 1 to 65535`);
  }
  if (!isSandboxId(sandboxId)) {
    return refuse('not_a_preview_host', `${sandboxId} is not a sandbox id`);
  }
  const out: PreviewHost = { ok: true, port, sandboxId, domain, hostname: host };
  if (hostPort !== undefined) out.hostPort = hostPort;
  return out;
}

// ---------------------------------------------------------------------------
// Tokens

/** Version tag that starts every preview token. */
export const PREVIEW_TOKEN_PREFIX = 'spt1';

/** What a preview token grants: one port of one sandbox until `expiresAtMs`. */
export interface PreviewTokenClaims {
  sandboxId: string;
  port: number;
  expiresAtMs: number;
}

/** Why a token was refused: for logs and tests, never told to the caller beyond "invalid". */
export type PreviewTokenRejection = 'malformed' | 'bad_signature' | 'wrong_target' | 'expired';

export type PreviewTokenResult =
  { ok: true; claims: PreviewTokenClaims } | { ok: false; reason: PreviewTokenRejection };

function signature(payload: string, key: Uint8Array | string): Buffer {
  return createHmac('sha256', key).update(payload, 'utf8').digest();
}

/**
 * A token `spt1.{sandbox-id}.{port}.{exp-seconds}.{hmac}`; the HMAC-SHA256
 * (base64url) covers everything before it.
 *
 * @throws Error when the claims are not a sandbox id and a port, or the key is empty.
 */
export function signPreviewToken(claims: PreviewTokenClaims, key: Uint8Array | string): string {
  if (key.length === 0) throw new Error('preview token key is empty');
  if (!isSandboxId(claims.sandboxId) || !isPreviewPort(claims.port)) {
    throw new Error('preview token claims need a sandbox id and a port');
  }
  const exp = Math.ceil(claims.expiresAtMs / 1000);
  const payload = `${PREVIEW_TOKEN_PREFIX}.${claims.sandboxId}.${claims.port}.${exp}`;
  return `${payload}.${signature(payload, key).toString('base64url')}`;
}

/**
 * Verifies a token for one sandbox port. The signature is compared in
 * constant time before anything the token claims is trusted.
 */
export function verifyPreviewToken(
  token: string,
  expected: { sandboxId: string; port: number },
  key: Uint8Array | string,
  nowMs: number,
): PreviewTokenResult {
  if (key.length === 0 || token.length > 512) return { ok: false, reason: 'malformed' };
  const parts = token.split('.');
  if (parts.length !== 5 || parts[0] !== PREVIEW_TOKEN_PREFIX) {
    return { ok: false, reason: 'malformed' };
  }
  const [, sandboxId = '', portText = '', expText = '', sig = ''] = parts;
  if (!/^[A-Za-z0-9_-]{43}$/.test(sig) || !/^\d{1,12}$/.test(expText)) {
    return { ok: false, reason: 'malformed' };
  }
  const payload = parts.slice(0, 4).join('.');
  const want = signature(payload, key);
  const got = Buffer.from(sig, 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    return { ok: false, reason: 'bad_signature' };
  }
  const port = parsePreviewPort(portText);
  if (port === undefined || !isSandboxId(sandboxId)) return { ok: false, reason: 'malformed' };
  if (sandboxId !== expected.sandboxId || port !== expected.port) {
    return { ok: false, reason: 'wrong_target' };
  }
  const expiresAtMs = Number(expText) * 1000;
  if (expiresAtMs <= nowMs) return { ok: false, reason: 'expired' };
  return { ok: true, claims: { sandboxId, port, expiresAtMs } };
}

// ---------------------------------------------------------------------------
// Cookies and query strings

/** Values of the cookie `name` in a Cookie header (a browser may send several). */
export function cookieValues(header: string | undefined, name: string): string[] {
  if (header === undefined || header === '') return [];
  const out: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    let value = part.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
      value = value.slice(1, -1);
    }
    if (value !== '') out.push(value);
  }
  return out;
}

/** The Cookie header without the cookie `name`; undefined when nothing is left. */
export function withoutCookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  const kept = header
    .split(';')
    .filter((part) => {
      const eq = part.indexOf('=');
      const key = (eq < 0 ? part : part.slice(0, eq)).trim();
      return key !== '' && key !== name;
    })
    .map((p) => p.trim());
  return kept.length === 0 ? undefined : kept.join('; ');
}

/** The Set-Cookie value that stores a preview token for the host that answered. */
export function previewTokenCookie(
  token: string,
  o: { maxAgeSeconds: number; secure: boolean },
): string {
  const attrs = [
    `${PREVIEW_TOKEN_COOKIE}=${token}`,
    'Path=/',
    `Max-Age=${Math.max(0, Math.floor(o.maxAgeSeconds))}`,
    'HttpOnly',
    'SameSite=Lax',
  ];
  if (o.secure) attrs.push('Secure');
  return attrs.join('; ');
}

function decodeComponent(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text;
  }
}

/**
 * Splits the query parameter `name` out of a request target (`/path?query`).
 * The other parameters are kept byte for byte, in order. `values` holds every
 * occurrence of `name`, decoded.
 */
export function takeQueryParam(target: string, name: string): { target: string; values: string[] } {
  const q = target.indexOf('?');
  if (q < 0) return { target, values: [] };
  const hash = target.indexOf('#', q);
  const path = target.slice(0, q);
  const query = target.slice(q + 1, hash < 0 ? undefined : hash);
  const fragment = hash < 0 ? '' : target.slice(hash);
  const values: string[] = [];
  const kept: string[] = [];
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = decodeComponent(eq < 0 ? part : part.slice(0, eq));
    if (key === name) values.push(eq < 0 ? '' : decodeComponent(part.slice(eq + 1)));
    else kept.push(part);
  }
  if (values.length === 0) return { target, values };
  return { target: `${path}${kept.length > 0 ? `?${kept.join('&')}` : ''}${fragment}`, values };
}
