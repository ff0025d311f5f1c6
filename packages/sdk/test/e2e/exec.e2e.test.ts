import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BadRequestError, NotFoundError, TimeoutError } from '../../src/index.js';
import type { Client, ExecStreamEvent, Sandbox } from '../../src/index.js';
import { caught, sleep, startSdkServer } from './support.js';
import type { SdkServer } from './support.js';

describe('Sandbox exec and execStream against a real stacyvm serve', () => {
  let srv: SdkServer;
  let client: Client;
  let sb: Sandbox;
  beforeAll(async () => {
    srv = await startSdkServer();
    client = srv.client();
    sb = await client.spawn({});
  });
  afterAll(async () => {
    await sb?.destroy().catch(() => undefined);
    await srv?.stop();
  });

  it('exec runs a shell string and returns exit code, stdout, stderr, duration', async () => {
    const r = await sb.exec('echo out; echo err >&2; exit 3');
    expect(r).toMatchObject({ exitCode: 3, exit_code: 3, stdout: 'out\n', stderr: 'err\n' });
    expect(r.duration).toMatch(/^[0-9.]+(ns|µs|us|ms|s)$/);
    expect(r.durationMs).toBeGreaterThan(0);
    expect(r.durationMs).toBeLessThan(10_000);
  });

  it('exec runs an argv array verbatim (no shell)', async () => {
    const r = await sb.exec(['printf', '%s|', 'a b', '$HOME', "it's"]);
    expect(r.stdout).toBe("a b|$HOME|it's|");
    // Shell mode with args: appended single-quoted.
    const r2 = await sb.exec('printf "%s|"', { args: ['x y', '$z'] });
    expect(r2.stdout).toBe('x y|$z|');
  });

  it('exec passes env and workdir', async () => {
    await sb.writeFile('/workspace/sub/here.txt', 'x');
    const r = await sb.exec('echo "$GREETING"; ls', {
      env: { GREETING: 'hello sdk' },
      workdir: '/workspace/sub',
    });
    expect(r.stdout).toBe('hello sdk\nhere.txt\n');
  });

  it('exec timeout as ms number and as Go duration: TimeoutError, command killed', async () => {
    for (const timeout of [300, '300ms']) {
      const started = Date.now();
      const err = await caught(() => sb.exec('sleep 5', { timeout }));
      expect(err).toBeInstanceOf(TimeoutError);
      expect(err).toMatchObject({ code: 'TIMEOUT', status: 408 });
      expect((err as TimeoutError).requestId).toMatch(/.+/);
      expect(Date.now() - started).toBeLessThan(4_000);
    }
    const bad = await caught(() => sb.exec('true', { timeout: 'forever' }));
    expect(bad).toBeInstanceOf(BadRequestError);
    expect((bad as BadRequestError).details?.[0]?.field).toBe('timeout');
  });

  it('exec on an unknown sandbox is a NotFoundError', async () => {
    const ghost = await client.spawn({});
    await ghost.destroy();
    await expect(ghost.exec('true')).rejects.toBeInstanceOf(NotFoundError);
    await expect(ghost.execStream('true').wait()).rejects.toBeInstanceOf(NotFoundError);
  });

  it('execStream yields stdout/stderr chunks in order, then the exit event', async () => {
    const events: ExecStreamEvent[] = [];
    const stream = sb.execStream(
      'echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 7',
    );
    for await (const ev of stream) events.push(ev);
    const last = events.at(-1);
    expect(last).toMatchObject({
      stream: 'exit',
      data: '',
      exitCode: 7,
      exit_code: 7,
      timedOut: false,
    });
    const out = events
      .filter((e) => e.stream === 'stdout')
      .map((e) => e.data)
      .join('');
    const err = events
      .filter((e) => e.stream === 'stderr')
      .map((e) => e.data)
      .join('');
    expect(out).toBe('one\nthree\n');
    expect(err).toBe('two\n');
    // Order across streams: one, two, three.
    const seq = events.filter((e) => e.stream !== 'exit').map((e) => e.data.trim());
    expect(seq).toEqual(['one', 'two', 'three']);
    expect(events.filter((e) => e.stream === 'exit')).toHaveLength(1);
    // The convenience accessors reuse the delivered exit event.
    expect(await stream.exitCode()).toBe(7);
    expect(stream.exit?.exitCode).toBe(7);
  });

  it('execStream: wait() and exitCode() drain the stream without iterating', async () => {
    expect(await sb.execStream('echo hi; exit 4').exitCode()).toBe(4);
    const exit = await sb.execStream(['sh', '-c', 'exit 0']).wait();
    expect(exit).toMatchObject({ stream: 'exit', exitCode: 0, timedOut: false });
    expect(exit.durationMs).toBeGreaterThan(0);
  });

  it('execStream with a timeout ends with timedOut and exit code 124', async () => {
    const events: ExecStreamEvent[] = [];
    for await (const ev of sb.execStream('echo x; sleep 5', { timeout: '400ms' })) events.push(ev);
    expect(events[0]).toEqual({ stream: 'stdout', data: 'x\n' });
    expect(events.at(-1)).toMatchObject({ stream: 'exit', exitCode: 124, timedOut: true });
  });

  it('10 MB of output arrives complete and in order', async () => {
    const n = 1_500_000;
    const expected = Array.from({ length: n }, (_, i) => String(i + 1)).join('\n') + '\n';
    expect(expected.length).toBeGreaterThan(10_000_000);
    const parts: string[] = [];
    let chunks = 0;
    const stream = sb.execStream(`seq 1 ${n}`);
    for await (const ev of stream) {
      if (ev.stream === 'stdout') {
        parts.push(ev.data);
        chunks++;
      } else if (ev.stream === 'stderr') throw new Error(`stderr: ${ev.data}`);
    }
    const got = parts.join('');
    expect(got.length).toBe(expected.length);
    expect(got === expected).toBe(true);
    expect(chunks).toBeGreaterThan(1);
    expect(stream.exit?.exitCode).toBe(0);
  });

  it('a quiet stream longer than timeoutMs is not cut by the client timeout', async () => {
    const c = srv.client({ timeoutMs: 300 });
    const quiet = await c.get(sb.id);
    const events: ExecStreamEvent[] = [];
    for await (const ev of quiet.execStream('sleep 1; echo late')) events.push(ev);
    expect(events).toEqual([
      { stream: 'stdout', data: 'late\n' },
      expect.objectContaining({ stream: 'exit', exitCode: 0 }),
    ]);
  });

  const cancelledLines = (lines: string[]): number =>
    lines.filter((l) => / exec sh cancelled$/.test(l)).length;

  /** A command that prints `started`, then writes `marker` after a delay. */
  const delayedMarker = (marker: string): string =>
    `echo started; sleep 1.5; echo written > ${marker}; echo done`;

  it('control: the uncancelled command does write its marker', async () => {
    const events: ExecStreamEvent[] = [];
    for await (const ev of sb.execStream(delayedMarker('control-marker'))) events.push(ev);
    expect(events.at(-1)).toMatchObject({ stream: 'exit', exitCode: 0 });
    expect(await sb.readFile('control-marker')).toBe('written\n');
  });

  it('cancelling via AbortSignal stops the command in the sandbox', async () => {
    const cancelledBefore = cancelledLines(await sb.logs(1000));
    const ac = new AbortController();
    const seen: ExecStreamEvent[] = [];
    const stream = sb.execStream(delayedMarker('abort-marker'), { signal: ac.signal });
    const err = await caught(async () => {
      for await (const ev of stream) {
        seen.push(ev);
        if (ev.stream === 'stdout' && ev.data.includes('started')) ac.abort();
      }
    });
    expect(err).toBe(ac.signal.reason);
    expect((err as Error).name).toBe('AbortError');
    expect(seen).toEqual([{ stream: 'stdout', data: 'started\n' }]);
    await sleep(2_500);
    await expect(sb.statFile('abort-marker')).rejects.toBeInstanceOf(NotFoundError);
    // The sandbox's console log says the command was cancelled.
    expect(cancelledLines(await sb.logs(1000))).toBe(cancelledBefore + 1);
  });

  it('breaking out of the loop, and cancel(), stop the command too', async () => {
    for await (const ev of sb.execStream(delayedMarker('break-marker'))) {
      if (ev.stream === 'stdout') break;
    }
    const stream = sb.execStream(delayedMarker('cancel-marker'));
    const it = stream[Symbol.asyncIterator]();
    expect((await it.next()).value).toEqual({ stream: 'stdout', data: 'started\n' });
    stream.cancel();
    const err = await caught(() => it.next());
    expect((err as Error).name).toBe('AbortError');
    await expect(stream.wait()).rejects.toBe(err);
    await sleep(2_500);
    await expect(sb.statFile('break-marker')).rejects.toBeInstanceOf(NotFoundError);
    await expect(sb.statFile('cancel-marker')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('an already-aborted signal rejects without sending the request', async () => {
    const ac = new AbortController();
    ac.abort(new Error('never mind'));
    await expect(sb.exec('echo no', { signal: ac.signal })).rejects.toThrow('never mind');
    await expect(sb.execStream('echo no', { signal: ac.signal }).wait()).rejects.toThrow(
      'never mind',
    );
  });

  it('aborting a synchronous exec kills the command too', async () => {
    const ac = new AbortController();
    const pending = sb.exec(delayedMarker('sync-abort-marker'), { signal: ac.signal });
    await sleep(400);
    ac.abort();
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
    await sleep(2_500);
    await expect(sb.statFile('sync-abort-marker')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('exec log and logs', async () => {
    await sb.exec('echo logged');
    const log = await sb.execs(3);
    expect(log.length).toBeGreaterThan(0);
    expect(log.length).toBeLessThanOrEqual(3);
    expect(log[0]).toMatchObject({ command: 'echo logged', exit_code: 0, stdout: 'logged\n' });
    const lines = await sb.logs(5);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(5);
    expect(lines.join('\n')).toContain('exec');
    await expect(sb.logs(0)).rejects.toBeInstanceOf(BadRequestError);
  });
});
