/**
 * Templates: named sandbox blueprints, served at `/api/v1/templates`.
 *
 * A spawn from a template applies all of it: image, provider, memory, vCPUs, TTL, ports,
 * metadata (plus `template: <name>`), the default environment of every exec in the sandbox,
 * and the setup commands, which run in order before the spawn answers. A failing setup command
 * fails the spawn ({@link BadRequestError} naming the command, its exit code and output; a
 * {@link TimeoutError} when it ran out of time) and the sandbox is destroyed.
 *
 * Field names are the server's (`cpu_cores`, `ttl_seconds`, `setup`, as the Go original's
 * server); the 0.1 SDK's `vcpus` and `ttl` are accepted too.
 */
import { toGoDuration } from './duration.js';
import type { Duration } from './duration.js';
import type { Transport } from './http.js';
import { Sandbox } from './sandbox.js';
import type { SandboxInfo } from './types.js';
import { expectArray, expectObject, expectSandboxInfo } from './validate.js';

/** A template as the server returns it. */
export interface Template {
  /** `[a-z0-9][a-z0-9._-]{0,62}`. */
  name: string;
  /** 1 at creation, +1 on every {@link TemplateManager.update}. */
  version: number;
  image: string;
  /** Empty: the server's default provider at spawn time. */
  provider: string;
  description: string;
  memory_mb: number;
  /** vCPUs of sandboxes spawned from the template. */
  cpu_cores: number;
  ttl_seconds: number;
  /** Default environment of every exec in a sandbox spawned from it (a request's env wins). */
  env: Record<string, string>;
  /** Shell commands run in order right after spawn. */
  setup: string[];
  metadata: Record<string, string>;
  /** Preview ports of spawned sandboxes. */
  ports: number[];
  created_at: string;
  updated_at: string;
}

/**
 * Input of {@link TemplateManager.create} and {@link TemplateManager.update}. Omitted fields take
 * the server's defaults (`defaults.memory_mb`, `defaults.vcpus`, `defaults.ttl`, ports `[3000]`),
 * on update too: an update replaces the whole template.
 */
export interface TemplateInput {
  name: string;
  image: string;
  /** A provider name; omitted or empty: the server's default provider at spawn time. */
  provider?: string;
  description?: string;
  memory_mb?: number;
  memoryMb?: number;
  cpu_cores?: number;
  /** Same as `cpu_cores` (the 0.1 SDK's name). */
  vcpus?: number;
  ttl_seconds?: number;
  /** Same as `ttl_seconds`, as a Go duration (`'10m'`) or milliseconds; whole seconds. */
  ttl?: Duration;
  env?: Record<string, string>;
  /** At most 32 commands of at most 8 KiB each. */
  setup?: string[];
  /** Same as `setup`. */
  setupCommands?: string[];
  /** At most 64 entries; the key `template` is reserved. */
  metadata?: Record<string, string>;
  ports?: number[];
}

/** The 0.1 SDK's name of {@link TemplateInput}. */
export type TemplateConfig = TemplateInput;

/** Options of {@link TemplateManager.spawn}. */
export interface TemplateSpawnOverrides {
  provider?: string;
  /** Lifetime instead of the template's `ttl_seconds`. */
  ttl?: Duration;
  /** Owner of the sandbox (the client's `userId` header wins, as for spawn). */
  ownerId?: string;
  owner_id?: string;
  /** Merged over the template's metadata. */
  metadata?: Record<string, string>;
  /** Merged over the template's env. */
  env?: Record<string, string>;
  /** Cancels the request (the server then destroys the half-made sandbox). */
  signal?: AbortSignal;
}

/** The server's body for a template input. */
export function templateBody(input: TemplateInput): Record<string, unknown> {
  const body: Record<string, unknown> = { name: input.name, image: input.image };
  for (const k of ['provider', 'description', 'env', 'metadata', 'ports'] as const) {
    if (input[k] !== undefined) body[k] = input[k];
  }
  const memory = input.memory_mb ?? input.memoryMb;
  if (memory !== undefined) body['memory_mb'] = memory;
  const cpus = input.cpu_cores ?? input.vcpus;
  if (cpus !== undefined) body['cpu_cores'] = cpus;
  if (input.ttl_seconds !== undefined) body['ttl_seconds'] = input.ttl_seconds;
  else if (input.ttl !== undefined) body['ttl'] = toGoDuration(input.ttl, 'ttl');
  const setup = input.setup ?? input.setupCommands;
  if (setup !== undefined) body['setup'] = setup;
  return body;
}

/** The server's body for spawn overrides. */
export function templateSpawnBody(o: TemplateSpawnOverrides = {}): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (o.provider !== undefined) body['provider'] = o.provider;
  if (o.ttl !== undefined) body['ttl'] = toGoDuration(o.ttl, 'ttl');
  const owner = o.ownerId ?? o.owner_id;
  if (owner !== undefined) body['owner_id'] = owner;
  if (o.metadata !== undefined) body['metadata'] = o.metadata;
  if (o.env !== undefined) body['env'] = o.env;
  return body;
}

const expectTemplate = (v: unknown): Template =>
  expectObject<Template>(v, 'template', {
    name: 'string',
    image: 'string',
    version: 'number',
    env: 'object',
    setup: 'object',
  });

/** Template operations; reach it as `client.templates`. */
export class TemplateManager {
  /** @internal Constructed by {@link Client}. */
  constructor(private readonly http: Transport) {}

  private path(name?: string, suffix = ''): string {
    return name === undefined ? '/templates' : `/templates/${encodeURIComponent(name)}${suffix}`;
  }

  /** All templates, ordered by name. */
  async list(): Promise<Template[]> {
    const { body } = await this.http.json({ method: 'GET', path: this.path() });
    return expectArray(body, 'template list', expectTemplate);
  }

  /** A template; {@link NotFoundError} when there is none by that name. */
  async get(name: string): Promise<Template> {
    const { body } = await this.http.json({ method: 'GET', path: this.path(name) });
    return expectTemplate(body);
  }

  /** Creates a template; {@link ConflictError} if the name exists, {@link BadRequestError} naming a bad field. */
  async create(input: TemplateInput): Promise<Template> {
    const { body } = await this.http.json({
      method: 'POST',
      path: this.path(),
      json: templateBody(input),
    });
    return expectTemplate(body);
  }

  /** The 0.1 SDK's name of {@link create}. */
  async save(input: TemplateConfig): Promise<Template> {
    return this.create(input);
  }

  /**
   * Replaces a template (omitted fields take their defaults; `version` grows by one).
   * A {@link Template} from {@link get} can be passed back with changes.
   */
  async update(
    name: string,
    input: Omit<TemplateInput, 'name'> & { name?: string },
  ): Promise<Template> {
    const { body } = await this.http.json({
      method: 'PUT',
      path: this.path(name),
      json: templateBody({ ...input, name }),
    });
    return expectTemplate(body);
  }

  /** Deletes a template; sandboxes spawned from it are not touched. */
  async delete(name: string): Promise<void> {
    await this.http.json({ method: 'DELETE', path: this.path(name) });
  }

  /**
   * Spawns a sandbox from a template and runs its setup commands; resolves once they all
   * succeeded. The sandbox's `metadata.template` is the template name.
   */
  async spawn(name: string, overrides: TemplateSpawnOverrides = {}): Promise<Sandbox> {
    const { body } = await this.http.json({
      method: 'POST',
      path: this.path(name, '/spawn'),
      json: templateSpawnBody(overrides),
      signal: overrides.signal,
    });
    return new Sandbox(this.http, expectSandboxInfo<SandboxInfo>(body));
  }
}
