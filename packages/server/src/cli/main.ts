#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { stringify } from 'yaml';
import { checkBindSafety, ConfigError, loadConfig, redactConfig } from '../config/load-config.js';
import type { LoadedConfig } from '../config/load-config.js';
import { formatLintFindings, hasLintFailures, lintConfig } from '../config/lint-config.js';
import { isStacyError } from '../domain/errors.js';
import { createStore } from '../store/create-store.js';
import { exitCodeForCommanderError, registerClientCommands } from './client-commands.js';
import { createControlPlane, storeOptions } from './control-plane.js';
import { registerDbCommands } from './db-commands.js';
import { registerImageCommands } from './image-commands.js';
import { registerWorkerTokenCommands } from './worker-token-commands.js';
import { registerWorkerCommand } from './worker-command.js';
import { registerWorkerCertifyCommand } from './worker-certify.js';
import { createLogger } from './logger.js';
import { registerPreviewCommands } from './preview-commands.js';

function load(configPath: string | undefined): LoadedConfig {
  return loadConfig(configPath === undefined ? {} : { configPath });
}

function fail(message: string, code = 1): never {
  process.stderr.write(`error: ${message}\n`);
  process.exit(code);
}

function describeError(err: unknown): string {
  if (err instanceof ConfigError) return err.message;
  if (isStacyError(err)) return err.message;
  return err instanceof Error ? err.message : String(err);
}

async function serve(opts: { config?: string; host?: string; port?: string }): Promise<void> {
  let loaded: LoadedConfig;
  try {
    loaded = load(opts.config);
  } catch (err) {
    fail(describeError(err), 2);
  }
  const config = loaded.config;
  if (opts.host !== undefined) config.server.host = opts.host;
  if (opts.port !== undefined) {
    const port = Number(opts.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      fail(`--port: "${opts.port}" is not a port number`, 2);
    config.server.port = port;
  }
  const refusal = checkBindSafety(config);
  if (refusal !== undefined) fail(refusal, 2);
  const logger = createLogger({ level: config.logging.level, format: config.logging.format });
  for (const w of loaded.warnings) logger.warn({ source: loaded.source }, w);
  logger.info({ source: loaded.source ?? 'defaults' }, 'configuration loaded');

  let cp: Awaited<ReturnType<typeof createControlPlane>>;
  try {
    cp = await createControlPlane({ config, logger });
  } catch (err) {
    logger.error({ err: describeError(err) }, 'control plane failed to start');
    fail(describeError(err));
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      logger.warn({ signal }, 'second signal; exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down: no new requests, finishing in-flight work');
    cp.close().then(
      () => {
        logger.info({}, 'shutdown complete');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err: describeError(err) }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    const address = await cp.app.listen({ host: config.server.host, port: config.server.port });
    cp.reaper.start();
    cp.liveness.start();
    logger.info({ address, database: config.database.driver }, 'StacyVM control plane listening');
    await listenPreview(cp, config.preview.listen_addr, logger);
  } catch (err) {
    logger.error({ err: describeError(err) }, 'cannot listen');
    await cp.close();
    fail(`cannot listen on ${config.server.host}:${config.server.port}: ${describeError(err)}`);
  }
}

/**
 * Starts the preview gateway. A gateway that cannot bind (port taken by
 * another control plane on this host, say) leaves the API running: previews
 * are then unavailable, which the log says loudly.
 */
async function listenPreview(
  cp: Awaited<ReturnType<typeof createControlPlane>>,
  addr: string,
  logger: ReturnType<typeof createLogger>,
): Promise<void> {
  try {
    const bound = await cp.listenPreview();
    if (bound !== undefined) {
      logger.info(
        { address: `${bound.host}:${bound.port}`, domains: cp.previews.domains() },
        'preview gateway listening',
      );
    }
  } catch (err) {
    logger.error(
      { listen_addr: addr, err: describeError(err) },
      'preview gateway cannot listen; previews are unavailable (set preview.listen_addr, or preview.enabled=false)',
    );
  }
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('stacyvm')
    .description('StacyVM: self-hosted sandboxes. `stacyvm serve` runs the control plane.')
    .showHelpAfterError()
    // Before any subcommand exists, so every subcommand inherits it (usage errors exit 2).
    .exitOverride();

  program
    .command('serve')
    .description('run the control plane (REST API, scheduler, store, reaper)')
    .option(
      '--config <file>',
      'config file (else STACYVM_CONFIG, ./stacyvm.yaml, ~/.stacyvm/config.yaml)',
    )
    .option('--host <host>', 'override server.host')
    .option('--port <port>', 'override server.port (0 picks a free port)')
    .action(serve);

  const config = program.command('config').description('inspect and check configuration');
  config
    .command('print')
    .description('print the effective configuration as YAML, secrets redacted')
    .option('--config <file>', 'config file')
    .action((opts: { config?: string }) => {
      try {
        const loaded = load(opts.config);
        for (const w of loaded.warnings) process.stderr.write(`warning: ${w}\n`);
        process.stdout.write(
          `# source: ${loaded.source ?? 'defaults'}\n${stringify(redactConfig(loaded.config))}`,
        );
      } catch (err) {
        fail(describeError(err), 2);
      }
    });
  config
    .command('lint')
    .description('check the configuration for unsafe or inconsistent settings')
    .option('--config <file>', 'config file')
    .option('--file <file>', 'alias of --config')
    .option('--production', 'fail on settings unsafe for production')
    .action((opts: { config?: string; file?: string; production?: boolean }) => {
      try {
        const loaded = load(opts.config ?? opts.file);
        const findings = lintConfig(loaded.config, { production: opts.production === true });
        for (const w of loaded.warnings) process.stdout.write(`[warn] config: ${w}\n`);
        process.stdout.write(`${formatLintFindings(findings).replace(/\n$/, '')}\n`);
        if (hasLintFailures(findings)) process.exitCode = 1;
      } catch (err) {
        fail(describeError(err), 2);
      }
    });

  const migrate = async (opts: { config?: string }): Promise<void> => {
    try {
      const { config: cfg } = load(opts.config);
      const store = await createStore(storeOptions(cfg));
      try {
        const applied = await store.migrate();
        const version = await store.schemaVersion();
        process.stdout.write(
          applied.length === 0
            ? `database is up to date (schema version ${version})\n`
            : `applied migrations ${applied.join(', ')}; schema version ${version}\n`,
        );
      } finally {
        await store.close();
      }
    } catch (err) {
      fail(describeError(err));
    }
  };
  program
    .command('migrate')
    .description('apply database migrations and exit')
    .option('--config <file>', 'config file')
    .action(migrate);
  program
    .command('db')
    .description('database operations')
    .command('migrate')
    .description('apply database migrations and exit')
    .option('--config <file>', 'config file')
    .action(migrate);

  registerDbCommands(program);
  registerClientCommands(program);
  registerImageCommands(program);
  registerWorkerTokenCommands(program);
  registerWorkerCommand(program);
  registerWorkerCertifyCommand(program);
  registerPreviewCommands(program);
  return program;
}

// `stacyvm exec ... | head -1` closes stdout early: that is not an error of ours.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

const program = buildProgram();
try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exitCode = exitCodeForCommanderError(err);
  else fail(describeError(err));
}
