import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '../../src/index.js';
import type { ClientOptions } from '../../src/index.js';
import { cleanup, startServer } from '../../../server/test/e2e/server-process.js';
import type { ServerProcess } from '../../../server/test/e2e/server-process.js';

export const API_KEY = 'sdk-e2e-key-7f3a';

export interface SdkServer {
  server: ServerProcess;
  url: string;
  /** A client with the right API key (overridable) and a bounded timeout. */
  client(opts?: ClientOptions): Client;
  stop(): Promise<void>;
}

/** A real `stacyvm serve` (built binary, mock provider) with an API key. */
export async function startSdkServer(env: Record<string, string> = {}): Promise<SdkServer> {
  const server = await startServer({ env: { STACYVM_AUTH_API_KEY: API_KEY, ...env } });
  return {
    server,
    url: server.url,
    client: (opts = {}) =>
      new Client({ baseUrl: server.url, apiKey: API_KEY, timeoutMs: 20_000, ...opts }),
    stop: async () => {
      await server.stop('SIGKILL');
      cleanup(server.dir);
    },
  };
}

export interface FakeServer {
  url: string;
  close(): Promise<void>;
}

/** A tiny HTTP server on 127.0.0.1 that answers with whatever the handler writes. */
export async function fakeServer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<FakeServer> {
  const srv: Server = createServer(handler);
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        srv.closeAllConnections();
        srv.close(() => resolve());
      }),
  };
}

/** A port nothing listens on (bound, then released). */
export async function deadPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` and returns what it threw (failing if it did not throw). */
export async function caught(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}
