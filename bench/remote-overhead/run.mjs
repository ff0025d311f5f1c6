#!/usr/bin/env node
// Benchmark: what a remote worker (`stacyvm worker`, worker RPC over HTTP) adds to exec, and how
// placement behaves with many workers and sandboxes.
//
// Starts the real built binary as child processes, all on 127.0.0.1, mock provider, SQLite in a
// fresh temp dir, and measures in one run:
//   1. exec `true`, sequential, on a sandbox placed on `local` (the control plane's own worker,
//      in-process) vs on a sandbox placed on a remote worker process on the same machine; local
//      and remote blocks interleaved in rounds, the order swapped every round;
//   2. streamed exec (`stream: true`): time from the request's start to the first stdout line
//      received by the client, local vs remote, interleaved the same way;
//   3. placement at scale: W worker processes with `defaults.max_sandboxes: P` each, W × P
//      sandboxes spawned with C requests in flight (latency, which worker got each), the
//      placement preflight `POST /sandboxes/admission` timed with 0 and with W × P live sandboxes,
//      all destroyed, then the workers stopped with SIGTERM (they drain and exit).
// 1–2 run against one control plane with one remote worker; 3 against a second control plane
// whose own worker offers no mock provider (see bench/README.md for why), so every spawn must be
// placed on a remote worker.
//
// Every loop is bounded by a count and by a wall-clock cap. Every process the bench starts is
// stopped at the end, on failure and on Ctrl-C (and SIGKILLed from a process 'exit' hook if the
// bench dies). Exit 0 whatever the numbers are (this is a measurement); exit 1 when a process
// does not start, a request fails, or the placement check cannot be made.
// See bench/README.md for how to read the output.

import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { makeClient } from '../lib/http.mjs';
import { bounded, now, repeat } from '../lib/loops.mjs';
import { cpuMeter, rssMb } from '../lib/proc.mjs';
import {
  BenchError,
  cleanEnv,
  phaseOf,
  requireBuild,
  startServer,
  stopServer,
  reportFailure,
  runBench,
} from '../lib/server.mjs';
import { diff, fmt, goDurationMs, ratio, round3, summarize } from '../lib/stats.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const TRACE_HOOK = join(HERE, 'trace-hook.mjs');
const TARGET_EXEC_RATIO = 1.3;
const CP_START_TIMEOUT_MS = 30_000;
/** Many workers start at once on a small machine: each is a Node process loading the server. */
const WORKER_START_TIMEOUT_MS = 90_000;
const CP_STOP_TIMEOUT_MS = 20_000;
/** A worker drains (shutdown_timeout below) and sends its last beats before it exits. */
const WORKER_SHUTDOWN_TIMEOUT = '10s';
const WORKER_STOP_TIMEOUT_MS = 30_000;
/** Any single API request taking longer than this fails the run. */
const CALL_TIMEOUT_MS = 60_000;
/** Cap on destroying the scale sandboxes, and on the cleanup of a failed run. */
const TEARDOWN_MS = 300_000;
const WORKER_READY_MSG = 'worker registered with the control plane';
const REMOTE_ID = 'r01';
const STREAM_COMMAND = 'echo first; sleep 0.2; echo second';
const STREAM_ROUND = 10;
const STREAM_WARMUP = 3;
const WORKER_START_CONCURRENCY = 4;
/** Cap on starting all workers of the placement phase (each start also has its own timeout). */
const WORKERS_START_CAP_MS = 300_000;
/** Share of --seconds per phase (caps, not durations). */
const SHARE = { exec: 0.3, stream: 0.2, spawn: 0.35, admission: 0.1 };

function usage() {
  return `usage: node bench/remote-overhead/run.mjs [options]

  --iterations N         exec samples per side, local and remote (default 300)
  --warmup N             exec warm-up per side (default 1000: a long-running server's figures)
  --round N              exec samples per side per round (default 30)
  --stream-iterations N  streamed exec samples per side (default 50)
  --workers W            worker processes in the placement phase; 0 skips it (default 20)
  --per-worker P         defaults.max_sandboxes of each of them; W x P sandboxes are spawned
                         (default 50)
  --quick                placement phase with 4 workers x 10 sandboxes (unless set explicitly)
  --concurrency C        requests in flight while spawning/destroying (default 8)
  --admission N          admission preflight samples, with 0 and with W x P live (default 200)
  --seconds S            wall-clock cap of all measuring (default 600); process start/stop and
                         teardown come on top
  --trace                load bench/remote-overhead/trace-hook.mjs into the control plane and the
                         exec worker and split the remote exec time into CP, RPC and worker parts
  --cpu-prof DIR         run the exec-phase control plane and worker with --cpu-prof into DIR
  -h, --help             this text

Run \`npm run build\` first; \`npm run bench:remote\` runs this script without building.`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      iterations: { type: 'string', default: '300' },
      warmup: { type: 'string', default: '1000' },
      round: { type: 'string', default: '30' },
      'stream-iterations': { type: 'string', default: '50' },
      workers: { type: 'string' },
      'per-worker': { type: 'string' },
      quick: { type: 'boolean', default: false },
      concurrency: { type: 'string', default: '8' },
      admission: { type: 'string', default: '200' },
      seconds: { type: 'string', default: '600' },
      trace: { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const number = (name, raw, { integer = true, allowZero = false } = {}) => {
    const n = Number(raw);
    if (
      !Number.isFinite(n) ||
      n < 0 ||
      (n === 0 && !allowZero) ||
      (integer && !Number.isInteger(n))
    ) {
      throw new BenchError(
        `--${name} must be a ${allowZero ? 'non-negative' : 'positive'} ${integer ? 'integer' : 'number'}`,
      );
    }
    return n;
  };
  const workers = number('workers', values.workers ?? (values.quick ? '4' : '20'), {
    allowZero: true,
  });
  if (workers > 99) throw new BenchError('--workers must be at most 99');
  return {
    iterations: number('iterations', values.iterations, { allowZero: true }),
    warmup: number('warmup', values.warmup, { allowZero: true }),
    round: number('round', values.round),
    streamIterations: number('stream-iterations', values['stream-iterations'], {
      allowZero: true,
    }),
    workers,
    perWorker: number('per-worker', values['per-worker'] ?? (values.quick ? '10' : '50')),
    quick: values.quick,
    concurrency: number('concurrency', values.concurrency),
    admission: number('admission', values.admission, { allowZero: true }),
    seconds: number('seconds', values.seconds, { integer: false }),
    trace: values.trace,
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']),
  };
}

// ---------------------------------------------------------------------------
// Run state: what must be undone whatever happens

const run = {
  /** Set by the first Ctrl-C / SIGTERM: loops stop at their next step. */
  stopping: false,
  root: undefined,
  /** Every stacyvm process started, in start order. */
  procs: [],
  /** Per control plane: its API client and the sandbox ids it made that are not deleted yet. */
  cps: [],
  engine: undefined,
  /** 1-minute load average at the start and at the end of the run. */
  loadStart: undefined,
  loadEnd: undefined,
  /** 130 after SIGINT, 143 after SIGTERM. */
  exitCode: undefined,
};

/** Ctrl-C or SIGTERM: loops stop at their next step, then everything is cleaned up. */
class Interrupted extends BenchError {}

function checkStop() {
  if (run.stopping) throw new Interrupted('interrupted');
}

const secret = () => randomBytes(24).toString('hex');

// ---------------------------------------------------------------------------
// Processes and their configuration
//
// Configuration goes into a file per process (JSON, which is YAML), mode 0600, passed with
// --config: no secret on any command line. Each process gets its own directory as cwd and HOME.

async function writeConfig(dir, config) {
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'stacyvm.yaml');
  await writeFile(path, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  return path;
}

function nodeArgsFor(opts, { profile }) {
  const args = [];
  if (opts.trace && profile) args.push('--import', TRACE_HOOK);
  if (opts.cpuProfDir !== undefined && profile) {
    args.push('--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`);
  }
  return args;
}

const traceCollector = (proc) => {
  proc.traces = [];
  return (rec, p) => {
    if (rec.msg === 'bench trace') p.traces.push(rec);
  };
};

/**
 * A control plane: `stacyvm serve --config … --port 0`. `providers` is its own (local) worker's
 * provider section; `workerTokens` the per-worker tokens it accepts (and sends to each worker).
 */
async function startControlPlane(opts, { name, providers, workerTokens, profile }) {
  const dir = join(run.root, name);
  const keys = { api: secret(), admin: secret() };
  const config = {
    server: { host: '127.0.0.1' },
    database: { driver: 'sqlite', path: join(dir, 'stacyvm.db') },
    providers,
    defaults: { max_sandboxes: 0 },
    auth: {
      api_key: keys.api,
      admin_api_key: keys.admin,
      admin_fallback_enabled: false,
      worker_tokens: Object.entries(workerTokens).map(([id, token]) => `${id}=${token}`),
    },
    logging: { level: 'info', format: 'json' },
  };
  const configPath = await writeConfig(dir, config);
  // DOCKER_HOST is dropped too: the control plane must use only the endpoint its config names.
  const env = cleanEnv(dir);
  delete env.DOCKER_HOST;
  const holder = {};
  const proc = await startServer({
    name: `control plane ${name}`,
    args: ['serve', '--config', configPath, '--port', '0'],
    nodeArgs: nodeArgsFor(opts, { profile }),
    cwd: dir,
    env,
    detached: true,
    startTimeoutMs: CP_START_TIMEOUT_MS,
    stopTimeoutMs: CP_STOP_TIMEOUT_MS,
    onRecord: (rec, p) => holder.collect?.(rec, p),
  });
  holder.collect = traceCollector(proc);
  run.procs.push(proc);
  const api = makeClient(proc.address, {
    connections: opts.concurrency,
    server: proc,
    timeoutMs: CALL_TIMEOUT_MS,
    headers: { 'x-api-key': keys.api },
  });
  const cp = { name, proc, api, adminKey: keys.admin, ids: new Set() };
  run.cps.push(cp);
  return cp;
}

/** A remote worker: `stacyvm worker --config …`, RPC on 127.0.0.1 port 0 (the OS picks a free one). */
async function startWorker(opts, { cp, id, token, maxSandboxes, profile }) {
  const dir = join(run.root, 'workers', id);
  const config = {
    worker: {
      id,
      control_plane_url: cp.proc.address,
      listen_addr: '127.0.0.1:0',
      heartbeat_interval: '1s',
      shutdown_timeout: WORKER_SHUTDOWN_TIMEOUT,
    },
    providers: {
      default: 'mock',
      // Each worker its own mock root: a worker that (re)joins removes runtimes it has no record
      // of, so two workers must never share one.
      mock: { enabled: true, base_dir: join(dir, 'mock') },
      docker: { enabled: false },
    },
    defaults: { max_sandboxes: maxSandboxes },
    auth: { worker_token: token },
    logging: { level: 'info', format: 'json' },
  };
  const configPath = await writeConfig(dir, config);
  const env = cleanEnv(dir);
  delete env.DOCKER_HOST;
  const holder = {};
  const proc = await startServer({
    name: `worker ${id}`,
    args: ['worker', '--config', configPath],
    nodeArgs: nodeArgsFor(opts, { profile }),
    cwd: dir,
    env,
    detached: true,
    ready: { msg: WORKER_READY_MSG, field: 'rpc_url' },
    startTimeoutMs: WORKER_START_TIMEOUT_MS,
    stopTimeoutMs: WORKER_STOP_TIMEOUT_MS,
    onRecord: (rec, p) => holder.collect?.(rec, p),
  });
  holder.collect = traceCollector(proc);
  proc.workerId = id;
  run.procs.push(proc);
  return proc;
}

/** Waits until the registry lists every id online, fresh, with an rpc_url (bounded). */
async function waitRegistered(cp, ids, capacity) {
  const deadline = now() + 30_000;
  for (;;) {
    checkStop();
    const list = await cp.api.call('setup', 'GET', '/api/v1/workers', undefined, 200);
    const byId = new Map(list.map((w) => [w.id, w]));
    const missing = ids.filter((id) => {
      const w = byId.get(id);
      return (
        w === undefined ||
        w.status !== 'online' ||
        w.stale === true ||
        typeof w.capacity?.rpc_url !== 'string' ||
        (capacity !== undefined && w.capacity?.max_sandboxes !== capacity)
      );
    });
    if (missing.length === 0) return list;
    if (now() > deadline) {
      throw new BenchError(`workers not registered online after 30 s: ${missing.join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * A stand-in Docker Engine on a unix socket, for the placement phase's control plane: it answers
 * the ping and the container list (empty) the Docker provider makes at start, and refuses
 * everything else with 501. So that control plane's own worker offers only `docker`, and the
 * `mock` spawns of the phase can only go to remote workers. It counts what it is asked.
 */
async function startStubEngine(socketPath) {
  const seen = { ping: 0, list: 0, other: [] };
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://engine').pathname.replace(/^\/v[0-9.]+/, '');
    if (path === '/_ping') {
      seen.ping++;
      res.writeHead(200, { 'content-type': 'text/plain', 'api-version': '1.41' });
      res.end('OK');
      return;
    }
    if (req.method === 'GET' && path === '/containers/json') {
      seen.list++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('[]');
      return;
    }
    seen.other.push(`${req.method} ${path}`);
    res.writeHead(501, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ message: 'bench stub engine: only ping and list are served' }));
  });
  await new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(socketPath, () => {
      server.off('error', rej);
      res();
    });
  });
  return {
    socketPath,
    seen,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

// ---------------------------------------------------------------------------
// API helpers

async function spawnSandbox(cp, phase, body = { provider: 'mock' }) {
  const sb = await cp.api.call(phase, 'POST', '/api/v1/sandboxes', body, 201);
  if (typeof sb?.id !== 'string') throw new BenchError('POST /api/v1/sandboxes gave no id');
  cp.ids.add(sb.id);
  return sb;
}

async function destroySandbox(cp, phase, id) {
  await cp.api.call(phase, 'DELETE', `/api/v1/sandboxes/${encodeURIComponent(id)}`, undefined, 200);
  cp.ids.delete(id);
}

/** Removes `local` from the registry (admin API); 404 when it is not there is fine. */
async function deleteLocalFromRegistry(cp) {
  const res = await cp.api
    .request('setup', 'DELETE', '/api/v1/admin/workers/local', undefined, 200, {
      headers: { 'x-admin-api-key': cp.adminKey },
    })
    .catch((err) => {
      if (err instanceof BenchError && / answered 404,/.test(err.message)) return undefined;
      throw err;
    });
  return res;
}

/**
 * A sandbox on the remote worker of the exec phase. The control plane prefers its own `local`
 * worker whenever that is registered and fresh, so `local` is removed from the registry right
 * before the spawn (the smoke flow of the remote-worker guide does the same). `local`
 * re-registers at the control plane's next local heartbeat; a spawn that loses that race lands on
 * `local`, is destroyed, and is tried again (at most 5 times).
 */
async function spawnRemote(cp, workerId) {
  for (let attempt = 0; attempt < 5; attempt++) {
    await deleteLocalFromRegistry(cp);
    const sb = await spawnSandbox(cp, 'setup');
    if (sb.worker_id === workerId) return sb;
    await destroySandbox(cp, 'setup', sb.id);
  }
  throw new BenchError(`could not place a sandbox on worker ${workerId} in 5 attempts`);
}

async function execTrue(cp, phase, id) {
  const r = await cp.api.call(
    phase,
    'POST',
    `/api/v1/sandboxes/${encodeURIComponent(id)}/exec`,
    { command: 'true' },
    200,
  );
  if (r?.exit_code !== 0) throw new BenchError(`exec true in ${id} gave exit_code ${r?.exit_code}`);
  return goDurationMs(r.duration);
}

/**
 * One streamed exec of STREAM_COMMAND: ms from the request's start to the first stdout line
 * received, and to the exit line. Checks the output and the exit code.
 */
async function execStreamed(cp, phase, id) {
  const t0 = now();
  let first;
  let exitAt;
  let exitCode;
  let stdout = '';
  await cp.api.streamNdjson(
    phase,
    'POST',
    `/api/v1/sandboxes/${encodeURIComponent(id)}/exec`,
    { command: STREAM_COMMAND, stream: true },
    (msg, at) => {
      if (msg.stream === 'stdout') {
        stdout += msg.data;
        if (first === undefined && typeof msg.data === 'string' && msg.data.length > 0) first = at;
      } else if (msg.stream === 'exit') {
        exitAt = at;
        exitCode = msg.exit_code;
      } else if (msg.stream === 'error') {
        throw new BenchError(`streamed exec in ${id} failed: ${msg.code} ${msg.message}`);
      }
    },
    t0,
  );
  if (exitCode !== 0 || stdout !== 'first\nsecond\n' || first === undefined) {
    throw new BenchError(
      `streamed exec in ${id} gave exit_code ${exitCode}, stdout ${JSON.stringify(stdout)}`,
    );
  }
  return { first, total: exitAt };
}

async function admission(cp, phase) {
  const d = await cp.api.call(
    phase,
    'POST',
    '/api/v1/sandboxes/admission',
    { provider: 'mock' },
    200,
  );
  if (typeof d?.allowed !== 'boolean') {
    throw new BenchError(`admission answered without "allowed": ${JSON.stringify(d)}`);
  }
  return d;
}

// ---------------------------------------------------------------------------
// Phases 1 and 2: exec on local vs on a remote worker

/** Wall-clock time (epoch ms, sub-ms): the blocks' windows, to attribute trace lines. */
const epoch = () => performance.timeOrigin + performance.now();
/** The monotonic clock in µs, the clock of V8's CPU profile timestamps (for --cpu-prof). */
const monoUs = () => Number(process.hrtime.bigint() / 1000n);

function cpuMeters(pids) {
  const meters = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMeter(pid)]));
  return {
    async around(fn) {
      // Nested so every meter spans the same stretch.
      const wrap = Object.values(meters).reduceRight((inner, m) => () => m.around(inner), fn);
      await wrap();
    },
    per(ops) {
      return Object.fromEntries(Object.entries(meters).map(([k, m]) => [k, m.per(ops)]));
    },
  };
}

async function measureExec({ cp, worker, ids, opts, budgetMs }) {
  const deadline = now() + budgetMs;
  const pids = { cp: cp.proc.child.pid, worker: worker.child.pid };
  const sides = {
    local: { phase: 'xl', id: ids.local, samples: [], provider: [], windows: [], mono: [] },
    remote: { phase: 'xr', id: ids.remote, samples: [], provider: [], windows: [], mono: [] },
  };
  for (const s of Object.values(sides)) s.cpu = cpuMeters(pids);

  // Warm-up, alternating single execs: JIT (it takes ~1000 requests to settle), both keep-alive
  // connections, the store's pages. Capped by time like every phase.
  const warmDeadline = now() + budgetMs * 0.1;
  await repeat(
    opts.warmup,
    warmDeadline,
    async () => {
      await execTrue(cp, 'warm', ids.local);
      await execTrue(cp, 'warm', ids.remote);
    },
    checkStop,
  );

  const order = ['local', 'remote'];
  let rounds = 0;
  while (now() < deadline && order.some((k) => sides[k].samples.length < opts.iterations)) {
    const thisRound = rounds % 2 === 0 ? order : [...order].reverse();
    for (const key of thisRound) {
      const side = sides[key];
      const todo = Math.min(opts.round, opts.iterations - side.samples.length);
      const start = epoch();
      const monoStart = monoUs();
      await side.cpu.around(() =>
        repeat(
          todo,
          deadline,
          async () => {
            const t0 = now();
            const d = await execTrue(cp, side.phase, side.id);
            side.samples.push(now() - t0);
            if (d !== undefined) side.provider.push(d);
          },
          checkStop,
        ),
      );
      side.windows.push([start, epoch()]);
      side.mono.push([monoStart, monoUs()]);
    }
    rounds++;
  }
  const out = { rounds };
  for (const [k, s] of Object.entries(sides)) {
    out[k] = {
      mono: s.mono,
      client: summarize(s.samples),
      provider: summarize(s.provider),
      cpu_ms_per_exec: s.cpu.per(s.samples.length),
      windows: s.windows,
      // Per request, in order (for --trace's pairing); not part of the JSON output.
      raw: { client: s.samples, provider: s.provider },
    };
  }
  out.rss_mb = { cp: rssMb(pids.cp) ?? null, worker: rssMb(pids.worker) ?? null };
  return out;
}

async function measureStream({ cp, ids, opts, budgetMs }) {
  const deadline = now() + budgetMs;
  const sides = {
    local: { phase: 'sl', id: ids.local, first: [], total: [], windows: [] },
    remote: { phase: 'sr', id: ids.remote, first: [], total: [], windows: [] },
  };
  await repeat(
    STREAM_WARMUP,
    now() + budgetMs * 0.1,
    async () => {
      await execStreamed(cp, 'warm', ids.local);
      await execStreamed(cp, 'warm', ids.remote);
    },
    checkStop,
  );
  const order = ['local', 'remote'];
  let rounds = 0;
  while (now() < deadline && order.some((k) => sides[k].first.length < opts.streamIterations)) {
    const thisRound = rounds % 2 === 0 ? order : [...order].reverse();
    for (const key of thisRound) {
      const side = sides[key];
      const todo = Math.min(STREAM_ROUND, opts.streamIterations - side.first.length);
      const start = epoch();
      await repeat(
        todo,
        deadline,
        async () => {
          const r = await execStreamed(cp, side.phase, side.id);
          side.first.push(r.first);
          side.total.push(r.total);
        },
        checkStop,
      );
      side.windows.push([start, epoch()]);
    }
    rounds++;
  }
  const out = { rounds };
  for (const [k, s] of Object.entries(sides)) {
    out[k] = { first: summarize(s.first), total: summarize(s.total), windows: s.windows };
  }
  return out;
}

/**
 * With --trace: the trace lines of a process that started inside a side's blocks, of one kind
 * and path, in start order.
 */
function traced(proc, windows, kind, path) {
  const inside = (t) => windows.some(([a, b]) => t >= a && t <= b);
  return (proc.traces ?? [])
    .filter((r) => r.kind === kind && r.path === path && inside(r.at))
    .sort((a, b) => a.at - b.at);
}

/**
 * With --trace: splits each measured exec into its parts. The execs are sequential, so the n-th
 * API request of a side, the n-th RPC call the control plane made in the remote blocks and the
 * n-th RPC request the worker served there are the same exec; the parts are computed per exec
 * and then summarized (p50 of the differences, not differences of p50s). Returns undefined when
 * the counts do not line up.
 */
function traceSplit(cpProc, worker, exec, ids) {
  const local = exec.local.raw;
  const remote = exec.remote.raw;
  const apiLocal = traced(
    cpProc,
    exec.local.windows,
    'server',
    `/api/v1/sandboxes/${ids.local}/exec`,
  );
  const apiRemote = traced(
    cpProc,
    exec.remote.windows,
    'server',
    `/api/v1/sandboxes/${ids.remote}/exec`,
  );
  const rpc = traced(cpProc, exec.remote.windows, 'client', '/rpc');
  const served = traced(worker, exec.remote.windows, 'server', '/rpc');
  const counts = {
    local: local.client.length,
    local_provider: local.provider.length,
    api_local: apiLocal.length,
    remote: remote.client.length,
    remote_provider: remote.provider.length,
    api_remote: apiRemote.length,
    rpc_calls: rpc.length,
    rpc_served: served.length,
  };
  const n = remote.client.length;
  const m = local.client.length;
  if (
    [remote.provider.length, apiRemote.length, rpc.length, served.length].some((c) => c !== n) ||
    [local.provider.length, apiLocal.length].some((c) => c !== m)
  ) {
    return { counts, aligned: false };
  }
  const per = (len, f) => summarize(Array.from({ length: len }, (_, i) => f(i)));
  return {
    counts,
    aligned: true,
    local: {
      // client → CP API and back: HTTP, Fastify's parsing and serialization, the bench's client
      http_client_ms: per(m, (i) => local.client[i] - apiLocal[i].end_ms),
      // CP handler (routing, store, events) plus the provider's work outside its own timer
      cp_outside_provider_ms: per(m, (i) => apiLocal[i].end_ms - local.provider[i]),
      provider_ms: per(m, (i) => local.provider[i]),
    },
    remote: {
      http_client_ms: per(n, (i) => remote.client[i] - apiRemote[i].end_ms),
      // CP handler outside its RPC call
      cp_outside_rpc_ms: per(n, (i) => apiRemote[i].end_ms - rpc[i].ms),
      // the RPC call minus the worker's handler: undici, both sockets, HTTP parsing both ways
      rpc_transport_ms: per(n, (i) => rpc[i].ms - served[i].end_ms),
      // worker handler (auth, envelope, runtime) plus the provider's work outside its own timer
      worker_outside_provider_ms: per(n, (i) => served[i].end_ms - remote.provider[i]),
      provider_ms: per(n, (i) => remote.provider[i]),
      // for reference: the whole RPC call, and the worker's end() → 'finish' delay
      rpc_call_ms: per(n, (i) => rpc[i].ms),
      worker_finish_after_end_ms: per(n, (i) => served[i].ms - served[i].end_ms),
    },
  };
}

async function execPhases(opts) {
  const token = secret();
  const cp = await startControlPlane(opts, {
    name: 'cp-exec',
    providers: {
      default: 'mock',
      mock: { enabled: true, base_dir: join(run.root, 'cp-exec', 'mock') },
      docker: { enabled: false },
    },
    workerTokens: { [REMOTE_ID]: token },
    profile: true,
  });
  const worker = await startWorker(opts, {
    cp,
    id: REMOTE_ID,
    token,
    maxSandboxes: 0,
    profile: true,
  });
  await waitRegistered(cp, [REMOTE_ID]);

  const local = await spawnSandbox(cp, 'setup');
  if (local.worker_id !== 'local') {
    throw new BenchError(`the first sandbox went to ${local.worker_id}, expected local`);
  }
  const remote = await spawnRemote(cp, REMOTE_ID);
  const ids = { local: local.id, remote: remote.id };
  const budgetMs = opts.seconds * 1000;

  const exec =
    opts.iterations > 0
      ? await measureExec({ cp, worker, ids, opts, budgetMs: budgetMs * SHARE.exec })
      : undefined;
  const stream =
    opts.streamIterations > 0
      ? await measureStream({ cp, ids, opts, budgetMs: budgetMs * SHARE.stream })
      : undefined;

  await destroySandbox(cp, 'setup', ids.local);
  await destroySandbox(cp, 'setup', ids.remote);
  const workerStop = await stopServer(worker);
  await stopServer(cp.proc);
  if (opts.cpuProfDir !== undefined && exec !== undefined) {
    // What profile-split.mjs needs to cut the two profiles into local and remote blocks.
    await mkdir(opts.cpuProfDir, { recursive: true });
    await writeFile(
      join(opts.cpuProfDir, 'windows.json'),
      `${JSON.stringify({
        cp_pid: cp.proc.child.pid,
        worker_pid: worker.child.pid,
        clock: 'monotonic µs (CLOCK_MONOTONIC, as V8 profile timestamps)',
        local: { execs: exec.local.client.n, windows: exec.local.mono },
        remote: { execs: exec.remote.client.n, windows: exec.remote.mono },
      })}\n`,
    );
  }
  await cp.api.pool.close().catch(() => undefined);

  const server = (phase) => summarize(phaseOf(cp.proc, phase).responseMs);
  const result = { exec, stream, worker_stop: workerStop, worker_exit_code: worker.exitCode };
  if (exec !== undefined) {
    exec.local.server = server('xl');
    exec.remote.server = server('xr');
  }
  if (opts.trace && exec !== undefined) result.trace = traceSplit(cp.proc, worker, exec, ids);
  return result;
}

// ---------------------------------------------------------------------------
// Phase 3: placement at scale

async function scalePhase(opts) {
  const budgetMs = opts.seconds * 1000;
  const ids = Array.from({ length: opts.workers }, (_, i) => `w${String(i + 1).padStart(2, '0')}`);
  const tokens = Object.fromEntries(ids.map((id) => [id, secret()]));
  run.engine = await startStubEngine(join(run.root, 'engine.sock'));
  const cp = await startControlPlane(opts, {
    name: 'cp-scale',
    providers: {
      default: 'docker',
      mock: { enabled: false },
      docker: { enabled: true, socket: run.engine.socketPath, orphans: 'adopt' },
    },
    workerTokens: tokens,
    profile: false,
  });

  const t0 = now();
  const workers = [];
  const started = await bounded(
    ids.length,
    WORKER_START_CONCURRENCY,
    now() + WORKERS_START_CAP_MS,
    async (i) => {
      workers.push(
        await startWorker(opts, {
          cp,
          id: ids[i],
          token: tokens[ids[i]],
          maxSandboxes: opts.perWorker,
          profile: false,
        }),
      );
    },
    { stopped: () => run.stopping },
  );
  checkStop();
  if (started.errors.length > 0) throw started.errors[0];
  if (workers.length !== ids.length) {
    throw new BenchError(
      `only ${workers.length} of ${ids.length} workers started within ${WORKERS_START_CAP_MS} ms`,
    );
  }
  const registry = await waitRegistered(cp, ids, opts.perWorker);
  const startAllS = (now() - t0) / 1000;
  const local = registry.find((w) => w.id === 'local');

  // The preflight with W workers and nothing alive yet.
  const admissionEmpty = [];
  await repeat(
    opts.admission,
    now() + budgetMs * SHARE.admission * 0.5,
    async () => {
      const a = now();
      await admission(cp, 'adm0');
      admissionEmpty.push(now() - a);
    },
    checkStop,
  );

  const total = opts.workers * opts.perWorker;
  const spawnMs = [];
  const placedOn = new Map();
  const t1 = now();
  const spawned = await bounded(
    total,
    opts.concurrency,
    now() + budgetMs * SHARE.spawn,
    async () => {
      const a = now();
      const sb = await spawnSandbox(cp, 'spawn');
      spawnMs.push(now() - a);
      placedOn.set(sb.worker_id, (placedOn.get(sb.worker_id) ?? 0) + 1);
    },
    { stopped: () => run.stopping },
  );
  const spawnAllS = (now() - t1) / 1000;
  checkStop();
  if (spawned.errors.length > 0) throw spawned.errors[0];

  // The registry's view agrees with the answers? Count the live list by worker too.
  const list = await cp.api.call('setup', 'GET', '/api/v1/sandboxes', undefined, 200);
  const listed = new Map();
  for (const sb of list) listed.set(sb.worker_id, (listed.get(sb.worker_id) ?? 0) + 1);
  const perWorker = ids.map((id) => placedOn.get(id) ?? 0);
  const distribution = {
    expected_per_worker: opts.perWorker,
    spawned: spawned.done,
    min: Math.min(...perWorker),
    max: Math.max(...perWorker),
    on_local: placedOn.get('local') ?? 0,
    elsewhere: [...placedOn.keys()].filter((k) => k !== 'local' && !ids.includes(k)),
    listed_live: list.length,
    listed_matches: ids.every((id) => (listed.get(id) ?? 0) === (placedOn.get(id) ?? 0)),
  };
  distribution.exact =
    spawned.done === total &&
    distribution.min === opts.perWorker &&
    distribution.max === opts.perWorker &&
    distribution.on_local === 0 &&
    distribution.elsewhere.length === 0 &&
    distribution.listed_live === total &&
    distribution.listed_matches;

  // The preflight with W workers and W × P live sandboxes (every worker at its cap now).
  const admissionFull = [];
  let decision;
  await repeat(
    opts.admission,
    now() + budgetMs * SHARE.admission * 0.5,
    async () => {
      const a = now();
      decision = await admission(cp, 'adm');
      admissionFull.push(now() - a);
    },
    checkStop,
  );

  // Destroying is cleanup as much as a measurement: its own cap, not --seconds.
  const destroyMs = [];
  const toDestroy = [...cp.ids];
  const t2 = now();
  const destroyed = await bounded(
    toDestroy.length,
    opts.concurrency,
    now() + TEARDOWN_MS,
    async (i) => {
      const a = now();
      await destroySandbox(cp, 'destroy', toDestroy[i]);
      destroyMs.push(now() - a);
    },
    { stopOnError: false },
  );
  const destroyAllS = (now() - t2) / 1000;
  if (destroyed.errors.length > 0) throw destroyed.errors[0];
  const left = await cp.api.call('setup', 'GET', '/api/v1/sandboxes', undefined, 200);

  // SIGTERM to all workers at once: each drains (nothing in flight), beats draining and offline,
  // and exits.
  const stops = await Promise.all(workers.map((w) => stopServer(w)));
  const registryAfter = await cp.api.call('setup', 'GET', '/api/v1/workers', undefined, 200);
  const cpRss = rssMb(cp.proc.child.pid) ?? null;
  await stopServer(cp.proc);
  await cp.api.pool.close().catch(() => undefined);
  await run.engine.close();

  const server = (phase) => summarize(phaseOf(cp.proc, phase).responseMs);
  return {
    workers: opts.workers,
    per_worker: opts.perWorker,
    concurrency: opts.concurrency,
    local_worker: {
      providers: local?.providers ?? null,
      rejected_as: decision?.rejected_workers?.local ?? null,
    },
    workers_start_s: round3(startAllS),
    spawn_all_s: round3(spawnAllS),
    spawns_per_s: round3(spawnAllS > 0 ? spawned.done / spawnAllS : NaN),
    spawn_ms: summarize(spawnMs),
    server_spawn_ms: server('spawn'),
    distribution,
    admission_empty_ms: summarize(admissionEmpty),
    server_admission_empty_ms: server('adm0'),
    admission_full_ms: summarize(admissionFull),
    server_admission_full_ms: server('adm'),
    decision_full:
      decision === undefined
        ? null
        : {
            allowed: decision.allowed,
            reason: decision.reason ?? null,
            active_sandboxes: decision.active_sandboxes,
            eligible: decision.eligible_workers.length,
            rejected: Object.keys(decision.rejected_workers ?? {}).length,
          },
    destroy_all_s: round3(destroyAllS),
    destroy_ms: summarize(destroyMs),
    server_destroy_ms: server('destroy'),
    live_after_destroy: left.length,
    worker_stop_ms: summarize(stops.map((s) => s.ms)),
    workers_exited_0: workers.filter((w) => w.exitCode === 0).length,
    workers_killed: stops.filter((s) => !s.graceful).length,
    workers_offline_after: registryAfter.filter((w) => ids.includes(w.id) && w.status === 'offline')
      .length,
    cp_rss_mb: cpRss,
    stub_engine: {
      ping: run.engine.seen.ping,
      list: run.engine.seen.list,
      other: run.engine.seen.other.length,
    },
  };
}

// ---------------------------------------------------------------------------
// Output

function row(cells, widths) {
  return cells
    .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
    .join('  ');
}

function printReport(r, opts) {
  const lines = [];
  const w = [46, 5, 8, 8, 8, 8];
  const lat = (label, s) => row([label, s.n, fmt(s.p50), fmt(s.p90), fmt(s.p99), fmt(s.mean)], w);
  const head = (label) => row([label, 'n', 'p50', 'p90', 'p99', 'mean'], w);
  lines.push('');
  lines.push(
    `remote-overhead  node ${process.version}  ${process.platform}/${process.arch}  ${cpus().length} cpus  ` +
      `load ${fmt(run.loadStart)} → ${fmt(run.loadEnd)}` +
      (r.exec === undefined ? '' : `  exec rounds ${r.exec.rounds} x ${opts.round}`) +
      (r.scale === undefined ? '' : `  scale ${r.scale.workers} x ${r.scale.per_worker}`),
  );
  const x = r.exec;
  if (x !== undefined) {
    lines.push('');
    lines.push(head('exec `true` (ms, client-side)'));
    lines.push(lat("local  (control plane's own worker)", x.local.client));
    lines.push(lat(`remote (worker ${REMOTE_ID}, RPC over 127.0.0.1)`, x.remote.client));
    lines.push(lat('  server: CP handling, local', x.local.server));
    lines.push(lat('  server: CP handling, remote', x.remote.server));
    lines.push(lat('  provider duration, local (in the CP)', x.local.provider));
    lines.push(lat('  provider duration, remote (in the worker)', x.remote.provider));
    lines.push(
      `ratio remote / local:  p50 ${fmt(r.ratios.exec_p50)}x   p90 ${fmt(r.ratios.exec_p90)}x   ` +
        `p99 ${fmt(r.ratios.exec_p99)}x   (p50 gap ${fmt(r.split.gap_p50_ms)} ms)`,
    );
    lines.push(
      `gap split (p50): CP handling remote − local ${fmt(r.split.cp_handling_gap_ms)} ms, ` +
        `provider remote − local ${fmt(r.split.provider_gap_ms)} ms, ` +
        `HTTP+client remote − local ${fmt(r.split.http_gap_ms)} ms`,
    );
    const c = (s) => `CP ${fmt(s.cpu_ms_per_exec.cp)} + worker ${fmt(s.cpu_ms_per_exec.worker)}`;
    lines.push(
      `CPU per exec (ms): local ${c(x.local)} | remote ${c(x.remote)}   ` +
        `RSS MB: CP ${x.rss_mb.cp ?? '-'}, worker ${x.rss_mb.worker ?? '-'}`,
    );
  }
  const t = r.trace;
  if (t !== undefined && !t.aligned) {
    lines.push('');
    lines.push(
      `--trace: the trace lines do not line up with the samples: ${JSON.stringify(t.counts)}`,
    );
  } else if (t !== undefined) {
    lines.push('');
    lines.push(head('--trace: each exec split (ms, per-exec parts)'));
    lines.push(lat('local: client ↔ CP HTTP', t.local.http_client_ms));
    lines.push(lat('local: CP handler outside the provider timer', t.local.cp_outside_provider_ms));
    lines.push(lat('local: provider duration', t.local.provider_ms));
    lines.push(lat('remote: client ↔ CP HTTP', t.remote.http_client_ms));
    lines.push(lat('remote: CP handler outside its RPC call', t.remote.cp_outside_rpc_ms));
    lines.push(lat('remote: RPC transport (call − worker handler)', t.remote.rpc_transport_ms));
    lines.push(
      lat('remote: worker handler outside provider timer', t.remote.worker_outside_provider_ms),
    );
    lines.push(lat('remote: provider duration (in the worker)', t.remote.provider_ms));
    lines.push(lat('  remote: whole RPC call (CP undici)', t.remote.rpc_call_ms));
    lines.push(lat("  remote: worker end() → 'finish'", t.remote.worker_finish_after_end_ms));
  }
  const s = r.stream;
  if (s !== undefined) {
    lines.push('');
    lines.push(head(`streamed exec (ms from request start)`));
    lines.push(lat('first stdout line, local', s.local.first));
    lines.push(lat('first stdout line, remote', s.remote.first));
    lines.push(lat('  exit line, local', s.local.total));
    lines.push(lat('  exit line, remote', s.remote.total));
    lines.push(
      `ratio remote / local first line: p50 ${fmt(r.ratios.stream_first_p50)}x   p90 ${fmt(r.ratios.stream_first_p90)}x ` +
        `  (p50 gap ${fmt(r.split.stream_first_gap_p50_ms)} ms)`,
    );
  }
  const sc = r.scale;
  if (sc !== undefined) {
    const d = sc.distribution;
    lines.push('');
    lines.push(
      `placement: ${sc.workers} workers x ${sc.per_worker} sandboxes (max_sandboxes ${sc.per_worker} each), ` +
        `${sc.concurrency} in flight; workers up in ${fmt(sc.workers_start_s, 1)} s`,
    );
    lines.push(head('placement phase (ms, client-side)'));
    lines.push(
      lat(
        `spawn (${d.spawned} in ${fmt(sc.spawn_all_s, 1)} s, ${fmt(sc.spawns_per_s, 1)}/s)`,
        sc.spawn_ms,
      ),
    );
    lines.push(lat('  server: spawn handling', sc.server_spawn_ms));
    lines.push(lat('admission preflight, 0 live', sc.admission_empty_ms));
    lines.push(lat('  server: admission handling, 0 live', sc.server_admission_empty_ms));
    lines.push(lat(`admission preflight, ${d.spawned} live`, sc.admission_full_ms));
    lines.push(lat(`  server: admission handling, ${d.spawned} live`, sc.server_admission_full_ms));
    lines.push(lat(`destroy (all in ${fmt(sc.destroy_all_s, 1)} s)`, sc.destroy_ms));
    lines.push(
      `distribution: min ${d.min} / max ${d.max} per worker (expected ${d.expected_per_worker} each), ` +
        `${d.on_local} on local, listed live ${d.listed_live}${d.listed_matches ? ' (matches)' : ' (DIFFERS)'}`,
    );
    const dec = sc.decision_full;
    if (dec !== null) {
      lines.push(
        `admission at ${dec.active_sandboxes} live: allowed=${dec.allowed} reason=${dec.reason ?? '-'} ` +
          `eligible ${dec.eligible}, rejected ${dec.rejected} (local: ${sc.local_worker.rejected_as ?? '-'})`,
      );
    }
    lines.push(
      `workers stopped (SIGTERM → exit): p50 ${fmt(sc.worker_stop_ms.p50, 0)} ms, max ${fmt(sc.worker_stop_ms.max, 0)} ms; ` +
        `${sc.workers_exited_0}/${sc.workers} exit code 0, ${sc.workers_killed} killed, ` +
        `${sc.workers_offline_after} offline in the registry; live sandboxes left ${sc.live_after_destroy}`,
    );
    lines.push(
      `control plane's own worker offers ${JSON.stringify(sc.local_worker.providers)}; stub engine asked: ` +
        `ping ${sc.stub_engine.ping}, list ${sc.stub_engine.list}, anything else ${sc.stub_engine.other}`,
    );
  }
  lines.push('');
  for (const tg of Object.values(r.targets)) {
    lines.push(
      `${tg.pass ? 'PASS' : 'MISS'}  ${tg.label}: ${tg.value === null ? '-' : typeof tg.value === 'number' ? fmt(tg.value) : tg.value} (target ${tg.op} ${tg.target})`,
    );
  }
  lines.push('');
  process.stdout.write(lines.join('\n') + '\n');
  process.stdout.write(JSON.stringify(r.json) + '\n');
}

function buildResult(opts, phases, scale) {
  const x = phases?.exec;
  const s = phases?.stream;
  const ratios = {
    exec_p50: ratio(x?.remote.client.p50, x?.local.client.p50),
    exec_p90: ratio(x?.remote.client.p90, x?.local.client.p90),
    exec_p99: ratio(x?.remote.client.p99, x?.local.client.p99),
    stream_first_p50: ratio(s?.remote.first.p50, s?.local.first.p50),
    stream_first_p90: ratio(s?.remote.first.p90, s?.local.first.p90),
  };
  const httpPart = (side) => diff(side?.client.p50, side?.server.p50);
  const split = {
    gap_p50_ms: diff(x?.remote.client.p50, x?.local.client.p50),
    cp_handling_gap_ms: diff(x?.remote.server.p50, x?.local.server.p50),
    provider_gap_ms: diff(x?.remote.provider.p50, x?.local.provider.p50),
    http_gap_ms: diff(httpPart(x?.remote), httpPart(x?.local)),
    stream_first_gap_p50_ms: diff(s?.remote.first.p50, s?.local.first.p50),
  };
  const t = phases?.trace;
  const targets = {};
  if (x !== undefined) {
    targets.exec_p50_ratio = {
      label: 'exec p50 remote / local',
      op: '<=',
      target: TARGET_EXEC_RATIO,
      value: ratios.exec_p50,
      pass: ratios.exec_p50 !== null && ratios.exec_p50 <= TARGET_EXEC_RATIO,
    };
  }
  if (scale !== undefined) {
    targets.placement = {
      label: `every worker holds exactly ${scale.per_worker}, none on local`,
      op: '=',
      target: `${scale.workers} x ${scale.per_worker}`,
      value: `${scale.distribution.min}..${scale.distribution.max} x ${scale.workers}`,
      pass: scale.distribution.exact,
    };
  }
  const json = {
    bench: 'remote-overhead',
    node: process.version,
    platform: `${process.platform}/${process.arch}`,
    cpus: cpus().length,
    // 1-minute load average before and after: other work on the machine moves every figure.
    loadavg_1m: [round3(run.loadStart), round3(run.loadEnd)],
    iterations: opts.iterations,
    stream_iterations: opts.streamIterations,
    workers: opts.workers,
    per_worker: opts.perWorker,
    concurrency: opts.concurrency,
    exec_rounds: x?.rounds ?? null,
    exec_worker_stop:
      phases === undefined
        ? null
        : { ms: round3(phases.worker_stop.ms), exit_code: phases.worker_exit_code },
    exec_local_ms: x?.local.client ?? null,
    exec_remote_ms: x?.remote.client ?? null,
    server_exec_local_ms: x?.local.server ?? null,
    server_exec_remote_ms: x?.remote.server ?? null,
    provider_exec_local_ms: x?.local.provider ?? null,
    provider_exec_remote_ms: x?.remote.provider ?? null,
    cpu_ms_per_exec:
      x === undefined ? null : { local: x.local.cpu_ms_per_exec, remote: x.remote.cpu_ms_per_exec },
    rss_mb: x?.rss_mb ?? null,
    stream_first_local_ms: s?.local.first ?? null,
    stream_first_remote_ms: s?.remote.first ?? null,
    stream_total_local_ms: s?.local.total ?? null,
    stream_total_remote_ms: s?.remote.total ?? null,
    ratios,
    split,
    trace: t ?? null,
    scale: scale ?? null,
    targets: Object.fromEntries(
      Object.entries(targets).map(([k, tg]) => [
        k,
        { value: tg.value, target: tg.target, result: tg.pass ? 'PASS' : 'MISS' },
      ]),
    ),
  };
  return {
    exec: x,
    stream: s,
    trace: t,
    scale,
    ratios,
    split,
    targets,
    json,
  };
}

// ---------------------------------------------------------------------------
// Teardown: sandboxes through the API while their control plane is up, then workers, then
// control planes, the stub engine and the temp dir. Idempotent.

let teardownDone;
function teardown() {
  teardownDone ??= (async () => {
    const deadline = now() + TEARDOWN_MS;
    for (const cp of run.cps) {
      if (cp.proc.exited || cp.ids.size === 0) continue;
      const ids = [...cp.ids];
      await bounded(ids.length, 8, deadline, (i) => destroySandbox(cp, 'cleanup', ids[i]), {
        stopOnError: false,
      });
    }
    // Workers first (they send their last beats to a control plane still up), then the CPs.
    const workers = run.procs.filter((p) => p.workerId !== undefined);
    await Promise.all(workers.map((p) => stopServer(p)));
    await Promise.all(run.procs.map((p) => stopServer(p)));
    for (const cp of run.cps) await cp.api.pool.close().catch(() => undefined);
    await run.engine?.close().catch(() => undefined);
    if (run.root !== undefined) await rm(run.root, { recursive: true, force: true });
  })();
  return teardownDone;
}

// ---------------------------------------------------------------------------

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  requireBuild();
  run.root = await mkdtemp(join(tmpdir(), 'stacyvm-bench-remote-'));
  run.loadStart = loadavg()[0];

  // First Ctrl-C: loops stop at their next step, then everything is stopped and removed.
  // Second one (or the first one hanging): SIGKILL every process (the 'exit' hook) at once.
  let signals = 0;
  const onSignal = (sig) => {
    signals++;
    const code = sig === 'SIGINT' ? 130 : 143;
    run.exitCode = code;
    if (signals === 1) {
      run.stopping = true;
      process.stderr.write(`remote-overhead: ${sig}: stopping every process (again to force)\n`);
      setTimeout(() => process.exit(code), CALL_TIMEOUT_MS + TEARDOWN_MS).unref();
      return;
    }
    process.exit(code);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const phases =
      opts.iterations > 0 || opts.streamIterations > 0 ? await execPhases(opts) : undefined;
    checkStop();
    const scale = opts.workers > 0 ? await scalePhase(opts) : undefined;
    await teardown();
    run.loadEnd = loadavg()[0];
    const result = buildResult(opts, phases, scale);
    printReport(result, opts);
    if (opts.cpuProfDir !== undefined) {
      process.stdout.write(`CPU profiles of the exec-phase CP and worker in ${opts.cpuProfDir}\n`);
    }
    if (scale !== undefined && scale.spawn_ms.n !== opts.workers * opts.perWorker) {
      throw new BenchError(
        `only ${scale.spawn_ms.n} of ${opts.workers * opts.perWorker} spawns ran within the time cap`,
      );
    }
  } catch (err) {
    process.exitCode = 1;
    if (!(err instanceof Interrupted)) {
      // The control planes' last lines (a failed request is explained there), and the last
      // process started if that is a worker.
      const last = run.procs[run.procs.length - 1];
      reportFailure('remote-overhead', err, [
        ...run.cps.map((cp) => cp.proc),
        ...(last?.workerId === undefined ? [] : [last]),
      ]);
    }
  } finally {
    await teardown();
    if (run.stopping) process.exitCode = run.exitCode;
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await runBench('remote-overhead', main);
