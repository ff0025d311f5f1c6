import { describe, expect, it } from 'vitest';
import {
  MalformedResponseError,
  NotFoundError,
  StreamInterruptedError,
  UnavailableError,
} from './errors.js';
import { ExecStream, parseStreamLine } from './exec-stream.js';
import type { OpenResponse } from './http.js';
import type { ExecStreamEvent } from './types.js';

const enc = new TextEncoder();

/** An opener whose response body delivers `parts` as separate chunks. */
function opener(
  parts: (string | Uint8Array)[],
  opts: { type?: string; fail?: Error } = {},
): {
  open: (s: AbortSignal) => Promise<OpenResponse>;
  state: { aborted: boolean; closed: boolean };
} {
  const state = { aborted: false, closed: false };
  const open = async (_signal: AbortSignal): Promise<OpenResponse> => {
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const p = parts[i++];
        if (p !== undefined) controller.enqueue(typeof p === 'string' ? enc.encode(p) : p);
        else if (opts.fail !== undefined) controller.error(opts.fail);
        else controller.close();
      },
    });
    const response = new Response(body, {
      headers: { 'content-type': opts.type ?? 'application/x-ndjson', 'x-request-id': 'r-1' },
    });
    return {
      response,
      translate: (e) => e,
      stopTimer: () => undefined,
      abort: () => {
        state.aborted = true;
      },
      close: () => {
        state.closed = true;
      },
    };
  };
  return { open, state };
}

async function collect(stream: ExecStream): Promise<ExecStreamEvent[]> {
  const out: ExecStreamEvent[] = [];
  for await (const ev of stream) out.push(ev);
  return out;
}

describe('parseStreamLine', () => {
  it('parses chunks and the exit line; skips blanks and unknown streams', () => {
    expect(parseStreamLine('{"stream":"stdout","data":"x"}')).toEqual({
      stream: 'stdout',
      data: 'x',
    });
    expect(parseStreamLine('{"stream":"stderr"}')).toEqual({ stream: 'stderr', data: '' });
    expect(
      parseStreamLine(
        '{"stream":"exit","data":"","exit_code":124,"duration":"2s","timed_out":true}',
      ),
    ).toEqual({
      stream: 'exit',
      data: '',
      exitCode: 124,
      exit_code: 124,
      duration: '2s',
      durationMs: 2000,
      timedOut: true,
    });
    expect(parseStreamLine('   ')).toBeUndefined();
    expect(parseStreamLine('{"stream":"progress","data":"50%"}')).toBeUndefined();
  });
  it('throws for error lines and malformed lines', () => {
    expect(() =>
      parseStreamLine('{"stream":"error","data":"","code":"NOT_FOUND","message":"gone"}'),
    ).toThrow(NotFoundError);
    expect(() => parseStreamLine('nope')).toThrow(MalformedResponseError);
    expect(() => parseStreamLine('[1]')).toThrow(MalformedResponseError);
    expect(() => parseStreamLine('{"stream":"stdout","data":5}')).toThrow(MalformedResponseError);
    expect(() => parseStreamLine('{"stream":"exit"}')).toThrow(MalformedResponseError);
  });
});

describe('ExecStream', () => {
  it('reassembles lines split across chunks, multi-byte characters included', async () => {
    const line = '{"stream":"stdout","data":"héllo ✓"}\n';
    const bytes = enc.encode(line + '{"stream":"exit","data":"","exit_code":0}\n');
    // Split inside the multi-byte characters: one byte at a time.
    const parts = Array.from(bytes, (b) => new Uint8Array([b]));
    const { open, state } = opener(parts);
    const s = new ExecStream(open);
    expect(await collect(s)).toEqual([
      { stream: 'stdout', data: 'héllo ✓' },
      expect.objectContaining({ stream: 'exit', exitCode: 0 }),
    ]);
    expect(state).toEqual({ aborted: false, closed: true });
    expect(await s.exitCode()).toBe(0);
  });

  it('is lazy: nothing is sent until iteration or wait()', async () => {
    let opened = 0;
    const { open } = opener(['{"stream":"exit","data":"","exit_code":3}\n']);
    const s = new ExecStream((sig) => {
      opened++;
      return open(sig);
    });
    expect(opened).toBe(0);
    expect(await s.wait()).toMatchObject({ exitCode: 3 });
    expect(opened).toBe(1);
  });

  it('a body that ends or fails before the exit line → StreamInterruptedError; the request is aborted', async () => {
    const ended = opener(['{"stream":"stdout","data":"a"}\n']);
    await expect(new ExecStream(ended.open).wait()).rejects.toBeInstanceOf(StreamInterruptedError);
    expect(ended.state.aborted).toBe(true);
    const broken = opener(['{"stream":"stdout","data":"a"}\n'], { fail: new Error('reset') });
    const err: unknown = await new ExecStream(broken.open).wait().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StreamInterruptedError);
    expect(err).toMatchObject({ requestId: 'r-1' });
    expect((err as Error).message).toContain('reset');
  });

  it('an error line is thrown after the chunks before it', async () => {
    const { open } = opener([
      '{"stream":"stdout","data":"a"}\n{"stream":"error","data":"","code":"UNAVAILABLE","message":"w"}\n',
    ]);
    const seen: ExecStreamEvent[] = [];
    const err = await (async () => {
      for await (const ev of new ExecStream(open)) seen.push(ev);
    })().catch((e: unknown) => e);
    expect(seen).toEqual([{ stream: 'stdout', data: 'a' }]);
    expect(err).toBeInstanceOf(UnavailableError);
  });

  it('a reply that is not NDJSON → MalformedResponseError', async () => {
    const { open } = opener(['{}'], { type: 'application/json' });
    await expect(new ExecStream(open).wait()).rejects.toBeInstanceOf(MalformedResponseError);
  });

  it('breaking out of the loop aborts the request', async () => {
    const { open, state } = opener([
      '{"stream":"stdout","data":"a"}\n',
      '{"stream":"stdout","data":"b"}\n',
      '{"stream":"exit","data":"","exit_code":0}\n',
    ]);
    for await (const ev of new ExecStream(open)) {
      expect(ev).toEqual({ stream: 'stdout', data: 'a' });
      break;
    }
    expect(state.aborted).toBe(true);
  });
});
