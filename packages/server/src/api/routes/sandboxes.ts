import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { invalidField } from '../../domain/errors.js';
import { parsePreviewPort } from '../../domain/preview.js';
import type { PreviewService } from '../../orchestrator/preview-service.js';
import type { SandboxService } from '../../orchestrator/sandbox-service.js';
import { callContext, clientGoneSignal } from '../context.js';
import {
  ErrorBodySchema,
  ExtendBodySchema,
  PreviewSchema,
  SandboxIdParams,
  SandboxSchema,
  SpawnBodySchema,
  StatusBodySchema,
} from '../schemas/common.js';
import type { SpawnBody } from '../schemas/common.js';
import { execLogToWire, previewToWire, sandboxToWire } from '../wire.js';

export interface SandboxRouteDeps {
  sandboxes: SandboxService;
  /** Preview domain, scheme and port of each sandbox; preview URLs and tokens. */
  previews: PreviewService;
}

const errors = {
  400: ErrorBodySchema,
  404: ErrorBodySchema,
  409: ErrorBodySchema,
  429: ErrorBodySchema,
};

function spawnInput(body: SpawnBody, userHeader: unknown): Parameters<SandboxService['spawn']>[0] {
  const owner = typeof userHeader === 'string' && userHeader !== '' ? userHeader : body.owner_id;
  const input: Parameters<SandboxService['spawn']>[0] = {};
  if (body.image !== undefined) input.image = body.image;
  if (body.provider !== undefined) input.provider = body.provider;
  if (body.memory_mb !== undefined) input.memoryMb = body.memory_mb;
  if (body.vcpus !== undefined) input.vcpus = body.vcpus;
  if (body.ttl !== undefined) input.ttl = body.ttl;
  if (owner !== undefined) input.ownerId = owner;
  if (body.metadata !== undefined) input.metadata = body.metadata;
  if (body.ports !== undefined) input.ports = body.ports;
  return input;
}

export const sandboxRoutes: FastifyPluginAsyncTypebox<SandboxRouteDeps> = async (app, deps) => {
  const { sandboxes, previews } = deps;
  const wire = (s: Parameters<typeof sandboxToWire>[0]) => sandboxToWire(s, previews.wire(s));

  app.get(
    '/sandboxes',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'List live sandboxes, newest first',
        response: { 200: Type.Array(SandboxSchema) },
      },
    },
    async (req) => (await sandboxes.list(callContext(req))).map(wire),
  );

  app.post(
    '/sandboxes',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Create a sandbox',
        body: SpawnBodySchema,
        response: { 201: SandboxSchema, ...errors },
      },
    },
    async (req, reply) => {
      const rec = await sandboxes.spawn(
        spawnInput(req.body, req.headers['x-user-id']),
        callContext(req, clientGoneSignal(req, reply)),
      );
      return reply.status(201).send(wire(rec));
    },
  );

  app.delete(
    '/sandboxes',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Destroy every sandbox past its expiry',
        response: { 200: Type.Object({ pruned: Type.Integer() }) },
      },
    },
    async (req) => ({ pruned: await sandboxes.prune(callContext(req)) }),
  );

  app.post(
    '/sandboxes/admission',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Would a spawn with this body be admitted, and where would it run?',
        body: SpawnBodySchema,
      },
    },
    async (req) => sandboxes.admission(spawnInput(req.body, req.headers['x-user-id'])),
  );

  app.get(
    '/sandboxes/:id',
    {
      schema: {
        tags: ['sandboxes'],
        params: SandboxIdParams,
        response: { 200: SandboxSchema, 404: ErrorBodySchema },
      },
    },
    async (req) => wire(await sandboxes.refresh(req.params.id, callContext(req))),
  );

  app.delete(
    '/sandboxes/:id',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Destroy a sandbox; a second destroy is 404',
        params: SandboxIdParams,
        response: { 200: StatusBodySchema, ...errors },
      },
    },
    async (req, reply) => {
      await sandboxes.destroy(req.params.id, callContext(req, clientGoneSignal(req, reply)));
      return { status: 'destroyed' };
    },
  );

  app.post(
    '/sandboxes/:id/extend',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Set expiry to now + ttl (bounded by max_ttl)',
        params: SandboxIdParams,
        body: ExtendBodySchema,
        response: { 200: SandboxSchema, ...errors },
      },
    },
    async (req) => wire(await sandboxes.extend(req.params.id, req.body.ttl, callContext(req))),
  );

  app.get(
    '/sandboxes/:id/preview/:port',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Preview URL of a sandbox port (and a token when previews are private)',
        params: Type.Object({ id: Type.String(), port: Type.String() }),
        response: { 200: PreviewSchema, 400: ErrorBodySchema, 404: ErrorBodySchema },
      },
    },
    async (req) => {
      const port = parsePreviewPort(req.params.port);
      if (port === undefined) {
        throw invalidField('port', `"${req.params.port}" is not a port from 1 to 65535`);
      }
      return previewToWire(await previews.describe(req.params.id, port, callContext(req)));
    },
  );

  app.get(
    '/sandboxes/:id/logs',
    {
      schema: {
        tags: ['sandboxes'],
        summary: 'Last N console lines',
        params: SandboxIdParams,
        querystring: Type.Object({ lines: Type.Optional(Type.String()) }),
        response: { 200: Type.Array(Type.String()), 404: ErrorBodySchema },
      },
    },
    async (req) => {
      const raw = req.query.lines;
      let lines = 100;
      if (raw !== undefined && raw !== '') {
        lines = Number(raw);
        if (!Number.isInteger(lines) || lines <= 0 || lines > 10000) {
          throw invalidField('query.lines', 'must be an integer from 1 to 10000');
        }
      }
      return sandboxes.logs(req.params.id, lines, callContext(req));
    },
  );

  app.get(
    '/sandboxes/:id/stats',
    { schema: { tags: ['sandboxes'], summary: 'Live resource use', params: SandboxIdParams } },
    async (req) => {
      const s = await sandboxes.stats(req.params.id, callContext(req));
      if (s === undefined) return { supported: false };
      return {
        supported: true,
        cpu_pct: s.cpuPct,
        mem_bytes: s.memBytes,
        mem_limit_bytes: s.memLimitBytes,
      };
    },
  );

  app.get(
    '/sandboxes/:id/execs',
    {
      schema: {
        tags: ['exec'],
        summary: 'Recent exec log rows, newest first',
        params: SandboxIdParams,
        querystring: Type.Object({ limit: Type.Optional(Type.String()) }),
      },
    },
    async (req) => {
      const limit = req.query.limit === undefined ? 50 : Number(req.query.limit);
      if (!Number.isInteger(limit) || limit <= 0 || limit > 1000) {
        throw invalidField('query.limit', 'must be an integer from 1 to 1000');
      }
      return (await sandboxes.execLogs(req.params.id, limit, callContext(req))).map(execLogToWire);
    },
  );
};
