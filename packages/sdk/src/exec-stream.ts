/**
 * Streamed exec: the server's NDJSON (`{"stream":"stdout"|"stderr","data"}` lines, then one
 * `{"stream":"exit","exit_code",...}` line, or a `{"stream":"error","code","message"}` line).
 */
import { parseGoDuration } from './duration.js';
import {
  ERROR_CATALOG,
  MalformedResponseError,
  StreamInterruptedError,
  createServerError,
} from './errors.js';
import type { OpenResponse } from './http.js';
import type { ExecExit, ExecStreamEvent, StreamChunk } from './types.js';
import { isRecord } from './validate.js';

/** Opens the streaming request; the signal aborts it. */
export type StreamOpener = (signal: AbortSignal) => Promise<OpenResponse>;

function malformedLine(what: string, line: string, requestId?: string): MalformedResponseError {
  return new MalformedResponseError(`exec stream: ${what}: ${line.slice(0, 160)}`, {
    code: 'MALFORMED_RESPONSE',
    status: 200,
    requestId,
  });
}

/**
 * Parses one NDJSON line. Returns `undefined` for blank lines and for `stream` values this SDK
 * does not know (so a newer server may add some); throws for an `error` line and for lines
 * that are not JSON objects with a string `stream`.
 */
export function parseStreamLine(line: string, requestId?: string): ExecStreamEvent | undefined {
  const text = line.trim();
  if (text === '') return undefined;
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    throw malformedLine('line is not JSON', text, requestId);
  }
  if (!isRecord(obj) || typeof obj['stream'] !== 'string') {
    throw malformedLine('line has no "stream"', text, requestId);
  }
  const stream = obj['stream'];
  switch (stream) {
    case 'stdout':
    case 'stderr': {
      const data = obj['data'] ?? '';
      if (typeof data !== 'string') throw malformedLine('"data" is not a string', text, requestId);
      return { stream, data } satisfies StreamChunk;
    }
    case 'exit': {
      const code = obj['exit_code'];
      if (typeof code !== 'number') throw malformedLine('exit line has no exit_code', text);
      const duration = typeof obj['duration'] === 'string' ? obj['duration'] : '';
      return {
        stream: 'exit',
        data: '',
        exitCode: code,
        exit_code: code,
        duration,
        durationMs: parseGoDuration(duration) ?? Number.NaN,
        timedOut: obj['timed_out'] === true,
      } satisfies ExecExit;
    }
    case 'error': {
      const code = typeof obj['code'] === 'string' ? obj['code'] : 'INTERNAL_ERROR';
      const message = typeof obj['message'] === 'string' ? obj['message'] : code;
      throw createServerError({
        status: ERROR_CATALOG[code]?.status ?? 500,
        code,
        message,
        requestId,
      });
    }
    default:
      return undefined;
  }
}

/**
 * The output of {@link Sandbox.execStream}: an async iterable of {@link StreamChunk}s followed
 * by one {@link ExecExit}. The request is sent when iteration (or {@link wait}) starts, and it
 * can be iterated once. Leaving a `for await` loop early (`break`, `return`, a throw) closes
 * the connection, which makes the server kill the command; so does the `signal` option and
 * {@link cancel}.
 *
 * Errors: the server's pre-stream errors (404, 409, 400...) and an `error` line are thrown as
 * their {@link StacyVMError} subclass; a stream that ends or breaks without its `exit` line
 * throws {@link StreamInterruptedError}; an abort rejects with the signal's reason.
 */
export class ExecStream implements AsyncIterable<ExecStreamEvent> {
  private readonly controller = new AbortController();
  private readonly iterator: AsyncGenerator<ExecStreamEvent, void, undefined>;
  private exitEvent: ExecExit | undefined;
  private failure: { error: unknown } | undefined;

  /** @internal Use {@link Sandbox.execStream}. */
  constructor(
    private readonly opener: StreamOpener,
    private readonly userSignal?: AbortSignal,
  ) {
    this.iterator = this.run();
  }

  [Symbol.asyncIterator](): AsyncGenerator<ExecStreamEvent, void, undefined> {
    return this.iterator;
  }

  /** The exit event, once the stream has delivered it. */
  get exit(): ExecExit | undefined {
    return this.exitEvent;
  }

  /**
   * Reads the stream to its end (discarding output not yet consumed) and returns the exit
   * event. After a finished iteration it returns the stored exit event at once.
   */
  async wait(): Promise<ExecExit> {
    if (this.exitEvent === undefined && this.failure === undefined) {
      for (;;) {
        const r = await this.iterator.next();
        if (r.done === true) break;
      }
    }
    if (this.failure !== undefined) throw this.failure.error;
    if (this.exitEvent === undefined) {
      throw new StreamInterruptedError('exec stream was closed before its exit line', {
        code: 'STREAM_INTERRUPTED',
        status: 0,
      });
    }
    return this.exitEvent;
  }

  /** Shorthand for `(await wait()).exitCode`. */
  async exitCode(): Promise<number> {
    return (await this.wait()).exitCode;
  }

  /** Aborts the stream; the server kills the command. Iteration rejects with `reason`. */
  cancel(reason?: unknown): void {
    this.controller.abort(
      reason ?? new DOMException('the exec stream was cancelled', 'AbortError'),
    );
  }

  private async *run(): AsyncGenerator<ExecStreamEvent, void, undefined> {
    try {
      yield* this.read();
    } catch (err) {
      this.failure = { error: err };
      throw err;
    }
  }

  private async *read(): AsyncGenerator<ExecStreamEvent, void, undefined> {
    const signal = this.controller.signal;
    const user = this.userSignal;
    const onUserAbort = (): void => this.controller.abort(user?.reason);
    if (user?.aborted === true) throw user.reason;
    user?.addEventListener('abort', onUserAbort, { once: true });
    let open: OpenResponse | undefined;
    let completed = false;
    try {
      open = await this.opener(signal);
      // The client timeout bounds the wait for the headers, never a live stream.
      open.stopTimer();
      const { response } = open;
      const requestId = response.headers.get('x-request-id') ?? undefined;
      const type = response.headers.get('content-type') ?? '';
      if (!type.includes('ndjson') || response.body === null) {
        const text = await response.text().catch(() => '');
        throw new MalformedResponseError(
          `exec stream: expected application/x-ndjson, got ${type === '' ? 'no content type' : type}: ${text.slice(0, 120)}`,
          { code: 'MALFORMED_RESPONSE', status: response.status, requestId },
        );
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (signal.aborted) throw signal.reason;
          throw new StreamInterruptedError(
            `exec stream broke before its exit line: ${err instanceof Error ? err.message : String(err)}`,
            { code: 'STREAM_INTERRUPTED', status: response.status, requestId, cause: err },
          );
        }
        if (chunk.done) break;
        buf += decoder.decode(chunk.value, { stream: true });
        let start = 0;
        for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n', start)) {
          const ev = parseStreamLine(buf.slice(start, nl), requestId);
          start = nl + 1;
          if (ev === undefined) continue;
          if (ev.stream === 'exit') {
            this.exitEvent = ev;
            completed = true;
            void reader.cancel().catch(() => undefined);
            yield ev;
            return;
          }
          yield ev;
        }
        buf = buf.slice(start);
      }
      buf += decoder.decode();
      const last = parseStreamLine(buf, requestId);
      if (last?.stream === 'exit') {
        this.exitEvent = last;
        completed = true;
        yield last;
        return;
      }
      if (last !== undefined) yield last;
      if (signal.aborted) throw signal.reason;
      throw new StreamInterruptedError('exec stream ended without an exit line', {
        code: 'STREAM_INTERRUPTED',
        status: response.status,
        requestId,
      });
    } finally {
      user?.removeEventListener('abort', onUserAbort);
      if (open !== undefined) {
        if (completed) open.close();
        else open.abort();
      }
    }
  }
}
