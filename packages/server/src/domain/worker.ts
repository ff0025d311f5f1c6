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

/**
 * The id a single control plane's own in-process worker registers under
 * (`server.local_worker_id` default). Always reserved: no remote worker may
 * take it.
 */
export const LOCAL_WORKER_ID = 'local';

/** `server.local_worker_id` value that derives the id from host name and API port. */
export const AUTO_LOCAL_WORKER_ID = 'auto';

/**
 * Capability a control plane's own worker carries in the registry. A remote
 * worker may not heartbeat under the id of a record that has it.
 */
export const CONTROL_PLANE_CAPABILITY = 'control_plane';

/** Worker ids: 1-128 letters, digits, `.`, `_` or `-`. */
export const WORKER_ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * The id of a control plane's own worker from `server.local_worker_id`:
 * the value itself, or for `auto` `local-<hostname>-<port>` (host name
 * characters outside the id alphabet become `-`). Throws an Error naming
 * the key for an unusable value, or for `auto` with port 0 (the id would
 * not be stable or distinct).
 */
export function resolveLocalWorkerId(setting: string, host: string, port: number): string {
  const value = setting.trim();
  if (value === AUTO_LOCAL_WORKER_ID) {
    if (!(port > 0)) {
      throw new Error(
        'server.local_worker_id: "auto" needs a fixed server.port (it is 0); set a distinct id such as cp-a instead',
      );
    }
    const h =
      host
        .trim()
        .toLowerCase()
        .replace(/[^a-z0-9._-]+/g, '-')
        .replace(/^-+|-+$/g, '') || 'host';
    return `local-${h}-${port}`.slice(0, 128);
  }
  if (!WORKER_ID_PATTERN.test(value)) {
    throw new Error(
      `server.local_worker_id: "${value}" must be 1-128 characters of letters, digits, ".", "_" or "-" (or "auto")`,
    );
  }
  return value;
}

/** A worker is stale when its last heartbeat is older than this. */
export const DEFAULT_STALE_AFTER_MS = 2 * 60 * 1000;

export function isWorkerStale(w: WorkerRecord, nowMs: number, staleAfterMs: number): boolean {
  return nowMs - w.lastHeartbeatMs > staleAfterMs;
}
