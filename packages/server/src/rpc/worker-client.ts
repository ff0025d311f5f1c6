import type { ExecEvent, ExecOutcome, ExecSpec } from '../domain/exec.js';
import type { FileEntry } from '../domain/files.js';
import type { LeaseToken } from '../domain/lease.js';
import type { WorkerRecord } from '../domain/worker.js';
import type {
  CallOptions,
  FileSource,
  ProviderHealth,
  ProviderStats,
  ReadFileResult,
  RuntimeStatus,
} from '../providers/provider.js';

/** Which runtime an operation addresses, and the lease it acts under. */
export interface RuntimeRef {
  sandboxId: string;
  provider: string;
  runtimeId: string;
  /** Fencing token: a worker refuses a generation older than one it has seen. */
  lease?: LeaseToken;
}

export interface WorkerSpawnRequest {
  sandboxId: string;
  provider: string;
  image: string;
  memoryMb: number;
  vcpus: number;
  ownerId: string;
  metadata: Record<string, string>;
  ports: number[];
  lease?: LeaseToken;
}

export interface WorkerSpawnResult {
  provider: string;
  runtimeId: string;
}

/** TLS settings of a relay hop to a worker's preview gateway (the worker RPC TLS settings). */
export interface RelayTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName?: string;
  insecureSkipVerify?: boolean;
}

/**
 * How the preview gateway reaches a sandbox port: `direct` — a TCP address
 * this process can connect to; `relay` — the preview gateway of the worker
 * that owns the sandbox, called with `headers` (its worker credential), Host
 * unchanged, which then resolves the sandbox itself.
 */
export type PreviewUpstream =
  | { kind: 'direct'; host: string; port: number }
  | { kind: 'relay'; url: string; headers: Record<string, string>; tls?: RelayTls };

export interface ProviderInfo {
  name: string;
  healthy: boolean;
  isDefault: boolean;
  latencyMs: number;
  lastCheckedMs: number;
  error?: string;
  capabilities: string[];
  config: Record<string, unknown>;
}

/**
 * How the control plane reaches a worker. The in-process client calls the
 * local runtime; the HTTP client (remote workers) speaks worker RPC. The
 * orchestrator cannot tell them apart.
 */
export interface WorkerClient {
  readonly workerId: string;
  providers(opts?: CallOptions): Promise<ProviderInfo[]>;
  providerHealth(name: string, opts?: CallOptions): Promise<ProviderHealth>;
  /** Runtime ids a provider holds on this worker (empty when it cannot list them). */
  listRuntimes(provider: string, opts?: CallOptions): Promise<string[]>;
  spawn(req: WorkerSpawnRequest, opts?: CallOptions): Promise<WorkerSpawnResult>;
  status(ref: RuntimeRef, opts?: CallOptions): Promise<RuntimeStatus>;
  destroy(ref: RuntimeRef, opts?: CallOptions): Promise<void>;
  logs(ref: RuntimeRef, lines: number, opts?: CallOptions): Promise<string[]>;
  stats(ref: RuntimeRef, opts?: CallOptions): Promise<ProviderStats | undefined>;
  exec(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome>;
  execStream(ref: RuntimeRef, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent>;
  writeFile(
    ref: RuntimeRef,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void>;
  readFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<ReadFileResult>;
  listFiles(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry[]>;
  statFile(ref: RuntimeRef, path: string, opts?: CallOptions): Promise<FileEntry>;
  deleteFile(ref: RuntimeRef, path: string, recursive: boolean, opts?: CallOptions): Promise<void>;
  moveFile(ref: RuntimeRef, from: string, to: string, opts?: CallOptions): Promise<void>;
  chmodFile(ref: RuntimeRef, path: string, mode: number, opts?: CallOptions): Promise<void>;
  globFiles(ref: RuntimeRef, pattern: string, opts?: CallOptions): Promise<string[]>;
  /** How the preview gateway reaches `port` of the sandbox (see {@link PreviewUpstream}). */
  previewUpstream(ref: RuntimeRef, port: number, opts?: CallOptions): Promise<PreviewUpstream>;
}

/** Finds the client for a worker id. */
export interface WorkerDirectory {
  client(workerId: string): WorkerClient | undefined;
  /** Why a registered worker cannot be called (placement passes it over); undefined when it can. */
  unreachableReason?(w: WorkerRecord): string | undefined;
  /**
   * The client of a worker this process has not met yet (e.g. one that
   * heartbeats to another control plane), looked up in the registry; or
   * undefined when it cannot be called. A known worker answers as {@link client}.
   */
  resolve?(workerId: string): Promise<WorkerClient | undefined>;
  /** Why the last lookup of a worker found it uncallable; undefined when it did not. */
  whyUnreachable?(workerId: string): string | undefined;
}
