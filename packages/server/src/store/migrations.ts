import type { ColumnDataType, ColumnDefinitionBuilder, Kysely } from 'kysely';
import { StacyError, unavailable } from '../domain/errors.js';

/**
 * What the schema differs in between dialects. Everything else in a migration
 * is written once with Kysely's schema builder.
 */
export interface SchemaDialect {
  /** Column type and modifiers of an auto-incrementing integer primary key. */
  readonly autoIncrementId: {
    readonly dataType: ColumnDataType;
    build(col: ColumnDefinitionBuilder): ColumnDefinitionBuilder;
  };
  /** Whether a driver error says a table does not exist. */
  isMissingTable(err: unknown): boolean;
  /**
   * Runs `fn` on one connection while holding a lock that keeps other
   * processes' migrators out (Postgres: an advisory lock). Absent where the
   * database admits one writer at a time anyway (SQLite).
   */
  withMigrationLock?<T>(db: Kysely<unknown>, fn: (db: Kysely<unknown>) => Promise<T>): Promise<T>;
}

/** One versioned schema change, applied inside a transaction. */
export interface Migration {
  readonly version: number;
  readonly description: string;
  up(db: Kysely<unknown>, dialect: SchemaDialect): Promise<void>;
}

/** Table that records which migrations ran. */
export const MIGRATIONS_TABLE = 'schema_migrations';

interface MigrationsDatabase {
  schema_migrations: { version: number | string; applied_at: number | string };
}

// Times are BIGINT epoch milliseconds on every dialect; JSON columns are TEXT.
const initialSchema: Migration = {
  version: 1,
  description: 'sandboxes, workers, leases, exec_logs, audit_events',
  async up(db, dialect) {
    await db.schema
      .createTable('sandboxes')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('state', 'text', (c) => c.notNull())
      .addColumn('provider', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('image', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('memory_mb', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('vcpus', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('owner_id', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('tenant_id', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('vm_id', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('worker_id', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('metadata', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('ports', 'text', (c) => c.notNull().defaultTo('[]'))
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .addColumn('updated_at', 'bigint', (c) => c.notNull())
      .addColumn('expires_at', 'bigint', (c) => c.notNull())
      .execute();
    for (const col of ['state', 'worker_id', 'owner_id', 'expires_at']) {
      await db.schema.createIndex(`sandboxes_${col}_idx`).on('sandboxes').column(col).execute();
    }

    await db.schema
      .createTable('workers')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('hostname', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('providers', 'text', (c) => c.notNull().defaultTo('[]'))
      .addColumn('capabilities', 'text', (c) => c.notNull().defaultTo('[]'))
      .addColumn('capacity', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('last_heartbeat', 'bigint', (c) => c.notNull())
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .addColumn('updated_at', 'bigint', (c) => c.notNull())
      .execute();

    await db.schema
      .createTable('leases')
      .addColumn('resource_id', 'text', (c) => c.primaryKey())
      .addColumn('resource_type', 'text', (c) => c.notNull())
      .addColumn('holder_id', 'text', (c) => c.notNull())
      .addColumn('generation', 'bigint', (c) => c.notNull())
      .addColumn('expires_at', 'bigint', (c) => c.notNull())
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .addColumn('updated_at', 'bigint', (c) => c.notNull())
      .execute();

    const id = dialect.autoIncrementId;
    // Booleans are 0/1 integers: SQLite has no boolean type and its driver
    // cannot bind JS booleans, and one mapping must serve both dialects.
    await db.schema
      .createTable('exec_logs')
      .addColumn('id', id.dataType, (c) => id.build(c))
      .addColumn('sandbox_id', 'text', (c) => c.notNull())
      .addColumn('command', 'text', (c) => c.notNull())
      .addColumn('args', 'text', (c) => c.notNull().defaultTo('[]'))
      .addColumn('mode', 'text', (c) => c.notNull())
      .addColumn('exit_code', 'integer', (c) => c.notNull())
      .addColumn('stdout', 'text', (c) => c.notNull())
      .addColumn('stderr', 'text', (c) => c.notNull())
      .addColumn('truncated', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('duration_ms', 'bigint', (c) => c.notNull())
      .addColumn('timed_out', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('streamed', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex('exec_logs_sandbox_id_idx')
      .on('exec_logs')
      .column('sandbox_id')
      .execute();

    await db.schema
      .createTable('audit_events')
      .addColumn('id', id.dataType, (c) => id.build(c))
      .addColumn('actor', 'text', (c) => c.notNull())
      .addColumn('action', 'text', (c) => c.notNull())
      .addColumn('sandbox_id', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('resource', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('detail', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('request_id', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex('audit_events_sandbox_id_idx')
      .on('audit_events')
      .column('sandbox_id')
      .execute();
    await db.schema
      .createIndex('audit_events_created_at_idx')
      .on('audit_events')
      .column('created_at')
      .execute();
  },
};

// Column names follow the reference's `templates` table (§4.2) where it has
// one; `provider`, `metadata` and `ports` are additions. JSON columns are TEXT.
const templates: Migration = {
  version: 2,
  description: 'templates; sandboxes.env (default exec environment)',
  async up(db) {
    await db.schema
      .createTable('templates')
      .addColumn('name', 'text', (c) => c.primaryKey())
      .addColumn('version', 'integer', (c) => c.notNull().defaultTo(1))
      .addColumn('image', 'text', (c) => c.notNull())
      .addColumn('provider', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('description', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('memory_mb', 'integer', (c) => c.notNull())
      .addColumn('cpu_cores', 'integer', (c) => c.notNull())
      .addColumn('ttl_seconds', 'bigint', (c) => c.notNull())
      .addColumn('env', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('setup', 'text', (c) => c.notNull().defaultTo('[]'))
      .addColumn('metadata', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('ports', 'text', (c) => c.notNull().defaultTo('[]'))
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .addColumn('updated_at', 'bigint', (c) => c.notNull())
      .execute();
    await db.schema
      .alterTable('sandboxes')
      .addColumn('env', 'text', (c) => c.notNull().defaultTo('{}'))
      .execute();
  },
};

// Events too large for a Postgres NOTIFY payload, kept briefly for the other
// control planes to fetch by id (store/postgres/pg-cluster.ts). Unused on SQLite.
const clusterEvents: Migration = {
  version: 3,
  description: 'cluster_events (large events shared between control planes)',
  async up(db, dialect) {
    const id = dialect.autoIncrementId;
    await db.schema
      .createTable('cluster_events')
      .addColumn('id', id.dataType, (c) => id.build(c))
      .addColumn('payload', 'text', (c) => c.notNull())
      .addColumn('created_at', 'bigint', (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex('cluster_events_created_at_idx')
      .on('cluster_events')
      .column('created_at')
      .execute();
  },
};

/** Every migration this build knows, in ascending version order. */
export const MIGRATIONS: readonly Migration[] = [initialSchema, templates, clusterEvents];

/** The schema version this build writes and understands. */
export const LATEST_SCHEMA_VERSION: number = MIGRATIONS.reduce(
  (max, m) => Math.max(max, m.version),
  0,
);

function asMigrationsDb(db: Kysely<unknown>): Kysely<MigrationsDatabase> {
  return db as unknown as Kysely<MigrationsDatabase>;
}

async function appliedVersions(db: Kysely<unknown>, dialect: SchemaDialect): Promise<number[]> {
  try {
    const rows = await asMigrationsDb(db).selectFrom(MIGRATIONS_TABLE).select('version').execute();
    return rows.map((r) => Number(r.version)).sort((a, b) => a - b);
  } catch (err) {
    if (dialect.isMissingTable(err)) return [];
    throw err;
  }
}

/** Highest applied version; 0 for an empty database. Changes nothing. */
export async function readSchemaVersion(
  db: Kysely<unknown>,
  dialect: SchemaDialect,
): Promise<number> {
  const versions = await appliedVersions(db, dialect);
  return versions.at(-1) ?? 0;
}

/**
 * Applies the pending migrations of `migrations`, each in its own transaction,
 * and returns the versions applied (empty when up to date). A database whose
 * version is newer than this build knows is refused before anything changes,
 * because running old code against a newer schema can corrupt data. Where the
 * dialect has a migration lock, all of it runs under that lock, so concurrent
 * migrators apply each migration once and all end on the same version.
 */
export async function runMigrations(
  db: Kysely<unknown>,
  dialect: SchemaDialect,
  nowMs: number,
  migrations: readonly Migration[] = MIGRATIONS,
): Promise<number[]> {
  if (dialect.withMigrationLock === undefined) {
    return migrateUnlocked(db, dialect, nowMs, migrations);
  }
  return dialect.withMigrationLock(db, (conn) => migrateUnlocked(conn, dialect, nowMs, migrations));
}

async function migrateUnlocked(
  db: Kysely<unknown>,
  dialect: SchemaDialect,
  nowMs: number,
  migrations: readonly Migration[],
): Promise<number[]> {
  const known = migrations.reduce((max, m) => Math.max(max, m.version), 0);
  const current = await readSchemaVersion(db, dialect);
  if (current > known) {
    throw unavailable(
      `database schema version ${current} is newer than this stacyvm understands (${known}); ` +
        'upgrade stacyvm to use this database',
    );
  }

  await db.schema
    .createTable(MIGRATIONS_TABLE)
    .ifNotExists()
    .addColumn('version', 'integer', (c) => c.primaryKey())
    .addColumn('applied_at', 'bigint', (c) => c.notNull())
    .execute();

  const done = new Set(await appliedVersions(db, dialect));
  const pending = [...migrations]
    .filter((m) => !done.has(m.version))
    .sort((a, b) => a.version - b.version);
  const applied: number[] = [];
  for (const m of pending) {
    const ran = await db.transaction().execute(async (trx) => {
      // Another process may have applied it since we looked.
      const again = await asMigrationsDb(trx)
        .selectFrom(MIGRATIONS_TABLE)
        .select('version')
        .where('version', '=', m.version)
        .executeTakeFirst();
      if (again !== undefined) return false;
      try {
        await m.up(trx, dialect);
      } catch (err) {
        if (err instanceof StacyError) throw err;
        throw new StacyError(
          'INTERNAL_ERROR',
          `migration ${m.version} (${m.description}) failed: ${err instanceof Error ? err.message : String(err)}`,
          { cause: err },
        );
      }
      await asMigrationsDb(trx)
        .insertInto(MIGRATIONS_TABLE)
        .values({ version: m.version, applied_at: nowMs })
        .execute();
      return true;
    });
    if (ran) applied.push(m.version);
  }
  return applied;
}
