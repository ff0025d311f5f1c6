import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const ADMIN_KEY = 'admin-key-0123456789abcdef0123456789abcd';
const PUBLIC = new Set(['/api/v1/health', '/api/v1/live', '/api/v1/ready', '/api/v1/openapi.json']);
// Long-lived or upgrade-only routes: only the rejection is checked through inject.
const STREAMING = new Set(['/api/v1/events', '/api/v1/sandboxes/{id}/exec/ws']);

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

async function routes(h: Harness): Promise<Array<{ method: Method; path: string }>> {
  const res = await h.request({ method: 'GET', url: '/api/v1/openapi.json' });
  const doc = res.json<{ paths: Record<string, Record<string, unknown>> }>();
  const out: Array<{ method: Method; path: string }> = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    // Worker routes take worker credentials, not API keys: worker-routes.test.ts has their matrix.
    if (path.startsWith('/api/v1/worker/')) continue;
    for (const m of Object.keys(methods)) {
      if (['get', 'post', 'put', 'delete'].includes(m))
        out.push({ method: m.toUpperCase() as Method, path });
    }
  }
  out.push({ method: 'GET', path: '/api/v1/openapi.json' });
  return out;
}

function fill(path: string, id: string): string {
  return path.replace('{id}', id).replace('{name}', 'mock');
}

describe('auth matrix: every route with no key, the API key and the admin key', () => {
  let h: Harness;
  let id: string;
  let all: Array<{ method: Method; path: string }>;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_api_key = ADMIN_KEY;
    });
    id = await h.spawn();
    all = await routes(h);
  });
  afterAll(async () => {
    await h.close();
  });

  it('covers the whole route table', () => {
    expect(all.length).toBeGreaterThan(25);
    expect(all.some((r) => r.path.startsWith('/api/v1/admin/'))).toBe(true);
  });

  it('rejects every non-public route without a key (401) and serves public ones', async () => {
    for (const r of all) {
      const res = await h.request({ method: r.method, url: fill(r.path, id) });
      if (PUBLIC.has(r.path)) expect([200, 503], `${r.method} ${r.path}`).toContain(res.statusCode);
      else {
        expect(res.statusCode, `${r.method} ${r.path}`).toBe(401);
        expect(res.json()).toMatchObject({
          code: 'UNAUTHORIZED',
          message: 'invalid or missing API key',
        });
      }
    }
  });

  it('rejects a wrong key with 401', async () => {
    const res = await h.request({
      method: 'GET',
      url: '/api/v1/sandboxes',
      headers: { 'x-api-key': `${API_KEY}x` },
    });
    expect(res.statusCode).toBe(401);
  });

  it('lets the API key use API routes but not admin routes (403)', async () => {
    for (const r of all) {
      if (STREAMING.has(r.path) || (r.method === 'DELETE' && r.path === '/api/v1/sandboxes/{id}'))
        continue;
      const res = await h.request({
        method: r.method,
        url: fill(r.path, id),
        headers: { 'x-api-key': API_KEY },
      });
      if (r.path.startsWith('/api/v1/admin/')) {
        expect(res.statusCode, `${r.method} ${r.path}`).toBe(403);
        expect(res.json()).toMatchObject({ code: 'FORBIDDEN', message: 'admin API key required' });
      } else if (r.path === '/api/v1/traefik/config') {
        // Admin key or the Traefik provider token only (traefik-route.test.ts has its matrix).
        expect(res.statusCode, `${r.method} ${r.path}`).toBe(403);
      } else {
        expect([401, 403], `${r.method} ${r.path}`).not.toContain(res.statusCode);
        expect(res.statusCode, `${r.method} ${r.path}`).toBeLessThan(500);
      }
    }
  });

  it('lets the admin key use every route, in either header', async () => {
    for (const r of all) {
      if (STREAMING.has(r.path) || (r.method === 'DELETE' && r.path === '/api/v1/sandboxes/{id}'))
        continue;
      for (const header of ['x-admin-api-key', 'x-api-key']) {
        const res = await h.request({
          method: r.method,
          url: fill(r.path, id),
          headers: { [header]: ADMIN_KEY },
        });
        expect([401, 403], `${r.method} ${r.path} via ${header}`).not.toContain(res.statusCode);
        expect(res.statusCode, `${r.method} ${r.path}`).toBeLessThan(500);
      }
    }
  });
});

describe('admin fallback', () => {
  it('accepts the API key on admin routes when no admin key is set and fallback is on', async () => {
    const h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_fallback_enabled = true;
    });
    try {
      const res = await h.request({
        method: 'GET',
        url: '/api/v1/admin/workers',
        headers: { 'x-api-key': API_KEY },
      });
      expect(res.statusCode).toBe(200);
    } finally {
      await h.close();
    }
  });

  it('refuses the API key on admin routes when fallback is off', async () => {
    const h = await startHarness((c) => {
      c.auth.api_key = API_KEY;
      c.auth.admin_fallback_enabled = false;
    });
    try {
      const res = await h.request({
        method: 'GET',
        url: '/api/v1/admin/workers',
        headers: { 'x-api-key': API_KEY },
      });
      expect(res.statusCode).toBe(403);
    } finally {
      await h.close();
    }
  });

  it('leaves every route open when no key is configured (loopback development mode)', async () => {
    const h = await startHarness();
    try {
      const res = await h.request({ method: 'DELETE', url: '/api/v1/admin/workers/nobody' });
      expect(res.statusCode).toBe(404);
    } finally {
      await h.close();
    }
  });
});
