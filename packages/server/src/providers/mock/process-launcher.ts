import { createRequire } from 'node:module';
import type * as ChildProcessModule from 'node:child_process';
import type { Readable } from 'node:stream';

/** One command to start: `file` looked up on `env.PATH`, no shell added. */
export interface LaunchSpec {
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
}

export type StdStream = 'stdout' | 'stderr';

/**
 * What a launched command reports, in the order it happens. `onSpawn` may be
 * called before `launch` returns; everything else comes later.
 */
export interface LaunchEvents {
  /** The command runs, leader of a new process group whose id is `pid`. */
  onSpawn(pid: number): void;
  onData(stream: StdStream, chunk: Buffer): void;
  /** The stream is finished: end of file, or closed by {@link LaunchedProcess.closePipes}. */
  onStreamClose(stream: StdStream): void;
  onExit(code: number | null, signal: NodeJS.Signals | null): void;
  /**
   * The command could not be started (an `Error` with the errno name in
   * `code`, e.g. ENOENT), or the launcher itself failed (a `StacyError`).
   * Nothing else follows.
   */
  onError(err: Error): void;
}

/** Control over a launched command's pipes. Killing is by process group (`onSpawn`'s pid). */
export interface LaunchedProcess {
  /** Stops reading the command's output, so it blocks once the pipes are full. */
  pause(): void;
  resume(): void;
  /** Closes both pipes now (a background process may hold them after the command exits). */
  closePipes(): void;
}

/** Starts commands for the mock provider; see {@link inProcessLauncher} and `SpawnHelperLauncher`. */
export interface ProcessLauncher {
  /** `in-process` or `helper`, for `describe()`. */
  readonly kind: string;
  /** Throws only for a command that cannot be expressed (a synchronous spawn failure). */
  launch(spec: LaunchSpec, events: LaunchEvents): LaunchedProcess;
  /** Gets ready ahead of the first launch (the helper starts); cheap when already ready. */
  warm(): void;
  close(): Promise<void>;
}

type NodeRequireFn = (id: string) => unknown;

/**
 * The one place a command is spawned, with its own group (`detached`), no
 * stdin, and piped output. Self-contained on purpose: it uses nothing but the
 * `require` it is given, because the spawn helper runs this very function,
 * from its source text (see spawn-helper.ts).
 */
export function spawnRelay(
  req: NodeRequireFn,
): (spec: LaunchSpec, events: LaunchEvents) => LaunchedProcess {
  const { spawn } = req('node:child_process') as typeof ChildProcessModule;
  return (spec, events) => {
    const child = spawn(spec.file, spec.args, {
      cwd: spec.cwd,
      env: spec.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stdout = child.stdout;
    const stderr = child.stderr;
    let failed = false;
    // 'error' without a pid: the command never started (ENOENT, EACCES, a
    // missing cwd). Node may still close the pipes and emit 'exit' after it.
    child.once('error', (err) => {
      if (child.pid !== undefined) return;
      failed = true;
      events.onError(err);
    });
    const forward = (name: 'stdout' | 'stderr', stream: Readable): void => {
      stream.on('data', (chunk: Buffer) => events.onData(name, chunk));
      stream.once('close', () => {
        if (!failed) events.onStreamClose(name);
      });
      // A destroyed pipe may emit an error; the exit status says what happened.
      stream.on('error', () => undefined);
    };
    forward('stdout', stdout);
    forward('stderr', stderr);
    child.once('exit', (code, signal) => {
      if (!failed) events.onExit(code, signal);
    });
    if (child.pid !== undefined) events.onSpawn(child.pid);
    return {
      pause() {
        stdout.pause();
        stderr.pause();
      },
      resume() {
        stdout.resume();
        stderr.resume();
      },
      closePipes() {
        stdout.destroy();
        stderr.destroy();
      },
    };
  };
}

/**
 * Spawns from this process. Simple, but every spawn forks the whole server:
 * the page tables of a large heap are copied and then faulted back in (see
 * `SpawnHelperLauncher`, the default).
 */
export function inProcessLauncher(): ProcessLauncher {
  const launch = spawnRelay(createRequire(import.meta.url));
  return {
    kind: 'in-process',
    launch,
    warm: () => undefined,
    close: () => Promise.resolve(),
  };
}
