/**
 * The one place that talks HTTP: URL and header building, the per-request timeout, user
 * abort signals, and the mapping of failures to the SDK's error classes.
 */
import {
  ConnectionError,
  MalformedResponseError,
  RequestTimeoutError,
  StacyVMError,
  errorFromBody,
} from './errors.js';
import type { FetchLike } from './types.js';

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE';

export interface Call {
  method: HttpMethod;
  /** Path under `/api/v1`, starting with `/`. */
  path: string;
  query?: Record<string, string | undefined>;
  /** JSON body. */
  json?: unknown;
  /** Raw body, sent as `application/octet-stream`. */
  bytes?: Uint8Array;
  signal?: AbortSignal | undefined;
  /** Overrides the client's timeout for this call. */
  timeoutMs?: number | undefined;
}

export interface TransportOptions {
  baseUrl: string;
  headers: Record<string, string>;
  timeoutMs: number;
  fetch: FetchLike;
}

/** An open response whose body the caller reads; `close()` must be called when done. */
export interface OpenResponse {
  response: Response;
  /** Turns a failure while reading the body into the right error. */
  translate(err: unknown): unknown;
  /** Stops the request timeout (for streams, once the headers are in). */
  stopTimer(): void;
  /** Aborts the request (closing the connection) unless it already completed. */
  abort(): void;
  /** Releases timers and listeners. */
  close(): void;
}

function causeText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as { code?: unknown }).code;
    return `${err.message} (${typeof code === 'string' ? code : cause.message})`;
  }
  return err.message;
}

export class Transport {
  readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly fetchImpl: FetchLike;

  constructor(opts: TransportOptions) {
    this.baseUrl = opts.baseUrl;
    this.headers = opts.headers;
    this.timeoutMs = opts.timeoutMs;
    this.fetchImpl = opts.fetch;
  }

  /** The client's timeout, or `ms` when that is longer (0 stays "no timeout"). */
  longerTimeout(ms: number): number {
    return this.timeoutMs === 0 ? 0 : Math.max(this.timeoutMs, ms);
  }

  url(path: string, query?: Record<string, string | undefined>): string {
    let url = `${this.baseUrl}/api/v1${path}`;
    if (query !== undefined) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, v);
      const qs = params.toString();
      if (qs !== '') url += `?${qs}`;
    }
    return url;
  }

  /**
   * Sends a request and returns the response once its headers are in. A non-2xx status is
   * thrown as the mapped error (its body read under the same timeout).
   */
  async open(call: Call): Promise<OpenResponse> {
    const user = call.signal;
    if (user?.aborted === true) throw user.reason;
    const ac = new AbortController();
    const timeoutMs = call.timeoutMs ?? this.timeoutMs;
    let timedOut = false;
    let finished = false;
    const onUserAbort = (): void => ac.abort(user?.reason);
    user?.addEventListener('abort', onUserAbort, { once: true });
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (timeoutMs > 0) {
      timer = setTimeout(() => {
        timedOut = true;
        ac.abort(this.timeoutError(call, timeoutMs));
      }, timeoutMs);
    }
    const stopTimer = (): void => {
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
    };
    const close = (): void => {
      finished = true;
      stopTimer();
      user?.removeEventListener('abort', onUserAbort);
    };
    const translate = (err: unknown): unknown => {
      if (err instanceof StacyVMError) return err;
      if (timedOut) return this.timeoutError(call, timeoutMs);
      if (user?.aborted === true) return user.reason;
      return new ConnectionError(`cannot reach StacyVM at ${this.baseUrl}: ${causeText(err)}`, {
        code: 'CONNECTION_ERROR',
        status: 0,
        cause: err,
      });
    };
    const abort = (): void => {
      if (!finished) ac.abort(new Error('request closed by the client'));
      close();
    };

    const headers: Record<string, string> = { ...this.headers };
    let body: string | Uint8Array | undefined;
    if (call.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(call.json);
    } else if (call.bytes !== undefined) {
      headers['Content-Type'] = 'application/octet-stream';
      body = call.bytes;
    }
    const init: RequestInit = { method: call.method, headers, signal: ac.signal };
    if (body !== undefined) init.body = body as BodyInit;

    let response: Response;
    try {
      response = await this.fetchImpl(this.url(call.path, call.query), init);
      if (!response.ok) {
        const text = await response.text();
        throw errorFromBody(
          response.status,
          response.statusText,
          text,
          response.headers.get('x-request-id') ?? undefined,
        );
      }
    } catch (err) {
      const out = translate(err);
      close();
      throw out;
    }
    return { response, translate, stopTimer, abort, close };
  }

  /** A request whose response is JSON; returns the parsed body. */
  async json(call: Call): Promise<{ body: unknown; status: number; requestId?: string }> {
    const open = await this.open(call);
    const { response } = open;
    let text: string;
    try {
      text = await response.text();
    } catch (err) {
      throw open.translate(err);
    } finally {
      open.close();
    }
    const requestId = response.headers.get('x-request-id') ?? undefined;
    try {
      const body: unknown = JSON.parse(text);
      return { body, status: response.status, ...(requestId === undefined ? {} : { requestId }) };
    } catch (err) {
      throw new MalformedResponseError(
        `${call.method} ${call.path}: response is not JSON: ${text.slice(0, 120)}`,
        { code: 'MALFORMED_RESPONSE', status: response.status, requestId, cause: err },
      );
    }
  }

  /** A request whose response is raw bytes. */
  async bytes(call: Call): Promise<Uint8Array> {
    const open = await this.open(call);
    try {
      return new Uint8Array(await open.response.arrayBuffer());
    } catch (err) {
      throw open.translate(err);
    } finally {
      open.close();
    }
  }

  private timeoutError(call: Call, timeoutMs: number): RequestTimeoutError {
    return new RequestTimeoutError(
      `${call.method} ${call.path} timed out after ${timeoutMs} ms (client timeoutMs)`,
      { code: 'REQUEST_TIMEOUT', status: 0 },
    );
  }
}
