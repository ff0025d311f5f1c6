import { createServer } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Recorded {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => unknown;

export interface TestServer {
  url: string;
  requests: Recorded[];
  handle(handler: Handler): void;
}

/**
 * A real HTTP server on 127.0.0.1 serving canned answers, for client tests
 * (the real control plane has its own end-to-end tests). Pass it to `use`
 * and it is closed afterwards.
 */
export async function withCannedServer(use: (server: TestServer) => Promise<void>): Promise<void> {
  const requests: Recorded[] = [];
  let handler: Handler = (_req, res) => {
    res.statusCode = 500;
    res.end();
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      Promise.resolve(handler(req, res, body)).catch(() => res.destroy());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  try {
    await use({
      url: `http://127.0.0.1:${port}`,
      requests,
      handle: (h) => {
        handler = h;
      },
    });
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
