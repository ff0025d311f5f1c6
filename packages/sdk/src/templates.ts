/**
 * Templates: named sandbox blueprints.
 *
 * PLACEHOLDER: this server does not serve `/api/v1/templates` yet, so every call here
 * currently rejects with a {@link NotFoundError} (`no route for ...`). The methods follow the
 * Go original's routes and its server-side field names (reference spec §1.7: `cpu_cores`,
 * `ttl_seconds`, ...), not the 0.1 SDK's `vcpus`/`ttl`, which that server silently ignored;
 * those are still accepted here and translated. When the server gains the routes, these
 * methods work unchanged.
 */
import { parseGoDuration, toGoDuration } from './duration.js';
import type { Duration } from './duration.js';
import type { Transport } from './http.js';
import { Sandbox } from './sandbox.js';
import type { SandboxInfo } from './types.js';
import { expectArray, expectObject, expectSandboxInfo } from './validate.js';

/** A template as the server stores it (reference spec §1.3). */
export interface Template {
  name: string;
  version: number;
  image: string;
  description?: string;
  /** Setup commands (stored; not applied by the Go original). */
  setup?: string[];
  allowed_hosts?: string[];
  memory_mb: number;
  cpu_cores: number;
  ttl_seconds: number;
  env?: Record<string, string>;
  secrets?: { name: string; inject_at: string }[];
  pool_size: number;
  created_at: string;
  updated_at: string;
}

/** Input of {@link TemplateManager.create} and {@link TemplateManager.update}. */
export interface TemplateInput {
  name: string;
  image: string;
  version?: number;
  description?: string;
  setup?: string[];
  allowed_hosts?: string[];
  /** Server default 512. */
  memory_mb?: number;
  memoryMb?: number;
  /** Server default 1. */
  cpu_cores?: number;
  /** Same as `cpu_cores` (the 0.1 SDK's name). */
  vcpus?: number;
  /** Server default 300. */
  ttl_seconds?: number;
  /** Same as `ttl_seconds`, as a Go duration or milliseconds (the 0.1 SDK's name). */
  ttl?: Duration;
  env?: Record<string, string>;
  secrets?: { name: string; inject_at: string }[];
  pool_size?: number;
}

/** The 0.1 SDK's name of {@link TemplateInput}. */
export type TemplateConfig = TemplateInput;

/** Options of {@link TemplateManager.spawn}. */
export interface TemplateSpawnOverrides {
  provider?: string;
  ttl?: Duration;
}

function ttlSeconds(ttl: Duration): number {
  const ms = typeof ttl === 'number' ? ttl : parseGoDuration(ttl);
  if (ms === undefined || !Number.isFinite(ms) || ms <= 0) {
    throw new TypeError(`template ttl ${JSON.stringify(ttl)} is not a positive duration`);
  }
  return Math.ceil(ms / 1000);
}

/** The server's body for a template input. */
export function templateBody(input: TemplateInput): Record<string, unknown> {
  const body: Record<string, unknown> = { name: input.name, image: input.image };
  const copy = [
    'version',
    'description',
    'setup',
    'allowed_hosts',
    'env',
    'secrets',
    'pool_size',
  ] as const;
  for (const k of copy) if (input[k] !== undefined) body[k] = input[k];
  const memory = input.memory_mb ?? input.memoryMb;
  if (memory !== undefined) body['memory_mb'] = memory;
  const cpus = input.cpu_cores ?? input.vcpus;
  if (cpus !== undefined) body['cpu_cores'] = cpus;
  if (input.ttl_seconds !== undefined) body['ttl_seconds'] = input.ttl_seconds;
  else if (input.ttl !== undefined) body['ttl_seconds'] = ttlSeconds(input.ttl);
  return body;
}

const expectTemplate = (v: unknown): Template =>
  expectObject<Template>(v, 'template', { name: 'string', image: 'string' });

/** Template operations; reach it as `client.templates`. See the module note: placeholder. */
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

  async get(name: string): Promise<Template> {
    const { body } = await this.http.json({ method: 'GET', path: this.path(name) });
    return expectTemplate(body);
  }

  /** Creates a template (`409` if the name exists). */
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

  /** Replaces a template (the name comes from `name`). */
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

  async delete(name: string): Promise<void> {
    await this.http.json({ method: 'DELETE', path: this.path(name) });
  }

  /** Spawns a sandbox from a template. */
  async spawn(name: string, overrides: TemplateSpawnOverrides = {}): Promise<Sandbox> {
    const json: Record<string, unknown> = {};
    if (overrides.provider !== undefined) json['provider'] = overrides.provider;
    if (overrides.ttl !== undefined) json['ttl'] = toGoDuration(overrides.ttl, 'ttl');
    const { body } = await this.http.json({
      method: 'POST',
      path: this.path(name, '/spawn'),
      json,
    });
    return new Sandbox(this.http, expectSandboxInfo<SandboxInfo>(body));
  }
}
