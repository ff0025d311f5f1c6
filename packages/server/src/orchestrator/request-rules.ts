import { formatDurationMs, parseDurationMs } from '../domain/duration.js';
import { invalidField, StacyError } from '../domain/errors.js';
import type { ExecMode, ExecSpec } from '../domain/exec.js';
import { normalizeSandboxPath, parseFileMode } from '../domain/files.js';
import type { SandboxLimits } from './limits.js';

/** Exec request as it arrives on the wire (already type-checked by the schema). */
export interface RawExecRequest {
  command?: string;
  args?: string[];
  mode?: string;
  env?: Record<string, string>;
  workdir?: string;
  timeout?: string;
}

/** Parses a Go duration field, naming the field on failure. */
export function parseDurationField(field: string, raw: string): number {
  try {
    return parseDurationMs(raw);
  } catch (err) {
    throw invalidField(field, (err as Error).message);
  }
}

/** Resolves a requested TTL against the defaults and `max_ttl`. */
export function resolveTtlMs(
  raw: string | undefined,
  limits: SandboxLimits,
  field = 'ttl',
): number {
  if (raw === undefined || raw === '') return limits.defaultTtlMs;
  const ms = parseDurationField(field, raw);
  if (ms <= 0) throw invalidField(field, `must be positive, got "${raw}"`);
  if (limits.maxTtlMs > 0 && ms > limits.maxTtlMs) {
    const problem = `${raw} exceeds max_ttl ${formatDurationMs(limits.maxTtlMs)}`;
    throw new StacyError('RESOURCE_LIMIT', `${field} ${problem}`, {
      details: [{ field, problem }],
    });
  }
  return ms;
}

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Turns a wire exec request into a validated ExecSpec. */
export function resolveExecSpec(raw: RawExecRequest, limits: SandboxLimits): ExecSpec {
  const modeRaw = raw.mode ?? '';
  let mode: ExecMode;
  if (modeRaw === '' || modeRaw === 'shell') mode = 'shell';
  else if (modeRaw === 'argv') mode = 'argv';
  else throw invalidField('mode', `unsupported exec mode "${modeRaw}"; use "shell" or "argv"`);
  const command = raw.command ?? '';
  if (command.trim() === '') throw invalidField('command', 'command is required');
  if (command.includes('\0')) throw invalidField('command', 'must not contain NUL bytes');
  const args = raw.args ?? [];
  args.forEach((a, i) => {
    if (a.includes('\0')) throw invalidField(`args[${i}]`, 'must not contain NUL bytes');
  });
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw.env ?? {})) {
    if (!ENV_KEY.test(k))
      throw invalidField(`env.${k}`, 'is not a valid environment variable name');
    if (v.includes('\0')) throw invalidField(`env.${k}`, 'must not contain NUL bytes');
    env[k] = v;
  }
  let workdir = '';
  if (raw.workdir !== undefined && raw.workdir !== '') {
    const p = normalizeSandboxPath(raw.workdir);
    if (typeof p !== 'string') throw invalidField('workdir', p.problem);
    workdir = p;
  }
  let timeoutMs: number;
  const fallback =
    limits.defaultExecTimeoutMs > 0 ? limits.defaultExecTimeoutMs : limits.maxExecTimeoutMs;
  if (raw.timeout === undefined || raw.timeout === '') {
    timeoutMs = fallback;
  } else {
    timeoutMs = parseDurationField('timeout', raw.timeout);
    if (timeoutMs < 0) throw invalidField('timeout', `must not be negative, got "${raw.timeout}"`);
    if (timeoutMs === 0) timeoutMs = fallback;
  }
  if (limits.maxExecTimeoutMs > 0 && timeoutMs > limits.maxExecTimeoutMs) {
    throw invalidField(
      'timeout',
      `${raw.timeout ?? formatDurationMs(timeoutMs)} exceeds max_exec_timeout ${formatDurationMs(limits.maxExecTimeoutMs)}`,
    );
  }
  return { command, args, mode, env, workdir, timeoutMs };
}

/** Validates an in-sandbox path field. */
export function requirePath(field: string, raw: string | undefined): string {
  const p = normalizeSandboxPath(raw ?? '');
  if (typeof p !== 'string') throw invalidField(field, p.problem);
  return p;
}

/** Validates an octal mode field. */
export function requireMode(
  field: string,
  raw: string | number | undefined,
  fallback: number,
): number {
  if (raw === undefined || raw === '') return fallback;
  if (typeof raw === 'number') {
    if (!Number.isInteger(raw) || raw < 0 || raw > 0o7777)
      throw invalidField(field, `${raw} is not a file mode`);
    // Numbers such as 755 are what users mean as octal digits.
    return parseFileModeOr(field, String(raw));
  }
  return parseFileModeOr(field, raw);
}

function parseFileModeOr(field: string, raw: string): number {
  try {
    return parseFileMode(raw);
  } catch (err) {
    throw invalidField(field, (err as Error).message);
  }
}
