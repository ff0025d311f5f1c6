/**
 * A JSON Schema subset of Traefik v3's dynamic configuration (the `http`
 * routers, services and middlewares of the file/HTTP providers), written
 * from Traefik's "File Configuration Reference" and router/service/
 * middleware reference pages. Unknown fields are refused, so a misspelt
 * field name (`entrypoints`, `loadbalancer`, `passHostheader`) fails the
 * structural tests instead of being silently ignored by Traefik.
 *
 * Test-only: nothing at run time validates against it.
 */
import { Type } from '@sinclair/typebox';
import type { TSchema } from '@sinclair/typebox';

/** Traefik element names: no `@` (provider separator). */
const NAME = '^[^@]+$';

function record<T extends TSchema>(value: T) {
  // A section present without elements is refused by the file provider ("standalone element").
  return Type.Record(Type.String({ pattern: NAME }), value, {
    minProperties: 1,
    additionalProperties: false,
  });
}

const Strings = Type.Array(Type.String({ minLength: 1 }));

const RouterTls = Type.Object(
  {
    options: Type.Optional(Type.String()),
    certResolver: Type.Optional(Type.String({ minLength: 1 })),
    domains: Type.Optional(
      Type.Array(
        Type.Object(
          { main: Type.String({ minLength: 1 }), sans: Type.Optional(Strings) },
          { additionalProperties: false },
        ),
      ),
    ),
  },
  { additionalProperties: false },
);

export const TraefikRouterSchema = Type.Object(
  {
    entryPoints: Type.Optional(Strings),
    middlewares: Type.Optional(Strings),
    service: Type.String({ minLength: 1 }),
    rule: Type.String({ minLength: 1 }),
    ruleSyntax: Type.Optional(Type.String()),
    priority: Type.Optional(Type.Integer({ minimum: 0 })),
    tls: Type.Optional(RouterTls),
    observability: Type.Optional(
      Type.Object(
        {
          accessLogs: Type.Optional(Type.Boolean()),
          metrics: Type.Optional(Type.Boolean()),
          tracing: Type.Optional(Type.Boolean()),
          traceVerbosity: Type.Optional(Type.String()),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

const Server = Type.Object(
  {
    url: Type.String({ pattern: '^https?://[^\\s/?#@]+$' }),
    weight: Type.Optional(Type.Integer({ minimum: 0 })),
    preservePath: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

const LoadBalancer = Type.Object(
  {
    sticky: Type.Optional(Type.Object({ cookie: Type.Optional(Type.Object({})) })),
    servers: Type.Array(Server, { minItems: 1 }),
    strategy: Type.Optional(Type.String()),
    healthCheck: Type.Optional(Type.Object({})),
    passHostHeader: Type.Optional(Type.Boolean()),
    responseForwarding: Type.Optional(
      Type.Object({ flushInterval: Type.Optional(Type.String()) }, { additionalProperties: false }),
    ),
    serversTransport: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

export const TraefikServiceSchema = Type.Union([
  Type.Object({ loadBalancer: LoadBalancer }, { additionalProperties: false }),
  Type.Object({ weighted: Type.Object({}) }, { additionalProperties: false }),
  Type.Object({ mirroring: Type.Object({}) }, { additionalProperties: false }),
  Type.Object({ failover: Type.Object({}) }, { additionalProperties: false }),
]);

export const TraefikMiddlewareSchema = Type.Union([
  Type.Object(
    {
      redirectScheme: Type.Object(
        {
          scheme: Type.Optional(Type.String()),
          port: Type.Optional(Type.String()),
          permanent: Type.Optional(Type.Boolean()),
        },
        { additionalProperties: false },
      ),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    { stripPrefix: Type.Object({ prefixes: Strings }, { additionalProperties: false }) },
    { additionalProperties: false },
  ),
  Type.Object({ headers: Type.Object({}) }, { additionalProperties: false }),
  Type.Object({ rateLimit: Type.Object({}) }, { additionalProperties: false }),
]);

export const TraefikDynamicConfigSchema = Type.Object(
  {
    http: Type.Optional(
      Type.Object(
        {
          routers: Type.Optional(record(TraefikRouterSchema)),
          services: Type.Optional(record(TraefikServiceSchema)),
          middlewares: Type.Optional(record(TraefikMiddlewareSchema)),
          serversTransports: Type.Optional(record(Type.Object({}))),
        },
        { additionalProperties: false, minProperties: 1 },
      ),
    ),
    tcp: Type.Optional(Type.Object({})),
    udp: Type.Optional(Type.Object({})),
    tls: Type.Optional(Type.Object({})),
  },
  { additionalProperties: false },
);

/**
 * Key paths of Traefik's KV layout (the KV routing reference, keys
 * case-insensitive), below `{root}/http/`, for the fields StacyVM writes.
 */
export const TRAEFIK_KV_PATHS: readonly RegExp[] = [
  /^routers\/[^/@]+\/rule$/i,
  /^routers\/[^/@]+\/entrypoints\/\d+$/i,
  /^routers\/[^/@]+\/middlewares\/\d+$/i,
  /^routers\/[^/@]+\/service$/i,
  /^routers\/[^/@]+\/priority$/i,
  /^routers\/[^/@]+\/tls$/i,
  /^routers\/[^/@]+\/tls\/certresolver$/i,
  /^routers\/[^/@]+\/tls\/options$/i,
  /^routers\/[^/@]+\/tls\/domains\/\d+\/main$/i,
  /^routers\/[^/@]+\/tls\/domains\/\d+\/sans\/\d+$/i,
  /^services\/[^/@]+\/loadbalancer\/servers\/\d+\/url$/i,
  /^services\/[^/@]+\/loadbalancer\/passhostheader$/i,
  /^middlewares\/[^/@]+\/redirectscheme\/(scheme|port|permanent)$/i,
];
