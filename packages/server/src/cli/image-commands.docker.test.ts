import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { Command, CommanderError } from 'commander';
import Docker from 'dockerode';
import { describe, expect, inject, test as base } from 'vitest';
import { TEST_RUN_LABEL } from '../../test/support/docker-global-setup.js';
import type { OutputStream } from './client-commands.js';
import { packDirectory, registerImageCommands } from './image-commands.js';

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

interface CliResult {
  code: number | undefined;
  stdout: string;
  stderr: string;
  ms: number;
}

async function cli(args: string[]): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  let code: number | undefined;
  const program = new Command('stacyvm').exitOverride().configureOutput({
    writeOut: (s) => void stdout.write(s),
    writeErr: (s) => void stderr.write(s),
  });
  registerImageCommands(program, { stdout, stderr, setExitCode: (c) => void (code = c) });
  const started = Date.now();
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    code = err.exitCode === 0 ? 0 : 2;
  }
  return { code, stdout: stdout.text(), stderr: stderr.text(), ms: Date.now() - started };
}

/** The static busybox of Debian's busybox-static package (scripts/build-test-images.sh installs it). */
function staticBusybox(): string | undefined {
  const path = '/bin/busybox';
  if (!existsSync(path)) return undefined;
  let linkage: string;
  try {
    linkage = execFileSync('ldd', [path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    linkage = `${e.stdout ?? ''}${e.stderr ?? ''}`;
  }
  return /not a dynamic executable|statically linked/.test(linkage) ? path : undefined;
}

const dockerAvailable = inject('dockerAvailable');
const runId = inject('dockerTestRun');
const busybox = staticBusybox();
if (dockerAvailable && busybox === undefined && process.env['CI'] === 'true') {
  throw new Error(
    'CI=true but /bin/busybox is not a static busybox: apt-get install busybox-static',
  );
}

interface Fixtures {
  docker: Docker;
  /** Image names the test creates; each is removed afterwards. */
  images: string[];
  rootfs: string;
  tmp: string;
}

const test = base.extend<Fixtures>({
  // eslint-disable-next-line no-empty-pattern
  docker: async ({}, use) => {
    await use(new Docker());
  },
  images: async ({ docker }, use) => {
    const names: string[] = [];
    try {
      await use(names);
    } finally {
      for (const name of names) {
        await docker
          .getImage(name)
          .remove({ force: true })
          .catch(() => undefined);
      }
    }
  },
  // eslint-disable-next-line no-empty-pattern
  tmp: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-image-docker-test-'));
    try {
      await use(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
  rootfs: async ({ tmp }, use) => {
    const root = join(tmp, 'rootfs');
    mkdirSync(join(root, 'bin'), { recursive: true });
    copyFileSync(busybox!, join(root, 'bin', 'busybox'));
    chmodSync(join(root, 'bin', 'busybox'), 0o755);
    symlinkSync('busybox', join(root, 'bin', 'sh'));
    writeFileSync(join(root, 'hello.sh'), '#!/bin/sh\necho hello-from-script\n');
    chmodSync(join(root, 'hello.sh'), 0o755);
    writeFileSync(join(root, 'secret'), 'x');
    chmodSync(join(root, 'secret'), 0o640);
    symlinkSync('hello.sh', join(root, 'link'));
    mkdirSync(join(root, 'workspace'));
    if (process.getuid?.() === 0) chownSync(join(root, 'workspace'), 1000, 1000);
    await use(root);
  },
});

function uniqueName(): string {
  return `stacyvm-itest/import-${runId}-${randomBytes(3).toString('hex')}:t1`;
}

/** Splits the Engine's multiplexed log format (8-byte frame headers) into stdout and stderr. */
function demux(buf: Buffer): { stdout: string; stderr: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const size = buf.readUInt32BE(i + 4);
    const frame = buf.subarray(i + 8, i + 8 + size);
    (buf[i] === 2 ? err : out).push(frame);
    i += 8 + size;
  }
  return {
    stdout: Buffer.concat(out).toString('utf8'),
    stderr: Buffer.concat(err).toString('utf8'),
  };
}

async function runIn(
  docker: Docker,
  image: string,
  cmd: string[],
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const container = await docker.createContainer({
    Image: image,
    Cmd: cmd,
    Labels: { [TEST_RUN_LABEL]: runId },
    HostConfig: { NetworkMode: 'none' },
  });
  try {
    await container.start();
    const result = (await container.wait()) as { StatusCode: number };
    const logs = await container.logs({ stdout: true, stderr: true, follow: false });
    return { exitCode: result.StatusCode, ...demux(logs) };
  } finally {
    await container.remove({ force: true });
  }
}

const STAT_SCRIPT =
  'stat -c "%n %a %u:%g %F" /hello.sh /secret /workspace /bin/sh; readlink /link; /link';

function expectedStat(): string {
  const owner = process.getuid?.() === 0 ? '0:0' : `${process.getuid?.()}:${process.getgid?.()}`;
  const workspaceOwner = process.getuid?.() === 0 ? '1000:1000' : owner;
  return [
    `/hello.sh 755 ${owner} regular file`,
    `/secret 640 ${owner} regular file`,
    `/workspace 755 ${workspaceOwner} directory`,
    `/bin/sh 777 ${owner} symbolic link`,
    'hello.sh',
    'hello-from-script',
    '',
  ].join('\n');
}

describe.skipIf(!dockerAvailable || busybox === undefined)(
  'stacyvm image (real Docker Engine)',
  () => {
    test('imports a root filesystem directory whose modes, owners and symlinks survive', async ({
      docker,
      images,
      rootfs,
    }) => {
      const name = uniqueName();
      images.push(name);
      const r = await cli(['image', 'import', rootfs, name, '--change', 'CMD ["/bin/sh"]']);
      expect(r.stderr).toContain(`imported ${name}`);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^sha256:[0-9a-f]{64}\n$/);
      const inspected = await docker.getImage(name).inspect();
      expect(inspected.Id).toBe(r.stdout.trim());
      expect(inspected.Config.Cmd).toEqual(['/bin/sh']);

      const run = await runIn(docker, name, ['/bin/busybox', 'sh', '-c', STAT_SCRIPT]);
      expect(run).toEqual({ exitCode: 0, stdout: expectedStat(), stderr: '' });
    });

    test('imports a .tar.gz archive and lists the image as a test image', async ({
      docker,
      images,
      rootfs,
      tmp,
    }) => {
      const archive = join(tmp, 'rootfs.tar.gz');
      await pipeline(packDirectory(rootfs), createGzip(), createWriteStream(archive));
      const name = uniqueName();
      images.push(name);
      const r = await cli([
        'image',
        'import',
        archive,
        name,
        '--label',
        `org.stacyvm.test-image=itest-${runId}`,
      ]);
      expect(r.code).toBe(0);

      const run = await runIn(docker, name, ['/bin/busybox', 'sh', '-c', STAT_SCRIPT]);
      expect(run).toEqual({ exitCode: 0, stdout: expectedStat(), stderr: '' });

      const ls = await cli(['image', 'ls']);
      expect(ls.code).toBe(0);
      const line = ls.stdout.split('\n').find((l) => l.startsWith(`${name} `));
      expect(line).toMatch(new RegExp(`yes \\(itest-${runId}\\)$`));
      const json = await cli(['image', 'ls', '--json']);
      const rows = JSON.parse(json.stdout) as {
        id: string;
        tags: string[];
        test_image: string | null;
      }[];
      expect(rows.find((row) => row.tags.includes(name))).toMatchObject({
        id: r.stdout.trim(),
        test_image: `itest-${runId}`,
      });
    });

    test('refuses a bad image name and creates nothing', async ({ docker, rootfs }) => {
      const before = (await docker.listImages()).length;
      const r = await cli(['image', 'import', rootfs, 'Bad Name;rm -rf /']);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('invalid image name "Bad Name;rm -rf /"');
      expect((await docker.listImages()).length).toBe(before);
    });

    test('a pull of an image no registry has exits 1 quickly, naming the image', async () => {
      const name = `stacyvm-nonexistent-${runId}/nope:1`;
      const r = await cli(['image', 'pull', '--timeout', '60s', name]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`pulling ${name}`);
      expect(r.stderr).toContain(`error: cannot pull image ${name}: `);
      expect(r.stdout).toBe('');
      expect(r.ms).toBeLessThan(60_000);
    });
  },
);
