import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { test as base, describe, expect } from 'vitest';
import { LATEST_SCHEMA_VERSION } from '../store/migrations.js';
import { createSqliteStore } from '../store/sqlite/open-sqlite.js';
import { registerDbCommands } from './db-commands.js';

const T0 = Date.UTC(2026, 10, 23, 18, 56, 40);
const PASSWORD = 'Hunter2-Very-Secret-9c1';

const test = base.extend<{ dir: string }>({
  // eslint-disable-next-line no-empty-pattern
  dir: async ({}, use) => {
    const dir = await mkdtemp(join(tmpdir(), 'stacyvm-dbcli-'));
    try {
      await use(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
});

interface Run {
  code: number;
  out: string;
  err: string;
}

/** Runs `stacyvm db <args>` in-process with a clean environment rooted at `dir`. */
async function db(dir: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  let out = '';
  let err = '';
  let code = 0;
  const program = new Command().exitOverride();
  program.command('db').description('database operations');
  program.configureOutput({
    writeOut: (s) => {
      out += s;
    },
    writeErr: (s) => {
      err += s;
    },
  });
  registerDbCommands(program, {
    stdout: { write: (s: string | Uint8Array) => ((out += String(s)), true) },
    stderr: { write: (s: string | Uint8Array) => ((err += String(s)), true) },
    env: { ...env },
    cwd: dir,
    homeDir: dir,
    setExitCode: (c) => {
      code = c;
    },
    now: () => T0,
  });
  try {
    await program.parseAsync(['node', 'stacyvm', 'db', ...args]);
  } catch {
    // Commander usage errors (exitOverride) end up here.
    code = 2;
  }
  return { code, out, err };
}

async function makeDb(path: string): Promise<void> {
  const store = await createSqliteStore({ path });
  try {
    await store.migrate();
    await store.workers.upsertHeartbeat(
      {
        id: 'w1',
        hostname: 'h',
        status: 'online',
        providers: ['mock'],
        capabilities: [],
        capacity: {},
      },
      T0,
    );
  } finally {
    await store.close();
  }
}

async function closedPort(): Promise<number> {
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

describe('stacyvm db backup / restore', () => {
  test('backup reports size and version, refuses to overwrite, restore keeps the old file', async ({
    dir,
  }) => {
    const path = join(dir, 'stacyvm.db');
    await makeDb(path);
    await writeFile(join(dir, 'stacyvm.yaml'), `database:\n  path: ${path}\n`);

    const first = await db(dir, ['backup', 'b.db']);
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    expect(first.out).toMatch(
      new RegExp(
        `written to ${join(dir, 'b.db')}: \\d+ bytes, schema version ${LATEST_SCHEMA_VERSION}`,
      ),
    );

    const again = await db(dir, ['backup', 'b.db']);
    expect(again.code).toBe(1);
    expect(again.err).toContain('already exists; pass --force');
    expect((await db(dir, ['backup', 'b.db', '--force'])).code).toBe(0);

    const noYes = await db(dir, ['restore', 'b.db']);
    expect(noYes.code).toBe(2);
    expect(noYes.err).toContain('re-run with --yes');
    expect((await readdir(dir)).some((f) => f.includes('pre-restore'))).toBe(false);

    const restored = await db(dir, ['restore', 'b.db', '--yes']);
    expect(restored.err).toBe('');
    expect(restored.code).toBe(0);
    expect(restored.out).toContain(
      `the previous database is kept as ${path}.pre-restore-20261123T185640Z`,
    );
    expect(existsSync(`${path}.pre-restore-20261123T185640Z`)).toBe(true);

    const missing = await db(dir, ['restore', 'nope.db', '--yes']);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain(`backup ${join(dir, 'nope.db')} does not exist`);
  });

  test('on postgres, backup and restore point to pg tools and never echo the DSN', async ({
    dir,
  }) => {
    const env = {
      STACYVM_DATABASE_DRIVER: 'postgres',
      STACYVM_DATABASE_DSN: `postgres://stacyvm:${PASSWORD}@db.internal:5432/stacyvm`,
    };
    const b = await db(dir, ['backup', 'x.dump'], env);
    expect(b.code).toBe(2);
    expect(b.err).toContain('pg_dump');
    expect(b.err).toContain('postgres database "stacyvm" on db.internal:5432');
    const r = await db(dir, ['restore', 'x.dump', '--yes'], env);
    expect(r.code).toBe(2);
    expect(r.err).toContain('pg_restore');
    for (const text of [b.out, b.err, r.out, r.err]) expect(text).not.toContain(PASSWORD);
  });

  test('a configuration that does not load is a usage error', async ({ dir }) => {
    const r = await db(dir, ['backup', 'b.db', '--config', join(dir, 'missing.yaml')]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('missing.yaml');
  });
});

describe('stacyvm db copy', () => {
  test('names what is missing or contradictory', async ({ dir }) => {
    const noTo = await db(dir, ['copy', '--from', 'a.db', '--yes']);
    expect(noTo.code).toBe(2);
    expect(noTo.err).toContain('name the target: --to');

    const both = await db(dir, [
      'copy',
      '--from',
      'a.db',
      '--from-config',
      'c.yaml',
      '--to',
      'b.db',
    ]);
    expect(both.code).toBe(2);
    expect(both.err).toContain('give --from or --from-config, not both');

    const badBatch = await db(dir, ['copy', '--from', 'a.db', '--to', 'b.db', '--batch-size', '0']);
    expect(badBatch.code).toBe(2);
    expect(badBatch.err).toContain('--batch-size must be a positive integer');

    const noYes = await db(dir, ['copy', '--from', 'a.db', '--to', 'b.db']);
    expect(noYes.code).toBe(2);
    expect(noYes.err).toContain(
      `SQLite database ${join(dir, 'a.db')} -> SQLite database ${join(dir, 'b.db')}`,
    );
    expect(noYes.err).toContain('re-run with --yes');
    expect(existsSync(join(dir, 'b.db'))).toBe(false);

    const noSource = await db(dir, ['copy', '--from', 'a.db', '--to', 'b.db', '--yes']);
    expect(noSource.code).toBe(1);
    expect(noSource.err).toContain(`source database ${join(dir, 'a.db')} does not exist`);
  });

  test('an unreachable target is named without its password', async ({ dir }) => {
    const src = join(dir, 'stacyvm.db');
    await makeDb(src);
    const port = await closedPort();
    const dsn = `postgres://stacyvm:${PASSWORD}@127.0.0.1:${port}/stacyvm`;
    const r = await db(dir, ['copy', '--from', src, '--to', dsn, '--yes']);
    expect(r.code).toBe(1);
    expect(r.err).toContain('warning: the --to DSN holds a password');
    expect(r.err).toContain(
      `cannot connect to the target postgres database "stacyvm" on 127.0.0.1:${port}`,
    );
    expect(`${r.out}${r.err}`).not.toContain(PASSWORD);
  });
});
