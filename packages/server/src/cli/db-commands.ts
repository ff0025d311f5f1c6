import { isAbsolute, resolve } from 'node:path';
import type { Command } from 'commander';
import { ConfigError, databaseDialect, loadConfig } from '../config/load-config.js';
import type { StacyConfig } from '../config/schema.js';
import { isStacyError } from '../domain/errors.js';
import { copyDatabase } from '../store/copy-database.js';
import type { DatabaseEndpoint } from '../store/copy-database.js';
import { LATEST_SCHEMA_VERSION } from '../store/migrations.js';
import { describePostgresDsn } from '../store/postgres/open-postgres.js';
import { backupSqlite, restoreSqlite } from '../store/sqlite/sqlite-backup.js';
import type { OutputStream } from './client-commands.js';

/** Exit code of a usage mistake or a configuration that does not load. */
const USAGE_EXIT_CODE = 2;

/** Seams of the database commands, all optional; tests inject them to run in-process. */
export interface DbCommandDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  /** Environment for the configuration (`STACYVM_*`); defaults to `process.env`. */
  env?: Record<string, string | undefined>;
  /** Working directory for relative paths and `./stacyvm.yaml`; defaults to `process.cwd()`. */
  cwd?: string;
  /** Home directory for `~/.stacyvm/config.yaml`; defaults to the real one. */
  homeDir?: string;
  /** Receives each command's exit code; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  /** Milliseconds since the epoch; defaults to `Date.now`. */
  now?: () => number;
}

interface Io {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Record<string, string | undefined>;
  cwd: string;
  homeDir: string | undefined;
  setExitCode: (code: number) => void;
  now: () => number;
}

/** A mistake in how the command was invoked; exits with {@link USAGE_EXIT_CODE}. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

function describeError(err: unknown): string {
  if (isStacyError(err)) return err.message;
  return err instanceof Error ? err.message : String(err);
}

/** Runs an action, turning its failure into a message on stderr and an exit code. */
function action<A extends unknown[]>(
  io: Io,
  fn: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      io.stderr.write(`error: ${describeError(err)}\n`);
      io.setExitCode(err instanceof UsageError || err instanceof ConfigError ? USAGE_EXIT_CODE : 1);
    }
  };
}

function loadFrom(io: Io, configPath: string | undefined, env = io.env): StacyConfig {
  const { config } = loadConfig({
    ...(configPath === undefined ? {} : { configPath }),
    env,
    cwd: io.cwd,
    ...(io.homeDir === undefined ? {} : { homeDir: io.homeDir }),
  });
  return config;
}

function absolute(io: Io, path: string): string {
  return isAbsolute(path) ? path : resolve(io.cwd, path);
}

/** The SQLite path of the configuration; a clear refusal naming pg tools when it is Postgres. */
function sqlitePathOf(io: Io, config: StacyConfig, command: 'backup' | 'restore'): string {
  if (databaseDialect(config) === 'postgres') {
    let where = 'a postgres database';
    try {
      where = describePostgresDsn(config.database.dsn).description;
    } catch {
      // An unparsable DSN is described generically; it is never echoed.
    }
    const tool =
      command === 'backup'
        ? 'pg_dump --format=custom --file=stacyvm.dump'
        : 'pg_restore --clean --if-exists --dbname=<database>';
    throw new UsageError(
      `stacyvm db ${command} works on the sqlite driver; this configuration uses ${where}. ` +
        `Use PostgreSQL's own tools instead, e.g. \`${tool}\` (give the connection through ` +
        'PGHOST/PGUSER/PGDATABASE and the password through ~/.pgpass, not on the command line)',
    );
  }
  const path = config.database.path;
  if (path === ':memory:') {
    throw new UsageError(`database.path is :memory:; there is no database file to ${command}`);
  }
  return absolute(io, path);
}

function isDsn(text: string): boolean {
  return /^postgres(ql)?:\/\//i.test(text.trim());
}

/** True when a DSN given on the command line carries a password (visible in `ps`). */
function dsnHasPassword(dsn: string): boolean {
  try {
    const url = new URL(dsn.trim());
    return url.password !== '' || url.searchParams.has('password');
  } catch {
    return false;
  }
}

/**
 * Files only: `STACYVM_DATABASE_*` variables would apply to both ends of a
 * copy, so they are left out when a config file names one end.
 */
function envWithoutDatabase(env: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && !k.startsWith('STACYVM_DATABASE_') && k !== 'STACYVM_CONFIG') out[k] = v;
  }
  return out;
}

function endpoint(
  io: Io,
  side: 'from' | 'to',
  direct: string | undefined,
  configPath: string | undefined,
): DatabaseEndpoint {
  if (direct !== undefined && configPath !== undefined) {
    throw new UsageError(`give --${side} or --${side}-config, not both`);
  }
  if (direct === undefined && configPath === undefined) {
    throw new UsageError(
      `name the ${side === 'from' ? 'source' : 'target'}: --${side} <sqlite path | postgres DSN> or --${side}-config <file>`,
    );
  }
  if (direct !== undefined) {
    if (direct.trim() === '') throw new UsageError(`--${side} is empty`);
    if (isDsn(direct)) {
      if (dsnHasPassword(direct)) {
        io.stderr.write(
          `warning: the --${side} DSN holds a password, which other users can see in the process ` +
            `list; prefer --${side}-config with database.dsn_file, or PGPASSWORD / ~/.pgpass\n`,
        );
      }
      describePostgresDsn(direct);
      return { driver: 'postgres', dsn: direct };
    }
    return { driver: 'sqlite', path: absolute(io, direct) };
  }
  const config = loadFrom(io, configPath, envWithoutDatabase(io.env));
  if (databaseDialect(config) === 'postgres')
    return { driver: 'postgres', dsn: config.database.dsn };
  return { driver: 'sqlite', path: absolute(io, config.database.path) };
}

function describeEndpoint(ep: DatabaseEndpoint): string {
  return ep.driver === 'sqlite'
    ? `SQLite database ${ep.path}`
    : describePostgresDsn(ep.dsn).description;
}

function positiveInt(name: string, raw: string | undefined, def: number): number {
  if (raw === undefined) return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a positive integer`);
  return n;
}

/**
 * Adds `backup`, `restore` and `copy` under `stacyvm db` (created when
 * missing; `main.ts` makes it for `db migrate`). Actions never call
 * `process.exit`: exit codes go through `deps.setExitCode` (2 for usage and
 * configuration mistakes, 1 for a failed operation).
 */
export function registerDbCommands(program: Command, deps: DbCommandDeps = {}): void {
  const io: Io = {
    stdout: deps.stdout ?? process.stdout,
    stderr: deps.stderr ?? process.stderr,
    env: deps.env ?? process.env,
    cwd: deps.cwd ?? process.cwd(),
    homeDir: deps.homeDir,
    setExitCode:
      deps.setExitCode ??
      ((code: number): void => {
        process.exitCode = code;
      }),
    now: deps.now ?? Date.now,
  };
  const db =
    program.commands.find((c) => c.name() === 'db') ??
    program.command('db').description('database operations');

  db.command('backup')
    .description(
      'write a consistent copy of the SQLite database to a file (safe while the server runs)',
    )
    .argument('<out>', 'backup file to write')
    .option('--config <file>', 'config file naming the database')
    .option('--force', 'replace <out> if it exists')
    .action(
      action(io, async (out: string, opts: { config?: string; force?: boolean }) => {
        const source = sqlitePathOf(io, loadFrom(io, opts.config), 'backup');
        const r = await backupSqlite({
          source,
          output: absolute(io, out),
          force: opts.force === true,
        });
        io.stdout.write(
          `backup of ${r.source} written to ${r.output}: ${r.bytes} bytes, schema version ${r.schemaVersion}\n`,
        );
      }),
    );

  db.command('restore')
    .description(
      'replace the SQLite database with a backup (the server must be stopped; the old file is kept)',
    )
    .argument('<backup>', 'backup file made by `stacyvm db backup`')
    .option('--config <file>', 'config file naming the database')
    .option('--yes', 'confirm replacing the database')
    .action(
      action(io, async (backup: string, opts: { config?: string; yes?: boolean }) => {
        const database = sqlitePathOf(io, loadFrom(io, opts.config), 'restore');
        if (opts.yes !== true) {
          throw new UsageError(
            `restore replaces ${database} with ${absolute(io, backup)} (the current file is kept ` +
              'as <database>.pre-restore-<time>); stop the server and re-run with --yes',
          );
        }
        const r = await restoreSqlite({
          backup: absolute(io, backup),
          database,
          nowMs: io.now(),
        });
        if (r.warning !== undefined) io.stderr.write(`warning: ${r.warning}\n`);
        for (const l of r.leftovers) io.stdout.write(`moved aside: ${l}\n`);
        io.stdout.write(
          `restored ${r.backup} into ${r.database}: ${r.bytes} bytes, schema version ${r.schemaVersion}\n`,
        );
        io.stdout.write(
          r.previous === undefined
            ? 'there was no database before\n'
            : `the previous database is kept as ${r.previous}\n`,
        );
        if (r.schemaVersion < LATEST_SCHEMA_VERSION) {
          io.stdout.write(
            `this stacyvm migrates it to schema version ${LATEST_SCHEMA_VERSION} at start ` +
              '(or run `stacyvm db migrate`)\n',
          );
        }
      }),
    );

  db.command('copy')
    .description(
      'copy every table of a stopped database into an empty one (SQLite → Postgres, or back)',
    )
    .option('--from <path|dsn>', 'source: a SQLite file or a postgres:// DSN')
    .option('--from-config <file>', 'source: the database of this config file')
    .option('--to <dsn|path>', 'target: a postgres:// DSN or a SQLite file')
    .option('--to-config <file>', 'target: the database of this config file')
    .option('--force', 'delete the rows a non-empty target has (in the same transaction)')
    .option('--batch-size <rows>', 'rows per read from the source', '500')
    .option('--yes', 'confirm writing into the target')
    .action(
      action(
        io,
        async (opts: {
          from?: string;
          fromConfig?: string;
          to?: string;
          toConfig?: string;
          force?: boolean;
          batchSize?: string;
          yes?: boolean;
        }) => {
          const from = endpoint(io, 'from', opts.from, opts.fromConfig);
          const to = endpoint(io, 'to', opts.to, opts.toConfig);
          const batchRows = positiveInt('batch-size', opts.batchSize, 500);
          const plan = `${describeEndpoint(from)} -> ${describeEndpoint(to)}`;
          if (opts.yes !== true) {
            throw new UsageError(
              `copy writes every row of ${plan}${opts.force === true ? ', deleting the rows the target has' : ''}; ` +
                'stop the servers using either and re-run with --yes',
            );
          }
          io.stdout.write(`copying ${plan}\n`);
          const r = await copyDatabase({
            from,
            to,
            replace: opts.force === true,
            batchRows,
            nowMs: io.now(),
            onProgress: (line) => io.stdout.write(`${line}\n`),
          });
          if (r.replacedNul > 0) {
            io.stdout.write(
              `replaced ${r.replacedNul} NUL characters with U+FFFD (Postgres text cannot hold them)\n`,
            );
          }
          const rows = r.tables.reduce((s, t) => s + t.rows, 0);
          io.stdout.write(
            `copy complete: ${r.tables.length} tables, ${rows} rows, schema version ${r.schemaVersion}\n`,
          );
        },
      ),
    );
}
