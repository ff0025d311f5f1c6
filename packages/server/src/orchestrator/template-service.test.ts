/**
 * Spawn from a template at the service level: a real SandboxService over an
 * in-memory SQLite store and a real in-process worker (mock provider), with
 * the worker client wrapped where a test needs it to fail.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startServiceRig, stacyErrorOf, TEST_CTX as ctx } from '../../test/support/service-rig.js';
import type { ServiceRig } from '../../test/support/service-rig.js';
import { systemClock } from '../domain/clock.js';
import { StacyError } from '../domain/errors.js';
import type { ExecSpec } from '../domain/exec.js';
import { silentLogger } from '../domain/logger.js';
import type { SandboxLimits } from './limits.js';
import { TemplateService } from './template-service.js';

interface Rig extends ServiceRig {
  templates: TemplateService;
  /** Makes the next destroy calls of the worker fail (a worker that cannot remove runtimes). */
  failDestroy: boolean;
  /** Specs of every exec the worker ran. */
  execs: ExecSpec[];
}

async function rig(limits: Partial<SandboxLimits> = {}): Promise<Rig> {
  const hooks = { failDestroy: false, execs: [] as ExecSpec[] };
  const base = await startServiceRig({
    dirPrefix: 'stacyvm-tpl-',
    limits,
    wrapWorker: (runtime) =>
      new Proxy(runtime, {
        get(target, prop, receiver) {
          if (prop === 'destroy' && hooks.failDestroy) {
            return () => Promise.reject(new StacyError('UNAVAILABLE', 'worker is unreachable'));
          }
          if (prop === 'exec') {
            return (ref: unknown, spec: ExecSpec, opts: unknown) => {
              hooks.execs.push(spec);
              return (target.exec as (...a: unknown[]) => unknown).call(target, ref, spec, opts);
            };
          }
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      }),
  });
  const templates = new TemplateService({
    store: base.store,
    sandboxes: base.sandboxes,
    clock: systemClock,
    logger: silentLogger,
  });
  // The tests set failDestroy on the returned rig: it must be hooks itself.
  return Object.assign(hooks, base, { templates });
}

describe('TemplateService', () => {
  let r: Rig;
  beforeEach(async () => {
    r = await rig();
  });
  afterEach(async () => {
    await r.close();
  });

  it('fills defaults from the server limits on create', async () => {
    const t = await r.templates.create('bare', { image: 'alpine:3.20' }, ctx);
    expect(t).toMatchObject({
      name: 'bare',
      version: 1,
      image: 'alpine:3.20',
      provider: '',
      description: '',
      memoryMb: 1024,
      vcpus: 1,
      ttlSeconds: 1800,
      env: {},
      setup: [],
      metadata: {},
      ports: [3000],
    });
    const audit = await r.store.audit.list({ action: 'template.create' });
    expect(audit[0]).toMatchObject({ resource: 'template:bare', actor: 'tester' });
  });

  it('spawn applies image, provider, resources, ttl, ports, metadata, env and setup', async () => {
    await r.templates.create(
      'py',
      {
        image: 'python:3.12-slim',
        provider: 'mock',
        memoryMb: 256,
        vcpus: 2,
        ttl: '10m',
        ports: [8080, 3000],
        metadata: { team: 'data', run: 'template' },
        env: { GREETING: 'hello', SHARED: 'from-template' },
        setup: ['echo "$GREETING" > setup.txt', 'echo second >> setup.txt'],
      },
      ctx,
    );
    const before = Date.now();
    const sb = await r.templates.spawn(
      'py',
      { ownerId: 'alice', metadata: { run: 'override' }, env: { EXTRA: 'x' } },
      ctx,
    );
    expect(sb).toMatchObject({
      state: 'running',
      image: 'python:3.12-slim',
      provider: 'mock',
      memoryMb: 256,
      vcpus: 2,
      ownerId: 'alice',
      ports: [3000, 8080],
      metadata: { team: 'data', run: 'override', template: 'py' },
      env: { GREETING: 'hello', SHARED: 'from-template', EXTRA: 'x' },
    });
    expect(sb.expiresAtMs - sb.createdAtMs).toBe(10 * 60_000);
    expect(sb.createdAtMs).toBeGreaterThanOrEqual(before);
    expect((await r.store.sandboxes.get(sb.id))?.env).toEqual(sb.env);

    // The setup commands ran in order, in the sandbox, with the template env.
    const file = await readFile(join(r.dir, sb.id, 'workspace', 'setup.txt'), 'utf8');
    expect(file).toBe('hello\nsecond\n');

    // Every exec gets the sandbox env under its own.
    const out = await r.sandboxes.exec(
      sb.id,
      {
        command: 'echo "$GREETING $SHARED $EXTRA"',
        args: [],
        mode: 'shell',
        env: { SHARED: 'from-request' },
        workdir: '',
        timeoutMs: 5000,
      },
      ctx,
    );
    expect(out.stdout).toBe('hello from-request x\n');

    // Setup commands are in the exec log, oldest first here.
    await r.sandboxes.drain();
    const logs = (await r.store.execLogs.list(sb.id, 10)).reverse();
    expect(logs.map((l) => [l.command, l.exitCode])).toEqual([
      ['echo "$GREETING" > setup.txt', 0],
      ['echo second >> setup.txt', 0],
      ['echo "$GREETING $SHARED $EXTRA"', 0],
    ]);
  });

  it('spawn takes ttl and provider overrides and refuses a ttl above max_ttl', async () => {
    await r.templates.create('t', { image: 'alpine', ttlSeconds: 120 }, ctx);
    const sb = await r.templates.spawn('t', { ttl: '5m', provider: 'mock' }, ctx);
    expect(sb.expiresAtMs - sb.createdAtMs).toBe(5 * 60_000);
    expect(sb.env).toBeUndefined();
    const err = await stacyErrorOf(r.templates.spawn('t', { ttl: '48h' }, ctx));
    expect(err.code).toBe('RESOURCE_LIMIT');
    const unknown = await stacyErrorOf(r.templates.spawn('nope', {}, ctx));
    expect(unknown).toMatchObject({ code: 'NOT_FOUND', message: 'template not found: nope' });
  });

  it('a failing setup command fails the spawn, names it, and leaves nothing behind', async () => {
    await r.templates.create(
      'bad',
      { image: 'alpine', setup: ['echo ok', 'echo boom >&2; exit 3', 'touch never'] },
      ctx,
    );
    const err = await stacyErrorOf(r.templates.spawn('bad', {}, ctx));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toBe(
      'spawn failed: setup command 2 of 3 ("echo boom >&2; exit 3") exited with code 3: boom',
    );
    expect(err.details).toEqual([{ field: 'setup[1]', problem: 'exited with code 3: boom' }]);
    // The third command never ran.
    expect(r.execs.map((e) => e.command)).toEqual(['echo ok', 'echo boom >&2; exit 3']);

    const [rec] = await r.store.sandboxes.list({ includeDestroyed: true });
    expect(rec).toMatchObject({ state: 'destroyed', metadata: { template: 'bad' } });
    expect(await r.runtime.listRuntimes('mock')).toEqual([]);
    expect((await r.store.leases.get(rec?.id ?? ''))?.holderId).toBe('');
    await r.sandboxes.drain();
    const logs = await r.store.execLogs.list(rec?.id ?? '', 10);
    expect(logs.map((l) => l.exitCode).sort()).toEqual([0, 3]);
    const audit = await r.store.audit.list({ sandboxId: rec?.id ?? '', action: 'sandbox.spawn' });
    expect(audit[0]).toMatchObject({ status: 'failure' });
  });

  it('a setup command that times out fails the spawn with TIMEOUT and is cleaned up', async () => {
    const short = await rig({ defaultExecTimeoutMs: 300 });
    try {
      await short.templates.create('slow', { image: 'alpine', setup: ['sleep 5'] }, ctx);
      const started = Date.now();
      const err = await stacyErrorOf(short.templates.spawn('slow', {}, ctx));
      expect(Date.now() - started).toBeLessThan(4000);
      expect(err.code).toBe('TIMEOUT');
      expect(err.message).toBe(
        'spawn failed: setup command 1 of 1 ("sleep 5") timed out after 300ms',
      );
      expect(await short.runtime.listRuntimes('mock')).toEqual([]);
      expect(await short.store.sandboxes.count()).toBe(0);
    } finally {
      await short.close();
    }
  });

  it('a caller that goes away mid-setup still gets the runtime removed', async () => {
    await r.templates.create('slow', { image: 'alpine', setup: ['sleep 5'] }, ctx);
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('client disconnected')), 200);
    await stacyErrorOf(r.templates.spawn('slow', {}, { ...ctx, signal: ac.signal }));
    expect(await r.runtime.listRuntimes('mock')).toEqual([]);
    expect(await r.store.sandboxes.count()).toBe(0);
  });

  it('when the runtime cannot be removed, the record stays visible in error with its lease', async () => {
    await r.templates.create('bad', { image: 'alpine', setup: ['exit 1'] }, ctx);
    r.failDestroy = true;
    await stacyErrorOf(r.templates.spawn('bad', {}, ctx));
    const [rec] = await r.store.sandboxes.list();
    expect(rec).toMatchObject({ state: 'error', provider: 'mock' });
    expect(rec?.vmId).not.toBe('');
    expect((await r.store.leases.get(rec?.id ?? ''))?.holderId).toBe('local');
    expect(await r.runtime.listRuntimes('mock')).toHaveLength(1);
    // A later destroy retries the teardown and succeeds.
    r.failDestroy = false;
    await r.sandboxes.destroy(rec?.id ?? '', ctx);
    expect(await r.runtime.listRuntimes('mock')).toEqual([]);
    expect(await r.store.sandboxes.count()).toBe(0);
  });

  it('replace bumps the version and keeps created time; delete removes', async () => {
    const first = await r.templates.create('t', { image: 'a', setup: ['x'] }, ctx);
    const second = await r.templates.replace('t', { image: 'b' }, ctx);
    expect(second).toMatchObject({ version: 2, image: 'b', setup: [] });
    expect(second.createdAtMs).toBe(first.createdAtMs);
    expect((await stacyErrorOf(r.templates.replace('zz', { image: 'b' }, ctx))).code).toBe(
      'NOT_FOUND',
    );
    await r.templates.delete('t', ctx);
    expect((await stacyErrorOf(r.templates.delete('t', ctx))).code).toBe('NOT_FOUND');
    expect((await stacyErrorOf(r.templates.get('t'))).code).toBe('NOT_FOUND');
  });
});
