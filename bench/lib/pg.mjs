// A throwaway PostgreSQL cluster for benchmarks: the same steps as the tests'
// packages/server/test/support/pg-cluster.ts (initdb in a temp dir as user `postgres` when we are
// root, trust auth, loopback only, socket in the temp dir), started on a free port. `destroy()`
// stops it (`-m immediate`) and deletes the directory; a process 'exit' hook does the same for a
// cluster still running when the bench dies, so nothing outlives the run.

import { execFileSync, spawnSync } from 'node:child_process';
import {
  chownSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { BenchError } from './server.mjs';

const PG_BIN_ROOT = '/usr/lib/postgresql';

/** The directory with initdb/pg_ctl (`STACYVM_PG_BIN` overrides), or a BenchError saying why not. */
export function findPgBin() {
  const override = process.env.STACYVM_PG_BIN;
  if (override) {
    if (existsSync(join(override, 'initdb'))) return override;
    throw new BenchError(`STACYVM_PG_BIN=${override} has no initdb`);
  }
  let versions = [];
  try {
    versions = readdirSync(PG_BIN_ROOT)
      .filter((v) => existsSync(join(PG_BIN_ROOT, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
  } catch {
    // none installed
  }
  if (versions.includes('15')) return join(PG_BIN_ROOT, '15', 'bin');
  if (versions[0] !== undefined) return join(PG_BIN_ROOT, versions[0], 'bin');
  throw new BenchError(
    `no PostgreSQL server binaries under ${PG_BIN_ROOT}/*/bin (apt-get install postgresql-15)`,
  );
}

function serverUser() {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const id = (flag) =>
      Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new BenchError('running as root but there is no "postgres" user to run the server as');
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function run(bin, args, user) {
  const r = spawnSync(bin, args, {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
    ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
  });
  if (r.status !== 0) {
    throw new BenchError(
      `${bin} ${args.join(' ')} failed (${r.status ?? r.signal ?? r.error?.message}):\n${r.stdout}${r.stderr}`,
    );
  }
}

const live = new Set();
process.on('exit', () => {
  for (const c of live) c.destroy();
});

/**
 * Creates and starts a cluster. `durable: false` (default) runs it like the tests do, with
 * fsync, full_page_writes and synchronous_commit off; `durable: true` keeps PostgreSQL's defaults.
 * `preload` names shared_preload_libraries (e.g. pg_stat_statements).
 *
 * @returns {Promise<{adminDsn: string, port: number, dir: string, postmasterPid: () => number|undefined,
 *   createDatabase: (name: string) => Promise<string>, destroy: () => void}>}
 */
export async function startPgCluster({
  bin = findPgBin(),
  durable = false,
  maxConnections = 200,
  preload = [],
} = {}) {
  const user = serverUser();
  const dir = mkdtempSync(join(tmpdir(), 'stacyvm-bench-pg-'));
  if (user !== undefined) chownSync(dir, user.uid, user.gid);
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  const pgCtl = join(bin, 'pg_ctl');
  let port = 0;
  let running = false;
  const options = () =>
    [
      `-p ${port}`,
      `-k ${dir}`,
      '-c listen_addresses=127.0.0.1',
      ...(durable ? [] : ['-c fsync=off', '-c full_page_writes=off', '-c synchronous_commit=off']),
      `-c max_connections=${maxConnections}`,
      '-c shared_buffers=64MB',
      ...(preload.length > 0 ? [`-c shared_preload_libraries=${preload.join(',')}`] : []),
    ].join(' ');
  const cluster = {
    adminDsn: '',
    port: 0,
    dir,
    durable,
    postmasterPid() {
      try {
        return Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      } catch {
        return undefined;
      }
    },
    async createDatabase(name) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new BenchError(`bad database name ${name}`);
      const client = new pg.Client({ connectionString: cluster.adminDsn });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE "${name}"`);
      } finally {
        await client.end();
      }
      const url = new URL(cluster.adminDsn);
      url.pathname = `/${name}`;
      return url.toString();
    },
    destroy() {
      live.delete(cluster);
      try {
        if (running) run(pgCtl, ['-D', data, '-m', 'immediate', '-w', 'stop'], user);
      } catch {
        // Deleting the directory below is what matters; a stuck server dies with its files.
      } finally {
        running = false;
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
  live.add(cluster);
  try {
    run(
      join(bin, 'initdb'),
      ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--locale=C'],
      user,
    );
    const hba = join(data, 'pg_hba.conf');
    writeFileSync(hba, ['local all all trust', 'host all all 127.0.0.1/32 trust', ''].join('\n'));
    if (user !== undefined) chownSync(hba, user.uid, user.gid);
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        run(pgCtl, ['-D', data, '-l', log, '-w', '-t', '60', '-o', options(), 'start'], user);
        running = true;
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
      }
    }
  } catch (err) {
    const tail = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
    cluster.destroy();
    throw new BenchError(`${err.message}\n${tail}`);
  }
  cluster.port = port;
  cluster.adminDsn = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return cluster;
}

/** PIDs of the cluster's processes (postmaster and its children), from /proc; [] where unreadable. */
export function clusterPids(cluster) {
  const root = cluster.postmasterPid();
  if (root === undefined) return [];
  const pids = [root];
  let entries = [];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return pids;
  }
  for (const e of entries) {
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === root) pids.push(Number(e));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}
