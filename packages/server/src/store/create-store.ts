import type { Clock } from '../domain/clock.js';
import { StacyError } from '../domain/errors.js';
import { createPostgresStore } from './postgres/open-postgres.js';
import type { CreatePostgresStoreOptions } from './postgres/open-postgres.js';
import { createSqliteStore } from './sqlite/open-sqlite.js';
import type { Store } from './store.js';

/** Which store to open; mirrors the `database` config section. */
export interface CreateStoreOptions {
  driver: 'sqlite' | 'postgres';
  /** SQLite database file (`database.path`). */
  path?: string;
  /** Postgres connection string (`database.dsn`). */
  dsn?: string;
  /** Postgres pool size (`database.max_open_conns`). */
  maxOpenConns?: number;
  /** Postgres statement timeout in ms, 0 for none (`database.statement_timeout`). */
  statementTimeoutMs?: number;
  /** Postgres named prepared statements (`database.prepared_statements`, default on). */
  preparedStatements?: boolean;
  /** Default time source for operations whose `nowMs` is optional. */
  clock?: Clock;
}

/**
 * Opens the store the configuration names. The schema is not touched: call
 * `migrate()` on the result before serving.
 */
export async function createStore(opts: CreateStoreOptions): Promise<Store> {
  switch (opts.driver) {
    case 'sqlite': {
      if (opts.path === undefined || opts.path === '') {
        throw new StacyError('BAD_REQUEST', 'database.path is required for the sqlite driver', {
          details: [
            { field: 'database.path', problem: 'is required when database.driver is sqlite' },
          ],
        });
      }
      return createSqliteStore(
        opts.clock === undefined ? { path: opts.path } : { path: opts.path, clock: opts.clock },
      );
    }
    case 'postgres': {
      if (opts.dsn === undefined || opts.dsn.trim() === '') {
        throw new StacyError('BAD_REQUEST', 'database.dsn is required for the postgres driver', {
          details: [
            {
              field: 'database.dsn',
              problem: 'is required when database.driver is postgres (or set database.dsn_file)',
            },
          ],
        });
      }
      const pgOpts: CreatePostgresStoreOptions = { dsn: opts.dsn };
      if (opts.clock !== undefined) pgOpts.clock = opts.clock;
      if (opts.maxOpenConns !== undefined) pgOpts.maxOpenConns = opts.maxOpenConns;
      if (opts.statementTimeoutMs !== undefined)
        pgOpts.statementTimeoutMs = opts.statementTimeoutMs;
      if (opts.preparedStatements !== undefined)
        pgOpts.preparedStatements = opts.preparedStatements;
      return createPostgresStore(pgOpts);
    }
  }
}
