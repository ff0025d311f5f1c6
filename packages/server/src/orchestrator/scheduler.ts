import type { WorkerRecord } from '../domain/worker.js';

export type PlacementReason =
  'local_fallback' | 'local_selected' | 'remote_worker_selected' | 'no_eligible_worker';

export interface PlacementInput {
  workers: WorkerRecord[];
  /** Live sandbox count per worker id. */
  activeByWorker: Map<string, number>;
  provider: string;
  localWorkerId: string;
  nowMs: number;
  staleAfterMs: number;
  /** Why the control plane cannot call a worker (no RPC address or credential); undefined when it can. */
  unreachable?: (w: WorkerRecord) => string | undefined;
}

export interface PlacementDecision {
  workerId: string | undefined;
  reason: PlacementReason;
  eligible: string[];
  /** Why each ineligible worker was passed over. */
  rejected: Record<string, string>;
}

function capacityLimit(w: WorkerRecord): number {
  const v = w.capacity['max_sandboxes'];
  return typeof v === 'number' && v > 0 ? v : 0;
}

/**
 * Picks a worker for a new sandbox. A fresh eligible local worker is preferred
 * (as the worker document says); otherwise the least-loaded eligible worker
 * that supports the provider, ties broken by id. Pure: no I/O.
 */
export function placeSandbox(input: PlacementInput): PlacementDecision {
  const rejected: Record<string, string> = {};
  const eligible: WorkerRecord[] = [];
  for (const w of input.workers) {
    const provider = input.provider.toLowerCase();
    if (w.status.toLowerCase() !== 'online') rejected[w.id] = `status is ${w.status}`;
    else if (input.nowMs - w.lastHeartbeatMs > input.staleAfterMs)
      rejected[w.id] = 'heartbeat is stale';
    else if (w.providers.length > 0 && !w.providers.some((p) => p.toLowerCase() === provider))
      rejected[w.id] = `does not offer provider ${input.provider}`;
    else {
      const cap = capacityLimit(w);
      const active = input.activeByWorker.get(w.id) ?? 0;
      const unreachable = input.unreachable?.(w);
      if (cap > 0 && active >= cap) rejected[w.id] = `at capacity (${active}/${cap})`;
      else if (unreachable !== undefined) rejected[w.id] = `unreachable: ${unreachable}`;
      else eligible.push(w);
    }
  }
  const eligibleIds = eligible.map((w) => w.id);
  if (input.workers.length === 0) {
    return { workerId: input.localWorkerId, reason: 'local_fallback', eligible: [], rejected };
  }
  const local = eligible.find((w) => w.id === input.localWorkerId);
  if (local !== undefined) {
    return { workerId: local.id, reason: 'local_selected', eligible: eligibleIds, rejected };
  }
  let best: WorkerRecord | undefined;
  for (const w of eligible) {
    const load = input.activeByWorker.get(w.id) ?? 0;
    const bestLoad = best === undefined ? Infinity : (input.activeByWorker.get(best.id) ?? 0);
    if (load < bestLoad || (load === bestLoad && best !== undefined && w.id < best.id)) best = w;
  }
  if (best === undefined) {
    return { workerId: undefined, reason: 'no_eligible_worker', eligible: eligibleIds, rejected };
  }
  return { workerId: best.id, reason: 'remote_worker_selected', eligible: eligibleIds, rejected };
}
