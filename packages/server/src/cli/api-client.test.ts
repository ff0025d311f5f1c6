import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, test as base } from 'vitest';
import { withCannedServer } from '../../test/support/canned-server.js';
import type { TestServer } from '../../test/support/canned-server.js';
import { StacyError } from '../domain/errors.js';
import { ApiClient, ApiError, parseNdjson } from './api-client.js';
import type { ExecStreamLine } from './api-client.js';

/** A real HTTP server on 127.0.0.1 serving canned answers, closed after each test. */
const test = base.extend<{ server: TestServer }>({
  // eslint-disable-next-line no-empty-pattern
  server: async ({}, use) => withCannedServer(use),
});

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(value));
}

const SANDBOX = {
  id: 'sb-1a2b3c4d',
  state: 'running',
  provider: 'mock',
  image: 'alpine:latest',
  memory_mb: 512,
  vcpus: 1,
  worker_id: 'local',
  created_at: '2026-01-01T12:00:00Z',
  expires_at: '2026-01-01T12:30:00Z',
  preview_domain: '',
};

/** The error a promise rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof Error) return err;
    throw new Error(`rejected with a non-Error: ${String(err)}`);
  }
  throw new Error('expected the call to fail, but it succeeded');
}

async function collect<T>(iter: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const v of iter) out.push(v);
  return out;
}

async function* chunksOf(...parts: (string | Uint8Array)[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) {
    yield typeof p === 'string' ? new TextEncoder().encode(p) : p;
    await Promise.resolve();
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

describe('ApiClient JSON calls', () => {
  test('posts the spawn body as JSON with the API key header and returns the sandbox', async ({
    server,
  }) => {
    server.handle((_req, res) => sendJson(res, 201, SANDBOX));
    const client = new ApiClient({ server: server.url, apiKey: 'k-123' });
    const sb = await client.spawn({ image: 'node:20', ttl: '30m', ports: [3000] });
    expect(sb.id).toBe('sb-1a2b3c4d');
    const req = server.requests[0]!;
    expect(req.method).toBe('POST');
    expect(req.url).toBe('/api/v1/sandboxes');
    expect(req.headers['x-api-key']).toBe('k-123');
    expect(req.headers['content-type']).toBe('application/json');
    expect(JSON.parse(req.body.toString())).toEqual({
      image: 'node:20',
      ttl: '30m',
      ports: [3000],
    });
  });

  test('sends no X-API-Key header when no key is configured', async ({ server }) => {
    server.handle((_req, res) => sendJson(res, 200, []));
    await new ApiClient({ server: server.url }).list();
    expect(server.requests[0]!.headers['x-api-key']).toBeUndefined();
  });

  test('keeps a path prefix of the server URL and encodes ids and query values', async ({
    server,
  }) => {
    server.handle((_req, res) => sendJson(res, 200, ['a', 'b']));
    const client = new ApiClient({ server: `${server.url}/stacy/` });
    expect(await client.logs('sb-1', 5)).toEqual(['a', 'b']);
    await client.listFiles('sb/x', '/work space').catch(() => undefined);
    expect(server.requests[0]!.url).toBe('/stacy/api/v1/sandboxes/sb-1/logs?lines=5');
    expect(server.requests[1]!.url).toBe(
      '/stacy/api/v1/sandboxes/sb%2Fx/files/list?path=%2Fwork+space',
    );
  });

  test('rebuilds the error envelope as an ApiError carrying code, message and request id', async ({
    server,
  }) => {
    server.handle((_req, res) =>
      sendJson(res, 404, {
        code: 'NOT_FOUND',
        message: 'sandbox not found: sb-00000000',
        request_id: 'req-42',
      }),
    );
    const err = await rejection(new ApiClient({ server: server.url }).get('sb-00000000'));
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toBeInstanceOf(StacyError);
    expect(err).toMatchObject({
      code: 'NOT_FOUND',
      message: 'sandbox not found: sb-00000000',
      requestId: 'req-42',
      httpStatus: 404,
      status: 404,
    });
  });

  test('takes the request id from the X-Request-ID header when the body has none', async ({
    server,
  }) => {
    server.handle((_req, res) => {
      res.setHeader('x-request-id', 'hdr-7');
      sendJson(res, 409, { code: 'CONFLICT', message: 'busy' });
    });
    const err = await rejection(new ApiClient({ server: server.url }).destroy('sb-1'));
    expect(err).toMatchObject({ code: 'CONFLICT', requestId: 'hdr-7' });
  });

  test('maps a non-JSON error page to the code for its status and quotes the text', async ({
    server,
  }) => {
    server.handle((_req, res) => {
      res.statusCode = 404;
      res.end('404 page not found');
    });
    const err = await rejection(new ApiClient({ server: server.url }).list());
    expect(err).toMatchObject({ code: 'NOT_FOUND', message: 'HTTP 404: 404 page not found' });
  });

  test('redacts the API key if a server message ever echoes it', async ({ server }) => {
    server.handle((_req, res) =>
      sendJson(res, 401, { code: 'UNAUTHORIZED', message: 'bad key topsecret-1' }),
    );
    const err = await rejection(
      new ApiClient({ server: server.url, apiKey: 'topsecret-1' }).list(),
    );
    expect(err.message).toBe('bad key [redacted]');
  });

  test('rejects a 2xx answer that is not JSON as UNAVAILABLE', async ({ server }) => {
    server.handle((_req, res) => res.end('<html>hello</html>'));
    const err = await rejection(new ApiClient({ server: server.url }).health());
    expect(err).toMatchObject({ code: 'UNAVAILABLE' });
    expect(err.message).toContain('not JSON');
  });

  test('gives a TIMEOUT error when a JSON call outlives timeoutMs', async ({ server }) => {
    server.handle(async (_req, res) => {
      await sleep(1_000);
      sendJson(res, 200, []);
    });
    const err = await rejection(new ApiClient({ server: server.url, timeoutMs: 100 }).list());
    expect(err).toBeInstanceOf(StacyError);
    expect(err).toMatchObject({ code: 'TIMEOUT' });
    expect(err.message).toContain('100ms');
  });

  test('says which server could not be reached when the connection is refused', async () => {
    const port = await freePort();
    const client = new ApiClient({ server: `http://127.0.0.1:${port}`, apiKey: 'never-shown' });
    const err = (await rejection(client.list())) as StacyError;
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toMatch(
      new RegExp(
        `^cannot reach StacyVM at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED.* \\(is \`stacyvm serve\` running\\?\\)$`,
      ),
    );
    expect(err.message).not.toContain('never-shown');
  });

  test('sends URL credentials as Basic auth and never shows them in messages', async ({
    server,
  }) => {
    server.handle((_req, res) => sendJson(res, 200, []));
    const withCreds = server.url.replace('http://', 'http://user:pw-secret@');
    await new ApiClient({ server: withCreds }).list();
    expect(server.requests[0]!.headers.authorization).toBe(
      `Basic ${Buffer.from('user:pw-secret').toString('base64')}`,
    );

    const port = await freePort();
    const client = new ApiClient({ server: `http://user:pw-secret@127.0.0.1:${port}` });
    expect(client.displayServer).toBe(`http://127.0.0.1:${port}`);
    const err = await rejection(client.list());
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.message).not.toContain('pw-secret');
  });

  test('refuses a server URL that is not http or https', () => {
    expect(() => new ApiClient({ server: 'ftp://example.com' })).toThrow(/http or https/);
    expect(() => new ApiClient({ server: 'not a url' })).toThrow(StacyError);
  });
});

describe('ApiClient.execStream', () => {
  test('yields stdout, stderr and exit lines in order from an NDJSON stream', async ({
    server,
  }) => {
    server.handle(async (_req, res) => {
      res.setHeader('content-type', 'application/x-ndjson');
      res.write('{"stream":"stdout","data":"hel');
      await sleep(20);
      res.write('lo\\n"}\n{"stream":"stderr","data":"warn"}\n');
      await sleep(20);
      res.end('{"stream":"exit","data":"","exit_code":7,"duration":"12ms"}');
    });
    const client = new ApiClient({ server: server.url });
    const lines = await collect(
      client.execStream('sb-1', { command: 'sh', args: ['-c', 'x'], mode: 'argv' }),
    );
    expect(lines).toEqual<ExecStreamLine[]>([
      { stream: 'stdout', data: 'hello\n' },
      { stream: 'stderr', data: 'warn' },
      { stream: 'exit', exit_code: 7, duration: '12ms' },
    ]);
    expect(JSON.parse(server.requests[0]!.body.toString())).toEqual({
      command: 'sh',
      args: ['-c', 'x'],
      mode: 'argv',
      stream: true,
    });
  });

  test('is never cut by the request timeout while the command keeps running', async ({
    server,
  }) => {
    server.handle(async (_req, res) => {
      res.setHeader('content-type', 'application/x-ndjson');
      res.write('{"stream":"stdout","data":"a"}\n');
      await sleep(400);
      res.end('{"stream":"exit","data":"","exit_code":0,"duration":"400ms"}\n');
    });
    const client = new ApiClient({ server: server.url, timeoutMs: 50 });
    const lines = await collect(
      client.execStream('sb-1', { command: 'x', args: [], mode: 'argv' }),
    );
    expect(lines.at(-1)).toEqual({ stream: 'exit', exit_code: 0, duration: '400ms' });
  });

  test('throws an error line as an ApiError with the response request id', async ({ server }) => {
    server.handle((_req, res) => {
      res.setHeader('content-type', 'application/x-ndjson');
      res.setHeader('x-request-id', 'req-stream');
      res.end(
        '{"stream":"stdout","data":"partial"}\n{"stream":"error","data":"","code":"UNAVAILABLE","message":"worker went away"}\n',
      );
    });
    const seen: ExecStreamLine[] = [];
    const client = new ApiClient({ server: server.url });
    const err = await rejection(
      (async () => {
        for await (const l of client.execStream('sb-1', { command: 'x', args: [], mode: 'argv' })) {
          seen.push(l);
        }
      })(),
    );
    expect(seen).toEqual([{ stream: 'stdout', data: 'partial' }]);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({
      code: 'UNAVAILABLE',
      message: 'worker went away',
      requestId: 'req-stream',
    });
  });

  test('throws the error envelope before any line when the server refuses the exec', async ({
    server,
  }) => {
    server.handle((_req, res) =>
      sendJson(res, 404, { code: 'NOT_FOUND', message: 'no such sandbox' }),
    );
    const client = new ApiClient({ server: server.url });
    const err = await rejection(
      collect(client.execStream('sb-1', { command: 'x', args: [], mode: 'argv' })),
    );
    expect(err).toMatchObject({ code: 'NOT_FOUND', message: 'no such sandbox' });
  });

  test('releases the connection when the consumer stops reading early', async ({ server }) => {
    let closed!: () => void;
    const serverSawClose = new Promise<void>((resolve) => {
      closed = resolve;
    });
    server.handle((_req, res) => {
      res.setHeader('content-type', 'application/x-ndjson');
      const timer = setInterval(() => res.write('{"stream":"stdout","data":"tick"}\n'), 10);
      res.on('close', () => {
        clearInterval(timer);
        closed();
      });
    });
    const client = new ApiClient({ server: server.url });
    for await (const line of client.execStream('sb-1', { command: 'x', args: [], mode: 'argv' })) {
      expect(line).toEqual({ stream: 'stdout', data: 'tick' });
      break;
    }
    await expect(
      Promise.race([serverSawClose.then(() => 'closed'), sleep(3_000).then(() => 'still open')]),
    ).resolves.toBe('closed');
  });
});

describe('parseNdjson', () => {
  test('joins a line split across chunks, even inside a multi-byte character', async () => {
    const euro = new TextEncoder().encode('{"data":"€"}\n');
    // '€' is three bytes; cut after its first byte.
    const cut = euro.indexOf(0xe2) + 1;
    const values = await collect(parseNdjson(chunksOf(euro.slice(0, cut), euro.slice(cut))));
    expect(values).toEqual([{ data: '€' }]);
  });

  test('reads a trailing line without a newline and skips blank lines', async () => {
    const values = await collect(parseNdjson(chunksOf('{"a":1}\n\n  \n{"b"', ':2}')));
    expect(values).toEqual([{ a: 1 }, { b: 2 }]);
  });

  test('rejects a line that is not JSON as UNAVAILABLE', async () => {
    const err = await rejection(collect(parseNdjson(chunksOf('{"a":1}\nnot json\n'))));
    expect(err).toMatchObject({ code: 'UNAVAILABLE' });
    expect(err.message).toContain('malformed line');
  });
});

describe('ApiClient files', () => {
  test('reads a binary file byte for byte', async ({ server }) => {
    const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7 + 3) % 256));
    server.handle((_req, res) => {
      res.setHeader('content-type', 'application/octet-stream');
      res.end(bytes);
    });
    const data = await new ApiClient({ server: server.url }).readFile('sb-1', '/bin/blob');
    expect(Buffer.from(data).equals(bytes)).toBe(true);
    expect(server.requests[0]!.url).toBe('/api/v1/sandboxes/sb-1/files?path=%2Fbin%2Fblob');
  });

  test('bounds a download only until the headers arrive', async ({ server }) => {
    server.handle(async (_req, res) => {
      res.setHeader('content-type', 'application/octet-stream');
      res.write(Buffer.from([1, 2]));
      await sleep(300);
      res.end(Buffer.from([3]));
    });
    const data = await new ApiClient({ server: server.url, timeoutMs: 100 }).readFile('sb-1', '/f');
    expect([...data]).toEqual([1, 2, 3]);
  });

  test('writes raw bytes with path and mode in the query', async ({ server }) => {
    server.handle((_req, res) => sendJson(res, 200, { status: 'written' }));
    const bytes = new Uint8Array([0, 255, 10, 13, 0x80]);
    await new ApiClient({ server: server.url }).writeFile(
      'sb-1',
      '/workspace/x.bin',
      bytes,
      '0600',
    );
    const req = server.requests[0]!;
    expect(req.method).toBe('PUT');
    expect(req.url).toBe('/api/v1/sandboxes/sb-1/files?path=%2Fworkspace%2Fx.bin&mode=0600');
    expect(req.headers['content-type']).toBe('application/octet-stream');
    expect([...req.body]).toEqual([...bytes]);
  });
});
