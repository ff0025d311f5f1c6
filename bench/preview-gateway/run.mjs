#!/usr/bin/env node
// Benchmark: what the built-in preview gateway costs over talking to the sandbox port directly.
//
// Starts, as child processes: the real built server (`stacyvm serve --port 0`, mock provider,
// SQLite in a fresh temp dir, `preview.listen_addr=127.0.0.1:0`); a minimal node HTTP +
// WebSocket app (bench/preview-gateway/app.mjs); and, as a reference, the same built gateway
// code with a resolver that answers at once (bench/preview-gateway/fixed-gateway.mjs). It spawns
// a mock sandbox declaring the app's port (with the mock provider a sandbox's port N is
// 127.0.0.1:N on the host, so the app is what `http://{port}-{id}.localhost` reaches) and
// measures three sides in the same run, interleaved:
//   direct   — the app's port itself;
//   gateway  — the control plane's gateway, Host `{port}-{id}.localhost:{gw}` (what users get:
//              host parsing, the sandbox looked up in the store, the provider asked for the port,
//              then the proxying); the targets are judged on this side;
//   proxy    — the fixed-resolver gateway: the proxying alone.
// Phases:
//   1. latency at 1 connection — sequential keep-alive GETs;
//   2. throughput at C connections (default 50) — a keep-alive load generator (undici Pool, C
//      requests in flight), requests/s and p50/p99, in alternating 1 s slices per side;
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
  positiveOption,
  cleanEnv,
  requireBuild,
  startServer as startStacyvm,
  stopServer,
  reportFailure,
  runBench,
} from '../lib/server.mjs';
import { diff, fmt, ratio, round3, summarize } from '../lib/stats.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const TARGET_THROUGHPUT_RATIO = 0.25;
const TARGET_ADDED_P50_MS = 0.3;
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000;
const ROUND = 200; // 1-connection samples per side per round
const WS_ROUND = 100; // WebSocket echoes per side per round
const SLICE_MS = 1_000; // throughput rotates the sides in slices of this length
const WS_MESSAGE = 'stacyvm-preview-bench-echo-32byt'; // 32 bytes

function usage() {
  return `usage: node bench/preview-gateway/run.mjs [options]

  --seconds S        wall-clock budget for all measuring, excluding start/stop (default 45)
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
      seconds: { type: 'string', default: '45' },
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
  const positive = positiveOption;
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

// Helpers still running when the bench exits (an uncaught error) are killed with it.
const helpers = new Set();
process.on('exit', () => {
  for (const h of helpers) h.child.kill('SIGKILL');
});

/**
 * Starts `node script ...args`, which prints `{"port":N}` once listening; resolves with a handle
 * carrying `port`, `pid`, `stop()`. Its stdin is a pipe: it exits when the bench does.
 */
async function startHelper(name, script, args = []) {
  const child = spawn(process.execPath, [join(HERE, script), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const proc = { name, child, pid: child.pid, exited: false, exitInfo: '', tail: [] };
  helpers.add(proc);
  const closed = new Promise((r) =>
    child.once('exit', (code, signal) => {
      proc.exited = true;
      helpers.delete(proc);
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
  proc.port = await within(
    START_TIMEOUT_MS,
    `starting the ${name}`,
    new Promise((res, rej) => {
      createInterface({ input: child.stdout }).once('line', (line) => {
        try {
          res(JSON.parse(line).port);
        } catch {
          rej(new BenchError(`the ${name} printed ${line}`));
        }
      });
      void closed.then(() =>
        rej(new BenchError(`the ${name} exited (${proc.exitInfo}): ${proc.tail.join('\n')}`)),
      );
    }),
  );
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
  try {
    const address = await within(5_000, 'waiting for the preview gateway', gateway);
    const [host, port] = address.split(':');
    if (host !== '127.0.0.1') throw new BenchError(`the gateway listens on ${address}`);
    return { server, gatewayPort: Number(port) };
  } catch (err) {
    await stopServer(server);
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Load

/**
 * One side of the comparison: a port, the Host header to send (none for direct), the process
 * whose CPU is metered (none for direct), its pools and samples.
 */
function makeSide(name, label, port, host, pid, connections) {
  const origin = `http://127.0.0.1:${port}`;
  const opts = {
    pipelining: 1,
    headersTimeout: REQUEST_TIMEOUT_MS,
    bodyTimeout: REQUEST_TIMEOUT_MS,
  };
  return {
    name,
    label,
    port,
    host,
    single: new Pool(origin, { ...opts, connections: 1 }),
    many: new Pool(origin, { ...opts, connections }),
    headers: host === undefined ? {} : { host },
    cpu: pid === undefined ? undefined : { single: cpuMeter(pid), many: cpuMeter(pid) },
    latency: [], // 1-connection samples (ms)
    load: { requests: 0, ms: 0, samples: [] },
    ws: [],
    async close() {
      await Promise.all([this.single.close(), this.many.close()]);
    },
  };
}

/** Runs `fn` under the side's CPU meter `which`, when it has one. */
function metered(side, which, fn) {
  return side.cpu === undefined ? fn() : side.cpu[which].around(fn);
}

/** GET / once on `pool`; checks the status and (when given) the body. */
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

function openWs(side) {
  return within(
    REQUEST_TIMEOUT_MS,
    `${side.name}: opening a WebSocket`,
    new Promise((res, rej) => {
      const ws = new WebSocket(`ws://127.0.0.1:${side.port}/ws`, {
        perMessageDeflate: false,
        ...(side.host === undefined ? {} : { headers: { host: side.host } }),
      });
      ws.once('open', () => res(ws));
      ws.once('unexpected-response', (_req, r) =>
        rej(new BenchError(`${side.name}: the WebSocket upgrade answered ${r.statusCode}`)),
      );
      ws.once('error', (err) => rej(new BenchError(`${side.name}: WebSocket: ${err.message}`)));
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

/** The sides in a rotating order (each side in each position equally often). */
function rotation(sides, i) {
  const k = i % sides.length;
  const order = [...sides.slice(k), ...sides.slice(0, k)];
  return Math.floor(i / sides.length) % 2 === 0 ? order : order.reverse();
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

async function measureLatency(sides, body, iterations, budgetMs) {
  const deadline = performance.now() + budgetMs;
  let rounds = 0;
  while (performance.now() < deadline && sides.some((s) => s.latency.length < iterations)) {
    for (const side of rotation(sides, rounds)) {
      const count = Math.min(ROUND, iterations - side.latency.length);
      await metered(side, 'single', () =>
        load(side, side.single, body, { connections: 1, count, deadline, samples: side.latency }),
      );
    }
    rounds++;
  }
  return rounds;
}

async function measureThroughput(sides, body, connections, maxRequests, budgetMs) {
  const deadline = performance.now() + budgetMs;
  let slice = 0;
  while (performance.now() < deadline && sides.some((s) => s.load.requests < maxRequests)) {
    const side = rotation(sides, Math.floor(slice / sides.length))[slice % sides.length];
    const sliceEnd = Math.min(deadline, performance.now() + SLICE_MS);
    await metered(side, 'many', async () => {
      const r = await load(side, side.many, body, {
        connections,
        count: maxRequests - side.load.requests,
        deadline: sliceEnd,
        samples: side.load.samples,
      });
      side.load.requests += r.done;
      side.load.ms += r.ms;
    });
    slice++;
  }
  return slice;
}

async function measureWs(sides, messages, budgetMs) {
  const deadline = performance.now() + budgetMs;
  const sockets = new Map();
  try {
    for (const side of sides) sockets.set(side, await openWs(side));
    for (const [side, ws] of sockets) {
      for (let i = 0; i < 50; i++) await echo(ws, side.name); // warm-up
    }
    let rounds = 0;
    while (performance.now() < deadline && sides.some((s) => s.ws.length < messages)) {
      for (const side of rotation(sides, rounds)) {
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

function buildResult(opts, sides, meta) {
  const rps = (s) => round3(s.load.ms > 0 ? (s.load.requests * 1000) / s.load.ms : NaN);
  const us = (x) => (x === null ? null : round3(x * 1000));
  const fig = {};
  for (const s of sides) {
    fig[s.name] = {
      latency_1conn_ms: summarize(s.latency),
      throughput: { requests: s.load.requests, rps: rps(s), ms: summarize(s.load.samples) },
      ws_echo_ms: summarize(s.ws),
      cpu_us_per_request:
        s.cpu === undefined
          ? null
          : {
              one_connection: us(s.cpu.single.per(s.latency.length)),
              many_connections: us(s.cpu.many.per(s.load.requests)),
            },
    };
  }
  const added = (name) => ({
    latency_p50_ms: diff(fig[name].latency_1conn_ms.p50, fig.direct.latency_1conn_ms.p50),
    latency_p99_ms: diff(fig[name].latency_1conn_ms.p99, fig.direct.latency_1conn_ms.p99),
    throughput_ratio: ratio(fig[name].throughput.rps, fig.direct.throughput.rps),
    ws_p50_ms: diff(fig[name].ws_echo_ms.p50, fig.direct.ws_echo_ms.p50),
  });
  const gw = added('gateway');
  const proxy = added('proxy');
  const targets = {
    throughput_ratio: {
      label: `gateway / direct requests/s at ${opts.connections} connections`,
      op: '>=',
      target: TARGET_THROUGHPUT_RATIO,
      value: gw.throughput_ratio,
      pass: gw.throughput_ratio !== null && gw.throughput_ratio >= TARGET_THROUGHPUT_RATIO,
    },
    added_p50_ms: {
      label: 'added p50 latency at 1 connection (ms)',
      op: '<',
      target: TARGET_ADDED_P50_MS,
      value: gw.latency_p50_ms,
      pass: gw.latency_p50_ms !== null && gw.latency_p50_ms < TARGET_ADDED_P50_MS,
    },
  };
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
    direct: fig.direct,
    gateway: fig.gateway,
    proxy: fig.proxy,
    added_by_gateway: gw,
    added_by_proxy_alone: proxy,
    // What resolving adds on top of proxying: control plane gateway minus fixed-resolver gateway.
    resolving_p50_ms: diff(fig.gateway.latency_1conn_ms.p50, fig.proxy.latency_1conn_ms.p50),
    server_rss_mb: meta.serverRssMb,
    targets: Object.fromEntries(
      Object.entries(targets).map(([k, t]) => [
        k,
        { value: t.value, target: t.target, result: t.pass ? 'PASS' : 'MISS' },
      ]),
    ),
  };
  return { fig, gw, proxy, targets, json };
}

function printReport(opts, sides, r, meta) {
  const lines = [];
  const row = (cells, widths) =>
    cells
      .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
      .join('  ');
  const w = [40, 7, 8, 8, 8, 8, 9, 9];
  const line = (label, s, ...extra) =>
    row([label, s.n, fmt(s.p50, 3), fmt(s.p90, 3), fmt(s.p99, 3), fmt(s.mean, 3), ...extra], w);
  const cpuOf = (name, which) => fmt(r.fig[name].cpu_us_per_request?.[which] ?? null, 0);
  lines.push('');
  lines.push(
    `preview-gateway  node ${process.version}  ${process.platform}/${process.arch}  ` +
      `${cpus().length} cpus  app 127.0.0.1:${meta.appPort}  gateway 127.0.0.1:${meta.gatewayPort}  ` +
      `proxy 127.0.0.1:${meta.proxyPort}`,
  );
  lines.push('');
  lines.push(
    row(['GET / at 1 connection (ms)', 'n', 'p50', 'p90', 'p99', 'mean', '', 'cpu µs'], w),
  );
  for (const s of sides) {
    lines.push(line(s.label, r.fig[s.name].latency_1conn_ms, '', cpuOf(s.name, 'one_connection')));
  }
  lines.push('');
  lines.push(
    row(
      [
        `GET / at ${opts.connections} connections (ms)`,
        'n',
        'p50',
        'p90',
        'p99',
        'mean',
        'req/s',
        'cpu µs',
      ],
      w,
    ),
  );
  for (const s of sides) {
    const t = r.fig[s.name].throughput;
    lines.push(line(s.label, t.ms, fmt(t.rps, 0), cpuOf(s.name, 'many_connections')));
  }
  lines.push('');
  lines.push(row(['WebSocket echo round trip (ms)', 'n', 'p50', 'p90', 'p99', 'mean', '', ''], w));
  for (const s of sides) lines.push(line(s.label, r.fig[s.name].ws_echo_ms, '', ''));
  lines.push('');
  const addedLine = (what, a) =>
    `${what}: p50 +${fmt(a.latency_p50_ms, 3)} ms at 1 connection, ` +
    `throughput ${fmt(a.throughput_ratio, 3)}x of direct at ${opts.connections} connections, ` +
    `WebSocket echo p50 +${fmt(a.ws_p50_ms, 3)} ms`;
  lines.push(addedLine('added by the gateway', r.gw));
  lines.push(addedLine('added by proxying alone', r.proxy));
  lines.push(
    `of the gateway's added p50, resolving the sandbox (store + provider) is ` +
      `${fmt(r.json.resolving_p50_ms, 3)} ms; server RSS ${meta.serverRssMb ?? '-'} MB ` +
      `(cpu µs = CPU time of the gateway's process per request)`,
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
  let proxy;
  let api;
  const sides = [];
  let cleaning;
  const cleanupOnce = async () => {
    await Promise.all(sides.map((s) => s.close().catch(() => undefined)));
    await api?.pool.close().catch(() => undefined);
    await stopServer(server);
    await proxy?.stop();
    await app?.stop();
    await rm(workDir, { recursive: true, force: true });
    await rm(mockDir, { recursive: true, force: true });
  };
  const cleanup = () => (cleaning ??= cleanupOnce());
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
    app = await startHelper('app', 'app.mjs');
    proxy = await startHelper('fixed-resolver gateway', 'fixed-gateway.mjs', [String(app.port)]);
    const started = await startServer({ workDir, mockDir, cpuProfDir: opts.cpuProfDir });
    server = started.server;
    const gatewayPort = started.gatewayPort;
    api = makeClient(server.address, { connections: 1, server, timeoutMs: REQUEST_TIMEOUT_MS });
    const sb = await api.call('setup', 'POST', '/api/v1/sandboxes', { ports: [app.port] }, 201);
    const sbPath = `/api/v1/sandboxes/${encodeURIComponent(sb.id)}`;
    const preview = await api.call('setup', 'GET', `${sbPath}/preview/${app.port}`, undefined, 200);
    const host = `${app.port}-${sb.id}.localhost:${gatewayPort}`;
    if (preview.url !== `http://${host}`) {
      throw new BenchError(`the preview URL is ${preview.url}, expected http://${host}`);
    }
    const C = opts.connections;
    sides.push(makeSide('direct', 'direct to the app', app.port, undefined, undefined, C));
    sides.push(
      makeSide('gateway', 'control plane gateway', gatewayPort, host, server.child.pid, C),
    );
    sides.push(
      makeSide(
        'proxy',
        'proxy alone (fixed resolver)',
        proxy.port,
        `${app.port}-${sb.id}.localhost:${proxy.port}`,
        proxy.pid,
        C,
      ),
    );
    // Every side must get the very same answer from the app.
    const body = await get(sides[0], sides[0].single);
    for (const side of sides) await get(side, side.single, body);

    await warmUp(sides, body, budgetMs * 0.1, C);
    const latencyRounds = await measureLatency(sides, body, opts.iterations, budgetMs * 0.3);
    const slices = await measureThroughput(sides, body, C, opts.requests, budgetMs * 0.45);
    const wsRounds = await measureWs(sides, opts.wsMessages, budgetMs * 0.15);
    const serverRssMb = rssMb(server.child.pid) ?? null;
    for (const h of [app, proxy]) {
      if (h.exited) throw new BenchError(`the ${h.name} exited during the run (${h.exitInfo})`);
    }
    await api.call('setup', 'DELETE', sbPath, undefined, 200);

    const meta = {
      latencyRounds,
      slices,
      wsRounds,
      serverRssMb,
      appPort: app.port,
      gatewayPort,
      proxyPort: proxy.port,
    };
    const result = buildResult(opts, sides, meta);
    await cleanup();
    printReport(opts, sides, result, meta);
    if (opts.cpuProfDir !== undefined) {
      process.stdout.write(`server CPU profile written to ${opts.cpuProfDir}\n`);
    }
  } catch (err) {
    process.exitCode = 1;
    if (interrupted) return;
    reportFailure('preview-gateway', err, [server]);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await runBench('preview-gateway', main);
