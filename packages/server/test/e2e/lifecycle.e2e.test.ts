import { request } from 'node:http';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { cleanup, cli, serverEnv, startServer, tempDir } from './server-process.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are asserted on loosely
type Json = any;

async function api(
  base: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Json }> {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: text === '' ? undefined : JSON.parse(text) };
}

describe('control plane lifecycle, as an operator meets it', () => {
  it('finishes in-flight work on SIGTERM, refuses new work, and exits 0', async () => {
    const server = await startServer();
    try {
      const { json: sb } = await api(server.url, 'POST', '/sandboxes', {});
      const inflight = fetch(`${server.url}/api/v1/sandboxes/${sb.id}/exec`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ command: 'sleep 1; echo finished' }),
      }).then((r) => r.json() as Promise<{ stdout: string; exit_code: number }>);
      await new Promise((r) => setTimeout(r, 300));
      const stopStarted = Date.now();
      const exit = server.stop('SIGTERM');
      await new Promise((r) => setTimeout(r, 100));
      const late = await fetch(`${server.url}/api/v1/health`).then(
        (r) => r.status,
        () => 'refused',
      );
      expect([503, 'refused']).toContain(late);
      expect(await inflight).toMatchObject({ stdout: 'finished\n', exit_code: 0 });
      expect(await exit).toBe(0);
      // In-flight work done, keep-alive connections closed: no wait for the 30 s timeout.
      expect(Date.now() - stopStarted).toBeLessThan(10_000);
      expect(server.logs()).toContain('shutdown complete');
    } finally {
      await server.stop('SIGKILL');
      cleanup(server.dir);
    }
  });

  it('keeps sandboxes across a restart and marks ones whose runtime vanished as destroyed', async () => {
    const dir = tempDir();
    try {
      let server = await startServer({ dir });
      const a = (await api(server.url, 'POST', '/sandboxes', {})).json.id as string;
      const b = (await api(server.url, 'POST', '/sandboxes', {})).json.id as string;
      await api(server.url, 'POST', `/sandboxes/${a}/files`, {
        path: '/workspace/keep.txt',
        content: 'kept',
      });
      expect(await server.stop()).toBe(0);
      rmSync(join(dir, 'mock', b), { recursive: true, force: true });
      server = await startServer({ dir });
      const file = await fetch(
        `${server.url}/api/v1/sandboxes/${a}/files?path=/workspace/keep.txt`,
      );
      expect(await file.text()).toBe('kept');
      expect((await api(server.url, 'GET', `/sandboxes/${b}`)).status).toBe(404);
      expect(server.logs()).toContain('reconcile marked sandboxes with no runtime as destroyed');
      expect(await server.stop()).toBe(0);
    } finally {
      cleanup(dir);
    }
  });

  it('reaps expired sandboxes on its own', async () => {
    const server = await startServer({ env: { STACYVM_SERVER_REAPER_INTERVAL: '200ms' } });
    try {
      const { json: sb } = await api(server.url, 'POST', '/sandboxes', { ttl: '1s' });
      const deadline = Date.now() + 10_000;
      let status = 200;
      while (Date.now() < deadline && status === 200) {
        await new Promise((r) => setTimeout(r, 250));
        status = (await api(server.url, 'GET', `/sandboxes/${sb.id}`)).status;
      }
      expect(status).toBe(404);
    } finally {
      await server.stop();
      cleanup(server.dir);
    }
  });

  it('streams lifecycle events over SSE with keep-alives and Last-Event-ID replay', async () => {
    const server = await startServer({ env: { STACYVM_SERVER_SSE_KEEPALIVE_INTERVAL: '200ms' } });
    try {
      const received: string[] = [];
      const url = new URL(`${server.url}/api/v1/events`);
      const req = request(url, { headers: { accept: 'text/event-stream' } });
      const sse = new Promise<void>((resolve, reject) => {
        req.on('response', (res) => {
          expect(res.headers['content-type']).toContain('text/event-stream');
          res.on('data', (d: Buffer) => {
            received.push(d.toString());
            const all = received.join('');
            if (all.includes('sandbox.destroyed') && all.includes(': keep-alive')) resolve();
          });
        });
        req.on('error', reject);
      });
      req.end();
      await new Promise((r) => setTimeout(r, 200));
      const { json: sb } = await api(server.url, 'POST', '/sandboxes', {});
      await api(server.url, 'DELETE', `/sandboxes/${sb.id}`);
      await Promise.race([
        sse,
        new Promise((_, rej) => setTimeout(() => rej(new Error(received.join(''))), 5000)),
      ]);
      req.destroy();
      const events = received
        .join('')
        .split('\n')
        .filter((l) => l.startsWith('data: '))
        .map((l) => JSON.parse(l.slice(6)) as { id: string; type: string; sandbox_id?: string });
      expect(events.map((e) => e.type)).toEqual(
        expect.arrayContaining(['sandbox.created', 'sandbox.running', 'sandbox.destroyed']),
      );
      const created = events.find((e) => e.type === 'sandbox.created')!;
      // Reconnect from the created event: the rest is replayed.
      const replay = await new Promise<string>((resolve) => {
        let buf = '';
        const r2 = request(url, { headers: { 'last-event-id': created.id } }, (res) => {
          res.on('data', (d: Buffer) => {
            buf += d.toString();
            if (buf.includes('sandbox.destroyed')) {
              r2.destroy();
              resolve(buf);
            }
          });
        });
        r2.end();
      });
      expect(replay).toContain('sandbox.running');
      expect(replay).not.toContain(`"id":"${created.id}"`);
    } finally {
      await server.stop();
      cleanup(server.dir);
    }
  });

  it('runs exec over WebSocket: chunks, then exit, then done', async () => {
    const server = await startServer();
    try {
      const { json: sb } = await api(server.url, 'POST', '/sandboxes', {});
      const ws = new WebSocket(
        `${server.url.replace('http', 'ws')}/api/v1/sandboxes/${sb.id}/exec/ws`,
      );
      const messages: Array<Record<string, unknown>> = [];
      const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
      ws.on('open', () => ws.send(JSON.stringify({ command: 'echo a; echo b >&2; exit 5' })));
      ws.on('message', (d: Buffer) =>
        messages.push(JSON.parse(d.toString()) as Record<string, unknown>),
      );
      expect(await closed).toBe(1000);
      expect(
        messages
          .filter((m) => m['stream'] === 'stdout')
          .map((m) => m['data'])
          .join(''),
      ).toBe('a\n');
      expect(
        messages
          .filter((m) => m['stream'] === 'stderr')
          .map((m) => m['data'])
          .join(''),
      ).toBe('b\n');
      expect(messages.at(-2)).toMatchObject({ type: 'exit', exit_code: 5 });
      expect(messages.at(-1)).toEqual({ type: 'done' });

      const bad = new WebSocket(
        `${server.url.replace('http', 'ws')}/api/v1/sandboxes/${sb.id}/exec/ws`,
      );
      const badClose = new Promise<number>((resolve) => bad.on('close', (code) => resolve(code)));
      bad.on('open', () => bad.send('not json'));
      expect(await badClose).toBe(1007);
    } finally {
      await server.stop();
      cleanup(server.dir);
    }
  });

  it('answers CORS preflights for allowed origins only', async () => {
    const server = await startServer({
      env: { STACYVM_SERVER_CORS_ALLOWED_ORIGINS: 'https://ide.example.com' },
    });
    try {
      const ok = await fetch(`${server.url}/api/v1/sandboxes`, {
        method: 'OPTIONS',
        headers: { origin: 'https://ide.example.com', 'access-control-request-method': 'POST' },
      });
      expect(ok.status).toBeLessThan(300);
      expect(ok.headers.get('access-control-allow-origin')).toBe('https://ide.example.com');
      const no = await fetch(`${server.url}/api/v1/sandboxes`, {
        method: 'OPTIONS',
        headers: { origin: 'https://evil.example.com', 'access-control-request-method': 'POST' },
      });
      expect(no.headers.get('access-control-allow-origin')).toBeNull();
    } finally {
      await server.stop();
      cleanup(server.dir);
    }
  });
});

describe('startup safety and config commands', () => {
  it('refuses a non-loopback bind without an API key', () => {
    const dir = tempDir();
    try {
      const r = cli(['serve', '--host', '0.0.0.0', '--port', '0'], {
        env: serverEnv(dir),
        cwd: dir,
      });
      expect(r.status).toBe(2);
      expect(r.stderr.toString()).toMatch(/api_key|allow_insecure_bind/);
    } finally {
      cleanup(dir);
    }
  });

  it('rejects a bad config naming the key, and prints config with secrets redacted', () => {
    const dir = tempDir();
    try {
      const bad = cli(['config', 'print'], {
        env: serverEnv(dir, { STACYVM_SERVER_PORT: 'seventy' }),
        cwd: dir,
      });
      expect(bad.status).toBe(2);
      expect(bad.stderr.toString()).toContain('STACYVM_SERVER_PORT');
      const secret = 'super-secret-key-0123456789abcdef0123';
      const ok = cli(['config', 'print'], {
        env: serverEnv(dir, { STACYVM_AUTH_API_KEY: secret }),
        cwd: dir,
      });
      expect(ok.status).toBe(0);
      expect(ok.stdout.toString()).toContain('<redacted>');
      expect(ok.stdout.toString()).not.toContain(secret);
      const lint = cli(['config', 'lint', '--production'], { env: serverEnv(dir), cwd: dir });
      expect(lint.status).toBe(1);
      expect(lint.stdout.toString()).toContain('[fail]');
      const migrate = cli(['migrate'], { env: serverEnv(dir), cwd: dir });
      expect(migrate.status).toBe(0);
      expect(migrate.stdout.toString()).toMatch(/schema version \d+/);
    } finally {
      cleanup(dir);
    }
  });
});
