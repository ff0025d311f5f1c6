/**
 * The narrow slice of the Docker Engine API the Docker provider uses, and
 * its dockerode adapter. Failures are passed through as dockerode raises
 * them (`statusCode`, `json.message`, or a Node transport `code`); the
 * provider maps them with `mapEngineError`.
 */
import type { Readable } from 'node:stream';
import Docker from 'dockerode';
import type { ContainerReach, ContainerSpec, EngineState, RawStats } from './docker-spec.js';

/** What the provider needs to know about an image. */
export interface ImageFacts {
  id: string;
  /** The image's `USER`, empty when unset. */
  user: string;
}

/** What the provider needs to know about a container. */
export interface ContainerFacts {
  id: string;
  /** With the leading slash, as the Engine reports it (`/sb-1234abcd`). */
  name: string;
  labels: Record<string, string>;
  /** `Config.User`. */
  user: string;
  state: EngineState;
  /** Published ports and network addresses; absent when the engine did not report them. */
  reach?: ContainerReach;
}

export interface ContainerSummary {
  id: string;
  /** Names without the leading slash. */
  names: string[];
  labels: Record<string, string>;
  state: string;
}

export interface ExecCreate {
  cmd: string[];
  env: string[];
  workingDir: string;
}

export interface ExecFacts {
  running: boolean;
  exitCode: number | null;
}

/** One line of pull progress, as the Engine reports it. */
export interface PullProgressLine {
  status: string;
  id?: string;
  current?: number;
  total?: number;
}

/** The Engine operations the Docker provider uses; every one may be cancelled. */
export interface DockerEngine {
  ping(signal?: AbortSignal): Promise<void>;
  /** Undefined when no such image is present locally. */
  inspectImage(ref: string, signal?: AbortSignal): Promise<ImageFacts | undefined>;
  /** Pulls `ref`, reporting progress; rejects with the Engine's error (also one sent mid-stream). */
  pullImage(
    ref: string,
    onProgress: (line: PullProgressLine) => void,
    signal?: AbortSignal,
  ): Promise<void>;
  createContainer(spec: ContainerSpec, signal?: AbortSignal): Promise<string>;
  /** Creates a container from a raw body (the user probe, which is not a sandbox). */
  createProbe(image: string, labels: Record<string, string>, signal?: AbortSignal): Promise<string>;
  startContainer(id: string, signal?: AbortSignal): Promise<void>;
  /** Undefined when no such container exists. */
  inspectContainer(id: string, signal?: AbortSignal): Promise<ContainerFacts | undefined>;
  /** Force-removes with anonymous volumes; false when it was already gone. */
  removeContainer(id: string, signal?: AbortSignal): Promise<boolean>;
  listContainers(labelFilters: string[], signal?: AbortSignal): Promise<ContainerSummary[]>;
  /** Multiplexed stdout/stderr of the last `tail` lines. */
  containerLogs(id: string, tail: number, signal?: AbortSignal): Promise<Buffer>;
  /** One stats sample, with `precpu_stats` filled by the Engine. */
  containerStats(id: string, signal?: AbortSignal): Promise<RawStats>;
  createExec(id: string, exec: ExecCreate, signal?: AbortSignal): Promise<string>;
  /** The multiplexed output stream of a started exec. */
  startExec(execId: string, signal?: AbortSignal): Promise<Readable>;
  inspectExec(execId: string, signal?: AbortSignal): Promise<ExecFacts>;
  /** Extracts a tar stream into directory `dir` of the container. */
  putArchive(id: string, dir: string, tar: Readable, signal?: AbortSignal): Promise<void>;
  /** A tar stream of `path`. */
  getArchive(id: string, path: string, signal?: AbortSignal): Promise<Readable>;
  /**
   * The base64 JSON `X-Docker-Container-Path-Stat` of `path`; undefined on
   * 404, which the Engine sends both for a missing path and a missing
   * container (a HEAD response has no body to tell them apart).
   */
  statPath(id: string, path: string, signal?: AbortSignal): Promise<string | undefined>;
}

export interface DockerodeEngineOptions {
  /** Unix socket of the daemon; when absent dockerode follows `DOCKER_HOST`. */
  socketPath?: string;
}

function statusOf(err: unknown): number | undefined {
  if (typeof err === 'object' && err !== null && 'statusCode' in err) {
    return typeof err.statusCode === 'number' ? err.statusCode : undefined;
  }
  return undefined;
}

/**
 * Adds `abortSignal` only when there is one: docker-modem would otherwise
 * put an empty `abortSignal=` into the query string.
 */
function sig<T extends object>(
  opts: T,
  signal: AbortSignal | undefined,
): T & { abortSignal?: AbortSignal } {
  return signal === undefined ? opts : { ...opts, abortSignal: signal };
}

function asReadable(stream: NodeJS.ReadableStream): Readable {
  return stream as Readable;
}

/** A pull stream's error line (`{"error": "..."}`), if it is one. */
function pullError(line: Record<string, unknown>): Error | undefined {
  const e = line['error'];
  if (typeof e !== 'string') return undefined;
  const err = new Error(e) as Error & { json: unknown };
  err.json = { message: e };
  return err;
}

/** Published ports and addresses from an inspect answer (fields may be null or missing). */
function reachOf(info: Docker.ContainerInspectInfo): ContainerReach {
  const ports: ContainerReach['ports'] = {};
  const settings = info.NetworkSettings as Partial<Docker.ContainerInspectInfo['NetworkSettings']>;
  for (const [key, bindings] of Object.entries(settings.Ports ?? {})) {
    const list: unknown = bindings;
    ports[key] = Array.isArray(list)
      ? list.map((b: { HostIp?: unknown; HostPort?: unknown }) => ({
          hostIp: typeof b.HostIp === 'string' ? b.HostIp : '',
          hostPort: typeof b.HostPort === 'string' ? b.HostPort : '',
        }))
      : [];
  }
  const ipAddresses: string[] = [];
  for (const net of Object.values(settings.Networks ?? {})) {
    const ip: unknown = (net as { IPAddress?: unknown } | null)?.IPAddress;
    if (typeof ip === 'string' && ip !== '' && !ipAddresses.includes(ip)) ipAddresses.push(ip);
  }
  const legacy: unknown = settings.IPAddress;
  if (typeof legacy === 'string' && legacy !== '' && !ipAddresses.includes(legacy)) {
    ipAddresses.push(legacy);
  }
  return { ports, ipAddresses };
}

class DockerodeEngine implements DockerEngine {
  constructor(private readonly docker: Docker) {}

  async ping(signal?: AbortSignal): Promise<void> {
    // The typings lack the options argument dockerode accepts.
    const ping = this.docker.ping.bind(this.docker) as (o: {
      abortSignal?: AbortSignal;
    }) => Promise<unknown>;
    await ping(sig({}, signal));
  }

  async inspectImage(ref: string, signal?: AbortSignal): Promise<ImageFacts | undefined> {
    try {
      const info = await this.docker
        .getImage(ref)
        .inspect(sig({}, signal) as Docker.ImageInspectOptions);
      return { id: info.Id, user: info.Config?.User ?? '' };
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  async pullImage(
    ref: string,
    onProgress: (line: PullProgressLine) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    const stream = asReadable(await this.docker.pull(ref, sig({}, signal)));
    let rest = '';
    const handle = (text: string): void => {
      if (text.trim() === '') return;
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        return;
      }
      const err = pullError(line);
      if (err !== undefined) throw err;
      const detail = line['progressDetail'] as Record<string, unknown> | undefined;
      const ev: PullProgressLine = {
        status: typeof line['status'] === 'string' ? line['status'] : '',
      };
      if (typeof line['id'] === 'string') ev.id = line['id'];
      if (typeof detail?.['current'] === 'number') ev.current = detail['current'];
      if (typeof detail?.['total'] === 'number') ev.total = detail['total'];
      onProgress(ev);
    };
    try {
      for await (const chunk of stream) {
        rest += Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk);
        let nl = rest.indexOf('\n');
        while (nl >= 0) {
          handle(rest.slice(0, nl));
          rest = rest.slice(nl + 1);
          nl = rest.indexOf('\n');
        }
      }
      handle(rest);
    } finally {
      stream.destroy();
    }
  }

  async createContainer(spec: ContainerSpec, signal?: AbortSignal): Promise<string> {
    const c = await this.docker.createContainer(sig({ ...spec }, signal));
    return c.id;
  }

  async createProbe(
    image: string,
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<string> {
    const c = await this.docker.createContainer(
      sig(
        {
          Image: image,
          Cmd: ['true'],
          Labels: labels,
          HostConfig: { NetworkMode: 'none', AutoRemove: false },
        },
        signal,
      ),
    );
    return c.id;
  }

  async startContainer(id: string, signal?: AbortSignal): Promise<void> {
    await this.docker.getContainer(id).start(sig({}, signal));
  }

  async inspectContainer(id: string, signal?: AbortSignal): Promise<ContainerFacts | undefined> {
    try {
      const info = await this.docker.getContainer(id).inspect(sig({}, signal));
      return {
        id: info.Id,
        name: info.Name,
        labels: info.Config.Labels ?? {},
        user: info.Config.User ?? '',
        state: {
          status: info.State.Status,
          running: info.State.Running,
          paused: info.State.Paused,
          restarting: info.State.Restarting,
        },
        reach: reachOf(info),
      };
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  async removeContainer(id: string, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.docker.getContainer(id).remove(sig({ force: true, v: true }, signal));
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw err;
    }
  }

  async listContainers(labelFilters: string[], signal?: AbortSignal): Promise<ContainerSummary[]> {
    const list = await this.docker.listContainers(
      sig({ all: true, filters: { label: labelFilters } }, signal),
    );
    return list.map((c) => ({
      id: c.Id,
      names: c.Names.map((n) => (n.startsWith('/') ? n.slice(1) : n)),
      labels: c.Labels,
      state: c.State,
    }));
  }

  async containerLogs(id: string, tail: number, signal?: AbortSignal): Promise<Buffer> {
    const out: unknown = await this.docker
      .getContainer(id)
      .logs(sig({ stdout: true, stderr: true, follow: false as const, tail }, signal));
    if (Buffer.isBuffer(out)) return out;
    return typeof out === 'string' ? Buffer.from(out, 'latin1') : Buffer.alloc(0);
  }

  async containerStats(id: string, signal?: AbortSignal): Promise<RawStats> {
    // stream=false without one-shot: the Engine waits one interval so precpu_stats is real.
    const stats: unknown = await this.docker
      .getContainer(id)
      .stats(sig({ stream: false as const }, signal));
    return stats as RawStats;
  }

  async createExec(id: string, exec: ExecCreate, signal?: AbortSignal): Promise<string> {
    const e = await this.docker.getContainer(id).exec(
      sig(
        {
          Cmd: exec.cmd,
          Env: exec.env,
          WorkingDir: exec.workingDir,
          AttachStdin: false,
          AttachStdout: true,
          AttachStderr: true,
          Tty: false,
        },
        signal,
      ),
    );
    return e.id;
  }

  async startExec(execId: string, signal?: AbortSignal): Promise<Readable> {
    // Not hijacked: without stdin the plain response body carries the multiplexed stream.
    const stream: unknown = await this.docker.getExec(execId).start(sig({}, signal));
    return stream as Readable;
  }

  async inspectExec(execId: string, signal?: AbortSignal): Promise<ExecFacts> {
    const info = await this.docker.getExec(execId).inspect(sig({}, signal));
    return { running: info.Running, exitCode: info.ExitCode };
  }

  async putArchive(id: string, dir: string, tar: Readable, signal?: AbortSignal): Promise<void> {
    const res: unknown = await this.docker
      .getContainer(id)
      .putArchive(tar, sig({ path: dir }, signal));
    // The response body is empty; drain it so the socket is released.
    if (typeof res === 'object' && res !== null && 'resume' in res) {
      (res as Readable).resume();
    }
  }

  async getArchive(id: string, path: string, signal?: AbortSignal): Promise<Readable> {
    return asReadable(await this.docker.getContainer(id).getArchive(sig({ path }, signal)));
  }

  async statPath(id: string, path: string, signal?: AbortSignal): Promise<string | undefined> {
    let res: unknown;
    try {
      res = await this.docker.getContainer(id).infoArchive(sig({ path }, signal));
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
    const msg = res as Readable & { headers?: Record<string, string | string[] | undefined> };
    msg.resume();
    const header = msg.headers?.['x-docker-container-path-stat'];
    if (typeof header !== 'string') {
      throw new Error(`the Engine sent no path stat for ${path}`);
    }
    return header;
  }
}

/**
 * The dockerode-backed engine. Constructing it does no I/O; dockerode
 * connects per request.
 */
export function createDockerodeEngine(options: DockerodeEngineOptions = {}): DockerEngine {
  const docker =
    options.socketPath === undefined
      ? new Docker()
      : new Docker({ socketPath: options.socketPath });
  return new DockerodeEngine(docker);
}
