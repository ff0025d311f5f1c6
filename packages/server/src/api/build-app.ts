import { randomUUID } from 'node:crypto';
import cors from '@fastify/cors';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { LogController } from 'fastify';
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { EventBus } from '../orchestrator/events.js';
import type { Metrics } from '../orchestrator/metrics.js';
import type { PreviewService } from '../orchestrator/preview-service.js';
import type { SandboxService } from '../orchestrator/sandbox-service.js';
import type { SystemService } from '../orchestrator/system-service.js';
import type { TemplateService } from '../orchestrator/template-service.js';
import type { WorkerService } from '../orchestrator/worker-service.js';
import type { AuthOptions } from './plugins/auth.js';
import type { WorkerAuthOptions } from './plugins/worker-auth.js';
import { registerAuth } from './plugins/auth.js';
import { registerErrorHandling } from './plugins/errors.js';
import { execRoutes } from './routes/exec.js';
import { fileRoutes } from './routes/files.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { systemRoutes } from './routes/system.js';
import { templateRoutes } from './routes/templates.js';
import { traefikRoutes } from './routes/traefik.js';
import { workerRoutes } from './routes/worker.js';
import { workerAdminRoutes } from './routes/worker-admin.js';
import { ErrorBodySchema } from './schemas/common.js';

export interface AppDeps {
  sandboxes: SandboxService;
  /** Template CRUD and spawn-from-template (`/templates`). */
  templates: TemplateService;
  workers: WorkerService;
  system: SystemService;
  events: EventBus;
  metrics: Metrics;
  auth: AuthOptions;
  /**
   * Credentials accepted on worker routes (heartbeat, lease renewal). The
   * first signing key is the active one and also signs tokens issued by
   * `POST /admin/worker-tokens`.
   */
  workerAuth: WorkerAuthOptions;
  /** A pino logger, or false for none (tests). */
  logger: FastifyBaseLogger | false;
  /** Preview URLs, tokens and the preview fields of sandbox objects. */
  previews: PreviewService;
  corsAllowedOrigins: string[];
  maxBodyBytes: number;
  sseKeepaliveMs: number;
  /** `GET /traefik/config` for Traefik's HTTP provider; the route is absent without it. */
  traefik?: {
    /** The dynamic configuration built from the running sandboxes. */
    dynamicConfig: () => Promise<object>;
    /** `traefik.http_provider_token`; empty = admin key only. */
    providerToken: string;
  };
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * One info line per request (on completion, with method, route and status);
 * the incoming-request line is debug. Halves log volume on the hot path.
 */
class RequestLogController extends LogController {
  override incomingRequest(request: FastifyRequest): void {
    request.log.debug({ req: request }, 'incoming request');
  }

  override requestCompleted(
    error: Error | null | undefined,
    request: FastifyRequest,
    reply: FastifyReply,
  ): void {
    const fields = {
      method: request.method,
      url: request.url.split('?')[0],
      status: reply.statusCode,
      responseTime: reply.elapsedTime,
    };
    if (error) reply.log.error({ ...fields, err: error }, 'request errored');
    else reply.log.info(fields, 'request completed');
  }
}

/** Builds the HTTP app. Never listens: the composition root or a test does. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    ...(deps.logger === false ? { logger: false } : { loggerInstance: deps.logger }),
    bodyLimit: deps.maxBodyBytes,
    logController: new RequestLogController({ requestIdLogLabel: 'request_id' }),
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    ajv: { customOptions: { coerceTypes: false, allErrors: true, removeAdditional: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  // Hooks on every request are callback-style, not async: no promise per hook on the hot path.
  app.addHook('onRequest', (req, reply, done) => {
    void reply.header('x-request-id', req.id);
    done();
  });
  // While shutting down, responses close their connection so keep-alive
  // clients do not hold close() open until the shutdown timeout.
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    app.server.closeIdleConnections();
    done();
  });
  app.addHook('onSend', (_req, reply, payload, done) => {
    if (closing) void reply.header('connection', 'close');
    done(null, payload);
  });
  app.addHook('onResponse', (req, reply, done) => {
    deps.metrics.countHttp(req.method, req.routeOptions.url ?? 'unmatched', reply.statusCode);
    done();
  });

  registerErrorHandling(app);
  app.addSchema(ErrorBodySchema);

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'StacyVM API',
        version: deps.system.version,
        description:
          'Self-hosted sandboxes: spawn, exec, files, previews. Errors are {"code","message","request_id"}.',
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
          adminApiKey: { type: 'apiKey', in: 'header', name: 'X-Admin-API-Key' },
        },
      },
      security: [{ apiKey: [] }],
    },
  });

  // `*` allows any origin; an empty list allows no cross-origin calls.
  const allowAll = deps.corsAllowedOrigins.includes('*');
  await app.register(cors, {
    origin: allowAll ? '*' : deps.corsAllowedOrigins.length === 0 ? false : deps.corsAllowedOrigins,
    methods: ['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS'],
    allowedHeaders: [
      'Content-Type',
      'X-API-Key',
      'X-Admin-API-Key',
      'X-Request-ID',
      'X-User-ID',
      'X-Tenant-ID',
      'Authorization',
      'Last-Event-ID',
    ],
    exposedHeaders: ['X-Request-ID'],
    // Preflights are answered before auth: browsers never send keys on them.
    hook: 'onRequest',
  });
  registerAuth(app, deps.auth);
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });

  await app.register(
    async (api) => {
      await api.register(systemRoutes, {
        system: deps.system,
        workers: deps.workers,
        events: deps.events,
        sseKeepaliveMs: deps.sseKeepaliveMs,
      });
      await api.register(sandboxRoutes, {
        sandboxes: deps.sandboxes,
        previews: deps.previews,
      });
      await api.register(templateRoutes, { templates: deps.templates, previews: deps.previews });
      await api.register(execRoutes, { sandboxes: deps.sandboxes });
      await api.register(fileRoutes, { sandboxes: deps.sandboxes });
      await api.register(workerRoutes, { workers: deps.workers, auth: deps.workerAuth });
      if (deps.traefik !== undefined) {
        await api.register(traefikRoutes, { ...deps.traefik, auth: deps.auth });
      }
      await api.register(workerAdminRoutes, {
        workers: deps.workers,
        signingKey: deps.workerAuth.signingKeys[0] ?? '',
        adminKeyConfigured: deps.auth.adminApiKey !== '',
        nowMs: deps.workerAuth.nowMs,
      });
      api.get('/openapi.json', { config: { access: 'public' }, schema: { hide: true } }, async () =>
        app.swagger(),
      );
    },
    { prefix: '/api/v1' },
  );
  return app;
}
