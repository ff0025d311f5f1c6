import { Type } from '@sinclair/typebox';
import type { Static } from '@sinclair/typebox';

export const ErrorBodySchema = Type.Object(
  {
    code: Type.String({ description: 'Upper-case error code from the catalog, e.g. NOT_FOUND.' }),
    message: Type.String(),
    request_id: Type.Optional(Type.String()),
    details: Type.Optional(
      Type.Array(Type.Object({ field: Type.String(), problem: Type.String() })),
    ),
  },
  { $id: 'ErrorBody', description: 'Every error response has this shape.' },
);

export const StatusBodySchema = Type.Object({ status: Type.String() });

export const SandboxIdParams = Type.Object({
  id: Type.String({ description: 'Sandbox id, sb- and 8 hex digits.' }),
});

export const DurationString = (description: string) =>
  Type.String({ description: `${description} Go duration syntax: 30s, 5m, 1h30m.` });

export const SandboxSchema = Type.Object(
  {
    id: Type.String(),
    state: Type.String({
      description: 'creating, running, unhealthy, expired, error, destroying, destroyed',
    }),
    provider: Type.String(),
    image: Type.String(),
    memory_mb: Type.Integer(),
    vcpus: Type.Integer(),
    owner_id: Type.Optional(Type.String()),
    tenant_id: Type.Optional(Type.String()),
    vm_id: Type.Optional(Type.String()),
    worker_id: Type.String(),
    created_at: Type.String({ format: 'date-time' }),
    updated_at: Type.String({ format: 'date-time' }),
    expires_at: Type.String({ format: 'date-time' }),
    metadata: Type.Optional(Type.Record(Type.String(), Type.String())),
    ports: Type.Array(Type.Integer()),
    preview_domain: Type.String({
      description:
        'Domain of preview URLs: {preview_scheme}://{port}-{id}.{preview_domain}[:{preview_port}]. For a sandbox on a remote worker, the domain that worker advertises.',
    }),
    preview_scheme: Type.String({ description: 'Scheme of preview URLs: http or https.' }),
    preview_port: Type.Optional(
      Type.Integer({
        description:
          'Port of the preview gateway in preview URLs; absent when it is 80 (http) or 443 (https).',
      }),
    ),
  },
  { $id: 'Sandbox' },
);
export type SandboxWire = Static<typeof SandboxSchema>;

export const PreviewSchema = Type.Object(
  {
    url: Type.String({ description: 'Preview URL of the port, without a token.' }),
    port: Type.Integer(),
    sandbox_id: Type.String(),
    private: Type.Boolean({ description: 'Whether the gateway requires a token.' }),
    token: Type.Optional(
      Type.String({
        description: 'Private previews: send as X-StacyVM-Preview-Token, or open open_url.',
      }),
    ),
    expires_at: Type.Optional(
      Type.String({ format: 'date-time', description: 'When the token expires.' }),
    ),
    open_url: Type.Optional(
      Type.String({
        description:
          'Private previews: url with the token as ?stacyvm_preview_token=; the gateway moves it into a cookie and redirects to url.',
      }),
    ),
  },
  { $id: 'Preview' },
);

export const SpawnBodySchema = Type.Object(
  {
    image: Type.Optional(Type.String({ maxLength: 512 })),
    provider: Type.Optional(Type.String({ maxLength: 64 })),
    memory_mb: Type.Optional(Type.Integer({ minimum: 16, maximum: 1048576 })),
    vcpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 256 })),
    ttl: Type.Optional(DurationString('Lifetime; default defaults.ttl, at most defaults.max_ttl.')),
    template: Type.Optional(Type.String()),
    owner_id: Type.Optional(Type.String({ maxLength: 128 })),
    tenant_id: Type.Optional(Type.String()),
    metadata: Type.Optional(
      Type.Record(Type.String({ maxLength: 128 }), Type.String({ maxLength: 4096 })),
    ),
    ports: Type.Optional(
      Type.Array(Type.Integer({ minimum: 1, maximum: 65535 }), {
        maxItems: 64,
        description: 'Ports inside the sandbox that previews may reach (default [3000]).',
      }),
    ),
  },
  { additionalProperties: true },
);
export type SpawnBody = Static<typeof SpawnBodySchema>;

export const ExtendBodySchema = Type.Object({
  ttl: Type.Optional(DurationString('New lifetime from now.')),
});

export const ExecBodySchema = Type.Object({
  command: Type.String({ description: 'Shell script (shell mode) or program (argv mode).' }),
  args: Type.Optional(Type.Array(Type.String())),
  mode: Type.Optional(Type.String({ description: '"shell" (default) or "argv".' })),
  env: Type.Optional(Type.Record(Type.String(), Type.String())),
  workdir: Type.Optional(Type.String()),
  timeout: Type.Optional(DurationString('Deadline; the process is killed when it passes.')),
  stream: Type.Optional(
    Type.Boolean({ description: 'Stream NDJSON chunks instead of one JSON result.' }),
  ),
});
export type ExecBody = Static<typeof ExecBodySchema>;

export const ExecResultSchema = Type.Object({
  exit_code: Type.Integer(),
  stdout: Type.String(),
  stderr: Type.String(),
  duration: Type.String(),
});

export const FileInfoSchema = Type.Object(
  {
    path: Type.String(),
    name: Type.String(),
    size: Type.Integer(),
    mode: Type.String(),
    is_dir: Type.Boolean(),
    mod_time: Type.String(),
  },
  { $id: 'FileInfo' },
);

export const WriteFileBodySchema = Type.Object({
  path: Type.String(),
  content: Type.String({ description: 'Text, or base64 when encoding is "base64".' }),
  encoding: Type.Optional(
    Type.Union([Type.Literal('utf8'), Type.Literal('utf-8'), Type.Literal('base64')]),
  ),
  mode: Type.Optional(Type.Union([Type.String(), Type.Integer()])),
});
export type WriteFileBody = Static<typeof WriteFileBodySchema>;

export const MoveBodySchema = Type.Object({ old_path: Type.String(), new_path: Type.String() });
export const ChmodBodySchema = Type.Object({
  path: Type.String(),
  mode: Type.Union([Type.String(), Type.Integer()]),
});

export const WorkerSchema = Type.Object(
  {
    id: Type.String(),
    hostname: Type.String(),
    status: Type.String(),
    providers: Type.Array(Type.String()),
    capabilities: Type.Array(Type.String()),
    capacity: Type.Record(Type.String(), Type.Unknown()),
    last_heartbeat: Type.String(),
    created_at: Type.String(),
    updated_at: Type.String(),
    stale: Type.Boolean(),
  },
  { $id: 'Worker' },
);

export const ProviderInfoSchema = Type.Object({
  name: Type.String(),
  healthy: Type.Boolean(),
  default: Type.Boolean(),
  latency_ms: Type.Number(),
  last_checked: Type.String(),
  error: Type.Optional(Type.String()),
  capabilities: Type.Array(Type.String()),
});

export const TemplateNameParams = Type.Object({
  name: Type.String({ description: 'Template name: [a-z0-9][a-z0-9._-]{0,62}.' }),
});

export const TemplateSchema = Type.Object(
  {
    name: Type.String(),
    version: Type.Integer({ description: '1 at creation, +1 on every PUT.' }),
    image: Type.String(),
    provider: Type.String({ description: 'Empty: the default provider at spawn time.' }),
    description: Type.String(),
    memory_mb: Type.Integer(),
    cpu_cores: Type.Integer({ description: 'vCPUs of sandboxes spawned from the template.' }),
    ttl_seconds: Type.Integer(),
    env: Type.Record(Type.String(), Type.String(), {
      description: 'Default environment of every exec in the sandbox; a request env wins.',
    }),
    setup: Type.Array(Type.String(), {
      description: 'Shell commands run in order right after spawn; the first failure fails it.',
    }),
    metadata: Type.Record(Type.String(), Type.String()),
    ports: Type.Array(Type.Integer()),
    created_at: Type.String({ format: 'date-time' }),
    updated_at: Type.String({ format: 'date-time' }),
  },
  { $id: 'Template' },
);
export type TemplateWire = Static<typeof TemplateSchema>;

export const TemplateBodySchema = Type.Object(
  {
    name: Type.Optional(
      Type.String({ description: 'Required on POST; on PUT, if given, must match the path.' }),
    ),
    image: Type.Optional(Type.String({ maxLength: 512, description: 'Required.' })),
    provider: Type.Optional(Type.String({ maxLength: 64 })),
    description: Type.Optional(Type.String()),
    memory_mb: Type.Optional(Type.Integer({ minimum: 16, maximum: 1048576 })),
    cpu_cores: Type.Optional(Type.Integer({ minimum: 1, maximum: 256 })),
    vcpus: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 256, description: 'Same as cpu_cores.' }),
    ),
    ttl_seconds: Type.Optional(Type.Integer({ minimum: 1 })),
    ttl: Type.Optional(DurationString('Same as ttl_seconds; whole seconds.')),
    env: Type.Optional(Type.Record(Type.String(), Type.String())),
    setup: Type.Optional(Type.Array(Type.String())),
    setup_commands: Type.Optional(Type.Array(Type.String(), { description: 'Same as setup.' })),
    metadata: Type.Optional(
      Type.Record(Type.String({ maxLength: 128 }), Type.String({ maxLength: 4096 })),
    ),
    ports: Type.Optional(
      Type.Array(Type.Integer({ minimum: 1, maximum: 65535 }), {
        maxItems: 64,
        description: 'Preview ports of spawned sandboxes (default [3000]).',
      }),
    ),
    allowed_hosts: Type.Optional(
      Type.Array(Type.String(), { description: 'Not supported: must be empty.' }),
    ),
    secrets: Type.Optional(
      Type.Array(Type.Unknown(), { description: 'Not supported: must be empty.' }),
    ),
    pool_size: Type.Optional(Type.Integer({ description: 'Not supported: must be 0.' })),
  },
  { additionalProperties: true },
);
export type TemplateBody = Static<typeof TemplateBodySchema>;

export const TemplateSpawnBodySchema = Type.Object(
  {
    provider: Type.Optional(Type.String({ maxLength: 64 })),
    ttl: Type.Optional(DurationString('Lifetime; default the template ttl_seconds.')),
    owner_id: Type.Optional(Type.String({ maxLength: 128 })),
    metadata: Type.Optional(
      Type.Record(Type.String({ maxLength: 128 }), Type.String({ maxLength: 4096 }), {
        description: "Merged over the template's metadata; template is set to the template name.",
      }),
    ),
    env: Type.Optional(
      Type.Record(Type.String(), Type.String(), { description: "Merged over the template's env." }),
    ),
  },
  { additionalProperties: true },
);
export type TemplateSpawnBody = Static<typeof TemplateSpawnBodySchema>;
