/**
 * One sandbox: exec, files, lifetime. Obtain it from {@link Client.spawn}, {@link Client.get}
 * or {@link TemplateManager.spawn}.
 */
import { parseGoDuration, toGoDuration } from './duration.js';
import type { Duration } from './duration.js';
import { ExecStream } from './exec-stream.js';
import type { Transport } from './http.js';
import type {
  DeleteFileOptions,
  ExecLogEntry,
  ExecOptions,
  ExecResult,
  FileInfo,
  FileMode,
  ReadFileOptions,
  SandboxInfo,
  SandboxState,
  SandboxStats,
  WriteFileOptions,
} from './types.js';
import { expectArray, expectObject, expectSandboxInfo, expectString } from './validate.js';

/** Strings longer than this are uploaded raw (`PUT`), not as JSON, to stay under body limits. */
const JSON_WRITE_MAX_CHARS = 1_000_000;
/** Extra time the HTTP request of an exec gets beyond the exec's own deadline. */
const EXEC_DEADLINE_GRACE_MS = 5_000;
/**
 * The exec deadline assumed when the call gives none: the server's default limit
 * (`defaults.max_exec_timeout`, 10m). The server kills the command by then in any case.
 */
const SERVER_DEFAULT_EXEC_LIMIT_MS = 600_000;

/** A command: a shell script, or an argv array (program first). */
export type Command = string | readonly string[];

/** The exec request body for a command and options. */
export function execBody(command: Command, opts: ExecOptions = {}): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (typeof command === 'string') {
    body['command'] = command;
    if (opts.args !== undefined) body['args'] = opts.args;
    if (opts.mode !== undefined) body['mode'] = opts.mode;
  } else {
    const [program, ...args] = command;
    if (program === undefined) throw new TypeError('exec: the argv array is empty');
    body['command'] = program;
    body['args'] = args;
    body['mode'] = opts.mode ?? 'argv';
  }
  if (opts.env !== undefined) body['env'] = opts.env;
  if (opts.workdir !== undefined) body['workdir'] = opts.workdir;
  if (opts.timeout !== undefined) body['timeout'] = toGoDuration(opts.timeout, 'timeout');
  return body;
}

/** A file mode as the server takes it: octal digits. Numbers are permission bits (`0o755`). */
export function modeString(mode: FileMode): string {
  if (typeof mode === 'string') return mode;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new RangeError(`mode ${mode} is not a permission number (0 to 0o7777)`);
  }
  return mode.toString(8).padStart(4, '0');
}

function toBytes(content: Uint8Array | ArrayBuffer): Uint8Array {
  return content instanceof Uint8Array ? content : new Uint8Array(content);
}

/** A running (or once running) sandbox. Its fields are a snapshot; {@link refresh} updates them. */
export class Sandbox {
  private _info: SandboxInfo;

  /** @internal Use {@link Client.spawn} or {@link Client.get}. */
  constructor(
    private readonly http: Transport,
    info: SandboxInfo,
  ) {
    this._info = info;
  }

  /** `sb-` and 8 hex digits. */
  get id(): string {
    return this._info.id;
  }
  get state(): SandboxState {
    return this._info.state;
  }
  get provider(): string {
    return this._info.provider;
  }
  get image(): string {
    return this._info.image;
  }
  get memoryMb(): number {
    return this._info.memory_mb;
  }
  get vcpus(): number {
    return this._info.vcpus;
  }
  /** Worker running the sandbox (`local` for the control plane's own). */
  get workerId(): string {
    return this._info.worker_id;
  }
  get previewDomain(): string {
    return this._info.preview_domain;
  }
  get ports(): number[] {
    return [...(this._info.ports ?? [])];
  }
  get ownerId(): string | undefined {
    return this._info.owner_id;
  }
  get tenantId(): string | undefined {
    return this._info.tenant_id;
  }
  get vmId(): string | undefined {
    return this._info.vm_id;
  }
  get metadata(): Record<string, string> {
    return { ...(this._info.metadata ?? {}) };
  }
  /** RFC 3339 strings, as the server sent them. */
  get createdAt(): string {
    return this._info.created_at;
  }
  get updatedAt(): string {
    return this._info.updated_at;
  }
  get expiresAt(): string {
    return this._info.expires_at;
  }
  /** A copy of the server's JSON object, every field included. */
  get info(): SandboxInfo {
    return structuredClone(this._info);
  }

  /**
   * The preview URL of an in-sandbox port: `http://{port}-{id}.{preview_domain}`, built from
   * the sandbox object the server returned (an object carrying `preview_scheme` or
   * `preview_port` changes the scheme or adds the port). Once the server offers
   * `GET /sandboxes/{id}/preview/{port}`, the SDK will prefer the URL it returns.
   */
  getPreviewUrl(port: number): string {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new RangeError(`port ${port} is not a TCP port`);
    }
    const { preview_scheme: scheme, preview_port: gatewayPort } = this._info;
    const domain = this._info.preview_domain === '' ? 'localhost' : this._info.preview_domain;
    const suffix = typeof gatewayPort === 'number' ? `:${gatewayPort}` : '';
    return `${typeof scheme === 'string' && scheme !== '' ? scheme : 'http'}://${port}-${this.id}.${domain}${suffix}`;
  }

  private path(suffix = ''): string {
    return `/sandboxes/${encodeURIComponent(this.id)}${suffix}`;
  }

  // --- exec -----------------------------------------------------------------------------

  /**
   * How long an exec request may wait for its response: the exec runs that long before the
   * server kills it, so the client's `timeoutMs` is stretched to the exec's deadline + 5 s
   * (the server's default limit, 10 min, when the call sets no `timeout`).
   */
  private execRequestTimeout(body: Record<string, unknown>): number {
    const t = body['timeout'];
    const ms = typeof t === 'string' ? parseGoDuration(t) : undefined;
    return this.http.longerTimeout((ms ?? SERVER_DEFAULT_EXEC_LIMIT_MS) + EXEC_DEADLINE_GRACE_MS);
  }

  /**
   * Runs a command and waits for it. A string is a shell script (`sh -c`); an array is argv.
   * The request waits as long as the command may run (see `timeout`); use `signal` to give up
   * earlier, which makes the server kill the command.
   */
  async exec(command: Command, opts: ExecOptions = {}): Promise<ExecResult> {
    const body = execBody(command, opts);
    const { body: res } = await this.http.json({
      method: 'POST',
      path: this.path('/exec'),
      json: body,
      signal: opts.signal,
      timeoutMs: this.execRequestTimeout(body),
    });
    const r = expectObject<{
      exit_code: number;
      stdout: string;
      stderr: string;
      duration?: unknown;
    }>(res, 'exec result', { exit_code: 'number', stdout: 'string', stderr: 'string' });
    const duration = typeof r.duration === 'string' ? r.duration : '';
    return {
      exitCode: r.exit_code,
      exit_code: r.exit_code,
      stdout: r.stdout,
      stderr: r.stderr,
      duration,
      durationMs: parseGoDuration(duration) ?? Number.NaN,
    };
  }

  /**
   * Runs a command and streams its output: `for await (const ev of sb.execStream(cmd))`
   * yields `{stream:'stdout'|'stderr', data}` chunks in order, then `{stream:'exit', exitCode}`.
   * See {@link ExecStream} for cancellation, `wait()` and `exitCode()`.
   */
  execStream(command: Command, opts: ExecOptions = {}): ExecStream {
    const body = { ...execBody(command, opts), stream: true };
    // The server sends the response headers with the first output, so a quiet command keeps
    // the headers back: the wait for them is bounded like a synchronous exec.
    const timeoutMs = this.execRequestTimeout(body);
    return new ExecStream(
      (signal) =>
        this.http.open({ method: 'POST', path: this.path('/exec'), json: body, signal, timeoutMs }),
      opts.signal,
    );
  }

  /** The exec log, newest first (`limit` 1–1000, server default 50). */
  async execs(limit?: number): Promise<ExecLogEntry[]> {
    const { body } = await this.http.json({
      method: 'GET',
      path: this.path('/execs'),
      query: { limit: limit === undefined ? undefined : String(limit) },
    });
    return expectArray(body, 'exec log', (e) =>
      expectObject<ExecLogEntry>(e, 'exec log entry', { command: 'string', exit_code: 'number' }),
    );
  }

  // --- files ----------------------------------------------------------------------------

  /**
   * Writes a file, creating parent directories. A string is written as UTF-8 text (JSON
   * `POST`); bytes go as a raw `application/octet-stream` `PUT`, byte-exact and not subject
   * to the server's JSON body limit. The third argument is the options or, as in 0.1, the mode.
   */
  async writeFile(
    path: string,
    content: string | Uint8Array | ArrayBuffer,
    options: WriteFileOptions | FileMode = {},
  ): Promise<void> {
    const opts: WriteFileOptions = typeof options === 'object' ? options : { mode: options };
    const mode = opts.mode === undefined ? undefined : modeString(opts.mode);
    if (typeof content === 'string' && content.length <= JSON_WRITE_MAX_CHARS) {
      await this.http.json({
        method: 'POST',
        path: this.path('/files'),
        json: mode === undefined ? { path, content } : { path, content, mode },
        signal: opts.signal,
      });
      return;
    }
    const bytes =
      typeof content === 'string' ? new TextEncoder().encode(content) : toBytes(content);
    await this.http.json({
      method: 'PUT',
      path: this.path('/files'),
      query: { path, mode },
      bytes,
      signal: opts.signal,
    });
  }

  /** Reads a file as UTF-8 text (invalid sequences become U+FFFD). */
  async readFile(path: string, opts: ReadFileOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.readFileBytes(path, opts));
  }

  /** Reads a file's exact bytes. */
  async readFileBytes(path: string, opts: ReadFileOptions = {}): Promise<Uint8Array> {
    return this.http.bytes({
      method: 'GET',
      path: this.path('/files'),
      query: { path },
      signal: opts.signal,
    });
  }

  /** Lists a directory (default `/`). */
  async listFiles(path = '/'): Promise<FileInfo[]> {
    const { body } = await this.http.json({
      method: 'GET',
      path: this.path('/files/list'),
      query: { path },
    });
    return expectArray(body, 'file list', (f) =>
      expectObject<FileInfo>(f, 'file info', { path: 'string', is_dir: 'boolean' }),
    );
  }

  /** Stats a file or directory. */
  async statFile(path: string): Promise<FileInfo> {
    const { body } = await this.http.json({
      method: 'GET',
      path: this.path('/files/stat'),
      query: { path },
    });
    return expectObject<FileInfo>(body, 'file info', { path: 'string', is_dir: 'boolean' });
  }

  /** Deletes a file, or a directory with `recursive` (a boolean, as in 0.1, or `{recursive}`). */
  async deleteFile(path: string, options: DeleteFileOptions | boolean = {}): Promise<void> {
    const recursive = typeof options === 'boolean' ? options : options.recursive === true;
    await this.http.json({
      method: 'DELETE',
      path: this.path('/files'),
      query: { path, recursive: recursive ? 'true' : undefined },
    });
  }

  /** Moves (renames) a file or directory, creating the destination's parents. */
  async moveFile(oldPath: string, newPath: string): Promise<void> {
    await this.http.json({
      method: 'POST',
      path: this.path('/files/move'),
      json: { old_path: oldPath, new_path: newPath },
    });
  }

  /** Changes a file's mode (`"0755"` or `0o755`). */
  async chmodFile(path: string, mode: FileMode): Promise<void> {
    await this.http.json({
      method: 'POST',
      path: this.path('/files/chmod'),
      json: { path, mode: modeString(mode) },
    });
  }

  /** Paths matching a glob (`*`, `?`, `**`, `[...]`), sorted. */
  async globFiles(pattern: string): Promise<string[]> {
    const { body } = await this.http.json({
      method: 'GET',
      path: this.path('/files/glob'),
      query: { pattern },
    });
    return expectArray(body, 'glob result', (p) => expectString(p, 'glob entry'));
  }

  // --- lifetime -------------------------------------------------------------------------

  /** Sets the expiry to now + `ttl` (Go duration or milliseconds; default `30m`). */
  async extendTtl(ttl: Duration = '30m'): Promise<this> {
    const { body } = await this.http.json({
      method: 'POST',
      path: this.path('/extend'),
      json: { ttl: toGoDuration(ttl, 'ttl') },
    });
    this._info = expectSandboxInfo<SandboxInfo>(body);
    return this;
  }

  /** Reloads the sandbox object from the server. */
  async refresh(): Promise<this> {
    const { body } = await this.http.json({ method: 'GET', path: this.path() });
    this._info = expectSandboxInfo<SandboxInfo>(body);
    return this;
  }

  /** Destroys the sandbox. A second destroy is a {@link NotFoundError}. */
  async destroy(): Promise<void> {
    await this.http.json({ method: 'DELETE', path: this.path() });
    this._info = { ...this._info, state: 'destroyed' };
  }

  /** The last `lines` console lines (server default 100, 1–10000). */
  async logs(lines?: number): Promise<string[]> {
    const { body } = await this.http.json({
      method: 'GET',
      path: this.path('/logs'),
      query: { lines: lines === undefined ? undefined : String(lines) },
    });
    return expectArray(body, 'logs', (l) => expectString(l, 'log line'));
  }

  /** Live resource usage; `{supported:false}` when the provider cannot measure. */
  async stats(): Promise<SandboxStats> {
    const { body } = await this.http.json({ method: 'GET', path: this.path('/stats') });
    return expectObject<SandboxStats>(body, 'stats', { supported: 'boolean' });
  }

  toString(): string {
    return `Sandbox(id="${this.id}", state="${this.state}")`;
  }

  toJSON(): SandboxInfo {
    return this.info;
  }
}
