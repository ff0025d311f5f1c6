/**
 * The parts of `stacyvm serve` that let several control planes share one
 * PostgreSQL database: the id and RPC server of the control plane's own
 * worker, the cluster event bus, the sweep leader lock and the periodic
 * registry refresh. Kept apart from control-plane.ts so the composition
 * root only wires them in.
 */
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import type { Logger as PinoLogger } from 'pino';
import type { StacyConfig } from '../config/schema.js';
import { databaseDialect } from '../config/load-config.js';
import type { Clock } from '../domain/clock.js';
import type { LeaderLock } from '../domain/cluster.js';
import { StacyError } from '../domain/errors.js';
import type { WorkerRecord } from '../domain/worker.js';
import {
  CONTROL_PLANE_CAPABILITY,
  LOCAL_WORKER_ID,
  isWorkerStale,
  resolveLocalWorkerId,
} from '../domain/worker.js';
import { ClusterEventBus } from '../orchestrator/cluster-events.js';
import { EventBus } from '../orchestrator/events.js';
import { PgClusterChannel, PgLeaderLock } from '../store/postgres/pg-cluster.js';
import type { Store } from '../store/store.js';
import { startWorkerRpcServer } from '../worker/rpc-server.js';
import type { WorkerRpcServer, WorkerRpcServerOptions } from '../worker/rpc-server.js';
import { advertisedRpcUrl, parseListenAddr } from '../worker/worker-agent.js';

/** Host and API port that identify a control plane in its own worker's record. */
export interface ControlPlaneIdentity {
  hostname: string;
  apiPort: number;
}

/** Capacity key holding the API port of the control plane that owns a worker record. */
export const API_PORT_CAPACITY_KEY = 'api_port';

/**
 * The id of this control plane's own worker (`server.local_worker_id`).
 *
 * @throws StacyError `BAD_REQUEST` naming the key.
 */
export function ownWorkerId(config: StacyConfig, host: string = osHostname()): string {
  try {
    return resolveLocalWorkerId(config.server.local_worker_id, host, config.server.port);
  } catch (err) {
    throw new StacyError('BAD_REQUEST', (err as Error).message, {
      details: [{ field: 'server.local_worker_id', problem: (err as Error).message }],
    });
  }
}

/**
 * Refuses to start under an own-worker id another live process uses: a
 * remote worker, or another control plane (a different host or API port)
 * whose heartbeat is still fresh. Two control planes under one id would
 * reconcile away each other's sandboxes.
 *
 * @throws StacyError `CONFLICT` saying which and what to change.
 */
export async function checkOwnWorkerId(
  store: Store,
  id: string,
  me: ControlPlaneIdentity,
  nowMs: number,
  staleAfterMs: number,
): Promise<void> {
  const rec = await store.workers.get(id);
  if (rec === undefined) return;
  const fix = 'give each control plane its own server.local_worker_id (or "auto")';
  if (!rec.capabilities.includes(CONTROL_PLANE_CAPABILITY)) {
    if (rec.capabilities.includes('remote_worker')) {
      throw new StacyError(
        'CONFLICT',
        `server.local_worker_id "${id}" is registered by a remote worker (host ${rec.hostname}); ${fix}`,
      );
    }
    return;
  }
  const port = rec.capacity[API_PORT_CAPACITY_KEY];
  const sameProcessSlot =
    rec.hostname === me.hostname && (typeof port !== 'number' || port === me.apiPort);
  if (sameProcessSlot || isWorkerStale(rec, nowMs, staleAfterMs)) return;
  const agoS = Math.max(0, Math.round((nowMs - rec.lastHeartbeatMs) / 1000));
  throw new StacyError(
    'CONFLICT',
    `server.local_worker_id "${id}" is in use by the control plane on ${rec.hostname}` +
      `${typeof port === 'number' ? ` (API port ${port})` : ''}, last heartbeat ${agoS}s ago; ${fix}`,
  );
}

/** The capabilities of a control plane's own worker in the registry. */
export function ownWorkerCapabilities(id: string, servesRpc: boolean): string[] {
  const caps = ['api', CONTROL_PLANE_CAPABILITY];
  if (id === LOCAL_WORKER_ID) caps.push('single_node');
  caps.push('spawn', 'exec', 'files');
  if (servesRpc) caps.push('rpc', 'exec_stream_ndjson');
  return caps;
}

/** The event bus, and on PostgreSQL the sweep leader lock, of one control plane. */
export interface ClusterParts {
  events: EventBus;
  /** Undefined on SQLite: one control plane, it always sweeps. */
  leader: LeaderLock | undefined;
  /** Starts listening for other control planes' events (never throws; reconnects). */
  start(): Promise<void>;
  /** Sends queued events, stops listening and gives up the lock. */
  close(): Promise<void>;
}

/**
 * On PostgreSQL: a {@link ClusterEventBus} over LISTEN/NOTIFY and a
 * {@link PgLeaderLock} for the sweeps. On SQLite: the in-process bus only.
 */
export function createClusterParts(o: {
  config: StacyConfig;
  clock: Clock;
  logger: PinoLogger;
}): ClusterParts {
  if (databaseDialect(o.config) !== 'postgres') {
    return {
      events: new EventBus({ clock: o.clock }),
      leader: undefined,
      start: async () => undefined,
      close: async () => undefined,
    };
  }
  const dsn = o.config.database.dsn;
  const channel = new PgClusterChannel({ dsn, logger: o.logger, nowMs: () => o.clock.nowMs() });
  const bus = new ClusterEventBus({ clock: o.clock, channel, logger: o.logger });
  const leader = new PgLeaderLock({ dsn, logger: o.logger });
  return {
    events: bus,
    leader,
    start: () => bus.start(),
    close: async () => {
      await leader.close();
      await bus.close();
    },
  };
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

/**
 * The RPC credentials a control plane's own worker accepts: its own
 * `auth.worker_tokens` entry and nothing else. Remote workers hold the shared
 * token and (in signed mode) the signing key, so accepting those would let
 * any worker exec in, read and destroy the sandboxes on the control plane's
 * host. Every control plane carries the same entry for each control-plane
 * id, so they reach each other with it.
 */
export function ownWorkerRpcAuth(
  config: StacyConfig,
  id: string,
  perWorkerTokens: ReadonlyMap<string, string>,
  clock: Clock,
): WorkerRpcServerOptions['auth'] {
  const own = perWorkerTokens.get(id)?.trim() ?? '';
  return {
    staticTokens: own !== '' ? [own] : [],
    signingKeys: [],
    revokedTokenIds: [...config.auth.worker_revoked_token_ids],
    nowMs: () => clock.nowMs(),
  };
}

/** The RPC server of a control plane's own worker and the URL it advertises. */
export interface OwnWorkerRpc {
  server: WorkerRpcServer;
  rpcUrl: string;
}

/**
 * With `worker.listen_addr` set on the control plane, serves its own worker
 * over worker RPC (TLS per `worker.rpc_tls`, server side) so the other
 * control planes on the database can reach its sandboxes; the returned URL
 * goes into the own worker's heartbeats as `rpc_url`. Undefined without a
 * listen address.
 *
 * @throws StacyError `BAD_REQUEST` when the address is unusable, no
 *   credential could check callers, or TLS lacks its server certificate.
 */
export async function startOwnWorkerRpc(o: {
  config: StacyConfig;
  id: string;
  runtime: WorkerRpcServerOptions['runtime'];
  perWorkerTokens: ReadonlyMap<string, string>;
  clock: Clock;
  logger: PinoLogger;
}): Promise<OwnWorkerRpc | undefined> {
  const w = o.config.worker;
  const listen = w.listen_addr.trim();
  if (listen === '') return undefined;
  const addr = parseListenAddr(listen);
  const t = w.rpc_tls;
  const tlsOn = t.enabled;
  // Refuse an undialable address before anything listens.
  advertisedRpcUrl({ listenAddr: listen, advertiseAddr: w.advertise_addr, tls: tlsOn });
  const auth = ownWorkerRpcAuth(o.config, o.id, o.perWorkerTokens, o.clock);
  if (auth.staticTokens.length === 0) {
    throw new StacyError(
      'BAD_REQUEST',
      `worker.listen_addr is set, so this control plane serves its own worker "${o.id}" to the ` +
        `other control planes, but it has no credential to check them: add an auth.worker_tokens ` +
        `entry "${o.id}=<token>" (the same on every control plane). The shared token and the ` +
        'signing key are not accepted for it: every remote worker holds those.',
    );
  }
  let tls: WorkerRpcServerOptions['tls'];
  if (tlsOn) {
    if (t.server_cert_file === '' || t.server_key_file === '') {
      throw new StacyError(
        'BAD_REQUEST',
        'worker.listen_addr with worker.rpc_tls.enabled on a control plane needs ' +
          'worker.rpc_tls.server_cert_file and worker.rpc_tls.server_key_file',
      );
    }
    tls = {
      cert: readPem('worker.rpc_tls.server_cert_file', t.server_cert_file),
      key: readPem('worker.rpc_tls.server_key_file', t.server_key_file),
      ...(t.client_ca_file === ''
        ? {}
        : { clientCa: readPem('worker.rpc_tls.client_ca_file', t.client_ca_file) }),
    };
  }
  const server = await startWorkerRpcServer({
    runtime: o.runtime,
    workerId: o.id,
    auth,
    host: addr.host,
    port: addr.port,
    ...(tls === undefined ? {} : { tls }),
    logger: o.logger,
    // No renewLease: worker.renew_lease is how a worker process reaches its control plane;
    // a control plane's own worker renews nothing over RPC.
    onShutdown: () =>
      o.logger.warn(
        { worker_id: o.id },
        'another control plane asked this control plane’s own worker to drain; it takes no new sandboxes until restarted',
      ),
  });
  const rpcUrl = advertisedRpcUrl({
    listenAddr: listen,
    advertiseAddr: w.advertise_addr,
    tls: tlsOn,
    boundPort: server.port,
  });
  o.logger.info(
    { worker_id: o.id, rpc_url: rpcUrl },
    'other control planes reach this control plane’s own worker at rpc_url',
  );
  return { server, rpcUrl };
}

/**
 * Re-reads the worker registry on an interval and hands every other worker's
 * record to `observe`, so workers that heartbeat to another control plane
 * (and RPC URLs that moved) are known here too. Returns stop.
 */
export function startRegistryRefresh(o: {
  store: Store;
  ownId: string;
  intervalMs: number;
  observe: (w: WorkerRecord) => void;
  logger: PinoLogger;
}): { refresh(): Promise<void>; stop(): void } {
  let running: Promise<void> | undefined;
  const refresh = (): Promise<void> => {
    running ??= (async () => {
      for (const w of await o.store.workers.list()) if (w.id !== o.ownId) o.observe(w);
    })().finally(() => {
      running = undefined;
    });
    return running;
  };
  const timer = setInterval(() => {
    refresh().catch((err: unknown) =>
      o.logger.debug({ err: (err as Error).message }, 'worker registry refresh failed'),
    );
  }, o.intervalMs);
  timer.unref();
  return { refresh, stop: () => clearInterval(timer) };
}
