import { existsSync, mkdirSync, realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql } from 'kysely';
import type { RawBuilder, Transaction } from 'kysely';
import pg from 'pg';
import { StacyError, badRequest, conflict, unavailable } from '../domain/errors.js';
import {
  LATEST_SCHEMA_VERSION,
  MIGRATIONS,
  MIGRATIONS_TABLE,
  readSchemaVersion,
  runMigrations,
} from './migrations.js';
import type { SchemaDialect } from './migrations.js';
import {
  PG_CONNECT_TIMEOUT_MS,
  classifyPostgresError,
  describePostgresDsn,
  postgresDialectAdapter,
  postgresRedactor,
} from './postgres/open-postgres.js';
import { SQLITE_BUSY_TIMEOUT_MS, sqliteDialectAdapter } from './sqlite/open-sqlite.js';
import { lockSqliteExclusively } from './sqlite/sqlite-backup.js';

/** One end of a copy: a SQLite file or a Postgres database. */
export type DatabaseEndpoint =
  | { readonly driver: 'sqlite'; readonly path: string }
  | { readonly driver: 'postgres'; readonly dsn: string };

export interface CopyDatabaseOptions {
  from: DatabaseEndpoint;
  to: DatabaseEndpoint;
  /**
   * Delete the rows the target already has (in the copy's transaction)
   * instead of refusing a target that is not empty.
   */
  replace?: boolean;
  /** Rows read from the source per query (default 500). */
  batchRows?: number;
  /** Time stamped on migrations applied to the target. */
  nowMs: number;
  /** Receives one line per step, for the CLI. Never holds a secret. */
  onProgress?: (line: string) => void;
}

export interface CopiedTable {
  table: string;
  rows: number;
  /** Highest integer id copied, when the table has an integer primary key. */
  maxId?: number;
  /** The next id the target hands out was set past this (sequence or sqlite_sequence). */
  idFloor?: number;
}

export interface CopyDatabaseResult {
  /** Human words for source and target; never a password. */
  from: string;
  to: string;
  schemaVersion: number;
  /** Migrations applied to the target before copying. */
  migratedTarget: number[];
  tables: CopiedTable[];
  /** NUL characters replaced by U+FFFD because Postgres text cannot hold them. */
  replacedNul: number;
}

/** Largest number of bind parameters one INSERT uses (SQLite allows 32766, Postgres 65535). */
const MAX_PARAMS = 30_000;
/** An INSERT is sent once the values it gathers reach this many characters. */
const MAX_BATCH_CHARS = 8 * 1024 * 1024;
const DEFAULT_BATCH_ROWS = 500;

type Row = Record<string, unknown>;
type Db = Kysely<unknown>;

interface TableInfo {
  name: string;
  columns: string[];
  /** Primary key columns in key order; empty when the table has none. */
  pk: string[];
  /** The single integer primary key column, if any. */
  intPk?: string;
  /** Column fed by a sequence (Postgres) or AUTOINCREMENT (SQLite), if any. */
  serial?: string;
}

interface Side {
  readonly driver: 'sqlite' | 'postgres';
  /** Words for messages. */
  readonly describe: string;
  readonly db: Db;
  readonly dialect: SchemaDialect;
  readonly redact: (text: string) => string;
  tables(db: Db): Promise<TableInfo[]>;
  /** The highest id handed out so far for `table.col` (sequence state included). */
  idFloor(db: Db, table: TableInfo, col: string): Promise<number>;
  /** Makes the next id handed out for `table.col` greater than `floor`. */
  setIdFloor(db: Db, table: TableInfo, col: string, floor: number): Promise<void>;
  close(): Promise<void>;
}

function errorText(err: unknown): string {
  if (err instanceof AggregateError && err.message === '') {
    return err.errors.map((e) => errorText(e)).join('; ');
  }
  return err instanceof Error ? err.message : String(err);
}

function num(v: unknown): number {
  if (v === null || v === undefined) return 0;
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

const id = (name: string): RawBuilder<unknown> => sql.id(name);

async function rows(db: Db, query: RawBuilder<unknown>): Promise<Row[]> {
  const res = await (query as RawBuilder<Row>).execute(db);
  return res.rows;
}

// ---------------------------------------------------------------------------
// SQLite

function openSqliteSide(path: string, role: 'source' | 'target'): Side {
  const what = role === 'source' ? 'source database' : 'target database';
  if (path === '' || path === ':memory:') {
    throw badRequest(`${what} must be a SQLite file path, not "${path}"`);
  }
  if (existsSync(path)) {
    if (!statSync(path).isFile()) throw badRequest(`${what} ${path} is not a file`);
  } else if (role === 'source') {
    throw badRequest(`${what} ${path} does not exist`);
  } else {
    // A new target file; created empty and migrated below.
    try {
      mkdirSync(dirname(path), { recursive: true });
      new Database(path).close();
    } catch (err) {
      throw badRequest(`cannot create ${what} ${path}: ${errorText(err)}`);
    }
  }
  // Nobody may write to either file while the copy runs.
  const raw = lockSqliteExclusively(path, what);
  raw.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
  const db = new Kysely<unknown>({ dialect: new SqliteDialect({ database: raw }) });
  return {
    driver: 'sqlite',
    describe: `SQLite database ${path}`,
    db,
    dialect: sqliteDialectAdapter,
    redact: (t) => t,
    async tables(conn) {
      const names = await rows(
        conn,
        sql`select name, sql from sqlite_schema where type = 'table' and name not like 'sqlite_%' order by name`,
      );
      const out: TableInfo[] = [];
      for (const t of names) {
        const name = String(t['name']);
        const cols = await rows(
          conn,
          sql`select name, type, pk from pragma_table_info(${name}) order by cid`,
        );
        const pkCols = cols
          .filter((c) => num(c['pk']) > 0)
          .sort((a, b) => num(a['pk']) - num(b['pk']));
        const info: TableInfo = {
          name,
          columns: cols.map((c) => String(c['name'])),
          pk: pkCols.map((c) => String(c['name'])),
        };
        const only = pkCols.length === 1 ? pkCols[0] : undefined;
        if (only !== undefined && /^(integer|bigint|bigserial)$/i.test(String(only['type']))) {
          info.intPk = String(only['name']);
          if (/autoincrement/i.test(String(t['sql']))) info.serial = info.intPk;
        }
        out.push(info);
      }
      return out;
    },
    async idFloor(conn, table, col) {
      const [max] = await rows(conn, sql`select max(${id(col)}) as m from ${id(table.name)}`);
      let floor = num(max?.['m']);
      const hasSeq = await rows(
        conn,
        sql`select 1 from sqlite_schema where type = 'table' and name = 'sqlite_sequence'`,
      );
      if (hasSeq.length > 0) {
        const [seq] = await rows(
          conn,
          sql`select seq from sqlite_sequence where name = ${table.name}`,
        );
        floor = Math.max(floor, num(seq?.['seq']));
      }
      return floor;
    },
    async setIdFloor(conn, table, _col, floor) {
      // Only AUTOINCREMENT tables keep a high-water mark; inserting the rows
      // raised it to their max id already.
      if (table.serial === undefined || floor <= 0) return;
      const done =
        await sql`update sqlite_sequence set seq = ${floor} where name = ${table.name} and seq < ${floor}`.execute(
          conn,
        );
      if (num(done.numAffectedRows) === 0) {
        const present = await rows(
          conn,
          sql`select 1 from sqlite_sequence where name = ${table.name}`,
        );
        if (present.length === 0) {
          await sql`insert into sqlite_sequence (name, seq) values (${table.name}, ${floor})`.execute(
            conn,
          );
        }
      }
    },
    close: () => db.destroy(),
  };
}

// ---------------------------------------------------------------------------
// Postgres

async function openPostgresSide(dsn: string, role: 'source' | 'target'): Promise<Side> {
  const target = describePostgresDsn(dsn).description;
  const redact = postgresRedactor(dsn);
  const pool = new pg.Pool({
    connectionString: dsn.trim(),
    // One connection: everything runs in one transaction anyway.
    max: 1,
    connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS,
    application_name: `stacyvm-db-copy-${role}`,
  });
  pool.on('error', () => undefined);
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });
  try {
    const client = await pool.connect();
    try {
      await client.query('select 1');
    } finally {
      client.release();
    }
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw unavailable(`cannot connect to the ${role} ${target}: ${redact(errorText(err))}`);
  }
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  const sequenceOf = async (conn: Db, table: string, col: string): Promise<string | undefined> => {
    const [r] = await rows(
      conn,
      sql`select pg_get_serial_sequence(quote_ident(${table}), ${col}) as s`,
    );
    const s = r?.['s'];
    return typeof s === 'string' && s !== '' ? s : undefined;
  };
  return {
    driver: 'postgres',
    describe: target,
    db,
    dialect: postgresDialectAdapter(target, redact),
    redact,
    async tables(conn) {
      const names = await rows(
        conn,
        sql`select table_name as name from information_schema.tables
            where table_schema = current_schema() and table_type = 'BASE TABLE' order by table_name`,
      );
      const out: TableInfo[] = [];
      for (const t of names) {
        const name = String(t['name']);
        const cols = await rows(
          conn,
          sql`select column_name as name, data_type as type from information_schema.columns
              where table_schema = current_schema() and table_name = ${name} order by ordinal_position`,
        );
        const pkCols = await rows(
          conn,
          sql`select a.attname as name, format_type(a.atttypid, a.atttypmod) as type
              from pg_index i
              join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
              where i.indrelid = quote_ident(${name})::regclass and i.indisprimary
              order by array_position(i.indkey::int2[], a.attnum)`,
        );
        const info: TableInfo = {
          name,
          columns: cols.map((c) => String(c['name'])),
          pk: pkCols.map((c) => String(c['name'])),
        };
        const only = pkCols.length === 1 ? pkCols[0] : undefined;
        if (only !== undefined && /^(integer|bigint|smallint)$/i.test(String(only['type']))) {
          info.intPk = String(only['name']);
        }
        for (const c of info.columns) {
          if ((await sequenceOf(conn, name, c)) !== undefined) {
            info.serial = c;
            break;
          }
        }
        out.push(info);
      }
      return out;
    },
    async idFloor(conn, table, col) {
      const [max] = await rows(conn, sql`select max(${id(col)}) as m from ${id(table.name)}`);
      let floor = num(max?.['m']);
      const seq = await sequenceOf(conn, table.name, col);
      if (seq !== undefined) {
        const [state] = await rows(conn, sql`select last_value, is_called from ${sql.table(seq)}`);
        if (state?.['is_called'] === true) floor = Math.max(floor, num(state['last_value']));
      }
      return floor;
    },
    async setIdFloor(conn, table, col, floor) {
      const seq = await sequenceOf(conn, table.name, col);
      if (seq === undefined) return;
      // setval(s, n, true): the next value is n + 1; an empty history restarts at 1.
      await (
        floor >= 1
          ? sql`select setval(${seq}::regclass, ${floor}, true)`
          : sql`select setval(${seq}::regclass, 1, false)`
      ).execute(conn);
    },
    close: () => db.destroy(),
  };
}

async function openSide(ep: DatabaseEndpoint, role: 'source' | 'target'): Promise<Side> {
  return ep.driver === 'sqlite' ? openSqliteSide(ep.path, role) : openPostgresSide(ep.dsn, role);
}

function sameDatabase(a: DatabaseEndpoint, b: DatabaseEndpoint): boolean {
  if (a.driver === 'sqlite' && b.driver === 'sqlite') {
    if (!existsSync(a.path) || !existsSync(b.path)) return false;
    return realpathSync(a.path) === realpathSync(b.path);
  }
  if (a.driver === 'postgres' && b.driver === 'postgres') {
    const x = describePostgresDsn(a.dsn);
    const y = describePostgresDsn(b.dsn);
    return x.host === y.host && x.port === y.port && x.database === y.database;
  }
  return false;
}

// ---------------------------------------------------------------------------
// The copy

function compareSchemas(from: TableInfo[], to: TableInfo[]): string[] {
  const problems: string[] = [];
  const toByName = new Map(to.map((t) => [t.name, t]));
  const fromNames = new Set(from.map((t) => t.name));
  for (const t of from) {
    const other = toByName.get(t.name);
    if (other === undefined) {
      problems.push(`table ${t.name} is missing in the target`);
      continue;
    }
    const missing = t.columns.filter((c) => !other.columns.includes(c));
    const extra = other.columns.filter((c) => !t.columns.includes(c));
    if (missing.length > 0) problems.push(`${t.name}: target lacks ${missing.join(', ')}`);
    if (extra.length > 0) problems.push(`${t.name}: target has extra ${extra.join(', ')}`);
  }
  for (const t of to) {
    if (!fromNames.has(t.name)) problems.push(`table ${t.name} is missing in the source`);
  }
  return problems;
}

/** `where (a, b) > (x, y)` for keyset paging, or nothing for the first page. */
function after(pk: string[], last: Row | undefined): RawBuilder<unknown> {
  if (last === undefined || pk.length === 0) return sql``;
  if (pk.length === 1) {
    const col = pk[0] as string;
    return sql`where ${id(col)} > ${last[col]}`;
  }
  return sql`where (${sql.join(pk.map(id))}) > (${sql.join(pk.map((c) => last[c]))})`;
}

/**
 * Copies every table of a StacyVM database into another, empty one, e.g. a
 * SQLite single node's file into Postgres (or back). Tables and columns are
 * read from the databases, so tables added by later migrations are copied
 * too; the two must have the same tables and columns after the target has
 * been migrated to the source's schema version (migrations applied to the
 * target are committed before the copy starts).
 *
 * The rows are read from one snapshot of the source and written in one
 * transaction on the target, in batches; before it commits, row counts and
 * the highest integer ids are compared with the source and the target's id
 * sequences are set past the source's (so no id is handed out twice). Any
 * failure rolls the target back: nothing is half-written. A SQLite source or
 * target is held with an exclusive lock for the whole copy, so a server still
 * using it is refused (CONFLICT) rather than losing writes.
 */
export async function copyDatabase(opts: CopyDatabaseOptions): Promise<CopyDatabaseResult> {
  const progress = opts.onProgress ?? ((): void => undefined);
  const batchRows = Math.max(1, Math.floor(opts.batchRows ?? DEFAULT_BATCH_ROWS));
  if (sameDatabase(opts.from, opts.to)) {
    throw badRequest('source and target are the same database');
  }
  const from = await openSide(opts.from, 'source');
  let to: Side;
  try {
    to = await openSide(opts.to, 'target');
  } catch (err) {
    await from.close().catch(() => undefined);
    throw err;
  }
  const redact = (t: string): string => to.redact(from.redact(t));
  let step = 'reading the schema versions';
  try {
    const version = await readSchemaVersion(from.db, from.dialect);
    if (version === 0) {
      throw badRequest(`the source ${from.describe} has no StacyVM schema (no applied migrations)`);
    }
    if (version > LATEST_SCHEMA_VERSION) {
      throw badRequest(
        `the source ${from.describe} has schema version ${version}, newer than this stacyvm ` +
          `understands (${LATEST_SCHEMA_VERSION}); use a newer stacyvm`,
      );
    }
    const targetVersion = await readSchemaVersion(to.db, to.dialect);
    if (targetVersion > version) {
      throw conflict(
        `the target ${to.describe} has schema version ${targetVersion}, the source ${version}; ` +
          `migrate the source first (stacyvm db migrate with its configuration)`,
      );
    }
    step = 'migrating the target';
    const migratedTarget = await runMigrations(
      to.db,
      to.dialect,
      opts.nowMs,
      MIGRATIONS.filter((m) => m.version <= version),
    );
    if (migratedTarget.length > 0) {
      progress(`migrated the target to schema version ${version} (${migratedTarget.join(', ')})`);
    }

    step = 'reading the table layout';
    const isData = (t: TableInfo): boolean => t.name !== MIGRATIONS_TABLE;
    const srcTables = (await from.tables(from.db)).filter(isData);
    const dstTables = (await to.tables(to.db)).filter(isData);
    const mismatch = compareSchemas(srcTables, dstTables);
    if (mismatch.length > 0) {
      throw conflict(
        `source and target tables differ at schema version ${version}: ${mismatch.join('; ')}`,
      );
    }
    const dstByName = new Map(dstTables.map((t) => [t.name, t]));

    let replacedNul = 0;
    const clean = (v: unknown): unknown => {
      if (to.driver === 'postgres' && typeof v === 'string' && v.includes('\u0000')) {
        replacedNul += v.split('\u0000').length - 1;
        return v.replaceAll('\u0000', '\uFFFD');
      }
      if (to.driver === 'sqlite' && typeof v === 'boolean') return v ? 1 : 0;
      return v;
    };

    const copied: CopiedTable[] = [];
    const readSnapshot =
      from.driver === 'postgres'
        ? from.db.transaction().setIsolationLevel('repeatable read').setAccessMode('read only')
        : from.db.transaction();
    await readSnapshot.execute(async (src) => {
      step = 'counting the source rows';
      const expected = new Map<string, { rows: number; maxId?: number }>();
      for (const t of srcTables) {
        const [r] = await rows(
          src,
          t.intPk === undefined
            ? sql`select count(*) as n from ${id(t.name)}`
            : sql`select count(*) as n, max(${id(t.intPk)}) as m from ${id(t.name)}`,
        );
        const e: { rows: number; maxId?: number } = { rows: num(r?.['n']) };
        if (t.intPk !== undefined && r?.['m'] !== null) e.maxId = num(r?.['m']);
        expected.set(t.name, e);
      }

      await to.db.transaction().execute(async (dst: Transaction<unknown>) => {
        if (to.driver === 'postgres') {
          step = 'locking the target tables';
          await sql`set local statement_timeout = 0`.execute(dst);
          await sql`lock table ${sql.join(dstTables.map((t) => id(t.name)))} in access exclusive mode`.execute(
            dst,
          );
        }
        step = 'checking that the target is empty';
        const occupied: string[] = [];
        for (const t of dstTables) {
          const [r] = await rows(dst, sql`select count(*) as n from ${id(t.name)}`);
          const n = num(r?.['n']);
          if (n > 0) occupied.push(`${t.name} (${n} rows)`);
        }
        if (occupied.length > 0) {
          if (opts.replace !== true) {
            throw conflict(
              `the target ${to.describe} is not empty: ${occupied.join(', ')}; ` +
                'copy into an empty database, or pass --force to replace its rows',
            );
          }
          for (const t of dstTables) await sql`delete from ${id(t.name)}`.execute(dst);
          progress(`deleted the target's rows: ${occupied.join(', ')}`);
        }

        for (const t of srcTables) {
          const cols = t.columns;
          const perInsert = Math.max(1, Math.min(batchRows, Math.floor(MAX_PARAMS / cols.length)));
          const overriding = to.driver === 'postgres' ? sql`overriding system value` : sql``;
          const flush = async (batch: Row[]): Promise<void> => {
            if (batch.length === 0) return;
            await sql`insert into ${id(t.name)} (${sql.join(cols.map(id))}) ${overriding} values ${sql.join(
              batch.map((r) => sql`(${sql.join(cols.map((c) => clean(r[c])))})`),
            )}`.execute(dst);
          };
          step = `copying ${t.name}`;
          const order = t.pk.length > 0 ? t.pk : cols;
          let last: Row | undefined;
          let total = 0;
          let offset = 0;
          for (;;) {
            const page = await rows(
              src,
              t.pk.length > 0
                ? sql`select ${sql.join(cols.map(id))} from ${id(t.name)} ${after(t.pk, last)}
                      order by ${sql.join(order.map(id))} limit ${batchRows}`
                : sql`select ${sql.join(cols.map(id))} from ${id(t.name)}
                      order by ${sql.join(order.map(id))} limit ${batchRows} offset ${offset}`,
            );
            if (page.length === 0) break;
            let batch: Row[] = [];
            let chars = 0;
            for (const r of page) {
              batch.push(r);
              for (const c of cols) {
                const v = r[c];
                chars += typeof v === 'string' ? v.length : 8;
              }
              if (batch.length >= perInsert || chars >= MAX_BATCH_CHARS) {
                await flush(batch);
                batch = [];
                chars = 0;
              }
            }
            await flush(batch);
            total += page.length;
            offset += page.length;
            last = page[page.length - 1];
            if (page.length < batchRows) break;
          }

          step = `verifying ${t.name}`;
          const want = expected.get(t.name) ?? { rows: 0 };
          const [got] = await rows(
            dst,
            t.intPk === undefined
              ? sql`select count(*) as n from ${id(t.name)}`
              : sql`select count(*) as n, max(${id(t.intPk)}) as m from ${id(t.name)}`,
          );
          const gotRows = num(got?.['n']);
          if (total !== want.rows || gotRows !== want.rows) {
            throw new StacyError(
              'INTERNAL_ERROR',
              `${t.name}: the source has ${want.rows} rows, ${total} were read and the target ` +
                `holds ${gotRows}`,
            );
          }
          const result: CopiedTable = { table: t.name, rows: gotRows };
          if (t.intPk !== undefined && want.maxId !== undefined) {
            const gotMax = num(got?.['m']);
            if (gotMax !== want.maxId) {
              throw new StacyError(
                'INTERNAL_ERROR',
                `${t.name}: the highest ${t.intPk} is ${want.maxId} in the source, ${gotMax} in the target`,
              );
            }
            result.maxId = gotMax;
          }
          const dstInfo = dstByName.get(t.name);
          const serial = dstInfo?.serial;
          if (dstInfo !== undefined && serial !== undefined) {
            step = `setting the id sequence of ${t.name}`;
            const floor = t.columns.includes(serial) ? await from.idFloor(src, t, serial) : 0;
            await to.setIdFloor(dst, dstInfo, serial, floor);
            result.idFloor = floor;
          }
          copied.push(result);
          progress(
            `copied ${t.name}: ${gotRows} rows` +
              (result.maxId === undefined ? '' : `, max ${t.intPk} ${result.maxId}`),
          );
        }
        step = 'committing';
      });
    });
    return {
      from: from.describe,
      to: to.describe,
      schemaVersion: version,
      migratedTarget,
      tables: copied,
      replacedNul,
    };
  } catch (err) {
    if (err instanceof StacyError) {
      const text = redact(err.message);
      // Our own refusals carry no secret; a wrapped driver message might.
      if (text === err.message) throw err;
      throw new StacyError(err.code, text);
    }
    const text = redact(errorText(err));
    const lost = [from, to].some(
      (side) => side.driver === 'postgres' && classifyPostgresError(err) === 'unavailable',
    );
    throw new StacyError(
      lost ? 'UNAVAILABLE' : 'INTERNAL_ERROR',
      `copy failed while ${step}: ${text}; the copy was rolled back, the target has none of its rows`,
      { cause: Object.assign(new Error(text), { code: codeOf(err) }) },
    );
  } finally {
    await from.close().catch(() => undefined);
    await to.close().catch(() => undefined);
  }
}

function codeOf(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return '';
}
