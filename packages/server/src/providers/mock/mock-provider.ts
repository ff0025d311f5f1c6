import { randomBytes } from 'node:crypto';
import { appendFileSync, constants as fsConstants, lstatSync } from 'node:fs';
import type { Stats } from 'node:fs';
import {
  chmod,
  lstat,
  mkdir,
  open,
  readdir,
  realpath,
  rename,
  rm,
  rmdir,
  stat,
  unlink,
  writeFile as writeWholeFile,
} from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Clock } from '../../domain/clock.js';
import { systemClock } from '../../domain/clock.js';
import { StacyError, badRequest, conflict, invalidField, notFound } from '../../domain/errors.js';
import { TIMEOUT_EXIT_CODE, buildExecArgv } from '../../domain/exec.js';
import type { ExecEvent, ExecOutcome, ExecSpec } from '../../domain/exec.js';
import { formatFileMode, normalizeSandboxPath } from '../../domain/files.js';
import type { FileEntry } from '../../domain/files.js';
import { isSandboxId } from '../../domain/sandbox.js';
import { compileGlob } from '../glob.js';
import type {
  CallOptions,
  FileSource,
  PreviewEndpoint,
  Provider,
  ProviderHealth,
  ReadFileResult,
  RuntimeStatus,
  SpawnOptions,
  SpawnResult,
} from '../provider.js';
import { confinePath, errnoCode, fsError, isWithin } from '../sandbox-fs.js';
import { collectExecOutcome } from '../collect-exec.js';
import { inProcessLauncher } from './process-launcher.js';
import type { LaunchEvents, LaunchedProcess, ProcessLauncher } from './process-launcher.js';
import { SpawnHelperLauncher } from './spawn-helper.js';

/** Options of {@link MockProvider}; every field has a default. */
export interface MockProviderOptions {
  /** Directory holding one root per sandbox. Default `<os tmpdir>/stacyvm-mock`; empty means the default. */
  baseDir?: string;
  /** Per-stream cap on what a sync `exec` keeps (the head is kept). Default 16 MiB. */
  maxOutputBytes?: number;
  /** Entries a `globFiles` walk may visit before it gives up. Default 100 000. */
  maxGlobEntries?: number;
  /** Stamps console log lines. Default the system clock. */
  clock?: Clock;
  /**
   * Start commands from a small helper process instead of forking the server
   * (see `SpawnHelperLauncher`). Default true.
   */
  spawnHelper?: boolean;
}

const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
const DEFAULT_MAX_GLOB_ENTRIES = 100_000;
/** Stream queue size above which the child's pipes are paused. */
const HIGH_WATER_BYTES = 256 * 1024;
const LOW_WATER_BYTES = 64 * 1024;
/**
 * After the command exits, a background process may still hold its pipes;
 * once they stay quiet this long the exec is reported finished anyway.
 */
const PIPE_GRACE_MS = 200;

/** Name prefix of sandbox trees being deleted in the background. */
const TRASH_PREFIX = '.trash-';
/** Console log bytes read for `logs`; older lines are out of reach. */
const MAX_LOG_READ_BYTES = 1024 * 1024;
/** setTimeout fires at once for delays beyond a signed 32-bit int; longer deadlines are capped (~24.8 days). */
const MAX_TIMER_MS = 2_147_483_647;
const FALLBACK_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The catalog error for a cancelled call: the signal's own StacyError reason, else TIMEOUT. */
function abortError(signal: AbortSignal): StacyError {
  const reason: unknown = signal.reason;
  if (reason instanceof StacyError) return reason;
  return new StacyError('TIMEOUT', 'operation was cancelled', { cause: reason });
}

function throwIfAborted(opts: CallOptions | undefined): void {
  if (opts?.signal?.aborted === true) throw abortError(opts.signal);
}

function signalNumber(name: NodeJS.Signals): number {
  return (osConstants.signals as Partial<Record<NodeJS.Signals, number>>)[name] ?? 0;
}

function validateMode(mode: number, field = 'mode'): void {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw invalidField(field, 'must be a permission mode between 0000 and 07777');
  }
}

function hasNul(s: string): boolean {
  return s.includes('\0');
}

/** Kills a whole process group; a group that is already gone is fine. */
function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch (err) {
    if (errnoCode(err) !== 'ESRCH') throw err;
  }
}

/** Whether any process of the group is still alive. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

/** `lstat`, synchronously; undefined whatever the failure (the slow path then says why). */
function lstatQuietly(path: string): Stats | undefined {
  try {
    return lstatSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

async function writeFully(fh: FileHandle, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await fh.write(chunk, offset, chunk.byteLength - offset);
    offset += bytesWritten;
  }
}

function entryFromStats(sandboxPath: string, st: Stats): FileEntry {
  return {
    path: sandboxPath,
    name: sandboxPath === '/' ? '/' : basename(sandboxPath),
    size: st.size,
    mode: formatFileMode(st.mode),
    isDir: st.isDirectory(),
    modTimeMs: Math.trunc(st.mtimeMs),
  };
}

function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

function byCodeUnit(a: string, b: string): number {
  if (a < b) return -1;
  return a > b ? 1 : 0;
}

/** What `prepareExec` hands to `runExec`. */
interface PreparedExec {
  sandboxId: string;
  argv: [string, ...string[]];
  cwd: string;
  env: Record<string, string>;
  timeoutMs: number;
}

/**
 * A provider whose sandboxes are directories on this host: `<baseDir>/<id>`
 * with `workspace/` and `tmp/` inside, and `/x` in the sandbox meaning
 * `<root>/x`.
 *
 * **No isolation.** Commands run on the host as the server's user, with the
 * server's privileges and network; only the environment is scrubbed (the
 * control plane's variables hold secrets) and the working directory is the
 * sandbox's. File operations through the API are confined to the root
 * (symlinks included); commands are not. Use it for tests and development,
 * never for untrusted code.
 *
 * Each command runs in its own process group, so a deadline, an abort, a
 * consumer leaving a stream, or `destroy` kills the command and its
 * children. A command that starts a new session of its own (`setsid`)
 * escapes that; nothing short of a container stops it.
 *
 * State lives on disk (roots are named after sandbox ids and a console log
 * sits next to each root), so a new instance on the same `baseDir` sees the
 * sandboxes of a previous one; only the process-group bookkeeping is lost.
 */
export class MockProvider implements Provider {
  /** Console lines not written yet, per sandbox id, oldest first (see tryLog). */
  private readonly logQueue = new Map<string, string[]>();
  /** The pending write of {@link logQueue}, while one is scheduled. */
  private logFlush: NodeJS.Immediate | undefined;
  readonly name = 'mock';
  readonly capabilities: readonly string[] = ['test_provider'];

  private readonly baseDir: string;
  private readonly maxOutputBytes: number;
  private readonly maxGlobEntries: number;
  private readonly clock: Clock;
  private readonly launcher: ProcessLauncher;
  /** Process groups started per sandbox that may still have members. */
  private readonly groups = new Map<string, Set<number>>();
  /**
   * `realpath(baseDir)`, resolved once: the base directory is configuration,
   * and what lies under it is still checked per call by {@link rootOf}.
   */
  private realBase: string | undefined;

  constructor(options: MockProviderOptions = {}) {
    this.baseDir =
      options.baseDir === undefined || options.baseDir === ''
        ? join(tmpdir(), 'stacyvm-mock')
        : options.baseDir;
    this.maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    this.maxGlobEntries = options.maxGlobEntries ?? DEFAULT_MAX_GLOB_ENTRIES;
    this.clock = options.clock ?? systemClock;
    this.launcher = options.spawnHelper === false ? inProcessLauncher() : new SpawnHelperLauncher();
  }

  /** Creates `baseDir` (mode 0700: other host users must not read sandboxes). */
  async init(): Promise<void> {
    await this.ensureBaseDir();
    // Trees left by destroys that a previous process did not finish deleting.
    const entries = await readdir(this.baseDir).catch(() => [] as string[]);
    // The spawn helper is a process of its own: started here only when there
    // are sandboxes to exec in already, else by the first spawn. A server
    // that never uses the mock provider never runs one.
    if (entries.some(isSandboxId)) this.launcher.warm();
    await Promise.all(
      entries
        .filter((e) => e.startsWith(TRASH_PREFIX))
        .map((e) => removeTree(join(this.baseDir, e)).catch(() => undefined)),
    );
  }

  async health(): Promise<ProviderHealth> {
    const started = performance.now();
    try {
      await this.ensureBaseDir();
      const probe = join(this.baseDir, `.health-${randomBytes(6).toString('hex')}`);
      await writeWholeFile(probe, 'ok');
      await unlink(probe);
      return { healthy: true, latencyMs: performance.now() - started };
    } catch (err) {
      return {
        healthy: false,
        latencyMs: performance.now() - started,
        error: `base directory is not writable: ${errorMessage(err)}`,
      };
    }
  }

  describe(): Record<string, unknown> {
    return { type: 'mock', base_dir: this.baseDir, spawn: this.launcher.kind };
  }

  async spawn(opts: SpawnOptions): Promise<SpawnResult> {
    throwIfAborted(opts);
    const id = this.checkId(opts.sandboxId);
    // Ready by the sandbox's first exec (starting it takes tens of ms).
    this.launcher.warm();
    await this.ensureBaseDir();
    const root = join(this.baseDir, id);
    try {
      await mkdir(root, { mode: 0o755 });
    } catch (err) {
      if (errnoCode(err) === 'EEXIST') throw conflict(`sandbox already exists: ${id}`);
      throw fsError(err, '/');
    }
    try {
      await Promise.all([
        mkdir(join(root, 'workspace'), { mode: 0o755 }),
        mkdir(join(root, 'tmp'), { mode: 0o700 }),
      ]);
      this.tryLog(id, `sandbox ${id} started (image ${opts.image})`);
      this.tryLog(id, 'workspace ready at /workspace');
    } catch (err) {
      await rm(root, { recursive: true, force: true }).catch(() => undefined);
      throw fsError(err, '/');
    }
    return { runtimeId: id };
  }

  async status(runtimeId: string, opts?: CallOptions): Promise<RuntimeStatus> {
    throwIfAborted(opts);
    await this.rootOf(runtimeId);
    return { state: 'running' };
  }

  async destroy(runtimeId: string, opts?: CallOptions): Promise<void> {
    throwIfAborted(opts);
    const id = this.checkId(runtimeId);
    for (const pgid of this.groups.get(id) ?? []) killGroup(pgid);
    this.groups.delete(id);
    const root = join(this.baseDir, id);
    // Renaming is one syscall and makes the sandbox gone at once; the tree is
    // deleted in the background (and by init() if the process dies first).
    const trash = join(this.baseDir, `${TRASH_PREFIX}${id}-${randomBytes(4).toString('hex')}`);
    let moved = true;
    try {
      await rename(root, trash);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') moved = false;
      else await removeTree(root);
    }
    if (moved) void removeTree(trash).catch(() => undefined);
    this.flushLog(id);
    await rm(this.logPath(id), { force: true });
  }

  async logs(runtimeId: string, lines: number, opts?: CallOptions): Promise<string[]> {
    throwIfAborted(opts);
    await this.rootOf(runtimeId);
    if (!Number.isInteger(lines) || lines < 0) {
      throw invalidField('lines', 'must be a non-negative integer');
    }
    if (lines === 0) return [];
    let text: string;
    try {
      this.flushLog(runtimeId);
      const fh = await open(this.logPath(runtimeId), 'r');
      try {
        const { size } = await fh.stat();
        const length = Math.min(size, MAX_LOG_READ_BYTES);
        const buf = Buffer.alloc(length);
        await fh.read(buf, 0, length, size - length);
        text = buf.toString('utf8');
      } finally {
        await fh.close();
      }
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw fsError(err, 'console log');
    }
    const all = text.split('\n').filter((l) => l.length > 0);
    return all.slice(-lines);
  }

  /**
   * Runs a command to completion or its deadline. Each stream keeps at most
   * `maxOutputBytes` (the head; the rest is read and dropped so the command
   * never blocks on a full pipe).
   */
  async exec(runtimeId: string, spec: ExecSpec, opts?: CallOptions): Promise<ExecOutcome> {
    const prepared = await this.prepareExec(runtimeId, spec, opts);
    return collectExecOutcome(this.runExec(prepared, opts?.signal), this.maxOutputBytes);
  }

  /**
   * Streams output chunks as they are read, then one `exit` event. The
   * command starts when iteration starts. A slow consumer pauses the
   * command's pipes (so it blocks on write) instead of growing a buffer;
   * leaving the loop early or aborting `signal` kills the process group.
   */
  execStream(runtimeId: string, spec: ExecSpec, opts?: CallOptions): AsyncIterable<ExecEvent> {
    const prepare = (): Promise<PreparedExec> => this.prepareExec(runtimeId, spec, opts);
    const run = (p: PreparedExec): AsyncGenerator<ExecEvent> => this.runExec(p, opts?.signal);
    return {
      async *[Symbol.asyncIterator]() {
        yield* run(await prepare());
      },
    };
  }

  async writeFile(
    runtimeId: string,
    path: string,
    data: FileSource,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    throwIfAborted(opts);
    validateMode(mode);
    const root = await this.rootOf(runtimeId);
    const { sandboxPath, hostPath } = await confinePath(root, path, { followFinal: true });
    if (hostPath === root) throw badRequest(`${sandboxPath} is a directory`);
    const existing = await lstat(hostPath).catch(() => undefined);
    if (existing?.isDirectory() === true) throw badRequest(`${sandboxPath} is a directory`);
    const parent = dirname(hostPath);
    try {
      await mkdir(parent, { recursive: true });
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'EEXIST' || code === 'ENOTDIR') {
        throw badRequest(`a parent of ${sandboxPath} is not a directory`);
      }
      throw fsError(err, sandboxPath);
    }
    // Written beside the target and renamed over it, so a failed upload
    // leaves the old file intact.
    const temp = join(parent, `.stacyvm-upload-${randomBytes(6).toString('hex')}`);
    let fh: FileHandle;
    try {
      fh = await open(
        temp,
        fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
        0o600,
      );
    } catch (err) {
      throw fsError(err, sandboxPath);
    }
    try {
      try {
        if (data instanceof Uint8Array) {
          await writeFully(fh, data);
        } else {
          const it = data[Symbol.asyncIterator]();
          for (;;) {
            throwIfAborted(opts);
            let next: IteratorResult<Uint8Array>;
            try {
              next = await it.next();
            } catch (err) {
              if (err instanceof StacyError) throw err;
              throw new StacyError(
                'BAD_REQUEST',
                `file body could not be read: ${errorMessage(err)}`,
                {
                  cause: err,
                },
              );
            }
            if (next.done === true) break;
            await writeFully(fh, next.value);
          }
        }
        // fchmod is not subject to the umask, unlike the mode given to open.
        await fh.chmod(mode);
      } finally {
        await fh.close();
      }
      await rename(temp, hostPath);
    } catch (err) {
      await rm(temp, { force: true }).catch(() => undefined);
      throw fsError(err, sandboxPath);
    }
  }

  async readFile(runtimeId: string, path: string, opts?: CallOptions): Promise<ReadFileResult> {
    throwIfAborted(opts);
    const root = await this.rootOf(runtimeId);
    const { sandboxPath, hostPath } = await confinePath(root, path, { followFinal: true });
    let fh: FileHandle;
    try {
      // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
      fh = await open(
        hostPath,
        fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK,
      );
    } catch (err) {
      throw fsError(err, sandboxPath);
    }
    try {
      const st = await fh.stat();
      if (st.isDirectory()) throw badRequest(`${sandboxPath} is a directory`);
      if (!st.isFile()) throw badRequest(`${sandboxPath} is not a regular file`);
      const body: Readable = fh.createReadStream();
      return { size: st.size, body };
    } catch (err) {
      await fh.close();
      throw fsError(err, sandboxPath);
    }
  }

  async listFiles(runtimeId: string, path: string, opts?: CallOptions): Promise<FileEntry[]> {
    throwIfAborted(opts);
    const root = await this.rootOf(runtimeId);
    const { sandboxPath, hostPath } = await confinePath(root, path, { followFinal: true });
    let names: string[];
    try {
      names = await readdir(hostPath);
    } catch (err) {
      throw fsError(err, sandboxPath);
    }
    names.sort(byCodeUnit);
    const entries = await Promise.all(
      names.map(async (name) => {
        // lstat: a symlink is listed as itself, never as what it points to.
        const st = await lstat(join(hostPath, name)).catch(() => undefined);
        return st === undefined ? undefined : entryFromStats(childPath(sandboxPath, name), st);
      }),
    );
    return entries.filter((e): e is FileEntry => e !== undefined);
  }

  async statFile(runtimeId: string, path: string, opts?: CallOptions): Promise<FileEntry> {
    throwIfAborted(opts);
    const root = await this.rootOf(runtimeId);
    const { sandboxPath, hostPath } = await confinePath(root, path, { followFinal: true });
    try {
      return entryFromStats(sandboxPath, await stat(hostPath));
    } catch (err) {
      throw fsError(err, sandboxPath);
    }
  }

  async deleteFile(
    runtimeId: string,
    path: string,
    recursive: boolean,
    opts?: CallOptions,
  ): Promise<void> {
    throwIfAborted(opts);
    const root = await this.rootOf(runtimeId);
    const { sandboxPath, hostPath } = await confinePath(root, path, { followFinal: false });
    if (sandboxPath === '/' || sandboxPath === '/workspace') {
      throw badRequest(`refusing to delete ${sandboxPath}`);
    }
    let st: Stats;
    try {
      st = await lstat(hostPath);
    } catch (err) {
      throw fsError(err, sandboxPath);
    }
    try {
      if (!st.isDirectory()) await unlink(hostPath);
      else if (recursive) await removeTree(hostPath);
      else await rmdir(hostPath);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        throw badRequest(
          `directory ${sandboxPath} is not empty; pass recursive=true to delete it and its contents`,
        );
      }
      throw fsError(err, sandboxPath);
    }
  }

  async moveFile(runtimeId: string, from: string, to: string, opts?: CallOptions): Promise<void> {
    throwIfAborted(opts);
    const root = await this.rootOf(runtimeId);
    const src = await confinePath(root, from, { followFinal: false, field: 'from' });
    const dst = await confinePath(root, to, { followFinal: false, field: 'to' });
    for (const p of [src, dst]) {
      if (p.sandboxPath === '/' || p.sandboxPath === '/workspace') {
        throw badRequest(`refusing to move ${p.sandboxPath}`);
      }
    }
    try {
      await lstat(src.hostPath);
    } catch (err) {
      throw fsError(err, src.sandboxPath);
    }
    if (isWithin(src.hostPath, dst.hostPath) && src.hostPath !== dst.hostPath) {
      throw badRequest(`cannot move ${src.sandboxPath} into itself (${dst.sandboxPath})`);
    }
    try {
      await mkdir(dirname(dst.hostPath), { recursive: true });
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'EEXIST' || code === 'ENOTDIR') {
        throw badRequest(`a parent of ${dst.sandboxPath} is not a directory`);
      }
      throw fsError(err, dst.sandboxPath);
    }
    try {
      await rename(src.hostPath, dst.hostPath);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        throw conflict(`cannot move onto ${dst.sandboxPath}: it is a non-empty directory`);
      }
      if (code === 'EISDIR') {
        throw conflict(`cannot move a file onto directory ${dst.sandboxPath}`);
      }
      if (code === 'ENOTDIR') {
        throw conflict(`cannot move a directory onto file ${dst.sandboxPath}`);
      }
      throw fsError(err, dst.sandboxPath);
    }
  }

  async chmodFile(
    runtimeId: string,
    path: string,
    mode: number,
    opts?: CallOptions,
  ): Promise<void> {
    throwIfAborted(opts);
    validateMode(mode);
    const root = await this.rootOf(runtimeId);
    const { sandboxPath, hostPath } = await confinePath(root, path, { followFinal: true });
    try {
      await chmod(hostPath, mode);
    } catch (err) {
      throw fsError(err, sandboxPath);
    }
  }

  /**
   * Walks from the pattern's literal base, descending only where a match is
   * still possible and never through symlinked directories (they could lead
   * out of the root or loop). The walk gives up with RESOURCE_LIMIT after
   * `maxGlobEntries` entries rather than return a silently partial answer.
   */
  async globFiles(runtimeId: string, pattern: string, opts?: CallOptions): Promise<string[]> {
    throwIfAborted(opts);
    const root = await this.rootOf(runtimeId);
    const abs = normalizeSandboxPath(pattern);
    if (typeof abs !== 'string') {
      throw invalidField(
        'pattern',
        abs.problem === 'path is required' ? 'pattern is required' : abs.problem,
      );
    }
    const matcher = compileGlob(abs);
    if ('problem' in matcher) throw invalidField('pattern', matcher.problem);
    if (matcher.literalPath !== undefined) {
      // No wildcard: the pattern names one path, so look it up instead of walking its parent.
      const only = await confinePath(root, matcher.literalPath, {
        followFinal: false,
        field: 'pattern',
      });
      const exists = await lstat(only.hostPath).then(
        () => true,
        () => false,
      );
      return exists ? [only.sandboxPath] : [];
    }
    const base = await confinePath(root, matcher.base, { followFinal: true, field: 'pattern' });
    const baseStat = await stat(base.hostPath).catch(() => undefined);
    if (baseStat === undefined) return [];

    const results: string[] = [];
    if (matcher.matches(base.sandboxPath)) results.push(base.sandboxPath);
    if (!baseStat.isDirectory() || !matcher.canMatchBelow(base.sandboxPath)) return results;

    let visited = 0;
    const stack: { host: string; sandbox: string }[] = [
      { host: base.hostPath, sandbox: base.sandboxPath },
    ];
    for (let dir = stack.pop(); dir !== undefined; dir = stack.pop()) {
      throwIfAborted(opts);
      const entries = await readdir(dir.host, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        visited++;
        if (visited > this.maxGlobEntries) {
          throw new StacyError(
            'RESOURCE_LIMIT',
            `glob visited more than ${this.maxGlobEntries} entries; use a narrower pattern`,
            { retryable: false },
          );
        }
        const sandbox = childPath(dir.sandbox, entry.name);
        if (matcher.matches(sandbox)) results.push(sandbox);
        if (entry.isDirectory() && matcher.canMatchBelow(sandbox)) {
          stack.push({ host: join(dir.host, entry.name), sandbox });
        }
      }
    }
    return results.sort(byCodeUnit);
  }

  /**
   * Commands run on the host, so a server a sandbox starts listens on the
   * host's loopback: every port is reachable, declared in `ports` or not.
   */
  async previewUpstream(
    runtimeId: string,
    port: number,
    opts?: CallOptions,
  ): Promise<PreviewEndpoint> {
    throwIfAborted(opts);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw invalidField('port', `${port} is not a port number (1-65535)`);
    }
    await this.rootOf(runtimeId);
    return { host: '127.0.0.1', port };
  }

  async listRuntimes(opts?: CallOptions): Promise<string[]> {
    throwIfAborted(opts);
    try {
      const entries = await readdir(this.baseDir, { withFileTypes: true });
      return entries
        .filter((e) => e.isDirectory() && isSandboxId(e.name))
        .map((e) => e.name)
        .sort(byCodeUnit);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return [];
      throw fsError(err, 'base directory');
    }
  }

  /** Kills every command still running and stops the spawn helper; sandboxes stay on disk. */
  async close(): Promise<void> {
    for (const set of this.groups.values()) for (const pgid of set) killGroup(pgid);
    this.groups.clear();
    for (const id of [...this.logQueue.keys()]) this.flushLog(id);
    await this.launcher.close();
  }

  private async ensureBaseDir(): Promise<void> {
    await mkdir(this.baseDir, { recursive: true, mode: 0o700 });
  }

  private logPath(id: string): string {
    return join(this.baseDir, `${id}.console.log`);
  }

  /**
   * Queues a console line without making the caller wait (exec latency is
   * what users feel): the lines queued during one turn of the event loop are
   * written after it, so the reply goes out first. Per sandbox they stay in
   * order; `logs()` and `destroy()` write a sandbox's queued lines first. A
   * line must never fail the operation it describes.
   */
  private tryLog(id: string, line: string): void {
    const text = `${new Date(this.clock.nowMs()).toISOString()} ${line}\n`;
    const queued = this.logQueue.get(id);
    if (queued === undefined) this.logQueue.set(id, [text]);
    else queued.push(text);
    this.logFlush ??= setImmediate(() => {
      this.logFlush = undefined;
      for (const queuedId of [...this.logQueue.keys()]) this.flushLog(queuedId);
    });
  }

  /** Writes a sandbox's queued console lines now. */
  private flushLog(id: string): void {
    const lines = this.logQueue.get(id);
    if (lines === undefined) return;
    this.logQueue.delete(id);
    try {
      // Synchronous on purpose: one small append to a local file is a few
      // microseconds of syscalls, while the async version costs three
      // thread-pool round trips (open, write, close) and the wake-ups with
      // them, on every exec. (The store's SQLite writes are synchronous too.)
      appendFileSync(this.logPath(id), lines.join(''));
    } catch {
      // Lost line: the console log is best effort.
    }
  }

  private checkId(runtimeId: string): string {
    if (!isSandboxId(runtimeId)) {
      throw invalidField(
        'runtimeId',
        `${JSON.stringify(runtimeId.slice(0, 64))} is not a sandbox id (sb- followed by 8 hex digits)`,
      );
    }
    return runtimeId;
  }

  /** The sandbox's root as a realpath; NOT_FOUND when it does not exist. */
  private async rootOf(runtimeId: string): Promise<string> {
    const id = this.checkId(runtimeId);
    // Fast path (the exec hot path): one lstat. A real directory (not a
    // symlink) directly under the resolved base is its own realpath. The
    // lstat is synchronous: a few microseconds for a local directory entry,
    // where the async one is a thread-pool round trip (and a thread wake-up)
    // on every exec and file call.
    if (this.realBase !== undefined) {
      const root = join(this.realBase, id);
      if (lstatQuietly(root)?.isDirectory() === true) return root;
    }
    try {
      if (this.realBase === undefined) this.realBase = await realpath(this.baseDir);
      const root = await realpath(join(this.baseDir, id));
      if ((await stat(root)).isDirectory()) return root;
    } catch (err) {
      const code = errnoCode(err);
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw fsError(err, '/');
    }
    throw notFound(`sandbox not found: ${id}`);
  }

  private async prepareExec(
    runtimeId: string,
    spec: ExecSpec,
    opts: CallOptions | undefined,
  ): Promise<PreparedExec> {
    throwIfAborted(opts);
    const workdir = spec.workdir === '' ? '/workspace' : spec.workdir;
    // The default workdir costs no filesystem call once the base is known: a
    // missing root makes the spawn fail on its working directory, and runExec
    // then says NOT_FOUND. An explicit workdir is confined
    // against the checked root.
    const root =
      workdir === '/workspace' && this.realBase !== undefined
        ? join(this.realBase, this.checkId(runtimeId))
        : await this.rootOf(runtimeId);
    if (!Number.isInteger(spec.timeoutMs) || spec.timeoutMs < 0) {
      throw invalidField('timeout', 'must be a non-negative whole number of milliseconds');
    }
    const argv = buildExecArgv(spec);
    const [command, ...args] = argv;
    if (command === undefined || command.length === 0) {
      throw invalidField('command', 'command is required');
    }
    if (argv.some(hasNul)) throw invalidField('command', 'must not contain NUL bytes');
    for (const [key, value] of Object.entries(spec.env)) {
      if (key.length === 0 || key.includes('=') || hasNul(key) || hasNul(value)) {
        throw invalidField(
          'env',
          `${JSON.stringify(key.slice(0, 64))} is not a valid variable (no "=", no NUL)`,
        );
      }
    }
    // The default workdir skips the confinement walk: it is created by spawn,
    // and a host command could leave it anyway (the mock has no isolation).
    // An explicit workdir gets the full check and a clear message.
    let cwd: { sandboxPath: string; hostPath: string };
    if (workdir === '/workspace') {
      cwd = { sandboxPath: workdir, hostPath: join(root, 'workspace') };
    } else {
      cwd = await confinePath(root, workdir, { followFinal: true, field: 'workdir' });
      const st = await stat(cwd.hostPath).catch(() => undefined);
      if (st === undefined) throw badRequest(`workdir ${cwd.sandboxPath} does not exist`);
      if (!st.isDirectory()) throw badRequest(`workdir ${cwd.sandboxPath} is not a directory`);
    }
    const env: Record<string, string> = {
      PATH: process.env['PATH'] ?? FALLBACK_PATH,
      LANG: 'C.UTF-8',
      HOME: root,
      WORKSPACE: join(root, 'workspace'),
      SANDBOX_ROOT: root,
      SANDBOX_ID: runtimeId,
      TMPDIR: join(root, 'tmp'),
      ...spec.env,
    };
    return {
      sandboxId: runtimeId,
      argv: [command, ...args],
      cwd: cwd.hostPath,
      env,
      timeoutMs: spec.timeoutMs,
    };
  }

  private track(id: string, pgid: number): void {
    let set = this.groups.get(id);
    if (set === undefined) {
      set = new Set();
      this.groups.set(id, set);
    }
    set.add(pgid);
  }

  /** Forgets a group once no member is left (background processes keep it tracked for destroy). */
  private untrackIfGone(id: string, pgid: number): void {
    if (groupAlive(pgid)) return;
    const set = this.groups.get(id);
    set?.delete(pgid);
    if (set?.size === 0) this.groups.delete(id);
  }

  /**
   * The one process runner behind `exec` and `execStream`. Events are queued
   * in read order across both pipes; above the high-water mark both pipes are
   * paused until the consumer drains the queue.
   */
  private async *runExec(
    p: PreparedExec,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ExecEvent> {
    if (signal?.aborted === true) throw abortError(signal);
    const started = performance.now();
    const [command, ...args] = p.argv;

    const queue: ExecEvent[] = [];
    let queuedBytes = 0;
    let paused = false;
    let openPipes = 2;
    let readSinceTick = 0;
    let exit:
      { code: number | null; signal: NodeJS.Signals | null; durationMs: number } | undefined;
    let spawnError: Error | undefined;
    let launcherError: StacyError | undefined;
    let timedOut = false;
    let aborted = false;
    let finished = false;
    let graceTimer: NodeJS.Timeout | undefined;
    let deadline: NodeJS.Timeout | undefined;
    let wake: (() => void) | undefined;
    let pgid: number | undefined;
    let killWanted = false;
    let proc: LaunchedProcess | undefined;
    const notify = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    // A kill asked for before the pid is known lands as soon as it is.
    const kill = (): void => {
      killWanted = true;
      if (pgid !== undefined) killGroup(pgid);
    };

    const events: LaunchEvents = {
      onSpawn: (pid) => {
        pgid = pid;
        this.track(p.sandboxId, pid);
        if (killWanted) killGroup(pid);
      },
      onData: (type, chunk) => {
        queue.push({ type, data: chunk });
        queuedBytes += chunk.byteLength;
        readSinceTick += chunk.byteLength;
        if (!paused && queuedBytes >= HIGH_WATER_BYTES) {
          paused = true;
          proc?.pause();
        }
        notify();
      },
      onStreamClose: () => {
        openPipes--;
        notify();
      },
      onError: (err) => {
        if (err instanceof StacyError) launcherError = err;
        else spawnError = err;
        notify();
      },
      onExit: (code, sig) => {
        exit = { code, signal: sig, durationMs: performance.now() - started };
        if (deadline !== undefined) clearTimeout(deadline);
        // Looked at after this turn (the exec's answer goes out first): the
        // probe costs an exception whenever the group is gone, the usual case,
        // and until then destroy() merely signals a group that may be gone.
        const group = pgid;
        if (group !== undefined) setImmediate(() => this.untrackIfGone(p.sandboxId, group));
        if (openPipes > 0) {
          graceTimer = setInterval(() => {
            if (readSinceTick === 0 && queue.length === 0 && !paused) proc?.closePipes();
            readSinceTick = 0;
          }, PIPE_GRACE_MS);
        }
        notify();
      },
    };
    try {
      proc = this.launcher.launch({ file: command, args, cwd: p.cwd, env: p.env }, events);
    } catch (err) {
      // The launcher's own failures say what they are; other synchronous spawn
      // failures are argument problems (validated above) or resource exhaustion.
      if (err instanceof StacyError) throw err;
      throw new StacyError('INTERNAL_ERROR', `could not start ${command}`, { cause: err });
    }

    if (p.timeoutMs > 0) {
      deadline = setTimeout(
        () => {
          timedOut = true;
          kill();
        },
        Math.min(p.timeoutMs, MAX_TIMER_MS),
      );
    }
    const onAbort = (): void => {
      aborted = true;
      kill();
      notify();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    try {
      for (;;) {
        const ev = queue.shift();
        if (ev !== undefined) {
          if (ev.type !== 'exit') queuedBytes -= ev.data.byteLength;
          if (paused && queuedBytes <= LOW_WATER_BYTES) {
            paused = false;
            proc.resume();
          }
          yield ev;
          continue;
        }
        if (aborted && signal !== undefined) throw abortError(signal);
        if (launcherError !== undefined) throw launcherError;
        if (spawnError !== undefined) {
          finished = true;
          const code = errnoCode(spawnError);
          // As a shell reports them: 127 command not found, 126 not executable.
          const exitCode = code === 'ENOENT' ? 127 : 126;
          const durationMs = performance.now() - started;
          const cwdGone = code === 'ENOENT' && !(await isDirectory(p.cwd));
          // The sandbox itself is gone (prepareExec did not look): NOT_FOUND.
          if (cwdGone) await this.rootOf(p.sandboxId);
          this.tryLog(p.sandboxId, `exec ${command} could not start (exit=${exitCode})`);
          const why = cwdGone ? 'working directory does not exist' : spawnError.message;
          yield { type: 'stderr', data: Buffer.from(`${command}: ${why}\n`) };
          yield { type: 'exit', exitCode, timedOut: false, durationMs };
          return;
        }
        if (exit !== undefined && openPipes === 0) {
          finished = true;
          const exitCode = timedOut
            ? TIMEOUT_EXIT_CODE
            : (exit.code ?? 128 + signalNumber(exit.signal ?? 'SIGKILL'));
          this.tryLog(
            p.sandboxId,
            `exec ${command} exit=${exitCode}${timedOut ? ' (timed out)' : ''} duration=${Math.round(exit.durationMs)}ms`,
          );
          yield { type: 'exit', exitCode, timedOut, durationMs: exit.durationMs };
          return;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      if (deadline !== undefined) clearTimeout(deadline);
      if (graceTimer !== undefined) clearInterval(graceTimer);
      signal?.removeEventListener('abort', onAbort);
      if (!finished) {
        kill();
        this.tryLog(p.sandboxId, `exec ${command} cancelled`);
      }
      proc.closePipes();
    }
  }
}

/**
 * `rm -rf` that also copes with directories the sandbox made unwritable
 * (mode 0500 and the like), which a plain recursive rm cannot empty.
 */
async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 });
    return;
  } catch (err) {
    const code = errnoCode(err);
    if (code !== 'EACCES' && code !== 'EPERM') throw fsError(err, '/');
  }
  await makeWritable(path);
  await rm(path, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 }).catch(
    (err: unknown) => {
      throw fsError(err, '/');
    },
  );
}

async function makeWritable(dir: string): Promise<void> {
  const st = await lstat(dir).catch(() => undefined);
  if (st?.isDirectory() !== true) return;
  await chmod(dir, 0o700).catch(() => undefined);
  const names = await readdir(dir).catch(() => []);
  for (const name of names) await makeWritable(join(dir, name));
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (st) => st.isDirectory(),
    () => false,
  );
}
