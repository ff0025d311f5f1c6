/**
 * The entry point: `new Client(url | options)`.
 */
import { toGoDuration } from './duration.js';
import { Transport } from './http.js';
import { Sandbox } from './sandbox.js';
import { TemplateManager } from './templates.js';
import type {
  ClientOptions,
  FetchLike,
  HealthInfo,
  ProviderInfo,
  QuotaSummary,
  SandboxInfo,
  SpawnAdmissionDecision,
  SpawnOptions,
  VMPoolStatus,
  WorkerInfo,
} from './types.js';
import { expectArray, expectObject, expectSandboxInfo } from './validate.js';

export const DEFAULT_BASE_URL = 'http://127.0.0.1:7423';
export const DEFAULT_TIMEOUT_MS = 30_000;

/** The 0.1 SDK's names of the client options. */
export type ForgevmClientOptions = ClientOptions;
export type ClientConfig = string | ClientOptions;

function normalizeBaseUrl(url: string): string {
  return url.replace(/\/+$/, '').replace(/\/api\/v1$/, '');
}

/** The spawn/admission body for spawn options. */
export function spawnBody(opts: SpawnOptions = {}): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (opts.image !== undefined) body['image'] = opts.image;
  if (opts.provider !== undefined) body['provider'] = opts.provider;
  const memory = opts.memoryMb ?? opts.memory_mb;
  if (memory !== undefined) body['memory_mb'] = memory;
  if (opts.vcpus !== undefined) body['vcpus'] = opts.vcpus;
  if (opts.ttl !== undefined) body['ttl'] = toGoDuration(opts.ttl, 'ttl');
  const owner = opts.ownerId ?? opts.owner_id;
  if (owner !== undefined) body['owner_id'] = owner;
  if (opts.template !== undefined) body['template'] = opts.template;
  if (opts.metadata !== undefined) body['metadata'] = opts.metadata;
  if (opts.ports !== undefined) body['ports'] = opts.ports;
  return body;
}

/**
 * A StacyVM client. Holds no connection state: create one per server and share it.
 *
 * ```ts
 * const client = new Client({ baseUrl: 'http://127.0.0.1:7423', apiKey: process.env.KEY });
 * const out = await client.withSandbox({}, async (sb) => (await sb.exec('echo hi')).stdout);
 * ```
 */
export class Client {
  /** Template operations: CRUD and spawn-from-template (`/templates`). */
  readonly templates: TemplateManager;
  private readonly http: Transport;

  constructor(config: ClientConfig = {}) {
    const opts: ClientOptions = typeof config === 'string' ? { baseUrl: config } : config;
    let baseUrl: string;
    if (opts.baseUrl !== undefined && opts.baseUrl !== '') baseUrl = opts.baseUrl;
    else if (opts.host !== undefined || opts.port !== undefined) {
      baseUrl = `http://${opts.host ?? '127.0.0.1'}:${opts.port ?? 7423}`;
    } else baseUrl = DEFAULT_BASE_URL;
    const timeoutMs = opts.timeoutMs ?? opts.timeout ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new RangeError(`timeoutMs ${timeoutMs} must be a number of milliseconds >= 0`);
    }
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.apiKey !== undefined && opts.apiKey !== '') headers['X-API-Key'] = opts.apiKey;
    if (opts.userId !== undefined && opts.userId !== '') headers['X-User-ID'] = opts.userId;
    if (opts.tenantId !== undefined && opts.tenantId !== '') {
      headers['X-Tenant-ID'] = opts.tenantId;
    }
    const fetchImpl: FetchLike = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.http = new Transport({
      baseUrl: normalizeBaseUrl(baseUrl),
      headers,
      timeoutMs,
      fetch: fetchImpl,
    });
    this.templates = new TemplateManager(this.http);
  }

  /** The server URL, without `/api/v1`. */
  get baseUrl(): string {
    return this.http.baseUrl;
  }

  // --- sandboxes ------------------------------------------------------------------------

  /** Creates a sandbox (`201`, always `running`). */
  async spawn(opts: SpawnOptions = {}): Promise<Sandbox> {
    const { body } = await this.http.json({
      method: 'POST',
      path: '/sandboxes',
      json: spawnBody(opts),
      signal: opts.signal,
    });
    return new Sandbox(this.http, expectSandboxInfo<SandboxInfo>(body));
  }

  /** A sandbox by id; {@link NotFoundError} for unknown and destroyed ids. */
  async get(id: string): Promise<Sandbox> {
    const { body } = await this.http.json({
      method: 'GET',
      path: `/sandboxes/${encodeURIComponent(id)}`,
    });
    return new Sandbox(this.http, expectSandboxInfo<SandboxInfo>(body));
  }

  /** Live sandboxes, newest first, as the server's objects (use {@link get} to act on one). */
  async list(): Promise<SandboxInfo[]> {
    const { body } = await this.http.json({ method: 'GET', path: '/sandboxes' });
    return expectArray(body, 'sandbox list', (s) => expectSandboxInfo<SandboxInfo>(s));
  }

  /** Destroys every expired sandbox; returns how many. */
  async prune(): Promise<number> {
    const { body } = await this.http.json({ method: 'DELETE', path: '/sandboxes' });
    return expectObject<{ pruned: number }>(body, 'prune result', { pruned: 'number' }).pruned;
  }

  /** Would this spawn be admitted? Nothing is created. */
  async admission(opts: SpawnOptions = {}): Promise<SpawnAdmissionDecision> {
    const { body } = await this.http.json({
      method: 'POST',
      path: '/sandboxes/admission',
      json: spawnBody(opts),
      signal: opts.signal,
    });
    return expectObject<SpawnAdmissionDecision>(body, 'admission decision', {
      allowed: 'boolean',
    });
  }

  /**
   * Spawns a sandbox, runs `fn`, and destroys the sandbox whatever happens (a failed destroy
   * is ignored, as in 0.1: the TTL reaps it). Returns what `fn` returns; rethrows what it throws.
   */
  async withSandbox<T>(opts: SpawnOptions, fn: (sandbox: Sandbox) => Promise<T> | T): Promise<T> {
    const sandbox = await this.spawn(opts);
    try {
      return await fn(sandbox);
    } finally {
      await sandbox.destroy().catch(() => undefined);
    }
  }

  // --- system ---------------------------------------------------------------------------

  /** `GET /health` (public). */
  async health(): Promise<HealthInfo> {
    const { body } = await this.http.json({ method: 'GET', path: '/health' });
    return expectObject<HealthInfo>(body, 'health', { status: 'string' });
  }

  /** Registered providers and their health. */
  async providers(): Promise<ProviderInfo[]> {
    const { body } = await this.http.json({ method: 'GET', path: '/providers' });
    return expectArray(body, 'provider list', (p) =>
      expectObject<ProviderInfo>(p, 'provider', { name: 'string', healthy: 'boolean' }),
    );
  }

  /** Registered workers, ordered by id. */
  async workers(): Promise<WorkerInfo[]> {
    const { body } = await this.http.json({ method: 'GET', path: '/workers' });
    return expectArray(body, 'worker list', (w) =>
      expectObject<WorkerInfo>(w, 'worker', { id: 'string', status: 'string' }),
    );
  }

  /** `GET /pool/status`, kept for 0.1 code. This server has no pool mode yet: {@link NotFoundError}. */
  async poolStatus(): Promise<VMPoolStatus> {
    const { body } = await this.http.json({ method: 'GET', path: '/pool/status' });
    return expectObject<VMPoolStatus>(body, 'pool status', { enabled: 'boolean' });
  }

  /** `GET /quotas/summary`, kept for 0.1 code. This server has no quotas yet: {@link NotFoundError}. */
  async quotaSummary(): Promise<QuotaSummary> {
    const { body } = await this.http.json({ method: 'GET', path: '/quotas/summary' });
    return expectObject<QuotaSummary>(body, 'quota summary', { total: 'number' });
  }
}
