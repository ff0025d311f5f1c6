/**
 * Network-namespace plumbing for e2e tests that put the control plane and a
 * worker on two "hosts": two namespaces this module creates, joined by a
 * veth pair carrying 127.x addresses (so every packet stays on loopback-range
 * addresses, inside namespaces the test owns).
 *
 * How the test process (host namespace) reaches services in a namespace: a
 * tiny relay runs inside the namespace, listens on a Unix socket in a temp
 * dir (path sockets belong to the filesystem, not to a network namespace)
 * and pipes each connection to a TCP address there. The test then speaks
 * plain HTTP over that socket. No host-namespace interface, route or sysctl
 * is touched, and a peer reset is passed on as a reset, so a cut stream looks
 * cut to the test too.
 *
 * Needs root and `ip netns`; see {@link netnsUnavailableReason}.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { request } from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';

const IP_TIMEOUT_MS = 10_000;

/** Runs `ip <args>`; throws with its stderr when it fails. */
export function ip(args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: IP_TIMEOUT_MS });
  if (r.error !== undefined) throw new Error(`ip ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) {
    throw new Error(`ip ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/**
 * Why namespace tests cannot run here, or undefined when they can: they need
 * root (creating namespaces, veths, sysctls) and a working `ip netns`.
 */
export function netnsUnavailableReason(): string | undefined {
  if (process.platform !== 'linux')
    return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: IP_TIMEOUT_MS });
  if (r.error !== undefined) return `\`ip netns\` is not usable: ${r.error.message}`;
  if (r.status !== 0) return `\`ip netns list\` exited ${r.status}: ${r.stderr.trim()}`;
  return undefined;
}

/** Names of the existing namespaces. */
export function listNamespaces(): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** SIGKILLs every process still inside `ns` (by id), then deletes it. Never throws. */
export function deleteNamespace(ns: string): void {
  try {
    for (const pid of ip(['netns', 'pids', ns])
      .split(/\s+/)
      .filter((p) => /^\d+$/.test(p))) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  } catch {
    // The namespace may be gone already.
  }
  spawnSync('ip', ['netns', 'delete', ns], { timeout: IP_TIMEOUT_MS });
}

/**
 * Deletes namespaces left behind by earlier runs of `prefix`: names of the
 * form `<prefix>-<role>-<base36 start time>-<pid>-<hex>` whose run started
 * before `runStartMs` and whose process is gone (a run still going is left
 * alone). Returns the names removed.
 */
export function removeStaleNamespaces(prefix: string, runStartMs: number): string[] {
  const re = new RegExp(`^${prefix}-[a-z]+-([0-9a-z]+)-(\\d+)-[0-9a-f]+$`);
  const removed: string[] = [];
  for (const ns of listNamespaces()) {
    const m = re.exec(ns);
    if (m === null) continue;
    const started = parseInt(m[1] ?? '', 36);
    const pid = Number(m[2]);
    if (!(started < runStartMs) || pidAlive(pid)) continue;
    deleteNamespace(ns);
    removed.push(ns);
  }
  return removed;
}

/** Two namespaces joined by a veth pair; addresses are in 127.0.0.0/8. */
export interface NetnsPair {
  /** Namespace of the control plane. */
  cpNs: string;
  /** Namespace of the worker. */
  workerNs: string;
  /** Address of the veth end in `cpNs`. */
  cpAddr: string;
  /** Address of the veth end in `workerNs`. */
  workerAddr: string;
  /** Deletes both namespaces (and kills what still runs in them). Idempotent. */
  destroy(): void;
}

export interface NetnsPairOptions {
  /** Name prefix shared by every run, for leftover cleanup; default `svm`. */
  prefix?: string;
  /** Start of this run (epoch ms); names carry it. Default now. */
  runStartMs?: number;
  /** First three octets, e.g. `127.77.0`; `.1` goes to the control plane, `.2` to the worker. */
  subnet?: string;
}

/**
 * Creates `<prefix>-cp-<run>` and `<prefix>-wk-<run>`, a veth pair created
 * directly inside them (no interface ever exists in the host namespace),
 * `lo` up, the 127.x addresses, and `route_localnet=1` (all + veth) in each,
 * which lets 127.0.0.0/8 addresses leave a host over a real interface.
 * Everything created is deleted again when a step fails.
 */
export function createNetnsPair(o: NetnsPairOptions = {}): NetnsPair {
  const prefix = o.prefix ?? 'svm';
  const run = `${(o.runStartMs ?? Date.now()).toString(36)}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const subnet = o.subnet ?? '127.77.0';
  const cpNs = `${prefix}-cp-${run}`;
  const workerNs = `${prefix}-wk-${run}`;
  const cpIf = 'vcp0';
  const workerIf = 'vwk0';
  const pair: NetnsPair = {
    cpNs,
    workerNs,
    cpAddr: `${subnet}.1`,
    workerAddr: `${subnet}.2`,
    destroy: () => {
      deleteNamespace(cpNs);
      deleteNamespace(workerNs);
    },
  };
  try {
    ip(['netns', 'add', cpNs]);
    ip(['netns', 'add', workerNs]);
    ip([
      '-n',
      cpNs,
      'link',
      'add',
      cpIf,
      'type',
      'veth',
      'peer',
      'name',
      workerIf,
      'netns',
      workerNs,
    ]);
    for (const [ns, dev, addr] of [
      [cpNs, cpIf, pair.cpAddr],
      [workerNs, workerIf, pair.workerAddr],
    ] as const) {
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev]);
      ip(['-n', ns, 'link', 'set', dev, 'up']);
      ip([
        'netns',
        'exec',
        ns,
        'sysctl',
        '-q',
        '-w',
        'net.ipv4.conf.all.route_localnet=1',
        `net.ipv4.conf.${dev}.route_localnet=1`,
      ]);
    }
  } catch (err) {
    pair.destroy();
    throw err;
  }
  return pair;
}

/**
 * A probe that proves TCP works from `fromNs` to `host:port` served in
 * `toNs`: a one-shot server there, a client here, both bounded. The target
 * address is not assigned in `fromNs`, so local delivery cannot fake it.
 */
export async function verifyConnectivity(
  fromNs: string,
  toNs: string,
  host: string,
  port: number,
  timeoutMs = 10_000,
): Promise<void> {
  const server = spawn(
    'ip',
    [
      'netns',
      'exec',
      toNs,
      process.execPath,
      '-e',
      `const s = require('node:net').createServer((c) => { c.end('pong'); s.close(); });
       s.listen(Number(process.argv[2]), process.argv[1], () => process.stdout.write('ready\\n'));
       setTimeout(() => process.exit(3), ${timeoutMs}).unref();`,
      host,
      String(port),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  try {
    await waitForOutput(server, /ready/, timeoutMs, 'connectivity probe server');
    const client = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        fromNs,
        process.execPath,
        '-e',
        `const c = require('node:net').connect(Number(process.argv[2]), process.argv[1]);
         let got = ''; c.on('data', (d) => (got += d));
         c.on('end', () => process.exit(got === 'pong' ? 0 : 4));
         c.on('error', (e) => { console.error(e.message); process.exit(5); });`,
        host,
        String(port),
      ],
      { encoding: 'utf8', timeout: timeoutMs },
    );
    if (client.status !== 0) {
      throw new Error(
        `no TCP from ${fromNs} to ${host}:${port} in ${toNs}: ${client.error?.message ?? `exit ${client.status}`} ${client.stderr}`,
      );
    }
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}

/**
 * Resolves when `soFar` plus what `child` writes next (stdout or stderr)
 * matches `re`; rejects on exit or timeout.
 */
export function waitForOutput(
  child: ChildProcess,
  re: RegExp,
  timeoutMs: number,
  what: string,
  soFar = '',
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let out = soFar;
    if (re.test(out)) {
      resolve();
      return;
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      reject(
        new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before ${re}:\n${out}`),
      );
      return;
    }
    const done = (err?: Error): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (re.test(out)) done();
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void =>
      done(new Error(`${what} exited (${code ?? signal}) before ${re}:\n${out}`));
    const timer = setTimeout(
      () => done(new Error(`${what}: no ${re} within ${timeoutMs} ms:\n${out}`)),
      timeoutMs,
    );
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

/** A process started inside a namespace, with its output kept. */
export interface NsProcess {
  child: ChildProcess;
  pid: number;
  /** stdout and stderr so far. */
  logs(): string;
  /** Resolves with the exit code or signal name. */
  exited: Promise<number | string>;
  /** Waits (bounded) until the output matches `re`. */
  waitFor(re: RegExp, timeoutMs: number): Promise<void>;
  /** Sends `signal` (default SIGKILL) if it still runs and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

/**
 * Starts `command args` inside `ns` with `ip netns exec` (which execs, so the
 * child's pid is the command's own). stdin is a pipe kept open: helpers that
 * watch it exit if the test process dies.
 */
export function spawnInNetns(
  ns: string,
  command: string,
  args: string[],
  o: { env?: NodeJS.ProcessEnv; cwd?: string; name?: string } = {},
): NsProcess {
  const child = spawn('ip', ['netns', 'exec', ns, command, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    ...(o.env === undefined ? {} : { env: o.env }),
    ...(o.cwd === undefined ? {} : { cwd: o.cwd }),
  });
  if (child.pid === undefined) throw new Error(`cannot start ${command} in ${ns}`);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')),
  );
  const name = o.name ?? command;
  return {
    child,
    pid: child.pid,
    logs: () => out,
    exited,
    waitFor: (re, timeoutMs) => waitForOutput(child, re, timeoutMs, name, out),
    stop: async (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

const RELAY_SCRIPT = `
const net = require('node:net');
const fs = require('node:fs');
const [sock, host, port] = process.argv.slice(1);
try { fs.unlinkSync(sock); } catch {}
const server = net.createServer((client) => {
  const up = net.connect(Number(port), host);
  client.pipe(up);
  up.pipe(client);
  // A reset or abort on one side is passed on as one; a clean end is piped.
  up.on('error', () => client.resetAndDestroy());
  client.on('error', () => up.destroy());
  up.on('close', () => { if (!client.writableEnded) client.resetAndDestroy(); });
  client.on('close', () => up.destroy());
});
server.listen(sock, () => process.stdout.write('relay ready\\n'));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

/**
 * Starts a relay inside `ns` from the Unix socket `socketPath` to
 * `host:port` (resolved in `ns`). It exits when stopped or when the test
 * process (its stdin) goes away.
 */
export async function startRelay(
  ns: string,
  socketPath: string,
  host: string,
  port: number,
): Promise<NsProcess> {
  const relay = spawnInNetns(
    ns,
    process.execPath,
    ['-e', RELAY_SCRIPT, socketPath, host, String(port)],
    { name: `relay ${ns} -> ${host}:${port}` },
  );
  await relay.waitFor(/relay ready/, 10_000);
  return relay;
}

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
}

export interface HttpCall {
  method: string;
  path: string;
  headers?: Record<string, string>;
  /** Sent as JSON unless a string. */
  body?: unknown;
  timeoutMs?: number;
}

function encodeBody(call: HttpCall): { headers: Record<string, string>; data?: string } {
  const headers = { ...(call.headers ?? {}) };
  if (call.body === undefined) return { headers };
  const data = typeof call.body === 'string' ? call.body : JSON.stringify(call.body);
  if (headers['content-type'] === undefined) headers['content-type'] = 'application/json';
  headers['content-length'] = String(Buffer.byteLength(data));
  return { headers, data };
}

/** One HTTP request over a relay's Unix socket, on a fresh connection; bounded. */
export function httpOverSocket(socketPath: string, call: HttpCall): Promise<HttpAnswer> {
  const { headers, data } = encodeBody(call);
  const timeoutMs = call.timeoutMs ?? 15_000;
  return new Promise<HttpAnswer>((resolve, reject) => {
    const req = request(
      { socketPath, method: call.method, path: call.path, headers, agent: false },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          let json: unknown;
          try {
            json = text === '' ? undefined : (JSON.parse(text) as unknown);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () =>
      req.destroy(new Error(`${call.method} ${call.path}: no answer within ${timeoutMs} ms`)),
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** A streamed response being read. */
export interface HttpStream {
  /** Resolves with the status once the headers arrived. */
  status: Promise<number>;
  /** Body text received so far. */
  text(): string;
  /** Waits (bounded) until the body so far matches `re`. */
  waitFor(re: RegExp, timeoutMs: number): Promise<void>;
  /**
   * Resolves when the response is over: `complete` is false when the
   * connection was cut before the message ended.
   */
  ended: Promise<{ complete: boolean; error?: string }>;
  /** Cuts the request (cleanup). */
  abort(): void;
}

/** Starts a request whose response body is read as it arrives. */
export function streamOverSocket(socketPath: string, call: HttpCall): HttpStream {
  const { headers, data } = encodeBody(call);
  let body = '';
  const waiters = new Set<() => void>();
  let resolveStatus: (s: number) => void = () => undefined;
  let rejectStatus: (e: Error) => void = () => undefined;
  const status = new Promise<number>((res, rej) => {
    resolveStatus = res;
    rejectStatus = rej;
  });
  let resolveEnded: (v: { complete: boolean; error?: string }) => void = () => undefined;
  const ended = new Promise<{ complete: boolean; error?: string }>((res) => (resolveEnded = res));
  const req = request(
    { socketPath, method: call.method, path: call.path, headers, agent: false },
    (res) => {
      resolveStatus(res.statusCode ?? 0);
      let error: string | undefined;
      res.on('data', (d: Buffer) => {
        body += d.toString('utf8');
        for (const w of [...waiters]) w();
      });
      res.on('error', (e) => (error = e.message));
      res.on('close', () => {
        resolveEnded({ complete: res.complete, ...(error === undefined ? {} : { error }) });
        for (const w of [...waiters]) w();
      });
    },
  );
  req.on('error', (e) => {
    rejectStatus(e);
    resolveEnded({ complete: false, error: e.message });
  });
  req.end(data);
  return {
    status,
    text: () => body,
    waitFor: (re, timeoutMs) =>
      new Promise<void>((resolve, reject) => {
        let finished = false;
        const check = (): void => {
          if (re.test(body)) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve();
          } else if (finished) {
            waiters.delete(check);
            clearTimeout(timer);
            reject(new Error(`stream ended without ${re}:\n${body}`));
          }
        };
        void ended.then(() => {
          finished = true;
          check();
        });
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no ${re} in the stream within ${timeoutMs} ms:\n${body}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
    ended,
    abort: () => req.destroy(),
  };
}

/** Polls `probe` until it returns a value other than undefined; bounded. */
export async function pollUntil<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) {
      throw new Error(
        `${what}: not reached within ${timeoutMs} ms${last === undefined ? '' : ` (last error: ${(last as Error).message})`}`,
      );
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
