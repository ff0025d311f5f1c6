/**
 * The preview gateway of a real control plane (SQLite file, mock provider):
 * real sockets on 127.0.0.1, a tiny HTTP + WebSocket app standing in for a
 * server inside the sandbox (the mock provider runs on the host, so a
 * sandbox's port N is 127.0.0.1:N).
 */
import { Agent } from 'node:http';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import {
  closedPort,
  httpCall,
  openWs,
  rawCall,
  startUpstream,
} from '../../test/support/preview-upstream.js';
import type { Upstream } from '../../test/support/preview-upstream.js';
import { silentLogger } from '../domain/logger.js';
import { createPreviewGateway } from './gateway.js';

async function listen(h: Harness): Promise<number> {
  const bound = await h.cp.listenPreview('127.0.0.1:0');
  if (bound === undefined) throw new Error('preview gateway disabled');
  return bound.port;
}

describe('preview gateway on the control plane (public previews)', () => {
  let h: Harness;
  let up: Upstream;
  let gw = 0;
  let id = '';
  let host = '';

  beforeAll(async () => {
    up = await startUpstream();
    h = await startHarness((c) => {
      c.preview.upstream_timeout = '1500ms';
      c.preview.extend_ttl_on_traffic = '10m';
    });
    gw = await listen(h);
    id = await h.spawn({ provider: 'mock', ports: [up.port], ttl: '2m' });
    host = `${up.port}-${id}.localhost:${gw}`;
  });
  afterAll(async () => {
    await h.close();
    await up.close();
  });

  it('proxies a GET to the sandbox port with X-Forwarded-* and the Host unchanged', async () => {
    const r = await httpCall(gw, host, '/echo?a=1&b=two', {
      headers: {
        'x-forwarded-for': '203.0.113.9',
        'x-worker-token': 'must-not-pass',
        'x-stacyvm-preview-token': 'must-not-pass-either',
      },
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
    expect(seen.url).toBe('/echo?a=1&b=two');
    expect(seen.headers['host']).toBe(host);
    expect(seen.headers['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe(host);
    expect(seen.headers['x-forwarded-port']).toBe(String(gw));
    expect(seen.headers['x-worker-token']).toBeUndefined();
    expect(seen.headers['x-stacyvm-preview-token']).toBeUndefined();
    // Repeated response headers survive the hop.
    expect(r.headers['set-cookie']).toEqual(['app=1; Path=/', 'app2=2; Path=/']);
  });

  it('streams a request body and the response both ways, chunk by chunk', async () => {
    const { request } = await import('node:http');
    const received: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const req = request({
        host: '127.0.0.1',
        port: gw,
        path: '/stream',
        method: 'POST',
        headers: { host, 'content-type': 'application/octet-stream' },
        agent: false,
      });
      const timer = setTimeout(() => reject(new Error('stream did not finish in 10 s')), 10_000);
      req.on('error', reject);
      req.on('response', (res) => {
        let sent = 1;
        res.on('data', (c: Buffer) => {
          received.push(c.toString());
          // Each chunk comes back before the next is sent: nothing is buffered to the end.
          if (sent < 3) {
            sent += 1;
            req.write(`chunk-${sent};`);
          } else req.end();
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      req.flushHeaders();
      req.write('chunk-1;');
    });
    expect(received.join('')).toBe('chunk-1;chunk-2;chunk-3;');
  });

  it('keeps the client connection alive across requests', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await httpCall(gw, host, '/echo/1', { agent });
      const second = await httpCall(gw, host, '/echo/2', { agent });
      const third = await httpCall(gw, host, '/echo/3', { agent });
      expect([first.status, second.status, third.status]).toEqual([200, 200, 200]);
      expect(second.reusedSocket).toBe(true);
      expect(third.reusedSocket).toBe(true);
    } finally {
      agent.destroy();
    }
  });

  it('passes a 1 MiB response through intact', async () => {
    const r = await httpCall(gw, host, `/big?bytes=${1024 * 1024}`);
    expect(r.status).toBe(200);
    expect(r.body.length).toBe(1024 * 1024);
  });

  it('upgrades to a WebSocket and pipes messages both ways', async () => {
    const { ws, next } = await openWs(gw, host, '/socket?x=1');
    try {
      expect(await next()).toBe('hello from upstream');
      ws.send('ping 1');
      expect(await next()).toBe('echo:ping 1');
      ws.send('ping 2');
      expect(await next()).toBe('echo:ping 2');
      const upgrade = up.seen.filter((s) => s.url === '/socket?x=1').pop();
      expect(upgrade?.headers['host']).toBe(host);
      expect(upgrade?.headers['x-forwarded-proto']).toBe('http');
    } finally {
      ws.close();
    }
  });

  it('answers a malformed Host with 400 and another domain with a 404 page', async () => {
    const bad = await httpCall(gw, `${up.port}-${id}..localhost`, '/');
    expect(bad.status).toBe(400);
    expect(bad.headers['x-stacyvm-preview-error']).toBe('malformed');
    const other = await httpCall(gw, `${up.port}-${id}.example.org`, '/');
    expect(other.status).toBe(404);
    expect(other.headers['content-type']).toMatch(/text\/html/);
    expect(other.body).toMatch(/not under a preview domain/);
    const json = await httpCall(gw, `${up.port}-${id}.example.org`, '/', {
      headers: { accept: 'application/json' },
    });
    expect(JSON.parse(json.body)).toMatchObject({ code: 'unknown_domain' });
  });

  it('answers a preview port out of range with 400', async () => {
    for (const port of ['0', '65536', '70000']) {
      const r = await httpCall(gw, `${port}-${id}.localhost`, '/');
      expect(r.status, port).toBe(400);
      expect(r.headers['x-stacyvm-preview-error']).toBe('port_out_of_range');
    }
  });

  it('answers an unknown sandbox and another tenant’s sandbox with 404', async () => {
    const unknown = await httpCall(gw, `${up.port}-sb-deadbeef.localhost`, '/');
    expect(unknown.status).toBe(404);
    expect(unknown.headers['x-stacyvm-preview-error']).toBe('sandbox_not_found');

    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      body: { provider: 'mock', ports: [up.port] },
      headers: { 'x-tenant-id': 'tenant-a' },
    });
    const tenantBox = res.json<{ id: string }>().id;
    const tHost = `${up.port}-${tenantBox}.localhost`;
    const other = await httpCall(gw, tHost, '/echo', { headers: { 'x-tenant-id': 'tenant-b' } });
    expect(other.status).toBe(404);
    const own = await httpCall(gw, tHost, '/echo', { headers: { 'x-tenant-id': 'tenant-a' } });
    expect(own.status).toBe(200);
  });

  it('answers a destroyed sandbox with 404 and a stopped one with a 502 page', async () => {
    const gone = await h.spawn({ provider: 'mock', ports: [up.port] });
    expect((await httpCall(gw, `${up.port}-${gone}.localhost`, '/echo')).status).toBe(200);
    await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${gone}` });
    const after = await httpCall(gw, `${up.port}-${gone}.localhost`, '/echo');
    expect(after.status).toBe(404);

    const stopped = await h.spawn({ provider: 'mock', ports: [up.port] });
    await h.cp.store.sandboxes.transition(stopped, ['running'], 'unhealthy');
    const r = await httpCall(gw, `${up.port}-${stopped}.localhost`, '/echo');
    expect(r.status).toBe(502);
    expect(r.headers['x-stacyvm-preview-error']).toBe('sandbox_not_running');
    expect(r.body).toMatch(/unhealthy/);
  });

  it('answers a closed port with 502 "nothing listening on port N", promptly', async () => {
    const port = await closedPort();
    const started = Date.now();
    const r = await httpCall(gw, `${port}-${id}.localhost`, '/');
    expect(r.status).toBe(502);
    expect(r.body).toContain(`nothing listening on port ${port}`);
    expect(Date.now() - started).toBeLessThan(3_000);
    await expect(openWs(gw, `${port}-${id}.localhost`)).rejects.toMatchObject({ status: 502 });
  });

  it('answers 504 when the sandbox port accepts but sends no headers in time', async () => {
    const started = Date.now();
    const r = await httpCall(gw, host, '/hang', { timeoutMs: 8_000 });
    expect(r.status).toBe(504);
    expect(r.headers['x-stacyvm-preview-error']).toBe('upstream_timeout');
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
  });

  it('refuses conflicting Content-Length and Transfer-Encoding, and absolute-form targets, with 400', async () => {
    const smuggle = await rawCall(
      gw,
      `POST /echo HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
    );
    expect(smuggle).toMatch(/^HTTP\/1\.1 400 /);
    // One answer, and the smuggled second request never reached the sandbox.
    expect(smuggle.match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
    expect(up.seen.some((s) => s.url === '/smuggled')).toBe(false);
    const doubleLength = await rawCall(
      gw,
      `POST /echo HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab`,
    );
    expect(doubleLength).toMatch(/^HTTP\/1\.1 400 /);
    const absolute = await rawCall(
      gw,
      `GET http://evil.example/ HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
    );
    expect(absolute).toMatch(/^HTTP\/1\.1 400 /);
    const noHost = await rawCall(gw, 'GET / HTTP/1.0\r\n\r\n');
    expect(noHost).toMatch(/^HTTP\/1\.1 400 /);
  });

  it('refuses obs-fold, disguised Transfer-Encoding, repeated or listed Content-Length and bare LF with 400, forwarding nothing', async () => {
    const cases: Record<string, string> = {
      // A folded header line (obs-fold), harmless header and Transfer-Encoding alike.
      'fold-header': `GET /bad-fold-header HTTP/1.1\r\nHost: ${host}\r\nX-Folded: one\r\n two\r\nConnection: close\r\n\r\n`,
      'fold-te': `POST /bad-fold-te HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /smuggled-fold-te HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      // TE before CL (TE.CL), a TE list, an unknown coding, whitespace before the colon.
      'te-cl': `POST /bad-te-cl HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled-te-cl HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      'te-list': `POST /bad-te-list HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n`,
      'te-unknown': `POST /bad-te-unknown HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd`,
      'te-space': `POST /bad-te-space HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd`,
      'te-http10': `POST /bad-te-http10 HTTP/1.0\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled-te-http10 HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      // Content-Length twice with the same value, as a list, with a sign.
      'cl-same-twice': `POST /bad-cl-same-twice HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd`,
      'cl-list': `POST /bad-cl-list HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4, 4\r\nConnection: close\r\n\r\nabcd`,
      'cl-plus': `POST /bad-cl-plus HTTP/1.1\r\nHost: ${host}\r\nContent-Length: +4\r\nConnection: close\r\n\r\nabcd`,
      // Chunk sizes a lenient parser might read differently.
      'chunk-0x': `POST /bad-chunk-0x HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n`,
      'chunk-ext-lf': `POST /bad-chunk-ext-lf HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;a\nb\r\nabcd\r\n0\r\n\r\n`,
      // Bare LF line ends, a NUL in a value, a space in a name, a space before the Host colon.
      'bare-lf': `GET /bad-bare-lf HTTP/1.1\nHost: ${host}\nConnection: close\n\n`,
      'nul-value': `GET /bad-nul-value HTTP/1.1\r\nHost: ${host}\r\nX-A: a\u0000b\r\nConnection: close\r\n\r\n`,
      'space-name': `GET /bad-space-name HTTP/1.1\r\nHost: ${host}\r\nX A: b\r\nConnection: close\r\n\r\n`,
      'host-space': `GET /bad-host-space HTTP/1.1\r\nHost : ${host}\r\nConnection: close\r\n\r\n`,
    };
    for (const [name, text] of Object.entries(cases)) {
      const answer = await rawCall(gw, text);
      expect(answer, name).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer.match(/HTTP\/1\.1 \d{3} /g), name).toHaveLength(1);
    }
    const reached = up.seen.filter((s) => /^\/(bad|smuggled)-/.test(s.url)).map((s) => s.url);
    expect(reached).toEqual([]);
  });

  it('passes a chunked body that looks like a request to the sandbox as body bytes, re-framed', async () => {
    const inner = `GET /smuggled-in-body HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
    const size = Buffer.byteLength(inner).toString(16);
    const answer = await rawCall(
      gw,
      `POST /echo-chunked HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${size}\r\n${inner}\r\n0\r\n\r\n`,
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
    expect(up.seen.some((s) => s.url === '/smuggled-in-body')).toBe(false);
    const seen = up.seen.filter((s) => s.url === '/echo-chunked');
    expect(seen).toHaveLength(1);
    // Re-framed by the gateway: chunked, or with a length when the whole body had arrived.
    const framing = seen[0]?.headers ?? {};
    expect(
      framing['transfer-encoding'] === 'chunked' ||
        framing['content-length'] === String(Buffer.byteLength(inner)),
    ).toBe(true);
  });

  it('refuses a request with two Host headers with 400, whichever one names a sandbox', async () => {
    for (const [first, second] of [
      [host, `${up.port}-sb-deadbeef.localhost`],
      ['somewhere.example', host],
      [host, host],
    ]) {
      const answer = await rawCall(
        gw,
        `GET /bad-two-hosts HTTP/1.1\r\nHost: ${first}\r\nHost: ${second}\r\nConnection: close\r\n\r\n`,
      );
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toMatch(/x-stacyvm-preview-error: malformed/i);
    }
    // The same for a WebSocket upgrade.
    const upgrade = await rawCall(
      gw,
      `GET /bad-two-hosts HTTP/1.1\r\nHost: ${host}\r\nHost: ${up.port}-sb-deadbeef.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
    );
    expect(upgrade).toMatch(/^HTTP\/1\.1 400 /);
    expect(up.seen.some((s) => s.url === '/bad-two-hosts')).toBe(false);
  });

  it('refuses a WebSocket upgrade to another tenant’s sandbox with 404', async () => {
    const res = await h.request({
      method: 'POST',
      url: '/api/v1/sandboxes',
      body: { provider: 'mock', ports: [up.port] },
      headers: { 'x-tenant-id': 'tenant-ws-a' },
    });
    const tenantBox = res.json<{ id: string }>().id;
    const tHost = `${up.port}-${tenantBox}.localhost:${gw}`;
    await expect(
      openWs(gw, tHost, '/ws-other-tenant', { 'x-tenant-id': 'tenant-ws-b' }),
    ).rejects.toMatchObject({ status: 404 });
    expect(up.seen.some((s) => s.url === '/ws-other-tenant')).toBe(false);
    const own = await openWs(gw, tHost, '/ws-own-tenant', { 'x-tenant-id': 'tenant-ws-a' });
    try {
      expect(await own.next()).toBe('hello from upstream');
    } finally {
      own.ws.close();
    }
  });

  it('extends the sandbox expiry on preview traffic, up to extend_ttl_on_traffic', async () => {
    const box = await h.spawn({ provider: 'mock', ports: [up.port], ttl: '2m' });
    const before = (await h.cp.store.sandboxes.get(box))!.expiresAtMs;
    expect(before - Date.now()).toBeLessThan(3 * 60_000);
    expect((await httpCall(gw, `${up.port}-${box}.localhost`, '/echo')).status).toBe(200);
    let after = before;
    for (let i = 0; i < 50 && after === before; i++) {
      await sleep(50);
      after = (await h.cp.store.sandboxes.get(box))!.expiresAtMs;
    }
    expect(after - Date.now()).toBeGreaterThan(9 * 60_000);
    expect(after - Date.now()).toBeLessThanOrEqual(10 * 60_000);
    // Within the window a second request does not extend again.
    await httpCall(gw, `${up.port}-${box}.localhost`, '/echo');
    await sleep(100);
    expect((await h.cp.store.sandboxes.get(box))!.expiresAtMs).toBe(after);
  });

  it('gives each sandbox its preview scheme and gateway port, and the preview route its URL', async () => {
    const sb = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}` });
    expect(sb.json()).toMatchObject({
      preview_domain: 'localhost',
      preview_scheme: 'http',
      preview_port: gw,
    });
    const p = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}/preview/5173` });
    expect(p.statusCode).toBe(200);
    expect(p.json()).toEqual({
      url: `http://5173-${id}.localhost:${gw}`,
      port: 5173,
      sandbox_id: id,
      private: false,
    });
    for (const bad of ['0', '65536', 'abc', '03000']) {
      const r = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}/preview/${bad}` });
      expect(r.statusCode, bad).toBe(400);
      expect(r.json()).toMatchObject({ code: 'BAD_REQUEST' });
    }
    const missing = await h.request({
      method: 'GET',
      url: '/api/v1/sandboxes/sb-deadbeef/preview/3000',
    });
    expect(missing.statusCode).toBe(404);
  });
});

describe('preview gateway with host rewrite', () => {
  it('sends the sandbox Host 127.0.0.1:{port} and keeps the original in X-Forwarded-Host', async () => {
    const up = await startUpstream();
    const h = await startHarness((c) => {
      c.preview.host_rewrite = true;
    });
    try {
      const gw = await listen(h);
      const id = await h.spawn({ provider: 'mock', ports: [up.port] });
      const host = `${up.port}-${id}.localhost:${gw}`;
      const r = await httpCall(gw, host, '/echo');
      const seen = JSON.parse(r.body) as { headers: Record<string, string> };
      expect(seen.headers['host']).toBe(`127.0.0.1:${up.port}`);
      expect(seen.headers['x-forwarded-host']).toBe(host);
    } finally {
      await h.close();
      await up.close();
    }
  });
});

describe('private previews', () => {
  let h: Harness;
  let up: Upstream;
  let gw = 0;
  let id = '';
  let host = '';
  let token = '';

  beforeAll(async () => {
    up = await startUpstream();
    h = await startHarness((c) => {
      c.preview.private = true;
      c.preview.token_ttl = '10m';
    });
    gw = await listen(h);
    id = await h.spawn({ provider: 'mock', ports: [up.port] });
    host = `${up.port}-${id}.localhost:${gw}`;
    const p = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}/preview/${up.port}` });
    expect(p.statusCode).toBe(200);
    const body = p.json<{
      private: boolean;
      token: string;
      open_url: string;
      expires_at: string;
    }>();
    expect(body.private).toBe(true);
    expect(body.open_url).toBe(
      `http://${host}/?stacyvm_preview_token=${encodeURIComponent(body.token)}`,
    );
    expect(Date.parse(body.expires_at) - Date.now()).toBeGreaterThan(9 * 60_000);
    token = body.token;
  });
  afterAll(async () => {
    await h.close();
    await up.close();
  });

  it('refuses a request without a token, or with a bad one, with 401', async () => {
    const none = await httpCall(gw, host, '/echo');
    expect(none.status).toBe(401);
    expect(none.headers['x-stacyvm-preview-error']).toBe('token_required');
    const bad = await httpCall(gw, host, '/echo', {
      headers: { 'x-stacyvm-preview-token': `${token.slice(0, -2)}xx` },
    });
    expect(bad.status).toBe(401);
    // A token is for one port: another port of the same sandbox needs its own.
    const otherPort = await httpCall(gw, `${up.port + 1}-${id}.localhost`, '/', {
      headers: { 'x-stacyvm-preview-token': token },
    });
    expect(otherPort.status).toBe(401);
    expect(up.seen.some((s) => s.url === '/echo' && s.headers['host'] === host)).toBe(false);
  });

  it('refuses a token of one sandbox on the Host of another, by header, cookie or query', async () => {
    const other = await h.spawn({ provider: 'mock', ports: [up.port] });
    const otherHost = `${up.port}-${other}.localhost:${gw}`;
    const byHeader = await httpCall(gw, otherHost, '/cross-sandbox', {
      headers: { 'x-stacyvm-preview-token': token },
    });
    expect(byHeader.status).toBe(401);
    const byCookie = await httpCall(gw, otherHost, '/cross-sandbox', {
      headers: { cookie: `stacyvm_preview_token=${token}` },
    });
    expect(byCookie.status).toBe(401);
    const byQuery = await httpCall(
      gw,
      otherHost,
      `/cross-sandbox?stacyvm_preview_token=${encodeURIComponent(token)}`,
    );
    expect(byQuery.status).toBe(401);
    await expect(
      openWs(gw, otherHost, '/cross-sandbox', { 'x-stacyvm-preview-token': token }),
    ).rejects.toMatchObject({ status: 401 });
    expect(up.seen.some((s) => s.url.startsWith('/cross-sandbox'))).toBe(false);
  });

  it('accepts the token in the X-StacyVM-Preview-Token header and does not pass it on', async () => {
    const r = await httpCall(gw, host, '/echo', { headers: { 'x-stacyvm-preview-token': token } });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as { headers: Record<string, string> };
    expect(seen.headers['x-stacyvm-preview-token']).toBeUndefined();
  });

  it('turns a query token into an HttpOnly cookie and redirects to the clean URL', async () => {
    const r = await httpCall(
      gw,
      host,
      `/page?x=1&stacyvm_preview_token=${encodeURIComponent(token)}&y=%20z`,
    );
    expect(r.status).toBe(302);
    expect(r.headers.location).toBe('/page?x=1&y=%20z');
    const cookie = r.headers['set-cookie']?.[0] ?? '';
    expect(cookie).toMatch(/^stacyvm_preview_token=spt1\./);
    expect(cookie).toMatch(/HttpOnly/);
    expect(cookie).toMatch(/Path=\//);
    expect(cookie).not.toMatch(/Domain=/);
    const pair = cookie.split(';')[0] ?? '';
    const follow = await httpCall(gw, host, '/page?x=1&y=%20z', {
      headers: { cookie: `theme=dark; ${pair}` },
    });
    expect(follow.status).toBe(200);
    const seen = JSON.parse(follow.body) as { url: string; headers: Record<string, string> };
    expect(seen.url).toBe('/page?x=1&y=%20z');
    // The app keeps its own cookies but never sees the token.
    expect(seen.headers['cookie']).toBe('theme=dark');
    const badQuery = await httpCall(gw, host, '/page?stacyvm_preview_token=nope');
    expect(badQuery.status).toBe(401);
    // Never a redirect off this host (`//evil.example/x` is protocol-relative).
    const offHost = await httpCall(
      gw,
      host,
      `//evil.example/x?stacyvm_preview_token=${encodeURIComponent(token)}`,
    );
    expect(offHost.status).toBe(302);
    expect(offHost.headers.location).toBe('/evil.example/x');
  });

  it('accepts WebSocket upgrades with the cookie or the header, and refuses them without', async () => {
    await expect(openWs(gw, host)).rejects.toMatchObject({ status: 401 });
    const viaCookie = await openWs(gw, host, '/ws', { cookie: `stacyvm_preview_token=${token}` });
    try {
      expect(await viaCookie.next()).toBe('hello from upstream');
      viaCookie.ws.send('private hi');
      expect(await viaCookie.next()).toBe('echo:private hi');
    } finally {
      viaCookie.ws.close();
    }
    const viaHeader = await openWs(gw, host, '/ws', { 'x-stacyvm-preview-token': token });
    try {
      expect(await viaHeader.next()).toBe('hello from upstream');
    } finally {
      viaHeader.ws.close();
    }
    const upgrade = up.seen.filter((s) => s.url === '/ws').pop();
    expect(upgrade?.headers['cookie']).toBeUndefined();
    expect(upgrade?.headers['x-stacyvm-preview-token']).toBeUndefined();
  });
});

describe('preview gateway connection limits', () => {
  function openFds(): number {
    return readdirSync('/proc/self/fd').length;
  }

  it('survives 1,000 idle connections: at most max_connections held, all released in bounded time', async () => {
    const up = await startUpstream();
    const gateway = createPreviewGateway({
      domains: () => ['localhost'],
      resolve: async () => ({ kind: 'direct', host: '127.0.0.1', port: up.port }),
      publicScheme: 'http',
      maxConnections: 300,
      headersTimeoutMs: 1_000,
      connectionsCheckingIntervalMs: 100,
      logger: silentLogger,
    });
    const { port } = await gateway.listen('127.0.0.1', 0);
    const host = `${up.port}-sb-0123abcd.localhost`;
    const baseline = openFds();
    const sockets: Socket[] = [];
    try {
      await Promise.all(
        Array.from({ length: 1_000 }, () => {
          return new Promise<void>((resolve) => {
            const s = connect(port, '127.0.0.1');
            sockets.push(s);
            s.on('error', () => undefined);
            s.once('connect', () => resolve());
            s.once('close', () => resolve());
          });
        }),
      );
      const held = await new Promise<number>((r, j) =>
        gateway.server.getConnections((err, n) => (err ? j(err) : r(n))),
      );
      expect(held).toBeLessThanOrEqual(300);
      // Idle connections are closed by the gateway itself (header timeout), not held forever.
      const deadline = Date.now() + 10_000;
      let open = held;
      while (open > 0 && Date.now() < deadline) {
        await sleep(100);
        open = await new Promise<number>((r, j) =>
          gateway.server.getConnections((err, n) => (err ? j(err) : r(n))),
        );
      }
      expect(open).toBe(0);
      for (const s of sockets) s.destroy();
      await sleep(100);
      expect(openFds()).toBeLessThan(baseline + 20);
      // And it still serves.
      const r = await httpCall(port, host, '/echo');
      expect(r.status).toBe(200);
    } finally {
      for (const s of sockets) s.destroy();
      await gateway.close(0);
      await up.close();
    }
  }, 30_000);

  it('holds 1,000 idle keep-alive connections under the limit without trouble, and releases their fds when clients close', async () => {
    const up = await startUpstream();
    const gateway = createPreviewGateway({
      domains: () => ['localhost'],
      resolve: async () => ({ kind: 'direct', host: '127.0.0.1', port: up.port }),
      publicScheme: 'http',
      maxConnections: 4096,
      headersTimeoutMs: 30_000,
      keepAliveTimeoutMs: 30_000,
      connectionsCheckingIntervalMs: 100,
      logger: silentLogger,
    });
    const { port } = await gateway.listen('127.0.0.1', 0);
    const host = `${up.port}-sb-0123abcd.localhost`;
    const connections = (): Promise<number> =>
      new Promise<number>((r, j) =>
        gateway.server.getConnections((err, n) => (err ? j(err) : r(n))),
      );
    const baseline = openFds();
    const sockets: Socket[] = [];
    try {
      // Each connection makes one keep-alive request, reads the answer, then sits idle. In
      // batches of 100, so the gateway's upstream pool stays small (fds: 2 per client here).
      const statuses: string[] = [];
      for (let batch = 0; batch < 10; batch++) {
        const answers = await Promise.all(
          Array.from({ length: 100 }, () => {
            return new Promise<string>((resolve) => {
              const s = connect(port, '127.0.0.1', () =>
                s.write(`GET /echo/idle HTTP/1.1\r\nHost: ${host}\r\n\r\n`),
              );
              sockets.push(s);
              s.on('error', () => resolve('error'));
              s.once('data', (d: Buffer) => resolve(d.toString('latin1').slice(0, 12)));
              s.once('close', () => resolve('closed'));
            });
          }),
        );
        statuses.push(...answers);
      }
      expect(statuses.filter((x) => x !== 'HTTP/1.1 200')).toEqual([]);
      expect(await connections()).toBe(1_000);
      // Idle, not dropped: a second request on an old connection still works.
      const again = await new Promise<string>((resolve) => {
        const s = sockets[0];
        s?.once('data', (d: Buffer) => resolve(d.toString('latin1').slice(0, 12)));
        s?.write(`GET /echo/again HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      });
      expect(again).toBe('HTTP/1.1 200');
      expect(openFds()).toBeGreaterThan(baseline + 1_900);

      for (const s of sockets) s.destroy();
      const deadline = Date.now() + 10_000;
      let open = await connections();
      while (open > 0 && Date.now() < deadline) {
        await sleep(50);
        open = await connections();
      }
      expect(open).toBe(0);
      // What stays is the gateway's pool of idle upstream connections (at most 256, both ends here).
      expect(openFds()).toBeLessThan(baseline + 2 * 256 + 40);
      const r = await httpCall(port, host, '/echo/after');
      expect(r.status).toBe(200);
    } finally {
      for (const s of sockets) s.destroy();
      await gateway.close(0);
      await up.close();
    }
    await sleep(100);
    expect(openFds()).toBeLessThan(baseline + 20);
  }, 60_000);

  it('answers slowloris clients (headers dripped byte by byte) with 408 within the header timeout, serving others meanwhile', async () => {
    const up = await startUpstream();
    const headersTimeoutMs = 800;
    const gateway = createPreviewGateway({
      domains: () => ['localhost'],
      resolve: async () => ({ kind: 'direct', host: '127.0.0.1', port: up.port }),
      publicScheme: 'http',
      headersTimeoutMs,
      connectionsCheckingIntervalMs: 50,
      logger: silentLogger,
    });
    const { port } = await gateway.listen('127.0.0.1', 0);
    const host = `${up.port}-sb-0123abcd.localhost`;
    /** Sends `first` at once, then `drip` one byte every 40 ms; resolves when the gateway closes. */
    const slowClient = (
      first: string,
      drip: string,
    ): Promise<{ ms: number; closedAt: number; out: string }> =>
      new Promise((resolve) => {
        const started = Date.now();
        let out = '';
        let timer: NodeJS.Timeout | undefined;
        const s = connect(port, '127.0.0.1', () => {
          s.write(first);
          let i = 0;
          timer = setInterval(() => {
            if (i < drip.length && !s.destroyed) s.write(drip.charAt(i++));
          }, 40);
        });
        const guard = setTimeout(() => s.destroy(), 10_000);
        s.on('data', (d: Buffer) => (out += d.toString('latin1')));
        s.on('error', () => undefined);
        s.once('close', () => {
          clearInterval(timer);
          clearTimeout(guard);
          resolve({ ms: Date.now() - started, closedAt: Date.now(), out });
        });
      });
    const slowHeader = `X-Slow: ${'a'.repeat(400)}\r\n\r\n`;
    try {
      const attack = Promise.all([
        ...Array.from({ length: 50 }, () =>
          slowClient(`GET /slow HTTP/1.1\r\nHost: ${host}\r\n`, slowHeader),
        ),
        // A kept-alive connection whose second request is the slow one.
        slowClient(
          `GET /echo/first HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
          `GET /slow HTTP/1.1\r\nHost: ${host}\r\n${slowHeader}`,
        ),
        // A WebSocket upgrade whose headers drip.
        slowClient(`GET /slow HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\n`, slowHeader),
      ]);
      await sleep(200);
      // Meanwhile a normal client is served, before any slow client is let go.
      expect((await httpCall(port, host, '/echo/meanwhile')).status).toBe(200);
      const servedAt = Date.now();
      const results = await attack;
      expect(servedAt).toBeLessThan(Math.min(...results.map((r) => r.closedAt)));
      for (const r of results) {
        expect(r.out).toMatch(/HTTP\/1\.1 408 Request Timeout\r\n/);
        expect(r.out).toMatch(/x-stacyvm-preview-error: request_timeout/i);
        // Closed by the header timeout (plus one check interval and scheduling slack), not later.
        expect(r.ms).toBeGreaterThanOrEqual(headersTimeoutMs - 100);
        expect(r.ms).toBeLessThan(headersTimeoutMs + 1_500);
      }
      expect(results.at(-2)?.out).toMatch(/^HTTP\/1\.1 200 /);
      expect(up.seen.some((s) => s.url === '/slow')).toBe(false);
    } finally {
      await gateway.close(0);
      await up.close();
    }
  }, 30_000);

  it('answers a connection that never sends its headers with 408', async () => {
    const gateway = createPreviewGateway({
      domains: () => ['localhost'],
      resolve: async () => ({ kind: 'direct', host: '127.0.0.1', port: 1 }),
      publicScheme: 'http',
      headersTimeoutMs: 300,
      connectionsCheckingIntervalMs: 50,
      logger: silentLogger,
    });
    const { port } = await gateway.listen('127.0.0.1', 0);
    try {
      const answer = await rawCall(port, 'GET / HTTP/1.1\r\nHost: x', 5_000);
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    } finally {
      await gateway.close(0);
    }
  });
});
