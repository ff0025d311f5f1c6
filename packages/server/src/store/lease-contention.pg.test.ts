import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, inject, test } from 'vitest';
import type { ContenderConfig } from '../../test/support/lease-contender.js';
import { checkLeaseHistory } from '../../test/support/lease-history.js';
import type { ContenderReport, LeaseEvent } from '../../test/support/lease-history.js';
import { createTestDatabase } from '../../test/support/pg-cluster.js';
import { spawnTsChild } from '../../test/support/ts-child.js';
import { createPostgresStore } from './postgres/open-postgres.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');
const CONTENDER = fileURLToPath(new URL('../../test/support/lease-contender.ts', import.meta.url));

const RESOURCES = ['sb-c0000001', 'sb-c0000002', 'sb-c0000003'];
const DURATION_MS = 4000;

describe('the lease history checker catches each kind of violation', () => {
  let clock = 1000;
  const ev = (over: Partial<LeaseEvent>): LeaseEvent => {
    clock += 10;
    return {
      op: 'acquire',
      ok: true,
      resourceId: 'r',
      holderId: 'a',
      generation: 1,
      nowMs: clock,
      expiresAtMs: clock + 100,
      callStart: clock,
      callEnd: clock + 1,
      proc: 'p1',
      ...over,
    };
  };
  const finals = (n: number): Map<string, number> => new Map([['r', n]]);

  test('accepts a valid history: expiry handover, release handover, same-holder re-acquire', () => {
    clock = 1000;
    const g1 = ev({ generation: 1, holderId: 'a', nowMs: 1000, expiresAtMs: 1100 });
    const r1 = ev({ op: 'renew', generation: 1, holderId: 'a', nowMs: 1050, expiresAtMs: 1150 });
    const g2 = ev({ generation: 2, holderId: 'b', nowMs: 1150, expiresAtMs: 1250, proc: 'p2' });
    const rel2 = ev({ op: 'release', generation: 2, holderId: 'b', nowMs: 1160, proc: 'p2' });
    const g3 = ev({ generation: 3, holderId: 'a', nowMs: 1161, expiresAtMs: 1300 });
    const g4 = ev({ generation: 4, holderId: 'a', nowMs: 1170, expiresAtMs: 1200 });
    const stale = ev({ op: 'renew', ok: false, stale: true, generation: 3, holderId: 'a' });
    const { violations, summary } = checkLeaseHistory([g1, r1, g2, rel2, g3, g4, stale], finals(4));
    expect(violations).toEqual([]);
    expect(summary).toMatchObject({
      acquisitions: 4,
      crossProcessHandovers: 2,
      expiryHandovers: 1,
      releaseHandovers: 1,
      staleProbes: 1,
    });
  });

  test('flags a handover while the previous holder was unexpired and not released', () => {
    const g1 = ev({ generation: 1, holderId: 'a', nowMs: 1000, expiresAtMs: 1100 });
    const r1 = ev({ op: 'renew', generation: 1, holderId: 'a', nowMs: 1050, expiresAtMs: 1200 });
    const g2 = ev({ generation: 2, holderId: 'b', nowMs: 1150, expiresAtMs: 1250 });
    expect(checkLeaseHistory([g1, r1, g2], finals(2)).violations).toEqual([
      expect.stringMatching(
        /generation 2 \(b\) acquired at 1150 while generation 1 \(a\) was unexpired until 1200/,
      ),
    ]);
  });

  test('flags duplicate and lost generations', () => {
    const dup = checkLeaseHistory(
      [ev({ generation: 1, holderId: 'a' }), ev({ generation: 1, holderId: 'b' })],
      finals(1),
    );
    expect(dup.violations).toContainEqual(expect.stringMatching(/generation 1 acquired twice/));
    const lost = checkLeaseHistory([ev({ generation: 1 })], finals(2));
    expect(lost.violations).toContainEqual(
      expect.stringMatching(/generation 2 was never recorded/),
    );
  });

  test('flags fencing failures: stale success, late renewal, foreign renewal', () => {
    const g1 = ev({ generation: 1, holderId: 'a', nowMs: 1000, expiresAtMs: 1010 });
    const g2 = ev({ generation: 2, holderId: 'b', nowMs: 1020, expiresAtMs: 1100 });
    const late = ev({ op: 'renew', generation: 1, holderId: 'a' });
    const foreign = ev({ op: 'release', generation: 2, holderId: 'c' });
    const stale = ev({ op: 'release', generation: 1, holderId: 'a', stale: true });
    const { violations } = checkLeaseHistory([g1, g2, late, foreign, stale], finals(2));
    expect(violations).toContainEqual(
      expect.stringMatching(/stale release of generation 1 by a succeeded/),
    );
    expect(violations).toContainEqual(
      expect.stringMatching(/renew of generation 1 succeeded after generation 2 was acquired/),
    );
    expect(violations).toContainEqual(
      expect.stringMatching(/release of generation 2 by c succeeded but b holds it/),
    );
  });
});

function waitForLine(child: ChildProcess, line: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(
      () => reject(new Error(`no "${line}" within ${timeoutMs} ms: ${out}`)),
      timeoutMs,
    );
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.split('\n').includes(line)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`contender exited with ${code} before "${line}"`));
    });
  });
}

function exitCode(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

describe.skipIf(adminDsn === '')(
  `leases under contention across two processes${skipReason ? ` (${skipReason})` : ''}`,
  () => {
    test('exactly one holder at any time, no lost or doubled generation, stale generations refused everywhere', async () => {
      const db = await createTestDatabase(adminDsn, 'lease');
      const dir = mkdtempSync(join(tmpdir(), 'stacyvm-lease-'));
      const children: ChildProcess[] = [];
      const stderr: string[] = ['', ''];
      try {
        const setup = await createPostgresStore({ dsn: db.dsn });
        await setup.migrate();
        await setup.close();

        const procs = ['p1', 'p2'];
        for (const [i, proc] of procs.entries()) {
          const cfg: ContenderConfig = {
            dsn: db.dsn,
            proc,
            resources: RESOURCES,
            workers: 6,
            durationMs: DURATION_MS,
            maxOpenConns: 4,
            minTtlMs: 15,
            maxTtlMs: 60,
          };
          const child = spawnTsChild(CONTENDER, [JSON.stringify(cfg), join(dir, `${proc}.json`)], {
            stdio: ['pipe', 'pipe', 'pipe'],
          });
          child.stderr?.on('data', (d: Buffer) => (stderr[i] += d.toString()));
          children.push(child);
        }
        await Promise.all(children.map((c) => waitForLine(c, 'ready', 30_000)));
        for (const c of children) c.stdin?.write('go\n');
        const codes = await Promise.all(children.map((c) => exitCode(c, DURATION_MS + 60_000)));
        expect(codes, stderr.join('\n')).toEqual([0, 0]);

        const reports = procs.map(
          (p) => JSON.parse(readFileSync(join(dir, `${p}.json`), 'utf8')) as ContenderReport,
        );
        for (const r of reports) expect(r.errors, r.proc).toEqual([]);

        const check = await createPostgresStore({ dsn: db.dsn });
        const finals = new Map(
          (await check.leases.list()).map((l) => [l.resourceId, l.generation]),
        );
        await check.close();
        expect([...finals.keys()].sort()).toEqual(RESOURCES);

        const events = reports.flatMap((r) => r.events);
        const { violations, summary } = checkLeaseHistory(events, finals);
        expect(violations.slice(0, 20)).toEqual([]);

        // The run really contended: both processes won, lost, handed over and probed.
        expect(summary.acquisitions).toBe([...finals.values()].reduce((a, b) => a + b, 0));
        expect(summary.acquisitions).toBeGreaterThan(100);
        expect(summary.crossProcessHandovers).toBeGreaterThan(10);
        expect(summary.expiryHandovers).toBeGreaterThan(5);
        expect(summary.releaseHandovers).toBeGreaterThan(5);
        expect(summary.renewals).toBeGreaterThan(10);
        for (const r of reports) {
          expect(r.acquireConflicts, r.proc).toBeGreaterThan(10);
          expect(r.events.filter((e) => e.stale === true).length, r.proc).toBeGreaterThan(5);
          expect(r.events.filter((e) => e.op === 'acquire' && e.ok).length, r.proc).toBeGreaterThan(
            20,
          );
          // Renewals refused for expiry happen too, so holders do lose leases they did not release.
          expect(
            r.events.filter((e) => e.op === 'renew' && !e.ok && e.stale !== true).length,
          ).toBeGreaterThan(0);
        }
      } finally {
        for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
        await db.drop();
      }
    }, 120_000);
  },
);
