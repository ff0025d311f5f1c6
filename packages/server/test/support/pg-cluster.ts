import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
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

/** Where Debian puts the server binaries; `STACYVM_PG_BIN` overrides. */
export const PG_BIN_ROOT = '/usr/lib/postgresql';

/**
 * The one role that must log in with a password (SCRAM); every other role is
 * trusted. Tests create it to check how a refused login is reported.
 */
export const PG_PASSWORD_ROLE = 'stacyvm_pw';

/** A throwaway Postgres cluster for tests: trust auth, loopback only, no fsync. */
export interface PgCluster {
  /** Superuser DSN of the `postgres` database (no password: trust auth). */
  readonly adminDsn: string;
  readonly port: number;
  readonly dir: string;
  /** Stops the server (`-m fast`), keeping its data. */
  stop(): void;
  /** Starts a stopped server again on the same port. */
  start(): void;
  /** Stops the server and deletes everything. */
  destroy(): void;
}

/** The directory with initdb/pg_ctl, or undefined with why not. */
export function findPgBin(): { bin?: string; reason?: string } {
  const override = process.env['STACYVM_PG_BIN'];
  if (override !== undefined && override !== '') {
    return existsSync(join(override, 'initdb'))
      ? { bin: override }
      : { reason: `STACYVM_PG_BIN=${override} has no initdb` };
  }
  const preferred = join(PG_BIN_ROOT, '15', 'bin');
  if (existsSync(join(preferred, 'initdb'))) return { bin: preferred };
  let versions: string[] = [];
  try {
    versions = readdirSync(PG_BIN_ROOT)
      .filter((v) => existsSync(join(PG_BIN_ROOT, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
  } catch {
    // No Postgres installed at all.
  }
  const newest = versions[0];
  if (newest !== undefined) return { bin: join(PG_BIN_ROOT, newest, 'bin') };
  return {
    reason: `no PostgreSQL server binaries under ${PG_BIN_ROOT}/*/bin (apt-get install postgresql-15)`,
  };
}

/** The uid/gid to run the server as: `postgres` when we are root (initdb refuses root). */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string): number =>
    Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new Error('running as root but there is no "postgres" user to run the server as');
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function run(bin: string, args: string[], user: { uid: number; gid: number } | undefined): void {
  const r = spawnSync(bin, args, {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
    ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
  });
  if (r.status !== 0) {
    throw new Error(
      `${bin} ${args.join(' ')} failed (${r.status ?? r.signal ?? r.error?.message}):\n${r.stdout}${r.stderr}`,
    );
  }
}

/**
 * Creates and starts a cluster in a new temp directory on a free loopback
 * port, with its socket in that directory. The caller must `destroy()` it.
 */
export async function startPgCluster(bin: string): Promise<PgCluster> {
  const user = serverUser();
  const dir = mkdtempSync(join(tmpdir(), 'stacyvm-pg-'));
  if (user !== undefined) chownSync(dir, user.uid, user.gid);
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  const pgCtl = join(bin, 'pg_ctl');
  let port = 0;
  let running = false;
  const options = (): string =>
    [
      `-p ${port}`,
      `-k ${dir}`,
      '-c listen_addresses=127.0.0.1',
      '-c fsync=off',
      '-c full_page_writes=off',
      '-c synchronous_commit=off',
      '-c max_connections=200',
      '-c shared_buffers=32MB',
    ].join(' ');
  const startServer = (): void => {
    run(pgCtl, ['-D', data, '-l', log, '-w', '-t', '60', '-o', options(), 'start'], user);
    running = true;
  };
  const stopServer = (): void => {
    if (!running) return;
    run(pgCtl, ['-D', data, '-m', 'fast', '-w', '-t', '60', 'stop'], user);
    running = false;
  };
  try {
    run(
      join(bin, 'initdb'),
      ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--locale=C'],
      user,
    );
    const hba = join(data, 'pg_hba.conf');
    writeFileSync(
      hba,
      [
        'local all all trust',
        `host all ${PG_PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256`,
        'host all all 127.0.0.1/32 trust',
        '',
      ].join('\n'),
    );
    if (user !== undefined) chownSync(hba, user.uid, user.gid);
    // A port can be taken between the probe and the start; try a few.
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        startServer();
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
      }
    }
  } catch (err) {
    const tail = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
    stopServer();
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`${(err as Error).message}\n${tail}`);
  }
  return {
    adminDsn: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    dir,
    stop: stopServer,
    start: startServer,
    destroy: () => {
      try {
        if (running) run(pgCtl, ['-D', data, '-m', 'immediate', '-w', 'stop'], user);
        running = false;
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** A database made for one test file (or test) and dropped afterwards. */
export interface TestDatabase {
  readonly name: string;
  readonly dsn: string;
  drop(): Promise<void>;
}

/** Runs `fn` with a short-lived superuser connection. */
export async function withAdmin<T>(adminDsn: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminDsn });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** The DSN of database `name` on the server of `adminDsn`. */
export function dsnFor(adminDsn: string, name: string): string {
  const url = new URL(adminDsn);
  url.pathname = `/${name}`;
  return url.toString();
}

/** CREATE DATABASE with a random name; `drop()` removes it even with open connections. */
export async function createTestDatabase(adminDsn: string, prefix = 't'): Promise<TestDatabase> {
  const name = `stacyvm_${prefix}_${randomBytes(6).toString('hex')}`;
  await withAdmin(adminDsn, (c) => c.query(`CREATE DATABASE "${name}"`));
  return {
    name,
    dsn: dsnFor(adminDsn, name),
    drop: async () => {
      await withAdmin(adminDsn, (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
    },
  };
}
