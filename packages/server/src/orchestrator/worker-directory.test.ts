import { describe, expect, it } from 'vitest';
import { silentLogger } from '../domain/logger.js';
import type { WorkerRecord } from '../domain/worker.js';
import type { WorkerClient } from '../rpc/worker-client.js';
import type { RemoteWorkerClient } from './worker-directory.js';
import { advertisedRpcUrl, RoutingWorkerDirectory } from './worker-directory.js';

function record(id: string, capacity: Record<string, unknown>): WorkerRecord {
  return {
    id,
    hostname: 'h',
    status: 'online',
    providers: ['mock'],
    capabilities: [],
    capacity,
    lastHeartbeatMs: 0,
    createdAtMs: 0,
    updatedAtMs: 0,
  };
}

function fakeRemote(workerId: string, rpcUrl: string, closed: string[]): RemoteWorkerClient {
  return {
    workerId,
    rpcUrl,
    close: () => {
      closed.push(rpcUrl);
      return Promise.resolve();
    },
  } as unknown as RemoteWorkerClient;
}

describe('RoutingWorkerDirectory', () => {
  const local = { workerId: 'local' } as WorkerClient;

  it('routes local in-process and remote workers by their advertised rpc_url, rebuilding on change', async () => {
    const made: string[] = [];
    const closed: string[] = [];
    const dir = new RoutingWorkerDirectory(
      local,
      (id, url) => {
        made.push(`${id}@${url}`);
        return fakeRemote(id, url, closed);
      },
      silentLogger,
    );
    expect(dir.client('local')).toBe(local);
    expect(dir.client('w1')).toBeUndefined();
    expect(dir.observe(record('w1', { rpc_url: 'http://127.0.0.1:7430' }))).toBeUndefined();
    const first = dir.client('w1');
    expect(first).toBeDefined();
    // The same URL again keeps the client (and its connections).
    dir.observe(record('w1', { rpc_url: 'http://127.0.0.1:7430' }));
    expect(dir.client('w1')).toBe(first);
    dir.observe(record('w1', { rpc_url: 'http://127.0.0.1:7431' }));
    expect(dir.client('w1')).not.toBe(first);
    expect(made).toEqual(['w1@http://127.0.0.1:7430', 'w1@http://127.0.0.1:7431']);
    await Promise.resolve();
    expect(closed).toEqual(['http://127.0.0.1:7430']);
    await dir.close();
    expect(closed).toEqual(['http://127.0.0.1:7430', 'http://127.0.0.1:7431']);
  });

  it('says why a worker cannot be called: no rpc_url, or no credential for it', () => {
    const dir = new RoutingWorkerDirectory(
      local,
      (id) => (id === 'nocred' ? { unavailable: 'no credential' } : fakeRemote(id, 'u', [])),
      silentLogger,
    );
    expect(dir.unreachableReason(record('local', {}))).toBeUndefined();
    expect(dir.unreachableReason(record('w-none', {}))).toContain('rpc_url');
    expect(dir.unreachableReason(record('nocred', { rpc_url: 'http://127.0.0.1:1' }))).toBe(
      'no credential',
    );
    expect(dir.client('nocred')).toBeUndefined();
    expect(dir.unreachableReason(record('ok', { rpc_url: 'http://127.0.0.1:1' }))).toBeUndefined();
    expect(advertisedRpcUrl(record('x', { rpc_url: 42 }))).toBe('');
  });

  it('looks a worker it has not met up in the registry, and says why one cannot be called', async () => {
    const registry = new Map<string, WorkerRecord>();
    const lookups: string[] = [];
    const dir = new RoutingWorkerDirectory(
      local,
      (id, url) => fakeRemote(id, url, []),
      silentLogger,
      async (id) => {
        lookups.push(id);
        return registry.get(id);
      },
    );
    expect(await dir.resolve('local')).toBe(local);
    expect(await dir.resolve('w9')).toBeUndefined();
    expect(dir.whyUnreachable('w9')).toBe('it is not in the worker registry');
    // A worker that heartbeats to another control plane: only the registry knows it.
    registry.set('w9', record('w9', { rpc_url: 'http://127.0.0.1:7439' }));
    const found = await dir.resolve('w9');
    expect(found?.workerId).toBe('w9');
    expect(dir.client('w9')).toBe(found);
    expect(await dir.resolve('w9')).toBe(found);
    expect(lookups).toEqual(['w9', 'w9']);
    // Another control plane's own worker that it does not serve over RPC.
    registry.set('cp-b', { ...record('cp-b', {}), capabilities: ['api', 'control_plane'] });
    expect(await dir.resolve('cp-b')).toBeUndefined();
    expect(dir.whyUnreachable('cp-b')).toContain(
      'own worker of another control plane, which does not serve it to other control planes (set worker.listen_addr there)',
    );
  });

  it('refresh picks up workers and moved RPC URLs from a registry read', () => {
    const made: string[] = [];
    const dir = new RoutingWorkerDirectory(
      local,
      (id, url) => {
        made.push(`${id}@${url}`);
        return fakeRemote(id, url, []);
      },
      silentLogger,
    );
    const callable = dir.refresh([
      record('w1', { rpc_url: 'http://127.0.0.1:1' }),
      record('w2', {}),
      record('local', {}),
    ]);
    expect(callable).toBe(2);
    expect(dir.client('w1')).toBeDefined();
    dir.refresh([record('w1', { rpc_url: 'http://127.0.0.1:2' })]);
    expect(made).toEqual(['w1@http://127.0.0.1:1', 'w1@http://127.0.0.1:2']);
  });
});
