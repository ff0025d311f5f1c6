/**
 * What SandboxService asks of the store on the exec path: the record and its
 * lease in one joined read (a lease write only when the lease has to be
 * taken again), with the owner's lease handed to the worker as before. A
 * real SandboxService over an in-memory SQLite store (wrapped to count
 * calls) and an in-process worker running the mock provider.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  lapseLease,
  recordingProxy,
  startServiceRig,
  stacyErrorOf,
  storeWith,
  TEST_CTX as ctx,
} from '../../test/support/service-rig.js';
import type { ServiceRig } from '../../test/support/service-rig.js';
import { systemClock } from '../domain/clock.js';
import type { ExecSpec } from '../domain/exec.js';
import type { RuntimeRef } from '../rpc/worker-client.js';
import { EventBus } from './events.js';
import type { StacyEvent } from './events.js';

function spec(command: string): ExecSpec {
  return { command, args: [], mode: 'shell', env: {}, workdir: '', timeoutMs: 10_000 };
}

interface Rig extends ServiceRig {
  /** `part.method` of every sandboxes/leases store call the service made, in order. */
  calls: string[];
  /** The ref of every exec/execStream call the worker got. */
  refs: RuntimeRef[];
  events: StacyEvent[];
}

async function rig(): Promise<Rig> {
  const calls: string[] = [];
  const refs: RuntimeRef[] = [];
  const counted = <T extends object>(name: string, target: T): T =>
    recordingProxy(target, (method) => calls.push(`${name}.${method}`));
  const events = new EventBus({ clock: systemClock });
  const seen: StacyEvent[] = [];
  events.subscribe((e) => seen.push(e));
  const base = await startServiceRig({
    dirPrefix: 'stacyvm-svc-exec-',
    wrapStore: (store) =>
      storeWith(store, {
        sandboxes: counted('sandboxes', store.sandboxes),
        leases: counted('leases', store.leases),
      }),
    // The worker as the service sees it, recording the ref of every exec.
    wrapWorker: (runtime) =>
      recordingProxy(runtime, (method, args) => {
        if (method === 'exec' || method === 'execStream') refs.push(args[0] as RuntimeRef);
      }),
    events,
  });
  return { ...base, calls, refs, events: seen };
}

describe('SandboxService exec on the store', () => {
  let r: Rig;
  beforeEach(async () => {
    r = await rig();
  });
  afterEach(async () => {
    await r.close();
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
    const lease = await lapseLease(r.store, sb.id);
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
    expect((await stacyErrorOf(r.sandboxes.exec('sb-00000000', spec('true'), ctx))).code).toBe(
      'NOT_FOUND',
    );
    const other = await stacyErrorOf(
      r.sandboxes.exec(sb.id, spec('true'), { ...ctx, tenantId: 'x' }),
    );
    expect(other.code).toBe('NOT_FOUND');
    expect(other.message).toBe(`sandbox not found: ${sb.id}`);
    // Same tenant, or no tenant scoping: allowed.
    await r.sandboxes.exec(sb.id, spec('true'), { ...ctx, tenantId: 'acme' });
    await r.sandboxes.exec(sb.id, spec('true'), ctx);

    await r.store.sandboxes.transition(sb.id, ['running'], 'error', {}, Date.now());
    const busy = await stacyErrorOf(r.sandboxes.execStream(sb.id, spec('true'), ctx));
    expect(busy.code).toBe('CONFLICT');
    expect(busy.message).toBe(`sandbox ${sb.id} is error; operations need a running sandbox`);

    const live = await r.sandboxes.spawn({}, ctx);
    await r.sandboxes.destroy(live.id, ctx);
    r.refs.length = 0;
    expect((await stacyErrorOf(r.sandboxes.exec(live.id, spec('true'), ctx))).code).toBe(
      'NOT_FOUND',
    );
    expect(r.refs).toEqual([]);
  });
});
