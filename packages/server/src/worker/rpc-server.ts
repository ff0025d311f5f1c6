/**
 * The worker RPC server (reference spec §3.6): serves a {@link WorkerRuntime}
 * to the control plane over HTTP(S). Wire shapes live in `rpc/protocol.ts`.
 *
 * Plain `node:http`/`node:https`: this is the exec hot path. There is no write
 * or total request timeout (reference defect #10 cut long execs and streams
 * at 30 s) — only a header timeout and the idle keep-alive timeout. When the
 * control plane goes away mid-call, the call's AbortSignal fires, so a
 * running command is killed.
 */
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { StacyError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import type { ExecEvent } from '../domain/exec.js';
import type { Logger } from '../domain/logger.js';
import { checkWorkerRpcCredentials } from '../domain/worker-credentials.js';
import type { ReadFileResult } from '../providers/provider.js';
import {
  DEFAULT_MAX_JSON_BODY_BYTES,
  HEADER_FILE_MODE,
  HEADER_FILE_SIZE,
  HEADER_WORKER_ID,
  HEADER_WORKER_RPC,
  HEADER_WORKER_STREAM,
  HEADER_WORKER_TOKEN,
  HEALTH_PATH,
  MAX_JSON_FILE_READ_BYTES,
  NDJSON_CONTENT_TYPE,
  OCTET_STREAM,
  RPC_FILE_READ_PATH,
  RPC_FILE_WRITE_PATH,
  RPC_MESSAGES,
  RPC_PATH,
  bufferedStreamToWire,
  errorEnvelope,
  execFromParams,
  execResultToWire,
  fileEntryToRpc,
  healthToWire,
  okEnvelope,
  paramsReader,
  parseRpcRequest,
  providerInfoToWire,
  refFromParams,
  renewLeaseFromParams,
  spawnFromParams,
  spawnResultToWire,
  statsToWire,
  statusResultToWire,
  streamEventToWire,
} from '../rpc/protocol.js';
import type { LeaseTokenWire, RpcRequest, RpcResponse } from '../rpc/protocol.js';
import type { WorkerClient } from '../rpc/worker-client.js';

export interface WorkerRpcServerOptions {
  /** The runtime served (a WorkerRuntime). */
  runtime: WorkerClient & { drain(): void; readonly state: string };
  workerId: string;
  auth: {
    /** The worker's own static tokens. */
    staticTokens: string[];
    /** Signing keys (active first) for signed `worker:rpc` tokens. */
    signingKeys: string[];
    revokedTokenIds: string[];
    nowMs: () => number;
  };
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** HTTPS; with `clientCa` a client certificate signed by it is required (mTLS). TLS ≥ 1.2. */
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  logger: Logger;
  /** `worker.renew_lease` forwards here (to the control plane). */
  renewLease?: (resourceId: string, ttl: string) => Promise<LeaseTokenWire>;
  /** Called on `worker.shutdown`, after `runtime.drain()`. */
  onShutdown?: () => void;
  /** Largest JSON request body; default 64 MiB. Bigger → 413. */
  maxJsonBodyBytes?: number;
  /** Time allowed for a request's headers; default 10 s. */
  headersTimeoutMs?: number;
  /** How long an idle keep-alive connection is kept; default 60 s. */
  keepAliveTimeoutMs?: number;
}

export interface WorkerRpcServer {
  /** `http(s)://host:port`, as a control plane reaches it. */
  readonly url: string;
  readonly port: number;
  /** Stops accepting; in-flight calls get `graceMs` (default 10 s) before their connections are cut. */
  close(graceMs?: number): Promise<void>;
}

type Runtime = WorkerRpcServerOptions['runtime'];

/** Sends a JSON body with an exact length. */
function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  extra: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
    ...extra,
  });
  res.end(text);
}

/** The API error body, for refusals before the envelope is read. */
function sendApiError(
  res: ServerResponse,
  status: number,
  code: ErrorCode,
  message: string,
  extra: Record<string, string> = {},
): void {
  sendJson(res, status, { code, message }, extra);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
}

function presentedToken(req: IncomingMessage): string | undefined {
  const direct = header(req, HEADER_WORKER_TOKEN);
  if (direct !== undefined) return direct;
  const authz = header(req, 'authorization');
  const m = authz === undefined ? null : /^Bearer\s+(.+)$/i.exec(authz);
  const t = m?.[1]?.trim();
  return t === undefined || t === '' ? undefined : t;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads a request body up to `limit` bytes; PAYLOAD_TOO_LARGE beyond (the rest is left unread). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = (): StacyError =>
    new StacyError('PAYLOAD_TOO_LARGE', `request body exceeds ${limit} bytes`);
  const declared = Number(req.headers['content-length'] ?? '');
  if (Number.isFinite(declared) && declared > limit) return Promise.reject(tooLarge());
  return new Promise<Buffer>((resolve, reject) => {
    const parts: Buffer[] = [];
    let total = 0;
    const cleanup = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      total += chunk.byteLength;
      if (total > limit) {
        cleanup();
        req.pause();
        reject(tooLarge());
        return;
      }
      parts.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(parts, total));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new StacyError('BAD_REQUEST', `request body could not be read: ${err.message}`));
    };
    const onClose = (): void => {
      cleanup();
      reject(new StacyError('BAD_REQUEST', 'request body was cut off'));
    };
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onError);
    req.once('close', onClose);
  });
}

/** Waits until `res` can take more data or is gone. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/** Writes with backpressure; false when the peer is gone. */
async function write(res: ServerResponse, data: string | Uint8Array): Promise<boolean> {
  if (res.destroyed || res.writableEnded) return false;
  if (!res.write(data)) await drained(res);
  return !res.destroyed;
}

/** Releases a file body that will not be read to its end. */
async function closeBody(body: AsyncIterable<Uint8Array>): Promise<void> {
  await body[Symbol.asyncIterator]()
    .return?.()
    .catch(() => undefined);
}

const forbidden = (message: string): StacyError => new StacyError('FORBIDDEN', message);

/** Runs `fn` so that a synchronous throw becomes a rejection. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  return fn();
}

class RpcHandler {
  private readonly rt: Runtime;
  private readonly maxJson: number;

  constructor(private readonly o: WorkerRpcServerOptions) {
    this.rt = o.runtime;
    this.maxJson = o.maxJsonBodyBytes ?? DEFAULT_MAX_JSON_BODY_BYTES;
  }

  handle = (req: IncomingMessage, res: ServerResponse): void => {
    this.route(req, res).catch((err: unknown) => {
      this.o.logger.error(
        { err: err instanceof Error ? err.message : String(err) },
        'worker RPC handler failed',
      );
      if (!res.headersSent) sendApiError(res, 500, 'INTERNAL_ERROR', 'internal error');
      else res.destroy();
    });
  };

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path === HEALTH_PATH) {
      sendJson(res, 200, { status: 'ok', worker_id: this.o.workerId, state: this.rt.state });
      return;
    }
    if (path !== RPC_PATH && path !== RPC_FILE_WRITE_PATH && path !== RPC_FILE_READ_PATH) {
      sendApiError(res, 404, 'NOT_FOUND', `no such worker RPC route: ${path}`);
      return;
    }
    if (req.method !== 'POST') {
      sendApiError(res, 405, 'BAD_REQUEST', RPC_MESSAGES.methodNotAllowed, { Allow: 'POST' });
      return;
    }
    const verdict = checkWorkerRpcCredentials(header(req, HEADER_WORKER_ID), presentedToken(req), {
      workerId: this.o.workerId,
      staticTokens: this.o.auth.staticTokens,
      signingKeys: this.o.auth.signingKeys,
      revokedTokenIds: this.o.auth.revokedTokenIds,
      nowMs: this.o.auth.nowMs(),
    });
    if (!verdict.ok) {
      this.o.logger.warn(
        { reason: verdict.reason, remote: req.socket.remoteAddress },
        'worker RPC credentials refused',
      );
      sendApiError(res, 401, 'UNAUTHORIZED', RPC_MESSAGES.badCredentials);
      return;
    }

    // The call's lifetime: when the control plane goes away, everything it started stops.
    const ac = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) {
        ac.abort(new StacyError('UNAVAILABLE', 'control plane disconnected'));
      }
    });

    let raw: unknown;
    if (path === RPC_FILE_WRITE_PATH) {
      const text = header(req, HEADER_WORKER_RPC);
      if (text === undefined) {
        sendApiError(
          res,
          400,
          'BAD_REQUEST',
          `${RPC_MESSAGES.badJson}: X-Worker-RPC header is required`,
        );
        return;
      }
      raw = this.parseJson(text);
    } else {
      let body: Buffer;
      try {
        body = await readBody(req, this.maxJson);
      } catch (err) {
        const e = err instanceof StacyError ? err : new StacyError('BAD_REQUEST', String(err));
        sendApiError(res, e.status, e.code, e.message, { Connection: 'close' });
        return;
      }
      raw = this.parseJson(body.toString('utf8'));
    }
    if (!isRecord(raw)) {
      sendApiError(res, 400, 'BAD_REQUEST', RPC_MESSAGES.badJson);
      return;
    }
    const named = raw['worker_id'];
    if (typeof named === 'string' && named !== '' && named !== this.o.workerId) {
      sendApiError(res, 403, 'FORBIDDEN', RPC_MESSAGES.otherWorker);
      return;
    }
    let env: RpcRequest;
    try {
      env = parseRpcRequest(raw);
      if (path === RPC_FILE_WRITE_PATH && env.method !== 'worker.file_write') {
        throw new StacyError(
          'BAD_REQUEST',
          `invalid worker message: method must be worker.file_write on ${path}`,
        );
      }
      if (path === RPC_FILE_READ_PATH && env.method !== 'worker.file_read') {
        throw new StacyError(
          'BAD_REQUEST',
          `invalid worker message: method must be worker.file_read on ${path}`,
        );
      }
    } catch (err) {
      const id = typeof raw['id'] === 'string' ? raw['id'] : '';
      const e = err instanceof StacyError ? err : new StacyError('BAD_REQUEST', String(err));
      sendJson(res, 400, errorEnvelope(id, this.o.workerId, e));
      return;
    }

    try {
      if (path === RPC_FILE_WRITE_PATH) {
        await this.rawWrite(env, req, ac.signal);
        sendJson(res, 200, okEnvelope(env.id, this.o.workerId));
      } else if (path === RPC_FILE_READ_PATH) {
        await this.rawRead(env, res, ac.signal);
      } else if (env.method === 'worker.exec_stream') {
        await this.execStream(env, req, res, ac.signal);
      } else if (env.method === 'worker.heartbeat') {
        sendJson(res, 501, {
          id: env.id,
          worker_id: this.o.workerId,
          error: RPC_MESSAGES.notImplemented,
        } satisfies RpcResponse);
      } else {
        const result = await this.dispatch(env, ac.signal);
        sendJson(res, 200, okEnvelope(env.id, this.o.workerId, result));
      }
    } catch (err) {
      this.fail(res, env, err);
    }
  }

  private parseJson(text: string): unknown {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      return undefined;
    }
  }

  private toStacy(env: RpcRequest, err: unknown): StacyError {
    if (err instanceof StacyError) return err;
    const message = err instanceof Error ? err.message : String(err);
    this.o.logger.error(
      { method: env.method, request_id: env.id, err: message },
      'worker RPC call failed',
    );
    return new StacyError('INTERNAL_ERROR', message, { cause: err });
  }

  private fail(res: ServerResponse, env: RpcRequest, err: unknown): void {
    if (err instanceof StacyError && err.code === 'INTERNAL_ERROR') {
      this.o.logger.warn(
        { method: env.method, request_id: env.id, err: err.message },
        'worker RPC call failed',
      );
    }
    const e = this.toStacy(env, err);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    sendJson(res, e.status, errorEnvelope(env.id, this.o.workerId, e));
  }

  /** Reference lease checks, then the resource the call acts on must be the lease's. */
  private checkLease(env: RpcRequest): LeaseTokenWire {
    const l = env.lease;
    if (l === undefined) throw forbidden('lease token is required');
    if (l.holder_id !== this.o.workerId) throw forbidden('lease holder does not match worker');
    if (l.resource_id.trim() === '') throw forbidden('lease resource is required');
    if (l.expires_at !== undefined && Date.parse(l.expires_at) < this.o.auth.nowMs()) {
      throw forbidden('lease token is expired');
    }
    return l;
  }

  private async dispatch(env: RpcRequest, signal: AbortSignal): Promise<unknown> {
    const rt = this.rt;
    const opts = { signal };
    const p = env.params;
    switch (env.method) {
      case 'worker.status': {
        const ref = refFromParams(p, env.lease);
        return statusResultToWire(ref, await rt.status(ref, opts), this.o.workerId);
      }
      case 'worker.exec': {
        const ref = refFromParams(p, env.lease);
        const spec = execFromParams(p);
        return execResultToWire(ref.sandboxId, await rt.exec(ref, spec, opts));
      }
      case 'worker.exec_stream': {
        // Buffered form (no NDJSON accept); reached via execStream() only.
        throw new StacyError('INTERNAL_ERROR', 'exec_stream is handled by the stream path');
      }
      case 'worker.file_write': {
        const ref = refFromParams(p, env.lease);
        const r = paramsReader(p);
        const path = r.string('path');
        const mode = r.mode('mode', 0o644);
        const content = Buffer.from(r.optString('content'), 'base64');
        await rt.writeFile(ref, path, content, mode, opts);
        return undefined;
      }
      case 'worker.file_read': {
        const ref = refFromParams(p, env.lease);
        const file = await rt.readFile(ref, paramsReader(p).string('path'), opts);
        const data = await readWhole(file, MAX_JSON_FILE_READ_BYTES);
        return { sandbox_id: ref.sandboxId, content: data.toString('base64') };
      }
      case 'worker.file_list': {
        const ref = refFromParams(p, env.lease);
        const files = await rt.listFiles(ref, paramsReader(p).string('path'), opts);
        return { sandbox_id: ref.sandboxId, files: files.map(fileEntryToRpc) };
      }
      case 'worker.file_delete': {
        const ref = refFromParams(p, env.lease);
        const r = paramsReader(p);
        await rt.deleteFile(ref, r.string('path'), r.optBool('recursive', false), opts);
        return undefined;
      }
      case 'worker.file_move': {
        const ref = refFromParams(p, env.lease);
        const r = paramsReader(p);
        await rt.moveFile(ref, r.string('old_path'), r.string('new_path'), opts);
        return undefined;
      }
      case 'worker.file_chmod': {
        const ref = refFromParams(p, env.lease);
        const r = paramsReader(p);
        await rt.chmodFile(ref, r.string('path'), r.mode('mode'), opts);
        return undefined;
      }
      case 'worker.file_stat': {
        const ref = refFromParams(p, env.lease);
        const file = await rt.statFile(ref, paramsReader(p).string('path'), opts);
        return { sandbox_id: ref.sandboxId, file: fileEntryToRpc(file) };
      }
      case 'worker.file_glob': {
        const ref = refFromParams(p, env.lease);
        const matches = await rt.globFiles(ref, paramsReader(p).string('pattern'), opts);
        return { sandbox_id: ref.sandboxId, matches };
      }
      case 'worker.logs': {
        const ref = refFromParams(p, env.lease);
        const lines = await rt.logs(ref, paramsReader(p).optInt('lines', 0), opts);
        return { sandbox_id: ref.sandboxId, lines };
      }
      case 'worker.spawn': {
        // As the reference: a draining worker refuses before looking at the lease.
        if (rt.state !== 'active') {
          throw new StacyError('UNAVAILABLE', `worker ${this.o.workerId} is ${rt.state}`);
        }
        const lease = this.checkLease(env);
        const req = spawnFromParams(p, lease);
        if (req.sandboxId !== lease.resource_id) {
          throw forbidden('lease resource does not match spawn request');
        }
        const result = await rt.spawn(req, opts);
        return spawnResultToWire(req, result, this.o.workerId);
      }
      case 'worker.destroy': {
        const lease = this.checkLease(env);
        const ref = refFromParams(p, lease);
        if (ref.sandboxId !== lease.resource_id) {
          throw forbidden('lease resource does not match destroy request');
        }
        await rt.destroy(ref, opts);
        return undefined;
      }
      case 'worker.renew_lease': {
        const lease = this.checkLease(env);
        const { resourceId, ttl } = renewLeaseFromParams(p);
        if (resourceId !== lease.resource_id) {
          throw forbidden('lease resource does not match renewal request');
        }
        if (this.o.renewLease === undefined) {
          throw new StacyError('UNAVAILABLE', 'lease renewer unavailable');
        }
        try {
          return { lease: await this.o.renewLease(resourceId, ttl) };
        } catch (err) {
          if (err instanceof StacyError) throw err;
          throw new StacyError('CONFLICT', `lease renewal failed: ${(err as Error).message}`);
        }
      }
      case 'worker.shutdown': {
        rt.drain();
        this.o.logger.info({ worker_id: this.o.workerId }, 'worker draining (worker.shutdown)');
        this.o.onShutdown?.();
        return undefined;
      }
      case 'worker.heartbeat':
        throw new StacyError('INTERNAL_ERROR', RPC_MESSAGES.notImplemented);
      case 'worker.providers':
        return { providers: (await rt.providers(opts)).map(providerInfoToWire) };
      case 'worker.provider_health':
        return healthToWire(await rt.providerHealth(paramsReader(p).string('provider'), opts));
      case 'worker.list_runtimes':
        return { runtime_ids: await rt.listRuntimes(paramsReader(p).string('provider'), opts) };
      case 'worker.stats': {
        const ref = refFromParams(p, env.lease);
        return statsToWire(ref.sandboxId, await rt.stats(ref, opts));
      }
    }
  }

  private async execStream(
    env: RpcRequest,
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const ref = refFromParams(env.params, env.lease);
    const spec = execFromParams(env.params);
    // A synchronous refusal (unknown provider, stale lease) still gets its own status.
    const events = this.rt.execStream(ref, spec, { signal });
    const ndjson =
      (req.headers.accept ?? '').toLowerCase().includes(NDJSON_CONTENT_TYPE) ||
      header(req, HEADER_WORKER_STREAM)?.toLowerCase() === 'ndjson';
    if (!ndjson) {
      const all: ExecEvent[] = [];
      for await (const ev of events) all.push(ev);
      sendJson(
        res,
        200,
        okEnvelope(env.id, this.o.workerId, bufferedStreamToWire(ref.sandboxId, all)),
      );
      return;
    }
    res.writeHead(200, {
      'Content-Type': NDJSON_CONTENT_TYPE,
      'Cache-Control': 'no-store',
      'X-Accel-Buffering': 'no',
    });
    res.flushHeaders();
    try {
      for await (const ev of events) {
        const line = `${JSON.stringify(okEnvelope(env.id, this.o.workerId, streamEventToWire(ev)))}\n`;
        if (!(await write(res, line))) break;
      }
    } catch (err) {
      if (!res.destroyed) {
        const e = this.toStacy(env, err);
        res.write(`${JSON.stringify(errorEnvelope(env.id, this.o.workerId, e))}\n`);
      }
    }
    if (!res.destroyed) res.end();
  }

  private async rawWrite(
    env: RpcRequest,
    req: IncomingMessage,
    signal: AbortSignal,
  ): Promise<void> {
    const ref = refFromParams(env.params, env.lease);
    const r = paramsReader(env.params);
    const path = r.string('path');
    const mode = r.mode('mode', 0o644);
    await this.rt.writeFile(ref, path, req as AsyncIterable<Uint8Array>, mode, { signal });
  }

  private async rawRead(env: RpcRequest, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const ref = refFromParams(env.params, env.lease);
    const path = paramsReader(env.params).string('path');
    const fileP = call(() => this.rt.readFile(ref, path, { signal }));
    const statP = call(() => this.rt.statFile(ref, path, { signal })).catch(() => undefined);
    const file = await fileP;
    const st = await statP;
    const headers: Record<string, string> = {
      'Content-Type': OCTET_STREAM,
      [HEADER_FILE_SIZE]: String(file.size),
      'Cache-Control': 'no-store',
    };
    if (st !== undefined && !st.isDir) headers[HEADER_FILE_MODE] = st.mode;
    if (res.destroyed) {
      await closeBody(file.body);
      return;
    }
    res.writeHead(200, headers);
    try {
      for await (const chunk of file.body) {
        if (!(await write(res, chunk))) break;
      }
    } catch (err) {
      this.o.logger.warn(
        { method: env.method, request_id: env.id, err: (err as Error).message },
        'file read broke off mid-body',
      );
      // A reset, never a clean end: the control plane must not take a short body for the file.
      res.destroy();
      return;
    }
    if (!res.destroyed) res.end();
  }
}

async function readWhole(file: ReadFileResult, limit: number): Promise<Buffer> {
  if (file.size > limit) {
    await closeBody(file.body);
    throw new StacyError(
      'PAYLOAD_TOO_LARGE',
      `file is ${file.size} bytes; a JSON worker.file_read carries at most ${limit} (use ${RPC_FILE_READ_PATH})`,
    );
  }
  const parts: Buffer[] = [];
  let total = 0;
  for await (const chunk of file.body) {
    total += chunk.byteLength;
    if (total > limit) {
      throw new StacyError('PAYLOAD_TOO_LARGE', `file grew beyond ${limit} bytes while being read`);
    }
    parts.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }
  return Buffer.concat(parts, total);
}

function urlHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** Starts the worker RPC server; resolves once it listens. */
export async function startWorkerRpcServer(o: WorkerRpcServerOptions): Promise<WorkerRpcServer> {
  const handler = new RpcHandler(o);
  const common = {
    headersTimeout: o.headersTimeoutMs ?? 10_000,
    // No total request timeout: uploads and streams last as long as they need.
    requestTimeout: 0,
    keepAliveTimeout: o.keepAliveTimeoutMs ?? 60_000,
    noDelay: true,
  };
  const server: Server =
    o.tls === undefined
      ? createHttpServer(common, handler.handle)
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
          handler.handle,
        );
  // No socket inactivity timeout either: a silent `sleep 600` exec is a healthy call.
  server.timeout = 0;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen(o.port, o.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `${o.tls === undefined ? 'http' : 'https'}://${urlHost(o.host)}:${port}`;
  o.logger.info(
    { worker_id: o.workerId, url, mtls: o.tls?.clientCa !== undefined },
    'worker RPC server listening',
  );
  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    close(graceMs = 10_000): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        const timer = setTimeout(() => server.closeAllConnections(), graceMs);
        timer.unref();
        server.close(() => {
          clearTimeout(timer);
          resolve();
        });
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}
