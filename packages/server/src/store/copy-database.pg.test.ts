import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { createTestDatabase, withAdmin } from '../../test/support/pg-cluster.js';
import type { TestDatabase } from '../../test/support/pg-cluster.js';
import { registerDbCommands } from '../cli/db-commands.js';
import { StacyError } from '../domain/errors.js';
import type { SandboxRecord, SandboxState } from '../domain/sandbox.js';
import { copyDatabase } from './copy-database.js';
import { LATEST_SCHEMA_VERSION } from './migrations.js';
import { createPostgresStore } from './postgres/open-postgres.js';
import { createSqliteStore } from './sqlite/open-sqlite.js';
import type { Store } from './store.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');
const T0 = Date.UTC(2026, 0, 1);
/** The SQLite source pretends ids up to this were handed out and their rows deleted. */
const AUDIT_SEQ = 100;

async function rejection(promise: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

function sandbox(n: number, state: SandboxState): SandboxRecord {
  const id = `sb-${n.toString(16).padStart(8, '0')}`;
  return {
    id,
    state,
    provider: 'mock',
    image: `img-${n}`,
    memoryMb: 256 + n,
    vcpus: 1 + (n % 2),
    ownerId: `owner-${n % 3}`,
    tenantId: n % 2 === 0 ? 'tenant-a' : '',
    vmId: id,
    workerId: n % 2 === 0 ? 'local' : 'w-remote',
    metadata: { n: String(n), 'quote"key': 'välue ✓' },
    ports: [3000, 8000 + n],
    env: n % 2 === 0 ? { FOO: `bar-${n}` } : {},
    createdAtMs: T0 + n,
    updatedAtMs: T0 + n * 2,
    expiresAtMs: T0 + 3_600_000 + n,
  };
}

const SANDBOXES = 25;

/** Fills a store with rows of every table through the Store API. */
async function populate(store: Store): Promise<void> {
  const states: SandboxState[] = ['running', 'destroyed', 'creating', 'unhealthy'];
  for (let n = 1; n <= SANDBOXES; n++) {
    await store.sandboxes.insert(sandbox(n, states[n % states.length] ?? 'running'));
  }
  for (const id of ['local', 'w-remote']) {
    await store.workers.upsertHeartbeat(
      {
        id,
        hostname: `${id}.example`,
        status: 'online',
        providers: ['mock'],
        capabilities: ['exec'],
        capacity: { slots: 8, nested: { a: [1, 2] } },
      },
      T0 + 5,
    );
  }
  // Generation 3 on sb-1: acquired, released, taken by another holder, renewed.
  const first = await store.leases.acquire({
    resourceId: 'sb-00000001',
    resourceType: 'sandbox',
    holderId: 'cp-a',
    ttlMs: 60_000,
    nowMs: T0,
  });
  await store.leases.release(first, T0 + 1);
  await store.leases.acquire({
    resourceId: 'sb-00000001',
    resourceType: 'sandbox',
    holderId: 'cp-b',
    ttlMs: 60_000,
    nowMs: T0 + 2,
  });
  await store.leases.acquire({
    resourceId: 'sb-00000001',
    resourceType: 'sandbox',
    holderId: 'cp-b',
    ttlMs: 3_600_000,
    nowMs: T0 + 3,
  });
  await store.leases.acquire({
    resourceId: 'sb-00000002',
    resourceType: 'sandbox',
    holderId: 'cp-a',
    ttlMs: 3_600_000,
    nowMs: T0,
  });
  for (let i = 0; i < 40; i++) {
    await store.execLogs.append({
      sandboxId: `sb-0000000${1 + (i % 3)}`,
      command: 'echo',
      args: ['hi', String(i)],
      mode: 'argv',
      exitCode: i % 5,
      stdout: `out ${i}\n`.repeat(1 + i),
      stderr: i % 7 === 0 ? 'warn\n' : '',
      truncated: i % 11 === 0,
      durationMs: i,
      timedOut: i === 13,
      streamed: i % 2 === 1,
      createdAtMs: T0 + i,
    });
  }
  for (let i = 0; i < 30; i++) {
    await store.audit.append({
      actor: i % 2 === 0 ? 'admin' : 'user',
      action: 'sandbox.spawn',
      sandboxId: `sb-0000000${1 + (i % 3)}`,
      resource: 'sandbox',
      status: i % 4 === 0 ? 'failure' : 'success',
      detail: `detail ${i}`,
      requestId: `req-${i}`,
      createdAtMs: T0 + i,
    });
  }
  await store.templates.insert({
    name: 'python',
    version: 1,
    image: 'python:3.12',
    provider: '',
    description: 'Python',
    memoryMb: 512,
    vcpus: 1,
    ttlSeconds: 3600,
    env: { PYTHONUNBUFFERED: '1' },
    setup: ['pip install requests'],
    metadata: { lang: 'py' },
    ports: [8000],
    createdAtMs: T0,
    updatedAtMs: T0,
  });
}

/** Everything the Store API can read, for comparing two stores. */
async function snapshot(store: Store): Promise<Record<string, unknown>> {
  const sandboxes = await store.sandboxes.list({ includeDestroyed: true, limit: 10_000 });
  const execLogs: Record<string, unknown> = {};
  for (const n of [1, 2, 3]) {
    execLogs[n] = await store.execLogs.list(`sb-0000000${n}`, 1000);
  }
  return {
    sandboxes: [...sandboxes].sort((a, b) => a.id.localeCompare(b.id)),
    workers: await store.workers.list(),
    leases: [...(await store.leases.list())].sort((a, b) =>
      a.resourceId.localeCompare(b.resourceId),
    ),
    execLogs,
    audit: await store.audit.list({ limit: 1000 }),
    templates: await store.templates.list(),
  };
}

async function withStore<T>(open: () => Promise<Store>, fn: (s: Store) => Promise<T>): Promise<T> {
  const store = await open();
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

async function rowCounts(dsn: string): Promise<Record<string, number>> {
  return withAdmin(dsn, async (c) => {
    const tables = await c.query<{ t: string }>(
      "select tablename as t from pg_tables where schemaname = 'public' and tablename <> 'schema_migrations' order by tablename",
    );
    const out: Record<string, number> = {};
    for (const { t } of tables.rows) {
      const r = await c.query<{ n: string }>(`select count(*) as n from "${t}"`);
      out[t] = Number(r.rows[0]?.n);
    }
    return out;
  });
}

describe.skipIf(adminDsn === '')(`db copy${skipReason ? ` (${skipReason})` : ''}`, () => {
  let dir: string;
  let sqlitePath: string;
  let expected: Record<string, unknown>;
  const dbs: TestDatabase[] = [];
  const newDb = async (): Promise<TestDatabase> => {
    const d = await createTestDatabase(adminDsn, 'copy');
    dbs.push(d);
    return d;
  };
  const openPg = (dsn: string) => () => createPostgresStore({ dsn });
  const openSqlite = (path: string) => () => createSqliteStore({ path });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stacyvm-copy-'));
    sqlitePath = join(dir, 'stacyvm.db');
    await withStore(openSqlite(sqlitePath), async (s) => {
      await s.migrate();
      await populate(s);
    });
    const raw = new Database(sqlitePath);
    // Rows written before the store replaced NULs, and ids handed out to rows since deleted.
    raw
      .prepare(
        "insert into exec_logs (sandbox_id, command, args, mode, exit_code, stdout, stderr, duration_ms, created_at) values ('sb-00000003', 'printf', '[]', 'shell', 0, ?, '', 1, ?)",
      )
      .run('a\u0000b\u0000', T0 + 99);
    raw.prepare("update sqlite_sequence set seq = ? where name = 'audit_events'").run(AUDIT_SEQ);
    raw.close();
    expected = await withStore(openSqlite(sqlitePath), snapshot);
  });

  afterAll(async () => {
    for (const d of dbs) await d.drop();
    await rm(dir, { recursive: true, force: true });
  });

  test('copies every table into a fresh database; the Store API reads the same', async () => {
    const target = await newDb();
    const lines: string[] = [];
    const r = await copyDatabase({
      from: { driver: 'sqlite', path: sqlitePath },
      to: { driver: 'postgres', dsn: target.dsn },
      nowMs: T0,
      batchRows: 7, // several batches per table
      onProgress: (l) => lines.push(l),
    });
    expect(r.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
    expect(r.migratedTarget).toHaveLength(LATEST_SCHEMA_VERSION);
    expect(r.replacedNul).toBe(2);
    const byTable = Object.fromEntries(r.tables.map((t) => [t.table, t]));
    expect(byTable['sandboxes']?.rows).toBe(SANDBOXES);
    expect(byTable['exec_logs']).toMatchObject({ rows: 41, maxId: 41, idFloor: 41 });
    expect(byTable['audit_events']).toMatchObject({ rows: 30, maxId: 30, idFloor: AUDIT_SEQ });
    expect(byTable['templates']?.rows).toBe(1);
    expect(lines.some((l) => l.startsWith('copied sandboxes: 25 rows'))).toBe(true);

    await withStore(openPg(target.dsn), async (pgStore) => {
      const got = await snapshot(pgStore);
      const want = structuredClone(expected);
      // The NUL-bearing row is the only difference, by design.
      const logs3 = (want['execLogs'] as Record<string, { stdout: string }[]>)['3']!;
      logs3[0]!.stdout = 'a\uFFFDb\uFFFD';
      expect(got).toEqual(want);
      expect(await pgStore.schemaVersion()).toBe(LATEST_SCHEMA_VERSION);

      // Leases keep their generations: the copied holder renews with its token.
      const lease = await pgStore.leases.get('sb-00000001');
      expect(lease?.generation).toBe(3);
      const renewed = await pgStore.leases.renew(
        { resourceId: 'sb-00000001', holderId: 'cp-b', generation: 3 },
        60_000,
        T0 + 10,
      );
      expect(renewed.generation).toBe(3);
      // Sequences continue past the source's ids, deleted ones included.
      const auditId = await pgStore.audit.append({
        actor: 'a',
        action: 'x',
        sandboxId: '',
        resource: '',
        status: 'success',
        detail: '',
        requestId: '',
        createdAtMs: T0,
      });
      expect(auditId).toBe(AUDIT_SEQ + 1);
      const logId = await pgStore.execLogs.append({
        sandboxId: 'sb-00000001',
        command: 'true',
        args: [],
        mode: 'argv',
        exitCode: 0,
        stdout: '',
        stderr: '',
        truncated: false,
        durationMs: 0,
        timedOut: false,
        streamed: false,
        createdAtMs: T0,
      });
      expect(logId).toBe(42);
    });

    // And back (the rollback path): Postgres -> a new SQLite file.
    const back = join(dir, 'back.db');
    const r2 = await copyDatabase({
      from: { driver: 'postgres', dsn: target.dsn },
      to: { driver: 'sqlite', path: back },
      nowMs: T0,
    });
    expect(r2.tables.find((t) => t.table === 'audit_events')?.rows).toBe(31);
    await withStore(openSqlite(back), async (s) => {
      const got = await snapshot(s);
      expect(got['sandboxes']).toEqual(expected['sandboxes']);
      expect(got['templates']).toEqual(expected['templates']);
      expect(got['workers']).toEqual(expected['workers']);
      const nextAudit = await s.audit.append({
        actor: 'a',
        action: 'x',
        sandboxId: '',
        resource: '',
        status: 'success',
        detail: '',
        requestId: '',
        createdAtMs: T0,
      });
      expect(nextAudit).toBe(AUDIT_SEQ + 2);
    });
  });

  test('refuses a non-empty target unless told to replace its rows', async () => {
    const target = await newDb();
    await withStore(openPg(target.dsn), async (s) => {
      await s.migrate();
      await s.workers.upsertHeartbeat(
        {
          id: 'intruder',
          hostname: '',
          status: 'online',
          providers: [],
          capabilities: [],
          capacity: {},
        },
        T0,
      );
    });
    const err = await rejection(
      copyDatabase({
        from: { driver: 'sqlite', path: sqlitePath },
        to: { driver: 'postgres', dsn: target.dsn },
        nowMs: T0,
      }),
    );
    expect(err.code).toBe('CONFLICT');
    expect(err.message).toContain('is not empty: workers (1 rows)');
    expect((await rowCounts(target.dsn))['sandboxes']).toBe(0);

    await copyDatabase({
      from: { driver: 'sqlite', path: sqlitePath },
      to: { driver: 'postgres', dsn: target.dsn },
      nowMs: T0,
      replace: true,
    });
    await withStore(openPg(target.dsn), async (s) => {
      const workers = await s.workers.list();
      expect(workers.map((w) => w.id)).toEqual(['local', 'w-remote']);
    });
  });

  test('a failure part-way leaves the target without any copied row', async () => {
    const target = await newDb();
    await withStore(openPg(target.dsn), (s) => s.migrate());
    // workers is copied last (tables go in name order); this constraint fails it.
    await withAdmin(target.dsn, (c) =>
      c.query("alter table workers add constraint no_remote check (id <> 'w-remote')"),
    );
    const err = await rejection(
      copyDatabase({
        from: { driver: 'sqlite', path: sqlitePath },
        to: { driver: 'postgres', dsn: target.dsn },
        nowMs: T0,
      }),
    );
    expect(err.message).toContain('copy failed while copying workers');
    expect(err.message).toContain('no_remote');
    expect(err.message).toContain('rolled back');
    const counts = await rowCounts(target.dsn);
    expect(Object.keys(counts).length).toBeGreaterThanOrEqual(6);
    expect(Object.values(counts).every((n) => n === 0)).toBe(true);
  });

  test('refuses a target newer than the source, and a source newer than this build', async () => {
    const target = await newDb();
    await withStore(openPg(target.dsn), (s) => s.migrate());
    await withAdmin(target.dsn, (c) =>
      c.query('insert into schema_migrations (version, applied_at) values ($1, 0)', [
        LATEST_SCHEMA_VERSION + 1,
      ]),
    );
    const err = await rejection(
      copyDatabase({
        from: { driver: 'sqlite', path: sqlitePath },
        to: { driver: 'postgres', dsn: target.dsn },
        nowMs: T0,
      }),
    );
    expect(err.code).toBe('CONFLICT');
    expect(err.message).toContain(`schema version ${LATEST_SCHEMA_VERSION + 1}`);

    const newerSource = join(dir, 'newer.db');
    await withStore(openSqlite(newerSource), (s) => s.migrate());
    const raw = new Database(newerSource);
    raw
      .prepare('insert into schema_migrations (version, applied_at) values (?, 0)')
      .run(LATEST_SCHEMA_VERSION + 1);
    raw.close();
    const fresh = await newDb();
    const err2 = await rejection(
      copyDatabase({
        from: { driver: 'sqlite', path: newerSource },
        to: { driver: 'postgres', dsn: fresh.dsn },
        nowMs: T0,
      }),
    );
    expect(err2.code).toBe('BAD_REQUEST');
    expect(err2.message).toContain('newer than this stacyvm understands');
    // Nothing was created in the target.
    expect(await rowCounts(fresh.dsn)).toEqual({});
  });

  test('stacyvm db copy --from-config --to-config, with the DSN in a file', async () => {
    const target = await newDb();
    const dsnFile = join(dir, 'dsn');
    await writeFile(dsnFile, `${target.dsn}\n`);
    await writeFile(join(dir, 'old.yaml'), `database:\n  path: ${sqlitePath}\n`);
    await writeFile(
      join(dir, 'new.yaml'),
      `database:\n  driver: postgres\n  dsn_file: ${dsnFile}\n`,
    );
    let out = '';
    let err = '';
    let code = 0;
    const program = new Command().exitOverride();
    program.command('db');
    registerDbCommands(program, {
      stdout: { write: (s: string | Uint8Array) => ((out += String(s)), true) },
      stderr: { write: (s: string | Uint8Array) => ((err += String(s)), true) },
      // A database variable in the environment must not leak into either end.
      env: { STACYVM_DATABASE_PATH: '/nonexistent/elsewhere.db' },
      cwd: dir,
      homeDir: dir,
      setExitCode: (c) => {
        code = c;
      },
      now: () => T0,
    });
    await program.parseAsync([
      'node',
      'stacyvm',
      'db',
      'copy',
      '--from-config',
      join(dir, 'old.yaml'),
      '--to-config',
      join(dir, 'new.yaml'),
      '--yes',
    ]);
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(out).toContain(
      `copying SQLite database ${sqlitePath} -> postgres database "${target.name}"`,
    );
    expect(out).toMatch(/copy complete: \d+ tables, \d+ rows, schema version \d+/);
    await withStore(openPg(target.dsn), async (s) => {
      expect(await s.sandboxes.count({ includeDestroyed: true })).toBe(SANDBOXES);
    });
  });
});
