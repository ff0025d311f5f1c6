/**
 * Routes a worker process calls on the control plane, authenticated with
 * worker credentials (never API keys): see plugins/worker-auth.ts.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { parseDurationMs } from '../../domain/duration.js';
import { invalidField } from '../../domain/errors.js';
import type { WorkerService } from '../../orchestrator/worker-service.js';
import type { WorkerAuthOptions } from '../plugins/worker-auth.js';
import { requireWorker } from '../plugins/worker-auth.js';
import { ErrorBodySchema, WorkerSchema } from '../schemas/common.js';
import { workerToWire } from '../wire.js';

export interface WorkerRouteDeps {
  workers: WorkerService;
  auth: WorkerAuthOptions;
}

/** Body of `POST /worker/:id/heartbeat` (reference §3.2); unknown fields are ignored. */
export const HeartbeatBodySchema = Type.Object(
  {
    hostname: Type.String({ minLength: 1, maxLength: 255 }),
    status: Type.Optional(Type.String({ maxLength: 64 })),
    providers: Type.Optional(Type.Array(Type.String({ maxLength: 128 }), { maxItems: 64 })),
    capabilities: Type.Optional(Type.Array(Type.String({ maxLength: 128 }), { maxItems: 64 })),
    capacity: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { additionalProperties: true },
);

export const workerRoutes: FastifyPluginAsyncTypebox<WorkerRouteDeps> = async (app, deps) => {
  const { workers } = deps;
  app.post(
    '/worker/:id/heartbeat',
    {
      config: { access: 'worker' },
      onRequest: requireWorker(deps.auth, 'worker:heartbeat'),
      schema: {
        tags: ['workers'],
        security: [],
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }),
        body: HeartbeatBodySchema,
        response: {
          200: WorkerSchema,
          400: ErrorBodySchema,
          401: ErrorBodySchema,
          403: ErrorBodySchema,
          503: ErrorBodySchema,
        },
      },
    },
    async (req) => {
      const id = req.params.id;
      const body = req.body;
      const status = body.status?.trim() ?? '';
      // Control planes beat for their own workers; a remote process claiming
      // one of those ids would hijack placement onto a control plane's runtime:
      // remoteHeartbeat refuses them.
      const record = await workers.remoteHeartbeat({
        id,
        hostname: body.hostname,
        status: status === '' ? 'online' : status,
        providers: body.providers ?? [],
        capabilities: body.capabilities ?? [],
        capacity: body.capacity ?? {},
      });
      return workerToWire(record, workers.isStale(record));
    },
  );

  app.post(
    '/worker/:id/leases/:resourceId/renew',
    {
      config: { access: 'worker' },
      onRequest: requireWorker(deps.auth, 'worker:lease'),
      schema: {
        tags: ['workers'],
        security: [],
        summary: 'A worker extends its lease on a sandbox it holds',
        params: LeaseParams,
        body: RenewBodySchema,
        response: {
          200: LeaseResponseSchema,
          400: ErrorBodySchema,
          401: ErrorBodySchema,
          403: ErrorBodySchema,
          409: ErrorBodySchema,
          503: ErrorBodySchema,
        },
      },
    },
    async (req) => renewLease(workers, req.params.id, req.params.resourceId, req.body.ttl),
  );
};

export const LeaseParams = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 128 }),
  resourceId: Type.String({ minLength: 1, maxLength: 128 }),
});

export const RenewBodySchema = Type.Object({
  ttl: Type.String({ description: 'Go duration, e.g. 30s', maxLength: 64 }),
});

export const LeaseResponseSchema = Type.Object({
  lease: Type.Object({
    resource_id: Type.String(),
    holder_id: Type.String(),
    generation: Type.Integer(),
    expires_at: Type.String({ format: 'date-time' }),
  }),
});

/** Shared by the worker route and its admin alias. */
export async function renewLease(
  workers: WorkerService,
  workerId: string,
  resourceId: string,
  ttl: string,
): Promise<Static<typeof LeaseResponseSchema>> {
  let ttlMs: number;
  try {
    ttlMs = parseDurationMs(ttl);
  } catch (err) {
    throw invalidField('ttl', (err as Error).message);
  }
  const lease = await workers.renewLease(workerId, resourceId, ttlMs);
  return {
    lease: {
      resource_id: lease.resourceId,
      holder_id: lease.holderId,
      generation: lease.generation,
      expires_at: new Date(lease.expiresAtMs).toISOString(),
    },
  };
}
