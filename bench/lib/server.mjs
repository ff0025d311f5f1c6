// Starting and stopping the built `stacyvm` binary (control plane or worker) as a child process.
//
// The child's stdout and stderr are drained for its whole life (a full pipe would block its
// logger); every JSON log line on stderr is parsed: the ready line resolves the start, lines that
// carry a bench-chosen request id (`bench.<phase>.<n>`) are counted per phase and the Fastify
// `request completed` lines give the server-side `responseTime` per phase. The last lines are kept
// for failure reports. Children still running when the bench process exits (an uncaught error,
// process.exit in a signal handler) are SIGKILLed from a process 'exit' hook.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const DIST = resolve(HERE, '../../packages/server/dist');
export const MAIN_JS = join(DIST, 'cli/main.js');
export const LISTENING_MSG = 'StacyVM control plane listening';
const TAIL_LINES = 40;

/** A failure that must end the run with exit 1 (a process did not start, a request failed). */
export class BenchError extends Error {}

/**
 * Says why a bench failed on stderr: the message, the stack when the error was not expected
 * (not a BenchError), and the last output lines of each of `procs` that printed something.
 */
export function reportFailure(bench, err, procs = []) {
  process.stderr.write(`${bench}: ${err instanceof Error ? err.message : String(err)}\n`);
  if (!(err instanceof BenchError) && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  for (const p of procs) {
    if (p === undefined || p.tail.length === 0) continue;
    process.stderr.write(`last ${p.name} output:\n${p.tail.slice(-15).join('\n')}\n`);
  }
}

/** Runs a bench's `main`; an error that escapes it is printed and exits 1. */
export async function runBench(bench, main) {
  await main().catch((err) => {
    process.stderr.write(`${bench}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}

/** A positive number (integer when asked) from a `--name` option, or a BenchError naming it. */
export function positiveOption(name, raw, integer) {
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new BenchError(`--${name} must be a positive ${integer ? 'integer' : 'number'}`);
  }
  return n;
}

/** Throws a BenchError unless every file of the build is there. */
export function requireBuild(files = [MAIN_JS]) {
  for (const f of files) {
    if (!existsSync(f)) throw new BenchError(`${f} not found: run \`npm run build\` first`);
  }
}

/**
 * The bench's environment minus every inherited STACYVM_* variable (so no stray config, API key
 * or STACYVM_DEFAULTS_MAX_SANDBOXES leaks in), with HOME at `home` (so ~/.stacyvm/config.yaml is
 * not read), plus `extra`.
 */
export function cleanEnv(home, extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('STACYVM_') && v !== undefined) env[k] = v;
  }
  env.HOME = home;
  return { ...env, ...extra };
}

// Children that must not outlive the bench.
const live = new Set();
process.on('exit', () => {
  for (const proc of live) {
    try {
      // A detached child leads its own process group: take the commands it started with it.
      if (proc.detached) process.kill(-proc.child.pid, 'SIGKILL');
      else proc.child.kill('SIGKILL');
    } catch {
      proc.child.kill('SIGKILL');
    }
  }
});

/** Races `p` against a timer; rejects with BenchError(`message`) when the timer wins. */
async function deadline(ms, message, p) {
  let timer;
  const late = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new BenchError(message)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts `node [nodeArgs] main.js ...args` and resolves once it logs its ready line.
 *
 * @param {object} o
 * @param {string} [o.name]  what the messages call it ('server', 'worker w01', ...)
 * @param {string[]} o.args  the stacyvm command line, e.g. ['serve', '--port', '0']
 * @param {string[]} [o.nodeArgs]  e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/p']
 * @param {string} o.cwd
 * @param {Record<string,string>} o.env  see cleanEnv
 * @param {boolean} [o.detached]  own process group: a Ctrl-C at the terminal reaches only the bench
 * @param {{msg: string, field: string}} [o.ready]  the log line (msg) whose string `field` is the
 *   process's address; default the control plane's listening line and its `address`
 * @param {boolean} [o.requireLoopback]  refuse an address whose host is not 127.0.0.1 (default true)
 * @param {number} [o.startTimeoutMs]
 * @param {number} [o.stopTimeoutMs]  SIGTERM → SIGKILL grace of stopServer
 * @param {(rec: object, proc: object) => void} [o.onRecord]  sees every JSON log line
 * @returns {Promise<object>} the process handle: child, address, tail, phases, exited, exitInfo,
 *   exitCode, closed (resolves once it has exited and its output has ended)
 */
export async function startServer(o) {
  const name = o.name ?? 'server';
  const ready = o.ready ?? { msg: LISTENING_MSG, field: 'address' };
  const startTimeoutMs = o.startTimeoutMs ?? 20_000;
  const child = spawn(process.execPath, [...(o.nodeArgs ?? []), MAIN_JS, ...o.args], {
    cwd: o.cwd,
    env: o.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: o.detached === true,
  });

  const proc = {
    name,
    child,
    detached: o.detached === true,
    stopTimeoutMs: o.stopTimeoutMs ?? 10_000,
    address: undefined,
    tail: [], // last stderr/stdout lines, for failure reports
    /** Per bench phase: server-side responseTime (ms) and log lines, keyed by x-request-id. */
    phases: new Map(),
    exited: false,
    exitInfo: '',
    exitCode: null,
    closed: undefined,
  };
  live.add(proc);
  const remember = (line) => {
    proc.tail.push(line);
    if (proc.tail.length > TAIL_LINES) proc.tail.shift();
  };
  // Both pipes must be drained for the whole run: a full pipe would block the child's logger.
  createInterface({ input: child.stdout }).on('line', remember);
  const stderrLines = createInterface({ input: child.stderr });
  const stderrDone = new Promise((r) => stderrLines.once('close', r));

  let onReady;
  const readyP = new Promise((res, rej) => {
    onReady = { res, rej };
  });
  stderrLines.on('line', (line) => {
    remember(line);
    let rec;
    try {
      rec = JSON.parse(line);
    } catch {
      return;
    }
    if (rec.msg === ready.msg && typeof rec[ready.field] === 'string')
      onReady.res(rec[ready.field]);
    o.onRecord?.(rec, proc);
    // Fastify's request lines carry reqId; the services' own lines carry request_id.
    const rid = typeof rec.reqId === 'string' ? rec.reqId : rec.request_id;
    if (typeof rid === 'string' && rid.startsWith('bench.')) {
      const phase = rid.split('.')[1];
      let p = proc.phases.get(phase);
      if (p === undefined) proc.phases.set(phase, (p = { responseMs: [], logLines: 0 }));
      p.logLines++;
      if (rec.msg === 'request completed' && typeof rec.responseTime === 'number') {
        p.responseMs.push(rec.responseTime);
      }
    }
  });

  proc.closed = new Promise((r) => {
    child.once('exit', (code, signal) => {
      proc.exited = true;
      proc.exitCode = code;
      live.delete(proc);
      proc.exitInfo = signal === null ? `exit code ${code}` : `signal ${signal}`;
      // Wait for the last log lines: they explain a failed start, and complete the figures.
      void stderrDone.then(() => {
        onReady.rej(new BenchError(`${name} exited before it was ready (${proc.exitInfo})`));
        r();
      });
    });
  });
  child.once('error', (err) => {
    onReady.rej(new BenchError(`could not start the ${name}: ${err.message}`));
  });

  try {
    proc.address = await deadline(
      startTimeoutMs,
      `${name} did not report "${ready.msg}" within ${startTimeoutMs} ms`,
      readyP,
    );
  } catch (err) {
    // The caller never sees this process, so it is stopped here; its output explains the failure.
    await stopServer(proc);
    const tail = proc.tail.slice(-15).join('\n');
    throw new BenchError(`${err.message}${tail === '' ? '' : `\nlast ${name} output:\n${tail}`}`);
  }
  if (o.requireLoopback !== false && new URL(proc.address).hostname !== '127.0.0.1') {
    await stopServer(proc);
    throw new BenchError(`${name} listens on ${proc.address}; this bench only talks to 127.0.0.1`);
  }
  return proc;
}

/**
 * Sends `signal` (SIGTERM), then SIGKILL if the process has not exited within its stop timeout.
 * Resolves once it is gone, with how long that took and whether it went on its own.
 */
export async function stopServer(proc, signal = 'SIGTERM') {
  if (proc === undefined || proc.exited) return { ms: 0, graceful: true };
  const t0 = performance.now();
  proc.child.kill(signal);
  let timer;
  const late = new Promise((r) => {
    timer = setTimeout(() => r('late'), proc.stopTimeoutMs);
  });
  let graceful = true;
  if ((await Promise.race([proc.closed, late])) === 'late' && !proc.exited) {
    graceful = false;
    proc.child.kill('SIGKILL');
    await proc.closed;
  }
  clearTimeout(timer);
  return { ms: performance.now() - t0, graceful };
}

/** Server-side figures of one phase: responseTime samples (ms) and log line count. */
export function phaseOf(proc, name) {
  return proc.phases.get(name) ?? { responseMs: [], logLines: 0 };
}
