/**
 * How the gateway treats upstreams that misbehave at the HTTP level: raw TCP
 * servers on 127.0.0.1 standing in for the app in a sandbox, a gateway with a
 * fixed resolver in front of them.
 */
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { httpCall } from '../../test/support/preview-upstream.js';
import { silentLogger } from '../domain/logger.js';
import { createPreviewGateway } from './gateway.js';
import type { PreviewGateway } from './gateway.js';

interface RawUpstream {
  port: number;
  /** Connections accepted. */
  connections: number;
  /** Requests (header blocks) received, over all connections. */
  requests: number;
  close(): Promise<void>;
}

/** A TCP server that calls `onRequest` for each request head it receives. */
async function rawUpstream(
  onRequest: (socket: Socket, nthOnConnection: number, nthOverall: number) => void,
): Promise<RawUpstream> {
  const sockets = new Set<Socket>();
  const state = { connections: 0, requests: 0 };
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    state.connections += 1;
    let buffered = '';
    let onThis = 0;
    socket.on('data', (d: Buffer) => {
      buffered += d.toString('latin1');
      let end = buffered.indexOf('\r\n\r\n');
      while (end >= 0) {
        buffered = buffered.slice(end + 4);
        onThis += 1;
        state.requests += 1;
        onRequest(socket, onThis, state.requests);
        end = buffered.indexOf('\r\n\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    get connections() {
      return state.connections;
    },
    get requests() {
      return state.requests;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok';

/** Answers the first request of every connection; a later one finds the connection closed. */
function answersFirstRequestOnly(s: Socket, nth: number): void {
  if (nth === 1) s.write(OK);
  else s.destroy();
}

describe('preview gateway and misbehaving upstreams', () => {
  const closers: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
  });

  async function gatewayTo(up: RawUpstream): Promise<{ port: number; host: string }> {
    closers.push(() => up.close());
    const gw: PreviewGateway = createPreviewGateway({
      domains: () => ['localhost'],
      resolve: () => Promise.resolve({ kind: 'direct', host: '127.0.0.1', port: up.port }),
      publicScheme: 'http',
      upstreamTimeoutMs: 3_000,
      logger: silentLogger,
    });
    closers.push(() => gw.close(0));
    const { port } = await gw.listen('127.0.0.1', 0);
    return { port, host: `${up.port}-sb-0000cafe.localhost:${port}` };
  }

  it('relays a status line whose reason phrase is not Latin-1 (with the standard phrase)', async () => {
    const up = await rawUpstream((s) => {
      s.write(
        Buffer.concat([
          Buffer.from('HTTP/1.1 200 Ok '),
          Buffer.from('✓', 'utf8'),
          Buffer.from('\r\nContent-Length: 2\r\n\r\nok'),
        ]),
      );
    });
    const { port, host } = await gatewayTo(up);
    const r = await httpCall(port, host, '/');
    expect(r.status).toBe(200);
    expect(r.body).toBe('ok');
  });

  it('does not send a GET twice when a fresh upstream connection closes without answering', async () => {
    const up = await rawUpstream((s) => s.destroy());
    const { port, host } = await gatewayTo(up);
    const r = await httpCall(port, host, '/once', { headers: { accept: 'application/json' } });
    expect(r.status).toBe(502);
    expect(r.headers['x-stacyvm-preview-error']).toBe('nothing_listening');
    expect(up.requests).toBe(1);
  });

  it('sends a GET again on a new connection when a reused keep-alive connection was closed', async () => {
    // The first request on each connection is answered; a second one on the same
    // connection finds it closed (the sandbox's idle timeout won the race).
    const up = await rawUpstream(answersFirstRequestOnly);
    const { port, host } = await gatewayTo(up);
    expect((await httpCall(port, host, '/first')).status).toBe(200);
    const second = await httpCall(port, host, '/second');
    expect(second.status).toBe(200);
    expect(second.body).toBe('ok');
    expect(up.connections).toBe(2);
    expect(up.requests).toBe(3);
  });

  it('never sends a POST again, even on a reused connection', async () => {
    const up = await rawUpstream(answersFirstRequestOnly);
    const { port, host } = await gatewayTo(up);
    expect((await httpCall(port, host, '/first')).status).toBe(200);
    const r = await httpCall(port, host, '/post', { method: 'POST', body: 'x' });
    expect(r.status).toBe(502);
    expect(up.requests).toBe(2);
  });

  it('keeps a sandbox’s cookies on its own preview host: Domain attributes are removed', async () => {
    const up = await rawUpstream((s) => {
      s.write(
        'HTTP/1.1 200 OK\r\n' +
          'Set-Cookie: a=1; Domain=localhost; Path=/\r\n' +
          'Set-Cookie: b=2; Path=/; domain = .localhost; HttpOnly\r\n' +
          'Set-Cookie: c=3; Path=/\r\n' +
          'X-Domain-Note: domain=kept\r\n' +
          'Content-Length: 2\r\n\r\nok',
      );
    });
    const { port, host } = await gatewayTo(up);
    const r = await httpCall(port, host, '/');
    expect(r.status).toBe(200);
    expect(r.headers['set-cookie']).toEqual([
      'a=1; Path=/',
      'b=2; Path=/; HttpOnly',
      'c=3; Path=/',
    ]);
    expect(r.headers['x-domain-note']).toBe('domain=kept');
  });

  it('removes cookie Domain attributes from a WebSocket handshake answer too', async () => {
    const up = await rawUpstream((s) => {
      s.write(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          'Sec-WebSocket-Accept: x\r\nSet-Cookie: ws=1; Domain=localhost\r\n\r\n',
      );
    });
    const { port, host } = await gatewayTo(up);
    const answer = await new Promise<string>((resolve, reject) => {
      const c = connect(port, '127.0.0.1', () =>
        c.write(
          `GET /ws HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
        ),
      );
      let got = '';
      c.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('\r\n\r\n')) {
          c.destroy();
          resolve(got);
        }
      });
      c.on('error', reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 101 /);
    expect(answer).toContain('Set-Cookie: ws=1\r\n');
    expect(answer.toLowerCase()).not.toContain('domain=');
  });

  it('answers an upstream that sends an unsolicited 100 with 502 upstream_error, once', async () => {
    const up = await rawUpstream((s) => {
      s.write(`HTTP/1.1 100 Continue\r\n\r\n${OK}`);
    });
    const { port, host } = await gatewayTo(up);
    const r = await httpCall(port, host, '/', { headers: { accept: 'application/json' } });
    expect(r.status).toBe(502);
    expect(r.headers['x-stacyvm-preview-error']).toBe('upstream_error');
    expect(up.requests).toBe(1);
  });
});
