import { Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { invalidField } from '../../domain/errors.js';
import type { SandboxService } from '../../orchestrator/sandbox-service.js';
import { callContext, clientGoneSignal } from '../context.js';
import {
  ChmodBodySchema,
  ErrorBodySchema,
  FileInfoSchema,
  MoveBodySchema,
  SandboxIdParams,
  StatusBodySchema,
  WriteFileBodySchema,
} from '../schemas/common.js';
import { fileToWire } from '../wire.js';

export interface FileRouteDeps {
  sandboxes: SandboxService;
}

const PathQuery = Type.Object({ path: Type.Optional(Type.String()) });
const errors = { 400: ErrorBodySchema, 404: ErrorBodySchema, 409: ErrorBodySchema };

function decodeContent(content: string, encoding: string | undefined): Uint8Array {
  if (encoding !== 'base64') return Buffer.from(content, 'utf8');
  const clean = content.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(clean) || clean.length % 4 === 1) {
    throw invalidField('body.content', 'is not valid base64');
  }
  return Buffer.from(clean, clean.includes('-') || clean.includes('_') ? 'base64url' : 'base64');
}

export const fileRoutes: FastifyPluginAsyncTypebox<FileRouteDeps> = async (app, deps) => {
  const { sandboxes } = deps;

  // Raw uploads stream straight to the provider; the JSON body limit does not apply.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) =>
    done(null, payload),
  );

  app.post(
    '/sandboxes/:id/files',
    {
      schema: {
        tags: ['files'],
        summary: 'Write a file from JSON (text, or base64 with encoding=base64)',
        params: SandboxIdParams,
        body: WriteFileBodySchema,
        response: { 200: StatusBodySchema, ...errors },
      },
    },
    async (req) => {
      const data = decodeContent(req.body.content, req.body.encoding);
      await sandboxes.writeFile(
        req.params.id,
        req.body.path,
        data,
        req.body.mode,
        callContext(req),
      );
      return { status: 'written' };
    },
  );

  app.put(
    '/sandboxes/:id/files',
    {
      schema: {
        tags: ['files'],
        summary: 'Write a file from a raw application/octet-stream body (streamed; any size)',
        params: SandboxIdParams,
        querystring: Type.Object({
          path: Type.Optional(Type.String()),
          mode: Type.Optional(Type.String()),
        }),
        response: { 200: StatusBodySchema, ...errors },
      },
    },
    async (req, reply) => {
      const body: unknown = req.body;
      if (!(body instanceof Readable)) {
        throw invalidField('header.content-type', 'PUT takes an application/octet-stream body');
      }
      await sandboxes.writeFile(
        req.params.id,
        req.query.path,
        body,
        req.query.mode,
        callContext(req, clientGoneSignal(req, reply)),
      );
      return { status: 'written' };
    },
  );

  app.get(
    '/sandboxes/:id/files',
    {
      schema: {
        tags: ['files'],
        summary: 'Read a file as raw bytes',
        params: SandboxIdParams,
        querystring: PathQuery,
      },
    },
    async (req, reply) => {
      if (req.query.path === undefined || req.query.path === '') {
        throw invalidField('query.path', 'path query parameter required');
      }
      const file = await sandboxes.readFile(req.params.id, req.query.path, callContext(req));
      return reply
        .header('content-type', 'application/octet-stream')
        .header('content-length', String(file.size))
        .send(Readable.from(file.body));
    },
  );

  app.delete(
    '/sandboxes/:id/files',
    {
      schema: {
        tags: ['files'],
        summary: 'Delete a file, or a directory with recursive=true',
        params: SandboxIdParams,
        querystring: Type.Object({
          path: Type.Optional(Type.String()),
          recursive: Type.Optional(Type.String()),
        }),
        response: { 200: StatusBodySchema, ...errors },
      },
    },
    async (req) => {
      await sandboxes.deleteFile(
        req.params.id,
        req.query.path,
        req.query.recursive === 'true',
        callContext(req),
      );
      return { status: 'deleted' };
    },
  );

  app.get(
    '/sandboxes/:id/files/list',
    {
      schema: {
        tags: ['files'],
        summary: 'List a directory',
        params: SandboxIdParams,
        querystring: PathQuery,
        response: { 200: Type.Array(FileInfoSchema), ...errors },
      },
    },
    async (req) =>
      (await sandboxes.listFiles(req.params.id, req.query.path, callContext(req))).map(fileToWire),
  );

  app.get(
    '/sandboxes/:id/files/stat',
    {
      schema: {
        tags: ['files'],
        params: SandboxIdParams,
        querystring: PathQuery,
        response: { 200: FileInfoSchema, ...errors },
      },
    },
    async (req) =>
      fileToWire(await sandboxes.statFile(req.params.id, req.query.path, callContext(req))),
  );

  app.get(
    '/sandboxes/:id/files/glob',
    {
      schema: {
        tags: ['files'],
        params: SandboxIdParams,
        querystring: Type.Object({ pattern: Type.Optional(Type.String()) }),
        response: { 200: Type.Array(Type.String()), ...errors },
      },
    },
    async (req) => sandboxes.globFiles(req.params.id, req.query.pattern, callContext(req)),
  );

  app.post(
    '/sandboxes/:id/files/move',
    {
      schema: {
        tags: ['files'],
        params: SandboxIdParams,
        body: MoveBodySchema,
        response: { 200: StatusBodySchema, ...errors },
      },
    },
    async (req) => {
      await sandboxes.moveFile(
        req.params.id,
        req.body.old_path,
        req.body.new_path,
        callContext(req),
      );
      return { status: 'moved' };
    },
  );

  app.post(
    '/sandboxes/:id/files/chmod',
    {
      schema: {
        tags: ['files'],
        params: SandboxIdParams,
        body: ChmodBodySchema,
        response: { 200: StatusBodySchema, ...errors },
      },
    },
    async (req) => {
      await sandboxes.chmodFile(req.params.id, req.body.path, req.body.mode, callContext(req));
      return { status: 'chmod applied' };
    },
  );
};
