import { invalidField } from './errors.js';

/**
 * A named sandbox blueprint: what a spawn from it gets. Unlike the Go
 * original, every field is applied at spawn: image, provider, resources,
 * TTL, ports, metadata, the default environment of every exec, and the
 * setup commands run right after the runtime starts. Times are epoch ms.
 */
export interface TemplateRecord {
  name: string;
  /** 1 at creation, +1 on every replacement. */
  version: number;
  image: string;
  /** Empty = the server's default provider at spawn time. */
  provider: string;
  description: string;
  memoryMb: number;
  vcpus: number;
  ttlSeconds: number;
  /** Default environment of every exec in a sandbox spawned from the template. */
  env: Record<string, string>;
  /** Shell commands run in order right after spawn. */
  setup: string[];
  metadata: Record<string, string>;
  ports: number[];
  createdAtMs: number;
  updatedAtMs: number;
}

/** `[a-z0-9][a-z0-9._-]{0,62}`: safe in a URL path segment, a label and a file name. */
export const TEMPLATE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export const MAX_SETUP_COMMANDS = 32;
export const MAX_SETUP_COMMAND_BYTES = 8 * 1024;
export const MAX_ENV_ENTRIES = 128;
export const MAX_ENV_VALUE_BYTES = 32 * 1024;
export const MAX_DESCRIPTION_CHARS = 1024;

/** POSIX-portable environment variable names. */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

const encoder = new TextEncoder();
const utf8Bytes = (s: string): number => encoder.encode(s).length;

export function isTemplateName(value: string): boolean {
  return TEMPLATE_NAME.test(value);
}

/** Throws a 400 naming the field when `name` is not a valid template name. */
export function requireTemplateName(field: string, name: string): string {
  if (!isTemplateName(name)) {
    throw invalidField(
      field,
      `"${name.slice(0, 80)}" must match [a-z0-9][a-z0-9._-]{0,62} (lowercase letters, digits, '.', '_', '-'; at most 63 characters)`,
    );
  }
  return name;
}

/**
 * Checks an environment map (names, NUL bytes, sizes) and returns a copy.
 * `field` prefixes the problem's field path, e.g. `env` → `env.FOO`.
 */
export function checkEnvMap(field: string, env: Record<string, string>): Record<string, string> {
  const entries = Object.entries(env);
  if (entries.length > MAX_ENV_ENTRIES) {
    throw invalidField(field, `at most ${MAX_ENV_ENTRIES} variables, got ${entries.length}`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (!ENV_NAME.test(k)) {
      throw invalidField(
        `${field}.${k}`,
        'is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)',
      );
    }
    if (typeof v !== 'string') throw invalidField(`${field}.${k}`, 'must be a string');
    if (v.includes('\0')) throw invalidField(`${field}.${k}`, 'must not contain NUL bytes');
    if (utf8Bytes(v) > MAX_ENV_VALUE_BYTES) {
      throw invalidField(`${field}.${k}`, `must be at most ${MAX_ENV_VALUE_BYTES} bytes`);
    }
    out[k] = v;
  }
  return out;
}

/** Checks setup commands (count, size, emptiness, NUL bytes) and returns a copy. */
export function checkSetupCommands(field: string, setup: readonly string[]): string[] {
  if (setup.length > MAX_SETUP_COMMANDS) {
    throw invalidField(field, `at most ${MAX_SETUP_COMMANDS} commands, got ${setup.length}`);
  }
  return setup.map((cmd, i) => {
    const f = `${field}[${i}]`;
    if (typeof cmd !== 'string') throw invalidField(f, 'must be a string');
    if (cmd.trim() === '') throw invalidField(f, 'must not be empty');
    if (cmd.includes('\0')) throw invalidField(f, 'must not contain NUL bytes');
    if (utf8Bytes(cmd) > MAX_SETUP_COMMAND_BYTES) {
      throw invalidField(f, `must be at most ${MAX_SETUP_COMMAND_BYTES} bytes`);
    }
    return cmd;
  });
}
