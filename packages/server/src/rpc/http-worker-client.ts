/**
 * The control plane's client for a remote worker: {@link WorkerClient} over
 * worker RPC (wire shapes in `protocol.ts`). The orchestrator cannot tell it
 * from the in-process runtime: results and StacyError codes are the same.
 *
 * One keep-alive undici Agent per worker. Timeouts: non-exec calls get
 * `callTimeoutMs` (30 s) in total; an exec gets its own deadline plus a
 * margin and never the 30 s default (reference defect #10); streams and file
 * transfers have no total timeout, only idle limits and the caller's signal.
 * Aborting the caller's signal aborts the request, and the worker then kills
 * the command. Transport failures are UNAVAILABLE (retryable) naming the
 * worker; the token is never part of any message.
 */
import { Readable } from 'node:stream';
import { Agent } from 'undici';
import type { Dispatcher } from 'undici';
import { StacyError } from '../domain/errors.js';
import type { ExecEvent, ExecOutcome, ExecSpec } from '../domain/exec.js';
import type { FileEntry } from '../domain/files.js';
import type { LeaseToken } from '../domain/lease.js';
import type {
  CallOptions,
  FileSource,
  ProviderHealth,
  ProviderStats,
  ReadFileResult,
  RuntimeStatus,
} from '../providers/provider.js';
import {
  HEADER_FILE_SIZE,
  HEADER_WORKER_ID,
  HEADER_WORKER_RPC,
  HEADER_WORKER_STREAM,
  HEADER_WORKER_TOKEN,
  HEALTH_PATH,
  NDJSON_CONTENT_TYPE,
  OCTET_STREAM,
  RPC_FILE_READ_PATH,
  RPC_FILE_WRITE_PATH,
  RPC_PATH,
  asciiJson,
  bufferedStreamFromWire,
  chmodParams,
  errorFromResponse,
  execResultFromWire,
  execToParams,
  fileEntryFromWire,
  fileParams,
  fileWriteParams,
  healthFromWire,
  leaseToWire,
  providerInfoFromWire,
  refToParams,
  resultReader,
  spawnResultFromWire,
  spawnToParams,
  statsFromWire,
  statusResultFromWire,
  streamEventFromWire,
} from './protocol.js';
import type { Params, RpcRequest, WorkerMethod } from './protocol.js';
import type {
  PreviewUpstream,
  ProviderInfo,
  RuntimeRef,
  WorkerClient,
  WorkerSpawnRequest,
  WorkerSpawnResult,
} from './worker-client.js';

export interface HttpWorkerClientOptions {
  workerId: string;
  /** The worker's RPC base URL, e.g. `http://127.0.0.1:7430` or `https://…`. */
  rpcUrl: string;
  /** The credential for one call; called per call (may mint a signed token). Never logged. */
  token: () => string;
  tls?: {
    ca?: Buffer;
    cert?: Buffer;
    key?: Buffer;
    serverName?: string;
    insecureSkipVerify?: boolean;
  };
  /** Total time for a non-exec call; default 30 s. Also the idle limit of file transfers. */
  callTimeoutMs?: number;
  /** Added to an exec's own deadline before the client gives up on the worker; default 15 s. */
  execMarginMs?: number;
  /**
   * The worker's preview gateway URL (`capacity.preview_url` of its latest
   * heartbeat), read per call; undefined when it advertises none.
   */
  previewUrl?: () => string | undefined;
}

export interface WorkerHealth {
  status: string;
  worker_id: string;
  state?: string;
}

const DEFAULT_CALL_TIMEOUT_MS = 30_000;
const DEFAULT_EXEC_MARGIN_MS = 15_000;
/** Longest NDJSON line accepted from a worker. */
export const MAX_STREAM_LINE_BYTES = 16 * 1024 * 1024;
/** Largest JSON answer read (a sync exec may carry 2 × 16 MiB of escaped output). */
const MAX_JSON_RESPONSE_BYTES = 256 * 1024 * 1024;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The catalog error for a cancelled call, exactly as a provider raises it in-process. */
function abortError(signal: AbortSignal): StacyError {
  const reason: unknown = signal.reason;
  if (reason instanceof StacyError) return reason;
  return new StacyError('TIMEOUT', 'operation was cancelled', { cause: reason });
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return typeof err === 'string' ? err : 'unknown error';
}

/** A short, secret-free description of a transport failure (`ECONNREFUSED`, …). */
function describeFailure(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; depth < 3 && cur instanceof Error; depth++) {
    const code = (cur as NodeJS.ErrnoException).code;
    if (code !== undefined && !parts.includes(code)) parts.push(code);
    if (cur.message !== '' && !parts.includes(cur.message)) parts.push(cur.message);
    cur = (cur as { cause?: unknown }).cause;
  }
  return parts.length > 0 ? parts.join(': ') : String(err);
}

/** A call's cancellation: the caller's signal plus an optional total deadline. */
class CallScope {
  readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private expired = false;
  private readonly onCallerAbort = (): void => this.controller.abort(this.caller?.reason);

  constructor(
    readonly caller: AbortSignal | undefined,
    readonly totalMs: number,
  ) {
    if (caller?.aborted === true) this.controller.abort(caller.reason);
    else caller?.addEventListener('abort', this.onCallerAbort, { once: true });
    if (totalMs > 0) {
      this.timer = setTimeout(() => {
        this.expired = true;
        this.controller.abort(new Error('worker call deadline passed'));
      }, totalMs);
    }
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get callerAborted(): boolean {
    return this.caller?.aborted === true;
  }

  get timedOut(): boolean {
    return this.expired;
  }

  abort(): void {
    this.controller.abort(new Error('call released'));
  }

  dispose(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.caller?.removeEventListener('abort', this.onCallerAbort);
  }
}

/** Marks errors raised by this module (not by the transport), so they pass through unchanged. */
function isOwn(err: unknown): err is StacyError {
  return err instanceof StacyError;
}

async function readBounded(body: AsyncIterable<Uint8Array>, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (total > limit) {
      throw new StacyError('INTERNAL_ERROR', `worker answer exceeds ${limit} bytes`);
    }
    parts.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }
  return Buffer.concat(parts, total);
}

function parseJson(buf: Buffer): unknown {
  try {
    return JSON.parse(buf.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/** Splits an NDJSON body into lines; a line longer than `maxBytes` is an error. A trailing partial line is dropped. */
export async function* ndjsonLines(
  body: AsyncIterable<Uint8Array>,
  maxBytes: number,
  tooLong: () => StacyError,
): AsyncGenerator<string> {
  let parts: Buffer[] = [];
  let pending = 0;
  for await (const raw of body) {
    const chunk = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      if (pending + piece.byteLength > maxBytes) throw tooLong();
      const line =
        pending === 0
          ? piece.toString('utf8')
          : Buffer.concat([...parts, piece], pending + piece.byteLength).toString('utf8');
      parts = [];
      pending = 0;
      start = nl + 1;
      if (line.trim() !== '') yield line;
    }
    if (start < chunk.byteLength) {
      const rest = chunk.subarray(start);
      pending += rest.byteLength;
      if (pending > maxBytes) throw tooLong();
      // Copied: the transport may reuse its buffer.
      parts.push(Buffer.from(rest));
    }
  }
}

/** A client for one remote worker's RPC server. */
export class HttpWorkerClient implements WorkerClient {
  readonly workerId: string;
  private readonly agent: Agent;
  private readonly origin: string;
  private readonly basePath: string;
  private readonly callTimeoutMs: number;
  private readonly execMarginMs: number;
  private seq = 0;

  constructor(private readonly o: HttpWorkerClientOptions) {
    this.workerId = o.workerId;
    let url: URL;
    try {
      url = new URL(o.rpcUrl);
    } catch {
      throw new StacyError('BAD_REQUEST', `worker ${o.workerId} has an invalid RPC URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new StacyError(
        'BAD_REQUEST',
        `worker ${o.workerId} RPC URL must be http:// or https://, not ${url.protocol}`,
      );
    }
    this.origin = url.origin;
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.callTimeoutMs = o.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.execMarginMs = o.execMarginMs ?? DEFAULT_EXEC_MARGIN_MS;
    const tls = o.tls;
    this.agent = new Agent({
      keepAliveTimeout: 10_000,
      keepAliveMaxTimeout: 60_000,
      headersTimeout: this.callTimeoutMs,
      bodyTimeout: 0,
      connect: {
        timeout: 10_000,
        ...(url.protocol === 'https:' && tls !== undefined
          ? {
              ...(tls.ca === undefined ? {} : { ca: tls.ca }),
              ...(tls.cert === undefined ? {} : { cert: tls.cert }),
              ...(tls.key === undefined ? {} : { key: tls.key }),
              ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
              rejectUnauthorized: tls.insecureSkipVerify !== true,
            }
          : {}),
      },
    });
  }

  // ---- plumbing ---------------------------------------------------------------

  private requestId(method: WorkerMethod, sandboxId: string | undefined): string {
    const kind = method.replace(/^worker\./, '').replace(/_/g, '-');
    return sandboxId === undefined ? `${kind}-${++this.seq}` : `${kind}-${sandboxId}`;
  }

  private envelope(
    method: WorkerMethod,
    params: Params | undefined,
    sandboxId: string | undefined,
    lease: LeaseToken | undefined,
  ): RpcRequest {
    const env: RpcRequest = {
      id: this.requestId(method, sandboxId),
      method,
      worker_id: this.workerId,
    };
    if (lease !== undefined) env.lease = leaseToWire(lease);
    if (params !== undefined) env.params = params;
    return env;
  }

  private headers(extra: Record<string, string>): Record<string, string> {
    return {
      [HEADER_WORKER_ID]: this.workerId,
      [HEADER_WORKER_TOKEN]: this.o.token(),
      ...extra,
    };
  }

  private transportError(
    err: unknown,
    scope: CallScope,
    method: string,
    phase: 'call' | 'stream' | 'transfer',
  ): StacyError {
    if (scope.caller !== undefined && scope.callerAborted) return abortError(scope.caller);
    if (scope.timedOut) {
      return new StacyError(
        'UNAVAILABLE',
        `worker ${this.workerId} did not finish ${method} within ${scope.totalMs} ms`,
        { cause: err },
      );
    }
    if (isOwn(err)) return err;
    const message =
      phase === 'stream'
        ? `worker ${this.workerId} connection lost mid-stream`
        : phase === 'transfer'
          ? `worker ${this.workerId} connection lost mid-transfer`
          : `worker ${this.workerId} is unreachable: ${describeFailure(err)}`;
    return new StacyError('UNAVAILABLE', message, { cause: err });
  }

  /** The StacyError a worker's refusal stands for. */
  private remoteError(status: number, body: unknown): StacyError {
    const err = errorFromResponse(status, body);
    if (status === 401) {
      // The worker refused the control plane's credential: a configuration
      // problem between CP and worker, not the API caller's.
      return new StacyError(
        'UNAVAILABLE',
        `worker ${this.workerId} refused the control plane's RPC credentials: ${err.message}`,
        { retryable: false },
      );
    }
    return err;
  }

  private decode<T>(method: WorkerMethod, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      throw new StacyError(
        'INTERNAL_ERROR',
        `worker ${this.workerId} sent an invalid ${method} result: ${why}`,
        { cause: err },
      );
    }
  }

  private request(
    path: string,
    body: string | Uint8Array | Readable | null,
    headers: Record<string, string>,
    scope: CallScope,
    timeouts: { headersMs: number; bodyMs: number },
    method: 'POST' | 'GET' = 'POST',
  ): Promise<Dispatcher.ResponseData> {
    return this.agent.request({
      origin: this.origin,
      path: `${this.basePath}${path}`,
      method,
      headers: this.headers(headers),
      body,
      signal: scope.signal,
      headersTimeout: timeouts.headersMs,
      bodyTimeout: timeouts.bodyMs,
    });
  }

  /** One JSON call on `/rpc`; resolves to the envelope's `result`. */
  private async rpc(
    method: WorkerMethod,
    params: Params | undefined,
    o: {
      sandboxId?: string | undefined;
      lease?: LeaseToken | undefined;
      signal?: AbortSignal | undefined;
      totalMs?: number;
    } = {},
  ): Promise<unknown> {
    const env = this.envelope(method, params, o.sandboxId, o.lease);
    const scope = new CallScope(o.signal, o.totalMs ?? this.callTimeoutMs);
    let status: number;
    let body: unknown;
    try {
      const res = await this.request(
        RPC_PATH,
        JSON.stringify(env),
        { 'content-type': 'application/json' },
        scope,
        { headersMs: 0, bodyMs: 0 },
      );
      status = res.statusCode;
      body = parseJson(await readBounded(res.body, MAX_JSON_RESPONSE_BYTES));
    } catch (err) {
      throw this.transportError(err, scope, method, 'call');
    } finally {
      scope.dispose();
    }
    if (
      status >= 400 ||
      (isRecord(body) && typeof body['error'] === 'string' && body['error'] !== '')
    ) {
      throw this.remoteError(status, body);
    }
    if (!isRecord(body)) {
      throw new StacyError(
        'INTERNAL_ERROR',
        `worker ${this.workerId} sent an unreadable ${method} answer (HTTP ${status})`,
      );
    }
    return body['result'];
  }

  private execTotalMs(spec: ExecSpec): number {
    return spec.timeoutMs > 0 ? spec.timeoutMs + this.execMarginMs : 0;
  }

  // ---- WorkerClient -------------------------------------------------------------

  async providers(opts?: CallOptions): Promise<ProviderInfo[]> {
    const m = 'worker.providers';
    const result = await this.rpc(m, undefined, { signal: opts?.signal });
    return this.decode(m, () =>
      resultReader(result)
        .array('providers')
        .map((p, i) => providerInfoFromWire(p, `result.providers[${i}]`)),
    );
  }

  async providerHealth(name: string, opts?: CallOptions): Promise<ProviderHealth> {
    const m = 'worker.provider_health';
    const result = await this.rpc(m, { provider: name }, { signal: opts?.signal });
    return this.decode(m, () => healthFromWire(result));
  }

  async listRuntimes(provider: string, opts?: CallOptions): Promise<string[]> {
    const m = 'worker.list_runtimes';
    const result = await this.rpc(m, { provider }, { signal: opts?.signal });
    return this.decode(m, () => resultReader(result).stringArray('runtime_ids'));
  }

  async spawn(req: WorkerSpawnRequest, opts?: CallOptions): Promise<WorkerSpawnResult> {
    const m = 'worker.spawn';
    const result = await this.rpc(m, spawnToParams(req), {
      sandboxId: req.sandboxId,
      lease: req.lease,
      signal: opts?.signal,
    });
    return this.decode(m, () => spawnResultFromWire(result));
  }

  async status(ref: RuntimeRef, opts?: CallOptions): Promise<RuntimeStatus> {
    const m = 'worker.status';
    const result = await this.rpc(m, refToParams(ref), this.refCall(ref, opts));
    return this.decode(m, () => statusResultFromWire(result));
  }

  async destroy(ref: RuntimeRef, opts?: CallOptions): Promise<void> {
    await this.rpc('worker.destroy', refToParams(ref), this.refCall(ref, opts));
  }

  async logs(ref: RuntimeRef, lines: number, opts?: CallOptions): Promise<string[]> {
    const m = 'worker.logs';
    const result = await this.rpc(m, { ...refToParams(ref), lines }, this.refCall(ref, opts));
    return this.decode(m, () => resultReader(result).stringArray('lines'));
  }

  async stats(ref: RuntimeRef, opts?: CallOptions): Promise<ProviderStats | undefined> {
    const m = 'worker.stats';
    const result = await this.rpc(m, refToParams(ref), this.refCall(ref, opts));
    return this.decode(m, () => statsFromWire(result));
  }

  async exec(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome> {
    const m = 'worker.exec';
    const result = await this.rpc(m, execToParams(ref, spec), {
      ...this.refCall(ref, opts),
      totalMs: this.execTotalMs(spec),
    });
    return this.decode(m, () => execResultFromWire(result));
  }

  execStream(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent> {
    return { [Symbol.asyncIterator]: () => this.streamExec(ref, spec, opts) };
  }

  private async *streamExec(
    ref: RuntimeRef,
    spec: ExecSpec,
    opts: CallOptions | undefined,
  ): AsyncGenerator<ExecEvent> {
    const m = 'worker.exec_stream';
    const env = this.envelope(m, execToParams(ref, spec), ref.sandboxId, ref.lease);
    const scope = new CallScope(opts?.signal, this.execTotalMs(spec));
    let res: Dispatcher.ResponseData;
    try {
      res = await this.request(
        RPC_PATH,
        JSON.stringify(env),
        {
          'content-type': 'application/json',
          accept: NDJSON_CONTENT_TYPE,
          [HEADER_WORKER_STREAM]: 'ndjson',
        },
        scope,
        { headersMs: this.callTimeoutMs, bodyMs: 0 },
      );
    } catch (err) {
      scope.dispose();
      throw this.transportError(err, scope, m, 'call');
    }
    let finished = false;
    try {
      const type = String(res.headers['content-type'] ?? '');
      if (res.statusCode !== 200 || !type.includes(NDJSON_CONTENT_TYPE)) {
        const body = parseJson(await readBounded(res.body, MAX_JSON_RESPONSE_BYTES));
        if (res.statusCode >= 400 || !isRecord(body) || typeof body['error'] === 'string') {
          throw this.remoteError(res.statusCode, body);
        }
        // A worker that answered in the buffered form.
        const events = this.decode(m, () => bufferedStreamFromWire(body['result']));
        finished = true;
        scope.dispose();
        yield* events;
        return;
      }
      let exit: ExecEvent | undefined;
      const tooLong = (): StacyError =>
        new StacyError(
          'INTERNAL_ERROR',
          `worker ${this.workerId} sent a stream line over ${MAX_STREAM_LINE_BYTES} bytes`,
        );
      for await (const line of ndjsonLines(res.body, MAX_STREAM_LINE_BYTES, tooLong)) {
        if (exit !== undefined) continue;
        let obj: unknown;
        try {
          obj = JSON.parse(line) as unknown;
        } catch {
          throw new StacyError(
            'INTERNAL_ERROR',
            `worker ${this.workerId} sent an unreadable stream line`,
          );
        }
        if (!isRecord(obj)) continue;
        if (typeof obj['error'] === 'string' && obj['error'] !== '') {
          throw this.remoteError(500, obj);
        }
        if (obj['result'] === undefined) continue;
        const ev = this.decode(m, () => streamEventFromWire(obj['result']));
        if (ev.type === 'exit') {
          exit = ev;
          continue;
        }
        yield ev;
      }
      if (exit === undefined) {
        throw new StacyError('UNAVAILABLE', `worker ${this.workerId} connection lost mid-stream`);
      }
      finished = true;
      scope.dispose();
      yield exit;
    } catch (err) {
      throw this.transportError(err, scope, m, 'stream');
    } finally {
      scope.dispose();
      if (!finished) {
        // The consumer left early or the stream failed: the worker must stop the command.
        scope.abort();
        res.body.destroy();
      }
    }
  }

  async writeFile(
    ref: RuntimeRef,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    const m = 'worker.file_write';
    const env = this.envelope(m, fileWriteParams(ref, path, mode), ref.sandboxId, ref.lease);
    const scope = new CallScope(opts?.signal, 0);
    let sourceError: unknown;
    let body: Uint8Array | Readable;
    if (data instanceof Uint8Array) {
      body = data;
    } else {
      const source = data;
      body = Readable.from(
        (async function* (): AsyncGenerator<Uint8Array> {
          try {
            for await (const chunk of source) yield chunk;
          } catch (err) {
            sourceError = err;
            throw err;
          }
        })(),
        { objectMode: false },
      );
    }
    let status: number;
    let answer: unknown;
    try {
      const res = await this.request(
        RPC_FILE_WRITE_PATH,
        body,
        { 'content-type': OCTET_STREAM, [HEADER_WORKER_RPC]: asciiJson(env) },
        scope,
        { headersMs: this.callTimeoutMs, bodyMs: this.callTimeoutMs },
      );
      status = res.statusCode;
      answer = parseJson(await readBounded(res.body, MAX_JSON_RESPONSE_BYTES));
    } catch (err) {
      if (sourceError !== undefined) {
        if (sourceError instanceof StacyError) throw sourceError;
        throw new StacyError(
          'BAD_REQUEST',
          `file body could not be read: ${messageOf(sourceError)}`,
          {
            cause: sourceError,
          },
        );
      }
      throw this.transportError(err, scope, m, 'call');
    } finally {
      scope.dispose();
    }
    if (status >= 400 || (isRecord(answer) && typeof answer['error'] === 'string')) {
      throw this.remoteError(status, answer);
    }
  }

  async readFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<ReadFileResult> {
    const m = 'worker.file_read';
    const env = this.envelope(m, fileParams(ref, { path }), ref.sandboxId, ref.lease);
    const scope = new CallScope(opts?.signal, 0);
    let res: Dispatcher.ResponseData;
    try {
      res = await this.request(
        RPC_FILE_READ_PATH,
        JSON.stringify(env),
        { 'content-type': 'application/json' },
        scope,
        { headersMs: this.callTimeoutMs, bodyMs: this.callTimeoutMs },
      );
    } catch (err) {
      scope.dispose();
      throw this.transportError(err, scope, m, 'call');
    }
    if (res.statusCode !== 200) {
      let answer: unknown;
      try {
        answer = parseJson(await readBounded(res.body, MAX_JSON_RESPONSE_BYTES));
      } catch (err) {
        throw this.transportError(err, scope, m, 'call');
      } finally {
        scope.dispose();
      }
      throw this.remoteError(res.statusCode, answer);
    }
    const size = Number(res.headers[HEADER_FILE_SIZE]);
    if (!Number.isSafeInteger(size) || size < 0) {
      scope.dispose();
      res.body.destroy();
      throw new StacyError(
        'INTERNAL_ERROR',
        `worker ${this.workerId} sent no valid ${HEADER_FILE_SIZE}`,
      );
    }
    const source = res.body;
    const lost = (err: unknown): StacyError => this.transportError(err, scope, m, 'transfer');
    async function* body(): AsyncGenerator<Uint8Array> {
      let done = false;
      try {
        for await (const chunk of source as AsyncIterable<Buffer>) yield chunk;
        done = true;
      } catch (err) {
        throw lost(err);
      } finally {
        scope.dispose();
        if (!done) source.destroy();
      }
    }
    return { size, body: body() };
  }

  async listFiles(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry[]> {
    const m = 'worker.file_list';
    const result = await this.rpc(m, fileParams(ref, { path }), this.refCall(ref, opts));
    return this.decode(m, () =>
      resultReader(result)
        .array('files')
        .map((f, i) => fileEntryFromWire(f, `result.files[${i}]`)),
    );
  }

  async statFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry> {
    const m = 'worker.file_stat';
    const result = await this.rpc(m, fileParams(ref, { path }), this.refCall(ref, opts));
    return this.decode(m, () => fileEntryFromWire(resultReader(result).record('file')));
  }

  async deleteFile(
    ref: RuntimeRef,
    path: string,
    recursive: boolean,
    opts?: CallOptions,
  ): Promise<void> {
    await this.rpc(
      'worker.file_delete',
      fileParams(ref, { path, recursive }),
      this.refCall(ref, opts),
    );
  }

  async moveFile(ref: RuntimeRef, from: string, to: string, opts?: CallOptions): Promise<void> {
    await this.rpc(
      'worker.file_move',
      fileParams(ref, { old_path: from, new_path: to }),
      this.refCall(ref, opts),
    );
  }

  async chmodFile(ref: RuntimeRef, path: string, mode: number, opts?: CallOptions): Promise<void> {
    await this.rpc('worker.file_chmod', chmodParams(ref, path, mode), this.refCall(ref, opts));
  }

  async globFiles(ref: RuntimeRef, pattern: string, opts?: CallOptions): Promise<string[]> {
    const m = 'worker.file_glob';
    const result = await this.rpc(m, fileParams(ref, { pattern }), this.refCall(ref, opts));
    return this.decode(m, () => resultReader(result).stringArray('matches'));
  }

  /**
   * A relay to the worker's own preview gateway, which resolves the sandbox
   * in its runtime. No RPC round trip: the worker answers 404/502 itself.
   */
  async previewUpstream(
    _ref: RuntimeRef,
    _port: number,
    opts?: CallOptions,
  ): Promise<PreviewUpstream> {
    if (opts?.signal?.aborted === true) throw abortError(opts.signal);
    const url = this.o.previewUrl?.()?.trim() ?? '';
    if (url === '') {
      throw new StacyError(
        'UNAVAILABLE',
        `worker ${this.workerId} serves no previews (it advertises no preview_url; start it with --preview-listen)`,
      );
    }
    const up: PreviewUpstream = {
      kind: 'relay',
      url,
      headers: { [HEADER_WORKER_ID]: this.workerId, [HEADER_WORKER_TOKEN]: this.o.token() },
    };
    if (this.o.tls !== undefined) up.tls = { ...this.o.tls };
    return up;
  }

  // ---- beyond WorkerClient ------------------------------------------------------

  /** `worker.shutdown`: the worker drains (refuses new spawns; existing sandboxes keep working). */
  async shutdown(opts?: CallOptions): Promise<void> {
    await this.rpc('worker.shutdown', undefined, { signal: opts?.signal });
  }

  /** The worker's unauthenticated `/health`. */
  async health(opts?: CallOptions): Promise<WorkerHealth> {
    const scope = new CallScope(opts?.signal, this.callTimeoutMs);
    let status: number;
    let body: unknown;
    try {
      const res = await this.request(
        HEALTH_PATH,
        null,
        {},
        scope,
        { headersMs: 0, bodyMs: 0 },
        'GET',
      );
      status = res.statusCode;
      body = parseJson(await readBounded(res.body, 1024 * 1024));
    } catch (err) {
      throw this.transportError(err, scope, 'GET /health', 'call');
    } finally {
      scope.dispose();
    }
    if (status !== 200 || !isRecord(body) || typeof body['status'] !== 'string') {
      throw this.remoteError(status >= 400 ? status : 503, body);
    }
    const out: WorkerHealth = {
      status: body['status'],
      worker_id: typeof body['worker_id'] === 'string' ? body['worker_id'] : '',
    };
    if (typeof body['state'] === 'string') out.state = body['state'];
    return out;
  }

  /** Closes the connection pool. */
  async close(): Promise<void> {
    await this.agent.close();
  }

  private refCall(
    ref: RuntimeRef,
    opts: CallOptions | undefined,
  ): { sandboxId: string; lease: LeaseToken | undefined; signal: AbortSignal | undefined } {
    return { sandboxId: ref.sandboxId, lease: ref.lease, signal: opts?.signal };
  }
}
