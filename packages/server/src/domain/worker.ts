/** A worker as registered by its heartbeats. Times are epoch milliseconds. */
export interface WorkerRecord {
  id: string;
  hostname: string;
  status: string;
  providers: string[];
  capabilities: string[];
  capacity: Record<string, unknown>;
  lastHeartbeatMs: number;
  createdAtMs: number;
  updatedAtMs: number;
}

/** The id the control plane's own in-process worker registers under. */
export const LOCAL_WORKER_ID = 'local';

/** A worker is stale when its last heartbeat is older than this. */
export const DEFAULT_STALE_AFTER_MS = 2 * 60 * 1000;

export function isWorkerStale(w: WorkerRecord, nowMs: number, staleAfterMs: number): boolean {
  return nowMs - w.lastHeartbeatMs > staleAfterMs;
}
