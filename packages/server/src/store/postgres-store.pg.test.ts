import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import type { PgCluster, TestDatabase } from '../../test/support/pg-cluster.js';
import {
  PG_PASSWORD_ROLE,
  createTestDatabase,
  findPgBin,
  startPgCluster,
  withAdmin,
} from '../../test/support/pg-cluster.js';
import { StacyError } from '../domain/errors.js';
import { createStore } from './create-store.js';
import { LATEST_SCHEMA_VERSION, MIGRATIONS, runMigrations } from './migrations.js';
import type { Migration } from './migrations.js';
import {
  PG_MIGRATION_LOCK_KEY,
  createPostgresStore,
  postgresDialectAdapter,
} from './postgres/open-postgres.js';
import type { Store } from './store.js';
import { describeStoreContract } from './store.contract.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');
const T0 = Date.UTC(2026, 0, 1);
const PASSWORD = 'Sup3r-Secret-Pw-7f3a';

async function rejection(promise: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

/** Everything an error could show: message, details and its cause chain. */
function everything(err: StacyError): string {
  const parts: string[] = [err.message, JSON.stringify(err.details ?? [])];
  let cause: unknown = err.cause;
  while (cause !== undefined && cause !== null) {
    parts.push(
      cause instanceof Error ? `${cause.message} ${JSON.stringify(cause)}` : JSON.stringify(cause),
    );
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return parts.join('\n');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function rawKysely(dsn: string): Kysely<unknown> {
  const pool = new pg.Pool({ connectionString: dsn, max: 2 });
  pool.on('error', () => undefined);
  return new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
}

const adapter = postgresDialectAdapter('test database', (t) => t);

async function tables(dsn: string): Promise<string[]> {
  return withAdmin(dsn, async (c) => {
    const r = await c.query<{ tablename: string }>(
      "select tablename from pg_tables where schemaname = 'public' order by tablename",
    );
    return r.rows.map((row) => row.tablename);
  });
}

async function backends(database: string): Promise<number[]> {
  return withAdmin(adminDsn, async (c) => {
    const r = await c.query<{ pid: number }>(
      'select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()',
      [database],
    );
    return r.rows.map((row) => row.pid);
  });
}

describe.skipIf(adminDsn === '')(`postgres store${skipReason ? ` (${skipReason})` : ''}`, () => {
  describeStoreContract('postgres', async () => {
    const db = await createTestDatabase(adminDsn, 'contract');
    const store = await createPostgresStore({ dsn: db.dsn });
    return { store, cleanup: () => db.drop() };
  });

  describe('postgres specifics', () => {
    let db: TestDatabase;
    const opened: Store[] = [];
    const open = async (
      opts: Partial<Parameters<typeof createPostgresStore>[0]> = {},
    ): Promise<Store> => {
      const s = await createPostgresStore({ dsn: db.dsn, ...opts });
      opened.push(s);
      return s;
    };

    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'pgspec');
    });
    afterAll(async () => {
      await Promise.all(opened.map((s) => s.close()));
      await db.drop();
    });

    test('createStore opens postgres with the configured pool size', async () => {
      const store = await createStore({
        driver: 'postgres',
        dsn: db.dsn,
        maxOpenConns: 2,
        statementTimeoutMs: 1234,
      });
      opened.push(store);
      expect(store.dialect).toBe('postgres');
      await store.migrate();
      await Promise.all(Array.from({ length: 20 }, () => store.ping()));
      const conns = await withAdmin(adminDsn, async (c) => {
        const r = await c.query<{ n: string }>(
          "select count(*) as n from pg_stat_activity where datname = $1 and application_name = 'stacyvm'",
          [db.name],
        );
        return Number(r.rows[0]?.n);
      });
      expect(conns).toBeGreaterThan(0);
      expect(conns).toBeLessThanOrEqual(2);
    });

    test('cancels a statement that outlasts statement_timeout, as a retryable UNAVAILABLE', async () => {
      const store = await open({ statementTimeoutMs: 300 });
      await store.migrate();
      await store.leases.acquire({
        resourceId: 'sb-timeout',
        resourceType: 'sandbox',
        holderId: 'w1',
        ttlMs: 1000,
        nowMs: T0,
      });
      const locker = new pg.Client({ connectionString: db.dsn });
      await locker.connect();
      try {
        await locker.query('begin');
        await locker.query("select * from leases where resource_id = 'sb-timeout' for update");
        const started = Date.now();
        const err = await rejection(
          store.leases.renew({ resourceId: 'sb-timeout', holderId: 'w1', generation: 1 }, 1000, T0),
        );
        const took = Date.now() - started;
        expect(err.code).toBe('UNAVAILABLE');
        expect(err.retryable).toBe(true);
        expect(err.message).toMatch(/statement timeout/);
        expect(err.message).toContain(`"${db.name}"`);
        expect(took).toBeGreaterThanOrEqual(250);
        expect(took).toBeLessThan(10_000);
      } finally {
        await locker.query('rollback');
        await locker.end();
      }
    });

    test('stores NUL characters of command output as U+FFFD instead of failing', async () => {
      const store = await open();
      await store.migrate();
      const id = await store.execLogs.append({
        sandboxId: 'sb-nul',
        command: 'cat\0x',
        args: ['a\0b'],
        mode: 'argv',
        exitCode: 0,
        stdout: 'bin\0ary\0',
        stderr: '\0',
        truncated: false,
        durationMs: 1,
        timedOut: false,
        streamed: false,
        createdAtMs: T0,
      });
      const [entry] = await store.execLogs.list('sb-nul', 1);
      expect(entry).toMatchObject({
        id,
        command: 'cat\uFFFDx',
        args: ['a\0b'],
        stdout: 'bin\uFFFDary\uFFFD',
        stderr: '\uFFFD',
      });
    });
  });

  describe('migrations', () => {
    test('two concurrent migrators: one applies each migration, both end on the latest version', async () => {
      for (let round = 0; round < 4; round++) {
        const db = await createTestDatabase(adminDsn, 'mig');
        const stores = await Promise.all([0, 1, 2].map(() => createPostgresStore({ dsn: db.dsn })));
        try {
          const results = await Promise.all(stores.map((s) => s.migrate()));
          expect(results.flat().sort()).toEqual(MIGRATIONS.map((m) => m.version).sort());
          expect(results.filter((r) => r.length > 0)).toHaveLength(1);
          for (const s of stores) expect(await s.schemaVersion()).toBe(LATEST_SCHEMA_VERSION);
        } finally {
          await Promise.all(stores.map((s) => s.close()));
          await db.drop();
        }
      }
    });

    test('the migration lock makes a second migrator wait for a slow first one', async () => {
      const db = await createTestDatabase(adminDsn, 'slow');
      const order: string[] = [];
      const slow: Migration = {
        version: 1,
        description: 'slow',
        async up(k) {
          order.push('start');
          await sql`select pg_sleep(0.4)`.execute(k);
          await k.schema.createTable('slow_t').addColumn('x', 'integer').execute();
          order.push('end');
        },
      };
      const a = rawKysely(db.dsn);
      const b = rawKysely(db.dsn);
      try {
        const [ra, rb] = await Promise.all([
          runMigrations(a, adapter, T0, [slow]),
          (async () => {
            // Starts once the first is inside its migration (and so holds the lock).
            for (let i = 0; i < 500 && !order.includes('start'); i++) await sleep(5);
            order.push('second migrator');
            return runMigrations(b, adapter, T0, [slow]);
          })(),
        ]);
        expect(ra).toEqual([1]);
        expect(rb).toEqual([]);
        // Without the lock the second would have started the same migration.
        expect(order).toEqual(['start', 'second migrator', 'end']);
      } finally {
        await a.destroy();
        await b.destroy();
        await db.drop();
      }
    });

    test('gives up waiting for a held migration lock with UNAVAILABLE and changes nothing', async () => {
      const db = await createTestDatabase(adminDsn, 'lock');
      const holder = new pg.Client({ connectionString: db.dsn });
      await holder.connect();
      const store = await createPostgresStore({ dsn: db.dsn, migrationLockWaitMs: 300 });
      try {
        await holder.query('select pg_advisory_lock($1)', [PG_MIGRATION_LOCK_KEY]);
        const err = await rejection(store.migrate());
        expect(err.code).toBe('UNAVAILABLE');
        expect(err.message).toMatch(/another stacyvm is migrating postgres database ".*"/);
        expect(await store.schemaVersion()).toBe(0);
        expect(await tables(db.dsn)).toEqual([]);
        await holder.query('select pg_advisory_unlock($1)', [PG_MIGRATION_LOCK_KEY]);
        expect(await store.migrate()).toEqual(MIGRATIONS.map((m) => m.version));
      } finally {
        await holder.end();
        await store.close();
        await db.drop();
      }
    });

    test('refuses a database with a newer schema version, telling the user to upgrade', async () => {
      const db = await createTestDatabase(adminDsn, 'newer');
      const first = await createPostgresStore({ dsn: db.dsn });
      await first.migrate();
      await first.close();
      const newer = LATEST_SCHEMA_VERSION + 1;
      await withAdmin(db.dsn, (c) =>
        c.query('insert into schema_migrations (version, applied_at) values ($1, $2)', [newer, T0]),
      );
      const before = await tables(db.dsn);
      const store = await createPostgresStore({ dsn: db.dsn });
      try {
        const err = await rejection(store.migrate());
        expect(err.code).toBe('UNAVAILABLE');
        expect(err.message).toMatch(
          new RegExp(`schema version ${newer} is newer .*upgrade stacyvm`),
        );
        expect(await store.schemaVersion()).toBe(newer);
        expect(await tables(db.dsn)).toEqual(before);
        // serve refuses to start the same way.
        const viaFactory = await createStore({ driver: 'postgres', dsn: db.dsn });
        const again = await rejection(viaFactory.migrate());
        await viaFactory.close();
        expect(again.message).toMatch(/newer than this stacyvm understands/);
      } finally {
        await store.close();
        await db.drop();
      }
    });

    test('a failing migration leaves nothing half-written', async () => {
      const db = await createTestDatabase(adminDsn, 'fail');
      const k = rawKysely(db.dsn);
      const good: Migration = {
        version: 1,
        description: 'good',
        async up(x) {
          await x.schema.createTable('good_t').addColumn('x', 'integer').execute();
        },
      };
      const bad: Migration = {
        version: 2,
        description: 'bad',
        async up(x) {
          await x.schema.createTable('half_t').addColumn('x', 'integer').execute();
          await sql`select * from no_such_table`.execute(x);
        },
      };
      try {
        const err = await rejection(runMigrations(k, adapter, T0, [good, bad]));
        expect(err.code).toBe('INTERNAL_ERROR');
        expect(err.message).toMatch(/migration 2 \(bad\) failed/);
        expect(await tables(db.dsn)).toEqual(['good_t', 'schema_migrations']);
        const versions = await withAdmin(db.dsn, async (c) => {
          const r = await c.query<{ version: number }>('select version from schema_migrations');
          return r.rows.map((row) => row.version);
        });
        expect(versions).toEqual([1]);
        // The lock was released: a later migrator is not kept waiting.
        expect(await runMigrations(k, adapter, T0, [good])).toEqual([]);
      } finally {
        await k.destroy();
        await db.drop();
      }
    });
  });

  describe('bad input and failures name host and database, never the password', () => {
    let db: TestDatabase;
    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'bad');
      await withAdmin(adminDsn, async (c) => {
        await c.query(`drop role if exists ${PG_PASSWORD_ROLE}`);
        await c.query(`create role ${PG_PASSWORD_ROLE} login password '${PASSWORD}'`);
        await c.query(`alter database "${db.name}" owner to ${PG_PASSWORD_ROLE}`);
      });
    });
    afterAll(async () => {
      await db.drop();
      await withAdmin(adminDsn, (c) => c.query(`drop role if exists ${PG_PASSWORD_ROLE}`));
    });

    const withPassword = (password: string, database: string, port?: number): string => {
      const url = new URL(adminDsn);
      url.username = PG_PASSWORD_ROLE;
      url.password = password;
      url.pathname = `/${database}`;
      if (port !== undefined) url.port = String(port);
      return url.toString();
    };

    test('a wrong password is a login failure naming host and database', async () => {
      const wrong = 'Wr0ng-Pass-9c1e';
      const err = await rejection(createPostgresStore({ dsn: withPassword(wrong, db.name) }));
      expect(err.code).toBe('UNAVAILABLE');
      const url = new URL(adminDsn);
      expect(err.message).toContain(`postgres database "${db.name}" on 127.0.0.1:${url.port}`);
      expect(err.message).toMatch(/password authentication failed/);
      expect(everything(err)).not.toContain(wrong);
      // The right password works, and later failures do not show it either.
      const store = await createPostgresStore({ dsn: withPassword(PASSWORD, db.name) });
      try {
        await store.migrate();
        await store.ping();
      } finally {
        await store.close();
      }
    });

    test('a database that does not exist is UNAVAILABLE naming it', async () => {
      const err = await rejection(
        createPostgresStore({ dsn: withPassword(PASSWORD, 'no_such_db_x') }),
      );
      expect(err.code).toBe('UNAVAILABLE');
      expect(err.message).toContain('"no_such_db_x"');
      expect(err.message).toMatch(/does not exist/);
      expect(everything(err)).not.toContain(PASSWORD);
    });

    test('a server that is down at start is UNAVAILABLE naming host and port', async () => {
      const srv = await import('node:net').then(
        (net) =>
          new Promise<number>((resolve) => {
            const s = net.createServer();
            s.listen(0, '127.0.0.1', () => {
              const a = s.address();
              const port = typeof a === 'object' && a !== null ? a.port : 0;
              s.close(() => resolve(port));
            });
          }),
      );
      const started = Date.now();
      const err = await rejection(
        createStore({ driver: 'postgres', dsn: withPassword(PASSWORD, 'stacyvm', srv) }),
      );
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(err.code).toBe('UNAVAILABLE');
      expect(err.retryable).toBe(true);
      expect(err.message).toContain(`postgres database "stacyvm" on 127.0.0.1:${srv}`);
      expect(err.message).toMatch(/ECONNREFUSED/);
      expect(everything(err)).not.toContain(PASSWORD);
    });

    test('a DSN that is not a postgres URL is BAD_REQUEST and is not echoed', async () => {
      for (const dsn of [`host=db password=${PASSWORD}`, `mysql://u:${PASSWORD}@db/x`]) {
        const err = await rejection(createStore({ driver: 'postgres', dsn }));
        expect(err.code).toBe('BAD_REQUEST');
        expect(err.details?.[0]?.field).toBe('database.dsn');
        expect(everything(err)).not.toContain(PASSWORD);
      }
    });

    test('a connection killed mid-request fails that call with UNAVAILABLE; the pool recovers', async () => {
      const store = await createPostgresStore({ dsn: withPassword(PASSWORD, db.name) });
      try {
        await store.migrate();
        await store.leases.acquire({
          resourceId: 'sb-kill',
          resourceType: 'sandbox',
          holderId: 'w1',
          ttlMs: 60_000,
          nowMs: T0,
        });
        const locker = new pg.Client({ connectionString: db.dsn });
        await locker.connect();
        await locker.query('begin');
        await locker.query("select * from leases where resource_id = 'sb-kill' for update");
        // This renew blocks on the row lock, so its backend is busy with it when killed.
        const pending = rejection(
          store.leases.renew({ resourceId: 'sb-kill', holderId: 'w1', generation: 1 }, 60_000, T0),
        );
        let victim: number | undefined;
        for (let i = 0; i < 200 && victim === undefined; i++) {
          victim = await withAdmin(adminDsn, async (c) => {
            const r = await c.query<{ pid: number }>(
              "select pid from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'",
              [db.name],
            );
            return r.rows[0]?.pid;
          });
          if (victim === undefined) await sleep(20);
        }
        expect(victim).toBeDefined();
        await withAdmin(adminDsn, (c) => c.query('select pg_terminate_backend($1)', [victim]));
        const err = await pending;
        // At once, before anything else runs: the killed connection must not be lent out again.
        expect((await store.leases.get('sb-kill'))?.generation).toBe(1);
        await locker.query('rollback');
        await locker.end();
        expect(err.code).toBe('UNAVAILABLE');
        expect(err.retryable).toBe(true);
        expect(err.message).toMatch(
          /^renew lease: postgres database ".*" on 127\.0\.0\.1:\d+ is unavailable/,
        );
        expect(everything(err)).not.toContain(PASSWORD);
        // The dead connection was dropped; the next call gets a fresh one.
        const renewed = await store.leases.renew(
          { resourceId: 'sb-kill', holderId: 'w1', generation: 1 },
          60_000,
          T0 + 1,
        );
        expect(renewed.expiresAtMs).toBe(T0 + 1 + 60_000);
      } finally {
        await store.close();
      }
    });

    test('idle pooled connections killed by the server are replaced without a failed call', async () => {
      const store = await createPostgresStore({ dsn: db.dsn, maxOpenConns: 4 });
      try {
        await store.migrate();
        await Promise.all(Array.from({ length: 8 }, () => store.ping()));
        const pids = await backends(db.name);
        expect(pids.length).toBeGreaterThan(0);
        await withAdmin(adminDsn, (c) =>
          c.query('select pg_terminate_backend(pid) from unnest($1::int[]) as pid', [pids]),
        );
        // Wait for the backends to exit; their goodbye reaches the idle clients.
        for (let i = 0; i < 200 && (await backends(db.name)).some((p) => pids.includes(p)); i++) {
          await sleep(20);
        }
        await sleep(50);
        for (let i = 0; i < 8; i++) await store.ping();
        await Promise.all(Array.from({ length: 8 }, () => store.workers.list()));
      } finally {
        await store.close();
      }
    });
  });

  describe('serialization failures', () => {
    test('are retried: repeatable-read contention yields CONFLICTs, never UNAVAILABLE', async () => {
      const db = await createTestDatabase(adminDsn, 'rr');
      await withAdmin(adminDsn, (c) =>
        c.query(
          `alter database "${db.name}" set default_transaction_isolation = 'repeatable read'`,
        ),
      );
      const acquireSql =
        'insert into leases (resource_id, resource_type, holder_id, generation, expires_at, created_at, updated_at) ' +
        "values ($1, 'sandbox', $2, 1, $3, $4, $4) on conflict (resource_id) do update set holder_id = excluded.holder_id, " +
        'generation = leases.generation + 1, expires_at = excluded.expires_at where leases.expires_at <= $4 or leases.holder_id = $2';
      const store = await createPostgresStore({ dsn: db.dsn, maxOpenConns: 16 });
      const raw = new pg.Pool({ connectionString: db.dsn, max: 16 });
      raw.on('error', () => undefined);
      try {
        await store.migrate();
        // The same statement without the store's retry does hit 40001 here.
        let rawFailures = 0;
        for (let round = 0; round < 50 && rawFailures === 0; round++) {
          const results = await Promise.allSettled(
            Array.from({ length: 16 }, (_, i) =>
              raw.query(acquireSql, [`raw-${round}`, `w${i}`, T0 + 60_000, T0]),
            ),
          );
          rawFailures += results.filter(
            (r) => r.status === 'rejected' && (r.reason as { code?: string }).code === '40001',
          ).length;
        }
        expect(rawFailures).toBeGreaterThan(0);

        for (let round = 0; round < 10; round++) {
          const outcomes = await Promise.allSettled(
            Array.from({ length: 16 }, (_, i) =>
              store.leases.acquire({
                resourceId: `sb-rr-${round}`,
                resourceType: 'sandbox',
                holderId: `w${i}`,
                ttlMs: 60_000,
                nowMs: T0,
              }),
            ),
          );
          expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
          for (const o of outcomes) {
            if (o.status === 'rejected') expect((o.reason as StacyError).code).toBe('CONFLICT');
          }
        }
      } finally {
        await raw.end();
        await store.close();
        await db.drop();
      }
    });
  });

  describe('server restart', () => {
    let cluster: PgCluster | undefined;
    afterAll(() => cluster?.destroy());

    test('calls fail with UNAVAILABLE while the server is down and succeed once it is back', async () => {
      const { bin } = findPgBin();
      if (bin === undefined) throw new Error('no postgres binaries');
      cluster = await startPgCluster(bin);
      const store = await createPostgresStore({ dsn: cluster.adminDsn, connectTimeoutMs: 2000 });
      try {
        await store.migrate();
        await store.workers.upsertHeartbeat(
          {
            id: 'w1',
            hostname: 'h',
            status: 'online',
            providers: [],
            capabilities: [],
            capacity: {},
          },
          T0,
        );
        cluster.stop();
        for (let i = 0; i < 3; i++) {
          const err = await rejection(store.workers.get('w1'));
          expect(err.code).toBe('UNAVAILABLE');
          expect(err.retryable).toBe(true);
          expect(err.message).toContain(
            `get worker: postgres database "postgres" on 127.0.0.1:${cluster.port} is unavailable`,
          );
        }
        cluster.start();
        expect((await store.workers.get('w1'))?.createdAtMs).toBe(T0);
        await store.ping();
      } finally {
        await store.close();
      }
    });
  });
});
