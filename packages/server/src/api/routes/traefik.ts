/**
 * `GET /traefik/config`: the Traefik dynamic configuration (routers and
 * services for every running sandbox's declared ports) for Traefik's HTTP
 * provider, which polls it (`providers.http.endpoint`). Routes appear on
 * spawn and disappear on destroy at the next poll, without restarts.
 *
 * Access: `Authorization: Bearer <traefik.http_provider_token>` (compared in
 * constant time), or the admin key. With no key and no token configured the
 * route is open like every other route. Answers carry a strong ETag and a
 * matching `If-None-Match` gets 304.
 */
import { createHash } from 'node:crypto';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { StacyError, toErrorBody } from '../../domain/errors.js';
import type { AuthOptions } from '../plugins/auth.js';
import { safeEqual } from '../plugins/auth.js';

export interface TraefikRouteDeps {
  /** Builds the dynamic configuration from the current sandboxes. */
  dynamicConfig: () => Promise<object>;
  /** `traefik.http_provider_token`; empty = only the admin key is accepted. */
  providerToken: string;
  /** The API's keys, for the admin-key alternative. */
  auth: AuthOptions;
}

function bearerToken(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  if (typeof h !== 'string') return undefined;
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(h);
  return m?.[1];
}

/** Whether an `If-None-Match` header value matches the ETag (weak comparison, `*` too). */
export function etagMatches(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  const bare = etag.replace(/^W\//, '');
  return header
    .split(',')
    .map((t) => t.trim())
    .some((t) => t === '*' || t.replace(/^W\//, '') === bare);
}

function deny(reply: FastifyReply, req: FastifyRequest, err: StacyError): FastifyReply {
  return reply.status(err.status).type('application/json').send(toErrorBody(err, req.id));
}

/** Why the caller may not read the configuration, or undefined when it may. */
function refusal(req: FastifyRequest, deps: TraefikRouteDeps): StacyError | undefined {
  const { auth, providerToken } = deps;
  const bearer = bearerToken(req);
  if (bearer !== undefined && providerToken !== '' && safeEqual(bearer, providerToken)) {
    return undefined;
  }
  // The auth hook resolved the keys into a role.
  if (req.role === 'admin') return undefined;
  const adminFallback = auth.adminApiKey === '' && auth.adminFallbackEnabled;
  if (req.role === 'api' && adminFallback) return undefined;
  const nothingConfigured = auth.apiKey === '' && auth.adminApiKey === '' && providerToken === '';
  if (nothingConfigured) return undefined;
  if (req.role === 'api') {
    return new StacyError('FORBIDDEN', 'admin API key or Traefik provider token required');
  }
  return new StacyError(
    'UNAUTHORIZED',
    bearer === undefined ? 'invalid or missing API key' : 'invalid Traefik provider token',
  );
}

export const traefikRoutes: FastifyPluginAsync<TraefikRouteDeps> = async (app, deps) => {
  app.get(
    '/traefik/config',
    {
      // Checked below: the route also accepts a bearer token the auth hook does not know.
      config: { access: 'public' },
      schema: {
        tags: ['previews'],
        summary: 'Traefik dynamic configuration (HTTP provider) for sandbox previews',
        description:
          'Routers and services for every running sandbox port, pointing at the preview gateway. ' +
          'Send Authorization: Bearer <traefik.http_provider_token> (or the admin key). ' +
          'Supports If-None-Match (304).',
        security: [{ adminApiKey: [] }],
      },
    },
    async (req, reply) => {
      const err = refusal(req, deps);
      if (err !== undefined) return deny(reply, req, err);
      const body = JSON.stringify(await deps.dynamicConfig());
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
      void reply.header('etag', etag).header('cache-control', 'no-cache');
      const inm = req.headers['if-none-match'];
      if (etagMatches(typeof inm === 'string' ? inm : undefined, etag)) {
        return reply.status(304).send();
      }
      return reply.status(200).type('application/json; charset=utf-8').send(body);
    },
  );
};
