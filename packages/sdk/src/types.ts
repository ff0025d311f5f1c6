/**
 * Wire types (snake_case, exactly as the server sends them) and option types.
 */
import type { Duration } from './duration.js';

/** The `fetch` the client calls; the global one by default. */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

/** Options of {@link Client}. Every field is optional. */
export interface ClientOptions {
  /** Server URL, default `http://127.0.0.1:7423`. A trailing `/api/v1` is accepted. */
  baseUrl?: string;
  /** Host of the server when `baseUrl` is not given (0.1 SDK option). */
  host?: string;
  /** Port of the server when `baseUrl` is not given (0.1 SDK option), default 7423. */
  port?: number;
  /** API key, sent as `X-API-Key`. */
  apiKey?: string;
  /** Owner of spawned sandboxes and actor in audit rows, sent as `X-User-ID`. */
  userId?: string;
  /** Tenant scope, sent as `X-Tenant-ID`. */
  tenantId?: string;
  /**
   * Per-request timeout in milliseconds, default 30 000; `0` disables it. It covers the
   * whole of an ordinary request. Exec requests are stretched to the exec's own deadline
   * plus 5 s (10 min when no exec `timeout` is given: the server's default limit), and a live
   * exec stream's body is never cut by it.
   */
  timeoutMs?: number;
  /** Alias of `timeoutMs` (0.1 SDK option). */
  timeout?: number;
  /** The `fetch` to use; default the global `fetch`. */
  fetch?: FetchLike;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
}

/** Sandbox states the server reports. */
export type SandboxState =
  'creating' | 'running' | 'unhealthy' | 'expired' | 'error' | 'destroying' | 'destroyed';

/** The sandbox object as the server returns it. */
export interface SandboxInfo {
  /** `sb-` and 8 hex digits. */
  id: string;
  state: SandboxState;
  provider: string;
  image: string;
  memory_mb: number;
  vcpus: number;
  /** `local` for sandboxes on the control plane's own worker. */
  worker_id: string;
  created_at: string;
  updated_at: string;
  expires_at: string;
  /** In-sandbox ports previews may reach. */
  ports: number[];
  /** Domain of preview URLs (`server.preview_domain`, or the owning worker's). */
  preview_domain: string;
  /** Scheme of preview URLs (`http` or `https`), when the server says. */
  preview_scheme?: string;
  /** Port of the preview gateway, when not the scheme's default. */
  preview_port?: number;
  owner_id?: string;
  tenant_id?: string;
  /** Runtime id, only when it differs from `id`. */
  vm_id?: string;
  metadata?: Record<string, string>;
}

/** Options of {@link Client.spawn} and {@link Client.admission}. */
export interface SpawnOptions {
  /** Image; the server's `defaults.image` when omitted (the mock provider ignores it). */
  image?: string;
  /** Provider name; the server's default provider when omitted. */
  provider?: string;
  /** Memory in MiB (16–1048576). */
  memoryMb?: number;
  /** Same as `memoryMb` (the wire and 0.1 SDK name). */
  memory_mb?: number;
  /** Virtual CPUs (1–256). */
  vcpus?: number;
  /** Lifetime: Go duration (`30m`, `1h`) or milliseconds. */
  ttl?: Duration;
  /** Owner, when the client has no `userId` (which wins). */
  ownerId?: string;
  /** Same as `ownerId` (the wire and 0.1 SDK name). */
  owner_id?: string;
  /** Accepted and ignored by `POST /sandboxes`: spawn from a template with `client.templates.spawn(name)`. */
  template?: string;
  /** String key-value pairs, at most 64. */
  metadata?: Record<string, string>;
  /** In-sandbox ports previews may reach (server default `[3000]`). */
  ports?: number[];
  signal?: AbortSignal;
}

/** Decision of `POST /sandboxes/admission`. */
export interface SpawnAdmissionDecision {
  allowed: boolean;
  /** Always `false` on this server (there is no spawn queue). */
  queueable: boolean;
  /** `max_ttl`, `worker_unavailable`, `max_sandboxes` or `max_sandboxes_per_owner`. */
  reason?: string;
  message?: string;
  provider?: string;
  active_sandboxes: number;
  max_sandboxes: number;
  active_owner_sandboxes?: number;
  max_owner_sandboxes?: number;
  max_ttl?: string;
  selected_worker_id?: string;
  eligible_workers?: string[];
  /** `local_selected`, `local_fallback`, `remote_worker_selected` or `no_eligible_worker`. */
  worker_reason?: string;
  rejected_workers?: unknown;
}

/** Options of {@link Sandbox.exec} and {@link Sandbox.execStream}. */
export interface ExecOptions {
  /**
   * Arguments. Shell mode appends them single-quoted to the script; argv mode passes them
   * verbatim. Ignored when the command is given as an array.
   */
  args?: string[];
  /** `shell` (default for a string command, `sh -c`) or `argv` (default for an array). */
  mode?: 'shell' | 'argv';
  /** Extra environment variables; names must match `[A-Za-z_][A-Za-z0-9_]*`. */
  env?: Record<string, string>;
  /** In-sandbox working directory, default `/workspace`. */
  workdir?: string;
  /** Deadline after which the command is killed: milliseconds or a Go duration (`10s`). */
  timeout?: Duration;
  /** Aborts the request; the server kills the command when the connection closes. */
  signal?: AbortSignal;
}

/** Result of {@link Sandbox.exec}. A non-zero exit code is a result, not an error. */
export interface ExecResult {
  exitCode: number;
  /** Same as `exitCode` (the wire and 0.1 SDK name). */
  exit_code: number;
  stdout: string;
  stderr: string;
  /** Go duration as the server reports it, e.g. `8.133952ms`. */
  duration: string;
  /** `duration` in milliseconds (`NaN` if the server sent something unparsable). */
  durationMs: number;
}

/** Output of a streamed exec. */
export interface StreamChunk {
  stream: 'stdout' | 'stderr';
  /** Text; chunks are not line-aligned. */
  data: string;
}

/** The last event of a streamed exec. */
export interface ExecExit {
  stream: 'exit';
  /** Always empty; present so code that prints every chunk's `data` keeps working. */
  data: '';
  exitCode: number;
  /** Same as `exitCode` (the wire name). */
  exit_code: number;
  duration: string;
  durationMs: number;
  /** True when the deadline killed the command (exit code 124). */
  timedOut: boolean;
}

/** What an exec stream yields: output chunks, then exactly one {@link ExecExit}. */
export type ExecStreamEvent = StreamChunk | ExecExit;

/** A file or directory in a sandbox. */
export interface FileInfo {
  /** Absolute in-sandbox path. */
  path: string;
  name: string;
  size: number;
  /** Four octal digits, e.g. `0644`. */
  mode: string;
  is_dir: boolean;
  /** RFC 3339, whole seconds. */
  mod_time: string;
}

/** A file mode: an octal string (`"0644"`, `"755"`) or permission bits as a number (`0o644`). */
export type FileMode = string | number;

export interface WriteFileOptions {
  /** Default `0644`. */
  mode?: FileMode;
  signal?: AbortSignal;
}

export interface ReadFileOptions {
  signal?: AbortSignal;
}

export interface DeleteFileOptions {
  /** Delete a non-empty directory and its contents. */
  recursive?: boolean;
}

/** `GET /sandboxes/{id}/stats`. */
export interface SandboxStats {
  supported: boolean;
  cpu_pct?: number;
  mem_bytes?: number;
  mem_limit_bytes?: number;
}

/** One row of the exec log (`GET /sandboxes/{id}/execs`). */
export interface ExecLogEntry {
  id: number;
  command: string;
  args: string[];
  mode: string;
  exit_code: number;
  stdout: string;
  stderr: string;
  truncated: boolean;
  duration: string;
  timed_out: boolean;
  streamed: boolean;
  created_at: string;
}

/** `GET /health`. */
export interface HealthInfo {
  status: string;
  version: string;
  uptime: string;
}

/** An entry of `GET /providers`. */
export interface ProviderInfo {
  name: string;
  healthy: boolean;
  default: boolean;
  latency_ms?: number;
  last_checked?: string;
  capabilities?: string[];
  error?: string;
}

/** An entry of `GET /workers`. */
export interface WorkerInfo {
  id: string;
  hostname: string;
  status: string;
  providers: string[];
  capabilities: string[];
  capacity: Record<string, unknown>;
  last_heartbeat: string;
  created_at: string;
  updated_at: string;
  stale: boolean;
}

/** `GET /pool/status` of the Go server (not served by this server yet). */
export interface VMPoolStatus {
  enabled: boolean;
  vms?: number;
  max_vms?: number;
  total_users?: number;
  max_users_per_vm?: number;
}

/** `GET /quotas/summary` of the Go server (not served by this server yet). */
export interface QuotaSummary {
  total: number;
  with_max_sandboxes: number;
  with_max_ttl: number;
  with_max_exec_timeout: number;
}
