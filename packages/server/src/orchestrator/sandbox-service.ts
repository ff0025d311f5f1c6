import type { Clock } from '../domain/clock.js';
import { formatDurationMs } from '../domain/duration.js';
import {
  conflict,
  invalidField,
  isStacyError,
  notFound,
  StacyError,
  unavailable,
} from '../domain/errors.js';
import type { ExecEvent, ExecOutcome, ExecSpec } from '../domain/exec.js';
import type { FileEntry } from '../domain/files.js';
import type { Lease } from '../domain/lease.js';
import type { Logger } from '../domain/logger.js';
import type { SandboxRecord, SandboxState } from '../domain/sandbox.js';
import { LIVE_STATES, newSandboxId, statesLeadingTo, validateOwnerId } from '../domain/sandbox.js';
import { checkEnvMap, checkSetupCommands } from '../domain/template.js';
import { DEFAULT_STALE_AFTER_MS } from '../domain/worker.js';
import type { FileSource, ProviderStats, ReadFileResult } from '../providers/provider.js';
import type { RuntimeRef, WorkerClient, WorkerDirectory } from '../rpc/worker-client.js';
import { AUDIT_APPEND_BATCH_MAX } from '../store/store.js';
import type { AuditEntry, ExecLogEntry, Store } from '../store/store.js';
import type { EventBus } from './events.js';
import type { SandboxLimits } from './limits.js';
import type { Metrics } from './metrics.js';
import { Mutex } from './mutex.js';
import { SerialBatcher } from './serial-batcher.js';
import { requireMode, requirePath, resolveTtlMs } from './request-rules.js';
import type { PlacementDecision } from './scheduler.js';
import { placeSandbox } from './scheduler.js';

/** Who asked, for audit rows and logs. */
export interface CallContext {
  requestId: string;
  /** Caller identity for audit (`api`, `admin`, an owner id). */
  actor: string;
  /** Tenant scoping; empty = none. */
  tenantId?: string;
  signal?: AbortSignal;
}

export interface SpawnInput {
  image?: string;
  provider?: string;
  memoryMb?: number;
  vcpus?: number;
  ttl?: string;
  ownerId?: string;
  metadata?: Record<string, string>;
  ports?: number[];
  /** Default environment of every exec in the sandbox (stored on the record). */
  env?: Record<string, string>;
  /**
   * Shell commands run in order right after the runtime starts, before the
   * sandbox is `running`, each with the default exec timeout. The first that
   * fails (non-zero exit, timeout, error) fails the spawn, and the runtime
   * is destroyed.
   */
  setup?: string[];
}

export interface AdmissionDecision {
  allowed: boolean;
  queueable: boolean;
  reason?: string;
  message?: string;
  provider: string;
  active_sandboxes: number;
  max_sandboxes: number;
  active_owner_sandboxes?: number;
  max_owner_sandboxes?: number;
  max_ttl: string;
  selected_worker_id?: string;
  eligible_workers: string[];
  worker_reason: string;
  rejected_workers?: Record<string, string>;
}

export interface SandboxServiceOptions {
  store: Store;
  workers: WorkerDirectory;
  events: EventBus;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  limits: SandboxLimits;
  localWorkerId: string;
  /** Provider used when a request names none. */
  defaultProvider: string;
  /** Extra lease time beyond the sandbox's expiry, so teardown still holds it. */
  leaseGraceMs?: number;
  /** Output bytes per stream kept in exec log rows. */
  execLogMaxBytes?: number;
  staleAfterMs?: number;
}

/** Preview ports of a sandbox whose spawn names none. */
export const DEFAULT_PORTS: readonly number[] = [3000];
/** Bound on tearing down a runtime whose spawn failed after it started. */
const SPAWN_CLEANUP_TIMEOUT_MS = 60_000;
/** Characters of a failed setup command and of its output quoted in the error. */
const SETUP_QUOTE_CHARS = 200;
const SETUP_OUTPUT_TAIL_CHARS = 1000;
/** Exit code recorded for a streamed exec that ended before its command did (cancelled or cut). */
export const CANCELLED_EXIT_CODE = -1;
/** How long a GET waits for a remote worker's view of a sandbox. */
const REFRESH_TIMEOUT_MS = 5000;
/** Audit rows waiting for the store at most; more are dropped (and logged) while it is down. */
export const AUDIT_QUEUE_MAX = 10_000;

function leaseToken(lease: Lease): NonNullable<RuntimeRef['lease']> {
  return {
    resourceId: lease.resourceId,
    holderId: lease.holderId,
    generation: lease.generation,
    expiresAtMs: lease.expiresAtMs,
  };
}
export const MAX_METADATA_ENTRIES = 64;

/** A live record the caller may see; NOT_FOUND for unknown, destroyed or other tenants' ids. */
function visible(
  id: string,
  rec: SandboxRecord | undefined,
  ctx: Pick<CallContext, 'tenantId'> | undefined,
): SandboxRecord {
  if (rec === undefined || rec.state === 'destroyed') throw notFound(`sandbox not found: ${id}`);
  if (ctx?.tenantId !== undefined && ctx.tenantId !== '' && rec.tenantId !== ctx.tenantId) {
    throw notFound(`sandbox not found: ${id}`);
  }
  return rec;
}

/** The record when it is `running`; CONFLICT otherwise. */
function running(rec: SandboxRecord): SandboxRecord {
  if (rec.state !== 'running') {
    throw conflict(`sandbox ${rec.id} is ${rec.state}; operations need a running sandbox`);
  }
  return rec;
}

/** How a worker addresses the sandbox's runtime, with the owner's lease when there is one. */
function runtimeRef(rec: SandboxRecord, lease: Lease | undefined): RuntimeRef {
  const ref: RuntimeRef = {
    sandboxId: rec.id,
    provider: rec.provider,
    runtimeId: rec.vmId === '' ? rec.id : rec.vmId,
  };
  if (lease !== undefined) ref.lease = leaseToken(lease);
  return ref;
}

function quoteCommand(command: string): string {
  const oneLine = command.replace(/\s+/g, ' ').trim();
  return JSON.stringify(
    oneLine.length > SETUP_QUOTE_CHARS ? `${oneLine.slice(0, SETUP_QUOTE_CHARS)}…` : oneLine,
  );
}

function outputTail(text: string): string {
  const t = text.trim();
  return t.length > SETUP_OUTPUT_TAIL_CHARS ? `…${t.slice(-SETUP_OUTPUT_TAIL_CHARS)}` : t;
}

/** The exec spec with the sandbox's default environment under the request's own. */
function withSandboxEnv(rec: SandboxRecord, spec: ExecSpec): ExecSpec {
  if (rec.env === undefined || Object.keys(rec.env).length === 0) return spec;
  return { ...spec, env: { ...rec.env, ...spec.env } };
}

/**
 * The sandbox use cases: spawn, get, list, destroy, extend, prune, exec,
 * files, logs. Every runtime operation goes through a {@link WorkerClient},
 * whichever worker owns the sandbox.
 */
export class SandboxService {
  private readonly admissionLock = new Mutex();
  private readonly leaseGraceMs: number;
  private readonly execLogMaxBytes: number;

  constructor(private readonly o: SandboxServiceOptions) {
    this.leaseGraceMs = o.leaseGraceMs ?? 5 * 60 * 1000;
    this.execLogMaxBytes = o.execLogMaxBytes ?? 64 * 1024;
  }

  get limits(): SandboxLimits {
    return this.o.limits;
  }

  private now(): number {
    return this.o.clock.nowMs();
  }

  /**
   * The client of a sandbox's worker: known to this process, or looked up
   * in the registry (a worker that heartbeats to another control plane).
   * UNAVAILABLE, saying why, when it cannot be called from here.
   */
  private async client(workerId: string): Promise<WorkerClient> {
    const w = this.o.workers;
    const c = w.client(workerId) ?? (await w.resolve?.(workerId));
    if (c === undefined) {
      const why = w.whyUnreachable?.(workerId);
      throw unavailable(
        `worker ${workerId} is not reachable from this control plane${why === undefined ? '' : `: ${why}`}`,
      );
    }
    return c;
  }

  /**
   * Audit rows are written in the background: the caller's reply does not
   * wait on them, and {@link drain} waits for them at shutdown. They are
   * queued and written in the order of the calls, one insert at a time: the
   * rows that queue up while one is on its way go together in the next.
   * (Not in `pending`: the writer runs as long as rows keep coming, and
   * readers of exec logs must not wait for it.)
   */
  private audit(
    ctx: CallContext,
    action: string,
    sandboxId: string,
    status: AuditEntry['status'],
    detail: string,
    resource = '',
  ): void {
    const queued = this.audits.push({
      actor: ctx.actor,
      action,
      sandboxId,
      resource,
      status,
      detail,
      requestId: ctx.requestId,
      createdAtMs: this.now(),
    });
    if (queued) return;
    // The store has not taken rows for a long while: memory stays bounded.
    this.auditDropped += 1;
    if (this.auditDropped === 1 || this.auditDropped % 1000 === 0) {
      this.o.logger.error(
        { dropped: this.auditDropped, queued: this.audits.pending },
        'audit rows dropped: the store is not accepting them',
      );
    }
  }

  /** At most one statement's worth per write: a failed batch was then written not at all. */
  private readonly audits = new SerialBatcher<AuditEntry>({
    maxBatch: AUDIT_APPEND_BATCH_MAX,
    maxPending: AUDIT_QUEUE_MAX,
    write: (batch) => this.writeAudits(batch),
  });
  /** Rows refused because the queue was full (the store not answering). */
  private auditDropped = 0;

  private async writeAudits(batch: AuditEntry[]): Promise<void> {
    try {
      await this.o.store.audit.appendMany(batch);
    } catch (err) {
      if (batch.length === 1 || (isStacyError(err) && err.code === 'UNAVAILABLE')) {
        // The store is not answering: row by row would only wait longer.
        this.auditFailed(batch.length, batch[0], err);
        return;
      }
      // One by one, so a row the store refuses costs only itself.
      for (const e of batch) {
        await this.o.store.audit.append(e).catch((one: unknown) => this.auditFailed(1, e, one));
      }
    }
  }

  private auditFailed(rows: number, e: AuditEntry | undefined, err: unknown): void {
    this.o.logger.warn(
      { rows, action: e?.action, sandboxId: e?.sandboxId, err: (err as Error).message },
      'audit append failed',
    );
  }

  private readonly pending = new Set<Promise<unknown>>();

  /** Runs a best-effort write without blocking the caller; failures are logged, never thrown. */
  private background(p: Promise<unknown>, context: Record<string, unknown>, msg: string): void {
    const tracked = p.then(
      () => undefined,
      (err: unknown) => this.o.logger.warn({ ...context, err: (err as Error).message }, msg),
    );
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  /**
   * Runs `start` (which queues {@link background} writes) once the current
   * turn of the event loop is over, so the reply that is being written now
   * goes out first: SQLite writes run on the main thread. Tracked like a
   * background write, so {@link drain} waits for it.
   */
  private afterReply(start: () => void): void {
    const tracked = new Promise<void>((resolve) => {
      setImmediate(() => {
        try {
          start();
        } catch (err) {
          this.o.logger.warn({ err: (err as Error).message }, 'deferred write failed');
        }
        resolve();
      });
    });
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  /** Waits for background audit and exec-log writes (call before closing the store). */
  async drain(): Promise<void> {
    while (this.pending.size > 0 || this.audits.pending > 0) {
      await Promise.all([...this.pending, this.audits.idle()]);
    }
  }

  // ---- admission and spawn -------------------------------------------------

  private resolveProvider(name: string | undefined): string {
    return name === undefined || name === '' ? this.o.defaultProvider : name;
  }

  private async place(provider: string): Promise<{
    decision: PlacementDecision;
    activeByWorker: Map<string, number>;
    liveTotal: number;
  }> {
    // Counts, not rows: admission runs on every spawn and must stay cheap
    // however many sandboxes are alive. One statement reads both, fresh on
    // every spawn (never cached: other control planes place too).
    const { workers, sandboxesByWorker: activeByWorker } =
      await this.o.store.workers.listWithSandboxCounts({ states: [...LIVE_STATES] });
    let liveTotal = 0;
    for (const n of activeByWorker.values()) liveTotal += n;
    const decision = placeSandbox({
      workers,
      activeByWorker,
      provider,
      localWorkerId: this.o.localWorkerId,
      nowMs: this.now(),
      staleAfterMs: this.o.staleAfterMs ?? DEFAULT_STALE_AFTER_MS,
      unreachable: (w) => this.o.workers.unreachableReason?.(w),
    });
    return { decision, activeByWorker, liveTotal };
  }

  /** Decides whether a spawn would be admitted, without spawning. */
  async admission(input: SpawnInput): Promise<AdmissionDecision> {
    const provider = this.resolveProvider(input.provider);
    const limits = this.o.limits;
    const ownerId = this.ownerOf(input);
    const { decision, liveTotal } = await this.place(provider);
    const out: AdmissionDecision = {
      allowed: true,
      queueable: false,
      provider,
      active_sandboxes: liveTotal,
      max_sandboxes: limits.maxSandboxes,
      max_ttl: formatDurationMs(limits.maxTtlMs),
      eligible_workers: decision.eligible,
      worker_reason: decision.reason,
    };
    if (decision.workerId !== undefined) out.selected_worker_id = decision.workerId;
    if (Object.keys(decision.rejected).length > 0) out.rejected_workers = decision.rejected;
    const deny = (reason: string, message: string): AdmissionDecision => ({
      ...out,
      allowed: false,
      reason,
      message,
    });
    const reasons = Object.values(decision.rejected);
    if (
      decision.workerId === undefined &&
      reasons.length > 0 &&
      reasons.every((r) => r.startsWith('does not offer provider'))
    ) {
      throw notFound(`provider not found: ${provider}`);
    }
    try {
      resolveTtlMs(input.ttl, limits);
    } catch (err) {
      if (isStacyError(err) && err.code === 'RESOURCE_LIMIT') return deny('max_ttl', err.message);
      throw err;
    }
    if (ownerId !== '') {
      const ownerCount = await this.o.store.sandboxes.count({ states: [...LIVE_STATES], ownerId });
      out.active_owner_sandboxes = ownerCount;
      out.max_owner_sandboxes = limits.maxSandboxesPerOwner;
      if (limits.maxSandboxesPerOwner > 0 && ownerCount >= limits.maxSandboxesPerOwner) {
        return deny(
          'max_sandboxes_per_owner',
          `max sandboxes per owner reached (${limits.maxSandboxesPerOwner})`,
        );
      }
    }
    if (limits.maxSandboxes > 0 && liveTotal >= limits.maxSandboxes) {
      return deny('max_sandboxes', `max sandboxes reached (${limits.maxSandboxes})`);
    }
    if (decision.workerId === undefined) {
      return deny('worker_unavailable', `no eligible worker available for provider ${provider}`);
    }
    return out;
  }

  private ownerOf(input: SpawnInput): string {
    if (input.ownerId === undefined || input.ownerId === '') return '';
    const v = validateOwnerId(input.ownerId);
    if (typeof v !== 'string') throw invalidField('owner_id', v.problem);
    return v;
  }

  /** Creates a sandbox on the chosen worker and returns it `running`. */
  async spawn(input: SpawnInput, ctx: CallContext): Promise<SandboxRecord> {
    const limits = this.o.limits;
    const ttlMs = resolveTtlMs(input.ttl, limits);
    const ownerId = this.ownerOf(input);
    const provider = this.resolveProvider(input.provider);
    const metadata = input.metadata ?? {};
    if (Object.keys(metadata).length > MAX_METADATA_ENTRIES) {
      throw invalidField('metadata', `at most ${MAX_METADATA_ENTRIES} entries`);
    }
    const ports = [...new Set(input.ports ?? DEFAULT_PORTS)].sort((a, b) => a - b);
    const image =
      input.image === undefined || input.image === '' ? limits.defaultImage : input.image;
    const env = checkEnvMap('env', input.env ?? {});
    const setup = checkSetupCommands('setup', input.setup ?? []);

    // Admission and the insert happen under one lock so caps hold under
    // concurrency; the provider spawn itself runs outside it.
    const rec = await this.admissionLock.run(async () => {
      const decision = await this.admission({ ...input, provider });
      if (!decision.allowed) {
        const message = decision.message ?? 'spawn not admitted';
        // Only a TTL denial is about a request field; caps are about the system.
        throw new StacyError(
          'RESOURCE_LIMIT',
          message,
          decision.reason === 'max_ttl' ? { details: [{ field: 'ttl', problem: message }] } : {},
        );
      }
      const workerId = decision.selected_worker_id ?? this.o.localWorkerId;
      const now = this.now();
      const record: SandboxRecord = {
        id: newSandboxId(),
        state: 'creating',
        provider,
        image,
        memoryMb: input.memoryMb ?? limits.defaultMemoryMb,
        vcpus: input.vcpus ?? limits.defaultVcpus,
        ownerId,
        tenantId: ctx.tenantId ?? '',
        vmId: '',
        workerId,
        metadata,
        ports,
        ...(Object.keys(env).length > 0 ? { env } : {}),
        createdAtMs: now,
        updatedAtMs: now,
        expiresAtMs: now + ttlMs,
      };
      await this.o.store.sandboxes.insert(record);
      return record;
    });

    let lease: Lease | undefined;
    /** Set once the worker has a runtime: a later failure must tear it down. */
    let started: RuntimeRef | undefined;
    try {
      const acquired = await this.o.store.leases.acquire({
        resourceId: rec.id,
        resourceType: 'sandbox',
        holderId: rec.workerId,
        ttlMs: ttlMs + this.leaseGraceMs,
        nowMs: this.now(),
      });
      lease = acquired;
      const result = await this.o.metrics.time('spawn', provider, async () =>
        (await this.client(rec.workerId)).spawn(
          {
            sandboxId: rec.id,
            provider,
            image: rec.image,
            memoryMb: rec.memoryMb,
            vcpus: rec.vcpus,
            ownerId: rec.ownerId,
            metadata: rec.metadata,
            ports: rec.ports,
            lease: leaseToken(acquired),
          },
          ctx.signal === undefined ? {} : { signal: ctx.signal },
        ),
      );
      started = {
        sandboxId: rec.id,
        provider: result.provider,
        runtimeId: result.runtimeId,
        lease: leaseToken(acquired),
      };
      if (setup.length > 0) await this.runSetup(rec, started, setup, ctx);
      const running = await this.o.store.sandboxes.transition(
        rec.id,
        ['creating'],
        'running',
        { vmId: result.runtimeId, provider: result.provider },
        this.now(),
      );
      if (running === undefined) throw conflict(`sandbox ${rec.id} changed state during spawn`);
      this.o.events.publish('sandbox.created', rec.id, {
        provider,
        image: rec.image,
        worker_id: rec.workerId,
      });
      this.o.events.publish('sandbox.running', rec.id);
      this.audit(ctx, 'sandbox.spawn', rec.id, 'success', `state=running worker=${rec.workerId}`);
      this.o.logger.info(
        { sandbox_id: rec.id, provider, worker_id: rec.workerId, request_id: ctx.requestId },
        'sandbox spawned',
      );
      return running;
    } catch (err) {
      if (started !== undefined && !(await this.teardownFailedSpawn(rec, started))) {
        // The runtime could not be removed: keep the record (and its lease)
        // in `error`, pointing at the runtime, so a destroy or the reaper
        // retries the teardown; nothing is left behind unseen.
        await this.o.store.sandboxes.transition(
          rec.id,
          ['creating'],
          'error',
          { vmId: started.runtimeId, provider: started.provider },
          this.now(),
        );
        this.o.events.publish('sandbox.error', rec.id, {
          operation: 'spawn',
          provider,
          error: (err as Error).message,
        });
        this.audit(ctx, 'sandbox.spawn', rec.id, 'failure', (err as Error).message);
        throw err;
      }
      await this.o.store.sandboxes.transition(rec.id, ['creating'], 'destroyed', {}, this.now());
      if (lease !== undefined) {
        await this.o.store.leases
          .release(
            { resourceId: rec.id, holderId: lease.holderId, generation: lease.generation },
            this.now(),
          )
          .catch(() => false);
      }
      this.o.events.publish('sandbox.error', rec.id, {
        operation: 'spawn',
        provider,
        error: (err as Error).message,
      });
      this.audit(ctx, 'sandbox.spawn', rec.id, 'failure', (err as Error).message);
      throw err;
    }
  }

  /**
   * Runs setup commands in order on a started runtime, each recorded in the
   * exec log. Throws on the first failure, naming the command.
   */
  private async runSetup(
    rec: SandboxRecord,
    ref: RuntimeRef,
    setup: readonly string[],
    ctx: CallContext,
  ): Promise<void> {
    const limits = this.o.limits;
    const timeoutMs =
      limits.defaultExecTimeoutMs > 0 ? limits.defaultExecTimeoutMs : limits.maxExecTimeoutMs;
    for (const [index, command] of setup.entries()) {
      const spec: ExecSpec = {
        command,
        args: [],
        mode: 'shell',
        env: rec.env ?? {},
        workdir: '',
        timeoutMs,
      };
      const which = `setup command ${index + 1} of ${setup.length} (${quoteCommand(command)})`;
      const field = `setup[${index}]`;
      this.o.events.publish('exec.started', rec.id, {
        mode: 'shell',
        streamed: false,
        setup: index,
      });
      let outcome: ExecOutcome;
      try {
        outcome = await this.o.metrics.time('exec', rec.provider, async () =>
          (await this.client(rec.workerId)).exec(ref, spec, this.opts(ctx)),
        );
      } catch (err) {
        this.o.events.publish('exec.failed', rec.id, {
          error: (err as Error).message,
          setup: index,
        });
        this.audit(ctx, 'exec', rec.id, 'failure', `setup=${index} ${(err as Error).message}`);
        const cause = isStacyError(err) ? err : undefined;
        const problem = `could not run: ${(err as Error).message}`;
        throw new StacyError(cause?.code ?? 'INTERNAL_ERROR', `spawn failed: ${which} ${problem}`, {
          cause: err,
          details: [{ field, problem }],
        });
      }
      this.recordExec(rec, spec, outcome, false, ctx);
      if (outcome.timedOut) {
        const problem = `timed out after ${formatDurationMs(timeoutMs)}`;
        throw new StacyError('TIMEOUT', `spawn failed: ${which} ${problem}`, {
          details: [{ field, problem }],
        });
      }
      if (outcome.exitCode !== 0) {
        const tail = outputTail(outcome.stderr) || outputTail(outcome.stdout);
        const problem = `exited with code ${outcome.exitCode}${tail === '' ? '' : `: ${tail}`}`;
        throw new StacyError('BAD_REQUEST', `spawn failed: ${which} ${problem}`, {
          details: [{ field, problem }],
        });
      }
    }
  }

  /**
   * Destroys the runtime of a spawn that failed after the worker started it.
   * True when it is gone; false when the worker could not remove it.
   */
  private async teardownFailedSpawn(rec: SandboxRecord, ref: RuntimeRef): Promise<boolean> {
    try {
      // Not the caller's signal: a client that went away must not leave the runtime behind.
      await (
        await this.client(rec.workerId)
      ).destroy(ref, {
        signal: AbortSignal.timeout(SPAWN_CLEANUP_TIMEOUT_MS),
      });
      return true;
    } catch (err) {
      if (isStacyError(err) && err.code === 'NOT_FOUND') return true;
      this.o.logger.warn(
        { sandbox_id: rec.id, worker_id: rec.workerId, err: (err as Error).message },
        'could not remove the runtime of a failed spawn; record kept in state error',
      );
      return false;
    }
  }

  // ---- reads -------------------------------------------------------------

  /** A live sandbox; NOT_FOUND for unknown, destroyed or other tenants' ids. */
  async get(id: string, ctx?: Pick<CallContext, 'tenantId'>): Promise<SandboxRecord> {
    return visible(id, await this.o.store.sandboxes.get(id), ctx);
  }

  list(ctx?: Pick<CallContext, 'tenantId'>): Promise<SandboxRecord[]> {
    const tenant = ctx?.tenantId;
    return this.o.store.sandboxes.list(
      tenant === undefined || tenant === '' ? {} : { tenantId: tenant },
    );
  }

  private async leaseFor(rec: SandboxRecord): Promise<Lease | undefined> {
    const lease = await this.o.store.leases.get(rec.id);
    return lease !== undefined && lease.holderId === rec.workerId ? lease : undefined;
  }

  /**
   * The owner's lease, taken again (next generation) when it lapsed or was
   * released, e.g. by the liveness sweep for an expired sandbox whose worker
   * has since come back: the worker checks it, so teardown needs a valid one.
   */
  private async liveLease(rec: SandboxRecord): Promise<Lease | undefined> {
    return this.keepLease(rec, await this.leaseFor(rec));
  }

  /** `held` (the owner's lease as read) while unexpired, else the lease taken again. */
  private async keepLease(rec: SandboxRecord, held: Lease | undefined): Promise<Lease | undefined> {
    const now = this.now();
    if (held !== undefined && held.expiresAtMs > now) return held;
    try {
      return await this.o.store.leases.acquire({
        resourceId: rec.id,
        resourceType: 'sandbox',
        holderId: rec.workerId,
        ttlMs: Math.max(rec.expiresAtMs - now, 0) + this.leaseGraceMs,
        nowMs: now,
      });
    } catch (err) {
      // Held by someone else: leave it to them; the worker will refuse us.
      this.o.logger.warn(
        { sandbox_id: rec.id, err: (err as Error).message },
        'lease could not be re-acquired',
      );
      return undefined;
    }
  }

  private async refOf(rec: SandboxRecord): Promise<RuntimeRef> {
    return runtimeRef(rec, await this.liveLease(rec));
  }

  /**
   * A sandbox as its worker sees it now. For a sandbox on a remote worker the
   * worker is asked (bounded wait); a runtime that is gone turns the record
   * `destroyed` and the answer 404. An unreachable worker leaves the stored
   * record as it is: the liveness sweep judges workers, not one slow call.
   */
  async refresh(id: string, ctx: CallContext): Promise<SandboxRecord> {
    const rec = await this.get(id, ctx);
    if (rec.workerId === this.o.localWorkerId || rec.state !== 'running') return rec;
    const w = this.o.workers;
    const client = w.client(rec.workerId) ?? (await w.resolve?.(rec.workerId));
    if (client === undefined) return rec;
    const ref = await this.refOf(rec);
    try {
      await client.status(ref, { signal: AbortSignal.timeout(REFRESH_TIMEOUT_MS) });
      return rec;
    } catch (err) {
      if (isStacyError(err) && err.code === 'NOT_FOUND') {
        throw await this.checkRuntimeGone(rec, ref, err);
      }
      this.o.logger.warn(
        { sandbox_id: id, worker_id: rec.workerId, err: (err as Error).message },
        'status refresh from the worker failed; answering from the store',
      );
      return rec;
    }
  }

  /** A sandbox that can take runtime operations right now. */
  private async usable(id: string, ctx: CallContext): Promise<SandboxRecord> {
    return running(await this.get(id, ctx));
  }

  /**
   * {@link usable} and {@link refOf} together, for the exec hot path: the
   * record and its lease come from one joined store read (a second write
   * happens only when the lease has to be taken again).
   */
  private async usableRef(
    id: string,
    ctx: CallContext,
  ): Promise<{ rec: SandboxRecord; ref: RuntimeRef }> {
    const got = await this.o.store.sandboxes.getWithLease(id);
    const rec = running(visible(id, got?.sandbox, ctx));
    const lease = got?.lease;
    const held = lease !== undefined && lease.holderId === rec.workerId ? lease : undefined;
    return { rec, ref: runtimeRef(rec, await this.keepLease(rec, held)) };
  }

  // ---- destroy, extend, prune --------------------------------------------

  /** Destroys a live sandbox. A second destroy, or an unknown id, is NOT_FOUND. */
  async destroy(id: string, ctx: CallContext, reason = 'api'): Promise<void> {
    // The record and its lease in one read; the lease is used (or taken
    // again) once the record is marked.
    const got = await this.o.store.sandboxes.getWithLease(id);
    const rec = visible(id, got?.sandbox, ctx);
    // A worker this control plane cannot call is refused before the record
    // changes, so the sandbox stays as it was for a control plane that can.
    const client = await this.client(rec.workerId);
    const from = statesLeadingTo('destroying');
    const marked = await this.o.store.sandboxes.transition(id, from, 'destroying', {}, this.now());
    if (marked === undefined) {
      const again = await this.o.store.sandboxes.get(id);
      if (again === undefined || again.state === 'destroyed')
        throw notFound(`sandbox not found: ${id}`);
      throw conflict(`sandbox ${id} is already being destroyed`);
    }
    const read = got?.lease;
    const held = read !== undefined && read.holderId === rec.workerId ? read : undefined;
    const ref = runtimeRef(rec, await this.keepLease(rec, held));
    try {
      await this.o.metrics.time('destroy', rec.provider, () =>
        client.destroy(ref, ctx.signal === undefined ? {} : { signal: ctx.signal }),
      );
    } catch (err) {
      await this.o.store.sandboxes.transition(id, ['destroying'], 'error', {}, this.now());
      this.o.events.publish('sandbox.error', id, {
        operation: 'destroy',
        provider: rec.provider,
        error: (err as Error).message,
      });
      this.audit(ctx, 'sandbox.destroy', id, 'failure', (err as Error).message);
      throw err;
    }
    await this.o.store.sandboxes.transition(id, ['destroying'], 'destroyed', {}, this.now());
    if (ref.lease !== undefined) await this.o.store.leases.release(ref.lease, this.now());
    this.o.events.publish('sandbox.destroyed', id, { reason });
    this.audit(ctx, 'sandbox.destroy', id, 'success', `reason=${reason}`);
    this.o.logger.info({ sandbox_id: id, reason, request_id: ctx.requestId }, 'sandbox destroyed');
  }

  /** Sets the expiry to now + ttl (bounded by max_ttl) and renews the lease to match. */
  async extend(id: string, ttl: string | undefined, ctx: CallContext): Promise<SandboxRecord> {
    if (ttl === undefined || ttl === '') throw invalidField('ttl', 'ttl is required');
    const ttlMs = resolveTtlMs(ttl, this.o.limits);
    const rec = await this.get(id, ctx);
    const now = this.now();
    const updated = await this.o.store.sandboxes.update(
      id,
      ['running', 'unhealthy', 'creating'],
      { expiresAtMs: now + ttlMs },
      now,
    );
    if (updated === undefined)
      throw conflict(`sandbox ${id} is ${rec.state} and cannot be extended`);
    const lease = await this.liveLease(updated);
    if (lease !== undefined) {
      await this.o.store.leases.renew(
        { resourceId: id, holderId: lease.holderId, generation: lease.generation },
        ttlMs + this.leaseGraceMs,
        now,
      );
    }
    this.o.events.publish('sandbox.extended', id, {
      expires_at: new Date(now + ttlMs).toISOString(),
    });
    this.audit(ctx, 'sandbox.extend', id, 'success', `ttl=${ttl}`);
    return updated;
  }

  /** Destroys every live sandbox past its expiry; returns how many were destroyed. */
  async prune(ctx: CallContext, filter: { workerId?: string } = {}): Promise<number> {
    const expired = await this.o.store.sandboxes.list({
      states: ['creating', 'running', 'unhealthy', 'expired', 'error'],
      expiresBeforeMs: this.now(),
      ...(filter.workerId === undefined ? {} : { workerId: filter.workerId }),
    });
    let n = 0;
    for (const rec of expired) {
      if (!(await this.reachable(rec.workerId))) {
        // Another control plane's own worker that only it can call: left to it.
        this.o.logger.debug(
          { sandbox_id: rec.id, worker_id: rec.workerId },
          'prune skipped a sandbox on a worker this control plane cannot call',
        );
        continue;
      }
      try {
        await this.destroy(rec.id, { ...ctx, tenantId: '' }, 'ttl_expired');
        n += 1;
      } catch (err) {
        if (!(isStacyError(err) && err.code === 'NOT_FOUND')) {
          this.o.logger.warn({ sandbox_id: rec.id, err: (err as Error).message }, 'prune failed');
        }
      }
    }
    return n;
  }

  /** Destroys the expired sandboxes of this control plane's own worker only. */
  pruneOwn(ctx: CallContext): Promise<number> {
    return this.prune(ctx, { workerId: this.o.localWorkerId });
  }

  private async reachable(workerId: string): Promise<boolean> {
    const w = this.o.workers;
    return (w.client(workerId) ?? (await w.resolve?.(workerId))) !== undefined;
  }

  /**
   * Startup reconcile for one worker: records whose runtime is gone become
   * `destroyed` (lease released), so nothing counts against capacity forever.
   */
  async reconcileWorker(workerId: string, ctx: CallContext): Promise<number> {
    const live = await this.o.store.sandboxes.list({ states: [...LIVE_STATES], workerId });
    let n = 0;
    for (const rec of live) {
      const ref = await this.refOf(rec);
      try {
        await (await this.client(workerId)).status(ref);
      } catch (err) {
        if (!(isStacyError(err) && err.code === 'NOT_FOUND')) {
          this.o.logger.warn(
            { sandbox_id: rec.id, err: (err as Error).message },
            'reconcile status failed',
          );
          continue;
        }
        const done = await this.o.store.sandboxes.transition(
          rec.id,
          [...LIVE_STATES],
          'destroyed',
          {},
          this.now(),
        );
        if (done === undefined) continue;
        if (ref.lease !== undefined) await this.o.store.leases.release(ref.lease, this.now());
        this.o.events.publish('sandbox.destroyed', rec.id, { reason: 'runtime_missing' });
        this.audit(
          ctx,
          'sandbox.reconcile',
          rec.id,
          'success',
          'runtime missing; marked destroyed',
        );
        n += 1;
      }
    }
    return n;
  }

  /**
   * Startup reconcile of runtimes with no live record (a crash between the
   * provider spawn and the record, or a record destroyed while the backend
   * was down). `adopt` turns each into a running sandbox with default
   * resources and TTL; `remove` destroys it. Runtimes of destroyed records are
   * always removed: nothing is leaked.
   */
  async reconcileOrphans(
    workerId: string,
    provider: string,
    policy: 'adopt' | 'remove',
    ctx: CallContext,
  ): Promise<{ adopted: string[]; removed: string[] }> {
    const client = await this.client(workerId);
    const runtimes = await client.listRuntimes(provider);
    const adopted: string[] = [];
    const removed: string[] = [];
    for (const runtimeId of runtimes) {
      const rec = await this.o.store.sandboxes.get(runtimeId);
      if (rec !== undefined && rec.state !== 'destroyed') continue;
      const ref: RuntimeRef = { sandboxId: runtimeId, provider, runtimeId };
      if (rec !== undefined || policy === 'remove') {
        try {
          // The worker checks the lease on destroy: hold one for the removal.
          const lease = await this.o.store.leases.acquire({
            resourceId: runtimeId,
            resourceType: 'sandbox',
            holderId: workerId,
            ttlMs: this.leaseGraceMs,
            nowMs: this.now(),
          });
          ref.lease = leaseToken(lease);
          await client.destroy(ref);
          await this.o.store.leases.release(ref.lease, this.now()).catch(() => false);
          removed.push(runtimeId);
          this.audit(ctx, 'sandbox.reconcile', runtimeId, 'success', 'orphan runtime removed');
        } catch (err) {
          this.o.logger.warn(
            { sandbox_id: runtimeId, err: (err as Error).message },
            'orphan removal failed',
          );
        }
        continue;
      }
      const now = this.now();
      const limits = this.o.limits;
      await this.o.store.sandboxes.insert({
        id: runtimeId,
        state: 'running',
        provider,
        image: 'unknown',
        memoryMb: limits.defaultMemoryMb,
        vcpus: limits.defaultVcpus,
        ownerId: '',
        tenantId: '',
        vmId: '',
        workerId,
        metadata: { adopted: 'true' },
        ports: [...DEFAULT_PORTS],
        createdAtMs: now,
        updatedAtMs: now,
        expiresAtMs: now + limits.defaultTtlMs,
      });
      await this.o.store.leases.acquire({
        resourceId: runtimeId,
        resourceType: 'sandbox',
        holderId: workerId,
        ttlMs: limits.defaultTtlMs + this.leaseGraceMs,
        nowMs: now,
      });
      this.o.events.publish('sandbox.running', runtimeId, { reason: 'adopted_runtime', provider });
      this.audit(ctx, 'sandbox.reconcile', runtimeId, 'success', 'orphan runtime adopted');
      adopted.push(runtimeId);
    }
    return { adopted, removed };
  }

  // ---- exec ----------------------------------------------------------------

  private clip(s: string): { text: string; cut: boolean } {
    if (Buffer.byteLength(s) <= this.execLogMaxBytes) return { text: s, cut: false };
    return { text: Buffer.from(s).subarray(0, this.execLogMaxBytes).toString(), cut: true };
  }

  private recordExec(
    rec: SandboxRecord,
    spec: ExecSpec,
    outcome: ExecOutcome,
    streamed: boolean,
    ctx: CallContext,
    ended: 'exited' | 'cancelled' = 'exited',
  ): void {
    const out = this.clip(outcome.stdout);
    const errOut = this.clip(outcome.stderr);
    const createdAtMs = this.now();
    const data = {
      exit_code: outcome.exitCode,
      duration: formatDurationMs(outcome.durationMs),
      mode: spec.mode,
      streamed,
    };
    if (ended === 'exited') {
      this.o.events.publish(outcome.timedOut ? 'exec.timeout' : 'exec.completed', rec.id, data);
    }
    // The exec-log row and the audit row are written after the reply.
    this.afterReply(() => {
      this.background(
        this.o.store.execLogs.append({
          sandboxId: rec.id,
          command: spec.command,
          args: spec.args,
          mode: spec.mode,
          exitCode: outcome.exitCode,
          stdout: out.text,
          stderr: errOut.text,
          truncated: out.cut || errOut.cut,
          durationMs: outcome.durationMs,
          timedOut: outcome.timedOut,
          streamed,
          createdAtMs,
        }),
        { sandbox_id: rec.id },
        'exec log append failed',
      );
      this.audit(
        ctx,
        'exec',
        rec.id,
        outcome.timedOut || ended === 'cancelled' ? 'failure' : 'success',
        `exit=${outcome.exitCode} duration=${data.duration} mode=${spec.mode}${streamed ? ' stream=true' : ''}${outcome.timedOut ? ' timed_out=true' : ''}${ended === 'cancelled' ? ' cancelled=true' : ''}`,
      );
    });
  }

  /** Runs a command to completion. TIMEOUT when the deadline killed it. */
  async exec(id: string, request: ExecSpec, ctx: CallContext): Promise<ExecOutcome> {
    const { rec, ref } = await this.usableRef(id, ctx);
    const spec = withSandboxEnv(rec, request);
    this.o.events.publish('exec.started', id, { mode: spec.mode, streamed: false });
    let outcome: ExecOutcome;
    try {
      outcome = await this.o.metrics.time('exec', rec.provider, async () =>
        (await this.client(rec.workerId)).exec(
          ref,
          spec,
          ctx.signal === undefined ? {} : { signal: ctx.signal },
        ),
      );
    } catch (err) {
      this.o.events.publish('exec.failed', id, { error: (err as Error).message });
      this.audit(ctx, 'exec', id, 'failure', (err as Error).message);
      throw await this.checkRuntimeGone(rec, ref, err);
    }
    this.recordExec(rec, spec, outcome, false, ctx);
    if (outcome.timedOut) {
      throw new StacyError(
        'TIMEOUT',
        `exec timeout: ${id} (command killed after ${formatDurationMs(spec.timeoutMs)})`,
      );
    }
    return outcome;
  }

  /**
   * Starts a streamed exec. Pre-start problems (unknown sandbox, bad state)
   * throw before the first event; the stream records its exec log on exit.
   */
  async execStream(
    id: string,
    request: ExecSpec,
    ctx: CallContext,
  ): Promise<AsyncIterable<ExecEvent>> {
    const { rec, ref } = await this.usableRef(id, ctx);
    const spec = withSandboxEnv(rec, request);
    const source = (await this.client(rec.workerId)).execStream(
      ref,
      spec,
      ctx.signal === undefined ? {} : { signal: ctx.signal },
    );
    this.o.events.publish('exec.started', id, { mode: spec.mode, streamed: true });
    return this.recordedStream(rec, ref, spec, source, ctx);
  }

  private async *recordedStream(
    rec: SandboxRecord,
    ref: RuntimeRef,
    spec: ExecSpec,
    source: AsyncIterable<ExecEvent>,
    ctx: CallContext,
  ): AsyncGenerator<ExecEvent> {
    const started = performance.now();
    const kept = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
    const keptBytes = { stdout: 0, stderr: 0 };
    let finished = false;
    try {
      for await (const ev of source) {
        if (ev.type === 'exit') {
          finished = true;
          const outcome: ExecOutcome = {
            exitCode: ev.exitCode,
            timedOut: ev.timedOut,
            durationMs: ev.durationMs,
            stdout: Buffer.concat(kept.stdout).toString(),
            stderr: Buffer.concat(kept.stderr).toString(),
          };
          this.o.metrics.observe('exec_stream', rec.provider, performance.now() - started);
          this.recordExec(rec, spec, outcome, true, ctx);
        } else if (keptBytes[ev.type] < this.execLogMaxBytes) {
          const room = this.execLogMaxBytes - keptBytes[ev.type];
          const part = Buffer.from(ev.data.subarray(0, room));
          kept[ev.type].push(part);
          keptBytes[ev.type] += part.length;
        }
        yield ev;
      }
    } catch (err) {
      this.o.metrics.observe('exec_stream', rec.provider, performance.now() - started, err);
      this.o.events.publish('exec.failed', rec.id, {
        error: (err as Error).message,
        streamed: true,
      });
      throw await this.checkRuntimeGone(rec, ref, err);
    } finally {
      if (!finished) {
        this.o.events.publish('exec.failed', rec.id, {
          error: 'stream ended early',
          streamed: true,
        });
        // Cancelled (client gone, caller stopped reading) or cut: still an
        // exec that ran, so it gets its log row with the output seen so far.
        this.recordExec(
          rec,
          spec,
          {
            exitCode: CANCELLED_EXIT_CODE,
            timedOut: false,
            durationMs: performance.now() - started,
            stdout: Buffer.concat(kept.stdout).toString(),
            stderr: Buffer.concat(kept.stderr).toString(),
          },
          true,
          ctx,
          'cancelled',
        );
      }
    }
  }

  // ---- files, logs, stats ----------------------------------------------

  private opts(ctx: CallContext): { signal?: AbortSignal } {
    return ctx.signal === undefined ? {} : { signal: ctx.signal };
  }

  private async fileOp<T>(
    id: string,
    ctx: CallContext,
    action: string,
    resource: string,
    fn: (c: WorkerClient, ref: RuntimeRef, rec: SandboxRecord) => Promise<T>,
    detail: (r: T) => string = () => '',
  ): Promise<T> {
    const rec = await this.usable(id, ctx);
    const ref = await this.refOf(rec);
    try {
      const out = await this.o.metrics.time(action.replace('.', '_'), rec.provider, async () =>
        fn(await this.client(rec.workerId), ref, rec),
      );
      this.audit(ctx, action, id, 'success', detail(out), resource);
      return out;
    } catch (err) {
      this.audit(ctx, action, id, 'failure', (err as Error).message, resource);
      throw await this.checkRuntimeGone(rec, ref, err);
    }
  }

  async writeFile(
    id: string,
    rawPath: string | undefined,
    data: FileSource,
    rawMode: string | number | undefined,
    ctx: CallContext,
  ): Promise<void> {
    const path = requirePath('path', rawPath);
    const mode = requireMode('mode', rawMode, 0o644);
    await this.fileOp(
      id,
      ctx,
      'file.write',
      path,
      (c, ref) => c.writeFile(ref, path, data, mode, this.opts(ctx)),
      () => `mode=0${mode.toString(8)}`,
    );
    this.o.events.publish('file.written', id, { path });
  }

  async readFile(
    id: string,
    rawPath: string | undefined,
    ctx: CallContext,
  ): Promise<ReadFileResult> {
    const path = requirePath('path', rawPath);
    const out = await this.fileOp(
      id,
      ctx,
      'file.read',
      path,
      (c, ref) => c.readFile(ref, path, this.opts(ctx)),
      (r) => `bytes=${r.size}`,
    );
    this.o.events.publish('file.read', id, { path, size: out.size });
    return out;
  }

  listFiles(id: string, rawPath: string | undefined, ctx: CallContext): Promise<FileEntry[]> {
    const path = requirePath('path', rawPath === undefined || rawPath === '' ? '/' : rawPath);
    return this.fileOp(
      id,
      ctx,
      'file.list',
      path,
      (c, ref) => c.listFiles(ref, path, this.opts(ctx)),
      (r) => `count=${r.length}`,
    );
  }

  statFile(id: string, rawPath: string | undefined, ctx: CallContext): Promise<FileEntry> {
    const path = requirePath('path', rawPath);
    return this.fileOp(id, ctx, 'file.stat', path, (c, ref) =>
      c.statFile(ref, path, this.opts(ctx)),
    );
  }

  async deleteFile(
    id: string,
    rawPath: string | undefined,
    recursive: boolean,
    ctx: CallContext,
  ): Promise<void> {
    const path = requirePath('path', rawPath);
    await this.fileOp(
      id,
      ctx,
      'file.delete',
      path,
      (c, ref) => c.deleteFile(ref, path, recursive, this.opts(ctx)),
      () => `recursive=${recursive}`,
    );
    this.o.events.publish('file.deleted', id, { path, recursive });
  }

  async moveFile(
    id: string,
    rawFrom: string | undefined,
    rawTo: string | undefined,
    ctx: CallContext,
  ): Promise<void> {
    const from = requirePath('old_path', rawFrom);
    const to = requirePath('new_path', rawTo);
    await this.fileOp(id, ctx, 'file.move', `${from} -> ${to}`, (c, ref) =>
      c.moveFile(ref, from, to, this.opts(ctx)),
    );
    this.o.events.publish('file.moved', id, { old_path: from, new_path: to });
  }

  async chmodFile(
    id: string,
    rawPath: string | undefined,
    rawMode: string | number | undefined,
    ctx: CallContext,
  ): Promise<void> {
    const path = requirePath('path', rawPath);
    if (rawMode === undefined || rawMode === '') throw invalidField('mode', 'mode is required');
    const mode = requireMode('mode', rawMode, 0o644);
    await this.fileOp(
      id,
      ctx,
      'file.chmod',
      path,
      (c, ref) => c.chmodFile(ref, path, mode, this.opts(ctx)),
      () => `mode=0${mode.toString(8)}`,
    );
  }

  globFiles(id: string, rawPattern: string | undefined, ctx: CallContext): Promise<string[]> {
    if (rawPattern === undefined || rawPattern === '') {
      throw invalidField('pattern', 'pattern query parameter required');
    }
    const pattern = requirePath('pattern', rawPattern);
    return this.fileOp(
      id,
      ctx,
      'file.glob',
      pattern,
      (c, ref) => c.globFiles(ref, pattern, this.opts(ctx)),
      (r) => `count=${r.length}`,
    );
  }

  async logs(id: string, lines: number, ctx: CallContext): Promise<string[]> {
    const rec = await this.get(id, ctx);
    const ref = await this.refOf(rec);
    try {
      return await (await this.client(rec.workerId)).logs(ref, lines, this.opts(ctx));
    } catch (err) {
      throw await this.checkRuntimeGone(rec, ref, err);
    }
  }

  async stats(id: string, ctx: CallContext): Promise<ProviderStats | undefined> {
    const rec = await this.usable(id, ctx);
    const ref = await this.refOf(rec);
    try {
      return await (await this.client(rec.workerId)).stats(ref, this.opts(ctx));
    } catch (err) {
      throw await this.checkRuntimeGone(rec, ref, err);
    }
  }

  /**
   * After a NOT_FOUND from a runtime operation, asks the worker whether the
   * runtime itself is gone (removed behind our back). If it is, the record
   * becomes `destroyed` and its lease is released, so nothing lingers, and
   * the caller gets a 404 saying so; otherwise the original error stands
   * (e.g. a missing file).
   */
  private async checkRuntimeGone(
    rec: SandboxRecord,
    ref: RuntimeRef,
    err: unknown,
  ): Promise<unknown> {
    if (!(isStacyError(err) && err.code === 'NOT_FOUND')) return err;
    try {
      await (await this.client(rec.workerId)).status(ref);
      return err;
    } catch (statusErr) {
      if (!(isStacyError(statusErr) && statusErr.code === 'NOT_FOUND')) return err;
    }
    const done = await this.o.store.sandboxes.transition(
      rec.id,
      [...LIVE_STATES],
      'destroyed',
      {},
      this.now(),
    );
    if (done !== undefined) {
      if (ref.lease !== undefined)
        await this.o.store.leases.release(ref.lease, this.now()).catch(() => false);
      this.o.events.publish('sandbox.destroyed', rec.id, { reason: 'runtime_missing' });
      this.o.logger.warn(
        { sandbox_id: rec.id },
        'sandbox runtime vanished; record marked destroyed',
      );
    }
    return notFound(`sandbox not found: ${rec.id} (its runtime is gone)`);
  }

  async execLogs(id: string, limit: number, ctx: CallContext): Promise<ExecLogEntry[]> {
    await this.get(id, ctx);
    // Rows of execs that already answered are written after their reply: wait
    // for those (one round of deferred starts, then the writes they queued).
    await Promise.all([...this.pending]);
    await Promise.all([...this.pending]);
    return this.o.store.execLogs.list(id, limit);
  }

  /** Counts of live sandboxes by state, for metrics. */
  async countByState(): Promise<Record<SandboxState, number>> {
    const live = await this.o.store.sandboxes.list({ states: [...LIVE_STATES] });
    const out = Object.fromEntries(LIVE_STATES.map((s) => [s, 0])) as Record<SandboxState, number>;
    for (const s of live) out[s.state] += 1;
    return out;
  }
}
export type { ExecLogEntry } from '../store/store.js';
