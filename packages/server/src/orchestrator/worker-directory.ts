import type { Logger } from '../domain/logger.js';
import type { WorkerRecord } from '../domain/worker.js';
import { CONTROL_PLANE_CAPABILITY } from '../domain/worker.js';
import type { CallOptions } from '../providers/provider.js';
import type { WorkerClient, WorkerDirectory } from '../rpc/worker-client.js';

/** A client for a worker in another process: worker RPC over HTTP(S). */
export interface RemoteWorkerClient extends WorkerClient {
  /** Asks the worker to drain: it refuses new sandboxes and keeps serving its own. */
  shutdown(opts?: CallOptions): Promise<void>;
  /** Releases connections. */
  close(): Promise<void>;
}

/**
 * Builds the client for a remote worker at `rpcUrl`, or says why the control
 * plane cannot call it (no credential configured for that worker).
 */
export type RemoteClientFactory = (
  workerId: string,
  rpcUrl: string,
) => RemoteWorkerClient | { unavailable: string };

/** The RPC URL a worker advertised in its heartbeat, or '' when it has none. */
export function advertisedRpcUrl(w: Pick<WorkerRecord, 'capacity'>): string {
  const v = w.capacity['rpc_url'];
  return typeof v === 'string' ? v.trim() : '';
}

interface Entry {
  rpcUrl: string;
  client: RemoteWorkerClient;
}

/**
 * Every worker the control plane can reach: its own in-process worker, and
 * a worker-RPC client per other worker (remote workers, and the own workers
 * of other control planes that serve them), (re)built whenever a heartbeat
 * or a registry read shows a new RPC URL. A worker deleted from the
 * registry keeps its client, so its sandboxes stay reachable until it is
 * gone for real (the liveness sweep handles that).
 *
 * With several control planes a worker may heartbeat to another one, so
 * this process learns about it from the registry: {@link resolve} looks an
 * unknown worker up there, and {@link refresh} (called on an interval)
 * picks up moved RPC URLs.
 */
export class RoutingWorkerDirectory implements WorkerDirectory {
  private readonly remotes = new Map<string, Entry>();
  private readonly refusals = new Map<string, string>();

  constructor(
    private readonly local: WorkerClient,
    private readonly factory: RemoteClientFactory,
    private readonly logger: Logger,
    /** Reads a worker's registry record (the store); without it {@link resolve} only knows what it observed. */
    private readonly lookup?: (workerId: string) => Promise<WorkerRecord | undefined>,
  ) {}

  client(workerId: string): WorkerClient | undefined {
    if (workerId === this.local.workerId) return this.local;
    return this.remotes.get(workerId)?.client;
  }

  async resolve(workerId: string): Promise<WorkerClient | undefined> {
    const known = this.client(workerId);
    if (known !== undefined || this.lookup === undefined) return known;
    const record = await this.lookup(workerId);
    if (record === undefined) {
      this.refusals.set(workerId, 'it is not in the worker registry');
      return undefined;
    }
    this.observe(record);
    return this.client(workerId);
  }

  whyUnreachable(workerId: string): string | undefined {
    return this.refusals.get(workerId);
  }

  /** Observes every record (a registry read); returns how many are callable. */
  refresh(records: readonly WorkerRecord[]): number {
    let callable = 0;
    for (const w of records) if (this.observe(w) === undefined) callable += 1;
    return callable;
  }

  /** The remote client of a worker (never the local one). */
  remote(workerId: string): RemoteWorkerClient | undefined {
    return this.remotes.get(workerId)?.client;
  }

  /**
   * Learns a worker's RPC address from its record. Returns why the worker
   * cannot be called, or undefined when it can.
   */
  observe(w: WorkerRecord): string | undefined {
    if (w.id === this.local.workerId) return undefined;
    const rpcUrl = advertisedRpcUrl(w);
    if (rpcUrl === '') {
      this.refusals.set(
        w.id,
        w.capabilities.includes(CONTROL_PLANE_CAPABILITY)
          ? 'it is the own worker of another control plane, which does not serve it to other control planes (set worker.listen_addr there)'
          : 'advertises no rpc_url (worker runs without --listen)',
      );
      return this.refusals.get(w.id);
    }
    const cur = this.remotes.get(w.id);
    if (cur !== undefined && cur.rpcUrl === rpcUrl) return undefined;
    const made = this.factory(w.id, rpcUrl);
    if ('unavailable' in made) {
      this.refusals.set(w.id, made.unavailable);
      return made.unavailable;
    }
    this.refusals.delete(w.id);
    this.remotes.set(w.id, { rpcUrl, client: made });
    if (cur !== undefined) {
      this.logger.info({ worker_id: w.id, rpc_url: rpcUrl }, 'worker moved to a new RPC URL');
      void cur.client.close().catch(() => undefined);
    }
    return undefined;
  }

  /**
   * Why placement must pass over this worker even though it is healthy:
   * the control plane has no way to call it. Undefined when it can.
   */
  unreachableReason(w: WorkerRecord): string | undefined {
    if (w.id === this.local.workerId) return undefined;
    const cur = this.remotes.get(w.id);
    if (cur !== undefined && cur.rpcUrl === advertisedRpcUrl(w)) return undefined;
    return this.observe(w);
  }

  async close(): Promise<void> {
    const all = [...this.remotes.values()];
    this.remotes.clear();
    await Promise.all(all.map((e) => e.client.close().catch(() => undefined)));
  }
}
