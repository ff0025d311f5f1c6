import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { verifyWorkerToken } from '../domain/worker-token.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const ADMIN_KEY = 'admin-key-0123456789abcdef0123456789abcd';
const SHARED = 'shared-worker-token-0123456789abcdef0123';
const SIGNING_KEY = 'signing-key-0123456789abcdef0123456789ab';

const admin = { 'x-admin-api-key': ADMIN_KEY };
const worker = (id: string) => ({ 'x-worker-id': id, 'x-worker-token': SHARED });

describe('admin worker routes: token issuer, drain, lease renewal', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
      c.auth.admin_fallback_enabled = false;
      c.auth.worker_token = SHARED;
      c.auth.worker_signing_key = SIGNING_KEY;
    });
  });
  afterAll(async () => {
    await h.close();
  });

  it('issues a signed token that verifies for that worker and audience, and never for another', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/admin/worker-tokens',
      headers: admin,
      body: { worker_id: 'worker-a', ttl: '2m' },
    });
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json<{
      token: string;
      worker_id: string;
      expires_at: string;
      audience: string;
    }>();
    expect(body.worker_id).toBe('worker-a');
    expect(body.audience).toBe('worker:control-plane');
    const left = Date.parse(body.expires_at) - Date.now();
    expect(left).toBeGreaterThan(100_000);
    expect(left).toBeLessThanOrEqual(120_000);
    const ok = verifyWorkerToken(body.token, {
      keys: [SIGNING_KEY],
      audience: 'worker:control-plane',
      workerId: 'worker-a',
      nowMs: Date.now(),
    });
    expect(ok.claims.worker_id).toBe('worker-a');
    expect(() =>
      verifyWorkerToken(body.token, {
        keys: [SIGNING_KEY],
        audience: 'worker:control-plane',
        workerId: 'worker-b',
        nowMs: Date.now(),
      }),
    ).toThrow();
    // The issued token is accepted on the heartbeat route of that worker.
    const beat = await h.request({
      method: 'POST',
      url: '/api/v1/worker/worker-a/heartbeat',
      headers: { 'x-worker-id': 'worker-a', 'x-worker-token': body.token },
      body: { hostname: 'h' },
    });
    expect(beat.statusCode, beat.body).toBe(200);
  });

  it.each([
    [{ worker_id: '' }, 'worker_id'],
    [{ worker_id: 'w', ttl: '16m' }, 'ttl'],
    [{ worker_id: 'w', ttl: 'soon' }, 'ttl'],
    [{ worker_id: 'w', scopes: ['admin:all'] }, 'scopes[0]'],
    [{ worker_id: 'w', audience: 'api' }, 'audience'],
  ])('refuses a bad issue request %j naming %s', async (body, field) => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/admin/worker-tokens',
      headers: admin,
      body,
    });
    expect(res.statusCode, res.body).toBe(400);
    expect(JSON.stringify(res.json())).toContain(field);
    expect(res.body).not.toContain(SIGNING_KEY);
  });

  it('the issuer needs the admin key', async () => {
    const tries: Record<string, string>[] = [{}, { 'x-api-key': API_KEY }, worker('worker-a')];
    for (const headers of tries) {
      const res = await h.request({
        method: 'POST',
        url: '/api/v1/admin/worker-tokens',
        headers,
        body: { worker_id: 'worker-a' },
      });
      expect([401, 403]).toContain(res.statusCode);
    }
  });

  it('lease renewal: the holder renews (same generation, later expiry); others get 409; bad ttl 400', async () => {
    const id = await h.spawn({ provider: 'mock' });
    const before = await h.cp.store.leases.get(id);
    expect(before?.holderId).toBe('local');
    const renewed = await h.request({
      method: 'POST',
      url: `/api/v1/admin/workers/local/leases/${id}/renew`,
      headers: admin,
      body: { ttl: '2h' },
    });
    expect(renewed.statusCode, renewed.body).toBe(200);
    const lease = renewed.json<{
      lease: { generation: number; expires_at: string; holder_id: string };
    }>().lease;
    expect(lease.holder_id).toBe('local');
    expect(lease.generation).toBe(before?.generation);
    expect(Date.parse(lease.expires_at)).toBeGreaterThan(Date.now() + 100 * 60_000);

    const other = await h.request({
      method: 'POST',
      url: `/api/v1/worker/worker-a/leases/${id}/renew`,
      headers: worker('worker-a'),
      body: { ttl: '30s' },
    });
    expect(other.statusCode, other.body).toBe(409);
    const bad = await h.request({
      method: 'POST',
      url: `/api/v1/worker/worker-a/leases/${id}/renew`,
      headers: worker('worker-a'),
      body: { ttl: '-5s' },
    });
    expect(bad.statusCode, bad.body).toBe(400);
    const otherWorkersRoute = await h.request({
      method: 'POST',
      url: `/api/v1/worker/worker-b/leases/${id}/renew`,
      headers: worker('worker-a'),
      body: { ttl: '30s' },
    });
    expect(otherWorkersRoute.statusCode).toBe(403);
  });
  it('drain: unknown worker 404, the local worker 400, a worker with no rpc_url 503', async () => {
    const unknown = await h.request({
      method: 'POST',
      url: '/api/v1/admin/workers/nope/drain',
      headers: admin,
    });
    expect(unknown.statusCode).toBe(404);
    const local = await h.request({
      method: 'POST',
      url: '/api/v1/admin/workers/local/drain',
      headers: admin,
    });
    expect(local.statusCode).toBe(400);
    expect(local.json<{ message: string }>().message).toContain('SIGTERM');
    await h.request({
      method: 'POST',
      url: '/api/v1/worker/no-rpc/heartbeat',
      headers: worker('no-rpc'),
      body: { hostname: 'h', providers: ['mock'] },
    });
    const noRpc = await h.request({
      method: 'POST',
      url: '/api/v1/admin/workers/no-rpc/drain',
      headers: admin,
    });
    expect(noRpc.statusCode, noRpc.body).toBe(503);
    expect(noRpc.json<{ message: string }>().message).toContain('rpc_url');
  });

  it('a worker without rpc_url is passed over by placement, and the preflight says why', async () => {
    await h.request({ method: 'DELETE', url: '/api/v1/admin/workers/local', headers: admin });
    const pre = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes/admission',
      headers: { 'x-api-key': API_KEY },
      body: { provider: 'mock' },
    });
    expect(pre.statusCode, pre.body).toBe(200);
    const d = pre.json<{ allowed: boolean; rejected_workers: Record<string, string> }>();
    expect(d.allowed).toBe(false);
    expect(d.rejected_workers['no-rpc']).toContain('unreachable');
    const spawn = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      headers: { 'x-api-key': API_KEY },
      body: { provider: 'mock' },
    });
    expect(spawn.statusCode).toBe(429);
  });
});

describe('the worker token issuer without an admin key', () => {
  it('refuses even when the API key is accepted on admin routes through admin_fallback_enabled', async () => {
    const h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = '';
      c.auth.admin_fallback_enabled = true;
      c.auth.worker_signing_key = SIGNING_KEY;
    });
    try {
      const res = await h.request({
        method: 'POST',
        url: '/api/v1/admin/worker-tokens',
        headers: { 'x-api-key': API_KEY },
        body: { worker_id: 'worker-a' },
      });
      expect(res.statusCode, res.body).toBe(403);
      expect(res.body).toContain('auth.admin_api_key');
      expect(res.body).not.toContain('stacyvm-worker-v1.');
    } finally {
      await h.close();
    }
  });
});
