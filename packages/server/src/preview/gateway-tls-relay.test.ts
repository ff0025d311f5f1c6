/**
 * The relay hop from a control plane's gateway to a worker's gateway over
 * HTTPS with mutual TLS (worker RPC certificates): real sockets on
 * 127.0.0.1, a test PKI made with the openssl CLI. The worker gateway
 * requires a client certificate from its CA; the control plane's side
 * verifies the worker's certificate against the CA it was given.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpCall, openWs, startUpstream } from '../../test/support/preview-upstream.js';
import type { Upstream } from '../../test/support/preview-upstream.js';
import { silentLogger } from '../domain/logger.js';
import { HEADER_WORKER_ID, HEADER_WORKER_TOKEN } from '../rpc/protocol.js';
import { generateTestPki } from '../rpc/worker-client.contract.js';
import type { TestPki } from '../rpc/worker-client.contract.js';
import type { PreviewUpstream, RelayTls } from '../rpc/worker-client.js';
import { createPreviewGateway } from './gateway.js';
import type { PreviewGateway } from './gateway.js';

const TOKEN = 'worker-tls-token-0123456789abcdef01234567';

describe('preview relay to a worker gateway over mutual TLS', () => {
  let dir: string;
  let pki: TestPki;
  let up: Upstream;
  let worker: PreviewGateway;
  let workerPort = 0;
  const cps: PreviewGateway[] = [];

  /** A control plane gateway whose resolver relays to the worker with `tls`. */
  async function cpGateway(tls: RelayTls): Promise<number> {
    const relay = (): PreviewUpstream => ({
      kind: 'relay',
      url: `https://127.0.0.1:${workerPort}`,
      headers: { [HEADER_WORKER_ID]: 'w1', [HEADER_WORKER_TOKEN]: TOKEN },
      tls,
    });
    const gw = createPreviewGateway({
      domains: () => ['w.test'],
      resolve: () => Promise.resolve(relay()),
      publicScheme: 'http',
      upstreamTimeoutMs: 5_000,
      logger: silentLogger,
    });
    cps.push(gw);
    return (await gw.listen('127.0.0.1', 0)).port;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stacyvm-tls-relay-'));
    pki = await generateTestPki(dir);
    up = await startUpstream();
    worker = createPreviewGateway({
      domains: () => ['w.test'],
      resolve: () => Promise.resolve({ kind: 'direct', host: '127.0.0.1', port: up.port }),
      hopAuth: (id, token) => id === 'w1' && token === TOKEN,
      publicScheme: 'https',
      tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca },
      logger: silentLogger,
    });
    workerPort = (await worker.listen('127.0.0.1', 0)).port;
  }, 60_000);
  afterAll(async () => {
    for (const gw of cps) await gw.close(0);
    await worker?.close(0);
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const hostFor = (gw: number): string => `${up.port}-sb-0000abcd.w.test:${gw}`;

  it('relays requests and streamed bodies, Host unchanged, no credential reaching the app', async () => {
    const gw = await cpGateway({ ca: pki.ca, cert: pki.clientCert, key: pki.clientKey });
    const host = hostFor(gw);
    for (let i = 0; i < 3; i++) {
      const r = await httpCall(gw, host, `/echo?n=${i}`);
      expect(r.status, r.body).toBe(200);
      const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
      expect(seen.url).toBe(`/echo?n=${i}`);
      expect(seen.headers['host']).toBe(host);
      expect(seen.headers['x-forwarded-host']).toBe(host);
      expect(seen.headers[HEADER_WORKER_ID]).toBeUndefined();
      expect(seen.headers[HEADER_WORKER_TOKEN]).toBeUndefined();
      expect(JSON.stringify(seen.headers)).not.toContain(TOKEN);
    }
    const body = Buffer.alloc(300_000, 97);
    const streamed = await httpCall(gw, host, '/stream', { method: 'POST', body });
    expect(streamed.status).toBe(200);
    expect(streamed.body).toBe(body.toString());
    const big = await httpCall(gw, host, '/big?bytes=2000000');
    expect(big.status).toBe(200);
    expect(big.body.length).toBe(2_000_000);
  });

  it('relays WebSocket upgrades over the TLS hop', async () => {
    const gw = await cpGateway({ ca: pki.ca, cert: pki.clientCert, key: pki.clientKey });
    const { ws, next } = await openWs(gw, hostFor(gw), '/live');
    try {
      expect(await next()).toBe('hello from upstream');
      ws.send('through mTLS');
      expect(await next()).toBe('echo:through mTLS');
    } finally {
      ws.close();
    }
  });

  it('answers 502 worker_unreachable when the worker refuses the client certificate', async () => {
    for (const tls of [
      { ca: pki.ca },
      { ca: pki.ca, cert: pki.strangerCert, key: pki.strangerKey },
    ] satisfies RelayTls[]) {
      const gw = await cpGateway(tls);
      const r = await httpCall(gw, hostFor(gw), '/echo', {
        headers: { accept: 'application/json' },
      });
      expect(r.status, r.body).toBe(502);
      expect(r.headers['x-stacyvm-preview-error']).toBe('worker_unreachable');
    }
    expect(up.seen.filter((s) => s.url === '/echo')).toHaveLength(0);
  });

  it('answers 502 when the worker certificate is not from the configured CA', async () => {
    // No CA: the worker's certificate (from the test CA) is not trusted.
    const gw = await cpGateway({ cert: pki.clientCert, key: pki.clientKey });
    const r = await httpCall(gw, hostFor(gw), '/echo?untrusted=1');
    expect(r.status, r.body).toBe(502);
    expect(r.headers['x-stacyvm-preview-error']).toBe('worker_unreachable');
    expect(up.seen.some((s) => s.url === '/echo?untrusted=1')).toBe(false);
  });
});
