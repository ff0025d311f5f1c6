import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { test as base, describe, expect } from 'vitest';
import { StacyError } from '../domain/errors.js';
import { createStore } from './create-store.js';
import { LATEST_SCHEMA_VERSION } from './migrations.js';
import { createSqliteStore, openSqliteDatabase } from './sqlite/open-sqlite.js';
import { describeStoreContract } from './store.contract.js';

const T0 = Date.UTC(2026, 0, 1);

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'stacyvm-sqlite-'));
}

describeStoreContract('sqlite file', async () => {
  const dir = await tempDir();
  const store = await createSqliteStore({ path: join(dir, 'nested', 'stacyvm.db') });
  return { store, cleanup: () => rm(dir, { recursive: true, force: true }) };
});

describeStoreContract('sqlite :memory:', async () => ({
  store: await createSqliteStore({ path: ':memory:' }),
}));

const test = base.extend<{ dir: string }>({
  // eslint-disable-next-line no-empty-pattern
  dir: async ({}, use) => {
    const dir = await tempDir();
    try {
      await use(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
});

async function rejection(promise: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

const sha256 = async (path: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

describe('sqlite store', () => {
  test('opens connections with WAL, synchronous NORMAL, a busy timeout and foreign keys', ({
    dir,
  }) => {
    const db = openSqliteDatabase(join(dir, 'a.db'));
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.pragma('synchronous', { simple: true })).toBe(1);
      expect(db.pragma('busy_timeout', { simple: true })).toBe(5000);
      expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    } finally {
      db.close();
    }
  });

  test('leaves the database file in WAL mode', async ({ dir }) => {
    const path = join(dir, 'stacyvm.db');
    const store = await createSqliteStore({ path });
    await store.migrate();
    const raw = new Database(path, { readonly: true });
    try {
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      raw.close();
      await store.close();
    }
  });

  test('keeps data across close and reopen', async ({ dir }) => {
    const path = join(dir, 'deep', 'er', 'stacyvm.db');
    const first = await createSqliteStore({ path });
    await first.migrate();
    await first.workers.upsertHeartbeat(
      { id: 'w1', hostname: 'h', status: 'online', providers: [], capabilities: [], capacity: {} },
      T0,
    );
    await first.leases.acquire({
      resourceId: 'sb-00000001',
      resourceType: 'sandbox',
      holderId: 'w1',
      ttlMs: 1000,
      nowMs: T0,
    });
    await first.close();

    const second = await createSqliteStore({ path });
    try {
      expect(await second.migrate()).toEqual([]);
      expect(await second.schemaVersion()).toBe(LATEST_SCHEMA_VERSION);
      expect((await second.workers.get('w1'))?.createdAtMs).toBe(T0);
      expect((await second.leases.get('sb-00000001'))?.generation).toBe(1);
    } finally {
      await second.close();
    }
  });

  test('refuses a database with a newer schema, telling the user to upgrade, and leaves it unchanged', async ({
    dir,
  }) => {
    const path = join(dir, 'stacyvm.db');
    const store = await createSqliteStore({ path });
    await store.migrate();
    await store.close();
    const newer = LATEST_SCHEMA_VERSION + 1;
    const raw = new Database(path);
    raw.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(newer, T0);
    raw.close();
    const before = await sha256(path);

    const reopened = await createSqliteStore({ path });
    try {
      const err = await rejection(reopened.migrate());
      expect(err.code).toBe('UNAVAILABLE');
      expect(err.message).toMatch(new RegExp(`schema version ${newer} is newer .*upgrade stacyvm`));
      expect(await reopened.schemaVersion()).toBe(newer);
    } finally {
      await reopened.close();
    }
    expect(await sha256(path)).toBe(before);
  });

  test('reports a file that is not a SQLite database by its path and leaves it alone', async ({
    dir,
  }) => {
    const path = join(dir, 'notes.txt');
    const text = 'these are not the pages you are looking for\n'.repeat(200);
    await writeFile(path, text);
    const err = await rejection(createSqliteStore({ path }));
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/not a SQLite database/);
    expect(await readFile(path, 'utf8')).toBe(text);
  });

  test('reports a directory given as the database path by its path', async ({ dir }) => {
    const path = join(dir, 'a-directory');
    await mkdir(path);
    const err = await rejection(createSqliteStore({ path }));
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/is a directory/);
  });

  test('stores NUL characters of command output as U+FFFD, as Postgres must', async () => {
    const store = await createSqliteStore({ path: ':memory:' });
    try {
      await store.migrate();
      await store.execLogs.append({
        sandboxId: 'sb-nul',
        command: 'cat',
        args: [],
        mode: 'argv',
        exitCode: 0,
        stdout: 'a\0b',
        stderr: '',
        truncated: false,
        durationMs: 1,
        timedOut: false,
        streamed: false,
        createdAtMs: T0,
      });
      expect((await store.execLogs.list('sb-nul', 1))[0]?.stdout).toBe('a\uFFFDb');
    } finally {
      await store.close();
    }
  });

  test('reports a busy database as a retryable UNAVAILABLE', async ({ dir }) => {
    const path = join(dir, 'stacyvm.db');
    const store = await createSqliteStore({ path, busyTimeoutMs: 20 });
    await store.migrate();
    const locker = new Database(path);
    locker.exec('BEGIN IMMEDIATE');
    try {
      const err = await rejection(
        store.workers.upsertHeartbeat(
          {
            id: 'w1',
            hostname: 'h',
            status: 'online',
            providers: [],
            capabilities: [],
            capacity: {},
          },
          T0,
        ),
      );
      expect(err.code).toBe('UNAVAILABLE');
      expect(err.retryable).toBe(true);
      expect(err.message).toMatch(/busy/);
    } finally {
      locker.exec('ROLLBACK');
      locker.close();
      await store.close();
    }
  });
});

describe('createStore', () => {
  test('opens a SQLite store at the configured path', async ({ dir }) => {
    const store = await createStore({ driver: 'sqlite', path: join(dir, 'x.db') });
    try {
      expect(store.dialect).toBe('sqlite');
      expect(await store.migrate()).not.toEqual([]);
    } finally {
      await store.close();
    }
  });

  test('requires a path for the sqlite driver, naming the config key', async () => {
    const err = await rejection(createStore({ driver: 'sqlite' }));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.details).toEqual([
      { field: 'database.path', problem: 'is required when database.driver is sqlite' },
    ]);
  });

  test('requires a DSN for the postgres driver, naming the config key', async () => {
    const err = await rejection(createStore({ driver: 'postgres' }));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.details?.[0]?.field).toBe('database.dsn');
  });
});
