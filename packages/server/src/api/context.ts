import type { FastifyReply, FastifyRequest } from 'fastify';
import type { CallContext } from '../orchestrator/sandbox-service.js';

/** Builds the orchestrator call context from a request. */
export function callContext(req: FastifyRequest, signal?: AbortSignal): CallContext {
  const tenant = req.headers['x-tenant-id'];
  const user = req.headers['x-user-id'];
  const ctx: CallContext = {
    requestId: req.id,
    actor: typeof user === 'string' && user !== '' ? user : req.role,
  };
  if (typeof tenant === 'string' && tenant.trim() !== '') ctx.tenantId = tenant.trim();
  if (signal !== undefined) ctx.signal = signal;
  return ctx;
}

/** An AbortSignal that fires when the client goes away before the reply is finished. */
export function clientGoneSignal(req: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  const onClose = (): void => {
    if (!reply.raw.writableFinished) ac.abort(new Error('client disconnected'));
  };
  reply.raw.once('close', onClose);
  req.raw.once('aborted', onClose);
  return ac.signal;
}
