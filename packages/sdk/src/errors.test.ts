import { describe, expect, it } from 'vitest';
import {
  BadRequestError,
  ConflictError,
  ERROR_CATALOG,
  ForbiddenError,
  InternalError,
  NotFoundError,
  PayloadTooLargeError,
  ResourceLimitError,
  SandboxNotFoundError,
  StacyVMError,
  TimeoutError,
  UnauthorizedError,
  UnavailableError,
  createServerError,
  errorFromBody,
} from './errors.js';

const CASES = [
  ['BAD_REQUEST', 400, BadRequestError],
  ['UNAUTHORIZED', 401, UnauthorizedError],
  ['FORBIDDEN', 403, ForbiddenError],
  ['NOT_FOUND', 404, NotFoundError],
  ['TIMEOUT', 408, TimeoutError],
  ['CONFLICT', 409, ConflictError],
  ['PAYLOAD_TOO_LARGE', 413, PayloadTooLargeError],
  ['RESOURCE_LIMIT', 429, ResourceLimitError],
  ['INTERNAL_ERROR', 500, InternalError],
  ['UNAVAILABLE', 503, UnavailableError],
] as const;

describe('error mapping', () => {
  it('covers the whole server catalog', () => {
    expect(Object.keys(ERROR_CATALOG).sort()).toEqual(CASES.map((c) => c[0]).sort());
  });

  it.each(CASES)('%s (%d) → its class, from the envelope', (code, status, cls) => {
    const body = JSON.stringify({
      code,
      message: `m-${code}`,
      request_id: 'rid-1',
      details: [{ field: 'body.x', problem: 'bad' }, { junk: true }],
    });
    const err = errorFromBody(status, '', body, 'header-rid');
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(StacyVMError);
    expect(err).toBeInstanceOf(Error);
    expect(err).toMatchObject({ code, status, message: `m-${code}`, requestId: 'rid-1' });
    expect(err.details).toEqual([{ field: 'body.x', problem: 'bad' }]);
    expect(err.name).toBe(cls.name);
    expect(err.retryable).toBe(code === 'UNAVAILABLE' || code === 'RESOURCE_LIMIT');
  });

  it('the code wins over the status; an unknown code falls back to the status', () => {
    expect(errorFromBody(500, '', '{"code":"NOT_FOUND","message":"x"}', undefined)).toBeInstanceOf(
      NotFoundError,
    );
    const e = errorFromBody(409, '', '{"code":"SOMETHING_NEW","message":"x"}', undefined);
    expect(e).toBeInstanceOf(ConflictError);
    expect(e.code).toBe('SOMETHING_NEW');
    const base = createServerError({ status: 418, message: 'teapot' });
    expect(base.constructor).toBe(StacyVMError);
    expect(base.code).toBe('HTTP_418');
  });

  it('a body that is not the envelope keeps the status, the header request id and a snippet', () => {
    const e = errorFromBody(503, 'Service Unavailable', '<h1>down</h1>', 'hdr-9');
    expect(e).toBeInstanceOf(UnavailableError);
    expect(e).toMatchObject({
      code: 'UNAVAILABLE',
      requestId: 'hdr-9',
      message: 'HTTP 503 Service Unavailable: <h1>down</h1>',
    });
    expect(errorFromBody(404, '', '', undefined).message).toBe('HTTP 404');
    expect(errorFromBody(504, '', 'x', undefined)).toBeInstanceOf(UnavailableError);
  });

  it('SandboxNotFoundError is NotFoundError; statusCode aliases status', () => {
    expect(SandboxNotFoundError).toBe(NotFoundError);
    const e = createServerError({ status: 404, code: 'NOT_FOUND', message: 'gone' });
    expect(e).toBeInstanceOf(SandboxNotFoundError);
    expect(e.statusCode).toBe(404);
  });
});
