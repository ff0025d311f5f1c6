/**
 * Admin operations on remote workers: drain, lease renewal on a worker's
 * behalf, and the signed-token issuer workers bootstrap from (reference
 * §1.4, §2.6). Admin key only.
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { parseDurationMs } from '../../domain/duration.js';
import { invalidField, StacyError } from '../../domain/errors.js';
import {
  DEFAULT_WORKER_TOKEN_TTL_MS,
  issueWorkerToken,
  WORKER_AUDIENCE_CONTROL_PLANE,
  WORKER_AUDIENCE_RPC,
} from '../../domain/worker-token.js';
import type { WorkerService } from '../../orchestrator/worker-service.js';
import { ErrorBodySchema, WorkerSchema } from '../schemas/common.js';
import { workerToWire } from '../wire.js';
import { LeaseParams, LeaseResponseSchema, RenewBodySchema, renewLease } from './worker.js';

export interface WorkerAdminRouteDeps {
  workers: WorkerService;
  /** Active `auth.worker_signing_key`; empty = the issuer is not configured. */
  signingKey: string;
  /**
   * Whether `auth.admin_api_key` is set. The issuer mints credentials for any
   * worker id, so it answers only a real admin key: never the API key through
   * `admin_fallback_enabled`, never an unauthenticated server.
   */
  adminKeyConfigured: boolean;
  nowMs: () => number;
}

const IssueBodySchema = Type.Object({
  worker_id: Type.String({ maxLength: 128 }),
  ttl: Type.Optional(
    Type.String({ maxLength: 64, description: 'Go duration, default 5m, at most 15m' }),
  ),
  scopes: Type.Optional(Type.Array(Type.String({ maxLength: 64 }), { maxItems: 16 })),
  audience: Type.Optional(Type.String({ maxLength: 64 })),
});

const IssuedSchema = Type.Object({
  token: Type.String(),
  worker_id: Type.String(),
  token_id: Type.String(),
  audience: Type.String(),
  expires_at: Type.String({ format: 'date-time' }),
});

export const workerAdminRoutes: FastifyPluginAsyncTypebox<WorkerAdminRouteDeps> = async (
  app,
  deps,
) => {
  const { workers } = deps;
  app.post(
    '/admin/workers/:id/drain',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['admin'],
        summary: 'Drain a remote worker: no new sandboxes, existing ones keep running',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }),
        response: {
          200: WorkerSchema,
          400: ErrorBodySchema,
          404: ErrorBodySchema,
          503: ErrorBodySchema,
        },
      },
    },
    async (req) => {
      const w = await workers.drain(req.params.id, { signal: AbortSignal.timeout(15_000) });
      return workerToWire(w, workers.isStale(w));
    },
  );

  app.post(
    '/admin/workers/:id/leases/:resourceId/renew',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['admin'],
        summary: "Renew a worker's lease on its behalf",
        params: LeaseParams,
        body: RenewBodySchema,
        response: { 200: LeaseResponseSchema, 400: ErrorBodySchema, 409: ErrorBodySchema },
      },
    },
    async (req) => renewLease(workers, req.params.id, req.params.resourceId, req.body.ttl),
  );

  app.post(
    '/admin/worker-tokens',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['admin'],
        summary: 'Issue a short-lived signed worker token (bootstrap)',
        body: IssueBodySchema,
        response: { 200: IssuedSchema, 400: ErrorBodySchema, 503: ErrorBodySchema },
      },
    },
    async (req) => {
      if (!deps.adminKeyConfigured) {
        throw new StacyError(
          'FORBIDDEN',
          'the worker token issuer needs auth.admin_api_key (the API key is not accepted for it, even with admin_fallback_enabled)',
        );
      }
      if (deps.signingKey.trim() === '') {
        throw new StacyError(
          'UNAVAILABLE',
          'worker token issuer is not configured (set auth.worker_signing_key)',
        );
      }
      const body = req.body;
      let ttlMs = DEFAULT_WORKER_TOKEN_TTL_MS;
      if (body.ttl !== undefined && body.ttl !== '') {
        try {
          ttlMs = parseDurationMs(body.ttl);
        } catch (err) {
          throw invalidField('ttl', (err as Error).message);
        }
      }
      for (const [i, scope] of (body.scopes ?? []).entries()) {
        if (!scope.startsWith('worker:')) {
          throw invalidField(`scopes[${i}]`, 'must start with "worker:"');
        }
      }
      const audience = body.audience ?? WORKER_AUDIENCE_CONTROL_PLANE;
      if (audience !== WORKER_AUDIENCE_CONTROL_PLANE && audience !== WORKER_AUDIENCE_RPC) {
        throw invalidField(
          'audience',
          `must be "${WORKER_AUDIENCE_CONTROL_PLANE}" or "${WORKER_AUDIENCE_RPC}"`,
        );
      }
      const issued = issueWorkerToken(
        {
          workerId: body.worker_id,
          ttlMs,
          audience,
          ...(body.scopes === undefined ? {} : { scopes: body.scopes }),
        },
        deps.signingKey,
        deps.nowMs(),
      );
      return {
        token: issued.token,
        worker_id: issued.claims.worker_id,
        token_id: issued.claims.jti ?? '',
        audience,
        expires_at: new Date(issued.claims.exp * 1000).toISOString(),
      };
    },
  );
};
