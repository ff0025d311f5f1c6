import { once } from 'node:events';
import { createReadStream, readFileSync } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import type { BigIntStats, Stats } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Command } from 'commander';
import Docker from 'dockerode';
import tar from 'tar-stream';
import type { Header, Pack } from 'tar-stream';
import { DurationSyntaxError, parseDurationNs } from '../domain/duration.js';
import { badRequest, StacyError } from '../domain/errors.js';
import type { OutputStream } from './client-commands.js';
import { formatBytes, formatRelativeTime, renderTable } from './format.js';

/** Label the test-image scripts put on their images; `image ls` marks images that carry it. */
export const TEST_IMAGE_LABEL = 'org.stacyvm.test-image';

/** Default deadline of `image pull` as a whole. */
export const DEFAULT_PULL_TIMEOUT_MS = 10 * 60_000;

/** A pull that reports nothing for this long is considered stuck. */
const DEFAULT_PULL_STALL_MS = 2 * 60_000;

const DEFAULT_SOCKET = '/var/run/docker.sock';
const USAGE_EXIT_CODE = 2;

/** Seams of the image commands, all optional; tests inject them to run commands in-process. */
export interface ImageCommandDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  /** Environment for `DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`; defaults to `process.env`. */
  env?: Record<string, string | undefined>;
  /** Receives each command's exit code; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  /** Builds the Engine API client for a target; defaults to {@link createDockerClient}. */
  createDocker?: (target: DockerTarget) => Docker;
  now?: () => number;
  /** How long a pull may go without any progress event; default 2 minutes. */
  pullStallMs?: number;
  /** Minimum interval between aggregated byte-progress lines of a pull; default 2 s. */
  progressIntervalMs?: number;
}

// ---------------------------------------------------------------------------------------------
// Image references

/** A parsed Docker image reference: `[registry[:port]/]path[:tag][@digest]`. */
export interface ImageReference {
  /** Registry and path, without tag or digest, e.g. `localhost:5000/team/app`. */
  repository: string;
  tag: string | undefined;
  digest: string | undefined;
}

// The grammar of github.com/distribution/reference, which the Engine itself applies.
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const MAX_NAME_LENGTH = 255;

/**
 * Parses and validates an image reference with the Engine's own grammar, so
 * that a name with shell metacharacters, spaces, upper case in the path or a
 * leading dash is refused before anything is sent to the daemon.
 *
 * @throws StacyError `BAD_REQUEST` naming what is wrong.
 */
export function parseImageReference(
  input: string,
  options: { allowDigest?: boolean } = {},
): ImageReference {
  const refuse = (problem: string): StacyError =>
    badRequest(`invalid image name ${JSON.stringify(input)}: ${problem}`, [
      { field: 'image', problem },
    ]);
  if (input === '') throw refuse('empty');
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (options.allowDigest !== true) throw refuse('a digest (@sha256:...) is not allowed here');
    if (!DIGEST.test(digest)) throw refuse(`"${digest}" is not a valid digest`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) {
      throw refuse(
        `tag "${tag}" must be 1-128 letters, digits, "_", "." or "-", not starting with "." or "-"`,
      );
    }
  }
  if (rest.length > MAX_NAME_LENGTH) {
    throw refuse(`the repository is longer than ${MAX_NAME_LENGTH} characters`);
  }
  const parts = rest.split('/');
  const first = parts[0] ?? '';
  // Same rule as the Engine: the first part is a registry only if it looks like a host.
  const hasDomain =
    parts.length > 1 &&
    (first.includes('.') ||
      first.includes(':') ||
      first === 'localhost' ||
      first !== first.toLowerCase());
  if (hasDomain && !DOMAIN.test(first)) throw refuse(`"${first}" is not a valid registry host`);
  const path = hasDomain ? parts.slice(1) : parts;
  for (const component of path) {
    if (!PATH_COMPONENT.test(component)) {
      throw refuse(
        component === ''
          ? 'empty path component'
          : `"${component}" must be lower-case letters and digits, separated by ".", "_", "__" or "-"`,
      );
    }
  }
  if (/^[a-f0-9]{64}$/.test(rest)) {
    throw refuse('a 64-character hex string is an image id, not a repository name');
  }
  return { repository: rest, tag, digest };
}

/** Canonical text of a reference, with the tag defaulted to `latest` when there is no digest. */
export function formatImageReference(ref: ImageReference): string {
  if (ref.digest !== undefined) {
    return `${ref.repository}${ref.tag === undefined ? '' : `:${ref.tag}`}@${ref.digest}`;
  }
  return `${ref.repository}:${ref.tag ?? 'latest'}`;
}

// ---------------------------------------------------------------------------------------------
// Engine address

/** Where the Docker Engine API listens. */
export type DockerTarget =
  | { kind: 'unix'; socketPath: string }
  | { kind: 'tcp'; host: string; port: number; tls: boolean; certPath: string | undefined };

/**
 * Resolves the Engine address from `--docker-socket` (a socket path, `unix://`
 * or `tcp://` URL), else `DOCKER_HOST`, else `/var/run/docker.sock`. TLS for
 * `tcp://` follows the Docker CLI's `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH`.
 *
 * @throws StacyError `BAD_REQUEST` for an address it cannot use.
 */
export function resolveDockerTarget(
  flag: string | undefined,
  env: Record<string, string | undefined>,
): DockerTarget {
  const fromFlag = flag !== undefined && flag !== '';
  const raw = fromFlag ? flag : (env['DOCKER_HOST'] ?? '');
  const source = fromFlag ? '--docker-socket' : 'DOCKER_HOST';
  if (raw === '') return { kind: 'unix', socketPath: DEFAULT_SOCKET };
  if (raw.startsWith('unix://')) {
    const socketPath = raw.slice('unix://'.length);
    if (socketPath === '') throw badRequest(`${source}: "${raw}" names no socket path`);
    return { kind: 'unix', socketPath };
  }
  if (raw.startsWith('tcp://')) {
    let url: URL;
    try {
      url = new URL(`http://${raw.slice('tcp://'.length)}`);
    } catch {
      throw badRequest(`${source}: "${raw}" is not a valid tcp://host:port address`);
    }
    const tlsVerify = env['DOCKER_TLS_VERIFY'];
    const tls = tlsVerify !== undefined && tlsVerify !== '';
    return {
      kind: 'tcp',
      host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: url.port === '' ? (tls ? 2376 : 2375) : Number(url.port),
      tls,
      certPath: env['DOCKER_CERT_PATH'],
    };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(raw)) {
    throw badRequest(`${source}: "${raw}" is not supported (use a socket path, unix:// or tcp://)`);
  }
  return { kind: 'unix', socketPath: raw };
}

/** Human-readable form of a target, for messages. */
export function describeDockerTarget(target: DockerTarget): string {
  return target.kind === 'unix'
    ? `unix://${target.socketPath}`
    : `tcp://${target.host}:${target.port}${target.tls ? ' (TLS)' : ''}`;
}

/** Builds a dockerode client for a target; reads the TLS files of a `tcp://` target with TLS. */
export function createDockerClient(target: DockerTarget): Docker {
  if (target.kind === 'unix') return new Docker({ socketPath: target.socketPath });
  if (!target.tls) return new Docker({ host: target.host, port: target.port, protocol: 'http' });
  const dir = target.certPath ?? join(homedir(), '.docker');
  return new Docker({
    host: target.host,
    port: target.port,
    protocol: 'https',
    ca: readFileSync(join(dir, 'ca.pem')),
    cert: readFileSync(join(dir, 'cert.pem')),
    key: readFileSync(join(dir, 'key.pem')),
  });
}

// ---------------------------------------------------------------------------------------------
// Root filesystem → tar

type TarHeaders = Partial<Header> & Pick<Header, 'name'>;

/** Options of {@link packDirectory}. */
export interface PackDirectoryOptions {
  /** Told about entries a tar cannot hold (sockets); they are left out. */
  onSkip?: (relativePath: string, reason: string) => void;
}

/**
 * Streams a tar of the tree under `root` (the root itself is not an entry):
 * regular files, directories, symlinks (the link text as is), hard links
 * (as tar links to the first path seen), FIFOs and device nodes, each with
 * its permission bits (setuid/setgid/sticky included), numeric uid/gid and
 * mtime. Entries come depth-first in name order, so the output is stable.
 * Files are read as streams, so a large tree never sits in memory.
 *
 * Not preserved: extended attributes (file capabilities, ACLs), because Node
 * cannot read them without a native module.
 */
export function packDirectory(root: string, options: PackDirectoryOptions = {}): Readable {
  const pack = tar.pack();
  const seenInodes = new Map<string, string>();
  const walk = async (dir: string, prefix: string): Promise<void> => {
    const names = (await readdir(dir)).sort();
    for (const name of names) {
      const abs = join(dir, name);
      const rel = prefix === '' ? name : `${prefix}/${name}`;
      const st = await lstat(abs, { bigint: true });
      await addEntry(pack, abs, rel, st, seenInodes, options);
      if (st.isDirectory()) await walk(abs, rel);
    }
  };
  walk(root, '').then(
    () => pack.finalize(),
    (err: unknown) => pack.destroy(err instanceof Error ? err : new Error(String(err))),
  );
  // @types/tar-stream declares Pack a Node Readable; at run time it is a streamx Readable that
  // offers the same pipe/on/async-iterator surface, which is all consumers use.
  return pack as unknown as Readable;
}

async function addEntry(
  pack: Pack,
  abs: string,
  rel: string,
  st: BigIntStats,
  seenInodes: Map<string, string>,
  options: PackDirectoryOptions,
): Promise<void> {
  const base: TarHeaders = {
    name: rel,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: new Date(Number(st.mtimeMs)),
  };
  if (st.isDirectory()) return writeEntry(pack, { ...base, type: 'directory' });
  if (st.isSymbolicLink()) {
    return writeEntry(pack, { ...base, type: 'symlink', linkname: await readlink(abs) });
  }
  if (st.isFile()) {
    if (st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = seenInodes.get(key);
      if (first !== undefined) return writeEntry(pack, { ...base, type: 'link', linkname: first });
      seenInodes.set(key, rel);
    }
    return writeFileEntry(pack, abs, { ...base, type: 'file', size: Number(st.size) });
  }
  if (st.isFIFO()) return writeEntry(pack, { ...base, type: 'fifo' });
  if (st.isCharacterDevice() || st.isBlockDevice()) {
    // glibc's major()/minor() split of a 64-bit dev_t.
    const major = ((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn);
    const minor = (st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn);
    return writeEntry(pack, {
      ...base,
      type: st.isCharacterDevice() ? 'character-device' : 'block-device',
      devmajor: Number(major),
      devminor: Number(minor),
    });
  }
  options.onSkip?.(rel, 'sockets cannot be stored in a tar archive');
}

function writeEntry(pack: Pack, header: TarHeaders): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry(header, (err) => (err ? reject(err) : resolve()));
  });
}

async function writeFileEntry(pack: Pack, abs: string, header: TarHeaders): Promise<void> {
  let finish!: (err?: Error | null) => void;
  const done = new Promise<void>((resolve, reject) => {
    finish = (err) => (err ? reject(err) : resolve());
  });
  const sink = pack.entry(header, (err) => finish(err));
  const size = header.size ?? 0;
  let written = 0;
  try {
    for await (const chunk of createReadStream(abs)) {
      // The header already holds the size: a file that grows while being read is cut there,
      // and one that shrinks fails the entry, rather than corrupting the archive.
      const buf = chunk as Buffer;
      const room = size - written;
      if (room <= 0) break;
      const part = buf.length > room ? buf.subarray(0, room) : buf;
      written += part.length;
      if (!sink.write(part)) await once(sink, 'drain');
    }
    if (written < size) throw new Error(`${abs} shrank while it was being archived`);
  } catch (err) {
    sink.destroy(err instanceof Error ? err : new Error(String(err)));
    await done.catch(() => undefined);
    throw err;
  }
  sink.end(undefined);
  await done;
}

// ---------------------------------------------------------------------------------------------
// Engine progress streams

/** One line of an Engine `/images/create` progress stream. */
interface ProgressEvent {
  status?: string;
  id?: string;
  progress?: string;
  progressDetail?: { current?: number; total?: number };
  error?: string;
  errorDetail?: { message?: string };
}

/** Yields each JSON object of a newline-delimited JSON stream. */
async function* readJsonLines(stream: AsyncIterable<unknown>): AsyncGenerator<ProgressEvent> {
  let pending = '';
  const parse = (line: string): ProgressEvent | undefined => {
    const text = line.trim();
    if (text === '') return undefined;
    try {
      const value: unknown = JSON.parse(text);
      return typeof value === 'object' && value !== null ? value : undefined;
    } catch {
      return { status: text };
    }
  };
  for await (const chunk of stream) {
    pending += Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk);
    let nl = pending.indexOf('\n');
    while (nl !== -1) {
      const event = parse(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
      if (event !== undefined) yield event;
      nl = pending.indexOf('\n');
    }
  }
  const last = parse(pending);
  if (last !== undefined) yield last;
}

function eventError(event: ProgressEvent): string | undefined {
  return event.errorDetail?.message ?? event.error;
}

/** The daemon's own words from a dockerode error, without the "(HTTP code 500) server error -" frame. */
function daemonMessage(err: unknown): string {
  if (typeof err === 'object' && err !== null) {
    const rec = err as { json?: unknown; message?: unknown; code?: unknown };
    const json = rec.json;
    if (typeof json === 'object' && json !== null) {
      const m = (json as { message?: unknown }).message;
      if (typeof m === 'string' && m !== '') return m;
    }
    if (typeof json === 'string' && json.trim() !== '') return json.trim();
    if (typeof rec.message === 'string') {
      // docker-modem wraps the daemon's message of a streamed request in its own frame.
      return rec.message.replace(/^\(HTTP code \d+\) [^-]*- ([\s\S]*?)\s*$/, '$1');
    }
  }
  return String(err);
}

function statusCodeOf(err: unknown): number | undefined {
  if (typeof err === 'object' && err !== null) {
    const s = (err as { statusCode?: unknown }).statusCode;
    if (typeof s === 'number') return s;
  }
  return undefined;
}

const CONNECT_ERRORS = new Set([
  'ECONNREFUSED',
  'ENOENT',
  'EACCES',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ETIMEDOUT',
]);

/** Turns a failure to reach the daemon into an actionable message; other errors pass through. */
function engineError(err: unknown, target: DockerTarget, action: string): StacyError {
  if (err instanceof StacyError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && CONNECT_ERRORS.has(code) && statusCodeOf(err) === undefined) {
    return new StacyError(
      'UNAVAILABLE',
      `cannot reach the Docker daemon at ${describeDockerTarget(target)} (${code}); start it with scripts/docker-up.sh or pass --docker-socket`,
      { cause: err },
    );
  }
  const status = statusCodeOf(err);
  const message = `${action}: ${daemonMessage(err)}`;
  if (status === 404) return new StacyError('NOT_FOUND', message, { cause: err });
  if (status !== undefined && status >= 400 && status < 500) {
    return new StacyError('BAD_REQUEST', message, { cause: err });
  }
  return new StacyError('UNAVAILABLE', message, { cause: err });
}

// ---------------------------------------------------------------------------------------------
// Commands

interface Io {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Record<string, string | undefined>;
  setExitCode: (code: number) => void;
  createDocker: (target: DockerTarget) => Docker;
  now: () => number;
  pullStallMs: number;
  progressIntervalMs: number;
}

interface ImageGlobals {
  dockerSocket?: string;
  json?: boolean;
}

interface Ctx {
  io: Io;
  target: DockerTarget;
  docker(): Docker;
}

/** A mistake in how the command was invoked; exits with status 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/**
 * Adds `stacyvm image import|ls|pull` to `program`. They talk to the Docker
 * Engine API directly (dockerode), never through the docker CLI, and need no
 * StacyVM server. Action handlers never call `process.exit`: they report the
 * exit code through `deps.setExitCode` (0 ok, 1 failure, 2 usage mistake).
 */
export function registerImageCommands(program: Command, deps: ImageCommandDeps = {}): void {
  const io: Io = {
    stdout: deps.stdout ?? process.stdout,
    stderr: deps.stderr ?? process.stderr,
    env: deps.env ?? process.env,
    setExitCode:
      deps.setExitCode ??
      ((code: number): void => {
        process.exitCode = code;
      }),
    createDocker: deps.createDocker ?? createDockerClient,
    now: deps.now ?? Date.now,
    pullStallMs: deps.pullStallMs ?? DEFAULT_PULL_STALL_MS,
    progressIntervalMs: deps.progressIntervalMs ?? 2000,
  };

  const image = program
    .command('image')
    .description('manage Docker Engine images for sandboxes (no StacyVM server needed)')
    .option(
      '--docker-socket <path>',
      `Docker Engine socket path, unix:// or tcp:// URL (default env DOCKER_HOST, else ${DEFAULT_SOCKET})`,
    );

  image
    .command('import')
    .description('import a root filesystem directory or tar archive as an image; prints its id')
    .argument('<rootfs>', 'root filesystem directory, or a .tar/.tar.gz/.tar.xz/.tar.bz2 file')
    .argument('<name>', 'image name, e.g. my-rootfs:1.0 (tag defaults to latest)')
    .option(
      '--change <instruction>',
      'Dockerfile instruction to apply, e.g. \'CMD ["/bin/sh"]\' (repeatable)',
      collect,
    )
    .option('--label <key=value>', 'image label (repeatable)', collect)
    .option('--message <text>', 'commit message stored with the image')
    .addHelpText(
      'after',
      '\nExamples:\n  stacyvm image import ./rootfs my/rootfs:1 --change \'CMD ["/bin/sh"]\'\n  stacyvm image import rootfs.tar.gz my/rootfs:1',
    )
    .action(run(io, importCommand));

  image
    .command('ls')
    .alias('list')
    .description('list images; TEST marks images built by scripts/build-test-images.sh')
    .option('--json', 'print machine-readable JSON')
    .action(run(io, listCommand));

  image
    .command('pull')
    .description('pull an image through the Engine, showing progress; prints its id')
    .argument('<name>', 'image reference, e.g. alpine:3.20 or registry:5000/team/app@sha256:...')
    .option('--timeout <duration>', 'give up after this long, Go syntax (default 10m)')
    .action(run(io, pullCommand));
}

function run(
  io: Io,
  handler: (ctx: Ctx, cmd: Command) => Promise<number>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]): Promise<void> => {
    // Commander passes the command itself last.
    const cmd = args[args.length - 1] as Command;
    let code: number;
    try {
      const globals = cmd.optsWithGlobals<ImageGlobals>();
      let target: DockerTarget;
      try {
        target = resolveDockerTarget(globals.dockerSocket, io.env);
      } catch (err) {
        throw new UsageError(err instanceof Error ? err.message : String(err));
      }
      let client: Docker | undefined;
      const ctx: Ctx = {
        io,
        target,
        docker: () => (client ??= io.createDocker(target)),
      };
      code = await handler(ctx, cmd);
    } catch (err) {
      code = reportError(io, err);
    }
    io.setExitCode(code);
  };
}

function reportError(io: Io, err: unknown): number {
  if (err instanceof UsageError) {
    io.stderr.write(`error: ${err.message}\n`);
    return USAGE_EXIT_CODE;
  }
  // Engine failures print the daemon's own words; a catalog code would add nothing a user acts on.
  io.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}

function usageReference(input: string, allowDigest: boolean): ImageReference {
  try {
    return parseImageReference(input, { allowDigest });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

interface ImportOptions {
  change?: string[];
  label?: string[];
  message?: string;
}

async function importCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const [source, name] = cmd.processedArgs as [string, string];
  const opts = cmd.opts<ImportOptions>();
  const ref = usageReference(name, false);
  const changes = [...(opts.change ?? [])];
  for (const entry of opts.label ?? []) {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label expects key=value, got "${entry}"`);
    // JSON quoting is valid Dockerfile syntax and keeps spaces or "=" in a value in one label.
    changes.push(
      `LABEL ${JSON.stringify(entry.slice(0, eq))}=${JSON.stringify(entry.slice(eq + 1))}`,
    );
  }
  for (const change of changes) {
    if (/[\r\n]/.test(change)) throw new UsageError('--change must be a single line');
  }

  let st: Stats;
  try {
    st = await stat(source);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    throw new UsageError(
      code === 'ENOENT'
        ? `${source}: no such file or directory`
        : `${source}: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  let body: Readable;
  let what: string;
  if (st.isDirectory()) {
    body = packDirectory(source, {
      onSkip: (rel, reason) => ctx.io.stderr.write(`warning: skipped ${rel}: ${reason}\n`),
    });
    what = `directory ${source}`;
  } else if (st.isFile()) {
    body = createReadStream(source);
    what = `archive ${source} (${formatBytes(st.size)})`;
  } else {
    throw new UsageError(`${source} is neither a directory nor a regular file`);
  }

  const display = formatImageReference(ref);
  ctx.io.stderr.write(`importing ${what} as ${display}\n`);
  const started = ctx.io.now();
  // A read error of ours (EACCES, ENOENT under the tree) reaches us as a failed request; it must
  // not be mistaken for an unreachable daemon, whose errors carry the same codes.
  let readError: Error | undefined;
  body.on('error', (err: Error) => {
    readError ??= err;
  });
  let id: string | undefined;
  try {
    const stream = await ctx.docker().importImage(body, {
      repo: ref.repository,
      tag: ref.tag ?? 'latest',
      ...(changes.length > 0 ? { changes } : {}),
      ...(opts.message !== undefined ? { message: opts.message } : {}),
    });
    for await (const event of readJsonLines(stream as AsyncIterable<unknown>)) {
      const error = eventError(event);
      if (error !== undefined)
        throw new StacyError('BAD_REQUEST', `cannot import ${display}: ${error}`);
      if (event.status !== undefined && /^sha256:[0-9a-f]{64}$/.test(event.status))
        id = event.status;
    }
  } catch (err) {
    body.destroy();
    if (readError !== undefined) {
      throw new StacyError('BAD_REQUEST', `cannot import ${display}: ${readError.message}`, {
        cause: readError,
      });
    }
    throw engineError(err, ctx.target, `cannot import ${display}`);
  }
  if (id === undefined) {
    // Older daemons may not echo the id; the tag now names the image, so ask for it.
    id = (await ctx.docker().getImage(display).inspect()).Id;
  }
  ctx.io.stderr.write(`imported ${display} in ${((ctx.io.now() - started) / 1000).toFixed(1)}s\n`);
  ctx.io.stdout.write(`${id}\n`);
  return 0;
}

interface ImageRow {
  id: string;
  tags: string[];
  size_bytes: number;
  created: string;
  test_image: string | null;
}

async function listCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const { json } = cmd.optsWithGlobals<ImageGlobals>();
  let images: Docker.ImageInfo[];
  try {
    images = await ctx.docker().listImages();
  } catch (err) {
    throw engineError(err, ctx.target, 'cannot list images');
  }
  const rows: ImageRow[] = images
    .map((img) => ({
      id: img.Id,
      tags: (img.RepoTags ?? []).filter((t) => t !== '<none>:<none>'),
      size_bytes: img.Size,
      created: new Date(img.Created * 1000).toISOString(),
      test_image: img.Labels?.[TEST_IMAGE_LABEL] ?? null,
    }))
    // Untagged images last; byte order, so the listing does not depend on the locale.
    .sort((a, b) => {
      const x = a.tags[0];
      const y = b.tags[0];
      if (x === undefined || y === undefined) return x === y ? 0 : x === undefined ? 1 : -1;
      return x < y ? -1 : x > y ? 1 : 0;
    });
  if (json === true) {
    ctx.io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return 0;
  }
  if (rows.length === 0) {
    ctx.io.stderr.write('no images\n');
    return 0;
  }
  const now = ctx.io.now();
  const table: string[][] = [];
  for (const row of rows) {
    const short = row.id.replace(/^sha256:/, '').slice(0, 12);
    const test = row.test_image === null ? '' : `yes (${row.test_image})`;
    for (const tag of row.tags.length > 0 ? row.tags : ['<none>']) {
      table.push([
        tag,
        short,
        formatBytes(row.size_bytes),
        formatRelativeTime(Date.parse(row.created), now),
        test,
      ]);
    }
  }
  ctx.io.stdout.write(`${renderTable(['IMAGE', 'ID', 'SIZE', 'CREATED', 'TEST'], table)}\n`);
  return 0;
}

/** Aggregates per-layer events into lines a log or a terminal can follow. */
class PullProgress {
  private readonly layerStatus = new Map<string, string>();
  private readonly layerBytes = new Map<string, { current: number; total: number }>();
  private lastBytesLine = 0;

  constructor(
    private readonly write: (line: string) => void,
    private readonly now: () => number,
    private readonly intervalMs: number,
  ) {}

  onEvent(event: ProgressEvent): void {
    const status = event.status;
    if (status === undefined) return;
    const id = event.id;
    if (id === undefined || id === '' || status.startsWith('Pulling from')) {
      this.write(id === undefined || id === '' ? status : `${id}: ${status}`);
      return;
    }
    const detail = event.progressDetail;
    if (status === 'Downloading' && detail?.total !== undefined && detail.total > 0) {
      this.layerBytes.set(id, { current: detail.current ?? 0, total: detail.total });
    } else if (status === 'Download complete') {
      const bytes = this.layerBytes.get(id);
      if (bytes !== undefined) bytes.current = bytes.total;
    }
    if (this.layerStatus.get(id) !== status) {
      this.layerStatus.set(id, status);
      this.write(`${id}: ${status}`);
    }
    const t = this.now();
    if (status === 'Downloading' && t - this.lastBytesLine >= this.intervalMs) {
      this.lastBytesLine = t;
      let current = 0;
      let total = 0;
      for (const b of this.layerBytes.values()) {
        current += b.current;
        total += b.total;
      }
      const done = [...this.layerStatus.values()].filter((s) => s === 'Pull complete').length;
      this.write(
        `downloaded ${formatBytes(current)} of ${formatBytes(total)} (${done}/${this.layerStatus.size} layers complete)`,
      );
    }
  }
}

async function pullCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const [name] = cmd.processedArgs as [string];
  const opts = cmd.opts<{ timeout?: string }>();
  const ref = usageReference(name, true);
  let timeoutMs = DEFAULT_PULL_TIMEOUT_MS;
  if (opts.timeout !== undefined) {
    let ns: number;
    try {
      ns = parseDurationNs(opts.timeout);
    } catch (err) {
      throw new UsageError(
        `--timeout: ${err instanceof DurationSyntaxError ? err.message : String(err)}`,
      );
    }
    if (ns <= 0) throw new UsageError(`--timeout must be positive, got "${opts.timeout}"`);
    timeoutMs = Math.max(1, Math.round(ns / 1e6));
  }
  const display = formatImageReference(ref);
  ctx.io.stderr.write(`pulling ${display}\n`);

  const controller = new AbortController();
  let why: string | undefined;
  const abort = (reason: string): void => {
    if (why !== undefined) return;
    why = reason;
    controller.abort();
  };
  const deadline = setTimeout(() => abort(`no result within ${formatMs(timeoutMs)}`), timeoutMs);
  let stall: NodeJS.Timeout | undefined;
  const armStall = (): void => {
    clearTimeout(stall);
    stall = setTimeout(
      () => abort(`no progress for ${formatMs(ctx.io.pullStallMs)}`),
      ctx.io.pullStallMs,
    );
  };
  armStall();
  const progress = new PullProgress(
    (line) => ctx.io.stderr.write(`${line}\n`),
    ctx.io.now,
    ctx.io.progressIntervalMs,
  );
  let stream: NodeJS.ReadableStream | undefined;
  const onAbort = (): void => {
    // The signal only cancels the request; a response already streaming must be torn down too.
    (stream as Readable | undefined)?.destroy();
  };
  controller.signal.addEventListener('abort', onAbort);
  try {
    stream = await ctx.docker().createImage({
      fromImage: ref.repository,
      tag: ref.digest ?? ref.tag ?? 'latest',
      abortSignal: controller.signal,
    });
    if (controller.signal.aborted) onAbort();
    for await (const event of readJsonLines(stream as AsyncIterable<unknown>)) {
      armStall();
      const error = eventError(event);
      if (error !== undefined) {
        throw new StacyError('NOT_FOUND', `cannot pull image ${display}: ${error}`);
      }
      progress.onEvent(event);
    }
    if (why !== undefined) throw new Error('aborted');
  } catch (err) {
    if (why !== undefined) {
      throw new StacyError('TIMEOUT', `cannot pull image ${display}: gave up after ${why}`, {
        cause: err,
      });
    }
    throw engineError(err, ctx.target, `cannot pull image ${display}`);
  } finally {
    clearTimeout(deadline);
    clearTimeout(stall);
    controller.signal.removeEventListener('abort', onAbort);
  }
  let id: string;
  try {
    id = (await ctx.docker().getImage(display).inspect()).Id;
  } catch (err) {
    throw engineError(err, ctx.target, `pulled ${display} but cannot inspect it`);
  }
  ctx.io.stdout.write(`${id}\n`);
  return 0;
}

function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}
