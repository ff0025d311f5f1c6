import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { extract as tarExtract, pack as tarPack } from 'tar-stream';
import type { Header, Pack } from 'tar-stream';
import { StacyError, badRequest, conflict, invalidField, notFound } from '../../domain/errors.js';
import { TIMEOUT_EXIT_CODE, buildExecArgv } from '../../domain/exec.js';
import type { ExecEvent, ExecOutcome, ExecSpec } from '../../domain/exec.js';
import { normalizeSandboxPath } from '../../domain/files.js';
import type { FileEntry } from '../../domain/files.js';
import { compileGlob } from '../glob.js';
import type {
  CallOptions,
  FileSource,
  PreviewEndpoint,
  Provider,
  ProviderHealth,
  ProviderStats,
  ReadFileResult,
  RuntimeStatus,
  SpawnOptions,
  SpawnResult,
} from '../provider.js';
import { createDockerodeEngine } from './docker-engine.js';
import type { ContainerFacts, DockerEngine, ImageFacts } from './docker-engine.js';
import {
  ASSEMBLE_SCRIPT,
  ExecDemuxer,
  LABELS,
  LIST_SCRIPT,
  MOVE_SCRIPT,
  OCI_FAILURE_PREFIX,
  WORKSPACE_DIR,
  WRITE_PREP_SCRIPT,
  baseName,
  buildContainerSpec,
  buildExecEnv,
  buildLabels,
  checkImageReference,
  checkPorts,
  chooseSandboxUser,
  classifyFsStderr,
  classifyOciFailure,
  computeStats,
  declaredPorts,
  dirFixes,
  demuxAll,
  engineFailure,
  entryFromPathStat,
  fsCommandError,
  globMaxDepth,
  isValidPreviewDomain,
  isValidRuntimeId,
  killArgv,
  logLines,
  mapContainerState,
  mapEngineError,
  numericUser,
  parseCpus,
  parseListOutput,
  parseMemoryBytes,
  parsePasswd,
  parsePathStatHeader,
  parentOf,
  previewEndpointOf,
  resolveResources,
  resolveUserSpec,
  scriptArgv,
  splitNul,
} from './docker-spec.js';
import type {
  DirFixes,
  EngineErrorContext,
  ImageReference,
  PathStat,
  PreviewUpstreamMode,
  SandboxUser,
} from './docker-spec.js';
import { collectExecOutcome } from '../collect-exec.js';

/** One line of image pull progress. */
export interface PullProgress {
  /** The image as the spawn asked for it. */
  image: string;
  /** The Engine's status text (`Pulling fs layer`, `Downloading`, …). */
  status: string;
  /** Layer id, when the line is about a layer. */
  layer?: string;
  currentBytes?: number;
  totalBytes?: number;
}

/** Options of {@link DockerProvider}; every field has a default. */
export interface DockerProviderOptions {
  /** Daemon socket. Default: the path in `DOCKER_HOST` (`unix://…`), else `/var/run/docker.sock`; a `tcp://` `DOCKER_HOST` is used as is. */
  socketPath?: string;
  /** OCI runtime (`runc`, `runsc`, `kata-runtime`). Default `runc`. */
  runtime?: string;
  /** Default `bridge`; `none` cuts the sandbox off the network. */
  networkMode?: string;
  /** Image used when a spawn names none. Default `alpine:latest`. */
  defaultImage?: string;
  /** Read-only root filesystem with writable tmpfs `/workspace` and `/tmp`. Default false. */
  readOnlyRootfs?: boolean;
  /** Size of each of those two tmpfs volumes, in MiB (host memory, outside the container limit). Default 1024. */
  scratchSizeMb?: number;
  /** Default 256. */
  pidsLimit?: number;
  /**
   * User the sandbox runs as (`name`, `uid`, `uid:gid`). Empty (default)
   * means: the image's `USER` if it sets one, else a non-root account named
   * `sandbox`, else the lowest account with uid ≥ 1000 (not `nobody`), else
   * root (which still has no capabilities).
   */
  user?: string;
  /** Default `['ALL']`. */
  droppedCaps?: string[];
  /** Default none. */
  addedCaps?: string[];
  /** `default` (the Engine's profile), `unconfined`, a profile file path, or the profile's JSON. */
  seccompProfile?: string;
  /** Memory of a spawn that asks for none, in MiB. Default 1024. */
  memoryMb?: number;
  /** The same as a Docker size string (`512m`); used when `memoryMb` is not given. */
  memory?: string;
  /** vCPUs of a spawn that asks for none. Default 1. */
  cpus?: number | string;
  /** Domain of preview hosts (`<port>-<id>.<domain>`); empty disables the Traefik labels. Default `localhost`. */
  previewDomain?: string;
  /**
   * How the preview gateway on this host reaches a sandbox port. `published`:
   * declared ports are published on 127.0.0.1 (Engine-chosen host ports) at
   * spawn; `container_ip`: the container's address on its network (only where
   * this host can route to it, and nothing is published); `auto` (default):
   * published, else the container address.
   */
  previewUpstream?: PreviewUpstreamMode;
  /** Labels added to every container (e.g. a test-run id); they never override the provider's own. */
  extraLabels?: Record<string, string>;
  /** Called for each progress line of an image pull. */
  onPullProgress?: (progress: PullProgress) => void;
  /** Gives up on a pull after this long. Default 10 minutes. */
  pullTimeoutMs?: number;
  /** Per-stream cap on what a sync `exec` keeps (the head). Default 16 MiB. */
  maxOutputBytes?: number;
  /** Paths a `globFiles` may return before it gives up. Default 100 000. */
  maxGlobEntries?: number;
  /** Engine client; inject a fake only in unit tests of the provider's pure behaviour. */
  engine?: DockerEngine;
}

const MIB = 1024 * 1024;
/** How long an inspect answer serves preview requests: a page load fans out to many. */
const PREVIEW_FACTS_TTL_MS = 1_000;
const DEFAULT_SOCKET = '/var/run/docker.sock';
const DEFAULT_MAX_OUTPUT_BYTES = 16 * MIB;
const DEFAULT_MAX_GLOB_ENTRIES = 100_000;
const DEFAULT_PULL_TIMEOUT_MS = 10 * 60_000;
/** Stream queue size above which the exec's socket is paused. */
const HIGH_WATER_BYTES = 256 * 1024;
const LOW_WATER_BYTES = 64 * 1024;
/** A quiet stream is checked for an exited command this often (doubling up to the max). */
const EXIT_POLL_MIN_MS = 250;
const EXIT_POLL_MAX_MS = 2_000;
/**
 * After the command exits, a background process may still hold its output;
 * once that stays quiet this long the exec is reported finished.
 */
const PIPE_GRACE_MS = 200;
/** After the killer ran, output still open this long is abandoned. */
const KILL_GRACE_MS = 1_000;
/** The killer exec itself is abandoned after this long. */
const KILLER_TIMEOUT_MS = 5_000;
/** Deadline of the helper commands behind the file operations. */
const INTERNAL_TIMEOUT_MS = 120_000;
/** Upload part size: an AsyncIterable body is sent in tar entries of about this size. */
const PART_BYTES = 4 * MIB;
/** Largest `/etc/passwd` read to choose the sandbox user. */
const MAX_PASSWD_BYTES = MIB;
const MAX_SYMLINK_HOPS = 40;
/** setTimeout fires at once for delays beyond a signed 32-bit int. */
const MAX_TIMER_MS = 2_147_483_647;

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The catalog error for a cancelled call: the signal's own StacyError reason, else TIMEOUT. */
function abortError(signal: AbortSignal): StacyError {
  const reason: unknown = signal.reason;
  if (reason instanceof StacyError) return reason;
  return new StacyError('TIMEOUT', 'operation was cancelled', { cause: reason });
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw abortError(signal);
}

function validateMode(mode: number): void {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw invalidField('mode', 'must be a permission mode between 0000 and 07777');
  }
}

function sandboxPath(raw: string, field: string): string {
  const n = normalizeSandboxPath(raw);
  if (typeof n !== 'string') {
    throw invalidField(
      field,
      n.problem === 'path is required' ? `${field} is required` : n.problem,
    );
  }
  return n;
}

function byCodeUnit(a: string, b: string): number {
  if (a < b) return -1;
  return a > b ? 1 : 0;
}

/** The socket or host the provider talks to, and how to reach it. */
function resolveEndpoint(socketPath: string | undefined): {
  socketPath: string | undefined;
  describe: string;
} {
  if (socketPath !== undefined && socketPath !== '') return { socketPath, describe: socketPath };
  const env = process.env['DOCKER_HOST'];
  if (env !== undefined && env !== '') {
    if (env.startsWith('unix://')) {
      const path = env.slice('unix://'.length) || DEFAULT_SOCKET;
      return { socketPath: path, describe: path };
    }
    return { socketPath: undefined, describe: env };
  }
  return { socketPath: DEFAULT_SOCKET, describe: DEFAULT_SOCKET };
}

type TarHeader = Partial<Header> & Pick<Header, 'name'>;

/**
 * A tar pack as a Node stream for the Engine client. Byte mode with a small
 * high-water mark, so at most about one part waits in memory beside the one
 * being read from the source.
 */
function packStream(pack: Pack): Readable {
  return Readable.from(pack, { objectMode: false, highWaterMark: 64 * 1024 });
}

/** Adds a tar entry and resolves once the pack has taken all of it (backpressure). */
function addEntry(pack: Pack, header: TarHeader, body?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null): void => {
      if (err) reject(err);
      else resolve();
    };
    if (body === undefined) pack.entry(header, done);
    else pack.entry(header, body, done);
  });
}

/** The next chunk of an upload body, or undefined at its end; a failing body is the client's BAD_REQUEST. */
async function nextChunk(it: AsyncIterator<Uint8Array>): Promise<Buffer | undefined> {
  for (;;) {
    let next: IteratorResult<Uint8Array>;
    try {
      next = await it.next();
    } catch (err) {
      if (err instanceof StacyError) throw err;
      throw new StacyError('BAD_REQUEST', `file body could not be read: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    if (next.done === true) return undefined;
    if (next.value.byteLength > 0) {
      return Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    }
  }
}

/**
 * Cuts an upload body into parts of at most `partBytes`. Each chunk is
 * copied once, into the part, before the next is asked for (a producer may
 * reuse its buffer after that). The first part starts small and grows, so a
 * small file costs a small buffer.
 */
class PartReader {
  /** True once the body has ended. */
  done = false;
  private rest: Buffer | undefined;
  private first = true;

  constructor(
    private readonly it: AsyncIterator<Uint8Array>,
    private readonly partBytes: number,
  ) {}

  /** The next part; empty only when the body has ended. */
  async next(): Promise<Buffer> {
    let buf = Buffer.allocUnsafe(this.first ? Math.min(64 * 1024, this.partBytes) : this.partBytes);
    this.first = false;
    let filled = 0;
    const put = (chunk: Buffer): void => {
      if (filled + chunk.byteLength > buf.byteLength && buf.byteLength < this.partBytes) {
        let size = buf.byteLength;
        while (size < filled + chunk.byteLength && size < this.partBytes) size *= 2;
        const bigger = Buffer.allocUnsafe(Math.min(size, this.partBytes));
        buf.copy(bigger, 0, 0, filled);
        buf = bigger;
      }
      const n = chunk.copy(buf, filled);
      filled += n;
      if (n < chunk.byteLength) this.rest = chunk.subarray(n);
    };
    const carried = this.rest;
    this.rest = undefined;
    if (carried !== undefined) put(carried);
    while (filled < this.partBytes && this.rest === undefined && !this.done) {
      const chunk = await nextChunk(this.it);
      if (chunk === undefined) this.done = true;
      else put(chunk);
    }
    return buf.subarray(0, filled);
  }
}

/**
 * Fails pending steps when a parallel task fails. Unlike racing each step
 * against one long-lived promise, it keeps no reference to settled steps
 * (a race per part would pin every part of an upload in memory).
 */
class Tripwire {
  private failure: { err: Error } | undefined;
  private readonly waiting = new Set<(err: Error) => void>();

  trip(err: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = { err: asError(err) };
    for (const reject of this.waiting) reject(this.failure.err);
    this.waiting.clear();
  }

  guard<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.failure !== undefined) {
        p.catch(() => undefined);
        reject(this.failure.err);
        return;
      }
      this.waiting.add(reject);
      p.then(
        (value) => {
          this.waiting.delete(reject);
          resolve(value);
        },
        (err: unknown) => {
          this.waiting.delete(reject);
          reject(asError(err));
        },
      );
    });
  }
}

/** The header of the first entry of a tar stream; the rest is not read. */
async function firstTarHeader(res: Readable): Promise<Header | undefined> {
  const ex = tarExtract();
  res.on('error', (err) => ex.destroy(err));
  res.pipe(ex);
  try {
    for await (const entry of ex) {
      entry.resume();
      return entry.header;
    }
    return undefined;
  } finally {
    res.destroy();
    ex.destroy();
  }
}

/** The bytes of the first regular file in a tar stream, as they arrive. */
async function* tarFileBody(res: Readable): AsyncGenerator<Uint8Array> {
  const ex = tarExtract();
  res.on('error', (err) => ex.destroy(err));
  res.pipe(ex);
  try {
    for await (const entry of ex) {
      if (entry.header.type === 'file' || entry.header.type === 'contiguous-file') {
        for await (const chunk of entry) yield chunk as Buffer;
        return;
      }
      entry.resume();
    }
  } finally {
    res.destroy();
    ex.destroy();
  }
}

/** The prepared form of an exec. */
interface ExecPlan {
  sandboxId: string;
  argv: string[];
  env: string[];
  workdir: string;
  timeoutMs: number;
  /** Value of the marker variable every process of this exec inherits. */
  marker: string;
}

/** What spawning an image takes, learnt once per image. */
interface ImagePlan {
  user: SandboxUser;
  fixes: DirFixes;
}

/** Result of a helper command behind a file operation. */
interface InternalResult {
  exitCode: number;
  stdout: Buffer;
  stderr: string;
  truncated: boolean;
}

/**
 * Sandboxes as containers on a Docker Engine, driven through the Engine API.
 *
 * Each sandbox is a container named after its sandbox id, labelled
 * `stacyvm=true` (only such containers are ever touched), kept alive by a
 * sleep under docker-init, with every capability dropped,
 * `no-new-privileges`, a pids limit, memory and CPU limits, and a non-root
 * user when the image has one.
 *
 * Every exec carries a marker variable in its environment; a deadline, an
 * abort, or a consumer leaving a stream runs a second exec that kills every
 * process carrying the marker (the command, its children and background
 * jobs). A process that clears its own environment escapes that; `destroy`
 * still removes it.
 *
 * Files go through the archive API (uploads are streamed as tar, large ones
 * in parts joined inside the container; downloads stream the tar entry out)
 * and small helper commands run as the sandbox user (`find`, `stat`, `mv`,
 * `rm`, `chmod`, paths passed as argv). The image needs a POSIX `sh`,
 * `grep -z`, `find`, `stat -c` (busybox or coreutils). Reads go through the
 * daemon and so reach any path of the container; writes are first checked
 * to be where the sandbox user may write. That check precedes the upload,
 * so a process in the sandbox racing it could redirect a write elsewhere in
 * its own container (never outside it: the daemon resolves paths in the
 * container's scope).
 */
export class DockerProvider implements Provider {
  readonly name = 'docker';
  readonly capabilities: readonly string[] = ['container'];

  private readonly engine: DockerEngine;
  private readonly endpoint: string;
  private readonly runtime: string;
  private readonly networkMode: string;
  private readonly defaultImage: string;
  private readonly readOnlyRootfs: boolean;
  private readonly scratchSizeMb: number;
  private readonly pidsLimit: number;
  private readonly user: string;
  private readonly droppedCaps: string[];
  private readonly addedCaps: string[];
  private readonly seccompProfile: string;
  private readonly fallbackMemoryBytes: number;
  private readonly fallbackCpus: number;
  private readonly previewDomain: string;
  private readonly previewMode: PreviewUpstreamMode;
  private readonly extraLabels: Record<string, string>;
  private readonly onPullProgress: ((progress: PullProgress) => void) | undefined;
  private readonly pullTimeoutMs: number;
  private readonly maxOutputBytes: number;
  private readonly maxGlobEntries: number;
  private seccompValue: Promise<string> | undefined;
  /** Sandboxes verified as ours, with the identity their files get. */
  private readonly owned = new Map<string, SandboxUser>();
  /** Recent inspect answers for preview requests, by sandbox id. */
  private readonly previewFacts = new Map<
    string,
    { atMs: number; facts: Promise<ContainerFacts> }
  >();
  /** What a spawn of an image needs, per image id and user spec. */
  private readonly imagePlans = new Map<string, Promise<ImagePlan>>();

  constructor(options: DockerProviderOptions = {}) {
    const endpoint = resolveEndpoint(options.socketPath);
    this.endpoint = endpoint.describe;
    this.engine =
      options.engine ??
      createDockerodeEngine(
        endpoint.socketPath === undefined ? {} : { socketPath: endpoint.socketPath },
      );
    this.runtime = options.runtime ?? 'runc';
    this.networkMode = options.networkMode ?? 'bridge';
    this.defaultImage = options.defaultImage ?? 'alpine:latest';
    this.readOnlyRootfs = options.readOnlyRootfs ?? false;
    this.scratchSizeMb = options.scratchSizeMb ?? 1024;
    this.pidsLimit = options.pidsLimit ?? 256;
    this.user = options.user ?? '';
    this.droppedCaps = options.droppedCaps ?? ['ALL'];
    this.addedCaps = options.addedCaps ?? [];
    this.seccompProfile = options.seccompProfile ?? 'default';
    this.fallbackMemoryBytes =
      options.memoryMb !== undefined
        ? Math.round(options.memoryMb * MIB)
        : options.memory !== undefined
          ? parseMemoryBytes(options.memory)
          : 1024 * MIB;
    this.fallbackCpus = options.cpus === undefined ? 1 : parseCpus(options.cpus);
    this.previewDomain = options.previewDomain ?? 'localhost';
    this.previewMode = options.previewUpstream ?? 'auto';
    this.extraLabels = { ...options.extraLabels };
    this.onPullProgress = options.onPullProgress;
    this.pullTimeoutMs = options.pullTimeoutMs ?? DEFAULT_PULL_TIMEOUT_MS;
    this.maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    this.maxGlobEntries = options.maxGlobEntries ?? DEFAULT_MAX_GLOB_ENTRIES;
    if (!isValidPreviewDomain(this.previewDomain)) {
      throw invalidField(
        'previewDomain',
        `${JSON.stringify(this.previewDomain)} is not a hostname`,
      );
    }
    if (!Number.isInteger(this.pidsLimit) || this.pidsLimit < 1) {
      throw invalidField('pidsLimit', 'must be a positive integer');
    }
  }

  /** Pings the daemon (UNAVAILABLE naming the socket when it does not answer) and loads the seccomp profile. */
  async init(): Promise<void> {
    try {
      await this.engine.ping();
    } catch (err) {
      throw new StacyError(
        'UNAVAILABLE',
        `Docker daemon at ${this.endpoint} does not answer: ${engineFailure(err).message} (is dockerd running?)`,
        { cause: err },
      );
    }
    await this.seccomp();
  }

  async health(): Promise<ProviderHealth> {
    const started = performance.now();
    try {
      await this.engine.ping(AbortSignal.timeout(5_000));
      return { healthy: true, latencyMs: performance.now() - started };
    } catch (err) {
      return {
        healthy: false,
        latencyMs: performance.now() - started,
        error: `Docker daemon at ${this.endpoint} does not answer: ${engineFailure(err).message}`,
      };
    }
  }

  describe(): Record<string, unknown> {
    return {
      type: 'docker',
      endpoint: this.endpoint,
      runtime: this.runtime,
      network_mode: this.networkMode,
      default_image: this.defaultImage,
      read_only_rootfs: this.readOnlyRootfs,
      pids_limit: this.pidsLimit,
      user: this.user === '' ? 'auto' : this.user,
      dropped_caps: this.droppedCaps,
      added_caps: this.addedCaps,
      seccomp_profile: this.seccompProfile.trimStart().startsWith('{')
        ? 'custom'
        : this.seccompProfile,
      preview_domain: this.previewDomain,
      preview_upstream: this.previewMode,
    };
  }

  // -------------------------------------------------------------------------
  // Lifecycle

  async spawn(opts: SpawnOptions): Promise<SpawnResult> {
    const signal = opts.signal;
    throwIfAborted(signal);
    const id = this.checkId(opts.sandboxId, 'sandboxId');
    const requested = opts.image === '' ? this.defaultImage : opts.image;
    const ref = checkImageReference(requested);
    const limits = resolveResources(
      { memoryMb: opts.memoryMb, vcpus: opts.vcpus },
      { memoryBytes: this.fallbackMemoryBytes, cpus: this.fallbackCpus },
    );
    const ports = checkPorts(opts.ports);
    const labels = buildLabels({
      sandboxId: id,
      image: requested,
      metadata: opts.metadata,
      ports,
      previewDomain: this.previewDomain,
      extraLabels: this.extraLabels,
    });
    const seccomp = await this.seccomp();
    const image = await this.ensureImage(ref, requested, signal);
    const plan = await this.imagePlan(ref, image, signal);
    const user = plan.user;
    const spec = buildContainerSpec({
      sandboxId: id,
      image: ref.canonical,
      labels,
      user,
      limits,
      pidsLimit: this.pidsLimit,
      droppedCaps: this.droppedCaps,
      addedCaps: this.addedCaps,
      seccomp,
      readOnlyRootfs: this.readOnlyRootfs,
      scratchSizeMb: this.scratchSizeMb,
      networkMode: this.networkMode,
      runtime: this.runtime,
      publishPorts: this.previewMode === 'container_ip' ? [] : ports,
    });
    let created = false;
    try {
      try {
        await this.engine.createContainer(spec, signal);
      } catch (err) {
        if (engineFailure(err).statusCode === 409) {
          throw conflict(`sandbox already exists: ${id}`);
        }
        throw err;
      }
      created = true;
      // Docker would create a missing WorkingDir owned by root; a non-root
      // user needs its own /workspace and a world-writable /tmp. Done through
      // the archive API (root in the container has no CAP_CHOWN), and only
      // when the image lacks them: each upload costs the Engine a re-exec.
      if (plan.fixes.workspace || plan.fixes.tmp) await this.prepareDirs(id, plan, signal);
      await this.engine.startContainer(id, signal);
    } catch (err) {
      if (created) await this.engine.removeContainer(id).catch(() => undefined);
      if (signal?.aborted === true) throw abortError(signal);
      throw mapEngineError(err, {
        endpoint: this.endpoint,
        action: `spawn sandbox ${id}`,
        notFound: { code: 'NOT_FOUND', message: `image not found: ${requested}` },
      });
    }
    this.owned.set(id, user);
    return { runtimeId: id };
  }

  async status(runtimeId: string, opts?: CallOptions): Promise<RuntimeStatus> {
    throwIfAborted(opts?.signal);
    const id = this.checkId(runtimeId);
    const info = await this.inspectOwned(id, opts?.signal);
    return { state: mapContainerState(info.state) };
  }

  async destroy(runtimeId: string, opts?: CallOptions): Promise<void> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const info = await this.call(
      `inspect sandbox ${id}`,
      (s) => this.engine.inspectContainer(id, s),
      {},
      signal,
    );
    this.owned.delete(id);
    this.previewFacts.delete(id);
    if (info === undefined) return;
    if (!this.isOurs(id, info)) throw notFound(`sandbox not found: ${id}`);
    try {
      await this.engine.removeContainer(info.id, signal);
    } catch (err) {
      const f = engineFailure(err);
      // Someone else is already removing it: the outcome is the same.
      if (f.statusCode === 409 && /already in progress/i.test(f.message)) return;
      if (signal?.aborted === true) throw abortError(signal);
      throw mapEngineError(err, { endpoint: this.endpoint, action: `destroy sandbox ${id}` });
    }
  }

  async logs(runtimeId: string, lines: number, opts?: CallOptions): Promise<string[]> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    if (!Number.isInteger(lines) || lines < 0) {
      throw invalidField('lines', 'must be a non-negative integer');
    }
    await this.sandbox(id, signal);
    if (lines === 0) return [];
    const raw = await this.call(
      `read logs of sandbox ${id}`,
      (s) => this.engine.containerLogs(id, lines, s),
      { sandboxId: id },
      signal,
    );
    return logLines(demuxAll(raw), lines);
  }

  /** One sample: the Engine waits about a second so the CPU share has a baseline. */
  async stats(runtimeId: string, opts?: CallOptions): Promise<ProviderStats> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    await this.sandbox(id, signal);
    const raw = await this.call(
      `read stats of sandbox ${id}`,
      (s) => this.engine.containerStats(id, s),
      { sandboxId: id },
      signal,
    );
    return computeStats(raw);
  }

  /**
   * Where this host reaches `port` of the sandbox: its published loopback
   * port, or its container address (see {@link DockerProviderOptions.previewUpstream}).
   * CONFLICT when the container is not running; BAD_REQUEST naming `ports`
   * when the port was not declared at spawn.
   */
  async previewUpstream(
    runtimeId: string,
    port: number,
    opts?: CallOptions,
  ): Promise<PreviewEndpoint> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw invalidField('port', `${port} is not a port number (1-65535)`);
    }
    const info = await this.previewInspect(id);
    throwIfAborted(signal);
    const state = mapContainerState(info.state);
    if (state !== 'running') throw conflict(`sandbox ${id} is not running (${state})`);
    const found = previewEndpointOf({
      sandboxId: id,
      port,
      declared: declaredPorts(info.labels),
      mode: this.previewMode,
      reach: info.reach ?? { ports: {}, ipAddresses: [] },
    });
    if ('problem' in found) throw badRequest(found.problem);
    return found;
  }

  /**
   * The container's facts for a preview request, shared by the requests of
   * the next second (one Engine call instead of one per asset of a page).
   * Not bound to one caller's signal, since others wait on it too.
   */
  private previewInspect(id: string): Promise<ContainerFacts> {
    const now = Date.now();
    const hit = this.previewFacts.get(id);
    if (hit !== undefined && now - hit.atMs < PREVIEW_FACTS_TTL_MS) return hit.facts;
    if (this.previewFacts.size > 1_000) {
      for (const [key, v] of this.previewFacts) {
        if (now - v.atMs >= PREVIEW_FACTS_TTL_MS) this.previewFacts.delete(key);
      }
    }
    const facts = this.inspectOwned(id, undefined);
    this.previewFacts.set(id, { atMs: now, facts });
    facts.catch(() => {
      if (this.previewFacts.get(id)?.facts === facts) this.previewFacts.delete(id);
    });
    return facts;
  }

  /** Names of every container labelled `stacyvm=true`, in any state, sorted. */
  async listRuntimes(opts?: CallOptions): Promise<string[]> {
    const signal = opts?.signal;
    const list = await this.call(
      'list sandboxes',
      (s) => this.engine.listContainers([`${LABELS.managed}=true`], s),
      {},
      signal,
    );
    const names = list
      .map((c) => c.names[0])
      .filter((n): n is string => n !== undefined && isValidRuntimeId(n));
    return [...new Set(names)].sort(byCodeUnit);
  }

  // -------------------------------------------------------------------------
  // Exec

  /**
   * Runs a command to completion or its deadline. Each stream keeps at most
   * `maxOutputBytes` (the head; the rest is read and dropped).
   */
  async exec(runtimeId: string, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome> {
    const plan = await this.planExec(runtimeId, spec, opts?.signal);
    return collectExecOutcome(this.runExec(plan, opts?.signal), this.maxOutputBytes);
  }

  /**
   * Streams output as the Engine delivers it, then one `exit` event. A slow
   * consumer pauses the socket (so the command blocks on write); leaving
   * the loop early or aborting `signal` kills the command in the container.
   */
  execStream(runtimeId: string, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent> {
    const plan = (): Promise<ExecPlan> => this.planExec(runtimeId, spec, opts?.signal);
    const run = (p: ExecPlan): AsyncGenerator<ExecEvent> => this.runExec(p, opts?.signal);
    return {
      async *[Symbol.asyncIterator]() {
        yield* run(await plan());
      },
    };
  }

  // -------------------------------------------------------------------------
  // Files

  /**
   * Uploads through the archive API with the sandbox user as owner and
   * `mode` exactly. A buffer, or a stream that ends within one part, is a
   * single tar entry; a longer stream is sent as parts of about 4 MiB in
   * one streamed tar, joined inside the container and renamed over the
   * target, so neither side holds the whole file.
   */
  async writeFile(
    runtimeId: string,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    validateMode(mode);
    const id = this.checkId(runtimeId);
    const target = sandboxPath(path, 'path');
    if (target === '/') throw badRequest('/ is a directory');
    const user = await this.sandbox(id, signal);
    const parent = parentOf(target);
    const prep = await this.runInternal(
      id,
      scriptArgv(WRITE_PREP_SCRIPT, 'stacyvm-write', [parent, target]),
      signal,
    );
    switch (prep.exitCode) {
      case 0:
        break;
      case 10:
        throw this.mkdirError(prep.stderr, target, parent);
      case 11:
        throw badRequest(`${target} is a directory`);
      case 12:
        throw new StacyError('FORBIDDEN', `permission denied: ${parent} is not writable`);
      default:
        throw fsCommandError(prep.stderr, target, 'write');
    }
    if (data instanceof Uint8Array) {
      await this.putSingle(
        id,
        target,
        Buffer.from(data.buffer, data.byteOffset, data.byteLength),
        mode,
        user,
        signal,
      );
    } else {
      await this.putStream(id, target, data, mode, user, signal);
    }
  }

  async readFile(runtimeId: string, path: string, opts?: CallOptions): Promise<ReadFileResult> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const p = sandboxPath(path, 'path');
    await this.sandbox(id, signal);
    const found = await this.statFollow(id, p, signal);
    if (found === undefined) throw notFound(`no such file: ${p}`);
    if (found.stat.isDir) throw badRequest(`${p} is a directory`);
    if (!found.stat.isRegular) throw badRequest(`${p} is not a regular file`);
    const res = await this.call(
      `read ${p}`,
      (s) => this.engine.getArchive(id, found.resolved, s),
      { sandboxId: id, notFound: { code: 'NOT_FOUND', message: `no such file: ${p}` } },
      signal,
    );
    return { size: found.stat.size, body: tarFileBody(res) };
  }

  async listFiles(runtimeId: string, path: string, opts?: CallOptions): Promise<FileEntry[]> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const dir = sandboxPath(path, 'path');
    await this.sandbox(id, signal);
    const r = await this.runInternal(
      id,
      scriptArgv(LIST_SCRIPT, 'stacyvm-list', [dir]),
      signal,
      this.maxOutputBytes,
    );
    switch (r.exitCode) {
      case 0:
        if (r.truncated) {
          throw new StacyError('RESOURCE_LIMIT', `${dir} has too many entries to list`, {
            retryable: false,
          });
        }
        return parseListOutput(r.stdout, dir);
      case 2:
        throw notFound(`no such file: ${dir}`);
      case 20:
        throw badRequest(`not a directory: ${dir}`);
      case 13:
        throw new StacyError('FORBIDDEN', `permission denied: ${dir}`);
      default:
        throw fsCommandError(r.stderr, dir, 'list');
    }
  }

  /** Follows symlinks, as `stat(2)`. */
  async statFile(runtimeId: string, path: string, opts?: CallOptions): Promise<FileEntry> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const p = sandboxPath(path, 'path');
    await this.sandbox(id, signal);
    const found = await this.statFollow(id, p, signal);
    if (found === undefined) throw notFound(`no such file: ${p}`);
    return entryFromPathStat(p, found.stat);
  }

  async deleteFile(
    runtimeId: string,
    path: string,
    recursive: boolean,
    opts?: CallOptions,
  ): Promise<void> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const p = sandboxPath(path, 'path');
    if (p === '/' || p === WORKSPACE_DIR) throw badRequest(`refusing to delete ${p}`);
    await this.sandbox(id, signal);
    const st = await this.statNoFollow(id, p, signal);
    if (st === undefined) throw notFound(`no such file: ${p}`);
    let argv: string[];
    if (!st.isDir) argv = ['rm', '-f', '--', p];
    else if (recursive) argv = ['rm', '-rf', '--', p];
    else argv = ['rmdir', '--', p];
    const r = await this.runInternal(id, argv, signal);
    if (r.exitCode === 0) return;
    if (classifyFsStderr(r.stderr) === 'not_empty') {
      throw badRequest(
        `directory ${p} is not empty; pass recursive=true to delete it and its contents`,
      );
    }
    throw fsCommandError(r.stderr, p, 'delete');
  }

  /** Rename semantics: parents of the target are created; a non-empty directory is never replaced. */
  async moveFile(runtimeId: string, from: string, to: string, opts?: CallOptions): Promise<void> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const src = sandboxPath(from, 'from');
    const dst = sandboxPath(to, 'to');
    for (const p of [src, dst]) {
      if (p === '/' || p === WORKSPACE_DIR) throw badRequest(`refusing to move ${p}`);
    }
    await this.sandbox(id, signal);
    if ((await this.statNoFollow(id, src, signal)) === undefined) {
      throw notFound(`no such file: ${src}`);
    }
    if (src === dst) return;
    if (dst.startsWith(`${src}/`)) {
      throw badRequest(`cannot move ${src} into itself (${dst})`);
    }
    const dstParent = parentOf(dst);
    const r = await this.runInternal(
      id,
      scriptArgv(MOVE_SCRIPT, 'stacyvm-move', [src, dst, dstParent]),
      signal,
    );
    switch (r.exitCode) {
      case 0:
        return;
      case 10:
        throw this.mkdirError(r.stderr, dst, dstParent);
      case 11:
        throw conflict(`cannot move onto ${dst}: it is a non-empty directory`);
      case 12:
        throw conflict(`cannot move a file onto directory ${dst}`);
      case 13:
        throw conflict(`cannot move a directory onto file ${dst}`);
      default:
        throw fsCommandError(
          r.stderr,
          classifyFsStderr(r.stderr) === 'not_found' ? src : dst,
          'move',
        );
    }
  }

  async chmodFile(
    runtimeId: string,
    path: string,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    validateMode(mode);
    const id = this.checkId(runtimeId);
    const p = sandboxPath(path, 'path');
    await this.sandbox(id, signal);
    // Paths are absolute, so they cannot be taken for a mode or an option.
    const r = await this.runInternal(id, ['chmod', mode.toString(8), p], signal);
    if (r.exitCode !== 0) throw fsCommandError(r.stderr, p, 'chmod');
  }

  /**
   * `find` from the pattern's literal base (no deeper than the pattern
   * reaches unless it has `**`; symlinked directories are not descended),
   * filtered with the shared glob matcher.
   */
  async globFiles(runtimeId: string, pattern: string, opts?: CallOptions): Promise<string[]> {
    const signal = opts?.signal;
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    const abs = normalizeSandboxPath(pattern);
    if (typeof abs !== 'string') {
      throw invalidField(
        'pattern',
        abs.problem === 'path is required' ? 'pattern is required' : abs.problem,
      );
    }
    const matcher = compileGlob(abs);
    if ('problem' in matcher) throw invalidField('pattern', matcher.problem);
    await this.sandbox(id, signal);
    if (matcher.literalPath !== undefined) {
      const st = await this.statNoFollow(id, matcher.literalPath, signal);
      return st === undefined ? [] : [matcher.literalPath];
    }
    const depth = globMaxDepth(abs, matcher.base);
    const argv = ['find', '-H', matcher.base, '-mindepth', '0'];
    if (depth !== undefined) argv.push('-maxdepth', String(depth));
    // Walking the kernel's pseudo-filesystems is slow and never what a pattern over / means.
    if (matcher.base === '/') {
      argv.push('(', '-path', '/proc', '-o', '-path', '/sys', ')', '-prune', '-o');
    }
    argv.push('-print0');
    const r = await this.runInternal(id, argv, signal, this.maxOutputBytes);
    const paths = splitNul(r.stdout);
    if (r.truncated || paths.length > this.maxGlobEntries) {
      throw new StacyError(
        'RESOURCE_LIMIT',
        `glob visited more than ${this.maxGlobEntries} entries; use a narrower pattern`,
        { retryable: false },
      );
    }
    const results = new Set(paths.filter((p) => matcher.matches(p)));
    return [...results].sort(byCodeUnit);
  }

  // -------------------------------------------------------------------------
  // Internals: ownership and engine calls

  private checkId(runtimeId: string, field = 'runtimeId'): string {
    if (!isValidRuntimeId(runtimeId)) {
      throw invalidField(
        field,
        `${JSON.stringify(runtimeId.slice(0, 64))} is not a sandbox id (letters, digits, ".", "_", "-")`,
      );
    }
    return runtimeId;
  }

  private isOurs(id: string, info: ContainerFacts): boolean {
    // The name check also stops an id from matching a container by id prefix.
    return info.name === `/${id}` && info.labels[LABELS.managed] === 'true';
  }

  /** Runs one Engine call, mapping failures to the catalog. */
  private async call<T>(
    action: string,
    fn: (signal: AbortSignal | undefined) => Promise<T>,
    ctx: Pick<EngineErrorContext, 'sandboxId' | 'notFound'>,
    signal: AbortSignal | undefined,
  ): Promise<T> {
    throwIfAborted(signal);
    try {
      return await fn(signal);
    } catch (err) {
      if (signal?.aborted === true) throw abortError(signal);
      const mapped = mapEngineError(err, { endpoint: this.endpoint, action, ...ctx });
      if (ctx.sandboxId !== undefined && mapped.message === `sandbox not found: ${ctx.sandboxId}`) {
        this.owned.delete(ctx.sandboxId);
      }
      throw mapped;
    }
  }

  /** Inspects a sandbox container; NOT_FOUND when it is gone or is not one of ours. */
  private async inspectOwned(id: string, signal: AbortSignal | undefined): Promise<ContainerFacts> {
    const info = await this.call(
      `inspect sandbox ${id}`,
      (s) => this.engine.inspectContainer(id, s),
      {},
      signal,
    );
    if (info === undefined || !this.isOurs(id, info)) {
      this.owned.delete(id);
      throw notFound(`sandbox not found: ${id}`);
    }
    return info;
  }

  /**
   * Confirms the sandbox is ours (once per sandbox; a later 404 forgets it)
   * and returns the identity its files are written as.
   */
  private async sandbox(id: string, signal: AbortSignal | undefined): Promise<SandboxUser> {
    const known = this.owned.get(id);
    if (known !== undefined) return known;
    const info = await this.inspectOwned(id, signal);
    let user = numericUser(info.user);
    if (user === undefined) {
      if (info.user === '') {
        user = { uid: 0, gid: 0 };
      } else {
        const passwd = parsePasswd(
          (await this.readSmallFile(id, '/etc/passwd', MAX_PASSWD_BYTES, signal)) ?? '',
        );
        const resolved = resolveUserSpec(info.user, passwd);
        user = 'problem' in resolved ? { uid: 0, gid: 0 } : resolved;
      }
    }
    this.owned.set(id, user);
    return user;
  }

  private seccomp(): Promise<string> {
    this.seccompValue ??= this.loadSeccomp().catch((err: unknown) => {
      this.seccompValue = undefined;
      throw err;
    });
    return this.seccompValue;
  }

  /** The profile's JSON for a file path (the Engine API wants the content, not a path). */
  private async loadSeccomp(): Promise<string> {
    const p = this.seccompProfile.trim();
    if (p === '' || p === 'default' || p === 'unconfined' || p.startsWith('{')) return p;
    let text: string;
    try {
      text = await readFile(p, 'utf8');
    } catch (err) {
      throw new StacyError(
        'BAD_REQUEST',
        `seccomp profile ${p} cannot be read: ${errorMessage(err)}`,
        {
          cause: err,
        },
      );
    }
    try {
      JSON.parse(text);
    } catch (err) {
      throw new StacyError('BAD_REQUEST', `seccomp profile ${p} is not JSON`, { cause: err });
    }
    return text;
  }

  /** The image, pulled if it is not present; NOT_FOUND naming it when that fails. */
  private async ensureImage(
    ref: ImageReference,
    requested: string,
    signal: AbortSignal | undefined,
  ): Promise<ImageFacts> {
    const inspect = (): Promise<ImageFacts | undefined> =>
      this.call(
        `inspect image ${requested}`,
        (s) => this.engine.inspectImage(ref.canonical, s),
        {},
        signal,
      );
    const present = await inspect();
    if (present !== undefined) return present;
    const timeout = AbortSignal.timeout(this.pullTimeoutMs);
    const pullSignal = signal === undefined ? timeout : AbortSignal.any([signal, timeout]);
    try {
      await this.engine.pullImage(
        ref.canonical,
        (line) => {
          const progress: PullProgress = { image: requested, status: line.status };
          if (line.id !== undefined) progress.layer = line.id;
          if (line.current !== undefined) progress.currentBytes = line.current;
          if (line.total !== undefined) progress.totalBytes = line.total;
          this.onPullProgress?.(progress);
        },
        pullSignal,
      );
    } catch (err) {
      if (signal?.aborted === true) throw abortError(signal);
      const mapped = mapEngineError(err, { endpoint: this.endpoint, action: `pull ${requested}` });
      if (mapped.code === 'UNAVAILABLE') throw mapped;
      const why = timeout.aborted
        ? `pull timed out after ${Math.round(this.pullTimeoutMs / 1000)}s`
        : engineFailure(err).message;
      throw new StacyError(
        'NOT_FOUND',
        `image not found: ${requested} (not present locally and could not be pulled: ${why})`,
        { cause: err },
      );
    }
    const pulled = await inspect();
    if (pulled === undefined) {
      throw notFound(
        `image not found: ${requested} (the pull finished but the image is not present)`,
      );
    }
    return pulled;
  }

  /**
   * Who a sandbox of this image runs as (see `DockerProviderOptions.user`)
   * and which directories need fixing before start; worked out once per
   * image id from a probe container.
   */
  private imagePlan(
    ref: ImageReference,
    image: ImageFacts,
    signal: AbortSignal | undefined,
  ): Promise<ImagePlan> {
    const spec = this.user !== '' ? this.user : image.user;
    const key = `${image.id}|${spec}`;
    let pending = this.imagePlans.get(key);
    if (pending === undefined) {
      pending = this.probeImage(ref, spec, signal);
      this.imagePlans.set(key, pending);
      pending.catch(() => this.imagePlans.delete(key));
    }
    return pending;
  }

  /**
   * Reads the image's `/etc/passwd` and looks at its `/workspace` and
   * `/tmp` through a created, never started container that is not labelled
   * as a sandbox.
   */
  private async probeImage(
    ref: ImageReference,
    spec: string,
    signal: AbortSignal | undefined,
  ): Promise<ImagePlan> {
    const probeId = await this.call(
      `inspect image ${ref.canonical}`,
      (s) =>
        this.engine.createProbe(ref.canonical, { ...this.extraLabels, 'stacyvm.probe': 'true' }, s),
      {},
      signal,
    );
    try {
      let user = numericUser(spec);
      if (user === undefined) {
        const text = await this.readSmallFile(probeId, '/etc/passwd', MAX_PASSWD_BYTES, signal);
        const passwd = parsePasswd(text ?? '');
        const resolved = spec === '' ? chooseSandboxUser(passwd) : resolveUserSpec(spec, passwd);
        if ('problem' in resolved) {
          throw new StacyError(
            'BAD_REQUEST',
            `cannot run ${ref.canonical} as ${spec}: ${resolved.problem}`,
          );
        }
        user = resolved;
      }
      if (user.uid === 0 || this.readOnlyRootfs) {
        return { user, fixes: { workspace: false, tmp: false } };
      }
      const workspace = await this.dirHeader(probeId, WORKSPACE_DIR, signal);
      const tmpHeader = await this.engine.statPath(probeId, '/tmp', signal);
      const tmp = tmpHeader === undefined ? undefined : parsePathStatHeader(tmpHeader);
      return { user, fixes: dirFixes(user, workspace, tmp) };
    } catch (err) {
      if (signal?.aborted === true) throw abortError(signal);
      throw mapEngineError(err, {
        endpoint: this.endpoint,
        action: `inspect image ${ref.canonical}`,
      });
    } finally {
      await this.engine.removeContainer(probeId).catch(() => undefined);
    }
  }

  /** Owner and mode of a directory from the first header of its archive; undefined when missing. */
  private async dirHeader(
    containerId: string,
    path: string,
    signal: AbortSignal | undefined,
  ): Promise<{ uid: number; mode: number; isDir: boolean } | undefined> {
    let res: Readable;
    try {
      res = await this.engine.getArchive(containerId, path, signal);
    } catch (err) {
      if (engineFailure(err).statusCode === 404) return undefined;
      throw err;
    }
    const header = await firstTarHeader(res);
    return header === undefined
      ? undefined
      : { uid: header.uid, mode: header.mode, isDir: header.type === 'directory' };
  }

  /** A small file's text through the archive API; undefined when it does not exist. */
  private async readSmallFile(
    containerId: string,
    path: string,
    maxBytes: number,
    signal: AbortSignal | undefined,
  ): Promise<string | undefined> {
    let res: Readable;
    try {
      res = await this.engine.getArchive(containerId, path, signal);
    } catch (err) {
      if (engineFailure(err).statusCode === 404) return undefined;
      if (signal?.aborted === true) throw abortError(signal);
      throw mapEngineError(err, { endpoint: this.endpoint, action: `read ${path}` });
    }
    const parts: Buffer[] = [];
    let bytes = 0;
    for await (const chunk of tarFileBody(res)) {
      parts.push(Buffer.from(chunk));
      bytes += chunk.byteLength;
      if (bytes >= maxBytes) break;
    }
    return Buffer.concat(parts).subarray(0, maxBytes).toString('utf8');
  }

  /**
   * `/workspace` owned by the sandbox user and a sticky world-writable
   * `/tmp`, written before start as the directory entries of a tar (which
   * the Engine applies to existing directories too).
   */
  private async prepareDirs(
    id: string,
    plan: ImagePlan,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const pack = tarPack();
    const mtime = new Date();
    const { uid, gid } = plan.user;
    if (plan.fixes.workspace) {
      pack.entry({ name: 'workspace', type: 'directory', mode: 0o755, uid, gid, mtime });
    }
    if (plan.fixes.tmp) {
      pack.entry({ name: 'tmp', type: 'directory', mode: 0o1777, uid: 0, gid: 0, mtime });
    }
    pack.finalize();
    await this.engine.putArchive(id, '/', packStream(pack), signal);
  }

  /** A path stat that follows symlinks; undefined when the path (or a link target) is missing. */
  private async statFollow(
    id: string,
    path: string,
    signal: AbortSignal | undefined,
  ): Promise<{ stat: PathStat; resolved: string } | undefined> {
    let current = path;
    for (let hop = 0; hop <= MAX_SYMLINK_HOPS; hop++) {
      const st = await this.statNoFollow(id, current, signal);
      if (st === undefined) return undefined;
      if (!st.isSymlink || st.linkTarget === '' || st.linkTarget === current) {
        return { stat: st, resolved: current };
      }
      current = st.linkTarget;
    }
    throw badRequest(`too many levels of symbolic links: ${path}`);
  }

  /**
   * The Engine's stat of a path (a final symlink is not followed);
   * undefined when the path does not exist, NOT_FOUND when the sandbox does not.
   */
  private async statNoFollow(
    id: string,
    path: string,
    signal: AbortSignal | undefined,
  ): Promise<PathStat | undefined> {
    const header = await this.call(
      `stat ${path}`,
      (s) => this.engine.statPath(id, path, s),
      { sandboxId: id },
      signal,
    );
    if (header === undefined) {
      // A HEAD 404 is either a missing path or a missing container.
      this.owned.delete(id);
      await this.sandbox(id, signal);
      return undefined;
    }
    const st = parsePathStatHeader(header);
    if (st === undefined)
      throw new StacyError('INTERNAL_ERROR', `the Engine sent an unreadable stat of ${path}`);
    return st;
  }

  private mkdirError(stderr: string, target: string, dir: string): StacyError {
    const kind = classifyFsStderr(stderr);
    if (kind === 'not_dir' || kind === 'exists') {
      return badRequest(`a parent of ${target} is not a directory`);
    }
    return fsCommandError(stderr, dir, 'create directory');
  }

  private async putSingle(
    id: string,
    target: string,
    body: Buffer,
    mode: number,
    user: SandboxUser,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const pack = tarPack();
    const header: TarHeader = {
      name: baseName(target),
      type: 'file',
      size: body.byteLength,
      mode,
      uid: user.uid,
      gid: user.gid,
      mtime: new Date(),
    };
    pack.entry(header, body);
    pack.finalize();
    await this.call(
      `write ${target}`,
      (s) => this.engine.putArchive(id, parentOf(target), packStream(pack), s),
      {
        sandboxId: id,
        notFound: { code: 'NOT_FOUND', message: `no such file: ${parentOf(target)}` },
      },
      signal,
    );
    // tar-stream writes a falsy mode as 0644; 0000 needs its own chmod.
    if (mode === 0) await this.chmodFile(id, target, 0, signal === undefined ? {} : { signal });
  }

  private async putStream(
    id: string,
    target: string,
    data: AsyncIterable<Uint8Array>,
    mode: number,
    user: SandboxUser,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const it = data[Symbol.asyncIterator]();
    const reader = new PartReader(it, PART_BYTES);
    try {
      let part = await reader.next();
      if (reader.done) {
        await this.putSingle(id, target, part, mode, user, signal);
        return;
      }
      const parent = parentOf(target);
      const partDir = `.stacyvm-upload-${randomBytes(6).toString('hex')}`;
      const partPath = parent === '/' ? `/${partDir}` : `${parent}/${partDir}`;
      const pack = tarPack();
      const upload = this.call(
        `write ${target}`,
        (s) => this.engine.putArchive(id, parent, packStream(pack), s),
        { sandboxId: id },
        signal,
      );
      // If the upload fails first, the writer must not wait on a pack nobody reads.
      const tripwire = new Tripwire();
      upload.catch((err: unknown) => tripwire.trip(err));
      const owner = { uid: user.uid, gid: user.gid, mtime: new Date() };
      const writer = (async (): Promise<void> => {
        await tripwire.guard(
          addEntry(pack, { name: partDir, type: 'directory', mode: 0o700, ...owner }),
        );
        for (let index = 0; part.byteLength > 0; index++) {
          const name = `${partDir}/p${String(index).padStart(8, '0')}`;
          const header = {
            name,
            type: 'file' as const,
            size: part.byteLength,
            mode: 0o600,
            ...owner,
          };
          await tripwire.guard(addEntry(pack, header, part));
          if (reader.done) break;
          part = await tripwire.guard(reader.next());
        }
        pack.finalize();
      })();
      try {
        await writer;
        await upload;
      } catch (err) {
        pack.destroy();
        await upload.catch(() => undefined);
        await this.runInternal(id, ['rm', '-rf', '--', partPath], undefined).catch(() => undefined);
        throw err;
      }
      const r = await this.runInternal(
        id,
        scriptArgv(ASSEMBLE_SCRIPT, 'stacyvm-assemble', [partPath, target, mode.toString(8)]),
        signal,
      );
      if (r.exitCode !== 0) throw fsCommandError(r.stderr, target, 'write');
    } finally {
      if (!reader.done) await it.return?.().catch(() => undefined);
    }
  }

  // -------------------------------------------------------------------------
  // Internals: exec

  private async planExec(
    runtimeId: string,
    spec: ExecSpec,
    signal: AbortSignal | undefined,
  ): Promise<ExecPlan> {
    throwIfAborted(signal);
    const id = this.checkId(runtimeId);
    if (!Number.isInteger(spec.timeoutMs) || spec.timeoutMs < 0) {
      throw invalidField('timeout', 'must be a non-negative whole number of milliseconds');
    }
    const argv = buildExecArgv(spec);
    if (argv[0] === undefined || argv[0].length === 0) {
      throw invalidField('command', 'command is required');
    }
    if (argv.some((a) => a.includes('\0'))) {
      throw invalidField('command', 'must not contain NUL bytes');
    }
    const marker = randomBytes(12).toString('hex');
    const env = buildExecEnv(spec.env, marker);
    const workdir = spec.workdir === '' ? WORKSPACE_DIR : sandboxPath(spec.workdir, 'workdir');
    await this.sandbox(id, signal);
    return { sandboxId: id, argv, env, workdir, timeoutMs: spec.timeoutMs, marker };
  }

  /** A helper command as the sandbox user, from `/`, its output collected (stdout up to `maxBytes`). */
  private async runInternal(
    id: string,
    argv: string[],
    signal: AbortSignal | undefined,
    maxBytes = MIB,
  ): Promise<InternalResult> {
    const marker = randomBytes(12).toString('hex');
    const plan: ExecPlan = {
      sandboxId: id,
      argv,
      env: buildExecEnv({}, marker),
      workdir: '/',
      timeoutMs: INTERNAL_TIMEOUT_MS,
      marker,
    };
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let truncated = false;
    for await (const ev of this.runExec(plan, signal)) {
      if (ev.type === 'exit') {
        if (ev.timedOut) {
          throw new StacyError(
            'TIMEOUT',
            `${argv[0] ?? 'command'} in sandbox ${id} did not finish`,
          );
        }
        return {
          exitCode: ev.exitCode,
          stdout: Buffer.concat(out),
          stderr: Buffer.concat(err).toString('utf8'),
          truncated,
        };
      }
      const data = Buffer.from(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength);
      if (ev.type === 'stdout') {
        if (outBytes + data.byteLength > maxBytes) truncated = true;
        else {
          out.push(data);
          outBytes += data.byteLength;
        }
      } else if (errBytes < 64 * 1024) {
        err.push(data);
        errBytes += data.byteLength;
      }
    }
    throw new StacyError('INTERNAL_ERROR', 'exec ended without an exit status');
  }

  /** Kills every process of an exec (see {@link KILL_SCRIPT}); failures are swallowed by callers. */
  private async killExec(plan: ExecPlan): Promise<void> {
    const execId = await this.engine.createExec(plan.sandboxId, {
      cmd: killArgv(plan.marker),
      env: [],
      workingDir: '/',
    });
    const stream = await this.engine.startExec(execId);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        stream.destroy();
        resolve();
      }, KILLER_TIMEOUT_MS);
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      stream.once('end', done);
      stream.once('close', done);
      stream.once('error', done);
      stream.resume();
    });
  }

  /** The exit code once the Engine has it (it may lag the end of the stream by a moment). */
  private async exitCodeOf(plan: ExecPlan, execId: string): Promise<number> {
    for (let attempt = 0; attempt < 100; attempt++) {
      const facts = await this.call(
        `inspect exec in sandbox ${plan.sandboxId}`,
        (s) => this.engine.inspectExec(execId, s),
        { sandboxId: plan.sandboxId },
        undefined,
      );
      if (!facts.running && facts.exitCode !== null) return facts.exitCode;
      await sleep(20);
    }
    throw new StacyError(
      'INTERNAL_ERROR',
      `exec in sandbox ${plan.sandboxId} reported no exit code`,
    );
  }

  /**
   * The one exec runner behind `exec`, `execStream` and the file helpers.
   * Output is queued in arrival order; above the high-water mark the socket
   * is paused until the consumer drains the queue.
   */
  private async *runExec(
    plan: ExecPlan,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ExecEvent> {
    throwIfAborted(signal);
    const id = plan.sandboxId;
    const execId = await this.call(
      `exec in sandbox ${id}`,
      (s) =>
        this.engine.createExec(id, { cmd: plan.argv, env: plan.env, workingDir: plan.workdir }, s),
      { sandboxId: id },
      signal,
    );
    const started = performance.now();
    const stream = await this.call(
      `exec in sandbox ${id}`,
      () => this.engine.startExec(execId),
      { sandboxId: id },
      signal,
    );

    const demux = new ExecDemuxer();
    const queue: ExecEvent[] = [];
    let queuedBytes = 0;
    let paused = false;
    let ended = false;
    let timedOut = false;
    let aborted = false;
    let finished = false;
    let killing: Promise<void> | undefined;
    let lastDataAt = performance.now();
    let exitCode: number | undefined;
    let exitSeenAt = 0;
    let pollDelay = EXIT_POLL_MIN_MS;
    let wake: (() => void) | undefined;
    const notify = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    // The runtime reports a process it could not start (missing workdir or
    // binary) as text on stdout and exit 126; hold stdout that may be that.
    let probe = 'pending' as 'pending' | 'oci' | 'passed';
    let held: Buffer[] = [];
    let heldBytes = 0;
    const enqueue = (type: 'stdout' | 'stderr', data: Buffer): void => {
      queue.push({ type, data });
      queuedBytes += data.byteLength;
    };
    const releaseHeld = (): void => {
      probe = 'passed';
      if (held.length > 0) enqueue('stdout', Buffer.concat(held));
      held = [];
      heldBytes = 0;
    };

    stream.on('data', (chunk: Buffer) => {
      lastDataAt = performance.now();
      for (const frame of demux.push(chunk)) {
        if (frame.data.byteLength === 0) continue;
        if (probe !== 'passed') {
          if (frame.stream === 'stdout') {
            held.push(frame.data);
            heldBytes += frame.data.byteLength;
            if (probe === 'pending') {
              const text = Buffer.concat(held).toString('latin1');
              if (text.startsWith(OCI_FAILURE_PREFIX)) probe = 'oci';
              else if (!OCI_FAILURE_PREFIX.startsWith(text)) releaseHeld();
            } else if (heldBytes > 64 * 1024) {
              releaseHeld();
            }
            continue;
          }
          releaseHeld();
        }
        enqueue(frame.stream, frame.data);
      }
      if (!paused && queuedBytes >= HIGH_WATER_BYTES) {
        paused = true;
        stream.pause();
      }
      notify();
    });
    const onEnd = (): void => {
      ended = true;
      notify();
    };
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    // A destroyed socket may emit an error; the exec result already says what happened.
    stream.on('error', onEnd);

    const kill = (): Promise<void> => {
      killing ??= this.killExec(plan).catch(() => undefined);
      return killing;
    };
    let giveUp: NodeJS.Timeout | undefined;
    const deadline =
      plan.timeoutMs > 0
        ? setTimeout(
            () => {
              timedOut = true;
              notify();
              void kill().then(() => {
                // Whatever still holds the output after the kill is not worth waiting for.
                giveUp = setTimeout(() => {
                  stream.destroy();
                  onEnd();
                }, KILL_GRACE_MS);
              });
            },
            Math.min(plan.timeoutMs, MAX_TIMER_MS),
          )
        : undefined;
    const onAbort = (): void => {
      aborted = true;
      notify();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    try {
      for (;;) {
        // Checked before the queue: a slow consumer must not delay a cancellation.
        if (aborted && signal !== undefined) throw abortError(signal);
        const ev = queue.shift();
        if (ev !== undefined) {
          if (ev.type !== 'exit') queuedBytes -= ev.data.byteLength;
          if (paused && queuedBytes <= LOW_WATER_BYTES) {
            paused = false;
            stream.resume();
          }
          yield ev;
          continue;
        }
        if (ended) {
          const durationMs = performance.now() - started;
          if (timedOut) {
            if (held.length > 0) {
              releaseHeld();
              continue;
            }
            finished = true;
            yield { type: 'exit', exitCode: TIMEOUT_EXIT_CODE, timedOut: true, durationMs };
            return;
          }
          exitCode ??= await this.exitCodeOf(plan, execId);
          if (held.length > 0) {
            if (probe === 'oci' && exitCode === 126) {
              finished = true;
              const text = Buffer.concat(held).toString('utf8');
              held = [];
              const kind = classifyOciFailure(text);
              if (kind === 'workdir') {
                throw badRequest(`workdir ${plan.workdir} does not exist or is not a directory`);
              }
              const argv0 = plan.argv[0] ?? '';
              let message = text;
              if (kind === 'not_found') message = `${argv0}: command not found\n`;
              else if (kind === 'permission') message = `${argv0}: permission denied\n`;
              yield { type: 'stderr', data: Buffer.from(message) };
              yield {
                type: 'exit',
                exitCode: kind === 'not_found' ? 127 : 126,
                timedOut: false,
                durationMs,
              };
              return;
            }
            releaseHeld();
            continue;
          }
          finished = true;
          yield { type: 'exit', exitCode, timedOut: false, durationMs };
          return;
        }
        const now = performance.now();
        const quietMs = now - lastDataAt;
        if (!timedOut && exitCode === undefined && quietMs >= pollDelay) {
          // A background process can hold the output open after the command exits.
          const facts = await this.engine.inspectExec(execId).catch(() => undefined);
          if (facts !== undefined && !facts.running && facts.exitCode !== null) {
            exitCode = facts.exitCode;
            exitSeenAt = performance.now();
          }
          pollDelay = Math.min(pollDelay * 2, EXIT_POLL_MAX_MS);
          continue;
        }
        if (exitCode !== undefined && !timedOut) {
          if (quietMs >= PIPE_GRACE_MS && now - exitSeenAt >= PIPE_GRACE_MS) {
            stream.destroy();
            ended = true;
            continue;
          }
        }
        const waitMs =
          exitCode !== undefined
            ? Math.max(10, PIPE_GRACE_MS - Math.min(quietMs, now - exitSeenAt))
            : Math.max(10, pollDelay - quietMs);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            wake = undefined;
            resolve();
          }, waitMs);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    } finally {
      if (deadline !== undefined) clearTimeout(deadline);
      signal?.removeEventListener('abort', onAbort);
      if (!finished) await kill();
      else if (killing !== undefined) await killing;
      if (giveUp !== undefined) clearTimeout(giveUp);
      stream.destroy();
    }
  }
}
