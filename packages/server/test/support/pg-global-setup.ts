import type { TestProject } from 'vitest/node';
import { findPgBin, startPgCluster } from './pg-cluster.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Superuser DSN of the run's throwaway cluster; '' when there is none. */
    pgAdminDsn: string;
    /** Why the Postgres tests are skipped; '' when a cluster runs. */
    pgSkipReason: string;
  }
}

/**
 * Starts one throwaway Postgres cluster for the `pg` project and stops and
 * deletes it afterwards. Test files make their own databases in it. Under
 * CI=true a missing Postgres fails the run; elsewhere the tests are skipped
 * with the reason printed here.
 */
export default async function setup(project: TestProject): Promise<() => void> {
  const { bin, reason } = findPgBin();
  if (bin === undefined) {
    const why = reason ?? 'PostgreSQL not found';
    if (process.env['CI'] === 'true') throw new Error(`CI=true but ${why}`);
    process.stderr.write(`pg tests skipped: ${why}\n`);
    project.provide('pgAdminDsn', '');
    project.provide('pgSkipReason', why);
    return () => undefined;
  }
  const cluster = await startPgCluster(bin);
  project.provide('pgAdminDsn', cluster.adminDsn);
  project.provide('pgSkipReason', '');
  return () => cluster.destroy();
}
