import { fromErrorBody, StacyError } from '../domain/errors.js';
import type { ErrorCode, StacyErrorOptions } from '../domain/errors.js';
import { parseDurationMs } from '../domain/duration.js';

/**
 * HTTP client for the StacyVM REST API (`/api/v1`), used by the `stacyvm`
 * CLI. It speaks the wire shapes (snake_case JSON) and turns every failure
 * into a {@link StacyError}, so callers handle one error type.
 *
 * Timeouts: small JSON calls are bounded by `timeoutMs`. Calls that move an
 * unbounded amount of data are not: a streamed exec and a file upload use only
 * the caller's `AbortSignal`, and a file download is bounded only until the
 * response headers arrive. A long-running command is never cut by the client.
 */

/** A sandbox as the API returns it. */
export interface SandboxJson {
  id: string;
  state: string;
  provider: string;
  image: string;
  memory_mb: number;
  vcpus: number;
  worker_id: string;
  owner_id?: string;
  /** RFC 3339. */
  created_at: string;
  /** RFC 3339. */
  expires_at: string;
  metadata?: Record<string, string>;
  ports?: number[];
  preview_domain?: string;
  preview_scheme?: string;
  preview_port?: number;
}

/** `GET /sandboxes/{id}/preview/{port}`. */
export interface PreviewJson {
  url: string;
  port: number;
  sandbox_id: string;
  private: boolean;
  token?: string;
  /** RFC 3339: when the token expires. */
  expires_at?: string;
  /** `url` with the token as a query parameter, for a browser. */
  open_url?: string;
}

/** Body of `POST /sandboxes`; omitted fields take the server's defaults. */
export interface SpawnBody {
  image?: string;
  provider?: string;
  /** Go duration, e.g. `30m`. */
  ttl?: string;
  memory_mb?: number;
  vcpus?: number;
  metadata?: Record<string, string>;
  ports?: number[];
}

/** Body of `POST /sandboxes/{id}/exec` without the `stream` switch (each method sets it). */
export interface ExecBody {
  command: string;
  args: string[];
  mode: 'argv' | 'shell';
  env?: Record<string, string>;
  workdir?: string;
  /** Go duration, e.g. `30s`. */
  timeout?: string;
}

/** Result of a synchronous exec. A non-zero exit code is a result, not an error. */
export interface ExecResultJson {
  exit_code: number;
  stdout: string;
  stderr: string;
  /** Go duration. */
  duration: string;
  timed_out?: boolean;
}

/**
 * One line of a streamed exec. `{"stream":"error"}` lines never appear here:
 * the iterator throws them as an {@link ApiError}.
 */
export type ExecStreamLine =
  | { stream: 'stdout' | 'stderr'; data: string }
  | { stream: 'exit'; exit_code: number; duration: string; timed_out?: boolean };

/** A file or directory entry of `GET /sandboxes/{id}/files/list`. */
export interface FileInfoJson {
  path: string;
  name: string;
  size: number;
  mode: string;
  is_dir: boolean;
  /** RFC 3339. */
  mod_time: string;
}

/** `GET /health`. */
export interface HealthJson {
  status: string;
  version: string;
  uptime: string;
}

export interface ApiClientOptions {
  /** Base URL of the control plane, e.g. `http://127.0.0.1:7423`; a path prefix is kept. */
  server: string;
  /** Sent as `X-API-Key`. Never included in an error message. */
  apiKey?: string;
  /** Deadline for bounded JSON calls; default 30 s. */
  timeoutMs?: number;
  /** Injected for tests; defaults to the global `fetch`. */
  fetch?: typeof fetch;
}

/** Per-call options. */
export interface RequestOptions {
  /** Cancels the call, including a stream being read. */
  signal?: AbortSignal;
}

/** A {@link StacyError} that came back from the server, with the request id to quote to an operator. */
export class ApiError extends StacyError {
  /** The server's request id (`request_id` or the `X-Request-ID` header), when known. */
  readonly requestId: string | undefined;
  /** HTTP status of the response, when the error came with one. */
  readonly httpStatus: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: StacyErrorOptions & { requestId?: string; httpStatus?: number } = {},
  ) {
    super(code, message, options);
    this.name = 'ApiError';
    this.requestId = options.requestId;
    this.httpStatus = options.httpStatus;
  }
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** Slack on top of a sync exec's own deadline, for process start-up and the response. */
const SYNC_EXEC_GRACE_MS = 15_000;
const MAX_ERROR_TEXT = 200;

/** How long a request may take: all of it, until headers, or no client deadline at all. */
type Deadline = { kind: 'full'; ms: number } | { kind: 'headers'; ms: number } | { kind: 'none' };

interface SendRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  query?: Record<string, string>;
  json?: unknown;
  bytes?: Uint8Array | AsyncIterable<Uint8Array>;
  accept?: string;
  deadline: Deadline;
  signal?: AbortSignal | undefined;
}

interface Sent {
  response: Response;
  requestId: string | undefined;
  /** Wraps a failure while reading the body (timeout, reset) into a StacyError. */
  bodyError(err: unknown): unknown;
  /** Stops the deadline timer; call once the body has been read. */
  finish(): void;
}

/** REST client for one StacyVM control plane. */
export class ApiClient {
  private readonly origin: string;
  /** Path prefix of the server URL without a trailing slash (`/stacy` behind a proxy). */
  private readonly prefix: string;
  private readonly basicAuth: string | undefined;
  /** The server as shown in messages: no userinfo, no trailing slash. */
  readonly displayServer: string;
  private readonly apiKey: string | undefined;
  private readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ApiClientOptions) {
    let url: URL;
    try {
      url = new URL(options.server);
    } catch {
      throw new StacyError('BAD_REQUEST', `invalid server URL "${options.server}"`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new StacyError(
        'BAD_REQUEST',
        `server URL must be http or https, got "${url.protocol}"`,
      );
    }
    url.search = '';
    url.hash = '';
    // fetch refuses URLs with credentials; a proxy in front may still want them, as Basic auth.
    if (url.username !== '' || url.password !== '') {
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      this.basicAuth = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
      url.username = '';
      url.password = '';
    }
    this.origin = url.origin;
    this.prefix = url.pathname.replace(/\/+$/, '');
    this.displayServer = `${this.origin}${this.prefix}`;
    this.apiKey = options.apiKey === '' ? undefined : options.apiKey;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.fetchImpl = options.fetch ?? globalThis.fetch;
  }

  /** `GET /health`. */
  health(opts: RequestOptions = {}): Promise<HealthJson> {
    return this.json<HealthJson>('GET', '/health', undefined, opts, 'object');
  }

  /** `POST /sandboxes`: creates a sandbox. */
  spawn(body: SpawnBody, opts: RequestOptions = {}): Promise<SandboxJson> {
    return this.json<SandboxJson>('POST', '/sandboxes', body, opts, 'object');
  }

  /** `GET /sandboxes`: every live sandbox, newest first. */
  list(opts: RequestOptions = {}): Promise<SandboxJson[]> {
    return this.json<SandboxJson[]>('GET', '/sandboxes', undefined, opts, 'array');
  }

  /** `GET /sandboxes/{id}`. */
  get(id: string, opts: RequestOptions = {}): Promise<SandboxJson> {
    return this.json<SandboxJson>('GET', sandboxPath(id), undefined, opts, 'object');
  }

  /** `DELETE /sandboxes/{id}`. */
  destroy(id: string, opts: RequestOptions = {}): Promise<{ status: string }> {
    return this.json<{ status: string }>('DELETE', sandboxPath(id), undefined, opts, 'object');
  }

  /** `GET /sandboxes/{id}/preview/{port}`: the preview URL of a port (and a token when private). */
  preview(id: string, port: number, opts: RequestOptions = {}): Promise<PreviewJson> {
    return this.json<PreviewJson>(
      'GET',
      `${sandboxPath(id)}/preview/${encodeURIComponent(String(port))}`,
      undefined,
      opts,
      'object',
    );
  }

  /** `GET /sandboxes/{id}/logs?lines=N`. */
  logs(id: string, lines: number, opts: RequestOptions = {}): Promise<string[]> {
    return this.json<string[]>('GET', `${sandboxPath(id)}/logs`, undefined, opts, 'array', {
      lines: String(lines),
    });
  }

  /**
   * Synchronous exec. The client deadline is the command's own `timeout` plus
   * a grace period; without one the server's default deadline bounds the call.
   */
  async exec(id: string, body: ExecBody, opts: RequestOptions = {}): Promise<ExecResultJson> {
    let deadline: Deadline = { kind: 'none' };
    if (body.timeout !== undefined) {
      try {
        deadline = { kind: 'full', ms: parseDurationMs(body.timeout) + SYNC_EXEC_GRACE_MS };
      } catch {
        // The server rejects the bad duration with a message naming the field.
      }
    }
    const sent = await this.send({
      method: 'POST',
      path: `${sandboxPath(id)}/exec`,
      json: { ...body, stream: false },
      deadline,
      signal: opts.signal,
    });
    return this.readJson<ExecResultJson>(sent, 'object');
  }

  /**
   * Streamed exec (`stream: true`, NDJSON). Yields stdout/stderr chunks as they
   * arrive and a final `exit` line. A `{"stream":"error"}` line is thrown as an
   * {@link ApiError}. Only `opts.signal` can cut the stream; breaking out of the
   * loop releases the connection.
   */
  async *execStream(
    id: string,
    body: ExecBody,
    opts: RequestOptions = {},
  ): AsyncGenerator<ExecStreamLine, void, undefined> {
    const sent = await this.send({
      method: 'POST',
      path: `${sandboxPath(id)}/exec`,
      json: { ...body, stream: true },
      accept: 'application/x-ndjson',
      deadline: { kind: 'none' },
      signal: opts.signal,
    });
    try {
      for await (const value of parseNdjson(readBody(sent.response.body, sent))) {
        const line = this.toStreamLine(value, sent.requestId);
        if (line !== undefined) yield line;
      }
    } finally {
      sent.finish();
    }
  }

  /** `GET /sandboxes/{id}/files?path=`: the whole file in memory. */
  async readFile(id: string, path: string, opts: RequestOptions = {}): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of await this.readFileStream(id, path, opts)) {
      chunks.push(chunk);
      size += chunk.byteLength;
    }
    const out = new Uint8Array(size);
    let at = 0;
    for (const chunk of chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    return out;
  }

  /**
   * `GET /sandboxes/{id}/files?path=` as a byte stream. Resolves once the
   * server has answered (so a 404 rejects before the caller opens an output
   * file); the body is bounded only by `opts.signal`.
   */
  async readFileStream(
    id: string,
    path: string,
    opts: RequestOptions = {},
  ): Promise<AsyncIterable<Uint8Array>> {
    const sent = await this.send({
      method: 'GET',
      path: `${sandboxPath(id)}/files`,
      query: { path },
      accept: 'application/octet-stream',
      deadline: { kind: 'headers', ms: this.timeoutMs },
      signal: opts.signal,
    });
    return readBody(sent.response.body, sent);
  }

  /**
   * `PUT /sandboxes/{id}/files?path=&mode=` with a raw body. An async iterable
   * is streamed as it is read (chunked), so a large file is never buffered.
   */
  async writeFile(
    id: string,
    path: string,
    data: Uint8Array | AsyncIterable<Uint8Array>,
    mode?: string,
    opts: RequestOptions = {},
  ): Promise<void> {
    const query: Record<string, string> = { path };
    if (mode !== undefined) query['mode'] = mode;
    const sent = await this.send({
      method: 'PUT',
      path: `${sandboxPath(id)}/files`,
      query,
      bytes: data,
      deadline: { kind: 'none' },
      signal: opts.signal,
    });
    await this.readJson<{ status: string }>(sent, 'object');
  }

  /** `GET /sandboxes/{id}/files/list?path=`. */
  listFiles(id: string, path: string, opts: RequestOptions = {}): Promise<FileInfoJson[]> {
    return this.json<FileInfoJson[]>(
      'GET',
      `${sandboxPath(id)}/files/list`,
      undefined,
      opts,
      'array',
      { path },
    );
  }

  private async json<T>(
    method: SendRequest['method'],
    path: string,
    body: unknown,
    opts: RequestOptions,
    shape: 'object' | 'array',
    query?: Record<string, string>,
  ): Promise<T> {
    const req: SendRequest = {
      method,
      path,
      deadline: { kind: 'full', ms: this.timeoutMs },
      signal: opts.signal,
    };
    if (body !== undefined) req.json = body;
    if (query !== undefined) req.query = query;
    return this.readJson<T>(await this.send(req), shape);
  }

  private async readJson<T>(sent: Sent, shape: 'object' | 'array'): Promise<T> {
    let text: string;
    try {
      text = await sent.response.text();
    } catch (err) {
      throw sent.bodyError(err);
    } finally {
      sent.finish();
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw this.unexpected(sent, 'the response is not JSON');
    }
    const ok =
      shape === 'array' ? Array.isArray(value) : typeof value === 'object' && value !== null;
    if (!ok) throw this.unexpected(sent, `expected a JSON ${shape}`);
    return value as T;
  }

  private unexpected(sent: Sent, why: string): ApiError {
    return new ApiError(
      'UNAVAILABLE',
      `unexpected response from ${this.displayServer}: ${why} (is this a StacyVM server?)`,
      { httpStatus: sent.response.status, requestId: sent.requestId },
    );
  }

  private toStreamLine(value: unknown, requestId: string | undefined): ExecStreamLine | undefined {
    if (typeof value !== 'object' || value === null) return undefined;
    const rec = value as Record<string, unknown>;
    switch (rec['stream']) {
      case 'stdout':
      case 'stderr':
        return { stream: rec['stream'], data: typeof rec['data'] === 'string' ? rec['data'] : '' };
      case 'exit': {
        const exitCode = rec['exit_code'];
        if (typeof exitCode !== 'number') {
          throw new ApiError('UNAVAILABLE', 'exec stream sent an exit line without exit_code', {
            requestId,
          });
        }
        const line: ExecStreamLine = {
          stream: 'exit',
          exit_code: exitCode,
          duration: typeof rec['duration'] === 'string' ? rec['duration'] : '',
        };
        if (rec['timed_out'] === true) line.timed_out = true;
        return line;
      }
      case 'error': {
        const base = fromErrorBody(500, rec);
        const reqId = typeof rec['request_id'] === 'string' ? rec['request_id'] : requestId;
        throw new ApiError(base.code, this.redact(base.message), {
          details: base.details,
          requestId: reqId,
        });
      }
      default:
        // Unknown kinds are skipped so a newer server can add line types.
        return undefined;
    }
  }

  private url(path: string, query?: Record<string, string>): URL {
    const url = new URL(`${this.prefix}/api/v1${path}`, this.origin);
    if (query !== undefined) url.search = new URLSearchParams(query).toString();
    return url;
  }

  private async send(req: SendRequest): Promise<Sent> {
    const headers: Record<string, string> = { accept: req.accept ?? 'application/json' };
    if (this.apiKey !== undefined) headers['x-api-key'] = this.apiKey;
    if (this.basicAuth !== undefined) headers['authorization'] = this.basicAuth;
    const init: RequestInit = { method: req.method, headers };
    if (req.json !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(req.json);
    } else if (req.bytes !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      init.body = req.bytes;
      // Required by fetch for a streamed request body.
      init.duplex = 'half';
    }

    const timer = new AbortController();
    let timedOut = false;
    let handle: ReturnType<typeof setTimeout> | undefined;
    if (req.deadline.kind !== 'none') {
      const ms = req.deadline.ms;
      handle = setTimeout(() => {
        timedOut = true;
        timer.abort(new Error('deadline'));
      }, ms);
    }
    const finish = (): void => {
      if (handle !== undefined) clearTimeout(handle);
      handle = undefined;
    };
    const signals = [timer.signal];
    if (req.signal !== undefined) signals.push(req.signal);
    init.signal = signals.length === 1 ? timer.signal : AbortSignal.any(signals);

    const failure = (err: unknown, phase: 'connect' | 'read'): unknown => {
      if (req.signal?.aborted === true) return req.signal.reason as unknown;
      if (timedOut) {
        const ms = req.deadline.kind === 'none' ? 0 : req.deadline.ms;
        return new StacyError(
          'TIMEOUT',
          `StacyVM at ${this.displayServer} did not answer within ${formatMs(ms)}`,
          { cause: err },
        );
      }
      if (err instanceof StacyError) return err;
      const reason = this.redact(networkReason(err));
      return new StacyError(
        'UNAVAILABLE',
        phase === 'connect'
          ? `cannot reach StacyVM at ${this.displayServer}: ${reason} (is \`stacyvm serve\` running?)`
          : `connection to StacyVM at ${this.displayServer} was lost: ${reason}`,
        { cause: err },
      );
    };

    let response: Response;
    try {
      response = await this.fetchImpl(this.url(req.path, req.query), init);
    } catch (err) {
      finish();
      throw failure(err, 'connect');
    }
    if (req.deadline.kind === 'headers') finish();
    const headerId = response.headers.get('x-request-id') ?? undefined;

    if (!response.ok) {
      let text = '';
      try {
        text = await response.text();
      } catch (err) {
        throw failure(err, 'read');
      } finally {
        finish();
      }
      throw this.errorFromResponse(response.status, text, headerId);
    }
    return {
      response,
      requestId: headerId,
      bodyError: (err) => failure(err, 'read'),
      finish,
    };
  }

  private errorFromResponse(status: number, text: string, headerId: string | undefined): ApiError {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    const isEnvelope =
      typeof body === 'object' && body !== null && ('message' in body || 'code' in body);
    const base = fromErrorBody(status, isEnvelope ? body : undefined);
    let message = base.message;
    if (!isEnvelope) {
      const snippet = text.trim().slice(0, MAX_ERROR_TEXT);
      message = snippet === '' ? `HTTP ${status}` : `HTTP ${status}: ${snippet}`;
    }
    const rec = isEnvelope ? (body as Record<string, unknown>) : {};
    const requestId = typeof rec['request_id'] === 'string' ? rec['request_id'] : headerId;
    return new ApiError(base.code, this.redact(message), {
      httpStatus: status,
      details: base.details,
      requestId,
    });
  }

  /** Belt and braces: text that came from elsewhere must not carry the key onward. */
  private redact(text: string): string {
    return this.apiKey === undefined ? text : text.split(this.apiKey).join('[redacted]');
  }
}

function sandboxPath(id: string): string {
  return `/sandboxes/${encodeURIComponent(id)}`;
}

function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** The useful part of a fetch failure: undici hides it in `cause` (`connect ECONNREFUSED ...`). */
function networkReason(err: unknown): string {
  let cur: unknown = err;
  let best = err instanceof Error ? err.message : String(err);
  for (let depth = 0; depth < 4 && cur instanceof Error; depth++) {
    const code = (cur as { code?: unknown }).code;
    if (cur.message !== '' && cur.message !== 'fetch failed') best = cur.message;
    else if (typeof code === 'string') best = code;
    cur = cur.cause;
  }
  return best;
}

async function* readBody(
  stream: ReadableStream<Uint8Array> | null,
  sent: Pick<Sent, 'bodyError' | 'finish'>,
): AsyncGenerator<Uint8Array, void, undefined> {
  if (stream === null) {
    sent.finish();
    return;
  }
  const reader = stream.getReader();
  let done = false;
  try {
    for (;;) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try {
        chunk = await reader.read();
      } catch (err) {
        throw sent.bodyError(err);
      }
      if (chunk.done) {
        done = true;
        return;
      }
      yield chunk.value;
    }
  } finally {
    sent.finish();
    // An early exit (break, error) must release the connection.
    if (!done) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

/**
 * Splits a byte stream into parsed NDJSON values. Lines may be split across
 * chunks anywhere (even inside a UTF-8 sequence); a last line without a
 * trailing newline still counts; blank lines are skipped. A line that is not
 * JSON is an UNAVAILABLE error (the peer is not speaking the protocol).
 */
export async function* parseNdjson(
  chunks: AsyncIterable<Uint8Array>,
): AsyncGenerator<unknown, void, undefined> {
  const decoder = new TextDecoder();
  let pending = '';
  const parse = (line: string): unknown => {
    try {
      return JSON.parse(line) as unknown;
    } catch {
      throw new StacyError(
        'UNAVAILABLE',
        `malformed line in exec stream: ${JSON.stringify(line.slice(0, 80))}`,
      );
    }
  };
  for await (const chunk of chunks) {
    pending += decoder.decode(chunk, { stream: true });
    let nl = pending.indexOf('\n');
    while (nl !== -1) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line !== '') yield parse(line);
      nl = pending.indexOf('\n');
    }
  }
  pending += decoder.decode();
  const last = pending.trim();
  if (last !== '') yield parse(last);
}
