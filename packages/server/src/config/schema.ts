/**
 * The one configuration schema of StacyVM. Defaults, types, validation
 * bounds, the `STACYVM_*` env-var mapping and the generated reference
 * (docs/configuration.md) all come from here, so they cannot disagree.
 *
 * Key names and Go-duration syntax follow the Go original so that existing
 * `stacyvm.yaml` files keep working.
 */
import {
  Type,
  KindGuard,
  type Static,
  type TLiteral,
  type TSchema,
  type TString,
  type TUnion,
} from '@sinclair/typebox';

/** Schema option marking a string leaf as a Go duration, with its lower bound. */
const DURATION_MARK = 'x-stacy-duration';
const DURATION_MAX_MARK = 'x-stacy-duration-max';

/** Lower bound of a duration key: `positive` refuses `0s`, `non-negative` accepts it. */
export type DurationBound = 'positive' | 'non-negative';

function str(def: string, description: string, options: { minLength?: number } = {}): TString {
  return Type.String({ default: def, description, ...options });
}

function duration(
  def: string,
  description: string,
  bound: DurationBound = 'non-negative',
  max?: string,
): TString {
  return Type.String({
    default: def,
    description,
    [DURATION_MARK]: bound,
    ...(max === undefined ? {} : { [DURATION_MAX_MARK]: max }),
  });
}

function int(def: number, description: string, range: { minimum?: number; maximum?: number }) {
  return Type.Integer({ default: def, description, ...range });
}

function bool(def: boolean, description: string) {
  return Type.Boolean({ default: def, description });
}

function list(def: string[], description: string) {
  return Type.Array(Type.String(), { default: def, description });
}

type Literals<T extends string[]> = { [K in keyof T]: TLiteral<T[K]> };

function oneOf<const T extends [string, ...string[]]>(
  values: T,
  def: T[number],
  description: string,
): TUnion<Literals<T>> {
  // The casts only restore the literal tuple type that `map` widens.
  const members = values.map((v) => Type.Literal(v));
  return Type.Union(members, { default: def, description }) as unknown as TUnion<Literals<T>>;
}

/** Accepted `database.driver` values (`sqlite3`/`postgresql` are Go-era aliases). */
export const DATABASE_DRIVERS = ['sqlite', 'sqlite3', 'postgres', 'postgresql'] as const;
/** Accepted `logging.level` values (pino levels). */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
/** Accepted `providers.default` values. */
export const DEFAULT_PROVIDERS = ['auto', 'mock', 'docker'] as const;

const ServerSection = Type.Object(
  {
    host: str(
      '127.0.0.1',
      'Address the HTTP API listens on. Loopback by default; a non-loopback address needs auth.api_key or server.allow_insecure_bind.',
      { minLength: 1 },
    ),
    port: int(7423, 'TCP port of the HTTP API.', { minimum: 1, maximum: 65535 }),
    preview_domain: str(
      'localhost',
      'Domain of preview URLs: http://{port}-{sandbox_id}.{preview_domain}.',
    ),
    cors_allowed_origins: list(
      ['*'],
      'Origins allowed to call the API from a browser: "*" or http(s)://host[:port] without a path. An empty list allows no cross-origin calls.',
    ),
    allow_insecure_bind: bool(
      false,
      'Allow listening on a non-loopback address while no auth.api_key is set (anyone who can reach the port can run commands).',
    ),
    max_body_bytes: int(16777216, 'Largest accepted request body, in bytes.', { minimum: 1 }),
    shutdown_timeout: duration(
      '30s',
      'How long a graceful shutdown waits for in-flight requests before closing them.',
    ),
    sse_keepalive_interval: duration(
      '15s',
      'Interval of keep-alive comments on server-sent event streams, so proxies do not cut idle streams.',
      'positive',
    ),
    reaper_interval: duration(
      '30s',
      'How often the reaper destroys sandboxes past their expiry, and the worker-liveness sweep marks sandboxes of silent workers unhealthy or expired.',
      'positive',
    ),
    worker_stale_after: duration(
      '2m',
      'How long after its last heartbeat a remote worker counts as stale: it gets no new sandboxes, and the worker-liveness sweep marks its sandboxes unhealthy (expired once past their expiry). Keep it several times the worker.heartbeat_interval of the workers.',
      'positive',
    ),
    local_worker_id: str(
      'local',
      'Id the control plane\'s own in-process worker registers under. Keep "local" for a single control plane; give each of several control planes on one PostgreSQL database its own (e.g. cp-a), or "auto" for local-<hostname>-<server.port>. No remote worker may use it.',
      { minLength: 1 },
    ),
    local_worker_max_sandboxes: int(
      0,
      "Most live sandboxes the control plane's own worker takes (0 = no own limit; defaults.max_sandboxes still applies). Beyond it new sandboxes go to other workers.",
      { minimum: 0 },
    ),
  },
  { description: 'HTTP API of the control plane.' },
);

const DatabaseSection = Type.Object(
  {
    driver: oneOf([...DATABASE_DRIVERS], 'sqlite', 'Store backend.'),
    path: str(
      'stacyvm.db',
      'SQLite database file (sqlite driver). A relative path is relative to the working directory.',
    ),
    dsn: str(
      '',
      'PostgreSQL connection string, e.g. postgres://user:pass@host:5432/stacyvm (postgres driver).',
    ),
    dsn_file: str('', 'File holding database.dsn (trimmed). Mutually exclusive with database.dsn.'),
    max_open_conns: int(10, 'Connections the control plane opens to PostgreSQL at most.', {
      minimum: 1,
      maximum: 1000,
    }),
    statement_timeout: duration(
      '30s',
      'Longest one PostgreSQL statement may run before the server cancels it; 0s means no limit. Migrations run without it.',
    ),
    prepared_statements: bool(
      true,
      "Send the store's fixed statements to PostgreSQL as named prepared statements (parsed and planned once per connection). Turn off behind a connection pooler that does not keep prepared statements across transactions (PgBouncer before 1.21 in transaction mode).",
    ),
  },
  { description: 'Where the control plane keeps its state.' },
);

const MockProvider = Type.Object(
  {
    enabled: bool(
      true,
      'Enable the mock provider. It runs commands directly on the host in a temporary directory, without isolation: for development only.',
    ),
    base_dir: str(
      '',
      'Directory holding mock sandbox roots. Empty means `stacyvm-mock` under the OS temporary directory.',
    ),
    spawn_helper: bool(
      true,
      "Start sandbox commands from a small helper process instead of forking the server itself, which costs more the larger the server's heap. Turn off only to debug the helper.",
    ),
  },
  { description: 'The mock provider (host execution, no isolation).' },
);

const DockerProvider = Type.Object(
  {
    enabled: bool(true, 'Enable the Docker provider.'),
    socket: str(
      '',
      'Docker Engine endpoint (unix socket path or URL). Empty means DOCKER_HOST or the platform default.',
    ),
    runtime: str('runc', 'OCI runtime for sandbox containers (e.g. runc, runsc for gVisor).'),
    default_image: str('alpine:latest', 'Image used when a spawn names none.'),
    network_mode: str('bridge', 'Docker network mode of sandbox containers.'),
    seccomp_profile: str(
      'default',
      'Seccomp profile: "default" (Docker\'s), a profile file path, or "unconfined" (not recommended).',
    ),
    read_only_rootfs: bool(false, 'Mount the container root filesystem read-only.'),
    memory: str(
      '512m',
      'Memory limit (Docker syntax, e.g. 512m, 2g) for a container whose spawn names none; spawns through the API always carry memory_mb (default defaults.memory_mb).',
    ),
    cpus: Type.Number({
      default: 1,
      description:
        'CPU limit for a container whose spawn names none; spawns through the API always carry vcpus (default defaults.vcpus).',
      minimum: 0,
    }),
    pids_limit: int(256, 'Process limit per container (0 = unlimited).', { minimum: 0 }),
    user: str(
      '',
      "User sandbox commands run as (name, uid or uid:gid). Empty means: the image's USER, else a non-root account named sandbox, else the lowest uid >= 1000, else root (still without capabilities).",
    ),
    dropped_caps: list(['ALL'], 'Linux capabilities dropped from sandbox containers.'),
    added_caps: list([], 'Linux capabilities added back to sandbox containers.'),
    orphans: oneOf(
      ['adopt', 'remove'],
      'adopt',
      'At start, what to do with StacyVM-labelled containers that have no live record: adopt them as sandboxes, or remove them.',
    ),
  },
  { description: 'The Docker provider.' },
);

const ProvidersSection = Type.Object(
  {
    default: oneOf(
      [...DEFAULT_PROVIDERS],
      'auto',
      'Provider used when a spawn names none. "auto" picks docker when its daemon answers, else mock.',
    ),
    mock: MockProvider,
    docker: DockerProvider,
  },
  { description: 'Sandbox backends.' },
);

const DefaultsSection = Type.Object(
  {
    ttl: duration('30m', 'Lifetime of a sandbox when the spawn request sets none.', 'positive'),
    image: str('alpine:latest', 'Image of a sandbox when the spawn request sets none.'),
    memory_mb: int(1024, 'Memory of a sandbox in MiB when the spawn request sets none.', {
      minimum: 1,
    }),
    vcpus: int(1, 'Virtual CPUs of a sandbox when the spawn request sets none.', { minimum: 1 }),
    max_ttl: duration(
      '24h',
      'Longest lifetime a sandbox may be given or extended to (0s = no limit).',
    ),
    default_exec_timeout: duration(
      '0s',
      'Timeout of an exec that sets none (0s = use defaults.max_exec_timeout).',
    ),
    max_exec_timeout: duration('10m', 'Longest timeout an exec may ask for.', 'positive'),
    max_sandboxes: int(0, 'Most live sandboxes in total (0 = unlimited).', { minimum: 0 }),
    max_sandboxes_per_owner: int(0, 'Most live sandboxes per owner (0 = unlimited).', {
      minimum: 0,
    }),
  },
  { description: 'Spawn defaults and admission limits.' },
);

const AuthSection = Type.Object(
  {
    api_key: str(
      '',
      'Key accepted in X-API-Key for sandbox routes. Empty disables API authentication.',
    ),
    api_key_file: str(
      '',
      'File holding auth.api_key (trimmed). Mutually exclusive with auth.api_key.',
    ),
    admin_api_key: str('', 'Key accepted in X-Admin-API-Key for admin routes.'),
    admin_api_key_file: str(
      '',
      'File holding auth.admin_api_key (trimmed). Mutually exclusive with auth.admin_api_key.',
    ),
    admin_fallback_enabled: bool(
      true,
      'When no admin key is set, accept the regular API key on admin routes.',
    ),
    worker_token: str(
      '',
      'Shared token between the control plane and its workers (worker RPC and heartbeats).',
    ),
    worker_token_file: str(
      '',
      'File holding auth.worker_token (trimmed). Mutually exclusive with auth.worker_token.',
    ),
    worker_tokens: list(
      [],
      'Per-worker heartbeat tokens as a list of `worker-id=token` strings (a map cannot be expressed as one key). A worker listed here must present its own token; the shared auth.worker_token is then refused for that id. Secret, with no *_file form.',
    ),
    worker_signing_key: str(
      '',
      'HMAC key that signs and verifies short-lived worker tokens (stacyvm-worker-v1.*, audience worker:control-plane on heartbeats).',
    ),
    worker_signing_key_file: str(
      '',
      'File holding auth.worker_signing_key (trimmed). Mutually exclusive with auth.worker_signing_key.',
    ),
    worker_signing_keys: list(
      [],
      'Previous signing keys still accepted when verifying worker tokens, for key rotation. Never used to sign. Secret, with no *_file form.',
    ),
    worker_revoked_token_ids: list(
      [],
      'Token ids (jti) of signed worker tokens that are refused even before they expire.',
    ),
  },
  { description: 'API keys and worker credentials.' },
);

const LoggingSection = Type.Object(
  {
    level: oneOf([...LOG_LEVELS], 'info', 'Lowest level written to the log.'),
    format: oneOf(['json', 'pretty'], 'json', 'Log format: json lines, or pretty for a console.'),
  },
  { description: 'Logging.' },
);

const RpcTlsSection = Type.Object(
  {
    enabled: bool(
      false,
      'Worker RPC over TLS. On a worker: serve /rpc over HTTPS (server_cert_file and server_key_file required) and advertise an https:// rpc_url. On the control plane: trust ca_file and present client_cert_file when calling workers.',
    ),
    server_cert_file: str('', 'Worker side: PEM certificate chain of the RPC server.'),
    server_key_file: str('', 'Worker side: PEM private key of the RPC server.'),
    client_ca_file: str(
      '',
      'Worker side: PEM CA bundle; when set, callers must present a client certificate it signed (mTLS).',
    ),
    ca_file: str(
      '',
      'Control-plane side: PEM CA bundle that signs worker RPC server certificates. Empty means the system roots.',
    ),
    client_cert_file: str(
      '',
      'Control-plane side: PEM client certificate presented to workers (with client_key_file).',
    ),
    client_key_file: str('', 'Control-plane side: PEM private key of client_cert_file.'),
    server_name: str(
      '',
      'Control-plane side: name verified in worker certificates instead of the rpc_url host.',
    ),
    insecure_skip_verify: bool(
      false,
      'Control-plane side: do not verify worker certificates. For experiments only; config lint --production refuses it.',
    ),
  },
  { description: 'TLS and mutual TLS for worker RPC (reference §2.8).' },
);

const WorkerSection = Type.Object(
  {
    id: str('', 'Worker id in the registry. Empty means the host name.'),
    control_plane_url: str(
      'http://localhost:7423',
      'Base URL of the control plane the worker registers with.',
    ),
    listen_addr: str(
      '',
      'host:port the worker RPC server listens on. Empty means no RPC server (the worker cannot receive sandboxes).',
    ),
    advertise_addr: str(
      '',
      'Address the control plane uses to reach this worker. Empty means derived from worker.listen_addr.',
    ),
    preview_domain: str(
      '',
      'Preview domain of sandboxes on this worker. Empty means server.preview_domain.',
    ),
    heartbeat_interval: duration(
      '30s',
      'How often the worker reports to the control plane.',
      'positive',
    ),
    shutdown_timeout: duration(
      '30s',
      'How long a stopping worker drains before it gives up on running work.',
    ),
    rpc_tls: RpcTlsSection,
  },
  { description: 'The worker process (`stacyvm worker`).' },
);

/** Accepted `preview.upstream` values. */
export const PREVIEW_UPSTREAMS = ['auto', 'published', 'container_ip'] as const;

const PreviewSection = Type.Object(
  {
    enabled: bool(
      true,
      'Run the built-in preview gateway, which routes http(s)://{port}-{sandbox_id}.{preview_domain} to that port inside the sandbox. With false, previews need an external proxy (e.g. Traefik with the Docker labels).',
    ),
    listen_addr: str(
      '127.0.0.1:7480',
      'host:port the preview gateway listens on (also on a worker, where only its control plane calls it). Put a TLS-terminating proxy or a wildcard DNS name in front for public previews.',
      { minLength: 1 },
    ),
    public_scheme: oneOf(
      ['http', 'https'],
      'http',
      'Scheme of preview URLs as browsers use them (https when a TLS proxy is in front). Also sent as X-Forwarded-Proto and makes the token cookie Secure.',
    ),
    public_port: int(
      0,
      'Port of preview URLs as browsers use them; 0 means the port of preview.listen_addr. 80 (http) and 443 (https) are left out of URLs.',
      { minimum: 0, maximum: 65535 },
    ),
    private: bool(
      false,
      'Require a token for every preview: GET /api/v1/sandboxes/{id}/preview/{port} returns one, sent as X-StacyVM-Preview-Token or opened once as ?stacyvm_preview_token= (it becomes an HttpOnly cookie).',
    ),
    token_ttl: duration('1h', 'Lifetime of a private-preview token.', 'positive'),
    token_key: str(
      '',
      'HMAC key that signs preview tokens. Empty means a random key per process (tokens then stop working at a restart and are not shared between control planes).',
    ),
    token_key_file: str(
      '',
      'File holding preview.token_key (trimmed). Mutually exclusive with preview.token_key.',
    ),
    extend_ttl_on_traffic: duration(
      '0s',
      'Preview traffic keeps a sandbox alive: once less than half of this is left, its expiry becomes now + this (at most defaults.max_ttl), at most once per tenth of it. 0s = off.',
    ),
    resolve_cache_ttl: duration(
      '1s',
      "How long the gateway reuses a sandbox port's resolution (the sandbox read from the store, its worker asked for the port) instead of repeating it per request. A lifecycle event of the sandbox (destroyed, expired, state change, error) drops it at once; this bounds staleness otherwise (at most 1m). Tokens are still checked per request. 0s = off.",
      'non-negative',
      '1m',
    ),
    host_rewrite: bool(
      false,
      'Send the sandbox Host: 127.0.0.1:{port} instead of the preview host name (for dev servers that check the Host header). X-Forwarded-Host keeps the original.',
    ),
    upstream: oneOf(
      [...PREVIEW_UPSTREAMS],
      'auto',
      'How the gateway reaches Docker sandbox ports: published (declared ports are published on 127.0.0.1 at spawn), container_ip (the container address; only where this host routes to the container network, nothing is published), or auto (published, else the container address).',
    ),
    upstream_timeout: duration(
      '60s',
      'Time a sandbox port has to accept the connection, and then again to send response headers, before the gateway answers 502/504.',
      'positive',
    ),
    max_connections: int(
      4096,
      'Most client connections the gateway keeps open (idle keep-alive and WebSocket ones included); more are refused.',
      { minimum: 1 },
    ),
  },
  { description: 'The built-in preview gateway.' },
);

const TraefikRedisSection = Type.Object(
  {
    enabled: bool(
      false,
      "Publish preview routes to Redis for Traefik's Redis provider: written when a sandbox starts running, deleted when it is destroyed or expires, fully resynced at start and every traefik.redis.resync_interval.",
    ),
    address: str('127.0.0.1:6379', 'Redis address, host:port.', { minLength: 1 }),
    username: str(
      '',
      'Redis ACL user name (AUTH user password). Empty means AUTH with the password only.',
    ),
    password: str('', 'Redis password. Empty means no AUTH.'),
    password_file: str(
      '',
      'File holding traefik.redis.password (trimmed). Mutually exclusive with traefik.redis.password.',
    ),
    db: int(0, "Redis database number (SELECT); Traefik's providers.redis.db must match.", {
      minimum: 0,
      maximum: 1024,
    }),
    root_key: str(
      'traefik',
      "Root key of the Traefik KV layout (Traefik's providers.redis.rootKey). Keys under it whose router, service or middleware name starts with traefik.name_prefix are owned by StacyVM: a resync deletes those that match no running sandbox.",
      { minLength: 1 },
    ),
    resync_interval: duration(
      '60s',
      'How often every route is rewritten and stale keys are removed (0s = only at start).',
    ),
    timeout: duration('5s', 'Time to connect to Redis and to get each reply.', 'positive'),
  },
  { description: 'Publishing preview routes to Redis (Traefik KV provider).' },
);

const TraefikSection = Type.Object(
  {
    entry_points: list(
      ['web'],
      "Traefik entry points of the preview routers. An empty list means all of Traefik's entry points.",
    ),
    tls: bool(false, 'Preview routers terminate TLS (a tls section on each router).'),
    cert_resolver: str(
      '',
      "With traefik.tls: the ACME certificate resolver of the routers. Empty means certificates from Traefik's TLS store (or the entry point's TLS settings).",
    ),
    wildcard_cert: bool(
      true,
      'With traefik.tls and a resolver: ask for one wildcard certificate per preview domain (tls.domains main {domain}, sans *.{domain}; needs a DNS-01 resolver) instead of one certificate per preview host.',
    ),
    middlewares: list(
      [],
      "Traefik middlewares (name or name@provider) put on every preview router, e.g. a rate limit defined in Traefik's file provider.",
    ),
    redirect_entry_points: list(
      [],
      'Entry points that get a second router per preview that redirects to https (middleware {name_prefix}redirect-https). Not needed when the entry point redirects by itself.',
    ),
    name_prefix: str(
      'stacyvm-',
      'Prefix of every router, service and middleware name StacyVM generates (a-z, 0-9, "_", "-"). Keep it unique per control plane that shares a Traefik or a Redis root key.',
      { minLength: 1 },
    ),
    include_local_docker: bool(
      false,
      "Also generate routes for Docker sandboxes of the control plane itself. Off by default: Traefik's Docker provider already routes them from their container labels.",
    ),
    upstream_url: str(
      '',
      "URL Traefik sends preview requests to (the control plane's preview gateway as Traefik reaches it, e.g. http://stacyvm:7480). Empty means http://{preview.listen_addr}, a wildcard host replaced by loopback. The gateway relays to remote workers itself.",
    ),
    http_provider_token: str(
      '',
      "Bearer token Traefik's HTTP provider sends to GET /api/v1/traefik/config (providers.http.headers.Authorization=Bearer <token>). Empty means only the admin key is accepted there.",
    ),
    http_provider_token_file: str(
      '',
      'File holding traefik.http_provider_token (trimmed). Mutually exclusive with traefik.http_provider_token.',
    ),
    redis: TraefikRedisSection,
  },
  {
    description:
      'Traefik in front of previews: dynamic configuration for its HTTP provider (GET /api/v1/traefik/config) and, optionally, its Redis provider.',
  },
);

/** The whole configuration document. */
export const StacyConfigSchema = Type.Object(
  {
    server: ServerSection,
    database: DatabaseSection,
    providers: ProvidersSection,
    defaults: DefaultsSection,
    auth: AuthSection,
    logging: LoggingSection,
    worker: WorkerSection,
    preview: PreviewSection,
    traefik: TraefikSection,
  },
  { description: 'StacyVM configuration.' },
);

/** A fully resolved configuration: every key present, durations kept as Go strings. */
export type StacyConfig = Static<typeof StacyConfigSchema>;

/**
 * Keys holding secrets. Redaction, the reference doc and lint all read this
 * one set, so a new secret is marked once.
 */
export const SECRET_PATHS: ReadonlySet<string> = new Set([
  'auth.api_key',
  'auth.admin_api_key',
  'auth.worker_token',
  'auth.worker_tokens',
  'auth.worker_signing_key',
  'auth.worker_signing_keys',
  'database.dsn',
  'preview.token_key',
  'traefik.http_provider_token',
  'traefik.redis.password',
]);

/** Secret key → the key naming a file it can be read from instead. */
export const SECRET_FILE_KEYS: Readonly<Record<string, string>> = {
  'auth.api_key': 'auth.api_key_file',
  'auth.admin_api_key': 'auth.admin_api_key_file',
  'auth.worker_token': 'auth.worker_token_file',
  'auth.worker_signing_key': 'auth.worker_signing_key_file',
  'database.dsn': 'database.dsn_file',
  'preview.token_key': 'preview.token_key_file',
  'traefik.http_provider_token': 'traefik.http_provider_token_file',
  'traefik.redis.password': 'traefik.redis.password_file',
};

/** How a leaf value is typed and parsed (from YAML or from an env var). */
export type ConfigValueKind =
  'string' | 'duration' | 'enum' | 'integer' | 'number' | 'boolean' | 'string-list';

/** A leaf value of the configuration. */
export type ConfigValue = string | number | boolean | string[];

/** One leaf key of the schema, flattened for loading, docs and tooling. */
export interface ConfigKeyInfo {
  /** Dotted path, e.g. `server.port`. */
  path: string;
  /** The env var that overrides it, e.g. `STACYVM_SERVER_PORT`. */
  envVar: string;
  kind: ConfigValueKind;
  default: ConfigValue;
  description: string;
  /** Whether the value is a secret (redacted in output). */
  secret: boolean;
  /** Allowed values of an `enum` key. */
  values?: readonly string[];
  minimum?: number;
  maximum?: number;
  minLength?: number;
  /** Lower bound of a `duration` key. */
  durationBound?: DurationBound;
  /** Upper bound of a `duration` key (a duration string), when it has one. */
  durationMax?: string;
}

/** One top-level section of the schema. */
export interface ConfigSectionInfo {
  name: string;
  description: string;
}

/** The env var overriding a dotted key: `server.port` → `STACYVM_SERVER_PORT`. */
export function envVarFor(path: string): string {
  return `STACYVM_${path.toUpperCase().replace(/\./g, '_')}`;
}

function describe(schema: TSchema, path: string): string {
  const description: unknown = schema.description;
  if (typeof description !== 'string' || description === '') {
    throw new Error(`config schema: ${path} has no description`);
  }
  return description;
}

function leafInfo(schema: TSchema, path: string): ConfigKeyInfo {
  const base = {
    path,
    envVar: envVarFor(path),
    description: describe(schema, path),
    secret: SECRET_PATHS.has(path),
  };
  const def: unknown = schema.default;
  if (KindGuard.IsString(schema) && typeof def === 'string') {
    const bound: unknown = schema[DURATION_MARK];
    if (bound === 'positive' || bound === 'non-negative') {
      const max: unknown = schema[DURATION_MAX_MARK];
      return {
        ...base,
        kind: 'duration',
        default: def,
        durationBound: bound,
        ...(typeof max === 'string' ? { durationMax: max } : {}),
      };
    }
    const info: ConfigKeyInfo = { ...base, kind: 'string', default: def };
    if (schema.minLength !== undefined) info.minLength = schema.minLength;
    return info;
  }
  if ((KindGuard.IsInteger(schema) || KindGuard.IsNumber(schema)) && typeof def === 'number') {
    const info: ConfigKeyInfo = {
      ...base,
      kind: KindGuard.IsInteger(schema) ? 'integer' : 'number',
      default: def,
    };
    if (typeof schema.minimum === 'number') info.minimum = schema.minimum;
    if (typeof schema.maximum === 'number') info.maximum = schema.maximum;
    return info;
  }
  if (KindGuard.IsBoolean(schema) && typeof def === 'boolean') {
    return { ...base, kind: 'boolean', default: def };
  }
  if (
    KindGuard.IsArray(schema) &&
    KindGuard.IsString(schema.items) &&
    Array.isArray(def) &&
    def.every((v) => typeof v === 'string')
  ) {
    return { ...base, kind: 'string-list', default: [...def] };
  }
  if (KindGuard.IsUnion(schema) && typeof def === 'string') {
    const values = schema.anyOf.map((member) => {
      if (!KindGuard.IsLiteralString(member)) {
        throw new Error(`config schema: ${path} mixes non-string literals`);
      }
      return member.const;
    });
    return { ...base, kind: 'enum', default: def, values };
  }
  throw new Error(`config schema: ${path} has an unsupported type or no default`);
}

function collectLeaves(schema: TSchema, prefix: string, out: ConfigKeyInfo[]): void {
  if (KindGuard.IsObject(schema)) {
    for (const [key, child] of Object.entries(schema.properties)) {
      collectLeaves(child, prefix === '' ? key : `${prefix}.${key}`, out);
    }
    return;
  }
  out.push(leafInfo(schema, prefix));
}

function buildKeys(): ConfigKeyInfo[] {
  const out: ConfigKeyInfo[] = [];
  collectLeaves(StacyConfigSchema, '', out);
  return out;
}

/** Every leaf key in schema order, with its type, default, env var and description. */
export const CONFIG_KEYS: readonly ConfigKeyInfo[] = buildKeys();

const KEYS_BY_PATH: ReadonlyMap<string, ConfigKeyInfo> = new Map(
  CONFIG_KEYS.map((k) => [k.path, k]),
);

/** The leaf key at a dotted path, if the schema has one. */
export function configKey(path: string): ConfigKeyInfo | undefined {
  return KEYS_BY_PATH.get(path);
}

/** The top-level sections in schema order. */
export const CONFIG_SECTIONS: readonly ConfigSectionInfo[] = Object.entries(
  StacyConfigSchema.properties,
).map(([name, schema]) => ({ name, description: describe(schema, name) }));

/** Sets a dotted path on a plain object tree, creating sections as needed. */
export function setConfigPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    if (typeof next === 'object' && next !== null && !Array.isArray(next)) {
      node = next as Record<string, unknown>;
    } else {
      const created: Record<string, unknown> = {};
      node[part] = created;
      node = created;
    }
  }
  node[parts[parts.length - 1] ?? path] = value;
}

/** Reads a dotted path from a plain object tree. */
export function getConfigPath(source: unknown, path: string): unknown {
  let node: unknown = source;
  for (const part of path.split('.')) {
    if (typeof node !== 'object' || node === null || Array.isArray(node)) return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

/** A fresh configuration holding every default. */
export function defaultConfig(): StacyConfig {
  const out: Record<string, unknown> = {};
  for (const key of CONFIG_KEYS) {
    setConfigPath(out, key.path, Array.isArray(key.default) ? [...key.default] : key.default);
  }
  // Built from the same schema walk that defines StacyConfig's shape.
  return out as StacyConfig;
}
