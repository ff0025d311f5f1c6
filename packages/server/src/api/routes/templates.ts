import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { invalidField } from '../../domain/errors.js';
import type { PreviewService } from '../../orchestrator/preview-service.js';
import type {
  TemplateInput,
  TemplateService,
  TemplateSpawnOverrides,
} from '../../orchestrator/template-service.js';
import { callContext, clientGoneSignal } from '../context.js';
import {
  ErrorBodySchema,
  SandboxSchema,
  StatusBodySchema,
  TemplateBodySchema,
  TemplateNameParams,
  TemplateSchema,
  TemplateSpawnBodySchema,
} from '../schemas/common.js';
import type { TemplateBody, TemplateSpawnBody } from '../schemas/common.js';
import { sandboxToWire, templateToWire } from '../wire.js';

export interface TemplateRouteDeps {
  templates: TemplateService;
  /** Preview fields of the sandbox a spawn returns. */
  previews: PreviewService;
}

const errors = {
  400: ErrorBodySchema,
  404: ErrorBodySchema,
  409: ErrorBodySchema,
};

/** The same value under two names (the reference's and an alias) must agree. */
function either<T>(
  a: { field: string; value: T | undefined },
  b: { field: string; value: T | undefined },
  same: (x: T, y: T) => boolean = (x, y) => x === y,
): T | undefined {
  if (a.value !== undefined && b.value !== undefined && !same(a.value, b.value)) {
    throw invalidField(b.field, `disagrees with ${a.field}; send one of them`);
  }
  return a.value ?? b.value;
}

const sameList = (x: string[], y: string[]): boolean =>
  x.length === y.length && x.every((v, i) => v === y[i]);

/**
 * The Go original's template fields that it stored but never applied. This
 * server applies every field it keeps, so these are refused when set rather
 * than silently ignored.
 */
function refuseUnsupported(body: TemplateBody): void {
  if (body.allowed_hosts !== undefined && body.allowed_hosts.length > 0) {
    throw invalidField('allowed_hosts', 'is not supported by this server; leave it empty');
  }
  if (body.secrets !== undefined && body.secrets.length > 0) {
    throw invalidField('secrets', 'is not supported by this server; use env, or leave it empty');
  }
  if (body.pool_size !== undefined && body.pool_size !== 0) {
    throw invalidField('pool_size', 'is not supported by this server; leave it 0');
  }
}

/** The wire body as a service input; the read-only fields (version, times) are ignored. */
function templateInput(body: TemplateBody): TemplateInput {
  refuseUnsupported(body);
  const input: TemplateInput = {};
  if (body.image !== undefined) input.image = body.image;
  if (body.provider !== undefined) input.provider = body.provider;
  if (body.description !== undefined) input.description = body.description;
  if (body.memory_mb !== undefined) input.memoryMb = body.memory_mb;
  const vcpus = either(
    { field: 'cpu_cores', value: body.cpu_cores },
    { field: 'vcpus', value: body.vcpus },
  );
  if (vcpus !== undefined) input.vcpus = vcpus;
  if (body.ttl_seconds !== undefined) input.ttlSeconds = body.ttl_seconds;
  if (body.ttl !== undefined) input.ttl = body.ttl;
  if (body.env !== undefined) input.env = body.env;
  const setup = either(
    { field: 'setup', value: body.setup },
    { field: 'setup_commands', value: body.setup_commands },
    sameList,
  );
  if (setup !== undefined) input.setup = setup;
  if (body.metadata !== undefined) input.metadata = body.metadata;
  if (body.ports !== undefined) input.ports = body.ports;
  return input;
}

function spawnOverrides(body: TemplateSpawnBody, userHeader: unknown): TemplateSpawnOverrides {
  const out: TemplateSpawnOverrides = {};
  const owner = typeof userHeader === 'string' && userHeader !== '' ? userHeader : body.owner_id;
  if (owner !== undefined) out.ownerId = owner;
  if (body.provider !== undefined) out.provider = body.provider;
  if (body.ttl !== undefined) out.ttl = body.ttl;
  if (body.metadata !== undefined) out.metadata = body.metadata;
  if (body.env !== undefined) out.env = body.env;
  return out;
}

/**
 * `/templates`: CRUD and spawn. Every route takes the API key (as in the
 * reference): templates only describe sandboxes an API caller could spawn
 * directly, so managing them grants nothing beyond what the key already does.
 */
export const templateRoutes: FastifyPluginAsyncTypebox<TemplateRouteDeps> = async (app, deps) => {
  const { templates, previews } = deps;

  app.get(
    '/templates',
    {
      schema: {
        tags: ['templates'],
        summary: 'List templates, ordered by name',
        response: { 200: Type.Array(TemplateSchema) },
      },
    },
    async () => (await templates.list()).map(templateToWire),
  );

  app.post(
    '/templates',
    {
      schema: {
        tags: ['templates'],
        summary: 'Create a template (409 if the name exists)',
        body: TemplateBodySchema,
        response: { 201: TemplateSchema, ...errors },
      },
    },
    async (req, reply) => {
      const name = req.body.name;
      if (name === undefined || name === '') throw invalidField('name', 'is required');
      const rec = await templates.create(name, templateInput(req.body), callContext(req));
      return reply.status(201).send(templateToWire(rec));
    },
  );

  app.get(
    '/templates/:name',
    {
      schema: {
        tags: ['templates'],
        params: TemplateNameParams,
        response: { 200: TemplateSchema, 404: ErrorBodySchema },
      },
    },
    async (req) => templateToWire(await templates.get(req.params.name)),
  );

  app.put(
    '/templates/:name',
    {
      schema: {
        tags: ['templates'],
        summary: 'Replace a template (omitted fields take their defaults); version grows by 1',
        params: TemplateNameParams,
        body: TemplateBodySchema,
        response: { 200: TemplateSchema, ...errors },
      },
    },
    async (req) => {
      const { name } = req.params;
      if (req.body.name !== undefined && req.body.name !== name) {
        throw invalidField('name', `"${req.body.name}" does not match the path's "${name}"`);
      }
      const rec = await templates.replace(name, templateInput(req.body), callContext(req));
      return templateToWire(rec);
    },
  );

  app.delete(
    '/templates/:name',
    {
      schema: {
        tags: ['templates'],
        summary: 'Delete a template (sandboxes spawned from it are not touched)',
        params: TemplateNameParams,
        response: { 200: StatusBodySchema, 404: ErrorBodySchema },
      },
    },
    async (req) => {
      await templates.delete(req.params.name, callContext(req));
      return { status: 'deleted' };
    },
  );

  app.post(
    '/templates/:name/spawn',
    {
      schema: {
        tags: ['templates'],
        summary: 'Spawn a sandbox from a template; runs its setup commands before answering',
        description:
          'The body is optional. A failing setup command fails the spawn (400 naming the command, ' +
          'its exit code and output; 408 when it timed out) and the sandbox is destroyed.',
        params: TemplateNameParams,
        body: TemplateSpawnBodySchema,
        response: { 201: SandboxSchema, ...errors, 408: ErrorBodySchema, 429: ErrorBodySchema },
      },
      // The body is optional: no body means no overrides.
      preValidation: async (req) => {
        if (req.body === undefined || req.body === null) req.body = {};
      },
    },
    async (req, reply) => {
      const rec = await templates.spawn(
        req.params.name,
        spawnOverrides(req.body, req.headers['x-user-id']),
        callContext(req, clientGoneSignal(req, reply)),
      );
      return reply.status(201).send(sandboxToWire(rec, previews.wire(rec)));
    },
  );
};
