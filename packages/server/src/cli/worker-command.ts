/**
 * `stacyvm worker [flags]` runs a remote worker; `stacyvm worker drain <id>`
 * asks the control plane to drain one. The `worker token ...` subcommands live
 * in worker-token-commands.ts and share the `worker` command.
 *
 * Flags override configuration (`worker.*`, `auth.*`), which comes from
 * `--config`, `STACYVM_CONFIG`, `./stacyvm.yaml` or `~/.stacyvm/config.yaml`,
 * with `STACYVM_*` env overrides. No token or key is ever printed or logged.
 */
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import type { Command } from 'commander';
import { ConfigError, configKey, durationMs, loadConfig } from '../config/load-config.js';
import type { LoadConfigOptions, LoadedConfig, StacyConfig } from '../config/load-config.js';
import { DurationSyntaxError, parseDurationMs } from '../domain/duration.js';
import { fromErrorBody, isStacyError } from '../domain/errors.js';
import { createPreviewGateway } from '../preview/gateway.js';
import type { PreviewGateway } from '../preview/gateway.js';
import { createRuntimeResolver } from '../preview/runtime-resolver.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';
import type { WorkerRpcServer, WorkerRpcServerOptions } from '../worker/rpc-server.js';
import {
  advertisedRpcUrl,
  chooseTokenSource,
  describeTokenSource,
  isWildcardHost,
  parseListenAddr,
  WorkerAgent,
} from '../worker/worker-agent.js';
import type { FetchLike, WorkerTokenSource } from '../worker/worker-agent.js';
import type { OutputStream } from './client-commands.js';
import { DEFAULT_SERVER } from './client-commands.js';
import { buildProviders } from './control-plane.js';
import { createLogger } from './logger.js';

/** Env var holding the bootstrap admin key (keeps it out of argv). */
export const BOOTSTRAP_ADMIN_KEY_ENV = 'STACYVM_WORKER_BOOTSTRAP_ADMIN_KEY';
/** Env var holding the admin key of `worker drain`. */
export const ADMIN_API_KEY_ENV = 'STACYVM_ADMIN_API_KEY';
/** Env var with the static worker token (also `auth.worker_token` through the config loader). */
export const WORKER_TOKEN_ENV = 'STACYVM_AUTH_WORKER_TOKEN';

const USAGE_EXIT_CODE = 2;
const DRAIN_TIMEOUT_MS = 30_000;

/** Seams of the worker commands, all optional; tests inject them to run in-process. */
export interface WorkerCommandDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  env?: Record<string, string | undefined>;
  /** Receives the exit code of short commands; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  /** Ends the worker process once it has stopped; defaults to `process.exit`. */
  exit?: (code: number) => void;
  fetch?: FetchLike;
  /** Reads secret and certificate files; defaults to `readFileSync(path, 'utf8')`. */
  readFile?: (path: string) => string;
  /** Registers a signal handler; defaults to `process.on`. */
  onSignal?: (signal: 'SIGTERM' | 'SIGINT', handler: () => void) => void;
  hostname?: () => string;
  /** Where the worker logs; defaults to stderr. */
  logDestination?: NodeJS.WritableStream;
  /** Working directory of config lookup; defaults to `process.cwd()`. */
  cwd?: string;
  /** Home directory of config lookup; defaults to `os.homedir()`. */
  homeDir?: string;
  startRpcServer?: (o: WorkerRpcServerOptions) => Promise<WorkerRpcServer>;
}

interface Io {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Record<string, string | undefined>;
  setExitCode: (code: number) => void;
  exit: (code: number) => void;
  fetch: FetchLike;
  readFile: (path: string) => string;
  onSignal: (signal: 'SIGTERM' | 'SIGINT', handler: () => void) => void;
  hostname: () => string;
  deps: WorkerCommandDeps;
}

/** A mistake in how the command was invoked; exits with status 2. */
export class WorkerUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerUsageError';
  }
}

/** The flags of `stacyvm worker`, as Commander names them. */
export interface WorkerFlags {
  id?: string;
  controlPlane?: string;
  workerToken?: string;
  workerTokenFile?: string;
  workerSigningKeyFile?: string;
  bootstrapAdminKey?: string;
  bootstrapAdminKeyFile?: string;
  bootstrapTokenTtl?: string;
  heartbeatInterval?: string;
  shutdownTimeout?: string;
  listen?: string;
  advertiseAddr?: string;
  previewDomain?: string;
  previewListen?: string;
  once?: boolean;
  config?: string;
}

/** Everything the worker runs with, after flags, env and config are merged. */
export interface WorkerSettings {
  workerId: string;
  controlPlaneUrl: string;
  listenAddr: string;
  advertiseAddr: string;
  previewDomain: string;
  /** `host:port` of the worker's preview gateway; empty when it runs none. */
  previewListen: string;
  heartbeatIntervalMs: number;
  shutdownTimeoutMs: number;
  maxSandboxes: number;
  maxSandboxesPerOwner: number;
  tokenSource: WorkerTokenSource;
  rpcAuth: { staticToken?: string; signingKeys: string[]; revokedTokenIds: string[] };
  rpcTls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  once: boolean;
  /** Non-fatal findings to log (e.g. a secret given on argv). */
  warnings: string[];
}

/** Seams of {@link resolveWorkerSettings}. */
export interface ResolveIo {
  env: Record<string, string | undefined>;
  readFile: (path: string) => string;
  hostname: () => string;
}

function given(v: string | undefined): v is string {
  return v !== undefined && v.trim() !== '';
}

/** Reads a secret file; the error names the flag and path, never the content. */
function readSecret(io: ResolveIo, flag: string, path: string): string {
  let content: string;
  try {
    content = io.readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new WorkerUsageError(
      `${flag}: cannot read ${path}${code === undefined ? '' : ` (${code})`}`,
    );
  }
  const secret = content.trim();
  if (secret === '') throw new WorkerUsageError(`${flag}: ${path} is empty`);
  return secret;
}

function readPem(io: ResolveIo, key: string, path: string): Buffer {
  try {
    return Buffer.from(io.readFile(path), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new WorkerUsageError(
      `${key}: cannot read ${path}${code === undefined ? '' : ` (${code})`}`,
    );
  }
}

function durationFlag(
  flag: string,
  value: string | undefined,
  fallback: string,
  positive: boolean,
): number {
  if (!given(value)) return durationMs(fallback);
  let ms: number;
  try {
    ms = parseDurationMs(value.trim());
  } catch (err) {
    if (err instanceof DurationSyntaxError) throw new WorkerUsageError(`${flag}: ${err.message}`);
    throw err;
  }
  if (ms < 0 || (positive && ms === 0)) {
    throw new WorkerUsageError(`${flag} must be ${positive ? 'positive' : 'zero or more'}`);
  }
  return ms;
}

/**
 * Merges flags, env and config into the worker's settings. Precedence per
 * value: flag, then env (already folded into `config` by the loader), then
 * config file, then default. Credentials follow reference §2.6.
 *
 * @throws WorkerUsageError for conflicting or unreadable inputs.
 */
export function resolveWorkerSettings(
  flags: WorkerFlags,
  config: StacyConfig,
  io: ResolveIo,
): WorkerSettings {
  const w = config.worker;
  const warnings: string[] = [];

  if (given(flags.workerToken)) {
    warnings.push(
      `--worker-token is visible to other users in the process list; prefer --worker-token-file or env ${WORKER_TOKEN_ENV}`,
    );
  }
  if (given(flags.bootstrapAdminKey)) {
    warnings.push(
      `--bootstrap-admin-key is visible to other users in the process list; prefer --bootstrap-admin-key-file or env ${BOOTSTRAP_ADMIN_KEY_ENV}`,
    );
  }
  if (given(flags.bootstrapAdminKey) && given(flags.bootstrapAdminKeyFile)) {
    throw new WorkerUsageError(
      'set the bootstrap admin key with --bootstrap-admin-key or --bootstrap-admin-key-file, not both',
    );
  }
  const staticToken = given(flags.workerToken)
    ? flags.workerToken.trim()
    : config.auth.worker_token.trim();
  let bootstrapAdminKey: string | undefined;
  if (given(flags.bootstrapAdminKeyFile)) {
    bootstrapAdminKey = readSecret(io, '--bootstrap-admin-key-file', flags.bootstrapAdminKeyFile);
  } else if (given(flags.bootstrapAdminKey)) {
    bootstrapAdminKey = flags.bootstrapAdminKey.trim();
  } else if (given(io.env[BOOTSTRAP_ADMIN_KEY_ENV])) {
    bootstrapAdminKey = io.env[BOOTSTRAP_ADMIN_KEY_ENV]?.trim();
  }
  const signingKey = given(flags.workerSigningKeyFile)
    ? readSecret(io, '--worker-signing-key-file', flags.workerSigningKeyFile)
    : config.auth.worker_signing_key.trim();

  let tokenSource: WorkerTokenSource;
  try {
    tokenSource = chooseTokenSource({
      tokenFile: flags.workerTokenFile,
      staticTokenFromFlag: given(flags.workerToken),
      staticToken,
      bootstrapAdminKey,
      bootstrapTokenTtl: flags.bootstrapTokenTtl,
      signingKey,
    });
  } catch (err) {
    throw new WorkerUsageError((err as Error).message);
  }

  const rpcTlsConfig = w.rpc_tls;
  let rpcTls: WorkerSettings['rpcTls'];
  if (rpcTlsConfig.enabled) {
    if (rpcTlsConfig.server_cert_file === '' || rpcTlsConfig.server_key_file === '') {
      throw new WorkerUsageError(
        'worker.rpc_tls.enabled needs worker.rpc_tls.server_cert_file and worker.rpc_tls.server_key_file',
      );
    }
    rpcTls = {
      cert: readPem(io, 'worker.rpc_tls.server_cert_file', rpcTlsConfig.server_cert_file),
      key: readPem(io, 'worker.rpc_tls.server_key_file', rpcTlsConfig.server_key_file),
    };
    if (rpcTlsConfig.client_ca_file !== '') {
      rpcTls.clientCa = readPem(io, 'worker.rpc_tls.client_ca_file', rpcTlsConfig.client_ca_file);
    }
  }

  const workerId = given(flags.id)
    ? flags.id.trim()
    : w.id.trim() !== ''
      ? w.id.trim()
      : io.hostname();
  const previewDomain = [flags.previewDomain, w.preview_domain, config.server.preview_domain].find(
    given,
  );
  const settings: WorkerSettings = {
    workerId,
    controlPlaneUrl: given(flags.controlPlane) ? flags.controlPlane.trim() : w.control_plane_url,
    listenAddr: given(flags.listen) ? flags.listen.trim() : w.listen_addr.trim(),
    advertiseAddr: given(flags.advertiseAddr)
      ? flags.advertiseAddr.trim()
      : w.advertise_addr.trim(),
    previewDomain: previewDomain?.trim() ?? 'localhost',
    previewListen: workerPreviewListen(flags, config, w.listen_addr),
    heartbeatIntervalMs: durationFlag(
      '--heartbeat-interval',
      flags.heartbeatInterval,
      w.heartbeat_interval,
      true,
    ),
    shutdownTimeoutMs: durationFlag(
      '--shutdown-timeout',
      flags.shutdownTimeout,
      w.shutdown_timeout,
      false,
    ),
    maxSandboxes: config.defaults.max_sandboxes,
    maxSandboxesPerOwner: config.defaults.max_sandboxes_per_owner,
    tokenSource,
    rpcAuth: {
      signingKeys: [signingKey, ...config.auth.worker_signing_keys].filter((k) => k.trim() !== ''),
      revokedTokenIds: [...config.auth.worker_revoked_token_ids],
    },
    once: flags.once === true,
    warnings,
  };
  if (staticToken !== '') settings.rpcAuth.staticToken = staticToken;
  if (rpcTls !== undefined) settings.rpcTls = rpcTls;
  if (settings.previewListen !== '') {
    parseListenAddr(
      settings.previewListen,
      given(flags.previewListen) ? '--preview-listen' : 'preview.listen_addr',
    );
  }
  return settings;
}

/** Whether a host name or address is this machine's loopback. */
export function isLoopbackHost(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * Where a worker's preview gateway listens: `--preview-listen`, else
 * `preview.listen_addr` when it was changed from its default, else beside
 * the RPC server (same host, a free port; the control plane learns it from
 * `capacity.preview_url`). Empty when previews are disabled.
 */
export function workerPreviewListen(
  flags: Pick<WorkerFlags, 'previewListen' | 'listen'>,
  config: StacyConfig,
  configListenAddr: string,
): string {
  if (!config.preview.enabled) return '';
  if (given(flags.previewListen)) return flags.previewListen.trim();
  const configured = config.preview.listen_addr.trim();
  if (configured !== configKey('preview.listen_addr')?.default) return configured;
  const rpcListen = given(flags.listen) ? flags.listen.trim() : configListenAddr.trim();
  if (rpcListen === '') return '';
  const host = parseListenAddr(rpcListen).host;
  return `${host.includes(':') ? `[${host}]` : host}:0`;
}

/**
 * The `preview_url` a worker advertises: its preview gateway's listen host,
 * or, when that is every interface, the host of its advertised RPC URL; with
 * the bound port. https when worker RPC uses TLS (the gateway then serves
 * the same certificate).
 */
export function advertisedPreviewUrl(input: {
  listenHost: string;
  boundPort: number;
  tls: boolean;
  rpcUrl: string;
}): string {
  const scheme = input.tls ? 'https' : 'http';
  let host = input.listenHost;
  if (isWildcardHost(host)) host = new URL(input.rpcUrl).hostname;
  else if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
  return `${scheme}://${host}:${input.boundPort}`;
}

function describeError(err: unknown): string {
  if (err instanceof ConfigError) return err.message;
  if (isStacyError(err)) return err.message;
  return err instanceof Error ? err.message : String(err);
}

/**
 * Makes `stacyvm worker [flags]` run the worker and adds `stacyvm worker drain
 * <id>`. Shares the `worker` command with the `worker token` subcommands
 * whichever registers first.
 */
export function registerWorkerCommand(program: Command, deps: WorkerCommandDeps = {}): void {
  const io: Io = {
    stdout: deps.stdout ?? process.stdout,
    stderr: deps.stderr ?? process.stderr,
    env: deps.env ?? process.env,
    setExitCode:
      deps.setExitCode ??
      ((code: number): void => {
        process.exitCode = code;
      }),
    exit: deps.exit ?? ((code: number): void => process.exit(code)),
    fetch: deps.fetch ?? globalThis.fetch,
    readFile: deps.readFile ?? ((path: string): string => readFileSync(path, 'utf8')),
    onSignal:
      deps.onSignal ??
      ((signal, handler): void => {
        process.on(signal, handler);
      }),
    hostname: deps.hostname ?? osHostname,
    deps,
  };

  const worker = program.commands.find((c) => c.name() === 'worker') ?? program.command('worker');
  worker
    .description(
      'run a remote worker that registers with the control plane (`worker token ...` and `worker drain` are subcommands)',
    )
    .option('--id <id>', 'worker id (default worker.id, else the host name)')
    .option('--control-plane <url>', 'control plane URL (default worker.control_plane_url)')
    .option(
      '--worker-token <token>',
      `static worker token; visible to other users in the process list, prefer env ${WORKER_TOKEN_ENV} or --worker-token-file`,
    )
    .option(
      '--worker-token-file <file>',
      'file holding the worker token, re-read before every heartbeat',
    )
    .option(
      '--worker-signing-key-file <file>',
      'file holding the worker signing key (self-signed tokens, RPC verification)',
    )
    .option(
      '--bootstrap-admin-key <key>',
      `admin key that mints a worker token before each heartbeat; visible in the process list, prefer env ${BOOTSTRAP_ADMIN_KEY_ENV} or --bootstrap-admin-key-file`,
    )
    .option('--bootstrap-admin-key-file <file>', 'file holding the bootstrap admin key')
    .option(
      '--bootstrap-token-ttl <duration>',
      'lifetime of bootstrap-minted tokens, at most 15m (default 5m)',
    )
    .option(
      '--heartbeat-interval <duration>',
      'heartbeat interval (default worker.heartbeat_interval, 30s)',
    )
    .option(
      '--shutdown-timeout <duration>',
      'how long a drain waits for in-flight calls (default worker.shutdown_timeout, 30s)',
    )
    .option('--listen <addr>', 'host:port of the worker RPC server (default worker.listen_addr)')
    .option(
      '--advertise-addr <addr>',
      'address the control plane dials, host:port or URL (default worker.advertise_addr)',
    )
    .option('--preview-domain <domain>', 'preview domain of sandboxes on this worker')
    .option(
      '--preview-listen <addr>',
      'host:port of the preview gateway the control plane relays previews to (default preview.listen_addr)',
    )
    .option('--once', 'send one heartbeat and exit')
    .option(
      '--config <file>',
      'config file (else STACYVM_CONFIG, ./stacyvm.yaml, ~/.stacyvm/config.yaml)',
    )
    .addHelpText(
      'after',
      '\nSignals: the first SIGTERM/SIGINT drains (no new sandboxes; existing ones are served until they are gone or worker.shutdown_timeout passes, then an offline heartbeat); a second one stops at once.',
    )
    .action(async (_opts: unknown, cmd: Command) => {
      await runWorker(io, cmd.opts<WorkerFlags>());
    });

  const drain = worker
    .command('drain')
    .description(
      'ask the control plane to drain a worker (no new sandboxes; it serves the ones it has and exits once they are gone)',
    )
    .argument('<worker-id>', 'worker to drain')
    .option(
      '--admin-api-key <key>',
      `admin key sent as X-Admin-API-Key; visible in the process list, prefer env ${ADMIN_API_KEY_ENV}`,
    );
  // The client commands define a global --server; a program without them gets a local one.
  const hasGlobalServer = program.options.some((o) => o.attributeName() === 'server');
  if (!hasGlobalServer)
    drain.option('--server <url>', `control plane URL (default ${DEFAULT_SERVER})`);
  drain.action(async (workerId: string, _opts: unknown, cmd: Command) => {
    io.setExitCode(await drainCommand(io, workerId, cmd.optsWithGlobals()));
  });
}

async function runWorker(io: Io, flags: WorkerFlags): Promise<void> {
  let loaded: LoadedConfig;
  let settings: WorkerSettings;
  try {
    const opts: LoadConfigOptions = { env: io.env };
    if (given(flags.config)) opts.configPath = flags.config;
    if (io.deps.cwd !== undefined) opts.cwd = io.deps.cwd;
    if (io.deps.homeDir !== undefined) opts.homeDir = io.deps.homeDir;
    loaded = loadConfig(opts);
    settings = resolveWorkerSettings(flags, loaded.config, io);
  } catch (err) {
    io.stderr.write(`error: ${describeError(err)}\n`);
    io.setExitCode(USAGE_EXIT_CODE);
    return;
  }
  const config = loaded.config;
  const logger = createLogger({
    level: config.logging.level,
    format: config.logging.format,
    ...(io.deps.logDestination === undefined ? {} : { destination: io.deps.logDestination }),
  });
  for (const w of loaded.warnings) logger.warn({ source: loaded.source ?? null }, w);
  for (const w of settings.warnings) logger.warn({}, w);
  logger.info(
    {
      source: loaded.source ?? 'defaults',
      worker_id: settings.workerId,
      credential: describeTokenSource(settings.tokenSource),
    },
    'configuration loaded',
  );

  let agent: WorkerAgent;
  let preview: PreviewGateway | undefined;
  let previewUrl: string | undefined;
  try {
    const { providers, defaultName } = await buildProviders(config, logger);
    const runtime = new WorkerRuntime({
      workerId: settings.workerId,
      providers,
      defaultProvider: defaultName,
      logger,
    });
    agent = new WorkerAgent({
      workerId: settings.workerId,
      controlPlaneUrl: settings.controlPlaneUrl,
      listenAddr: settings.once ? '' : settings.listenAddr,
      advertiseAddr: settings.advertiseAddr,
      previewDomain: settings.previewDomain,
      previewUrl: () => previewUrl,
      heartbeatIntervalMs: settings.heartbeatIntervalMs,
      shutdownTimeoutMs: settings.shutdownTimeoutMs,
      maxSandboxes: settings.maxSandboxes,
      maxSandboxesPerOwner: settings.maxSandboxesPerOwner,
      runtime,
      tokenSource: settings.tokenSource,
      rpcAuth: settings.rpcAuth,
      rpcTls: settings.rpcTls,
      logger,
      fetch: io.fetch,
      readFile: io.readFile,
      hostname: io.hostname(),
      ...(io.deps.startRpcServer === undefined ? {} : { startRpcServer: io.deps.startRpcServer }),
    });
    const agentRef = agent;
    if (!settings.once && settings.listenAddr !== '' && settings.previewListen !== '') {
      const previewDomains = [settings.previewDomain];
      preview = createPreviewGateway({
        domains: () => previewDomains,
        resolve: createRuntimeResolver(runtime),
        // Only the control plane calls this gateway; it checked any preview token already.
        hopAuth: (id, token) => agentRef.checkRpcCredentials(id, token),
        publicScheme: config.preview.public_scheme,
        hostRewrite: config.preview.host_rewrite,
        upstreamTimeoutMs: durationMs(config.preview.upstream_timeout),
        maxConnections: config.preview.max_connections,
        ...(settings.rpcTls === undefined ? {} : { tls: settings.rpcTls }),
        logger,
      });
    }
  } catch (err) {
    logger.error({ err: describeError(err) }, 'worker cannot start');
    io.stderr.write(`error: ${describeError(err)}\n`);
    io.exit(isStacyError(err) && err.code === 'BAD_REQUEST' ? USAGE_EXIT_CODE : 1);
    return;
  }

  if (settings.once) {
    try {
      await agent.once();
      logger.info({ worker_id: agent.workerId }, 'heartbeat sent (--once)');
      io.exit(0);
    } catch (err) {
      logger.error({ err: describeError(err) }, 'heartbeat failed');
      io.stderr.write(`error: ${describeError(err)}\n`);
      io.exit(1);
    }
    return;
  }

  let signals = 0;
  const onSignal = (signal: string): void => {
    signals += 1;
    if (signals === 1) {
      void agent.drain(signal);
      return;
    }
    logger.warn({ signal }, 'second signal: stopping now');
    void agent.stopNow(`second ${signal}`).finally(() => io.exit(1));
  };
  io.onSignal('SIGTERM', () => onSignal('SIGTERM'));
  io.onSignal('SIGINT', () => onSignal('SIGINT'));

  if (preview !== undefined) {
    const addr = parseListenAddr(settings.previewListen, 'preview.listen_addr');
    try {
      const rpcUrl = advertisedRpcUrl({
        listenAddr: settings.listenAddr,
        advertiseAddr: settings.advertiseAddr,
        tls: settings.rpcTls !== undefined,
      });
      if (isLoopbackHost(addr.host) && !isLoopbackHost(new URL(rpcUrl).hostname)) {
        throw new Error(
          `it would listen on loopback (${addr.host}) while the control plane reaches this worker at ${rpcUrl}; set --preview-listen to an address the control plane can reach`,
        );
      }
      const bound = await preview.listen(addr.host, addr.port);
      previewUrl = advertisedPreviewUrl({
        listenHost: addr.host,
        boundPort: bound.port,
        tls: settings.rpcTls !== undefined,
        rpcUrl,
      });
      logger.info(
        { listen: `${addr.host}:${bound.port}`, preview_url: previewUrl },
        'preview gateway listening; the control plane relays previews here',
      );
    } catch (err) {
      logger.error(
        { listen_addr: settings.previewListen, err: describeError(err) },
        'preview gateway cannot listen; this worker serves no previews (set --preview-listen)',
      );
      await preview.close(0);
      preview = undefined;
    }
  }
  const closePreview = async (): Promise<void> => {
    await preview?.close(1_000);
  };

  try {
    await agent.start();
  } catch (err) {
    await closePreview();
    logger.error({ err: describeError(err) }, 'worker failed to start');
    io.stderr.write(`error: ${describeError(err)}\n`);
    io.exit(isStacyError(err) && err.code === 'BAD_REQUEST' ? USAGE_EXIT_CODE : 1);
    return;
  }
  await agent.stopped;
  await closePreview();
  if (signals < 2) io.exit(0);
}

async function drainCommand(
  io: Io,
  workerId: string,
  opts: Record<string, unknown>,
): Promise<number> {
  const flagKey = typeof opts['adminApiKey'] === 'string' ? opts['adminApiKey'].trim() : '';
  if (flagKey !== '') {
    io.stderr.write(
      `warning: --admin-api-key is visible to other users in the process list; prefer env ${ADMIN_API_KEY_ENV}\n`,
    );
  }
  const adminKey = flagKey !== '' ? flagKey : (io.env[ADMIN_API_KEY_ENV] ?? '').trim();
  if (adminKey === '') {
    io.stderr.write(
      `error: an admin key is required: set ${ADMIN_API_KEY_ENV} or pass --admin-api-key\n`,
    );
    return USAGE_EXIT_CODE;
  }
  const serverRaw =
    (typeof opts['server'] === 'string' && opts['server'].trim() !== ''
      ? opts['server']
      : undefined) ?? (given(io.env['STACYVM_SERVER']) ? io.env['STACYVM_SERVER'] : DEFAULT_SERVER);
  let base: string;
  try {
    const url = new URL(serverRaw.trim());
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
    if (url.username !== '' || url.password !== '') throw new Error('credentials');
    base = `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
  } catch {
    io.stderr.write(
      `error: --server must be an http(s) URL without credentials, got "${serverRaw}"\n`,
    );
    return USAGE_EXIT_CODE;
  }
  const id = workerId.trim();
  if (id === '') {
    io.stderr.write('error: worker id is required\n');
    return USAGE_EXIT_CODE;
  }
  let res: Response;
  let text: string;
  try {
    res = await io.fetch(`${base}/api/v1/admin/workers/${encodeURIComponent(id)}/drain`, {
      method: 'POST',
      headers: {
        'X-Admin-API-Key': adminKey,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: '{}',
      signal: AbortSignal.timeout(DRAIN_TIMEOUT_MS),
    });
    text = await res.text();
  } catch (err) {
    const cause = err instanceof Error ? err.cause : undefined;
    const code = (cause as NodeJS.ErrnoException | undefined)?.code;
    const why =
      err instanceof Error && err.name === 'TimeoutError'
        ? 'no answer in time'
        : (code ?? (err instanceof Error ? err.message : String(err)));
    io.stderr.write(`error: cannot reach the control plane at ${base}: ${why}\n`);
    return 1;
  }
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!res.ok) {
    const problem =
      body === undefined ? `HTTP ${res.status}` : fromErrorBody(res.status, body).message;
    io.stderr.write(`error: drain worker ${id}: ${problem} (HTTP ${res.status})\n`);
    return 1;
  }
  io.stdout.write(`${JSON.stringify(body ?? {}, null, 2)}\n`);
  return 0;
}
