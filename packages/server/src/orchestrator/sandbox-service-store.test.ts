/**
 * What SandboxService asks of the store on the spawn→destroy path: audit
 * rows queued and written together, in order; placement's workers and
 * counts in one read that is fresh on every spawn; destroy's record and
 * lease in one read. A real SandboxService over an in-memory SQLite store
 * (wrapped to count and gate calls) and an in-process worker (mock provider).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  lapseLease,
  recordingProxy,
  startServiceRig,
  storeWith,
  TEST_CTX as ctx,
} from '../../test/support/service-rig.js';
import type { ServiceRig } from '../../test/support/service-rig.js';
import { StacyError, unavailable } from '../domain/errors.js';
import type { Logger } from '../domain/logger.js';
import { AUDIT_APPEND_BATCH_MAX } from '../store/store.js';
import type { AuditEntry, Store } from '../store/store.js';

/** What the tests see and set of the store as the service sees it. */
interface Instruments {
  /** `part.method` of every store call the service made, in order. */
  calls: string[];
  /** Entries of each appendMany call the service made. */
  batches: AuditEntry[][];
  /** While set, appendMany waits for it before writing. */
  gate: Promise<void> | undefined;
  /** appendMany fails; append fails for entries of this sandbox id. */
  failBatches: boolean;
  /** What a failing appendMany throws (default: a plain error). */
  batchError: Error | undefined;
  failSandboxId: string;
  warnings: string[];
}

type Rig = ServiceRig & Instruments;

/** The store with every call of the parts the service uses recorded in `r.calls`. */
function instrumented(store: Store, r: Instruments): Store {
  const part = <T extends object>(name: string, target: T): T =>
    recordingProxy(target, (method) => r.calls.push(`${name}.${method}`));
  const audit = {
    append: (e: AuditEntry): Promise<number> => {
      if (e.sandboxId === r.failSandboxId) return Promise.reject(new Error('refused row'));
      return store.audit.append(e);
    },
    appendMany: async (entries: readonly AuditEntry[]): Promise<void> => {
      r.batches.push([...entries]);
      await r.gate;
      if (r.failBatches) throw r.batchError ?? new Error('refused batch');
      await store.audit.appendMany(entries);
    },
    list: store.audit.list.bind(store.audit),
  };
  return storeWith(store, {
    sandboxes: part('sandboxes', store.sandboxes),
    workers: part('workers', store.workers),
    leases: part('leases', store.leases),
    audit: part('audit', audit),
  });
}

async function rig(): Promise<Rig> {
  const r: Instruments = {
    calls: [],
    batches: [],
    gate: undefined,
    failBatches: false,
    batchError: undefined,
    failSandboxId: '',
    warnings: [],
  };
  const logger: Logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: (obj, msg) => r.warnings.push(`${msg ?? ''} ${JSON.stringify(obj)}`),
    error: () => undefined,
  };
  // The tests set r's fields on the returned rig: it must be r itself.
  return Object.assign(r, await startServiceRig({ wrapStore: (s) => instrumented(s, r), logger }));
}

describe('SandboxService on the store', () => {
  let r: Rig;
  beforeEach(async () => {
    r = await rig();
  });
  afterEach(async () => {
    r.gate = undefined;
    await r.close();
  });

  it('writes the audit rows that queue up meanwhile in one insert, in call order; drain waits', async () => {
    let open!: () => void;
    r.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const a = await r.sandboxes.spawn({}, { ...ctx, requestId: 'req-a' });
    // The first row is on its way (held at the gate); the next ones queue behind it.
    const b = await r.sandboxes.spawn({}, { ...ctx, requestId: 'req-b' });
    await r.sandboxes.destroy(a.id, { ...ctx, requestId: 'req-c' });
    const c = await r.sandboxes.spawn({}, { ...ctx, requestId: 'req-d' });
    let drained = false;
    const draining = r.sandboxes.drain().then(() => {
      drained = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(drained).toBe(false);
    expect(await r.store.audit.list()).toEqual([]);
    open();
    await draining;
    expect(r.batches.map((batch) => batch.map((e) => e.requestId))).toEqual([
      ['req-a'],
      ['req-b', 'req-c', 'req-d'],
    ]);
    const rows = (await r.store.audit.list()).reverse();
    expect(rows.map((e) => [e.requestId, e.action, e.sandboxId])).toEqual([
      ['req-a', 'sandbox.spawn', a.id],
      ['req-b', 'sandbox.spawn', b.id],
      ['req-c', 'sandbox.destroy', a.id],
      ['req-d', 'sandbox.spawn', c.id],
    ]);
    expect(rows.map((e) => e.id)).toEqual([...rows.map((e) => e.id ?? 0)].sort((x, y) => x - y));
    // Only the audit loop wrote audit rows: no single appends.
    expect(r.calls.filter((c) => c === 'audit.append')).toEqual([]);
  });

  it('when a batch is refused, writes its rows one by one so a bad row costs only itself', async () => {
    let open!: () => void;
    r.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    r.failBatches = true;
    const a = await r.sandboxes.spawn({}, ctx);
    const b = await r.sandboxes.spawn({}, ctx);
    const c = await r.sandboxes.spawn({}, ctx);
    r.failSandboxId = b.id;
    open();
    await r.sandboxes.drain();
    const rows = (await r.store.audit.list()).reverse();
    expect(rows.map((e) => e.sandboxId)).toEqual([c.id]);
    // a's single-row batch was refused too; b's row refused on its own; c's written.
    expect(r.warnings.filter((w) => w.startsWith('audit append failed'))).toHaveLength(2);
    expect(r.warnings.some((w) => w.includes(a.id))).toBe(true);
    expect(r.warnings.some((w) => w.includes(b.id))).toBe(true);
  });

  it('sends at most one statement of rows per batch, so a refused batch is retried without duplicates', async () => {
    let open!: () => void;
    r.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const first = await r.sandboxes.spawn({}, ctx);
    const n = AUDIT_APPEND_BATCH_MAX + 8;
    for (let i = 0; i < n; i++) await r.sandboxes.spawn({}, ctx);
    r.failBatches = true;
    r.failSandboxId = first.id;
    open();
    await r.sandboxes.drain();
    expect(Math.max(...r.batches.map((b) => b.length))).toBeLessThanOrEqual(AUDIT_APPEND_BATCH_MAX);
    const rows = await r.store.audit.list({ limit: 1000 });
    // Every row once, except the first (its batch refused, then the row refused on its own).
    expect(rows).toHaveLength(n);
    expect(new Set(rows.map((e) => e.sandboxId)).size).toBe(n);
    expect(rows.some((e) => e.sandboxId === first.id)).toBe(false);
  });

  it('drops a batch the store is not answering for at once, without trying its rows one by one', async () => {
    r.failBatches = true;
    r.batchError = unavailable('database not answering');
    await r.sandboxes.spawn({}, ctx);
    await r.sandboxes.spawn({}, ctx);
    await r.sandboxes.drain();
    expect(r.calls.filter((c) => c === 'audit.append')).toEqual([]);
    expect(r.warnings.filter((w) => w.startsWith('audit append failed')).length).toBeGreaterThan(0);
    expect(await r.store.audit.list()).toEqual([]);
  });

  it('lets exec logs be read while audit rows are still on their way', async () => {
    let open!: () => void;
    r.gate = new Promise<void>((resolve) => {
      open = resolve;
    }); // audit writes wait until the end of the test
    const sb = await r.sandboxes.spawn({}, ctx);
    await r.sandboxes.exec(
      sb.id,
      { command: 'echo hi', args: [], mode: 'shell', env: {}, workdir: '', timeoutMs: 10_000 },
      ctx,
    );
    const logs = await Promise.race([
      r.sandboxes.execLogs(sb.id, 10, ctx),
      new Promise<'waited'>((resolve) => setTimeout(() => resolve('waited'), 2_000)),
    ]);
    expect(logs).not.toBe('waited');
    expect((logs as { stdout: string }[]).map((e) => e.stdout)).toEqual(['hi\n']);
    expect(await r.store.audit.list()).toEqual([]);
    open();
  });

  it('reads workers and live counts in one statement per spawn, fresh each time', async () => {
    await r.store.workers.upsertHeartbeat(
      {
        id: 'local',
        hostname: 'h',
        status: 'online',
        providers: ['mock'],
        capabilities: [],
        capacity: { max_sandboxes: 2 },
      },
      Date.now(),
    );
    const first = await r.sandboxes.spawn({}, ctx);
    const placement = r.calls.filter(
      (c) => c.startsWith('workers.') || c === 'sandboxes.countByWorker',
    );
    expect(placement).toEqual(['workers.listWithSandboxCounts']);
    // Another control plane takes the last place on the worker behind this one's back.
    const now = Date.now();
    await r.store.sandboxes.insert({
      ...first,
      id: 'sb-0other01',
      createdAtMs: now,
      updatedAtMs: now,
    });
    const err: unknown = await r.sandboxes.spawn({}, ctx).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StacyError);
    expect((err as StacyError).code).toBe('RESOURCE_LIMIT');
    expect(r.calls.filter((c) => c === 'workers.listWithSandboxCounts')).toHaveLength(2);
  });

  it('destroy reads the record and its lease in one statement and releases the lease', async () => {
    const sb = await r.sandboxes.spawn({}, ctx);
    r.calls.length = 0;
    await r.sandboxes.destroy(sb.id, ctx);
    expect(r.calls.filter((c) => c.startsWith('sandboxes.') || c.startsWith('leases.'))).toEqual([
      'sandboxes.getWithLease',
      'sandboxes.transition',
      'sandboxes.transition',
      'leases.release',
    ]);
    expect((await r.store.sandboxes.get(sb.id))?.state).toBe('destroyed');
    expect((await r.store.leases.get(sb.id))?.holderId).toBe('');
    expect(await r.runtime.listRuntimes('mock')).toEqual([]);
    // A second destroy is NOT_FOUND, an unknown id too.
    for (const id of [sb.id, 'sb-00000000']) {
      const err: unknown = await r.sandboxes.destroy(id, ctx).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as StacyError).code).toBe('NOT_FOUND');
    }
  });

  it('destroy takes the lease again when it lapsed, and the worker accepts it', async () => {
    const sb = await r.sandboxes.spawn({}, ctx);
    const lease = await lapseLease(r.store, sb.id);
    r.calls.length = 0;
    await r.sandboxes.destroy(sb.id, ctx);
    expect(r.calls).toContain('leases.acquire');
    expect((await r.store.sandboxes.get(sb.id))?.state).toBe('destroyed');
    const after = await r.store.leases.get(sb.id);
    expect(after?.generation).toBe(lease.generation + 1);
    expect(after?.holderId).toBe('');
  });
});
