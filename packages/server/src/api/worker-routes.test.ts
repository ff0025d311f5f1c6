import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { LINT_CHECKS, lintConfig } from '../config/lint-config.js';
import { redactConfig } from '../config/load-config.js';
import { defaultConfig } from '../config/schema.js';
import { issueWorkerToken, signWorkerToken } from '../domain/worker-token.js';
import { parseWorkerTokenEntries } from './plugins/worker-auth.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const SHARED = 'shared-worker-token-0123456789abcdef0123';
const W1_TOKEN = 'w1-own-token-0123456789abcdef0123456789';
const SIGNING_KEY = 'signing-key-0123456789abcdef0123456789ab';
const OLD_KEY = 'old-signing-key-0123456789abcdef01234567';

const HEARTBEAT = {
  hostname: 'host-a',
  providers: ['mock'],
  capabilities: ['remote_worker', 'heartbeat'],
  capacity: { max_sandboxes: 0, rpc_url: 'http://127.0.0.1:9' },
};

function beat(
  h: Harness,
  pathId: string,
  headers: Record<string, string>,
  body: unknown = HEARTBEAT,
): ReturnType<Harness['request']> {
  return h.request({ method: 'POST', url: `/api/v1/worker/${pathId}/heartbeat`, body, headers });
}

function creds(id: string, token: string): Record<string, string> {
  return { 'x-worker-id': id, 'x-worker-token': token };
}

function signed(workerId: string, over: { audience?: 'worker:rpc'; scopes?: string[] } = {}) {
  return issueWorkerToken(
    {
      workerId,
      ...(over.audience !== undefined ? { audience: over.audience } : {}),
      ...(over.scopes !== undefined ? { scopes: over.scopes } : {}),
    },
    SIGNING_KEY,
    Date.now(),
  );
}

describe('worker heartbeat route with every kind of worker credential', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.worker_token = SHARED;
      c.auth.worker_tokens = [`w1=${W1_TOKEN}`];
      c.auth.worker_signing_key = SIGNING_KEY;
      c.auth.worker_signing_keys = [OLD_KEY];
      c.auth.worker_revoked_token_ids = ['revoked-jti'];
    });
  });
  afterAll(async () => {
    await h.close();
  });

  it('accepts the shared token and lists the worker as fresh', async () => {
    const res = await beat(h, 'shared-w', creds('shared-w', SHARED));
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({
      id: 'shared-w',
      hostname: 'host-a',
      status: 'online',
      providers: ['mock'],
      capabilities: ['remote_worker', 'heartbeat'],
      capacity: { max_sandboxes: 0, rpc_url: 'http://127.0.0.1:9' },
      stale: false,
    });
    const list = await h.request({
      method: 'GET',
      url: '/api/v1/workers',
      headers: { 'x-api-key': API_KEY },
    });
    const found = list
      .json<Array<{ id: string; stale: boolean }>>()
      .find((w) => w.id === 'shared-w');
    expect(found).toMatchObject({ id: 'shared-w', stale: false });
  });

  it('keeps created_at and stores the given status on a second beat (upsert)', async () => {
    const first = await beat(h, 'upsert-w', creds('upsert-w', SHARED));
    const second = await beat(h, 'upsert-w', creds('upsert-w', SHARED), {
      ...HEARTBEAT,
      hostname: 'host-b',
      status: 'draining',
      unknown_field: 'ignored',
    });
    expect(second.statusCode, second.body).toBe(200);
    expect(second.json()).toMatchObject({
      hostname: 'host-b',
      status: 'draining',
      created_at: first.json<{ created_at: string }>().created_at,
    });
    const one = await h.request({
      method: 'GET',
      url: '/api/v1/workers/upsert-w',
      headers: { 'x-api-key': API_KEY },
    });
    expect(one.json()).toEqual(second.json());
  });

  it('accepts a per-worker token for its own worker, also as a Bearer token', async () => {
    expect((await beat(h, 'w1', creds('w1', W1_TOKEN))).statusCode).toBe(200);
    const bearer = await beat(h, 'w1', {
      'x-worker-id': 'w1',
      authorization: `Bearer ${W1_TOKEN}`,
    });
    expect(bearer.statusCode, bearer.body).toBe(200);
  });

  it('refuses a per-worker token on another worker id (403) and a wrong one (401)', async () => {
    const other = await beat(h, 'w2', creds('w1', W1_TOKEN));
    expect(other.statusCode).toBe(403);
    expect(other.json()).toMatchObject({
      code: 'FORBIDDEN',
      message: 'worker credential does not match requested worker',
    });
    const claimed = await beat(h, 'w2', creds('w2', W1_TOKEN));
    expect(claimed.statusCode).toBe(401);
    const wrong = await beat(h, 'w1', creds('w1', `${W1_TOKEN}x`));
    expect(wrong.statusCode).toBe(401);
    expect(wrong.json()).toMatchObject({
      code: 'UNAUTHORIZED',
      message: 'invalid or missing worker credentials',
    });
    expect(wrong.body).not.toContain(W1_TOKEN);
  });

  it('refuses the shared token for a worker that has its own token', async () => {
    expect((await beat(h, 'w1', creds('w1', SHARED))).statusCode).toBe(401);
  });

  it('refuses a validly signed token for a worker that has its own token (no impersonation by key holders)', async () => {
    expect((await beat(h, 'w1', creds('w1', signed('w1').token))).statusCode).toBe(401);
    expect((await beat(h, 'w1', creds('w1', W1_TOKEN))).statusCode).toBe(200);
  });

  it('accepts a signed token, also one signed with a rotation key', async () => {
    const ok = await beat(h, 'signed-w', creds('signed-w', signed('signed-w').token));
    expect(ok.statusCode, ok.body).toBe(200);
    const old = issueWorkerToken({ workerId: 'signed-w' }, OLD_KEY, Date.now()).token;
    expect((await beat(h, 'signed-w', creds('signed-w', old))).statusCode).toBe(200);
  });

  it('refuses expired, revoked, wrong-audience, foreign and unsigned tokens with 401', async () => {
    const nowS = Math.floor(Date.now() / 1000);
    const expired = signWorkerToken(
      { worker_id: 'sw', aud: 'worker:control-plane', iat: nowS - 120, exp: nowS - 60 },
      SIGNING_KEY,
    );
    const revoked = issueWorkerToken(
      { workerId: 'sw', tokenId: 'revoked-jti' },
      SIGNING_KEY,
      Date.now(),
    ).token;
    const rpcAudience = signed('sw', { audience: 'worker:rpc' }).token;
    const otherWorker = signed('someone-else').token;
    const badKey = issueWorkerToken({ workerId: 'sw' }, 'not-our-key', Date.now()).token;
    for (const token of [expired, revoked, rpcAudience, otherWorker, badKey]) {
      const res = await beat(h, 'sw', creds('sw', token));
      expect(res.statusCode, token).toBe(401);
      expect(res.json()).toMatchObject({ message: 'invalid or missing worker credentials' });
    }
  });

  it('refuses a signed token without the heartbeat scope (403)', async () => {
    const res = await beat(h, 'sw', creds('sw', signed('sw', { scopes: ['worker:lease'] }).token));
    expect(res.statusCode).toBe(403);
  });

  it('refuses missing credentials and a missing X-Worker-ID with 401', async () => {
    expect((await beat(h, 'sw', {})).statusCode).toBe(401);
    expect((await beat(h, 'sw', { 'x-worker-token': SHARED })).statusCode).toBe(401);
    expect((await beat(h, 'sw', { 'x-worker-id': 'sw' })).statusCode).toBe(401);
  });

  it('does not accept the API key on the worker route', async () => {
    const res = await beat(h, 'sw', { 'x-api-key': API_KEY, 'x-worker-id': 'sw' });
    expect(res.statusCode).toBe(401);
    const asToken = await beat(h, 'sw', creds('sw', API_KEY));
    expect(asToken.statusCode).toBe(401);
  });

  it('does not accept worker tokens on API routes', async () => {
    for (const token of [SHARED, W1_TOKEN, signed('w1').token]) {
      const res = await h.request({
        method: 'GET',
        url: '/api/v1/sandboxes',
        headers: { ...creds('w1', token), authorization: `Bearer ${token}`, 'x-api-key': token },
      });
      expect(res.statusCode).toBe(401);
      expect(res.json()).toMatchObject({ message: 'invalid or missing API key' });
    }
  });

  it("strips the control plane's reserved capability from a remote worker's heartbeat", async () => {
    const res = await beat(h, 'shared-w', creds('shared-w', SHARED), {
      ...HEARTBEAT,
      capabilities: ['remote_worker', 'control_plane'],
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json<{ capabilities: string[] }>().capabilities).toEqual(['remote_worker']);
  });

  it('refuses heartbeats for the reserved local worker id', async () => {
    const res = await beat(h, 'local', creds('local', SHARED));
    expect(res.statusCode).toBe(403);
    const local = await h.request({
      method: 'GET',
      url: '/api/v1/workers/local',
      headers: { 'x-api-key': API_KEY },
    });
    expect(local.json<{ hostname: string }>().hostname).not.toBe('host-a');
  });

  it('rejects a bad body with 400 naming the field', async () => {
    const auth = creds('body-w', SHARED);
    const missing = await beat(h, 'body-w', auth, { status: 'online' });
    expect(missing.statusCode).toBe(400);
    expect(missing.json<{ message: string }>().message).toContain('hostname');
    const empty = await beat(h, 'body-w', auth, { hostname: '' });
    expect(empty.statusCode).toBe(400);
    expect(empty.json<{ message: string }>().message).toContain('hostname');
    const wrongType = await beat(h, 'body-w', auth, { hostname: 'h', providers: 'mock' });
    expect(wrongType.statusCode).toBe(400);
    expect(wrongType.json<{ message: string }>().message).toContain('providers');
    const none = await h.request({
      method: 'POST',
      url: '/api/v1/worker/body-w/heartbeat',
      headers: auth,
    });
    expect(none.statusCode).toBe(400);
    expect(none.json<{ message: string }>().message).toContain('body');
    const blank = await h.request({
      method: 'POST',
      url: '/api/v1/worker/body-w/heartbeat',
      headers: { ...auth, 'content-type': 'application/json' },
      rawBody: '',
    });
    expect(blank.statusCode).toBe(400);
    expect(blank.json<{ message: string }>().message).toContain('body');
  });
});

describe('worker heartbeat route without worker credentials configured', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
    });
  });
  afterAll(async () => {
    await h.close();
  });

  it('answers 503 worker token is not configured, whatever is presented', async () => {
    for (const headers of [{}, creds('w', SHARED), { 'x-api-key': API_KEY }]) {
      const res = await beat(h, 'w', headers);
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({
        code: 'UNAVAILABLE',
        message: 'worker token is not configured',
      });
    }
  });
});

describe('worker credential configuration', () => {
  it('parses id=token entries and refuses malformed ones without echoing them', () => {
    expect(parseWorkerTokenEntries([' w1 = t1 ', '', 'w2=a=b'])).toEqual(
      new Map([
        ['w1', 't1'],
        ['w2', 'a=b'],
      ]),
    );
    expect(() => parseWorkerTokenEntries(['secret-without-id'])).toThrow(/worker_tokens\[0\]/);
    try {
      parseWorkerTokenEntries(['=secret-value']);
    } catch (err) {
      expect((err as Error).message).not.toContain('secret-value');
    }
    expect(() => parseWorkerTokenEntries(['w=a', 'w=b'])).toThrow(/twice/);
  });

  it('redacts per-worker tokens (keeping the id) and rotation keys', () => {
    const config = defaultConfig();
    config.auth.worker_tokens = ['w1=tttttttt'];
    config.auth.worker_signing_key = 'kkkkkkkk';
    config.auth.worker_signing_keys = ['oooo=='];
    const redacted = redactConfig(config);
    expect(redacted.auth.worker_tokens).toEqual(['w1=<redacted>']);
    expect(redacted.auth.worker_signing_key).toBe('<redacted>');
    expect(redacted.auth.worker_signing_keys).toEqual(['<redacted>']);
    expect(config.auth.worker_tokens).toEqual(['w1=tttttttt']);
  });

  it('lints per-worker tokens and signing keys without printing them', () => {
    const lint = (tweak: (c: ReturnType<typeof defaultConfig>) => void, production = true) => {
      const c = defaultConfig();
      tweak(c);
      return lintConfig(c, { production });
    };
    const named = (findings: ReturnType<typeof lintConfig>, name: string) =>
      findings.find((f) => f.name === name);
    expect(
      named(
        lint(() => undefined),
        'auth.worker_tokens',
      ),
    ).toBeUndefined();
    expect(
      named(
        lint(() => undefined),
        'auth.worker_signing_key',
      ),
    ).toBeUndefined();

    const good = lint((c) => {
      c.auth.worker_tokens = [`w1=${W1_TOKEN}`];
    });
    expect(named(good, 'auth.worker_tokens')?.level).toBe('pass');
    const weak = lint((c) => {
      c.auth.worker_tokens = ['w1=short-secret', 'broken'];
    });
    expect(named(weak, 'auth.worker_tokens')).toMatchObject({ level: 'fail' });
    expect(named(weak, 'auth.worker_tokens')?.message).toContain('[1]');
    const weakOnly = lint((c) => {
      c.auth.worker_tokens = ['w1=short-secret'];
    });
    expect(named(weakOnly, 'auth.worker_tokens')?.message).toContain('"w1"');
    expect(JSON.stringify([weak, weakOnly])).not.toContain('short-secret');

    const signedOnly = lint((c) => {
      c.auth.worker_signing_key = SIGNING_KEY;
      c.auth.worker_signing_keys = [OLD_KEY];
    });
    expect(named(signedOnly, 'auth.worker_signing_key')?.level).toBe('pass');
    const mixed = lint((c) => {
      c.auth.worker_signing_key = SIGNING_KEY;
      c.auth.worker_token = SHARED;
    });
    expect(named(mixed, 'auth.worker_signing_key')?.level).toBe('warn');
    const weakKey = lint((c) => {
      c.auth.worker_signing_key = SIGNING_KEY;
      c.auth.worker_signing_keys = ['changeme'];
    });
    expect(named(weakKey, 'auth.worker_signing_key')?.level).toBe('fail');
    expect(JSON.stringify(weakKey)).not.toContain(SIGNING_KEY);

    const documented = new Set(LINT_CHECKS.map((c) => c.name));
    for (const f of [...weak, ...mixed]) expect(documented.has(f.name), f.name).toBe(true);
  });
});
