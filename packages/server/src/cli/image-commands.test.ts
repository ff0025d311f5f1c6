import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { Command, CommanderError } from 'commander';
import tar from 'tar-stream';
import type { Header } from 'tar-stream';
import { describe, expect, test as base } from 'vitest';
import { StacyError } from '../domain/errors.js';
import type { OutputStream } from './client-commands.js';
import {
  formatImageReference,
  packDirectory,
  parseImageReference,
  registerImageCommands,
  resolveDockerTarget,
} from './image-commands.js';

class Capture implements OutputStream {
  private readonly chunks: Buffer[] = [];
  write(chunk: string | Uint8Array, callback?: (err?: Error | null) => void): boolean {
    this.chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk));
    callback?.(null);
    return true;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

interface Recorded {
  method: string;
  path: string;
  query: URLSearchParams;
  body: Buffer;
}

type Handler = (req: IncomingMessage, res: ServerResponse, recorded: Recorded) => unknown;

/** A fake Docker Engine on a unix socket: records requests, answers with the test's handler. */
interface FakeEngine {
  socketPath: string;
  requests: Recorded[];
  handle(handler: Handler): void;
}

interface CliResult {
  code: number | undefined;
  stdout: string;
  stderr: string;
  ms: number;
}

interface Cli {
  run(
    args: string[],
    opts?: { env?: Record<string, string>; pullStallMs?: number },
  ): Promise<CliResult>;
}

const ID = `sha256:${'ab'.repeat(32)}`;

const test = base.extend<{ tmp: string; engine: FakeEngine; cli: Cli }>({
  // eslint-disable-next-line no-empty-pattern
  tmp: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-image-test-'));
    try {
      await use(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
  engine: async ({ tmp }, use) => {
    const requests: Recorded[] = [];
    let handler: Handler = (_req, res) => {
      res.statusCode = 500;
      res.end('{"message":"no handler"}');
    };
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const url = new URL(req.url ?? '/', 'http://engine');
        const recorded: Recorded = {
          method: req.method ?? '',
          path: url.pathname.replace(/^\/v[0-9.]+/, ''),
          query: url.searchParams,
          body: Buffer.concat(chunks),
        };
        requests.push(recorded);
        Promise.resolve(handler(req, res, recorded)).catch(() => res.destroy());
      });
    });
    const socketPath = join(tmp, 'engine.sock');
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      await use({ socketPath, requests, handle: (h) => void (handler = h) });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  },
  cli: async ({ engine }, use) => {
    await use({
      async run(args, opts = {}) {
        const stdout = new Capture();
        const stderr = new Capture();
        let code: number | undefined;
        const program = new Command('stacyvm').exitOverride().configureOutput({
          writeOut: (s) => void stdout.write(s),
          writeErr: (s) => void stderr.write(s),
        });
        registerImageCommands(program, {
          stdout,
          stderr,
          env: { DOCKER_HOST: `unix://${engine.socketPath}`, ...opts.env },
          setExitCode: (c) => void (code = c),
          progressIntervalMs: 0,
          ...(opts.pullStallMs === undefined ? {} : { pullStallMs: opts.pullStallMs }),
        });
        const started = Date.now();
        try {
          await program.parseAsync(args, { from: 'user' });
        } catch (err) {
          if (!(err instanceof CommanderError)) throw err;
          code = err.exitCode === 0 ? 0 : 2;
        }
        return { code, stdout: stdout.text(), stderr: stderr.text(), ms: Date.now() - started };
      },
    });
  },
});

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(value));
}

interface TarEntry {
  header: Header;
  data: Buffer;
}

async function readTar(stream: Readable | Buffer): Promise<Map<string, TarEntry>> {
  const extract = tar.extract();
  const entries = new Map<string, TarEntry>();
  const done = (async () => {
    for await (const entry of extract) {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      entries.set(entry.header.name.replace(/\/$/, ''), {
        header: entry.header,
        data: Buffer.concat(chunks),
      });
    }
  })();
  if (Buffer.isBuffer(stream)) extract.end(stream);
  else {
    for await (const chunk of stream) extract.write(chunk as Buffer);
    extract.end(undefined);
  }
  await done;
  return entries;
}

const isRoot = process.getuid?.() === 0;

describe('parseImageReference', () => {
  test.each([
    ['alpine', { repository: 'alpine', tag: undefined, digest: undefined }],
    ['alpine:3.20', { repository: 'alpine', tag: '3.20', digest: undefined }],
    [
      'stacyvm-test/busybox:latest',
      { repository: 'stacyvm-test/busybox', tag: 'latest', digest: undefined },
    ],
    [
      'localhost:5000/team/app:v1.2_rc-1',
      { repository: 'localhost:5000/team/app', tag: 'v1.2_rc-1', digest: undefined },
    ],
    [
      'registry.example.com/a__b/c.d',
      { repository: 'registry.example.com/a__b/c.d', tag: undefined, digest: undefined },
    ],
  ])('accepts %s', (input, expected) => {
    expect(parseImageReference(input)).toEqual(expected);
  });

  test('accepts a digest only where allowed', () => {
    const digest = `sha256:${'0123456789abcdef'.repeat(4)}`;
    expect(parseImageReference(`alpine@${digest}`, { allowDigest: true })).toEqual({
      repository: 'alpine',
      tag: undefined,
      digest,
    });
    expect(() => parseImageReference(`alpine@${digest}`)).toThrow(/digest .* not allowed/);
  });

  test.each([
    ['', /empty/],
    ['Alpine', /lower-case/],
    ['alpine;rm -rf /', /lower-case|tag/],
    ['$(reboot)', /lower-case/],
    ['a b', /lower-case/],
    ['`id`', /lower-case/],
    ['-rm', /lower-case/],
    ['alpine:', /tag ""/],
    ['alpine:-x', /tag "-x"/],
    ['alpine:ok\n', /tag/],
    ['../etc', /registry host/],
    ['x/../etc', /lower-case/],
    ['a//b', /empty path component/],
    ['bad_host!/x', /registry host|lower-case/],
    ['alpine@sha256:abc', /not a valid digest/],
    ['ab'.repeat(32), /image id/],
    [`a/${'b'.repeat(260)}`, /longer than 255/],
  ])('refuses %j as BAD_REQUEST', (input, message) => {
    let caught: unknown;
    try {
      parseImageReference(input, { allowDigest: true });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(StacyError);
    expect((caught as StacyError).code).toBe('BAD_REQUEST');
    expect((caught as StacyError).message).toMatch(message);
  });

  test('formats a reference with the tag defaulted to latest', () => {
    expect(formatImageReference(parseImageReference('alpine'))).toBe('alpine:latest');
    expect(formatImageReference(parseImageReference('localhost:5000/x:1'))).toBe(
      'localhost:5000/x:1',
    );
  });
});

describe('resolveDockerTarget', () => {
  test('defaults to /var/run/docker.sock', () => {
    expect(resolveDockerTarget(undefined, {})).toEqual({
      kind: 'unix',
      socketPath: '/var/run/docker.sock',
    });
  });

  test('uses DOCKER_HOST when no flag is given and the flag when it is', () => {
    const env = { DOCKER_HOST: 'unix:///run/user/1000/docker.sock' };
    expect(resolveDockerTarget(undefined, env)).toEqual({
      kind: 'unix',
      socketPath: '/run/user/1000/docker.sock',
    });
    expect(resolveDockerTarget('/tmp/d.sock', env)).toEqual({
      kind: 'unix',
      socketPath: '/tmp/d.sock',
    });
  });

  test('reads tcp addresses with the Docker CLI TLS variables', () => {
    expect(resolveDockerTarget('tcp://10.0.0.5:2375', {})).toEqual({
      kind: 'tcp',
      host: '10.0.0.5',
      port: 2375,
      tls: false,
      certPath: undefined,
    });
    expect(
      resolveDockerTarget(undefined, {
        DOCKER_HOST: 'tcp://docker.internal',
        DOCKER_TLS_VERIFY: '1',
        DOCKER_CERT_PATH: '/certs',
      }),
    ).toEqual({ kind: 'tcp', host: 'docker.internal', port: 2376, tls: true, certPath: '/certs' });
  });

  test('refuses schemes it cannot use', () => {
    expect(() => resolveDockerTarget('ssh://user@host', {})).toThrow(/not supported/);
    expect(() => resolveDockerTarget(undefined, { DOCKER_HOST: 'unix://' })).toThrow(
      /no socket path/,
    );
  });
});

describe('packDirectory', () => {
  test('keeps modes, symlinks, hard links, fifos, ownership and contents, in name order', async ({
    tmp,
  }) => {
    const root = join(tmp, 'rootfs');
    mkdirSync(join(root, 'bin'), { recursive: true });
    mkdirSync(join(root, 'private'), { mode: 0o700 });
    chmodSync(join(root, 'private'), 0o750);
    writeFileSync(join(root, 'bin', 'tool'), '#!/bin/sh\necho hi\n');
    chmodSync(join(root, 'bin', 'tool'), 0o4755);
    writeFileSync(join(root, 'empty'), '');
    chmodSync(join(root, 'empty'), 0o600);
    symlinkSync('tool', join(root, 'bin', 'relative-link'));
    symlinkSync('/bin/tool', join(root, 'absolute-link'));
    symlinkSync('missing-target', join(root, 'dangling'));
    linkSync(join(root, 'bin', 'tool'), join(root, 'hard'));
    execFileSync('mkfifo', [join(root, 'pipe')]);
    const big = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    writeFileSync(join(root, 'big.bin'), big);
    const longName = `${'d'.repeat(60)}/${'f'.repeat(120)}`;
    mkdirSync(join(root, 'd'.repeat(60)));
    writeFileSync(join(root, longName), 'long');
    if (isRoot) chownSync(join(root, 'empty'), 1234, 5678);

    const entries = await readTar(packDirectory(root));

    expect([...entries.keys()]).toEqual([
      'absolute-link',
      'big.bin',
      'bin',
      'bin/relative-link',
      'bin/tool',
      'dangling',
      'd'.repeat(60),
      longName,
      'empty',
      'hard',
      'pipe',
      'private',
    ]);
    const tool = entries.get('bin/tool')!;
    expect(tool.header).toMatchObject({ type: 'file', mode: 0o4755 });
    expect(tool.data.toString()).toBe('#!/bin/sh\necho hi\n');
    expect(entries.get('private')!.header).toMatchObject({ type: 'directory', mode: 0o750 });
    expect(entries.get('bin/relative-link')!.header).toMatchObject({
      type: 'symlink',
      linkname: 'tool',
    });
    expect(entries.get('absolute-link')!.header).toMatchObject({
      type: 'symlink',
      linkname: '/bin/tool',
    });
    expect(entries.get('dangling')!.header).toMatchObject({
      type: 'symlink',
      linkname: 'missing-target',
    });
    // The first path of an inode is stored as the file; later paths link to it.
    expect(entries.get('hard')!.header).toMatchObject({ type: 'link', linkname: 'bin/tool' });
    expect(entries.get('pipe')!.header.type).toBe('fifo');
    expect(entries.get('big.bin')!.data.equals(big)).toBe(true);
    expect(entries.get(longName)!.data.toString()).toBe('long');
    expect(entries.get('empty')!.header).toMatchObject({ type: 'file', size: 0, mode: 0o600 });
    if (isRoot) expect(entries.get('empty')!.header).toMatchObject({ uid: 1234, gid: 5678 });
    else expect(entries.get('empty')!.header.uid).toBe(process.getuid?.());
  });

  test('leaves sockets out and says so', async ({ tmp }) => {
    const root = join(tmp, 'rootfs');
    mkdirSync(root);
    writeFileSync(join(root, 'file'), 'x');
    const server = createNetServer();
    await new Promise<void>((resolve) => server.listen(join(root, 'sock'), resolve));
    try {
      const skipped: string[] = [];
      const entries = await readTar(packDirectory(root, { onSkip: (rel) => skipped.push(rel) }));
      expect([...entries.keys()]).toEqual(['file']);
      expect(skipped).toEqual(['sock']);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('fails the stream when the directory does not exist', async ({ tmp }) => {
    await expect(readTar(packDirectory(join(tmp, 'nope')))).rejects.toThrow(/ENOENT/);
  });
});

describe('stacyvm image import', () => {
  test('streams the directory as a tar with repo, tag and changes, and prints the id', async ({
    tmp,
    engine,
    cli,
  }) => {
    const root = join(tmp, 'rootfs');
    mkdirSync(root);
    writeFileSync(join(root, 'hello'), 'hi');
    chmodSync(join(root, 'hello'), 0o755);
    engine.handle((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(`{"status":"${ID}"}\r\n`);
    });
    const r = await cli.run([
      'image',
      'import',
      root,
      'my/rootfs:1',
      '--change',
      'CMD ["/bin/sh"]',
      '--label',
      'team=core tools',
    ]);
    expect(r).toMatchObject({ code: 0, stdout: `${ID}\n` });
    expect(r.stderr).toContain(`importing directory ${root} as my/rootfs:1`);
    const req = engine.requests[0]!;
    expect(req.method).toBe('POST');
    expect(req.path).toBe('/images/create');
    expect(req.query.get('fromSrc')).toBe('-');
    expect(req.query.get('repo')).toBe('my/rootfs');
    expect(req.query.get('tag')).toBe('1');
    expect(req.query.getAll('changes')).toEqual(['CMD ["/bin/sh"]', 'LABEL "team"="core tools"']);
    const entries = await readTar(req.body);
    expect(entries.get('hello')!.header.mode).toBe(0o755);
    expect(entries.get('hello')!.data.toString()).toBe('hi');
  });

  test('sends an archive file as it is and tags latest by default', async ({
    tmp,
    engine,
    cli,
  }) => {
    const archive = join(tmp, 'rootfs.tar.gz');
    const bytes = Buffer.from([0x1f, 0x8b, 8, 0, 1, 2, 3, 4]);
    writeFileSync(archive, bytes);
    engine.handle((_req, res) => sendJson(res, 200, { status: ID }));
    const r = await cli.run(['image', 'import', archive, 'plain']);
    expect(r).toMatchObject({ code: 0, stdout: `${ID}\n` });
    expect(engine.requests[0]!.query.get('tag')).toBe('latest');
    expect(engine.requests[0]!.body.equals(bytes)).toBe(true);
  });

  test('refuses an invalid image name without contacting the engine', async ({
    tmp,
    engine,
    cli,
  }) => {
    mkdirSync(join(tmp, 'rootfs'));
    const r = await cli.run(['image', 'import', join(tmp, 'rootfs'), 'x;touch /tmp/pwned']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('invalid image name "x;touch /tmp/pwned"');
    expect(engine.requests).toHaveLength(0);
  });

  test('refuses a source that does not exist', async ({ tmp, engine, cli }) => {
    const r = await cli.run(['image', 'import', join(tmp, 'missing'), 'ok:1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('missing: no such file or directory');
    expect(engine.requests).toHaveLength(0);
  });

  test('reports an import error from the engine with exit code 1', async ({ tmp, engine, cli }) => {
    writeFileSync(join(tmp, 'junk.tar'), 'not a tar');
    engine.handle((_req, res) =>
      sendJson(res, 200, { errorDetail: { message: 'archive/tar: invalid tar header' } }),
    );
    const r = await cli.run(['image', 'import', join(tmp, 'junk.tar'), 'junk']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('cannot import junk:latest: archive/tar: invalid tar header');
    expect(r.stdout).toBe('');
  });

  test('names the socket and the helper script when the daemon does not answer', async ({
    tmp,
    cli,
  }) => {
    mkdirSync(join(tmp, 'rootfs'));
    const r = await cli.run([
      'image',
      '--docker-socket',
      join(tmp, 'no-daemon.sock'),
      'import',
      join(tmp, 'rootfs'),
      'x',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `cannot reach the Docker daemon at unix://${join(tmp, 'no-daemon.sock')}`,
    );
    expect(r.stderr).toContain('scripts/docker-up.sh');
  });
});

describe('stacyvm image pull', () => {
  test('shows layer progress on stderr and prints the id', async ({ engine, cli }) => {
    engine.handle((_req, res, rec) => {
      if (rec.path === '/images/create') {
        res.setHeader('content-type', 'application/json');
        const events = [
          { status: 'Pulling from library/alpine', id: '3.20' },
          { status: 'Pulling fs layer', id: 'aaa' },
          { status: 'Downloading', id: 'aaa', progressDetail: { current: 512, total: 2048 } },
          { status: 'Downloading', id: 'aaa', progressDetail: { current: 2048, total: 2048 } },
          { status: 'Download complete', id: 'aaa' },
          { status: 'Pull complete', id: 'aaa' },
          { status: 'Digest: sha256:feed' },
          { status: 'Status: Downloaded newer image for alpine:3.20' },
        ];
        res.end(events.map((e) => `${JSON.stringify(e)}\r\n`).join(''));
        return;
      }
      sendJson(res, 200, { Id: ID });
    });
    const r = await cli.run(['image', 'pull', 'alpine:3.20']);
    expect(r).toMatchObject({ code: 0, stdout: `${ID}\n` });
    const create = engine.requests[0]!;
    expect(create.query.get('fromImage')).toBe('alpine');
    expect(create.query.get('tag')).toBe('3.20');
    expect(engine.requests[1]!.path).toBe('/images/alpine:3.20/json');
    const lines = r.stderr.split('\n');
    expect(lines).toContain('pulling alpine:3.20');
    expect(lines).toContain('aaa: Pulling fs layer');
    expect(lines).toContain('aaa: Downloading');
    expect(lines).toContain('downloaded 2 KiB of 2 KiB (0/1 layers complete)');
    expect(lines).toContain('aaa: Pull complete');
    expect(lines).toContain('Status: Downloaded newer image for alpine:3.20');
    // A repeated status of one layer is not repeated as a line.
    expect(lines.filter((l) => l === 'aaa: Downloading')).toHaveLength(1);
  });

  test('pulls a digest reference by its digest', async ({ engine, cli }) => {
    const digest = `sha256:${'cd'.repeat(32)}`;
    engine.handle((_req, res, rec) =>
      rec.path === '/images/create'
        ? sendJson(res, 200, { status: 'ok' })
        : sendJson(res, 200, { Id: ID }),
    );
    const r = await cli.run(['image', 'pull', `alpine@${digest}`]);
    expect(r.code).toBe(0);
    expect(engine.requests[0]!.query.get('fromImage')).toBe('alpine');
    expect(engine.requests[0]!.query.get('tag')).toBe(digest);
  });

  test('exits 1 naming the image when the engine refuses the pull', async ({ engine, cli }) => {
    engine.handle((_req, res) =>
      sendJson(res, 404, { message: 'pull access denied for nope, repository does not exist' }),
    );
    const r = await cli.run(['image', 'pull', 'nope']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'error: cannot pull image nope:latest: pull access denied for nope, repository does not exist\n',
    );
  });

  test('exits 1 on an error event in the middle of the stream', async ({ engine, cli }) => {
    engine.handle((_req, res) => {
      res.write(`${JSON.stringify({ status: 'Pulling fs layer', id: 'aaa' })}\n`);
      res.end(
        `${JSON.stringify({ errorDetail: { message: 'unexpected EOF' }, error: 'unexpected EOF' })}\n`,
      );
    });
    const r = await cli.run(['image', 'pull', 'alpine']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('aaa: Pulling fs layer');
    expect(r.stderr).toContain('cannot pull image alpine:latest: unexpected EOF');
  });

  test('gives up at --timeout when the engine never answers', async ({ engine, cli }) => {
    engine.handle(() => new Promise(() => undefined));
    const r = await cli.run(['image', 'pull', '--timeout', '300ms', 'slow/image:1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      'cannot pull image slow/image:1: gave up after no result within 300ms',
    );
    expect(r.ms).toBeLessThan(5000);
  });

  test('gives up when a started pull stops reporting progress', async ({ engine, cli }) => {
    engine.handle((_req, res) => {
      res.write(`${JSON.stringify({ status: 'Pulling fs layer', id: 'aaa' })}\n`);
    });
    const r = await cli.run(['image', 'pull', 'stuck'], { pullStallMs: 300 });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('aaa: Pulling fs layer');
    expect(r.stderr).toContain('gave up after no progress for 300ms');
    expect(r.ms).toBeLessThan(5000);
  });

  test('refuses a bad name or timeout as a usage error', async ({ engine, cli }) => {
    expect((await cli.run(['image', 'pull', 'UPPER'])).code).toBe(2);
    const r = await cli.run(['image', 'pull', '--timeout', 'soon', 'alpine']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--timeout: invalid duration "soon"');
    expect(engine.requests).toHaveLength(0);
  });
});

describe('stacyvm image ls', () => {
  const images = [
    {
      Id: ID,
      RepoTags: ['stacyvm-test/busybox:latest'],
      Created: 1_700_000_000,
      Size: 2_000_000,
      Labels: { 'org.stacyvm.test-image': 'busybox' },
    },
    {
      Id: `sha256:${'12'.repeat(32)}`,
      RepoTags: ['<none>:<none>'],
      Created: 1_700_000_000,
      Size: 10,
      Labels: null,
    },
    {
      Id: `sha256:${'34'.repeat(32)}`,
      RepoTags: ['alpine:3.20', 'alpine:latest'],
      Created: 1_700_000_000,
      Size: 8_000_000,
    },
  ];

  test('lists every tag and marks the stacyvm test images', async ({ engine, cli }) => {
    engine.handle((_req, res) => sendJson(res, 200, images));
    const r = await cli.run(['image', 'ls']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^IMAGE\s+ID\s+SIZE\s+CREATED\s+TEST$/);
    expect(lines[1]).toMatch(/^alpine:3\.20\s+343434343434\s+7\.6 MiB\s+.+ago$/);
    expect(lines[2]).toMatch(/^alpine:latest\s+343434343434/);
    expect(lines[3]).toMatch(/^stacyvm-test\/busybox:latest\s+abababababab\s+.*yes \(busybox\)$/);
    expect(lines[4]).toMatch(/^<none>\s+121212121212/);
  });

  test('honours a program-wide --json option such as the client commands define', async ({
    engine,
  }) => {
    engine.handle((_req, res) => sendJson(res, 200, images));
    const stdout = new Capture();
    const program = new Command('stacyvm').exitOverride().option('--json');
    registerImageCommands(program, {
      stdout,
      stderr: new Capture(),
      env: { DOCKER_HOST: `unix://${engine.socketPath}` },
      setExitCode: () => undefined,
    });
    await program.parseAsync(['image', 'ls', '--json'], { from: 'user' });
    expect(JSON.parse(stdout.text())).toHaveLength(3);
  });

  test('prints JSON with --json', async ({ engine, cli }) => {
    engine.handle((_req, res) => sendJson(res, 200, images));
    const r = await cli.run(['image', 'ls', '--json']);
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.stdout) as { tags: string[]; test_image: string | null }[];
    expect(rows.map((row) => [row.tags, row.test_image])).toEqual([
      [['alpine:3.20', 'alpine:latest'], null],
      [['stacyvm-test/busybox:latest'], 'busybox'],
      [[], null],
    ]);
  });
});
