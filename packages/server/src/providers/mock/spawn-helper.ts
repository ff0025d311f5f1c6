import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import type * as NetModule from 'node:net';
import { StacyError } from '../../domain/errors.js';
import { spawnRelay } from './process-launcher.js';
import type {
  LaunchEvents,
  LaunchSpec,
  LaunchedProcess,
  ProcessLauncher,
} from './process-launcher.js';

/**
 * Frame types of the helper's protocol. A frame is a 9-byte header (payload
 * length u32 LE, type u8, exec id u32 LE) and the payload. Control payloads
 * are JSON; output payloads are the bytes read.
 */
const FRAME = {
  // control plane → helper
  spawn: 1, // {file, args, cwd, env}
  pause: 2,
  resume: 3,
  closePipes: 4,
  // helper → control plane
  spawned: 10, // {pid}
  stdout: 11,
  stderr: 12,
  stdoutClosed: 13,
  stderrClosed: 14,
  exit: 15, // {code, signal}
  error: 16, // {code, message, sync}
} as const;
type FrameTypes = typeof FRAME;

/** A frame claiming more than this is a broken stream, not a message. */
const MAX_FRAME_BYTES = 256 * 1024 * 1024;
/** Helper stderr kept for the error message when it dies. */
const STDERR_TAIL_BYTES = 2048;

/**
 * Encodes one frame. Self-contained: the helper runs it from its source text.
 */
export function encodeFrame(type: number, id: number, payload?: Buffer): Buffer {
  const len = payload === undefined ? 0 : payload.length;
  const out = Buffer.allocUnsafe(9 + len);
  out.writeUInt32LE(len, 0);
  out[4] = type;
  out.writeUInt32LE(id, 5);
  if (payload !== undefined) payload.copy(out, 9);
  return out;
}

/**
 * A decoder for a stream of frames: feed it chunks as they arrive, it calls
 * `onFrame` for each whole frame. Chunks are joined once a frame is complete,
 * so a large frame costs its size, not its size times its chunk count. It
 * throws on a frame longer than `maxFrame`. Payloads are views into the
 * joined chunks. Self-contained: the helper runs it from its source text.
 */
export function frameReader(
  maxFrame: number,
  onFrame: (type: number, id: number, payload: Buffer) => void,
): (chunk: Buffer) => void {
  let chunks: Buffer[] = [];
  let have = 0;
  /** Bytes the pending data must reach before anything can be decoded. */
  let need = 9;
  return (chunk) => {
    chunks.push(chunk);
    have += chunk.length;
    if (have < need) return;
    const buf = chunks.length === 1 ? chunk : Buffer.concat(chunks, have);
    chunks = [];
    have = 0;
    let off = 0;
    for (;;) {
      if (buf.length - off < 9) {
        need = 9;
        break;
      }
      const len = buf.readUInt32LE(off);
      if (len > maxFrame) throw new Error(`a frame of ${len} bytes is over the limit`);
      if (buf.length - off < 9 + len) {
        need = 9 + len;
        break;
      }
      const type = buf[off + 4] ?? 0;
      const id = buf.readUInt32LE(off + 5);
      off += 9 + len;
      onFrame(type, id, buf.subarray(off - len, off));
    }
    if (off < buf.length) {
      chunks = [buf.subarray(off)];
      have = buf.length - off;
    }
  };
}

/**
 * The helper program: reads frames on fd 3, starts commands with
 * {@link spawnRelay}, writes their events back. Serialised from its source
 * text (so, like `spawnRelay`, it may use only its parameters). When the
 * control plane goes away (fd 3 ends), every group it started is killed.
 */
function helperMain(
  req: (id: string) => unknown,
  relayFactory: typeof spawnRelay,
  encode: typeof encodeFrame,
  reader: typeof frameReader,
  F: FrameTypes,
  maxFrame: number,
): void {
  const net = req('node:net') as typeof NetModule;
  const launch = relayFactory(req);
  const sock = new net.Socket({ fd: 3, readable: true, writable: true });
  interface Live {
    proc: LaunchedProcess | undefined;
    pid: number | undefined;
    pausedByPeer: boolean;
  }
  const live = new Map<number, Live>();
  let congested = false;

  const send = (type: number, id: number, payload?: Buffer): void => {
    // The control plane reads slower than commands write: stop reading every
    // command until the socket drains, instead of buffering without bound.
    if (!sock.write(encode(type, id, payload)) && !congested) {
      congested = true;
      for (const l of live.values()) l.proc?.pause();
    }
  };
  const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));
  sock.on('drain', () => {
    congested = false;
    for (const l of live.values()) if (!l.pausedByPeer) l.proc?.resume();
  });

  const start = (id: number, spec: LaunchSpec): void => {
    const entry: Live = { proc: undefined, pid: undefined, pausedByPeer: false };
    let pipes = 2;
    let exited = false;
    const done = (): void => {
      if (exited && pipes === 0) live.delete(id);
    };
    live.set(id, entry);
    const events: LaunchEvents = {
      onSpawn: (pid) => {
        entry.pid = pid;
        send(F.spawned, id, json({ pid }));
      },
      onData: (stream, chunk) => send(stream === 'stdout' ? F.stdout : F.stderr, id, chunk),
      onStreamClose: (stream) => {
        pipes--;
        send(stream === 'stdout' ? F.stdoutClosed : F.stderrClosed, id);
        done();
      },
      onExit: (code, signal) => {
        exited = true;
        send(F.exit, id, json({ code, signal }));
        done();
      },
      onError: (err) => {
        live.delete(id);
        const code = (err as { code?: unknown }).code;
        send(F.error, id, json({ code, message: err.message, sync: false }));
      },
    };
    try {
      entry.proc = launch(spec, events);
      if (congested) entry.proc.pause();
    } catch (err) {
      live.delete(id);
      send(F.error, id, json({ message: (err as Error).message, sync: true }));
    }
  };

  const handle = (type: number, id: number, payload: Buffer): void => {
    if (type === F.spawn) {
      start(id, JSON.parse(payload.toString('utf8')) as LaunchSpec);
      return;
    }
    const l = live.get(id);
    if (l === undefined) return; // finished meanwhile
    if (type === F.pause) {
      l.pausedByPeer = true;
      l.proc?.pause();
    } else if (type === F.resume) {
      l.pausedByPeer = false;
      if (!congested) l.proc?.resume();
    } else if (type === F.closePipes) {
      l.proc?.closePipes();
    }
  };

  const killAll = (): void => {
    for (const l of live.values()) {
      if (l.pid === undefined) continue;
      try {
        process.kill(-l.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  // Whatever goes wrong in here (a broken stream throws in the reader), the
  // commands it runs die with it; the control plane then fails them, shows
  // this on its error, and starts another helper.
  process.on('uncaughtException', (err) => {
    killAll();
    process.stderr.write(`${err.stack ?? String(err)}\n`);
    process.exit(70);
  });
  sock.on('data', reader(maxFrame, handle));
  const shutdown = (): void => {
    killAll();
    process.exit(0);
  };
  sock.on('end', shutdown);
  sock.on('close', shutdown);
  sock.on('error', shutdown);
}

/**
 * The helper's program text, fed to `node -` on stdin (never on argv). The
 * functions it is made of must not use anything from this module's scope;
 * the helper tests run it as built by tsc and as transformed by vitest. A
 * transform that injects references (istanbul counters, esbuild keepNames)
 * would break it: the helper would die at start with a ReferenceError, which
 * every failed exec then quotes.
 */
function helperProgram(): string {
  return (
    `'use strict';\n(${helperMain.toString()})(require, ${spawnRelay.toString()}, ` +
    `${encodeFrame.toString()}, ${frameReader.toString()}, ` +
    `${JSON.stringify(FRAME)}, ${MAX_FRAME_BYTES});\n`
  );
}

interface Pending {
  events: LaunchEvents;
  /** Pipes not reported closed yet; the entry goes once they are and the exit came. */
  pipes: number;
  exited: boolean;
}

/** How long `close()` waits for the helper to exit before killing it. */
const CLOSE_TIMEOUT_MS = 5000;

/** One running helper process and its socket. */
class HelperConnection {
  private readonly child: ChildProcess;
  private readonly sock: Socket;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private readonly read = frameReader(MAX_FRAME_BYTES, (type, id, payload) =>
    this.dispatch(type, id, payload),
  );
  private stderrTail = '';
  /** Set once the helper is gone and every pending command has been told. */
  private finished = false;
  private readonly done: Promise<void>;
  private markDone!: () => void;
  /** A protocol problem found here, reported in place of the exit status. */
  private problem: string | undefined;
  private closing = false;
  /** New handles are referenced; the constructor unreferences them until a launch. */
  private referenced = true;

  constructor(
    nodePath: string,
    private readonly onDead: (conn: HelperConnection) => void,
  ) {
    this.done = new Promise((resolve) => (this.markDone = resolve));
    this.child = spawn(nodePath, ['-'], {
      // Nothing of the control plane's environment (it holds secrets): every
      // command gets its own explicit environment anyway.
      env: {},
      stdio: ['pipe', 'ignore', 'pipe', 'pipe'],
      // Its own process group: a Ctrl-C meant for the server (which then
      // drains its in-flight execs) does not kill the helper under them.
      detached: true,
    });
    // Attached at once: a spawn that fails (ENOENT, EMFILE) reports it here.
    this.child.once('error', (err) => this.finish(`could not run ${nodePath}: ${err.message}`));
    const sock = this.child.stdio?.[3];
    if (this.child.stdin === null || this.child.stderr === null || sock == null) {
      throw new StacyError(
        'INTERNAL_ERROR',
        `could not start the mock provider's spawn helper (${nodePath}): no pipes`,
      );
    }
    this.sock = sock as Socket;
    this.child.stdin.on('error', () => undefined);
    this.child.stdin.end(helperProgram());
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (s: string) => {
      this.stderrTail = (this.stderrTail + s).slice(-STDERR_TAIL_BYTES);
    });
    this.sock.on('data', (chunk: Buffer) => this.onData(chunk));
    this.sock.on('error', () => undefined);
    // 'close' comes once the helper exited and fd 3 and its stderr were read
    // to the end: every frame it wrote (a command's pid above all) has been
    // handled, and the error can quote its last words.
    this.child.once('close', (code, signal) => {
      const status = signal === null ? `it exited with code ${code}` : `it was killed by ${signal}`;
      this.finish(this.problem ?? status);
    });
    this.setReferenced(false);
  }

  /** No new launches: the helper failed, exited or is being closed. */
  private get dead(): boolean {
    return this.finished || this.closing || this.problem !== undefined;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  launch(spec: LaunchSpec, events: LaunchEvents): LaunchedProcess {
    if (this.dead) {
      throw new StacyError('INTERNAL_ERROR', "the mock provider's spawn helper is gone");
    }
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    this.pending.set(id, { events, pipes: 2, exited: false });
    this.setReferenced(true);
    this.write(FRAME.spawn, id, Buffer.from(JSON.stringify(spec)));
    return {
      pause: () => this.write(FRAME.pause, id),
      resume: () => this.write(FRAME.resume, id),
      closePipes: () => this.write(FRAME.closePipes, id),
    };
  }

  /**
   * Ends the helper: it kills whatever it still runs, then exits. Killed if
   * it has not exited within {@link CLOSE_TIMEOUT_MS}.
   */
  close(): Promise<void> {
    if (!this.finished && !this.closing) {
      this.closing = true;
      this.onDead(this);
      // Held until the helper is gone: an idle helper is unreferenced, and a
      // shutdown must not end the process while it waits for this.
      this.setReferenced(true);
      this.sock.end();
      const timer = setTimeout(() => this.child.kill('SIGKILL'), CLOSE_TIMEOUT_MS);
      void this.done.then(() => clearTimeout(timer));
    }
    return this.done;
  }

  private write(type: number, id: number, payload?: Buffer): void {
    if (this.finished || !this.pending.has(id)) return;
    this.sock.write(encodeFrame(type, id, payload));
  }

  /** While an exec is pending or a close waits, the helper keeps the process alive. */
  private setReferenced(on: boolean): void {
    if (on === this.referenced) return;
    this.referenced = on;
    // The helper's stderr is a Socket at runtime, like fd 3.
    for (const h of [this.child, this.sock, this.child.stderr as Socket | null]) {
      if (on) h?.ref();
      else h?.unref();
    }
  }

  private onData(chunk: Buffer): void {
    try {
      this.read(chunk);
    } catch (err) {
      this.broken((err as Error).message);
    }
  }

  /** The helper breaks the protocol: it is killed, and 'close' reports this. */
  private broken(why: string): void {
    this.problem ??= why;
    this.onDead(this);
    this.child.kill('SIGKILL');
  }

  private dispatch(type: number, id: number, payload: Buffer): void {
    const p = this.pending.get(id);
    if (p === undefined || this.problem !== undefined) return;
    switch (type) {
      case FRAME.spawned: {
        const { pid } = JSON.parse(payload.toString('utf8')) as { pid: number };
        p.events.onSpawn(pid);
        return;
      }
      case FRAME.stdout:
      case FRAME.stderr: {
        // A copy: the payload is a view into a read that may hold other
        // commands' output, which a kept chunk would otherwise pin.
        const chunk = Buffer.allocUnsafeSlow(payload.length);
        payload.copy(chunk);
        p.events.onData(type === FRAME.stdout ? 'stdout' : 'stderr', chunk);
        return;
      }
      case FRAME.stdoutClosed:
      case FRAME.stderrClosed:
        p.pipes--;
        p.events.onStreamClose(type === FRAME.stdoutClosed ? 'stdout' : 'stderr');
        this.settle(id, p);
        return;
      case FRAME.exit: {
        const { code, signal } = JSON.parse(payload.toString('utf8')) as {
          code: number | null;
          signal: NodeJS.Signals | null;
        };
        p.exited = true;
        p.events.onExit(code, signal);
        this.settle(id, p);
        return;
      }
      case FRAME.error: {
        const e = JSON.parse(payload.toString('utf8')) as {
          code?: string;
          message: string;
          sync: boolean;
        };
        this.forget(id);
        if (e.sync) {
          p.events.onError(new StacyError('INTERNAL_ERROR', `could not start: ${e.message}`));
        } else {
          p.events.onError(Object.assign(new Error(e.message), { code: e.code }));
        }
        return;
      }
      default:
        this.broken(`it sent an unknown frame type ${type}`);
    }
  }

  private settle(id: number, p: Pending): void {
    if (p.exited && p.pipes <= 0) this.forget(id);
  }

  private forget(id: number): void {
    this.pending.delete(id);
    if (this.pending.size === 0 && !this.closing) this.setReferenced(false);
  }

  /**
   * The helper is gone. A command that had exited (only a background process
   * held its pipes) ends normally; every other one fails, and the caller
   * kills its group. The next launch starts a new helper.
   */
  private finish(why: string): void {
    if (this.finished) return;
    this.finished = true;
    this.onDead(this);
    this.sock?.destroy();
    const tail = this.stderrTail.trim();
    const message = this.closing
      ? "the mock provider's spawn helper was stopped (the provider is closing)"
      : `the mock provider's spawn helper failed: ${why}${tail === '' ? '' : ` (${tail})`}`;
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.closing = false;
    this.setReferenced(false);
    for (const p of pending) {
      if (p.exited) {
        for (; p.pipes > 0; p.pipes--) {
          p.events.onStreamClose(p.pipes === 2 ? 'stdout' : 'stderr');
        }
      } else {
        p.events.onError(new StacyError('INTERNAL_ERROR', message));
      }
    }
    this.markDone();
  }
}

/**
 * Starts commands from a small helper process (`node -`, program on stdin,
 * frames on fd 3) instead of from the control plane. On Linux, libuv spawns
 * with fork(): a fork of the server copies the page tables of its whole heap,
 * the child tears them down again in exec, and the server then takes a
 * copy-on-write fault on every page it writes next. From a helper of a few
 * MB of heap that cost stays small and off the server's thread; the price is
 * one socket round trip. A helper that dies fails the commands it ran (their
 * groups are killed) and is replaced on the next launch.
 */
export class SpawnHelperLauncher implements ProcessLauncher {
  readonly kind = 'helper';
  private conn: HelperConnection | undefined;
  private readonly nodePath: string;

  /** `nodePath`: the Node binary the helper runs on (default: this process's). */
  constructor(options: { nodePath?: string } = {}) {
    this.nodePath = options.nodePath ?? process.execPath;
  }

  launch(spec: LaunchSpec, events: LaunchEvents): LaunchedProcess {
    return this.connection().launch(spec, events);
  }

  /** Starts the helper ahead of the first launch; a failure here is the next launch's to report. */
  warm(): void {
    try {
      this.connection();
    } catch {
      // Reported by the launch that tries again.
    }
  }

  /** The helper's pid while one runs (tests). */
  get helperPid(): number | undefined {
    return this.conn?.pid;
  }

  async close(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    await conn?.close();
  }

  private connection(): HelperConnection {
    this.conn ??= new HelperConnection(this.nodePath, (dead) => {
      if (this.conn === dead) this.conn = undefined;
    });
    return this.conn;
  }
}
