import { conflict, notFound, StacyError } from '../domain/errors.js';
import type { ExecEvent, ExecOutcome, ExecSpec } from '../domain/exec.js';
import type { FileEntry } from '../domain/files.js';
import type { Logger } from '../domain/logger.js';
import type {
  CallOptions,
  FileSource,
  Provider,
  ProviderHealth,
  ProviderStats,
  ReadFileResult,
  RuntimeStatus,
} from '../providers/provider.js';
import { providerCapabilities } from '../providers/provider.js';
import type {
  PreviewUpstream,
  ProviderInfo,
  RuntimeRef,
  WorkerClient,
  WorkerSpawnRequest,
  WorkerSpawnResult,
} from '../rpc/worker-client.js';

export type WorkerRuntimeState = 'starting' | 'active' | 'draining' | 'stopped';

export interface WorkerRuntimeOptions {
  workerId: string;
  providers: Provider[];
  defaultProvider: string;
  logger: Logger;
  /** How long a provider health result is reused. */
  healthCacheMs?: number;
}

interface CachedHealth {
  health: ProviderHealth;
  checkedAtMs: number;
}

/**
 * Runs sandboxes on this host's providers: what the control plane's `local`
 * worker and (later) a remote worker process both are. It enforces lease
 * fencing: an operation carrying a generation older than one already seen for
 * that sandbox is refused, so a stale holder cannot act.
 */
export class WorkerRuntime implements WorkerClient {
  readonly workerId: string;
  private readonly providerMap = new Map<string, Provider>();
  private readonly generations = new Map<string, number>();
  private readonly healthCache = new Map<string, CachedHealth>();
  private runtimeState: WorkerRuntimeState = 'starting';

  constructor(private readonly options: WorkerRuntimeOptions) {
    this.workerId = options.workerId;
    for (const p of options.providers) this.providerMap.set(p.name, p);
  }

  get state(): WorkerRuntimeState {
    return this.runtimeState;
  }

  get providerNames(): string[] {
    return [...this.providerMap.keys()];
  }

  get defaultProvider(): string {
    return this.options.defaultProvider;
  }

  /** Initialises every provider; one that fails is removed and logged, not fatal, unless it is the default. */
  async start(): Promise<void> {
    for (const [name, p] of [...this.providerMap]) {
      try {
        await p.init();
      } catch (err) {
        if (name === this.options.defaultProvider) throw err;
        this.options.logger.warn(
          { provider: name, err: (err as Error).message },
          'provider failed to initialise; disabled',
        );
        this.providerMap.delete(name);
      }
    }
    this.runtimeState = 'active';
  }

  drain(): void {
    if (this.runtimeState === 'active') this.runtimeState = 'draining';
  }

  async stop(): Promise<void> {
    this.runtimeState = 'stopped';
    for (const p of this.providerMap.values()) await p.close?.();
  }

  provider(name: string): Provider {
    const p = this.providerMap.get(name === '' ? this.options.defaultProvider : name);
    if (p === undefined) throw notFound(`provider not found: ${name}`);
    return p;
  }

  private fence(ref: RuntimeRef): Provider {
    if (ref.lease !== undefined) {
      const seen = this.generations.get(ref.sandboxId) ?? 0;
      if (ref.lease.generation < seen) {
        throw conflict(
          `stale lease for ${ref.sandboxId}: generation ${ref.lease.generation} is older than ${seen}`,
        );
      }
      this.generations.set(ref.sandboxId, ref.lease.generation);
    }
    return this.provider(ref.provider);
  }

  async providerHealth(name: string, opts?: CallOptions): Promise<ProviderHealth> {
    const p = this.provider(name);
    const cached = this.healthCache.get(p.name);
    const now = Date.now();
    if (cached !== undefined && now - cached.checkedAtMs < (this.options.healthCacheMs ?? 5000)) {
      return cached.health;
    }
    let health: ProviderHealth;
    try {
      health = await withTimeout(p.health(), 2000, opts?.signal);
    } catch (err) {
      health = { healthy: false, latencyMs: 0, error: (err as Error).message };
    }
    this.healthCache.set(p.name, { health, checkedAtMs: now });
    return health;
  }

  async providers(opts?: CallOptions): Promise<ProviderInfo[]> {
    const out: ProviderInfo[] = [];
    for (const p of this.providerMap.values()) {
      const health = await this.providerHealth(p.name, opts);
      const info: ProviderInfo = {
        name: p.name,
        healthy: health.healthy,
        isDefault: p.name === this.options.defaultProvider,
        latencyMs: health.latencyMs,
        lastCheckedMs: this.healthCache.get(p.name)?.checkedAtMs ?? Date.now(),
        capabilities: providerCapabilities(p),
        config: p.describe(),
      };
      if (health.error !== undefined) info.error = health.error;
      out.push(info);
    }
    return out;
  }

  async listRuntimes(provider: string, opts?: CallOptions): Promise<string[]> {
    const p = this.provider(provider);
    return p.listRuntimes === undefined ? [] : p.listRuntimes(opts);
  }

  async spawn(req: WorkerSpawnRequest, opts?: CallOptions): Promise<WorkerSpawnResult> {
    if (this.runtimeState !== 'active') {
      throw new StacyError('UNAVAILABLE', `worker ${this.workerId} is ${this.runtimeState}`);
    }
    const p = this.provider(req.provider);
    if (req.lease !== undefined) this.generations.set(req.sandboxId, req.lease.generation);
    const result = await p.spawn({
      sandboxId: req.sandboxId,
      image: req.image,
      memoryMb: req.memoryMb,
      vcpus: req.vcpus,
      metadata: req.metadata,
      ports: req.ports,
      ...(opts?.signal === undefined ? {} : { signal: opts.signal }),
    });
    return { provider: p.name, runtimeId: result.runtimeId };
  }

  status(ref: RuntimeRef, opts?: CallOptions): Promise<RuntimeStatus> {
    return this.fence(ref).status(ref.runtimeId, opts);
  }

  async destroy(ref: RuntimeRef, opts?: CallOptions): Promise<void> {
    await this.fence(ref).destroy(ref.runtimeId, opts);
    this.generations.delete(ref.sandboxId);
  }

  logs(ref: RuntimeRef, lines: number, opts?: CallOptions): Promise<string[]> {
    return this.fence(ref).logs(ref.runtimeId, lines, opts);
  }

  async stats(ref: RuntimeRef, opts?: CallOptions): Promise<ProviderStats | undefined> {
    const p = this.fence(ref);
    return p.stats === undefined ? undefined : p.stats(ref.runtimeId, opts);
  }

  exec(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome> {
    return this.fence(ref).exec(ref.runtimeId, spec, opts);
  }

  execStream(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent> {
    return this.fence(ref).execStream(ref.runtimeId, spec, opts);
  }

  writeFile(
    ref: RuntimeRef,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    return this.fence(ref).writeFile(ref.runtimeId, path, data, mode, opts);
  }

  readFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<ReadFileResult> {
    return this.fence(ref).readFile(ref.runtimeId, path, opts);
  }

  listFiles(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry[]> {
    return this.fence(ref).listFiles(ref.runtimeId, path, opts);
  }

  statFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry> {
    return this.fence(ref).statFile(ref.runtimeId, path, opts);
  }

  deleteFile(ref: RuntimeRef, path: string, recursive: boolean, opts?: CallOptions): Promise<void> {
    return this.fence(ref).deleteFile(ref.runtimeId, path, recursive, opts);
  }

  moveFile(ref: RuntimeRef, from: string, to: string, opts?: CallOptions): Promise<void> {
    return this.fence(ref).moveFile(ref.runtimeId, from, to, opts);
  }

  chmodFile(ref: RuntimeRef, path: string, mode: number, opts?: CallOptions): Promise<void> {
    return this.fence(ref).chmodFile(ref.runtimeId, path, mode, opts);
  }

  globFiles(ref: RuntimeRef, pattern: string, opts?: CallOptions): Promise<string[]> {
    return this.fence(ref).globFiles(ref.runtimeId, pattern, opts);
  }

  async previewUpstream(
    ref: RuntimeRef,
    port: number,
    opts?: CallOptions,
  ): Promise<PreviewUpstream> {
    const p = this.fence(ref);
    if (p.previewUpstream === undefined) {
      throw new StacyError('UNAVAILABLE', `provider ${p.name} does not support previews`);
    }
    const at = await p.previewUpstream(ref.runtimeId, port, opts);
    return { kind: 'direct', host: at.host, port: at.port };
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`health check timed out after ${ms}ms`)), ms);
    signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
    p.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}
