import type { WorkerClient } from './worker-client.js';

/**
 * The control plane's route to its own `local` worker: a direct call, no
 * serialisation. Given the runtime itself so the orchestrator sees only the
 * WorkerClient interface, exactly as it will for a remote worker.
 */
export function createInProcessWorkerClient(runtime: WorkerClient): WorkerClient {
  return runtime;
}

/** A directory of worker clients keyed by worker id. */
export class StaticWorkerDirectory {
  private readonly clients = new Map<string, WorkerClient>();
  constructor(clients: WorkerClient[]) {
    for (const c of clients) this.clients.set(c.workerId, c);
  }
  client(workerId: string): WorkerClient | undefined {
    return this.clients.get(workerId);
  }
  add(client: WorkerClient): void {
    this.clients.set(client.workerId, client);
  }
}
