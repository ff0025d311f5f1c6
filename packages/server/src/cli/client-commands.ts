import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command, CommanderError } from 'commander';
import { parseDurationNs } from '../domain/duration.js';
import { StacyError } from '../domain/errors.js';
import { TIMEOUT_EXIT_CODE } from '../domain/exec.js';
import { formatFileMode, parseFileMode } from '../domain/files.js';
import { ApiClient, ApiError } from './api-client.js';
import type {
  ExecBody,
  ExecStreamLine,
  FileInfoJson,
  SandboxJson,
  SpawnBody,
} from './api-client.js';
import { formatBytes, formatTimestampRelative, renderKeyValue, renderTable } from './format.js';

/** Where the CLI writes; `process.stdout`/`process.stderr` satisfy it. */
export interface OutputStream {
  write(chunk: string | Uint8Array, callback?: (err?: Error | null) => void): boolean;
}

/** Seams of the client commands, all optional; tests inject them to run commands in-process. */
export interface ClientCommandDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  fetch?: typeof fetch;
  /** Environment for `STACYVM_SERVER` / `STACYVM_API_KEY`; defaults to `process.env`. */
  env?: Record<string, string | undefined>;
  /** Receives each command's exit code; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  now?: () => number;
  /** Deadline for bounded API calls (not streams); default 30 s. */
  timeoutMs?: number;
}

/** Default control plane address: loopback, as the server binds by default. */
export const DEFAULT_SERVER = 'http://127.0.0.1:7423';

/** Exit code for a usage mistake (bad flag value, missing argument). */
export const USAGE_EXIT_CODE = 2;

interface Io {
  stdout: OutputStream;
  stderr: OutputStream;
  fetch: typeof fetch | undefined;
  env: Record<string, string | undefined>;
  setExitCode: (code: number) => void;
  now: () => number;
  timeoutMs: number | undefined;
}

interface GlobalOptions {
  server?: string;
  apiKey?: string;
  json?: boolean;
}

interface Ctx {
  io: Io;
  json: boolean;
  apiKey: string | undefined;
  /** Built on first use, so `version` works without a server. */
  client(): ApiClient;
}

/** A mistake in how the command was invoked; exits with {@link USAGE_EXIT_CODE}. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * Exit code for an error Commander raised under `exitOverride()`: 0 when it
 * only displayed help or the version, otherwise a usage error (2).
 */
export function exitCodeForCommanderError(err: CommanderError): number {
  return err.exitCode === 0 ? 0 : USAGE_EXIT_CODE;
}

/**
 * Adds the global options (`--server`, `--api-key`, `--json`) and the client
 * commands (`spawn exec list get kill logs files version`) to `program`.
 *
 * Action handlers never call `process.exit`: they report the exit code through
 * `deps.setExitCode`, so commands run in-process in tests. Call
 * `program.exitOverride()` / `configureOutput()` before this if subcommands
 * should inherit them.
 */
export function registerClientCommands(program: Command, deps: ClientCommandDeps = {}): void {
  const io: Io = {
    stdout: deps.stdout ?? process.stdout,
    stderr: deps.stderr ?? process.stderr,
    fetch: deps.fetch,
    env: deps.env ?? process.env,
    setExitCode:
      deps.setExitCode ??
      ((code: number): void => {
        process.exitCode = code;
      }),
    now: deps.now ?? Date.now,
    timeoutMs: deps.timeoutMs,
  };

  program
    .option('--server <url>', `control plane URL (env STACYVM_SERVER, default ${DEFAULT_SERVER})`)
    .option(
      '--api-key <key>',
      'API key sent as X-API-Key; prefer env STACYVM_API_KEY, since argv is visible to other users',
    )
    .option('--json', 'print machine-readable JSON');

  program
    .command('spawn')
    .description('create a sandbox and print its id')
    .option(
      '--image <image>',
      'container image (server default: its defaults.image, e.g. alpine:latest)',
    )
    .option('--provider <name>', 'provider (server default if omitted)')
    .option('--ttl <duration>', 'time to live, Go syntax such as 30m or 1h30m')
    .option('--memory <mb>', 'memory limit in MB')
    .option('--vcpus <n>', 'number of virtual CPUs')
    .option('--port <port>', 'port to expose for previews (repeatable)', collect)
    .option('--meta <key=value>', 'metadata entry (repeatable)', collect)
    .action(run(io, spawnCommand));

  program
    .command('exec')
    .description('run a command in a sandbox, streaming its output; exits with its exit code')
    .argument('<id>', 'sandbox id')
    .argument('<command...>', 'command and arguments (put -- before them when they have flags)')
    .option('--shell', 'join the words into one command for sh -c instead of running argv')
    .option('--env <key=value>', 'environment variable (repeatable)', collect)
    .option('--workdir <dir>', 'working directory inside the sandbox')
    .option('--timeout <duration>', 'kill the command after this long, e.g. 30s (exit code 124)')
    .addHelpText(
      'after',
      '\nExamples:\n  stacyvm exec sb-1a2b3c4d -- ls -la /workspace\n  stacyvm exec sb-1a2b3c4d --shell -- "echo $HOME | wc -c"',
    )
    .action(run(io, execCommand));

  program
    .command('list')
    .alias('ls')
    .description('list live sandboxes')
    .action(run(io, listCommand));

  program
    .command('get')
    .description('show one sandbox')
    .argument('<id>', 'sandbox id')
    .action(run(io, getCommand));

  program
    .command('kill')
    .alias('destroy')
    .description('destroy a sandbox')
    .argument('<id>', 'sandbox id')
    .action(run(io, killCommand));

  program
    .command('logs')
    .description("print a sandbox's recent log lines")
    .argument('<id>', 'sandbox id')
    .option('--lines <n>', 'how many lines', '100')
    .action(run(io, logsCommand));

  const files = program.command('files').description('list, download and upload sandbox files');
  files
    .command('ls')
    .description('list a directory')
    .argument('<id>', 'sandbox id')
    .argument('[path]', 'directory inside the sandbox', '/workspace')
    .action(run(io, filesListCommand));
  files
    .command('get')
    .description('download a file (raw bytes to stdout, or to --out)')
    .argument('<id>', 'sandbox id')
    .argument('<path>', 'file inside the sandbox')
    .option('--out <file>', 'write to this local file instead of stdout')
    .action(run(io, filesGetCommand));
  files
    .command('put')
    .description('upload a local file')
    .argument('<id>', 'sandbox id')
    .argument('<local-file>', 'file to upload')
    .argument('<path>', 'destination inside the sandbox')
    .option('--mode <octal>', 'permission bits such as 0644 (server default if omitted)')
    .action(run(io, filesPutCommand));

  program.command('version').description('print the CLI version').action(run(io, versionCommand));
}

/** Accumulates a repeatable option (no default, so help does not show `[]`). */
function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Adapts a handler to Commander: builds the context, maps errors to an exit code. */
function run(
  io: Io,
  handler: (ctx: Ctx, cmd: Command) => Promise<number>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]): Promise<void> => {
    // Commander passes the command itself last.
    const cmd = args[args.length - 1] as Command;
    const globals = cmd.optsWithGlobals<GlobalOptions>();
    const apiKey = nonEmpty(globals.apiKey) ?? nonEmpty(io.env['STACYVM_API_KEY']);
    let code: number;
    try {
      code = await handler(makeContext(io, globals, apiKey), cmd);
    } catch (err) {
      code = reportError(io, err, apiKey);
    }
    io.setExitCode(code);
  };
}

function makeContext(io: Io, globals: GlobalOptions, apiKey: string | undefined): Ctx {
  let client: ApiClient | undefined;
  return {
    io,
    json: globals.json === true,
    apiKey,
    client(): ApiClient {
      if (client !== undefined) return client;
      const raw = nonEmpty(globals.server) ?? nonEmpty(io.env['STACYVM_SERVER']) ?? DEFAULT_SERVER;
      // `host:port` alone is a common shorthand; URL would read `host:` as a scheme.
      const server = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
      try {
        client = new ApiClient({
          server,
          ...(apiKey === undefined ? {} : { apiKey }),
          ...(io.timeoutMs === undefined ? {} : { timeoutMs: io.timeoutMs }),
          ...(io.fetch === undefined ? {} : { fetch: io.fetch }),
        });
      } catch (err) {
        if (err instanceof StacyError) throw new UsageError(`--server: ${err.message}`);
        throw err;
      }
      return client;
    },
  };
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/** Prints `error: <message> (code X, request Y)` and returns the exit code. */
function reportError(io: Io, err: unknown, apiKey: string | undefined): number {
  const scrub = (text: string): string =>
    apiKey === undefined ? text : text.split(apiKey).join('[redacted]');
  if (err instanceof UsageError) {
    io.stderr.write(`error: ${scrub(err.message)}\n`);
    return USAGE_EXIT_CODE;
  }
  if (err instanceof StacyError) {
    const tags = [`code ${err.code}`];
    if (err instanceof ApiError && err.requestId !== undefined) {
      tags.push(`request ${err.requestId}`);
    }
    let text = `error: ${err.message} (${tags.join(', ')})\n`;
    for (const d of err.details ?? []) text += `  ${d.field}: ${d.problem}\n`;
    io.stderr.write(scrub(text));
    return 1;
  }
  const message = err instanceof Error ? err.message : String(err);
  io.stderr.write(`error: ${scrub(message)}\n`);
  return 1;
}

function print(io: Io, text: string): void {
  io.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

function printJson(io: Io, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

function stringArg(cmd: Command, index: number): string {
  const value: unknown = cmd.processedArgs[index];
  return typeof value === 'string' ? value : '';
}

function parseCount(flag: string, raw: string | undefined, min: number, max: number): number {
  const value = raw === undefined ? NaN : Number(raw.trim());
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`${flag} must be a whole number from ${min} to ${max}, got "${raw}"`);
  }
  return value;
}

function parseDuration(flag: string, raw: string): string {
  let ns: number;
  try {
    ns = parseDurationNs(raw);
  } catch (err) {
    throw new UsageError(`${flag}: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (ns <= 0) throw new UsageError(`${flag} must be positive, got "${raw}"`);
  return raw.trim();
}

function parsePairs(flag: string, entries: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const entry of entries) {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new UsageError(`${flag} expects key=value, got "${entry}"`);
    out[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return out;
}

async function spawnCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const o = cmd.opts<{
    image?: string;
    provider?: string;
    ttl?: string;
    memory?: string;
    vcpus?: string;
    port?: string[];
    meta?: string[];
  }>();
  const body: SpawnBody = {};
  if (o.image !== undefined) body.image = o.image;
  if (o.provider !== undefined) body.provider = o.provider;
  if (o.ttl !== undefined) body.ttl = parseDuration('--ttl', o.ttl);
  if (o.memory !== undefined) body.memory_mb = parseCount('--memory', o.memory, 1, 1 << 30);
  if (o.vcpus !== undefined) body.vcpus = parseCount('--vcpus', o.vcpus, 1, 1024);
  if (o.port !== undefined) body.ports = o.port.map((p) => parseCount('--port', p, 1, 65535));
  if (o.meta !== undefined) body.metadata = parsePairs('--meta', o.meta);
  const sb = await ctx.client().spawn(body);
  if (ctx.json) {
    printJson(ctx.io, sb);
    return 0;
  }
  // Only the id goes to stdout, so `ID=$(stacyvm spawn)` works; the summary is for the human.
  print(ctx.io, sb.id);
  const expires = formatTimestampRelative(sb.expires_at, ctx.io.now());
  ctx.io.stderr.write(
    `spawned ${sb.id}: ${sb.state} on worker ${sb.worker_id || '-'} ` +
      `(provider ${sb.provider}, image ${sb.image}, expires ${expires})\n`,
  );
  return 0;
}

async function execCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const id = stringArg(cmd, 0);
  const rawWords: unknown = cmd.processedArgs[1];
  const words = Array.isArray(rawWords) ? rawWords.filter((w) => typeof w === 'string') : [];
  const first = words[0];
  if (first === undefined) throw new UsageError('exec needs a command after the sandbox id');
  const o = cmd.opts<{ shell?: boolean; env?: string[]; workdir?: string; timeout?: string }>();
  const body: ExecBody =
    o.shell === true
      ? { command: words.join(' '), args: [], mode: 'shell' }
      : { command: first, args: words.slice(1), mode: 'argv' };
  if (o.env !== undefined) body.env = parsePairs('--env', o.env);
  if (o.workdir !== undefined) body.workdir = o.workdir;
  if (o.timeout !== undefined) body.timeout = parseDuration('--timeout', o.timeout);

  const timedOut = (): number => {
    const after = body.timeout === undefined ? '' : ` after ${body.timeout}`;
    ctx.io.stderr.write(`stacyvm: command timed out${after}\n`);
    return TIMEOUT_EXIT_CODE;
  };
  try {
    if (ctx.json) {
      const result = await ctx.client().exec(id, body);
      printJson(ctx.io, result);
      return result.timed_out === true ? TIMEOUT_EXIT_CODE : processExitCode(result.exit_code);
    }
    let exit: Extract<ExecStreamLine, { stream: 'exit' }> | undefined;
    for await (const line of ctx.client().execStream(id, body)) {
      switch (line.stream) {
        case 'stdout':
          ctx.io.stdout.write(line.data);
          break;
        case 'stderr':
          ctx.io.stderr.write(line.data);
          break;
        case 'exit':
          exit = line;
          break;
      }
    }
    if (exit === undefined) {
      throw new StacyError('UNAVAILABLE', 'exec stream ended before the command finished');
    }
    return exit.timed_out === true ? timedOut() : processExitCode(exit.exit_code);
  } catch (err) {
    // The server's own deadline firing (408) is the command timing out, as `timeout(1)` reports it.
    if (err instanceof ApiError && err.code === 'TIMEOUT') {
      reportError(ctx.io, err, ctx.apiKey);
      return timedOut();
    }
    throw err;
  }
}

/** A shell can only see 0-255; anything else (e.g. -1 for "killed") is a plain failure. */
function processExitCode(code: number): number {
  return Number.isInteger(code) && code >= 0 && code <= 255 ? code : 1;
}

async function listCommand(ctx: Ctx): Promise<number> {
  const sandboxes = await ctx.client().list();
  if (ctx.json) {
    printJson(ctx.io, sandboxes);
    return 0;
  }
  if (sandboxes.length === 0) {
    ctx.io.stderr.write('no sandboxes\n');
    return 0;
  }
  const now = ctx.io.now();
  const rows = sandboxes.map((sb) => [
    sb.id,
    sb.state,
    sb.provider,
    sb.image,
    sb.worker_id || '-',
    formatTimestampRelative(sb.created_at, now),
    formatTimestampRelative(sb.expires_at, now),
  ]);
  print(
    ctx.io,
    renderTable(['ID', 'STATE', 'PROVIDER', 'IMAGE', 'WORKER', 'CREATED', 'EXPIRES'], rows),
  );
  return 0;
}

async function getCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const sb = await ctx.client().get(stringArg(cmd, 0));
  if (ctx.json) printJson(ctx.io, sb);
  else print(ctx.io, renderSandbox(sb, ctx.io.now()));
  return 0;
}

function renderSandbox(sb: SandboxJson, now: number): string {
  const when = (ts: string): string => `${ts} (${formatTimestampRelative(ts, now)})`;
  const pairs: [string, string][] = [
    ['ID', sb.id],
    ['State', sb.state],
    ['Provider', sb.provider],
    ['Image', sb.image],
    ['Memory', `${sb.memory_mb} MB`],
    ['vCPUs', String(sb.vcpus)],
    ['Worker', sb.worker_id || '-'],
  ];
  if (sb.owner_id !== undefined && sb.owner_id !== '') pairs.push(['Owner', sb.owner_id]);
  pairs.push(['Created', when(sb.created_at)], ['Expires', when(sb.expires_at)]);
  if (sb.ports !== undefined && sb.ports.length > 0) pairs.push(['Ports', sb.ports.join(', ')]);
  if (sb.preview_domain !== undefined && sb.preview_domain !== '') {
    pairs.push(['Preview domain', sb.preview_domain]);
  }
  const meta = Object.entries(sb.metadata ?? {});
  if (meta.length > 0) pairs.push(['Metadata', meta.map(([k, v]) => `${k}=${v}`).join(', ')]);
  return renderKeyValue(pairs);
}

async function killCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const id = stringArg(cmd, 0);
  const result = await ctx.client().destroy(id);
  if (ctx.json) printJson(ctx.io, result);
  else print(ctx.io, `destroyed ${id}`);
  return 0;
}

async function logsCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const lines = parseCount('--lines', cmd.opts<{ lines: string }>().lines, 1, 100_000);
  const logs = await ctx.client().logs(stringArg(cmd, 0), lines);
  if (ctx.json) printJson(ctx.io, logs);
  else for (const line of logs) print(ctx.io, String(line));
  return 0;
}

async function filesListCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const entries = await ctx.client().listFiles(stringArg(cmd, 0), stringArg(cmd, 1));
  if (ctx.json) {
    printJson(ctx.io, entries);
    return 0;
  }
  const sorted = [...entries].sort(
    (a, b) => Number(b.is_dir) - Number(a.is_dir) || entryName(a).localeCompare(entryName(b)),
  );
  const now = ctx.io.now();
  const rows = sorted.map((e) => [
    e.is_dir ? `${entryName(e)}/` : entryName(e),
    e.is_dir ? '-' : formatBytes(e.size),
    e.mode,
    formatTimestampRelative(e.mod_time, now),
  ]);
  print(ctx.io, renderTable(['NAME', 'SIZE', 'MODE', 'MODIFIED'], rows));
  return 0;
}

/** The reference omitted `name`; fall back to the last path segment. */
function entryName(e: FileInfoJson): string {
  if (typeof e.name === 'string' && e.name !== '') return e.name;
  return (
    e.path
      .split('/')
      .filter((s) => s !== '')
      .pop() ?? e.path
  );
}

async function filesGetCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const out = cmd.opts<{ out?: string }>().out;
  const body = await ctx.client().readFileStream(stringArg(cmd, 0), stringArg(cmd, 1));
  if (out === undefined) {
    for await (const chunk of body) await writeChunk(ctx.io.stdout, chunk);
    return 0;
  }
  // Download beside the target and rename, so a failed transfer never leaves a truncated file.
  const partial = `${out}.partial-${process.pid}`;
  try {
    await pipeline(Readable.from(body), createWriteStream(partial));
    await rename(partial, out);
  } catch (err) {
    await unlink(partial).catch(() => undefined);
    throw err;
  }
  return 0;
}

function writeChunk(stream: OutputStream, chunk: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(chunk, (err) => (err ? reject(err) : resolve()));
  });
}

async function filesPutCommand(ctx: Ctx, cmd: Command): Promise<number> {
  const id = stringArg(cmd, 0);
  const local = stringArg(cmd, 1);
  const target = stringArg(cmd, 2);
  const rawMode = cmd.opts<{ mode?: string }>().mode;
  let mode: string | undefined;
  if (rawMode !== undefined) {
    try {
      mode = formatFileMode(parseFileMode(rawMode));
    } catch (err) {
      throw new UsageError(`--mode: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  let size: number;
  try {
    const info = await stat(local);
    if (!info.isFile()) throw new Error('not a regular file');
    size = info.size;
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new StacyError('BAD_REQUEST', `cannot upload ${local}: ${why}`);
  }
  await ctx.client().writeFile(id, target, fileChunks(local), mode);
  if (ctx.json) printJson(ctx.io, { status: 'written', path: target, size });
  else print(ctx.io, `wrote ${formatBytes(size)} to ${id}:${target}`);
  return 0;
}

async function* fileChunks(path: string): AsyncGenerator<Uint8Array, void, undefined> {
  for await (const chunk of createReadStream(path)) {
    if (chunk instanceof Uint8Array) yield chunk;
  }
}

function versionCommand(ctx: Ctx): Promise<number> {
  const version = readOwnVersion();
  const info = {
    version,
    platform: process.platform,
    arch: process.arch,
    node: process.versions.node,
  };
  if (ctx.json) printJson(ctx.io, info);
  else print(ctx.io, `stacyvm ${version} (${info.platform}/${info.arch}, node ${info.node})`);
  return Promise.resolve(0);
}

/** Read at run time: the same relative path holds from src/cli and dist/cli. */
function readOwnVersion(): string {
  try {
    const pkg = JSON.parse(
      readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
    ) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
