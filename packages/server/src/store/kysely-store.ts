import { CompiledQuery, sql } from 'kysely';
import type {
  ColumnType,
  Expression,
  ExpressionBuilder,
  Generated,
  InferResult,
  Insertable,
  Kysely,
  Selectable,
  SqlBool,
  Updateable,
} from 'kysely';
import { systemClock } from '../domain/clock.js';
import type { Clock } from '../domain/clock.js';
import { StacyError, badRequest, conflict, internalError, unavailable } from '../domain/errors.js';
import type { Lease, LeaseToken } from '../domain/lease.js';
import { isSandboxState } from '../domain/sandbox.js';
import type { SandboxRecord, SandboxState } from '../domain/sandbox.js';
import type { TemplateRecord } from '../domain/template.js';
import type { WorkerRecord } from '../domain/worker.js';
import { readSchemaVersion, runMigrations } from './migrations.js';
import type { SchemaDialect } from './migrations.js';
import { AUDIT_APPEND_BATCH_MAX } from './store.js';
import type {
  AcquireLeaseOptions,
  AuditEntry,
  AuditFilter,
  AuditStore,
  ExecLogEntry,
  ExecLogStore,
  LeaseStore,
  SandboxListFilter,
  SandboxPatch,
  SandboxStore,
  SandboxWithLease,
  Store,
  TemplateStore,
  WorkerHeartbeat,
  WorkerStore,
} from './store.js';

// BIGINT columns come back as numbers from SQLite and as strings from
// Postgres, so every mapper converts with Number().
type Millis = ColumnType<number | string, number, number>;
type BigCount = ColumnType<number | string, number, number>;
/** 0/1 integer: portable across dialects (see migrations.ts). */
type Flag = ColumnType<number | string, number, number>;
type AutoId = ColumnType<number | string, never, never>;

/** Row of `sandboxes`. Row shapes are internal to the store layer. */
export interface SandboxesTable {
  id: string;
  state: string;
  provider: string;
  image: string;
  memory_mb: number;
  vcpus: number;
  owner_id: string;
  tenant_id: string;
  vm_id: string;
  worker_id: string;
  metadata: string;
  ports: string;
  /** JSON object; '{}' when none (migration 2). */
  env: ColumnType<string, string | undefined, string>;
  created_at: Millis;
  updated_at: Millis;
  expires_at: Millis;
}

/** Row of `workers`. */
export interface WorkersTable {
  id: string;
  hostname: string;
  status: string;
  providers: string;
  capabilities: string;
  capacity: string;
  last_heartbeat: Millis;
  created_at: Millis;
  updated_at: Millis;
}

/** Row of `leases`; released leases keep their row (holder '', expiry 0). */
export interface LeasesTable {
  resource_id: string;
  resource_type: string;
  holder_id: string;
  generation: BigCount;
  expires_at: Millis;
  created_at: Millis;
  updated_at: Millis;
}

/** Row of `exec_logs`. */
export interface ExecLogsTable {
  id: Generated<AutoId>;
  sandbox_id: string;
  command: string;
  args: string;
  mode: string;
  exit_code: number;
  stdout: string;
  stderr: string;
  truncated: Flag;
  duration_ms: Millis;
  timed_out: Flag;
  streamed: Flag;
  created_at: Millis;
}

/** Row of `audit_events`. */
export interface AuditEventsTable {
  id: Generated<AutoId>;
  actor: string;
  action: string;
  sandbox_id: string;
  resource: string;
  status: string;
  detail: string;
  request_id: string;
  created_at: Millis;
}

/** Row of `templates` (migration 2). */
export interface TemplatesTable {
  name: string;
  version: number;
  image: string;
  provider: string;
  description: string;
  memory_mb: number;
  cpu_cores: number;
  ttl_seconds: BigCount;
  env: string;
  setup: string;
  metadata: string;
  ports: string;
  created_at: Millis;
  updated_at: Millis;
}

/** The Kysely database type of the store schema. */
export interface StoreDatabase {
  sandboxes: SandboxesTable;
  workers: WorkersTable;
  leases: LeasesTable;
  exec_logs: ExecLogsTable;
  audit_events: AuditEventsTable;
  templates: TemplatesTable;
}

/**
 * How a dialect classifies a driver error, so one store can word it:
 * - `unique-violation`: a primary key or unique constraint refused a write;
 * - `busy`: a lock could not be had in time; the caller may try again;
 * - `retry`: the statement lost a serialization race and had no effect, so
 *   the store re-runs it (every store operation is safe to re-run then: each
 *   writes with one statement, and a follow-up read only words a refusal);
 * - `unavailable`: the database cannot be reached or refused the connection;
 * - `other`: anything else (a bug or a corrupt database).
 */
export type DriverErrorKind = 'unique-violation' | 'busy' | 'retry' | 'unavailable' | 'other';

/**
 * Everything that differs between SQL dialects, supplied by the dialect
 * folder (`sqlite/`, `postgres/`). Queries never branch on it.
 */
export interface StoreDialectAdapter extends SchemaDialect {
  readonly name: Store['dialect'];
  classifyError(err: unknown): DriverErrorKind;
  /**
   * Names the database in an UNAVAILABLE message, e.g.
   * `postgres database "stacyvm" on db:5432`. Never holds a secret.
   */
  readonly target?: string;
  /**
   * Removes secrets (a password) from a driver message. When set, the
   * driver's error is also replaced by a redacted copy as the cause, so
   * nothing that logs the cause can leak connection details.
   */
  readonly redact?: (text: string) => string;
}

/** Options of {@link KyselyStore}. */
export interface KyselyStoreOptions {
  /** Default time for operations that take an optional `nowMs`. */
  clock?: Clock;
}

/** Longest `detail` kept for an audit entry. */
export const AUDIT_DETAIL_MAX_CHARS = 2048;
/** Rows an audit or exec-log listing returns when no positive limit is given. */
export const DEFAULT_LIST_LIMIT = 100;
/** Upper bound on the rows one audit or exec-log listing returns. */
export const MAX_LIST_LIMIT = 1000;
/** Re-runs of an operation that lost a serialization race before it is reported busy. */
export const SERIALIZATION_RETRIES = 5;

type Run = <T>(
  op: string,
  fn: (db: Kysely<StoreDatabase>) => Promise<T>,
  onUnique?: () => StacyError,
) => Promise<T>;

function clampLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit) || limit <= 0) return DEFAULT_LIST_LIMIT;
  return Math.min(Math.floor(limit), MAX_LIST_LIMIT);
}

function parseJson(column: string, text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw internalError(`stored ${column} is not valid JSON`, err);
  }
}

function jsonObject(column: string, text: string): Record<string, unknown> {
  const v = parseJson(column, text);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw internalError(`stored ${column} is not a JSON object`);
  }
  return v as Record<string, unknown>;
}

function jsonStringMap(column: string, text: string): Record<string, string> {
  const obj = jsonObject(column, text);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj)) out[k] = typeof v === 'string' ? v : String(v);
  return out;
}

function jsonArray<T>(column: string, text: string, check: (v: unknown) => v is T): T[] {
  const v = parseJson(column, text);
  if (!Array.isArray(v) || !v.every(check)) {
    throw internalError(`stored ${column} is not the expected JSON array`);
  }
  return v;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isNumber = (v: unknown): v is number => typeof v === 'number';
const flag = (v: number | string): boolean => Number(v) !== 0;

function toSandbox(row: Selectable<SandboxesTable>): SandboxRecord {
  if (!isSandboxState(row.state)) {
    throw internalError(`sandbox ${row.id} has an unknown stored state "${row.state}"`);
  }
  const env = jsonStringMap('sandboxes.env', row.env);
  return {
    ...(Object.keys(env).length > 0 ? { env } : {}),
    id: row.id,
    state: row.state,
    provider: row.provider,
    image: row.image,
    memoryMb: Number(row.memory_mb),
    vcpus: Number(row.vcpus),
    ownerId: row.owner_id,
    tenantId: row.tenant_id,
    vmId: row.vm_id,
    workerId: row.worker_id,
    metadata: jsonStringMap('sandboxes.metadata', row.metadata),
    ports: jsonArray('sandboxes.ports', row.ports, isNumber),
    createdAtMs: Number(row.created_at),
    updatedAtMs: Number(row.updated_at),
    expiresAtMs: Number(row.expires_at),
  };
}

function toWorker(row: Selectable<WorkersTable>): WorkerRecord {
  return {
    id: row.id,
    hostname: row.hostname,
    status: row.status,
    providers: jsonArray('workers.providers', row.providers, isString),
    capabilities: jsonArray('workers.capabilities', row.capabilities, isString),
    capacity: jsonObject('workers.capacity', row.capacity),
    lastHeartbeatMs: Number(row.last_heartbeat),
    createdAtMs: Number(row.created_at),
    updatedAtMs: Number(row.updated_at),
  };
}

function toLease(row: Selectable<LeasesTable>): Lease {
  return {
    resourceId: row.resource_id,
    resourceType: row.resource_type,
    holderId: row.holder_id,
    generation: Number(row.generation),
    expiresAtMs: Number(row.expires_at),
  };
}

function toExecLog(row: Selectable<ExecLogsTable>): ExecLogEntry {
  return {
    id: Number(row.id),
    sandboxId: row.sandbox_id,
    command: row.command,
    args: jsonArray('exec_logs.args', row.args, isString),
    mode: row.mode,
    exitCode: Number(row.exit_code),
    stdout: row.stdout,
    stderr: row.stderr,
    truncated: flag(row.truncated),
    durationMs: Number(row.duration_ms),
    timedOut: flag(row.timed_out),
    streamed: flag(row.streamed),
    createdAtMs: Number(row.created_at),
  };
}

function toAudit(row: Selectable<AuditEventsTable>): AuditEntry {
  return {
    id: Number(row.id),
    actor: row.actor,
    action: row.action,
    sandboxId: row.sandbox_id,
    resource: row.resource,
    status: row.status === 'success' ? 'success' : 'failure',
    detail: row.detail,
    requestId: row.request_id,
    createdAtMs: Number(row.created_at),
  };
}

function auditRow(e: AuditEntry): Insertable<AuditEventsTable> {
  return {
    actor: e.actor,
    action: e.action,
    sandbox_id: e.sandboxId,
    resource: storableText(e.resource),
    status: e.status,
    detail: storableText(e.detail.slice(0, AUDIT_DETAIL_MAX_CHARS)),
    request_id: e.requestId,
    created_at: e.createdAtMs,
  };
}

function sandboxRow(rec: SandboxRecord): Insertable<SandboxesTable> {
  return {
    id: rec.id,
    state: rec.state,
    provider: rec.provider,
    image: rec.image,
    memory_mb: rec.memoryMb,
    vcpus: rec.vcpus,
    owner_id: rec.ownerId,
    tenant_id: rec.tenantId,
    vm_id: rec.vmId,
    worker_id: rec.workerId,
    metadata: JSON.stringify(rec.metadata),
    ports: JSON.stringify(rec.ports),
    env: JSON.stringify(rec.env ?? {}),
    created_at: rec.createdAtMs,
    updated_at: rec.updatedAtMs,
    expires_at: rec.expiresAtMs,
  };
}

function toTemplate(row: Selectable<TemplatesTable>): TemplateRecord {
  return {
    name: row.name,
    version: Number(row.version),
    image: row.image,
    provider: row.provider,
    description: row.description,
    memoryMb: Number(row.memory_mb),
    vcpus: Number(row.cpu_cores),
    ttlSeconds: Number(row.ttl_seconds),
    env: jsonStringMap('templates.env', row.env),
    setup: jsonArray('templates.setup', row.setup, isString),
    metadata: jsonStringMap('templates.metadata', row.metadata),
    ports: jsonArray('templates.ports', row.ports, isNumber),
    createdAtMs: Number(row.created_at),
    updatedAtMs: Number(row.updated_at),
  };
}

/** The columns a replacement rewrites (not name, version, created_at). */
function templateContent(rec: TemplateRecord) {
  return {
    image: rec.image,
    provider: rec.provider,
    description: storableText(rec.description),
    memory_mb: rec.memoryMb,
    cpu_cores: rec.vcpus,
    ttl_seconds: rec.ttlSeconds,
    env: JSON.stringify(rec.env),
    setup: JSON.stringify(rec.setup),
    metadata: JSON.stringify(rec.metadata),
    ports: JSON.stringify(rec.ports),
    updated_at: rec.updatedAtMs,
  };
}

function patchColumns(patch: SandboxPatch | undefined): Updateable<SandboxesTable> {
  const set: Updateable<SandboxesTable> = {};
  if (patch === undefined) return set;
  if (patch.expiresAtMs !== undefined) set.expires_at = patch.expiresAtMs;
  if (patch.vmId !== undefined) set.vm_id = patch.vmId;
  if (patch.workerId !== undefined) set.worker_id = patch.workerId;
  if (patch.provider !== undefined) set.provider = patch.provider;
  return set;
}

function sandboxWhere(
  eb: ExpressionBuilder<StoreDatabase, 'sandboxes'>,
  f: SandboxListFilter,
): Expression<SqlBool> {
  const conds: Expression<SqlBool>[] = [];
  // Explicit states are honoured as given (asking for 'destroyed' gets them).
  if (f.states !== undefined) conds.push(eb('state', 'in', f.states));
  else if (f.includeDestroyed !== true) conds.push(eb('state', '!=', 'destroyed'));
  if (f.workerId !== undefined) conds.push(eb('worker_id', '=', f.workerId));
  if (f.ownerId !== undefined) conds.push(eb('owner_id', '=', f.ownerId));
  if (f.tenantId !== undefined) conds.push(eb('tenant_id', '=', f.tenantId));
  if (f.expiresBeforeMs !== undefined) conds.push(eb('expires_at', '<', f.expiresBeforeMs));
  return eb.and(conds);
}

function requireText(field: string, value: string): void {
  if (value === '') throw badRequest(`${field} must not be empty`);
}

function requirePositive(field: string, value: number): void {
  if (!Number.isFinite(value) || value <= 0) throw badRequest(`${field} must be positive`);
}

const iso = (ms: number): string => new Date(ms).toISOString();

/**
 * Postgres TEXT cannot hold U+0000, which binary command output can contain;
 * it is stored as U+FFFD on every dialect so both keep the same data.
 */
const storableText = (s: string): string => (s.includes('\0') ? s.replaceAll('\0', '\uFFFD') : s);

function errorMessage(err: unknown): string {
  if (err instanceof AggregateError && err.message === '') {
    // Node reports a refused dual-stack connect as an AggregateError without a message.
    const inner = err.errors.map((e) => errorMessage(e)).filter((m) => m !== '');
    if (inner.length > 0) return [...new Set(inner)].join('; ');
  }
  return err instanceof Error ? err.message : String(err);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The joined sandbox + lease read of {@link SandboxStore.getWithLease}. */
function sandboxWithLeaseQuery(db: Kysely<StoreDatabase>, id: string) {
  return db
    .selectFrom('sandboxes')
    .leftJoin('leases', 'leases.resource_id', 'sandboxes.id')
    .selectAll('sandboxes')
    .select([
      'leases.resource_id as lease_resource_id',
      'leases.resource_type as lease_resource_type',
      'leases.holder_id as lease_holder_id',
      'leases.generation as lease_generation',
      'leases.expires_at as lease_expires_at',
    ])
    .where('sandboxes.id', '=', id);
}

type SandboxWithLeaseRow = InferResult<ReturnType<typeof sandboxWithLeaseQuery>>[number];

/** The SQL of {@link sandboxWithLeaseQuery}, whose one parameter is the sandbox id. */
function compileSandboxWithLease(db: Kysely<StoreDatabase>): string {
  const compiled = sandboxWithLeaseQuery(db, '').compile();
  if (compiled.parameters.length !== 1) {
    throw internalError('the sandbox-with-lease query must take exactly one parameter');
  }
  return compiled.sql;
}

class SqlSandboxStore implements SandboxStore {
  private withLeaseSql: string | undefined;

  constructor(
    private readonly run: Run,
    private readonly clock: Clock,
  ) {}

  insert(rec: SandboxRecord): Promise<void> {
    return this.run(
      'insert sandbox',
      async (db) => {
        await db.insertInto('sandboxes').values(sandboxRow(rec)).execute();
      },
      () => conflict(`sandbox ${rec.id} already exists`),
    );
  }

  get(id: string): Promise<SandboxRecord | undefined> {
    return this.run('get sandbox', async (db) => {
      const row = await db
        .selectFrom('sandboxes')
        .selectAll()
        .where('id', '=', id)
        .executeTakeFirst();
      return row === undefined ? undefined : toSandbox(row);
    });
  }

  getWithLease(id: string): Promise<SandboxWithLease | undefined> {
    return this.run('get sandbox with lease', async (db) => {
      // The SQL is built once: building and compiling this join costs
      // several times what running it does, and every exec reads it.
      this.withLeaseSql ??= compileSandboxWithLease(db);
      const { rows } = await db.executeQuery<SandboxWithLeaseRow>(
        CompiledQuery.raw(this.withLeaseSql, [id]),
      );
      const row = rows[0];
      if (row === undefined) return undefined;
      const got: SandboxWithLease = { sandbox: toSandbox(row) };
      // resource_id is the leases key: null only when the join found no row.
      if (row.lease_resource_id !== null) {
        got.lease = {
          resourceId: row.lease_resource_id,
          resourceType: row.lease_resource_type ?? '',
          holderId: row.lease_holder_id ?? '',
          generation: Number(row.lease_generation),
          expiresAtMs: Number(row.lease_expires_at),
        };
      }
      return got;
    });
  }

  list(filter: SandboxListFilter = {}): Promise<SandboxRecord[]> {
    if (filter.states?.length === 0) return Promise.resolve([]);
    return this.run('list sandboxes', async (db) => {
      let q = db
        .selectFrom('sandboxes')
        .selectAll()
        .where((eb) => sandboxWhere(eb, filter))
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc');
      if (filter.limit !== undefined && filter.limit > 0) q = q.limit(Math.floor(filter.limit));
      const rows = await q.execute();
      return rows.map(toSandbox);
    });
  }

  count(filter: SandboxListFilter = {}): Promise<number> {
    if (filter.states?.length === 0) return Promise.resolve(0);
    return this.run('count sandboxes', async (db) => {
      const row = await db
        .selectFrom('sandboxes')
        .select((eb) => eb.fn.countAll().as('n'))
        .where((eb) => sandboxWhere(eb, filter))
        .executeTakeFirstOrThrow();
      return Number(row.n);
    });
  }

  countByWorker(filter: SandboxListFilter = {}): Promise<Map<string, number>> {
    if (filter.states?.length === 0) return Promise.resolve(new Map<string, number>());
    return this.run('count sandboxes by worker', async (db) => {
      const rows = await db
        .selectFrom('sandboxes')
        .select(['worker_id', (eb) => eb.fn.countAll().as('n')])
        .where((eb) => sandboxWhere(eb, filter))
        .groupBy('worker_id')
        .execute();
      return new Map(rows.map((r) => [r.worker_id, Number(r.n)]));
    });
  }

  transition(
    id: string,
    from: readonly SandboxState[],
    to: SandboxState,
    patch?: SandboxPatch,
    nowMs?: number,
  ): Promise<SandboxRecord | undefined> {
    return this.compareAndSet('transition sandbox', id, from, {
      ...patchColumns(patch),
      state: to,
      updated_at: nowMs ?? this.clock.nowMs(),
    });
  }

  update(
    id: string,
    states: readonly SandboxState[],
    patch: SandboxPatch,
    nowMs?: number,
  ): Promise<SandboxRecord | undefined> {
    return this.compareAndSet('update sandbox', id, states, {
      ...patchColumns(patch),
      updated_at: nowMs ?? this.clock.nowMs(),
    });
  }

  // One statement, so concurrent callers cannot both see the old state.
  private compareAndSet(
    op: string,
    id: string,
    states: readonly SandboxState[],
    set: Updateable<SandboxesTable>,
  ): Promise<SandboxRecord | undefined> {
    if (states.length === 0) return Promise.resolve(undefined);
    return this.run(op, async (db) => {
      const row = await db
        .updateTable('sandboxes')
        .set(set)
        .where('id', '=', id)
        .where('state', 'in', states)
        .returningAll()
        .executeTakeFirst();
      return row === undefined ? undefined : toSandbox(row);
    });
  }
}

class SqlWorkerStore implements WorkerStore {
  constructor(private readonly run: Run) {}

  upsertHeartbeat(hb: WorkerHeartbeat, nowMs: number): Promise<WorkerRecord> {
    requireText('worker id', hb.id);
    return this.run('upsert worker heartbeat', async (db) => {
      const row = await db
        .insertInto('workers')
        .values({
          id: hb.id,
          hostname: hb.hostname,
          status: hb.status,
          providers: JSON.stringify(hb.providers),
          capabilities: JSON.stringify(hb.capabilities),
          capacity: JSON.stringify(hb.capacity),
          last_heartbeat: nowMs,
          created_at: nowMs,
          updated_at: nowMs,
        })
        .onConflict((oc) =>
          oc.column('id').doUpdateSet((eb) => ({
            hostname: eb.ref('excluded.hostname'),
            status: eb.ref('excluded.status'),
            providers: eb.ref('excluded.providers'),
            capabilities: eb.ref('excluded.capabilities'),
            capacity: eb.ref('excluded.capacity'),
            last_heartbeat: eb.ref('excluded.last_heartbeat'),
            updated_at: eb.ref('excluded.updated_at'),
          })),
        )
        .returningAll()
        .executeTakeFirstOrThrow();
      return toWorker(row);
    });
  }

  get(id: string): Promise<WorkerRecord | undefined> {
    return this.run('get worker', async (db) => {
      const row = await db
        .selectFrom('workers')
        .selectAll()
        .where('id', '=', id)
        .executeTakeFirst();
      return row === undefined ? undefined : toWorker(row);
    });
  }

  list(): Promise<WorkerRecord[]> {
    return this.run('list workers', async (db) => {
      const rows = await db.selectFrom('workers').selectAll().orderBy('id', 'asc').execute();
      return rows.map(toWorker);
    });
  }

  listWithSandboxCounts(
    filter: SandboxListFilter = {},
  ): Promise<{ workers: WorkerRecord[]; sandboxesByWorker: Map<string, number> }> {
    if (filter.states?.length === 0) {
      return this.list().then((workers) => ({ workers, sandboxesByWorker: new Map() }));
    }
    return this.run('list workers with sandbox counts', async (db) => {
      const counts = db
        .selectFrom('sandboxes')
        .select(['worker_id', (eb) => eb.fn.countAll().as('n')])
        .where((eb) => sandboxWhere(eb, filter))
        .groupBy('worker_id')
        .as('c');
      // A full join: workers without sandboxes, and counts of ids no worker row has.
      const rows = await db
        .selectFrom('workers')
        .fullJoin(counts, 'c.worker_id', 'workers.id')
        .selectAll('workers')
        .select(['c.worker_id as counted_worker_id', 'c.n as counted'])
        .execute();
      const workers: WorkerRecord[] = [];
      const sandboxesByWorker = new Map<string, number>();
      for (const row of rows) {
        const { counted_worker_id: countedId, counted, ...worker } = row;
        if (countedId !== null) sandboxesByWorker.set(countedId, Number(counted));
        if (worker.id !== null) workers.push(toWorker(worker as Selectable<WorkersTable>));
      }
      workers.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      return { workers, sandboxesByWorker };
    });
  }

  delete(id: string): Promise<boolean> {
    return this.run('delete worker', async (db) => {
      const res = await db.deleteFrom('workers').where('id', '=', id).executeTakeFirst();
      return Number(res.numDeletedRows) > 0;
    });
  }

  setStatus(id: string, status: string, nowMs: number): Promise<boolean> {
    return this.run('set worker status', async (db) => {
      const res = await db
        .updateTable('workers')
        .set({ status, updated_at: nowMs })
        .where('id', '=', id)
        .executeTakeFirst();
      return Number(res.numUpdatedRows) > 0;
    });
  }
}

class SqlLeaseStore implements LeaseStore {
  constructor(private readonly run: Run) {}

  acquire(opts: AcquireLeaseOptions): Promise<Lease> {
    requireText('lease resource id', opts.resourceId);
    requireText('lease holder id', opts.holderId);
    requirePositive('lease ttl', opts.ttlMs);
    const { resourceId, holderId, nowMs } = opts;
    return this.run('acquire lease', async (db) => {
      // One upsert statement: the database decides atomically whether the
      // existing row may be taken, so two acquirers can never both win.
      const row = await db
        .insertInto('leases')
        .values({
          resource_id: resourceId,
          resource_type: opts.resourceType,
          holder_id: holderId,
          generation: 1,
          expires_at: nowMs + opts.ttlMs,
          created_at: nowMs,
          updated_at: nowMs,
        })
        .onConflict((oc) =>
          oc
            .column('resource_id')
            .doUpdateSet((eb) => ({
              resource_type: eb.ref('excluded.resource_type'),
              holder_id: eb.ref('excluded.holder_id'),
              generation: eb('leases.generation', '+', 1),
              expires_at: eb.ref('excluded.expires_at'),
              updated_at: eb.ref('excluded.updated_at'),
            }))
            .where((eb) =>
              eb.or([eb('leases.expires_at', '<=', nowMs), eb('leases.holder_id', '=', holderId)]),
            ),
        )
        .returningAll()
        .executeTakeFirst();
      if (row !== undefined) return toLease(row);
      const held = await this.find(db, resourceId);
      if (held === undefined) throw conflict(`lease on ${resourceId} could not be acquired`);
      throw conflict(
        `lease on ${resourceId} is held by ${held.holderId} until ${iso(held.expiresAtMs)}`,
      );
    });
  }

  renew(token: LeaseToken, ttlMs: number, nowMs: number): Promise<Lease> {
    requirePositive('lease ttl', ttlMs);
    return this.run('renew lease', async (db) => {
      const row = await db
        .updateTable('leases')
        .set({ expires_at: nowMs + ttlMs, updated_at: nowMs })
        .where('resource_id', '=', token.resourceId)
        .where('holder_id', '=', token.holderId)
        .where('generation', '=', token.generation)
        .where('expires_at', '>', nowMs)
        .returningAll()
        .executeTakeFirst();
      if (row !== undefined) return toLease(row);
      // Read only to say why; the decision was the update above.
      const cur = await this.find(db, token.resourceId);
      const id = token.resourceId;
      if (cur === undefined) throw conflict(`lease on ${id} is not held by anyone`);
      if (cur.holderId !== token.holderId) {
        const by = cur.holderId === '' ? 'nobody (released)' : cur.holderId;
        throw conflict(`lease on ${id} is not held by ${token.holderId}; holder is ${by}`);
      }
      if (cur.generation !== token.generation) {
        throw conflict(
          `lease on ${id} has a stale generation ${token.generation} (current ${cur.generation})`,
        );
      }
      throw conflict(`lease on ${id} held by ${cur.holderId} expired at ${iso(cur.expiresAtMs)}`);
    });
  }

  release(token: LeaseToken, nowMs: number): Promise<boolean> {
    return this.run('release lease', async (db) => {
      // The row stays so the next acquisition continues the generation count.
      const res = await db
        .updateTable('leases')
        .set({ holder_id: '', expires_at: 0, updated_at: nowMs })
        .where('resource_id', '=', token.resourceId)
        .where('holder_id', '=', token.holderId)
        .where('holder_id', '!=', '')
        .where('generation', '=', token.generation)
        .executeTakeFirst();
      return Number(res.numUpdatedRows) > 0;
    });
  }

  get(resourceId: string): Promise<Lease | undefined> {
    return this.run('get lease', (db) => this.find(db, resourceId));
  }

  list(): Promise<Lease[]> {
    return this.run('list leases', async (db) => {
      const rows = await db.selectFrom('leases').selectAll().orderBy('resource_id').execute();
      return rows.map(toLease);
    });
  }

  private async find(db: Kysely<StoreDatabase>, resourceId: string): Promise<Lease | undefined> {
    const row = await db
      .selectFrom('leases')
      .selectAll()
      .where('resource_id', '=', resourceId)
      .executeTakeFirst();
    return row === undefined ? undefined : toLease(row);
  }
}

class SqlExecLogStore implements ExecLogStore {
  constructor(private readonly run: Run) {}

  append(e: ExecLogEntry): Promise<number> {
    return this.run('append exec log', async (db) => {
      const row = await db
        .insertInto('exec_logs')
        .values({
          sandbox_id: e.sandboxId,
          command: storableText(e.command),
          args: JSON.stringify(e.args),
          mode: e.mode,
          exit_code: e.exitCode,
          stdout: storableText(e.stdout),
          stderr: storableText(e.stderr),
          truncated: e.truncated ? 1 : 0,
          duration_ms: Math.round(e.durationMs),
          timed_out: e.timedOut ? 1 : 0,
          streamed: e.streamed ? 1 : 0,
          created_at: e.createdAtMs,
        })
        .returning('id')
        .executeTakeFirstOrThrow();
      return Number(row.id);
    });
  }

  list(sandboxId: string, limit: number): Promise<ExecLogEntry[]> {
    return this.run('list exec logs', async (db) => {
      const rows = await db
        .selectFrom('exec_logs')
        .selectAll()
        .where('sandbox_id', '=', sandboxId)
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(clampLimit(limit))
        .execute();
      return rows.map(toExecLog);
    });
  }
}

class SqlAuditStore implements AuditStore {
  constructor(private readonly run: Run) {}

  append(e: AuditEntry): Promise<number> {
    return this.run('append audit event', async (db) => {
      const row = await db
        .insertInto('audit_events')
        .values(auditRow(e))
        .returning('id')
        .executeTakeFirstOrThrow();
      return Number(row.id);
    });
  }

  async appendMany(entries: readonly AuditEntry[]): Promise<void> {
    for (let i = 0; i < entries.length; i += AUDIT_APPEND_BATCH_MAX) {
      const rows = entries.slice(i, i + AUDIT_APPEND_BATCH_MAX).map(auditRow);
      // One multi-row insert: ids are drawn in the order of the rows.
      await this.run('append audit events', async (db) => {
        await db.insertInto('audit_events').values(rows).execute();
      });
    }
  }

  list(filter: AuditFilter = {}): Promise<AuditEntry[]> {
    return this.run('list audit events', async (db) => {
      let q = db.selectFrom('audit_events').selectAll();
      if (filter.sandboxId !== undefined) q = q.where('sandbox_id', '=', filter.sandboxId);
      if (filter.action !== undefined) q = q.where('action', '=', filter.action);
      const rows = await q
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(clampLimit(filter.limit))
        .execute();
      return rows.map(toAudit);
    });
  }
}

class SqlTemplateStore implements TemplateStore {
  constructor(private readonly run: Run) {}

  insert(rec: TemplateRecord): Promise<void> {
    requireText('template name', rec.name);
    return this.run(
      'insert template',
      async (db) => {
        await db
          .insertInto('templates')
          .values({
            ...templateContent(rec),
            name: rec.name,
            version: rec.version,
            created_at: rec.createdAtMs,
          })
          .execute();
      },
      () => conflict(`template ${rec.name} already exists`),
    );
  }

  get(name: string): Promise<TemplateRecord | undefined> {
    return this.run('get template', async (db) => {
      const row = await db
        .selectFrom('templates')
        .selectAll()
        .where('name', '=', name)
        .executeTakeFirst();
      return row === undefined ? undefined : toTemplate(row);
    });
  }

  list(): Promise<TemplateRecord[]> {
    return this.run('list templates', async (db) => {
      const rows = await db.selectFrom('templates').selectAll().orderBy('name', 'asc').execute();
      return rows.map(toTemplate);
    });
  }

  replace(rec: TemplateRecord): Promise<TemplateRecord | undefined> {
    return this.run('replace template', async (db) => {
      // One statement: concurrent replacements each get their own version.
      const row = await db
        .updateTable('templates')
        .set((eb) => ({ ...templateContent(rec), version: eb('version', '+', 1) }))
        .where('name', '=', rec.name)
        .returningAll()
        .executeTakeFirst();
      return row === undefined ? undefined : toTemplate(row);
    });
  }

  delete(name: string): Promise<boolean> {
    return this.run('delete template', async (db) => {
      const res = await db.deleteFrom('templates').where('name', '=', name).executeTakeFirst();
      return Number(res.numDeletedRows) > 0;
    });
  }
}

/**
 * The one SQL implementation of {@link Store}. Dialects differ only in how the
 * Kysely instance is opened and in the {@link StoreDialectAdapter}; every query
 * here is valid on SQLite (>= 3.35) and Postgres.
 */
export class KyselyStore implements Store {
  readonly dialect: Store['dialect'];
  readonly sandboxes: SandboxStore;
  readonly workers: WorkerStore;
  readonly leases: LeaseStore;
  readonly execLogs: ExecLogStore;
  readonly audit: AuditStore;
  readonly templates: TemplateStore;
  private readonly clock: Clock;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly db: Kysely<StoreDatabase>,
    private readonly adapter: StoreDialectAdapter,
    options: KyselyStoreOptions = {},
  ) {
    this.dialect = adapter.name;
    this.clock = options.clock ?? systemClock;
    const run: Run = (op, fn, onUnique) => this.run(op, fn, onUnique);
    this.sandboxes = new SqlSandboxStore(run, this.clock);
    this.workers = new SqlWorkerStore(run);
    this.leases = new SqlLeaseStore(run);
    this.execLogs = new SqlExecLogStore(run);
    this.audit = new SqlAuditStore(run);
    this.templates = new SqlTemplateStore(run);
  }

  migrate(): Promise<number[]> {
    return this.run('migrate', (db) =>
      runMigrations(db as unknown as Kysely<unknown>, this.adapter, this.clock.nowMs()),
    );
  }

  schemaVersion(): Promise<number> {
    return this.run('read schema version', (db) =>
      readSchemaVersion(db as unknown as Kysely<unknown>, this.adapter),
    );
  }

  ping(): Promise<void> {
    return this.run('ping', async (db) => {
      await sql`select 1`.execute(db);
    });
  }

  close(): Promise<void> {
    this.closed = true;
    this.closing ??= this.db.destroy();
    return this.closing;
  }

  private async run<T>(
    op: string,
    fn: (db: Kysely<StoreDatabase>) => Promise<T>,
    onUnique?: () => StacyError,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      if (this.closed) throw unavailable(`store is closed (${op})`);
      try {
        return await fn(this.db);
      } catch (err) {
        if (
          attempt <= SERIALIZATION_RETRIES &&
          !(err instanceof StacyError) &&
          this.adapter.classifyError(err) === 'retry'
        ) {
          // The losing statement changed nothing; back off a little, with jitter.
          await sleep(Math.random() * 5 * attempt);
          continue;
        }
        throw this.wrap(op, err, onUnique);
      }
    }
  }

  private wrap(op: string, err: unknown, onUnique?: () => StacyError): StacyError {
    if (err instanceof StacyError) return err;
    const redact = this.adapter.redact;
    const detail = redact === undefined ? errorMessage(err) : redact(errorMessage(err));
    const cause = redact === undefined ? err : redactedCause(err, detail);
    switch (this.adapter.classifyError(err)) {
      case 'unique-violation': {
        const e = onUnique?.() ?? new StacyError('CONFLICT', `${op}: record already exists`);
        return new StacyError(e.code, e.message, { cause });
      }
      case 'busy':
      case 'retry':
        return new StacyError('UNAVAILABLE', `${op}: database is busy, try again`, {
          cause,
          retryable: true,
        });
      case 'unavailable':
        return new StacyError(
          'UNAVAILABLE',
          `${op}: ${this.adapter.target ?? 'the database'} is unavailable: ${detail}`,
          { cause, retryable: true },
        );
      case 'other':
        return internalError(`${op} failed: ${detail}`, cause);
    }
  }
}

/** A stand-in for a driver error that keeps its code but only the redacted text. */
function redactedCause(err: unknown, message: string): Error {
  const copy = new Error(message);
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    Object.assign(copy, { code: err.code });
  }
  return copy;
}
