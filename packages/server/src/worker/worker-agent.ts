/**
 * The remote worker process (`stacyvm worker`) without its command line:
 * registers with the control plane by heartbeat, serves worker RPC, and
 * drains on request. The CLI resolves configuration into
 * {@link WorkerAgentOptions}; tests drive this class directly.
 *
 * Differences from the Go reference (spec §0/§2.5/§3.2/§3.8), on purpose:
 * - the RPC server accepts the worker's own static token (or its token file's
 *   content) AND signed `worker:rpc` tokens, so per-worker tokens work;
 * - an all-interfaces listen address is never advertised: `advertise_addr`
 *   names the address the control plane dials;
 * - SIGTERM/SIGINT and `worker.shutdown` drain: new spawns are refused, a
 *   `draining` heartbeat is sent at once, existing sandboxes keep being
 *   served until none is left and nothing is in flight (a signal bounds this
 *   by the shutdown timeout; an admin drain waits until the worker is empty),
 *   then an `offline` heartbeat ends the registration.
 *
 * Credentials (tokens, keys) never appear in a log line or an error message.
 */
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { DurationSyntaxError, parseDurationMs } from '../domain/duration.js';
import { fromErrorBody, StacyError } from '../domain/errors.js';
import { checkWorkerRpcCredentials } from '../domain/worker-credentials.js';
import type { ExecEvent, ExecOutcome, ExecSpec } from '../domain/exec.js';
import type { FileEntry } from '../domain/files.js';
import type { Logger } from '../domain/logger.js';
import { LOCAL_WORKER_ID } from '../domain/worker.js';
import {
  issueWorkerToken,
  MAX_WORKER_TOKEN_TTL_MS,
  normalizeWorkerSigningKeys,
  WORKER_AUDIENCE_CONTROL_PLANE,
} from '../domain/worker-token.js';
import type {
  CallOptions,
  FileSource,
  ProviderHealth,
  ProviderStats,
  ReadFileResult,
  RuntimeStatus,
} from '../providers/provider.js';
import type {
  PreviewUpstream,
  ProviderInfo,
  RuntimeRef,
  WorkerClient,
  WorkerSpawnRequest,
  WorkerSpawnResult,
} from '../rpc/worker-client.js';
import { startWorkerRpcServer } from './rpc-server.js';
import type { WorkerRpcServer, WorkerRpcServerOptions } from './rpc-server.js';

/** Version of the heartbeat/RPC protocol this worker speaks (sent as `protocol_version`). */
export const WORKER_PROTOCOL_VERSION = 1;
/** HTTP timeout of every call to the control plane (reference: 10 s). */
export const CONTROL_PLANE_TIMEOUT_MS = 10_000;
/** Lifetime of self-signed heartbeat tokens (reference: 5 m). */
export const SELF_SIGNED_TOKEN_TTL_MS = 5 * 60_000;
/** Default `--bootstrap-token-ttl`. */
export const DEFAULT_BOOTSTRAP_TOKEN_TTL = '5m';
/** How long the last `offline` heartbeat may take when stopping at once (second signal). */
const FORCED_OFFLINE_TIMEOUT_MS = 3_000;
/** How often a drain checks whether the worker is empty. */
const DRAIN_POLL_MS = 500;
/** Grace given to open RPC connections when the server closes after a drain. */
const RPC_CLOSE_GRACE_MS = 5_000;
/** Longest error body quoted from the control plane. */
const MAX_ERROR_TEXT = 300;

// ---------------------------------------------------------------------------
// Token source (reference §2.6)

/** Where the worker's credential for control-plane calls comes from, in precedence order. */
export type WorkerTokenSource =
  /** A file holding the token, re-read before every heartbeat and lease renewal (rotation without restart). */
  | { kind: 'file'; path: string }
  /** An admin key that mints a short-lived signed token before every heartbeat. */
  | { kind: 'bootstrap'; adminKey: string; ttl: string }
  /** A fixed token (shared `auth.worker_token` or this worker's entry of `auth.worker_tokens`). */
  | { kind: 'static'; token: string }
  /** A signing key shared with the control plane; the worker mints its own 5 m tokens. */
  | { kind: 'signed'; signingKey: string };

/** Every credential the worker was given; blank strings count as unset. */
export interface TokenSourceInput {
  /** `--worker-token-file` (or `auth.worker_token_file`). */
  tokenFile?: string | undefined;
  /** Whether the static token came from the `--worker-token` flag (it then conflicts with a token file). */
  staticTokenFromFlag?: boolean;
  /** `--worker-token`, `STACYVM_AUTH_WORKER_TOKEN` or `auth.worker_token`. */
  staticToken?: string | undefined;
  /** `--bootstrap-admin-key`, `STACYVM_WORKER_BOOTSTRAP_ADMIN_KEY` or `--bootstrap-admin-key-file`. */
  bootstrapAdminKey?: string | undefined;
  /** TTL asked of the token issuer (Go duration, at most 15m); default 5m. */
  bootstrapTokenTtl?: string | undefined;
  /** `--worker-signing-key-file` or `auth.worker_signing_key`. */
  signingKey?: string | undefined;
}

function present(v: string | undefined): v is string {
  return v !== undefined && v.trim() !== '';
}

/**
 * Picks the worker's credential source: token file, then bootstrap admin key,
 * then static token, then self-signed (reference §2.6). Pure.
 *
 * @throws StacyError `BAD_REQUEST` when `--worker-token` and a token file are
 *   both given, the bootstrap TTL is invalid, or no credential is configured.
 */
export function chooseTokenSource(input: TokenSourceInput): WorkerTokenSource {
  if (present(input.tokenFile)) {
    if (input.staticTokenFromFlag === true && present(input.staticToken)) {
      throw new StacyError(
        'BAD_REQUEST',
        'set the worker token with --worker-token or --worker-token-file, not both',
      );
    }
    return { kind: 'file', path: input.tokenFile.trim() };
  }
  if (present(input.bootstrapAdminKey)) {
    const ttl = present(input.bootstrapTokenTtl)
      ? input.bootstrapTokenTtl.trim()
      : DEFAULT_BOOTSTRAP_TOKEN_TTL;
    let ms: number;
    try {
      ms = parseDurationMs(ttl);
    } catch (err) {
      if (err instanceof DurationSyntaxError) {
        throw new StacyError('BAD_REQUEST', `--bootstrap-token-ttl: ${err.message}`);
      }
      throw err;
    }
    if (ms < 1000 || ms > MAX_WORKER_TOKEN_TTL_MS) {
      throw new StacyError('BAD_REQUEST', '--bootstrap-token-ttl must be from 1s to 15m');
    }
    return { kind: 'bootstrap', adminKey: input.bootstrapAdminKey.trim(), ttl };
  }
  if (present(input.staticToken)) return { kind: 'static', token: input.staticToken.trim() };
  if (present(input.signingKey)) return { kind: 'signed', signingKey: input.signingKey.trim() };
  throw new StacyError(
    'BAD_REQUEST',
    'no worker credential: set auth.worker_token (env STACYVM_AUTH_WORKER_TOKEN), ' +
      '--worker-token-file, --bootstrap-admin-key-file (env STACYVM_WORKER_BOOTSTRAP_ADMIN_KEY) ' +
      'or auth.worker_signing_key (--worker-signing-key-file)',
  );
}

/** Human name of a token source for logs (never the secret). */
export function describeTokenSource(source: WorkerTokenSource): string {
  switch (source.kind) {
    case 'file':
      return `token file ${source.path}`;
    case 'bootstrap':
      return `bootstrap admin key (tokens of ${source.ttl})`;
    case 'static':
      return 'static worker token';
    case 'signed':
      return 'self-signed tokens (auth.worker_signing_key)';
  }
}

// ---------------------------------------------------------------------------
// Addresses

/** A parsed `host:port` listen address. */
export interface ListenAddress {
  host: string;
  port: number;
}

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

function badAddress(field: string, addr: string, why: string): StacyError {
  return new StacyError('BAD_REQUEST', `${field}: "${addr}" ${why}`);
}

function parsePort(field: string, addr: string, text: string): number {
  if (!/^\d{1,5}$/.test(text)) throw badAddress(field, addr, 'has no valid port');
  const port = Number(text);
  if (port > 65535) throw badAddress(field, addr, 'has no valid port');
  return port;
}

/**
 * Parses `host:port`, `[v6]:port` or `:port` (all interfaces, as in Go). An
 * `http(s)://` prefix is tolerated.
 *
 * @throws StacyError `BAD_REQUEST` naming `worker.listen_addr`.
 */
export function parseListenAddr(addr: string, field = 'worker.listen_addr'): ListenAddress {
  let a = addr.trim().replace(SCHEME, '');
  a = a.replace(/\/+$/, '');
  if (a.startsWith('[')) {
    const end = a.indexOf(']');
    if (end < 0 || a[end + 1] !== ':') throw badAddress(field, addr, 'is not [host]:port');
    return { host: a.slice(1, end), port: parsePort(field, addr, a.slice(end + 2)) };
  }
  const colon = a.lastIndexOf(':');
  if (colon < 0) throw badAddress(field, addr, 'is not host:port');
  const host = a.slice(0, colon);
  if (host.includes(':')) throw badAddress(field, addr, 'needs brackets around an IPv6 host');
  return { host: host === '' ? '0.0.0.0' : host, port: parsePort(field, addr, a.slice(colon + 1)) };
}

/** Whether a listen host means "every interface" (which a remote peer cannot dial). */
export function isWildcardHost(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[|\]$/g, '');
  return h === '' || h === '0.0.0.0' || h === '::' || /^(0{1,4}:){7}0{1,4}$/.test(h);
}

function hostForUrl(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** Inputs of {@link advertisedRpcUrl}. */
export interface RpcUrlInput {
  listenAddr: string;
  advertiseAddr: string;
  tls: boolean;
  /** The port actually bound (differs from the listen port when that is 0). */
  boundPort?: number;
}

/**
 * The `rpc_url` the control plane dials. `advertise_addr` wins: a URL is used
 * as is, `host:port` gets the scheme, a bare host gets the bound port. Without
 * one, the listen address is used, unless it is an all-interfaces address.
 *
 * @throws StacyError `BAD_REQUEST` for an all-interfaces listen address with no
 *   advertise address, or an unusable address.
 */
export function advertisedRpcUrl(input: RpcUrlInput): string {
  const scheme = input.tls ? 'https' : 'http';
  const listen = parseListenAddr(input.listenAddr);
  const port = input.boundPort ?? listen.port;
  const adv = input.advertiseAddr.trim().replace(/\/+$/, '');
  let url: string;
  if (adv !== '') {
    if (SCHEME.test(adv)) url = adv;
    else if (adv.startsWith('['))
      url = adv.includes(']:') ? `${scheme}://${adv}` : `${scheme}://${adv}:${port}`;
    else {
      const colons = adv.split(':').length - 1;
      if (colons === 1) url = `${scheme}://${adv}`;
      else if (colons === 0) url = `${scheme}://${adv}:${port}`;
      else url = `${scheme}://[${adv}]:${port}`;
    }
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw badAddress('worker.advertise_addr', input.advertiseAddr, 'is not an address');
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw badAddress('worker.advertise_addr', input.advertiseAddr, 'must be http or https');
    }
    return url;
  }
  if (isWildcardHost(listen.host)) {
    throw new StacyError(
      'BAD_REQUEST',
      `worker.listen_addr "${input.listenAddr}" listens on every interface, an address the ` +
        'control plane cannot dial: set worker.advertise_addr (or --advertise-addr) to the ' +
        `address it should use, e.g. 10.0.0.5:${port}`,
    );
  }
  return `${scheme}://${hostForUrl(listen.host)}:${port}`;
}

// ---------------------------------------------------------------------------
// In-flight tracking

/** What the agent needs of a worker runtime; `WorkerRuntime` satisfies it. */
export interface AgentRuntime extends WorkerClient {
  readonly state: string;
  readonly providerNames: string[];
  start(): Promise<void>;
  drain(): void;
  stop(): Promise<void>;
}

/**
 * The runtime as the RPC server sees it: every call is counted while it runs
 * (a stream until it ends), so a drain can wait for in-flight work.
 */
export class TrackedRuntime implements WorkerClient {
  private active = 0;
  private waiters: ((idle: boolean) => void)[] = [];

  constructor(private readonly inner: AgentRuntime) {}

  get workerId(): string {
    return this.inner.workerId;
  }

  get state(): string {
    return this.inner.state;
  }

  /** Calls running now (streams count until they end). */
  get inFlight(): number {
    return this.active;
  }

  drain(): void {
    this.inner.drain();
  }

  /**
   * Resolves `true` once nothing is in flight, or `false` when `timeoutMs`
   * passes first or {@link cancelWaits} is called.
   */
  waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.active === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const waiter = (idle: boolean): void => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(idle);
      };
      const timer = setTimeout(() => waiter(false), timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Ends every pending {@link waitIdle} with `false` (stopping without waiting). */
  cancelWaits(): void {
    for (const w of [...this.waiters]) w(false);
  }

  private begin(): void {
    this.active += 1;
  }

  private end(): void {
    this.active -= 1;
    if (this.active === 0) for (const w of [...this.waiters]) w(true);
  }

  private async track<T>(call: () => Promise<T>): Promise<T> {
    this.begin();
    try {
      return await call();
    } finally {
      this.end();
    }
  }

  private async *trackStream<T>(open: () => AsyncIterable<T>): AsyncGenerator<T> {
    this.begin();
    try {
      yield* open();
    } finally {
      this.end();
    }
  }

  providers(opts?: CallOptions): Promise<ProviderInfo[]> {
    return this.track(() => this.inner.providers(opts));
  }
  providerHealth(name: string, opts?: CallOptions): Promise<ProviderHealth> {
    return this.track(() => this.inner.providerHealth(name, opts));
  }
  listRuntimes(provider: string, opts?: CallOptions): Promise<string[]> {
    return this.track(() => this.inner.listRuntimes(provider, opts));
  }
  spawn(req: WorkerSpawnRequest, opts?: CallOptions): Promise<WorkerSpawnResult> {
    return this.track(() => this.inner.spawn(req, opts));
  }
  status(ref: RuntimeRef, opts?: CallOptions): Promise<RuntimeStatus> {
    return this.track(() => this.inner.status(ref, opts));
  }
  destroy(ref: RuntimeRef, opts?: CallOptions): Promise<void> {
    return this.track(() => this.inner.destroy(ref, opts));
  }
  logs(ref: RuntimeRef, lines: number, opts?: CallOptions): Promise<string[]> {
    return this.track(() => this.inner.logs(ref, lines, opts));
  }
  stats(ref: RuntimeRef, opts?: CallOptions): Promise<ProviderStats | undefined> {
    return this.track(() => this.inner.stats(ref, opts));
  }
  exec(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome> {
    return this.track(() => this.inner.exec(ref, spec, opts));
  }
  execStream(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent> {
    return this.trackStream(() => this.inner.execStream(ref, spec, opts));
  }
  writeFile(
    ref: RuntimeRef,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    return this.track(() => this.inner.writeFile(ref, path, data, mode, opts));
  }
  readFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<ReadFileResult> {
    return this.track(() => this.inner.readFile(ref, path, opts));
  }
  listFiles(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry[]> {
    return this.track(() => this.inner.listFiles(ref, path, opts));
  }
  statFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry> {
    return this.track(() => this.inner.statFile(ref, path, opts));
  }
  deleteFile(ref: RuntimeRef, path: string, recursive: boolean, opts?: CallOptions): Promise<void> {
    return this.track(() => this.inner.deleteFile(ref, path, recursive, opts));
  }
  moveFile(ref: RuntimeRef, from: string, to: string, opts?: CallOptions): Promise<void> {
    return this.track(() => this.inner.moveFile(ref, from, to, opts));
  }
  chmodFile(ref: RuntimeRef, path: string, mode: number, opts?: CallOptions): Promise<void> {
    return this.track(() => this.inner.chmodFile(ref, path, mode, opts));
  }
  globFiles(ref: RuntimeRef, pattern: string, opts?: CallOptions): Promise<string[]> {
    return this.track(() => this.inner.globFiles(ref, pattern, opts));
  }
  previewUpstream(ref: RuntimeRef, port: number, opts?: CallOptions): Promise<PreviewUpstream> {
    return this.track(() => this.inner.previewUpstream(ref, port, opts));
  }
}

// ---------------------------------------------------------------------------
// Control-plane HTTP

/** The `fetch` the agent uses; the global one by default. */
export type FetchLike = typeof fetch;

/** Heartbeat `status` values. */
export type HeartbeatStatus = 'online' | 'draining' | 'offline';

/** Body of `POST /api/v1/worker/{id}/heartbeat` (reference §3.2 plus `protocol_version`). */
export interface HeartbeatBody {
  hostname: string;
  status: HeartbeatStatus;
  providers: string[];
  capabilities: string[];
  capacity: {
    max_sandboxes: number;
    max_sandboxes_per_owner: number;
    preview_domain: string;
    rpc_url?: string;
    /** The worker's preview gateway, which its control plane relays previews to. */
    preview_url?: string;
  };
  protocol_version: number;
}

/** A lease as the control plane's renew endpoint returns it. */
export interface LeaseJson {
  resource_id: string;
  holder_id: string;
  generation: number;
  expires_at: string;
}

function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return undefined;
}

/** A network failure in words: undici's `fetch failed` hides the cause. */
function networkProblem(err: unknown): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
    return 'no answer in time';
  }
  const cause = err instanceof Error ? err.cause : undefined;
  const code = errnoCode(cause) ?? errnoCode(err);
  if (code !== undefined) return code;
  if (cause instanceof Error && cause.message !== '') return cause.message;
  return err instanceof Error ? err.message : String(err);
}

/** Base URL without userinfo, query or trailing slash; throws for a non-http(s) URL. */
function normalizeBaseUrl(raw: string): { base: string; display: string } {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw new StacyError('BAD_REQUEST', `worker.control_plane_url: "${raw}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new StacyError('BAD_REQUEST', 'worker.control_plane_url must be an http or https URL');
  }
  if (url.username !== '' || url.password !== '') {
    throw new StacyError(
      'BAD_REQUEST',
      'worker.control_plane_url must not carry credentials; worker credentials are sent as headers',
    );
  }
  const base = `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
  return { base, display: base };
}

// ---------------------------------------------------------------------------
// The agent

/** Everything the worker process needs; the CLI builds it from flags and config. */
export interface WorkerAgentOptions {
  workerId: string;
  controlPlaneUrl: string;
  /** `host:port` of the RPC server; empty means none (the worker cannot receive sandboxes). */
  listenAddr: string;
  /** What the control plane dials; empty means the listen address. */
  advertiseAddr: string;
  previewDomain: string;
  /**
   * This worker's preview gateway as the control plane reaches it
   * (`capacity.preview_url`), read per heartbeat; advertised only while RPC
   * is served. Undefined when the worker serves no previews.
   */
  previewUrl?: () => string | undefined;
  heartbeatIntervalMs: number;
  /** How long a drain waits for in-flight calls (`worker.shutdown_timeout`). */
  shutdownTimeoutMs: number;
  maxSandboxes: number;
  maxSandboxesPerOwner: number;
  runtime: AgentRuntime;
  tokenSource: WorkerTokenSource;
  /**
   * What the RPC server accepts from the control plane besides the token
   * file's content: the worker's static token, the signing keys (active
   * first) for `worker:rpc` tokens, and revoked token ids.
   */
  rpcAuth: { staticToken?: string | undefined; signingKeys: string[]; revokedTokenIds: string[] };
  rpcTls?: { cert: Buffer; key: Buffer; clientCa?: Buffer } | undefined;
  logger: Logger;
  fetch?: FetchLike;
  /** Reported as `hostname`; default the OS host name. */
  hostname?: string;
  nowMs?: () => number;
  /** Reads the token file; default `readFileSync(path, 'utf8')`. */
  readFile?: (path: string) => string;
  /** Deadline of each control-plane call; default 10 s. */
  requestTimeoutMs?: number;
  /** Starts the RPC server; default {@link startWorkerRpcServer}. */
  startRpcServer?: (o: WorkerRpcServerOptions) => Promise<WorkerRpcServer>;
}

type AgentPhase = 'new' | 'starting' | 'running' | 'draining' | 'stopped';

/**
 * The worker process. `start()` → running (heartbeats at the interval, RPC
 * served) → `drain()` → stopped; `stopped` resolves when the process may exit.
 */
export class WorkerAgent {
  readonly workerId: string;
  /** The runtime as served over RPC, with in-flight tracking. */
  readonly runtime: TrackedRuntime;
  private readonly o: WorkerAgentOptions;
  private readonly fetchImpl: FetchLike;
  private readonly nowMs: () => number;
  private readonly readFile: (path: string) => string;
  private readonly timeoutMs: number;
  private readonly cp: { base: string; display: string };
  private readonly hostname: string;
  /** Static tokens the RPC server accepts; updated in place when the token file changes. */
  private readonly acceptedTokens: string[] = [];
  private readonly signingKeys: string[];
  private phase: AgentPhase = 'new';
  private rpc: WorkerRpcServer | undefined;
  private rpcUrlValue: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private loopBeat: Promise<void> | undefined;
  private drainPromise: Promise<void> | undefined;
  private resolveStopped: () => void = () => undefined;
  /** Resolves once the agent has stopped (drained, stopped at once, or failed to start). */
  readonly stopped: Promise<void>;

  constructor(options: WorkerAgentOptions) {
    const id = options.workerId.trim();
    if (id === '') throw new StacyError('BAD_REQUEST', 'worker id is required (--id or worker.id)');
    if (id.length > 128 || !/^[A-Za-z0-9._-]+$/.test(id)) {
      throw new StacyError(
        'BAD_REQUEST',
        `worker id "${id}" must be 1-128 characters of letters, digits, ".", "_" or "-"`,
      );
    }
    if (id === LOCAL_WORKER_ID) {
      throw new StacyError(
        'BAD_REQUEST',
        `worker id "${LOCAL_WORKER_ID}" is reserved for the control plane's own worker; choose another --id`,
      );
    }
    if (!(options.heartbeatIntervalMs > 0)) {
      throw new StacyError('BAD_REQUEST', 'heartbeat interval must be positive');
    }
    this.workerId = id;
    this.o = options;
    this.cp = normalizeBaseUrl(options.controlPlaneUrl);
    this.fetchImpl = options.fetch ?? globalThis.fetch;
    this.nowMs = options.nowMs ?? Date.now;
    this.readFile = options.readFile ?? ((p: string): string => readFileSync(p, 'utf8'));
    this.timeoutMs = options.requestTimeoutMs ?? CONTROL_PLANE_TIMEOUT_MS;
    this.hostname = options.hostname ?? osHostname();
    this.runtime = new TrackedRuntime(options.runtime);
    if (options.tokenSource.kind === 'static') this.acceptedTokens.push(options.tokenSource.token);
    else if (present(options.rpcAuth.staticToken)) {
      this.acceptedTokens.push(options.rpcAuth.staticToken.trim());
    }
    this.signingKeys = normalizeWorkerSigningKeys(options.rpcAuth.signingKeys);
    this.stopped = new Promise<void>((resolve) => {
      this.resolveStopped = resolve;
    });
  }

  /** The advertised RPC URL, once the server is listening. */
  get rpcUrl(): string | undefined {
    return this.rpcUrlValue;
  }

  /** Whether the RPC server can authenticate the control plane at all. */
  get canAcceptRpc(): boolean {
    return (
      this.o.tokenSource.kind === 'file' ||
      this.acceptedTokens.length > 0 ||
      this.signingKeys.length > 0
    );
  }

  /**
   * Whether a caller presents this worker's RPC credential (the same check
   * as the RPC server's): the preview gateway uses it to serve only the
   * control plane. Never throws; the reason of a refusal is not told.
   */
  checkRpcCredentials(workerId: string | undefined, token: string | undefined): boolean {
    return checkWorkerRpcCredentials(workerId, token, {
      workerId: this.workerId,
      staticTokens: this.acceptedTokens,
      signingKeys: this.signingKeys,
      revokedTokenIds: this.o.rpcAuth.revokedTokenIds,
      nowMs: this.nowMs(),
    }).ok;
  }

  /** `starting`, `running`, `draining` or `stopped` (`new` before start). */
  get state(): AgentPhase {
    return this.phase;
  }

  /**
   * Starts providers and the RPC server, sends the first heartbeat (which must
   * succeed) and begins the heartbeat loop.
   *
   * @throws StacyError when the addresses are unusable or the first heartbeat
   *   fails (its message is the control plane's, never a credential); everything
   *   started is stopped again.
   */
  async start(): Promise<void> {
    if (this.phase !== 'new') throw new StacyError('CONFLICT', 'worker agent already started');
    this.phase = 'starting';
    const listen = this.o.listenAddr.trim();
    try {
      if (listen !== '') {
        // Refuse an undialable address before anything starts.
        advertisedRpcUrl({
          listenAddr: listen,
          advertiseAddr: this.o.advertiseAddr,
          tls: this.o.rpcTls !== undefined,
        });
      }
      if (this.o.runtime.state === 'starting') await this.o.runtime.start();
      if (this.isStopped()) {
        await this.shutdown(0);
        return;
      }
      if (listen !== '') await this.startRpc(listen);
      else {
        this.o.logger.warn(
          { worker_id: this.workerId },
          'no worker.listen_addr: the RPC server is off, so the control plane cannot place sandboxes on this worker',
        );
      }
      // Must succeed: a worker the control plane refuses should not linger.
      await this.sendHeartbeat('online');
    } catch (err) {
      await this.shutdown(0);
      throw err;
    }
    // Stopped by a signal while starting: release what started meanwhile.
    if (this.isStopped()) {
      await this.shutdown(0);
      return;
    }
    this.phase = 'running';
    this.o.logger.info(
      {
        worker_id: this.workerId,
        control_plane: this.cp.display,
        rpc_url: this.rpcUrlValue ?? null,
        credential: describeTokenSource(this.o.tokenSource),
        providers: this.o.runtime.providerNames,
      },
      'worker registered with the control plane',
    );
    this.schedule();
  }

  /** `--once`: starts the providers, sends one `online` heartbeat (no RPC server, so no rpc_url), stops. */
  async once(): Promise<void> {
    if (this.phase !== 'new') throw new StacyError('CONFLICT', 'worker agent already started');
    this.phase = 'starting';
    try {
      if (this.o.runtime.state === 'starting') await this.o.runtime.start();
      await this.sendHeartbeat('online');
    } finally {
      await this.shutdown(0);
    }
  }

  /**
   * Drains: new spawns are refused, a `draining` heartbeat goes out at once,
   * in-flight calls may finish until the shutdown timeout, then an `offline`
   * heartbeat is sent and the RPC server and runtime close. Sandboxes are not
   * destroyed. Idempotent; resolves when stopped.
   */
  drain(reason: string, opts: { untilEmpty?: boolean } = {}): Promise<void> {
    if (this.drainPromise !== undefined) {
      // A signal during an open-ended (admin) drain bounds it by the shutdown timeout.
      if (opts.untilEmpty !== true) this.boundDrain();
      return this.drainPromise;
    }
    if (this.phase !== 'running') {
      this.drainPromise = this.stopNow(reason);
      return this.drainPromise;
    }
    this.phase = 'draining';
    this.drainDeadlineMs =
      opts.untilEmpty === true ? Infinity : performance.now() + this.o.shutdownTimeoutMs;
    this.drainPromise = this.runDrain(reason);
    return this.drainPromise;
  }

  private drainDeadlineMs = Infinity;
  private drainWake: (() => void) | undefined;

  private boundDrain(): void {
    this.drainDeadlineMs = Math.min(
      this.drainDeadlineMs,
      performance.now() + this.o.shutdownTimeoutMs,
    );
    this.drainWake?.();
  }

  /** Sandboxes this worker still holds, over every provider (0 when none can be listed). */
  private async liveRuntimes(): Promise<number> {
    let n = 0;
    for (const p of this.o.runtime.providerNames) {
      n += (await this.o.runtime.listRuntimes(p).catch(() => [])).length;
    }
    return n;
  }

  /**
   * Keeps serving until nothing is in flight and no sandbox is left on this
   * worker (destroyed or expired through the control plane), or the drain
   * deadline passes. True when it emptied.
   */
  private async waitDrained(): Promise<boolean> {
    for (;;) {
      if (this.isStopped()) return false;
      if (this.runtime.inFlight === 0 && (await this.liveRuntimes()) === 0) return true;
      const left = this.drainDeadlineMs - performance.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(DRAIN_POLL_MS, left));
        this.drainWake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.drainWake = undefined;
    }
  }

  private async runDrain(reason: string): Promise<void> {
    const log = this.o.logger;
    log.info(
      { worker_id: this.workerId, reason, in_flight: this.runtime.inFlight },
      'draining: refusing new sandboxes, serving existing ones until they are gone or the drain deadline',
    );
    this.o.runtime.drain();
    await this.beatLogged('draining');
    // A second signal may stop everything meanwhile (checked after each wait).
    if (this.isStopped()) return;
    const emptied = await this.waitDrained();
    if (this.isStopped()) return;
    if (!emptied) {
      log.warn(
        {
          worker_id: this.workerId,
          in_flight: this.runtime.inFlight,
          sandboxes: await this.liveRuntimes(),
          timeout_ms: this.o.shutdownTimeoutMs,
        },
        'drain deadline passed with work left; stopping anyway (sandboxes are kept and recover when the worker returns)',
      );
    }
    this.stopLoop();
    if (this.loopBeat !== undefined) await this.loopBeat;
    await this.beatLogged('offline');
    await this.shutdown(RPC_CLOSE_GRACE_MS);
  }

  /**
   * Stops at once (second signal): one `offline` heartbeat attempt with a
   * short deadline, then the RPC server and runtime close without waiting.
   */
  async stopNow(reason: string): Promise<void> {
    if (this.phase === 'stopped') return;
    this.o.logger.warn({ worker_id: this.workerId, reason }, 'stopping now');
    const wasRegistered = this.phase === 'running' || this.phase === 'draining';
    this.phase = 'stopped';
    this.stopLoop();
    this.runtime.cancelWaits();
    this.o.runtime.drain();
    if (wasRegistered) await this.beatLogged('offline', FORCED_OFFLINE_TIMEOUT_MS);
    await this.shutdown(0);
  }

  /**
   * Sends one heartbeat now. `status` defaults to the runtime's: `online`
   * while active, `draining` once it drains.
   *
   * @throws StacyError with the control plane's code and message (never a credential).
   */
  async sendHeartbeat(status?: HeartbeatStatus, timeoutMs = this.timeoutMs): Promise<void> {
    const body = this.heartbeatBody(
      status ?? (this.o.runtime.state === 'draining' ? 'draining' : 'online'),
    );
    const token = await this.token();
    await this.post(
      `/api/v1/worker/${encodeURIComponent(this.workerId)}/heartbeat`,
      { 'X-Worker-ID': this.workerId, 'X-Worker-Token': token },
      body,
      'heartbeat',
      timeoutMs,
    );
  }

  /** The heartbeat body for a status (exported shape: {@link HeartbeatBody}). */
  heartbeatBody(status: HeartbeatStatus): HeartbeatBody {
    const serving = this.rpc !== undefined && this.rpcUrlValue !== undefined;
    const capabilities = ['remote_worker', 'heartbeat', 'drain'];
    if (serving) capabilities.push('rpc', 'exec_stream_ndjson');
    const capacity: HeartbeatBody['capacity'] = {
      max_sandboxes: this.o.maxSandboxes,
      max_sandboxes_per_owner: this.o.maxSandboxesPerOwner,
      preview_domain: this.o.previewDomain,
    };
    if (serving && this.rpcUrlValue !== undefined) capacity.rpc_url = this.rpcUrlValue;
    const previewUrl = this.o.previewUrl?.();
    if (serving && previewUrl !== undefined && previewUrl !== '') capacity.preview_url = previewUrl;
    return {
      hostname: this.hostname,
      status,
      providers: [...this.o.runtime.providerNames],
      capabilities,
      capacity,
      protocol_version: WORKER_PROTOCOL_VERSION,
    };
  }

  /**
   * `POST /api/v1/worker/{id}/leases/{resourceId}/renew` with the worker's
   * credential; used by the RPC server's `worker.renew_lease`.
   */
  async renewLease(resourceId: string, ttl: string): Promise<LeaseJson> {
    const token = await this.token();
    const answer = await this.post(
      `/api/v1/worker/${encodeURIComponent(this.workerId)}/leases/${encodeURIComponent(resourceId)}/renew`,
      { 'X-Worker-ID': this.workerId, 'X-Worker-Token': token },
      { ttl },
      'lease renewal',
      this.timeoutMs,
    );
    const lease = (answer as { lease?: unknown } | null)?.lease;
    if (!isLeaseJson(lease)) {
      throw new StacyError(
        'INTERNAL_ERROR',
        'lease renewal: the control plane answered without a lease',
      );
    }
    return lease;
  }

  // -------------------------------------------------------------------------

  private async startRpc(listen: string): Promise<void> {
    const addr = parseListenAddr(listen);
    if (!this.canAcceptRpc) {
      this.o.logger.warn(
        { worker_id: this.workerId },
        'this worker cannot accept RPC: it has only a bootstrap admin key, so it cannot verify the ' +
          'control plane. Set auth.worker_signing_key (same key as the control plane) or a worker ' +
          'token; until then the RPC server stays off and no rpc_url is advertised',
      );
      return;
    }
    if (this.o.tokenSource.kind === 'file') this.readTokenFile();
    const start = this.o.startRpcServer ?? startWorkerRpcServer;
    const server = await start({
      runtime: this.runtime,
      workerId: this.workerId,
      auth: {
        staticTokens: this.acceptedTokens,
        signingKeys: this.signingKeys,
        revokedTokenIds: [...this.o.rpcAuth.revokedTokenIds],
        nowMs: this.nowMs,
      },
      host: addr.host,
      port: addr.port,
      ...(this.o.rpcTls === undefined ? {} : { tls: this.o.rpcTls }),
      logger: this.o.logger,
      renewLease: (resourceId, ttl) => this.renewLease(resourceId, ttl),
      onShutdown: () => {
        void this.drain('worker.shutdown RPC', { untilEmpty: true });
      },
    });
    this.rpc = server;
    this.rpcUrlValue = advertisedRpcUrl({
      listenAddr: listen,
      advertiseAddr: this.o.advertiseAddr,
      tls: this.o.rpcTls !== undefined,
      boundPort: server.port,
    });
    this.o.logger.info(
      {
        worker_id: this.workerId,
        listen: `${hostForUrl(addr.host)}:${server.port}`,
        rpc_url: this.rpcUrlValue,
      },
      'control plane will reach this worker at rpc_url',
    );
  }

  private isStopped(): boolean {
    return this.phase === 'stopped';
  }

  private schedule(): void {
    if (this.phase !== 'running' && this.phase !== 'draining') return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.loopBeat = this.beatLogged().finally(() => {
        this.loopBeat = undefined;
        this.schedule();
      });
    }, this.o.heartbeatIntervalMs);
  }

  private stopLoop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Sends a heartbeat; a failure is logged (never thrown). */
  private async beatLogged(status?: HeartbeatStatus, timeoutMs?: number): Promise<void> {
    try {
      await this.sendHeartbeat(status, timeoutMs);
    } catch (err) {
      const e = err as Error;
      const code = err instanceof StacyError ? err.code : undefined;
      if (code === 'UNAUTHORIZED' || code === 'FORBIDDEN') {
        this.o.logger.error(
          {
            worker_id: this.workerId,
            status: status ?? null,
            err: e.message,
            credential: describeTokenSource(this.o.tokenSource),
          },
          'heartbeat rejected: the control plane does not accept this worker credential (check the token, its file, or the signing key)',
        );
      } else {
        this.o.logger.warn(
          { worker_id: this.workerId, status: status ?? null, err: e.message },
          'heartbeat failed; retrying at the next interval',
        );
      }
    }
  }

  private async shutdown(graceMs: number): Promise<void> {
    this.phase = 'stopped';
    this.stopLoop();
    const rpc = this.rpc;
    this.rpc = undefined;
    if (rpc !== undefined) {
      await rpc.close(graceMs).catch((err: unknown) => {
        this.o.logger.warn({ err: (err as Error).message }, 'closing the RPC server failed');
      });
    }
    if (this.o.runtime.state !== 'stopped') {
      await this.o.runtime.stop().catch((err: unknown) => {
        this.o.logger.warn({ err: (err as Error).message }, 'stopping the providers failed');
      });
    }
    this.o.logger.info({ worker_id: this.workerId }, 'worker stopped');
    this.resolveStopped();
  }

  private readTokenFile(): string {
    if (this.o.tokenSource.kind !== 'file') throw new Error('no token file');
    const path = this.o.tokenSource.path;
    let text: string;
    try {
      text = this.readFile(path);
    } catch (err) {
      const code = errnoCode(err);
      throw new StacyError(
        'UNAVAILABLE',
        `cannot read worker token file ${path}${code === undefined ? '' : ` (${code})`}`,
      );
    }
    const token = text.trim();
    if (token === '') throw new StacyError('UNAVAILABLE', `worker token file ${path} is empty`);
    // The RPC server accepts the file's current token (rotation without restart).
    if (this.acceptedTokens[0] !== token) {
      this.acceptedTokens.length = 0;
      this.acceptedTokens.push(token);
      if (present(this.o.rpcAuth.staticToken) && this.o.rpcAuth.staticToken.trim() !== token) {
        this.acceptedTokens.push(this.o.rpcAuth.staticToken.trim());
      }
    }
    return token;
  }

  /** The credential for the next control-plane call (reference §2.6). */
  private async token(): Promise<string> {
    const source = this.o.tokenSource;
    switch (source.kind) {
      case 'file':
        return this.readTokenFile();
      case 'static':
        return source.token;
      case 'signed':
        return issueWorkerToken(
          {
            workerId: this.workerId,
            ttlMs: SELF_SIGNED_TOKEN_TTL_MS,
            audience: WORKER_AUDIENCE_CONTROL_PLANE,
          },
          source.signingKey,
          this.nowMs(),
        ).token;
      case 'bootstrap': {
        const answer = await this.post(
          '/api/v1/admin/worker-tokens',
          { 'X-Admin-API-Key': source.adminKey },
          { worker_id: this.workerId, ttl: source.ttl, audience: WORKER_AUDIENCE_CONTROL_PLANE },
          'bootstrap token request',
          this.timeoutMs,
        );
        const token = (answer as { token?: unknown } | null)?.token;
        if (typeof token !== 'string' || token.trim() === '') {
          throw new StacyError(
            'INTERNAL_ERROR',
            'bootstrap token request: the control plane answered without a token',
          );
        }
        return token.trim();
      }
    }
  }

  /**
   * POSTs JSON to the control plane and returns the parsed answer. Failures
   * become a StacyError `<what> to <cp> failed: HTTP <status>: <message>`.
   */
  private async post(
    path: string,
    headers: Record<string, string>,
    body: unknown,
    what: string,
    timeoutMs: number,
  ): Promise<unknown> {
    const url = `${this.cp.base}${path}`;
    let res: Response;
    let text: string;
    try {
      res = await this.fetchImpl(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...headers },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      text = await res.text();
    } catch (err) {
      throw new StacyError(
        'UNAVAILABLE',
        `${what} to ${this.cp.display} failed: ${networkProblem(err)}`,
      );
    }
    let parsed: unknown = undefined;
    if (text !== '') {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    if (res.ok) return parsed;
    const problem =
      parsed === undefined
        ? new StacyError(
            fromErrorBody(res.status, undefined).code,
            text.slice(0, MAX_ERROR_TEXT).trim() || `HTTP ${res.status}`,
          )
        : fromErrorBody(res.status, parsed);
    throw new StacyError(
      problem.code,
      `${what} to ${this.cp.display} failed: HTTP ${res.status}: ${problem.message}`,
    );
  }
}

function isLeaseJson(v: unknown): v is LeaseJson {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return (
    typeof r['resource_id'] === 'string' &&
    typeof r['holder_id'] === 'string' &&
    typeof r['generation'] === 'number' &&
    typeof r['expires_at'] === 'string'
  );
}
