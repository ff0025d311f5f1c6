/**
 * What SandboxService asks of the store on the exec path: the record and its
 * lease in one joined read (a lease write only when the lease has to be
 * taken again), with the owner's lease handed to the worker as before. A
 * real SandboxService over an in-memory SQLite store (wrapped to count
 * calls) and an in-process worker running the mock provider.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { systemClock } from '../domain/clock.js';
import { StacyError } from '../domain/errors.js';
import type { ExecSpec } from '../domain/exec.js';
import { silentLogger } from '../domain/logger.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import type { RuntimeRef, WorkerClient } from '../rpc/worker-client.js';
import { createSqliteStore } from '../store/sqlite/open-sqlite.js';
import type { Store } from '../store/store.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';
import { EventBus } from './events.js';
import type { StacyEvent } from './events.js';
import type { SandboxLimits } from './limits.js';
import { Metrics } from './metrics.js';
import type { CallContext } from './sandbox-service.js';
import { SandboxService } from './sandbox-service.js';

const ctx: CallContext = { requestId: 'req-1', actor: 'tester' };

const LIMITS: SandboxLimits = {
  defaultTtlMs: 30 * 60_000,
  maxTtlMs: 24 * 3_600_000,
  defaultImage: 'alpine:latest',
  defaultMemoryMb: 1024,
  defaultVcpus: 1,
  defaultExecTimeoutMs: 0,
  maxExecTimeoutMs: 60_000,
  maxSandboxes: 0,
  maxSandboxesPerOwner: 0,
};

function spec(command: string): ExecSpec {
  return { command, args: [], mode: 'shell', env: {}, workdir: '', timeoutMs: 10_000 };
}

interface Rig {
  dir: string;
  store: Store;
  runtime: WorkerRuntime;
  sandboxes: SandboxService;
  /** `part.method` of every sandboxes/leases store call the service made, in order. */
  calls: string[];
  /** The ref of every exec/execStream call the worker got. */
  refs: RuntimeRef[];
  events: StacyEvent[];
}

async function rig(): Promise<Rig> {
  const dir = await mkdtemp(join(tmpdir(), 'stacyvm-svc-exec-'));
  const store = await createSqliteStore({ path: ':memory:' });
  await store.migrate();
  const runtime = new WorkerRuntime({
    workerId: 'local',
    providers: [new MockProvider({ baseDir: dir })],
    defaultProvider: 'mock',
    logger: silentLogger,
  });
  await runtime.start();
  const calls: string[] = [];
  const refs: RuntimeRef[] = [];
  const counted = <T extends object>(name: string, target: T): T =>
    new Proxy(target, {
      get(t, prop, receiver) {
        const v: unknown = Reflect.get(t, prop, receiver);
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => {
          calls.push(`${name}.${String(prop)}`);
          return (v as (...a: unknown[]) => unknown).apply(t, args);
        };
      },
    });
  const wrapped: Store = {
    dialect: store.dialect,
    sandboxes: counted('sandboxes', store.sandboxes),
    workers: store.workers,
    leases: counted('leases', store.leases),
    execLogs: store.execLogs,
    audit: store.audit,
    templates: store.templates,
    migrate: () => store.migrate(),
    schemaVersion: () => store.schemaVersion(),
    ping: () => store.ping(),
    close: () => store.close(),
  };
  // The worker as the service sees it, recording the ref of every exec.
  const worker = new Proxy(runtime, {
    get(t, prop, receiver) {
      const v: unknown = Reflect.get(t, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (prop === 'exec' || prop === 'execStream') refs.push(args[0] as RuntimeRef);
        return (v as (...a: unknown[]) => unknown).apply(t, args);
      };
    },
  }) as WorkerClient;
  const events = new EventBus({ clock: systemClock });
  const seen: StacyEvent[] = [];
  events.subscribe((e) => seen.push(e));
  const sandboxes = new SandboxService({
    store: wrapped,
    workers: { client: (id) => (id === 'local' ? worker : undefined) },
    events,
    metrics: new Metrics(),
    clock: systemClock,
    logger: silentLogger,
    limits: LIMITS,
    localWorkerId: 'local',
    defaultProvider: 'mock',
  });
  return { dir, store, runtime, sandboxes, calls, refs, events: seen };
}

async function errorOf(p: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

describe('SandboxService exec on the store', () => {
  let r: Rig;
  beforeEach(async () => {
    r = await rig();
  });
  afterEach(async () => {
    await r.sandboxes.drain();
    await r.runtime.stop();
    await r.store.close();
    await rm(r.dir, { recursive: true, force: true });
  });

  it('reads the record and its lease in one statement and hands the worker the lease', async () => {
    const sb = await r.sandboxes.spawn({}, ctx);
    const lease = await r.store.leases.get(sb.id);
    r.calls.length = 0;
    r.refs.length = 0;
    const out = await r.sandboxes.exec(sb.id, spec('echo hi'), ctx);
    expect(out.stdout).toBe('hi\n');
    expect(r.calls).toEqual(['sandboxes.getWithLease']);
    expect(r.refs).toEqual([
      {
        sandboxId: sb.id,
        provider: 'mock',
        runtimeId: sb.id,
        lease: {
          resourceId: sb.id,
          holderId: 'local',
          generation: lease?.generation,
          expiresAtMs: lease?.expiresAtMs,
        },
      },
    ]);
    // Exec log, audit row and events are still written.
    await r.sandboxes.drain();
    expect((await r.store.execLogs.list(sb.id, 10)).map((e) => e.stdout)).toEqual(['hi\n']);
    expect((await r.store.audit.list({ action: 'exec' })).map((e) => e.status)).toEqual([
      'success',
    ]);
    expect(r.events.map((e) => e.type)).toContain('exec.completed');
  });

  it('reads the same way for a streamed exec', async () => {
    const sb = await r.sandboxes.spawn({}, ctx);
    r.calls.length = 0;
    r.refs.length = 0;
    const chunks: string[] = [];
    for await (const ev of await r.sandboxes.execStream(sb.id, spec('echo streamed'), ctx)) {
      if (ev.type === 'stdout') chunks.push(Buffer.from(ev.data).toString());
    }
    expect(chunks.join('')).toBe('streamed\n');
    expect(r.calls).toEqual(['sandboxes.getWithLease']);
    expect(r.refs[0]?.lease?.holderId).toBe('local');
  });

  it('takes the lease again when it lapsed, and the worker accepts the new generation', async () => {
    const sb = await r.sandboxes.spawn({}, ctx);
    const lease = await r.store.leases.get(sb.id);
    if (lease === undefined) throw new Error('no lease');
    // Released behind the service's back (e.g. by a sweep).
    expect(await r.store.leases.release(lease, Date.now())).toBe(true);
    r.calls.length = 0;
    r.refs.length = 0;
    expect((await r.sandboxes.exec(sb.id, spec('echo again'), ctx)).stdout).toBe('again\n');
    expect(r.calls).toEqual(['sandboxes.getWithLease', 'leases.acquire']);
    expect(r.refs[0]?.lease?.generation).toBe(lease.generation + 1);
    expect((await r.store.leases.get(sb.id))?.holderId).toBe('local');
    // The next exec finds the new lease live: one read again.
    r.calls.length = 0;
    await r.sandboxes.exec(sb.id, spec('true'), ctx);
    expect(r.calls).toEqual(['sandboxes.getWithLease']);
  });

  it('presents no lease another holder has', async () => {
    const sb = await r.sandboxes.spawn({}, ctx);
    const lease = await r.store.leases.get(sb.id);
    if (lease === undefined) throw new Error('no lease');
    await r.store.leases.release(lease, Date.now());
    await r.store.leases.acquire({
      resourceId: sb.id,
      resourceType: 'sandbox',
      holderId: 'someone-else',
      ttlMs: 60_000,
      nowMs: Date.now(),
    });
    r.refs.length = 0;
    await r.sandboxes.exec(sb.id, spec('true'), ctx);
    expect(r.refs[0]?.lease).toBeUndefined();
    expect((await r.store.leases.get(sb.id))?.holderId).toBe('someone-else');
  });

  it('refuses unknown, destroyed, other tenants’ and non-running sandboxes as before', async () => {
    const sb = await r.sandboxes.spawn({}, { ...ctx, tenantId: 'acme' });
    expect((await errorOf(r.sandboxes.exec('sb-00000000', spec('true'), ctx))).code).toBe(
      'NOT_FOUND',
    );
    const other = await errorOf(r.sandboxes.exec(sb.id, spec('true'), { ...ctx, tenantId: 'x' }));
    expect(other.code).toBe('NOT_FOUND');
    expect(other.message).toBe(`sandbox not found: ${sb.id}`);
    // Same tenant, or no tenant scoping: allowed.
    await r.sandboxes.exec(sb.id, spec('true'), { ...ctx, tenantId: 'acme' });
    await r.sandboxes.exec(sb.id, spec('true'), ctx);

    await r.store.sandboxes.transition(sb.id, ['running'], 'error', {}, Date.now());
    const busy = await errorOf(r.sandboxes.execStream(sb.id, spec('true'), ctx));
    expect(busy.code).toBe('CONFLICT');
    expect(busy.message).toBe(`sandbox ${sb.id} is error; operations need a running sandbox`);

    const live = await r.sandboxes.spawn({}, ctx);
    await r.sandboxes.destroy(live.id, ctx);
    r.refs.length = 0;
    expect((await errorOf(r.sandboxes.exec(live.id, spec('true'), ctx))).code).toBe('NOT_FOUND');
    expect(r.refs).toEqual([]);
  });
});
