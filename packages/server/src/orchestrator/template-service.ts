import type { Clock } from '../domain/clock.js';
import { formatDurationMs } from '../domain/duration.js';
import { invalidField, notFound } from '../domain/errors.js';
import type { Logger } from '../domain/logger.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import type { TemplateRecord } from '../domain/template.js';
import {
  checkEnvMap,
  checkSetupCommands,
  MAX_DESCRIPTION_CHARS,
  requireTemplateName,
} from '../domain/template.js';
import type { Store } from '../store/store.js';
import { parseDurationField } from './request-rules.js';
import type { CallContext, SandboxService, SpawnInput } from './sandbox-service.js';
import { DEFAULT_PORTS, MAX_METADATA_ENTRIES } from './sandbox-service.js';

/**
 * A template as a create or replace request gives it, in domain units. The
 * TTL may come as a Go duration (`ttl`) or as whole seconds (`ttlSeconds`,
 * the reference's field); when both are given they must agree.
 */
export interface TemplateInput {
  image?: string;
  provider?: string;
  description?: string;
  memoryMb?: number;
  vcpus?: number;
  ttl?: string;
  ttlSeconds?: number;
  env?: Record<string, string>;
  setup?: string[];
  metadata?: Record<string, string>;
  ports?: number[];
}

/** What a spawn request may change about the template's sandbox. */
export interface TemplateSpawnOverrides {
  provider?: string;
  ttl?: string;
  ownerId?: string;
  /** Merged over the template's metadata (`template` is always the template name). */
  metadata?: Record<string, string>;
  /** Merged over the template's env. */
  env?: Record<string, string>;
}

export interface TemplateServiceOptions {
  store: Store;
  sandboxes: SandboxService;
  clock: Clock;
  logger: Logger;
}

const MAX_IMAGE_CHARS = 512;
const MAX_PROVIDER_CHARS = 64;
/** Bounds of a template's resources: the same as a spawn request's. */
const MEMORY_MB = { min: 16, max: 1_048_576 };
const VCPUS = { min: 1, max: 256 };
/** Metadata key the server sets on every sandbox spawned from a template. */
export const TEMPLATE_METADATA_KEY = 'template';

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

function intInRange(field: string, v: number, r: { min: number; max: number }): number {
  if (!Number.isInteger(v) || v < r.min || v > r.max) {
    throw invalidField(field, `must be an integer from ${r.min} to ${r.max}, got ${v}`);
  }
  return v;
}

/**
 * Template CRUD and spawn-from-template. A spawn goes through
 * {@link SandboxService.spawn}, so admission, placement (local or remote
 * worker), leases and cleanup are the same as for any sandbox.
 */
export class TemplateService {
  constructor(private readonly o: TemplateServiceOptions) {}

  list(): Promise<TemplateRecord[]> {
    return this.o.store.templates.list();
  }

  async get(name: string): Promise<TemplateRecord> {
    const rec = await this.o.store.templates.get(name);
    if (rec === undefined) throw notFound(`template not found: ${name}`);
    return rec;
  }

  /** Creates a template; CONFLICT when the name is taken. */
  async create(name: string, input: TemplateInput, ctx: CallContext): Promise<TemplateRecord> {
    requireTemplateName('name', name);
    const now = this.o.clock.nowMs();
    const rec: TemplateRecord = {
      ...this.content(input),
      name,
      version: 1,
      createdAtMs: now,
      updatedAtMs: now,
    };
    await this.o.store.templates.insert(rec);
    await this.audit(ctx, 'template.create', name, `version=1 image=${rec.image}`);
    return rec;
  }

  /** Replaces every field of a template (full replacement, as the reference's PUT). */
  async replace(name: string, input: TemplateInput, ctx: CallContext): Promise<TemplateRecord> {
    requireTemplateName('name', name);
    const now = this.o.clock.nowMs();
    const updated = await this.o.store.templates.replace({
      ...this.content(input),
      name,
      version: 0,
      createdAtMs: now,
      updatedAtMs: now,
    });
    if (updated === undefined) throw notFound(`template not found: ${name}`);
    await this.audit(
      ctx,
      'template.update',
      name,
      `version=${updated.version} image=${updated.image}`,
    );
    return updated;
  }

  async delete(name: string, ctx: CallContext): Promise<void> {
    if (!(await this.o.store.templates.delete(name))) {
      throw notFound(`template not found: ${name}`);
    }
    await this.audit(ctx, 'template.delete', name, '');
  }

  /**
   * Spawns a sandbox from a template: image, provider, resources, TTL,
   * ports, metadata (plus `template: <name>`), the default exec environment
   * and the setup commands are all applied.
   */
  async spawn(
    name: string,
    overrides: TemplateSpawnOverrides,
    ctx: CallContext,
  ): Promise<SandboxRecord> {
    const t = await this.get(name);
    const metadata = { ...t.metadata, ...overrides.metadata, [TEMPLATE_METADATA_KEY]: name };
    const input: SpawnInput = {
      image: t.image,
      memoryMb: t.memoryMb,
      vcpus: t.vcpus,
      ttl: overrides.ttl !== undefined && overrides.ttl !== '' ? overrides.ttl : `${t.ttlSeconds}s`,
      metadata,
      ports: [...t.ports],
      env: { ...t.env, ...overrides.env },
      setup: [...t.setup],
    };
    const provider =
      overrides.provider !== undefined && overrides.provider !== ''
        ? overrides.provider
        : t.provider;
    if (provider !== '') input.provider = provider;
    if (overrides.ownerId !== undefined) input.ownerId = overrides.ownerId;
    return this.o.sandboxes.spawn(input, ctx);
  }

  /** Validates the content of a create or replace and fills the defaults. */
  private content(
    input: TemplateInput,
  ): Omit<TemplateRecord, 'name' | 'version' | 'createdAtMs' | 'updatedAtMs'> {
    const limits = this.o.sandboxes.limits;
    const image = (input.image ?? '').trim();
    if (image === '') throw invalidField('image', 'is required');
    if (image.length > MAX_IMAGE_CHARS || CONTROL.test(image) || /\s/.test(image)) {
      throw invalidField(
        'image',
        `must be an image reference of at most ${MAX_IMAGE_CHARS} characters without whitespace`,
      );
    }
    const provider = (input.provider ?? '').trim();
    if (provider.length > MAX_PROVIDER_CHARS || CONTROL.test(provider)) {
      throw invalidField('provider', `must be a provider name of at most ${MAX_PROVIDER_CHARS}`);
    }
    const description = input.description ?? '';
    if (description.length > MAX_DESCRIPTION_CHARS) {
      throw invalidField('description', `must be at most ${MAX_DESCRIPTION_CHARS} characters`);
    }
    const memoryMb =
      input.memoryMb === undefined
        ? limits.defaultMemoryMb
        : intInRange('memory_mb', input.memoryMb, MEMORY_MB);
    const vcpus =
      input.vcpus === undefined ? limits.defaultVcpus : intInRange('cpu_cores', input.vcpus, VCPUS);
    const ttlSeconds = this.ttlSeconds(input);
    const metadata = input.metadata ?? {};
    if (Object.keys(metadata).length > MAX_METADATA_ENTRIES) {
      throw invalidField('metadata', `at most ${MAX_METADATA_ENTRIES} entries`);
    }
    if (Object.hasOwn(metadata, TEMPLATE_METADATA_KEY)) {
      throw invalidField(
        `metadata.${TEMPLATE_METADATA_KEY}`,
        'is reserved: sandboxes spawned from a template get the template name there',
      );
    }
    const ports = [...new Set(input.ports ?? DEFAULT_PORTS)].sort((a, b) => a - b);
    ports.forEach((p, i) => intInRange(`ports[${i}]`, p, { min: 1, max: 65535 }));
    return {
      image,
      provider,
      description,
      memoryMb,
      vcpus,
      ttlSeconds,
      env: checkEnvMap('env', input.env ?? {}),
      setup: checkSetupCommands('setup', input.setup ?? []),
      metadata: { ...metadata },
      ports,
    };
  }

  /** The template's TTL in whole seconds, positive and within max_ttl. */
  private ttlSeconds(input: TemplateInput): number {
    const limits = this.o.sandboxes.limits;
    let seconds: number;
    let field: string;
    if (input.ttl !== undefined && input.ttl !== '') {
      field = 'ttl';
      const ms = parseDurationField('ttl', input.ttl);
      if (ms <= 0) throw invalidField('ttl', `must be positive, got "${input.ttl}"`);
      if (ms % 1000 !== 0) throw invalidField('ttl', `must be whole seconds, got "${input.ttl}"`);
      seconds = ms / 1000;
      if (input.ttlSeconds !== undefined && input.ttlSeconds !== seconds) {
        throw invalidField(
          'ttl_seconds',
          `${input.ttlSeconds} disagrees with ttl "${input.ttl}" (${seconds}s); send one of them`,
        );
      }
    } else if (input.ttlSeconds !== undefined) {
      field = 'ttl_seconds';
      seconds = input.ttlSeconds;
      if (!Number.isSafeInteger(seconds) || seconds <= 0) {
        throw invalidField('ttl_seconds', `must be a positive whole number, got ${seconds}`);
      }
    } else {
      return Math.max(1, Math.ceil(limits.defaultTtlMs / 1000));
    }
    if (limits.maxTtlMs > 0 && seconds * 1000 > limits.maxTtlMs) {
      throw invalidField(
        field,
        `${formatDurationMs(seconds * 1000)} exceeds max_ttl ${formatDurationMs(limits.maxTtlMs)}`,
      );
    }
    return seconds;
  }

  private async audit(ctx: CallContext, action: string, name: string, detail: string) {
    try {
      await this.o.store.audit.append({
        actor: ctx.actor,
        action,
        sandboxId: '',
        resource: `template:${name}`,
        status: 'success',
        detail,
        requestId: ctx.requestId,
        createdAtMs: this.o.clock.nowMs(),
      });
    } catch (err) {
      this.o.logger.warn({ action, template: name, err: (err as Error).message }, 'audit failed');
    }
  }
}
