import { describe, expect, test } from 'vitest';
import {
  RPC_TOKEN_TTL_MS,
  checkWorkerRpcCredentials,
  constantTimeEqual,
  rpcTokenFor,
} from './worker-credentials.js';
import type { RpcTokenSource, WorkerRpcCredentialOptions } from './worker-credentials.js';
import {
  WORKER_AUDIENCE_CONTROL_PLANE,
  WORKER_AUDIENCE_RPC,
  inspectWorkerToken,
  issueWorkerToken,
  verifyWorkerToken,
} from './worker-token.js';

const KEY = 'rpc-signing-key-0123456789abcdef';
const OLD_KEY = 'old-rpc-signing-key-fedcba987654';
const NOW = Date.UTC(2026, 0, 1);

function worker(overrides: Partial<WorkerRpcCredentialOptions> = {}): WorkerRpcCredentialOptions {
  return {
    workerId: 'worker-a',
    staticTokens: ['static-a'],
    signingKeys: [KEY],
    revokedTokenIds: [],
    nowMs: NOW,
    ...overrides,
  };
}

function rpcToken(
  workerId = 'worker-a',
  o: {
    key?: string;
    audience?: 'worker:rpc' | 'worker:control-plane';
    tokenId?: string;
    nowMs?: number;
  } = {},
): string {
  return issueWorkerToken(
    {
      workerId,
      audience: o.audience ?? WORKER_AUDIENCE_RPC,
      ttlMs: 60_000,
      ...(o.tokenId === undefined ? {} : { tokenId: o.tokenId }),
    },
    o.key ?? KEY,
    o.nowMs ?? NOW,
  ).token;
}

describe('constantTimeEqual', () => {
  test('is true only for identical strings, whatever their lengths', () => {
    expect(constantTimeEqual('abc', 'abc')).toBe(true);
    expect(constantTimeEqual('abc', 'abd')).toBe(false);
    expect(constantTimeEqual('abc', 'abcd')).toBe(false);
    expect(constantTimeEqual('', '')).toBe(true);
  });
});

describe('checkWorkerRpcCredentials (worker side)', () => {
  test("accepts the worker's own static token", () => {
    expect(checkWorkerRpcCredentials('worker-a', 'static-a', worker())).toEqual({
      ok: true,
      via: 'static',
    });
  });

  test('accepts any of several static tokens (e.g. its per-worker and a shared token)', () => {
    const o = worker({ staticTokens: ['per-worker-a', 'shared', ' '] });
    expect(checkWorkerRpcCredentials('worker-a', 'shared', o).ok).toBe(true);
    expect(checkWorkerRpcCredentials('worker-a', 'per-worker-a', o).ok).toBe(true);
    expect(checkWorkerRpcCredentials('worker-a', 'other', o)).toEqual({
      ok: false,
      reason: 'static_mismatch',
    });
  });

  test('refuses a request that names another worker, even with a valid token', () => {
    expect(checkWorkerRpcCredentials('worker-b', 'static-a', worker())).toEqual({
      ok: false,
      reason: 'worker_mismatch',
    });
  });

  test('refuses a missing worker id or token', () => {
    expect(checkWorkerRpcCredentials(undefined, 'static-a', worker()).ok).toBe(false);
    expect(checkWorkerRpcCredentials('worker-a', undefined, worker())).toEqual({
      ok: false,
      reason: 'missing_token',
    });
    expect(checkWorkerRpcCredentials('worker-a', '  ', worker()).ok).toBe(false);
  });

  test('refuses everything when the worker has neither tokens nor keys', () => {
    const o = worker({ staticTokens: [''], signingKeys: [] });
    expect(checkWorkerRpcCredentials('worker-a', 'anything', o)).toEqual({
      ok: false,
      reason: 'not_configured',
    });
  });

  test('accepts a signed worker:rpc token for this worker, also under a rotation key', () => {
    expect(checkWorkerRpcCredentials('worker-a', rpcToken(), worker())).toEqual({
      ok: true,
      via: 'signed',
    });
    const rotated = worker({ signingKeys: [KEY, OLD_KEY] });
    expect(
      checkWorkerRpcCredentials('worker-a', rpcToken('worker-a', { key: OLD_KEY }), rotated).ok,
    ).toBe(true);
  });

  test('refuses a signed token issued for another worker', () => {
    expect(checkWorkerRpcCredentials('worker-a', rpcToken('worker-b'), worker())).toEqual({
      ok: false,
      reason: 'worker_mismatch',
    });
  });

  test('refuses a signed token with the control-plane audience', () => {
    const t = rpcToken('worker-a', { audience: WORKER_AUDIENCE_CONTROL_PLANE });
    expect(checkWorkerRpcCredentials('worker-a', t, worker())).toEqual({
      ok: false,
      reason: 'wrong_audience',
    });
  });

  test('refuses an expired, a revoked and a foreign-key signed token', () => {
    const expired = rpcToken('worker-a', { nowMs: NOW - 120_000 });
    expect(checkWorkerRpcCredentials('worker-a', expired, worker())).toEqual({
      ok: false,
      reason: 'expired',
    });
    const revoked = rpcToken('worker-a', { tokenId: 'jti-1' });
    expect(
      checkWorkerRpcCredentials('worker-a', revoked, worker({ revokedTokenIds: ['jti-1'] })),
    ).toEqual({ ok: false, reason: 'revoked' });
    const foreign = rpcToken('worker-a', { key: 'some-other-key-000000000000000' });
    expect(checkWorkerRpcCredentials('worker-a', foreign, worker())).toEqual({
      ok: false,
      reason: 'bad_signature',
    });
  });

  test('refuses signed tokens when the worker has no signing key', () => {
    const o = worker({ signingKeys: [] });
    expect(checkWorkerRpcCredentials('worker-a', rpcToken(), o)).toEqual({
      ok: false,
      reason: 'static_mismatch',
    });
  });

  test('refuses a tampered signed token', () => {
    const t = rpcToken();
    const tampered = `${t.slice(0, -2)}${t.endsWith('AA') ? 'BB' : 'AA'}`;
    expect(checkWorkerRpcCredentials('worker-a', tampered, worker()).ok).toBe(false);
  });
});

describe('rpcTokenFor (control-plane side)', () => {
  function source(overrides: Partial<RpcTokenSource> = {}): RpcTokenSource {
    return {
      perWorkerTokens: new Map([['worker-a', 'per-worker-a']]),
      sharedToken: 'shared',
      signingKey: KEY,
      nowMs: NOW,
      ...overrides,
    };
  }

  test('sends a worker its own per-worker token first (fixing reference finding #3)', () => {
    expect(rpcTokenFor('worker-a', source())).toBe('per-worker-a');
  });

  test('falls back to the shared token for a worker without its own', () => {
    expect(rpcTokenFor('worker-b', source())).toBe('shared');
  });

  test('mints a fresh signed worker:rpc token when no static token applies', () => {
    const s = source({ perWorkerTokens: new Map(), sharedToken: '' });
    const t1 = rpcTokenFor('worker-b', s);
    const t2 = rpcTokenFor('worker-b', s);
    expect(t1).toBeDefined();
    expect(t1).not.toBe(t2);
    const claims = inspectWorkerToken(t1!);
    expect(claims).toMatchObject({
      worker_id: 'worker-b',
      aud: WORKER_AUDIENCE_RPC,
      iat: Math.floor(NOW / 1000),
      exp: Math.floor((NOW + RPC_TOKEN_TTL_MS) / 1000),
    });
    expect(claims.jti).toMatch(/^[0-9a-f]{32}$/);
    expect(inspectWorkerToken(t2!).jti).not.toBe(claims.jti);
    // It verifies exactly as the worker will check it.
    expect(() =>
      verifyWorkerToken(t1!, {
        keys: [KEY],
        audience: WORKER_AUDIENCE_RPC,
        workerId: 'worker-b',
        nowMs: NOW,
      }),
    ).not.toThrow();
    expect(
      checkWorkerRpcCredentials('worker-b', t1, worker({ workerId: 'worker-b', staticTokens: [] }))
        .ok,
    ).toBe(true);
  });

  test('is undefined when the control plane has no credential at all', () => {
    const s = source({ perWorkerTokens: new Map(), sharedToken: ' ', signingKey: '' });
    expect(rpcTokenFor('worker-a', s)).toBeUndefined();
  });

  test('ignores blank entries', () => {
    const s = source({ perWorkerTokens: new Map([['worker-a', '  ']]), sharedToken: '' });
    const t = rpcTokenFor('worker-a', s);
    expect(t?.startsWith('stacyvm-worker-v1.')).toBe(true);
  });
});
