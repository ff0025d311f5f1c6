import { describe, expect, it } from 'vitest';
import { startHarness } from '../../test/support/harness.js';

describe('admission under concurrency', () => {
  it('admits exactly max_sandboxes of many concurrent spawns and rejects the rest with 429', async () => {
    const h = await startHarness((c) => {
      c.defaults.max_sandboxes = 3;
    });
    try {
      const results = await Promise.all(
        Array.from({ length: 10 }, () =>
          h.request({ method: 'POST', url: '/api/v1/sandboxes', body: {} }),
        ),
      );
      const codes = results.map((r) => r.statusCode).sort();
      expect(codes.filter((c) => c === 201)).toHaveLength(3);
      expect(codes.filter((c) => c === 429)).toHaveLength(7);
      const denied = results.find((r) => r.statusCode === 429)!;
      expect(denied.json()).toMatchObject({
        code: 'RESOURCE_LIMIT',
        message: 'max sandboxes reached (3)',
      });
      expect(await h.cp.store.sandboxes.count()).toBe(3);
      const pre = await h.request({ method: 'POST', url: '/api/v1/sandboxes/admission', body: {} });
      expect(pre.json()).toMatchObject({
        allowed: false,
        reason: 'max_sandboxes',
        active_sandboxes: 3,
      });
    } finally {
      await h.close();
    }
  });

  it('caps sandboxes per owner by X-User-ID', async () => {
    const h = await startHarness((c) => {
      c.defaults.max_sandboxes_per_owner = 1;
    });
    try {
      const a1 = await h.request({
        method: 'POST',
        url: '/api/v1/sandboxes',
        body: {},
        headers: { 'x-user-id': 'alice' },
      });
      expect(a1.statusCode).toBe(201);
      expect(a1.json().owner_id).toBe('alice');
      const a2 = await h.request({
        method: 'POST',
        url: '/api/v1/sandboxes',
        body: {},
        headers: { 'x-user-id': 'alice' },
      });
      expect(a2.statusCode).toBe(429);
      const b1 = await h.request({
        method: 'POST',
        url: '/api/v1/sandboxes',
        body: {},
        headers: { 'x-user-id': 'bob' },
      });
      expect(b1.statusCode).toBe(201);
    } finally {
      await h.close();
    }
  });

  it('prunes only expired sandboxes', async () => {
    const h = await startHarness();
    try {
      const keep = await h.spawn({ ttl: '1h' });
      const expire = await h.spawn({ ttl: '1ms' });
      await new Promise((r) => setTimeout(r, 20));
      const res = await h.request({ method: 'DELETE', url: '/api/v1/sandboxes' });
      expect(res.json()).toEqual({ pruned: 1 });
      expect(
        (await h.request({ method: 'GET', url: `/api/v1/sandboxes/${keep}` })).statusCode,
      ).toBe(200);
      expect(
        (await h.request({ method: 'GET', url: `/api/v1/sandboxes/${expire}` })).statusCode,
      ).toBe(404);
    } finally {
      await h.close();
    }
  });
});
