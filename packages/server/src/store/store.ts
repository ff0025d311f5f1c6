import type { Lease, LeaseToken } from '../domain/lease.js';
import type { SandboxRecord, SandboxState } from '../domain/sandbox.js';
import type { TemplateRecord } from '../domain/template.js';
import type { WorkerRecord } from '../domain/worker.js';

export interface SandboxListFilter {
  /** Include `destroyed` rows (default false). */
  includeDestroyed?: boolean;
  workerId?: string;
  ownerId?: string;
  tenantId?: string;
  states?: SandboxState[];
  /** Only rows whose expiry is before this time. */
  expiresBeforeMs?: number;
  limit?: number;
}

/** Fields a transition may change along with the state. */
export interface SandboxPatch {
  expiresAtMs?: number;
  vmId?: string;
  workerId?: string;
  provider?: string;
}

/** A sandbox record with the lease row on it (see {@link SandboxStore.getWithLease}). */
export interface SandboxWithLease {
  sandbox: SandboxRecord;
  lease?: Lease;
}

export interface SandboxStore {
  /** Inserts a new record; CONFLICT if the id exists. */
  insert(rec: SandboxRecord): Promise<void>;
  /** The record, including destroyed ones; undefined when unknown. */
  get(id: string): Promise<SandboxRecord | undefined>;
  /**
   * The record (destroyed ones included) and the lease row on it, whoever
   * holds it, in one read; undefined when the record is unknown. `lease` is
   * absent when no lease row exists. What {@link get} plus
   * {@link LeaseStore.get} return, without the second round trip.
   */
  getWithLease(id: string): Promise<SandboxWithLease | undefined>;
  /** Newest first. */
  list(filter?: SandboxListFilter): Promise<SandboxRecord[]>;
  count(filter?: SandboxListFilter): Promise<number>;
  /** Counts per worker id of the records the filter selects (`limit` is ignored). */
  countByWorker(filter?: SandboxListFilter): Promise<Map<string, number>>;
  /**
   * Compare-and-set: moves the record to `to` only if its state is one of
   * `from`. Returns the updated record, or undefined when the state did not
   * match (or the record is unknown).
   */
  transition(
    id: string,
    from: readonly SandboxState[],
    to: SandboxState,
    patch?: SandboxPatch,
    nowMs?: number,
  ): Promise<SandboxRecord | undefined>;
  /** Updates fields of a record that is in one of `states`; returns it or undefined. */
  update(
    id: string,
    states: readonly SandboxState[],
    patch: SandboxPatch,
    nowMs?: number,
  ): Promise<SandboxRecord | undefined>;
}

export interface WorkerHeartbeat {
  id: string;
  hostname: string;
  status: string;
  providers: string[];
  capabilities: string[];
  capacity: Record<string, unknown>;
}

export interface WorkerStore {
  /** Inserts or updates by id; `createdAtMs` is kept on update. */
  upsertHeartbeat(hb: WorkerHeartbeat, nowMs: number): Promise<WorkerRecord>;
  get(id: string): Promise<WorkerRecord | undefined>;
  /** Ordered by id. */
  list(): Promise<WorkerRecord[]>;
  /**
   * What placement reads, in one statement: every worker (as {@link list})
   * and the counts per worker id of the sandboxes `filter` selects (as
   * {@link SandboxStore.countByWorker}, including ids no worker row has).
   */
  listWithSandboxCounts(
    filter?: SandboxListFilter,
  ): Promise<{ workers: WorkerRecord[]; sandboxesByWorker: Map<string, number> }>;
  /** True when a row was deleted. */
  delete(id: string): Promise<boolean>;
  /** Sets the status of a worker; true when the row existed. */
  setStatus(id: string, status: string, nowMs: number): Promise<boolean>;
}

export interface AcquireLeaseOptions {
  resourceId: string;
  resourceType: string;
  holderId: string;
  ttlMs: number;
  nowMs: number;
}

export interface LeaseStore {
  /**
   * Takes the lease when it is free, expired or already held by `holderId`;
   * the generation grows on every successful acquisition. CONFLICT when another
   * holder has it unexpired.
   */
  acquire(opts: AcquireLeaseOptions): Promise<Lease>;
  /** Extends a lease; CONFLICT when the token is stale, foreign or expired. */
  renew(token: LeaseToken, ttlMs: number, nowMs: number): Promise<Lease>;
  /** Frees a lease; false when the token no longer matches (nothing changed). */
  release(token: LeaseToken, nowMs: number): Promise<boolean>;
  get(resourceId: string): Promise<Lease | undefined>;
  list(): Promise<Lease[]>;
}

export interface ExecLogEntry {
  id?: number;
  sandboxId: string;
  command: string;
  args: string[];
  mode: string;
  exitCode: number;
  /** Output is kept up to a bound; `truncated` says when it was cut. */
  stdout: string;
  stderr: string;
  truncated: boolean;
  durationMs: number;
  timedOut: boolean;
  streamed: boolean;
  createdAtMs: number;
}

export interface ExecLogStore {
  append(entry: ExecLogEntry): Promise<number>;
  /** Newest first. */
  list(sandboxId: string, limit: number): Promise<ExecLogEntry[]>;
}

export interface AuditEntry {
  id?: number;
  actor: string;
  action: string;
  sandboxId: string;
  resource: string;
  status: 'success' | 'failure';
  detail: string;
  requestId: string;
  createdAtMs: number;
}

/** Entries one audit insert statement carries at most (see {@link AuditStore.appendMany}). */
export const AUDIT_APPEND_BATCH_MAX = 32;

export interface AuditFilter {
  sandboxId?: string;
  action?: string;
  limit?: number;
}

export interface AuditStore {
  append(entry: AuditEntry): Promise<number>;
  /**
   * Appends several entries with as few statements as it can (one per
   * {@link AUDIT_APPEND_BATCH_MAX} entries); their ids grow in the order
   * given. All or nothing per statement.
   */
  appendMany(entries: readonly AuditEntry[]): Promise<void>;
  /** Newest first. */
  list(filter?: AuditFilter): Promise<AuditEntry[]>;
}

export interface TemplateStore {
  /** Inserts a new template; CONFLICT if the name exists. */
  insert(rec: TemplateRecord): Promise<void>;
  /** The template, or undefined when unknown. */
  get(name: string): Promise<TemplateRecord | undefined>;
  /** Every template, ordered by name. */
  list(): Promise<TemplateRecord[]>;
  /**
   * Replaces every field of an existing template except `name`,
   * `createdAtMs` and `version`, which grows by one (atomically). Returns the
   * stored result, or undefined when the name is unknown.
   */
  replace(rec: TemplateRecord): Promise<TemplateRecord | undefined>;
  /** True when a row was deleted. */
  delete(name: string): Promise<boolean>;
}

/**
 * The control plane's durable state. Implementations: SQLite (embedded
 * default) and, later, Postgres; both pass the same store contract suite.
 */
export interface Store {
  readonly dialect: 'sqlite' | 'postgres';
  readonly sandboxes: SandboxStore;
  readonly workers: WorkerStore;
  readonly leases: LeaseStore;
  readonly execLogs: ExecLogStore;
  readonly audit: AuditStore;
  readonly templates: TemplateStore;
  /** Applies pending migrations; returns the versions applied. */
  migrate(): Promise<number[]>;
  /** Current schema version. */
  schemaVersion(): Promise<number>;
  /** Round-trip check for readiness. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
