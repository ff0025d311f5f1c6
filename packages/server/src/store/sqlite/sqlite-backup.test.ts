import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { test as base, describe, expect } from 'vitest';
import { StacyError } from '../../domain/errors.js';
import type { SandboxRecord } from '../../domain/sandbox.js';
import { LATEST_SCHEMA_VERSION } from '../migrations.js';
import type { Store } from '../store.js';
import { createSqliteStore } from './open-sqlite.js';
import {
  backupSqlite,
  inspectSqliteFile,
  lockSqliteExclusively,
  restoreSqlite,
} from './sqlite-backup.js';

const T0 = Date.UTC(2026, 0, 1);
const BETTER_SQLITE3 = createRequire(import.meta.url).resolve('better-sqlite3');

const test = base.extend<{ dir: string }>({
  // eslint-disable-next-line no-empty-pattern
  dir: async ({}, use) => {
    const dir = await mkdtemp(join(tmpdir(), 'stacyvm-backup-'));
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

function sandbox(id: string, image: string): SandboxRecord {
  return {
    id,
    state: 'running',
    provider: 'mock',
    image,
    memoryMb: 256,
    vcpus: 1,
    ownerId: 'o',
    tenantId: '',
    vmId: id,
    workerId: 'local',
    metadata: { k: 'v' },
    ports: [3000],
    createdAtMs: T0,
    updatedAtMs: T0,
    expiresAtMs: T0 + 60_000,
  };
}

/** A migrated database file with one sandbox (image `image`) and `audits` audit rows. */
async function makeDb(path: string, image: string, audits = 3): Promise<void> {
  const store = await createSqliteStore({ path });
  try {
    await store.migrate();
    await store.sandboxes.insert(sandbox('sb-0000000a', image));
    for (let i = 0; i < audits; i++) {
      await store.audit.append({
        actor: 'tester',
        action: 'sandbox.spawn',
        sandboxId: 'sb-0000000a',
        resource: '',
        status: 'success',
        detail: `row ${i} ${'x'.repeat(200)}`,
        requestId: `r${i}`,
        createdAtMs: T0 + i,
      });
    }
  } finally {
    await store.close();
  }
}

async function withStore<T>(path: string, fn: (s: Store) => Promise<T>): Promise<T> {
  const store = await createSqliteStore({ path });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function auditCount(path: string): number {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('select count(*) as n from audit_events').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/**
 * A second process on the database, as a running server would be: `hold`
 * keeps a connection open and idle, `write` inserts two audit rows per
 * transaction as fast as it can. Both stop on their own after 30 s.
 */
async function otherProcess(
  path: string,
  mode: 'hold' | 'write',
): Promise<{ child: ChildProcess; stop: () => Promise<void> }> {
  const script = `
    const Database = require(${JSON.stringify(BETTER_SQLITE3)});
    const db = new Database(${JSON.stringify(path)});
    db.pragma('busy_timeout = 5000');
    db.pragma('journal_mode = WAL');
    const end = Date.now() + 30000;
    if (${JSON.stringify(mode)} === 'hold') {
      db.prepare('select count(*) from audit_events').get();
      console.log('ready');
      setTimeout(() => process.exit(0), 30000);
    } else {
      const ins = db.prepare("insert into audit_events (actor, action, status, created_at) values ('w', 'a', 'success', ?)");
      const pair = db.transaction(() => { ins.run(Date.now()); ins.run(Date.now()); });
      let first = true;
      const step = () => {
        for (let i = 0; i < 20; i++) pair();
        if (first) { console.log('ready'); first = false; }
        if (Date.now() < end) setImmediate(step); else process.exit(0);
      };
      step();
    }
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  await new Promise<void>((resolve, reject) => {
    lines.once('line', () => resolve());
    child.once('exit', (code) => reject(new Error(`helper process exited early (${code})`)));
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

async function waitUntil(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('sqlite backup', () => {
  test('writes a verified single-file copy and reports its size and version', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img-original');
    const out = join(dir, 'backups', 'b1.db');
    await rm(join(dir, 'backups'), { recursive: true, force: true });
    await writeFile(join(dir, 'placeholder'), '');
    // The directory must exist.
    const missingDir = await rejection(backupSqlite({ source: db, output: out }));
    expect(missingDir.code).toBe('BAD_REQUEST');
    expect(missingDir.message).toContain(join(dir, 'backups'));

    const out2 = join(dir, 'b1.db');
    const r = await backupSqlite({ source: db, output: out2 });
    expect(r.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
    expect(r.bytes).toBeGreaterThan(0);
    expect(r.output).toBe(out2);
    // One self-contained file: no -wal/-shm beside it, and no temp files left over.
    const files = (await readdir(dir)).sort();
    expect(files).toEqual(['b1.db', 'placeholder', 'stacyvm.db']);
    expect(inspectSqliteFile(out2)).toEqual({
      schemaVersion: LATEST_SCHEMA_VERSION,
      bytes: r.bytes,
    });
    await withStore(out2, async (s) => {
      expect((await s.sandboxes.get('sb-0000000a'))?.image).toBe('img-original');
      expect(await s.audit.list({ limit: 10 })).toHaveLength(3);
    });
  });

  test('refuses to overwrite without force, and replaces with it', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img-a');
    const out = join(dir, 'b.db');
    await writeFile(out, 'precious');
    const err = await rejection(backupSqlite({ source: db, output: out }));
    expect(err.code).toBe('CONFLICT');
    expect(err.message).toContain(out);
    expect(err.message).toContain('--force');
    expect(await readFile(out, 'utf8')).toBe('precious');

    await backupSqlite({ source: db, output: out, force: true });
    expect(inspectSqliteFile(out).schemaVersion).toBe(LATEST_SCHEMA_VERSION);
    // Never onto the database itself, even with force.
    const self = await rejection(backupSqlite({ source: db, output: db, force: true }));
    expect(self.message).toContain('is the database itself');
  });

  test('refuses a missing database and a file that is not a StacyVM database', async ({ dir }) => {
    const missing = await rejection(
      backupSqlite({ source: join(dir, 'nope.db'), output: join(dir, 'b.db') }),
    );
    expect(missing.code).toBe('BAD_REQUEST');
    expect(missing.message).toContain('nope.db does not exist');

    const text = join(dir, 'text.db');
    await writeFile(text, 'this is not a database at all, just some text '.repeat(100));
    const notDb = await rejection(backupSqlite({ source: text, output: join(dir, 'b.db') }));
    expect(notDb.code).toBe('BAD_REQUEST');
    expect(notDb.message).toMatch(/not a SQLite database/);

    const empty = join(dir, 'empty.db');
    new Database(empty).exec('create table t (a)');
    const notOurs = await rejection(backupSqlite({ source: empty, output: join(dir, 'b.db') }));
    expect(notOurs.message).toContain('not a StacyVM database');
    expect(existsSync(join(dir, 'b.db'))).toBe(false);
  });

  test('is consistent while another process keeps writing', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img', 0);
    const writer = await otherProcess(db, 'write');
    try {
      let previous = 0;
      for (let i = 0; i < 3; i++) {
        // Make sure the writer got further than the last backup saw.
        await waitUntil('the writer to write more rows', () => auditCount(db) > previous);
        const out = join(dir, `b${i}.db`);
        const r = await backupSqlite({ source: db, output: out });
        expect(r.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
        const info = inspectSqliteFile(out); // integrity_check passes
        expect(info.bytes).toBe(r.bytes);
        const n = auditCount(out);
        // Rows are written two per transaction: a torn snapshot would show an odd count.
        expect(n % 2).toBe(0);
        expect(n).toBeGreaterThan(previous);
        previous = n;
      }
      // The backups did not stop the writer.
      await waitUntil('the writer to go on after the backups', () => auditCount(db) > previous);
    } finally {
      await writer.stop();
    }
  });
});

describe('sqlite restore', () => {
  test('swaps in the backup and keeps the old database', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    const backup = join(dir, 'backup.db');
    await makeDb(db, 'img-then');
    await backupSqlite({ source: db, output: backup });
    // Changes after the backup, which the restore must undo (but keep in the old file).
    await withStore(db, async (s) => {
      await s.sandboxes.insert(sandbox('sb-0000000b', 'img-later'));
    });
    // A crash leaves side files behind; they belong to the old database.
    await writeFile(`${db}-shm`, 'stale');
    const backupHash = await sha256(backup);

    const nowMs = Date.UTC(2026, 10, 23, 18, 56, 40);
    const r = await restoreSqlite({ backup, database: db, nowMs });
    expect(r.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
    expect(r.previous).toBe(`${db}.pre-restore-20261123T185640Z`);
    expect(existsSync(`${db}-shm`)).toBe(false);
    expect(await sha256(backup)).toBe(backupHash); // the backup itself is untouched

    await withStore(db, async (s) => {
      expect(await s.sandboxes.get('sb-0000000b')).toBeUndefined();
      expect((await s.sandboxes.get('sb-0000000a'))?.image).toBe('img-then');
    });
    await withStore(r.previous!, async (s) => {
      expect((await s.sandboxes.get('sb-0000000b'))?.image).toBe('img-later');
    });
    // No temp files left beside the database.
    expect((await readdir(dir)).filter((f) => f.startsWith('.'))).toEqual([]);

    // A second restore in the same second keeps both old files.
    const again = await restoreSqlite({ backup, database: db, nowMs });
    expect(again.previous).toBe(`${db}.pre-restore-20261123T185640Z-1`);
  });

  test('restores into a path with no database yet', async ({ dir }) => {
    const src = join(dir, 'src.db');
    await makeDb(src, 'img-x');
    const backup = join(dir, 'b.db');
    await backupSqlite({ source: src, output: backup });
    const db = join(dir, 'new', 'stacyvm.db');
    const r = await restoreSqlite({ backup, database: db, nowMs: T0 });
    expect(r.previous).toBeUndefined();
    await withStore(db, async (s) => {
      expect((await s.sandboxes.get('sb-0000000a'))?.image).toBe('img-x');
    });
  });

  test('refuses a corrupt backup and changes nothing', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img-live', 300);
    const backup = join(dir, 'b.db');
    await backupSqlite({ source: db, output: backup });
    // Scribble over the middle of the file: table pages, not the header.
    const fh = await open(backup, 'r+');
    try {
      const { size } = await fh.stat();
      await fh.write(Buffer.alloc(4096, 0x5a), 0, 4096, Math.floor(size / 2));
    } finally {
      await fh.close();
    }
    const before = await sha256(db);
    const err = await rejection(restoreSqlite({ backup, database: db, nowMs: T0 }));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toContain(backup);
    expect(err.message).toMatch(/integrity check|corrupt|not a SQLite database/);
    expect(await sha256(db)).toBe(before);
    expect((await readdir(dir)).sort()).toEqual(['b.db', 'stacyvm.db']);

    await writeFile(backup, 'garbage '.repeat(1000));
    const garbage = await rejection(restoreSqlite({ backup, database: db, nowMs: T0 }));
    expect(garbage.message).toMatch(/not a SQLite database/);
    expect(await sha256(db)).toBe(before);
  });

  test('refuses a backup from a newer schema and changes nothing', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img-live');
    const backup = join(dir, 'b.db');
    await backupSqlite({ source: db, output: backup });
    const newer = LATEST_SCHEMA_VERSION + 1;
    const raw = new Database(backup);
    raw.prepare('insert into schema_migrations (version, applied_at) values (?, ?)').run(newer, T0);
    raw.close();
    const before = await sha256(db);
    const err = await rejection(restoreSqlite({ backup, database: db, nowMs: T0 }));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toContain(`schema version ${newer}, newer than this stacyvm understands`);
    expect(await sha256(db)).toBe(before);
    expect((await readdir(dir)).sort()).toEqual(['b.db', 'stacyvm.db']);
  });

  test('refuses while another process has the database open', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img-live');
    const backup = join(dir, 'b.db');
    await backupSqlite({ source: db, output: backup });
    const holder = await otherProcess(db, 'hold');
    try {
      const err = await rejection(restoreSqlite({ backup, database: db, nowMs: T0 }));
      expect(err.code).toBe('CONFLICT');
      expect(err.message).toContain('in use by another process');
      expect(err.message).toContain(db);
      expect(
        (await readdir(dir)).filter((f) => f.includes('pre-restore') || f.startsWith('.')),
      ).toEqual([]);
    } finally {
      await holder.stop();
    }
    const r = await restoreSqlite({ backup, database: db, nowMs: T0 });
    expect(r.previous).toBeDefined();
  });

  test('the exclusive lock keeps other processes out until it is released', async ({ dir }) => {
    const db = join(dir, 'stacyvm.db');
    await makeDb(db, 'img');
    const held = lockSqliteExclusively(db);
    try {
      const other = new Database(db, { fileMustExist: true });
      other.pragma('busy_timeout = 0');
      expect(() => other.prepare('select count(*) from sandboxes').get()).toThrow(/locked|busy/i);
      other.close();
    } finally {
      held.close();
    }
    await withStore(db, async (s) => {
      expect(await s.sandboxes.count()).toBe(1);
    });
  });
});
