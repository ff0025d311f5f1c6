import type { ExecEvent, ExecOutcome, ExecSpec } from '../domain/exec.js';
import type { FileEntry } from '../domain/files.js';

/** Every provider call may be cancelled. */
export interface CallOptions {
  signal?: AbortSignal;
}

export interface SpawnOptions extends CallOptions {
  /** The id the control plane chose; providers name their runtime after it. */
  sandboxId: string;
  image: string;
  memoryMb: number;
  vcpus: number;
  metadata: Record<string, string>;
  /** Ports inside the sandbox that previews may reach. */
  ports: number[];
}

export interface SpawnResult {
  /** The provider's handle for the runtime; equals the sandbox id where the provider allows it. */
  runtimeId: string;
}

export interface RuntimeStatus {
  /** `running`, `stopped`, `creating`, … as the provider sees it. */
  state: string;
}

export interface ProviderHealth {
  healthy: boolean;
  latencyMs: number;
  error?: string;
}

/** Bytes to write: a whole buffer, or a stream of chunks that is never held whole. */
export type FileSource = Uint8Array | AsyncIterable<Uint8Array>;

export interface ReadFileResult {
  size: number;
  /** The file's bytes; consume it or the handle stays open until it is garbage-collected. */
  body: AsyncIterable<Uint8Array>;
}

/** A TCP address on this host that reaches one port inside a sandbox. */
export interface PreviewEndpoint {
  host: string;
  port: number;
}

export interface ProviderStats {
  cpuPct: number;
  memBytes: number;
  memLimitBytes: number;
}

/**
 * A way to run sandboxes. Constructors do no I/O; `init()` checks the backend.
 * Only catalog errors (`StacyError`) cross this interface: NOT_FOUND for an
 * unknown runtime or path, BAD_REQUEST for a bad path, UNAVAILABLE when the
 * backend does not answer. Non-zero exit codes and deadlines are results, not
 * errors.
 */
export interface Provider {
  readonly name: string;
  /** Type tags and optional features, e.g. `test_provider`, `container`. */
  readonly capabilities: readonly string[];
  init(): Promise<void>;
  health(): Promise<ProviderHealth>;
  /** Provider settings safe to show (no secrets). */
  describe(): Record<string, unknown>;

  spawn(opts: SpawnOptions): Promise<SpawnResult>;
  status(runtimeId: string, opts?: CallOptions): Promise<RuntimeStatus>;
  /** Idempotent: destroying a runtime that is already gone succeeds. */
  destroy(runtimeId: string, opts?: CallOptions): Promise<void>;
  logs(runtimeId: string, lines: number, opts?: CallOptions): Promise<string[]>;

  /** Runs to completion or the deadline; the process is killed at the deadline. */
  exec(runtimeId: string, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome>;
  /**
   * Streams output, then one `exit` event. Breaking out of the loop or
   * aborting `signal` kills the process.
   */
  execStream(runtimeId: string, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent>;

  writeFile(
    runtimeId: string,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void>;
  readFile(runtimeId: string, path: string, opts?: CallOptions): Promise<ReadFileResult>;
  listFiles(runtimeId: string, path: string, opts?: CallOptions): Promise<FileEntry[]>;
  statFile(runtimeId: string, path: string, opts?: CallOptions): Promise<FileEntry>;
  deleteFile(
    runtimeId: string,
    path: string,
    recursive: boolean,
    opts?: CallOptions,
  ): Promise<void>;
  moveFile(runtimeId: string, from: string, to: string, opts?: CallOptions): Promise<void>;
  chmodFile(runtimeId: string, path: string, mode: number, opts?: CallOptions): Promise<void>;
  /** Absolute in-sandbox paths matching a glob (`*`, `?`, `**`, `[...]`), sorted. */
  globFiles(runtimeId: string, pattern: string, opts?: CallOptions): Promise<string[]>;

  /** Live resource use, where the provider can measure it. */
  stats?(runtimeId: string, opts?: CallOptions): Promise<ProviderStats>;
  /**
   * Where this host reaches `port` inside the sandbox, for the preview
   * gateway. NOT_FOUND when the runtime is gone; CONFLICT when it is not
   * running; BAD_REQUEST when the port was not declared in `ports` at spawn
   * and so cannot be reached.
   */
  previewUpstream?(runtimeId: string, port: number, opts?: CallOptions): Promise<PreviewEndpoint>;
  /** Runtime ids this provider owns on its backend, for reconcile. */
  listRuntimes?(opts?: CallOptions): Promise<string[]>;
  /** Releases backend handles. */
  close?(): Promise<void>;
}

/** Capabilities every provider has, plus those derived from optional members. */
export function providerCapabilities(p: Provider): string[] {
  const caps = ['spawn', 'exec', 'exec_stream', 'files', 'console', 'health', ...p.capabilities];
  if (p.stats !== undefined) caps.push('stats');
  if (p.listRuntimes !== undefined) caps.push('runtime_inventory');
  if (p.previewUpstream !== undefined) caps.push('preview');
  return [...new Set(caps)];
}
