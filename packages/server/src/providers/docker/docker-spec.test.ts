import { Readable } from 'node:stream';
import { extract as tarExtract, pack as tarPack } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { StacyError } from '../../domain/errors.js';
import type { ErrorCode } from '../../domain/errors.js';
import type {
  ContainerFacts,
  ContainerSummary,
  DockerEngine,
  ExecFacts,
  ImageFacts,
  PullProgressLine,
} from './docker-engine.js';
import { DockerProvider } from './docker-provider.js';
import type { PullProgress } from './docker-provider.js';
import {
  EXEC_MARKER_ENV,
  ExecDemuxer,
  KILL_SCRIPT,
  buildContainerSpec,
  buildExecEnv,
  buildLabels,
  canPublishPorts,
  checkImageReference,
  checkPorts,
  chooseSandboxUser,
  classifyFsStderr,
  classifyOciFailure,
  computeStats,
  declaredPorts,
  demuxAll,
  dirFixes,
  fsCommandError,
  globMaxDepth,
  isValidPreviewDomain,
  isValidRuntimeId,
  killArgv,
  logLines,
  mapContainerState,
  mapEngineError,
  numericUser,
  parseCpus,
  parseImageReference,
  parseListOutput,
  parseMemoryBytes,
  parsePasswd,
  parsePathStatHeader,
  previewEndpointOf,
  resolveResources,
  resolveUserSpec,
  scratchMounts,
  scriptArgv,
  securityOptions,
  splitNul,
} from './docker-spec.js';
import type {
  ContainerSpec,
  ContainerSpecInput,
  DemuxFrame,
  EngineState,
  RawStats,
} from './docker-spec.js';

const MIB = 1024 * 1024;

function expectStacy(fn: () => unknown, code: ErrorCode, message?: RegExp): StacyError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(StacyError);
  const err = caught as StacyError;
  expect(err.code, err.message).toBe(code);
  if (message !== undefined) expect(err.message).toMatch(message);
  return err;
}

/** One multiplexed frame as the Engine sends it. */
function frame(stream: 1 | 2, text: string | Buffer): Buffer {
  const body = typeof text === 'string' ? Buffer.from(text) : text;
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(body.byteLength, 4);
  return Buffer.concat([header, body]);
}

function joined(frames: DemuxFrame[]): [string, string][] {
  const out: [string, string][] = [];
  for (const f of frames) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] === f.stream) last[1] += f.data.toString();
    else out.push([f.stream, f.data.toString()]);
  }
  return out;
}

/** A directory's mode as Go's os.FileMode puts it (sticky is its own bit, not 0o1000). */
function goDirMode(perm: number): number {
  return 2 ** 31 + ((perm & 0o1000) !== 0 ? 2 ** 20 : 0) + (perm & 0o777);
}

/** The base64 JSON the Engine puts in X-Docker-Container-Path-Stat. */
function pathStatHeader(stat: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify(stat)).toString('base64');
}

const specInput: ContainerSpecInput = {
  sandboxId: 'sb-1234abcd',
  image: 'busybox:latest',
  labels: { stacyvm: 'true' },
  user: { uid: 1000, gid: 1000 },
  limits: { memoryBytes: 256 * MIB, nanoCpus: 1.5e9 },
  pidsLimit: 128,
  droppedCaps: ['ALL'],
  addedCaps: ['NET_BIND_SERVICE'],
  seccomp: 'default',
  readOnlyRootfs: false,
  scratchSizeMb: 512,
  networkMode: 'none',
  runtime: 'runsc',
};

describe('image references', () => {
  it('accepts reference-grammar names and pins a missing tag to latest', () => {
    const digest = `sha256:${'a'.repeat(64)}`;
    const cases: [string, string][] = [
      ['busybox', 'busybox:latest'],
      ['busybox:1.36', 'busybox:1.36'],
      ['stacyvm-test/busybox:latest', 'stacyvm-test/busybox:latest'],
      ['ghcr.io/org/app_x.y-z:v1.2.3', 'ghcr.io/org/app_x.y-z:v1.2.3'],
      ['localhost:5000/team/img', 'localhost:5000/team/img:latest'],
      ['Registry.Example.com/app', 'Registry.Example.com/app:latest'],
      [`alpine@${digest}`, `alpine@${digest}`],
      [`alpine:3.19@${digest}`, `alpine:3.19@${digest}`],
    ];
    for (const [raw, canonical] of cases) {
      const ref = parseImageReference(raw);
      expect(ref, raw).not.toHaveProperty('problem');
      expect((ref as { canonical: string }).canonical).toBe(canonical);
    }
  });

  it('refuses injection characters, spaces, upper-case repositories and broken tags', () => {
    for (const raw of [
      '',
      'Busybox',
      'busybox; rm -rf /',
      'bad image',
      '$(id)',
      '`id`',
      'a/../b',
      'a//b',
      'x:',
      ':tag',
      'x:-tag',
      'busybox\n',
      'img@sha256:short',
      `${'a'.repeat(256)}`,
    ]) {
      expect(parseImageReference(raw), JSON.stringify(raw)).toHaveProperty('problem');
    }
  });

  it('names the image in the BAD_REQUEST it raises', () => {
    const err = expectStacy(() => checkImageReference('Bad Image'), 'BAD_REQUEST', /"Bad Image"/);
    expect(err.details?.[0]?.field).toBe('image');
  });
});

describe('resources', () => {
  it('parses Docker memory sizes with binary units', () => {
    expect(parseMemoryBytes('512m')).toBe(512 * MIB);
    expect(parseMemoryBytes('1g')).toBe(1024 * MIB);
    expect(parseMemoryBytes('1.5G')).toBe(1536 * MIB);
    expect(parseMemoryBytes('256MiB')).toBe(256 * MIB);
    expect(parseMemoryBytes('64mb')).toBe(64 * MIB);
    expect(parseMemoryBytes('2k')).toBe(2048);
    expect(parseMemoryBytes('1048576')).toBe(MIB);
    expect(parseMemoryBytes(' 10m ')).toBe(10 * MIB);
    expect(parseMemoryBytes(4096)).toBe(4096);
    for (const bad of ['', 'abc', '-1m', '12x', '1..5g', 'm']) {
      expectStacy(() => parseMemoryBytes(bad), 'BAD_REQUEST', /memory size/);
    }
  });

  it('parses vCPU counts and refuses non-positive ones', () => {
    expect(parseCpus('1.5')).toBe(1.5);
    expect(parseCpus(2)).toBe(2);
    for (const bad of ['', '0', '-1', 'two', 0, Number.NaN]) {
      expectStacy(() => parseCpus(bad), 'BAD_REQUEST', /cpus/);
    }
  });

  it('turns a request into engine limits, taking fallbacks for zeros', () => {
    const fallback = { memoryBytes: 512 * MIB, cpus: 2 };
    expect(resolveResources({ memoryMb: 256, vcpus: 0.5 }, fallback)).toEqual({
      memoryBytes: 256 * MIB,
      nanoCpus: 0.5e9,
    });
    expect(resolveResources({ memoryMb: 0, vcpus: 0 }, fallback)).toEqual({
      memoryBytes: 512 * MIB,
      nanoCpus: 2e9,
    });
    expect(resolveResources({ memoryMb: 6, vcpus: 1 }, fallback).memoryBytes).toBe(6 * MIB);
  });

  it('refuses memory below the engine minimum of 6 MiB and nonsense values', () => {
    const fallback = { memoryBytes: 512 * MIB, cpus: 1 };
    expectStacy(
      () => resolveResources({ memoryMb: 4, vcpus: 1 }, fallback),
      'BAD_REQUEST',
      /memory_mb: 4 MiB is below the Docker Engine minimum of 6 MiB/,
    );
    expectStacy(() => resolveResources({ memoryMb: -1, vcpus: 1 }, fallback), 'BAD_REQUEST');
    expectStacy(
      () => resolveResources({ memoryMb: Number.NaN, vcpus: 1 }, fallback),
      'BAD_REQUEST',
    );
    expectStacy(
      () => resolveResources({ memoryMb: 64, vcpus: -2 }, fallback),
      'BAD_REQUEST',
      /vcpus/,
    );
    expectStacy(
      () => resolveResources({ memoryMb: 64, vcpus: 0.001 }, fallback),
      'BAD_REQUEST',
      /0\.01/,
    );
    expectStacy(
      () => resolveResources({ memoryMb: 0, vcpus: 1 }, { memoryBytes: MIB, cpus: 1 }),
      'BAD_REQUEST',
      /minimum/,
    );
  });

  it('keeps each preview port once and refuses non-ports', () => {
    expect(checkPorts([3000, 5173, 3000])).toEqual([3000, 5173]);
    for (const bad of [0, 65536, 80.5, -1]) {
      expectStacy(() => checkPorts([bad]), 'BAD_REQUEST', /ports/);
    }
  });
});

describe('labels', () => {
  const base = {
    sandboxId: 'sb-1234abcd',
    image: 'busybox',
    metadata: {},
    ports: [3000, 5173, 8080],
    previewDomain: 'preview.example.com',
    extraLabels: {},
  };

  it('routes every preview port of the sandbox, not only 3000', () => {
    const labels = buildLabels(base);
    expect(labels['traefik.enable']).toBe('true');
    for (const port of [3000, 5173, 8080]) {
      const name = `sb-1234abcd-${port}`;
      expect(labels[`traefik.http.routers.${name}.rule`]).toBe(
        `Host(\`${port}-sb-1234abcd.preview.example.com\`)`,
      );
      expect(labels[`traefik.http.routers.${name}.service`]).toBe(name);
      expect(labels[`traefik.http.services.${name}.loadbalancer.server.port`]).toBe(String(port));
    }
    expect(labels).toMatchObject({
      stacyvm: 'true',
      'stacyvm.provider': 'docker',
      'stacyvm.sandbox': 'sb-1234abcd',
      'stacyvm.image': 'busybox',
      'stacyvm.ports': '3000,5173,8080',
    });
    expect(labels).not.toHaveProperty('stacyvm.metadata');
  });

  it('stores metadata as JSON and keeps extra labels without letting them override ours', () => {
    const labels = buildLabels({
      ...base,
      metadata: { owner: 'alice', 'x"y': 'z' },
      extraLabels: {
        stacyvm: 'false',
        'stacyvm.sandbox': 'evil',
        team: 'red',
        'stacyvm.metadata': 'x',
      },
    });
    expect(labels['stacyvm']).toBe('true');
    expect(labels['stacyvm.sandbox']).toBe('sb-1234abcd');
    expect(labels['team']).toBe('red');
    expect(JSON.parse(labels['stacyvm.metadata'] ?? '')).toEqual({ owner: 'alice', 'x"y': 'z' });
    const noMeta = buildLabels({ ...base, extraLabels: { 'stacyvm.metadata': 'forged' } });
    expect(noMeta).not.toHaveProperty('stacyvm.metadata');
  });

  it('sets no Traefik labels without a preview domain or without ports', () => {
    for (const labels of [
      buildLabels({ ...base, previewDomain: '' }),
      buildLabels({ ...base, ports: [] }),
    ]) {
      expect(Object.keys(labels).some((k) => k.startsWith('traefik.'))).toBe(false);
    }
    expect(buildLabels({ ...base, ports: [] })['stacyvm.ports']).toBe('');
  });

  it('accepts only hostname characters as a preview domain', () => {
    expect(isValidPreviewDomain('localhost')).toBe(true);
    expect(isValidPreviewDomain('a.example.com')).toBe(true);
    expect(isValidPreviewDomain('')).toBe(true);
    for (const bad of ['a`)||Host(`b', 'a b', '-x.com', 'x.com.', 'x/y']) {
      expect(isValidPreviewDomain(bad), bad).toBe(false);
    }
  });
});

describe('container spec', () => {
  it('locks the container down and keeps it alive under an init', () => {
    const spec = buildContainerSpec(specInput);
    expect(spec).toMatchObject({
      name: 'sb-1234abcd',
      Hostname: 'sb-1234abcd',
      Image: 'busybox:latest',
      User: '1000:1000',
      WorkingDir: '/workspace',
      Tty: false,
      OpenStdin: false,
      HostConfig: {
        Init: true,
        Privileged: false,
        Memory: 256 * MIB,
        MemorySwap: 256 * MIB,
        NanoCpus: 1.5e9,
        PidsLimit: 128,
        CapDrop: ['ALL'],
        CapAdd: ['NET_BIND_SERVICE'],
        SecurityOpt: ['no-new-privileges:true'],
        ReadonlyRootfs: false,
        NetworkMode: 'none',
        Runtime: 'runsc',
      },
    });
    expect(spec.Cmd[0]).toBe('sh');
    expect(spec.Cmd.join(' ')).toMatch(/sleep infinity/);
    expect(spec.HostConfig.Mounts).toBeUndefined();
  });

  it('adds seccomp only for a non-default profile', () => {
    expect(securityOptions('default')).toEqual(['no-new-privileges:true']);
    expect(securityOptions('')).toEqual(['no-new-privileges:true']);
    expect(securityOptions('unconfined')).toEqual(['no-new-privileges:true', 'seccomp=unconfined']);
    expect(
      buildContainerSpec({ ...specInput, seccomp: '{"defaultAction":"SCMP_ACT_ERRNO"}' }).HostConfig
        .SecurityOpt,
    ).toEqual(['no-new-privileges:true', 'seccomp={"defaultAction":"SCMP_ACT_ERRNO"}']);
  });

  it('gives a read-only rootfs tmpfs-backed /workspace (owned by the user) and /tmp', () => {
    const spec = buildContainerSpec({ ...specInput, readOnlyRootfs: true });
    expect(spec.HostConfig.ReadonlyRootfs).toBe(true);
    expect(spec.HostConfig.Mounts).toEqual(scratchMounts({ uid: 1000, gid: 1000 }, 512));
    const [workspace, tmp] = spec.HostConfig.Mounts ?? [];
    expect(workspace?.Target).toBe('/workspace');
    expect(workspace?.Source).toBe('');
    expect(workspace?.VolumeOptions.DriverConfig.Options).toEqual({
      type: 'tmpfs',
      device: 'tmpfs',
      o: 'uid=1000,gid=1000,mode=0755,nosuid,nodev,size=512m',
    });
    expect(tmp?.Target).toBe('/tmp');
    expect(tmp?.VolumeOptions.DriverConfig.Options.o).toBe('mode=1777,nosuid,nodev,size=512m');
  });

  it('publishes preview ports on 127.0.0.1 with Engine-chosen host ports', () => {
    const spec = buildContainerSpec({
      ...specInput,
      networkMode: 'bridge',
      publishPorts: [3000, 5173],
    });
    expect(spec.ExposedPorts).toEqual({ '3000/tcp': {}, '5173/tcp': {} });
    expect(spec.HostConfig.PortBindings).toEqual({
      '3000/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
      '5173/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
    });
    for (const mode of ['none', 'host', 'container:other']) {
      const s = buildContainerSpec({ ...specInput, networkMode: mode, publishPorts: [3000] });
      expect(s.HostConfig.PortBindings, mode).toBeUndefined();
      expect(s.ExposedPorts, mode).toBeUndefined();
    }
    expect(
      buildContainerSpec({ ...specInput, networkMode: 'bridge' }).HostConfig.PortBindings,
    ).toBeUndefined();
    expect(canPublishPorts('stacyvm-network')).toBe(true);
    expect(canPublishPorts('NONE')).toBe(false);
  });

  it('leaves the hostname to the engine when the id is not a hostname', () => {
    expect(buildContainerSpec({ ...specInput, sandboxId: 'my_box' }).Hostname).toBeUndefined();
  });

  it('accepts only container-name ids, which are also safe in Engine URLs', () => {
    expect(isValidRuntimeId('sb-1234abcd')).toBe(true);
    expect(isValidRuntimeId('a.b_c-d')).toBe(true);
    for (const bad of ['', '../images/x', 'a/b', '-x', 'a?b', 'a b', 'x'.repeat(129)]) {
      expect(isValidRuntimeId(bad), bad).toBe(false);
    }
  });
});

describe('sandbox user', () => {
  const passwd = parsePasswd(
    [
      'root:x:0:0:root:/root:/bin/sh',
      '# comment',
      'daemon:x:1:1::/:/bin/false',
      'broken line',
      'nobody:x:65534:65534::/:/bin/false',
      'app:x:1001:1001::/home/app:/bin/sh',
      'dev:x:1000:1500::/home/dev:/bin/sh',
    ].join('\n'),
  );

  it('parses passwd entries and skips malformed lines', () => {
    expect(passwd.map((e) => e.name)).toEqual(['root', 'daemon', 'nobody', 'app', 'dev']);
  });

  it('prefers a non-root sandbox account, then the lowest regular account, else root', () => {
    expect(
      chooseSandboxUser(parsePasswd('root:x:0:0::/:\nsandbox:x:1000:1000::/w:/bin/sh\n')),
    ).toEqual({
      uid: 1000,
      gid: 1000,
    });
    expect(chooseSandboxUser(passwd)).toEqual({ uid: 1000, gid: 1500 });
    expect(chooseSandboxUser(parsePasswd('root:x:0:0::/:\nnobody:x:65534:65534::/:\n'))).toEqual({
      uid: 0,
      gid: 0,
    });
    expect(chooseSandboxUser(parsePasswd('sandbox:x:0:0::/:\n'))).toEqual({ uid: 0, gid: 0 });
    expect(chooseSandboxUser([])).toEqual({ uid: 0, gid: 0 });
  });

  it('resolves configured user specs to numbers', () => {
    expect(resolveUserSpec('app', passwd)).toEqual({ uid: 1001, gid: 1001 });
    expect(resolveUserSpec('1000', passwd)).toEqual({ uid: 1000, gid: 1500 });
    expect(resolveUserSpec('4242', passwd)).toEqual({ uid: 4242, gid: 4242 });
    expect(resolveUserSpec('app:77', passwd)).toEqual({ uid: 1001, gid: 77 });
    expect(resolveUserSpec('ghost', passwd)).toHaveProperty('problem');
    expect(resolveUserSpec('app:staff', passwd)).toHaveProperty('problem');
    expect(numericUser('1000:1000')).toEqual({ uid: 1000, gid: 1000 });
    expect(numericUser('1000')).toBeUndefined();
    expect(numericUser('app:1')).toBeUndefined();
  });
});

describe('engine states', () => {
  const state = (status: string, extra: Partial<EngineState> = {}): EngineState => ({
    status,
    running: false,
    paused: false,
    restarting: false,
    ...extra,
  });

  it('maps engine states to provider states', () => {
    expect(mapContainerState(state('running', { running: true }))).toBe('running');
    expect(mapContainerState(state('running', { running: true, paused: true }))).toBe('paused');
    expect(mapContainerState(state('paused'))).toBe('paused');
    expect(mapContainerState(state('restarting', { restarting: true }))).toBe('restarting');
    expect(mapContainerState(state('exited'))).toBe('stopped');
    expect(mapContainerState(state('dead'))).toBe('stopped');
    expect(mapContainerState(state('created'))).toBe('creating');
    expect(mapContainerState(state('removing'))).toBe('destroying');
    expect(mapContainerState(state('weird'))).toBe('unknown');
  });
});

describe('exec stream demultiplexing', () => {
  it('splits interleaved stdout and stderr frames', () => {
    const frames = demuxAll(Buffer.concat([frame(1, 'a\n'), frame(2, 'b\n'), frame(1, 'c\n')]));
    expect(joined(frames)).toEqual([
      ['stdout', 'a\n'],
      ['stderr', 'b\n'],
      ['stdout', 'c\n'],
    ]);
  });

  it('copes with headers and bodies split across reads, one byte at a time', () => {
    const wire = Buffer.concat([
      frame(1, 'hello '),
      frame(2, 'oops'),
      frame(1, 'world'),
      frame(1, ''),
    ]);
    const demux = new ExecDemuxer();
    const frames: DemuxFrame[] = [];
    for (let i = 0; i < wire.byteLength; i++) frames.push(...demux.push(wire.subarray(i, i + 1)));
    expect(joined(frames)).toEqual([
      ['stdout', 'hello '],
      ['stderr', 'oops'],
      ['stdout', 'world'],
    ]);
  });

  it('passes a large frame on in pieces as they arrive instead of buffering it', () => {
    const body = Buffer.alloc(100_000, 7);
    const wire = frame(1, body);
    const demux = new ExecDemuxer();
    const first = demux.push(wire.subarray(0, 1008));
    expect(first).toHaveLength(1);
    expect(first[0]?.data.byteLength).toBe(1000);
    const rest = demux.push(wire.subarray(1008));
    expect(rest.reduce((n, f) => n + f.data.byteLength, 0)).toBe(99_000);
  });

  it('treats a stream without frame headers as raw stdout', () => {
    const frames = demuxAll(Buffer.from('plain text, no headers'));
    expect(joined(frames)).toEqual([['stdout', 'plain text, no headers']]);
  });

  it('returns the last log lines, stdout and stderr in order', () => {
    const frames = demuxAll(
      Buffer.concat([frame(1, 'one\ntw'), frame(1, 'o\r\n'), frame(2, 'three\n')]),
    );
    expect(logLines(frames, 10)).toEqual(['one', 'two', 'three']);
    expect(logLines(frames, 2)).toEqual(['two', 'three']);
    expect(logLines(frames, 0)).toEqual([]);
    expect(logLines([], 5)).toEqual([]);
  });
});

describe('exec wrappers', () => {
  it('puts the marker last so a request cannot shadow it, and refuses bad keys', () => {
    expect(buildExecEnv({ A: '1', [EXEC_MARKER_ENV]: 'forged', B: 'x=y' }, 'm1')).toEqual([
      'A=1',
      'B=x=y',
      `${EXEC_MARKER_ENV}=m1`,
    ]);
    for (const key of ['', 'A=B', 'NUL\0']) {
      expectStacy(() => buildExecEnv({ [key]: 'v' }, 'm'), 'BAD_REQUEST', /env/);
    }
    expectStacy(() => buildExecEnv({ OK: 'v\0' }, 'm'), 'BAD_REQUEST');
  });

  it('passes script arguments as positional parameters, never inside the script', () => {
    const argv = scriptArgv('echo "$1"', 'name', ['; rm -rf / #', '$(id)']);
    expect(argv).toEqual(['sh', '-c', 'echo "$1"', 'name', '; rm -rf / #', '$(id)']);
    const kill = killArgv('abc123');
    expect(kill.slice(0, 3)).toEqual(['sh', '-c', KILL_SCRIPT]);
    expect(kill[kill.length - 1]).toBe('abc123');
    expect(KILL_SCRIPT).not.toContain('abc123');
    expect(KILL_SCRIPT).toContain(EXEC_MARKER_ENV);
  });

  it('classifies the runtime failures of an exec that never started', () => {
    const prefix = 'OCI runtime exec failed: exec failed: unable to start container process: ';
    expect(
      classifyOciFailure(
        `${prefix}chdir to cwd ("/nope") set in config.json failed: no such file or directory: unknown`,
      ),
    ).toBe('workdir');
    expect(
      classifyOciFailure(`${prefix}exec: "nope": executable file not found in $PATH: unknown`),
    ).toBe('not_found');
    expect(
      classifyOciFailure(`${prefix}exec: "/x": stat /x: no such file or directory: unknown`),
    ).toBe('not_found');
    expect(classifyOciFailure(`${prefix}exec: "/x": permission denied: unknown`)).toBe(
      'permission',
    );
    expect(classifyOciFailure(`${prefix}something else`)).toBe('other');
  });
});

describe('file helpers', () => {
  /** LIST_SCRIPT output: names NUL-terminated, a lone NUL, then stat lines. */
  function listing(
    dir: string,
    entries: [string, string, number, number][],
    statOrder = entries,
  ): Buffer {
    const names = entries.map(([n]) => `${dir}/${n}\0`).join('');
    const stats = statOrder
      .map(([n, mode, size, mtime]) => `|${mode} ${size} ${mtime} ${dir}/${n}\n`)
      .join('');
    return Buffer.from(`${names}\0${stats}`);
  }

  it('parses a listing sorted by name, with modes and types from the raw mode', () => {
    const out = listing('/workspace/d', [
      ['b.txt', '81a4', 2, 1700000000],
      ['sub', '41ed', 4096, 1700000001],
      ['.hidden', '8180', 0, 1700000002],
      ['link', 'a1ff', 5, 1700000003],
    ]);
    expect(parseListOutput(out, '/workspace/d')).toEqual([
      {
        path: '/workspace/d/.hidden',
        name: '.hidden',
        size: 0,
        mode: '0600',
        isDir: false,
        modTimeMs: 1700000002000,
      },
      {
        path: '/workspace/d/b.txt',
        name: 'b.txt',
        size: 2,
        mode: '0644',
        isDir: false,
        modTimeMs: 1700000000000,
      },
      {
        path: '/workspace/d/link',
        name: 'link',
        size: 5,
        mode: '0777',
        isDir: false,
        modTimeMs: 1700000003000,
      },
      {
        path: '/workspace/d/sub',
        name: 'sub',
        size: 4096,
        mode: '0755',
        isDir: true,
        modTimeMs: 1700000001000,
      },
    ]);
  });

  it('keeps names with spaces, pipes and newlines whole', () => {
    const entries: [string, string, number, number][] = [
      ['with space', '81a4', 1, 1],
      ['new\nline', '81a4', 2, 2],
      ['|81a4 9 9 fake', '81a4', 3, 3],
      ['tail\n|81a4 1 1 y', '81a4', 4, 4],
    ];
    const parsed = parseListOutput(listing('/x', entries), '/x');
    expect(parsed.map((e) => [e.name, e.size])).toEqual([
      ['new\nline', 2],
      ['tail\n|81a4 1 1 y', 4],
      ['with space', 1],
      ['|81a4 9 9 fake', 3],
    ]);
  });

  it('drops entries that vanished between the passes and lists an empty or root directory', () => {
    const entries: [string, string, number, number][] = [
      ['gone', '81a4', 1, 1],
      ['kept', '81a4', 2, 2],
    ];
    const out = listing('/x', entries, [entries[1] as [string, string, number, number]]);
    expect(parseListOutput(out, '/x').map((e) => e.name)).toEqual(['kept']);
    expect(parseListOutput(Buffer.from('\0'), '/x')).toEqual([]);
    expect(parseListOutput(Buffer.from('/etc\0\0|41ed 4096 1 /etc\n'), '/')).toEqual([
      { path: '/etc', name: 'etc', size: 4096, mode: '0755', isDir: true, modTimeMs: 1000 },
    ]);
  });

  it('splits NUL-terminated find output', () => {
    expect(splitNul(Buffer.from('/a\0/b c\0/d\ne\0'))).toEqual(['/a', '/b c', '/d\ne']);
    expect(splitNul(Buffer.alloc(0))).toEqual([]);
  });

  it('fixes only the directories that do not suit a non-root user', () => {
    const user = { uid: 1000, gid: 1000 };
    const tmp = (perm: number) =>
      parsePathStatHeader(pathStatHeader({ name: 'tmp', size: 0, mode: goDirMode(perm) }));
    expect(dirFixes(user, { uid: 1000, mode: 0o755, isDir: true }, tmp(0o1777))).toEqual({
      workspace: false,
      tmp: false,
    });
    expect(dirFixes(user, undefined, undefined)).toEqual({ workspace: true, tmp: true });
    expect(dirFixes(user, { uid: 0, mode: 0o777, isDir: true }, tmp(0o755)).workspace).toBe(true);
    expect(dirFixes(user, { uid: 1000, mode: 0o555, isDir: true }, tmp(0o777))).toEqual({
      workspace: true,
      tmp: true,
    });
    expect(dirFixes(user, { uid: 1000, mode: 0o755, isDir: false }, tmp(0o1777)).workspace).toBe(
      true,
    );
  });

  it('bounds a glob walk by the pattern depth unless it has **', () => {
    expect(globMaxDepth('/workspace/g/*.log', '/workspace/g')).toBe(1);
    expect(globMaxDepth('/workspace/*/x/*.ts', '/workspace')).toBe(3);
    expect(globMaxDepth('/workspace/g/**/*.log', '/workspace/g')).toBeUndefined();
    expect(globMaxDepth('/*', '/')).toBe(1);
  });

  it('reads the Engine path stat, Go mode bits included', () => {
    const file = parsePathStatHeader(
      pathStatHeader({
        name: 'a.txt',
        size: 11,
        mode: 0o644,
        mtime: '2030-01-02T03:04:05.5Z',
        linkTarget: '',
      }),
    );
    expect(file).toEqual({
      name: 'a.txt',
      size: 11,
      perm: 0o644,
      isDir: false,
      isSymlink: false,
      isRegular: true,
      modTimeMs: Date.UTC(2030, 0, 2, 3, 4, 5, 500),
      linkTarget: '',
    });
    const dir = parsePathStatHeader(
      pathStatHeader({ name: 'd', size: 4096, mode: 2 ** 31 + 0o755, mtime: '' }),
    );
    expect(dir).toMatchObject({ isDir: true, isRegular: false, perm: 0o755 });
    const link = parsePathStatHeader(
      pathStatHeader({
        name: 'l',
        size: 3,
        mode: 2 ** 27 + 0o777,
        mtime: '',
        linkTarget: '/workspace/t',
      }),
    );
    expect(link).toMatchObject({ isSymlink: true, isRegular: false, linkTarget: '/workspace/t' });
    const special = parsePathStatHeader(
      pathStatHeader({ name: 's', size: 0, mode: 2 ** 23 + 2 ** 20 + 0o755 }),
    );
    expect(special).toMatchObject({ perm: 0o5755, isRegular: true });
    const fifo = parsePathStatHeader(pathStatHeader({ name: 'p', size: 0, mode: 2 ** 25 + 0o644 }));
    expect(fifo).toMatchObject({ isRegular: false, isDir: false });
    expect(parsePathStatHeader('%%%')).toBeUndefined();
    expect(parsePathStatHeader(pathStatHeader({ name: 'x' }))).toBeUndefined();
  });

  it('maps what a failed file command printed to catalog errors naming the path', () => {
    const cases: [string, ErrorCode][] = [
      ["rm: can't remove '/w/x': No such file or directory", 'NOT_FOUND'],
      ["mkdir: can't create directory '/etc/x': Permission denied", 'FORBIDDEN'],
      ['chmod: /w/x: Operation not permitted', 'FORBIDDEN'],
      ['touch: /x: Read-only file system', 'FORBIDDEN'],
      ['mkdir: /w/f/x: Not a directory', 'BAD_REQUEST'],
      ["rmdir: '/w/d': Directory not empty", 'BAD_REQUEST'],
      ['mkdir: /w/x: File exists', 'CONFLICT'],
      ['cat: write error: No space left on device', 'RESOURCE_LIMIT'],
      ['something odd', 'INTERNAL_ERROR'],
    ];
    for (const [stderr, code] of cases) {
      const err = fsCommandError(stderr, '/w/x', 'write');
      expect(err.code, stderr).toBe(code);
      expect(err.message).toContain('/w/x');
    }
    expect(classifyFsStderr('')).toBe('other');
  });
});

describe('stats', () => {
  it('computes CPU% as the reference does and subtracts page cache from memory', () => {
    const v1 = computeStats({
      cpu_stats: { cpu_usage: { total_usage: 400 }, system_cpu_usage: 2000, online_cpus: 2 },
      precpu_stats: { cpu_usage: { total_usage: 200 }, system_cpu_usage: 1000 },
      memory_stats: { usage: 100 * MIB, limit: 256 * MIB, stats: { cache: 30 * MIB } },
    });
    expect(v1).toEqual({ cpuPct: 40, memBytes: 70 * MIB, memLimitBytes: 256 * MIB });
    const v2 = computeStats({
      cpu_stats: {
        cpu_usage: { total_usage: 10, percpu_usage: [1, 2, 3, 4] },
        system_cpu_usage: 20,
      },
      precpu_stats: { cpu_usage: { total_usage: 5 }, system_cpu_usage: 10 },
      memory_stats: { usage: 50 * MIB, limit: 64 * MIB, stats: { file: 10 * MIB } },
    });
    expect(v2).toEqual({ cpuPct: 200, memBytes: 40 * MIB, memLimitBytes: 64 * MIB });
  });

  it('reports zero CPU without a baseline and never negative memory', () => {
    expect(computeStats({})).toEqual({ cpuPct: 0, memBytes: 0, memLimitBytes: 0 });
    expect(
      computeStats({ memory_stats: { usage: 10, limit: 100, stats: { cache: 50 } } }).memBytes,
    ).toBe(0);
  });
});

describe('engine error mapping', () => {
  const ctx = { endpoint: '/var/run/docker.sock', action: 'exec in sandbox sb-1' };
  const httpError = (statusCode: number, message: string): Error =>
    Object.assign(new Error(`(HTTP code ${statusCode}) - ${message}`), {
      statusCode,
      json: { message },
    });
  const sysError = (code: string): Error =>
    Object.assign(new Error(`connect ${code} /var/run/docker.sock`), { code });

  it('reports a daemon that does not answer as UNAVAILABLE naming the socket', () => {
    for (const code of ['ECONNREFUSED', 'ENOENT', 'EACCES', 'ECONNRESET']) {
      const err = mapEngineError(sysError(code), ctx);
      expect(err.code).toBe('UNAVAILABLE');
      expect(err.message).toMatch(
        /^Docker daemon at \/var\/run\/docker\.sock does not answer: .* \(is dockerd running\?\)$/,
      );
      expect(err.retryable).toBe(true);
    }
  });

  it('maps 404 to NOT_FOUND for the sandbox, or to the given not-found error', () => {
    expect(
      mapEngineError(httpError(404, 'No such container: sb-1'), { ...ctx, sandboxId: 'sb-1' })
        .message,
    ).toBe('sandbox not found: sb-1');
    const path = mapEngineError(httpError(404, 'Could not find the file /x in container sb-1'), {
      ...ctx,
      sandboxId: 'sb-1',
      notFound: { code: 'NOT_FOUND', message: 'no such file: /x' },
    });
    expect(path.message).toBe('no such file: /x');
    const container = mapEngineError(httpError(404, 'No such container: sb-1'), {
      ...ctx,
      sandboxId: 'sb-1',
      notFound: { code: 'NOT_FOUND', message: 'no such file: /x' },
    });
    expect(container.message).toBe('sandbox not found: sb-1');
  });

  it('maps 409, 400 and 403 to client errors and the rest to INTERNAL_ERROR with the cause', () => {
    expect(mapEngineError(httpError(409, 'Container sb-1 is not running'), ctx)).toMatchObject({
      code: 'CONFLICT',
      message: 'exec in sandbox sb-1: Container sb-1 is not running',
    });
    expect(mapEngineError(httpError(400, 'bad parameter'), ctx).code).toBe('BAD_REQUEST');
    expect(mapEngineError(httpError(403, 'container rootfs is marked read-only'), ctx).code).toBe(
      'FORBIDDEN',
    );
    const raw = httpError(500, 'boom');
    const internal = mapEngineError(raw, ctx);
    expect(internal.code).toBe('INTERNAL_ERROR');
    expect(internal.cause).toBe(raw);
    expect(mapEngineError(new Error('weird'), ctx).code).toBe('INTERNAL_ERROR');
  });

  it('maps a cancelled call to TIMEOUT and passes catalog errors through', () => {
    const abort = Object.assign(new Error('The operation was aborted'), {
      name: 'AbortError',
      code: 'ABORT_ERR',
    });
    expect(mapEngineError(abort, ctx).code).toBe('TIMEOUT');
    const own = new StacyError('CONFLICT', 'mine');
    expect(mapEngineError(own, ctx)).toBe(own);
  });
});

describe('DockerProvider input checks', () => {
  /** An engine that records calls and answers none: these checks must come before any I/O. */
  function recordingEngine(): { engine: DockerEngine; calls: string[] } {
    const calls: string[] = [];
    const engine = new Proxy(
      {},
      {
        get: (_target, prop) => () => {
          calls.push(String(prop));
          return Promise.reject(new Error(`unexpected engine call ${String(prop)}`));
        },
      },
    ) as DockerEngine;
    return { engine, calls };
  }

  it('does no I/O when constructed', () => {
    const { engine, calls } = recordingEngine();
    const p = new DockerProvider({ engine, socketPath: '/run/x.sock' });
    expect(calls).toEqual([]);
    expect(p.describe()).toMatchObject({ type: 'docker', endpoint: '/run/x.sock', user: 'auto' });
  });

  it('refuses a bad configuration when constructed', () => {
    const { engine } = recordingEngine();
    expectStacy(
      () => new DockerProvider({ engine, previewDomain: 'a`b' }),
      'BAD_REQUEST',
      /previewDomain/,
    );
    expectStacy(() => new DockerProvider({ engine, pidsLimit: 0 }), 'BAD_REQUEST', /pidsLimit/);
    expectStacy(() => new DockerProvider({ engine, memory: 'lots' }), 'BAD_REQUEST', /memory/);
  });

  it('refuses bad spawn input and bad ids before calling the engine', async () => {
    const { engine, calls } = recordingEngine();
    const p = new DockerProvider({ engine });
    const spawn = {
      sandboxId: 'sb-1234abcd',
      image: 'busybox',
      memoryMb: 64,
      vcpus: 1,
      metadata: {},
      ports: [],
    };
    await expect(p.spawn({ ...spawn, image: 'busybox && id' })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
    await expect(p.spawn({ ...spawn, memoryMb: 4 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(p.spawn({ ...spawn, sandboxId: '../x' })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
    await expect(p.status('../images/json')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(p.readFile('sb-1234abcd', '../../etc/passwd')).rejects.toMatchObject({
      code: 'BAD_REQUEST',
      message: expect.stringMatching(/escapes the sandbox root/) as unknown,
    });
    expect(calls).toEqual([]);
  });

  it('reports an engine that fails its ping as UNAVAILABLE naming the endpoint', async () => {
    const { engine } = recordingEngine();
    const p = new DockerProvider({ engine, socketPath: '/run/nope.sock' });
    await expect(p.init()).rejects.toMatchObject({
      code: 'UNAVAILABLE',
      message: expect.stringMatching(
        /^Docker daemon at \/run\/nope\.sock does not answer: .*\(is dockerd running\?\)$/,
      ) as unknown,
    });
  });
});

/**
 * An in-memory engine for the spawn path's decisions (pull, user probe,
 * clean-up) that the Docker tests cannot reach here: this machine has no
 * registry to pull from. Everything else is tested against the real daemon.
 */
class FakeEngine implements DockerEngine {
  readonly calls: string[] = [];
  readonly images = new Map<string, ImageFacts>();
  passwd: string | undefined =
    'root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000::/workspace:/bin/sh\n';
  /** Owner and mode of the image's /workspace; undefined when it has none. */
  workspace: { uid: number; mode: number } | undefined;
  tmpMode = 0o755;
  pullLines: PullProgressLine[] = [];
  pullError: Error | undefined;
  pullHangs = false;
  createError: Error | undefined;
  startError: Error | undefined;
  readonly created: ContainerSpec[] = [];
  readonly removed: string[] = [];
  readonly puts: string[] = [];
  /** What inspecting any container answers (undefined: no such container). */
  container: ContainerFacts | undefined;
  private probes = 0;

  ping(): Promise<void> {
    return Promise.resolve();
  }
  inspectImage(ref: string): Promise<ImageFacts | undefined> {
    this.calls.push(`inspectImage ${ref}`);
    return Promise.resolve(this.images.get(ref));
  }
  async pullImage(
    ref: string,
    onProgress: (line: PullProgressLine) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    this.calls.push(`pull ${ref}`);
    if (this.pullHangs) {
      await new Promise((_, reject) => {
        signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
      });
    }
    if (this.pullError !== undefined) throw this.pullError;
    for (const line of this.pullLines) onProgress(line);
    this.images.set(ref, { id: `sha256:${ref}`, user: '' });
  }
  createContainer(spec: ContainerSpec): Promise<string> {
    this.calls.push(`create ${spec.name}`);
    if (this.createError !== undefined) return Promise.reject(this.createError);
    this.created.push(spec);
    return Promise.resolve(`id-${spec.name}`);
  }
  createProbe(image: string): Promise<string> {
    this.calls.push(`probe ${image}`);
    this.probes++;
    return Promise.resolve(`probe-${this.probes}`);
  }
  startContainer(id: string): Promise<void> {
    this.calls.push(`start ${id}`);
    return this.startError === undefined ? Promise.resolve() : Promise.reject(this.startError);
  }
  inspections = 0;
  inspectContainer(): Promise<ContainerFacts | undefined> {
    this.inspections += 1;
    return Promise.resolve(this.container);
  }
  removeContainer(id: string): Promise<boolean> {
    this.calls.push(`remove ${id}`);
    this.removed.push(id);
    return Promise.resolve(true);
  }
  listContainers(): Promise<ContainerSummary[]> {
    return Promise.resolve([]);
  }
  async putArchive(id: string, dir: string, tar: Readable): Promise<void> {
    this.calls.push(`put ${id} ${dir}`);
    const names: string[] = [];
    const ex = tarExtract();
    tar.pipe(ex);
    for await (const entry of ex) {
      names.push(
        `${entry.header.name}:${entry.header.uid}:${(entry.header.mode ?? 0).toString(8)}`,
      );
      entry.resume();
    }
    this.puts.push(names.join(' '));
  }
  getArchive(_id: string, path: string): Promise<Readable> {
    const p = tarPack();
    if (path === '/etc/passwd' && this.passwd !== undefined) {
      p.entry({ name: 'passwd', type: 'file' }, Buffer.from(this.passwd));
    } else if (path === '/workspace' && this.workspace !== undefined) {
      p.entry({ name: 'workspace', type: 'directory', ...this.workspace });
      p.entry({ name: 'workspace/big.bin', type: 'file' }, Buffer.alloc(1024));
    } else {
      return Promise.reject(Object.assign(new Error('not found'), { statusCode: 404 }));
    }
    p.finalize();
    return Promise.resolve(Readable.from(p, { objectMode: false }));
  }
  containerLogs(): Promise<Buffer> {
    return Promise.reject(new Error('not faked'));
  }
  containerStats(): Promise<RawStats> {
    return Promise.reject(new Error('not faked'));
  }
  createExec(): Promise<string> {
    return Promise.reject(new Error('not faked'));
  }
  startExec(): Promise<Readable> {
    return Promise.reject(new Error('not faked'));
  }
  inspectExec(): Promise<ExecFacts> {
    return Promise.reject(new Error('not faked'));
  }
  statPath(_id: string, path: string): Promise<string | undefined> {
    if (path !== '/tmp') return Promise.reject(new Error('not faked'));
    return Promise.resolve(pathStatHeader({ name: 'tmp', size: 0, mode: goDirMode(this.tmpMode) }));
  }
}

describe('DockerProvider preview upstreams', () => {
  const running = (status = 'running'): ContainerFacts => ({
    id: 'c1',
    name: '/sb-0000aaaa',
    labels: { stacyvm: 'true', 'stacyvm.ports': '3000' },
    user: '1000:1000',
    state: { status, running: status === 'running', paused: false, restarting: false },
    reach: {
      ports: { '3000/tcp': [{ hostIp: '127.0.0.1', hostPort: '40001' }] },
      ipAddresses: ['10.9.0.2'],
    },
  });

  it('publishes declared ports at spawn unless the upstream is the container address', async () => {
    const engine = new FakeEngine();
    engine.images.set('busybox:latest', { id: 'sha256:b', user: '' });
    const opts = {
      sandboxId: 'sb-0000aaaa',
      image: 'busybox',
      memoryMb: 64,
      vcpus: 1,
      metadata: {},
      ports: [3000, 8080],
    };
    await new DockerProvider({ engine }).spawn(opts);
    expect(engine.created[0]?.HostConfig.PortBindings).toEqual({
      '3000/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
      '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }],
    });
    const direct = new FakeEngine();
    direct.images.set('busybox:latest', { id: 'sha256:b', user: '' });
    await new DockerProvider({ engine: direct, previewUpstream: 'container_ip' }).spawn(opts);
    expect(direct.created[0]?.HostConfig.PortBindings).toBeUndefined();
  });

  it('answers the published port of a running sandbox, CONFLICT when stopped, NOT_FOUND when gone', async () => {
    const engine = new FakeEngine();
    engine.container = running();
    const p = new DockerProvider({ engine });
    expect(await p.previewUpstream('sb-0000aaaa', 3000)).toEqual({
      host: '127.0.0.1',
      port: 40001,
    });
    await expect(p.previewUpstream('sb-0000aaaa', 8080)).rejects.toMatchObject({
      code: 'BAD_REQUEST',
      message: expect.stringMatching(/declare it in "ports"/) as unknown,
    });
    await expect(p.previewUpstream('sb-0000aaaa', 0)).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
    engine.container = running('exited');
    await expect(
      new DockerProvider({ engine }).previewUpstream('sb-0000aaaa', 3000),
    ).rejects.toMatchObject({
      code: 'CONFLICT',
      message: 'sandbox sb-0000aaaa is not running (stopped)',
    });
    engine.container = undefined;
    await expect(
      new DockerProvider({ engine }).previewUpstream('sb-0000aaaa', 3000),
    ).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('shares one inspect among the preview requests of a second, and forgets it on destroy', async () => {
    const engine = new FakeEngine();
    engine.container = running();
    const p = new DockerProvider({ engine });
    await Promise.all(Array.from({ length: 20 }, () => p.previewUpstream('sb-0000aaaa', 3000)));
    expect(engine.inspections).toBe(1);
    await p.destroy('sb-0000aaaa');
    engine.container = undefined;
    await expect(p.previewUpstream('sb-0000aaaa', 3000)).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
  });
});

describe('DockerProvider spawn decisions', () => {
  const spawnOpts = (image: string, sandboxId = 'sb-0000aaaa') => ({
    sandboxId,
    image,
    memoryMb: 64,
    vcpus: 1,
    metadata: {},
    ports: [3000],
  });

  it('pulls a missing image, reporting progress, then spawns it as the sandbox user', async () => {
    const engine = new FakeEngine();
    engine.pullLines = [
      { status: 'Pulling from library/busybox', id: 'latest' },
      { status: 'Downloading', id: 'abc', current: 10, total: 100 },
      { status: 'Status: Downloaded newer image for busybox:latest' },
    ];
    const progress: PullProgress[] = [];
    const p = new DockerProvider({ engine, onPullProgress: (ev) => progress.push(ev) });
    await p.spawn(spawnOpts('busybox'));
    expect(progress).toEqual([
      { image: 'busybox', status: 'Pulling from library/busybox', layer: 'latest' },
      { image: 'busybox', status: 'Downloading', layer: 'abc', currentBytes: 10, totalBytes: 100 },
      { image: 'busybox', status: 'Status: Downloaded newer image for busybox:latest' },
    ]);
    expect(engine.created[0]).toMatchObject({ Image: 'busybox:latest', User: '1000:1000' });
    expect(engine.created[0]?.Labels['stacyvm.image']).toBe('busybox');
    // /workspace for the user and a sticky /tmp, before start.
    expect(engine.puts).toEqual(['workspace:1000:755 tmp:0:1777']);
    expect(engine.calls.indexOf('put sb-0000aaaa /')).toBeGreaterThan(
      engine.calls.indexOf('create sb-0000aaaa'),
    );
    expect(engine.calls.indexOf('put sb-0000aaaa /')).toBeLessThan(
      engine.calls.indexOf('start sb-0000aaaa'),
    );
    expect(engine.removed).toEqual(['probe-1']);
  });

  it('fails with NOT_FOUND naming the image when it cannot be pulled, creating nothing', async () => {
    const engine = new FakeEngine();
    engine.pullError = Object.assign(new Error('(HTTP code 404)'), {
      statusCode: 404,
      json: { message: 'pull access denied for nope/img, repository does not exist' },
    });
    const p = new DockerProvider({ engine });
    await expect(p.spawn(spawnOpts('nope/img:2'))).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message:
        'image not found: nope/img:2 (not present locally and could not be pulled: pull access denied for nope/img, repository does not exist)',
    });
    expect(engine.calls.filter((c) => c.startsWith('create') || c.startsWith('probe'))).toEqual([]);
  });

  it('gives up on a pull that hangs, and reports a daemon that drops as UNAVAILABLE', async () => {
    const hanging = new FakeEngine();
    hanging.pullHangs = true;
    await expect(
      new DockerProvider({ engine: hanging, pullTimeoutMs: 50 }).spawn(spawnOpts('slow/img')),
    ).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringMatching(/pull timed out/) as unknown,
    });
    const dropping = new FakeEngine();
    dropping.pullError = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
    await expect(
      new DockerProvider({ engine: dropping }).spawn(spawnOpts('x/y')),
    ).rejects.toMatchObject({
      code: 'UNAVAILABLE',
    });
  });

  it('removes the container when anything after create fails', async () => {
    const engine = new FakeEngine();
    engine.images.set('busybox:latest', { id: 'sha256:b', user: '' });
    engine.startError = Object.assign(new Error('(HTTP code 500)'), {
      statusCode: 500,
      json: { message: 'OCI runtime create failed' },
    });
    const p = new DockerProvider({ engine });
    await expect(p.spawn(spawnOpts('busybox'))).rejects.toMatchObject({ code: 'INTERNAL_ERROR' });
    expect(engine.removed).toContain('sb-0000aaaa');
  });

  it('answers CONFLICT for a taken name without removing the existing container', async () => {
    const engine = new FakeEngine();
    engine.images.set('busybox:latest', { id: 'sha256:b', user: '' });
    engine.createError = Object.assign(new Error('(HTTP code 409)'), {
      statusCode: 409,
      json: { message: 'Conflict. The container name "/sb-0000aaaa" is already in use' },
    });
    const p = new DockerProvider({ engine });
    await expect(p.spawn(spawnOpts('busybox'))).rejects.toMatchObject({
      code: 'CONFLICT',
      message: 'sandbox already exists: sb-0000aaaa',
    });
    expect(engine.removed).not.toContain('sb-0000aaaa');
  });

  it('probes an image for its user once, and runs as root when it has no regular account', async () => {
    const engine = new FakeEngine();
    engine.images.set('busybox:latest', { id: 'sha256:b', user: '' });
    engine.passwd = 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n';
    const p = new DockerProvider({ engine });
    await p.spawn(spawnOpts('busybox', 'sb-0000aaa1'));
    await p.spawn(spawnOpts('busybox', 'sb-0000aaa2'));
    expect(engine.calls.filter((c) => c.startsWith('probe'))).toHaveLength(1);
    expect(engine.created.map((s) => s.User)).toEqual(['0:0', '0:0']);
    expect(engine.puts).toEqual([]);
  });

  it('leaves an image whose /workspace and /tmp already suit the user untouched', async () => {
    const engine = new FakeEngine();
    engine.images.set('ready:latest', { id: 'sha256:r', user: '' });
    engine.workspace = { uid: 1000, mode: 0o755 };
    engine.tmpMode = 0o1777;
    await new DockerProvider({ engine }).spawn(spawnOpts('ready'));
    expect(engine.created[0]?.User).toBe('1000:1000');
    expect(engine.puts).toEqual([]);
    engine.workspace = { uid: 0, mode: 0o755 };
    engine.images.set('half:latest', { id: 'sha256:h', user: '' });
    await new DockerProvider({ engine }).spawn(spawnOpts('half', 'sb-0000aaa9'));
    expect(engine.puts).toEqual(['workspace:1000:755']);
  });

  it('honours a configured user and the image USER, by name or number', async () => {
    const engine = new FakeEngine();
    engine.passwd = 'root:x:0:0::/:/bin/sh\napp:x:1001:1002::/:/bin/sh\n';
    engine.images.set('busybox:latest', { id: 'sha256:b', user: '' });
    engine.images.set('svc:latest', { id: 'sha256:s', user: 'app' });
    await new DockerProvider({ engine, user: '4242:4242' }).spawn(
      spawnOpts('busybox', 'sb-0000bbb1'),
    );
    await new DockerProvider({ engine }).spawn(spawnOpts('svc', 'sb-0000bbb2'));
    expect(engine.created.map((s) => s.User)).toEqual(['4242:4242', '1001:1002']);
    await expect(
      new DockerProvider({ engine, user: 'ghost' }).spawn(spawnOpts('busybox', 'sb-0000bbb3')),
    ).rejects.toMatchObject({
      code: 'BAD_REQUEST',
      message: expect.stringMatching(/ghost/) as unknown,
    });
  });
});

describe('preview upstreams', () => {
  const reach = {
    ports: {
      '3000/tcp': [{ hostIp: '127.0.0.1', hostPort: '49153' }],
      '5173/tcp': [],
    },
    ipAddresses: ['172.17.0.5'],
  };
  const base = { sandboxId: 'sb-1234abcd', declared: [3000, 5173], reach };

  it('reads the declared ports from the stacyvm.ports label', () => {
    expect(declaredPorts({ 'stacyvm.ports': '3000,5173' })).toEqual([3000, 5173]);
    expect(declaredPorts({ 'stacyvm.ports': '' })).toEqual([]);
    expect(declaredPorts({})).toEqual([]);
    expect(declaredPorts({ 'stacyvm.ports': '80, x, 0, 70000' })).toEqual([80]);
  });

  it('uses the loopback-published host port in auto and published modes', () => {
    for (const mode of ['auto', 'published'] as const) {
      expect(previewEndpointOf({ ...base, port: 3000, mode })).toEqual({
        host: '127.0.0.1',
        port: 49153,
      });
    }
  });

  it('falls back to the container address only in auto mode, and uses it in container_ip mode', () => {
    expect(previewEndpointOf({ ...base, port: 5173, mode: 'auto' })).toEqual({
      host: '172.17.0.5',
      port: 5173,
    });
    expect(previewEndpointOf({ ...base, port: 3000, mode: 'container_ip' })).toEqual({
      host: '172.17.0.5',
      port: 3000,
    });
    expect(previewEndpointOf({ ...base, port: 5173, mode: 'published' })).toMatchObject({
      problem: expect.stringMatching(/not published/),
    });
    expect(
      previewEndpointOf({
        ...base,
        port: 5173,
        mode: 'auto',
        reach: { ports: {}, ipAddresses: [] },
      }),
    ).toMatchObject({ problem: expect.stringMatching(/no network address/) });
  });

  it('refuses an undeclared port in every mode, naming the declared ones', () => {
    for (const mode of ['auto', 'published', 'container_ip'] as const) {
      expect(previewEndpointOf({ ...base, port: 8080, mode })).toEqual({
        problem:
          'port 8080 of sandbox sb-1234abcd is not declared, so it is not reachable: declare it in "ports" when spawning the sandbox (declared: 3000, 5173)',
      });
    }
  });
});
