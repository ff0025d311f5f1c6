#!/usr/bin/env node
// Benchmark: the control plane's overhead on exec and on the spawn→destroy cycle.
//
// Starts the real built server (`stacyvm serve --port 0`, mock provider, SQLite in a fresh temp
// dir) as a child process and measures, in the same run:
//   1. direct  — `child_process.spawn('sh', ['-c', 'true'])` from this process, awaited;
//   2. api exec — POST /api/v1/sandboxes/{id}/exec {"command":"true"} (the mock provider runs
//      `sh -c true` on the host), sequential, one keep-alive connection;
//   3. health  — GET /api/v1/health, the HTTP floor (no store, no provider);
//   4. spawn→destroy cycles — POST /api/v1/sandboxes then DELETE, 1 client and N clients.
// 1–3 are interleaved in rounds (order reversed every round) so machine noise hits each side
// equally; the ratio api p50 / direct p50 is therefore measured under the same conditions.
// Before measuring, both sides are warmed up (--warmup rounds, default 1000): the figures are a
// long-running server's. The server's JIT takes about that many requests to settle; with 40 the
// exec figure still carried unoptimised code (see bench/README.md).
//
// Every loop is bounded by a count and by a wall-clock cap. Exit 0 whatever the numbers are
// (this is a measurement), exit 1 if the server does not start or any request fails.
// See bench/README.md for how to read the output.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { makeClient } from '../lib/http.mjs';
import { repeat } from '../lib/loops.mjs';
import { cpuMeter, rssMb } from '../lib/proc.mjs';
import {
  BenchError,
  positiveOption,
  cleanEnv,
  phaseOf,
  requireBuild,
  startServer as startStacyvm,
  stopServer,
  reportFailure,
  runBench,
} from '../lib/server.mjs';
import { fmt, round3, summarize, goDurationMs } from '../lib/stats.mjs';

const TARGET_EXEC_RATIO = 1.5;
const TARGET_CYCLES_PER_S = 200;
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const ROUND = 20; // samples per side per round
const MAX_CYCLES = 1_000_000; // count cap of the throughput loops; the time cap normally ends them
const SLICE_MS = 1_000; // throughput alternates 1-client and N-client slices of this length

function usage() {
  return `usage: node bench/api-overhead/run.mjs [options]

  --iterations N    samples per side for the latency comparison (default 500)
  --warmup N        warm-up rounds before measuring, each a direct spawn, an exec and a
                    health call, plus a spawn→destroy cycle every 10th (default 1000)
  --seconds S       wall-clock budget for warm-up and measuring, excluding server start/stop
                    (default 30: at most 35% warm-up, 35% latency, 30% throughput)
  --concurrency C   clients in the concurrent spawn→destroy phase (default 4)
  --cpu-prof DIR    run the server with --cpu-prof and write its .cpuprofile into DIR
  -h, --help        this text

Run \`npm run build\` first (or use \`npm run bench\`, which builds).`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      iterations: { type: 'string', default: '500' },
      warmup: { type: 'string', default: '1000' },
      seconds: { type: 'string', default: '30' },
      concurrency: { type: 'string', default: '4' },
      'cpu-prof': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const positive = positiveOption;
  return {
    iterations: positive('iterations', values.iterations, true),
    warmup: positive('warmup', values.warmup, true),
    seconds: positive('seconds', values.seconds, false),
    concurrency: positive('concurrency', values.concurrency, true),
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']),
  };
}

// ---------------------------------------------------------------------------
// The server child process

/**
 * Starts `stacyvm serve --port 0` with a clean environment (see cleanEnv in bench/lib/server.mjs):
 * no inherited STACYVM_* variable, HOME at the temp dir, the mock provider only.
 */
function startServer({ workDir, mockDir, cpuProfDir }) {
  const env = cleanEnv(workDir, {
    STACYVM_LOGGING_LEVEL: 'info',
    STACYVM_PROVIDERS_MOCK_BASE_DIR: mockDir,
    // This benchmark measures the mock provider; keep Docker out of provider selection.
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
  });
  const nodeArgs = cpuProfDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`];
  return startStacyvm({
    args: ['serve', '--port', '0'],
    nodeArgs,
    cwd: workDir,
    env,
    startTimeoutMs: START_TIMEOUT_MS,
    stopTimeoutMs: STOP_TIMEOUT_MS,
  });
}

// ---------------------------------------------------------------------------
// The two sides

/** The baseline: what it costs this Node process to run `sh -c true` itself. */
function directSpawn() {
  return new Promise((res, rej) => {
    const child = spawn('sh', ['-c', 'true']);
    child.once('error', rej);
    // 'close' = exited and stdio closed, which is also what the provider waits for.
    child.once('close', (code) => {
      if (code === 0) res();
      else rej(new BenchError(`sh -c true exited with ${code}`));
    });
  });
}

async function createSandbox(call, phase) {
  const sb = await call(phase, 'POST', '/api/v1/sandboxes', {}, 201);
  if (typeof sb?.id !== 'string') throw new BenchError('POST /api/v1/sandboxes gave no id');
  return sb.id;
}

async function destroySandbox(call, phase, id) {
  await call(phase, 'DELETE', `/api/v1/sandboxes/${encodeURIComponent(id)}`, undefined, 200);
}

// ---------------------------------------------------------------------------
// Phases

async function measureLatency({ call, sandboxId, iterations, budgetMs, serverPid }) {
  const execPath = `/api/v1/sandboxes/${encodeURIComponent(sandboxId)}/exec`;
  const provider = []; // exec "duration" the server reports: spawn to exit inside the provider
  const sides = {
    direct: { samples: [], run: directSpawn },
    exec: {
      samples: [],
      run: async () => {
        const r = await call('exec', 'POST', execPath, { command: 'true' }, 200);
        if (r?.exit_code !== 0) throw new BenchError(`exec true gave exit_code ${r?.exit_code}`);
        const d = goDurationMs(r.duration);
        if (d !== undefined) provider.push(d);
      },
    },
    health: {
      samples: [],
      run: async () => {
        await call('health', 'GET', '/api/v1/health', undefined, 200);
      },
    },
  };
  const execCpu = cpuMeter(serverPid);
  const deadline = performance.now() + budgetMs;
  const order = ['direct', 'exec', 'health'];
  let rounds = 0;
  while (performance.now() < deadline && order.some((k) => sides[k].samples.length < iterations)) {
    // Reversing the order each round keeps "who runs right after whom" symmetric.
    const thisRound = rounds % 2 === 0 ? order : [...order].reverse();
    for (const key of thisRound) {
      const side = sides[key];
      const todo = Math.min(ROUND, iterations - side.samples.length);
      const block = () =>
        repeat(todo, deadline, async () => {
          const t0 = performance.now();
          await side.run();
          side.samples.push(performance.now() - t0);
        });
      if (key === 'exec') await execCpu.around(block);
      else await block();
    }
    rounds++;
  }
  return {
    rounds,
    direct: summarize(sides.direct.samples),
    exec: summarize(sides.exec.samples),
    health: summarize(sides.health.samples),
    provider: summarize(provider),
    server_cpu_ms_per_exec: execCpu.per(sides.exec.samples.length),
    server_rss_mb: rssMb(serverPid) ?? null,
  };
}

async function measureCycles({ call, concurrency, budgetMs, serverPid }) {
  const newMode = (clients) => ({
    clients,
    cycles: 0,
    ms: 0,
    create: [],
    destroy: [],
    cpu: cpuMeter(serverPid),
  });
  const modes = { sequential: newMode(1), concurrent: newMode(concurrency) };
  const deadline = performance.now() + budgetMs;
  let slice = 0;
  while (performance.now() < deadline) {
    const mode = slice % 2 === 0 ? modes.sequential : modes.concurrent;
    const phase = slice % 2 === 0 ? 'seq' : 'conc';
    const sliceEnd = Math.min(deadline, performance.now() + SLICE_MS);
    const t0 = performance.now();
    const client = async () => {
      await repeat(MAX_CYCLES - mode.cycles, sliceEnd, async () => {
        const a = performance.now();
        const id = await createSandbox(call, `${phase}-create`);
        const b = performance.now();
        await destroySandbox(call, `${phase}-delete`, id);
        mode.destroy.push(performance.now() - b);
        mode.create.push(b - a);
        mode.cycles++;
      });
    };
    await mode.cpu.around(() => Promise.all(Array.from({ length: mode.clients }, client)));
    // Elapsed includes the tail: the last cycle of every client runs to completion.
    mode.ms += performance.now() - t0;
    slice++;
  }
  const out = {};
  for (const [name, m] of Object.entries(modes)) {
    out[name] = {
      clients: m.clients,
      cycles: m.cycles,
      seconds: round3(m.ms / 1000),
      cycles_per_s: round3(m.ms > 0 ? (m.cycles * 1000) / m.ms : NaN),
      create_ms: summarize(m.create),
      delete_ms: summarize(m.destroy),
      server_cpu_ms_per_cycle: m.cpu.per(m.cycles),
    };
  }
  return out;
}

// ---------------------------------------------------------------------------
// Output

function printReport(r) {
  const lines = [];
  const row = (cells, widths) =>
    cells
      .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
      .join('  ');
  const w = [34, 6, 8, 8, 8, 8];
  lines.push('');
  lines.push(
    `api-overhead  node ${process.version}  ${process.platform}/${process.arch}  ${r.cpus} cpus  ` +
      `warm-up ${r.warmup.rounds} rounds (${fmt(r.warmup.seconds, 1)} s)  ` +
      `rounds ${r.latency.rounds} x ${ROUND}`,
  );
  lines.push('');
  lines.push(row(['latency (ms, client-side)', 'n', 'p50', 'p90', 'p99', 'mean'], w));
  const lat = (label, s) => row([label, s.n, fmt(s.p50), fmt(s.p90), fmt(s.p99), fmt(s.mean)], w);
  lines.push(lat('direct spawn sh -c true', r.latency.direct));
  lines.push(lat('API exec true', r.latency.exec));
  lines.push(lat('API GET /health (HTTP floor)', r.latency.health));
  lines.push(lat('  server: exec handling', r.server.exec));
  lines.push(lat('  server: exec provider duration', r.latency.provider));
  lines.push(lat('  server: health handling', r.server.health));
  lines.push('');
  lines.push(`ratio API exec / direct spawn:  p50 ${fmt(r.ratio_p50)}x   p99 ${fmt(r.ratio_p99)}x`);
  lines.push(
    `server CPU per exec ${fmt(r.latency.server_cpu_ms_per_exec)} ms, ` +
      `server RSS ${r.latency.server_rss_mb ?? '-'} MB`,
  );
  lines.push('');
  const w2 = [34, 8, 8, 10, 10, 10, 10];
  lines.push(
    row(
      [
        'spawn→destroy cycles',
        'clients',
        'cycles',
        'cycles/s',
        'create p50',
        'delete p50',
        'cpu/cycle',
      ],
      w2,
    ),
  );
  for (const [name, m] of Object.entries(r.cycles)) {
    lines.push(
      row(
        [
          name,
          m.clients,
          m.cycles,
          fmt(m.cycles_per_s, 1),
          fmt(m.create_ms.p50),
          fmt(m.delete_ms.p50),
          fmt(m.server_cpu_ms_per_cycle),
        ],
        w2,
      ),
    );
  }
  lines.push(lat('  server: create handling, 1 client', r.server.create));
  lines.push(lat('  server: delete handling, 1 client', r.server.delete));
  lines.push('');
  lines.push(
    `server log lines per request: exec ${fmt(r.log_lines_per_request.exec, 1)}, ` +
      `create ${fmt(r.log_lines_per_request.create, 1)}, delete ${fmt(r.log_lines_per_request.delete, 1)}`,
  );
  lines.push('');
  for (const t of Object.values(r.targets)) {
    lines.push(
      `${t.pass ? 'PASS' : 'MISS'}  ${t.label}: ${fmt(t.value)} (target ${t.op} ${t.target})`,
    );
  }
  lines.push('');
  process.stdout.write(lines.join('\n') + '\n');
  process.stdout.write(JSON.stringify(r.json) + '\n');
}

function buildResult(opts, warmup, latency, cycles, server) {
  const phase = (name) => phaseOf(server, name);
  const merged = (names) => {
    const ps = names.map(phase);
    return {
      responseMs: ps.flatMap((p) => p.responseMs),
      logLines: ps.reduce((s, p) => s + p.logLines, 0),
    };
  };
  const perRequest = (p) => (p.responseMs.length === 0 ? null : p.logLines / p.responseMs.length);
  const serverSide = {
    exec: summarize(phase('exec').responseMs),
    health: summarize(phase('health').responseMs),
    // Sequential phase only: under concurrency handling time includes waiting for other requests.
    create: summarize(phase('seq-create').responseMs),
    delete: summarize(phase('seq-delete').responseMs),
  };
  const ratioP50 = latency.exec.p50 / latency.direct.p50;
  const ratioP99 = latency.exec.p99 / latency.direct.p99;
  const targets = {
    exec_p50_ratio: {
      label: 'API exec p50 / direct spawn p50',
      op: '<=',
      target: TARGET_EXEC_RATIO,
      value: round3(ratioP50),
      pass: ratioP50 <= TARGET_EXEC_RATIO,
    },
    cycles_per_s_sequential: {
      label: 'spawn→destroy cycles/s, 1 client',
      op: '>=',
      target: TARGET_CYCLES_PER_S,
      value: cycles.sequential.cycles_per_s,
      pass: cycles.sequential.cycles_per_s >= TARGET_CYCLES_PER_S,
    },
    cycles_per_s_concurrent: {
      label: `spawn→destroy cycles/s, ${opts.concurrency} clients`,
      op: '>=',
      target: TARGET_CYCLES_PER_S,
      value: cycles.concurrent.cycles_per_s,
      pass: cycles.concurrent.cycles_per_s >= TARGET_CYCLES_PER_S,
    },
  };
  const logLines = {
    exec: perRequest(phase('exec')),
    create: perRequest(merged(['seq-create', 'conc-create'])),
    delete: perRequest(merged(['seq-delete', 'conc-delete'])),
  };
  const json = {
    bench: 'api-overhead',
    node: process.version,
    platform: `${process.platform}/${process.arch}`,
    cpus: cpus().length,
    iterations: opts.iterations,
    warmup_rounds: warmup.rounds,
    warmup_seconds: warmup.seconds,
    seconds: opts.seconds,
    concurrency: opts.concurrency,
    direct_spawn_ms: latency.direct,
    api_exec_ms: latency.exec,
    api_health_ms: latency.health,
    ratio_p50: round3(ratioP50),
    ratio_p99: round3(ratioP99),
    server_exec_ms: serverSide.exec,
    server_cpu_ms_per_exec: latency.server_cpu_ms_per_exec,
    server_rss_mb: latency.server_rss_mb,
    provider_exec_ms: latency.provider,
    server_health_ms: serverSide.health,
    server_create_ms: serverSide.create,
    server_delete_ms: serverSide.delete,
    cycles_per_s_sequential: cycles.sequential.cycles_per_s,
    cycles_per_s_concurrent: cycles.concurrent.cycles_per_s,
    cycles,
    log_lines_per_request: logLines,
    targets: Object.fromEntries(
      Object.entries(targets).map(([k, t]) => [
        k,
        { value: t.value, target: t.target, result: t.pass ? 'PASS' : 'MISS' },
      ]),
    ),
  };
  return {
    cpus: cpus().length,
    warmup,
    latency,
    cycles,
    server: serverSide,
    ratio_p50: round3(ratioP50),
    ratio_p99: round3(ratioP99),
    log_lines_per_request: logLines,
    targets,
    json,
  };
}

// ---------------------------------------------------------------------------

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  requireBuild();
  const workDir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-'));
  const mockDir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-mock-'));
  let server;
  let pool;
  const cleanup = async () => {
    await pool?.close().catch(() => undefined);
    await stopServer(server);
    await rm(workDir, { recursive: true, force: true });
    await rm(mockDir, { recursive: true, force: true });
  };
  // Ctrl-C must not leave a server or temp dirs behind.
  let interrupted = false;
  const onSignal = (sig) => {
    interrupted = true;
    process.stderr.write(`api-overhead: ${sig}, stopping the server\n`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const budgetMs = opts.seconds * 1000;
    server = await startServer({ workDir, mockDir, cpuProfDir: opts.cpuProfDir });
    const client = makeClient(server.address, { connections: opts.concurrency, server });
    pool = client.pool;
    const { call } = client;

    const sandboxId = await createSandbox(call, 'setup');
    const execPath = `/api/v1/sandboxes/${encodeURIComponent(sandboxId)}/exec`;

    // Warm-up: JIT (server, spawn helper, this process), connection, SQLite page cache.
    const warmStart = performance.now();
    let warmRounds = 0;
    await repeat(opts.warmup, warmStart + budgetMs * 0.35, async () => {
      await directSpawn();
      await call('warm', 'POST', execPath, { command: 'true' }, 200);
      await call('warm', 'GET', '/api/v1/health', undefined, 200);
      if (warmRounds % 10 === 0) {
        await destroySandbox(call, 'warm', await createSandbox(call, 'warm'));
      }
      warmRounds++;
    });
    const warmup = { rounds: warmRounds, seconds: round3((performance.now() - warmStart) / 1000) };

    const latency = await measureLatency({
      call,
      sandboxId,
      iterations: opts.iterations,
      budgetMs: budgetMs * 0.35,
      serverPid: server.child.pid,
    });
    const cycles = await measureCycles({
      call,
      concurrency: opts.concurrency,
      budgetMs: budgetMs * 0.3,
      serverPid: server.child.pid,
    });
    await destroySandbox(call, 'setup', sandboxId);

    await pool.close();
    pool = undefined;
    // Stop first: server-side figures come from its log, complete only once stderr has ended.
    await stopServer(server);
    printReport(buildResult(opts, warmup, latency, cycles, server));
    if (opts.cpuProfDir !== undefined) {
      process.stdout.write(`server CPU profile written to ${opts.cpuProfDir}\n`);
    }
  } catch (err) {
    process.exitCode = 1;
    // After Ctrl-C the failing request is a consequence, not news.
    if (interrupted) return;
    reportFailure('api-overhead', err, [server]);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await runBench('api-overhead', main);
