import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { test as base, describe, expect } from 'vitest';
import { StacyError } from '../domain/errors.js';
import { copyDatabase } from './copy-database.js';
import { LATEST_SCHEMA_VERSION } from './migrations.js';
import { createSqliteStore } from './sqlite/open-sqlite.js';
import { lockSqliteExclusively } from './sqlite/sqlite-backup.js';
import type { Store } from './store.js';

const T0 = Date.UTC(2026, 0, 1);

const test = base.extend<{ dir: string }>({
  // eslint-disable-next-line no-empty-pattern
  dir: async ({}, use) => {
    const dir = await mkdtemp(join(tmpdir(), 'stacyvm-copy-'));
    try {
      await use(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
});

async function rejection(promise: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

async function withStore<T>(path: string, fn: (s: Store) => Promise<T>): Promise<T> {
  const store = await createSqliteStore({ path });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const audit = (i: number) => ({
  actor: 'a',
  action: 'sandbox.spawn',
  sandboxId: 'sb-00000001',
  resource: '',
  status: 'success' as const,
  detail: `d${i}`,
  requestId: `r${i}`,
  createdAtMs: T0 + i,
});

async function makeSource(path: string): Promise<void> {
  await withStore(path, async (s) => {
    await s.migrate();
    await s.sandboxes.insert({
      id: 'sb-00000001',
      state: 'running',
      provider: 'mock',
      image: 'img',
      memoryMb: 1,
      vcpus: 1,
      ownerId: 'o',
      tenantId: '',
      vmId: 'v',
      workerId: 'local',
      metadata: { a: 'b' },
      ports: [1],
      createdAtMs: T0,
      updatedAtMs: T0,
      expiresAtMs: T0 + 1,
    });
    const l = await s.leases.acquire({
      resourceId: 'sb-00000001',
      resourceType: 'sandbox',
      holderId: 'h',
      ttlMs: 10,
      nowMs: T0,
    });
    await s.leases.release(l, T0);
    await s.leases.acquire({
      resourceId: 'sb-00000001',
      resourceType: 'sandbox',
      holderId: 'h2',
      ttlMs: 10_000,
      nowMs: T0,
    });
    for (let i = 0; i < 12; i++) await s.audit.append(audit(i));
  });
  // Ids 13..50 were handed out to rows since deleted.
  const raw = new Database(path);
  raw.prepare("update sqlite_sequence set seq = 50 where name = 'audit_events'").run();
  raw.close();
}

describe('copyDatabase between SQLite files', () => {
  test('copies every row in batches, keeps lease generations and the id high-water mark', async ({
    dir,
  }) => {
    const src = join(dir, 'src.db');
    const dst = join(dir, 'nested', 'dst.db');
    await makeSource(src);
    const lines: string[] = [];
    const r = await copyDatabase({
      from: { driver: 'sqlite', path: src },
      to: { driver: 'sqlite', path: dst },
      nowMs: T0,
      batchRows: 5,
      onProgress: (l) => lines.push(l),
    });
    expect(r.schemaVersion).toBe(LATEST_SCHEMA_VERSION);
    expect(r.tables.find((t) => t.table === 'audit_events')).toEqual({
      table: 'audit_events',
      rows: 12,
      maxId: 12,
      idFloor: 50,
    });
    expect(lines).toContain('copied audit_events: 12 rows, max id 12');
    await withStore(dst, async (s) => {
      expect(await s.audit.list({ limit: 100 })).toEqual(
        await withStore(src, (o) => o.audit.list({ limit: 100 })),
      );
      expect((await s.leases.get('sb-00000001'))?.generation).toBe(2);
      expect((await s.sandboxes.get('sb-00000001'))?.metadata).toEqual({ a: 'b' });
      expect(await s.audit.append(audit(99))).toBe(51);
    });
  });

  test('refuses a non-empty target, the same file, and a source in use', async ({ dir }) => {
    const src = join(dir, 'src.db');
    await makeSource(src);
    const dst = join(dir, 'dst.db');
    await withStore(dst, async (s) => {
      await s.migrate();
      await s.audit.append(audit(1));
    });
    const full = await rejection(
      copyDatabase({
        from: { driver: 'sqlite', path: src },
        to: { driver: 'sqlite', path: dst },
        nowMs: T0,
      }),
    );
    expect(full.code).toBe('CONFLICT');
    expect(full.message).toContain('is not empty: audit_events (1 rows)');

    const same = await rejection(
      copyDatabase({
        from: { driver: 'sqlite', path: src },
        to: { driver: 'sqlite', path: src },
        nowMs: T0,
      }),
    );
    expect(same.message).toBe('source and target are the same database');

    const held = lockSqliteExclusively(src);
    try {
      const busy = await rejection(
        copyDatabase({
          from: { driver: 'sqlite', path: src },
          to: { driver: 'sqlite', path: join(dir, 'other.db') },
          nowMs: T0,
        }),
      );
      expect(busy.code).toBe('CONFLICT');
      expect(busy.message).toContain(`source database ${src} is in use by another process`);
    } finally {
      held.close();
    }

    await copyDatabase({
      from: { driver: 'sqlite', path: src },
      to: { driver: 'sqlite', path: dst },
      nowMs: T0,
      replace: true,
    });
    await withStore(dst, async (s) => {
      expect(await s.audit.list({ limit: 100 })).toHaveLength(12);
    });
  });
});
