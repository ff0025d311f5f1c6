/**
 * Live previews as a user sees them: a Docker sandbox (Debian image with
 * node) runs a small HTTP + WebSocket app on port 5173, and headless
 * Chromium opens `http://5173-{id}.localhost:{gateway}/` — the URL the API
 * hands out — through the preview gateway of the built `stacyvm serve`.
 * The page's script opens a WebSocket back to its own origin; the test waits
 * for the pushed message (and the echo of what the page sent) in the DOM
 * and takes a screenshot into test-results/.
 *
 * The second suite does the same for a sandbox on a remote worker
 * (`stacyvm worker` with the Docker provider as a child process): the
 * browser talks to the control plane's gateway, which relays to the
 * worker's gateway, which reaches the container.
 *
 * Everything stays on loopback: the gateways listen on 127.0.0.1, Docker
 * publishes on 127.0.0.1, and Chromium runs with background networking,
 * component updates, sync, QUIC and proxies off. The WebSocket in the
 * sandbox is written by hand on node's `http` upgrade (no npm there).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from 'vitest';
import { connectCdp, findChromium, launchChromium, openPage, pngSize } from '../support/cdp.js';
import type { ChromiumProcess } from '../support/cdp.js';
import { httpCall } from '../support/preview-upstream.js';
import type { HttpAnswer } from '../support/preview-upstream.js';
import type { ServerProcess } from './server-process.js';
import { CLI, cleanup, serverEnv, startServer, tempDir } from './server-process.js';

const IMAGE = 'stacyvm-test/debian:bookworm';
const APP_PORT = 5173;
const RESULTS = fileURLToPath(new URL('../../../../test-results/', import.meta.url));
const VIEWPORT = { width: 960, height: 600 };

const chromium = findChromium();
const dockerAvailable = inject('dockerAvailable');
const docker = new Docker();
const created = new Set<string>();

function secret(): string {
  return randomBytes(24).toString('hex');
}

/**
 * The app inside the sandbox: `node app.js NONCE PORT`. `GET /` is a page
 * whose script opens `ws://{same host}/ws`, sends `browser-hello`, and shows
 * what the server pushes (#msg) and echoes (#echo). The WebSocket handshake
 * and framing are done by hand (RFC 6455, text frames under 126 bytes).
 */
const APP_SOURCE = String.raw`
const http = require('http');
const crypto = require('crypto');
const NONCE = process.argv[2];
const PORT = Number(process.argv[3]);
const PAGE = '<!doctype html><html><head><meta charset="utf-8"><title>stacyvm live preview</title>' +
  '<style>body{font:22px system-ui,sans-serif;margin:2rem;background:#eef4ff;color:#123}' +
  '#msg{color:#0a6b2d;font-weight:bold}#echo{color:#6b0a5a}</style></head><body>' +
  '<h1>StacyVM live preview</h1><p>Pushed over the WebSocket: <span id="msg">waiting</span></p>' +
  '<p>Echo: <span id="echo">waiting</span></p><script>' +
  'const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");' +
  'ws.onopen = () => ws.send("browser-hello");' +
  'ws.onmessage = (e) => { const d = String(e.data);' +
  ' document.getElementById(d.startsWith("echo:") ? "echo" : "msg").textContent = d; };' +
  'ws.onerror = () => { document.getElementById("msg").textContent = "websocket error"; };' +
  '</script></body></html>';
function frame(text) {
  const p = Buffer.from(text, 'utf8');
  if (p.length > 125) throw new Error('frame too long');
  return Buffer.concat([Buffer.from([0x81, p.length]), p]);
}
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(PAGE);
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found\n');
});
server.on('upgrade', (req, socket) => {
  socket.on('error', () => socket.destroy());
  const key = req.headers['sec-websocket-key'];
  if (req.url !== '/ws' || String(req.headers.upgrade).toLowerCase() !== 'websocket' || !key) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  socket.write(frame('pushed ' + NONCE + ' host=' + req.headers.host));
  let buf = Buffer.alloc(0);
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2) {
      const op = buf[0] & 0x0f;
      const masked = (buf[1] & 0x80) !== 0;
      const len = buf[1] & 0x7f;
      if (!masked || len > 125) { socket.destroy(); return; }
      if (buf.length < 6 + len) return;
      const mask = buf.subarray(2, 6);
      const data = Buffer.from(buf.subarray(6, 6 + len));
      for (let i = 0; i < data.length; i++) data[i] ^= mask[i % 4];
      buf = buf.subarray(6 + len);
      if (op === 0x8) { socket.end(Buffer.from([0x88, 0x00])); return; }
      if (op === 0x9) { socket.write(Buffer.concat([Buffer.from([0x8a, data.length]), data])); continue; }
      if (op === 0x1) socket.write(frame('echo:' + data.toString('utf8')));
    }
  });
});
server.listen(PORT, '0.0.0.0', () => console.log('app listening on ' + PORT));
`;

interface Api {
  url: string;
  call(
    method: string,
    path: string,
    body?: unknown,
    admin?: boolean,
  ): Promise<{ status: number; json: unknown; text: string }>;
}

function apiOf(url: string, apiKey: string, adminKey: string): Api {
  return {
    url,
    async call(method, path, body, admin = false) {
      const res = await fetch(`${url}/api/v1${path}`, {
        method,
        headers: {
          ...(admin ? { 'x-admin-api-key': adminKey } : { 'x-api-key': apiKey }),
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(60_000),
      });
      const text = await res.text();
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      return { status: res.status, json, text };
    },
  };
}

/** Spawns a Docker sandbox declaring port 5173 and returns its id. */
async function spawnSandbox(api: Api, expectWorker: string): Promise<string> {
  const r = await api.call('POST', '/sandboxes', {
    provider: 'docker',
    image: IMAGE,
    ports: [APP_PORT],
    ttl: '10m',
  });
  expect(r.status, r.text).toBe(201);
  const sb = r.json as { id: string; worker_id: string; state: string };
  created.add(sb.id);
  expect(sb).toMatchObject({ worker_id: expectWorker, state: 'running' });
  return sb.id;
}

/** Writes the app into the sandbox and starts it in the background, via the API. */
async function startApp(api: Api, id: string, nonce: string): Promise<void> {
  const put = await api.call('POST', `/sandboxes/${id}/files`, {
    path: '/workspace/app.js',
    content: APP_SOURCE,
  });
  expect(put.status, put.text).toBe(200);
  const run = await api.call('POST', `/sandboxes/${id}/exec`, {
    command: `nohup node /workspace/app.js ${nonce} ${APP_PORT} >/workspace/app.log 2>&1 </dev/null &`,
    timeout: '30s',
  });
  expect(run.status, run.text).toBe(200);
  expect((run.json as { exit_code: number }).exit_code).toBe(0);
}

/** Polls the preview URL (as a plain HTTP client) until the app answers 200, at most 20 s. */
async function waitForApp(url: URL): Promise<HttpAnswer> {
  const port = Number(url.port);
  let last: HttpAnswer | Error | undefined;
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    last = await httpCall(port, url.host, '/', { timeoutMs: 5_000 }).catch((e: Error) => e);
    if (!(last instanceof Error) && last.status === 200) return last;
    await sleep(200);
  }
  const what = last instanceof Error ? last.message : `${last?.status} ${last?.body ?? ''}`;
  throw new Error(`the app never answered 200 at ${url.href}; last: ${what}`);
}

/** Opens the preview in Chromium and waits for the WebSocket-pushed text; saves a screenshot. */
async function browse(
  url: string,
  nonce: string,
  screenshotName: string,
): Promise<{ msg: string; echo: string; title: string; href: string; png: Buffer }> {
  let browser: ChromiumProcess | undefined;
  try {
    browser = await launchChromium({ binary: chromium ?? 'chromium' });
    const cdp = await connectCdp(browser.wsUrl);
    try {
      const page = await openPage(cdp, VIEWPORT);
      await page.navigate(url, 20_000);
      const dom = await page.waitFor<{ msg: string; echo: string }>(
        '({ msg: document.getElementById("msg")?.textContent ?? "", echo: document.getElementById("echo")?.textContent ?? "" })',
        (v) => v.msg.includes(nonce) && v.echo.startsWith('echo:'),
        15_000,
      );
      const title = await page.evaluate<string>('document.title');
      const href = await page.evaluate<string>('location.href');
      const png = await page.screenshot();
      mkdirSync(RESULTS, { recursive: true });
      writeFileSync(join(RESULTS, screenshotName), png);
      return { ...dom, title, href, png };
    } finally {
      cdp.close();
    }
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\n--- chromium output (tail) ---\n${(browser?.logs() ?? '').slice(-3_000)}`,
    );
  } finally {
    await browser?.stop();
  }
}

function expectBrowsed(
  seen: { msg: string; echo: string; title: string; href: string; png: Buffer },
  url: URL,
  nonce: string,
): void {
  expect(seen.title).toBe('stacyvm live preview');
  expect(seen.href).toBe(url.href);
  // The app pushed its message over the WebSocket, and saw the preview Host unchanged.
  expect(seen.msg).toBe(`pushed ${nonce} host=${url.host}`);
  // And what the page sent reached the app and came back.
  expect(seen.echo).toBe('echo:browser-hello');
  expect(seen.png.length).toBeGreaterThan(1_000);
  expect(pngSize(seen.png)).toEqual(VIEWPORT);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function removeCreated(): Promise<void> {
  for (const id of created) {
    await docker
      .getContainer(id)
      .remove({ force: true })
      .catch(() => undefined);
  }
  created.clear();
}

const unavailable = !dockerAvailable
  ? 'no Docker daemon'
  : chromium === undefined
    ? 'no Chromium on PATH (apt-get install chromium)'
    : undefined;

if (unavailable !== undefined && process.env['CI'] === 'true' && dockerAvailable) {
  describe('live preview in a real browser', () => {
    it('runs under CI', () => {
      throw new Error(`CI=true but this suite cannot run: ${unavailable}`);
    });
  });
}

describe.skipIf(unavailable !== undefined)(
  'live preview of a Docker sandbox in headless Chromium',
  () => {
    let server: ServerProcess;
    let api: Api;
    const apiKey = secret();
    const adminKey = secret();

    beforeAll(async () => {
      server = await startServer({
        env: {
          STACYVM_PROVIDERS_DOCKER_ENABLED: 'true',
          STACYVM_PROVIDERS_DEFAULT: 'docker',
          STACYVM_PREVIEW_LISTEN_ADDR: '127.0.0.1:0',
          STACYVM_AUTH_API_KEY: apiKey,
          STACYVM_AUTH_ADMIN_API_KEY: adminKey,
        },
      });
      api = apiOf(server.url, apiKey, adminKey);
    });
    afterAll(async () => {
      await server?.stop();
      await removeCreated();
      if (server !== undefined) cleanup(server.dir);
    });

    it('serves the page and its WebSocket from port 5173 of the sandbox to the browser', async () => {
      onTestFailed(() =>
        console.error(`--- control plane log ---\n${server.logs().slice(-6_000)}`),
      );
      const id = await spawnSandbox(api, 'local');
      const sb = (await api.call('GET', `/sandboxes/${id}`)).json as {
        preview_domain: string;
        preview_scheme: string;
        preview_port: number;
      };
      expect(sb.preview_domain).toBe('localhost');
      expect(sb.preview_scheme).toBe('http');
      expect(sb.preview_port).toBeGreaterThan(0);
      const p = await api.call('GET', `/sandboxes/${id}/preview/${APP_PORT}`);
      expect(p.status, p.text).toBe(200);
      const url = new URL(`${(p.json as { url: string }).url}/`);
      expect(url.href).toBe(`http://${APP_PORT}-${id}.localhost:${sb.preview_port}/`);

      const nonce = secret().slice(0, 16);
      await startApp(api, id, nonce);
      await waitForApp(url);
      const seen = await browse(url.href, nonce, 'preview-browser-docker.png');
      expectBrowsed(seen, url, nonce);

      const del = await api.call('DELETE', `/sandboxes/${id}`);
      expect(del.status, del.text).toBe(200);
      // The URL is dead once the sandbox is: a 404 page, not a hang.
      const gone = await httpCall(Number(url.port), url.host, '/', { timeoutMs: 10_000 });
      expect(gone.status).toBe(404);
    });
  },
);

describe.skipIf(unavailable !== undefined)(
  'live preview of a Docker sandbox on a remote worker, through the control plane gateway',
  () => {
    let server: ServerProcess;
    let api: Api;
    let worker: ChildProcess | undefined;
    let workerOut = '';
    let workerDir = '';
    const apiKey = secret();
    const adminKey = secret();
    const workerToken = secret();
    const workerId = 'worker-docker';

    async function stopWorker(): Promise<number | null> {
      const w = worker;
      if (w === undefined) return null;
      if (w.exitCode !== null || w.signalCode !== null) return w.exitCode;
      const exited = new Promise<number | null>((resolve) => w.once('exit', (c) => resolve(c)));
      w.kill('SIGTERM');
      const timer = setTimeout(() => w.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    }

    beforeAll(async () => {
      server = await startServer({
        env: {
          // The control plane itself runs no Docker: the worker does.
          STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
          STACYVM_PREVIEW_LISTEN_ADDR: '127.0.0.1:0',
          STACYVM_AUTH_API_KEY: apiKey,
          STACYVM_AUTH_ADMIN_API_KEY: adminKey,
          STACYVM_AUTH_ADMIN_FALLBACK_ENABLED: 'false',
          STACYVM_AUTH_WORKER_TOKEN: workerToken,
        },
      });
      api = apiOf(server.url, apiKey, adminKey);

      workerDir = tempDir();
      const env = serverEnv(workerDir, {
        STACYVM_WORKER_ID: workerId,
        STACYVM_WORKER_CONTROL_PLANE_URL: server.url,
        STACYVM_WORKER_LISTEN_ADDR: `127.0.0.1:${await freePort()}`,
        STACYVM_WORKER_HEARTBEAT_INTERVAL: '1s',
        STACYVM_WORKER_SHUTDOWN_TIMEOUT: '5s',
        STACYVM_AUTH_WORKER_TOKEN: workerToken,
        STACYVM_PROVIDERS_DOCKER_ENABLED: 'true',
        STACYVM_PROVIDERS_MOCK_ENABLED: 'false',
        STACYVM_PROVIDERS_DEFAULT: 'docker',
      });
      const w = spawn(process.execPath, [CLI, 'worker'], {
        cwd: workerDir,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      worker = w;
      w.stdout.on('data', (d: Buffer) => (workerOut += d.toString()));
      w.stderr.on('data', (d: Buffer) => (workerOut += d.toString()));
      const deadline = Date.now() + 30_000;
      while (!/worker registered with the control plane/.test(workerOut)) {
        if (w.exitCode !== null) throw new Error(`stacyvm worker exited:\n${workerOut}`);
        if (Date.now() > deadline) throw new Error(`worker did not register:\n${workerOut}`);
        await sleep(100);
      }
    });
    afterAll(async () => {
      await stopWorker();
      await server?.stop();
      await removeCreated();
      if (server !== undefined) cleanup(server.dir);
      if (workerDir !== '') cleanup(workerDir);
    });

    it('places the sandbox on the worker and serves its page and WebSocket through two gateways', async () => {
      onTestFailed(() => {
        console.error(`--- control plane log ---\n${server.logs().slice(-6_000)}`);
        console.error(`--- worker log ---\n${workerOut.slice(-6_000)}`);
      });
      // The worker advertises its own gateway; the control plane relays there.
      let previewUrl = '';
      for (let i = 0; i < 100 && previewUrl === ''; i++) {
        const w = await api.call('GET', `/workers/${workerId}`);
        const cap = (w.json as { capacity?: { preview_url?: string } } | undefined)?.capacity;
        previewUrl = cap?.preview_url ?? '';
        if (previewUrl === '') await sleep(100);
      }
      expect(previewUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

      // The control plane's own worker would be preferred: remove it so placement goes remote.
      const del = await api.call('DELETE', '/admin/workers/local', undefined, true);
      expect(del.status, del.text).toBe(200);

      const id = await spawnSandbox(api, workerId);
      const p = await api.call('GET', `/sandboxes/${id}/preview/${APP_PORT}`);
      expect(p.status, p.text).toBe(200);
      const url = new URL(`${(p.json as { url: string }).url}/`);
      // The browser goes to the control plane's gateway, not the worker's.
      const cpGateway = /"address":"127\.0\.0\.1:(\d+)","domains"/.exec(server.logs())?.[1];
      expect(cpGateway).toBeDefined();
      expect(url.href).toBe(`http://${APP_PORT}-${id}.localhost:${cpGateway}/`);
      expect(url.port).not.toBe(new URL(previewUrl).port);

      const nonce = secret().slice(0, 16);
      await startApp(api, id, nonce);
      await waitForApp(url);
      const seen = await browse(url.href, nonce, 'preview-browser-remote-worker.png');
      expectBrowsed(seen, url, nonce);

      // The worker's gateway refuses the browser (it serves only its control plane).
      const direct = await httpCall(Number(new URL(previewUrl).port), url.host, '/');
      expect(direct.status).toBe(401);

      const gone = await api.call('DELETE', `/sandboxes/${id}`);
      expect(gone.status, gone.text).toBe(200);
      expect((await httpCall(Number(url.port), url.host, '/')).status).toBe(404);
      expect(await stopWorker()).toBe(0);
    });
  },
);
