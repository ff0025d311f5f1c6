import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';

interface ErrorJson {
  code: string;
  message: string;
  request_id: string;
  details?: Array<{ field: string; problem: string }>;
}

describe('bad input gets a 4xx envelope naming the field, and changes nothing', () => {
  let h: Harness;
  let id: string;

  beforeAll(async () => {
    h = await startHarness((c) => {
      c.server.max_body_bytes = 4096;
    });
    id = await h.spawn();
  });
  afterAll(async () => {
    await h.close();
  });

  async function liveCount(): Promise<number> {
    return h.cp.store.sandboxes.count();
  }

  function expectEnvelope(
    res: { statusCode: number; json<T>(): T },
    status: number,
    field?: string,
  ): ErrorJson {
    expect(res.statusCode).toBe(status);
    const body = res.json<ErrorJson>();
    expect(body.code).toMatch(/^[A-Z_]+$/);
    expect(body.message.length).toBeGreaterThan(0);
    expect(body.request_id).toBeTruthy();
    if (field !== undefined) {
      expect(body.details?.map((d) => d.field)).toContain(field);
      expect(body.message).toContain(field.replace(/^body\./, ''));
    }
    return body;
  }

  const spawnCases: Array<[string, string, number, string]> = [
    ['malformed JSON', '{"image": "alpine', 400, 'body'],
    ['a wrong type for memory_mb', JSON.stringify({ memory_mb: 'lots' }), 400, 'body.memory_mb'],
    [
      'a wrong type for metadata values',
      JSON.stringify({ metadata: { a: 1 } }),
      400,
      'body.metadata.a',
    ],
    ['a port out of range', JSON.stringify({ ports: [70000] }), 400, 'body.ports.0'],
    ['a bad duration', JSON.stringify({ ttl: '5x' }), 400, 'ttl'],
    ['a negative TTL', JSON.stringify({ ttl: '-5m' }), 400, 'ttl'],
    ['a zero TTL', JSON.stringify({ ttl: '0s' }), 400, 'ttl'],
    ['a TTL above max_ttl', JSON.stringify({ ttl: '100h' }), 429, 'ttl'],
    ['an owner id with a slash', JSON.stringify({ owner_id: 'a/b' }), 400, 'owner_id'],
  ];
  for (const [what, raw, status, field] of spawnCases) {
    it(`rejects a spawn with ${what}`, async () => {
      const before = await liveCount();
      const res = await h.request({
        method: 'POST',
        url: '/api/v1/sandboxes',
        rawBody: raw,
        headers: { 'content-type': 'application/json' },
      });
      expectEnvelope(res, status, field);
      expect(await liveCount()).toBe(before);
    });
  }

  it('rejects an unknown provider with 404 and creates nothing', async () => {
    const before = await liveCount();
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      body: { provider: 'nope' },
    });
    expectEnvelope(res, 404);
    expect(res.json().message).toContain('nope');
    expect(await liveCount()).toBe(before);
  });

  it('rejects an oversized body with 413', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      body: { metadata: { big: 'x'.repeat(8000) } },
    });
    expectEnvelope(res, 413);
    expect(res.json().code).toBe('PAYLOAD_TOO_LARGE');
  });

  it('answers 404 for an unknown sandbox on every operation', async () => {
    const ops: Array<[method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown]> = [
      ['GET', '/api/v1/sandboxes/sb-deadbeef'],
      ['DELETE', '/api/v1/sandboxes/sb-deadbeef'],
      ['POST', '/api/v1/sandboxes/sb-deadbeef/exec', { command: 'true' }],
      ['POST', '/api/v1/sandboxes/sb-deadbeef/extend', { ttl: '1m' }],
      ['GET', '/api/v1/sandboxes/sb-deadbeef/files?path=/workspace/a'],
      ['GET', '/api/v1/sandboxes/sb-deadbeef/logs'],
      ['GET', '/api/v1/sandboxes/not-an-id'],
    ];
    for (const [method, url, body] of ops) {
      const res = await h.request({ method, url, ...(body === undefined ? {} : { body }) });
      expectEnvelope(res, 404);
    }
  });

  it('rejects unsupported exec modes, empty commands and bad timeouts', async () => {
    const url = `/api/v1/sandboxes/${id}/exec`;
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { command: 'ls', mode: 'pty' } }),
      400,
      'mode',
    );
    expectEnvelope(await h.request({ method: 'POST', url, body: { command: '' } }), 400, 'command');
    expectEnvelope(await h.request({ method: 'POST', url, body: {} }), 400, 'body.command');
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { command: 'ls', timeout: 'soon' } }),
      400,
      'timeout',
    );
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { command: 'ls', timeout: '-1s' } }),
      400,
      'timeout',
    );
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { command: 'ls', timeout: '11m' } }),
      400,
      'timeout',
    );
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { command: 'ls', args: 'x' } }),
      400,
      'body.args',
    );
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { command: 'ls', env: { 'A-B': '1' } } }),
      400,
      'env.A-B',
    );
    const rows = await h.cp.store.execLogs.list(id, 100);
    expect(rows).toHaveLength(0);
  });

  it('rejects empty paths and path escapes without touching the host', async () => {
    const url = `/api/v1/sandboxes/${id}/files`;
    expectEnvelope(
      await h.request({ method: 'POST', url, body: { path: '', content: 'x' } }),
      400,
      'path',
    );
    const escape = await h.request({
      method: 'POST',
      url,
      body: { path: '../../../escape.txt', content: 'x' },
    });
    expectEnvelope(escape, 400, 'path');
    expect(existsSync(join(h.dir, 'escape.txt'))).toBe(false);
    expect(existsSync(join(h.dir, 'mock', 'escape.txt'))).toBe(false);
    expectEnvelope(await h.request({ method: 'GET', url: `${url}?path=` }), 400, 'query.path');
    expectEnvelope(await h.request({ method: 'GET', url: `${url}/glob` }), 400, 'pattern');
    expectEnvelope(
      await h.request({
        method: 'POST',
        url: `${url}/chmod`,
        body: { path: '/workspace/a', mode: '999' },
      }),
      400,
      'mode',
    );
    expectEnvelope(
      await h.request({
        method: 'POST',
        url,
        body: { path: '/workspace/b', content: '%%%', encoding: 'base64' },
      }),
      400,
      'body.content',
    );
    expectEnvelope(
      await h.request({ method: 'POST', url: `${url}/move`, body: { old_path: '/workspace/a' } }),
      400,
      'body.new_path',
    );
  });

  it('rejects bad query numbers and a missing extend ttl', async () => {
    expectEnvelope(
      await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}/logs?lines=abc` }),
      400,
      'query.lines',
    );
    expectEnvelope(
      await h.request({ method: 'POST', url: `/api/v1/sandboxes/${id}/extend`, body: {} }),
      400,
      'ttl',
    );
    expectEnvelope(
      await h.request({
        method: 'POST',
        url: `/api/v1/sandboxes/${id}/extend`,
        body: { ttl: 'x' },
      }),
      400,
      'ttl',
    );
  });

  it('answers unknown routes with the JSON envelope', async () => {
    const res = await h.request({ method: 'GET', url: '/api/v1/nope' });
    expectEnvelope(res, 404);
  });

  it('leaves the sandbox usable after all of that', async () => {
    const res = await h.request({
      method: 'POST',
      url: `/api/v1/sandboxes/${id}/exec`,
      body: { command: 'echo ok' },
    });
    expect(res.json()).toMatchObject({ exit_code: 0, stdout: 'ok\n' });
  });
});
