import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { ServerProcess } from './server-process.js';
import { cleanup, cli, startServer, tempDir } from './server-process.js';

const IMAGE = 'stacyvm-test/busybox:latest';
const docker = new Docker();
const created = new Set<string>();

const dockerEnv = { STACYVM_PROVIDERS_DOCKER_ENABLED: 'true', STACYVM_PROVIDERS_DEFAULT: 'auto' };

async function containerExists(name: string): Promise<boolean> {
  try {
    await docker.getContainer(name).inspect();
    return true;
  } catch {
    return false;
  }
}

describe.runIf(inject('dockerAvailable'))('Docker sandboxes through the stacyvm binary', () => {
  let server: ServerProcess;
  let env: Record<string, string>;

  beforeAll(async () => {
    server = await startServer({ env: dockerEnv });
    env = { STACYVM_SERVER: server.url };
  });
  afterAll(async () => {
    await server.stop();
    for (const id of created)
      await docker
        .getContainer(id)
        .remove({ force: true })
        .catch(() => undefined);
    cleanup(server.dir);
  });

  it('picks docker under providers.default=auto and says so', () => {
    expect(server.logs()).toContain('providers.default=auto selected the docker provider');
  });

  it('spawns a container named after the sandbox id, with preview labels for its ports', async () => {
    const r = cli(['spawn', '--image', IMAGE, '--port', '8080', '--port', '5173'], { env });
    expect(r.status, r.stderr.toString()).toBe(0);
    const id = r.stdout.toString().trim();
    created.add(id);
    const info = await docker.getContainer(id).inspect();
    expect(info.Name).toBe(`/${id}`);
    expect(info.Config.Labels).toMatchObject({
      stacyvm: 'true',
      'stacyvm.sandbox': id,
      [`traefik.http.routers.${id}-8080.rule`]: `Host(\`8080-${id}.localhost\`)`,
      [`traefik.http.routers.${id}-5173.rule`]: `Host(\`5173-${id}.localhost\`)`,
    });
    expect(info.HostConfig.CapDrop).toContain('ALL');
    expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges:true');

    const hello = cli(['exec', id, '--', 'sh', '-c', 'echo hello from $(pwd) as $(id -un)'], {
      env,
    });
    expect(hello.status).toBe(0);
    expect(hello.stdout.toString()).toBe('hello from /workspace as sandbox\n');
    expect(cli(['exec', id, '--shell', '--', 'exit 7'], { env }).status).toBe(7);
    expect(cli(['exec', id, '--timeout', '500ms', '--', 'sleep', '30'], { env }).status).toBe(124);

    const local = join(server.dir, 'blob.bin');
    const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31) % 256));
    writeFileSync(local, bytes);
    expect(cli(['files', 'put', id, local, '/workspace/blob.bin'], { env }).status).toBe(0);
    const got = cli(['files', 'get', id, '/workspace/blob.bin'], { env });
    expect(Buffer.compare(got.stdout, bytes)).toBe(0);
    const wc = cli(['exec', id, '--', 'wc', '-c', '/workspace/blob.bin'], { env });
    expect(wc.stdout.toString()).toContain('70000');

    expect(cli(['kill', id], { env }).status).toBe(0);
    expect(await containerExists(id)).toBe(false);
  });

  it('fails fast with NOT_FOUND for an image that is not present and cannot be pulled, leaving nothing', async () => {
    const before = (
      await docker.listContainers({ all: true, filters: { label: ['stacyvm=true'] } })
    ).length;
    const started = Date.now();
    const r = cli(['spawn', '--image', 'stacyvm-test/does-not-exist:latest'], { env });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toMatch(/NOT_FOUND/);
    expect(r.stderr.toString()).toContain('stacyvm-test/does-not-exist');
    expect(Date.now() - started).toBeLessThan(20_000);
    const after = (await docker.listContainers({ all: true, filters: { label: ['stacyvm=true'] } }))
      .length;
    expect(after).toBe(before);
    const list = JSON.parse(cli(['list', '--json'], { env }).stdout.toString()) as unknown[];
    expect(list).toHaveLength(0);
  });

  it('answers 404 and forgets a sandbox whose container was removed behind its back', async () => {
    const id = cli(['spawn', '--image', IMAGE], { env }).stdout.toString().trim();
    created.add(id);
    await docker.getContainer(id).remove({ force: true });
    const r = cli(['exec', id, '--', 'true'], { env });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toMatch(/NOT_FOUND/);
    const list = JSON.parse(cli(['list', '--json'], { env }).stdout.toString()) as Array<{
      id: string;
    }>;
    expect(list.map((s) => s.id)).not.toContain(id);
  });

  it('refuses an image name with injection characters as a bad request', () => {
    const r = cli(['spawn', '--image', 'busybox;rm -rf /'], { env });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toMatch(/BAD_REQUEST/);
  });
});

describe.runIf(inject('dockerAvailable'))('Docker reconcile across restarts', () => {
  it('marks a sandbox whose container vanished as destroyed, and adopts a container with no record', async () => {
    const dir = tempDir();
    const other = tempDir();
    try {
      let server = await startServer({ dir, env: dockerEnv });
      const spawn = async (): Promise<string> => {
        const res = await fetch(`${server.url}/api/v1/sandboxes`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ image: IMAGE }),
        });
        const id = ((await res.json()) as { id: string }).id;
        created.add(id);
        return id;
      };
      const gone = await spawn();
      const orphan = await spawn();
      expect(await server.stop()).toBe(0);
      await docker.getContainer(gone).remove({ force: true });

      server = await startServer({ dir, env: dockerEnv });
      expect((await fetch(`${server.url}/api/v1/sandboxes/${gone}`)).status).toBe(404);
      expect((await fetch(`${server.url}/api/v1/sandboxes/${orphan}`)).status).toBe(200);
      expect(await server.stop()).toBe(0);

      // A control plane with an empty database finds the container and adopts it.
      server = await startServer({ dir: other, env: dockerEnv });
      const adopted = await fetch(`${server.url}/api/v1/sandboxes/${orphan}`);
      expect(adopted.status).toBe(200);
      expect(await adopted.json()).toMatchObject({ state: 'running', provider: 'docker' });
      const del = await fetch(`${server.url}/api/v1/sandboxes/${orphan}`, { method: 'DELETE' });
      expect(del.status).toBe(200);
      expect(await containerExists(orphan)).toBe(false);
      expect(await server.stop()).toBe(0);
    } finally {
      cleanup(dir);
      cleanup(other);
    }
  });
});
