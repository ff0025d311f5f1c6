/**
 * A minimal Chrome DevTools Protocol client for browser e2e tests: launches
 * headless Chromium on loopback with background networking off, reads the
 * DevTools port from `DevToolsActivePort` in its fresh user-data-dir (HOME,
 * TMPDIR and XDG dirs fresh too, in the same temp directory), and
 * talks CDP over one WebSocket (flat sessions: one page target attached).
 *
 * Everything is bounded: launching, every command and every wait has a
 * deadline, and {@link ChromiumProcess.stop} ends the browser's process group
 * (SIGKILL after a grace period) and removes that directory.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';

/** Flags every launch uses: headless, no sandbox (tests run as root), nothing off-host. */
export const CHROMIUM_FLAGS: readonly string[] = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--disable-extensions',
  '--disable-domain-reliability',
  '--disable-client-side-phishing-detection',
  '--disable-dev-shm-usage',
  '--metrics-recording-only',
  '--no-proxy-server',
  '--password-store=basic',
  '--use-mock-keychain',
  '--remote-debugging-address=127.0.0.1',
  '--remote-debugging-port=0',
];

// Browsers still running when the test process exits are killed with it.
const liveGroups = new Set<number>();
process.on('exit', () => {
  for (const g of liveGroups) signalGroup(g, 'SIGKILL');
});

function signalGroup(group: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-group, signal);
  } catch {
    // Already gone.
  }
}

/** Removes a directory, retrying while exiting processes still hold or fill it (at most ~3 s). */
async function removeDir(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      rmSync(dir, { recursive: true, force: true });
      return;
    } catch (err) {
      if (i >= 30) throw err;
      await sleep(100);
    }
  }
}

/** The first Chromium binary found on PATH (`chromium`, `chromium-browser`, `google-chrome`). */
export function findChromium(): string | undefined {
  for (const name of ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']) {
    const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
    const path = r.stdout.trim();
    if (r.status === 0 && path !== '') return path;
  }
  return undefined;
}

export interface ChromiumProcess {
  /** `ws://127.0.0.1:{port}/devtools/browser/{id}`. */
  wsUrl: string;
  userDataDir: string;
  child: ChildProcess;
  /** Everything Chromium wrote to stdout and stderr so far. */
  logs(): string;
  /** Ends the browser's process group (SIGTERM, SIGKILL after `graceMs`) and removes its directory. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts headless Chromium with a fresh profile and waits for its DevTools endpoint. */
export async function launchChromium(
  o: { binary?: string; extraArgs?: readonly string[]; timeoutMs?: number } = {},
): Promise<ChromiumProcess> {
  const binary = o.binary ?? findChromium();
  if (binary === undefined) throw new Error('no Chromium binary on PATH');
  // Profile, temp files (singleton sockets), HOME and XDG dirs all under one directory that
  // stop() removes: nothing of the browser is left in /tmp or in the real HOME.
  const baseDir = mkdtempSync(join(tmpdir(), 'stacyvm-chromium-'));
  const userDataDir = join(baseDir, 'profile');
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [key, sub] of [
    ['HOME', 'home'],
    ['TMPDIR', 'tmp'],
    ['XDG_CONFIG_HOME', 'config'],
    ['XDG_CACHE_HOME', 'cache'],
    ['XDG_RUNTIME_DIR', 'run'],
  ] as const) {
    const dir = join(baseDir, sub);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    env[key] = dir;
  }
  // Its own process group: stopping it takes the renderer, GPU and crashpad helpers along.
  const child = spawn(
    binary,
    [...CHROMIUM_FLAGS, `--user-data-dir=${userDataDir}`, ...(o.extraArgs ?? []), 'about:blank'],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env },
  );
  const group = child.pid;
  if (group !== undefined) liveGroups.add(group);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  let stopped: Promise<void> | undefined;
  const stop = (graceMs = 3_000): Promise<void> => {
    stopped ??= (async () => {
      if (group !== undefined) {
        signalGroup(group, 'SIGTERM');
        const timer = setTimeout(() => signalGroup(group, 'SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
        // Helpers that outlived the browser process would keep writing into the profile.
        signalGroup(group, 'SIGKILL');
        liveGroups.delete(group);
      }
      await removeDir(baseDir);
    })();
    return stopped;
  };

  const deadline = Date.now() + (o.timeoutMs ?? 20_000);
  const portFile = join(userDataDir, 'DevToolsActivePort');
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`Chromium exited (${child.exitCode ?? child.signalCode}):\n${out}`);
      }
      if (existsSync(portFile)) {
        const [port, path] = readFileSync(portFile, 'utf8').split('\n');
        if (port !== undefined && /^\d+$/.test(port.trim()) && path?.startsWith('/devtools/')) {
          return {
            wsUrl: `ws://127.0.0.1:${port.trim()}${path.trim()}`,
            userDataDir,
            child,
            logs: () => out,
            stop,
          };
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`Chromium did not open its DevTools port in time:\n${out}`);
      }
      await sleep(50);
    }
  } catch (err) {
    await stop(500);
    throw err;
  }
}

/** A CDP event: `sessionId` names the page session it belongs to. */
export interface CdpEvent {
  method: string;
  params: Record<string, unknown>;
  sessionId?: string;
}

interface CdpReply {
  id?: number;
  result?: unknown;
  error?: { code: number; message: string };
  method?: string;
  params?: Record<string, unknown>;
  sessionId?: string;
}

export interface CdpClient {
  /** Sends a command (to a page session when `sessionId` is given); rejects on a CDP error or after `timeoutMs`. */
  send<T = Record<string, unknown>>(
    method: string,
    params?: Record<string, unknown>,
    o?: { sessionId?: string; timeoutMs?: number },
  ): Promise<T>;
  /** Calls `handler` with every event; returns the unsubscribe function. */
  onEvent(handler: (e: CdpEvent) => void): () => void;
  /** Resolves with the first event named `method` (of `sessionId`, when given) within `timeoutMs`. */
  waitForEvent(method: string, o?: { sessionId?: string; timeoutMs?: number }): Promise<CdpEvent>;
  close(): void;
}

/** Connects to a browser (or page) DevTools WebSocket. */
export function connectCdp(wsUrl: string, timeoutMs = 10_000): Promise<CdpClient> {
  return new Promise<CdpClient>((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { handshakeTimeout: timeoutMs, perMessageDeflate: false });
    let nextId = 1;
    const pending = new Map<
      number,
      { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
    >();
    const handlers = new Set<(e: CdpEvent) => void>();
    const failAll = (err: Error): void => {
      for (const p of pending.values()) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      pending.clear();
    };
    ws.on('message', (data: Buffer) => {
      let msg: CdpReply;
      try {
        msg = JSON.parse(data.toString('utf8')) as CdpReply;
      } catch {
        return;
      }
      if (msg.id !== undefined) {
        const p = pending.get(msg.id);
        if (p === undefined) return;
        pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.error !== undefined)
          p.reject(new Error(`CDP ${msg.error.code}: ${msg.error.message}`));
        else p.resolve(msg.result ?? {});
        return;
      }
      if (msg.method !== undefined) {
        const e: CdpEvent = {
          method: msg.method,
          params: msg.params ?? {},
          ...(msg.sessionId === undefined ? {} : { sessionId: msg.sessionId }),
        };
        for (const h of [...handlers]) h(e);
      }
    });
    ws.on('close', () => failAll(new Error('CDP connection closed')));
    ws.once('error', (err: Error) => {
      failAll(err);
      reject(err);
    });
    ws.once('open', () => {
      const client: CdpClient = {
        send<T>(
          method: string,
          params: Record<string, unknown> = {},
          o: { sessionId?: string; timeoutMs?: number } = {},
        ): Promise<T> {
          return new Promise<T>((res, rej) => {
            if (ws.readyState !== WebSocket.OPEN) {
              rej(new Error(`CDP connection is not open (${method})`));
              return;
            }
            const id = nextId++;
            const ms = o.timeoutMs ?? 15_000;
            const timer = setTimeout(() => {
              pending.delete(id);
              rej(new Error(`CDP ${method}: no answer within ${ms} ms`));
            }, ms);
            pending.set(id, { resolve: (v) => res(v as T), reject: rej, timer });
            ws.send(
              JSON.stringify({
                id,
                method,
                params,
                ...(o.sessionId === undefined ? {} : { sessionId: o.sessionId }),
              }),
            );
          });
        },
        onEvent(handler: (e: CdpEvent) => void): () => void {
          handlers.add(handler);
          return () => handlers.delete(handler);
        },
        waitForEvent(
          method: string,
          o: { sessionId?: string; timeoutMs?: number } = {},
        ): Promise<CdpEvent> {
          return new Promise<CdpEvent>((res, rej) => {
            const ms = o.timeoutMs ?? 15_000;
            const off = client.onEvent((e) => {
              if (e.method !== method) return;
              if (o.sessionId !== undefined && e.sessionId !== o.sessionId) return;
              clearTimeout(timer);
              off();
              res(e);
            });
            const timer = setTimeout(() => {
              off();
              rej(new Error(`no CDP ${method} event within ${ms} ms`));
            }, ms);
          });
        },
        close(): void {
          failAll(new Error('CDP client closed'));
          ws.close();
        },
      };
      resolve(client);
    });
  });
}

/** One page (tab) attached over a flat CDP session. */
export interface CdpPage {
  sessionId: string;
  targetId: string;
  send<T = Record<string, unknown>>(
    method: string,
    params?: Record<string, unknown>,
    timeoutMs?: number,
  ): Promise<T>;
  /** Navigates and waits for the load event; rejects when the navigation itself fails. */
  navigate(url: string, timeoutMs?: number): Promise<void>;
  /** Evaluates an expression in the page and returns its value (JSON-serialisable results). */
  evaluate<T>(expression: string): Promise<T>;
  /** Polls `expression` until `accept` holds for its value, every 50 ms, at most `timeoutMs`. */
  waitFor<T>(expression: string, accept: (v: T) => boolean, timeoutMs?: number): Promise<T>;
  /** A PNG of the viewport. */
  screenshot(): Promise<Buffer>;
}

/** Opens a new page of the given viewport size and attaches to it. */
export async function openPage(
  cdp: CdpClient,
  viewport: { width: number; height: number } = { width: 1024, height: 640 },
): Promise<CdpPage> {
  const { targetId } = await cdp.send<{ targetId: string }>('Target.createTarget', {
    url: 'about:blank',
  });
  const { sessionId } = await cdp.send<{ sessionId: string }>('Target.attachToTarget', {
    targetId,
    flatten: true,
  });
  const send = <T>(
    method: string,
    params: Record<string, unknown> = {},
    timeoutMs?: number,
  ): Promise<T> =>
    cdp.send<T>(method, params, {
      sessionId,
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
    });
  await send('Page.enable');
  await send('Runtime.enable');
  await send('Emulation.setDeviceMetricsOverride', {
    width: viewport.width,
    height: viewport.height,
    deviceScaleFactor: 1,
    mobile: false,
  });
  const evaluate = async <T>(expression: string): Promise<T> => {
    const r = await send<{
      result: { value?: unknown };
      exceptionDetails?: { text: string };
    }>('Runtime.evaluate', { expression, returnByValue: true });
    if (r.exceptionDetails !== undefined) {
      throw new Error(`page threw: ${r.exceptionDetails.text}`);
    }
    return r.result.value as T;
  };
  return {
    sessionId,
    targetId,
    send,
    async navigate(url: string, timeoutMs = 15_000): Promise<void> {
      const loaded = cdp.waitForEvent('Page.loadEventFired', { sessionId, timeoutMs });
      const r = await send<{ errorText?: string }>('Page.navigate', { url }, timeoutMs);
      if (r.errorText !== undefined && r.errorText !== '') {
        loaded.catch(() => undefined);
        throw new Error(`navigation to ${url} failed: ${r.errorText}`);
      }
      await loaded;
    },
    evaluate,
    async waitFor<T>(expression: string, accept: (v: T) => boolean, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      let last: T | undefined;
      for (;;) {
        last = await evaluate<T>(expression);
        if (accept(last)) return last;
        if (Date.now() > deadline) {
          throw new Error(
            `${expression} did not become as expected within ${timeoutMs} ms; last ${JSON.stringify(last)}`,
          );
        }
        await sleep(50);
      }
    },
    async screenshot(): Promise<Buffer> {
      const r = await send<{ data: string }>('Page.captureScreenshot', { format: 'png' });
      return Buffer.from(r.data, 'base64');
    },
  };
}

/** Width and height from a PNG's IHDR; throws when `png` is not a PNG. */
export function pngSize(png: Buffer): { width: number; height: number } {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  if (png.length < 33 || !png.subarray(0, 8).equals(signature)) throw new Error('not a PNG');
  if (png.subarray(12, 16).toString('latin1') !== 'IHDR') throw new Error('PNG without IHDR');
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}
