/**
 * The built-in preview gateway: a reverse proxy that routes
 * `{port}-{sandbox-id}.{preview_domain}` to that port inside the sandbox.
 *
 * Plain `node:http`, streaming both ways (no buffering), HTTP/1.1 keep-alive
 * to clients and upstreams, WebSocket upgrades piped as raw sockets after the
 * 101. Where a sandbox port is comes from an injected resolver, so the same
 * gateway serves the control plane (resolver: the sandbox store and the
 * owning worker) and a remote worker (resolver: its own runtime, callers
 * authenticated with the worker RPC credential).
 *
 * Every refusal is an answer, never a hang: a bad Host is 400, another domain
 * or an unknown sandbox 404, a stopped sandbox or a closed port 502, an
 * upstream that does not send headers in time 504. Tokens never reach a log
 * line or the sandbox.
 */
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import type {
  IncomingHttpHeaders,
  IncomingMessage,
  RequestOptions,
  Server,
  ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { isIP } from 'node:net';
import { Agent as UndiciAgent, buildConnector } from 'undici';
import type { Dispatcher } from 'undici';
import { isStacyError } from '../domain/errors.js';
import type { Logger } from '../domain/logger.js';
import {
  PREVIEW_TOKEN_COOKIE,
  PREVIEW_TOKEN_HEADER,
  PREVIEW_TOKEN_QUERY,
  cookieValues,
  defaultPortOf,
  parsePreviewHost,
  previewTokenCookie,
  takeQueryParam,
  verifyPreviewToken,
  withoutCookie,
} from '../domain/preview.js';
import type { PreviewScheme } from '../domain/preview.js';
import { HEADER_WORKER_ID, HEADER_WORKER_TOKEN } from '../rpc/protocol.js';
import type { PreviewUpstream, RelayTls } from '../rpc/worker-client.js';

/** Header a control plane sets on a relay hop when `preview.host_rewrite` is on. */
export const HOST_REWRITE_HEADER = 'x-stacyvm-preview-host-rewrite';
/** Marks a request a control plane relays to a worker gateway; a non-worker gateway refuses it (loop). */
export const RELAY_HOP_HEADER = 'x-stacyvm-preview-relay';
/** Header naming why the gateway answered itself (not the sandbox). */
export const PREVIEW_ERROR_HEADER = 'x-stacyvm-preview-error';

/** A sandbox port a request addresses. */
export interface PreviewTarget {
  sandboxId: string;
  port: number;
  /** The preview domain the Host matched (lower case). */
  domain: string;
  /** `X-Tenant-ID` of the request, when given: another tenant's sandbox is then 404. */
  tenantId?: string;
}

/**
 * Finds how to reach a target. Throws a StacyError: NOT_FOUND (no such
 * sandbox here) → 404; CONFLICT (not running), BAD_REQUEST (port not
 * reachable), UNAVAILABLE → 502; TIMEOUT → 504.
 */
export type PreviewResolver = (
  target: PreviewTarget,
  signal: AbortSignal,
) => Promise<PreviewUpstream>;

export interface PreviewGatewayOptions {
  /** Preview domains served; read per request (workers may add theirs). */
  domains: () => readonly string[];
  resolve: PreviewResolver;
  /**
   * A resolution the resolver already holds (its cache), answered at once:
   * the request is then proxied without waiting on a promise. Absent, or
   * undefined for a target, means ask {@link resolve}.
   */
  resolveCached?: (target: PreviewTarget) => PreviewUpstream | undefined;
  /** Private previews: every request needs a token signed with this key. */
  tokenKey?: Uint8Array | string;
  /** Lifetime a cookie set from a query token may have at most (it never outlives the token). */
  cookieMaxAgeMs?: number;
  /**
   * Worker side: only the control plane may call, with the worker RPC
   * credential in `X-Worker-ID`/`X-Worker-Token`. Its X-Forwarded-* headers
   * are then passed on as they are.
   */
  hopAuth?: (workerId: string | undefined, token: string | undefined) => boolean;
  /** Scheme browsers use (X-Forwarded-Proto, Secure cookies). */
  publicScheme: PreviewScheme;
  /** The public gateway port (X-Forwarded-Port when the Host has none). */
  publicPort?: () => number;
  /** The sandbox sees `Host: 127.0.0.1:{port}` instead of the preview host. */
  hostRewrite?: boolean;
  /** Time for an upstream to accept the connection and send response headers. Default 60 s. */
  upstreamTimeoutMs?: number;
  /** Most open client connections (idle ones included); more are dropped. Default 4096. */
  maxConnections?: number;
  /** Time a client has to send a request's headers (also ends silent connections). Default 30 s. */
  headersTimeoutMs?: number;
  /** Idle time of a keep-alive client connection between requests. Default 30 s. */
  keepAliveTimeoutMs?: number;
  /** How often header timeouts are checked. Default 1 s. */
  connectionsCheckingIntervalMs?: number;
  /** HTTPS (worker side, with the worker RPC certificate); `clientCa` requires client certificates. */
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  logger: Logger;
  nowMs?: () => number;
}

export interface PreviewGateway {
  /** Starts listening; resolves with the bound address (port 0 picks one). */
  listen(host: string, port: number): Promise<{ host: string; port: number }>;
  /** The bound port, once listening. */
  readonly port: number | undefined;
  /** The node server, for connection accounting. */
  readonly server: Server;
  /** Stops accepting; open requests and WebSocket sessions get `graceMs` (default 5 s). */
  close(graceMs?: number): Promise<void>;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);
/** Request headers the gateway owns: never passed through from the client. */
const GATEWAY_OWNED = new Set([
  'host',
  'expect',
  PREVIEW_TOKEN_HEADER,
  HEADER_WORKER_ID,
  HEADER_WORKER_TOKEN,
  HOST_REWRITE_HEADER,
  RELAY_HOP_HEADER,
]);
const FORWARDED = ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port'];
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS']);
/** A reason phrase Node can write (RFC 9112: HTAB, SP, VCHAR, obs-text). */
const REASON_PHRASE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Error code of an upstream that did not connect or answer in time. */
const UPSTREAM_TIMEOUT = 'STACYVM_UPSTREAM_TIMEOUT';

interface Failure {
  status: number;
  reason: string;
  title: string;
  detail: string;
}

function fail(status: number, reason: string, title: string, detail: string): Failure {
  return { status, reason, title, detail };
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function pageBody(f: Failure): string {
  return (
    '<!doctype html><html><head><meta charset="utf-8">' +
    `<title>${f.status} ${escapeHtml(f.title)}</title>` +
    '<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}' +
    'p.meta{color:#777;font-size:.85rem}</style></head><body>' +
    `<h1>${escapeHtml(f.title)}</h1><p>${escapeHtml(f.detail)}</p>` +
    `<p class="meta">StacyVM preview gateway · ${f.status} · ${escapeHtml(f.reason)}</p>` +
    '</body></html>\n'
  );
}

function wantsJson(req: IncomingMessage): boolean {
  const accept = req.headers.accept ?? '';
  return accept.includes('application/json') && !accept.includes('text/html');
}

const NO_TOKENS: ReadonlySet<string> = new Set<string>();
const PLAIN_CONNECTION = /^\s*(?:keep-alive|close)\s*$/i;

/** Connection tokens of every Connection line of a raw header list, lower case. */
function rawConnectionTokens(raw: readonly string[]): ReadonlySet<string> {
  let values: string[] | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? '';
    if (name.length === 10 && name.toLowerCase() === 'connection') {
      const value = raw[i + 1] ?? '';
      // The usual values name nothing but headers that are hop-by-hop anyway.
      if (!PLAIN_CONNECTION.test(value)) (values ??= []).push(value);
    }
  }
  return values === undefined ? NO_TOKENS : tokensOf(values);
}

function tokensOf(values: readonly string[]): ReadonlySet<string> {
  const out = new Set<string>();
  for (const v of values) {
    for (const t of v.split(',')) {
      const token = t.trim().toLowerCase();
      if (token !== '') out.add(token);
    }
  }
  return out;
}

function single(v: string | string[] | undefined): string | undefined {
  const s = Array.isArray(v) ? v[0] : v;
  return s === undefined || s.trim() === '' ? undefined : s.trim();
}

/** How many times a header (lower-case name) occurs in a raw header list. */
function headerCount(raw: readonly string[], name: string): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]?.toLowerCase() === name) n += 1;
  return n;
}

function hasBody(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const len = req.headers['content-length'];
  return len !== undefined && len !== '0';
}

function errnoCode(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

function rawResponse(
  status: number,
  statusText: string,
  headers: [string, string][],
  body: string,
): string {
  const lines = [`HTTP/1.1 ${status} ${statusText}`];
  for (const [k, v] of headers) lines.push(`${k}: ${v}`);
  lines.push(`Content-Length: ${Buffer.byteLength(body)}`, 'Connection: close', '', body);
  return lines.join('\r\n');
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  508: 'Loop Detected',
};

/** The upstream exchange a client request currently waits on (a retry replaces it). */
interface InFlight {
  exchange: UpstreamExchange | undefined;
}

/** What the gateway decided about a request before proxying it. */
interface Admitted {
  target: PreviewTarget;
  /** The request target to send upstream (token query parameter removed). */
  path: string;
  /** The Host header as the client sent it. */
  host: string;
  hostPort: number | undefined;
  /** A hop from a control plane: X-Forwarded-* pass through unchanged. */
  trustedHop: boolean;
  hostRewrite: boolean;
  /** A valid query token on a GET/HEAD: redirect to the clean URL, setting the cookie. */
  redirectTo?: { location: string; cookie: string };
}

class Gateway implements PreviewGateway {
  readonly server: Server;
  /** Keep-alive connections to sandbox ports (undici: one pool per origin, dropped when idle). */
  private readonly directDispatcher: UndiciAgent;
  /** Connections to worker gateways, by origin (each with its TLS settings). */
  private readonly relayDispatchers = new Map<string, UndiciAgent>();
  private readonly upgraded = new Set<Duplex>();
  private readonly upstreamTimeoutMs: number;
  private readonly nowMs: () => number;
  private boundPort: number | undefined;
  private closing: Promise<void> | undefined;
  private lastDropLogMs = 0;

  constructor(private readonly o: PreviewGatewayOptions) {
    this.upstreamTimeoutMs = o.upstreamTimeoutMs ?? 60_000;
    this.nowMs = o.nowMs ?? Date.now;
    this.directDispatcher = this.newDispatcher();
    const common = {
      headersTimeout: o.headersTimeoutMs ?? 30_000,
      // Bodies stream to the sandbox as they arrive; a slow upload only holds its own connection.
      requestTimeout: 0,
      keepAliveTimeout: o.keepAliveTimeoutMs ?? 30_000,
      connectionsCheckingInterval: o.connectionsCheckingIntervalMs ?? 1_000,
      noDelay: true,
    };
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
      try {
        this.handle(req, res);
      } catch (err) {
        this.requestFailed(req, res, err);
      }
    };
    this.server =
      o.tls === undefined
        ? createHttpServer(common, onRequest)
        : createHttpsServer(
            {
              ...common,
              cert: o.tls.cert,
              key: o.tls.key,
              minVersion: 'TLSv1.2',
              ...(o.tls.clientCa === undefined
                ? {}
                : { ca: o.tls.clientCa, requestCert: true, rejectUnauthorized: true }),
            },
            onRequest,
          );
    // Long polls and event streams may be silent for minutes: no socket idle timeout.
    this.server.timeout = 0;
    this.server.maxConnections = o.maxConnections ?? 4096;
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.handleUpgrade(req, socket, head).catch((err: unknown) => {
        this.o.logger.error({ err: (err as Error).message }, 'preview upgrade failed');
        this.rawFail(
          socket,
          fail(502, 'gateway_error', 'Preview unavailable', 'The preview gateway failed.'),
        );
      });
    });
    this.server.on('clientError', (err: Error, socket: Duplex) => this.clientError(err, socket));
    this.server.on('drop', () => {
      const now = this.nowMs();
      if (now - this.lastDropLogMs > 10_000) {
        this.lastDropLogMs = now;
        this.o.logger.warn(
          { max_connections: this.server.maxConnections },
          'preview gateway is at its connection limit; dropping new connections',
        );
      }
    });
  }

  get port(): number | undefined {
    return this.boundPort;
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    this.boundPort = (this.server.address() as AddressInfo).port;
    return { host, port: this.boundPort };
  }

  close(graceMs = 5_000): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      const finish = (): void => {
        const dispatchers = [this.directDispatcher, ...this.relayDispatchers.values()];
        void Promise.allSettled(dispatchers.map((d) => d.destroy())).then(() => resolve());
      };
      if (!this.server.listening) {
        for (const s of this.upgraded) s.destroy();
        finish();
        return;
      }
      const timer = setTimeout(() => {
        this.server.closeAllConnections();
        for (const s of this.upgraded) s.destroy();
      }, graceMs);
      timer.unref();
      this.server.close(() => {
        clearTimeout(timer);
        finish();
      });
      this.server.closeIdleConnections();
    });
    return this.closing;
  }

  // ---- admission ------------------------------------------------------------------

  /** Host, hop credential and token checks shared by requests and upgrades. */
  private admit(req: IncomingMessage, upgrade: boolean): Admitted | Failure {
    const url = req.url ?? '';
    if (!url.startsWith('/')) {
      return fail(400, 'bad_request_target', 'Bad request', 'The request target must be a path.');
    }
    if (headerCount(req.rawHeaders, 'host') > 1) {
      // RFC 9112 §3.2: a proxy in front may have routed by another of them.
      return fail(
        400,
        'malformed',
        'Bad preview address',
        'The request has more than one Host header.',
      );
    }
    const hostHeader = single(req.headers.host);
    const parsed = parsePreviewHost(hostHeader, this.o.domains());
    if (!parsed.ok) {
      const title = parsed.status === 400 ? 'Bad preview address' : 'No preview at this address';
      return fail(parsed.status, parsed.problem, title, parsed.message);
    }
    const target: PreviewTarget = {
      sandboxId: parsed.sandboxId,
      port: parsed.port,
      domain: parsed.domain,
    };
    let trustedHop = false;
    if (this.o.hopAuth !== undefined) {
      const ok = this.o.hopAuth(
        single(req.headers[HEADER_WORKER_ID]),
        single(req.headers[HEADER_WORKER_TOKEN]),
      );
      if (!ok) {
        this.o.logger.warn(
          { remote: req.socket.remoteAddress },
          'preview relay credentials refused',
        );
        return fail(
          401,
          'relay_unauthorized',
          'Not allowed',
          'This preview gateway only serves its control plane.',
        );
      }
      trustedHop = true;
    } else {
      if (req.headers[RELAY_HOP_HEADER] !== undefined) {
        // A worker advertised an address that leads back here: refuse instead of looping.
        this.o.logger.error(
          { sandbox_id: target.sandboxId },
          'a relayed preview request came back to the control plane gateway (a worker preview_url points here)',
        );
        return fail(
          508,
          'relay_loop',
          'Preview misrouted',
          'The preview relay to the worker leads back to this gateway.',
        );
      }
      const tenant = single(req.headers['x-tenant-id']);
      if (tenant !== undefined) target.tenantId = tenant;
    }
    const { target: path, values: queryTokens } = takeQueryParam(url, PREVIEW_TOKEN_QUERY);
    const admitted: Admitted = {
      target,
      path,
      host: hostHeader ?? '',
      hostPort: parsed.hostPort,
      trustedHop,
      hostRewrite:
        this.o.hostRewrite === true || (trustedHop && req.headers[HOST_REWRITE_HEADER] === '1'),
    };
    const key = this.o.tokenKey;
    if (key === undefined || trustedHop) return admitted;

    const now = this.nowMs();
    const check = (token: string): number | undefined => {
      const r = verifyPreviewToken(
        token,
        { sandboxId: target.sandboxId, port: target.port },
        key,
        now,
      );
      return r.ok ? r.claims.expiresAtMs : undefined;
    };
    if (queryTokens.length > 0) {
      const exp = queryTokens.map(check).find((e) => e !== undefined);
      if (exp === undefined) {
        return fail(
          401,
          'token_invalid',
          'Preview link expired or invalid',
          'Ask for a new preview link.',
        );
      }
      const method = req.method ?? 'GET';
      if (!upgrade && (method === 'GET' || method === 'HEAD')) {
        const maxAgeMs = Math.min(exp - now, this.o.cookieMaxAgeMs ?? Number.POSITIVE_INFINITY);
        const token = queryTokens.find((t) => check(t) !== undefined) ?? '';
        admitted.redirectTo = {
          // `//host/x` would be a protocol-relative URL: never redirect off this host.
          location: path.replace(/^[/\\]+/, '/'),
          cookie: previewTokenCookie(token, {
            maxAgeSeconds: maxAgeMs / 1000,
            secure: this.o.publicScheme === 'https',
          }),
        };
      }
      return admitted;
    }
    const fromHeader = single(req.headers[PREVIEW_TOKEN_HEADER]);
    const presented = [
      ...(fromHeader === undefined ? [] : [fromHeader]),
      ...cookieValues(single(req.headers.cookie), PREVIEW_TOKEN_COOKIE),
    ];
    if (presented.length === 0) {
      return fail(
        401,
        'token_required',
        'This preview is private',
        'Open it with the link StacyVM gave you (it carries a token), or send the X-StacyVM-Preview-Token header.',
      );
    }
    if (presented.some((t) => check(t) !== undefined)) return admitted;
    return fail(
      401,
      'token_invalid',
      'Preview link expired or invalid',
      'Ask for a new preview link.',
    );
  }

  private async resolveUpstream(
    a: Admitted,
    signal: AbortSignal,
  ): Promise<PreviewUpstream | Failure> {
    try {
      return await this.o.resolve(a.target, signal);
    } catch (err) {
      return this.resolveFailure(a.target, err);
    }
  }

  private resolveFailure(t: PreviewTarget, err: unknown): Failure {
    if (isStacyError(err)) {
      switch (err.code) {
        case 'NOT_FOUND':
          return fail(
            404,
            'sandbox_not_found',
            'No such sandbox',
            `There is no sandbox ${t.sandboxId} here (it may have been destroyed).`,
          );
        case 'CONFLICT':
          return fail(502, 'sandbox_not_running', 'Sandbox not running', err.message);
        case 'BAD_REQUEST':
          return fail(502, 'port_unreachable', 'Port not reachable', err.message);
        case 'TIMEOUT':
          return fail(504, 'upstream_timeout', 'Preview timed out', err.message);
        case 'UNAVAILABLE':
          return fail(502, 'upstream_unavailable', 'Preview unavailable', err.message);
        case 'FORBIDDEN':
        case 'UNAUTHORIZED':
        case 'INTERNAL_ERROR':
        case 'PAYLOAD_TOO_LARGE':
        case 'RESOURCE_LIMIT':
          break;
      }
    }
    this.o.logger.error(
      { sandbox_id: t.sandboxId, port: t.port, err: (err as Error).message },
      'preview resolution failed',
    );
    return fail(
      502,
      'gateway_error',
      'Preview unavailable',
      'The preview gateway could not reach the sandbox.',
    );
  }

  // ---- HTTP -------------------------------------------------------------------------

  private requestFailed(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    this.o.logger.error({ err: (err as Error).message }, 'preview request failed');
    if (!res.headersSent)
      this.page(
        req,
        res,
        fail(502, 'gateway_error', 'Preview unavailable', 'The preview gateway failed.'),
      );
    else res.destroy();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const a = this.admit(req, false);
    if ('status' in a) {
      this.page(req, res, a);
      return;
    }
    if (a.redirectTo !== undefined) {
      res.writeHead(302, {
        Location: a.redirectTo.location,
        'Set-Cookie': a.redirectTo.cookie,
        'Cache-Control': 'no-store',
        'Content-Length': '0',
        'Referrer-Policy': 'no-referrer',
      });
      res.end();
      return;
    }
    // A resolution the resolver holds already: proxy at once, no promise in between.
    const known = this.o.resolveCached?.(a.target);
    if (known !== undefined) {
      this.proxy(req, res, a, known);
      return;
    }
    this.resolveThenProxy(req, res, a).catch((err: unknown) => this.requestFailed(req, res, err));
  }

  private async resolveThenProxy(
    req: IncomingMessage,
    res: ServerResponse,
    a: Admitted,
  ): Promise<void> {
    const ac = new AbortController();
    // A client that goes away while the sandbox is being resolved aborts the resolution.
    const onGone = (): void => ac.abort(new Error('client went away'));
    res.once('close', onGone);
    const up = await this.resolveUpstream(a, ac.signal);
    res.off('close', onGone);
    if (ac.signal.aborted || res.destroyed) return;
    if ('status' in up) {
      this.page(req, res, up);
      return;
    }
    this.proxy(req, res, a, up);
  }

  /** Sends the request upstream; a client that goes away aborts it (retries included). */
  private proxy(req: IncomingMessage, res: ServerResponse, a: Admitted, up: PreviewUpstream): void {
    const flight: InFlight = { exchange: undefined };
    res.once('close', () => {
      if (!res.writableFinished) flight.exchange?.abort();
    });
    this.forward(req, res, a, up, flight, true);
  }

  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    a: Admitted,
    up: PreviewUpstream,
    flight: InFlight,
    mayRetry: boolean,
  ): void {
    const exchange = new UpstreamExchange(this, req, res, a, up, flight, mayRetry);
    flight.exchange = exchange;
    const headers = this.upstreamHeaders(req, a, up, false);
    const body = hasBody(req) ? req : null;
    const common = {
      method: req.method ?? 'GET',
      headers,
      body,
      headersTimeout: this.upstreamTimeoutMs,
      bodyTimeout: 0,
    };
    if (up.kind === 'direct') {
      this.directDispatcher.dispatch(
        { ...common, origin: originOf('http:', up.host, up.port), path: a.path },
        exchange,
      );
      return;
    }
    const url = new URL(up.url);
    const prefix = url.pathname.replace(/\/+$/, '');
    // undici would take the TLS server name from the Host header (the preview host): name
    // the worker itself, so its certificate is checked against its own name or address.
    const relay = {
      ...common,
      origin: url.origin,
      path: `${prefix}${a.path}`,
      servername: relayServerName(url, up.tls),
    };
    this.relayDispatcher(url, up.tls).dispatch(relay, exchange);
  }

  /** An upstream exchange failed: retry once where safe, else answer with a page. */
  upstreamError(x: UpstreamExchange, err: Error): void {
    const { req, res, a, up, flight } = x;
    if (flight.exchange === x) flight.exchange = undefined;
    if (x.answered || res.headersSent) {
      res.destroy();
      return;
    }
    if (res.destroyed || x.abortedByClient) return;
    const { code, connected, reusedClosed } = upstreamCode(err);
    const retry = x.mayRetry && reusedClosed && !hasBody(req) && IDEMPOTENT.has(req.method ?? '');
    if (retry) {
      // A keep-alive connection the sandbox closed as it was reused: nothing reached it.
      this.forward(req, res, a, up, flight, false);
      return;
    }
    this.page(req, res, this.upstreamFailure(a, up, code, connected));
  }

  private upstreamFailure(
    a: Admitted,
    up: PreviewUpstream,
    code: string | undefined,
    connected: boolean,
  ): Failure {
    const { port, sandboxId } = a.target;
    const secs = Math.round(this.upstreamTimeoutMs / 100) / 10;
    if (up.kind === 'relay') {
      if (code === UPSTREAM_TIMEOUT) {
        return fail(
          504,
          'upstream_timeout',
          'Preview timed out',
          `The worker running sandbox ${sandboxId} did not answer within ${secs}s.`,
        );
      }
      return fail(
        502,
        'worker_unreachable',
        'Preview unavailable',
        `The worker running sandbox ${sandboxId} cannot be reached (${code ?? 'connection failed'}).`,
      );
    }
    if (code === UPSTREAM_TIMEOUT) {
      return connected
        ? fail(
            504,
            'upstream_timeout',
            'Preview timed out',
            `Port ${port} of sandbox ${sandboxId} did not answer within ${secs}s.`,
          )
        : fail(
            502,
            'nothing_listening',
            'Nothing listening',
            `nothing listening on port ${port}: it did not accept a connection within ${secs}s.`,
          );
    }
    if (
      code === 'ECONNREFUSED' ||
      code === 'ECONNRESET' ||
      code === 'EPIPE' ||
      code === undefined
    ) {
      return fail(
        502,
        'nothing_listening',
        'Nothing listening',
        `nothing listening on port ${port} in sandbox ${sandboxId}: start a server on 0.0.0.0:${port} (or 127.0.0.1:${port}) inside the sandbox.`,
      );
    }
    return fail(
      502,
      'upstream_error',
      'Preview unavailable',
      `Port ${port} of sandbox ${sandboxId} could not be reached (${code}).`,
    );
  }

  /** Upstream request headers: filtered, Host and X-Forwarded-* set, relay headers added. */
  private upstreamHeaders(
    req: IncomingMessage,
    a: Admitted,
    up: PreviewUpstream,
    upgrade: boolean,
  ): string[] {
    const headers: string[] = [];
    const raw = req.rawHeaders;
    const dropped = rawConnectionTokens(raw);
    let prior: string | undefined;
    let upgradeTo: string | undefined;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i] ?? '';
      const value = raw[i + 1] ?? '';
      const lower = name.toLowerCase();
      if (lower === 'upgrade') upgradeTo ??= value.trim();
      if (HOP_BY_HOP.has(lower) || GATEWAY_OWNED.has(lower) || dropped.has(lower)) continue;
      if (!a.trustedHop && FORWARDED.includes(lower)) {
        const v = value.trim();
        if (lower === 'x-forwarded-for' && v !== '')
          prior = prior === undefined ? v : `${prior}, ${v}`;
        continue;
      }
      if (lower === 'cookie') {
        const kept = withoutCookie(value, PREVIEW_TOKEN_COOKIE);
        if (kept !== undefined) headers.push(name, kept);
        continue;
      }
      headers.push(name, value);
    }
    const host = up.kind === 'direct' && a.hostRewrite ? `127.0.0.1:${a.target.port}` : a.host;
    headers.push('Host', host);
    if (!a.trustedHop) {
      const remote = req.socket.remoteAddress ?? '';
      const publicPort = this.o.publicPort?.() ?? 0;
      const port = a.hostPort ?? (publicPort > 0 ? publicPort : defaultPortOf(this.o.publicScheme));
      headers.push(
        'X-Forwarded-For',
        prior === undefined ? remote : `${prior}, ${remote}`,
        'X-Forwarded-Proto',
        this.o.publicScheme,
        'X-Forwarded-Host',
        a.host,
        'X-Forwarded-Port',
        String(port),
      );
    }
    if (upgrade) {
      headers.push(
        'Connection',
        'Upgrade',
        'Upgrade',
        upgradeTo === undefined || upgradeTo === '' ? 'websocket' : upgradeTo,
      );
    }
    if (up.kind === 'relay') {
      if (a.hostRewrite) headers.push(HOST_REWRITE_HEADER, '1');
      headers.push(RELAY_HOP_HEADER, '1');
      for (const [k, v] of Object.entries(up.headers)) headers.push(k, v);
    }
    return headers;
  }

  /** node:http options of an upgrade request (its own connection, no pool). */
  private upgradeOptions(
    req: IncomingMessage,
    a: Admitted,
    up: PreviewUpstream,
  ): { https: boolean; options: RequestOptions } {
    const base: RequestOptions = {
      method: req.method ?? 'GET',
      headers: this.upstreamHeaders(req, a, up, true),
      setHost: false,
      agent: false,
    };
    if (up.kind === 'direct') {
      return { https: false, options: { ...base, host: up.host, port: up.port, path: a.path } };
    }
    const url = new URL(up.url);
    const https = url.protocol === 'https:';
    const prefix = url.pathname.replace(/\/+$/, '');
    return {
      https,
      options: {
        ...base,
        ...(https
          ? { ...tlsOf(up.tls), servername: sniOf(relayServerName(url, up.tls)) ?? '' }
          : {}),
        host: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port === '' ? (https ? 443 : 80) : Number(url.port),
        path: `${prefix}${a.path}`,
      },
    };
  }

  private newDispatcher(tls?: Record<string, unknown>): UndiciAgent {
    const timeout = this.upstreamTimeoutMs;
    let connect: buildConnector.BuildOptions | buildConnector.connector = { timeout };
    if (tls !== undefined) {
      const connector = buildConnector({ ...tls, timeout });
      // A request's server name is the worker's (see forward); no SNI for an IP address.
      connect = (opts, callback) =>
        connector({ ...opts, servername: sniOf(opts.servername) }, callback);
    }
    return new UndiciAgent({
      connect,
      headersTimeout: this.upstreamTimeoutMs,
      // Long polls and event streams may be silent for minutes.
      bodyTimeout: 0,
    });
  }

  private relayDispatcher(url: URL, tls: RelayTls | undefined): UndiciAgent {
    const key = url.origin;
    let d = this.relayDispatchers.get(key);
    if (d === undefined) {
      d = this.newDispatcher(url.protocol === 'https:' ? tlsOf(tls) : undefined);
      this.relayDispatchers.set(key, d);
    }
    return d;
  }

  /**
   * Answers with the upstream's status and headers; false when the client is
   * gone or the answer cannot be relayed (then the client got a 502 page).
   */
  startResponse(
    x: UpstreamExchange,
    status: number,
    statusMessage: string | undefined,
    raw: readonly (Buffer | string)[],
  ): boolean {
    const res = x.res;
    if (res.destroyed) return false;
    // undici decodes the reason phrase as UTF-8; HTTP/1.1 carries bytes up to 0xFF only.
    const reason =
      statusMessage !== undefined && REASON_PHRASE.test(statusMessage) ? statusMessage : undefined;
    try {
      res.writeHead(status, reason, withoutHopByHop(raw.map(latin1)));
      return true;
    } catch (err) {
      this.page(
        x.req,
        res,
        fail(
          502,
          'upstream_error',
          'Preview unavailable',
          `Port ${x.a.target.port} of sandbox ${x.a.target.sandboxId} sent a response that cannot be relayed (${errnoCode(err) ?? 'invalid'}).`,
        ),
      );
      return false;
    }
  }

  private page(req: IncomingMessage, res: ServerResponse, f: Failure): void {
    if (res.headersSent || res.destroyed) return;
    const json = wantsJson(req);
    const body = json ? JSON.stringify({ code: f.reason, message: f.detail }) : pageBody(f);
    res.writeHead(f.status, {
      'Content-Type': json ? 'application/json' : 'text/html; charset=utf-8',
      'Content-Length': String(Buffer.byteLength(body)),
      'Cache-Control': 'no-store',
      [PREVIEW_ERROR_HEADER]: f.reason,
      ...(f.status === 400 ? { Connection: 'close' } : {}),
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  // ---- WebSocket and other upgrades -------------------------------------------------------

  private rawFail(socket: Duplex, f: Failure): void {
    if (socket.destroyed) return;
    const body = pageBody(f);
    socket.end(
      rawResponse(
        f.status,
        STATUS_TEXT[f.status] ?? 'Error',
        [
          ['Content-Type', 'text/html; charset=utf-8'],
          ['Cache-Control', 'no-store'],
          [PREVIEW_ERROR_HEADER, f.reason],
        ],
        body,
      ),
    );
    socket.once('finish', () => socket.destroy());
  }

  private async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const a = this.admit(req, true);
    if ('status' in a) {
      this.rawFail(socket, a);
      return;
    }
    const ac = new AbortController();
    const onEarlyClose = (): void => ac.abort(new Error('client went away'));
    socket.once('close', onEarlyClose);
    const up = await this.resolveUpstream(a, ac.signal);
    socket.off('close', onEarlyClose);
    if (socket.destroyed) return;
    if ('status' in up) {
      this.rawFail(socket, up);
      return;
    }
    const opts = this.upgradeOptions(req, a, up);
    const preq = opts.https ? httpsRequest(opts.options) : httpRequest(opts.options);
    let connected = false;
    const timer = setTimeout(() => {
      preq.destroy(Object.assign(new Error('upstream timeout'), { code: UPSTREAM_TIMEOUT }));
    }, this.upstreamTimeoutMs);
    preq.once('socket', (s: Socket) => {
      if (!s.connecting) connected = true;
      else s.once('connect', () => (connected = true));
    });
    const onClientGone = (): void => {
      preq.destroy();
    };
    socket.once('close', onClientGone);
    preq.once('upgrade', (pres: IncomingMessage, upstream: Socket, upstreamHead: Buffer) => {
      clearTimeout(timer);
      socket.off('close', onClientGone);
      if (socket.destroyed) {
        upstream.destroy();
        return;
      }
      const lines = [`HTTP/1.1 101 ${pres.statusMessage ?? 'Switching Protocols'}`];
      const raw = pres.rawHeaders;
      for (let i = 0; i + 1 < raw.length; i += 2) {
        const name = raw[i] ?? '';
        lines.push(`${name}: ${hostOnlyCookie(name, raw[i + 1] ?? '')}`);
      }
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (upstreamHead.length > 0) socket.write(upstreamHead);
      if (head.length > 0) upstream.write(head);
      this.pipeBoth(socket, upstream);
    });
    preq.once('response', (pres: IncomingMessage) => {
      // The upstream refused the upgrade: relay its answer and close.
      clearTimeout(timer);
      const lines = [`HTTP/1.1 ${pres.statusCode ?? 502} ${pres.statusMessage ?? ''}`];
      const headers = withoutHopByHop(pres.rawHeaders);
      for (let i = 0; i + 1 < headers.length; i += 2) {
        lines.push(`${headers[i] ?? ''}: ${headers[i + 1] ?? ''}`);
      }
      lines.push('Connection: close');
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      pres.pipe(socket);
      pres.once('error', () => socket.destroy());
    });
    preq.once('error', (err: Error) => {
      clearTimeout(timer);
      socket.off('close', onClientGone);
      this.rawFail(socket, this.upstreamFailure(a, up, errnoCode(err), connected));
    });
    preq.end();
  }

  private pipeBoth(client: Duplex, upstream: Socket): void {
    this.upgraded.add(client);
    upstream.setNoDelay(true);
    upstream.setTimeout(0);
    upstream.setKeepAlive(true, 30_000);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.upgraded.delete(client);
    };
    client.once('error', end);
    upstream.once('error', end);
    client.once('close', end);
    upstream.once('close', end);
    upstream.pipe(client);
    client.pipe(upstream);
  }

  // ---- malformed requests --------------------------------------------------------------

  private clientError(err: Error, socket: Duplex): void {
    const code = errnoCode(err);
    if (code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    let f: Failure;
    if (code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      f = fail(
        408,
        'request_timeout',
        'Request timeout',
        'The request headers did not arrive in time.',
      );
    } else if (code === 'HPE_HEADER_OVERFLOW') {
      f = fail(431, 'headers_too_large', 'Headers too large', 'The request headers are too large.');
    } else {
      f = fail(400, 'bad_request', 'Bad request', 'The request is not valid HTTP/1.1.');
    }
    this.rawFail(socket, f);
  }
}

function tlsOf(tls: RelayTls | undefined): Record<string, unknown> {
  if (tls === undefined) return {};
  return {
    ...(tls.ca === undefined ? {} : { ca: tls.ca }),
    ...(tls.cert === undefined ? {} : { cert: tls.cert }),
    ...(tls.key === undefined ? {} : { key: tls.key }),
    ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
    rejectUnauthorized: tls.insecureSkipVerify !== true,
  };
}

/** A raw header list without hop-by-hop headers and those its Connection lines name. */
function withoutHopByHop(raw: readonly string[]): string[] {
  const out: string[] = [];
  const dropped = rawConnectionTokens(raw);
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? '';
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || dropped.has(lower)) continue;
    out.push(name, hostOnlyCookie(name, raw[i + 1] ?? ''));
  }
  return out;
}

const COOKIE_DOMAIN = /;\s*domain\s*=[^;]*/gi;

/**
 * A sandbox's cookies stay on its own preview host: the Domain attribute of
 * a Set-Cookie is removed, so an app cannot set cookies for the preview
 * domain that every other sandbox's preview would then receive.
 */
function hostOnlyCookie(name: string, value: string): string {
  if (name.length !== 10 || name.toLowerCase() !== 'set-cookie') return value;
  return value.replace(COOKIE_DOMAIN, '');
}

/** The name a worker's certificate is checked against: `serverName`, else its URL's host. */
function relayServerName(url: URL, tls: RelayTls | undefined): string {
  return tls?.serverName ?? url.hostname.replace(/^\[|\]$/g, '');
}

/** A TLS server name to send: none for an IP address (RFC 6066), which is checked as an IP. */
function sniOf(name: string | null | undefined): string | undefined {
  return name === undefined || name === null || name === '' || isIP(name) !== 0 ? undefined : name;
}

function latin1(v: Buffer | string | undefined): string {
  return v === undefined ? '' : typeof v === 'string' ? v : v.toString('latin1');
}

function originOf(protocol: 'http:' | 'https:', host: string, port: number): string {
  return `${protocol}//${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * What an upstream error means for the answer: undici's header and connect
 * timeouts become the gateway's timeout (connected or not); a connection the
 * other side closed before answering is a reset, and `reusedClosed` when it
 * had carried earlier exchanges (the keep-alive race: safe to send an
 * idempotent request again). Any other socket error (a malformed answer, an
 * unsolicited 100) is not retried.
 */
function upstreamCode(err: Error): {
  code: string | undefined;
  connected: boolean;
  reusedClosed: boolean;
} {
  const code = errnoCode(err);
  if (code === 'UND_ERR_HEADERS_TIMEOUT') {
    return { code: UPSTREAM_TIMEOUT, connected: true, reusedClosed: false };
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT') {
    return { code: UPSTREAM_TIMEOUT, connected: false, reusedClosed: false };
  }
  if (code === 'UND_ERR_SOCKET' && err.message === 'other side closed') {
    const bytesRead = (err as { socket?: { bytesRead?: unknown } }).socket?.bytesRead;
    return {
      code: 'ECONNRESET',
      connected: true,
      reusedClosed: typeof bytesRead === 'number' && bytesRead > 0,
    };
  }
  return { code, connected: false, reusedClosed: false };
}

/**
 * One upstream request of a client request (an undici dispatch handler): the
 * response streams to the client as it arrives, with backpressure both ways.
 */
class UpstreamExchange implements Dispatcher.DispatchHandler {
  answered = false;
  abortedByClient = false;
  private controller: Dispatcher.DispatchController | undefined;

  constructor(
    private readonly gateway: Gateway,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly a: Admitted,
    readonly up: PreviewUpstream,
    readonly flight: InFlight,
    readonly mayRetry: boolean,
  ) {}

  /** The client went away: stop the upstream request. */
  abort(): void {
    this.abortedByClient = true;
    this.controller?.abort(new Error('client went away'));
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.abortedByClient) controller.abort(new Error('client went away'));
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    _headers: IncomingHttpHeaders,
    statusMessage?: string,
  ): void {
    if (statusCode < 200) return; // informational: the final answer follows
    this.answered = true;
    const raw = Array.isArray(controller.rawHeaders) ? controller.rawHeaders : [];
    if (!this.gateway.startResponse(this, statusCode, statusMessage, raw)) {
      controller.abort(new Error('client went away'));
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.res.write(chunk)) return;
    controller.pause();
    this.res.once('drain', () => controller.resume());
  }

  onResponseEnd(): void {
    this.res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.gateway.upstreamError(this, err);
  }
}

/** Builds a gateway; it does not listen until {@link PreviewGateway.listen}. */
export function createPreviewGateway(options: PreviewGatewayOptions): PreviewGateway {
  return new Gateway(options);
}
