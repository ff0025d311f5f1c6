import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../domain/clock.js';
import { StacyError } from '../../domain/errors.js';
import { newSandboxId } from '../../domain/sandbox.js';
import { describeProviderContract, expectStacyError, readAll, spec } from '../provider.contract.js';
import { providerCapabilities } from '../provider.js';
import type { SpawnOptions } from '../provider.js';
import { MockProvider } from './mock-provider.js';

/** What a test sandbox is spawned with (the mock records but ignores image and sizes). */
function spawnOptions(sandboxId: string, ports: number[] = []): SpawnOptions {
  return { sandboxId, image: 'ignored', memoryMb: 64, vcpus: 1, metadata: {}, ports };
}

// Commands start from the spawn helper by default; the in-process launcher
// (providers.mock.spawn_helper: false) must keep the same contract.
for (const spawnHelper of [true, false]) {
  describeProviderContract(spawnHelper ? 'mock' : 'mock (in-process spawn)', async () => {
    const baseDir = await mkdtemp(join(tmpdir(), 'stacyvm-mock-contract-'));
    const provider = new MockProvider({ baseDir, spawnHelper });
    return {
      provider,
      image: 'ignored',
      cleanup: async () => {
        await provider.close();
        await rm(baseDir, { recursive: true, force: true });
      },
    };
  });
}

describe('MockProvider', () => {
  let work: string;
  let baseDir: string;
  /** Host directory outside every sandbox, standing for "the rest of the machine". */
  let outside: string;
  let provider: MockProvider;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'stacyvm-mock-test-'));
    baseDir = join(work, 'base');
    outside = join(work, 'outside');
    await mkdir(outside);
    provider = new MockProvider({ baseDir });
    await provider.init();
  });

  afterAll(async () => {
    await provider.close();
    await rm(work, { recursive: true, force: true });
  });

  async function withSandbox(
    fn: (id: string, root: string) => Promise<void>,
    p: MockProvider = provider,
  ): Promise<void> {
    const id = newSandboxId();
    await p.spawn(spawnOptions(id));
    try {
      await fn(id, join(baseDir, id));
    } finally {
      await p.destroy(id);
    }
  }

  describe('construction and health', () => {
    it('does no I/O until init creates the base directory', async () => {
      const dir = join(work, 'lazy-base');
      const p = new MockProvider({ baseDir: dir });
      expect(existsSync(dir)).toBe(false);
      await p.init();
      expect((await lstat(dir)).isDirectory()).toBe(true);
      expect(p.describe()).toEqual({ type: 'mock', base_dir: dir, spawn: 'helper' });
      // No sandboxes yet: no spawn helper process either, until the first spawn.
      const helperPid = (): number | undefined =>
        (p as unknown as { launcher: { helperPid: number | undefined } }).launcher.helperPid;
      expect(helperPid()).toBeUndefined();
      const id = newSandboxId();
      await p.spawn(spawnOptions(id));
      expect(helperPid()).toBeGreaterThan(0);
      await p.close();
      // A new instance finds a sandbox to exec in, and starts its helper at init.
      const again = new MockProvider({ baseDir: dir });
      await again.init();
      expect(
        (again as unknown as { launcher: { helperPid: number | undefined } }).launcher.helperPid,
      ).toBeGreaterThan(0);
      await again.destroy(id);
      await again.close();
      expect(new MockProvider({ baseDir: dir, spawnHelper: false }).describe()).toMatchObject({
        spawn: 'in-process',
      });
      await p.close();
    });

    it('reports healthy when the base directory is writable and unhealthy when it is not', async () => {
      expect(await provider.health()).toMatchObject({ healthy: true });
      const file = join(work, 'a-file');
      await writeFile(file, 'x');
      const broken = await new MockProvider({ baseDir: join(file, 'sub') }).health();
      expect(broken.healthy).toBe(false);
      expect(broken.error).toMatch(/not writable/);
    });

    it('advertises itself as a test provider with a runtime inventory', () => {
      expect(provider.name).toBe('mock');
      expect(providerCapabilities(provider)).toEqual(
        expect.arrayContaining(['test_provider', 'runtime_inventory', 'exec_stream']),
      );
    });
  });

  describe('previews', () => {
    it('reaches any sandbox port on the host loopback, and refuses gone sandboxes and bad ports', async () => {
      expect(providerCapabilities(provider)).toContain('preview');
      const id = newSandboxId();
      await provider.spawn(spawnOptions(id, [3000]));
      // The host is the sandbox: undeclared ports are just as reachable.
      expect(await provider.previewUpstream(id, 3000)).toEqual({ host: '127.0.0.1', port: 3000 });
      expect(await provider.previewUpstream(id, 5173)).toEqual({ host: '127.0.0.1', port: 5173 });
      await expectStacyError(provider.previewUpstream(id, 0), 'BAD_REQUEST');
      await expectStacyError(provider.previewUpstream(id, 65536), 'BAD_REQUEST');
      await provider.destroy(id);
      await expectStacyError(provider.previewUpstream(id, 3000), 'NOT_FOUND');
    });
  });

  describe('sandbox ids and lifecycle', () => {
    it('refuses ids that are not sb- and 8 hex digits with BAD_REQUEST', async () => {
      for (const bad of [
        '../etc',
        'sb-1234567g',
        'sb-../../x',
        'SB-12345678',
        'sb-123456789',
        '',
      ]) {
        await expectStacyError(
          provider.spawn(spawnOptions(bad)),
          'BAD_REQUEST',
          /not a sandbox id/,
        );
        await expectStacyError(provider.status(bad), 'BAD_REQUEST');
        await expectStacyError(provider.destroy(bad), 'BAD_REQUEST');
        await expectStacyError(provider.readFile(bad, '/workspace/x'), 'BAD_REQUEST');
      }
      expect(existsSync(join(work, 'etc'))).toBe(false);
    });

    it('refuses to spawn an id that already exists with CONFLICT', async () => {
      await withSandbox(async (id) => {
        await expectStacyError(provider.spawn(spawnOptions(id)), 'CONFLICT');
      });
    });

    it('lays a sandbox out as a root with workspace and tmp directories', async () => {
      await withSandbox(async (id, root) => {
        expect((await readdir(root)).sort()).toEqual(['tmp', 'workspace']);
        expect((await provider.listFiles(id, '/')).map((e) => e.path)).toEqual([
          '/tmp',
          '/workspace',
        ]);
      });
    });

    it('keeps sandboxes visible to a new instance on the same base directory', async () => {
      const id = newSandboxId();
      await provider.spawn(spawnOptions(id));
      await provider.writeFile(id, '/workspace/kept.txt', Buffer.from('kept'), 0o644);
      await mkdir(join(baseDir, 'not-a-sandbox'));
      await mkdir(join(baseDir, 'sb-zzzzzzzz'));
      try {
        const reborn = new MockProvider({ baseDir });
        expect(await reborn.listRuntimes()).toContain(id);
        expect(await reborn.listRuntimes()).not.toContain('not-a-sandbox');
        expect(await reborn.listRuntimes()).not.toContain('sb-zzzzzzzz');
        expect(await reborn.status(id)).toEqual({ state: 'running' });
        expect(
          (await readAll((await reborn.readFile(id, '/workspace/kept.txt')).body)).toString(),
        ).toBe('kept');
        expect((await reborn.logs(id, 100)).join('\n')).toContain(`sandbox ${id} started`);
        await reborn.destroy(id);
        expect(await provider.listRuntimes()).not.toContain(id);
        await expectStacyError(
          provider.status(id),
          'NOT_FOUND',
          new RegExp(`sandbox not found: ${id}`),
        );
      } finally {
        await provider.destroy(id);
        await rm(join(baseDir, 'not-a-sandbox'), { recursive: true });
        await rm(join(baseDir, 'sb-zzzzzzzz'), { recursive: true });
      }
    });

    it('keeps a console log of real events, returning the last lines asked for', async () => {
      const clock = new ManualClock(Date.UTC(2030, 4, 6, 7, 8, 9));
      const p = new MockProvider({ baseDir, clock });
      await withSandbox(async (id) => {
        await p.exec(id, spec('true'));
        await p.exec(id, spec('printf', { mode: 'argv', args: ['x'] }));
        await p.exec(id, spec('exit 3'));
        const all = await p.logs(id, 100);
        expect(all[0]).toBe(`2030-05-06T07:08:09.000Z sandbox ${id} started (image ignored)`);
        expect(all.some((l) => /exec printf exit=0 /.test(l))).toBe(true);
        expect(await p.logs(id, 1)).toEqual([
          expect.stringMatching(/exec sh exit=3 duration=\d+ms$/),
        ]);
        expect(await p.logs(id, 0)).toEqual([]);
        await expectStacyError(p.logs(id, -1), 'BAD_REQUEST');
      }, p);
    });

    it('writes console lines once the turn that queued them is over; logs and destroy write them first', async () => {
      const p = new MockProvider({ baseDir });
      const logFile = (id: string): string => join(baseDir, `${id}.console.log`);
      const onDisk = (id: string): string =>
        existsSync(logFile(id)) ? readFileSync(logFile(id), 'utf8') : '';
      const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
      await withSandbox(async (a) => {
        await withSandbox(async (b) => {
          await p.exec(a, spec('exit 4'));
          // Still this turn: queued, not written (the reply goes out first).
          expect(onDisk(a)).not.toContain('exit=4');
          await nextTurn();
          expect(onDisk(a)).toContain('exec sh exit=4');
          // Lines queued in one turn keep their order and go to their own sandbox's log.
          await Promise.all([p.exec(b, spec('exit 5')), p.exec(a, spec('exit 6'))]);
          await p.exec(a, spec('exit 7'));
          expect(await p.logs(a, 3)).toEqual([
            expect.stringMatching(/exec sh exit=4 /),
            expect.stringMatching(/exec sh exit=6 /),
            expect.stringMatching(/exec sh exit=7 /),
          ]);
          expect(await p.logs(b, 1)).toEqual([expect.stringMatching(/exec sh exit=5 /)]);
          expect(onDisk(b)).not.toContain('exit=4');
        }, p);
        // A line still queued when the sandbox goes does not bring its log back.
        const gone = newSandboxId();
        await p.spawn(spawnOptions(gone));
        await p.exec(gone, spec('true'));
        await p.destroy(gone);
        await nextTurn();
        expect(existsSync(logFile(gone))).toBe(false);
      }, p);
    });
  });

  describe('exec', () => {
    it('gives the command only a scrubbed environment, never the host variables', async () => {
      process.env['STACYVM_SECRET_TEST'] = 'must-not-leak';
      try {
        await withSandbox(async (id, root) => {
          const r = await provider.exec(id, spec('env', { env: { EXTRA: 'yes', LANG: 'C' } }));
          const env = Object.fromEntries(
            r.stdout
              .trim()
              .split('\n')
              .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
          );
          expect(r.stdout).not.toContain('must-not-leak');
          expect(env['STACYVM_SECRET_TEST']).toBeUndefined();
          expect(env).toMatchObject({
            SANDBOX_ID: id,
            HOME: root,
            WORKSPACE: join(root, 'workspace'),
            SANDBOX_ROOT: root,
            TMPDIR: join(root, 'tmp'),
            EXTRA: 'yes',
            LANG: 'C',
            PATH: process.env['PATH'],
          });
          expect(Object.keys(env).sort()).toEqual(
            [
              'EXTRA',
              'HOME',
              'LANG',
              'PATH',
              'PWD',
              'SANDBOX_ID',
              'SANDBOX_ROOT',
              'SHLVL',
              'TMPDIR',
              'WORKSPACE',
              '_',
            ]
              .filter((k) => k in env)
              .sort(),
          );
        });
      } finally {
        delete process.env['STACYVM_SECRET_TEST'];
      }
    });

    it('reports a command that cannot be started as exit 127 with the reason on stderr', async () => {
      await withSandbox(async (id) => {
        const r = await provider.exec(id, spec('no-such-binary-stacyvm', { mode: 'argv' }));
        expect(r.exitCode).toBe(127);
        expect(r.stderr).toMatch(/no-such-binary-stacyvm.*ENOENT/);
        expect(r.stdout).toBe('');
      });
    });

    it('says NOT_FOUND once the sandbox directory is gone, and writes nothing for it', async () => {
      await withSandbox(async (id, root) => {
        expect((await provider.exec(id, spec('true'))).exitCode).toBe(0);
        await provider.logs(id, 100); // writes the queued console lines
        const log = join(baseDir, `${id}.console.log`);
        const before = readFileSync(log, 'utf8');
        // Removed behind the provider's back: the exec path does not stat the
        // root first, so the failed spawn is what finds out.
        await rm(root, { recursive: true, force: true });
        for (const s of [spec('true'), spec('true', { mode: 'argv' })]) {
          await expectStacyError(provider.exec(id, s), 'NOT_FOUND');
          const drain = async (): Promise<void> => {
            for await (const ev of provider.execStream(id, s)) expect(ev).toBeUndefined();
          };
          await expectStacyError(drain(), 'NOT_FOUND');
        }
        await sleep(20);
        expect(readFileSync(log, 'utf8')).toBe(before);
      });
    });

    it('refuses a workdir that does not exist and an empty argv command', async () => {
      await withSandbox(async (id) => {
        await expectStacyError(
          provider.exec(id, spec('pwd', { workdir: '/workspace/nope' })),
          'BAD_REQUEST',
          /workdir \/workspace\/nope does not exist/,
        );
        await expectStacyError(
          provider.exec(id, spec('', { mode: 'argv' })),
          'BAD_REQUEST',
          /command/,
        );
        await expectStacyError(
          provider.exec(id, spec('true', { env: { 'A=B': 'x' } })),
          'BAD_REQUEST',
        );
      });
    });

    it('treats a deadline beyond the timer range as no deadline soon', async () => {
      await withSandbox(async (id) => {
        const r = await provider.exec(
          id,
          spec('sleep 0.2; echo fine', { timeoutMs: 3_000_000_000 }),
        );
        expect(r).toMatchObject({ exitCode: 0, stdout: 'fine\n', timedOut: false });
      });
    });

    it('reports death by another signal as 128 plus the signal number', async () => {
      await withSandbox(async (id) => {
        const r = await provider.exec(id, spec('kill -TERM $$'));
        expect(r).toMatchObject({ exitCode: 143, timedOut: false });
      });
    });

    it('kills background grandchildren at the deadline and keeps output read so far', async () => {
      await withSandbox(async (id, root) => {
        const started = performance.now();
        const r = await provider.exec(
          id,
          spec('echo early; (sleep 1; echo late > gc.txt) & sleep 5', { timeoutMs: 300 }),
        );
        expect(r).toMatchObject({ timedOut: true, exitCode: 124, stdout: 'early\n' });
        await sleep(Math.max(0, 1600 - (performance.now() - started)));
        expect(existsSync(join(root, 'workspace', 'gc.txt'))).toBe(false);
      });
    });

    it('returns when the command exits even if a background process holds its output', async () => {
      await withSandbox(async (id) => {
        const started = performance.now();
        const r = await provider.exec(id, spec('sleep 3 & echo done'));
        expect(r).toMatchObject({ exitCode: 0, stdout: 'done\n' });
        expect(performance.now() - started).toBeLessThan(2000);
      });
    });

    it('kills commands and their background processes on destroy', async () => {
      const late = join(outside, 'destroy-late.txt');
      const bgLate = join(outside, 'destroy-bg-late.txt');
      const id = newSandboxId();
      await provider.spawn(spawnOptions(id));
      try {
        await provider.exec(
          id,
          spec('(sleep 1; echo late > "$OUT") > /dev/null 2>&1 &', { env: { OUT: bgLate } }),
        );
        const running = provider.exec(
          id,
          spec('echo > started; sleep 1; echo late > "$OUT"', { env: { OUT: late } }),
        );
        const root = join(baseDir, id);
        while (!existsSync(join(root, 'workspace', 'started'))) await sleep(20);
        await provider.destroy(id);
        const r = await running;
        expect(r.exitCode).toBe(137);
        await sleep(1500);
        expect(existsSync(late)).toBe(false);
        expect(existsSync(bgLate)).toBe(false);
      } finally {
        await provider.destroy(id);
      }
    });

    it('keeps at most maxOutputBytes of each stream, the head', async () => {
      const p = new MockProvider({ baseDir, maxOutputBytes: 1000 });
      await withSandbox(async (id) => {
        const r = await p.exec(
          id,
          spec("printf 'start'; yes abc | head -c 100000; printf 'E%.0s' $(seq 1 3000) >&2"),
        );
        expect(r.exitCode).toBe(0);
        expect(r.stdout).toHaveLength(1000);
        expect(r.stdout.startsWith('startabc\nabc\n')).toBe(true);
        expect(r.stderr).toBe('E'.repeat(1000));
      }, p);
    });

    it('pauses a fast writer while the stream consumer is slow', async () => {
      await withSandbox(async (id, root) => {
        const done = join(root, 'workspace', 'done.txt');
        let total = 0;
        let first = true;
        for await (const ev of provider.execStream(
          id,
          spec('head -c 20000000 /dev/zero; echo > done.txt'),
        )) {
          if (ev.type === 'exit') {
            expect(ev.exitCode).toBe(0);
            continue;
          }
          total += ev.data.byteLength;
          if (first) {
            first = false;
            await sleep(500);
            // Unbounded buffering would have let the writer finish by now.
            expect(existsSync(done)).toBe(false);
          }
        }
        expect(total).toBe(20_000_000);
        expect(existsSync(done)).toBe(true);
      });
    });

    it('kills a streamed command when its signal is aborted', async () => {
      await withSandbox(async (id, root) => {
        const ac = new AbortController();
        const started = performance.now();
        const consume = async (): Promise<void> => {
          for await (const ev of provider.execStream(
            id,
            spec('echo started; sleep 1; echo late > late.txt'),
            { signal: ac.signal },
          )) {
            if (ev.type === 'stdout') ac.abort();
          }
        };
        await expectStacyError(consume(), 'TIMEOUT', /cancelled/);
        expect(performance.now() - started).toBeLessThan(950);
        await sleep(Math.max(0, 1600 - (performance.now() - started)));
        expect(existsSync(join(root, 'workspace', 'late.txt'))).toBe(false);
      });
    });

    it('kills a command aborted while its start is still on the way (before its pid is known)', async () => {
      await withSandbox(async (id, root) => {
        for (const wait of [0, 1, 2, 5]) {
          const ac = new AbortController();
          const run = provider.exec(id, spec(`sleep 2; echo ${wait} >> late.txt`), {
            signal: ac.signal,
          });
          // Lets the start be sent (the helper answers with the pid later).
          for (let i = 0; i < wait; i++) await new Promise((r) => setImmediate(r));
          ac.abort();
          await expectStacyError(run, 'TIMEOUT', /cancelled/);
        }
        await sleep(2500);
        expect(existsSync(join(root, 'workspace', 'late.txt'))).toBe(false);
      });
    });

    it('rejects an aborted sync exec promptly with the signal reason', async () => {
      await withSandbox(async (id) => {
        const reason = new StacyError('UNAVAILABLE', 'worker going away');
        const started = performance.now();
        const pending = provider.exec(id, spec('sleep 5'), { signal: AbortSignal.timeout(200) });
        await expectStacyError(pending, 'TIMEOUT');
        const ac = new AbortController();
        const second = provider.exec(id, spec('sleep 5'), { signal: ac.signal });
        setTimeout(() => ac.abort(reason), 100);
        await expectStacyError(second, 'UNAVAILABLE', /worker going away/);
        expect(performance.now() - started).toBeLessThan(2000);
      });
    });

    it('starts a streamed command only when iteration starts', async () => {
      await withSandbox(async (id, root) => {
        const stream = provider.execStream(id, spec('echo > ran.txt'));
        await sleep(200);
        expect(existsSync(join(root, 'workspace', 'ran.txt'))).toBe(false);
        for await (const ev of stream) expect(ev.type).toBe('exit');
        expect(existsSync(join(root, 'workspace', 'ran.txt'))).toBe(true);
      });
    });
  });

  describe('file confinement', () => {
    it('refuses to read or write through a symlink to /etc', async () => {
      await withSandbox(async (id, root) => {
        await symlink('/etc', join(root, 'workspace', 'etc-link'));
        const probe = `stacyvm-probe-${id}`;
        try {
          await expectStacyError(
            provider.readFile(id, '/workspace/etc-link/passwd'),
            'BAD_REQUEST',
            /path escapes the sandbox root/,
          );
          await expectStacyError(
            provider.writeFile(id, `/workspace/etc-link/${probe}`, Buffer.from('x'), 0o644),
            'BAD_REQUEST',
            /path escapes the sandbox root/,
          );
          await expectStacyError(
            provider.writeFile(id, `etc-link/new-dir/${probe}`, Buffer.from('x'), 0o644),
            'BAD_REQUEST',
            /path escapes the sandbox root/,
          );
          await expectStacyError(provider.listFiles(id, '/workspace/etc-link'), 'BAD_REQUEST');
          await expectStacyError(
            provider.statFile(id, '/workspace/etc-link/hostname'),
            'BAD_REQUEST',
          );
          await expectStacyError(
            provider.exec(id, spec('ls', { workdir: 'etc-link' })),
            'BAD_REQUEST',
          );
          await expectStacyError(provider.globFiles(id, '/workspace/etc-link/*'), 'BAD_REQUEST');
          expect(await provider.globFiles(id, '/workspace/**')).toEqual([
            '/workspace',
            '/workspace/etc-link',
          ]);
          expect(existsSync(join('/etc', probe))).toBe(false);
          expect(existsSync(join('/etc', 'new-dir'))).toBe(false);
          // The link itself is the sandbox's to remove; /etc is untouched.
          await provider.deleteFile(id, '/workspace/etc-link', true);
          expect(existsSync('/etc/passwd')).toBe(true);
        } finally {
          await rm(join('/etc', probe), { force: true });
        }
      });
    });

    it('refuses file symlinks, dangling symlinks and relative climbs that leave the root', async () => {
      const secret = join(outside, 'secret.txt');
      await writeFile(secret, 'secret', { mode: 0o600 });
      await withSandbox(async (id, root) => {
        const ws = join(root, 'workspace');
        await symlink(secret, join(ws, 'secret-link'));
        await symlink(join(outside, 'not-yet.txt'), join(ws, 'dangling'));
        await symlink('../../..', join(ws, 'up'));
        const escape = /path escapes the sandbox root/;
        await expectStacyError(provider.readFile(id, 'secret-link'), 'BAD_REQUEST', escape);
        await expectStacyError(
          provider.writeFile(id, 'secret-link', Buffer.from('pwned'), 0o644),
          'BAD_REQUEST',
          escape,
        );
        await expectStacyError(provider.chmodFile(id, 'secret-link', 0o777), 'BAD_REQUEST', escape);
        await expectStacyError(
          provider.writeFile(id, 'dangling', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          escape,
        );
        await expectStacyError(
          provider.readFile(id, 'up/outside/secret.txt'),
          'BAD_REQUEST',
          escape,
        );
        await expectStacyError(
          provider.moveFile(id, 'secret-link', 'up/stolen'),
          'BAD_REQUEST',
          escape,
        );
        expect(await readFile(secret, 'utf8')).toBe('secret');
        expect(((await lstat(secret)).mode & 0o777).toString(8)).toBe('600');
        expect(existsSync(join(outside, 'not-yet.txt'))).toBe(false);
        // Listing shows the links as links, without following them.
        const listed = await provider.listFiles(id, '/workspace');
        expect(listed.find((e) => e.name === 'secret-link')).toMatchObject({ isDir: false });
        expect(listed.find((e) => e.name === 'up')).toMatchObject({ isDir: false });
      });
    });

    it('follows symlinks that stay inside the root', async () => {
      await withSandbox(async (id, root) => {
        await symlink('../tmp', join(root, 'workspace', 'scratch'));
        await provider.writeFile(id, '/workspace/scratch/note.txt', Buffer.from('via link'), 0o644);
        expect(await readFile(join(root, 'tmp', 'note.txt'), 'utf8')).toBe('via link');
        await symlink(join(root, 'tmp', 'later.txt'), join(root, 'workspace', 'pending'));
        await provider.writeFile(id, '/workspace/pending', Buffer.from('made'), 0o640);
        expect((await provider.statFile(id, '/tmp/later.txt')).mode).toBe('0640');
      });
    });
  });

  describe('files', () => {
    it('streams a written body to disk instead of holding it whole', async () => {
      await withSandbox(async (id, root) => {
        const dir = join(root, 'workspace', 'up');
        const chunk = Buffer.alloc(256 * 1024, 7);
        let sawPartial = false;
        async function* body(): AsyncGenerator<Uint8Array> {
          yield chunk;
          yield chunk;
          for (let i = 0; i < 100 && !sawPartial; i++) {
            for (const name of await readdir(dir).catch(() => [])) {
              const size = (await lstat(join(dir, name))).size;
              if (size >= chunk.byteLength) sawPartial = true;
            }
            if (!sawPartial) await sleep(10);
          }
          yield chunk;
        }
        await provider.writeFile(id, '/workspace/up/big.bin', body(), 0o644);
        expect(sawPartial).toBe(true);
        expect((await provider.statFile(id, '/workspace/up/big.bin')).size).toBe(
          3 * chunk.byteLength,
        );
        expect(await readdir(dir)).toEqual(['big.bin']);
      });
    });

    it('leaves the old file intact when a streamed body fails', async () => {
      await withSandbox(async (id) => {
        await provider.writeFile(id, 'keep.txt', Buffer.from('original'), 0o644);
        async function* failing(): AsyncGenerator<Uint8Array> {
          yield Buffer.from('partial');
          await Promise.resolve();
          throw new Error('client went away');
        }
        await expectStacyError(
          provider.writeFile(id, 'keep.txt', failing(), 0o644),
          'BAD_REQUEST',
          /client went away/,
        );
        expect((await readAll((await provider.readFile(id, 'keep.txt')).body)).toString()).toBe(
          'original',
        );
        expect((await provider.listFiles(id, '/workspace')).map((e) => e.name)).toEqual([
          'keep.txt',
        ]);
      });
    });

    it('refuses file shapes that do not fit the operation with BAD_REQUEST', async () => {
      await withSandbox(async (id, root) => {
        await provider.writeFile(id, '/workspace/file.txt', Buffer.from('f'), 0o644);
        await mkdir(join(root, 'workspace', 'dir'));
        execFileSync('mkfifo', [join(root, 'workspace', 'fifo')]);
        await expectStacyError(
          provider.readFile(id, '/workspace/dir'),
          'BAD_REQUEST',
          /is a directory/,
        );
        await expectStacyError(
          provider.readFile(id, '/workspace/fifo'),
          'BAD_REQUEST',
          /not a regular file/,
        );
        await expectStacyError(
          provider.writeFile(id, '/workspace/dir', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          /is a directory/,
        );
        await expectStacyError(
          provider.writeFile(id, '/workspace/file.txt/x', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          /not a directory/,
        );
        await expectStacyError(
          provider.listFiles(id, '/workspace/file.txt'),
          'BAD_REQUEST',
          /not a directory/,
        );
        await expectStacyError(
          provider.chmodFile(id, '/workspace/file.txt', 0o10000),
          'BAD_REQUEST',
          /mode/,
        );
        await expectStacyError(
          provider.writeFile(id, 'x', Buffer.from('x'), -1),
          'BAD_REQUEST',
          /mode/,
        );
        await expectStacyError(
          provider.moveFile(id, '/workspace/dir', '/workspace/dir/inner'),
          'BAD_REQUEST',
          /into itself/,
        );
      });
    });

    it('refuses to delete or move / and /workspace themselves', async () => {
      await withSandbox(async (id) => {
        for (const p of ['/', '/workspace', '/workspace/', '/workspace/..', 'sub/../']) {
          await expectStacyError(
            provider.deleteFile(id, p, true),
            'BAD_REQUEST',
            /refusing to delete/,
          );
        }
        await expectStacyError(
          provider.moveFile(id, '/workspace', '/w2'),
          'BAD_REQUEST',
          /refusing to move/,
        );
        expect(await provider.status(id)).toEqual({ state: 'running' });
      });
    });

    it('reports a move onto a non-empty directory as CONFLICT', async () => {
      await withSandbox(async (id) => {
        await provider.writeFile(id, 'a/one', Buffer.from('1'), 0o644);
        await provider.writeFile(id, 'b/two', Buffer.from('2'), 0o644);
        await expectStacyError(provider.moveFile(id, 'a', 'b'), 'CONFLICT');
      });
    });

    it('bounds a glob walk and refuses malformed patterns', async () => {
      const p = new MockProvider({ baseDir, maxGlobEntries: 50 });
      await withSandbox(async (id) => {
        for (let i = 0; i < 60; i++) await p.writeFile(id, `many/f${i}`, Buffer.from(''), 0o644);
        await expectStacyError(p.globFiles(id, '**/nothing'), 'RESOURCE_LIMIT', /narrower pattern/);
        expect(await p.globFiles(id, 'many/f5')).toEqual(['/workspace/many/f5']);
        await expectStacyError(p.globFiles(id, 'many/[f'), 'BAD_REQUEST', /unclosed/);
        await expectStacyError(p.globFiles(id, ''), 'BAD_REQUEST', /pattern is required/);
        await expectStacyError(p.globFiles(id, '../../*'), 'BAD_REQUEST', /escapes/);
        expect(await p.globFiles(id, '/nowhere/*')).toEqual([]);
      }, p);
    });
  });
});

describe('MockProvider teardown', () => {
  it('makes a destroyed sandbox gone at once and deletes its tree in the background', async () => {
    const baseDir = await mkdtemp(join(tmpdir(), 'stacyvm-mock-trash-'));
    try {
      const p = new MockProvider({ baseDir });
      await p.init();
      await p.spawn(spawnOptions('sb-0000abcd'));
      await p.writeFile('sb-0000abcd', '/workspace/a.txt', Buffer.from('a'), 0o644);
      await p.destroy('sb-0000abcd');
      expect(await p.listRuntimes()).toEqual([]);
      await expect(p.status('sb-0000abcd')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      const deadline = Date.now() + 5000;
      while ((await readdir(baseDir)).length > 0 && Date.now() < deadline) await sleep(20);
      expect(await readdir(baseDir)).toEqual([]);
    } finally {
      await rm(baseDir, { recursive: true, force: true });
    }
  });

  it('finishes deleting trees a previous process left behind when it starts', async () => {
    const baseDir = await mkdtemp(join(tmpdir(), 'stacyvm-mock-trash-'));
    try {
      await mkdir(join(baseDir, '.trash-sb-00000001-abcd', 'workspace'), { recursive: true });
      await new MockProvider({ baseDir }).init();
      expect(await readdir(baseDir)).toEqual([]);
    } finally {
      await rm(baseDir, { recursive: true, force: true });
    }
  });
});
