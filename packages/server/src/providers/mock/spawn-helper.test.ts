import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { StacyError } from '../../domain/errors.js';
import type { LaunchEvents, LaunchSpec, LaunchedProcess } from './process-launcher.js';
import { SpawnHelperLauncher, encodeFrame, frameReader } from './spawn-helper.js';

const ENV = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C.UTF-8' };

function spec(script: string, extra: Partial<LaunchSpec> = {}): LaunchSpec {
  return { file: 'sh', args: ['-c', script], cwd: '/', env: ENV, ...extra };
}

interface Run {
  pid: Promise<number>;
  /** The exit event itself (done waits for the pipes too). */
  exited: Promise<void>;
  stdout: Buffer[];
  stderr: Buffer[];
  closed: string[];
  /** Exit, or the error that replaced it. */
  done: Promise<{ code: number | null; signal: string | null } | Error>;
  control: LaunchedProcess;
}

function run(launcher: SpawnHelperLauncher, s: LaunchSpec): Run {
  let onPid!: (pid: number) => void;
  let onDone!: (v: { code: number | null; signal: string | null } | Error) => void;
  let onExited!: () => void;
  const out: Omit<Run, 'control'> = {
    pid: new Promise((r) => (onPid = r)),
    exited: new Promise((r) => (onExited = r)),
    stdout: [],
    stderr: [],
    closed: [],
    done: new Promise((r) => (onDone = r)),
  };
  let exit: { code: number | null; signal: string | null } | undefined;
  const settle = (): void => {
    if (exit !== undefined && out.closed.length === 2) onDone(exit);
  };
  const events: LaunchEvents = {
    onSpawn: onPid,
    onData: (stream, chunk) => out[stream].push(chunk),
    onStreamClose: (stream) => {
      out.closed.push(stream);
      settle();
    },
    onExit: (code, signal) => {
      exit = { code, signal };
      onExited();
      settle();
    },
    onError: (err) => onDone(err),
  };
  return { ...out, control: launcher.launch(s, events) };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('SpawnHelperLauncher', () => {
  const launchers: SpawnHelperLauncher[] = [];
  const make = (): SpawnHelperLauncher => {
    const l = new SpawnHelperLauncher();
    launchers.push(l);
    return l;
  };
  afterEach(async () => {
    await Promise.all(launchers.splice(0).map((l) => l.close()));
  });

  it('runs a command in a group of its own and relays its bytes, streams and exit code', async () => {
    const l = make();
    // Every byte value, on stdout; text on stderr; then exit 7.
    const r = run(l, spec(`printf "$(printf '\\\\%03o' $(seq 0 255))"; echo oops >&2; exit 7`));
    const pid = await r.pid;
    expect(await r.done).toEqual({ code: 7, signal: null });
    const bytes = Buffer.concat(r.stdout);
    expect(bytes.length).toBe(256);
    expect([...bytes]).toEqual([...Array(256).keys()]);
    expect(Buffer.concat(r.stderr).toString()).toBe('oops\n');
    expect(r.closed.sort()).toEqual(['stderr', 'stdout']);
    expect(pid).toBeGreaterThan(0);
    // Each chunk owns its memory: a view into the socket read would pin
    // whatever else that read carried.
    for (const chunk of [...r.stdout, ...r.stderr]) {
      expect(chunk.buffer.byteLength).toBe(chunk.byteLength);
    }
  });

  it('runs each command as the leader of a process group of its own, away from the helper', async () => {
    const l = make();
    const r = run(l, spec('cut -d" " -f5 /proc/$$/stat'));
    const pid = await r.pid;
    await r.done;
    expect(Number(Buffer.concat(r.stdout).toString())).toBe(pid);
    // The helper is in a group of its own too: a Ctrl-C sent to the server's
    // group (which then drains its execs) must not kill it.
    const group = (p: number): string =>
      readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[2]!;
    expect(group(l.helperPid!)).toBe(String(l.helperPid));
    expect(group(l.helperPid!)).not.toBe(group(process.pid));
  });

  it('reports the signal that ended a command, and keeps many commands apart', async () => {
    const l = make();
    const runs = Array.from({ length: 12 }, (_, i) =>
      run(l, spec(i % 3 === 0 ? 'kill -TERM $$' : `echo ${i}; exit ${i}`)),
    );
    const results = await Promise.all(runs.map((r) => r.done));
    results.forEach((res, i) => {
      if (i % 3 === 0) expect(res).toEqual({ code: null, signal: 'SIGTERM' });
      else {
        expect(res).toEqual({ code: i, signal: null });
        expect(Buffer.concat(runs[i]!.stdout).toString()).toBe(`${i}\n`);
      }
    });
  });

  it('reports a command that cannot start with its errno name, and a bad cwd likewise', async () => {
    const l = make();
    const missing = await run(l, { ...spec(''), file: 'no-such-command-xyz', args: [] }).done;
    expect(missing).toBeInstanceOf(Error);
    expect((missing as NodeJS.ErrnoException).code).toBe('ENOENT');
    expect(missing).not.toBeInstanceOf(StacyError);
    const badCwd = await run(l, spec('true', { cwd: '/no/such/dir' })).done;
    expect((badCwd as NodeJS.ErrnoException).code).toBe('ENOENT');
    // The helper is still there for the next command.
    expect(await run(l, spec('exit 0')).done).toEqual({ code: 0, signal: null });
  });

  it('reports a command the kernel refuses to run (an argument over ARG_MAX) as INTERNAL_ERROR', async () => {
    const l = make();
    const res = await run(l, spec('true', { args: ['-c', 'true', 'x'.repeat(200_000)] })).done;
    expect(res).toBeInstanceOf(StacyError);
    expect((res as StacyError).code).toBe('INTERNAL_ERROR');
    expect((res as Error).message).toMatch(/could not start: .*E2BIG/);
    expect(await run(l, spec('exit 4')).done).toEqual({ code: 4, signal: null });
  });

  it('says which Node it could not run, and warm() leaves that to the launch', async () => {
    const l = new SpawnHelperLauncher({ nodePath: '/nonexistent/node' });
    launchers.push(l);
    l.warm();
    const res = await run(l, spec('true')).done;
    expect(res).toBeInstanceOf(StacyError);
    expect((res as Error).message).toMatch(/could not run \/nonexistent\/node: .*ENOENT/);
  });

  it('pauses and resumes a command, and closes pipes a background process holds', async () => {
    const l = make();
    const r = run(l, spec('cat /dev/zero'));
    const group = await r.pid;
    const got = (): number => r.stdout.reduce((n, b) => n + b.length, 0);
    await until('some output', () => got() > 0);
    r.control.pause();
    await sleep(200); // what was already in flight lands
    const paused = got();
    await sleep(300);
    expect(got() - paused).toBeLessThan(256 * 1024);
    r.control.resume();
    await until('output again', () => got() > paused + 4 * 1024 * 1024);
    process.kill(-group, 'SIGKILL');
    expect(await r.done).toEqual({ code: null, signal: 'SIGKILL' });

    const bg = run(l, spec('sleep 30 & echo started'));
    await until('the exit', () => bg.stdout.length > 0);
    await sleep(100);
    expect(bg.closed).toEqual([]); // the background sleep holds the pipes
    bg.control.closePipes();
    expect(await bg.done).toEqual({ code: 0, signal: null });
    process.kill(-(await bg.pid), 'SIGKILL');
  });

  it('runs as `node -` with an empty environment: no program on argv, no secrets inherited', async () => {
    process.env['STACYVM_TEST_SECRET'] = 'hunter2';
    try {
      const l = make();
      l.warm();
      const pid = l.helperPid;
      expect(pid).toBeDefined();
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
      expect(argv.slice(1)).toEqual(['-']);
      expect(readFileSync(`/proc/${pid}/environ`, 'utf8')).toBe('');
      // Commands get exactly the environment they are given.
      const r = run(l, spec('env', { env: { ...ENV, ONLY: 'this' } }));
      await r.done;
      const env = Buffer.concat(r.stdout).toString();
      expect(env).toContain('ONLY=this');
      expect(env).not.toContain('hunter2');
    } finally {
      delete process.env['STACYVM_TEST_SECRET'];
    }
  });

  it('fails the commands in flight when the helper dies, then starts a new one', async () => {
    const l = make();
    const r = run(l, spec('sleep 30'));
    const group = await r.pid;
    const first = l.helperPid!;
    process.kill(first, 'SIGKILL');
    const res = await r.done;
    expect(res).toBeInstanceOf(StacyError);
    expect((res as StacyError).code).toBe('INTERNAL_ERROR');
    expect((res as Error).message).toMatch(/spawn helper failed: it was killed by SIGKILL/);
    // The orphaned group is the caller's to kill (runExec does); it is still addressable.
    process.kill(-group, 'SIGKILL');
    expect(await run(l, spec('echo again')).done).toEqual({ code: 0, signal: null });
    expect(l.helperPid).not.toBe(first);
  });

  it('ends a command that had exited normally when the helper dies while a background process holds its pipes', async () => {
    const l = make();
    const r = run(l, spec('sleep 30 & exit 3'));
    const group = await r.pid;
    await r.exited;
    expect(r.closed).toEqual([]); // the background sleep holds both pipes
    process.kill(l.helperPid!, 'SIGKILL');
    expect(await r.done).toEqual({ code: 3, signal: null });
    process.kill(-group, 'SIGKILL');
  });

  it('kills what it still runs and exits when the control plane goes away', async () => {
    const l = make();
    const r = run(l, spec('sleep 30'));
    const group = await r.pid;
    const helper = l.helperPid!;
    await l.close();
    await until('the helper to exit', () => !alive(helper));
    await until('the command to be killed', () => !alive(group));
  });

  it('holds the event loop only while a command is in flight or it is being closed', async () => {
    const l = make();
    const pipes = (): number =>
      process.getActiveResourcesInfo().filter((r) => r === 'PipeWrap' || r === 'ProcessWrap')
        .length;
    const idle = pipes();
    l.warm();
    await sleep(50);
    expect(pipes()).toBe(idle);
    const r = run(l, spec('sleep 0.3'));
    await r.pid;
    expect(pipes()).toBeGreaterThan(idle);
    await r.done;
    expect(pipes()).toBe(idle);
    // A shutdown waiting for the helper keeps the process alive until it is gone.
    const closing = l.close();
    expect(pipes()).toBeGreaterThan(idle);
    await closing;
    await sleep(10); // the exited process handle closes on the next turn
    expect(pipes()).toBe(idle);
  });
});

describe('spawn helper frames', () => {
  it('decodes frames split anywhere across chunks', () => {
    const got: [number, number, string][] = [];
    const read = frameReader(1024, (type, id, payload) => got.push([type, id, payload.toString()]));
    const stream = Buffer.concat([
      encodeFrame(11, 1, Buffer.from('hello')),
      encodeFrame(13, 1),
      encodeFrame(15, 4294967295, Buffer.from('{"code":0}')),
    ]);
    for (let i = 0; i < stream.length; i += 3) read(stream.subarray(i, i + 3));
    expect(got).toEqual([
      [11, 1, 'hello'],
      [13, 1, ''],
      [15, 4294967295, '{"code":0}'],
    ]);
  });

  it('decodes a large frame that arrives in many chunks', () => {
    const got: Buffer[] = [];
    const read = frameReader(8 * 1024 * 1024, (_t, _i, payload) => got.push(Buffer.from(payload)));
    const body = Buffer.alloc(4 * 1024 * 1024, 7);
    const stream = Buffer.concat([encodeFrame(11, 9, body), encodeFrame(13, 9)]);
    for (let i = 0; i < stream.length; i += 4096) read(stream.subarray(i, i + 4096));
    expect(got.length).toBe(2);
    expect(got[0]!.equals(body)).toBe(true);
    expect(got[1]!.length).toBe(0);
  });

  it('refuses a frame longer than the limit', () => {
    const read = frameReader(8, () => undefined);
    expect(() => read(encodeFrame(11, 1, Buffer.alloc(9)))).toThrow(/9 bytes is over the limit/);
  });
});
