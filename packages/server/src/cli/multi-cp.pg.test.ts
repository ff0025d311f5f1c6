/**
 * Two control planes in this process on one Postgres database, each with
 * its own worker: any of them serves any sandbox it can reach, events cross
 * between them, and one of them at a time runs the sweeps. (The built
 * binary with remote workers is test/e2e/multi-cp.pg.e2e.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import type { TestDatabase } from '../../test/support/pg-cluster.js';
import { createTestDatabase } from '../../test/support/pg-cluster.js';
import type { StacyEvent } from '../orchestrator/events.js';

const adminDsn = inject('pgAdminDsn');
const skipReason = inject('pgSkipReason');

const API_KEY = 'api-key-0123456789abcdef0123456789abcdef';
const SHARED = 'shared-worker-token-0123456789abcdef0123';
const H = { 'x-api-key': API_KEY };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until<T>(
  what: string,
  get: () => T | undefined | Promise<T | undefined>,
  ms = 10_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(25);
  }
}

const CP_TOKENS = {
  'cp-a': 'cp-a-own-token-0123456789abcdef0123456789',
  'cp-b': 'cp-b-own-token-0123456789abcdef0123456789',
};

describe.skipIf(adminDsn === '')(
  `two control planes on one database${skipReason ? ` (${skipReason})` : ''}`,
  () => {
    let db: TestDatabase;
    let a: Harness;
    let b: Harness;
    const closed = new Set<Harness>();

    beforeAll(async () => {
      db = await createTestDatabase(adminDsn, 'multicp');
      const common = (id: string, listen: string) => (c: Harness['config']) => {
        c.database.driver = 'postgres';
        c.database.dsn = db.dsn;
        c.auth.api_key = API_KEY;
        c.auth.worker_token = SHARED;
        // Each control plane's own worker opens only to its own entry (the same list everywhere).
        c.auth.worker_tokens = [`cp-a=${CP_TOKENS['cp-a']}`, `cp-b=${CP_TOKENS['cp-b']}`];
        c.server.local_worker_id = id;
        c.worker.listen_addr = listen;
      };
      // cp-a serves its own worker to the others; cp-b does not.
      a = await startHarness(common('cp-a', '127.0.0.1:0'));
      b = await startHarness(common('cp-b', ''));
    });
    afterAll(async () => {
      for (const h of [a, b]) if (h !== undefined && !closed.has(h)) await h.close();
      await db?.drop();
    });

    const req = (h: Harness, method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown) =>
      h.request({
        method,
        url: `/api/v1${url}`,
        headers: H,
        ...(body === undefined ? {} : { body }),
      });

    it('a sandbox on cp-a’s own worker is served through cp-b: exec, files, destroy', async () => {
      const id = await a.spawn({ ttl: '10m' });
      const got = await req(b, 'GET', `/sandboxes/${id}`);
      expect(got.statusCode, got.body).toBe(200);
      expect(got.json()).toMatchObject({ id, worker_id: 'cp-a', state: 'running' });

      const exec = await req(b, 'POST', `/sandboxes/${id}/exec`, { command: 'echo via cp-b' });
      expect(exec.statusCode, exec.body).toBe(200);
      expect(exec.json()).toMatchObject({ exit_code: 0, stdout: 'via cp-b\n' });

      const write = await req(b, 'POST', `/sandboxes/${id}/files`, {
        path: '/workspace/shared.txt',
        content: 'written through cp-b',
      });
      expect(write.statusCode, write.body).toBe(200);
      const read = await req(a, 'GET', `/sandboxes/${id}/files?path=/workspace/shared.txt`);
      expect(read.body).toBe('written through cp-b');

      const destroyed = await req(b, 'DELETE', `/sandboxes/${id}`);
      expect(destroyed.statusCode, destroyed.body).toBe(200);
      expect((await req(a, 'GET', `/sandboxes/${id}`)).statusCode).toBe(404);
      const lease = await a.cp.store.leases.get(id);
      expect(lease?.holderId).toBe('');
    });

    it('a sandbox on cp-b’s own worker (not served over RPC) answers 503 through cp-a, saying why', async () => {
      const id = await b.spawn({ ttl: '10m' });
      expect((await req(b, 'GET', `/sandboxes/${id}`)).json()).toMatchObject({ worker_id: 'cp-b' });
      const exec = await req(a, 'POST', `/sandboxes/${id}/exec`, { command: 'true' });
      expect(exec.statusCode, exec.body).toBe(503);
      expect(exec.json().message).toBe(
        'worker cp-b is not reachable from this control plane: it is the own worker of another control plane, which does not serve it to other control planes (set worker.listen_addr there)',
      );
      // Nothing changed: cp-b still serves it.
      const ok = await req(b, 'POST', `/sandboxes/${id}/exec`, { command: 'echo still here' });
      expect(ok.json()).toMatchObject({ stdout: 'still here\n' });
      expect((await req(b, 'DELETE', `/sandboxes/${id}`)).statusCode).toBe(200);
    });

    it('placement on cp-a passes over cp-b’s unreachable worker', async () => {
      const res = await req(a, 'POST', '/sandboxes/admission', { provider: 'mock' });
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json();
      expect(body.selected_worker_id).toBe('cp-a');
      expect(body.rejected_workers?.['cp-b']).toContain('unreachable');
    });

    it('events of one control plane reach the other’s subscribers, large ones included', async () => {
      const onB: StacyEvent[] = [];
      const stop = b.cp.events.subscribe((e) => onB.push(e));
      try {
        const id = await a.spawn({ ttl: '10m' });
        const created = await until('sandbox.created on cp-b', () =>
          onB.find((e) => e.type === 'sandbox.created' && e.sandbox_id === id),
        );
        expect(created.data).toMatchObject({ worker_id: 'cp-a' });
        const big = 'e'.repeat(20_000);
        a.cp.events.publish('operation.failed', id, { error: big });
        const large = await until('large event on cp-b', () =>
          onB.find((e) => e.type === 'operation.failed' && e.sandbox_id === id),
        );
        expect(large.data?.['error']).toBe(big);
        // Ids are cp-b's own: replay from cp-b's ids finds them.
        expect(b.cp.events.since('evt-0').some((e) => e.id === created.id)).toBe(true);
        expect((await req(a, 'DELETE', `/sandboxes/${id}`)).statusCode).toBe(200);
      } finally {
        stop();
      }
    });

    it('one of them sweeps at a time; the other takes over when the leader stops', async () => {
      const ra = await a.cp.reaper.tickIfLeader();
      const rb = await b.cp.reaper.tickIfLeader();
      const leaders = [ra, rb].filter((r) => r !== undefined);
      expect(leaders).toHaveLength(1);
      const [leader, follower] = ra === undefined ? [b, a] : [a, b];
      expect(await follower.cp.reaper.tickIfLeader()).toBeUndefined();
      // An expired sandbox on cp-a's worker (reachable from both): only the leader's sweep
      // destroys it when cp-a does not lead; cp-a's own sweep does when it follows.
      const id = await a.spawn({ ttl: '1s' });
      await sleep(1100);
      if (follower === b) {
        expect(await b.cp.reaper.tickIfLeader()).toBeUndefined();
        expect((await req(b, 'GET', `/sandboxes/${id}`)).statusCode).toBe(200);
        expect(await a.cp.reaper.tickIfLeader()).toBe(1);
      } else {
        expect(await a.cp.reaper.tickIfLeader()).toBeUndefined();
      }
      expect((await req(b, 'GET', `/sandboxes/${id}`)).statusCode).toBe(404);
      // An expired sandbox on cp-b's worker, which cp-a cannot call: cp-b reaps it, leader or not,
      // and cp-a's sweep leaves it alone instead of flipping it to error.
      const onB = await b.spawn({ ttl: '1s' });
      await sleep(1100);
      expect(await a.cp.reaper.tickIfLeader()).toBe(follower === a ? undefined : 0);
      expect((await req(b, 'GET', `/sandboxes/${onB}`)).json()).toMatchObject({ state: 'running' });
      await b.cp.reaper.tickIfLeader();
      expect((await req(b, 'GET', `/sandboxes/${onB}`)).statusCode).toBe(404);

      closed.add(leader);
      await leader.close();
      const taken = await until('takeover', async () => follower.cp.reaper.tickIfLeader());
      expect(taken).toBe(0);
    });
  },
);
