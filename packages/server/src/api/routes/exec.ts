import { Readable } from 'node:stream';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { WebSocket } from 'ws';
import { formatDurationMs } from '../../domain/duration.js';
import { isStacyError, StacyError, toErrorBody } from '../../domain/errors.js';
import type { ExecEvent } from '../../domain/exec.js';
import type { SandboxService } from '../../orchestrator/sandbox-service.js';
import { resolveExecSpec } from '../../orchestrator/request-rules.js';
import { callContext, clientGoneSignal } from '../context.js';
import {
  ErrorBodySchema,
  ExecBodySchema,
  ExecResultSchema,
  SandboxIdParams,
} from '../schemas/common.js';
import type { ExecBody } from '../schemas/common.js';
import type { Static } from '@sinclair/typebox';

type ExecResultWire = Static<typeof ExecResultSchema>;
import { toStacyError } from '../plugins/errors.js';

export interface ExecRouteDeps {
  sandboxes: SandboxService;
}

/** One NDJSON/WebSocket message per exec event; text decoded without splitting characters. */
export class ExecEventEncoder {
  private readonly decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };

  constructor(private readonly sandboxId: string) {}

  encode(ev: ExecEvent): Record<string, unknown>[] {
    if (ev.type === 'exit') {
      const out: Record<string, unknown>[] = [];
      for (const stream of ['stdout', 'stderr'] as const) {
        const rest = this.decoders[stream].decode();
        if (rest !== '') out.push({ stream, data: rest });
      }
      if (ev.timedOut) out.push({ stream: 'stderr', data: `exec timeout: ${this.sandboxId}` });
      const exit: Record<string, unknown> = {
        stream: 'exit',
        data: '',
        exit_code: ev.exitCode,
        duration: formatDurationMs(ev.durationMs),
      };
      if (ev.timedOut) exit['timed_out'] = true;
      out.push(exit);
      return out;
    }
    const data = this.decoders[ev.type].decode(ev.data, { stream: true });
    return data === '' ? [] : [{ stream: ev.type, data }];
  }
}

function errorLine(err: unknown): Record<string, unknown> {
  const e = toStacyError(err);
  const body = toErrorBody(e);
  return { stream: 'error', data: '', code: body.code, message: body.message };
}

export const execRoutes: FastifyPluginAsyncTypebox<ExecRouteDeps> = async (app, deps) => {
  const { sandboxes } = deps;

  app.post(
    '/sandboxes/:id/exec',
    {
      schema: {
        tags: ['exec'],
        summary: 'Run a command: JSON result, or NDJSON chunks with stream=true',
        description:
          'With stream=true the body is application/x-ndjson: {"stream":"stdout"|"stderr","data"} lines, then ' +
          '{"stream":"exit","data":"","exit_code":N,"duration":"..."}; an error after the stream started arrives ' +
          'as {"stream":"error","data":"","code","message"}.',
        params: SandboxIdParams,
        body: ExecBodySchema,
        response: {
          200: ExecResultSchema,
          400: ErrorBodySchema,
          404: ErrorBodySchema,
          408: ErrorBodySchema,
          409: ErrorBodySchema,
        },
      },
    },
    async (req, reply) => {
      const spec = resolveExecSpec(req.body, sandboxes.limits);
      const signal = clientGoneSignal(req, reply);
      const ctx = callContext(req, signal);
      if (req.body.stream !== true) {
        const r = await sandboxes.exec(req.params.id, spec, ctx);
        return {
          exit_code: r.exitCode,
          stdout: r.stdout,
          stderr: r.stderr,
          duration: formatDurationMs(r.durationMs),
        };
      }
      const events = await sandboxes.execStream(req.params.id, spec, ctx);
      const encoder = new ExecEventEncoder(req.params.id);
      async function* lines(): AsyncGenerator<string> {
        // Headers go out now, not with the first output: a quiet command
        // must not look like a hung server to the client.
        if (!reply.raw.headersSent) reply.raw.flushHeaders();
        try {
          for await (const ev of events) {
            for (const msg of encoder.encode(ev)) yield `${JSON.stringify(msg)}\n`;
          }
        } catch (err) {
          if (!signal.aborted) yield `${JSON.stringify(errorLine(err))}\n`;
        }
      }
      return (
        reply
          .status(200)
          .header('content-type', 'application/x-ndjson')
          .header('cache-control', 'no-cache')
          .header('x-content-type-options', 'nosniff')
          // A stream bypasses the 200 JSON schema, which documents the non-streamed reply.
          .send(Readable.from(lines(), { objectMode: false }) as unknown as ExecResultWire)
      );
    },
  );

  app.get(
    '/sandboxes/:id/exec/ws',
    {
      websocket: true,
      schema: {
        tags: ['exec'],
        summary: 'Exec over WebSocket',
        description:
          'First client message: an exec request JSON. Server messages: {"stream","data"} chunks, then ' +
          '{"type":"exit","exit_code":N,"duration"}, then {"type":"done"} and a normal close. Errors: ' +
          '{"type":"error","code","message"} then close 1011 (1007 for an invalid request).',
        params: SandboxIdParams,
      },
    },
    (socket: WebSocket, req) => {
      const { id } = req.params;
      const ac = new AbortController();
      socket.on('close', () => ac.abort(new Error('websocket closed')));
      const send = (msg: Record<string, unknown>): void => {
        if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(msg));
      };
      socket.once('message', (raw: Buffer) => {
        void (async () => {
          let body: ExecBody;
          try {
            const parsed: unknown = JSON.parse(raw.toString('utf8'));
            if (
              typeof parsed !== 'object' ||
              parsed === null ||
              typeof (parsed as ExecBody).command !== 'string'
            ) {
              throw new StacyError(
                'BAD_REQUEST',
                'first message must be an exec request with a "command" string',
              );
            }
            body = parsed as ExecBody;
          } catch (err) {
            const e = isStacyError(err)
              ? err
              : new StacyError('BAD_REQUEST', 'first message is not valid JSON');
            send({ type: 'error', code: e.code, message: e.message });
            socket.close(1007, 'invalid request');
            return;
          }
          try {
            const spec = resolveExecSpec(body, sandboxes.limits);
            const events = await sandboxes.execStream(id, spec, callContext(req, ac.signal));
            const encoder = new ExecEventEncoder(id);
            for await (const ev of events) {
              for (const msg of encoder.encode(ev)) {
                if (msg['stream'] === 'exit') {
                  send({
                    type: 'exit',
                    exit_code: msg['exit_code'],
                    duration: msg['duration'],
                    timed_out: msg['timed_out'] === true,
                  });
                } else send(msg);
              }
            }
            send({ type: 'done' });
            socket.close(1000, 'done');
          } catch (err) {
            const body = toErrorBody(toStacyError(err));
            send({ type: 'error', code: body.code, message: body.message });
            socket.close(body.code === 'BAD_REQUEST' ? 1007 : 1011, 'exec failed');
          }
        })();
      });
    },
  );
};
