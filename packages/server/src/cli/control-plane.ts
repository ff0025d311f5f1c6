import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Logger as PinoLogger } from 'pino';
import { buildApp } from '../api/build-app.js';
import { parseWorkerTokenEntries } from '../api/plugins/worker-auth.js';
import type { StacyConfig } from '../config/schema.js';
import { databaseDialect, durationMs } from '../config/load-config.js';
import type { Clock } from '../domain/clock.js';
import { systemClock } from '../domain/clock.js';
import type { EventBus } from '../orchestrator/events.js';
import { Metrics } from '../orchestrator/metrics.js';
import { PreviewService } from '../orchestrator/preview-service.js';
import { createPreviewGateway } from '../preview/gateway.js';
import type { PreviewGateway } from '../preview/gateway.js';
import { parseListenAddr } from '../worker/worker-agent.js';
import { LivenessSweeper } from '../orchestrator/liveness.js';
import { Reaper } from '../orchestrator/reaper.js';
import { SandboxService } from '../orchestrator/sandbox-service.js';
import { SystemService } from '../orchestrator/system-service.js';
import { TemplateService } from '../orchestrator/template-service.js';
import { WorkerService } from '../orchestrator/worker-service.js';
import { DockerProvider } from '../providers/docker/docker-provider.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import type { Provider } from '../providers/provider.js';
import { readFileSync } from 'node:fs';
import { rpcTokenFor } from '../domain/worker-credentials.js';
import type { WorkerRecord } from '../domain/worker.js';
import type { RemoteClientFactory } from '../orchestrator/worker-directory.js';
import { RoutingWorkerDirectory } from '../orchestrator/worker-directory.js';
import { createInProcessWorkerClient } from '../rpc/in-process-worker-client.js';
import type { HttpWorkerClientOptions } from '../rpc/http-worker-client.js';
import { HttpWorkerClient } from '../rpc/http-worker-client.js';
import { createStore } from '../store/create-store.js';
import type { CreateStoreOptions } from '../store/create-store.js';
import type { Store } from '../store/store.js';
import { VERSION } from '../version.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';
import type { TraefikRedisPublisher } from '../preview/traefik-redis-publisher.js';
import type { ClusterParts, OwnWorkerRpc } from './cluster-wiring.js';
import {
  API_PORT_CAPACITY_KEY,
  checkOwnWorkerId,
  createClusterParts,
  ownWorkerCapabilities,
  ownWorkerId,
  startOwnWorkerRpc,
  startRegistryRefresh,
} from './cluster-wiring.js';
import {
  checkTraefikConfig,
  createTraefikCatalog,
  createTraefikPublisher,
  traefikDynamicConfig,
} from './traefik-wiring.js';

export interface ControlPlane {
  app: FastifyInstance;
  store: Store;
  sandboxes: SandboxService;
  reaper: Reaper;
  /** Marks sandboxes of silent remote workers unhealthy/expired and recovers them. */
  liveness: LivenessSweeper;
  /** Lifecycle events (on PostgreSQL shared with the other control planes on the database). */
  events: EventBus;
  /** This control plane's own worker id (`server.local_worker_id`). */
  ownWorkerId: string;
  /** Preview URLs, tokens, worker preview domains and the gateway's resolver. */
  previews: PreviewService;
  /** The built-in preview gateway (not listening until {@link listenPreview}); undefined when disabled. */
  preview: PreviewGateway | undefined;
  /** Publishes preview routes to Redis for Traefik (`traefik.redis.enabled`), started; else undefined. */
  traefikRedis: TraefikRedisPublisher | undefined;
  /**
   * Binds the preview gateway to `preview.listen_addr` (a test may pass its
   * own address). Resolves with the bound address, or undefined when the
   * gateway is disabled.
   */
  listenPreview(addr?: string): Promise<{ host: string; port: number } | undefined>;
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

/** The store the `database` section names. */
export function storeOptions(config: StacyConfig): CreateStoreOptions {
  return {
    driver: databaseDialect(config),
    path: config.database.path,
    dsn: config.database.dsn,
    maxOpenConns: config.database.max_open_conns,
    statementTimeoutMs: durationMs(config.database.statement_timeout),
    preparedStatements: config.database.prepared_statements,
  };
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
    previewUpstream: config.preview.upstream,
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
      new MockProvider({
        ...(config.providers.mock.base_dir === ''
          ? {}
          : { baseDir: config.providers.mock.base_dir }),
        spawnHelper: config.providers.mock.spawn_helper,
      }),
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

function readPem(key: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(
      `${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}

/** The control plane's TLS client settings for worker RPC, or undefined when TLS is off. */
export function rpcClientTls(config: StacyConfig): HttpWorkerClientOptions['tls'] {
  const t = config.worker.rpc_tls;
  if (!t.enabled) return undefined;
  return {
    ...(t.ca_file === '' ? {} : { ca: readPem('worker.rpc_tls.ca_file', t.ca_file) }),
    ...(t.client_cert_file === ''
      ? {}
      : {
          cert: readPem('worker.rpc_tls.client_cert_file', t.client_cert_file),
          key: readPem('worker.rpc_tls.client_key_file', t.client_key_file),
        }),
    ...(t.server_name === '' ? {} : { serverName: t.server_name }),
    ...(t.insecure_skip_verify ? { insecureSkipVerify: true } : {}),
  };
}

/**
 * Builds worker-RPC clients. The credential sent to each worker is its own
 * `auth.worker_tokens` entry, else the shared token, else a short-lived
 * signed `worker:rpc` token minted per call (reference §2.5, with per-worker
 * tokens working in both directions).
 */
function remoteClientFactory(
  config: StacyConfig,
  perWorkerTokens: ReadonlyMap<string, string>,
  clock: Clock,
  previewUrlOf: (workerId: string) => string | undefined,
): RemoteClientFactory {
  const tls = rpcClientTls(config);
  const source = () => ({
    perWorkerTokens,
    sharedToken: config.auth.worker_token,
    signingKey: config.auth.worker_signing_key,
    nowMs: clock.nowMs(),
  });
  return (workerId, rpcUrl) => {
    if (rpcTokenFor(workerId, source()) === undefined) {
      return {
        unavailable:
          'the control plane has no credential to call it (set auth.worker_tokens for it, auth.worker_token or auth.worker_signing_key)',
      };
    }
    return new HttpWorkerClient({
      workerId,
      rpcUrl,
      token: () => rpcTokenFor(workerId, source()) ?? '',
      previewUrl: () => previewUrlOf(workerId),
      ...(tls === undefined ? {} : { tls }),
    });
  };
}

/**
 * Reconciles a remote worker when it (re)joins: the first beat this control
 * plane process sees, or a beat after it was stale/offline. Records whose
 * runtime is gone become destroyed; runtimes with no live record (a spawn
 * whose answer was lost, a sandbox destroyed while the worker was away) are
 * removed, so nothing keeps running unowned. One run per worker at a time.
 */
class WorkerRejoin {
  private readonly seenIds = new Set<string>();
  private readonly running = new Map<string, Promise<void>>();

  constructor(
    private readonly sandboxes: SandboxService,
    private readonly logger: PinoLogger,
  ) {}

  seen(w: WorkerRecord, wasAlive: boolean): void {
    const first = !this.seenIds.has(w.id);
    this.seenIds.add(w.id);
    if ((!first && wasAlive) || this.running.has(w.id)) return;
    if (typeof w.capacity['rpc_url'] !== 'string' || w.capacity['rpc_url'] === '') return;
    const run = this.reconcile(w).finally(() => this.running.delete(w.id));
    this.running.set(w.id, run);
  }

  private async reconcile(w: WorkerRecord): Promise<void> {
    const ctx = { requestId: `rejoin-${w.id}`, actor: 'system:reconcile' };
    try {
      const gone = await this.sandboxes.reconcileWorker(w.id, ctx);
      const orphans: string[] = [];
      for (const provider of w.providers) {
        const { removed } = await this.sandboxes.reconcileOrphans(w.id, provider, 'remove', ctx);
        orphans.push(...removed);
      }
      if (gone + orphans.length > 0) {
        this.logger.info(
          { worker_id: w.id, destroyed_records: gone, removed_runtimes: orphans },
          'worker rejoined; reconciled its sandboxes',
        );
      }
    } catch (err) {
      this.logger.warn({ worker_id: w.id, err: (err as Error).message }, 'worker reconcile failed');
    }
  }

  async idle(): Promise<void> {
    await Promise.all([...this.running.values()]);
  }
}

/** The composition root of `stacyvm serve`: builds every part from config. Does not listen. */
export async function createControlPlane(o: ControlPlaneOptions): Promise<ControlPlane> {
  const { config, logger } = o;
  const clock = o.clock ?? systemClock;
  // Parsed before anything is opened, so a bad entry leaves nothing to clean up.
  const perWorkerTokens = parseWorkerTokenEntries(config.auth.worker_tokens);
  if (config.preview.enabled) parseListenAddr(config.preview.listen_addr, 'preview.listen_addr');
  checkTraefikConfig(config);
  const ownId = ownWorkerId(config);
  const store = await createStore(storeOptions(config));
  let cluster: ClusterParts | undefined;
  let ownRpc: OwnWorkerRpc | undefined;
  let registry: { stop(): void } | undefined;
  try {
    const applied = await store.migrate();
    if (applied.length > 0) logger.info({ versions: applied }, 'database migrations applied');
    const staleAfterMs = durationMs(config.server.worker_stale_after);
    // Two control planes under one own-worker id would reconcile away each other's sandboxes.
    await checkOwnWorkerId(
      store,
      ownId,
      { hostname: hostname(), apiPort: config.server.port },
      clock.nowMs(),
      staleAfterMs,
    );

    const { providers, defaultName } = await buildProviders(config, logger);
    const runtime = new WorkerRuntime({
      workerId: ownId,
      providers,
      defaultProvider: defaultName,
      logger,
    });
    await runtime.start();
    const local = createInProcessWorkerClient(runtime);
    const directory = new RoutingWorkerDirectory(
      local,
      // `previews` is built below; clients only read it per preview request, after start-up.
      remoteClientFactory(config, perWorkerTokens, clock, (id: string): string | undefined =>
        previews.previewUrlOf(id),
      ),
      logger,
      // A worker that heartbeats to another control plane is looked up in the registry.
      (id) => store.workers.get(id),
    );
    cluster = createClusterParts({ config, clock, logger });
    await cluster.start();
    const events = cluster.events;
    const metrics = new Metrics();
    const d = config.defaults;
    const sandboxes = new SandboxService({
      store,
      workers: directory,
      events,
      metrics,
      clock,
      logger,
      localWorkerId: ownId,
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
    const pv = config.preview;
    const previews: PreviewService = new PreviewService({
      sandboxes,
      workers: directory,
      clock,
      logger,
      settings: {
        enabled: pv.enabled,
        defaultDomain: config.server.preview_domain,
        scheme: pv.public_scheme,
        publicPort: pv.public_port,
        private: pv.private,
        tokenTtlMs: durationMs(pv.token_ttl),
        // Random per process unless configured: tokens then die with the process.
        tokenKey: pv.token_key === '' ? randomBytes(32) : pv.token_key,
        extendOnTrafficMs: durationMs(pv.extend_ttl_on_traffic),
        resolveCacheTtlMs: durationMs(pv.resolve_cache_ttl),
      },
      events,
    });
    const rejoin = new WorkerRejoin(sandboxes, logger);
    const workers = new WorkerService({
      store,
      clock,
      events,
      logger,
      staleAfterMs,
      localWorkerId: ownId,
      remotes: directory,
      onHeartbeat: (record, previous) => {
        if (record.id === ownId) return;
        previews.observeWorker(record);
        const refusal = directory.observe(record);
        if (refusal !== undefined && previous?.capacity['rpc_url'] !== record.capacity['rpc_url']) {
          logger.warn({ worker_id: record.id, reason: refusal }, 'worker cannot be called');
        }
        const wasAlive =
          previous !== undefined &&
          (previous.status === 'online' || previous.status === 'draining') &&
          clock.nowMs() - previous.lastHeartbeatMs <= staleAfterMs;
        rejoin.seen(record, wasAlive);
      },
    });
    // Several beats per stale window, so a short server.worker_stale_after never finds it stale.
    const beatMs = Math.min(30_000, Math.max(250, Math.floor(staleAfterMs / 4)));
    // Workers registered before a restart stay reachable before their next beat, and
    // workers that heartbeat to another control plane (or moved) are picked up here.
    const refresher = startRegistryRefresh({
      store,
      ownId,
      intervalMs: beatMs,
      observe: (w) => {
        directory.observe(w);
        previews.observeWorker(w);
      },
      logger,
    });
    registry = refresher;
    await refresher.refresh();
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

    const reconciled = await sandboxes.reconcileWorker(ownId, {
      requestId: 'startup',
      actor: 'system:reconcile',
    });
    for (const provider of runtime.providerNames) {
      const policy = provider === 'docker' ? config.providers.docker.orphans : 'adopt';
      const { adopted, removed } = await sandboxes.reconcileOrphans(ownId, provider, policy, {
        requestId: 'startup',
        actor: 'system:reconcile',
      });
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

    // With worker.listen_addr the other control planes reach this one's own worker over RPC.
    ownRpc = await startOwnWorkerRpc({
      config,
      id: ownId,
      runtime,
      perWorkerTokens,
      clock,
      logger,
    });
    const rpcUrl = ownRpc?.rpcUrl;
    const ownMax = config.server.local_worker_max_sandboxes;
    await workers.startLocalHeartbeat(
      () => ({
        id: ownId,
        hostname: hostname(),
        status: runtime.state === 'active' ? 'online' : runtime.state,
        providers: runtime.providerNames,
        capabilities: ownWorkerCapabilities(ownId, rpcUrl !== undefined),
        // max_sandboxes only when server.local_worker_max_sandboxes sets an own
        // limit: defaults.max_sandboxes is enforced globally by admission.
        capacity: {
          ...(ownMax > 0 ? { max_sandboxes: ownMax } : {}),
          max_sandboxes_per_owner: d.max_sandboxes_per_owner,
          default_exec_timeout: d.default_exec_timeout,
          max_exec_timeout: d.max_exec_timeout,
          max_ttl: d.max_ttl,
          preview_domain: config.server.preview_domain,
          [API_PORT_CAPACITY_KEY]: config.server.port,
          ...(rpcUrl === undefined ? {} : { rpc_url: rpcUrl }),
        },
      }),
      beatMs,
    );

    // On PostgreSQL one control plane (the holder of an advisory lock) sweeps at a time.
    const leader = cluster.leader === undefined ? {} : { leader: cluster.leader };
    const reaper = new Reaper({
      service: sandboxes,
      intervalMs: durationMs(config.server.reaper_interval),
      logger,
      ...leader,
    });
    const liveness = new LivenessSweeper({
      store,
      clock,
      events,
      logger,
      localWorkerId: ownId,
      staleAfterMs,
      intervalMs: durationMs(config.server.reaper_interval),
      ...leader,
    });
    // `preview` (the gateway) is built below; the catalog reads its port per request.
    const traefikCatalog = createTraefikCatalog({
      config,
      store,
      previews,
      localWorkerId: ownId,
      gatewayPort: () => preview?.port,
    });
    const templates = new TemplateService({ store, sandboxes, clock, logger });
    const app = await buildApp({
      traefik: {
        dynamicConfig: traefikDynamicConfig(config, traefikCatalog),
        providerToken: config.traefik.http_provider_token,
      },
      sandboxes,
      templates,
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
      previews: previews,
      corsAllowedOrigins: config.server.cors_allowed_origins,
      maxBodyBytes: config.server.max_body_bytes,
      sseKeepaliveMs: durationMs(config.server.sse_keepalive_interval),
    });

    const preview = pv.enabled
      ? createPreviewGateway({
          domains: () => previews.domains(),
          resolve: (target, signal) => previews.resolve(target, signal),
          resolveCached: (target) => previews.cached(target),
          ...(pv.private ? { tokenKey: previews.settings.tokenKey } : {}),
          cookieMaxAgeMs: durationMs(pv.token_ttl),
          publicScheme: pv.public_scheme,
          publicPort: () => previews.publicPort,
          hostRewrite: pv.host_rewrite,
          upstreamTimeoutMs: durationMs(pv.upstream_timeout),
          maxConnections: pv.max_connections,
          logger,
        })
      : undefined;
    const listenPreview = async (
      addr = pv.listen_addr,
    ): Promise<{ host: string; port: number } | undefined> => {
      if (preview === undefined) return undefined;
      const { host, port } = parseListenAddr(addr, 'preview.listen_addr');
      const bound = await preview.listen(host, port);
      if (pv.public_port === 0) previews.setPublicPort(bound.port);
      // Routes point at the gateway: republish them with its bound port.
      if (traefikRedis !== undefined) void traefikRedis.resync().catch(() => undefined);
      return bound;
    };
    const traefikRedis = createTraefikPublisher({
      config,
      catalog: traefikCatalog,
      events,
      logger,
    });
    await traefikRedis?.start();

    let closing: Promise<void> | undefined;
    const close = (): Promise<void> => {
      closing ??= (async () => {
        system.setDraining();
        runtime.drain();
        await reaper.stop();
        await liveness.stop();
        workers.stop();
        refresher.stop();
        const timeoutMs = durationMs(config.server.shutdown_timeout);
        // Calls from other control planes to the own worker finish like API requests.
        const ownRpcClosed = ownRpc?.server.close(timeoutMs);
        // Open previews (WebSocket sessions included) get a short grace, not the whole timeout.
        const previewClosed = preview?.close(Math.min(timeoutMs, 5_000));
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
        await previewClosed;
        await ownRpcClosed;
        await rejoin.idle();
        await previews.drain();
        previews.close();
        await sandboxes.drain();
        await traefikRedis?.stop();
        await directory.close();
        await runtime.stop();
        await cluster?.close();
        await store.close();
      })();
      return closing;
    };
    return {
      app,
      store,
      sandboxes,
      reaper,
      liveness,
      events,
      ownWorkerId: ownId,
      previews: previews,
      preview,
      traefikRedis,
      listenPreview,
      close,
    };
  } catch (err) {
    registry?.stop();
    await ownRpc?.server.close(0);
    await cluster?.close();
    await store.close();
    throw err;
  }
}
