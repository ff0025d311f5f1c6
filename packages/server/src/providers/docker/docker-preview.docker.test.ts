/**
 * Previews of Docker sandboxes: declared ports are published on 127.0.0.1
 * with Engine-chosen host ports, and the preview gateway reaches them (busybox
 * httpd inside the sandbox). The container network address is never used
 * here: only the loopback-published port.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startHarness } from '../../../test/support/harness.js';
import { httpCall } from '../../../test/support/preview-upstream.js';
import type { HttpAnswer } from '../../../test/support/preview-upstream.js';
import { silentLogger } from '../../domain/logger.js';
import { newSandboxId } from '../../domain/sandbox.js';
import { createPreviewGateway } from '../../preview/gateway.js';
import type { PreviewGateway } from '../../preview/gateway.js';
import { createRuntimeResolver } from '../../preview/runtime-resolver.js';
import { WorkerRuntime } from '../../worker/worker-runtime.js';
import { DockerProvider } from './docker-provider.js';

const IMAGE = 'stacyvm-test/busybox:latest';
const available = inject('dockerAvailable');
const runLabels = { 'stacyvm.test-run': inject('dockerTestRun') };

describe.skipIf(!available)('previews of Docker sandboxes', () => {
  const docker = new Docker();
  let provider: DockerProvider;
  let runtime: WorkerRuntime;
  let gateway: PreviewGateway;
  let gw = 0;
  const id = newSandboxId();
  const ref = { sandboxId: id, provider: 'docker', runtimeId: id };

  async function until200(host: string, path: string): Promise<HttpAnswer> {
    let last: HttpAnswer | undefined;
    for (let i = 0; i < 50; i++) {
      last = await httpCall(gw, host, path);
      if (last.status === 200) return last;
      await sleep(100);
    }
    throw new Error(`no 200 from ${host}${path}; last ${last?.status} ${last?.body}`);
  }

  beforeAll(async () => {
    provider = new DockerProvider({ defaultImage: IMAGE, extraLabels: runLabels });
    runtime = new WorkerRuntime({
      workerId: 'local',
      providers: [provider],
      defaultProvider: 'docker',
      logger: silentLogger,
    });
    await runtime.start();
    gateway = createPreviewGateway({
      domains: () => ['localhost'],
      resolve: createRuntimeResolver(runtime),
      publicScheme: 'http',
      upstreamTimeoutMs: 5_000,
      logger: silentLogger,
    });
    gw = (await gateway.listen('127.0.0.1', 0)).port;
    await runtime.spawn({
      sandboxId: id,
      provider: 'docker',
      image: IMAGE,
      memoryMb: 128,
      vcpus: 1,
      ownerId: '',
      metadata: {},
      ports: [8080, 8081],
    });
  });
  afterAll(async () => {
    await gateway?.close(0);
    await runtime?.destroy(ref).catch(() => undefined);
    await runtime?.stop();
  });

  it('publishes declared ports on 127.0.0.1 only, with Engine-chosen host ports', async () => {
    const info = await docker.getContainer(id).inspect();
    expect(info.HostConfig.PortBindings).toEqual({
      '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
      '8081/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
    });
    const bindings = info.NetworkSettings.Ports['8080/tcp'] ?? [];
    expect(bindings.length).toBeGreaterThan(0);
    for (const b of bindings) expect(b.HostIp).toBe('127.0.0.1');
    const upstream = await runtime.previewUpstream(ref, 8080);
    expect(upstream).toEqual({
      kind: 'direct',
      host: '127.0.0.1',
      port: Number(bindings[0]!.HostPort),
    });
  });

  it('reaches a server in the sandbox through the gateway', async () => {
    await runtime.writeFile(
      ref,
      '/workspace/index.html',
      Buffer.from('hello from busybox\n'),
      0o644,
    );
    const started = await runtime.exec(ref, {
      command: 'httpd',
      args: ['-p', '8080', '-h', '/workspace'],
      mode: 'argv',
      env: {},
      workdir: '/workspace',
      timeoutMs: 10_000,
    });
    expect(started.exitCode).toBe(0);
    const r = await until200(`8080-${id}.localhost:${gw}`, '/index.html');
    expect(r.body).toBe('hello from busybox\n');
  });

  it('answers an undeclared port with 502 telling to declare it in ports', async () => {
    const r = await httpCall(gw, `9090-${id}.localhost`, '/');
    expect(r.status).toBe(502);
    expect(r.headers['x-stacyvm-preview-error']).toBe('port_unreachable');
    expect(r.body).toMatch(/declare it in &#34;ports&#34;/);
  });

  it('answers a declared port with nothing listening with 502, promptly', async () => {
    const started = Date.now();
    const r = await httpCall(gw, `8081-${id}.localhost`, '/');
    expect(r.status).toBe(502);
    expect(r.body).toContain('nothing listening on port 8081');
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('answers a stopped sandbox with 502 and a removed one with 404', async () => {
    await docker.getContainer(id).stop({ t: 0 });
    // The provider reuses an inspect answer for up to a second: within it, 502 all the same.
    let stopped = await httpCall(gw, `8080-${id}.localhost`, '/index.html');
    for (
      let i = 0;
      i < 30 && stopped.headers['x-stacyvm-preview-error'] !== 'sandbox_not_running';
      i++
    ) {
      expect(stopped.status).toBe(502);
      await sleep(100);
      stopped = await httpCall(gw, `8080-${id}.localhost`, '/index.html');
    }
    expect(stopped.status).toBe(502);
    expect(stopped.headers['x-stacyvm-preview-error']).toBe('sandbox_not_running');
    await runtime.destroy(ref);
    const gone = await httpCall(gw, `8080-${id}.localhost`, '/index.html');
    expect(gone.status).toBe(404);
  });
});

describe.skipIf(!available)('previews of Docker sandboxes through the control plane', () => {
  it('serves a declared port of a sandbox spawned through the API at its preview URL', async () => {
    const h = await startHarness((c) => {
      c.providers.docker.enabled = true;
      c.providers.default = 'docker';
      c.providers.docker.default_image = IMAGE;
      c.defaults.image = IMAGE;
    });
    let id = '';
    try {
      const gw = (await h.cp.listenPreview('127.0.0.1:0'))!.port;
      id = await h.spawn({ ports: [8080], memory_mb: 128 });
      const exec = await h.request({
        method: 'POST',
        url: `/api/v1/sandboxes/${id}/exec`,
        body: { command: 'echo via-api > index.html && httpd -p 8080 -h /workspace' },
      });
      expect(exec.json()).toMatchObject({ exit_code: 0 });
      const p = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${id}/preview/8080` });
      const url = new URL(p.json<{ url: string }>().url);
      expect(url.port).toBe(String(gw));
      let r = await httpCall(gw, url.host, '/index.html');
      for (let i = 0; i < 50 && r.status !== 200; i++) {
        await sleep(100);
        r = await httpCall(gw, url.host, '/index.html');
      }
      expect(r.status).toBe(200);
      expect(r.body).toBe('via-api\n');
    } finally {
      if (id !== '') await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${id}` });
      await h.close();
    }
  });
});
