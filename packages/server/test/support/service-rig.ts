/**
 * A real SandboxService for unit tests: an in-memory SQLite store (migrated),
 * an in-process WorkerRuntime with the mock provider in a temp dir, and the
 * service wired to them as the local worker. Hooks let a test wrap the store
 * or the worker client the service sees; the instrumentation itself (what is
 * recorded, gated or made to fail) stays in the test file.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { systemClock } from '../../src/domain/clock.js';
import { StacyError } from '../../src/domain/errors.js';
import type { Lease } from '../../src/domain/lease.js';
import { silentLogger } from '../../src/domain/logger.js';
import type { Logger } from '../../src/domain/logger.js';
import { EventBus } from '../../src/orchestrator/events.js';
import type { SandboxLimits } from '../../src/orchestrator/limits.js';
import { Metrics } from '../../src/orchestrator/metrics.js';
import type { CallContext } from '../../src/orchestrator/sandbox-service.js';
import { SandboxService } from '../../src/orchestrator/sandbox-service.js';
import { MockProvider } from '../../src/providers/mock/mock-provider.js';
import type { WorkerClient } from '../../src/rpc/worker-client.js';
import { createSqliteStore } from '../../src/store/sqlite/open-sqlite.js';
import type { Store } from '../../src/store/store.js';
import { WorkerRuntime } from '../../src/worker/worker-runtime.js';

export const TEST_CTX: CallContext = { requestId: 'req-1', actor: 'tester' };

export const TEST_LIMITS: SandboxLimits = {
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

/**
 * Awaits `p`, expects it to reject with a StacyError and returns that error
 * (whatever its code; see provider.contract's expectStacyError for a fixed one).
 */
/**
 * Releases a sandbox's lease behind the service's back (as a sweep would) and
 * returns the lease as it was.
 */
export async function lapseLease(store: Store, sandboxId: string): Promise<Lease> {
  const lease = await store.leases.get(sandboxId);
  if (lease === undefined) throw new Error(`no lease on ${sandboxId}`);
  expect(await store.leases.release(lease, Date.now())).toBe(true);
  return lease;
}

export async function stacyErrorOf(p: Promise<unknown>): Promise<StacyError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  return err as StacyError;
}

/**
 * `target` with every method call reported to `onCall` (method name and
 * arguments) before it is forwarded to `target`.
 */
export function recordingProxy<T extends object>(
  target: T,
  onCall: (method: string, args: unknown[]) => void,
): T {
  return new Proxy(target, {
    get(t, prop, receiver) {
      const v: unknown = Reflect.get(t, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        onCall(String(prop), args);
        return (v as (...a: unknown[]) => unknown).apply(t, args);
      };
    },
  });
}

type StoreParts = Pick<
  Store,
  'sandboxes' | 'workers' | 'leases' | 'execLogs' | 'audit' | 'templates'
>;

/** `store` with some of its parts replaced; the rest (and migrate/ping/close) go to `store`. */
export function storeWith(store: Store, parts: Partial<StoreParts>): Store {
  return {
    dialect: store.dialect,
    sandboxes: parts.sandboxes ?? store.sandboxes,
    workers: parts.workers ?? store.workers,
    leases: parts.leases ?? store.leases,
    execLogs: parts.execLogs ?? store.execLogs,
    audit: parts.audit ?? store.audit,
    templates: parts.templates ?? store.templates,
    migrate: () => store.migrate(),
    schemaVersion: () => store.schemaVersion(),
    ping: () => store.ping(),
    close: () => store.close(),
  };
}

export interface ServiceRigOptions {
  /** Prefix of the temp dir (mock provider's base dir). Default `stacyvm-svc-`. */
  dirPrefix?: string;
  /** Overrides of TEST_LIMITS. */
  limits?: Partial<SandboxLimits>;
  /** The store as the service sees it (default: the real store). */
  wrapStore?: (store: Store) => Store;
  /** The local worker client as the service sees it (default: the runtime). */
  wrapWorker?: (runtime: WorkerRuntime) => WorkerClient;
  /** The service's logger (default: silent). */
  logger?: Logger;
  /** The service's event bus (default: a new one on the system clock). */
  events?: EventBus;
}

export interface ServiceRig {
  /** Temp dir, the mock provider's base dir. */
  dir: string;
  /** The real store, unwrapped. */
  store: Store;
  runtime: WorkerRuntime;
  sandboxes: SandboxService;
  /** Drains the service, stops the runtime, closes the store, removes the dir. */
  close(): Promise<void>;
}

export async function startServiceRig(options: ServiceRigOptions = {}): Promise<ServiceRig> {
  const dir = await mkdtemp(join(tmpdir(), options.dirPrefix ?? 'stacyvm-svc-'));
  const store = await createSqliteStore({ path: ':memory:' });
  await store.migrate();
  const runtime = new WorkerRuntime({
    workerId: 'local',
    providers: [new MockProvider({ baseDir: dir })],
    defaultProvider: 'mock',
    logger: silentLogger,
  });
  await runtime.start();
  const worker: WorkerClient = options.wrapWorker?.(runtime) ?? runtime;
  const sandboxes = new SandboxService({
    store: options.wrapStore?.(store) ?? store,
    workers: { client: (id) => (id === 'local' ? worker : undefined) },
    events: options.events ?? new EventBus({ clock: systemClock }),
    metrics: new Metrics(),
    clock: systemClock,
    logger: options.logger ?? silentLogger,
    limits: { ...TEST_LIMITS, ...options.limits },
    localWorkerId: 'local',
    defaultProvider: 'mock',
  });
  return {
    dir,
    store,
    runtime,
    sandboxes,
    close: async () => {
      await sandboxes.drain();
      await runtime.stop();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
