import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, test, vi } from 'vitest';
import type { PgCluster, TestDatabase } from '../../../test/support/pg-cluster.js';
import {
  createTestDatabase,
  findPgBin,
  startPgCluster,
  withAdmin,
} from '../../../test/support/pg-cluster.js';
import type { Logger } from '../../domain/logger.js';
import { createPostgresStore } from './open-postgres.js';
import { PG_NOTIFY_INLINE_MAX_BYTES, PgClusterChannel, PgLeaderLock } from './pg-cluster.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 50 ms until it is true; fails after `ms`. */
async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

/** A logger that keeps its lines, to check what an operator would read. */
function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log =
    (level: string) =>
    (obj: Record<string, unknown>, msg?: string): void => {
      lines.push(`${level} ${msg ?? ''} ${JSON.stringify(obj)}`);
    };
  return { lines, debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

async function terminate(dsn: string, database: string, applicationName: string): Promise<number> {
  return withAdmin(dsn, async (c) => {
    const r = await c.query(
      'select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = $2',
      [database, applicationName],
    );
    return r.rowCount ?? 0;
  });
}

describe.skipIf(adminDsn === '')(
  `postgres cluster coordination${skipReason ? ` (${skipReason})` : ''}`,
  () => {
    let db: TestDatabase;

    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'cluster');
      const store = await createPostgresStore({ dsn: db.dsn });
      await store.migrate();
      await store.close();
    });
    afterAll(async () => {
      await db.drop();
    });

    test('every listener gets every message in order; a large one goes through cluster_events', async () => {
      const logger = recordingLogger();
      const a = new PgClusterChannel({ dsn: db.dsn, logger });
      const b = new PgClusterChannel({ dsn: db.dsn, logger });
      const gotA: string[] = [];
      const gotB: string[] = [];
      try {
        await a.subscribe((p) => gotA.push(p));
        await b.subscribe((p) => gotB.push(p));
        const small = Array.from({ length: 20 }, (_, i) => `{"n":${i}}`);
        for (const m of small) await a.publish(m);
        const large = JSON.stringify({ big: 'x'.repeat(PG_NOTIFY_INLINE_MAX_BYTES * 3) });
        await b.publish(large);
        // Exactly at the limit still goes inline.
        const edge = 'y'.repeat(PG_NOTIFY_INLINE_MAX_BYTES);
        await b.publish(edge);
        await until('both got all 22', () => gotA.length === 22 && gotB.length === 22);
        expect(gotB.slice(0, 20)).toEqual(small);
        // The large one is fetched by id, so it may land after the inline one sent after it.
        for (const got of [gotA, gotB]) {
          expect(got.slice(20).sort((x, y) => x.length - y.length)).toEqual([edge, large]);
        }
        const rows = await withAdmin(db.dsn, async (c) => {
          const r = await c.query<{ n: string }>('select count(*) as n from cluster_events');
          return Number(r.rows[0]?.n);
        });
        expect(rows).toBe(1);
      } finally {
        await a.close();
        await b.close();
      }
    });

    test('publishMany: one statement for a run of payloads, delivered in order, duplicates kept', async () => {
      const logger = recordingLogger();
      const a = new PgClusterChannel({ dsn: db.dsn, logger });
      const b = new PgClusterChannel({ dsn: db.dsn, logger });
      const got: string[] = [];
      // Every statement the channels send, by its text.
      const spy = vi.spyOn(pg.Pool.prototype, 'query');
      const sent = (): string[] =>
        spy.mock.calls.map((c) => {
          const q: unknown = c[0];
          return typeof q === 'string' ? q : String((q as { text?: unknown }).text);
        });
      try {
        await b.subscribe((p) => got.push(p));
        const batch = Array.from({ length: 100 }, (_, i) => `{"m":${i}}`);
        spy.mockClear();
        await a.publishMany(batch);
        await until('all 100', () => got.length === 100);
        expect(got).toEqual(batch);
        expect(sent()).toHaveLength(1);
        expect(sent()[0]).toContain('unnest');

        // Equal payloads are all delivered (each equal one starts a new
        // statement); a large one goes through cluster_events in between.
        got.length = 0;
        spy.mockClear();
        const large = JSON.stringify({ big: 'z'.repeat(PG_NOTIFY_INLINE_MAX_BYTES + 10) });
        await a.publishMany(['same', 'same', 'x', 'same', large, 'after']);
        await until('all 6', () => got.length === 6);
        expect(got.slice(0, 4)).toEqual(['same', 'same', 'x', 'same']);
        expect(got.slice(4).sort((p, q) => p.length - q.length)).toEqual(['after', large]);
        expect(sent().filter((t) => t.includes('pg_notify'))).toHaveLength(5);
      } finally {
        spy.mockRestore();
        await a.close();
        await b.close();
      }
    });

    test('a listener whose connection is killed reconnects and hears new messages', async () => {
      const logger = recordingLogger();
      const sender = new PgClusterChannel({ dsn: db.dsn, logger });
      const listener = new PgClusterChannel({ dsn: db.dsn, logger });
      const got: string[] = [];
      let resyncs = 0;
      try {
        await listener.subscribe(
          (p) => got.push(p),
          () => (resyncs += 1),
        );
        await sender.publish('before');
        await until('before', () => got.includes('before'));
        expect(resyncs).toBe(0);
        expect(await terminate(adminDsn, db.name, 'stacyvm-listen')).toBeGreaterThan(0);
        await until('listener noticed', () => !listener.listening);
        await until('listener back', () => listener.listening);
        expect(resyncs).toBe(1);
        await sender.publish('after');
        await until('after', () => got.includes('after'));
        expect(logger.lines.some((l) => l.includes('lost the connection that listens'))).toBe(true);
        expect(
          logger.lines.some((l) => l.includes('listening for other control planes’ events again')),
        ).toBe(true);
      } finally {
        await sender.close();
        await listener.close();
      }
    });

    test('one leader at a time; the lock passes on when the leader closes or its session dies', async () => {
      const logger = recordingLogger();
      const a = new PgLeaderLock({ dsn: db.dsn, logger, key: 4242 });
      const b = new PgLeaderLock({ dsn: db.dsn, logger, key: 4242 });
      const c = new PgLeaderLock({ dsn: db.dsn, logger, key: 4242 });
      try {
        expect(await a.tryLead()).toBe(true);
        expect(await b.tryLead()).toBe(false);
        expect(await c.tryLead()).toBe(false);
        // Asking again does not stack the lock (re-entrant advisory locks would).
        for (let i = 0; i < 5; i++) expect(await a.tryLead()).toBe(true);
        expect(a.leading).toBe(true);
        await a.close();
        expect(await a.tryLead()).toBe(false);
        const next = [await b.tryLead(), await c.tryLead()];
        expect(next).toEqual([true, false]);

        // The leader's session dies (host lost): the next tryLead of another takes over.
        expect(await terminate(adminDsn, db.name, 'stacyvm-leader')).toBeGreaterThan(0);
        await until('c takes over', async () => (await c.tryLead()) === true);
        await sleep(600);
        expect(await b.tryLead()).toBe(false);
        expect(b.leading).toBe(false);
        expect(logger.lines.some((l) => l.includes('lost the database session'))).toBe(true);
        expect(logger.lines.some((l) => l.includes('another control plane runs'))).toBe(true);
      } finally {
        await Promise.all([a.close(), b.close(), c.close()]);
      }
    });

    test('concurrent tryLead calls of one process share one attempt', async () => {
      const logger = recordingLogger();
      const a = new PgLeaderLock({ dsn: db.dsn, logger, key: 4343 });
      try {
        const results = await Promise.all(Array.from({ length: 10 }, () => a.tryLead()));
        expect(results.every((r) => r)).toBe(true);
        const held = await withAdmin(db.dsn, async (c) => {
          const r = await c.query<{ n: string }>(
            "select count(*) as n from pg_locks where locktype = 'advisory' and objid = 4343 and granted",
          );
          return Number(r.rows[0]?.n);
        });
        expect(held).toBe(1);
      } finally {
        await a.close();
      }
    });

    describe('server restart', () => {
      let cluster: PgCluster | undefined;
      afterAll(() => cluster?.destroy());

      test('while Postgres is down: publish fails naming the database, nobody leads; both recover', async () => {
        const { bin } = findPgBin();
        if (bin === undefined) throw new Error('no postgres binaries');
        cluster = await startPgCluster(bin);
        const dsn = cluster.adminDsn;
        const store = await createPostgresStore({ dsn });
        await store.migrate();
        await store.close();
        const logger = recordingLogger();
        const channel = new PgClusterChannel({ dsn, logger });
        const lock = new PgLeaderLock({ dsn, logger, key: 7 });
        const got: string[] = [];
        try {
          await channel.subscribe((p) => got.push(p));
          expect(await lock.tryLead()).toBe(true);
          cluster.stop();
          const err = await channel.publish('while down').then(
            () => undefined,
            (e: unknown) => e as Error,
          );
          expect(err?.message).toContain(
            `postgres database "postgres" on 127.0.0.1:${cluster.port}`,
          );
          await sleep(LEAD_RECHECK_MS);
          expect(await lock.tryLead()).toBe(false);
          await until('listener noticed', () => !channel.listening);
          cluster.start();
          await until('listener back', () => channel.listening, 20_000);
          await until('leads again', async () => lock.tryLead(), 20_000);
          await channel.publish('after restart');
          await until('after restart', () => got.includes('after restart'));
          expect(got).not.toContain('while down');
        } finally {
          await channel.close();
          await lock.close();
        }
      }, 90_000);
    });
  },
);

/** Longer than the lock's re-check interval, so the next tryLead asks the database. */
const LEAD_RECHECK_MS = 600;
