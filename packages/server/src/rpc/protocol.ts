/**
 * Worker RPC: the one method table and the wire forms of everything the
 * control plane (CP) sends to a worker and gets back (reference spec §3.6).
 * Pure: no I/O. The server (`worker/rpc-server.ts`) and the client
 * (`rpc/http-worker-client.ts`) both encode and decode through this module.
 *
 * ## Transport
 *
 * - `POST /rpc` — body: a request envelope (JSON, at most 64 MiB by default);
 *   answer: a response envelope. Headers `X-Worker-ID: <worker id>` and
 *   `X-Worker-Token: <token>` (or `Authorization: Bearer <token>`).
 * - `GET /health` — unauthenticated `{"status":"ok","worker_id","state"}`.
 * - `POST /rpc/file_write` (extension) — the envelope of a `worker.file_write`
 *   without `content` travels in the `X-Worker-RPC` header (JSON, non-ASCII
 *   escaped as `\uXXXX`); the request body is the file's raw bytes
 *   (`application/octet-stream`), streamed to the runtime. Answer: a response
 *   envelope without `result`.
 * - `POST /rpc/file_read` (extension) — body: a `worker.file_read` request
 *   envelope. Answer on success: `200 application/octet-stream`, the raw
 *   bytes, headers `X-File-Size` (bytes) and, when the worker could stat the
 *   file, `X-File-Mode` (`0644`). A transfer that breaks mid-body ends in a
 *   reset connection, never in a clean short body. Failures: a response
 *   envelope as for `/rpc`.
 *
 * ## Envelopes (reference field names)
 *
 * Request `{id, method, worker_id, lease?, params?}`; response
 * `{id, worker_id, error?, code?, details?, result?}`. `code` and `details`
 * are our extension: the StacyError code (`NOT_FOUND`, …) and field problems,
 * so the CP rebuilds the very error the worker's runtime raised. The HTTP
 * status is that code's status. Refusals before the envelope is read (405,
 * 401, 413, 400 unparsable JSON, 403 other worker) use the API error body
 * `{"code","message"}`.
 *
 * Divergences from the reference, on purpose: a spawn/destroy/renew_lease
 * without a lease is 403 (the reference says 400); a request naming another
 * worker is 403 with code `FORBIDDEN` (reference: code `UNAUTHORIZED`); the
 * lease generation is passed to the runtime, which refuses an older one with
 * 409 (the reference never checks it); a lease without `expires_at` is taken
 * as not expiring (the reference would read Go's zero time, i.e. expired).
 *
 * ## Exec streams
 *
 * `worker.exec_stream` with `Accept: application/x-ndjson` or
 * `X-Worker-Stream: ndjson` answers `200 application/x-ndjson`, one response
 * envelope per line, written as each chunk is read:
 * `{"id","worker_id","result":{"stream":"stdout","data":"..."}}` — `data` is
 * UTF-8 text, or base64 with `"encoding":"base64"` when the chunk is not valid
 * UTF-8. The last line is the exit (extension):
 * `{"id","worker_id","result":{"stream":"exit","exit_code":0,"timed_out":false,"duration_ms":12.5}}`,
 * or an error line `{"id","worker_id","error":"...","code":"..."}`. A body that
 * ends without either means the worker died. Without NDJSON the answer is
 * buffered: `{sandbox_id, chunks:[{stream,data,encoding?}], exit_code,
 * timed_out, duration_ms}`.
 */
import { isUtf8 } from 'node:buffer';
import { formatDurationMs, parseDurationMs } from '../domain/duration.js';
import { StacyError, codeForStatus, invalidField, isErrorCode } from '../domain/errors.js';
import type { ErrorCode, FieldProblem } from '../domain/errors.js';
import type { ExecEvent, ExecMode, ExecOutcome, ExecSpec } from '../domain/exec.js';
import { formatFileMode, parseFileMode } from '../domain/files.js';
import type { FileEntry } from '../domain/files.js';
import type { LeaseToken } from '../domain/lease.js';
import type { ProviderHealth, ProviderStats, RuntimeStatus } from '../providers/provider.js';
import type {
  ProviderInfo,
  RuntimeRef,
  WorkerSpawnRequest,
  WorkerSpawnResult,
} from './worker-client.js';

// ---- transport constants ---------------------------------------------------

export const RPC_PATH = '/rpc';
export const RPC_FILE_WRITE_PATH = '/rpc/file_write';
export const RPC_FILE_READ_PATH = '/rpc/file_read';
export const HEALTH_PATH = '/health';

export const HEADER_WORKER_ID = 'x-worker-id';
export const HEADER_WORKER_TOKEN = 'x-worker-token';
export const HEADER_WORKER_STREAM = 'x-worker-stream';
/** Carries the request envelope of a raw `/rpc/file_write`. */
export const HEADER_WORKER_RPC = 'x-worker-rpc';
export const HEADER_FILE_SIZE = 'x-file-size';
export const HEADER_FILE_MODE = 'x-file-mode';

export const NDJSON_CONTENT_TYPE = 'application/x-ndjson';
export const OCTET_STREAM = 'application/octet-stream';

/** Largest JSON request body a worker reads. */
export const DEFAULT_MAX_JSON_BODY_BYTES = 64 * 1024 * 1024;
/** Largest file a worker returns base64'd in a JSON `worker.file_read`; bigger needs `/rpc/file_read`. */
export const MAX_JSON_FILE_READ_BYTES = 32 * 1024 * 1024;

/** Messages of the refusals that precede envelope handling (reference §3.6). */
export const RPC_MESSAGES = {
  methodNotAllowed: 'method not allowed',
  badCredentials: 'invalid or missing worker RPC credentials',
  badJson: 'invalid worker RPC request',
  otherWorker: 'worker RPC request targets a different worker',
  notImplemented: 'worker RPC method is not implemented by this worker runtime',
} as const;

// ---- method table ------------------------------------------------------------

export const WORKER_METHODS = {
  status: 'worker.status',
  exec: 'worker.exec',
  execStream: 'worker.exec_stream',
  fileWrite: 'worker.file_write',
  fileRead: 'worker.file_read',
  fileList: 'worker.file_list',
  fileDelete: 'worker.file_delete',
  fileMove: 'worker.file_move',
  fileChmod: 'worker.file_chmod',
  fileStat: 'worker.file_stat',
  fileGlob: 'worker.file_glob',
  logs: 'worker.logs',
  spawn: 'worker.spawn',
  destroy: 'worker.destroy',
  renewLease: 'worker.renew_lease',
  shutdown: 'worker.shutdown',
  heartbeat: 'worker.heartbeat',
  // Extensions: the rest of WorkerClient.
  providers: 'worker.providers',
  providerHealth: 'worker.provider_health',
  listRuntimes: 'worker.list_runtimes',
  stats: 'worker.stats',
} as const;

export type WorkerMethod = (typeof WORKER_METHODS)[keyof typeof WORKER_METHODS];

export interface MethodRule {
  /** Whether the request must carry `params`. */
  params: boolean;
  /** Whether the worker refuses the call (403) without a valid lease for `params.sandbox_id`/`resource_id`. */
  leaseRequired: boolean;
}

/** Every method the worker knows, and what its envelope must carry. */
export const METHOD_RULES: Readonly<Record<WorkerMethod, MethodRule>> = {
  'worker.status': { params: true, leaseRequired: false },
  'worker.exec': { params: true, leaseRequired: false },
  'worker.exec_stream': { params: true, leaseRequired: false },
  'worker.file_write': { params: true, leaseRequired: false },
  'worker.file_read': { params: true, leaseRequired: false },
  'worker.file_list': { params: true, leaseRequired: false },
  'worker.file_delete': { params: true, leaseRequired: false },
  'worker.file_move': { params: true, leaseRequired: false },
  'worker.file_chmod': { params: true, leaseRequired: false },
  'worker.file_stat': { params: true, leaseRequired: false },
  'worker.file_glob': { params: true, leaseRequired: false },
  'worker.logs': { params: true, leaseRequired: false },
  'worker.spawn': { params: true, leaseRequired: true },
  'worker.destroy': { params: true, leaseRequired: true },
  'worker.renew_lease': { params: true, leaseRequired: true },
  'worker.shutdown': { params: false, leaseRequired: false },
  'worker.heartbeat': { params: true, leaseRequired: false },
  'worker.providers': { params: false, leaseRequired: false },
  'worker.provider_health': { params: true, leaseRequired: false },
  'worker.list_runtimes': { params: true, leaseRequired: false },
  'worker.stats': { params: true, leaseRequired: false },
};

export function isWorkerMethod(value: unknown): value is WorkerMethod {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(METHOD_RULES, value);
}

// ---- envelopes ---------------------------------------------------------------

/** A lease as it travels (reference `LeaseToken`). */
export interface LeaseTokenWire {
  resource_id: string;
  holder_id: string;
  generation: number;
  /** RFC 3339; absent when the holder does not know the expiry. */
  expires_at?: string;
}

export type Params = Record<string, unknown>;

export interface RpcRequest {
  id: string;
  method: WorkerMethod;
  worker_id: string;
  lease?: LeaseTokenWire;
  params?: Params;
}

export interface RpcResponse {
  id: string;
  worker_id: string;
  error?: string;
  code?: ErrorCode;
  details?: FieldProblem[];
  result?: unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function invalidMessage(field: string, problem: string): StacyError {
  return new StacyError('BAD_REQUEST', `invalid worker message: ${field} ${problem}`, {
    details: [{ field, problem }],
  });
}

export function leaseToWire(lease: LeaseToken): LeaseTokenWire {
  const out: LeaseTokenWire = {
    resource_id: lease.resourceId,
    holder_id: lease.holderId,
    generation: lease.generation,
  };
  if (lease.expiresAtMs !== undefined) out.expires_at = new Date(lease.expiresAtMs).toISOString();
  return out;
}

export function leaseFromWire(wire: LeaseTokenWire): LeaseToken {
  const out: LeaseToken = {
    resourceId: wire.resource_id,
    holderId: wire.holder_id,
    generation: wire.generation,
  };
  if (wire.expires_at !== undefined) out.expiresAtMs = Date.parse(wire.expires_at);
  return out;
}

function parseLease(value: unknown, field: string): LeaseTokenWire {
  if (!isRecord(value)) throw invalidMessage(field, 'must be an object');
  const resource = value['resource_id'];
  const holder = value['holder_id'];
  const generation = value['generation'];
  const expires = value['expires_at'];
  if (typeof resource !== 'string')
    throw invalidMessage(`${field}.resource_id`, 'must be a string');
  if (typeof holder !== 'string') throw invalidMessage(`${field}.holder_id`, 'must be a string');
  if (typeof generation !== 'number' || !Number.isSafeInteger(generation) || generation < 0) {
    throw invalidMessage(`${field}.generation`, 'must be a non-negative integer');
  }
  const out: LeaseTokenWire = { resource_id: resource, holder_id: holder, generation };
  if (expires !== undefined && expires !== null) {
    if (typeof expires !== 'string' || Number.isNaN(Date.parse(expires))) {
      throw invalidMessage(`${field}.expires_at`, 'must be an RFC 3339 time');
    }
    out.expires_at = expires;
  }
  return out;
}

/**
 * Validates a decoded request envelope (reference `ValidateRequest`).
 *
 * @throws StacyError `BAD_REQUEST` `invalid worker message: <field> <problem>`,
 *   with `details` naming the field.
 */
export function parseRpcRequest(value: unknown): RpcRequest {
  if (!isRecord(value)) throw invalidMessage('envelope', 'must be a JSON object');
  const id = value['id'];
  const workerId = value['worker_id'];
  const method = value['method'];
  if (typeof id !== 'string' || id.trim() === '') throw invalidMessage('id', 'is required');
  if (typeof workerId !== 'string' || workerId.trim() === '') {
    throw invalidMessage('worker_id', 'is required');
  }
  if (typeof method !== 'string' || method === '') throw invalidMessage('method', 'is required');
  if (!isWorkerMethod(method)) {
    throw new StacyError(
      'BAD_REQUEST',
      `invalid worker message: unknown worker method: ${method}`,
      {
        details: [{ field: 'method', problem: `unknown worker method: ${method}` }],
      },
    );
  }
  const out: RpcRequest = { id, method, worker_id: workerId };
  const lease = value['lease'];
  if (lease !== undefined && lease !== null) out.lease = parseLease(lease, 'lease');
  const params = value['params'];
  if (params !== undefined && params !== null) {
    if (!isRecord(params)) throw invalidMessage('params', 'must be a JSON object');
    out.params = params;
  } else if (METHOD_RULES[method].params) {
    throw invalidMessage('params', 'are required');
  }
  return out;
}

/** A success envelope. */
export function okEnvelope(id: string, workerId: string, result?: unknown): RpcResponse {
  return result === undefined ? { id, worker_id: workerId } : { id, worker_id: workerId, result };
}

/** An error envelope carrying the StacyError's message, code and field problems. */
export function errorEnvelope(id: string, workerId: string, err: StacyError): RpcResponse {
  const out: RpcResponse = { id, worker_id: workerId, error: err.message, code: err.code };
  if (err.details !== undefined && err.details.length > 0) out.details = err.details;
  return out;
}

function parseDetails(value: unknown): FieldProblem[] | undefined {
  if (!Array.isArray(value)) return undefined;
  const out: FieldProblem[] = [];
  for (const d of value) {
    if (isRecord(d) && typeof d['field'] === 'string' && typeof d['problem'] === 'string') {
      out.push({ field: d['field'], problem: d['problem'] });
    }
  }
  return out.length > 0 ? out : undefined;
}

/**
 * The StacyError a worker's refusal stands for: the envelope `code` when
 * present, else the HTTP status; the worker's message is kept. Understands
 * both the response envelope (`error`) and the API error body (`message`).
 */
export function errorFromResponse(status: number, body: unknown): StacyError {
  if (isRecord(body)) {
    const code: ErrorCode = isErrorCode(body['code']) ? body['code'] : codeForStatus(status);
    const text =
      typeof body['error'] === 'string' && body['error'] !== ''
        ? body['error']
        : typeof body['message'] === 'string' && body['message'] !== ''
          ? body['message']
          : `worker answered HTTP ${status}`;
    const details = parseDetails(body['details']);
    return new StacyError(code, text, details === undefined ? {} : { details });
  }
  return new StacyError(codeForStatus(status), `worker answered HTTP ${status}`);
}

/**
 * JSON with every non-ASCII character escaped (`\uXXXX`), so it can travel in
 * an HTTP header (`X-Worker-RPC`). `JSON.parse` reads it back unchanged.
 */
export function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

// ---- field readers -------------------------------------------------------------

/** Reads typed fields from `params` (or a result), naming `<prefix>.<field>` in errors. */
export class FieldReader {
  constructor(
    readonly obj: Record<string, unknown>,
    readonly prefix: string,
  ) {}

  private name(field: string): string {
    return this.prefix === '' ? field : `${this.prefix}.${field}`;
  }

  fail(field: string, problem: string): StacyError {
    return invalidField(this.name(field), problem);
  }

  has(field: string): boolean {
    const v = this.obj[field];
    return v !== undefined && v !== null;
  }

  string(field: string): string {
    const v = this.obj[field];
    if (typeof v !== 'string') throw this.fail(field, 'must be a string');
    return v;
  }

  optString(field: string, fallback = ''): string {
    return this.has(field) ? this.string(field) : fallback;
  }

  int(field: string): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v))
      throw this.fail(field, 'must be an integer');
    return v;
  }

  optInt(field: string, fallback: number): number {
    return this.has(field) ? this.int(field) : fallback;
  }

  number(field: string): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw this.fail(field, 'must be a number');
    return v;
  }

  optNumber(field: string, fallback: number): number {
    return this.has(field) ? this.number(field) : fallback;
  }

  bool(field: string): boolean {
    const v = this.obj[field];
    if (typeof v !== 'boolean') throw this.fail(field, 'must be a boolean');
    return v;
  }

  optBool(field: string, fallback: boolean): boolean {
    return this.has(field) ? this.bool(field) : fallback;
  }

  stringArray(field: string): string[] {
    const v = this.obj[field];
    if (!Array.isArray(v) || !v.every((x): x is string => typeof x === 'string')) {
      throw this.fail(field, 'must be an array of strings');
    }
    return v;
  }

  optStringArray(field: string): string[] {
    return this.has(field) ? this.stringArray(field) : [];
  }

  optIntArray(field: string): number[] {
    if (!this.has(field)) return [];
    const v = this.obj[field];
    if (!Array.isArray(v) || !v.every((x): x is number => Number.isSafeInteger(x))) {
      throw this.fail(field, 'must be an array of integers');
    }
    return v;
  }

  optStringMap(field: string): Record<string, string> {
    if (!this.has(field)) return {};
    const v = this.obj[field];
    if (!isRecord(v)) throw this.fail(field, 'must be an object of strings');
    const out: Record<string, string> = {};
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== 'string') throw this.fail(`${field}.${k}`, 'must be a string');
      out[k] = val;
    }
    return out;
  }

  record(field: string): Record<string, unknown> {
    const v = this.obj[field];
    if (!isRecord(v)) throw this.fail(field, 'must be an object');
    return v;
  }

  optRecord(field: string): Record<string, unknown> {
    return this.has(field) ? this.record(field) : {};
  }

  array(field: string): unknown[] {
    const v = this.obj[field];
    if (!Array.isArray(v)) throw this.fail(field, 'must be an array');
    return v;
  }

  /** A permission mode: an octal string (`0644`, reference form) or an integer. */
  mode(field: string, fallback?: number): number {
    if (!this.has(field) || this.obj[field] === '') {
      if (fallback !== undefined) return fallback;
      throw this.fail(field, 'is required');
    }
    const v = this.obj[field];
    if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
    if (typeof v !== 'string') throw this.fail(field, 'must be an octal mode string such as 0644');
    try {
      return parseFileMode(v);
    } catch (err) {
      throw this.fail(field, (err as Error).message);
    }
  }
}

export function paramsReader(params: Params | undefined): FieldReader {
  return new FieldReader(params ?? {}, 'params');
}

/** A mode as it travels: octal text when it is a permission mode, the number itself otherwise (so the runtime refuses it exactly as in-process). */
function modeToWire(mode: number): string | number {
  return Number.isInteger(mode) && mode >= 0 && mode <= 0o7777 ? formatFileMode(mode) : mode;
}

// ---- runtime refs ------------------------------------------------------------

export function refToParams(ref: RuntimeRef): Params {
  const out: Params = { sandbox_id: ref.sandboxId, provider: ref.provider };
  if (ref.runtimeId !== '') out['runtime_id'] = ref.runtimeId;
  return out;
}

/** A RuntimeRef from `{sandbox_id, provider, runtime_id?}`; an empty runtime id means the sandbox id (reference). */
export function refFromParams(params: Params | undefined, lease?: LeaseTokenWire): RuntimeRef {
  const r = paramsReader(params);
  const sandboxId = r.string('sandbox_id');
  const runtimeId = r.optString('runtime_id').trim();
  const ref: RuntimeRef = {
    sandboxId,
    provider: r.optString('provider'),
    runtimeId: runtimeId === '' ? sandboxId : runtimeId,
  };
  if (lease !== undefined) ref.lease = leaseFromWire(lease);
  return ref;
}

// ---- spawn / status / destroy -------------------------------------------------

export function spawnToParams(req: WorkerSpawnRequest): Params {
  const out: Params = {
    sandbox_id: req.sandboxId,
    image: req.image,
    provider: req.provider,
    memory_mb: req.memoryMb,
    vcpus: req.vcpus,
  };
  if (req.ownerId !== '') out['owner_id'] = req.ownerId;
  if (Object.keys(req.metadata).length > 0) out['metadata'] = req.metadata;
  if (req.ports.length > 0) out['ports'] = req.ports;
  return out;
}

export function spawnFromParams(
  params: Params | undefined,
  lease?: LeaseTokenWire,
): WorkerSpawnRequest {
  const r = paramsReader(params);
  const req: WorkerSpawnRequest = {
    sandboxId: r.string('sandbox_id'),
    provider: r.optString('provider'),
    image: r.optString('image'),
    memoryMb: r.optInt('memory_mb', 0),
    vcpus: r.optInt('vcpus', 0),
    ownerId: r.optString('owner_id'),
    metadata: r.optStringMap('metadata'),
    ports: r.optIntArray('ports'),
  };
  if (lease !== undefined) req.lease = leaseFromWire(lease);
  return req;
}

export function spawnResultToWire(
  req: WorkerSpawnRequest,
  result: WorkerSpawnResult,
  workerId: string,
): Params {
  const out: Params = {
    sandbox_id: req.sandboxId,
    runtime_id: result.runtimeId,
    state: 'running',
    provider: result.provider,
    worker_id: workerId,
  };
  if (Object.keys(req.metadata).length > 0) out['metadata'] = req.metadata;
  return out;
}

export function spawnResultFromWire(result: unknown): WorkerSpawnResult {
  const r = resultReader(result);
  return { provider: r.string('provider'), runtimeId: r.string('runtime_id') };
}

export function statusResultToWire(
  ref: RuntimeRef,
  status: RuntimeStatus,
  workerId: string,
): Params {
  return {
    sandbox_id: ref.sandboxId,
    state: status.state,
    provider: ref.provider,
    worker_id: workerId,
  };
}

export function statusResultFromWire(result: unknown): RuntimeStatus {
  return { state: resultReader(result).string('state') };
}

/** Reads a result object; problems are BAD_REQUEST naming `result.<field>` (the client turns them into INTERNAL_ERROR). */
export function resultReader(result: unknown): FieldReader {
  if (!isRecord(result)) throw invalidField('result', 'must be an object');
  return new FieldReader(result, 'result');
}

// ---- exec --------------------------------------------------------------------

const EXEC_MODES: readonly ExecMode[] = ['shell', 'argv'];

export function execToParams(ref: RuntimeRef, spec: ExecSpec): Params {
  const out: Params = { ...refToParams(ref), command: spec.command, mode: spec.mode };
  if (spec.args.length > 0) out['args'] = spec.args;
  if (Object.keys(spec.env).length > 0) out['env'] = spec.env;
  if (spec.workdir !== '') out['workdir'] = spec.workdir;
  if (spec.timeoutMs > 0) out['timeout'] = formatDurationMs(spec.timeoutMs);
  return out;
}

/** Reference ExecParams → ExecSpec. A missing timeout means no deadline; missing mode means `shell`. */
export function execFromParams(params: Params | undefined): ExecSpec {
  const r = paramsReader(params);
  const mode = r.optString('mode', 'shell') || 'shell';
  if (!(EXEC_MODES as readonly string[]).includes(mode)) {
    throw r.fail('mode', 'must be "shell" or "argv"');
  }
  let timeoutMs = 0;
  const timeout = r.optString('timeout').trim();
  if (timeout !== '') {
    try {
      timeoutMs = parseDurationMs(timeout);
    } catch (err) {
      throw r.fail('timeout', (err as Error).message);
    }
    if (timeoutMs < 0) throw r.fail('timeout', 'must not be negative');
  }
  return {
    command: r.string('command'),
    args: r.optStringArray('args'),
    mode: mode as ExecMode,
    env: r.optStringMap('env'),
    workdir: r.optString('workdir'),
    timeoutMs,
  };
}

export function execResultToWire(sandboxId: string, o: ExecOutcome): Params {
  return {
    sandbox_id: sandboxId,
    exit_code: o.exitCode,
    stdout: o.stdout,
    stderr: o.stderr,
    timed_out: o.timedOut,
    duration_ms: o.durationMs,
  };
}

export function execResultFromWire(result: unknown): ExecOutcome {
  const r = resultReader(result);
  return {
    exitCode: r.int('exit_code'),
    stdout: r.optString('stdout'),
    stderr: r.optString('stderr'),
    timedOut: r.optBool('timed_out', false),
    durationMs: r.optNumber('duration_ms', 0),
  };
}

/** A stdout/stderr chunk: UTF-8 text, or base64 when the bytes are not valid UTF-8. */
export interface StreamChunkWire {
  stream: 'stdout' | 'stderr';
  data: string;
  encoding?: 'base64';
}

/** The final event of a stream (extension). */
export interface StreamExitWire {
  stream: 'exit';
  exit_code: number;
  timed_out: boolean;
  duration_ms: number;
}

export function streamEventToWire(ev: ExecEvent): StreamChunkWire | StreamExitWire {
  if (ev.type === 'exit') {
    return {
      stream: 'exit',
      exit_code: ev.exitCode,
      timed_out: ev.timedOut,
      duration_ms: ev.durationMs,
    };
  }
  const bytes = Buffer.from(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength);
  return isUtf8(bytes)
    ? { stream: ev.type, data: bytes.toString('utf8') }
    : { stream: ev.type, data: bytes.toString('base64'), encoding: 'base64' };
}

export function streamEventFromWire(result: unknown): ExecEvent {
  const r = resultReader(result);
  const stream = r.string('stream');
  if (stream === 'exit') {
    return {
      type: 'exit',
      exitCode: r.int('exit_code'),
      timedOut: r.optBool('timed_out', false),
      durationMs: r.optNumber('duration_ms', 0),
    };
  }
  if (stream !== 'stdout' && stream !== 'stderr') {
    throw r.fail('stream', 'must be "stdout", "stderr" or "exit"');
  }
  const data = r.string('data');
  const encoding = r.optString('encoding');
  if (encoding !== '' && encoding !== 'base64') throw r.fail('encoding', 'must be "base64"');
  const buf = encoding === 'base64' ? Buffer.from(data, 'base64') : Buffer.from(data, 'utf8');
  return { type: stream, data: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) };
}

/** The buffered (non-NDJSON) `worker.exec_stream` result. */
export function bufferedStreamToWire(sandboxId: string, events: ExecEvent[]): Params {
  const chunks: StreamChunkWire[] = [];
  const out: Params = { sandbox_id: sandboxId, chunks };
  for (const ev of events) {
    const w = streamEventToWire(ev);
    if (w.stream === 'exit') {
      out['exit_code'] = w.exit_code;
      out['timed_out'] = w.timed_out;
      out['duration_ms'] = w.duration_ms;
    } else {
      chunks.push(w);
    }
  }
  return out;
}

export function bufferedStreamFromWire(result: unknown): ExecEvent[] {
  const r = resultReader(result);
  const events = r.array('chunks').map((c) => streamEventFromWire(c));
  events.push({
    type: 'exit',
    exitCode: r.int('exit_code'),
    timedOut: r.optBool('timed_out', false),
    durationMs: r.optNumber('duration_ms', 0),
  });
  return events;
}

// ---- files -------------------------------------------------------------------

/** A file entry as the API and worker RPC emit it (`mod_time` to the second, RFC 3339 UTC). */
export interface FileInfoWire {
  path: string;
  name: string;
  size: number;
  mode: string;
  is_dir: boolean;
  mod_time: string;
}

/** RFC 3339 to the second, as the reference emits for files and workers. */
function rfc3339Seconds(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** The one FileEntry → wire converter, shared with the API (`api/wire.ts`). */
export function fileEntryToWire(f: FileEntry): FileInfoWire {
  return {
    path: f.path,
    name: f.name,
    size: f.size,
    mode: f.mode,
    is_dir: f.isDir,
    mod_time: rfc3339Seconds(f.modTimeMs),
  };
}

/** The RPC form: the API form plus `mod_time_ms` (extension), so the CP sees the exact time. */
export function fileEntryToRpc(f: FileEntry): FileInfoWire & { mod_time_ms: number } {
  return { ...fileEntryToWire(f), mod_time_ms: f.modTimeMs };
}

export function fileEntryFromWire(value: unknown, field = 'result.file'): FileEntry {
  if (!isRecord(value)) throw invalidField(field, 'must be an object');
  const r = new FieldReader(value, field);
  const path = r.string('path');
  let modTimeMs: number;
  if (r.has('mod_time_ms')) {
    modTimeMs = r.number('mod_time_ms');
  } else {
    modTimeMs = Date.parse(r.optString('mod_time'));
    if (Number.isNaN(modTimeMs)) throw r.fail('mod_time', 'must be an RFC 3339 time');
  }
  return {
    path,
    name: r.optString('name', path === '/' ? '/' : (path.split('/').pop() ?? path)),
    size: r.int('size'),
    mode: r.string('mode'),
    isDir: r.optBool('is_dir', false),
    modTimeMs,
  };
}

export function fileParams(ref: RuntimeRef, fields: Params): Params {
  return { ...refToParams(ref), ...fields };
}

export function fileWriteParams(ref: RuntimeRef, path: string, mode: number): Params {
  return fileParams(ref, { path, mode: modeToWire(mode) });
}

export function chmodParams(ref: RuntimeRef, path: string, mode: number): Params {
  return fileParams(ref, { path, mode: modeToWire(mode) });
}

// ---- providers, stats, logs, leases ------------------------------------------

export function providerInfoToWire(p: ProviderInfo): Params {
  const out: Params = {
    name: p.name,
    healthy: p.healthy,
    default: p.isDefault,
    latency_ms: p.latencyMs,
    last_checked_ms: p.lastCheckedMs,
    capabilities: p.capabilities,
    config: p.config,
  };
  if (p.error !== undefined) out['error'] = p.error;
  return out;
}

export function providerInfoFromWire(value: unknown, field: string): ProviderInfo {
  if (!isRecord(value)) throw invalidField(field, 'must be an object');
  const r = new FieldReader(value, field);
  const out: ProviderInfo = {
    name: r.string('name'),
    healthy: r.bool('healthy'),
    isDefault: r.optBool('default', false),
    latencyMs: r.optNumber('latency_ms', 0),
    lastCheckedMs: r.optNumber('last_checked_ms', 0),
    capabilities: r.optStringArray('capabilities'),
    config: r.optRecord('config'),
  };
  if (r.has('error')) out.error = r.string('error');
  return out;
}

export function healthToWire(h: ProviderHealth): Params {
  const out: Params = { healthy: h.healthy, latency_ms: h.latencyMs };
  if (h.error !== undefined) out['error'] = h.error;
  return out;
}

export function healthFromWire(result: unknown): ProviderHealth {
  const r = resultReader(result);
  const out: ProviderHealth = {
    healthy: r.bool('healthy'),
    latencyMs: r.optNumber('latency_ms', 0),
  };
  if (r.has('error')) out.error = r.string('error');
  return out;
}

export function statsToWire(sandboxId: string, s: ProviderStats | undefined): Params {
  return s === undefined
    ? { sandbox_id: sandboxId }
    : {
        sandbox_id: sandboxId,
        stats: { cpu_pct: s.cpuPct, mem_bytes: s.memBytes, mem_limit_bytes: s.memLimitBytes },
      };
}

export function statsFromWire(result: unknown): ProviderStats | undefined {
  const r = resultReader(result);
  if (!r.has('stats')) return undefined;
  const s = new FieldReader(r.record('stats'), 'result.stats');
  return {
    cpuPct: s.number('cpu_pct'),
    memBytes: s.number('mem_bytes'),
    memLimitBytes: s.number('mem_limit_bytes'),
  };
}

/** `worker.renew_lease` params (reference `RenewLeaseParams`). */
export function renewLeaseFromParams(params: Params | undefined): {
  resourceId: string;
  ttl: string;
} {
  const r = paramsReader(params);
  const resourceId = r.string('resource_id');
  const ttl = r.string('ttl');
  try {
    parseDurationMs(ttl);
  } catch (err) {
    throw r.fail('ttl', (err as Error).message);
  }
  return { resourceId, ttl };
}
