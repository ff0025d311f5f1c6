import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import Docker from 'dockerode';
import { pack as tarPack } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { StacyError } from '../../domain/errors.js';
import { newSandboxId } from '../../domain/sandbox.js';
import { describeProviderContract, expectStacyError, readAll, spec } from '../provider.contract.js';
import { providerCapabilities } from '../provider.js';
import type { SpawnOptions } from '../provider.js';
import { DockerProvider } from './docker-provider.js';
import type { DockerProviderOptions } from './docker-provider.js';

const IMAGE = 'stacyvm-test/busybox:latest';
const MIB = 1024 * 1024;
const available = inject('dockerAvailable');
const runLabels = { 'stacyvm.test-run': inject('dockerTestRun') };

function makeProvider(options: DockerProviderOptions = {}): DockerProvider {
  return new DockerProvider({ defaultImage: IMAGE, extraLabels: runLabels, ...options });
}

if (available) {
  describeProviderContract('docker', () =>
    Promise.resolve({ provider: makeProvider(), image: IMAGE }),
  );
}

describe.skipIf(!available)('DockerProvider on the Docker Engine', () => {
  const docker = new Docker();
  let provider: DockerProvider;

  beforeAll(async () => {
    provider = makeProvider();
    await provider.init();
  });

  async function containersNamed(id: string): Promise<Docker.ContainerInfo[]> {
    const all = await docker.listContainers({ all: true, filters: { name: [`^/${id}$`] } });
    return all;
  }

  async function withSandbox(
    fn: (id: string) => Promise<void>,
    p: DockerProvider = provider,
    overrides: Partial<SpawnOptions> = {},
  ): Promise<void> {
    const id = newSandboxId();
    await p.spawn({
      sandboxId: id,
      image: IMAGE,
      memoryMb: 128,
      vcpus: 1,
      metadata: {},
      ports: [],
      ...overrides,
    });
    try {
      await fn(id);
    } finally {
      await p.destroy(id);
    }
  }

  describe('setup and health', () => {
    it('fails init with UNAVAILABLE naming the socket when no daemon answers', async () => {
      const p = new DockerProvider({ socketPath: '/tmp/stacyvm-no-such-docker.sock' });
      await expectStacyError(
        p.init(),
        'UNAVAILABLE',
        /Docker daemon at \/tmp\/stacyvm-no-such-docker\.sock does not answer: .*is dockerd running\?/,
      );
      const health = await p.health();
      expect(health.healthy).toBe(false);
      expect(health.error).toMatch(/stacyvm-no-such-docker\.sock/);
    });

    it('advertises a container provider with stats and a runtime inventory', () => {
      expect(provider.name).toBe('docker');
      expect(providerCapabilities(provider)).toEqual(
        expect.arrayContaining(['container', 'stats', 'runtime_inventory', 'exec_stream']),
      );
      expect(provider.describe()).toMatchObject({
        type: 'docker',
        runtime: 'runc',
        network_mode: 'bridge',
      });
    });
  });

  describe('spawn', () => {
    it('names the container after the sandbox id and labels every preview port', async () => {
      await withSandbox(
        async (id) => {
          const info = await docker.getContainer(id).inspect();
          expect(info.Name).toBe(`/${id}`);
          const labels = info.Config.Labels;
          expect(labels).toMatchObject({
            stacyvm: 'true',
            'stacyvm.provider': 'docker',
            'stacyvm.sandbox': id,
            'stacyvm.image': IMAGE,
            'stacyvm.metadata': JSON.stringify({ owner: 'alice' }),
            'stacyvm.ports': '3000,5173',
            'stacyvm.test-run': runLabels['stacyvm.test-run'],
            'traefik.enable': 'true',
          });
          for (const port of [3000, 5173]) {
            const router = `${id}-${port}`;
            expect(labels[`traefik.http.routers.${router}.rule`]).toBe(
              `Host(\`${port}-${id}.localhost\`)`,
            );
            expect(labels[`traefik.http.routers.${router}.service`]).toBe(router);
            expect(labels[`traefik.http.services.${router}.loadbalancer.server.port`]).toBe(
              String(port),
            );
          }
          expect(await provider.listRuntimes()).toContain(id);
        },
        provider,
        { metadata: { owner: 'alice' }, ports: [3000, 5173] },
      );
    });

    it('locks the sandbox down and runs it as the image non-root user', async () => {
      const p = makeProvider({ pidsLimit: 64 });
      await withSandbox(
        async (id) => {
          const info = await docker.getContainer(id).inspect();
          const host = info.HostConfig;
          expect(host.CapDrop).toEqual(['ALL']);
          expect(host.SecurityOpt).toContain('no-new-privileges:true');
          expect(host.PidsLimit).toBe(64);
          expect(host.Memory).toBe(96 * MIB);
          expect(host.NanoCpus).toBe(0.5e9);
          expect(host.Privileged).toBe(false);
          expect(host.Init).toBe(true);
          expect(host.NetworkMode).toBe('bridge');
          expect(host.Runtime).toBe('runc');
          expect(info.Config.User).toBe('1000:1000');
          expect(info.Config.WorkingDir).toBe('/workspace');
          const r = await p.exec(
            id,
            spec('id -u; pwd; stat -c %u /workspace; touch /tmp/t && echo tmp-ok'),
          );
          expect(r.stdout).toBe('1000\n/workspace\n1000\ntmp-ok\n');
          const caps = await p.exec(id, spec('grep CapEff /proc/self/status'));
          expect(caps.stdout).toMatch(/CapEff:\s+0000000000000000/);
        },
        p,
        { memoryMb: 96, vcpus: 0.5 },
      );
    });

    it('gives a read-only rootfs writable /workspace and /tmp, reachable by the file API', async () => {
      const p = makeProvider({ readOnlyRootfs: true, scratchSizeMb: 64 });
      let volumes: string[] = [];
      await withSandbox(async (id) => {
        const info = await docker.getContainer(id).inspect();
        expect(info.HostConfig.ReadonlyRootfs).toBe(true);
        volumes = info.Mounts.map((m) => m.Name ?? '').filter((n) => n !== '');
        expect(volumes).toHaveLength(2);
        const r = await p.exec(
          id,
          spec('echo w > /workspace/w && echo t > /tmp/t && echo ok; touch /etc/x'),
        );
        expect(r.stdout).toBe('ok\n');
        expect(r.stderr).toMatch(/Read-only file system/);
        expect(r.exitCode).not.toBe(0);
        await p.writeFile(id, '/workspace/api.txt', Buffer.from('via api'), 0o640);
        expect((await readAll((await p.readFile(id, '/workspace/api.txt')).body)).toString()).toBe(
          'via api',
        );
        expect((await readAll((await p.readFile(id, '/workspace/w')).body)).toString()).toBe('w\n');
        expect((await p.statFile(id, '/workspace/api.txt')).mode).toBe('0640');
        await expectStacyError(p.writeFile(id, '/etc/x', Buffer.from('x'), 0o644), 'FORBIDDEN');
      }, p);
      // The scratch volumes go with the container.
      for (const name of volumes) {
        await expect(docker.getVolume(name).inspect()).rejects.toMatchObject({ statusCode: 404 });
      }
    });

    it('fixes /workspace and /tmp of an image only when they do not suit the user', async () => {
      const run = runLabels['stacyvm.test-run'];
      /** A local image from the test image with /workspace and /tmp as given. */
      const derive = async (
        name: string,
        workspaceUid: number,
        tmpMode: number,
      ): Promise<string> => {
        const base = await docker.createContainer({
          Image: IMAGE,
          Cmd: ['true'],
          Labels: runLabels,
        });
        try {
          const pack = tarPack();
          pack.entry({ name: 'workspace', type: 'directory', mode: 0o755, uid: workspaceUid });
          pack.entry({ name: 'tmp', type: 'directory', mode: tmpMode });
          pack.finalize();
          await base.putArchive(Readable.from(pack, { objectMode: false }), { path: '/' });
          await base.commit({ repo: `stacyvm-test/${name}`, tag: run });
        } finally {
          await base.remove({ force: true });
        }
        return `stacyvm-test/${name}:${run}`;
      };
      /** Archive extractions the Engine reported for a container since `since` (seconds). */
      const extractions = async (id: string, since: number): Promise<number> => {
        const until = Math.ceil(Date.now() / 1000) + 1;
        const events = await docker.getEvents({ since, until, filters: { container: [id] } });
        let text = '';
        for await (const chunk of events) text += String(chunk);
        return text
          .split('\n')
          .filter((l) => l.trim() !== '')
          .filter((l) => (JSON.parse(l) as { Action?: string }).Action === 'extract-to-dir').length;
      };
      const unready = await derive('busybox-unready', 0, 0o755);
      const ready = await derive('busybox-ready', 1000, 0o1777);
      const check = spec(
        'id -u; stat -c %u /workspace; echo ok > /workspace/f && cat f; touch /tmp/t && stat -c %a /tmp',
      );
      try {
        const since = Math.floor(Date.now() / 1000) - 1;
        await withSandbox(
          async (id) => {
            expect(await extractions(id, since)).toBe(1);
            expect((await provider.exec(id, check)).stdout).toBe('1000\n1000\nok\n1777\n');
          },
          provider,
          { image: unready },
        );
        await withSandbox(
          async (id) => {
            expect(await extractions(id, since)).toBe(0);
            expect((await provider.exec(id, check)).stdout).toBe('1000\n1000\nok\n1777\n');
          },
          provider,
          { image: ready },
        );
      } finally {
        await docker.getImage(unready).remove({ force: true });
        await docker.getImage(ready).remove({ force: true });
      }
    });

    it('fails fast with NOT_FOUND naming an image that is neither present nor pullable, leaving nothing', async () => {
      const id = newSandboxId();
      const started = performance.now();
      await expectStacyError(
        provider.spawn({
          sandboxId: id,
          image: 'stacyvm-test/does-not-exist:1.0',
          memoryMb: 64,
          vcpus: 1,
          metadata: {},
          ports: [],
        }),
        'NOT_FOUND',
        /image not found: stacyvm-test\/does-not-exist:1\.0 \(not present locally and could not be pulled: .+\)/,
      );
      expect(performance.now() - started).toBeLessThan(10_000);
      expect(await containersNamed(id)).toEqual([]);
    });

    it('refuses image names that are not references with BAD_REQUEST naming the image', async () => {
      for (const image of ['busybox; rm -rf /', 'Busybox', 'bad image', '$(id)', 'a/../b', 'x:']) {
        const id = newSandboxId();
        const err = await expectStacyError(
          provider.spawn({ sandboxId: id, image, memoryMb: 64, vcpus: 1, metadata: {}, ports: [] }),
          'BAD_REQUEST',
        );
        expect(err.message).toContain(JSON.stringify(image));
        expect(await containersNamed(id)).toEqual([]);
      }
    });

    it('refuses memory below the engine minimum and bad ports with BAD_REQUEST', async () => {
      const id = newSandboxId();
      await expectStacyError(
        provider.spawn({
          sandboxId: id,
          image: IMAGE,
          memoryMb: 4,
          vcpus: 1,
          metadata: {},
          ports: [],
        }),
        'BAD_REQUEST',
        /memory_mb.*6 MiB/,
      );
      await expectStacyError(
        provider.spawn({
          sandboxId: id,
          image: IMAGE,
          memoryMb: 64,
          vcpus: 1,
          metadata: {},
          ports: [70000],
        }),
        'BAD_REQUEST',
        /ports/,
      );
      expect(await containersNamed(id)).toEqual([]);
    });

    it('refuses a second spawn of the same id with CONFLICT and keeps the first', async () => {
      await withSandbox(async (id) => {
        await expectStacyError(
          provider.spawn({
            sandboxId: id,
            image: IMAGE,
            memoryMb: 64,
            vcpus: 1,
            metadata: {},
            ports: [],
          }),
          'CONFLICT',
          new RegExp(`sandbox already exists: ${id}`),
        );
        expect((await provider.status(id)).state).toBe('running');
      });
    });
  });

  describe('ownership and lifecycle', () => {
    it('answers NOT_FOUND once the container is removed behind its back, and destroy still succeeds', async () => {
      const id = newSandboxId();
      await provider.spawn({
        sandboxId: id,
        image: IMAGE,
        memoryMb: 64,
        vcpus: 1,
        metadata: {},
        ports: [],
      });
      try {
        expect((await provider.exec(id, spec('echo up'))).stdout).toBe('up\n');
        await docker.getContainer(id).remove({ force: true, v: true });
        const gone = new RegExp(`sandbox not found: ${id}`);
        await expectStacyError(provider.status(id), 'NOT_FOUND', gone);
        await expectStacyError(provider.exec(id, spec('echo hi')), 'NOT_FOUND', gone);
        await expectStacyError(provider.statFile(id, '/workspace'), 'NOT_FOUND', gone);
        await expectStacyError(provider.readFile(id, '/etc/passwd'), 'NOT_FOUND', gone);
      } finally {
        await provider.destroy(id);
      }
      expect(await provider.listRuntimes()).not.toContain(id);
    });

    it('never touches a container that is not labelled as a sandbox', async () => {
      const id = newSandboxId();
      await docker.createContainer({ name: id, Image: IMAGE, Cmd: ['true'], Labels: runLabels });
      try {
        await expectStacyError(provider.status(id), 'NOT_FOUND');
        await expectStacyError(provider.exec(id, spec('echo hi')), 'NOT_FOUND');
        await expectStacyError(provider.destroy(id), 'NOT_FOUND');
        expect(await containersNamed(id)).toHaveLength(1);
        expect(await provider.listRuntimes()).not.toContain(id);
      } finally {
        await docker.getContainer(id).remove({ force: true });
      }
    });

    it('maps engine states: a stopped sandbox reports stopped and exec answers CONFLICT', async () => {
      await withSandbox(async (id) => {
        await docker.getContainer(id).kill();
        await docker.getContainer(id).wait();
        expect((await provider.status(id)).state).toBe('stopped');
        await expectStacyError(provider.exec(id, spec('echo hi')), 'CONFLICT');
      });
    });

    it('reports live stats against the memory limit', async () => {
      await withSandbox(async (id) => {
        const stats = await provider.stats(id);
        expect(stats.memLimitBytes).toBe(128 * MIB);
        expect(stats.memBytes).toBeGreaterThan(0);
        expect(stats.cpuPct).toBeGreaterThanOrEqual(0);
      });
    });

    it('returns the last lines of the container log, stdout and stderr alike', async () => {
      await withSandbox(async (id) => {
        // PID 1's output is the container log; the pauses keep the two streams' lines in order.
        await provider.exec(
          id,
          spec(
            'echo one > /proc/1/fd/1; sleep 0.2; echo two > /proc/1/fd/2; sleep 0.2; echo three > /proc/1/fd/1',
          ),
        );
        expect(await provider.logs(id, 10)).toEqual(['one', 'two', 'three']);
        expect(await provider.logs(id, 2)).toEqual(['two', 'three']);
        expect(await provider.logs(id, 0)).toEqual([]);
      });
    });
  });

  describe('exec', () => {
    it('kills the timed-out command inside the container, background children included', async () => {
      await withSandbox(async (id) => {
        const r = await provider.exec(
          id,
          spec('sleep 37 & sleep 38 & (sleep 39; echo x) & wait', { timeoutMs: 500 }),
        );
        expect(r).toMatchObject({ timedOut: true, exitCode: 124 });
        const ps = await provider.exec(id, spec('ps -o args'));
        expect(ps.stdout).toContain('ps -o args');
        expect(ps.stdout).not.toMatch(/sleep 3[789]/);
      });
    });

    it('kills a streamed command inside the container when the consumer leaves', async () => {
      await withSandbox(async (id) => {
        for await (const ev of provider.execStream(id, spec('echo go; sleep 41'))) {
          if (ev.type === 'stdout') break;
        }
        const ps = await provider.exec(id, spec('ps -o args'));
        expect(ps.stdout).not.toMatch(/sleep 41/);
      });
    });

    it('kills a command when its signal is aborted and throws the abort reason', async () => {
      await withSandbox(async (id) => {
        const ac = new AbortController();
        setTimeout(() => ac.abort(new StacyError('TIMEOUT', 'client went away')), 300);
        await expectStacyError(
          provider.exec(id, spec('sleep 42'), { signal: ac.signal }),
          'TIMEOUT',
          /client went away/,
        );
        const ps = await provider.exec(id, spec('ps -o args'));
        expect(ps.stdout).not.toMatch(/sleep 42/);
      });
    });

    it('returns when the command exits even if a background process holds its output', async () => {
      await withSandbox(async (id) => {
        const started = performance.now();
        const r = await provider.exec(id, spec('sleep 3 & echo done'));
        expect(r).toMatchObject({ exitCode: 0, stdout: 'done\n', timedOut: false });
        expect(performance.now() - started).toBeLessThan(2_000);
      });
    });

    it('reports a missing command as exit 127 and a missing workdir as BAD_REQUEST', async () => {
      await withSandbox(async (id) => {
        const r = await provider.exec(id, spec('no-such-binary-stacyvm', { mode: 'argv' }));
        expect(r).toMatchObject({ exitCode: 127, stdout: '' });
        expect(r.stderr).toMatch(/no-such-binary-stacyvm: command not found/);
        await expectStacyError(
          provider.exec(id, spec('pwd', { workdir: '/workspace/nope' })),
          'BAD_REQUEST',
          /workdir \/workspace\/nope/,
        );
        const shell = await provider.exec(id, spec('no-such-binary-stacyvm'));
        expect(shell.exitCode).toBe(127);
      });
    });

    it('pauses a fast writer while the stream consumer is slow', async () => {
      await withSandbox(async (id) => {
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
            await expectStacyError(provider.statFile(id, '/workspace/done.txt'), 'NOT_FOUND');
          }
        }
        expect(total).toBe(20_000_000);
        expect((await provider.statFile(id, '/workspace/done.txt')).size).toBe(1);
      });
    });
  });

  describe('files', () => {
    it('round-trips 100 MiB streamed both ways without holding it in memory', async () => {
      // Forced collections make the samples show live memory, not garbage awaiting GC.
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as () => void;
      await withSandbox(async (id) => {
        const chunkBytes = 64 * 1024;
        const chunks = 1600;
        const expected = createHash('sha256');
        gc();
        const before = process.memoryUsage();
        let rssPeak = before.rss;
        let buffersPeak = before.arrayBuffers;
        const sampler = setInterval(() => {
          gc();
          const now = process.memoryUsage();
          rssPeak = Math.max(rssPeak, now.rss);
          buffersPeak = Math.max(buffersPeak, now.arrayBuffers);
        }, 100);
        try {
          // One buffer, rewritten for every chunk: the provider must copy what it keeps.
          const shared = Buffer.alloc(chunkBytes);
          async function* body(): AsyncGenerator<Uint8Array> {
            for (let i = 0; i < chunks; i++) {
              shared.fill(i % 251);
              shared.writeUInt32BE(i, 0);
              expected.update(shared);
              await Promise.resolve();
              yield shared;
            }
          }
          await provider.writeFile(id, '/workspace/huge.bin', body(), 0o600);
          const read = await provider.readFile(id, '/workspace/huge.bin');
          expect(read.size).toBe(chunkBytes * chunks);
          const actual = createHash('sha256');
          let total = 0;
          for await (const c of read.body) {
            actual.update(c);
            total += c.byteLength;
          }
          expect(total).toBe(100 * MIB);
          expect(actual.digest('hex')).toBe(expected.digest('hex'));
        } finally {
          clearInterval(sampler);
        }
        expect(buffersPeak - before.arrayBuffers).toBeLessThan(40 * MIB);
        expect(rssPeak - before.rss).toBeLessThan(80 * MIB);
        expect((await provider.statFile(id, '/workspace/huge.bin')).mode).toBe('0600');
        const inside = await provider.exec(id, spec('wc -c < huge.bin; ls -a'));
        expect(inside.stdout).toBe(`${100 * MIB}\n.\n..\nhuge.bin\n`);
      });
    });

    it('lists names with spaces and newlines exactly, and a symlink as itself', async () => {
      await withSandbox(async (id) => {
        await provider.writeFile(id, '/workspace/d/with space.txt', Buffer.from('s'), 0o644);
        await provider.writeFile(id, '/workspace/d/new\nline', Buffer.from('nl'), 0o644);
        await provider.writeFile(id, '/workspace/d/|pipe 1 2 x', Buffer.from('p'), 0o644);
        await provider.exec(id, spec('ln -s "with space.txt" d/link'));
        const entries = await provider.listFiles(id, 'd');
        expect(entries.map((e) => [e.name, e.path, e.size])).toEqual([
          ['link', '/workspace/d/link', 14],
          ['new\nline', '/workspace/d/new\nline', 2],
          ['with space.txt', '/workspace/d/with space.txt', 1],
          ['|pipe 1 2 x', '/workspace/d/|pipe 1 2 x', 1],
        ]);
        // stat and read follow the link.
        expect(await provider.statFile(id, '/workspace/d/link')).toMatchObject({
          path: '/workspace/d/link',
          size: 1,
          isDir: false,
        });
        expect((await readAll((await provider.readFile(id, 'd/link')).body)).toString()).toBe('s');
      });
    });

    it('keeps writes to what the sandbox user may write, and owns what it writes to that user', async () => {
      await withSandbox(async (id) => {
        await expectStacyError(
          provider.writeFile(id, '/etc/evil', Buffer.from('x'), 0o644),
          'FORBIDDEN',
          /\/etc/,
        );
        await provider.writeFile(id, '/workspace/mine.txt', Buffer.from('m'), 0o600);
        const r = await provider.exec(id, spec('stat -c "%u:%g %a" mine.txt'));
        expect(r.stdout).toBe('1000:1000 600\n');
        await expectStacyError(
          provider.writeFile(id, '/workspace', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          /is a directory/,
        );
        await provider.writeFile(id, '/workspace/plain', Buffer.from('x'), 0o644);
        await expectStacyError(
          provider.writeFile(id, '/workspace/plain/below', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          /not a directory/,
        );
      });
    });

    it('refuses to delete or move the workspace itself and a directory onto a file', async () => {
      await withSandbox(async (id) => {
        await expectStacyError(provider.deleteFile(id, '/workspace', true), 'BAD_REQUEST');
        await expectStacyError(provider.moveFile(id, '/workspace', '/tmp/w'), 'BAD_REQUEST');
        await provider.writeFile(id, '/workspace/dir/x', Buffer.from('x'), 0o644);
        await provider.writeFile(id, '/workspace/file', Buffer.from('f'), 0o644);
        await expectStacyError(provider.moveFile(id, 'dir', 'file'), 'CONFLICT');
        await expectStacyError(provider.moveFile(id, 'file', 'dir'), 'CONFLICT');
        await expectStacyError(
          provider.moveFile(id, 'dir', 'dir/inner'),
          'BAD_REQUEST',
          /into itself/,
        );
      });
    });
  });

  afterAll(async () => {
    // Every test destroys its own sandboxes; the global teardown is the safety net.
    const left = await docker.listContainers({
      all: true,
      filters: {
        label: [`stacyvm.test-run=${runLabels['stacyvm.test-run']}`, 'stacyvm.probe=true'],
      },
    });
    expect(left).toEqual([]);
  });
});
