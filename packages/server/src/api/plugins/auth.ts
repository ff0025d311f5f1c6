import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { StacyError, toErrorBody } from '../../domain/errors.js';

/** Who may call a route. `worker` routes check worker credentials themselves (worker-auth.ts). */
export type RouteAccess = 'public' | 'api' | 'admin' | 'worker';

export type Role = 'anonymous' | 'api' | 'admin';

export interface AuthOptions {
  apiKey: string;
  adminApiKey: string;
  /** With no admin key set, the API key is accepted on admin routes. */
  adminFallbackEnabled: boolean;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyRequest {
    role: Role;
  }
}

/** Constant-time comparison that does not leak the length either. */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

function headerValue(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** The role the request's keys grant (keys are checked in both headers). */
export function resolveRole(req: FastifyRequest, o: AuthOptions): Role {
  const presented = [headerValue(req, 'x-admin-api-key'), headerValue(req, 'x-api-key')].filter(
    (v): v is string => v !== undefined,
  );
  let role: Role = 'anonymous';
  for (const key of presented) {
    if (o.adminApiKey !== '' && safeEqual(key, o.adminApiKey)) return 'admin';
    if (o.apiKey !== '' && safeEqual(key, o.apiKey)) role = 'api';
  }
  return role;
}

function deny(reply: FastifyReply, req: FastifyRequest, err: StacyError): FastifyReply {
  return reply.status(err.status).type('application/json').send(toErrorBody(err, req.id));
}

/**
 * Enforces the route's access level. With no keys configured every route is
 * open (the server refuses a non-loopback bind in that case unless told).
 */
export function registerAuth(app: FastifyInstance, o: AuthOptions): void {
  const authConfigured = o.apiKey !== '' || o.adminApiKey !== '';
  app.decorateRequest('role', 'anonymous');
  // Callback-style, not async: no promise per request on the hot path. A
  // denied request is answered here and `done` is not called.
  app.addHook('onRequest', (req, reply, done) => {
    const access: RouteAccess = req.routeOptions.config.access ?? 'api';
    const role = resolveRole(req, o);
    req.role = role;
    if (access === 'public' || access === 'worker' || !authConfigured) {
      done();
      return;
    }
    if (role === 'anonymous') {
      deny(reply, req, new StacyError('UNAUTHORIZED', 'invalid or missing API key'));
      return;
    }
    if (access === 'admin' && role !== 'admin') {
      const fallback = o.adminApiKey === '' && o.adminFallbackEnabled && role === 'api';
      if (!fallback) {
        deny(reply, req, new StacyError('FORBIDDEN', 'admin API key required'));
        return;
      }
    }
    done();
  });
}
