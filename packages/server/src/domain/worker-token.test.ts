import { createHmac } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { StacyError } from './errors.js';
import {
  effectiveWorkerScopes,
  inspectWorkerToken,
  issueWorkerToken,
  MAX_WORKER_TOKEN_TTL_MS,
  signWorkerToken,
  verifyWorkerToken,
  WORKER_AUDIENCE_CONTROL_PLANE,
  WORKER_AUDIENCE_RPC,
  WORKER_SCOPES,
  WorkerTokenError,
} from './worker-token.js';
import type { VerifyWorkerTokenOptions, WorkerTokenRejection } from './worker-token.js';

const KEY = 'test-signing-key-0123456789abcdef';
const OLD_KEY = 'previous-signing-key-fedcba9876543210';
// 2026-01-01T00:00:00Z
const NOW = Date.UTC(2026, 0, 1);
const NOW_S = NOW / 1000;

function b64url(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}

/** Builds a token by hand, signing exactly `prefix.payload` as reference §2.4 says. */
function handMade(payloadJson: string, key = KEY, prefix = 'stacyvm-worker-v1'): string {
  const signedPart = `${prefix}.${b64url(payloadJson)}`;
  const sig = createHmac('sha256', key).update(signedPart).digest('base64url');
  return `${signedPart}.${sig}`;
}

function opts(overrides: Partial<VerifyWorkerTokenOptions> = {}): VerifyWorkerTokenOptions {
  return { keys: [KEY], audience: WORKER_AUDIENCE_CONTROL_PLANE, nowMs: NOW, ...overrides };
}

function rejection(fn: () => unknown): { reason: WorkerTokenRejection; err: WorkerTokenError } {
  try {
    fn();
  } catch (err) {
    if (err instanceof WorkerTokenError) return { reason: err.reason, err };
    throw err;
  }
  throw new Error('expected a WorkerTokenError, got success');
}

describe('signed worker tokens: wire format', () => {
  test('a token issued here equals one built by hand from the reference algorithm', () => {
    const { token } = issueWorkerToken(
      { workerId: 'worker-a', tokenId: 'certification-token-id', ttlMs: 5 * 60_000 },
      KEY,
      NOW,
    );
    const json = `{"worker_id":"worker-a","jti":"certification-token-id","aud":"worker:control-plane","exp":${NOW_S + 300},"iat":${NOW_S}}`;
    expect(token).toBe(handMade(json));
  });

  test('a hand-made token with scopes and nbf in the reference field order verifies', () => {
    const json = `{"worker_id":"worker-b","jti":"abc","aud":"worker:rpc","scopes":["worker:exec"],"exp":${NOW_S + 60},"iat":${NOW_S},"nbf":${NOW_S}}`;
    const verified = verifyWorkerToken(handMade(json), opts({ audience: WORKER_AUDIENCE_RPC }));
    expect(verified.claims).toEqual({
      worker_id: 'worker-b',
      jti: 'abc',
      aud: 'worker:rpc',
      scopes: ['worker:exec'],
      exp: NOW_S + 60,
      iat: NOW_S,
      nbf: NOW_S,
    });
    expect(verified.scopes).toEqual(['worker:exec']);
    // Same claims signed here give the same bytes.
    expect(signWorkerToken(verified.claims, KEY)).toBe(handMade(json));
  });

  test('strings are escaped like Go json.Marshal so tokens stay byte-identical', () => {
    const token = signWorkerToken({ worker_id: 'a<b>&c', exp: NOW_S + 60 }, KEY);
    expect(token).toBe(handMade(`{"worker_id":"a\\u003cb\\u003e\\u0026c","exp":${NOW_S + 60}}`));
  });

  test('issue then verify round-trips the claims and grants all scopes when none are named', () => {
    const issued = issueWorkerToken({ workerId: 'worker-a' }, KEY, NOW + 1234);
    expect(issued.claims.jti).toMatch(/^[0-9a-f]{32}$/);
    expect(issued.claims.iat).toBe(NOW_S + 1);
    expect(issued.claims.exp).toBe(NOW_S + 1 + 300);
    const verified = verifyWorkerToken(issued.token, opts({ workerId: 'worker-a' }));
    expect(verified.claims).toEqual(issued.claims);
    expect(verified.scopes).toEqual([...WORKER_SCOPES]);
    expect(verified.keyIndex).toBe(0);
    expect(inspectWorkerToken(issued.token)).toEqual(issued.claims);
  });

  test('surrounding whitespace around the token and keys is ignored, as in the reference', () => {
    const { token } = issueWorkerToken({ workerId: 'w' }, ` ${KEY}\n`, NOW);
    expect(verifyWorkerToken(`  ${token}\n`, opts({ keys: [`${KEY}  `] })).claims.worker_id).toBe(
      'w',
    );
  });
});

describe('signed worker tokens: rejections', () => {
  const good = (): string =>
    issueWorkerToken({ workerId: 'worker-a', tokenId: 'tid-1' }, KEY, NOW).token;

  test('a token whose claims were altered fails the signature check', () => {
    const [prefix, , sig] = good().split('.');
    const forged = `${prefix}.${b64url(`{"worker_id":"worker-z","exp":${NOW_S + 60}}`)}.${sig}`;
    expect(rejection(() => verifyWorkerToken(forged, opts())).reason).toBe('bad_signature');
  });

  test('a token whose signature was altered fails the signature check', () => {
    const token = good();
    const last = token.at(-2) === 'A' ? 'B' : 'A';
    const tampered = `${token.slice(0, -2)}${last}${token.slice(-1)}`;
    expect(tampered).not.toBe(token);
    expect(rejection(() => verifyWorkerToken(tampered, opts())).reason).toBe('bad_signature');
  });

  test('a token signed with another key fails the signature check', () => {
    expect(rejection(() => verifyWorkerToken(good(), opts({ keys: [OLD_KEY] }))).reason).toBe(
      'bad_signature',
    );
  });

  test('a token for the RPC audience is refused where the control-plane audience is expected', () => {
    const { token } = issueWorkerToken({ workerId: 'w', audience: WORKER_AUDIENCE_RPC }, KEY, NOW);
    const { reason, err } = rejection(() => verifyWorkerToken(token, opts()));
    expect(reason).toBe('wrong_audience');
    expect(err.message).toContain('"worker:rpc" is not the expected "worker:control-plane"');
    expect(verifyWorkerToken(token, opts({ audience: null })).claims.aud).toBe('worker:rpc');
  });

  test('a token without an audience is refused when an audience is expected', () => {
    const token = handMade(`{"worker_id":"w","exp":${NOW_S + 60}}`);
    expect(rejection(() => verifyWorkerToken(token, opts())).reason).toBe('wrong_audience');
    expect(verifyWorkerToken(token, opts({ audience: null })).claims.worker_id).toBe('w');
  });

  test('a token is valid until the second before exp and expired from exp on', () => {
    const token = good();
    const expMs = (NOW_S + 300) * 1000;
    expect(verifyWorkerToken(token, opts({ nowMs: expMs - 1 })).claims.jti).toBe('tid-1');
    const { reason, err } = rejection(() => verifyWorkerToken(token, opts({ nowMs: expMs })));
    expect(reason).toBe('expired');
    expect(err.message).toBe('worker token expired at 2026-01-01T00:05:00Z');
  });

  test('a not-before time is honoured with 30 s of clock skew', () => {
    const { token } = issueWorkerToken(
      { workerId: 'w', notBeforeDelayMs: 120_000, ttlMs: 600_000 },
      KEY,
      NOW,
    );
    expect(inspectWorkerToken(token).nbf).toBe(NOW_S + 120);
    expect(rejection(() => verifyWorkerToken(token, opts())).reason).toBe('not_yet_valid');
    expect(rejection(() => verifyWorkerToken(token, opts({ nowMs: NOW + 89_999 }))).reason).toBe(
      'not_yet_valid',
    );
    expect(verifyWorkerToken(token, opts({ nowMs: NOW + 90_000 })).claims.worker_id).toBe('w');
  });

  test('a token issued in the future beyond the skew is refused', () => {
    const token = handMade(
      `{"worker_id":"w","aud":"worker:control-plane","exp":${NOW_S + 300},"iat":${NOW_S + 31}}`,
    );
    expect(rejection(() => verifyWorkerToken(token, opts())).reason).toBe('issued_in_future');
  });

  test('a token living longer than 15 minutes is refused, with or without iat', () => {
    const withIat = handMade(
      `{"worker_id":"w","aud":"worker:control-plane","exp":${NOW_S + 901},"iat":${NOW_S}}`,
    );
    expect(rejection(() => verifyWorkerToken(withIat, opts())).reason).toBe('lifetime_too_long');
    const noIat = handMade(`{"worker_id":"w","aud":"worker:control-plane","exp":${NOW_S + 3600}}`);
    expect(rejection(() => verifyWorkerToken(noIat, opts())).reason).toBe('lifetime_too_long');
    const exactly15 = handMade(
      `{"worker_id":"w","aud":"worker:control-plane","exp":${NOW_S + 900},"iat":${NOW_S}}`,
    );
    expect(verifyWorkerToken(exactly15, opts()).claims.exp).toBe(NOW_S + 900);
    expect(rejection(() => verifyWorkerToken(exactly15, opts({ maxTtlMs: 60_000 }))).reason).toBe(
      'lifetime_too_long',
    );
  });

  test('a revoked token id is refused; other ids pass', () => {
    expect(
      rejection(() => verifyWorkerToken(good(), opts({ revokedIds: ['x', ' tid-1 '] }))).reason,
    ).toBe('revoked');
    expect(verifyWorkerToken(good(), opts({ revokedIds: ['x'] })).claims.jti).toBe('tid-1');
  });

  test('a token for another worker is refused', () => {
    const { reason, err } = rejection(() =>
      verifyWorkerToken(good(), opts({ workerId: 'worker-b' })),
    );
    expect(reason).toBe('worker_mismatch');
    expect(err.message).toBe('worker token was issued for worker "worker-a", not "worker-b"');
  });

  test('rejections are UNAUTHORIZED StacyErrors naming the reason in details', () => {
    const { err } = rejection(() => verifyWorkerToken(good(), opts({ keys: [OLD_KEY] })));
    expect(err).toBeInstanceOf(StacyError);
    expect(err.code).toBe('UNAUTHORIZED');
    expect(err.status).toBe(401);
    expect(err.details).toEqual([{ field: 'worker_token', problem: 'bad_signature' }]);
  });

  test('no key in the message of any rejection, and no token either', () => {
    const token = good();
    const cases: (() => unknown)[] = [
      () => verifyWorkerToken(token, opts({ keys: [OLD_KEY, ' '] })),
      () => verifyWorkerToken(token, opts({ keys: [KEY], nowMs: NOW + 3_600_000 })),
      () => verifyWorkerToken(token, opts({ keys: [KEY], revokedIds: ['tid-1'] })),
      () => verifyWorkerToken(`${token}x`, opts()),
      () => verifyWorkerToken(token, opts({ keys: [] })),
      () => issueWorkerToken({ workerId: 'w', ttlMs: 3_600_000 }, KEY, NOW),
    ];
    for (const run of cases) {
      let message = '';
      try {
        run();
      } catch (err) {
        message = err instanceof Error ? `${err.message} ${JSON.stringify(err)}` : String(err);
      }
      expect(message).not.toBe('');
      expect(message).not.toContain(KEY);
      expect(message).not.toContain(OLD_KEY);
      expect(message).not.toContain(token.split('.')[2] ?? 'unreachable');
    }
  });

  test('verification without any key is UNAVAILABLE, not a client error', () => {
    expect(() => verifyWorkerToken(good(), opts({ keys: ['', '  '] }))).toThrow(
      expect.objectContaining({ code: 'UNAVAILABLE' }),
    );
  });
});

describe('signed worker tokens: malformed input', () => {
  const sig = 'A'.repeat(43);
  const cases: [string, string, string][] = [
    ['an empty string', '', 'empty'],
    ['a wrong prefix', `stacyvm-worker-v2.${b64url('{}')}.${sig}`, 'does not start with'],
    ['a JWT', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln', 'does not start with'],
    ['a missing signature', `stacyvm-worker-v1.${b64url('{}')}`, 'got 2'],
    ['only the prefix', 'stacyvm-worker-v1', 'got 1'],
    ['an extra part', `stacyvm-worker-v1.${b64url('{}')}.${sig}.x`, 'got 4'],
    ['claims that are not base64url', `stacyvm-worker-v1.e30=.${sig}`, 'not base64url'],
    ['claims with a foreign character', `stacyvm-worker-v1.e3$0.${sig}`, 'not base64url'],
    ['empty claims', `stacyvm-worker-v1..${sig}`, 'not base64url'],
    ['a short signature', `stacyvm-worker-v1.${b64url('{}')}.abc`, 'signature part'],
    [
      'a signature with padding',
      `stacyvm-worker-v1.${b64url('{}')}.${'A'.repeat(42)}=`,
      'signature part',
    ],
    ['claims that are not JSON', `stacyvm-worker-v1.${b64url('{nope')}.${sig}`, 'not valid JSON'],
    ['claims that are an array', `stacyvm-worker-v1.${b64url('[1]')}.${sig}`, 'not a JSON object'],
    [
      'claims without worker_id',
      `stacyvm-worker-v1.${b64url('{"exp":5}')}.${sig}`,
      'worker_id is missing',
    ],
    [
      'claims without exp',
      `stacyvm-worker-v1.${b64url('{"worker_id":"w"}')}.${sig}`,
      'exp is missing',
    ],
    [
      'a fractional exp',
      `stacyvm-worker-v1.${b64url('{"worker_id":"w","exp":1.5}')}.${sig}`,
      'exp is not an integer',
    ],
    [
      'scopes that are not strings',
      `stacyvm-worker-v1.${b64url('{"worker_id":"w","exp":5,"scopes":[1]}')}.${sig}`,
      'scopes is not a list',
    ],
    ['an oversized token', `stacyvm-worker-v1.${'A'.repeat(9000)}.${sig}`, 'longer than'],
  ];

  test.each(cases)('inspect and verify both refuse %s with a clear reason', (_name, token, why) => {
    const inspected = rejection(() => inspectWorkerToken(token));
    expect(inspected.reason).toBe('malformed');
    expect(inspected.err.code).toBe('BAD_REQUEST');
    expect(inspected.err.message).toMatch(/^malformed worker token: /);
    expect(inspected.err.message).toContain(why);
    const verified = rejection(() => verifyWorkerToken(token, opts()));
    expect(verified.reason).toBe('malformed');
    expect(verified.err.code).toBe('UNAUTHORIZED');
    expect(verified.err.message).toContain(why);
  });

  test('correctly signed but unparsable claims are reported as malformed, not as a bad signature', () => {
    expect(rejection(() => verifyWorkerToken(handMade('{nope'), opts())).reason).toBe('malformed');
  });
});

describe('signed worker tokens: key rotation', () => {
  test('a token signed with the previous key verifies while both keys are configured', () => {
    const { token } = issueWorkerToken({ workerId: 'w' }, OLD_KEY, NOW);
    const verified = verifyWorkerToken(token, opts({ keys: [KEY, OLD_KEY] }));
    expect(verified.keyIndex).toBe(1);
    expect(rejection(() => verifyWorkerToken(token, opts({ keys: [KEY] }))).reason).toBe(
      'bad_signature',
    );
  });

  test('a token signed with the new key verifies with the new key alone', () => {
    const { token } = issueWorkerToken({ workerId: 'w' }, KEY, NOW);
    expect(verifyWorkerToken(token, opts({ keys: [KEY, OLD_KEY] })).keyIndex).toBe(0);
    expect(verifyWorkerToken(token, opts({ keys: [KEY] })).keyIndex).toBe(0);
  });
});

describe('issuing signed worker tokens', () => {
  test('the TTL is capped at 15 minutes and must be at least a second', () => {
    expect(
      issueWorkerToken({ workerId: 'w', ttlMs: MAX_WORKER_TOKEN_TTL_MS }, KEY, NOW).claims.exp,
    ).toBe(NOW_S + 900);
    expect(() =>
      issueWorkerToken({ workerId: 'w', ttlMs: MAX_WORKER_TOKEN_TTL_MS + 1 }, KEY, NOW),
    ).toThrow('invalid ttl: must be at most 15m0s');
    expect(() => issueWorkerToken({ workerId: 'w', ttlMs: 0 }, KEY, NOW)).toThrow(
      'invalid ttl: must be at least 1s',
    );
  });

  test('unknown scopes, audiences, blank ids or keys and useless not-before delays are refused', () => {
    const bad = (fn: () => unknown): string => {
      try {
        fn();
      } catch (err) {
        expect(err).toMatchObject({ code: 'BAD_REQUEST' });
        return (err as Error).message;
      }
      throw new Error('expected an error');
    };
    expect(
      bad(() => issueWorkerToken({ workerId: 'w', scopes: ['worker:exce'] }, KEY, NOW)),
    ).toContain('"worker:exce" is not a worker scope');
    expect(
      bad(() =>
        issueWorkerToken(
          { workerId: 'w', audience: 'worker:other' as typeof WORKER_AUDIENCE_RPC },
          KEY,
          NOW,
        ),
      ),
    ).toContain('invalid audience');
    expect(bad(() => issueWorkerToken({ workerId: '  ' }, KEY, NOW))).toContain('worker id');
    expect(bad(() => issueWorkerToken({ workerId: 'w' }, ' ', NOW))).toBe(
      'worker signing key is required',
    );
    expect(
      bad(() =>
        issueWorkerToken({ workerId: 'w', ttlMs: 60_000, notBeforeDelayMs: 60_000 }, KEY, NOW),
      ),
    ).toContain('never valid');
  });

  test('named scopes are carried and become the granted scopes', () => {
    const { token } = issueWorkerToken(
      { workerId: 'w', scopes: ['worker:heartbeat', 'worker:lease'] },
      KEY,
      NOW,
    );
    expect(verifyWorkerToken(token, opts()).scopes).toEqual(['worker:heartbeat', 'worker:lease']);
  });

  test('unknown claimed scopes are ignored and an all-unknown list grants every scope, as in the reference', () => {
    expect(effectiveWorkerScopes({ worker_id: 'w', exp: 1, scopes: ['worker:exec', 'x'] })).toEqual(
      ['worker:exec'],
    );
    expect(effectiveWorkerScopes({ worker_id: 'w', exp: 1, scopes: ['x'] })).toEqual([
      ...WORKER_SCOPES,
    ]);
  });
});
