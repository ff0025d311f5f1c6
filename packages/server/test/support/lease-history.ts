/**
 * The record of a lease contention run and the invariant it must satisfy.
 *
 * Every call a contender makes is recorded with the `nowMs` it passed to the
 * store and the wall-clock interval `[callStart, callEnd]` around it (all
 * contenders run on one machine, so their `Date.now()` agree). For each
 * resource the checker requires:
 *
 * 1. Generations of successful acquisitions are unique and are exactly
 *    1..N, where N is the generation the database ends with: no two
 *    acquisitions ever got the same fencing token and none was lost.
 * 2. Acquisitions complete in generation order: acquisition g+1 cannot end
 *    before acquisition g started.
 * 3. Exactly one holder at a time: when generation g+1 goes to a different
 *    holder than g, either g was released first (its release started before
 *    the acquisition of g+1 ended) or g+1 was acquired at a time `nowMs` no
 *    earlier than the latest expiry ever granted to g (by its acquisition or
 *    any renewal). So no holder's unexpired window overlaps another's.
 * 4. Fencing: a successful renew or release of generation g is by g's holder
 *    and started before the acquisition of g+1 ended; a renewal of g does not
 *    start after g's release ended; a call a contender made with a token it
 *    already knew to be superseded (`stale`) never succeeds.
 * 5. Nothing failed other than by a CONFLICT (or `false` from release).
 */
export interface LeaseEvent {
  op: 'acquire' | 'renew' | 'release';
  ok: boolean;
  /** The contender knew this token had been superseded when it made the call. */
  stale?: boolean;
  resourceId: string;
  holderId: string;
  generation: number;
  /** `nowMs` passed to the store. */
  nowMs: number;
  /** Expiry the store granted (successful acquire and renew). */
  expiresAtMs?: number;
  callStart: number;
  callEnd: number;
  /** Which process made the call. */
  proc: string;
}

/** What a contender reports besides its events. */
export interface ContenderReport {
  proc: string;
  events: LeaseEvent[];
  /** CONFLICT refusals of acquire (not recorded one by one). */
  acquireConflicts: number;
  /** Errors that were not the expected refusals. */
  errors: string[];
}

export interface HistorySummary {
  acquisitions: number;
  /** Acquisitions that took a lease from a holder of the other process. */
  crossProcessHandovers: number;
  /** Handovers to another holder after an expiry (no release). */
  expiryHandovers: number;
  /** Handovers to another holder after a release. */
  releaseHandovers: number;
  renewals: number;
  releases: number;
  staleProbes: number;
}

/** Checks the invariant; returns the violations (empty when it holds) and counts. */
export function checkLeaseHistory(
  events: readonly LeaseEvent[],
  finalGenerations: ReadonlyMap<string, number>,
): { violations: string[]; summary: HistorySummary } {
  const violations: string[] = [];
  const summary: HistorySummary = {
    acquisitions: 0,
    crossProcessHandovers: 0,
    expiryHandovers: 0,
    releaseHandovers: 0,
    renewals: 0,
    releases: 0,
    staleProbes: 0,
  };
  const byResource = new Map<string, LeaseEvent[]>();
  for (const e of events) {
    const list = byResource.get(e.resourceId) ?? [];
    list.push(e);
    byResource.set(e.resourceId, list);
    if (e.stale === true) {
      summary.staleProbes++;
      if (e.ok)
        violations.push(
          `${e.resourceId}: stale ${e.op} of generation ${e.generation} by ${e.holderId} succeeded`,
        );
    }
  }
  for (const [resource, final] of finalGenerations) {
    if (!byResource.has(resource) && final > 0) {
      violations.push(
        `${resource}: database is at generation ${final} but no acquisition was recorded`,
      );
    }
  }

  for (const [resource, list] of byResource) {
    const v = (msg: string): void => {
      violations.push(`${resource}: ${msg}`);
    };
    const acquisitions = new Map<number, LeaseEvent>();
    const renewals = new Map<number, LeaseEvent[]>();
    const releases = new Map<number, LeaseEvent>();
    for (const e of list) {
      if (!e.ok) continue;
      if (e.op === 'acquire') {
        summary.acquisitions++;
        const prev = acquisitions.get(e.generation);
        if (prev !== undefined) {
          v(`generation ${e.generation} acquired twice (${prev.holderId}, ${e.holderId})`);
        }
        acquisitions.set(e.generation, e);
      } else if (e.op === 'renew') {
        summary.renewals++;
        const rs = renewals.get(e.generation) ?? [];
        rs.push(e);
        renewals.set(e.generation, rs);
      } else {
        summary.releases++;
        if (releases.has(e.generation)) v(`generation ${e.generation} released twice`);
        releases.set(e.generation, e);
      }
    }

    const final = finalGenerations.get(resource) ?? 0;
    for (let g = 1; g <= final; g++) {
      if (!acquisitions.has(g))
        v(`generation ${g} was never recorded as acquired (lost acquisition)`);
    }
    for (const g of acquisitions.keys()) {
      if (g < 1 || g > final) v(`generation ${g} is outside 1..${final}`);
    }

    for (const [g, acq] of acquisitions) {
      const next = acquisitions.get(g + 1);
      const rel = releases.get(g);
      const rs = renewals.get(g) ?? [];
      for (const op of [...rs, ...(rel === undefined ? [] : [rel])]) {
        if (op.holderId !== acq.holderId) {
          v(`${op.op} of generation ${g} by ${op.holderId} succeeded but ${acq.holderId} holds it`);
        }
        if (next !== undefined && op.callStart > next.callEnd) {
          v(`${op.op} of generation ${g} succeeded after generation ${g + 1} was acquired`);
        }
      }
      if (rel !== undefined) {
        for (const r of rs) {
          if (r.callStart > rel.callEnd)
            v(`renewal of generation ${g} succeeded after its release`);
        }
      }
      if (next === undefined) continue;
      if (next.callEnd < acq.callStart) {
        v(`generation ${g + 1} was acquired before generation ${g}`);
      }
      if (next.holderId === acq.holderId) continue;
      if (next.proc !== acq.proc) summary.crossProcessHandovers++;
      const releasedFirst = rel !== undefined && rel.callStart <= next.callEnd;
      if (releasedFirst) {
        summary.releaseHandovers++;
        continue;
      }
      const end = Math.max(acq.expiresAtMs ?? 0, ...rs.map((r) => r.expiresAtMs ?? 0));
      if (next.nowMs < end) {
        v(
          `generation ${g + 1} (${next.holderId}) acquired at ${next.nowMs} while generation ${g} ` +
            `(${acq.holderId}) was unexpired until ${end} and not released`,
        );
      } else {
        summary.expiryHandovers++;
      }
    }
  }
  return { violations, summary };
}
