import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { TestDatabase } from '../support/pg-cluster.js';
import { createTestDatabase, withAdmin } from '../support/pg-cluster.js';
import { LATEST_SCHEMA_VERSION, MIGRATIONS } from '../../src/store/migrations.js';
import { cleanup, cli, startServer, tempDir } from './server-process.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');

describe.skipIf(adminDsn === '')(
  `the stacyvm binary on postgres${skipReason ? ` (${skipReason})` : ''}`,
  () => {
    let db: TestDatabase;
    let dir: string;
    let pgEnv: Record<string, string>;

    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'e2e');
      dir = tempDir();
      pgEnv = { STACYVM_DATABASE_DRIVER: 'postgres', STACYVM_DATABASE_DSN: db.dsn };
    });
    afterAll(async () => {
      cleanup(dir);
      await db.drop();
    });

    it('migrates once, then reports the database up to date (dsn_file works too)', () => {
      const first = cli(['migrate'], { env: pgEnv, cwd: dir });
      expect(first.status, first.stderr.toString()).toBe(0);
      expect(first.stdout.toString()).toBe(
        `applied migrations ${MIGRATIONS.map((m) => m.version).join(', ')}; schema version ${LATEST_SCHEMA_VERSION}\n`,
      );
      const dsnFile = join(dir, 'dsn');
      writeFileSync(dsnFile, `${db.dsn}\n`);
      const again = cli(['db', 'migrate'], {
        env: { STACYVM_DATABASE_DRIVER: 'postgres', STACYVM_DATABASE_DSN_FILE: dsnFile },
        cwd: dir,
      });
      expect(again.status, again.stderr.toString()).toBe(0);
      expect(again.stdout.toString()).toBe(
        `database is up to date (schema version ${LATEST_SCHEMA_VERSION})\n`,
      );
    });

    it('serves from postgres: sandboxes and audit rows land there, a restart finds the schema current', async () => {
      const first = await startServer({ env: pgEnv });
      let id: string;
      try {
        const spawned = cli(['spawn', '--ttl', '10m'], { env: { STACYVM_SERVER: first.url } });
        expect(spawned.status, spawned.stderr.toString()).toBe(0);
        id = spawned.stdout.toString().trim();
        expect(id).toMatch(/^sb-[0-9a-f]{8}$/);
        const listed = cli(['list', '--json'], { env: { STACYVM_SERVER: first.url } });
        const ids = (JSON.parse(listed.stdout.toString()) as Array<{ id: string }>).map(
          (s) => s.id,
        );
        expect(ids).toEqual([id]);
      } finally {
        expect(await first.stop()).toBe(0);
        cleanup(first.dir);
      }
      const rows = await withAdmin(db.dsn, async (c) => ({
        sandboxes: (await c.query<{ id: string }>('select id from sandboxes')).rows.map(
          (r) => r.id,
        ),
        audits: Number(
          (
            await c.query<{ n: string }>(
              "select count(*) as n from audit_events where action = 'sandbox.spawn' and sandbox_id = $1",
              [id],
            )
          ).rows[0]?.n,
        ),
      }));
      expect(rows.sandboxes).toEqual([id]);
      expect(rows.audits).toBe(1);

      const second = await startServer({ env: pgEnv });
      try {
        expect(second.logs()).not.toContain('database migrations applied');
        const spawned = cli(['spawn', '--ttl', '10m'], { env: { STACYVM_SERVER: second.url } });
        expect(spawned.status, spawned.stderr.toString()).toBe(0);
      } finally {
        expect(await second.stop()).toBe(0);
        cleanup(second.dir);
      }
    });

    it('fails to start against an unreachable server, naming host and database but not the password', async () => {
      const password = 'E2e-Secret-Pw-41c9';
      const url = new URL(adminDsn);
      url.username = 'stacy';
      url.password = password;
      url.port = '1';
      url.pathname = '/stacyvm';
      const env = { STACYVM_DATABASE_DRIVER: 'postgres', STACYVM_DATABASE_DSN: url.toString() };
      const migrate = cli(['migrate'], { env, cwd: dir });
      expect(migrate.status).not.toBe(0);
      const stderr = migrate.stderr.toString();
      expect(stderr).toContain('cannot connect to postgres database "stacyvm" on 127.0.0.1:1');
      expect(stderr + migrate.stdout.toString()).not.toContain(password);
      const serve = await startServer({ env }).then(
        () => '',
        (err: unknown) => (err as Error).message,
      );
      expect(serve).toMatch(/server exited with [1-9]/);
      expect(serve).toContain('cannot connect to postgres database "stacyvm" on 127.0.0.1:1');
      expect(serve).not.toContain(password);
    });
  },
);
