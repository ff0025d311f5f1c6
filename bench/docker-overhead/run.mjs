#!/usr/bin/env node
// Benchmark: what StacyVM adds on top of the Docker Engine, and how many sandboxes fit at once.
//
// Starts the real built server (`stacyvm serve --port 0`, Docker provider only, SQLite in a fresh
// temp dir) as a child process and measures, in the same run, against the same daemon:
//   1. spawn   — API POST /api/v1/sandboxes vs dockerode createContainer+start with the same
//                image, user, workdir, command and limits (a minimal body), and vs a replay of the
//                Engine calls the provider itself makes (image inspect, its full create body,
//                put-archive of /workspace and /tmp, start);
//   2. exec    — API POST /sandboxes/{id}/exec `echo hi` vs dockerode exec create+start+demux+
//                inspect on an already running container;
//   3. destroy — API DELETE vs container remove (force, with volumes), and vs inspect+remove;
//   4. density — N sandboxes alive at once through the API (bounded concurrency), host memory
//                per sandbox, time to create them all, one exec on each, then destroy them all.
// 1–3 run interleaved in rounds (the order rotates every round) so machine noise hits every side
// alike. Every loop is bounded by a count and by a wall-clock share of --seconds.
//
// Talks only to 127.0.0.1 (the server) and the Engine socket; never to container addresses.
// Every container it makes carries this run's id in a label; all are removed at the end, on
// failure and on Ctrl-C, and the end of the run checks that none is left.
//
// Exit 0 whatever the numbers are (this is a measurement); exit 1 when the server or daemon is not
// usable, a request fails, or a container of this run is left behind. See bench/README.md.

import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import Docker from 'dockerode';
import { makeClient as makeHttpClient } from '../lib/http.mjs';
import { bounded as boundedLoop, now, repeat as repeatLoop } from '../lib/loops.mjs';
import { readProc, rssKb } from '../lib/proc.mjs';
import {
  BenchError,
  cleanEnv,
  DIST,
  MAIN_JS,
  requireBuild,
  startServer as startStacyvm,
  stopServer,
  reportFailure,
  runBench,
} from '../lib/server.mjs';
import { fmt, goDurationMs, ratio, round3, summarize } from '../lib/stats.mjs';

const SPEC_JS = join(DIST, 'providers/docker/docker-spec.js');
const DEFAULT_IMAGE = 'stacyvm-test/busybox:latest';
const TARGET_SPAWN_RATIO = 1.15;
const TARGET_EXEC_RATIO = 1.2;
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
/** Any single API request or Engine call taking longer than this fails the run. */
const CALL_TIMEOUT_MS = 60_000;
/** Cap on destroying the density sandboxes, and on the final cleanup. */
const TEARDOWN_MS = 120_000;
const SPAWN_ROUND = 5; // samples per side per round: a spawn+destroy pair costs ~0.5 s
const EXEC_ROUND = 20;
const EXEC_PER_SPAWN = 3; // exec samples per side = 3 × --iterations (an exec is ~5x cheaper)
const WARMUP_SPAWNS = 3;
const WARMUP_EXECS = 10;
/** Share of --seconds per phase. */
const SHARE = { warmup: 0.05, spawn: 0.5, exec: 0.15, density: 0.3 };
/** Metadata key the bench puts on its API sandboxes; it becomes the `stacyvm.metadata` label. */
const META_KEY = 'stacyvm_bench';
/** Label the bench puts on the containers it creates directly. */
const BENCH_LABEL = 'stacyvm.bench';

/** Ctrl-C or SIGTERM: loops stop at their next step, then everything is cleaned up. */
class Interrupted extends BenchError {}

function usage() {
  return `usage: node bench/docker-overhead/run.mjs [options]

  --iterations N    spawn/destroy samples per side; exec takes ${EXEC_PER_SPAWN}x as many (default 50)
  --seconds S       wall-clock budget for warm-up, spawn, exec and density (default 200);
                    server start/stop and the final teardown come on top
  --density N       sandboxes alive at once in the density phase; 0 skips it (default 100)
  --concurrency C   requests in flight while creating/exec-ing/destroying them (default 8)
  --image REF       image of every container (default ${DEFAULT_IMAGE}); needs sh, echo, sleep
  -h, --help        this text

Needs a running Docker daemon and the image (bash scripts/build-test-images.sh --only busybox).
Run \`npm run build\` first (or use \`npm run bench:docker\`, which builds).`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      iterations: { type: 'string', default: '50' },
      seconds: { type: 'string', default: '200' },
      density: { type: 'string', default: '100' },
      concurrency: { type: 'string', default: '8' },
      image: { type: 'string', default: DEFAULT_IMAGE },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const number = (name, raw, { integer, allowZero }) => {
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
  return {
    iterations: number('iterations', values.iterations, { integer: true }),
    seconds: number('seconds', values.seconds, {}),
    density: number('density', values.density, { integer: true, allowZero: true }),
    concurrency: number('concurrency', values.concurrency, { integer: true }),
    image: values.image,
  };
}

// ---------------------------------------------------------------------------
// Run state: what must be undone whatever happens

const run = {
  id: randomBytes(6).toString('hex'),
  /** Set by the first Ctrl-C / SIGTERM: loops stop at their next step. */
  stopping: false,
  /** Sandbox ids the API created and that were not deleted yet. */
  apiIds: new Set(),
  /** Number of calls that failed in the density phase (reported, then exit 1). */
  failures: 0,
};

/** The `stacyvm.metadata` label value of this run's API sandboxes. */
function metadataLabel() {
  return JSON.stringify({ [META_KEY]: run.id });
}

function checkStop() {
  if (run.stopping) throw new Interrupted('interrupted');
}

/** Runs `fn` `count` times or until `deadline` (performance.now() ms), whichever is first. */
function repeat(count, deadline, fn) {
  return repeatLoop(count, deadline, fn, checkStop);
}

/**
 * Runs `fn(i)` for i < count with at most `limit` in flight, starting none after `deadline`
 * or (unless `cleanup`) a stop. Failures are collected, not thrown, and stop further starts
 * when `stopOnError`.
 */
function bounded(count, limit, deadline, fn, { stopOnError = true, cleanup = false } = {}) {
  return boundedLoop(count, limit, deadline, fn, {
    stopOnError,
    stopped: () => !cleanup && run.stopping,
  });
}

// ---------------------------------------------------------------------------
// Host memory, from /proc (Linux only; null elsewhere)

/** MemAvailable in KiB, or undefined without /proc. */
function memAvailableKb() {
  const m = /MemAvailable:\s+(\d+) kB/.exec(readProc('/proc/meminfo') ?? '');
  return m === null ? undefined : Number(m[1]);
}

/** Median of three MemAvailable reads 200 ms apart: one read can catch a passing allocation. */
async function memAvailableSettledKb() {
  const reads = [];
  for (let i = 0; i < 3; i++) {
    if (i > 0) await sleep(200);
    const v = memAvailableKb();
    if (v !== undefined) reads.push(v);
  }
  return reads.length === 0 ? undefined : reads.sort((a, b) => a - b)[Math.floor(reads.length / 2)];
}

/** Proportional set size in KiB (shared pages split between sharers), falling back to RSS. */
function pssKb(pid) {
  const m = /^Pss:\s+(\d+) kB/m.exec(readProc(`/proc/${pid}/smaps_rollup`) ?? '');
  return m === null ? rssKb(pid) : Number(m[1]);
}

function procPids() {
  try {
    return readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return [];
  }
}

/** Summed RSS (KiB) of the daemon processes (dockerd, containerd), or undefined. */
function daemonRssKb() {
  let total;
  for (const pid of procPids()) {
    const comm = readProc(`/proc/${pid}/comm`)?.trim();
    if (comm === 'dockerd' || comm === 'containerd') {
      const kb = rssKb(pid);
      if (kb !== undefined) total = (total ?? 0) + kb;
    }
  }
  return total;
}

/** containerd shim PSS (KiB) per full container id, for the shims that serve one of `ids`. */
function shimPssByContainer(ids) {
  const wanted = new Set(ids);
  const out = new Map();
  for (const pid of procPids()) {
    const comm = readProc(`/proc/${pid}/comm`)?.trim();
    if (comm === undefined || !comm.startsWith('containerd-shim')) continue;
    const argv = (readProc(`/proc/${pid}/cmdline`) ?? '').split('\0');
    const i = argv.indexOf('-id');
    const id = i >= 0 ? argv[i + 1] : undefined;
    if (id === undefined || !wanted.has(id)) continue;
    const kb = pssKb(pid);
    if (kb !== undefined) out.set(id, kb);
  }
  return out;
}

/**
 * Memory in use by a container as `docker stats` shows it (MEM USAGE): usage minus inactive file
 * cache (`total_inactive_file` on cgroup v1, `inactive_file` on v2).
 */
function statsMemoryBytes(stats) {
  const mem = stats?.memory_stats;
  const usage = mem?.usage;
  if (typeof usage !== 'number') return undefined;
  const s = mem.stats ?? {};
  const v1 = s.total_inactive_file;
  if (typeof v1 === 'number' && v1 < usage) return usage - v1;
  const v2 = s.inactive_file;
  if (typeof v2 === 'number' && v2 < usage) return usage - v2;
  return usage;
}

// ---------------------------------------------------------------------------
// The server child process

/**
 * Starts `stacyvm serve --port 0` with a clean environment: every inherited STACYVM_* variable is
 * dropped, HOME points at the temp dir (so ~/.stacyvm/config.yaml is not read), and only the
 * Docker provider is enabled.
 */
async function startServer({ workDir }) {
  const env = cleanEnv(workDir, {
    STACYVM_LOGGING_LEVEL: 'info',
    STACYVM_SERVER_HOST: '127.0.0.1',
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'true',
    STACYVM_PROVIDERS_DEFAULT: 'docker',
    STACYVM_PROVIDERS_MOCK_ENABLED: 'false',
    STACYVM_DEFAULTS_MAX_SANDBOXES: '0',
  });
  /** Sandboxes the server adopted at start (containers of other runs; left alone). */
  const adopted = [];
  // Its own process group: a Ctrl-C reaches only the bench, which then deletes its sandboxes
  // through the server before stopping it. If the bench dies anyway, the server goes with it.
  const server = await startStacyvm({
    args: ['serve', '--port', '0'],
    cwd: workDir,
    env,
    detached: true,
    startTimeoutMs: START_TIMEOUT_MS,
    stopTimeoutMs: STOP_TIMEOUT_MS,
    onRecord: (rec) => {
      if (Array.isArray(rec.adopted)) adopted.push(...rec.adopted);
    },
  });
  server.adopted = adopted;
  return server;
}

// ---------------------------------------------------------------------------
// The API side

function makeClient(origin, connections, server) {
  return makeHttpClient(origin, { connections, server, timeoutMs: CALL_TIMEOUT_MS });
}

async function apiCreate(api, phase, image) {
  // The metadata becomes a label, so a sweep finds this run's sandboxes even if the server died.
  const body = { image, metadata: { [META_KEY]: run.id } };
  const sb = await api.call(phase, 'POST', '/api/v1/sandboxes', body, 201);
  if (typeof sb?.id !== 'string') throw new BenchError('POST /api/v1/sandboxes gave no id');
  run.apiIds.add(sb.id);
  return sb.id;
}

async function apiDestroy(api, phase, id) {
  await api.call(phase, 'DELETE', `/api/v1/sandboxes/${encodeURIComponent(id)}`, undefined, 200);
  run.apiIds.delete(id);
}

/** POST exec `echo hi`; returns the provider's own duration (ms) when the response has one. */
async function apiExec(api, phase, id) {
  const r = await api.call(
    phase,
    'POST',
    `/api/v1/sandboxes/${encodeURIComponent(id)}/exec`,
    { command: 'echo', args: ['hi'], mode: 'argv' },
    200,
  );
  if (r?.exit_code !== 0 || r?.stdout !== 'hi\n') {
    throw new BenchError(
      `API exec echo hi in ${id} gave exit_code ${r?.exit_code}, stdout ${JSON.stringify(r?.stdout)}`,
    );
  }
  return goDurationMs(r.duration);
}

/** The provider's own latency counters (sum ms, count) per operation, from /metrics/prometheus. */
async function providerOps(api) {
  const text = await api.request('metrics', 'GET', '/api/v1/metrics/prometheus', undefined, 200, {
    text: true,
  });
  const ops = {};
  const re =
    /^stacyvm_operation_latency_milliseconds_(sum|count)\{operation="([^"]+)",provider="docker"\} (\S+)$/gm;
  for (const m of text.matchAll(re)) {
    ops[m[2]] ??= { sum: 0, count: 0 };
    ops[m[2]][m[1]] = Number(m[3]);
  }
  return ops;
}

/** Adds the counters' growth between two snapshots into `acc`. */
function addOpsDelta(acc, before, after) {
  for (const [op, a] of Object.entries(after)) {
    const b = before[op] ?? { sum: 0, count: 0 };
    acc[op] ??= { sum: 0, count: 0 };
    acc[op].sum += a.sum - b.sum;
    acc[op].count += a.count - b.count;
  }
}

function opMean(acc, op) {
  const o = acc[op];
  return o === undefined || o.count === 0 ? null : round3(o.sum / o.count);
}

// ---------------------------------------------------------------------------
// The Engine side (dockerode, the library the provider uses, constructed the same way)

function makeDocker() {
  const host = process.env.DOCKER_HOST;
  if (host !== undefined && host !== '' && !host.startsWith('unix://')) {
    throw new BenchError(
      `DOCKER_HOST=${host}: this benchmark only talks to a local Engine socket (unix://…)`,
    );
  }
  const socketPath =
    host !== undefined && host.startsWith('unix://')
      ? host.slice('unix://'.length) || '/var/run/docker.sock'
      : '/var/run/docker.sock';
  return { docker: new Docker({ socketPath }), socketPath };
}

const engineSignal = () => AbortSignal.timeout(CALL_TIMEOUT_MS);

function statusOf(err) {
  return typeof err?.statusCode === 'number' ? err.statusCode : undefined;
}

/**
 * The two direct spawn flavours.
 * - minimal: createContainer+start with the provider's image, command, user, workdir and
 *   HostConfig limits/security, one label (this run's id, for cleanup), no name-derived hostname;
 * - replay: the Engine calls the provider makes for a spawn, in its order, with its full body.
 */
function makeEngineSide({ docker, spec, image, template }) {
  let seq = 0;
  const name = (kind) => `stacyvm-bench-${run.id}-${kind}-${++seq}`;

  const minimalBody = (n) => ({
    name: n,
    Image: image,
    Cmd: template.cmd,
    User: template.user,
    WorkingDir: template.workdir,
    Labels: { [BENCH_LABEL]: run.id },
    HostConfig: {
      Init: template.host.Init,
      Memory: template.host.Memory,
      MemorySwap: template.host.MemorySwap,
      NanoCpus: template.host.NanoCpus,
      PidsLimit: template.host.PidsLimit,
      CapDrop: template.host.CapDrop,
      SecurityOpt: template.host.SecurityOpt,
      NetworkMode: template.host.NetworkMode,
      Runtime: template.host.Runtime,
    },
  });

  const replayBody = (n) =>
    spec.buildContainerSpec({
      sandboxId: n,
      image: template.canonicalImage,
      labels: spec.buildLabels({
        sandboxId: n,
        image,
        metadata: { [META_KEY]: run.id },
        ports: [3000],
        previewDomain: 'localhost',
        extraLabels: { [BENCH_LABEL]: run.id },
      }),
      user: template.uidGid,
      limits: { memoryBytes: template.host.Memory, nanoCpus: template.host.NanoCpus },
      pidsLimit: template.host.PidsLimit,
      droppedCaps: template.host.CapDrop ?? [],
      addedCaps: template.host.CapAdd ?? [],
      seccomp: 'default',
      readOnlyRootfs: template.host.ReadonlyRootfs === true,
      scratchSizeMb: 1024,
      networkMode: template.host.NetworkMode,
      runtime: template.host.Runtime,
    });

  async function create(body) {
    const c = await docker.createContainer({ ...body, abortSignal: engineSignal() });
    return c.id;
  }

  return {
    minimalBody,
    replayBody,
    /** Returns the container id; `steps` (if given) gets each Engine call's duration in ms. */
    async spawnMinimal(steps) {
      const t0 = now();
      const id = await create(minimalBody(name('raw')));
      const t1 = now();
      await docker.getContainer(id).start({ abortSignal: engineSignal() });
      steps?.create.push(t1 - t0);
      steps?.start.push(now() - t1);
      return id;
    },
    async spawnReplay(steps) {
      const t0 = now();
      await docker.getImage(template.canonicalImage).inspect({ abortSignal: engineSignal() });
      const t1 = now();
      const id = await create(replayBody(name('rp')));
      const t2 = now();
      // The provider uploads /workspace and /tmp only when its once-per-image probe finds
      // them missing or with the wrong owner/mode; the test images ship them ready, so the
      // replay does not upload either.
      const t3 = now();
      await docker.getContainer(id).start({ abortSignal: engineSignal() });
      steps?.inspect.push(t1 - t0);
      steps?.create.push(t2 - t1);
      steps?.put.push(t3 - t2);
      steps?.start.push(now() - t3);
      return id;
    },
    async remove(id) {
      await docker.getContainer(id).remove({ force: true, v: true, abortSignal: engineSignal() });
    },
    /** The provider's destroy: inspect (is it ours?), then remove. */
    async removeReplay(id) {
      await docker.getContainer(id).inspect({ abortSignal: engineSignal() });
      await docker.getContainer(id).remove({ force: true, v: true, abortSignal: engineSignal() });
    },
  };
}

/**
 * `echo hi` through the Engine as the provider does it: exec create (marker env, workdir), start
 * (the multiplexed response stream), demultiplex, then inspect until the exit code is there.
 * Returns the total and the start-to-exit part (what the provider reports as `duration`).
 */
async function engineExec(docker, spec, containerId, workdir) {
  const t0 = now();
  const exec = await docker.getContainer(containerId).exec({
    Cmd: ['echo', 'hi'],
    Env: [`${spec.EXEC_MARKER_ENV}=${randomBytes(12).toString('hex')}`],
    WorkingDir: workdir,
    AttachStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    abortSignal: engineSignal(),
  });
  const t1 = now();
  const stream = await exec.start({});
  const demux = new spec.ExecDemuxer();
  const out = [];
  try {
    await new Promise((res, rej) => {
      const timer = setTimeout(() => {
        rej(new BenchError(`engine exec in ${containerId} did not end`));
      }, CALL_TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        res();
      };
      stream.on('data', (chunk) => {
        for (const f of demux.push(chunk)) if (f.stream === 'stdout') out.push(f.data);
      });
      stream.once('end', done);
      stream.once('close', done);
      stream.once('error', done);
    });
    let info;
    for (let attempt = 0; attempt < 100; attempt++) {
      info = await exec.inspect({ abortSignal: engineSignal() });
      if (!info.Running && info.ExitCode !== null) break;
      await sleep(20);
    }
    const t2 = now();
    const stdout = Buffer.concat(out).toString('utf8');
    if (info?.ExitCode !== 0 || stdout !== 'hi\n') {
      throw new BenchError(
        `engine exec echo hi gave exit ${info?.ExitCode}, stdout ${JSON.stringify(stdout)}`,
      );
    }
    return { total: t2 - t0, startToExit: t2 - t1 };
  } finally {
    stream.destroy();
  }
}

// ---------------------------------------------------------------------------
// Phases

/** Rotates `order` by `round`, so every side takes every position equally often. */
function rotated(order, round) {
  const k = round % order.length;
  return [...order.slice(k), ...order.slice(0, k)];
}

async function measureSpawn({ api, engine, image, iterations, budgetMs }) {
  const providerAcc = {};
  const rawSteps = { create: [], start: [] };
  const replaySteps = { inspect: [], create: [], put: [], start: [] };
  const sides = {
    raw: {
      create: [],
      destroy: [],
      spawn: () => engine.spawnMinimal(rawSteps),
      remove: engine.remove,
    },
    api: {
      create: [],
      destroy: [],
      spawn: () => apiCreate(api, 'create', image),
      remove: (id) => apiDestroy(api, 'delete', id),
    },
    replay: {
      create: [],
      destroy: [],
      spawn: () => engine.spawnReplay(replaySteps),
      remove: engine.removeReplay,
    },
  };
  const order = ['raw', 'api', 'replay'];
  const deadline = now() + budgetMs;
  let rounds = 0;
  while (now() < deadline && order.some((k) => sides[k].create.length < iterations)) {
    for (const key of rotated(order, rounds)) {
      const side = sides[key];
      const todo = Math.min(SPAWN_ROUND, iterations - side.create.length);
      const before = key === 'api' ? await providerOps(api) : undefined;
      await repeat(todo, deadline, async () => {
        const a = now();
        const id = await side.spawn();
        const b = now();
        await side.remove(id);
        const c = now();
        side.create.push(b - a);
        side.destroy.push(c - b);
      });
      if (before !== undefined) addOpsDelta(providerAcc, before, await providerOps(api));
    }
    rounds++;
  }
  const out = { rounds };
  for (const [k, s] of Object.entries(sides)) {
    out[k] = { create: summarize(s.create), destroy: summarize(s.destroy) };
  }
  const p50s = (steps) =>
    Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, summarize(v).p50]));
  out.raw_steps_p50 = p50s(rawSteps);
  out.replay_steps_p50 = p50s(replaySteps);
  out.provider_spawn_mean_ms = opMean(providerAcc, 'spawn');
  out.provider_destroy_mean_ms = opMean(providerAcc, 'destroy');
  return out;
}

async function measureExec({
  api,
  docker,
  spec,
  apiTarget,
  rawTarget,
  workdir,
  iterations,
  budgetMs,
}) {
  const providerMs = [];
  const startToExit = [];
  const sides = {
    raw: {
      samples: [],
      run: async () => {
        const r = await engineExec(docker, spec, rawTarget, workdir);
        startToExit.push(r.startToExit);
      },
    },
    api: {
      samples: [],
      run: async () => {
        const d = await apiExec(api, 'exec', apiTarget);
        if (d !== undefined) providerMs.push(d);
      },
    },
  };
  const order = ['raw', 'api'];
  const deadline = now() + budgetMs;
  let rounds = 0;
  while (now() < deadline && order.some((k) => sides[k].samples.length < iterations)) {
    for (const key of rotated(order, rounds)) {
      const side = sides[key];
      const todo = Math.min(EXEC_ROUND, iterations - side.samples.length);
      await repeat(todo, deadline, async () => {
        const t0 = now();
        await side.run();
        side.samples.push(now() - t0);
      });
    }
    rounds++;
  }
  return {
    rounds,
    raw: summarize(sides.raw.samples),
    raw_start_to_exit: summarize(startToExit),
    api: summarize(sides.api.samples),
    provider_duration: summarize(providerMs),
  };
}

async function measureDensity({ api, docker, image, count, concurrency, budgetMs, serverPid }) {
  const deadline = now() + budgetMs;
  const firstError = (errors) =>
    errors.length === 0 ? null : errors[0] instanceof Error ? errors[0].message : String(errors[0]);

  await sleep(1000); // let the page cache and the daemon settle after the previous phases
  const before = {
    availKb: await memAvailableSettledKb(),
    serverKb: rssKb(serverPid),
    daemonKb: daemonRssKb(),
  };

  const ids = [];
  const createMs = [];
  const t0 = now();
  const created = await bounded(count, concurrency, deadline, async () => {
    const a = now();
    const id = await apiCreate(api, 'dcreate', image);
    createMs.push(now() - a);
    ids.push(id);
  });
  const createAllMs = now() - t0;
  checkStop();

  await sleep(2000); // the last containers' first pages and the shims' heaps settle
  const after = {
    availKb: await memAvailableSettledKb(),
    serverKb: rssKb(serverPid),
    daemonKb: daemonRssKb(),
  };

  // Per-container memory as `docker stats --no-stream` reports it, and the full ids for the shims.
  const memBytes = [];
  const fullIds = [];
  const stats = await bounded(
    ids.length,
    concurrency,
    deadline,
    async (i) => {
      const s = await docker
        .getContainer(ids[i])
        .stats({ stream: false, 'one-shot': true, abortSignal: engineSignal() });
      const b = statsMemoryBytes(s);
      if (b !== undefined) memBytes.push(b);
      if (typeof s?.id === 'string') fullIds.push(s.id);
    },
    { stopOnError: false },
  );
  const shims = [...shimPssByContainer(fullIds).values()];
  checkStop();

  const execMs = [];
  const t1 = now();
  const execs = await bounded(
    ids.length,
    concurrency,
    deadline,
    async (i) => {
      const a = now();
      await apiExec(api, 'dexec', ids[i]);
      execMs.push(now() - a);
    },
    { stopOnError: false },
  );
  const execAllMs = now() - t1;
  checkStop();

  // Destroying is cleanup as much as a measurement: it has its own cap, not --seconds.
  const destroyMs = [];
  const t2 = now();
  const destroyed = await bounded(
    ids.length,
    concurrency,
    now() + TEARDOWN_MS,
    async (i) => {
      const a = now();
      await apiDestroy(api, 'ddelete', ids[i]);
      destroyMs.push(now() - a);
    },
    { stopOnError: false },
  );
  const destroyAllMs = now() - t2;

  const failures =
    created.errors.length + stats.errors.length + execs.errors.length + destroyed.errors.length;
  run.failures += failures;
  const alive = ids.length;
  const kbPer = (a, b) =>
    a === undefined || b === undefined || alive === 0 ? null : round3((a - b) / alive / 1024);
  const mib = (bytes) => round3(bytes / 1024 / 1024);
  const memSum = summarize(memBytes.map((b) => b / 1024 / 1024));
  const shimSum = summarize(shims.map((kb) => kb / 1024));
  return {
    requested: count,
    concurrency,
    alive,
    create_all_s: round3(createAllMs / 1000),
    creates_per_s: round3(createAllMs > 0 ? (alive * 1000) / createAllMs : NaN),
    create_ms: summarize(createMs),
    exec_ok: execs.done,
    exec_all_s: round3(execAllMs / 1000),
    exec_ms: summarize(execMs),
    destroyed: destroyed.done,
    destroy_all_s: round3(destroyAllMs / 1000),
    destroy_ms: summarize(destroyMs),
    mem_available_drop_mib_per_sandbox: kbPer(before.availKb, after.availKb),
    container_mem_mib: memSum,
    container_mem_total_mib: mib(memBytes.reduce((s, b) => s + b, 0)),
    shim_pss_mib: shimSum,
    daemon_rss_growth_mib_per_sandbox: kbPer(after.daemonKb, before.daemonKb),
    server_rss_growth_mib_per_sandbox: kbPer(after.serverKb, before.serverKb),
    server_rss_mib: after.serverKb === undefined ? null : round3(after.serverKb / 1024),
    failures,
    first_error: firstError([
      ...created.errors,
      ...stats.errors,
      ...execs.errors,
      ...destroyed.errors,
    ]),
  };
}

// ---------------------------------------------------------------------------
// Cleanup: API deletes while the server is up, then a label sweep on the Engine, then a check

/** Containers of this run: the direct ones by label, the API ones by their metadata label. */
async function listOurs(docker) {
  const lists = await Promise.all(
    [`${BENCH_LABEL}=${run.id}`, `stacyvm.metadata=${metadataLabel()}`].map((label) =>
      docker.listContainers({
        all: true,
        filters: { label: [label] },
        abortSignal: engineSignal(),
      }),
    ),
  );
  const byId = new Map();
  for (const c of lists.flat()) byId.set(c.Id, c);
  return [...byId.values()];
}

/**
 * Force-removes every container of this run, retrying while new ones still show up. Done only
 * after two empty looks 500 ms apart: a create the daemon was still finishing when the server
 * stopped shows up late.
 */
async function sweep(docker, deadline) {
  let empty = 0;
  for (let pass = 0; pass < 8 && now() < deadline; pass++) {
    const ours = await listOurs(docker);
    if (ours.length === 0) {
      if (++empty >= 2) return;
      await sleep(500);
      continue;
    }
    empty = 0;
    await bounded(
      ours.length,
      8,
      deadline,
      async (i) => {
        try {
          await docker
            .getContainer(ours[i].Id)
            .remove({ force: true, v: true, abortSignal: engineSignal() });
        } catch (err) {
          // Gone already, or another removal is in progress: the next pass checks again.
          if (statusOf(err) !== 404 && statusOf(err) !== 409) throw err;
        }
      },
      { stopOnError: false, cleanup: true },
    );
    await sleep(200);
  }
}

/** What is left labelled `stacyvm=true`: this run's (must be none) and anyone else's. */
async function leftovers(docker) {
  const all = await docker.listContainers({
    all: true,
    filters: { label: ['stacyvm=true'] },
    abortSignal: engineSignal(),
  });
  const ours = await listOurs(docker);
  const oursIds = new Set(ours.map((c) => c.Id));
  const name = (c) => (c.Names?.[0] ?? c.Id).replace(/^\//, '');
  return {
    ours: ours.length,
    ours_names: ours.map(name),
    others: all.filter((c) => !oursIds.has(c.Id)).map(name),
  };
}

function makeTeardown(ctx) {
  let done;
  return () => {
    done ??= (async () => {
      const deadline = now() + TEARDOWN_MS;
      if (ctx.api !== undefined && ctx.server !== undefined && !ctx.server.exited) {
        const ids = [...run.apiIds];
        await bounded(ids.length, 8, deadline, (i) => apiDestroy(ctx.api, 'cleanup', ids[i]), {
          stopOnError: false,
          cleanup: true,
        });
      }
      await ctx.api?.pool.close().catch(() => undefined);
      // Stopped before the sweep: a create still running inside it would otherwise escape.
      await stopServer(ctx.server);
      let left;
      if (ctx.docker !== undefined) {
        await sweep(ctx.docker, deadline).catch((err) => {
          process.stderr.write(`docker-overhead: sweep failed: ${err.message}\n`);
        });
        left = await leftovers(ctx.docker).catch(() => undefined);
      }
      if (ctx.workDir !== undefined) await rm(ctx.workDir, { recursive: true, force: true });
      return left;
    })();
    return done;
  };
}

// ---------------------------------------------------------------------------
// Output

function printReport(r) {
  const lines = [];
  const row = (cells, widths) =>
    cells
      .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
      .join('  ');
  const w = [44, 5, 8, 8, 8, 8];
  const lat = (label, s) => row([label, s.n, fmt(s.p50), fmt(s.p90), fmt(s.p99), fmt(s.mean)], w);
  const meanOnly = (label, m) => row([label, '', '', '', '', fmt(m)], w);

  lines.push('');
  lines.push(
    `docker-overhead  node ${process.version}  ${process.platform}/${process.arch}  ${r.cpus} cpus  ` +
      `docker ${r.docker_version}  image ${r.image}  run ${run.id}`,
  );
  lines.push('');
  lines.push(row(['spawn = create+start (ms, client-side)', 'n', 'p50', 'p90', 'p99', 'mean'], w));
  lines.push(lat('engine: minimal create+start', r.spawn.raw.create));
  lines.push(lat("engine: provider's calls replayed", r.spawn.replay.create));
  const st = r.spawn.replay_steps_p50;
  lines.push(
    `  steps p50: minimal create ${fmt(r.spawn.raw_steps_p50.create)} start ${fmt(r.spawn.raw_steps_p50.start)}` +
      ` | replay image-inspect ${fmt(st.inspect)} create ${fmt(st.create)} put-archive ${fmt(st.put)} start ${fmt(st.start)}`,
  );
  lines.push(lat('API POST /sandboxes', r.spawn.api.create));
  lines.push(lat('  server: create handling', r.server.create));
  lines.push(meanOnly('  server: provider spawn (mean, /metrics)', r.spawn.provider_spawn_mean_ms));
  lines.push('');
  lines.push(row(['exec echo hi (ms, client-side)', 'n', 'p50', 'p90', 'p99', 'mean'], w));
  lines.push(lat('engine: exec create+start+inspect', r.exec.raw));
  lines.push(lat('  engine: start to exit code', r.exec.raw_start_to_exit));
  lines.push(lat('API POST /exec', r.exec.api));
  lines.push(lat('  server: exec handling', r.server.exec));
  lines.push(lat('  server: provider duration (start to exit)', r.exec.provider_duration));
  lines.push('');
  lines.push(row(['destroy (ms, client-side)', 'n', 'p50', 'p90', 'p99', 'mean'], w));
  lines.push(lat('engine: remove (force, volumes)', r.spawn.raw.destroy));
  lines.push(lat("engine: provider's calls (inspect+remove)", r.spawn.replay.destroy));
  lines.push(lat('API DELETE /sandboxes/{id}', r.spawn.api.destroy));
  lines.push(lat('  server: delete handling', r.server.delete));
  lines.push(
    meanOnly('  server: provider destroy (mean, /metrics)', r.spawn.provider_destroy_mean_ms),
  );
  lines.push('');
  lines.push(
    `ratios API / engine minimal:  spawn p50 ${fmt(r.ratios.spawn_p50)}x  p99 ${fmt(r.ratios.spawn_p99)}x   ` +
      `exec p50 ${fmt(r.ratios.exec_p50)}x  p99 ${fmt(r.ratios.exec_p99)}x   destroy p50 ${fmt(r.ratios.destroy_p50)}x`,
  );
  lines.push(
    `spawn split: p50 replay − minimal ${fmt(r.split.provider_extra_ms)} ms (the provider's extra Engine calls), ` +
      `API − replay ${fmt(r.split.api_minus_replay_ms)} ms`,
  );
  lines.push(
    `             mean server handling − provider spawn ${fmt(r.split.server_outside_provider_ms)} ms (control plane), ` +
      `client − server ${fmt(r.split.http_ms)} ms (HTTP)`,
  );
  const d = r.density;
  if (d !== undefined) {
    lines.push('');
    lines.push(
      `density: ${d.alive}/${d.requested} sandboxes alive at once (${d.concurrency} in flight), ` +
        `created in ${fmt(d.create_all_s, 1)} s (${fmt(d.creates_per_s, 1)}/s, create p50 ${fmt(d.create_ms.p50, 0)} ms, ` +
        `p99 ${fmt(d.create_ms.p99, 0)} ms)`,
    );
    lines.push(
      `  exec echo hi on each: ${d.exec_ok}/${d.alive} ok in ${fmt(d.exec_all_s, 1)} s (p50 ${fmt(d.exec_ms.p50, 0)} ms); ` +
        `destroyed ${d.destroyed}/${d.alive} in ${fmt(d.destroy_all_s, 1)} s (p50 ${fmt(d.destroy_ms.p50, 0)} ms)`,
    );
    lines.push(
      `  memory per sandbox (MiB): container cgroup p50 ${fmt(d.container_mem_mib.p50)} max ${fmt(d.container_mem_mib.max)}` +
        ` | containerd shim PSS p50 ${fmt(d.shim_pss_mib.p50)}` +
        ` | dockerd+containerd RSS +${fmt(d.daemon_rss_growth_mib_per_sandbox)}` +
        ` | server RSS +${fmt(d.server_rss_growth_mib_per_sandbox)}` +
        ` | host MemAvailable −${fmt(d.mem_available_drop_mib_per_sandbox)}`,
    );
    if (d.failures > 0) lines.push(`  ${d.failures} call(s) failed; first: ${d.first_error}`);
  }
  lines.push('');
  for (const t of Object.values(r.targets)) {
    lines.push(
      `${t.pass ? 'PASS' : 'MISS'}  ${t.label}: ${t.value === null ? '-' : fmt(t.value)} (target ${t.op} ${t.target})`,
    );
  }
  const left = r.leftovers;
  if (left !== undefined) {
    lines.push(
      `containers of this run left: ${left.ours}` +
        (left.others.length > 0
          ? `; other stacyvm=true containers present (not this run's): ${left.others.join(', ')}`
          : '; docker ps -a --filter label=stacyvm=true is empty'),
    );
  }
  lines.push('');
  process.stdout.write(lines.join('\n') + '\n');
  process.stdout.write(JSON.stringify(r.json) + '\n');
}

function buildResult({
  opts,
  dockerVersion,
  spawnR,
  execR,
  density,
  server,
  leftoversR,
  template,
}) {
  const phase = (name) => summarize(server.phases.get(name)?.responseMs ?? []);
  const serverSide = {
    create: phase('create'),
    delete: phase('delete'),
    exec: phase('exec'),
    density_create: phase('dcreate'),
  };
  const ratios = {
    spawn_p50: ratio(spawnR.api.create.p50, spawnR.raw.create.p50),
    spawn_p99: ratio(spawnR.api.create.p99, spawnR.raw.create.p99),
    exec_p50: ratio(execR.api.p50, execR.raw.p50),
    exec_p99: ratio(execR.api.p99, execR.raw.p99),
    destroy_p50: ratio(spawnR.api.destroy.p50, spawnR.raw.destroy.p50),
  };
  const diff = (a, b) => (a === null || b === null ? null : round3(a - b));
  const split = {
    // p50s: what the provider's extra Engine calls cost when the bench makes them itself.
    provider_extra_ms: diff(spawnR.replay.create.p50, spawnR.raw.create.p50),
    api_minus_replay_ms: diff(spawnR.api.create.p50, spawnR.replay.create.p50),
    // Means (the provider's figure is only a sum/count): server work outside the provider call
    // (store, lease, events, audit, logging), and HTTP plus client.
    server_outside_provider_ms: diff(serverSide.create.mean, spawnR.provider_spawn_mean_ms),
    http_ms: diff(spawnR.api.create.mean, serverSide.create.mean),
  };
  const targets = {
    spawn_p50_ratio: {
      label: 'spawn p50 API / engine minimal',
      op: '<=',
      target: TARGET_SPAWN_RATIO,
      value: ratios.spawn_p50,
      pass: ratios.spawn_p50 !== null && ratios.spawn_p50 <= TARGET_SPAWN_RATIO,
    },
    exec_p50_ratio: {
      label: 'exec p50 API / engine',
      op: '<=',
      target: TARGET_EXEC_RATIO,
      value: ratios.exec_p50,
      pass: ratios.exec_p50 !== null && ratios.exec_p50 <= TARGET_EXEC_RATIO,
    },
  };
  if (density !== undefined) {
    targets.density = {
      label: `sandboxes alive at once, each answering exec`,
      op: '=',
      target: density.requested,
      value: Math.min(density.alive, density.exec_ok),
      pass: density.alive === density.requested && density.exec_ok === density.requested,
    };
  }
  const json = {
    bench: 'docker-overhead',
    run: run.id,
    node: process.version,
    platform: `${process.platform}/${process.arch}`,
    cpus: cpus().length,
    docker: dockerVersion,
    image: opts.image,
    iterations: opts.iterations,
    seconds: opts.seconds,
    spawn_rounds: spawnR.rounds,
    exec_rounds: execR.rounds,
    minimal_spec: template.minimalSpec,
    spawn_engine_ms: spawnR.raw.create,
    spawn_replay_ms: spawnR.replay.create,
    spawn_engine_steps_p50_ms: spawnR.raw_steps_p50,
    spawn_replay_steps_p50_ms: spawnR.replay_steps_p50,
    spawn_api_ms: spawnR.api.create,
    server_create_ms: serverSide.create,
    provider_spawn_mean_ms: spawnR.provider_spawn_mean_ms,
    exec_engine_ms: execR.raw,
    exec_engine_start_to_exit_ms: execR.raw_start_to_exit,
    exec_api_ms: execR.api,
    server_exec_ms: serverSide.exec,
    provider_exec_duration_ms: execR.provider_duration,
    destroy_engine_ms: spawnR.raw.destroy,
    destroy_replay_ms: spawnR.replay.destroy,
    destroy_api_ms: spawnR.api.destroy,
    server_delete_ms: serverSide.delete,
    provider_destroy_mean_ms: spawnR.provider_destroy_mean_ms,
    ratios,
    spawn_split_p50_ms: split,
    density:
      density === undefined ? null : { ...density, server_create_ms: serverSide.density_create },
    leftovers: leftoversR ?? null,
    targets: Object.fromEntries(
      Object.entries(targets).map(([k, t]) => [
        k,
        { value: t.value, target: t.target, result: t.pass ? 'PASS' : 'MISS' },
      ]),
    ),
  };
  return {
    cpus: cpus().length,
    docker_version: dockerVersion,
    image: opts.image,
    spawn: spawnR,
    exec: execR,
    density,
    server: serverSide,
    ratios,
    split,
    targets,
    leftovers: leftoversR,
    json,
  };
}

// ---------------------------------------------------------------------------

/** What the provider gave the setup sandbox, read back from the Engine. */
async function readTemplate(docker, spec, sandboxId, image) {
  const info = await docker.getContainer(sandboxId).inspect({ abortSignal: engineSignal() });
  const uidGid = spec.numericUser(info.Config.User ?? '');
  if (uidGid === undefined) {
    throw new BenchError(
      `sandbox ${sandboxId} runs as ${JSON.stringify(info.Config.User)}, expected uid:gid`,
    );
  }
  const ref = spec.parseImageReference(image);
  if ('problem' in ref) throw new BenchError(`--image ${image}: ${ref.problem}`);
  const host = info.HostConfig;
  const template = {
    canonicalImage: ref.canonical,
    cmd: info.Config.Cmd,
    user: info.Config.User,
    uidGid,
    workdir: info.Config.WorkingDir,
    readOnlyRootfs: host.ReadonlyRootfs === true,
    host,
  };
  return template;
}

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  requireBuild([MAIN_JS, SPEC_JS]);
  const spec = await import(pathToFileURL(SPEC_JS).href);
  const ctx = {};
  const teardown = makeTeardown(ctx);

  // First Ctrl-C: loops stop at their next step, in-flight calls finish, everything is cleaned
  // up. Second Ctrl-C (or the first one hanging): kill the server and sweep by label at once.
  let signals = 0;
  const force = async (code) => {
    ctx.server?.child.kill('SIGKILL');
    if (ctx.docker !== undefined) await sweep(ctx.docker, now() + 30_000).catch(() => undefined);
    if (ctx.workDir !== undefined) await rm(ctx.workDir, { recursive: true, force: true });
    process.exit(code);
  };
  const onSignal = (sig) => {
    signals++;
    const code = sig === 'SIGINT' ? 130 : 143;
    if (signals === 1) {
      run.stopping = true;
      process.stderr.write(
        `docker-overhead: ${sig}: finishing in-flight calls, then removing every container of run ` +
          `${run.id} (again to force)\n`,
      );
      setTimeout(() => void force(code), CALL_TIMEOUT_MS + TEARDOWN_MS).unref();
      return;
    }
    process.stderr.write(`docker-overhead: ${sig} again: killing the server, sweeping by label\n`);
    void force(code);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const { docker } = makeDocker();
    let dockerVersion;
    try {
      await docker.ping({ abortSignal: AbortSignal.timeout(5_000) });
      dockerVersion = (await docker.version({ abortSignal: engineSignal() })).Version;
    } catch (err) {
      throw new BenchError(`the Docker daemon does not answer: ${err.message}`);
    }
    ctx.docker = docker;
    try {
      await docker.getImage(opts.image).inspect({ abortSignal: engineSignal() });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      throw new BenchError(
        `image ${opts.image} is not present: build it with \`bash scripts/build-test-images.sh --only busybox\``,
      );
    }
    const before = await leftovers(docker);
    if (before.others.length > 0) {
      process.stderr.write(
        `docker-overhead: note: ${before.others.length} stacyvm container(s) of other runs exist; ` +
          `the server adopts them at start and the bench leaves them alone\n`,
      );
    }

    const budgetMs = opts.seconds * 1000;
    ctx.workDir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-docker-'));
    ctx.server = await startServer({ workDir: ctx.workDir });
    const api = makeClient(ctx.server.address, opts.concurrency, ctx.server);
    ctx.api = api;

    // The first spawn of an image also probes its users; it happens here, outside the figures.
    const apiTarget = await apiCreate(api, 'setup', opts.image);
    const template = await readTemplate(docker, spec, apiTarget, opts.image);
    const engine = makeEngineSide({ docker, spec, image: opts.image, template });
    template.minimalSpec = engine.minimalBody('<name>');
    // The replay rebuilds the provider's body from its own code; say so if the result drifted.
    const replayHost = engine.replayBody('check').HostConfig;
    for (const k of [
      'Init',
      'Memory',
      'MemorySwap',
      'NanoCpus',
      'PidsLimit',
      'CapDrop',
      'SecurityOpt',
      'NetworkMode',
      'Runtime',
    ]) {
      if (JSON.stringify(replayHost[k]) !== JSON.stringify(template.host[k])) {
        process.stderr.write(
          `docker-overhead: note: replayed HostConfig.${k} ${JSON.stringify(replayHost[k])} differs ` +
            `from the provider's ${JSON.stringify(template.host[k])}\n`,
        );
      }
    }
    const rawTarget = await engine.spawnMinimal();
    checkStop();

    const warmDeadline = now() + budgetMs * SHARE.warmup;
    await repeat(WARMUP_SPAWNS, warmDeadline, async () => {
      await engine.remove(await engine.spawnMinimal());
      await apiDestroy(api, 'warm', await apiCreate(api, 'warm', opts.image));
      await engine.removeReplay(await engine.spawnReplay());
    });
    await repeat(WARMUP_EXECS, warmDeadline, async () => {
      await engineExec(docker, spec, rawTarget, template.workdir);
      await apiExec(api, 'warm', apiTarget);
    });

    const spawnR = await measureSpawn({
      api,
      engine,
      image: opts.image,
      iterations: opts.iterations,
      budgetMs: budgetMs * SHARE.spawn,
    });
    const execR = await measureExec({
      api,
      docker,
      spec,
      apiTarget,
      rawTarget,
      workdir: template.workdir,
      iterations: opts.iterations * EXEC_PER_SPAWN,
      budgetMs: budgetMs * SHARE.exec,
    });
    await apiDestroy(api, 'setup', apiTarget);
    await engine.remove(rawTarget);

    const density =
      opts.density === 0
        ? undefined
        : await measureDensity({
            api,
            docker,
            image: opts.image,
            count: opts.density,
            concurrency: opts.concurrency,
            budgetMs: budgetMs * SHARE.density,
            serverPid: ctx.server.child.pid,
          });

    // Server-side figures come from its log, complete only once it has stopped.
    const leftoversR = await teardown();
    printReport(
      buildResult({
        opts,
        dockerVersion,
        spawnR,
        execR,
        density,
        server: ctx.server,
        leftoversR,
        template,
      }),
    );
    if (leftoversR === undefined || leftoversR.ours > 0) {
      throw new BenchError(
        `containers of run ${run.id} are left behind: ${leftoversR?.ours_names.join(', ') ?? 'unknown (the Engine did not answer)'}`,
      );
    }
    if (run.failures > 0)
      throw new BenchError(`${run.failures} call(s) failed in the density phase`);
  } catch (err) {
    process.exitCode = 1;
    if (!(err instanceof Interrupted)) {
      reportFailure('docker-overhead', err, [ctx.server]);
    }
  } finally {
    const left = await teardown();
    if (left !== undefined && left.ours > 0) {
      process.exitCode = 1;
      process.stderr.write(
        `docker-overhead: containers of run ${run.id} are still present: ${left.ours_names.join(', ')}\n`,
      );
    }
    if (run.stopping) {
      process.stderr.write(
        `docker-overhead: interrupted; containers of run ${run.id} left: ${left?.ours ?? 'unknown'}\n`,
      );
      process.exitCode = 130;
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await runBench('docker-overhead', main);
