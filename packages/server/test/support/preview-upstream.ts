/**
 * Test support for the preview gateway: a tiny HTTP + WebSocket server that
 * plays the app inside a sandbox (the mock provider runs on the host, so a
 * server on 127.0.0.1:{port} is what a sandbox's port N is), and small
 * HTTP/raw-socket clients that set the Host header a browser would send.
 */
import { once } from 'node:events';
import { createServer, request } from 'node:http';
import type { Agent, IncomingHttpHeaders, IncomingMessage, Server } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}

export interface Upstream {
  port: number;
  server: Server;
  /** Every request (and upgrade) the app received, in order. */
  seen: SeenRequest[];
  close(): Promise<void>;
}

/**
 * Routes: `GET /echo…` answers JSON of what arrived; `POST /stream` answers
 * at once and echoes each body chunk as it arrives; `GET /hang` never
 * answers; `GET /big?bytes=N` streams N bytes. Any path upgrades to a
 * WebSocket that greets, then echoes `echo:<message>`.
 */
export async function startUpstream(): Promise<Upstream> {
  const seen: SeenRequest[] = [];
  const hanging = new Set<IncomingMessage>();
  const server = createServer((req, res) => {
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
    });
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path === '/stream' && req.method === 'POST') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.flushHeaders();
      req.on('data', (chunk: Buffer) => res.write(chunk));
      req.on('end', () => res.end());
      return;
    }
    if (path === '/hang') {
      hanging.add(req);
      return;
    }
    if (path === '/big') {
      const n = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('bytes') ?? '0');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
      const chunk = Buffer.alloc(64 * 1024, 120);
      let left = n;
      const pump = (): void => {
        while (left > 0) {
          const part = chunk.subarray(0, Math.min(left, chunk.length));
          left -= part.length;
          if (!res.write(part)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers });
    res.writeHead(200, {
      'content-type': 'application/json',
      'set-cookie': ['app=1; Path=/', 'app2=2; Path=/'],
    });
    res.end(body);
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
    });
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send('hello from upstream');
      ws.on('message', (data: Buffer) => ws.send(`echo:${data.toString()}`));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    server,
    seen,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      for (const r of hanging) r.socket.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  reusedSocket: boolean;
}

/** One HTTP request to the gateway with the given Host (bounded by `timeoutMs`). */
export function httpCall(
  gatewayPort: number,
  host: string,
  path: string,
  o: {
    method?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    agent?: Agent;
    timeoutMs?: number;
  } = {},
): Promise<HttpAnswer> {
  return new Promise<HttpAnswer>((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: gatewayPort,
        path,
        method: o.method ?? 'GET',
        headers: { host, ...o.headers },
        agent: o.agent ?? false,
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(parts).toString('utf8'),
            reusedSocket: req.reusedSocket,
          });
        });
        res.on('error', reject);
      },
    );
    const timer = setTimeout(() => {
      req.destroy(new Error(`no answer within ${o.timeoutMs ?? 10_000} ms`));
    }, o.timeoutMs ?? 10_000);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(o.body);
  });
}

/** Writes raw bytes to the gateway and returns everything it answers until it closes. */
export function rawCall(gatewayPort: number, text: string, timeoutMs = 5_000): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const s = connect(gatewayPort, '127.0.0.1', () => s.write(text));
    let out = '';
    s.on('data', (d: Buffer) => (out += d.toString('latin1')));
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`connection still open after ${timeoutMs} ms; got ${JSON.stringify(out)}`));
    }, timeoutMs);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.on('error', () => undefined);
  });
}

/** Opens a WebSocket through the gateway with the given Host; rejects with the HTTP status on refusal. */
export function openWs(
  gatewayPort: number,
  host: string,
  path = '/ws',
  headers: Record<string, string> = {},
): Promise<{ ws: WebSocket; messages: string[]; next(): Promise<string> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${gatewayPort}${path}`, {
      headers: { host, ...headers },
      handshakeTimeout: 5_000,
    });
    const messages: string[] = [];
    const waiters: ((m: string) => void)[] = [];
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      const w = waiters.shift();
      if (w !== undefined) w(text);
      else messages.push(text);
    });
    const next = (): Promise<string> =>
      new Promise<string>((res, rej) => {
        const queued = messages.shift();
        if (queued !== undefined) {
          res(queued);
          return;
        }
        const timer = setTimeout(() => rej(new Error('no WebSocket message within 5 s')), 5_000);
        waiters.push((m) => {
          clearTimeout(timer);
          res(m);
        });
      });
    ws.once('open', () => resolve({ ws, messages, next }));
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      reject(
        Object.assign(new Error(`HTTP ${res.statusCode}`), {
          status: res.statusCode,
          headers: res.headers,
        }),
      );
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

/** A port nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
