/**
 * StacyVM SDK: `import { Client } from 'stacyvm'`.
 *
 * Zero runtime dependencies; uses the platform's `fetch`, `AbortSignal`, `ReadableStream` and
 * `TextDecoder`, so it runs in Node 20+, browsers and edge runtimes.
 */
export { Client, DEFAULT_BASE_URL, DEFAULT_TIMEOUT_MS } from './client.js';
export type { ClientConfig, ForgevmClientOptions } from './client.js';
export { Sandbox } from './sandbox.js';
export type { Command } from './sandbox.js';
export { ExecStream } from './exec-stream.js';
export { TemplateManager } from './templates.js';
export type {
  Template,
  TemplateConfig,
  TemplateInput,
  TemplateSpawnOverrides,
} from './templates.js';
export { parseGoDuration } from './duration.js';
export type { Duration } from './duration.js';
export {
  BadRequestError,
  ConflictError,
  ConnectionError,
  ERROR_CATALOG,
  ForbiddenError,
  InternalError,
  MalformedResponseError,
  NotFoundError,
  PayloadTooLargeError,
  RequestTimeoutError,
  ResourceLimitError,
  SandboxNotFoundError,
  StacyVMError,
  StreamInterruptedError,
  TimeoutError,
  UnauthorizedError,
  UnavailableError,
} from './errors.js';
export type { ErrorDetail, StacyVMErrorOptions } from './errors.js';
export type {
  ClientOptions,
  DeleteFileOptions,
  ExecExit,
  ExecLogEntry,
  ExecOptions,
  ExecResult,
  ExecStreamEvent,
  FetchLike,
  FileInfo,
  FileMode,
  HealthInfo,
  ProviderInfo,
  QuotaSummary,
  ReadFileOptions,
  SandboxInfo,
  SandboxState,
  SandboxStats,
  SpawnAdmissionDecision,
  SpawnOptions,
  StreamChunk,
  VMPoolStatus,
  WorkerInfo,
  WriteFileOptions,
} from './types.js';
