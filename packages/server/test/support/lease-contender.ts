/**
 * One control-plane process of the lease contention test: opens its own
 * Postgres store (its own pool) and, after "go" on stdin, runs `workers`
 * concurrent contenders that acquire, renew, release, abandon and probe with
 * stale tokens on the same resources for `durationMs`. Then it probes every
 * superseded token it knows of and writes a {@link ContenderReport} as JSON.
 *
 * Run with the hooks of ts-child.ts:
 * `node --import ... lease-contender.ts <config-json> <report-file>`.
 */
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { isStacyError } from '../../src/domain/errors.js';
import type { LeaseToken } from '../../src/domain/lease.js';
import { createPostgresStore } from '../../src/store/postgres/open-postgres.js';
import type { Store } from '../../src/store/store.js';
import type { ContenderReport, LeaseEvent } from './lease-history.js';

export interface ContenderConfig {
  dsn: string;
  proc: string;
  resources: string[];
  workers: number;
  durationMs: number;
  maxOpenConns: number;
  minTtlMs: number;
  maxTtlMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const rand = (lo: number, hi: number): number => lo + Math.floor(Math.random() * (hi - lo + 1));
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)] as T;

function isConflict(err: unknown): boolean {
  return isStacyError(err) && err.code === 'CONFLICT';
}

async function main(): Promise<void> {
  const [configJson, reportFile] = process.argv.slice(2);
  if (configJson === undefined || reportFile === undefined) {
    throw new Error('usage: lease-contender <config-json> <report-file>');
  }
  const cfg = JSON.parse(configJson) as ContenderConfig;
  const store: Store = await createPostgresStore({
    dsn: cfg.dsn,
    maxOpenConns: cfg.maxOpenConns,
  });
  const report: ContenderReport = { proc: cfg.proc, events: [], acquireConflicts: 0, errors: [] };
  const record = (e: Omit<LeaseEvent, 'proc'>): void => {
    report.events.push({ ...e, proc: cfg.proc });
  };
  const unexpected = (what: string, err: unknown): void => {
    report.errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
  };
  /** Every token each holder got, per resource: older ones are superseded. */
  const tokens = new Map<string, LeaseToken[]>();

  const renew = async (token: LeaseToken, ttl: number, stale: boolean): Promise<boolean> => {
    const callStart = Date.now();
    try {
      const lease = await store.leases.renew(token, ttl, callStart);
      record({
        op: 'renew',
        ok: true,
        stale,
        ...token,
        nowMs: callStart,
        expiresAtMs: lease.expiresAtMs,
        callStart,
        callEnd: Date.now(),
      });
      return true;
    } catch (err) {
      if (!isConflict(err)) unexpected('renew', err);
      record({
        op: 'renew',
        ok: false,
        stale,
        ...token,
        nowMs: callStart,
        callStart,
        callEnd: Date.now(),
      });
      return false;
    }
  };

  const release = async (token: LeaseToken, stale: boolean): Promise<void> => {
    const callStart = Date.now();
    try {
      const ok = await store.leases.release(token, callStart);
      record({
        op: 'release',
        ok,
        stale,
        ...token,
        nowMs: callStart,
        callStart,
        callEnd: Date.now(),
      });
    } catch (err) {
      unexpected('release', err);
    }
  };

  const contender = async (holderId: string, deadline: number): Promise<void> => {
    while (Date.now() < deadline) {
      const resourceId = pick(cfg.resources);
      const ttl = rand(cfg.minTtlMs, cfg.maxTtlMs);
      const callStart = Date.now();
      let token: LeaseToken;
      try {
        const lease = await store.leases.acquire({
          resourceId,
          resourceType: 'sandbox',
          holderId,
          ttlMs: ttl,
          nowMs: callStart,
        });
        record({
          op: 'acquire',
          ok: true,
          resourceId,
          holderId,
          generation: lease.generation,
          nowMs: callStart,
          expiresAtMs: lease.expiresAtMs,
          callStart,
          callEnd: Date.now(),
        });
        token = { resourceId, holderId, generation: lease.generation };
      } catch (err) {
        if (isConflict(err)) report.acquireConflicts++;
        else unexpected('acquire', err);
        await sleep(rand(1, 8));
        continue;
      }
      const mine = tokens.get(`${holderId} ${resourceId}`) ?? [];
      const older = mine.length > 0 ? pick(mine) : undefined;
      mine.push(token);
      tokens.set(`${holderId} ${resourceId}`, mine);
      // An older token of this holder is superseded by the one just acquired.
      if (older !== undefined && Math.random() < 0.3) {
        if (Math.random() < 0.5) await renew(older, ttl, true);
        else await release(older, true);
      }
      let held = true;
      for (let i = rand(0, 3); i > 0 && held; i--) {
        // Sometimes sleeps past the expiry, so renewals are also refused.
        await sleep(rand(0, Math.ceil(ttl * 1.1)));
        held = await renew(token, ttl, false);
      }
      const roll = Math.random();
      if (roll < 0.6) await release(token, false);
      // Otherwise the lease is abandoned and must expire before another holder gets it.
      await sleep(rand(0, 2));
    }
  };

  process.stdout.write('ready\n');
  const lines = createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => {
    lines.on('line', (l) => {
      if (l.trim() === 'go') resolve();
    });
  });
  lines.close();

  const deadline = Date.now() + cfg.durationMs;
  await Promise.all(
    Array.from({ length: cfg.workers }, (_, i) => contender(`${cfg.proc}-w${i}`, deadline)),
  );

  // Sweep: every token this process knows to be superseded is refused, by
  // renew and by release, and so is one generation below the current holder's
  // (which may belong to a holder of the other process).
  for (const resourceId of cfg.resources) {
    const current = await store.leases.get(resourceId);
    if (current === undefined) continue;
    for (const [key, list] of tokens) {
      if (!key.endsWith(` ${resourceId}`)) continue;
      for (const t of list) {
        if (t.generation >= current.generation) continue;
        await renew(t, 1000, true);
        await release(t, true);
      }
    }
    if (current.generation > 1 && current.holderId !== '') {
      const foreign = {
        resourceId,
        holderId: current.holderId,
        generation: current.generation - 1,
      };
      await renew(foreign, 1000, true);
      await release(foreign, true);
    }
  }
  await store.close();
  writeFileSync(reportFile, JSON.stringify(report));
  process.stdout.write('done\n');
}

main().catch((err: unknown) => {
  process.stderr.write(
    `lease contender failed: ${err instanceof Error ? err.stack : String(err)}\n`,
  );
  process.exit(1);
});
