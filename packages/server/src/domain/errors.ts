/**
 * The one error catalog. Every error that crosses a seam (provider, store,
 * worker RPC, HTTP) is a {@link StacyError} with one of these codes, so a 404
 * raised on a worker is a 404 at the API.
 */
export const ERROR_STATUS = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  TIMEOUT: 408,
  CONFLICT: 409,
  // Added to the reference's codes: an oversized body is a distinct client
  // mistake whose fix (smaller body or a raised limit) differs from BAD_REQUEST.
  PAYLOAD_TOO_LARGE: 413,
  RESOURCE_LIMIT: 429,
  INTERNAL_ERROR: 500,
  UNAVAILABLE: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export const ERROR_CODES = Object.keys(ERROR_STATUS) as ErrorCode[];

/** One problem with one field of a request or config document. */
export interface FieldProblem {
  /** Dotted path of the offending field, e.g. `body.ttl` or `server.port`. */
  field: string;
  /** What is wrong with it, in words a user can act on. */
  problem: string;
}

export interface StacyErrorOptions {
  details?: FieldProblem[];
  cause?: unknown;
  retryable?: boolean;
}

/** The error type that crosses every seam of StacyVM. */
export class StacyError extends Error {
  readonly code: ErrorCode;
  readonly details: FieldProblem[] | undefined;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: StacyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StacyError';
    this.code = code;
    this.details = options.details;
    this.retryable = options.retryable ?? (code === 'UNAVAILABLE' || code === 'RESOURCE_LIMIT');
  }

  /** HTTP status for this error's code. */
  get status(): number {
    return ERROR_STATUS[this.code];
  }
}

export function isStacyError(err: unknown): err is StacyError {
  return err instanceof StacyError;
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(ERROR_STATUS, value);
}

/** Maps an HTTP status back to the catalog (used by clients of the wire). */
export function codeForStatus(status: number): ErrorCode {
  for (const code of ERROR_CODES) {
    if (ERROR_STATUS[code] === status) return code;
  }
  if (status >= 500) return 'INTERNAL_ERROR';
  return 'BAD_REQUEST';
}

export const badRequest = (message: string, details?: FieldProblem[]): StacyError =>
  new StacyError('BAD_REQUEST', message, details === undefined ? {} : { details });

/** A 400 naming one field. */
export const invalidField = (field: string, problem: string): StacyError =>
  new StacyError('BAD_REQUEST', `invalid ${field}: ${problem}`, { details: [{ field, problem }] });

export const notFound = (message: string): StacyError => new StacyError('NOT_FOUND', message);
export const conflict = (message: string): StacyError => new StacyError('CONFLICT', message);
export const timeoutError = (message: string): StacyError => new StacyError('TIMEOUT', message);
export const resourceLimit = (message: string): StacyError =>
  new StacyError('RESOURCE_LIMIT', message);
export const unavailable = (message: string, cause?: unknown): StacyError =>
  new StacyError('UNAVAILABLE', message, { cause });
export const internalError = (message: string, cause?: unknown): StacyError =>
  new StacyError('INTERNAL_ERROR', message, { cause });

/** Wire shape of an error body. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  request_id?: string;
  details?: FieldProblem[];
}

/** Serialises a StacyError for the wire; internal messages are masked. */
export function toErrorBody(err: StacyError, requestId?: string): ErrorBody {
  const body: ErrorBody = {
    code: err.code,
    message: err.code === 'INTERNAL_ERROR' ? 'internal error' : err.message,
  };
  if (requestId !== undefined) body.request_id = requestId;
  if (err.details !== undefined && err.details.length > 0) body.details = err.details;
  return body;
}

/** Rebuilds a StacyError from a wire body (worker RPC, SDK, CLI). */
export function fromErrorBody(status: number, body: unknown): StacyError {
  if (typeof body === 'object' && body !== null) {
    const rec = body as Record<string, unknown>;
    const code = isErrorCode(rec['code']) ? rec['code'] : codeForStatus(status);
    const message = typeof rec['message'] === 'string' ? rec['message'] : `HTTP ${status}`;
    const details = Array.isArray(rec['details']) ? (rec['details'] as FieldProblem[]) : undefined;
    return new StacyError(code, message, details === undefined ? {} : { details });
  }
  return new StacyError(codeForStatus(status), `HTTP ${status}`);
}
