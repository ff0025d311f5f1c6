import { Kysely, PostgresDialect, sql } from 'kysely';
import type { PostgresCursor, PostgresPool, PostgresPoolClient, PostgresQueryResult } from 'kysely';
import pg from 'pg';
import type { PoolConfig } from 'pg';
import type { Clock } from '../../domain/clock.js';
import { StacyError, unavailable } from '../../domain/errors.js';
import { KyselyStore } from '../kysely-store.js';
import type { DriverErrorKind, StoreDatabase, StoreDialectAdapter } from '../kysely-store.js';
import type { Store } from '../store.js';
import { ConnectionStatements, isStalePreparedStatement } from './named-statements.js';

/** Connections one store opens at most (`database.max_open_conns`). */
export const PG_DEFAULT_MAX_OPEN_CONNS = 10;
/** Longest a statement may run before the server cancels it (`database.statement_timeout`). */
export const PG_DEFAULT_STATEMENT_TIMEOUT_MS = 30_000;
/** Longest opening one connection may take. */
export const PG_CONNECT_TIMEOUT_MS = 10_000;
/** Longest a migrator waits for another process's migration to finish. */
export const PG_MIGRATION_LOCK_WAIT_MS = 300_000;
/** Key of the session advisory lock that serialises migrators ("STACYM"). */
export const PG_MIGRATION_LOCK_KEY = 0x53544143594d;

export interface CreatePostgresStoreOptions {
  /** `postgres://user:password@host:port/database?...` (`database.dsn`). */
  dsn: string;
  /** Default time source for operations whose `nowMs` is optional. */
  clock?: Clock;
  /** Pool size (default 10). */
  maxOpenConns?: number;
  /** Server-side statement timeout in ms; 0 disables it (default 30 s). */
  statementTimeoutMs?: number;
  /** Timeout of opening one connection in ms (default 10 s). */
  connectTimeoutMs?: number;
  /** Named prepared statements for the fixed data statements (default true). */
  preparedStatements?: boolean;
  /** How long `migrate()` waits for another migrator (default 5 min). */
  migrationLockWaitMs?: number;
}

/** What a DSN names, with the password kept apart so it is only ever used to redact. */
export interface PostgresTarget {
  host: string;
  port: string;
  database: string;
  user: string;
  /** Words for messages: names host, port and database, never a secret. */
  description: string;
}

interface ParsedDsn extends PostgresTarget {
  secrets: string[];
}

const DSN_FIELD = 'database.dsn';

function badDsn(problem: string): StacyError {
  return new StacyError('BAD_REQUEST', `invalid ${DSN_FIELD}: ${problem}`, {
    details: [{ field: DSN_FIELD, problem }],
  });
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function parseDsn(dsn: string): ParsedDsn {
  if (dsn.trim() === '') throw badDsn('is required for the postgres driver');
  let url: URL;
  try {
    url = new URL(dsn.trim());
  } catch {
    // The text is not echoed: it may hold a password.
    throw badDsn('must be a URL such as postgres://user:password@host:5432/stacyvm');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw badDsn(`must start with postgres:// or postgresql:// (got ${url.protocol}//)`);
  }
  const host = safeDecode(url.hostname) || url.searchParams.get('host') || 'localhost';
  const port = url.port || url.searchParams.get('port') || '5432';
  const user = safeDecode(url.username);
  const database = safeDecode(url.pathname.replace(/^\//, '')) || user || 'postgres';
  const secrets = [dsn, dsn.trim(), url.password, safeDecode(url.password)];
  const pw = url.searchParams.get('password');
  if (pw !== null) secrets.push(pw, encodeURIComponent(pw));
  const hostPort = host.startsWith('/') ? `${host} (port ${port})` : `${host}:${port}`;
  return {
    host,
    port,
    user,
    database,
    description: `postgres database "${database}" on ${hostPort}`,
    // Longest first, so a password inside the DSN is replaced as part of the DSN.
    secrets: [...new Set(secrets.filter((s) => s !== ''))].sort((a, b) => b.length - a.length),
  };
}

/** Host, port and database a DSN names, for messages; BAD_REQUEST when it is not a postgres URL. */
export function describePostgresDsn(dsn: string): PostgresTarget {
  const { host, port, database, user, description } = parseDsn(dsn);
  return { host, port, database, user, description };
}

/** Replaces the DSN and its password wherever they occur in `text` with `***`. */
export function postgresRedactor(dsn: string): (text: string) => string {
  return redactor(parseDsn(dsn).secrets);
}

function redactor(secrets: readonly string[]): (text: string) => string {
  return (text) => {
    let out = text;
    for (const s of secrets) out = out.split(s).join('***');
    return out;
  };
}

function field(err: unknown, name: 'code' | 'message'): string {
  if (typeof err === 'object' && err !== null && name in err) {
    const v = (err as Record<string, unknown>)[name];
    if (typeof v === 'string') return v;
  }
  return '';
}

/** Node socket errors that mean the server cannot be reached. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'ENOENT',
]);

/** SQLSTATEs (or classes) that mean the connection is gone or was refused. */
const UNAVAILABLE_STATES = new Set([
  '57P01', // admin_shutdown (pg_terminate_backend, fast shutdown)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up, shutting down, recovering)
  '57014', // query_canceled (statement_timeout)
  '53300', // too_many_connections
  '28000', // invalid_authorization_specification
  '28P01', // invalid_password
  '3D000', // invalid_catalog_name: the database does not exist
]);

const LOST_CONNECTION =
  /Connection terminated|timeout exceeded when trying to connect|connection error|Connection ended|not queryable|Client was closed/i;

/** Postgres's reading of a driver error (SQLSTATE codes of node-postgres errors). */
export function classifyPostgresError(err: unknown): DriverErrorKind {
  if (err instanceof AggregateError && err.errors.length > 0) {
    const kinds = err.errors.map((e) => classifyPostgresError(e));
    if (kinds.every((k) => k === 'unavailable')) return 'unavailable';
  }
  const code = field(err, 'code');
  if (code === '23505') return 'unique-violation';
  if (code === '40001' || code === '40P01') return 'retry';
  if (code === '55P03') return 'busy';
  if (UNAVAILABLE_STATES.has(code) || code.startsWith('08') || code.startsWith('53')) {
    return 'unavailable';
  }
  if (NETWORK_CODES.has(code)) return 'unavailable';
  if (LOST_CONNECTION.test(field(err, 'message'))) return 'unavailable';
  return 'other';
}

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One pooled connection as Kysely sees it, kept for as long as the pg client lives. */
interface WrappedClient {
  readonly view: PostgresPoolClient;
  /** Set when the current checkout must not go back to the pool. */
  broken: Error | undefined;
}

/**
 * The pool as Kysely sees it, with two changes:
 * - data statements go out as named prepared statements (see
 *   named-statements.ts), so PostgreSQL parses and plans each fixed
 *   statement once per connection instead of on every call;
 * - a connection whose query failed because the connection is gone (killed
 *   backend, server restart) is released with that error, so the pool
 *   destroys it at once instead of lending it out again before its socket's
 *   close has been noticed. So is one whose prepared statement went stale
 *   (another process changed a table's columns): the statement is run again
 *   unnamed when that is safe (outside a transaction).
 */
export function preparingPool(pool: pg.Pool, options: { named?: boolean } = {}): PostgresPool {
  const named = options.named ?? true;
  // One view per pg client, so Kysely (which keys its connection objects by
  // client) reuses its wrapper too.
  const wrapped = new WeakMap<pg.PoolClient, WrappedClient>();

  function wrap(client: pg.PoolClient): WrappedClient {
    const statements = new ConnectionStatements();
    const fail = (err: unknown): never => {
      if (classifyPostgresError(err) === 'unavailable') {
        state.broken = err instanceof Error ? err : new Error(String(err));
      }
      throw err;
    };
    async function run<R>(
      text: string,
      values: unknown[],
      name: string | undefined,
    ): Promise<PostgresQueryResult<R>> {
      try {
        const res =
          name === undefined
            ? await client.query(text, values)
            : await client.query({ name, text, values });
        return res as unknown as PostgresQueryResult<R>;
      } catch (err) {
        if (name !== undefined && isStalePreparedStatement(err)) {
          // This connection holds the stale plan: it goes once released.
          state.broken = err instanceof Error ? err : new Error(String(err));
          if (statements.canRetry) {
            return client
              .query(text, values)
              .then((res) => res as unknown as PostgresQueryResult<R>, fail);
          }
        }
        return fail(err);
      }
    }
    function query<R>(
      sql: string,
      parameters: ReadonlyArray<unknown>,
    ): Promise<PostgresQueryResult<R>>;
    function query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>;
    function query<R>(
      text: string | PostgresCursor<R>,
      parameters?: ReadonlyArray<unknown>,
    ): Promise<PostgresQueryResult<R>> | PostgresCursor<R> {
      if (typeof text !== 'string') throw new Error('cursors are not used by the store');
      const values = parameters === undefined ? [] : [...parameters];
      return run<R>(text, values, named ? statements.nameFor(text) : undefined);
    }
    const state: WrappedClient = {
      view: {
        query,
        release: () => {
          const broken = state.broken;
          state.broken = undefined;
          if (broken !== undefined) wrapped.delete(client);
          client.release(broken);
        },
      },
      broken: undefined,
    };
    return state;
  }

  return {
    async connect(): Promise<PostgresPoolClient> {
      const client = await pool.connect();
      let state = wrapped.get(client);
      if (state === undefined) {
        state = wrap(client);
        wrapped.set(client, state);
      }
      state.broken = undefined;
      return state.view;
    },
    end: () => pool.end(),
  };
}

/** Postgres's share of the store, bound to one DSN for messages and redaction. */
export function postgresDialectAdapter(
  target: string,
  redact: (text: string) => string,
  migrationLockWaitMs: number = PG_MIGRATION_LOCK_WAIT_MS,
): StoreDialectAdapter {
  return {
    name: 'postgres',
    target,
    redact,
    autoIncrementId: {
      dataType: 'bigserial',
      build: (c) => c.primaryKey(),
    },
    classifyError: classifyPostgresError,
    isMissingTable: (err) => field(err, 'code') === '42P01',
    async withMigrationLock(db, fn) {
      return db.connection().execute(async (conn) => {
        // pg_try_advisory_lock in a loop rather than pg_advisory_lock: the wait is
        // bounded and worded, and the statement timeout cannot cut it short.
        const deadline = Date.now() + migrationLockWaitMs;
        for (;;) {
          const { rows } = await sql<{
            locked: boolean;
          }>`select pg_try_advisory_lock(${PG_MIGRATION_LOCK_KEY}) as locked`.execute(conn);
          if (rows[0]?.locked === true) break;
          if (Date.now() >= deadline) {
            throw unavailable(
              `another stacyvm is migrating ${target}; gave up waiting after ` +
                `${Math.round(migrationLockWaitMs / 1000)} s`,
            );
          }
          await delay(50 + Math.random() * 100);
        }
        try {
          // Schema changes on big tables may outlast the per-statement timeout.
          await sql`set statement_timeout = 0`.execute(conn);
          return await fn(conn);
        } finally {
          // Ending the session would release the lock too; a dead connection is dropped by the pool.
          await sql`reset statement_timeout`.execute(conn).catch(() => undefined);
          await sql`select pg_advisory_unlock(${PG_MIGRATION_LOCK_KEY})`
            .execute(conn)
            .catch(() => undefined);
        }
      });
    },
  };
}

function positiveInt(value: number | undefined, def: number): number {
  return value === undefined || !Number.isFinite(value) || value < 1 ? def : Math.floor(value);
}

/**
 * Opens the Postgres store over a connection pool and checks one connection,
 * so a wrong DSN, a refused login or a server that is down fails here with
 * UNAVAILABLE naming host and database (never the password). The schema is
 * not touched: call `migrate()` on the returned store before using it.
 */
export async function createPostgresStore(opts: CreatePostgresStoreOptions): Promise<Store> {
  const parsed = parseDsn(opts.dsn);
  const redact = redactor(parsed.secrets);
  const statementTimeoutMs = Math.max(
    0,
    Math.floor(opts.statementTimeoutMs ?? PG_DEFAULT_STATEMENT_TIMEOUT_MS),
  );
  const config: PoolConfig = {
    connectionString: opts.dsn.trim(),
    max: positiveInt(opts.maxOpenConns, PG_DEFAULT_MAX_OPEN_CONNS),
    connectionTimeoutMillis: positiveInt(opts.connectTimeoutMs, PG_CONNECT_TIMEOUT_MS),
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    application_name: 'stacyvm',
  };
  if (statementTimeoutMs > 0) config.statement_timeout = statementTimeoutMs;
  const pool = new pg.Pool(config);
  // A connection that dies (server restart, pg_terminate_backend) emits
  // 'error'. Idle ones are dropped by the pool; a checked-out one fails its
  // query and is dropped on release. Without these listeners the event would
  // end the process when it hits a connection the pool has lent out.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });

  const adapter = postgresDialectAdapter(
    parsed.description,
    redact,
    opts.migrationLockWaitMs ?? PG_MIGRATION_LOCK_WAIT_MS,
  );
  try {
    const client = await pool.connect();
    try {
      await client.query('select 1');
    } finally {
      client.release();
    }
  } catch (err) {
    await pool.end().catch(() => undefined);
    const text = redact(errorText(err));
    throw new StacyError('UNAVAILABLE', `cannot connect to ${parsed.description}: ${text}`, {
      cause: Object.assign(new Error(text), { code: field(err, 'code') }),
    });
  }
  const db = new Kysely<StoreDatabase>({
    dialect: new PostgresDialect({
      pool: preparingPool(pool, { named: opts.preparedStatements ?? true }),
    }),
  });
  const options = opts.clock === undefined ? {} : { clock: opts.clock };
  return new KyselyStore(db, adapter, options);
}

function errorText(err: unknown): string {
  if (err instanceof AggregateError && err.message === '') {
    const inner = [...new Set(err.errors.map((e) => errorText(e)))].filter((m) => m !== '');
    if (inner.length > 0) return inner.join('; ');
  }
  return err instanceof Error ? err.message : String(err);
}
