import { mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import type { Clock } from '../../domain/clock.js';
import { badRequest, unavailable } from '../../domain/errors.js';
import { KyselyStore } from '../kysely-store.js';
import type { DriverErrorKind, StoreDatabase, StoreDialectAdapter } from '../kysely-store.js';
import type { Store } from '../store.js';

/** The raw better-sqlite3 handle type. */
export type SqliteDatabase = Database.Database;

/** How long a statement waits for another process's write lock before SQLITE_BUSY. */
export const SQLITE_BUSY_TIMEOUT_MS = 5000;

export interface CreateSqliteStoreOptions {
  /** Database file; `:memory:` for a private in-memory database (tests). */
  path: string;
  /** Default time source for operations whose `nowMs` is optional. */
  clock?: Clock;
  /** Wait for another process's lock before failing as busy (default 5000). */
  busyTimeoutMs?: number;
}

function sqliteCode(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = err.code;
    if (typeof code === 'string') return code;
  }
  return '';
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** SQLite's share of the store: error codes and the autoincrement column. */
export const sqliteDialectAdapter: StoreDialectAdapter = {
  name: 'sqlite',
  autoIncrementId: {
    dataType: 'integer',
    // AUTOINCREMENT so ids of deleted rows are never handed out again.
    build: (c) => c.primaryKey().autoIncrement(),
  },
  classifyError(err: unknown): DriverErrorKind {
    const code = sqliteCode(err);
    if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') {
      return 'unique-violation';
    }
    if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) return 'busy';
    return 'other';
  },
  isMissingTable(err: unknown): boolean {
    return sqliteCode(err) === 'SQLITE_ERROR' && /no such table/i.test(errorText(err));
  },
};

function describeOpenFailure(err: unknown): string {
  const code = sqliteCode(err);
  if (code === 'SQLITE_NOTADB') return 'the file is not a SQLite database';
  if (code === 'SQLITE_CORRUPT') return 'the database file is corrupt';
  if (code.startsWith('SQLITE_CANTOPEN')) return 'the file cannot be opened';
  if (code.startsWith('SQLITE_READONLY')) return 'the database is read-only';
  return errorText(err);
}

/**
 * Opens a SQLite database file with the pragmas StacyVM relies on (WAL,
 * synchronous=NORMAL, busy_timeout, foreign_keys), creating its parent
 * directory. Fails with UNAVAILABLE naming the path when the file is a
 * directory, is not a SQLite database, or cannot be opened.
 */
export function openSqliteDatabase(
  path: string,
  busyTimeoutMs: number = SQLITE_BUSY_TIMEOUT_MS,
): SqliteDatabase {
  if (path === '') throw badRequest('SQLite database path must not be empty');
  const inMemory = path === ':memory:';
  if (!inMemory) {
    let isDir = false;
    try {
      isDir = statSync(path).isDirectory();
    } catch {
      // Missing is fine: SQLite creates the file.
    }
    if (isDir) throw unavailable(`cannot open SQLite database ${path}: it is a directory`);
    try {
      mkdirSync(dirname(path), { recursive: true });
    } catch (err) {
      throw unavailable(
        `cannot create the directory for SQLite database ${path}: ${errorText(err)}`,
        err,
      );
    }
  }

  let db: SqliteDatabase;
  try {
    db = new Database(path);
  } catch (err) {
    throw unavailable(`cannot open SQLite database ${path}: ${describeOpenFailure(err)}`, err);
  }
  try {
    // busy_timeout first, so even the switch to WAL waits for other processes.
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(busyTimeoutMs))}`);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    // Reading the schema is what detects a file that is not a database.
    db.prepare('SELECT count(*) FROM sqlite_schema').get();
  } catch (err) {
    db.close();
    throw unavailable(`cannot open SQLite database ${path}: ${describeOpenFailure(err)}`, err);
  }
  return db;
}

/**
 * Opens the SQLite store. The schema is not touched: call `migrate()` on the
 * returned store before using it.
 */
export function createSqliteStore(opts: CreateSqliteStoreOptions): Promise<Store> {
  try {
    const database = openSqliteDatabase(opts.path, opts.busyTimeoutMs);
    const db = new Kysely<StoreDatabase>({
      dialect: new SqliteDialect({ database: withStatementCache(database) }),
    });
    const options = opts.clock === undefined ? {} : { clock: opts.clock };
    return Promise.resolve(new KyselyStore(db, sqliteDialectAdapter, options));
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

/** Statements kept per connection; our queries are a small fixed set. */
const STATEMENT_CACHE_SIZE = 256;

/**
 * Kysely's SQLite driver prepares every query anew; preparing costs more than
 * running our small statements. The same SQL text always compiles to the same
 * statement, so a bounded cache keyed by text is safe (parameters are bound
 * per call, never baked into the SQL).
 */
export function withStatementCache(db: SqliteDatabase): SqliteDatabase {
  const cache = new Map<string, Database.Statement>();
  return new Proxy(db, {
    get(target, prop, receiver) {
      if (prop === 'prepare') {
        return (sql: string): Database.Statement => {
          let stmt = cache.get(sql);
          if (stmt === undefined) {
            stmt = target.prepare(sql);
            if (cache.size >= STATEMENT_CACHE_SIZE) {
              const oldest = cache.keys().next().value;
              if (oldest !== undefined) cache.delete(oldest);
            }
            cache.set(sql, stmt);
          }
          return stmt;
        };
      }
      const value: unknown = Reflect.get(target, prop, receiver);
      return typeof value === 'function'
        ? (value as (...a: unknown[]) => unknown).bind(target)
        : value;
    },
  });
}
