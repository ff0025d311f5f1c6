/**
 * Error classes. Every error the SDK throws for a server or transport problem is a
 * {@link StacyVMError}; the subclass says what went wrong. Aborts requested through an
 * `AbortSignal` are the exception: they reject with the signal's reason, as `fetch` does.
 */

/** One problem with one field of a request, as the server reports it in `details`. */
export interface ErrorDetail {
  /** Dotted path of the field, e.g. `body.vcpus`, `query.lines`, `ttl`. */
  field: string;
  /** What is wrong with it. */
  problem: string;
}

export interface StacyVMErrorOptions {
  /** Upper-case error code: the server's (`NOT_FOUND`, ...) or the SDK's (`CONNECTION_ERROR`, ...). */
  code: string;
  /** HTTP status; `0` when no response was received. */
  status: number;
  /** The server's request id (`request_id` in the body, else the `X-Request-ID` header). */
  requestId?: string | undefined;
  details?: ErrorDetail[] | undefined;
  cause?: unknown;
}

/** Base class of every error the SDK throws. */
export class StacyVMError extends Error {
  override readonly name: string = 'StacyVMError';
  /** Upper-case error code, e.g. `NOT_FOUND` or `CONNECTION_ERROR`. */
  readonly code: string;
  /** HTTP status of the response, `0` when none was received. */
  readonly status: number;
  /** The request id the server logged this request under, when known. */
  readonly requestId: string | undefined;
  /** The fields at fault, when the server named them. */
  readonly details: ErrorDetail[] | undefined;

  constructor(message: string, options: StacyVMErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code;
    this.status = options.status;
    this.requestId = options.requestId;
    this.details = options.details;
  }

  /** Alias of {@link status}, the name the 0.1 SDK used. */
  get statusCode(): number {
    return this.status;
  }

  /** True when the same request may succeed later (unavailable, limits, network). */
  get retryable(): boolean {
    return this.code === 'UNAVAILABLE' || this.code === 'RESOURCE_LIMIT';
  }
}

/** `400 BAD_REQUEST`: malformed or invalid request; see {@link StacyVMError.details}. */
export class BadRequestError extends StacyVMError {
  override readonly name: string = 'BadRequestError';
}
/** `401 UNAUTHORIZED`: missing or wrong API key. */
export class UnauthorizedError extends StacyVMError {
  override readonly name: string = 'UnauthorizedError';
}
/** `403 FORBIDDEN`: admin route without the admin key, or permission denied in a sandbox. */
export class ForbiddenError extends StacyVMError {
  override readonly name: string = 'ForbiddenError';
}
/** `404 NOT_FOUND`: unknown or destroyed sandbox, provider, worker, file or route. */
export class NotFoundError extends StacyVMError {
  override readonly name: string = 'NotFoundError';
}
/** `408 TIMEOUT`: a synchronous exec hit its deadline (the command was killed). */
export class TimeoutError extends StacyVMError {
  override readonly name: string = 'TimeoutError';
}
/** `409 CONFLICT`: the sandbox is not `running`, or a destroy is already in progress. */
export class ConflictError extends StacyVMError {
  override readonly name: string = 'ConflictError';
}
/** `413 PAYLOAD_TOO_LARGE`: a JSON body above the server's `max_body_bytes`. */
export class PayloadTooLargeError extends StacyVMError {
  override readonly name: string = 'PayloadTooLargeError';
}
/** `429 RESOURCE_LIMIT`: TTL above `max_ttl`, sandbox caps, no eligible worker, disk full. */
export class ResourceLimitError extends StacyVMError {
  override readonly name: string = 'ResourceLimitError';
}
/** `500 INTERNAL_ERROR`: a server fault; quote {@link StacyVMError.requestId} when reporting it. */
export class InternalError extends StacyVMError {
  override readonly name: string = 'InternalError';
}
/** `503 UNAVAILABLE`: a worker or the database is not answering; retry later. */
export class UnavailableError extends StacyVMError {
  override readonly name: string = 'UnavailableError';
}

/** The 0.1 SDK's name for a 404; every 404 is a {@link NotFoundError}. */
export const SandboxNotFoundError = NotFoundError;
export type SandboxNotFoundError = NotFoundError;

/** No response: connection refused, DNS failure, TLS failure, connection reset. */
export class ConnectionError extends StacyVMError {
  override readonly name: string = 'ConnectionError';
  override get retryable(): boolean {
    return true;
  }
}

/** No response within the client's `timeoutMs` (status `0`, code `REQUEST_TIMEOUT`). */
export class RequestTimeoutError extends ConnectionError {
  override readonly name: string = 'RequestTimeoutError';
}

/** An exec stream ended (or the connection broke) before its final `exit` line. */
export class StreamInterruptedError extends StacyVMError {
  override readonly name: string = 'StreamInterruptedError';
}

/** A successful response whose body is not JSON, or not the shape the route returns. */
export class MalformedResponseError extends StacyVMError {
  override readonly name: string = 'MalformedResponseError';
}

type ErrorClass = new (message: string, options: StacyVMErrorOptions) => StacyVMError;

/** The server's error catalog: code → status and class. */
export const ERROR_CATALOG: Readonly<Record<string, { status: number; cls: ErrorClass }>> = {
  BAD_REQUEST: { status: 400, cls: BadRequestError },
  UNAUTHORIZED: { status: 401, cls: UnauthorizedError },
  FORBIDDEN: { status: 403, cls: ForbiddenError },
  NOT_FOUND: { status: 404, cls: NotFoundError },
  TIMEOUT: { status: 408, cls: TimeoutError },
  CONFLICT: { status: 409, cls: ConflictError },
  PAYLOAD_TOO_LARGE: { status: 413, cls: PayloadTooLargeError },
  RESOURCE_LIMIT: { status: 429, cls: ResourceLimitError },
  INTERNAL_ERROR: { status: 500, cls: InternalError },
  UNAVAILABLE: { status: 503, cls: UnavailableError },
};

/** Code for a status when the body does not say (e.g. a proxy's HTML error page). */
function codeForStatus(status: number): string | undefined {
  for (const [code, entry] of Object.entries(ERROR_CATALOG)) {
    if (entry.status === status) return code;
  }
  if (status === 502 || status === 504) return 'UNAVAILABLE';
  return undefined;
}

/**
 * Builds the error for a server error. The class follows the body's `code`; an unknown code
 * falls back to the HTTP status, and an unknown status to the {@link StacyVMError} base class.
 */
export function createServerError(input: {
  status: number;
  code?: string | undefined;
  message: string;
  requestId?: string | undefined;
  details?: ErrorDetail[] | undefined;
}): StacyVMError {
  const byCode = input.code === undefined ? undefined : ERROR_CATALOG[input.code];
  const statusCode = codeForStatus(input.status);
  const byStatus = statusCode === undefined ? undefined : ERROR_CATALOG[statusCode];
  const cls = byCode?.cls ?? byStatus?.cls ?? StacyVMError;
  const code = input.code ?? statusCode ?? `HTTP_${input.status}`;
  return new cls(input.message, {
    code,
    status: input.status,
    requestId: input.requestId,
    details: input.details,
  });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseDetails(v: unknown): ErrorDetail[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: ErrorDetail[] = [];
  for (const d of v) {
    if (isRecord(d) && typeof d['field'] === 'string' && typeof d['problem'] === 'string') {
      out.push({ field: d['field'], problem: d['problem'] });
    }
  }
  return out;
}

/**
 * Maps a non-2xx response body to an error. `{code,message,request_id?,details?}` is the
 * server's envelope; anything else (an HTML page from a proxy, say) still gets the class of
 * its status, with the start of the body in the message.
 */
export function errorFromBody(
  status: number,
  statusText: string,
  bodyText: string,
  headerRequestId: string | undefined,
): StacyVMError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bodyText);
  } catch {
    parsed = undefined;
  }
  if (isRecord(parsed) && typeof parsed['code'] === 'string') {
    const message = typeof parsed['message'] === 'string' ? parsed['message'] : parsed['code'];
    const requestId =
      typeof parsed['request_id'] === 'string' ? parsed['request_id'] : headerRequestId;
    return createServerError({
      status,
      code: parsed['code'],
      message,
      requestId,
      details: parseDetails(parsed['details']),
    });
  }
  const snippet = bodyText.trim().slice(0, 200);
  const label = `HTTP ${status}${statusText === '' ? '' : ` ${statusText}`}`;
  return createServerError({
    status,
    message: snippet === '' ? label : `${label}: ${snippet}`,
    requestId: headerRequestId,
  });
}
