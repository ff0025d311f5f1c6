/**
 * Credentials on the control plane → worker RPC path (reference spec §2.5),
 * both ends of it, as pure functions (only `node:crypto`).
 *
 * Unlike the reference (finding #3), a worker configured with its own
 * per-worker token really receives RPC: the control plane sends each worker
 * the token that worker knows, instead of the shared token to everyone.
 *
 * Tokens and keys never appear in a result, a message or a log line.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import {
  WORKER_AUDIENCE_RPC,
  WORKER_TOKEN_PREFIX,
  WorkerTokenError,
  issueWorkerToken,
  normalizeWorkerSigningKeys,
  verifyWorkerToken,
} from './worker-token.js';
import type { WorkerTokenRejection } from './worker-token.js';

/** Lifetime of the signed token the control plane mints per RPC call (reference: 5 minutes). */
export const RPC_TOKEN_TTL_MS = 5 * 60_000;

/** What a worker's RPC server accepts. */
export interface WorkerRpcCredentialOptions {
  /** This worker's id; a request must name it and a signed token must be issued for it. */
  workerId: string;
  /** The worker's own static tokens (trimmed; blanks are ignored). */
  staticTokens: readonly string[];
  /** Signing keys, active first then rotation keys (trimmed; blanks are ignored). */
  signingKeys: readonly string[];
  /** Revoked token ids (`jti`). */
  revokedTokenIds: readonly string[];
  /** Current time, epoch ms. */
  nowMs: number;
}

/** Why a presentation was refused: for the worker's own log, never for the caller. */
export type WorkerRpcCredentialRejection =
  | 'missing_worker_id'
  | 'missing_token'
  | 'worker_mismatch'
  | 'not_configured'
  | 'static_mismatch'
  | WorkerTokenRejection;

export type WorkerRpcCredentialResult =
  { ok: true; via: 'static' | 'signed' } | { ok: false; reason: WorkerRpcCredentialRejection };

/** Constant-time string equality: compares equal-length SHA-256 digests. */
export function constantTimeEqual(a: string, b: string): boolean {
  const da = createHash('sha256').update(a, 'utf8').digest();
  const db = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(da, db);
}

/**
 * Checks the credentials a control plane presents to this worker's RPC
 * server: the `X-Worker-ID` it names and the token it carries. Accepted when
 * the id is this worker's and the token equals one of the worker's static
 * tokens, or is a signed token that verifies with one of its signing keys,
 * has audience `worker:rpc`, was issued for this worker and is not revoked.
 */
export function checkWorkerRpcCredentials(
  presentedWorkerId: string | undefined,
  presentedToken: string | undefined,
  o: WorkerRpcCredentialOptions,
): WorkerRpcCredentialResult {
  const workerId = o.workerId.trim();
  const id = presentedWorkerId?.trim() ?? '';
  const token = presentedToken?.trim() ?? '';
  if (id === '') return { ok: false, reason: 'missing_worker_id' };
  if (token === '') return { ok: false, reason: 'missing_token' };
  if (workerId === '' || id !== workerId) return { ok: false, reason: 'worker_mismatch' };

  const statics = o.staticTokens.map((t) => t.trim()).filter((t) => t !== '');
  const keys = normalizeWorkerSigningKeys(o.signingKeys);
  if (statics.length === 0 && keys.length === 0) return { ok: false, reason: 'not_configured' };

  // Every static token is compared, so the time taken does not tell which one matched.
  let staticMatch = false;
  for (const candidate of statics) {
    if (constantTimeEqual(token, candidate)) staticMatch = true;
  }
  if (staticMatch) return { ok: true, via: 'static' };

  if (keys.length > 0 && token.startsWith(`${WORKER_TOKEN_PREFIX}.`)) {
    try {
      verifyWorkerToken(token, {
        keys,
        audience: WORKER_AUDIENCE_RPC,
        workerId,
        revokedIds: o.revokedTokenIds,
        nowMs: o.nowMs,
      });
      return { ok: true, via: 'signed' };
    } catch (err) {
      return { ok: false, reason: err instanceof WorkerTokenError ? err.reason : 'malformed' };
    }
  }
  return { ok: false, reason: 'static_mismatch' };
}

/** The control plane's RPC credential configuration. */
export interface RpcTokenSource {
  /** `auth.worker_tokens`: worker id → that worker's own token. */
  perWorkerTokens: ReadonlyMap<string, string>;
  /** `auth.worker_token`; empty when unset. */
  sharedToken: string;
  /** `auth.worker_signing_key`; empty when unset. */
  signingKey: string;
  /** Current time, epoch ms. */
  nowMs: number;
}

/**
 * The token the control plane sends to `workerId`'s RPC server: the worker's
 * own per-worker token if configured, else the shared token, else a freshly
 * signed `worker:rpc` token for that worker (random `jti`, `iat` = now,
 * `exp` = now + 5 minutes), else `undefined` (RPC to the worker is
 * unavailable).
 */
export function rpcTokenFor(workerId: string, o: RpcTokenSource): string | undefined {
  const own = o.perWorkerTokens.get(workerId)?.trim() ?? '';
  if (own !== '') return own;
  const shared = o.sharedToken.trim();
  if (shared !== '') return shared;
  const key = o.signingKey.trim();
  if (key === '' || workerId.trim() === '') return undefined;
  return issueWorkerToken(
    { workerId, audience: WORKER_AUDIENCE_RPC, ttlMs: RPC_TOKEN_TTL_MS },
    key,
    o.nowMs,
  ).token;
}
