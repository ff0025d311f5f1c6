#!/usr/bin/env node
// Benchmark: what the built-in preview gateway costs over talking to the sandbox port directly.
//
// Starts the real built server (`stacyvm serve --port 0`, mock provider, SQLite in a fresh temp
// dir, `preview.listen_addr=127.0.0.1:0`) and a minimal node HTTP + WebSocket app
// (bench/preview-gateway/app.mjs) as child processes, spawns a mock sandbox declaring the app's
// port (with the mock provider a sandbox's port N is 127.0.0.1:N on the host, so the app is what
// `http://{port}-{id}.localhost` reaches), then measures in the same run, interleaved:
//   1. latency at 1 connection — sequential keep-alive GETs, direct to the app's port vs
//      through the gateway (Host `{port}-{id}.localhost:{gw}`);
//   2. throughput at C connections (default 50) — a keep-alive load generator (undici Pool,
//      C requests in flight), requests/s and p50/p99, in alternating 1 s slices per side;
//   3. WebSocket echo round trip — one socket per side, sequential echoes of a 32-byte message.
//
// Every loop is bounded by a count and by a wall-clock cap. Exit 0 whatever the numbers are
// (this is a measurement), 1 if a process does not start or any request fails or answers wrong.
// See bench/README.md for how to read the output.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { WebSocket } from 'ws';
import { makeClient } from '../lib/http.mjs';
import { within } from '../lib/loops.mjs';
import { cpuMeter, rssMb } from '../lib/proc.mjs';
import {
  BenchError,
  cleanEnv,
  requireBuild,
  startServer as startStacyvm,
  stopServer,
} from '../lib/server.mjs';
import { diff, fmt, ratio, round3, summarize } from '../lib/stats.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const APP = join(HERE, 'app.mjs');
const TARGET_THROUGHPUT_RATIO = 0.25;
const TARGET_ADDED_P50_MS = 0.3;
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000;
const ROUND = 200; // 1-connection samples per side per round
const WS_ROUND = 100; // WebSocket echoes per side per round
const SLICE_MS = 1_000; // throughput alternates direct and gateway slices of this length
const WS_MESSAGE = 'stacyvm-preview-bench-echo-32byt'; // 32 bytes

function usage() {
  return `usage: node bench/preview-gateway/run.mjs [options]

  --seconds S        wall-clock budget for all measuring, excluding start/stop (default 40)
  --iterations N     1-connection requests per side (default 5000)
  --connections C    connections (requests in flight) of the throughput phase (default 50)
  --requests N       throughput requests per side at most (default 2000000; time normally ends it)
  --ws-messages N    WebSocket echoes per side (default 3000)
  --cpu-prof DIR     run the server with --cpu-prof and write its .cpuprofile into DIR
  -h, --help         this text

Run \`npm run build\` first (or use \`npm run bench:preview\`, which builds).`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: 'string', default: '40' },
      iterations: { type: 'string', default: '5000' },
      connections: { type: 'string', default: '50' },
      requests: { type: 'string', default: '2000000' },
      'ws-messages': { type: 'string', default: '3000' },
      'cpu-prof': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const positive = (name, raw, integer) => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
      throw new BenchError(`--${name} must be a positive ${integer ? 'integer' : 'number'}`);
    }
    return n;
  };
  return {
    seconds: positive('seconds', values.seconds, false),
    iterations: positive('iterations', values.iterations, true),
    connections: positive('connections', values.connections, true),
    requests: positive('requests', values.requests, true),
    wsMessages: positive('ws-messages', values['ws-messages'], true),
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']),
  };
}

// ---------------------------------------------------------------------------
// Child processes

/** Starts app.mjs; resolves with its port. Its stdin is a pipe: it exits when the bench does. */
async function startApp() {
  const child = spawn(process.execPath, [APP], { stdio: ['pipe', 'pipe', 'pipe'] });
  const proc = { child, exited: false, exitInfo: '', tail: [] };
  const closed = new Promise((r) =>
    child.once('exit', (code, signal) => {
      proc.exited = true;
      proc.exitInfo = signal === null ? `exit code ${code}` : `signal ${signal}`;
      r();
    }),
  );
  proc.stop = async () => {
    if (proc.exited) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await closed;
    clearTimeout(timer);
  };
  createInterface({ input: child.stderr }).on('line', (l) => {
    proc.tail.push(l);
    if (proc.tail.length > 20) proc.tail.shift();
  });
  const port = await within(
    START_TIMEOUT_MS,
    'starting the app',
    new Promise((res, rej) => {
      createInterface({ input: child.stdout }).once('line', (line) => {
        try {
          res(JSON.parse(line).port);
        } catch {
          rej(new BenchError(`the app printed ${line}`));
        }
      });
      void closed.then(() =>
        rej(new BenchError(`the app exited (${proc.exitInfo}): ${proc.tail.join('\n')}`)),
      );
    }),
  );
  proc.port = port;
  return proc;
}

/** `stacyvm serve --port 0`, mock provider only, the preview gateway on a free loopback port. */
async function startServer({ workDir, mockDir, cpuProfDir }) {
  let onGateway;
  const gateway = new Promise((r) => (onGateway = r));
  const env = cleanEnv(workDir, {
    STACYVM_LOGGING_LEVEL: 'info',
    STACYVM_PROVIDERS_MOCK_BASE_DIR: mockDir,
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
    STACYVM_PREVIEW_LISTEN_ADDR: '127.0.0.1:0',
  });
  const nodeArgs = cpuProfDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`];
  const server = await startStacyvm({
    args: ['serve', '--port', '0'],
    nodeArgs,
    cwd: workDir,
    env,
    startTimeoutMs: START_TIMEOUT_MS,
    stopTimeoutMs: STOP_TIMEOUT_MS,
    onRecord: (rec) => {
      if (rec.msg === 'preview gateway listening' && typeof rec.address === 'string') {
        onGateway(rec.address);
      }
    },
  });
  const address = await within(5_000, 'waiting for the preview gateway', gateway);
  const [host, port] = address.split(':');
  if (host !== '127.0.0.1') throw new BenchError(`the gateway listens on ${address}, not loopback`);
  return { server, gatewayPort: Number(port) };
}

// ---------------------------------------------------------------------------
// Load

/** One side of the comparison: an origin, the Host header to send, its pools. */
function makeSide(name, port, host, connections) {
  const origin = `http://127.0.0.1:${port}`;
  const opts = {
    pipelining: 1,
    headersTimeout: REQUEST_TIMEOUT_MS,
    bodyTimeout: REQUEST_TIMEOUT_MS,
  };
  return {
    name,
    port,
    host,
    single: new Pool(origin, { ...opts, connections: 1 }),
    many: new Pool(origin, { ...opts, connections }),
    headers: host === undefined ? {} : { host },
    latency: [], // 1-connection samples (ms)
    load: { requests: 0, ms: 0, samples: [] },
    ws: [],
    async close() {
      await Promise.all([this.single.close(), this.many.close()]);
    },
  };
}

/** GET / once on `pool`; checks the status and the body. */
async function get(side, pool, expectBody) {
  let res;
  try {
    res = await pool.request({ method: 'GET', path: '/', headers: side.headers });
  } catch (err) {
    throw new BenchError(`${side.name}: GET / failed: ${err.message}`);
  }
  const body = await res.body.text();
  if (res.statusCode !== 200 || (expectBody !== undefined && body !== expectBody)) {
    throw new BenchError(`${side.name}: GET / answered ${res.statusCode}: ${body.slice(0, 300)}`);
  }
  return body;
}

/**
 * `connections` loops of sequential GETs on `pool` until `count` requests were started or
 * `deadline` passed; pushes each latency into `samples`. Resolves with requests done and the
 * elapsed time (the last request of every loop runs to completion).
 */
async function load(side, pool, expectBody, { connections, count, deadline, samples }) {
  let started = 0;
  let done = 0;
  const t0 = performance.now();
  const loop = async () => {
    while (started < count && performance.now() < deadline) {
      started++;
      const a = performance.now();
      await get(side, pool, expectBody);
      samples?.push(performance.now() - a);
      done++;
    }
  };
  await Promise.all(Array.from({ length: connections }, loop));
  return { done, ms: performance.now() - t0 };
}

function openWs(port, host) {
  return within(
    REQUEST_TIMEOUT_MS,
    `opening a WebSocket on port ${port}`,
    new Promise((res, rej) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, {
        perMessageDeflate: false,
        ...(host === undefined ? {} : { headers: { host } }),
      });
      ws.once('open', () => res(ws));
      ws.once('unexpected-response', (_req, r) =>
        rej(new BenchError(`WebSocket upgrade on port ${port} answered ${r.statusCode}`)),
      );
      ws.once('error', (err) => rej(new BenchError(`WebSocket on port ${port}: ${err.message}`)));
    }),
  );
}

/** One echo round trip; checks the message came back unchanged. */
function echo(ws, name) {
  return within(
    REQUEST_TIMEOUT_MS,
    `${name}: WebSocket echo`,
    new Promise((res, rej) => {
      ws.once('message', (data) => {
        if (data.toString() === WS_MESSAGE) res();
        else rej(new BenchError(`${name}: the echo came back as ${data.toString().slice(0, 80)}`));
      });
      ws.send(WS_MESSAGE);
    }),
  );
}

// ---------------------------------------------------------------------------
// Phases

async function warmUp(sides, body, budgetMs, connections) {
  const deadline = performance.now() + budgetMs;
  for (const side of sides) {
    await load(side, side.many, body, { connections, count: 5_000, deadline });
    await load(side, side.single, body, { connections: 1, count: 1_000, deadline });
  }
}

async function measureLatency(sides, body, iterations, budgetMs, cpu) {
  const deadline = performance.now() + budgetMs;
  let rounds = 0;
  while (performance.now() < deadline && sides.some((s) => s.latency.length < iterations)) {
    // Reversing the order each round keeps "who runs right after whom" symmetric.
    const order = rounds % 2 === 0 ? sides : [...sides].reverse();
    for (const side of order) {
      const count = Math.min(ROUND, iterations - side.latency.length);
      const run = () =>
        load(side, side.single, body, { connections: 1, count, deadline, samples: side.latency });
      if (side.name === 'gateway') await cpu.latency.around(run);
      else await run();
    }
    rounds++;
  }
  return rounds;
}

async function measureThroughput(sides, body, connections, maxRequests, budgetMs, cpu) {
  const deadline = performance.now() + budgetMs;
  let slice = 0;
  while (performance.now() < deadline && sides.some((s) => s.load.requests < maxRequests)) {
    const side = sides[slice % 2];
    const sliceEnd = Math.min(deadline, performance.now() + SLICE_MS);
    const run = async () => {
      const r = await load(side, side.many, body, {
        connections,
        count: maxRequests - side.load.requests,
        deadline: sliceEnd,
        samples: side.load.samples,
      });
      side.load.requests += r.done;
      side.load.ms += r.ms;
    };
    if (side.name === 'gateway') await cpu.throughput.around(run);
    else await run();
    slice++;
  }
  return slice;
}

async function measureWs(sides, messages, budgetMs) {
  const deadline = performance.now() + budgetMs;
  const sockets = new Map();
  try {
    for (const side of sides) sockets.set(side, await openWs(side.port, side.host));
    for (const [side, ws] of sockets) {
      for (let i = 0; i < 50; i++) await echo(ws, side.name); // warm-up
    }
    let rounds = 0;
    while (performance.now() < deadline && sides.some((s) => s.ws.length < messages)) {
      const order = rounds % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) {
        const ws = sockets.get(side);
        const todo = Math.min(WS_ROUND, messages - side.ws.length);
        for (let i = 0; i < todo && performance.now() < deadline; i++) {
          const t0 = performance.now();
          await echo(ws, side.name);
          side.ws.push(performance.now() - t0);
        }
      }
      rounds++;
    }
    return rounds;
  } finally {
    for (const ws of sockets.values()) ws.terminate();
  }
}

// ---------------------------------------------------------------------------
// Output

function buildResult(opts, sides, meta, cpu) {
  const [direct, gateway] = sides;
  const lat = { direct: summarize(direct.latency), gateway: summarize(gateway.latency) };
  const rps = (s) => (s.load.ms > 0 ? (s.load.requests * 1000) / s.load.ms : NaN);
  const thr = {
    direct: {
      requests: direct.load.requests,
      rps: round3(rps(direct)),
      ...summarize(direct.load.samples),
    },
    gateway: {
      requests: gateway.load.requests,
      rps: round3(rps(gateway)),
      ...summarize(gateway.load.samples),
    },
  };
  const ws = { direct: summarize(direct.ws), gateway: summarize(gateway.ws) };
  const addedP50 = diff(lat.gateway.p50, lat.direct.p50);
  const thrRatio = ratio(thr.gateway.rps, thr.direct.rps);
  const targets = {
    throughput_ratio: {
      label: `gateway / direct requests/s at ${opts.connections} connections`,
      op: '>=',
      target: TARGET_THROUGHPUT_RATIO,
      value: thrRatio,
      pass: thrRatio !== null && thrRatio >= TARGET_THROUGHPUT_RATIO,
    },
    added_p50_ms: {
      label: 'added p50 latency at 1 connection (ms)',
      op: '<',
      target: TARGET_ADDED_P50_MS,
      value: addedP50,
      pass: addedP50 !== null && addedP50 < TARGET_ADDED_P50_MS,
    },
  };
  const cpuPerRequestUs = {
    latency: cpu.latency.per(gateway.latency.length),
    throughput: cpu.throughput.per(gateway.load.requests),
  };
  for (const k of Object.keys(cpuPerRequestUs)) {
    if (cpuPerRequestUs[k] !== null) cpuPerRequestUs[k] = round3(cpuPerRequestUs[k] * 1000);
  }
  const json = {
    bench: 'preview-gateway',
    node: process.version,
    platform: `${process.platform}/${process.arch}`,
    cpus: cpus().length,
    seconds: opts.seconds,
    connections: opts.connections,
    latency_rounds: meta.latencyRounds,
    throughput_slices: meta.slices,
    ws_rounds: meta.wsRounds,
    latency_1conn_ms: lat,
    added_p50_ms: addedP50,
    added_p99_ms: diff(lat.gateway.p99, lat.direct.p99),
    throughput: thr,
    throughput_ratio: thrRatio,
    ws_echo_ms: ws,
    ws_added_p50_ms: diff(ws.gateway.p50, ws.direct.p50),
    gateway_cpu_us_per_request: cpuPerRequestUs,
    server_rss_mb: meta.serverRssMb,
    targets: Object.fromEntries(
      Object.entries(targets).map(([k, t]) => [
        k,
        { value: t.value, target: t.target, result: t.pass ? 'PASS' : 'MISS' },
      ]),
    ),
  };
  return { lat, thr, ws, addedP50, thrRatio, targets, cpuPerRequestUs, json };
}

function printReport(opts, r, meta) {
  const lines = [];
  const row = (cells, widths) =>
    cells
      .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
      .join('  ');
  const w = [36, 7, 8, 8, 8, 8, 10];
  const line = (label, s, extra = '') =>
    row([label, s.n, fmt(s.p50, 3), fmt(s.p90, 3), fmt(s.p99, 3), fmt(s.mean, 3), extra], w);
  lines.push('');
  lines.push(
    `preview-gateway  node ${process.version}  ${process.platform}/${process.arch}  ` +
      `${cpus().length} cpus  sandbox app on 127.0.0.1:${meta.appPort}, gateway on 127.0.0.1:${meta.gatewayPort}`,
  );
  lines.push('');
  lines.push(row(['GET / (ms, client-side)', 'n', 'p50', 'p90', 'p99', 'mean', 'req/s'], w));
  lines.push(line('1 connection, direct', r.lat.direct));
  lines.push(line('1 connection, through the gateway', r.lat.gateway));
  lines.push(
    line(`${opts.connections} connections, direct`, r.thr.direct, fmt(r.thr.direct.rps, 0)),
  );
  lines.push(
    line(
      `${opts.connections} connections, through the gateway`,
      r.thr.gateway,
      fmt(r.thr.gateway.rps, 0),
    ),
  );
  lines.push('');
  lines.push(row(['WebSocket echo round trip (ms)', 'n', 'p50', 'p90', 'p99', 'mean', ''], w));
  lines.push(line('direct', r.ws.direct));
  lines.push(line('through the gateway', r.ws.gateway));
  lines.push('');
  lines.push(
    `added by the gateway: p50 ${fmt(r.addedP50, 3)} ms at 1 connection, ` +
      `WebSocket echo p50 ${fmt(r.json.ws_added_p50_ms, 3)} ms; ` +
      `throughput ${fmt(r.thrRatio, 3)}x of direct at ${opts.connections} connections`,
  );
  lines.push(
    `gateway process CPU per proxied request: ${fmt(r.cpuPerRequestUs.latency, 1)} µs at 1 connection, ` +
      `${fmt(r.cpuPerRequestUs.throughput, 1)} µs at ${opts.connections}; server RSS ${meta.serverRssMb ?? '-'} MB`,
  );
  lines.push('');
  for (const t of Object.values(r.targets)) {
    lines.push(
      `${t.pass ? 'PASS' : 'MISS'}  ${t.label}: ${fmt(t.value, 3)} (target ${t.op} ${t.target})`,
    );
  }
  lines.push('');
  process.stdout.write(lines.join('\n') + '\n');
  process.stdout.write(JSON.stringify(r.json) + '\n');
}

// ---------------------------------------------------------------------------

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  requireBuild();
  const workDir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-'));
  const mockDir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-mock-'));
  let server;
  let app;
  let api;
  const sides = [];
  let cleaning;
  const cleanup = () => (cleaning ??= cleanupOnce());
  const cleanupOnce = async () => {
    await Promise.all(sides.map((s) => s.close().catch(() => undefined)));
    await api?.pool.close().catch(() => undefined);
    await stopServer(server);
    await app?.stop();
    await rm(workDir, { recursive: true, force: true });
    await rm(mockDir, { recursive: true, force: true });
  };
  let interrupted = false;
  const onSignal = (sig) => {
    interrupted = true;
    process.stderr.write(`preview-gateway: ${sig}, stopping\n`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const budgetMs = opts.seconds * 1000;
    app = await startApp();
    const started = await startServer({ workDir, mockDir, cpuProfDir: opts.cpuProfDir });
    server = started.server;
    const gatewayPort = started.gatewayPort;
    api = makeClient(server.address, { connections: 1, server, timeoutMs: REQUEST_TIMEOUT_MS });
    const sb = await api.call('setup', 'POST', '/api/v1/sandboxes', { ports: [app.port] }, 201);
    const preview = await api.call(
      'setup',
      'GET',
      `/api/v1/sandboxes/${encodeURIComponent(sb.id)}/preview/${app.port}`,
      undefined,
      200,
    );
    const host = `${app.port}-${sb.id}.localhost:${gatewayPort}`;
    if (preview.url !== `http://${host}`) {
      throw new BenchError(`the preview URL is ${preview.url}, expected http://${host}`);
    }
    sides.push(makeSide('direct', app.port, undefined, opts.connections));
    sides.push(makeSide('gateway', gatewayPort, host, opts.connections));
    // Both sides must get the very same answer from the app.
    const body = await get(sides[0], sides[0].single);
    await get(sides[1], sides[1].single, body);

    const cpu = { latency: cpuMeter(server.child.pid), throughput: cpuMeter(server.child.pid) };
    await warmUp(sides, body, budgetMs * 0.1, opts.connections);
    const latencyRounds = await measureLatency(sides, body, opts.iterations, budgetMs * 0.3, cpu);
    const slices = await measureThroughput(
      sides,
      body,
      opts.connections,
      opts.requests,
      budgetMs * 0.4,
      cpu,
    );
    const wsRounds = await measureWs(sides, opts.wsMessages, budgetMs * 0.2);
    const serverRssMb = rssMb(server.child.pid) ?? null;
    if (app.exited) throw new BenchError(`the app exited during the run (${app.exitInfo})`);
    await api.call(
      'setup',
      'DELETE',
      `/api/v1/sandboxes/${encodeURIComponent(sb.id)}`,
      undefined,
      200,
    );

    const meta = { latencyRounds, slices, wsRounds, serverRssMb, appPort: app.port, gatewayPort };
    const result = buildResult(opts, sides, meta, cpu);
    await cleanup();
    printReport(opts, result, meta);
    if (opts.cpuProfDir !== undefined) {
      process.stdout.write(`server CPU profile written to ${opts.cpuProfDir}\n`);
    }
  } catch (err) {
    process.exitCode = 1;
    if (interrupted) return;
    process.stderr.write(`preview-gateway: ${err instanceof Error ? err.message : String(err)}\n`);
    if (!(err instanceof BenchError) && err instanceof Error)
      process.stderr.write(`${err.stack}\n`);
    if (server !== undefined && server.tail.length > 0) {
      process.stderr.write(`last server output:\n${server.tail.slice(-15).join('\n')}\n`);
    }
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await main().catch((err) => {
  process.stderr.write(`preview-gateway: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
