import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import type { TestDatabase } from '../../../test/support/pg-cluster.js';
import { createTestDatabase, withAdmin } from '../../../test/support/pg-cluster.js';
import { heartbeat } from '../store.contract.js';
import { statementName } from './named-statements.js';
import { createPostgresStore, preparingPool } from './open-postgres.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');

interface Db {
  items: { id: string; n: number };
}

/** A Kysely over one connection (so session state is visible), with or without names. */
function open(dsn: string, named = true): { db: Kysely<Db>; pool: pg.Pool } {
  const pool = new pg.Pool({ connectionString: dsn, max: 1 });
  pool.on('error', () => undefined);
  return {
    db: new Kysely<Db>({ dialect: new PostgresDialect({ pool: preparingPool(pool, { named }) }) }),
    pool,
  };
}

/** This session's prepared statements and how often each ran. */
async function prepared(db: Kysely<Db>): Promise<Map<string, number>> {
  const { rows } = await sql<{
    name: string;
    runs: string;
  }>`select name, (generic_plans + custom_plans)::text as runs from pg_prepared_statements`.execute(
    db,
  );
  return new Map(rows.map((r) => [r.name, Number(r.runs)]));
}

const backendPid = async (db: Kysely<Db>): Promise<number> =>
  (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)).rows[0]?.pid ?? -1;

describe.skipIf(adminDsn === '')(
  `named prepared statements${skipReason ? ` (${skipReason})` : ''}`,
  () => {
    let database: TestDatabase;

    beforeAll(async () => {
      database = await createTestDatabase(adminDsn, 'named');
      await withAdmin(database.dsn, async (c) => {
        await c.query('create table items (id text primary key, n integer not null)');
        await c.query("insert into items values ('a', 1), ('b', 2)");
      });
    });
    afterAll(async () => {
      await database.drop();
    });

    test('a data statement is prepared once per connection and reused', async () => {
      const { db } = open(database.dsn);
      try {
        const q = db.selectFrom('items').selectAll().where('id', '=', 'a');
        const name = statementName(q.compile().sql);
        expect(name).toBeDefined();
        for (const id of ['a', 'b', 'a']) {
          const row = await db
            .selectFrom('items')
            .selectAll()
            .where('id', '=', id)
            .executeTakeFirstOrThrow();
          expect(row.id).toBe(id);
        }
        const pid = await backendPid(db);
        const stmts = await prepared(db);
        // One prepared statement, run three times on the same session.
        expect(stmts.get(name ?? '')).toBe(3);
        expect(await backendPid(db)).toBe(pid);
        // Transaction control is not named; a transaction still works.
        await db.transaction().execute(async (trx) => {
          await trx.updateTable('items').set({ n: 5 }).where('id', '=', 'b').execute();
        });
        const b = await db.selectFrom('items').select('n').where('id', '=', 'b').executeTakeFirst();
        expect(b?.n).toBe(5);
        const names = [...(await prepared(db)).keys()];
        expect(names.every((n) => n.startsWith('stacy_'))).toBe(true);
      } finally {
        await db.destroy();
      }
    });

    test('without names nothing is prepared (the comparison the test above relies on)', async () => {
      const { db } = open(database.dsn, false);
      try {
        for (let i = 0; i < 3; i++) {
          await db.selectFrom('items').selectAll().where('id', '=', 'a').execute();
        }
        expect((await prepared(db)).size).toBe(0);
      } finally {
        await db.destroy();
      }
    });

    test('a prepared select * whose table changed is run again unnamed on a new connection', async () => {
      await withAdmin(database.dsn, (c) => c.query('create table wide (id text primary key)'));
      await withAdmin(database.dsn, (c) => c.query("insert into wide values ('x')"));
      const { db } = open(database.dsn);
      const wide = db as unknown as Kysely<{ wide: { id: string; extra?: string } }>;
      try {
        const read = () => wide.selectFrom('wide').selectAll().where('id', '=', 'x').execute();
        expect(await read()).toEqual([{ id: 'x' }]);
        const before = await backendPid(db);
        // Another process changes the table's columns.
        await withAdmin(database.dsn, (c) =>
          c.query("alter table wide add column extra text not null default 'e'"),
        );
        expect(await read()).toEqual([{ id: 'x', extra: 'e' }]);
        // The connection with the stale plan was dropped; the next one prepares afresh.
        expect(await backendPid(db)).not.toBe(before);
        expect(await read()).toEqual([{ id: 'x', extra: 'e' }]);

        // Inside a transaction the failed statement cannot be re-run: the error
        // stands, the transaction rolls back, and the connection is replaced.
        const second = await backendPid(db);
        await withAdmin(database.dsn, (c) => c.query('alter table wide add column more integer'));
        const err = await db
          .transaction()
          .execute((trx) =>
            (trx as unknown as typeof wide)
              .selectFrom('wide')
              .selectAll()
              .where('id', '=', 'x')
              .execute(),
          )
          .then(
            () => undefined,
            (e: unknown) => e as Error & { code?: string },
          );
        expect(err?.code).toBe('0A000');
        expect(await read()).toEqual([{ id: 'x', extra: 'e', more: null }]);
        expect(await backendPid(db)).not.toBe(second);
      } finally {
        await db.destroy();
      }
    });

    test('the store works on named statements through a schema migration in another process', async () => {
      const other = await createTestDatabase(adminDsn, 'named_store');
      const store = await createPostgresStore({ dsn: other.dsn, maxOpenConns: 1 });
      try {
        await store.migrate();
        const now = Date.now();
        await store.workers.upsertHeartbeat(heartbeat('w1', { hostname: 'h' }), now);
        expect((await store.workers.list()).map((w) => w.id)).toEqual(['w1']);
        await withAdmin(other.dsn, (c) => c.query('alter table workers add column future text'));
        // `select *` now has another column: still answered, and mapped as before.
        expect((await store.workers.list()).map((w) => w.id)).toEqual(['w1']);
        expect((await store.workers.get('w1'))?.hostname).toBe('h');
      } finally {
        await store.close();
        await other.drop();
      }
    });
  },
);
