/**
 * A lease on a resource. `generation` grows on every acquisition and is the
 * fencing token: an operation presenting an older generation is refused.
 */
export interface Lease {
  resourceId: string;
  resourceType: string;
  holderId: string;
  generation: number;
  expiresAtMs: number;
}

/** What a holder presents to prove it still owns a lease. */
export interface LeaseToken {
  resourceId: string;
  holderId: string;
  generation: number;
  /** When the lease lapses (epoch ms); a worker refuses a lapsed lease. Absent on tokens that only fence. */
  expiresAtMs?: number;
}
