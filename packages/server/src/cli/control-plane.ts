import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Logger as PinoLogger } from 'pino';
import { buildApp } from '../api/build-app.js';
import { parseWorkerTokenEntries } from '../api/plugins/worker-auth.js';
import type { StacyConfig } from '../config/schema.js';
import { databaseDialect, durationMs } from '../config/load-config.js';
import type { Clock } from '../domain/clock.js';
import { systemClock } from '../domain/clock.js';
import { LOCAL_WORKER_ID } from '../domain/worker.js';
import { EventBus } from '../orchestrator/events.js';
import { Metrics } from '../orchestrator/metrics.js';
import { LivenessSweeper } from '../orchestrator/liveness.js';
import { Reaper } from '../orchestrator/reaper.js';
import { SandboxService } from '../orchestrator/sandbox-service.js';
import { SystemService } from '../orchestrator/system-service.js';
import { WorkerService } from '../orchestrator/worker-service.js';
import { DockerProvider } from '../providers/docker/docker-provider.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import type { Provider } from '../providers/provider.js';
import {
  createInProcessWorkerClient,
  StaticWorkerDirectory,
} from '../rpc/in-process-worker-client.js';
import { createStore } from '../store/create-store.js';
import type { Store } from '../store/store.js';
import { VERSION } from '../version.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';

export interface ControlPlane {
  app: FastifyInstance;
  store: Store;
  sandboxes: SandboxService;
  reaper: Reaper;
  /** Marks sandboxes of silent remote workers unhealthy/expired and recovers them. */
  liveness: LivenessSweeper;
  /** Stops accepting work, finishes in-flight requests within the timeout, closes the store. */
  close(): Promise<void>;
}

export interface ControlPlaneOptions {
  config: StacyConfig;
  logger: PinoLogger;
  clock?: Clock;
}

function dockerSocket(socket: string): string | undefined {
  if (socket === '') return undefined;
  return socket.startsWith('unix://') ? socket.slice('unix://'.length) : socket;
}

function buildDocker(config: StacyConfig, logger: PinoLogger): DockerProvider {
  const d = config.providers.docker;
  const socketPath = dockerSocket(d.socket);
  return new DockerProvider({
    ...(socketPath === undefined ? {} : { socketPath }),
    runtime: d.runtime,
    networkMode: d.network_mode,
    defaultImage: d.default_image,
    readOnlyRootfs: d.read_only_rootfs,
    pidsLimit: d.pids_limit,
    user: d.user,
    droppedCaps: d.dropped_caps,
    addedCaps: d.added_caps,
    seccompProfile: d.seccomp_profile,
    memory: d.memory,
    cpus: d.cpus,
    previewDomain: config.server.preview_domain,
    onPullProgress: (p) => logger.info({ pull: p }, 'image pull progress'),
  });
}

/**
 * Chooses and builds the providers the config enables. `auto` picks docker
 * when its daemon answers and mock otherwise, and says which in the log.
 */
export async function buildProviders(
  config: StacyConfig,
  logger: PinoLogger,
): Promise<{ providers: Provider[]; defaultName: string }> {
  const providers: Provider[] = [];
  if (config.providers.mock.enabled) {
    providers.push(
      new MockProvider(
        config.providers.mock.base_dir === '' ? {} : { baseDir: config.providers.mock.base_dir },
      ),
    );
  }
  const wanted = config.providers.default;
  if (config.providers.docker.enabled) {
    const docker = buildDocker(config, logger);
    if (wanted === 'auto') {
      try {
        await docker.init();
        providers.push(docker);
      } catch (err) {
        logger.warn(
          { provider: 'docker', err: (err as Error).message },
          'docker daemon does not answer; the docker provider is disabled',
        );
      }
    } else {
      providers.push(docker);
    }
  }
  let defaultName: string = wanted;
  if (wanted === 'auto') {
    const pick =
      providers.find((p) => p.name === 'docker') ?? providers.find((p) => p.name === 'mock');
    if (pick === undefined) {
      throw new Error(
        'providers.default is "auto" but neither docker (daemon not answering) nor mock (disabled) is available',
      );
    }
    defaultName = pick.name;
    logger.info(
      { provider: pick.name },
      `providers.default=auto selected the ${pick.name} provider`,
    );
  } else if (!providers.some((p) => p.name === wanted)) {
    throw new Error(`providers.default is "${wanted}" but that provider is not enabled`);
  }
  return { providers, defaultName };
}

/** The composition root of `stacyvm serve`: builds every part from config. Does not listen. */
export async function createControlPlane(o: ControlPlaneOptions): Promise<ControlPlane> {
  const { config, logger } = o;
  const clock = o.clock ?? systemClock;
  // Parsed before anything is opened, so a bad entry leaves nothing to clean up.
  const perWorkerTokens = parseWorkerTokenEntries(config.auth.worker_tokens);
  const store = await createStore({
    driver: databaseDialect(config),
    path: config.database.path,
    dsn: config.database.dsn,
  });
  try {
    const applied = await store.migrate();
    if (applied.length > 0) logger.info({ versions: applied }, 'database migrations applied');

    const { providers, defaultName } = await buildProviders(config, logger);
    const runtime = new WorkerRuntime({
      workerId: LOCAL_WORKER_ID,
      providers,
      defaultProvider: defaultName,
      logger,
    });
    await runtime.start();
    const local = createInProcessWorkerClient(runtime);
    const directory = new StaticWorkerDirectory([local]);
    const events = new EventBus({ clock });
    const metrics = new Metrics();
    const d = config.defaults;
    const staleAfterMs = 2 * 60 * 1000;
    const sandboxes = new SandboxService({
      store,
      workers: directory,
      events,
      metrics,
      clock,
      logger,
      localWorkerId: LOCAL_WORKER_ID,
      defaultProvider: defaultName,
      staleAfterMs,
      limits: {
        defaultTtlMs: durationMs(d.ttl),
        maxTtlMs: durationMs(d.max_ttl),
        defaultImage: d.image,
        defaultMemoryMb: d.memory_mb,
        defaultVcpus: d.vcpus,
        defaultExecTimeoutMs: durationMs(d.default_exec_timeout),
        maxExecTimeoutMs: durationMs(d.max_exec_timeout),
        maxSandboxes: d.max_sandboxes,
        maxSandboxesPerOwner: d.max_sandboxes_per_owner,
      },
    });
    const workers = new WorkerService({ store, clock, events, logger, staleAfterMs });
    const startedAtMs = clock.nowMs();
    const system = new SystemService({
      store,
      local,
      events,
      metrics,
      clock,
      version: VERSION,
      startedAtMs,
      staleAfterMs,
    });

    const reconciled = await sandboxes.reconcileWorker(LOCAL_WORKER_ID, {
      requestId: 'startup',
      actor: 'system:reconcile',
    });
    for (const provider of runtime.providerNames) {
      const policy = provider === 'docker' ? config.providers.docker.orphans : 'adopt';
      const { adopted, removed } = await sandboxes.reconcileOrphans(
        LOCAL_WORKER_ID,
        provider,
        policy,
        {
          requestId: 'startup',
          actor: 'system:reconcile',
        },
      );
      if (adopted.length + removed.length > 0) {
        logger.info(
          { provider, adopted, removed },
          'reconcile handled runtimes with no live record',
        );
      }
    }
    if (reconciled > 0)
      logger.info(
        { destroyed: reconciled },
        'reconcile marked sandboxes with no runtime as destroyed',
      );

    await workers.startLocalHeartbeat(
      () => ({
        id: LOCAL_WORKER_ID,
        hostname: hostname(),
        status: runtime.state === 'active' ? 'online' : runtime.state,
        providers: runtime.providerNames,
        capabilities: ['api', 'single_node', 'spawn', 'exec', 'files'],
        // No per-worker max_sandboxes here: defaults.max_sandboxes is enforced
        // globally by admission and would otherwise be counted twice.
        capacity: {
          max_sandboxes_per_owner: d.max_sandboxes_per_owner,
          default_exec_timeout: d.default_exec_timeout,
          max_exec_timeout: d.max_exec_timeout,
          max_ttl: d.max_ttl,
          preview_domain: config.server.preview_domain,
        },
      }),
      30_000,
    );

    const reaper = new Reaper({
      service: sandboxes,
      intervalMs: durationMs(config.server.reaper_interval),
      logger,
    });
    const liveness = new LivenessSweeper({
      store,
      clock,
      events,
      logger,
      localWorkerId: LOCAL_WORKER_ID,
      staleAfterMs,
      intervalMs: durationMs(config.server.reaper_interval),
    });
    const app = await buildApp({
      sandboxes,
      workers,
      system,
      events,
      metrics,
      auth: {
        apiKey: config.auth.api_key,
        adminApiKey: config.auth.admin_api_key,
        adminFallbackEnabled: config.auth.admin_fallback_enabled,
      },
      workerAuth: {
        sharedToken: config.auth.worker_token,
        perWorkerTokens,
        signingKeys: [config.auth.worker_signing_key, ...config.auth.worker_signing_keys],
        revokedTokenIds: config.auth.worker_revoked_token_ids,
        nowMs: () => clock.nowMs(),
      },
      logger,
      previewDomain: config.server.preview_domain,
      corsAllowedOrigins: config.server.cors_allowed_origins,
      maxBodyBytes: config.server.max_body_bytes,
      sseKeepaliveMs: durationMs(config.server.sse_keepalive_interval),
    });

    let closing: Promise<void> | undefined;
    const close = (): Promise<void> => {
      closing ??= (async () => {
        system.setDraining();
        runtime.drain();
        await reaper.stop();
        await liveness.stop();
        workers.stop();
        const timeoutMs = durationMs(config.server.shutdown_timeout);
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<'timeout'>((r) => {
          timer = setTimeout(() => r('timeout'), timeoutMs);
        });
        const result = await Promise.race([app.close().then(() => 'closed' as const), timedOut]);
        clearTimeout(timer);
        if (result === 'timeout') {
          logger.warn(
            { timeout: config.server.shutdown_timeout },
            'in-flight requests did not finish in time; closing connections',
          );
          app.server.closeAllConnections();
        }
        await sandboxes.drain();
        await runtime.stop();
        await store.close();
      })();
      return closing;
    };
    return { app, store, sandboxes, reaper, liveness, close };
  } catch (err) {
    await store.close();
    throw err;
  }
}
