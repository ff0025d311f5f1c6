/**
 * Worker credentials on control-plane routes (reference spec §2.4): a worker
 * names itself in `X-Worker-ID` and proves it with a token in
 * `X-Worker-Token` or `Authorization: Bearer`. Unlike the reference, a
 * per-worker static token really works: each worker authenticates with its
 * own entry of `auth.worker_tokens`.
 *
 * Neither tokens nor keys ever appear in an error message or log line.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { StacyError, toErrorBody } from '../../domain/errors.js';
import {
  WORKER_AUDIENCE_CONTROL_PLANE,
  WORKER_SCOPES,
  WORKER_TOKEN_PREFIX,
  normalizeWorkerSigningKeys,
  verifyWorkerToken,
} from '../../domain/worker-token.js';
import type { WorkerScope } from '../../domain/worker-token.js';
import { safeEqual } from './auth.js';

/** What the control plane accepts from workers. */
export interface WorkerAuthOptions {
  /** Shared `auth.worker_token`; empty when unset. */
  sharedToken: string;
  /** `auth.worker_tokens`: worker id → that worker's own token. */
  perWorkerTokens: ReadonlyMap<string, string>;
  /** Active signing key first, then rotation keys; blanks are ignored. */
  signingKeys: readonly string[];
  /** `auth.worker_revoked_token_ids`. */
  revokedTokenIds: readonly string[];
  /** Clock for token expiry (epoch ms). */
  nowMs: () => number;
}

/** A worker whose credentials were accepted. */
export interface AuthenticatedWorker {
  workerId: string;
  /** Which credential proved it. */
  via: 'signed' | 'per-worker' | 'shared';
  scopes: readonly WorkerScope[];
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the worker auth hook on routes with `access: 'worker'`. */
    worker?: AuthenticatedWorker;
  }
}

const NOT_CONFIGURED = 'worker token is not configured';
const BAD_CREDENTIALS = 'invalid or missing worker credentials';
const MISMATCH = 'worker credential does not match requested worker';
const SCOPE_MISSING = 'required authorization scope missing';

/**
 * Parses `auth.worker_tokens` entries (`worker-id=token`). Blank entries are
 * skipped.
 *
 * @throws StacyError `BAD_REQUEST` naming the entry's position (never its
 *   value) when it is not `id=token` or repeats a worker id.
 */
export function parseWorkerTokenEntries(entries: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const [i, raw] of entries.entries()) {
    const entry = raw.trim();
    if (entry === '') continue;
    const eq = entry.indexOf('=');
    const id = eq > 0 ? entry.slice(0, eq).trim() : '';
    const token = eq > 0 ? entry.slice(eq + 1).trim() : '';
    if (id === '' || token === '') {
      throw new StacyError(
        'BAD_REQUEST',
        `auth.worker_tokens[${i}] must be "worker-id=token" with both parts non-empty`,
        { details: [{ field: `auth.worker_tokens[${i}]`, problem: 'is not worker-id=token' }] },
      );
    }
    if (out.has(id)) {
      throw new StacyError('BAD_REQUEST', `auth.worker_tokens lists worker "${id}" twice`, {
        details: [{ field: `auth.worker_tokens[${i}]`, problem: 'repeats a worker id' }],
      });
    }
    out.set(id, token);
  }
  return out;
}

/** True when any worker credential (shared, per-worker or signing key) is configured. */
export function workerAuthConfigured(o: WorkerAuthOptions): boolean {
  return (
    o.sharedToken !== '' ||
    o.perWorkerTokens.size > 0 ||
    normalizeWorkerSigningKeys(o.signingKeys).length > 0
  );
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
}

function presentedToken(req: FastifyRequest): string | undefined {
  const direct = header(req, 'x-worker-token');
  if (direct !== undefined) return direct;
  const authz = header(req, 'authorization');
  const match = authz === undefined ? null : /^Bearer\s+(.+)$/i.exec(authz);
  return match?.[1]?.trim() || undefined;
}

/**
 * Checks a request's worker credentials: a worker listed in
 * `auth.worker_tokens` must present that token (a signed token or the shared
 * token is refused for it); others may use a signed token, then the shared
 * token. (The reference tried signed tokens first, letting any holder of the
 * signing key impersonate a worker that has its own token.) Then
 * the proven worker must be the one named by the route and hold `scope`.
 *
 * @param requestedWorkerId the worker the route acts on (`:id`).
 * @throws StacyError `UNAVAILABLE` (no worker credential configured),
 *   `UNAUTHORIZED` (missing or wrong credentials), `FORBIDDEN` (another
 *   worker's route, or a signed token without `scope`).
 */
export function authenticateWorker(
  req: FastifyRequest,
  o: WorkerAuthOptions,
  requestedWorkerId: string,
  scope: WorkerScope,
): AuthenticatedWorker {
  if (!workerAuthConfigured(o)) throw new StacyError('UNAVAILABLE', NOT_CONFIGURED);
  const workerId = header(req, 'x-worker-id');
  const token = presentedToken(req);
  if (workerId === undefined || token === undefined) {
    throw new StacyError('UNAUTHORIZED', BAD_CREDENTIALS);
  }
  const worker = identify(o, workerId, token);
  if (worker === undefined) throw new StacyError('UNAUTHORIZED', BAD_CREDENTIALS);
  if (worker.workerId !== requestedWorkerId) throw new StacyError('FORBIDDEN', MISMATCH);
  if (!worker.scopes.includes(scope)) throw new StacyError('FORBIDDEN', SCOPE_MISSING);
  return worker;
}

function identify(
  o: WorkerAuthOptions,
  workerId: string,
  token: string,
): AuthenticatedWorker | undefined {
  const own = o.perWorkerTokens.get(workerId);
  if (own !== undefined) {
    // A worker with its own token proves itself with that token only: not
    // the shared one, and not a signed token that any holder of the
    // signing key could mint for it.
    return safeEqual(token, own) ? { workerId, via: 'per-worker', scopes: ALL_SCOPES } : undefined;
  }
  const keys = normalizeWorkerSigningKeys(o.signingKeys);
  if (keys.length > 0 && token.startsWith(`${WORKER_TOKEN_PREFIX}.`)) {
    try {
      const verified = verifyWorkerToken(token, {
        keys,
        audience: WORKER_AUDIENCE_CONTROL_PLANE,
        workerId,
        revokedIds: o.revokedTokenIds,
        nowMs: o.nowMs(),
      });
      return { workerId, via: 'signed', scopes: verified.scopes };
    } catch {
      // The precise reason stays server-side: telling a caller why its
      // forged or stale token failed only helps it.
      return undefined;
    }
  }
  if (o.sharedToken !== '' && safeEqual(token, o.sharedToken)) {
    return { workerId, via: 'shared', scopes: ALL_SCOPES };
  }
  return undefined;
}

// Static tokens carry no scopes: they grant the whole worker role, as in the reference.
const ALL_SCOPES: readonly WorkerScope[] = WORKER_SCOPES;

/**
 * A route `onRequest` hook that authenticates the worker named by the
 * route's `:id` and stores it on `req.worker`; refusals are sent in the
 * error envelope before the body is read.
 */
export function requireWorker(
  o: WorkerAuthOptions,
  scope: WorkerScope,
): (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined> {
  return async (req, reply) => {
    const params = req.params as Record<string, unknown> | undefined;
    const id = typeof params?.['id'] === 'string' ? params['id'] : '';
    try {
      req.worker = authenticateWorker(req, o, id, scope);
      return undefined;
    } catch (err) {
      const e = err instanceof StacyError ? err : new StacyError('UNAUTHORIZED', BAD_CREDENTIALS);
      return reply.status(e.status).type('application/json').send(toErrorBody(e, req.id));
    }
  };
}
