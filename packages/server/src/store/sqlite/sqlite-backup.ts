import { randomBytes } from 'node:crypto';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { copyFile, link, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { StacyError, badRequest, conflict, unavailable } from '../../domain/errors.js';
import { LATEST_SCHEMA_VERSION, MIGRATIONS_TABLE } from '../migrations.js';
import type { SqliteDatabase } from './open-sqlite.js';

/** What {@link inspectSqliteFile} found in a database file. */
export interface SqliteFileInfo {
  /** Highest applied migration. */
  schemaVersion: number;
  /** Size of the main file in bytes. */
  bytes: number;
}

/** Outcome of {@link backupSqlite}. */
export interface SqliteBackupResult {
  source: string;
  output: string;
  schemaVersion: number;
  bytes: number;
}

/** Outcome of {@link restoreSqlite}. */
export interface SqliteRestoreResult {
  backup: string;
  database: string;
  schemaVersion: number;
  bytes: number;
  /** Where the database that was replaced is kept; absent when there was none. */
  previous?: string;
  /** Side files moved away or deleted (`-wal`, `-shm`, `-journal`). */
  leftovers: string[];
  /** Why the replaced database could not be checked for other users, when it could not. */
  warning?: string;
}

export interface BackupSqliteOptions {
  /** The live database (`database.path`). */
  source: string;
  /** Backup file to write. */
  output: string;
  /** Replace an existing `output` (default false: refuse). */
  force?: boolean;
  /** How long to wait for the writer's lock when reading (default 5000 ms). */
  busyTimeoutMs?: number;
}

export interface RestoreSqliteOptions {
  /** Backup file to restore from (left untouched). */
  backup: string;
  /** The database to replace (`database.path`); need not exist. */
  database: string;
  /** Time of the restore, for the name of the kept database. */
  nowMs: number;
  /** Newest schema version accepted (default: this build's). */
  knownVersion?: number;
}

/** Side files SQLite keeps next to a database. */
const SIDE_SUFFIXES = ['-wal', '-shm', '-journal'] as const;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sqliteCode(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return '';
}

function describeSqliteFailure(err: unknown): string {
  const code = sqliteCode(err);
  if (code === 'SQLITE_NOTADB') return 'it is not a SQLite database';
  if (code.startsWith('SQLITE_CORRUPT')) return 'it is corrupt';
  if (code.startsWith('SQLITE_CANTOPEN')) return 'it cannot be opened';
  if (code.startsWith('SQLITE_READONLY')) return 'it is read-only';
  if (code.startsWith('SQLITE_BUSY')) return 'it is locked by another process';
  return errorText(err);
}

/** A temp name next to `path`, so a rename onto `path` stays on one file system. */
function tempNameBeside(path: string, tag: string): string {
  return join(
    dirname(path),
    `.${basename(path)}.${tag}-${process.pid}-${randomBytes(4).toString('hex')}`,
  );
}

async function removeWithSides(path: string): Promise<void> {
  await rm(path, { force: true });
  for (const s of SIDE_SUFFIXES) await rm(`${path}${s}`, { force: true });
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } catch (err) {
    // Some file systems cannot fsync a directory; the data itself was synced.
    if (!(
      err instanceof Error &&
      'code' in err &&
      (err.code === 'EINVAL' || err.code === 'EISDIR')
    )) {
      throw err;
    }
  } finally {
    await fh.close();
  }
}

function requireFile(path: string, what: string): number {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw badRequest(`${what} ${path} does not exist`);
  }
  if (!st.isFile()) throw badRequest(`${what} ${path} is not a file`);
  return st.size;
}

function openExisting(path: string, what: string, busyTimeoutMs: number): SqliteDatabase {
  try {
    const db = new Database(path, { fileMustExist: true });
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(busyTimeoutMs))}`);
    return db;
  } catch (err) {
    throw new StacyError(
      'BAD_REQUEST',
      `cannot open ${what} ${path}: ${describeSqliteFailure(err)}`,
      {
        cause: err,
      },
    );
  }
}

/** Highest applied migration of an open database; undefined when it has no migrations table. */
function schemaVersionOf(db: SqliteDatabase): number | undefined {
  const table = db
    .prepare("select name from sqlite_schema where type = 'table' and name = ?")
    .get(MIGRATIONS_TABLE);
  if (table === undefined) return undefined;
  const row = db.prepare(`select max(version) as v from ${MIGRATIONS_TABLE}`).get() as
    { v: number | null } | undefined;
  return Number(row?.v ?? 0);
}

/**
 * Runs `PRAGMA integrity_check` and reads the schema version of an open
 * database; BAD_REQUEST naming `what` and `path` when it is damaged or is not
 * a StacyVM database.
 */
function checkOpenDatabase(db: SqliteDatabase, path: string, what: string): number {
  let problems: string[];
  let version: number | undefined;
  try {
    const rows = db.pragma('integrity_check(20)') as { integrity_check: string }[];
    problems = rows.map((r) => r.integrity_check).filter((r) => r !== 'ok');
    version = schemaVersionOf(db);
  } catch (err) {
    throw new StacyError(
      'BAD_REQUEST',
      `${what} ${path} is unusable: ${describeSqliteFailure(err)}`,
      {
        cause: err,
      },
    );
  }
  if (problems.length > 0) {
    throw badRequest(
      `${what} ${path} failed the integrity check: ${problems.slice(0, 3).join('; ')}` +
        (problems.length > 3 ? ` (and ${problems.length - 3} more)` : ''),
    );
  }
  if (version === undefined || version === 0) {
    throw badRequest(
      `${what} ${path} is not a StacyVM database (no applied migrations in ${MIGRATIONS_TABLE})`,
    );
  }
  return version;
}

/**
 * Opens a database file, checks its integrity and reads its schema version
 * without changing it. BAD_REQUEST when the file is missing, is not a SQLite
 * database, is damaged or has no StacyVM schema.
 */
export function inspectSqliteFile(path: string, what = 'database'): SqliteFileInfo {
  const bytes = requireFile(path, what);
  let db: SqliteDatabase;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new StacyError(
      'BAD_REQUEST',
      `cannot open ${what} ${path}: ${describeSqliteFailure(err)}`,
      {
        cause: err,
      },
    );
  }
  try {
    return { schemaVersion: checkOpenDatabase(db, path, what), bytes };
  } finally {
    db.close();
  }
}

/**
 * True when `err` (from switching a WAL database to another journal mode)
 * says another connection has the database open.
 */
function isBusy(err: unknown): boolean {
  const code = sqliteCode(err);
  return code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED');
}

/**
 * Takes a database away from everyone else, or says who has it. Switching a
 * WAL database to the rollback journal needs every other connection closed
 * (an idle `stacyvm serve` keeps one open for its whole life), so a busy
 * answer means another process uses the file. The switch also moves
 * everything in the `-wal` file into the main file. On success the returned
 * connection holds an exclusive lock until it is closed.
 *
 * CONFLICT when the database is in use.
 */
export function lockSqliteExclusively(path: string, what = 'database'): SqliteDatabase {
  const db = openExisting(path, what, 0);
  try {
    const mode = String(db.pragma('journal_mode = DELETE', { simple: true }));
    if (mode.toLowerCase() !== 'delete')
      throw Object.assign(new Error(mode), { code: 'SQLITE_BUSY' });
    db.pragma('locking_mode = EXCLUSIVE');
    // The first write lock under EXCLUSIVE locking mode is kept until close.
    db.exec('BEGIN EXCLUSIVE');
    db.exec('COMMIT');
  } catch (err) {
    db.close();
    if (isBusy(err)) {
      throw conflict(
        `${what} ${path} is in use by another process (is \`stacyvm serve\` running on it?); stop it first`,
      );
    }
    throw new StacyError(
      'BAD_REQUEST',
      `cannot lock ${what} ${path}: ${describeSqliteFailure(err)}`,
      {
        cause: err,
      },
    );
  }
  return db;
}

/**
 * Copies a live database with SQLite's online backup API. The copy is taken
 * in one step from one read snapshot, so it is consistent even while a server
 * writes (WAL readers do not block the writer). It is written to a temp file
 * beside `output`, switched to the rollback journal (so the backup is one
 * self-contained file), checked (`PRAGMA integrity_check`, schema version),
 * synced and only then renamed onto `output`.
 */
export async function backupSqlite(opts: BackupSqliteOptions): Promise<SqliteBackupResult> {
  const source = resolve(opts.source);
  const output = resolve(opts.output);
  if (opts.source === ':memory:') {
    throw badRequest('database.path is :memory:, which has nothing on disk to back up');
  }
  requireFile(source, 'database');
  if (existsSync(output)) {
    if (statSync(output).isDirectory()) {
      throw badRequest(`backup output ${output} is a directory; name a file`);
    }
    if (realpathSync(output) === realpathSync(source)) {
      throw badRequest(`backup output ${output} is the database itself`);
    }
    if (opts.force !== true) {
      throw conflict(`backup output ${output} already exists; pass --force to replace it`);
    }
  }
  const outDir = dirname(output);
  try {
    if (!statSync(outDir).isDirectory()) throw new Error('not a directory');
  } catch {
    throw badRequest(`backup directory ${outDir} does not exist`);
  }

  const src = openExisting(source, 'database', opts.busyTimeoutMs ?? 5000);
  const temp = tempNameBeside(output, 'backup');
  try {
    // Refuse a file that is not ours before writing anything.
    let srcVersion: number | undefined;
    try {
      srcVersion = schemaVersionOf(src);
    } catch (err) {
      throw new StacyError(
        'BAD_REQUEST',
        `cannot read database ${source}: ${describeSqliteFailure(err)}`,
        { cause: err },
      );
    }
    if (srcVersion === undefined || srcVersion === 0) {
      throw badRequest(
        `database ${source} is not a StacyVM database (no applied migrations in ${MIGRATIONS_TABLE})`,
      );
    }
    try {
      // One step for all pages: the copy comes from a single read snapshot.
      await src.backup(temp, { progress: () => 0x7fffffff });
    } catch (err) {
      throw unavailable(`backup of ${source} to ${output} failed: ${errorText(err)}`, err);
    }
    const copy = openExisting(temp, 'backup copy', 0);
    let version: number;
    try {
      copy.pragma('journal_mode = DELETE');
      version = checkOpenDatabase(copy, output, 'backup copy');
    } finally {
      copy.close();
    }
    await fsyncPath(temp);
    await rename(temp, output);
    await fsyncPath(outDir);
    const { size } = await stat(output);
    return { source, output, schemaVersion: version, bytes: size };
  } catch (err) {
    await removeWithSides(temp).catch(() => undefined);
    if (err instanceof StacyError) throw err;
    throw unavailable(`backup of ${source} to ${output} failed: ${errorText(err)}`, err);
  } finally {
    src.close();
  }
}

/** `20261123T185640Z`: sortable, and safe in a file name. */
function stamp(nowMs: number): string {
  return new Date(nowMs)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

function freeName(base: string): string {
  if (!existsSync(base)) return base;
  for (let i = 1; ; i++) {
    const candidate = `${base}-${i}`;
    if (!existsSync(candidate)) return candidate;
  }
}

/**
 * Replaces a database with a backup. The backup is copied beside the database
 * and checked there first (integrity, a StacyVM schema no newer than this
 * build); a bad backup changes nothing. The database in place must not be in
 * use (see {@link lockSqliteExclusively}); it is kept as
 * `<database>.pre-restore-<UTC time>` and the checked copy is renamed over it
 * in one step. Leftover `-wal`/`-shm`/`-journal` files of the old database are
 * removed (a `-wal` that could not be merged is kept beside the old copy),
 * since SQLite would otherwise apply them to the restored file.
 */
export async function restoreSqlite(opts: RestoreSqliteOptions): Promise<SqliteRestoreResult> {
  const backup = resolve(opts.backup);
  const database = resolve(opts.database);
  const known = opts.knownVersion ?? LATEST_SCHEMA_VERSION;
  if (opts.database === ':memory:') {
    throw badRequest('database.path is :memory:, which cannot be restored into');
  }
  requireFile(backup, 'backup');
  if (existsSync(database)) {
    if (!statSync(database).isFile()) throw badRequest(`database ${database} is not a file`);
    if (realpathSync(database) === realpathSync(backup)) {
      throw badRequest(`backup ${backup} is the database itself`);
    }
  }
  await mkdir(dirname(database), { recursive: true });

  // 1. A checked copy of the backup beside the database.
  const temp = tempNameBeside(database, 'restore');
  let version: number;
  try {
    await copyFile(backup, temp);
    // A backup taken by copying a live WAL database needs its -wal to be complete.
    if (existsSync(`${backup}-wal`)) await copyFile(`${backup}-wal`, `${temp}-wal`);
    const copy = openExisting(temp, 'backup', 0);
    try {
      version = checkOpenDatabase(copy, backup, 'backup');
      if (version > known) {
        throw badRequest(
          `backup ${backup} has schema version ${version}, newer than this stacyvm understands ` +
            `(${known}); restore it with a newer stacyvm`,
        );
      }
      copy.pragma('journal_mode = DELETE');
    } finally {
      copy.close();
    }
    await fsyncPath(temp);
  } catch (err) {
    await removeWithSides(temp).catch(() => undefined);
    throw err;
  }

  // 2. Take the old database away from everyone, keep it, swap.
  const leftovers: string[] = [];
  let previous: string | undefined;
  let warning: string | undefined;
  let held: SqliteDatabase | undefined;
  try {
    if (existsSync(database)) {
      try {
        held = lockSqliteExclusively(database);
      } catch (err) {
        // A damaged database is what restores are for: keep it and go on, but say so.
        if (err instanceof StacyError && err.code === 'CONFLICT') throw err;
        warning =
          `the current database could not be checked for other users (${errorText(err)}); ` +
          'make sure no stacyvm serve uses it';
      }
      previous = freeName(`${database}.pre-restore-${stamp(opts.nowMs)}`);
      try {
        // A hard link keeps the old file under the new name while the rename below
        // replaces the database in one step, so the path is never missing.
        await link(database, previous);
      } catch {
        await copyFile(database, previous);
      }
    }
    await rename(temp, database);
  } catch (err) {
    held?.close();
    await removeWithSides(temp).catch(() => undefined);
    throw err;
  }
  held?.close();

  // 3. Side files of the old database must not meet the new one.
  for (const suffix of SIDE_SUFFIXES) {
    const side = `${database}${suffix}`;
    if (!existsSync(side)) continue;
    if (suffix === '-wal' && previous !== undefined && statSync(side).size > 0) {
      await rename(side, `${previous}-wal`);
      leftovers.push(`${side} -> ${previous}-wal`);
    } else {
      await rm(side, { force: true });
      leftovers.push(`${side} (removed)`);
    }
  }
  await fsyncPath(dirname(database));
  const { size } = await stat(database);
  const result: SqliteRestoreResult = {
    backup,
    database,
    schemaVersion: version,
    bytes: size,
    leftovers,
  };
  if (previous !== undefined) result.previous = previous;
  if (warning !== undefined) result.warning = warning;
  return result;
}
