import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Client,
  ConnectionError,
  InternalError,
  MalformedResponseError,
  NotFoundError,
  RequestTimeoutError,
  StacyVMError,
  StreamInterruptedError,
  UnauthorizedError,
  UnavailableError,
} from '../../src/index.js';
import type { ExecStreamEvent, Sandbox } from '../../src/index.js';
import { caught, deadPort, fakeServer, sleep, startSdkServer } from './support.js';
import type { FakeServer, SdkServer } from './support.js';

const SANDBOX = {
  id: 'sb-0000abcd',
  state: 'running',
  provider: 'mock',
  image: 'alpine',
  memory_mb: 64,
  vcpus: 1,
  worker_id: 'local',
  created_at: '2026-01-01T00:00:00.000Z',
  updated_at: '2026-01-01T00:00:00.000Z',
  expires_at: '2026-01-01T01:00:00.000Z',
  ports: [3000],
  preview_domain: 'localhost',
};

describe('errors from a real server', () => {
  let srv: SdkServer;
  beforeAll(async () => {
    srv = await startSdkServer();
  });
  afterAll(async () => {
    await srv?.stop();
  });

  it('wrong or missing API key → UnauthorizedError with the request id', async () => {
    for (const apiKey of ['wrong-key', undefined]) {
      const c = new Client({ baseUrl: srv.url, ...(apiKey === undefined ? {} : { apiKey }) });
      const err = await caught(() => c.list());
      expect(err).toBeInstanceOf(UnauthorizedError);
      expect(err).toBeInstanceOf(StacyVMError);
      expect(err).toMatchObject({
        name: 'UnauthorizedError',
        code: 'UNAUTHORIZED',
        status: 401,
        statusCode: 401,
        message: 'invalid or missing API key',
        retryable: false,
      });
      expect((err as UnauthorizedError).requestId).toMatch(/^[0-9a-f-]{36}$/);
      // The key never ends up in the error.
      expect(JSON.stringify(err) + String(err)).not.toContain('wrong-key');
    }
    // Public routes need no key.
    expect((await new Client(srv.url).health()).status).toBe('ok');
  });

  it('unknown sandbox → NotFoundError naming it', async () => {
    const err = await caught(() => srv.client().get('sb-00000000'));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err).toMatchObject({
      code: 'NOT_FOUND',
      status: 404,
      message: 'sandbox not found: sb-00000000',
    });
    expect((err as NotFoundError).requestId).toMatch(/.+/);
  });
});

describe('transport failures', () => {
  it('server down → ConnectionError, quickly', async () => {
    const port = await deadPort();
    const c = new Client({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 10_000 });
    const t0 = Date.now();
    const err = await caught(() => c.health());
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err).toMatchObject({ code: 'CONNECTION_ERROR', status: 0, retryable: true });
    expect((err as Error).message).toContain(`127.0.0.1:${port}`);
    expect((err as Error).message).toContain('ECONNREFUSED');
    // Streams too: a sandbox object whose server has gone away.
    const gone = await fakeServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(SANDBOX));
    });
    const sb = await new Client(gone.url).get(SANDBOX.id);
    await gone.close();
    await expect(sb.execStream('true').wait()).rejects.toBeInstanceOf(ConnectionError);
    await expect(sb.exec('true')).rejects.toBeInstanceOf(ConnectionError);
  });

  it('unresolvable host → ConnectionError', async () => {
    const c = new Client({ baseUrl: 'http://stacyvm-sdk-test.invalid:7423', timeoutMs: 10_000 });
    await expect(c.health()).rejects.toBeInstanceOf(ConnectionError);
  });
});

describe('misbehaving servers (fake HTTP servers on 127.0.0.1)', () => {
  const servers: FakeServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
  });
  async function fake(
    handler: Parameters<typeof fakeServer>[0],
    timeoutMs = 5_000,
  ): Promise<Client> {
    const s = await fakeServer(handler);
    servers.push(s);
    return new Client({ baseUrl: s.url, timeoutMs });
  }
  /** A client whose GET /sandboxes/{id} answers SANDBOX and POST .../exec runs `exec`. */
  async function fakeWithExec(
    exec: Parameters<typeof fakeServer>[0],
    timeoutMs = 5_000,
  ): Promise<{ client: Client; sb: Sandbox }> {
    const client = await fake((req, res) => {
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': 'fake-1' });
        res.end(JSON.stringify(SANDBOX));
        return;
      }
      exec(req, res);
    }, timeoutMs);
    return { client, sb: await client.get(SANDBOX.id) };
  }

  it('200 with a non-JSON body → MalformedResponseError', async () => {
    const c = await fake((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>hello</html>');
    });
    const err = await caught(() => c.health());
    expect(err).toBeInstanceOf(MalformedResponseError);
    expect(err).toMatchObject({ code: 'MALFORMED_RESPONSE', status: 200 });
    expect((err as Error).message).toContain('<html>hello');
  });

  it('200 with JSON of the wrong shape → MalformedResponseError', async () => {
    const c = await fake((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(req.url?.endsWith('/sandboxes') === true ? '{"not":"a list"}' : '{"id":42}');
    });
    await expect(c.list()).rejects.toBeInstanceOf(MalformedResponseError);
    await expect(c.get('sb-1')).rejects.toBeInstanceOf(MalformedResponseError);
    await expect(c.spawn()).rejects.toBeInstanceOf(MalformedResponseError);
    await expect(c.prune()).rejects.toBeInstanceOf(MalformedResponseError);
  });

  it('an error status without the envelope still maps by status', async () => {
    const c = await fake((req, res) => {
      const status = req.url?.includes('providers') === true ? 502 : 500;
      res.writeHead(status, { 'content-type': 'text/plain', 'x-request-id': 'proxy-7' });
      res.end('Bad Gateway from proxy');
    });
    const e502 = await caught(() => c.providers());
    expect(e502).toBeInstanceOf(UnavailableError);
    expect(e502).toMatchObject({ status: 502, requestId: 'proxy-7', retryable: true });
    expect((e502 as Error).message).toContain('Bad Gateway from proxy');
    const e500 = await caught(() => c.health());
    expect(e500).toBeInstanceOf(InternalError);
    expect(e500).toMatchObject({ code: 'INTERNAL_ERROR', status: 500 });
  });

  it('a server that never answers → RequestTimeoutError after timeoutMs', async () => {
    const s = await fakeServer(() => {
      /* never responds */
    });
    servers.push(s);
    const c = new Client({ baseUrl: s.url, timeoutMs: 300 });
    const t0 = Date.now();
    const err = await caught(() => c.health());
    expect(err).toBeInstanceOf(RequestTimeoutError);
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err).toMatchObject({ code: 'REQUEST_TIMEOUT', status: 0 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(3_000);
  });

  it('a body that stalls mid-way is bounded by timeoutMs too', async () => {
    const c = await fake((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"status":');
    }, 300);
    await expect(c.health()).rejects.toBeInstanceOf(RequestTimeoutError);
  });

  it('a stream cut mid-way (connection dropped, no exit line) → StreamInterruptedError', async () => {
    const { sb } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'x-request-id': 'cut-1' });
      res.write('{"stream":"stdout","data":"first\\n"}\n{"stream":"stdout","da');
      setTimeout(() => res.socket?.destroy(), 100);
    });
    const seen: ExecStreamEvent[] = [];
    const err = await caught(async () => {
      for await (const ev of sb.execStream('anything')) seen.push(ev);
    });
    expect(seen).toEqual([{ stream: 'stdout', data: 'first\n' }]);
    expect(err).toBeInstanceOf(StreamInterruptedError);
    expect(err).toMatchObject({ code: 'STREAM_INTERRUPTED', requestId: 'cut-1' });
  });

  it('a stream that ends cleanly without an exit line → StreamInterruptedError', async () => {
    const { sb } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.end('{"stream":"stdout","data":"a"}\n{"stream":"stderr","data":"b"}\n');
    });
    const stream = sb.execStream('x');
    const err = await caught(() => stream.wait());
    expect(err).toBeInstanceOf(StreamInterruptedError);
    expect((err as Error).message).toContain('without an exit line');
    // The failure is remembered.
    await expect(stream.exitCode()).rejects.toBe(err);
  });

  it('an exit line without a trailing newline still completes the stream', async () => {
    const { sb } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.end(
        '{"stream":"stdout","data":"ok"}\n{"stream":"exit","data":"","exit_code":9,"duration":"1.5s"}',
      );
    });
    const exit = await sb.execStream('x').wait();
    expect(exit).toMatchObject({ exitCode: 9, duration: '1.5s', durationMs: 1500 });
  });

  it('an error line → the mapped error, after the chunks before it', async () => {
    const { sb } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'x-request-id': 'err-1' });
      res.end(
        '{"stream":"stdout","data":"partial"}\n' +
          '{"stream":"error","data":"","code":"UNAVAILABLE","message":"worker went away"}\n',
      );
    });
    const seen: ExecStreamEvent[] = [];
    const err = await caught(async () => {
      for await (const ev of sb.execStream('x')) seen.push(ev);
    });
    expect(seen).toEqual([{ stream: 'stdout', data: 'partial' }]);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ message: 'worker went away', status: 503, requestId: 'err-1' });
  });

  it('a stream line that is not JSON, or a non-NDJSON reply → MalformedResponseError', async () => {
    const { sb } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.end('garbage\n');
    });
    await expect(sb.execStream('x').wait()).rejects.toBeInstanceOf(MalformedResponseError);
    const { sb: sb2 } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"exit_code":0,"stdout":"","stderr":"","duration":"1ms"}');
    });
    await expect(sb2.execStream('x').wait()).rejects.toBeInstanceOf(MalformedResponseError);
  });

  it('a live stream body is never cut by the request timeout', async () => {
    // Client timeoutMs 300 and exec timeout 1 ms: the request may wait 5.001 s for the
    // headers; the body then stays quiet for longer than that and must not be cut.
    const { sb } = await fakeWithExec((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write('{"stream":"stdout","data":"early\\n"}\n');
      setTimeout(() => {
        res.end(
          '{"stream":"stdout","data":"late\\n"}\n{"stream":"exit","data":"","exit_code":0}\n',
        );
      }, 5_600);
    }, 300);
    const events: ExecStreamEvent[] = [];
    const t0 = Date.now();
    for await (const ev of sb.execStream('x', { timeout: 1 })) events.push(ev);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(5_500);
    expect(events.map((e) => e.data)).toEqual(['early\n', 'late\n', '']);
  });

  it('the request carries the API key, user and tenant headers and the JSON body', async () => {
    let seen: { method?: string; url?: string; headers?: Record<string, unknown>; body?: string } =
      {};
    const s = await fakeServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        seen = { method: req.method, url: req.url, headers: req.headers, body };
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify(SANDBOX));
      });
    });
    servers.push(s);
    const c = new Client({ baseUrl: s.url, apiKey: 'k', userId: 'u', tenantId: 't' });
    await c.spawn({ memoryMb: 64, ttl: 1500, ports: [1], metadata: { a: 'b' } });
    expect(seen.method).toBe('POST');
    expect(seen.url).toBe('/api/v1/sandboxes');
    expect(seen.headers).toMatchObject({
      'x-api-key': 'k',
      'x-user-id': 'u',
      'x-tenant-id': 't',
      'content-type': 'application/json',
    });
    expect(JSON.parse(seen.body ?? '')).toEqual({
      memory_mb: 64,
      ttl: '1500ms',
      ports: [1],
      metadata: { a: 'b' },
    });
  });
});

describe('nothing hangs', () => {
  it('an abort while waiting for the headers rejects promptly', async () => {
    const s = await fakeServer(() => {
      /* never responds */
    });
    try {
      const c = new Client({ baseUrl: s.url, timeoutMs: 0 });
      const ac = new AbortController();
      const pending = c.spawn({ signal: ac.signal });
      await sleep(100);
      const t0 = Date.now();
      ac.abort();
      await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
      expect(Date.now() - t0).toBeLessThan(1_000);
    } finally {
      await s.close();
    }
  });
});
