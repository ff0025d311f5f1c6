import { connect, createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A TCP proxy on 127.0.0.1 that sends each new connection to the first
 * backend that accepts it, in order: what a load balancer with health
 * checks does in front of several control planes. When a backend dies, its
 * connections are cut and new ones go to the next backend.
 */
export interface FailoverProxy {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** Backends as `http://host:port` URLs, tried in this order. */
  setBackends(urls: string[]): void;
  /** Connections handed to each backend so far, by URL. */
  readonly counts: Record<string, number>;
  close(): Promise<void>;
}

export async function startFailoverProxy(): Promise<FailoverProxy> {
  let backends: string[] = [];
  const counts: Record<string, number> = {};
  const open = new Set<Socket>();

  const attach = (client: Socket, index: number): void => {
    const target = backends[index];
    if (target === undefined) {
      client.destroy();
      return;
    }
    const { hostname, port } = new URL(target);
    const upstream = connect({ host: hostname, port: Number(port) });
    open.add(upstream);
    let connected = false;
    upstream.once('connect', () => {
      connected = true;
      counts[target] = (counts[target] ?? 0) + 1;
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.on('error', () => {
      if (!connected) {
        upstream.destroy();
        attach(client, index + 1);
      } else {
        client.destroy();
      }
    });
    upstream.on('close', () => {
      open.delete(upstream);
      if (connected) client.destroy();
    });
    client.on('close', () => upstream.destroy());
  };

  const server = createServer({ pauseOnConnect: true }, (client) => {
    open.add(client);
    client.on('error', () => client.destroy());
    client.on('close', () => open.delete(client));
    attach(client, 0);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    setBackends: (urls) => {
      backends = [...urls];
    },
    counts,
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
