/**
 * Signed worker identity tokens, wire-compatible with the Go original
 * (reference spec §2.4):
 *
 * `stacyvm-worker-v1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "stacyvm-worker-v1.<claims-b64>"))>`
 *
 * Pure apart from `node:crypto`: callers pass the clock and the keys. Keys are
 * never part of any message, and rejections do not echo the token either,
 * because a token is itself a bearer credential.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { StacyError } from './errors.js';
import type { ErrorCode } from './errors.js';

/** First segment of every signed worker token. */
export const WORKER_TOKEN_PREFIX = 'stacyvm-worker-v1';

/** Audience of tokens a worker presents to the control plane (heartbeat, lease renew). */
export const WORKER_AUDIENCE_CONTROL_PLANE = 'worker:control-plane';
/** Audience of tokens the control plane presents to a worker's `/rpc`. */
export const WORKER_AUDIENCE_RPC = 'worker:rpc';

export const WORKER_TOKEN_AUDIENCES = [WORKER_AUDIENCE_CONTROL_PLANE, WORKER_AUDIENCE_RPC] as const;
export type WorkerTokenAudience = (typeof WORKER_TOKEN_AUDIENCES)[number];

/** Every scope of the `worker` role (reference §2.2). */
export const WORKER_SCOPES = [
  'worker:heartbeat',
  'worker:spawn',
  'worker:destroy',
  'worker:status',
  'worker:exec',
  'worker:files',
  'worker:logs',
  'worker:lease',
] as const;
export type WorkerScope = (typeof WORKER_SCOPES)[number];

/** Longest lifetime a token may have (`exp - iat`), as in the reference. */
export const MAX_WORKER_TOKEN_TTL_MS = 15 * 60_000;
/** Lifetime of a token when none is asked for. */
export const DEFAULT_WORKER_TOKEN_TTL_MS = 5 * 60_000;
/** Tolerance for `nbf`/`iat` set slightly ahead by a peer whose clock runs fast. */
export const WORKER_TOKEN_CLOCK_SKEW_MS = 30_000;
/** Far above any real token; bounds the work done on attacker-supplied input. */
export const MAX_WORKER_TOKEN_LENGTH = 8192;

/**
 * Claims of a signed worker token, with the wire names. Times are Unix
 * seconds. Optional members are absent (never empty) when unset, matching
 * Go's `omitempty`.
 */
export interface WorkerTokenClaims {
  worker_id: string;
  /** Token id, the handle for revocation (`auth.worker_revoked_token_ids`). */
  jti?: string;
  aud?: string;
  scopes?: string[];
  exp: number;
  iat?: number;
  nbf?: number;
}

/** Why a token was refused; carried by {@link WorkerTokenError}. */
export type WorkerTokenRejection =
  | 'malformed'
  | 'bad_signature'
  | 'wrong_audience'
  | 'expired'
  | 'not_yet_valid'
  | 'issued_in_future'
  | 'lifetime_too_long'
  | 'revoked'
  | 'worker_mismatch';

/**
 * A refused or unreadable token. It is a {@link StacyError} (UNAUTHORIZED from
 * {@link verifyWorkerToken}, BAD_REQUEST from {@link inspectWorkerToken}) that
 * also names the precise {@link WorkerTokenRejection}.
 */
export class WorkerTokenError extends StacyError {
  readonly reason: WorkerTokenRejection;

  constructor(code: ErrorCode, reason: WorkerTokenRejection, message: string) {
    super(code, message, { details: [{ field: 'worker_token', problem: reason }] });
    this.name = 'WorkerTokenError';
    this.reason = reason;
  }
}

/** What to put in a new token; everything but the worker id has a default. */
export interface WorkerTokenIssueRequest {
  workerId: string;
  /** Lifetime; default 5 minutes, at least 1 s, at most {@link MAX_WORKER_TOKEN_TTL_MS}. */
  ttlMs?: number;
  /** Default {@link WORKER_AUDIENCE_CONTROL_PLANE}. */
  audience?: WorkerTokenAudience;
  /** Explicit `jti` (e.g. for incident tracking); default 16 random bytes as hex. */
  tokenId?: string;
  /** Subset of {@link WORKER_SCOPES}; absent or empty means every worker scope. */
  scopes?: readonly string[];
  /** Delay before the token becomes valid; default 0 (no `nbf` claim). */
  notBeforeDelayMs?: number;
}

/** A freshly signed token and the claims it carries. */
export interface IssuedWorkerToken {
  token: string;
  claims: WorkerTokenClaims;
}

/** Inputs of {@link verifyWorkerToken}. */
export interface VerifyWorkerTokenOptions {
  /** Active key first, then rotation keys; trimmed, blanks and duplicates dropped. */
  keys: readonly string[];
  /**
   * Audience the token must carry. `null` accepts any audience (only for
   * diagnostics such as `stacyvm worker token verify` without `--audience`).
   */
  audience: WorkerTokenAudience | null;
  /** When set, the token must have been issued for this worker. */
  workerId?: string;
  /** Revoked `jti` values. */
  revokedIds?: Iterable<string>;
  nowMs: number;
  /** Longest accepted lifetime; default {@link MAX_WORKER_TOKEN_TTL_MS}. */
  maxTtlMs?: number;
}

/** A token whose signature and claims were checked. */
export interface VerifiedWorkerToken {
  claims: WorkerTokenClaims;
  /** Scopes granted: the claimed known worker scopes, or all of them when none is claimed. */
  scopes: WorkerScope[];
  /** Position in the cleaned key list of the key that verified it (0 = active key). */
  keyIndex: number;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
// HMAC-SHA256 is 32 bytes: 43 base64url characters without padding.
const SIGNATURE_LENGTH = 43;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

function isAudience(value: string): value is WorkerTokenAudience {
  return (WORKER_TOKEN_AUDIENCES as readonly string[]).includes(value);
}

function isWorkerScope(value: string): value is WorkerScope {
  return (WORKER_SCOPES as readonly string[]).includes(value);
}

/** Go's `json.Marshal` escapes these inside strings; doing the same keeps issued tokens byte-identical. */
function goJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

function hmacB64(key: string, signedPart: string): string {
  return createHmac('sha256', key).update(signedPart, 'utf8').digest('base64url');
}

/** Trims keys and drops blanks and duplicates, as the reference does. */
export function normalizeWorkerSigningKeys(keys: readonly string[]): string[] {
  const out: string[] = [];
  for (const raw of keys) {
    const key = raw.trim();
    if (key !== '' && !out.includes(key)) out.push(key);
  }
  return out;
}

/** Unix seconds as RFC 3339 UTC without fractions (Go's `time.RFC3339`). */
export function formatUnixSeconds(seconds: number): string {
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * Signs exactly the given claims. Field order follows the Go struct
 * (`worker_id, jti, aud, scopes, exp, iat, nbf`) and unset fields are left out,
 * so the same claims give the same token as the Go original.
 *
 * @throws StacyError `BAD_REQUEST` when the key is blank or the claims lack `worker_id`/`exp`.
 */
export function signWorkerToken(claims: WorkerTokenClaims, signingKey: string): string {
  const key = signingKey.trim();
  if (key === '') throw new StacyError('BAD_REQUEST', 'worker signing key is required');
  const workerId = claims.worker_id.trim();
  if (workerId === '') throw new StacyError('BAD_REQUEST', 'worker id is required');
  if (!Number.isSafeInteger(claims.exp) || claims.exp <= 0) {
    throw new StacyError('BAD_REQUEST', 'worker token exp must be a positive Unix time');
  }
  const ordered: Record<string, unknown> = { worker_id: workerId };
  if (claims.jti !== undefined && claims.jti !== '') ordered['jti'] = claims.jti;
  if (claims.aud !== undefined && claims.aud !== '') ordered['aud'] = claims.aud;
  if (claims.scopes !== undefined && claims.scopes.length > 0) ordered['scopes'] = claims.scopes;
  ordered['exp'] = claims.exp;
  if (claims.iat !== undefined && claims.iat !== 0) ordered['iat'] = claims.iat;
  if (claims.nbf !== undefined && claims.nbf !== 0) ordered['nbf'] = claims.nbf;
  const payload = Buffer.from(goJson(ordered), 'utf8').toString('base64url');
  const signedPart = `${WORKER_TOKEN_PREFIX}.${payload}`;
  return `${signedPart}.${hmacB64(key, signedPart)}`;
}

/** A fresh random token id: 16 random bytes as hex, like the reference. */
export function newWorkerTokenId(): string {
  return randomBytes(16).toString('hex');
}

/**
 * Issues a signed token valid from `nowMs` (or `nowMs + notBeforeDelayMs`)
 * for `ttlMs`.
 *
 * @throws StacyError `BAD_REQUEST` naming the offending input (TTL out of
 *   range, unknown audience or scope, blank worker id or key).
 */
export function issueWorkerToken(
  request: WorkerTokenIssueRequest,
  signingKey: string,
  nowMs: number,
): IssuedWorkerToken {
  const bad = (field: string, problem: string): StacyError =>
    new StacyError('BAD_REQUEST', `invalid ${field}: ${problem}`, {
      details: [{ field, problem }],
    });
  const workerId = request.workerId.trim();
  if (workerId === '') throw bad('worker_id', 'worker id is required');
  if (CONTROL_CHARS.test(workerId)) throw bad('worker_id', 'must not contain control characters');
  if (signingKey.trim() === '')
    throw new StacyError('BAD_REQUEST', 'worker signing key is required');
  const ttlMs = request.ttlMs ?? DEFAULT_WORKER_TOKEN_TTL_MS;
  if (!Number.isFinite(ttlMs) || ttlMs < 1000) throw bad('ttl', 'must be at least 1s');
  if (ttlMs > MAX_WORKER_TOKEN_TTL_MS) throw bad('ttl', 'must be at most 15m0s');
  const audience = request.audience ?? WORKER_AUDIENCE_CONTROL_PLANE;
  if (!isAudience(audience)) {
    throw bad('audience', `must be "${WORKER_AUDIENCE_CONTROL_PLANE}" or "${WORKER_AUDIENCE_RPC}"`);
  }
  const notBeforeDelayMs = request.notBeforeDelayMs ?? 0;
  if (!Number.isFinite(notBeforeDelayMs) || notBeforeDelayMs < 0) {
    throw bad('not_before', 'must not be negative');
  }
  if (notBeforeDelayMs >= ttlMs) {
    throw bad('not_before', 'must be shorter than the ttl, or the token is never valid');
  }
  const tokenId = (request.tokenId ?? '').trim() || newWorkerTokenId();
  if (CONTROL_CHARS.test(tokenId)) throw bad('token_id', 'must not contain control characters');
  const scopes = (request.scopes ?? []).map((s) => s.trim());
  for (const scope of scopes) {
    // Stricter than the reference, which silently drops unknown scopes at
    // verification and then grants all of them when none is left: a typo
    // must not widen a token.
    if (!isWorkerScope(scope)) {
      throw bad('scopes', `"${scope}" is not a worker scope (${WORKER_SCOPES.join(', ')})`);
    }
  }
  const claims: WorkerTokenClaims = {
    worker_id: workerId,
    jti: tokenId,
    aud: audience,
    ...(scopes.length > 0 ? { scopes } : {}),
    exp: Math.floor((nowMs + ttlMs) / 1000),
    iat: Math.floor(nowMs / 1000),
    ...(notBeforeDelayMs > 0 ? { nbf: Math.floor((nowMs + notBeforeDelayMs) / 1000) } : {}),
  };
  return { token: signWorkerToken(claims, signingKey), claims };
}

interface DecodedToken {
  signedPart: string;
  signature: string;
  claims: WorkerTokenClaims;
}

function decode(token: string, code: ErrorCode): DecodedToken {
  const malformed = (why: string): WorkerTokenError =>
    new WorkerTokenError(code, 'malformed', `malformed worker token: ${why}`);
  const text = token.trim();
  if (text === '') throw malformed('empty');
  if (text.length > MAX_WORKER_TOKEN_LENGTH) {
    throw malformed(`longer than ${MAX_WORKER_TOKEN_LENGTH} characters`);
  }
  const parts = text.split('.');
  const [prefix, payload, signature] = parts;
  if (prefix !== WORKER_TOKEN_PREFIX) {
    throw malformed(`does not start with "${WORKER_TOKEN_PREFIX}."`);
  }
  if (parts.length !== 3 || payload === undefined || signature === undefined) {
    throw malformed(
      `expected 3 dot-separated parts (prefix, claims, signature), got ${parts.length}`,
    );
  }
  // Buffer's decoder silently skips invalid characters, so check the alphabet
  // and length first; a remainder of 1 cannot come from any byte string.
  if (payload === '' || !BASE64URL.test(payload) || payload.length % 4 === 1) {
    throw malformed('claims part is not base64url without padding');
  }
  if (!BASE64URL.test(signature) || signature.length !== SIGNATURE_LENGTH) {
    throw malformed('signature part is not a base64url HMAC-SHA256 (43 characters)');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    throw malformed('claims are not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw malformed('claims are not a JSON object');
  }
  const rec = parsed as Record<string, unknown>;
  const optionalString = (name: string): string | undefined => {
    const v = rec[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw malformed(`claim ${name} is not a string`);
    const trimmed = v.trim();
    return trimmed === '' ? undefined : trimmed;
  };
  const optionalTime = (name: string): number | undefined => {
    const v = rec[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
      throw malformed(`claim ${name} is not an integer Unix time`);
    }
    // Go treats a zero or negative time as absent.
    return v > 0 ? v : undefined;
  };
  const workerId = optionalString('worker_id');
  if (workerId === undefined) throw malformed('claim worker_id is missing');
  const exp = optionalTime('exp');
  if (exp === undefined) throw malformed('claim exp is missing');
  let scopes: string[] | undefined;
  const rawScopes = rec['scopes'];
  if (rawScopes !== undefined && rawScopes !== null) {
    if (!Array.isArray(rawScopes) || !rawScopes.every((s) => typeof s === 'string')) {
      throw malformed('claim scopes is not a list of strings');
    }
    scopes = rawScopes.length > 0 ? rawScopes : undefined;
  }
  const claims: WorkerTokenClaims = { worker_id: workerId, exp };
  const jti = optionalString('jti');
  if (jti !== undefined) claims.jti = jti;
  const aud = optionalString('aud');
  if (aud !== undefined) claims.aud = aud;
  if (scopes !== undefined) claims.scopes = scopes;
  const iat = optionalTime('iat');
  if (iat !== undefined) claims.iat = iat;
  const nbf = optionalTime('nbf');
  if (nbf !== undefined) claims.nbf = nbf;
  return { signedPart: `${prefix}.${payload}`, signature, claims };
}

/**
 * Reads a token's claims WITHOUT checking its signature. For diagnostics
 * only: the result is not an identity.
 *
 * @throws WorkerTokenError `BAD_REQUEST`, reason `malformed`, saying what is wrong.
 */
export function inspectWorkerToken(token: string): WorkerTokenClaims {
  return decode(token, 'BAD_REQUEST').claims;
}

/** Scopes a verified token grants (reference §2.4). */
export function effectiveWorkerScopes(claims: WorkerTokenClaims): WorkerScope[] {
  const known = (claims.scopes ?? []).map((s) => s.trim()).filter(isWorkerScope);
  return known.length > 0 ? known : [...WORKER_SCOPES];
}

/**
 * Verifies a token: signature (constant-time, against each key in turn),
 * expiry, not-before, lifetime, audience, worker id and revocation.
 *
 * Two rules are stricter than the reference, and both still accept every
 * token the reference itself issues: when an audience is expected the token
 * must carry it (the reference lets audience-less tokens through), and `exp`
 * may not lie further ahead than the maximum lifetime plus clock skew even
 * when `iat` is absent (the reference caps the lifetime only through `iat`).
 *
 * @throws WorkerTokenError `UNAUTHORIZED` with the precise reason.
 * @throws StacyError `UNAVAILABLE` when no usable key is given (signed tokens not configured).
 */
export function verifyWorkerToken(
  token: string,
  options: VerifyWorkerTokenOptions,
): VerifiedWorkerToken {
  const keys = normalizeWorkerSigningKeys(options.keys);
  if (keys.length === 0) {
    throw new StacyError('UNAVAILABLE', 'signed worker tokens are not configured (no signing key)');
  }
  const reject = (reason: WorkerTokenRejection, message: string): WorkerTokenError =>
    new WorkerTokenError('UNAUTHORIZED', reason, message);
  const { signedPart, signature, claims } = decode(token, 'UNAUTHORIZED');

  const presented = Buffer.from(signature, 'utf8');
  let keyIndex = -1;
  // Every key is tried even after a match, so the time taken does not reveal which key signed.
  for (const [i, key] of keys.entries()) {
    const expected = Buffer.from(hmacB64(key, signedPart), 'utf8');
    const matches = expected.length === presented.length && timingSafeEqual(expected, presented);
    if (matches && keyIndex === -1) keyIndex = i;
  }
  if (keyIndex === -1) {
    throw reject(
      'bad_signature',
      keys.length === 1
        ? 'worker token signature does not match the signing key'
        : `worker token signature matches none of the ${keys.length} verification keys`,
    );
  }

  const nowMs = options.nowMs;
  const maxTtlMs = options.maxTtlMs ?? MAX_WORKER_TOKEN_TTL_MS;
  const expMs = claims.exp * 1000;
  if (nowMs >= expMs) {
    throw reject('expired', `worker token expired at ${formatUnixSeconds(claims.exp)}`);
  }
  if (claims.nbf !== undefined && nowMs + WORKER_TOKEN_CLOCK_SKEW_MS < claims.nbf * 1000) {
    throw reject(
      'not_yet_valid',
      `worker token is not valid before ${formatUnixSeconds(claims.nbf)}`,
    );
  }
  if (claims.iat !== undefined && nowMs + WORKER_TOKEN_CLOCK_SKEW_MS < claims.iat * 1000) {
    throw reject(
      'issued_in_future',
      `worker token claims to be issued at ${formatUnixSeconds(claims.iat)}, in the future`,
    );
  }
  if (
    (claims.iat !== undefined && expMs - claims.iat * 1000 > maxTtlMs) ||
    expMs - nowMs > maxTtlMs + WORKER_TOKEN_CLOCK_SKEW_MS
  ) {
    throw reject(
      'lifetime_too_long',
      `worker token lifetime exceeds the maximum of ${Math.round(maxTtlMs / 1000)}s`,
    );
  }
  if (options.audience !== null && claims.aud !== options.audience) {
    throw reject(
      'wrong_audience',
      claims.aud === undefined
        ? `worker token has no audience; expected "${options.audience}"`
        : `worker token audience "${claims.aud}" is not the expected "${options.audience}"`,
    );
  }
  const expectedWorker = options.workerId?.trim();
  if (
    expectedWorker !== undefined &&
    expectedWorker !== '' &&
    claims.worker_id !== expectedWorker
  ) {
    throw reject(
      'worker_mismatch',
      `worker token was issued for worker "${claims.worker_id}", not "${expectedWorker}"`,
    );
  }
  if (claims.jti !== undefined && options.revokedIds !== undefined) {
    for (const id of options.revokedIds) {
      if (id.trim() === claims.jti) {
        throw reject('revoked', `worker token "${claims.jti}" has been revoked`);
      }
    }
  }
  return { claims, scopes: effectiveWorkerScopes(claims), keyIndex };
}
