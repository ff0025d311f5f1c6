/**
 * scripts/smoke-remote-worker.sh with STACYVM_REMOTE_SMOKE_DATABASE_DRIVER=postgres against a
 * throwaway database of the run's cluster: every auth setup passes, the rows land in Postgres,
 * and the DSN (with its password) never reaches the output.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { TestDatabase } from '../support/pg-cluster.js';
import { createTestDatabase, withAdmin } from '../support/pg-cluster.js';
import { CLI, cleanup, tempDir } from './server-process.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');

const SCRIPT = fileURLToPath(
  new URL('../../../../scripts/smoke-remote-worker.sh', import.meta.url),
);
const hasCurl = spawnSync('curl', ['--version']).status === 0;
const PASSWORD = 'Smoke-Pg-Secret-9d2e';
const ROLE = 'stacyvm_smoke';

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

async function runSmoke(
  args: string[],
  extraEnv: Record<string, string>,
  tmp: string,
  timeoutMs: number,
): Promise<{ code: number | null; out: string }> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  }
  env['TMPDIR'] = tmp;
  env['STACYVM_REMOTE_SMOKE_CONTROL_PORT'] = String(await freePort());
  let workerPort = await freePort();
  while (String(workerPort) === env['STACYVM_REMOTE_SMOKE_CONTROL_PORT']) {
    workerPort = await freePort();
  }
  env['STACYVM_REMOTE_SMOKE_WORKER_PORT'] = String(workerPort);
  env['STACYVM_REMOTE_SMOKE_WAIT_S'] = '30';
  Object.assign(env, extraEnv);
  const child = spawn('bash', [SCRIPT, CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  return { code, out };
}

describe.skipIf(adminDsn === '' || !hasCurl)(
  `scripts/smoke-remote-worker.sh on postgres${skipReason ? ` (${skipReason})` : ''}${hasCurl ? '' : ' (no curl)'}`,
  () => {
    let db: TestDatabase;
    let tmp: string;
    let dsn: string;

    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'smoke');
      // A role that logs in with a password, so a leaked DSN would show.
      await withAdmin(adminDsn, async (c) => {
        await c.query(`DROP ROLE IF EXISTS ${ROLE}`);
        await c.query(`CREATE ROLE ${ROLE} LOGIN PASSWORD '${PASSWORD}'`);
        await c.query(`ALTER DATABASE "${db.name}" OWNER TO ${ROLE}`);
      });
      const url = new URL(db.dsn);
      url.username = ROLE;
      url.password = PASSWORD;
      dsn = url.toString();
      tmp = tempDir();
    });
    afterAll(async () => {
      cleanup(tmp);
      await db.drop();
      await withAdmin(adminDsn, (c) => c.query(`DROP ROLE IF EXISTS ${ROLE}`));
    });

    it('passes every auth setup with the control plane on postgres, and never shows the DSN', async () => {
      const r = await runSmoke(
        [],
        {
          STACYVM_REMOTE_SMOKE_DATABASE_DRIVER: 'postgres',
          STACYVM_REMOTE_SMOKE_DATABASE_DSN: dsn,
        },
        tmp,
        110_000,
      );
      expect(r.code, r.out).toBe(0);
      expect(r.out).toContain('(plain-HTTP, postgres store;');
      for (const setup of ['shared', 'per-worker', 'signed']) {
        expect(r.out).toContain(`ok: [${setup}] spawn placed sb-`);
        expect(r.out).toContain(`ok: [${setup}] destroy (then GET is 404)`);
        expect(r.out).toContain(`ok: [${setup}] worker process exited 0 on its own`);
      }
      expect(r.out).toContain(
        'Remote worker smoke PASSED [plain-HTTP, postgres] (shared, per-worker, signed)',
      );
      expect(r.out).not.toContain(PASSWORD);
      expect(readdirSync(tmp)).toEqual([]);
      // The three sandboxes lived in this database, on worker-a, and are destroyed.
      const rows = await withAdmin(db.dsn, async (c) => {
        const r2 = await c.query<{ worker_id: string; state: string }>(
          'select worker_id, state from sandboxes order by created_at',
        );
        return r2.rows;
      });
      expect(rows).toEqual([
        { worker_id: 'worker-a', state: 'destroyed' },
        { worker_id: 'worker-a', state: 'destroyed' },
        { worker_id: 'worker-a', state: 'destroyed' },
      ]);
    }, 120_000);

    it('refuses postgres without a DSN, or with a DSN that is not a postgres URL, with exit 2', async () => {
      const none = await runSmoke(
        ['--auth', 'shared'],
        { STACYVM_REMOTE_SMOKE_DATABASE_DRIVER: 'postgres' },
        tmp,
        30_000,
      );
      expect(none.code).toBe(2);
      expect(none.out).toContain('needs STACYVM_REMOTE_SMOKE_DATABASE_DSN');
      const bad = await runSmoke(
        ['--auth', 'shared'],
        {
          STACYVM_REMOTE_SMOKE_DATABASE_DRIVER: 'postgres',
          STACYVM_REMOTE_SMOKE_DATABASE_DSN: `mysql://u:${PASSWORD}@h/db`,
        },
        tmp,
        30_000,
      );
      expect(bad.code).toBe(2);
      expect(bad.out).toContain('must start with postgres://');
      expect(bad.out).not.toContain(PASSWORD);
      const other = await runSmoke(
        ['--auth', 'shared'],
        { STACYVM_REMOTE_SMOKE_DATABASE_DRIVER: 'mysql' },
        tmp,
        30_000,
      );
      expect(other.code).toBe(2);
      expect(other.out).toContain('must be sqlite or postgres, got "mysql"');
      expect(readdirSync(tmp)).toEqual([]);
    });
  },
);
