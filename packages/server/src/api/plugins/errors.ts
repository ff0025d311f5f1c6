import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { FieldProblem } from '../../domain/errors.js';
import { isStacyError, StacyError, toErrorBody } from '../../domain/errors.js';

interface AjvLikeError {
  instancePath?: string;
  keyword?: string;
  message?: string;
  params?: Record<string, unknown>;
}

function fieldOf(context: string | undefined, e: AjvLikeError): string {
  const parts = (e.instancePath ?? '')
    .split('/')
    .filter((p) => p !== '')
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const missing = e.params?.['missingProperty'];
  if (typeof missing === 'string') parts.push(missing);
  const extra = e.params?.['additionalProperty'];
  if (typeof extra === 'string') parts.push(extra);
  const prefix = context === 'querystring' ? 'query' : (context ?? 'body');
  return [prefix, ...parts].join('.');
}

function problemOf(e: AjvLikeError): string {
  if (e.keyword === 'required') return 'is required';
  if (e.keyword === 'additionalProperties') return 'is not a known field';
  if (e.keyword === 'anyOf') return 'has the wrong type';
  return e.message ?? 'is invalid';
}

/** Translates anything thrown in a route into the catalog's envelope. */
export function toStacyError(err: unknown): StacyError {
  if (isStacyError(err)) return err;
  const fe = err as FastifyError & { validation?: AjvLikeError[]; validationContext?: string };
  if (Array.isArray(fe.validation)) {
    const details: FieldProblem[] = fe.validation.map((v) => ({
      field: fieldOf(fe.validationContext, v),
      problem: problemOf(v),
    }));
    const seen = new Set<string>();
    const unique = details.filter((d) => {
      const k = `${d.field}|${d.problem}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
    return new StacyError(
      'BAD_REQUEST',
      `invalid request: ${unique.map((d) => `${d.field} ${d.problem}`).join('; ')}`,
      { details: unique },
    );
  }
  const status = typeof fe.statusCode === 'number' ? fe.statusCode : 500;
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new StacyError(
        'PAYLOAD_TOO_LARGE',
        `request body is larger than the limit (server.max_body_bytes)`,
      );
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new StacyError('BAD_REQUEST', `unsupported Content-Type; send application/json`, {
        details: [{ field: 'header.content-type', problem: 'unsupported media type' }],
      });
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new StacyError('BAD_REQUEST', 'request body is empty; send a JSON object', {
        details: [{ field: 'body', problem: 'is empty' }],
      });
    default:
      break;
  }
  if (err instanceof SyntaxError || fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
    return new StacyError('BAD_REQUEST', `malformed JSON body: ${fe.message}`, {
      details: [{ field: 'body', problem: 'is not valid JSON' }],
    });
  }
  if (status >= 400 && status < 500) {
    return new StacyError(status === 404 ? 'NOT_FOUND' : 'BAD_REQUEST', fe.message);
  }
  return new StacyError('INTERNAL_ERROR', 'internal error', { cause: err });
}

export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const e = toStacyError(err);
    if (e.code === 'INTERNAL_ERROR') {
      request.log.error({ err: e.cause ?? err }, 'request failed');
    } else {
      request.log.info({ code: e.code, error: e.message }, 'request rejected');
    }
    if (reply.sent || reply.raw.headersSent) return;
    void reply.status(e.status).type('application/json').send(toErrorBody(e, request.id));
  });
  app.setNotFoundHandler((request, reply) => {
    const e = new StacyError(
      'NOT_FOUND',
      `no route for ${request.method} ${request.url.split('?')[0] ?? ''}`,
    );
    void reply.status(404).type('application/json').send(toErrorBody(e, request.id));
  });
}
