import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { EventBus, StacyEvent } from '../../orchestrator/events.js';
import type { SystemService } from '../../orchestrator/system-service.js';
import type { WorkerService } from '../../orchestrator/worker-service.js';
import { ErrorBodySchema, StatusBodySchema, WorkerSchema } from '../schemas/common.js';
import { providerToWire, workerToWire } from '../wire.js';

export interface SystemRouteDeps {
  system: SystemService;
  workers: WorkerService;
  events: EventBus;
  sseKeepaliveMs: number;
}

export const systemRoutes: FastifyPluginAsyncTypebox<SystemRouteDeps> = async (app, deps) => {
  const { system, workers, events } = deps;
  // Open SSE streams are ended on shutdown so close() does not wait on them.
  const openStreams = new Set<() => void>();
  app.addHook('preClose', (done) => {
    for (const end of openStreams) end();
    done();
  });

  app.get(
    '/health',
    {
      config: { access: 'public' },
      schema: { tags: ['system'], summary: 'Liveness with version' },
    },
    async () => ({ status: 'ok', version: system.version, uptime: system.uptime() }),
  );
  app.get('/live', { config: { access: 'public' }, schema: { tags: ['system'] } }, async () => ({
    status: 'alive',
    version: system.version,
    uptime: system.uptime(),
  }));
  app.get(
    '/ready',
    {
      config: { access: 'public' },
      schema: { tags: ['system'], summary: '503 until the store and a provider answer' },
    },
    async (_req, reply) => {
      const r = await system.ready();
      const providers = r.providers.map(providerToWire);
      return reply.status(r.ready ? 200 : 503).send({
        status: r.ready ? 'ready' : 'not_ready',
        version: system.version,
        uptime: system.uptime(),
        store: r.store,
        providers,
        ready_providers: r.providers.filter((p) => p.healthy).length,
        total_providers: r.providers.length,
      });
    },
  );

  app.get('/providers', { schema: { tags: ['providers'] } }, async () =>
    (await system.providers()).map(providerToWire),
  );
  app.post(
    '/providers/test',
    { schema: { tags: ['providers'], summary: 'Run every provider health check now' } },
    async () => system.testProviders(),
  );
  app.get(
    '/providers/:name',
    { schema: { tags: ['providers'], params: Type.Object({ name: Type.String() }) } },
    async (req) => {
      const d = await system.provider(req.params.name);
      return {
        name: d.info.name,
        healthy: d.info.healthy,
        default: d.info.isDefault,
        sandbox_count: d.sandboxCount,
        health: providerToWire(d.info),
        config: d.info.config,
      };
    },
  );

  const listWorkers = async () =>
    (await workers.list()).map((w) => workerToWire(w, workers.isStale(w)));
  const getWorker = async (id: string) => {
    const w = await workers.get(id);
    return workerToWire(w, workers.isStale(w));
  };
  const idParams = Type.Object({ id: Type.String() });
  app.get(
    '/workers',
    { schema: { tags: ['workers'], response: { 200: Type.Array(WorkerSchema) } } },
    listWorkers,
  );
  app.get(
    '/workers/:id',
    {
      schema: {
        tags: ['workers'],
        params: idParams,
        response: { 200: WorkerSchema, 404: ErrorBodySchema },
      },
    },
    async (req) => getWorker(req.params.id),
  );
  app.get(
    '/admin/workers',
    {
      config: { access: 'admin' },
      schema: { tags: ['admin'], response: { 200: Type.Array(WorkerSchema) } },
    },
    listWorkers,
  );
  app.get(
    '/admin/workers/:id',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['admin'],
        params: idParams,
        response: { 200: WorkerSchema, 404: ErrorBodySchema },
      },
    },
    async (req) => getWorker(req.params.id),
  );
  app.delete(
    '/admin/workers/:id',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['admin'],
        params: idParams,
        response: { 200: StatusBodySchema, 404: ErrorBodySchema },
      },
    },
    async (req) => {
      await workers.remove(req.params.id);
      return { status: 'deleted' };
    },
  );

  app.get(
    '/metrics/prometheus',
    { schema: { tags: ['system'], summary: 'Prometheus text exposition' } },
    async (_req, reply) =>
      reply.type('text/plain; version=0.0.4; charset=utf-8').send(await system.prometheus()),
  );

  app.get(
    '/events',
    {
      schema: {
        tags: ['system'],
        summary: 'Server-sent lifecycle events',
        description:
          'Each event is `id: evt-N` and `data: <event JSON>`; a `: keep-alive` comment is sent every ' +
          'server.sse_keepalive_interval. Reconnect with Last-Event-ID to replay missed events still in history. ' +
          'Filter with ?sandbox_id= and ?types=a,b.',
        querystring: Type.Object({
          sandbox_id: Type.Optional(Type.String()),
          types: Type.Optional(Type.String()),
        }),
      },
    },
    (req, reply) => {
      const sandboxFilter = req.query.sandbox_id;
      const typeFilter =
        req.query.types === undefined ? undefined : new Set(req.query.types.split(','));
      const wanted = (e: StacyEvent): boolean =>
        (sandboxFilter === undefined || e.sandbox_id === sandboxFilter) &&
        (typeFilter === undefined || typeFilter.has(e.type));
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
        'x-request-id': req.id,
        ...(reply.getHeader('access-control-allow-origin') === undefined
          ? {}
          : {
              'access-control-allow-origin': String(reply.getHeader('access-control-allow-origin')),
            }),
      });
      res.write(': connected\n\n');
      const write = (e: StacyEvent): void => {
        if (wanted(e)) res.write(`id: ${e.id}\ndata: ${JSON.stringify(e)}\n\n`);
      };
      const last = req.headers['last-event-id'];
      if (typeof last === 'string') for (const e of events.since(last)) write(e);
      const unsubscribe = events.subscribe(write);
      const keepalive = setInterval(() => res.write(': keep-alive\n\n'), deps.sseKeepaliveMs);
      const close = (): void => {
        clearInterval(keepalive);
        unsubscribe();
        openStreams.delete(end);
      };
      const end = (): void => {
        close();
        res.end();
      };
      openStreams.add(end);
      res.on('close', close);
    },
  );
};
