/**
 * Pure parts of the Docker provider: the container create body, labels,
 * security options, resource parsing, state mapping, exec argv wrappers and
 * the parsing of what the engine and the in-container helpers print. No I/O
 * here; everything is unit-tested in milliseconds.
 */
import { StacyError, badRequest, invalidField } from '../../domain/errors.js';
import type { ErrorCode } from '../../domain/errors.js';
import { formatFileMode } from '../../domain/files.js';
import type { FileEntry } from '../../domain/files.js';
import type { ProviderStats } from '../provider.js';

/** The default working directory of every sandbox. */
export const WORKSPACE_DIR = '/workspace';

/** Docker refuses a memory limit below 6 MiB (`linuxMinMemory`). */
export const ENGINE_MIN_MEMORY_BYTES = 6 * 1024 * 1024;

const MIB = 1024 * 1024;

/** Environment variable that marks every process an exec starts, so it can be found and killed. */
export const EXEC_MARKER_ENV = 'STACYVM_EXEC_ID';

/**
 * Keeps the container alive. Busybox `sleep` has no `infinity` on older
 * builds, hence the loop fallback; `Init: true` makes docker-init PID 1, so
 * the shell never has to reap zombies itself.
 */
export const KEEPALIVE_CMD: readonly string[] = [
  'sh',
  '-c',
  'sleep infinity 2>/dev/null || while :; do sleep 3600; done',
];

/** Label keys the provider owns; extra labels never override them. */
export const LABELS = {
  managed: 'stacyvm',
  provider: 'stacyvm.provider',
  sandbox: 'stacyvm.sandbox',
  image: 'stacyvm.image',
  metadata: 'stacyvm.metadata',
  ports: 'stacyvm.ports',
} as const;

// ---------------------------------------------------------------------------
// Names and references

/** Docker's container-name grammar; also keeps ids safe inside Engine API URLs. */
const RUNTIME_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;

/** Whether `id` can name a container (and so travel in an Engine API path). */
export function isValidRuntimeId(id: string): boolean {
  return RUNTIME_ID.test(id);
}

// The grammar of github.com/distribution/reference.
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = `${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*(?::[0-9]+)?`;
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const NAME = `(?:${DOMAIN}/)?${PATH_COMPONENT}(?:/${PATH_COMPONENT})*`;
const TAG = '[\\w][\\w.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const REFERENCE = new RegExp(`^(${NAME})(?::(${TAG}))?(?:@(${DIGEST}))?$`);
const MAX_NAME_LENGTH = 255;

/** An image reference split into its parts. */
export interface ImageReference {
  /** Repository, with registry if one was given (`ghcr.io/a/b`, `busybox`). */
  name: string;
  tag: string | undefined;
  digest: string | undefined;
  /** The reference to create containers from: tag `latest` when neither tag nor digest was given. */
  canonical: string;
}

/**
 * Parses an image reference, or returns why it is not one. Anything outside
 * the reference grammar (spaces, shell metacharacters, an upper-case
 * repository) is refused before it reaches the engine.
 */
export function parseImageReference(raw: string): ImageReference | { problem: string } {
  if (raw.length === 0) return { problem: 'image is required' };
  const m = REFERENCE.exec(raw);
  if (m === null) {
    return {
      problem:
        'not a valid image reference (expected [registry/]repository[:tag][@digest], lower-case repository)',
    };
  }
  const name = m[1] as string;
  if (name.length > MAX_NAME_LENGTH) {
    return { problem: `repository name longer than ${MAX_NAME_LENGTH} characters` };
  }
  const tag = m[2];
  const digest = m[3];
  const canonical =
    tag === undefined && digest === undefined
      ? `${name}:latest`
      : `${name}${tag === undefined ? '' : `:${tag}`}${digest === undefined ? '' : `@${digest}`}`;
  return { name, tag, digest, canonical };
}

/** {@link parseImageReference}, throwing BAD_REQUEST naming the image. */
export function checkImageReference(raw: string): ImageReference {
  const ref = parseImageReference(raw);
  if ('problem' in ref) {
    throw new StacyError('BAD_REQUEST', `invalid image ${JSON.stringify(raw)}: ${ref.problem}`, {
      details: [{ field: 'image', problem: ref.problem }],
    });
  }
  return ref;
}

/** A preview domain ends up inside a Traefik rule, so only hostname characters pass. */
export function isValidPreviewDomain(domain: string): boolean {
  return domain === '' || /^[a-zA-Z0-9](?:[a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?$/.test(domain);
}

// ---------------------------------------------------------------------------
// Resources

const MEMORY_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  m: MIB,
  g: 1024 * MIB,
  t: 1024 * 1024 * MIB,
  p: 1024 * 1024 * 1024 * MIB,
};

/**
 * Parses a Docker-style memory size (`512m`, `1.5g`, `256MiB`, `1073741824`)
 * into bytes, with binary units as `docker run --memory` does.
 */
export function parseMemoryBytes(raw: string | number): number {
  if (typeof raw === 'number') {
    if (!Number.isFinite(raw) || raw < 0) throw badRequest(`invalid memory size: ${raw}`);
    return Math.floor(raw);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(raw);
  if (m === null) {
    throw badRequest(`invalid memory size ${JSON.stringify(raw)}: expected e.g. 512m, 2g, 1048576`);
  }
  const unit = MEMORY_UNITS[(m[2] ?? '').toLowerCase()] ?? 1;
  return Math.floor(Number(m[1]) * unit);
}

/** Parses a vCPU count (`1`, `0.5`, `"2"`). */
export function parseCpus(raw: string | number): number {
  const n = typeof raw === 'number' ? raw : Number(raw.trim());
  if (!Number.isFinite(n) || n <= 0 || (typeof raw === 'string' && raw.trim() === '')) {
    throw badRequest(
      `invalid cpus ${JSON.stringify(raw)}: expected a positive number such as 1 or 0.5`,
    );
  }
  return n;
}

/** Engine limits derived from a spawn request and the provider's fallbacks. */
export interface ResourceLimits {
  memoryBytes: number;
  nanoCpus: number;
}

/**
 * Memory and CPU limits for a spawn. A request of 0 takes the fallback;
 * a negative or non-finite value, or memory below the engine minimum, is a
 * BAD_REQUEST naming the field.
 */
export function resolveResources(
  request: { memoryMb: number; vcpus: number },
  fallback: { memoryBytes: number; cpus: number },
): ResourceLimits {
  const { memoryMb, vcpus } = request;
  if (!Number.isFinite(memoryMb) || memoryMb < 0) {
    throw invalidField('memory_mb', 'must be a positive number of MiB');
  }
  if (!Number.isFinite(vcpus) || vcpus < 0) {
    throw invalidField('vcpus', 'must be a positive number');
  }
  const memoryBytes = memoryMb === 0 ? fallback.memoryBytes : Math.round(memoryMb * MIB);
  if (memoryBytes < ENGINE_MIN_MEMORY_BYTES) {
    throw invalidField(
      'memory_mb',
      `${memoryMb === 0 ? fallback.memoryBytes / MIB : memoryMb} MiB is below the Docker Engine minimum of 6 MiB`,
    );
  }
  const cpus = vcpus === 0 ? fallback.cpus : vcpus;
  const nanoCpus = Math.round(cpus * 1e9);
  if (nanoCpus < 1e7) throw invalidField('vcpus', 'must be at least 0.01');
  return { memoryBytes, nanoCpus };
}

/** Preview ports must be TCP port numbers. */
export function checkPorts(ports: readonly number[]): number[] {
  const out: number[] = [];
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) {
      throw invalidField('ports', `${String(p)} is not a port number (1-65535)`);
    }
    if (!out.includes(p)) out.push(p);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Labels and the create body

export interface LabelInput {
  sandboxId: string;
  /** The image as requested (before `:latest` was added). */
  image: string;
  metadata: Record<string, string>;
  ports: readonly number[];
  /** Preview domain; empty disables the Traefik labels. */
  previewDomain: string;
  extraLabels: Record<string, string>;
}

/**
 * The labels of a sandbox container: ours (`stacyvm*`), a Traefik router and
 * service per preview port (`<id>-<port>`, host `<port>-<id>.<domain>`), and
 * the caller's extra labels, which cannot override ours.
 */
export function buildLabels(input: LabelInput): Record<string, string> {
  const labels: Record<string, string> = { ...input.extraLabels };
  const id = input.sandboxId;
  labels[LABELS.managed] = 'true';
  labels[LABELS.provider] = 'docker';
  labels[LABELS.sandbox] = id;
  labels[LABELS.image] = input.image;
  labels[LABELS.ports] = input.ports.join(',');
  if (Object.keys(input.metadata).length > 0) {
    labels[LABELS.metadata] = JSON.stringify(input.metadata);
  } else {
    delete labels[LABELS.metadata];
  }
  if (input.previewDomain !== '' && input.ports.length > 0) {
    labels['traefik.enable'] = 'true';
    for (const port of input.ports) {
      const name = `${id}-${port}`;
      labels[`traefik.http.routers.${name}.rule`] =
        `Host(\`${port}-${id}.${input.previewDomain}\`)`;
      // With more than one service on a container Traefik cannot pick one itself.
      labels[`traefik.http.routers.${name}.service`] = name;
      labels[`traefik.http.services.${name}.loadbalancer.server.port`] = String(port);
    }
  }
  return labels;
}

/** `no-new-privileges` always; a seccomp option unless the engine's default profile is wanted. */
export function securityOptions(seccomp: string): string[] {
  const opts = ['no-new-privileges:true'];
  if (seccomp !== '' && seccomp !== 'default') opts.push(`seccomp=${seccomp}`);
  return opts;
}

/** Numeric identity the sandbox runs as. */
export interface SandboxUser {
  uid: number;
  gid: number;
}

/** The subset of the Engine's container create body the provider sets. */
export interface ContainerSpec {
  name: string;
  Image: string;
  Cmd: string[];
  User: string;
  WorkingDir: string;
  Hostname?: string;
  Labels: Record<string, string>;
  AttachStdin: false;
  AttachStdout: false;
  AttachStderr: false;
  Tty: false;
  OpenStdin: false;
  /** `{"3000/tcp": {}}` for each published preview port. */
  ExposedPorts?: Record<string, Record<string, never>>;
  HostConfig: {
    Init: true;
    Privileged: false;
    Memory: number;
    MemorySwap: number;
    NanoCpus: number;
    PidsLimit: number;
    CapDrop: string[];
    CapAdd: string[];
    SecurityOpt: string[];
    ReadonlyRootfs: boolean;
    NetworkMode: string;
    Runtime: string;
    AutoRemove: false;
    Mounts?: ScratchMount[];
    /** Preview ports published on the host's loopback, host port chosen by the Engine. */
    PortBindings?: Record<string, PortBinding[]>;
  };
}

/** One host binding of a container port. */
export interface PortBinding {
  HostIp: string;
  /** Empty: the Engine picks a free port. */
  HostPort: string;
}

/** A tmpfs-backed anonymous volume (see {@link scratchMounts}). */
export interface ScratchMount {
  Type: 'volume';
  /** Empty: an anonymous volume, removed with the container. */
  Source: '';
  Target: string;
  VolumeOptions: {
    /** False: the image's files at the target are copied in, as for any new volume. */
    NoCopy: false;
    Labels: Record<string, string>;
    DriverConfig: { Name: 'local'; Options: { type: 'tmpfs'; device: 'tmpfs'; o: string } };
  };
}

/**
 * Writable `/workspace` and `/tmp` for a read-only rootfs. They are
 * tmpfs-backed anonymous volumes rather than `HostConfig.Tmpfs`: the daemon
 * mounts volumes on the host, so the archive API (file upload and download)
 * reaches them, while a `Tmpfs` mount lives only in the container's mount
 * namespace and the archive API sees the empty directory under it. The
 * volumes are removed with the container (`remove?v=1`). Their pages are
 * charged to the host, not the container's memory limit, hence the size cap.
 */
export function scratchMounts(user: SandboxUser, sizeMb: number): ScratchMount[] {
  const size = `size=${Math.max(1, Math.floor(sizeMb))}m`;
  const mount = (target: string, o: string): ScratchMount => ({
    Type: 'volume',
    Source: '',
    Target: target,
    VolumeOptions: {
      NoCopy: false,
      Labels: {},
      DriverConfig: { Name: 'local', Options: { type: 'tmpfs', device: 'tmpfs', o } },
    },
  });
  return [
    mount(WORKSPACE_DIR, `uid=${user.uid},gid=${user.gid},mode=0755,nosuid,nodev,${size}`),
    mount('/tmp', `mode=1777,nosuid,nodev,${size}`),
  ];
}

export interface ContainerSpecInput {
  sandboxId: string;
  image: string;
  labels: Record<string, string>;
  user: SandboxUser;
  limits: ResourceLimits;
  pidsLimit: number;
  droppedCaps: readonly string[];
  addedCaps: readonly string[];
  /** `default`, `unconfined`, or a profile's JSON text. */
  seccomp: string;
  readOnlyRootfs: boolean;
  /** Size of each scratch tmpfs when the rootfs is read-only. */
  scratchSizeMb: number;
  networkMode: string;
  runtime: string;
  /**
   * Preview ports to publish on 127.0.0.1 with Engine-chosen host ports, so
   * the preview gateway on this host reaches them. Ignored for network modes
   * that cannot publish ports (`none`, `host`, `container:…`).
   */
  publishPorts?: readonly number[];
}

/** Whether containers in this network mode can have published ports. */
export function canPublishPorts(networkMode: string): boolean {
  const m = networkMode.trim().toLowerCase();
  return m !== 'none' && m !== 'host' && !m.startsWith('container:');
}

/** Host address previews are published on: loopback only, never every interface. */
export const PREVIEW_PUBLISH_HOST = '127.0.0.1';

const HOSTNAME = /^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;

/** The Engine create body of a sandbox container: locked down, kept alive, named after the sandbox. */
export function buildContainerSpec(input: ContainerSpecInput): ContainerSpec {
  const spec: ContainerSpec = {
    name: input.sandboxId,
    Image: input.image,
    Cmd: [...KEEPALIVE_CMD],
    User: `${input.user.uid}:${input.user.gid}`,
    WorkingDir: WORKSPACE_DIR,
    Labels: input.labels,
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    Tty: false,
    OpenStdin: false,
    HostConfig: {
      Init: true,
      Privileged: false,
      Memory: input.limits.memoryBytes,
      // Equal to Memory: no swap beyond the limit.
      MemorySwap: input.limits.memoryBytes,
      NanoCpus: input.limits.nanoCpus,
      PidsLimit: input.pidsLimit,
      CapDrop: [...input.droppedCaps],
      CapAdd: [...input.addedCaps],
      SecurityOpt: securityOptions(input.seccomp),
      ReadonlyRootfs: input.readOnlyRootfs,
      NetworkMode: input.networkMode,
      Runtime: input.runtime,
      AutoRemove: false,
    },
  };
  if (HOSTNAME.test(input.sandboxId)) spec.Hostname = input.sandboxId;
  const publish = input.publishPorts ?? [];
  if (publish.length > 0 && canPublishPorts(input.networkMode)) {
    spec.ExposedPorts = {};
    spec.HostConfig.PortBindings = {};
    for (const port of publish) {
      spec.ExposedPorts[`${port}/tcp`] = {};
      spec.HostConfig.PortBindings[`${port}/tcp`] = [
        { HostIp: PREVIEW_PUBLISH_HOST, HostPort: '' },
      ];
    }
  }
  if (input.readOnlyRootfs) {
    spec.HostConfig.Mounts = scratchMounts(input.user, input.scratchSizeMb);
  }
  return spec;
}

// ---------------------------------------------------------------------------
// Users

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}

/** Parses `/etc/passwd` text; malformed lines are skipped. */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid) || f[0] === '') continue;
    out.push({ name: f[0] as string, uid, gid });
  }
  return out;
}

const NOBODY_UID = 65534;

/**
 * The automatic choice of sandbox user: a non-root account named `sandbox`,
 * else the lowest regular account (uid 1000 or above, `nobody` excluded),
 * else root. Root inside the container still has no capabilities.
 */
export function chooseSandboxUser(passwd: readonly PasswdEntry[]): SandboxUser {
  const named = passwd.find((e) => e.name === 'sandbox' && e.uid !== 0);
  if (named !== undefined) return { uid: named.uid, gid: named.gid };
  const regular = passwd
    .filter((e) => e.uid >= 1000 && e.uid !== NOBODY_UID && e.name !== 'nobody')
    .sort((a, b) => a.uid - b.uid)[0];
  if (regular !== undefined) return { uid: regular.uid, gid: regular.gid };
  return { uid: 0, gid: 0 };
}

/**
 * Resolves a Docker user spec (`name`, `uid`, `name:group`, `uid:gid`) to
 * numbers using the image's passwd (groups by number only). Returns a
 * problem when a name is unknown.
 */
export function resolveUserSpec(
  spec: string,
  passwd: readonly PasswdEntry[],
): SandboxUser | { problem: string } {
  const [userPart = '', groupPart] = spec.split(':', 2);
  let uid: number;
  let gid: number | undefined;
  if (/^\d+$/.test(userPart)) {
    uid = Number(userPart);
    gid = passwd.find((e) => e.uid === uid)?.gid;
  } else {
    const entry = passwd.find((e) => e.name === userPart);
    if (entry === undefined)
      return { problem: `user ${JSON.stringify(userPart)} is not in the image's /etc/passwd` };
    uid = entry.uid;
    gid = entry.gid;
  }
  if (groupPart !== undefined && groupPart !== '') {
    if (!/^\d+$/.test(groupPart)) {
      return { problem: `group ${JSON.stringify(groupPart)} must be numeric` };
    }
    gid = Number(groupPart);
  }
  return { uid, gid: gid ?? uid };
}

/** A user spec that needs no passwd lookup (`1000:1000`), or undefined. */
export function numericUser(spec: string): SandboxUser | undefined {
  const m = /^(\d+):(\d+)$/.exec(spec);
  return m === null ? undefined : { uid: Number(m[1]), gid: Number(m[2]) };
}

/** Directories a non-root sandbox needs fixed before start. */
export interface DirFixes {
  /** `/workspace` is missing, not a directory, or not the user's to write. */
  workspace: boolean;
  /** `/tmp` is missing or not sticky and world-writable. */
  tmp: boolean;
}

/**
 * Which of `/workspace` and `/tmp` a non-root user needs fixed, from the
 * image's tar header of `/workspace` and its path stat of `/tmp` (undefined
 * when missing).
 */
export function dirFixes(
  user: SandboxUser,
  workspace: { uid: number; mode: number; isDir: boolean } | undefined,
  tmp: PathStat | undefined,
): DirFixes {
  return {
    workspace:
      workspace === undefined ||
      !workspace.isDir ||
      workspace.uid !== user.uid ||
      (workspace.mode & 0o700) !== 0o700,
    tmp: tmp === undefined || !tmp.isDir || (tmp.perm & 0o1777) !== 0o1777,
  };
}

// ---------------------------------------------------------------------------
// Container state

/** The engine's view of a container's state. */
export interface EngineState {
  status: string;
  running: boolean;
  paused: boolean;
  restarting: boolean;
}

/** Maps the engine's state to the provider's state words. */
export function mapContainerState(state: EngineState): string {
  if (state.paused) return 'paused';
  if (state.restarting) return 'restarting';
  switch (state.status) {
    case 'running':
      return 'running';
    case 'paused':
      return 'paused';
    case 'restarting':
      return 'restarting';
    case 'exited':
    case 'dead':
      return 'stopped';
    case 'created':
      return 'creating';
    case 'removing':
      return 'destroying';
    default:
      return state.running ? 'running' : 'unknown';
  }
}

// ---------------------------------------------------------------------------
// Exec

/** One demultiplexed piece of an exec's output. */
export interface DemuxFrame {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

/**
 * Incremental parser of the Engine's multiplexed stream (8-byte headers:
 * stream type, 3 zero bytes, big-endian length). Frame bodies are passed on
 * as they arrive, so a large frame is never buffered whole. A header whose
 * stream type is not 0-2 means the stream is raw (TTY): from there on
 * everything is stdout.
 */
export class ExecDemuxer {
  private header: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private current: 'stdout' | 'stderr' = 'stdout';
  private raw = false;

  push(chunk: Buffer): DemuxFrame[] {
    const frames: DemuxFrame[] = [];
    if (this.raw) {
      if (chunk.byteLength > 0) frames.push({ stream: 'stdout', data: chunk });
      return frames;
    }
    let pos = 0;
    while (pos < chunk.byteLength) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.byteLength - pos);
        frames.push({ stream: this.current, data: chunk.subarray(pos, pos + take) });
        this.remaining -= take;
        pos += take;
        continue;
      }
      const need = 8 - this.header.byteLength;
      const part = chunk.subarray(pos, pos + need);
      this.header = this.header.byteLength === 0 ? part : Buffer.concat([this.header, part]);
      pos += part.byteLength;
      if (this.header.byteLength < 8) break;
      const type = this.header[0] as number;
      if (type > 2) {
        this.raw = true;
        frames.push({ stream: 'stdout', data: Buffer.concat([this.header, chunk.subarray(pos)]) });
        this.header = Buffer.alloc(0);
        return frames;
      }
      this.current = type === 2 ? 'stderr' : 'stdout';
      this.remaining = this.header.readUInt32BE(4);
      this.header = Buffer.alloc(0);
    }
    return frames;
  }
}

/** Splits a whole multiplexed buffer (e.g. `docker logs`) into frames. */
export function demuxAll(buf: Buffer): DemuxFrame[] {
  return new ExecDemuxer().push(buf);
}

/** Lines of container logs, in order, without trailing empty line; the last `n`. */
export function logLines(frames: readonly DemuxFrame[], n: number): string[] {
  const text = Buffer.concat(frames.map((f) => f.data)).toString('utf8');
  const lines = text.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return n <= 0 ? [] : lines.slice(-n);
}

/**
 * The exec environment as `K=V`, with the marker variable last so a
 * request cannot shadow it. Keys must be non-empty, without `=` or NUL.
 */
export function buildExecEnv(env: Record<string, string>, marker: string): string[] {
  const out: string[] = [];
  for (const [key, value] of Object.entries(env)) {
    if (key.length === 0 || key.includes('=') || key.includes('\0') || value.includes('\0')) {
      throw invalidField(
        'env',
        `${JSON.stringify(key.slice(0, 64))} is not a valid variable (no "=", no NUL)`,
      );
    }
    if (key === EXEC_MARKER_ENV) continue;
    out.push(`${key}=${value}`);
  }
  out.push(`${EXEC_MARKER_ENV}=${marker}`);
  return out;
}

/**
 * Kills every process whose environment carries the exec's marker: the
 * command, its children and its background jobs, even ones that left the
 * process group. Repeats until none is left, since a dying shell may still
 * fork. Runs as the sandbox user: with every capability dropped, root in
 * the container could neither read another user's `/proc/<pid>/environ`
 * nor signal its processes.
 */
export const KILL_SCRIPT = [
  'm="$1"',
  'i=0',
  'while [ "$i" -lt 50 ]; do',
  `  p=$(grep -lzxF -e "${EXEC_MARKER_ENV}=$m" /proc/[0-9]*/environ 2>/dev/null | sed -e 's|^/proc/||' -e 's|/environ$||')`,
  '  [ -z "$p" ] && exit 0',
  '  kill -KILL $p 2>/dev/null',
  '  i=$((i + 1))',
  'done',
  'exit 1',
].join('\n');

/** argv of a constant script with its arguments passed as positional parameters, never spliced in. */
export function scriptArgv(script: string, name: string, args: readonly string[]): string[] {
  return ['sh', '-c', script, name, ...args];
}

/** argv of the killer exec for one marker. */
export function killArgv(marker: string): string[] {
  return scriptArgv(KILL_SCRIPT, 'stacyvm-kill', [marker]);
}

/** How an exec that the runtime could not start failed. */
export type OciFailure = 'workdir' | 'not_found' | 'permission' | 'other';

/** Prefix of the message the Engine writes to the stream when runc cannot start the process. */
export const OCI_FAILURE_PREFIX = 'OCI runtime exec failed';

/** Classifies the runtime's start failure text (exit code 126 from exec inspect). */
export function classifyOciFailure(text: string): OciFailure {
  if (/chdir to cwd/i.test(text)) return 'workdir';
  if (/executable file not found|no such file or directory/i.test(text)) return 'not_found';
  if (/permission denied/i.test(text)) return 'permission';
  return 'other';
}

// ---------------------------------------------------------------------------
// Files

/**
 * Prepares a write: creates the parent, refuses a directory target, and
 * checks the sandbox user may write there (the upload itself goes through
 * the daemon, which could write anywhere). `$1` parent, `$2` target.
 */
export const WRITE_PREP_SCRIPT = [
  'mkdir -p -- "$1" || exit 10',
  '[ -d "$2" ] && exit 11',
  '[ -w "$1" ] || exit 12',
  'exit 0',
].join('\n');

/**
 * Joins the parts of a large upload (`$1/p00000000`, …) into `$2` with mode
 * `$3`, removing each part once copied so the disk holds little more than
 * one copy, then renames over the target and removes the part directory.
 */
export const ASSEMBLE_SCRIPT = [
  'd="$1"',
  'o="$d/joined"',
  'rc=0',
  ': > "$o" || rc=20',
  'if [ "$rc" -eq 0 ]; then',
  '  for p in "$d"/p*; do',
  '    [ -f "$p" ] || continue',
  '    if cat -- "$p" >> "$o"; then rm -f -- "$p"; else rc=21; break; fi',
  '  done',
  'fi',
  'if [ "$rc" -eq 0 ]; then chmod "$3" "$o" && mv -f -- "$o" "$2" || rc=22; fi',
  'rm -rf -- "$d"',
  'exit "$rc"',
].join('\n');

/**
 * Lists a directory: names NUL-terminated, an empty name as separator,
 * then one `|<hex mode> <size> <mtime> <path>` line per entry. The names
 * tell where each stat line's path ends, even when a name holds a newline.
 */
export const LIST_SCRIPT = [
  '[ -e "$1" ] || [ -L "$1" ] || exit 2',
  '[ -d "$1" ] || exit 20',
  '{ [ -r "$1" ] && [ -x "$1" ]; } || exit 13',
  'find -H "$1" -mindepth 1 -maxdepth 1 -print0',
  "printf '\\000'",
  'find -H "$1" -mindepth 1 -maxdepth 1 -exec stat -c \'|%f %s %Y %n\' {} +',
  'exit 0',
].join('\n');

/**
 * Moves `$1` to `$2` with rename semantics (`$3` is the parent of `$2`):
 * a directory replaces an empty directory, a file never replaces a
 * directory or the other way round.
 */
export const MOVE_SCRIPT = [
  'mkdir -p -- "$3" || exit 10',
  'if [ -d "$2" ] && [ ! -L "$2" ]; then',
  '  if [ -d "$1" ] && [ ! -L "$1" ]; then rmdir -- "$2" 2>/dev/null || exit 11; else exit 12; fi',
  'elif [ -e "$2" ] || [ -L "$2" ]; then',
  '  if [ -d "$1" ] && [ ! -L "$1" ]; then exit 13; fi',
  'fi',
  'exec mv -f -- "$1" "$2"',
].join('\n');

/** `childPath('/', 'a')` is `/a`; `childPath('/w', 'a')` is `/w/a`. */
export function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

export function baseName(path: string): string {
  return path === '/' ? '/' : path.slice(path.lastIndexOf('/') + 1);
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

function byCodeUnit(a: string, b: string): number {
  if (a < b) return -1;
  return a > b ? 1 : 0;
}

/**
 * Parses {@link LIST_SCRIPT} output for directory `dir` (normalised).
 * Entries that vanished between the two passes are dropped; the result is
 * sorted by name.
 */
export function parseListOutput(out: Buffer, dir: string): FileEntry[] {
  const sep = out.indexOf(Buffer.from([0, 0]));
  // Names section: NUL-terminated, ended by an empty name (a lone NUL at the start when empty).
  let namesEnd: number;
  let statsStart: number;
  if (out[0] === 0) {
    namesEnd = 0;
    statsStart = 1;
  } else {
    if (sep < 0) return [];
    namesEnd = sep + 1;
    statsStart = sep + 2;
  }
  const known = new Set(
    out
      .subarray(0, namesEnd)
      .toString('utf8')
      .split('\0')
      .filter((n) => n.length > 0),
  );
  const text = out.subarray(statsStart).toString('utf8');
  const entries = new Map<string, FileEntry>();
  let pos = 0;
  const head = /^\|([0-9a-fA-F]+) (\d+) (\d+) /;
  while (pos < text.length) {
    const nl = text.indexOf('\n', pos);
    const line = text.slice(pos, nl < 0 ? text.length : nl);
    const m = head.exec(line);
    if (m === null) {
      pos = nl < 0 ? text.length : nl + 1;
      continue;
    }
    const nameStart = pos + m[0].length;
    // The path ends at the first newline after which the text so far is a name find printed.
    let end = nl < 0 ? text.length : nl;
    let path = text.slice(nameStart, end);
    while (!known.has(path)) {
      const next = text.indexOf('\n', end + 1);
      if (next < 0) break;
      const candidate = text.slice(nameStart, next);
      if (known.has(candidate)) {
        end = next;
        path = candidate;
        break;
      }
      end = next;
    }
    if (!known.has(path)) {
      // Created between the passes (or otherwise unknown): trust the first line only.
      end = nl < 0 ? text.length : nl;
      path = text.slice(nameStart, end);
    }
    pos = end + 1;
    const rawMode = parseInt(m[1] as string, 16);
    const name = path.slice(path.lastIndexOf('/') + 1);
    if (name.length === 0) continue;
    entries.set(name, {
      path: childPath(dir, name),
      name,
      size: Number(m[2]),
      mode: formatFileMode(rawMode),
      isDir: (rawMode & S_IFMT) === S_IFDIR,
      modTimeMs: Number(m[3]) * 1000,
    });
  }
  return [...entries.values()].sort((a, b) => byCodeUnit(a.name, b.name));
}

/** Splits NUL-terminated output (find -print0) into paths. */
export function splitNul(out: Buffer): string[] {
  return out
    .toString('utf8')
    .split('\0')
    .filter((s) => s.length > 0);
}

/**
 * How deep a `find` from `base` must go for `pattern` (both normalised):
 * the number of segments below the base, or undefined (unbounded) when the
 * pattern has a `**` segment.
 */
export function globMaxDepth(pattern: string, base: string): number | undefined {
  const segs = pattern.split('/').filter((s) => s.length > 0);
  if (segs.includes('**')) return undefined;
  const baseSegs = base.split('/').filter((s) => s.length > 0);
  return Math.max(0, segs.length - baseSegs.length);
}

// Go's os.FileMode type bits, as the Engine reports them in a path stat.
const GO_MODE_DIR = 2 ** 31;
const GO_MODE_SYMLINK = 2 ** 27;
const GO_MODE_SETUID = 2 ** 23;
const GO_MODE_SETGID = 2 ** 22;
const GO_MODE_STICKY = 2 ** 20;
/** Device, named pipe, socket, char device, irregular. */
const GO_MODE_SPECIAL = [2 ** 26, 2 ** 25, 2 ** 24, 2 ** 21, 2 ** 19];

function hasBit(mode: number, bit: number): boolean {
  return Math.floor(mode / bit) % 2 === 1;
}

/** A path stat from the archive API (`X-Docker-Container-Path-Stat`). */
export interface PathStat {
  name: string;
  size: number;
  /** Unix permission bits including setuid/setgid/sticky. */
  perm: number;
  isDir: boolean;
  isSymlink: boolean;
  isRegular: boolean;
  modTimeMs: number;
  /** The fully resolved in-container target when the path is a symlink, else empty. */
  linkTarget: string;
}

/** Parses the base64 JSON of `X-Docker-Container-Path-Stat`; undefined when it is malformed. */
export function parsePathStatHeader(header: string): PathStat | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(header, 'base64').toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null) return undefined;
  const rec = raw as Record<string, unknown>;
  const mode = typeof rec['mode'] === 'number' ? rec['mode'] >>> 0 : undefined;
  if (mode === undefined) return undefined;
  const isDir = hasBit(mode, GO_MODE_DIR);
  const isSymlink = hasBit(mode, GO_MODE_SYMLINK);
  const special = GO_MODE_SPECIAL.some((bit) => hasBit(mode, bit));
  let perm = mode % 0o1000;
  if (hasBit(mode, GO_MODE_SETUID)) perm += 0o4000;
  if (hasBit(mode, GO_MODE_SETGID)) perm += 0o2000;
  if (hasBit(mode, GO_MODE_STICKY)) perm += 0o1000;
  const mtime = typeof rec['mtime'] === 'string' ? Date.parse(rec['mtime']) : NaN;
  return {
    name: typeof rec['name'] === 'string' ? rec['name'] : '',
    size: typeof rec['size'] === 'number' ? rec['size'] : 0,
    perm,
    isDir,
    isSymlink,
    isRegular: !isDir && !isSymlink && !special,
    modTimeMs: Number.isFinite(mtime) ? mtime : 0,
    linkTarget: typeof rec['linkTarget'] === 'string' ? rec['linkTarget'] : '',
  };
}

/** A {@link FileEntry} for in-sandbox `path` from a path stat. */
export function entryFromPathStat(path: string, st: PathStat): FileEntry {
  return {
    path,
    name: baseName(path),
    size: st.size,
    mode: formatFileMode(st.perm),
    isDir: st.isDir,
    modTimeMs: st.modTimeMs,
  };
}

/** What a failed file command's stderr says went wrong. */
export type FsFailure =
  | 'not_found'
  | 'permission'
  | 'read_only'
  | 'not_dir'
  | 'not_empty'
  | 'exists'
  | 'no_space'
  | 'other';

export function classifyFsStderr(stderr: string): FsFailure {
  if (/No such file or directory/i.test(stderr)) return 'not_found';
  if (/Read-only file system/i.test(stderr)) return 'read_only';
  if (/Permission denied|Operation not permitted/i.test(stderr)) return 'permission';
  if (/Not a directory/i.test(stderr)) return 'not_dir';
  if (/Directory not empty/i.test(stderr)) return 'not_empty';
  if (/File exists/i.test(stderr)) return 'exists';
  if (/No space left|Disk quota/i.test(stderr)) return 'no_space';
  return 'other';
}

/** The catalog error for a failed file command on `path`. */
export function fsCommandError(stderr: string, path: string, what: string): StacyError {
  const detail = stderr.trim().split('\n').slice(-1)[0] ?? '';
  switch (classifyFsStderr(stderr)) {
    case 'not_found':
      return new StacyError('NOT_FOUND', `no such file: ${path}`);
    case 'permission':
      return new StacyError('FORBIDDEN', `permission denied: ${path}`);
    case 'read_only':
      return new StacyError('FORBIDDEN', `read-only file system: ${path}`);
    case 'not_dir':
      return new StacyError('BAD_REQUEST', `not a directory: ${path}`);
    case 'not_empty':
      return new StacyError('BAD_REQUEST', `directory not empty: ${path}`);
    case 'exists':
      return new StacyError('CONFLICT', `already exists: ${path}`);
    case 'no_space':
      return new StacyError('RESOURCE_LIMIT', `no space left writing ${path}`, {
        retryable: false,
      });
    case 'other':
      return new StacyError('INTERNAL_ERROR', `${what} ${path} failed: ${detail}`);
  }
}

// ---------------------------------------------------------------------------
// Stats

/** The parts of the Engine's stats document the provider reads. */
export interface RawStats {
  cpu_stats?: {
    cpu_usage?: { total_usage?: number; percpu_usage?: number[] };
    system_cpu_usage?: number;
    online_cpus?: number;
  };
  precpu_stats?: {
    cpu_usage?: { total_usage?: number };
    system_cpu_usage?: number;
  };
  memory_stats?: {
    usage?: number;
    limit?: number;
    stats?: Record<string, number | undefined>;
  };
}

/**
 * CPU% as the reference computes it (container delta over system delta,
 * times online CPUs, times 100) and memory in use without page cache
 * (`cache` on cgroup v1, `file` on v2).
 */
export function computeStats(raw: RawStats): ProviderStats {
  const cpu = raw.cpu_stats;
  const pre = raw.precpu_stats;
  const cpuDelta = (cpu?.cpu_usage?.total_usage ?? 0) - (pre?.cpu_usage?.total_usage ?? 0);
  const sysDelta = (cpu?.system_cpu_usage ?? 0) - (pre?.system_cpu_usage ?? 0);
  const online = cpu?.online_cpus ?? cpu?.cpu_usage?.percpu_usage?.length ?? 1;
  const cpuPct = cpuDelta > 0 && sysDelta > 0 ? (cpuDelta / sysDelta) * online * 100 : 0;
  const mem = raw.memory_stats;
  const s = mem?.stats ?? {};
  const cache = s['cache'] ?? s['file'] ?? s['total_inactive_file'] ?? s['inactive_file'] ?? 0;
  const usage = mem?.usage ?? 0;
  return {
    cpuPct,
    memBytes: Math.max(0, usage - cache),
    memLimitBytes: mem?.limit ?? 0,
  };
}

// ---------------------------------------------------------------------------
// Engine errors

/** What a failed Engine call tells us. */
export interface EngineFailure {
  statusCode: number | undefined;
  /** Node's system error code (`ECONNREFUSED`, `ENOENT`, …) for transport failures. */
  errno: string | undefined;
  /** The daemon's own message when it sent one. */
  message: string;
  aborted: boolean;
}

const TRANSPORT_CODES = new Set([
  'ECONNREFUSED',
  'ENOENT',
  'EACCES',
  'EPERM',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENOTSOCK',
  'ECONNABORTED',
]);

/** Reads a dockerode / docker-modem / Node error into an {@link EngineFailure}. */
export function engineFailure(err: unknown): EngineFailure {
  const rec = typeof err === 'object' && err !== null ? (err as Record<string, unknown>) : {};
  const statusCode = typeof rec['statusCode'] === 'number' ? rec['statusCode'] : undefined;
  const errno = typeof rec['code'] === 'string' ? rec['code'] : undefined;
  const json = rec['json'];
  let message = err instanceof Error ? err.message : String(err);
  if (typeof json === 'object' && json !== null) {
    const m = (json as Record<string, unknown>)['message'];
    if (typeof m === 'string' && m !== '') message = m;
  } else if (typeof json === 'string' && json.trim() !== '') {
    message = json.trim();
  }
  const aborted = rec['name'] === 'AbortError' || errno === 'ABORT_ERR';
  return { statusCode, errno, message: message.trim(), aborted };
}

/** What an Engine call was about, for the error message. */
export interface EngineErrorContext {
  /** The sandbox the call acted on; a 404 then means the sandbox is gone. */
  sandboxId?: string;
  /** Describes the daemon in UNAVAILABLE messages (socket path or host). */
  endpoint: string;
  /** What was being done, e.g. `create container`. */
  action: string;
  /** Code for a 404 when it is not about a container (e.g. a missing path). */
  notFound?: { code: ErrorCode; message: string };
}

/**
 * Maps an Engine failure to the catalog: a transport failure is UNAVAILABLE
 * naming the daemon, 404 NOT_FOUND (`sandbox not found: <id>` when about a
 * container), 409 CONFLICT, 400 BAD_REQUEST, 403 FORBIDDEN, the rest
 * INTERNAL_ERROR with the raw error as cause.
 */
export function mapEngineError(err: unknown, ctx: EngineErrorContext): StacyError {
  if (err instanceof StacyError) return err;
  const f = engineFailure(err);
  if (f.aborted) return new StacyError('TIMEOUT', `${ctx.action} was cancelled`, { cause: err });
  if (f.statusCode === undefined && f.errno !== undefined && TRANSPORT_CODES.has(f.errno)) {
    return new StacyError(
      'UNAVAILABLE',
      `Docker daemon at ${ctx.endpoint} does not answer: ${f.message} (is dockerd running?)`,
      { cause: err },
    );
  }
  switch (f.statusCode) {
    case 404:
      if (ctx.notFound !== undefined && !/no such container/i.test(f.message)) {
        return new StacyError(ctx.notFound.code, ctx.notFound.message, { cause: err });
      }
      if (ctx.sandboxId !== undefined) {
        return new StacyError('NOT_FOUND', `sandbox not found: ${ctx.sandboxId}`, { cause: err });
      }
      return new StacyError('NOT_FOUND', `${ctx.action}: ${f.message}`, { cause: err });
    case 409:
      return new StacyError('CONFLICT', `${ctx.action}: ${f.message}`, { cause: err });
    case 400:
      return new StacyError('BAD_REQUEST', `${ctx.action}: ${f.message}`, { cause: err });
    case 403:
      return new StacyError('FORBIDDEN', `${ctx.action}: ${f.message}`, { cause: err });
    case undefined:
    default:
      return new StacyError('INTERNAL_ERROR', `${ctx.action} failed: ${f.message}`, {
        cause: err,
      });
  }
}

// ---------------------------------------------------------------------------
// Preview upstreams

/** How the preview gateway reaches a container port: see `preview.upstream`. */
export type PreviewUpstreamMode = 'auto' | 'published' | 'container_ip';

/** One host binding of a container port, as inspect reports it. */
export interface PublishedPort {
  hostIp: string;
  hostPort: string;
}

/** What inspect tells about how a container can be reached. */
export interface ContainerReach {
  /** `NetworkSettings.Ports`: `"3000/tcp"` → its host bindings (empty when unpublished). */
  ports: Record<string, PublishedPort[]>;
  /** The container's addresses on its networks (empty for `none`/`host`). */
  ipAddresses: string[];
}

/** The ports a container's `stacyvm.ports` label declares. */
export function declaredPorts(labels: Record<string, string>): number[] {
  const raw = labels[LABELS.ports] ?? '';
  return raw
    .split(',')
    .map((p) => Number(p.trim()))
    .filter((p) => Number.isInteger(p) && p >= 1 && p <= 65535);
}

/**
 * Where the gateway on this host reaches `port` of a sandbox container, or a
 * problem in words. A port not declared at spawn is refused in every mode,
 * so an undeclared service never becomes reachable by accident.
 */
export function previewEndpointOf(input: {
  sandboxId: string;
  port: number;
  declared: readonly number[];
  mode: PreviewUpstreamMode;
  reach: ContainerReach;
}): { host: string; port: number } | { problem: string } {
  const { sandboxId, port, declared, mode, reach } = input;
  if (!declared.includes(port)) {
    const list = declared.length === 0 ? 'none' : declared.join(', ');
    return {
      problem:
        `port ${port} of sandbox ${sandboxId} is not declared, so it is not reachable: ` +
        `declare it in "ports" when spawning the sandbox (declared: ${list})`,
    };
  }
  if (mode !== 'container_ip') {
    const bindings = reach.ports[`${port}/tcp`] ?? [];
    const loopback =
      bindings.find((b) => b.hostIp === PREVIEW_PUBLISH_HOST) ??
      bindings.find((b) => b.hostIp === '' || b.hostIp === '0.0.0.0');
    const hostPort = loopback === undefined ? NaN : Number(loopback.hostPort);
    if (Number.isInteger(hostPort) && hostPort > 0) {
      return { host: PREVIEW_PUBLISH_HOST, port: hostPort };
    }
    if (mode === 'published') {
      return {
        problem: `port ${port} of sandbox ${sandboxId} is not published on this host (network mode without port publishing, or a sandbox created before previews were enabled)`,
      };
    }
  }
  const ip = reach.ipAddresses.find((a) => a !== '');
  if (ip === undefined) {
    return { problem: `sandbox ${sandboxId} has no network address to reach port ${port} on` };
  }
  return { host: ip, port };
}
