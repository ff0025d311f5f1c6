import type { Clock } from '../domain/clock.js';
import { StacyError, unavailable } from '../domain/errors.js';
import { createSqliteStore } from './sqlite/open-sqlite.js';
import type { Store } from './store.js';

/** Which store to open; mirrors the `database` config section. */
export interface CreateStoreOptions {
  driver: 'sqlite' | 'postgres';
  /** SQLite database file (`database.path`). */
  path?: string;
  /** Postgres connection string (`database.dsn`). */
  dsn?: string;
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
    case 'postgres':
      throw unavailable('postgres driver is not available in this build yet');
  }
}
