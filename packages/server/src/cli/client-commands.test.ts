import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, CommanderError } from 'commander';
import { describe, expect, test as base } from 'vitest';
import { withCannedServer } from '../../test/support/canned-server.js';
import type { Recorded, TestServer } from '../../test/support/canned-server.js';
import { exitCodeForCommanderError, registerClientCommands } from './client-commands.js';
import type { OutputStream } from './client-commands.js';

/** Captures what the CLI writes; `onWrite` lets a test react while a command still runs. */
class Capture implements OutputStream {
  readonly chunks: Buffer[] = [];
  onWrite: ((text: string) => void) | undefined;

  write(chunk: string | Uint8Array, callback?: (err?: Error | null) => void): boolean {
    this.chunks.push(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : Buffer.from(chunk));
    this.onWrite?.(this.text());
    callback?.(null);
    return true;
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  text(): string {
    return this.bytes().toString('utf8');
  }
}

interface CliResult {
  code: number | undefined;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

interface Cli {
  /** Runs `stacyvm <args>` in-process against the test server. */
  run(
    args: string[],
    opts?: { env?: Record<string, string>; stdout?: Capture },
  ): Promise<CliResult>;
}

const NOW = Date.parse('2026-01-01T12:00:05Z');

const test = base.extend<{ server: TestServer; cli: Cli; tmp: string }>({
  // eslint-disable-next-line no-empty-pattern
  server: async ({}, use) => withCannedServer(use),
  cli: async ({ server }, use) => {
    await use({
      async run(args, opts = {}) {
        const stdout = opts.stdout ?? new Capture();
        const stderr = new Capture();
        let code: number | undefined;
        const program = new Command('stacyvm').exitOverride().configureOutput({
          writeOut: (s) => void stdout.write(s),
          writeErr: (s) => void stderr.write(s),
        });
        registerClientCommands(program, {
          stdout,
          stderr,
          env: { STACYVM_SERVER: server.url, ...opts.env },
          setExitCode: (c) => {
            code = c;
          },
          now: () => NOW,
        });
        try {
          await program.parseAsync(args, { from: 'user' });
        } catch (err) {
          if (!(err instanceof CommanderError)) throw err;
          code = exitCodeForCommanderError(err);
        }
        return { code, stdout: stdout.text(), stderr: stderr.text(), stdoutBytes: stdout.bytes() };
      },
    });
  },
  // eslint-disable-next-line no-empty-pattern
  tmp: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-cli-test-'));
    try {
      await use(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
});

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(value));
}

function sandbox(id: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id,
    state: 'running',
    provider: 'mock',
    image: 'alpine:latest',
    memory_mb: 512,
    vcpus: 1,
    worker_id: 'local',
    created_at: '2026-01-01T12:00:00Z',
    expires_at: '2026-01-01T12:30:00Z',
    preview_domain: '',
    ...extra,
  };
}

function jsonBody(req: Recorded | undefined): unknown {
  return JSON.parse(req?.body.toString('utf8') ?? 'null');
}

describe('stacyvm spawn', () => {
  test('prints only the new sandbox id on stdout and sends the requested settings', async ({
    server,
    cli,
  }) => {
    server.handle((_req, res) => sendJson(res, 201, sandbox('sb-1a2b3c4d')));
    const r = await cli.run([
      'spawn',
      '--image',
      'node:20',
      '--ttl',
      '45m',
      '--memory',
      '2048',
      '--vcpus',
      '2',
      '--port',
      '3000',
      '--port',
      '5173',
      '--meta',
      'team=core',
      '--meta',
      'note=a=b',
    ]);
    expect(r).toMatchObject({ code: 0, stdout: 'sb-1a2b3c4d\n' });
    expect(r.stderr).toContain('spawned sb-1a2b3c4d: running on worker local');
    expect(server.requests[0]!.method).toBe('POST');
    expect(server.requests[0]!.url).toBe('/api/v1/sandboxes');
    expect(jsonBody(server.requests[0])).toEqual({
      image: 'node:20',
      ttl: '45m',
      memory_mb: 2048,
      vcpus: 2,
      ports: [3000, 5173],
      metadata: { team: 'core', note: 'a=b' },
    });
  });

  test('leaves unset settings to the server defaults', async ({ server, cli }) => {
    server.handle((_req, res) => sendJson(res, 201, sandbox('sb-00000001')));
    await cli.run(['spawn']);
    expect(jsonBody(server.requests[0])).toEqual({});
  });

  test('prints the whole sandbox object with --json', async ({ server, cli }) => {
    const sb = sandbox('sb-1a2b3c4d', { metadata: { a: '1' } });
    server.handle((_req, res) => sendJson(res, 201, sb));
    const r = await cli.run(['--json', 'spawn']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(sb);
  });

  test('rejects a bad flag value as a usage error without calling the server', async ({
    server,
    cli,
  }) => {
    const port = await cli.run(['spawn', '--port', '70000']);
    expect(port.code).toBe(2);
    expect(port.stderr).toBe('error: --port must be a whole number from 1 to 65535, got "70000"\n');
    const ttl = await cli.run(['spawn', '--ttl', '3d']);
    expect(ttl.code).toBe(2);
    expect(ttl.stderr).toContain('error: --ttl: invalid duration "3d"');
    const meta = await cli.run(['spawn', '--meta', 'novalue']);
    expect(meta).toMatchObject({
      code: 2,
      stderr: 'error: --meta expects key=value, got "novalue"\n',
    });
    expect(server.requests).toHaveLength(0);
  });

  test('treats an unknown option as a usage error (exit 2)', async ({ server, cli }) => {
    const r = await cli.run(['spawn', '--bogus']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown option '--bogus'");
    expect(server.requests).toHaveLength(0);
  });
});

describe('stacyvm list', () => {
  test('renders an aligned table with relative times', async ({ server, cli }) => {
    server.handle((_req, res) =>
      sendJson(res, 200, [
        sandbox('sb-1a2b3c4d'),
        sandbox('sb-99999999', {
          state: 'creating',
          provider: 'docker',
          image: 'python:3.12-slim',
          worker_id: 'worker-eu-1',
          created_at: '2026-01-01T11:00:00Z',
          expires_at: '2026-01-01T13:30:00Z',
        }),
      ]),
    );
    const r = await cli.run(['ls']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toEqual([
      'ID           STATE     PROVIDER  IMAGE             WORKER       CREATED  EXPIRES',
      'sb-1a2b3c4d  running   mock      alpine:latest     local        5s ago   in 29m',
      'sb-99999999  creating  docker    python:3.12-slim  worker-eu-1  1h ago   in 1h29m',
    ]);
    expect(server.requests[0]!.url).toBe('/api/v1/sandboxes');
  });

  test('prints the raw array with --json', async ({ server, cli }) => {
    const list = [sandbox('sb-1a2b3c4d')];
    server.handle((_req, res) => sendJson(res, 200, list));
    const r = await cli.run(['list', '--json']);
    expect(JSON.parse(r.stdout)).toEqual(list);
  });

  test('says there are no sandboxes on stderr and prints nothing on stdout', async ({
    server,
    cli,
  }) => {
    server.handle((_req, res) => sendJson(res, 200, []));
    const r = await cli.run(['list']);
    expect(r).toMatchObject({ code: 0, stdout: '', stderr: 'no sandboxes\n' });
  });
});

describe('stacyvm get / kill / logs', () => {
  test('get shows a key/value view of the sandbox', async ({ server, cli }) => {
    server.handle((_req, res) =>
      sendJson(res, 200, sandbox('sb-1a2b3c4d', { owner_id: 'alice', metadata: { team: 'core' } })),
    );
    const r = await cli.run(['get', 'sb-1a2b3c4d']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('ID        sb-1a2b3c4d\n');
    expect(r.stdout).toContain('Owner     alice\n');
    expect(r.stdout).toContain('Expires   2026-01-01T12:30:00Z (in 29m)\n');
    expect(r.stdout).toContain('Metadata  team=core\n');
    expect(server.requests[0]!.url).toBe('/api/v1/sandboxes/sb-1a2b3c4d');
  });

  test('kill (alias destroy) deletes the sandbox', async ({ server, cli }) => {
    server.handle((_req, res) => sendJson(res, 200, { status: 'destroyed' }));
    const r = await cli.run(['destroy', 'sb-1a2b3c4d']);
    expect(r).toMatchObject({ code: 0, stdout: 'destroyed sb-1a2b3c4d\n' });
    expect(server.requests[0]).toMatchObject({
      method: 'DELETE',
      url: '/api/v1/sandboxes/sb-1a2b3c4d',
    });
  });

  test('logs asks for the requested number of lines and prints one per line', async ({
    server,
    cli,
  }) => {
    server.handle((_req, res) => sendJson(res, 200, ['first', 'second']));
    const r = await cli.run(['logs', 'sb-1a2b3c4d', '--lines', '5']);
    expect(r).toMatchObject({ code: 0, stdout: 'first\nsecond\n' });
    expect(server.requests[0]!.url).toBe('/api/v1/sandboxes/sb-1a2b3c4d/logs?lines=5');
  });
});

describe('stacyvm exec', () => {
  test('streams chunks live and in order, then exits with the command exit code', async ({
    server,
    cli,
  }) => {
    const stdout = new Capture();
    const firstChunkShown = new Promise<void>((resolve) => {
      stdout.onWrite = (text) => {
        if (text.includes('hello')) resolve();
      };
    });
    server.handle(async (_req, res) => {
      res.setHeader('content-type', 'application/x-ndjson');
      res.write('{"stream":"stdout","data":"hello\\n"}\n');
      // The rest is only sent once the CLI has shown the first chunk: a buffering CLI would hang here.
      await Promise.race([
        firstChunkShown,
        sleep(5_000).then(() => {
          throw new Error('first chunk was not written while the stream was open');
        }),
      ]);
      res.write('{"stream":"stderr","data":"oops\\n"}\n{"stream":"std');
      await sleep(20);
      res.write('out","data":"world\\n"}\n');
      res.end('{"stream":"exit","data":"","exit_code":3,"duration":"12ms"}');
    });
    const r = await cli.run(
      [
        'exec',
        'sb-1a2b3c4d',
        '--env',
        'A=1',
        '--workdir',
        '/tmp',
        '--timeout',
        '5s',
        '--',
        'echo',
        '-n',
        'hi there',
      ],
      { stdout },
    );
    expect(r).toMatchObject({ code: 3, stdout: 'hello\nworld\n', stderr: 'oops\n' });
    expect(server.requests[0]!.url).toBe('/api/v1/sandboxes/sb-1a2b3c4d/exec');
    expect(jsonBody(server.requests[0])).toEqual({
      command: 'echo',
      args: ['-n', 'hi there'],
      mode: 'argv',
      env: { A: '1' },
      workdir: '/tmp',
      timeout: '5s',
      stream: true,
    });
  });

  test('--shell joins the words into one shell command', async ({ server, cli }) => {
    server.handle((_req, res) =>
      res.end('{"stream":"exit","data":"","exit_code":0,"duration":"1ms"}\n'),
    );
    const r = await cli.run(['exec', 'sb-1a2b3c4d', '--shell', '--', 'echo', '$HOME', '|', 'wc']);
    expect(r.code).toBe(0);
    expect(jsonBody(server.requests[0])).toMatchObject({
      command: 'echo $HOME | wc',
      args: [],
      mode: 'shell',
    });
  });

  test('exits 124 with a note on stderr when the command timed out', async ({ server, cli }) => {
    server.handle((_req, res) =>
      res.end(
        '{"stream":"stdout","data":"partial"}\n{"stream":"exit","data":"","exit_code":124,"duration":"1s","timed_out":true}\n',
      ),
    );
    const r = await cli.run(['exec', 'sb-1a2b3c4d', '--timeout', '1s', '--', 'sleep', '5']);
    expect(r).toMatchObject({
      code: 124,
      stdout: 'partial',
      stderr: 'stacyvm: command timed out after 1s\n',
    });
  });

  test('reports an error line that arrives mid-stream and exits 1', async ({ server, cli }) => {
    server.handle((_req, res) => {
      res.setHeader('x-request-id', 'req-mid');
      res.end(
        '{"stream":"stdout","data":"a"}\n{"stream":"error","data":"","code":"UNAVAILABLE","message":"worker lost"}\n',
      );
    });
    const r = await cli.run(['exec', 'sb-1a2b3c4d', 'true']);
    expect(r).toMatchObject({
      code: 1,
      stdout: 'a',
      stderr: 'error: worker lost (code UNAVAILABLE, request req-mid)\n',
    });
  });

  test('fails when the stream ends without an exit line', async ({ server, cli }) => {
    server.handle((_req, res) => res.end('{"stream":"stdout","data":"a"}\n'));
    const r = await cli.run(['exec', 'sb-1a2b3c4d', 'true']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('exec stream ended before the command finished');
  });

  test('--json runs a sync exec, prints the result and exits with its exit code', async ({
    server,
    cli,
  }) => {
    const result = { exit_code: 2, stdout: 'out', stderr: 'err', duration: '3ms' };
    server.handle((_req, res) => sendJson(res, 200, result));
    const r = await cli.run(['exec', '--json', 'sb-1a2b3c4d', '--', 'ls', '/nope']);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toEqual(result);
    expect(jsonBody(server.requests[0])).toEqual({
      command: 'ls',
      args: ['/nope'],
      mode: 'argv',
      stream: false,
    });
  });
});

describe('stacyvm errors', () => {
  test('prints the error envelope with code and request id and exits 1', async ({
    server,
    cli,
  }) => {
    server.handle((_req, res) =>
      sendJson(res, 404, {
        code: 'NOT_FOUND',
        message: 'sandbox not found: sb-deadbeef',
        request_id: 'req-123',
      }),
    );
    const r = await cli.run(['get', 'sb-deadbeef']);
    expect(r).toMatchObject({
      code: 1,
      stdout: '',
      stderr: 'error: sandbox not found: sb-deadbeef (code NOT_FOUND, request req-123)\n',
    });
  });

  test('lists field problems under a validation error', async ({ server, cli }) => {
    server.handle((_req, res) =>
      sendJson(res, 400, {
        code: 'BAD_REQUEST',
        message: 'invalid body.ttl: must be a Go duration',
        request_id: 'req-9',
        details: [{ field: 'body.ttl', problem: 'must be a Go duration' }],
      }),
    );
    const r = await cli.run(['spawn']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      'error: invalid body.ttl: must be a Go duration (code BAD_REQUEST, request req-9)\n' +
        '  body.ttl: must be a Go duration\n',
    );
  });

  test('explains a refused connection with the server address', async ({ cli }) => {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as AddressInfo;
    await new Promise<void>((resolve) => probe.close(() => resolve()));

    const r = await cli.run(['list'], { env: { STACYVM_SERVER: `127.0.0.1:${port}` } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(
        `^error: cannot reach StacyVM at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED.*\\(is \`stacyvm serve\` running\\?\\) \\(code UNAVAILABLE\\)\\n$`,
      ),
    );
  });

  test('rejects a --server that is not http(s) as a usage error', async ({ cli }) => {
    const r = await cli.run(['--server', 'ftp://example.com', 'list']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('error: --server: server URL must be http or https');
  });
});

describe('stacyvm API key handling', () => {
  test('sends the key as X-API-Key on every call and never prints it', async ({ server, cli }) => {
    const key = 'sk-live-9f8e7d6c5b4a';
    server.handle((req, res) => {
      if (req.url === '/api/v1/sandboxes' && req.method === 'GET') {
        sendJson(res, 200, [sandbox('sb-1a2b3c4d')]);
      } else if (req.url?.endsWith('/exec') === true) {
        res.end(
          `{"stream":"stdout","data":"hi"}\n{"stream":"error","data":"","code":"UNAUTHORIZED","message":"key ${key} revoked"}\n`,
        );
      } else {
        sendJson(res, 401, { code: 'UNAUTHORIZED', message: `invalid API key ${key}` });
      }
    });
    const env = { STACYVM_API_KEY: key };
    const results = [
      await cli.run(['list'], { env }),
      await cli.run(['get', 'sb-1a2b3c4d'], { env }),
      await cli.run(['exec', 'sb-1a2b3c4d', 'true'], { env }),
      await cli.run(['--json', 'spawn'], { env }),
    ];
    expect(results.map((r) => r.code)).toEqual([0, 1, 1, 1]);
    expect(server.requests).toHaveLength(4);
    for (const req of server.requests) expect(req.headers['x-api-key']).toBe(key);
    for (const r of results) {
      expect(r.stdout).not.toContain(key);
      expect(r.stderr).not.toContain(key);
    }
    expect(results[1]!.stderr).toBe('error: invalid API key [redacted] (code UNAUTHORIZED)\n');
  });

  test('--api-key takes precedence over STACYVM_API_KEY', async ({ server, cli }) => {
    server.handle((_req, res) => sendJson(res, 200, []));
    await cli.run(['--api-key', 'from-flag', 'list'], { env: { STACYVM_API_KEY: 'from-env' } });
    expect(server.requests[0]!.headers['x-api-key']).toBe('from-flag');
  });

  test('documents in --help that the env var is preferred', async ({ cli }) => {
    const r = await cli.run(['--help']);
    expect(r.code).toBe(0);
    // Commander wraps help text, so compare with whitespace collapsed.
    expect(r.stdout.replace(/\s+/g, ' ')).toContain(
      'prefer env STACYVM_API_KEY, since argv is visible to other users',
    );
  });
});

describe('stacyvm files', () => {
  const binary = Buffer.concat([
    Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
    Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0x0d, 0x0a]),
    randomBytes(100_000),
  ]);

  test('get writes binary content byte for byte to stdout', async ({ server, cli }) => {
    server.handle((_req, res) => {
      res.setHeader('content-type', 'application/octet-stream');
      res.end(binary);
    });
    const r = await cli.run(['files', 'get', 'sb-1a2b3c4d', '/workspace/blob.bin']);
    expect(r.code).toBe(0);
    expect(r.stdoutBytes.equals(binary)).toBe(true);
    expect(server.requests[0]!.url).toBe(
      '/api/v1/sandboxes/sb-1a2b3c4d/files?path=%2Fworkspace%2Fblob.bin',
    );
  });

  test('get --out writes the exact bytes to the file and leaves no partial file', async ({
    server,
    cli,
    tmp,
  }) => {
    server.handle((_req, res) => res.end(binary));
    const out = join(tmp, 'blob.bin');
    const r = await cli.run(['files', 'get', 'sb-1a2b3c4d', '/workspace/blob.bin', '--out', out]);
    expect(r).toMatchObject({ code: 0, stdout: '' });
    expect(readFileSync(out).equals(binary)).toBe(true);
    expect(readdirSync(tmp)).toEqual(['blob.bin']);
  });

  test('get --out does not create the file when the server refuses', async ({
    server,
    cli,
    tmp,
  }) => {
    server.handle((_req, res) =>
      sendJson(res, 404, { code: 'NOT_FOUND', message: 'no such file', request_id: 'r1' }),
    );
    const out = join(tmp, 'missing.bin');
    const r = await cli.run(['files', 'get', 'sb-1a2b3c4d', '/nope', '--out', out]);
    expect(r).toMatchObject({
      code: 1,
      stderr: 'error: no such file (code NOT_FOUND, request r1)\n',
    });
    expect(existsSync(out)).toBe(false);
  });

  test('put streams the local file as a raw chunked body with path and mode', async ({
    server,
    cli,
    tmp,
  }) => {
    server.handle((_req, res) => sendJson(res, 200, { status: 'written' }));
    const local = join(tmp, 'upload.bin');
    writeFileSync(local, binary);
    const r = await cli.run([
      'files',
      'put',
      'sb-1a2b3c4d',
      local,
      '/workspace/up.bin',
      '--mode',
      '600',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('wrote 98 KiB to sb-1a2b3c4d:/workspace/up.bin\n');
    const req = server.requests[0]!;
    expect(req.method).toBe('PUT');
    expect(req.url).toBe(
      '/api/v1/sandboxes/sb-1a2b3c4d/files?path=%2Fworkspace%2Fup.bin&mode=0600',
    );
    expect(req.headers['content-type']).toBe('application/octet-stream');
    // Streamed, not buffered into one body of known length.
    expect(req.headers['transfer-encoding']).toBe('chunked');
    expect(req.headers['content-length']).toBeUndefined();
    expect(req.body.equals(binary)).toBe(true);
  });

  test('put refuses a missing local file before contacting the server', async ({
    server,
    cli,
    tmp,
  }) => {
    const r = await cli.run(['files', 'put', 'sb-1a2b3c4d', join(tmp, 'nope'), '/workspace/x']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot upload .*nope: .*ENOENT.*\(code BAD_REQUEST\)\n$/);
    expect(server.requests).toHaveLength(0);
  });

  test('put rejects a mode that is not octal as a usage error', async ({ cli, tmp }) => {
    const local = join(tmp, 'f');
    writeFileSync(local, 'x');
    const r = await cli.run(['files', 'put', 'sb-1a2b3c4d', local, '/w/f', '--mode', 'rw']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('error: --mode:');
  });

  test('ls renders NAME SIZE MODE MODIFIED with directories first and marked', async ({
    server,
    cli,
  }) => {
    server.handle((_req, res) =>
      sendJson(res, 200, [
        {
          path: '/workspace/b.txt',
          name: 'b.txt',
          size: 1536,
          mode: '0644',
          is_dir: false,
          mod_time: '2026-01-01T11:58:00Z',
        },
        {
          path: '/workspace/src',
          name: 'src',
          size: 4096,
          mode: '0755',
          is_dir: true,
          mod_time: '2026-01-01T10:00:00Z',
        },
      ]),
    );
    const r = await cli.run(['files', 'ls', 'sb-1a2b3c4d']);
    expect(r.code).toBe(0);
    expect(r.stdout.trimEnd().split('\n')).toEqual([
      'NAME   SIZE     MODE  MODIFIED',
      'src/   -        0755  2h ago',
      'b.txt  1.5 KiB  0644  2m ago',
    ]);
    expect(server.requests[0]!.url).toBe(
      '/api/v1/sandboxes/sb-1a2b3c4d/files/list?path=%2Fworkspace',
    );
  });
});

describe('stacyvm version', () => {
  test('prints the package version, platform, arch and node version without a server', async ({
    server,
    cli,
  }) => {
    const pkg = JSON.parse(
      readFileSync(new URL('../../package.json', import.meta.url), 'utf8'),
    ) as { version: string };
    const r = await cli.run(['version']);
    expect(r).toMatchObject({
      code: 0,
      stdout: `stacyvm ${pkg.version} (${process.platform}/${process.arch}, node ${process.versions.node})\n`,
    });
    expect(server.requests).toHaveLength(0);
  });
});
