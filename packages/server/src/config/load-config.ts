/**
 * Loads the configuration: finds the file, applies `STACYVM_*` env overrides,
 * reads secret files and validates everything against the schema. Only the
 * composition root calls this; everything else receives plain options.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { parseDurationNs, parseDurationMs, formatDurationNs } from '../domain/duration.js';
import { StacyError, type FieldProblem } from '../domain/errors.js';
import {
  CONFIG_KEYS,
  SECRET_FILE_KEYS,
  SECRET_PATHS,
  StacyConfigSchema,
  defaultConfig,
  getConfigPath,
  setConfigPath,
  type ConfigKeyInfo,
  type ConfigValue,
  type StacyConfig,
} from './schema.js';

export {
  CONFIG_KEYS,
  CONFIG_SECTIONS,
  SECRET_PATHS,
  SECRET_FILE_KEYS,
  configKey,
  defaultConfig,
  envVarFor,
  type ConfigKeyInfo,
  type ConfigSectionInfo,
  type ConfigValue,
  type ConfigValueKind,
  type StacyConfig,
} from './schema.js';

/** Env var naming the config file (checked after `--config`). */
export const CONFIG_ENV_VAR = 'STACYVM_CONFIG';

/** File name looked up in the working directory. */
export const CWD_CONFIG_FILE = 'stacyvm.yaml';

/** What replaces a secret in printed configuration. */
export const REDACTED = '<redacted>';

/** A configuration that cannot be used; `details` names every problem. */
export class ConfigError extends StacyError {
  constructor(problems: FieldProblem[], source?: string) {
    const where = source === undefined ? '' : ` (${source})`;
    const lines = problems.map((p) => `  ${p.field}: ${p.problem}`);
    super('BAD_REQUEST', `invalid configuration${where}:\n${lines.join('\n')}`, {
      details: problems,
    });
    this.name = 'ConfigError';
  }
}

/** Where to look for configuration; every field defaults to the real process. */
export interface LoadConfigOptions {
  /** The `--config` flag: the file must exist. */
  configPath?: string;
  /** Environment to read `STACYVM_*` from (default `process.env`). */
  env?: Record<string, string | undefined>;
  /** Directory holding `./stacyvm.yaml` and anchoring relative paths (default `process.cwd()`). */
  cwd?: string;
  /** Home directory holding `.stacyvm/config.yaml` (default `os.homedir()`). */
  homeDir?: string;
}

/** A loaded, validated configuration. */
export interface LoadedConfig {
  config: StacyConfig;
  /** Absolute path of the file that was read; absent when only defaults and env applied. */
  source?: string;
  /** Non-fatal findings, e.g. `unknown key "providers.firecracker" ignored`. */
  warnings: string[];
}

/**
 * Loads, merges and validates the configuration. Lookup order:
 * `configPath` (must exist), `STACYVM_CONFIG` (must exist), `<cwd>/stacyvm.yaml`,
 * `<home>/.stacyvm/config.yaml`, else defaults only. Env overrides beat the
 * file. Throws {@link ConfigError} listing every problem at once.
 */
export function loadConfig(opts: LoadConfigOptions = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const homeDir = opts.homeDir ?? homedir();

  const source = findConfigFile(opts.configPath, env, cwd, homeDir);
  const raw = source === undefined ? {} : readYamlFile(source);
  const warnings: string[] = [];
  const problems: FieldProblem[] = [];
  walkFileKeys(raw, StacyConfigSchema.properties, '', warnings, problems);

  const config = defaultConfig() as unknown as Record<string, unknown>;
  for (const key of CONFIG_KEYS) {
    const envValue = env[key.envVar];
    // As in the Go original, an empty env var counts as unset.
    if (envValue !== undefined && envValue !== '') {
      const result = parseValue(key, envValue);
      if (result.ok) setConfigPath(config, key.path, result.value);
      else problems.push({ field: key.path, problem: withOrigin(key, envValue, result, 'env') });
      continue;
    }
    const fileValue = mapAsEntries(key.path, getConfigPath(raw, key.path));
    if (fileValue === undefined || fileValue === null) continue;
    const result = parseValue(key, fileValue);
    if (result.ok) setConfigPath(config, key.path, result.value);
    else problems.push({ field: key.path, problem: withOrigin(key, fileValue, result, 'file') });
  }

  const failed = new Set(problems.map((p) => p.field));
  readSecretFiles(config, cwd, problems, failed);
  const typed = config as unknown as StacyConfig;
  problems.push(...crossChecks(typed, failed));

  if (problems.length > 0) throw new ConfigError(problems, source);
  const loaded: LoadedConfig = { config: typed, warnings };
  if (source !== undefined) loaded.source = source;
  return loaded;
}

// ---------------------------------------------------------------------------
// Finding and parsing the file

function findConfigFile(
  configPath: string | undefined,
  env: Record<string, string | undefined>,
  cwd: string,
  homeDir: string,
): string | undefined {
  if (configPath !== undefined && configPath !== '') {
    return requireFile(resolve(cwd, configPath), '--config');
  }
  const fromEnv = env[CONFIG_ENV_VAR];
  if (fromEnv !== undefined && fromEnv !== '') {
    return requireFile(resolve(cwd, fromEnv), CONFIG_ENV_VAR);
  }
  for (const candidate of [join(cwd, CWD_CONFIG_FILE), join(homeDir, '.stacyvm', 'config.yaml')]) {
    if (isFile(candidate)) return candidate;
  }
  return undefined;
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function requireFile(path: string, origin: string): string {
  if (!isFile(path)) {
    throw new ConfigError([
      { field: origin, problem: `config file "${path}" does not exist or is not a file` },
    ]);
  }
  return path;
}

function errnoCode(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return err instanceof Error ? err.message : 'unknown error';
}

function readYamlFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(
      [{ field: path, problem: `cannot read config file: ${errnoCode(err)}` }],
      path,
    );
  }
  const lineCounter = new LineCounter();
  // prettyErrors would quote the offending source line, which may hold a secret.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, merge: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => {
        const { line, col } = lineCounter.linePos(e.pos[0]);
        return { field: path, problem: `YAML error at line ${line}, column ${col}: ${e.message}` };
      }),
      path,
    );
  }
  const value: unknown = doc.toJS();
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(
      [{ field: path, problem: 'the top level of a config file must be a mapping of sections' }],
      path,
    );
  }
  return value as Record<string, unknown>;
}

/**
 * The Go original writes `auth.worker_tokens` as a YAML map (worker id →
 * token); the schema holds it as `id=token` strings, so such files keep working.
 */
function mapAsEntries(path: string, value: unknown): unknown {
  if (path !== 'auth.worker_tokens') return value;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  return Object.entries(value).map(([id, token]: [string, unknown]) =>
    typeof token === 'string' ? `${id}=${token}` : token,
  );
}

/** Warns about keys the schema lacks and refuses a scalar where a section belongs. */
function walkFileKeys(
  raw: Record<string, unknown>,
  properties: Record<string, unknown>,
  prefix: string,
  warnings: string[],
  problems: FieldProblem[],
): void {
  for (const [key, value] of Object.entries(raw)) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    const schema = properties[key];
    if (schema === undefined) {
      warnings.push(`unknown key "${path}" ignored`);
      continue;
    }
    const childProps = (schema as { properties?: Record<string, unknown> }).properties;
    if (childProps === undefined || value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) {
      problems.push({ field: path, problem: 'must be a mapping of keys' });
      continue;
    }
    walkFileKeys(value as Record<string, unknown>, childProps, path, warnings, problems);
  }
}

// ---------------------------------------------------------------------------
// Typing and checking one leaf

type ParseResult = { ok: true; value: ConfigValue } | { ok: false; problem: string };

const fail = (problem: string): ParseResult => ({ ok: false, problem });

function withOrigin(
  key: ConfigKeyInfo,
  value: unknown,
  result: { problem: string },
  origin: 'env' | 'file',
): string {
  // Duration messages already quote the input; secrets are never quoted.
  const quoted = key.secret || key.kind === 'duration' ? undefined : JSON.stringify(value);
  if (origin === 'env') {
    return quoted === undefined
      ? `${result.problem} (from ${key.envVar})`
      : `${result.problem} (got ${quoted} from ${key.envVar})`;
  }
  return quoted === undefined ? result.problem : `${result.problem} (got ${quoted})`;
}

function integerProblem(key: ConfigKeyInfo, noun: string): string {
  const { minimum, maximum } = key;
  if (minimum !== undefined && maximum !== undefined) {
    return `must be ${noun === 'integer' ? 'an integer' : 'a number'} from ${minimum} to ${maximum}`;
  }
  if (minimum === 0) return `must be a non-negative ${noun}`;
  if (minimum === 1 && noun === 'integer') return 'must be a positive integer';
  if (minimum !== undefined)
    return `must be ${noun === 'integer' ? 'an integer' : 'a number'} >= ${minimum}`;
  return `must be ${noun === 'integer' ? 'an integer' : 'a number'}`;
}

function parseNumber(key: ConfigKeyInfo, value: unknown): ParseResult {
  const integer = key.kind === 'integer';
  const noun = integer ? 'integer' : 'number';
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'string' && /^\s*[+-]?(\d+\.?\d*|\.\d+)\s*$/.test(value))
    n = Number(value);
  else return fail(integerProblem(key, noun));
  if (!Number.isFinite(n) || (integer && !Number.isSafeInteger(n))) {
    return fail(integerProblem(key, noun));
  }
  if (key.minimum !== undefined && n < key.minimum) return fail(integerProblem(key, noun));
  if (key.maximum !== undefined && n > key.maximum) return fail(integerProblem(key, noun));
  return { ok: true, value: n };
}

function parseBoolean(value: unknown): ParseResult {
  if (typeof value === 'boolean') return { ok: true, value };
  if (value === 1 || value === 0) return { ok: true, value: value === 1 };
  if (typeof value === 'string') {
    const v = value.trim().toLowerCase();
    if (v === 'true' || v === '1') return { ok: true, value: true };
    if (v === 'false' || v === '0') return { ok: true, value: false };
  }
  return fail('must be true or false (or 1/0)');
}

function parseStringList(value: unknown): ParseResult {
  const problem = 'must be a list of strings (YAML list, JSON array or comma-separated)';
  let items: unknown[];
  if (Array.isArray(value)) {
    items = value;
  } else if (typeof value === 'string') {
    const text = value.trim();
    if (text.startsWith('[')) {
      try {
        const parsed: unknown = JSON.parse(text);
        if (!Array.isArray(parsed)) return fail(problem);
        items = parsed;
      } catch {
        return fail(problem);
      }
    } else {
      items = text
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '');
    }
  } else {
    return fail(problem);
  }
  const out: string[] = [];
  for (const item of items) {
    if (typeof item === 'string') out.push(item);
    else if (typeof item === 'number') out.push(String(item));
    else return fail(problem);
  }
  return { ok: true, value: out };
}

function scalarString(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  // YAML types `user: 1000` or `ttl: 0` as numbers; Go's loader accepted them as text.
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return undefined;
}

function parseValue(key: ConfigKeyInfo, value: unknown): ParseResult {
  switch (key.kind) {
    case 'integer':
    case 'number':
      return parseNumber(key, value);
    case 'boolean':
      return parseBoolean(value);
    case 'string-list':
      return parseStringList(value);
    case 'string': {
      const s = scalarString(value);
      if (s === undefined) return fail('must be a string');
      if (key.minLength !== undefined && s.length < key.minLength) return fail('must not be empty');
      return { ok: true, value: s };
    }
    case 'enum': {
      const s = scalarString(value);
      const values = key.values ?? [];
      if (s === '') return { ok: true, value: key.default };
      if (s === undefined || !values.includes(s))
        return fail(`must be one of ${values.join(', ')}`);
      return { ok: true, value: s };
    }
    case 'duration': {
      const s = scalarString(value);
      if (s === undefined) return fail('must be a duration such as 30s, 5m or 1h30m');
      if (s.trim() === '') return { ok: true, value: key.default };
      let ns: number;
      try {
        ns = parseDurationNs(s);
      } catch (err) {
        return fail(err instanceof Error ? err.message : String(err));
      }
      if (ns < 0) return fail(`must not be negative (got "${s}")`);
      if (ns === 0 && key.durationBound === 'positive') {
        return fail(`must be greater than 0s (got "${s}")`);
      }
      if (key.durationMax !== undefined && ns > parseDurationNs(key.durationMax)) {
        return fail(`must be at most ${key.durationMax} (got "${s}")`);
      }
      return { ok: true, value: s.trim() };
    }
  }
}

// ---------------------------------------------------------------------------
// Secret files and checks that span keys

function readSecretFiles(
  config: Record<string, unknown>,
  cwd: string,
  problems: FieldProblem[],
  failed: Set<string>,
): void {
  for (const [secretPath, filePath] of Object.entries(SECRET_FILE_KEYS)) {
    const file = getConfigPath(config, filePath);
    if (typeof file !== 'string' || file === '') continue;
    const inline = getConfigPath(config, secretPath);
    if (typeof inline === 'string' && inline !== '') {
      problems.push({
        field: filePath,
        problem: `set either ${secretPath} or ${filePath}, not both`,
      });
      failed.add(secretPath);
      continue;
    }
    const full = resolve(cwd, file);
    let content: string;
    try {
      content = readFileSync(full, 'utf8').trim();
    } catch (err) {
      problems.push({ field: filePath, problem: `cannot read "${full}": ${errnoCode(err)}` });
      failed.add(secretPath);
      continue;
    }
    if (content === '') {
      problems.push({ field: filePath, problem: `file "${full}" is empty` });
      failed.add(secretPath);
      continue;
    }
    setConfigPath(config, secretPath, content);
  }
}

function corsOriginProblem(origin: string): string | undefined {
  if (origin === '*') return undefined;
  const bad = `"${origin}" must be "*" or http(s)://host[:port] without a path, query or fragment`;
  if (!/^https?:\/\/[^/?#@\s]+$/i.test(origin)) return bad;
  try {
    const url = new URL(origin);
    return url.hostname === '' ? bad : undefined;
  } catch {
    return bad;
  }
}

function httpUrlProblem(value: string): string | undefined {
  try {
    const url = new URL(value);
    if (url.protocol === 'http:' || url.protocol === 'https:') return undefined;
  } catch {
    // fall through to the message below
  }
  return `must be an http(s) URL (got ${JSON.stringify(value)})`;
}

function crossChecks(config: StacyConfig, failed: ReadonlySet<string>): FieldProblem[] {
  const problems: FieldProblem[] = [];
  const ok = (...paths: string[]) => paths.every((p) => !failed.has(p));

  if (ok('server.cors_allowed_origins')) {
    config.server.cors_allowed_origins.forEach((origin, i) => {
      const problem = corsOriginProblem(origin);
      if (problem !== undefined) {
        problems.push({
          field: 'server.cors_allowed_origins',
          problem: `entry ${i + 1}: ${problem}`,
        });
      }
    });
  }

  if (ok('database.driver', 'database.dsn', 'database.path')) {
    const driver = config.database.driver;
    if ((driver === 'postgres' || driver === 'postgresql') && config.database.dsn === '') {
      problems.push({
        field: 'database.dsn',
        problem: `required when database.driver is ${driver} (set database.dsn or database.dsn_file)`,
      });
    }
    if ((driver === 'sqlite' || driver === 'sqlite3') && config.database.path.trim() === '') {
      problems.push({
        field: 'database.path',
        problem: `required when database.driver is ${driver}`,
      });
    }
  }

  const d = config.defaults;
  if (ok('defaults.default_exec_timeout', 'defaults.max_exec_timeout')) {
    const maxNs = parseDurationNs(d.max_exec_timeout);
    if (parseDurationNs(d.default_exec_timeout) > maxNs) {
      problems.push({
        field: 'defaults.default_exec_timeout',
        problem: `must not exceed defaults.max_exec_timeout (${formatDurationNs(maxNs)})`,
      });
    }
  }
  if (ok('defaults.ttl', 'defaults.max_ttl')) {
    const maxNs = parseDurationNs(d.max_ttl);
    if (maxNs > 0 && parseDurationNs(d.ttl) > maxNs) {
      problems.push({
        field: 'defaults.ttl',
        problem: `must not exceed defaults.max_ttl (${formatDurationNs(maxNs)})`,
      });
    }
  }

  if (ok('providers.default', 'providers.mock.enabled', 'providers.docker.enabled')) {
    const p = config.providers;
    if (p.default === 'auto' && !p.mock.enabled && !p.docker.enabled) {
      problems.push({
        field: 'providers.default',
        problem: 'no provider is enabled (enable providers.docker or providers.mock)',
      });
    } else if (p.default !== 'auto' && !p[p.default].enabled) {
      problems.push({
        field: 'providers.default',
        problem: `names ${p.default}, but providers.${p.default}.enabled is false`,
      });
    }
  }

  if (ok('worker.rpc_tls.client_cert_file', 'worker.rpc_tls.client_key_file')) {
    const t = config.worker.rpc_tls;
    if ((t.client_cert_file === '') !== (t.client_key_file === '')) {
      problems.push({
        field:
          t.client_cert_file === ''
            ? 'worker.rpc_tls.client_cert_file'
            : 'worker.rpc_tls.client_key_file',
        problem: 'worker.rpc_tls.client_cert_file and client_key_file must be set together',
      });
    }
  }

  if (ok('worker.control_plane_url')) {
    const problem = httpUrlProblem(config.worker.control_plane_url);
    if (problem !== undefined) problems.push({ field: 'worker.control_plane_url', problem });
  }
  return problems;
}

// ---------------------------------------------------------------------------
// Helpers for consumers of a loaded config

/** Milliseconds of a Go duration string from a validated config, e.g. `durationMs('1m30s')` = 90000. */
export function durationMs(value: string): number {
  return parseDurationMs(value);
}

/** Whether `host` only accepts local connections: 127.0.0.0/8, ::1 or localhost. */
export function isLoopbackHost(host: string): boolean {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h === 'localhost') return true;
  if (h.startsWith('::ffff:')) h = h.slice('::ffff:'.length);
  const family = isIP(h);
  if (family === 4) return h.startsWith('127.');
  if (family === 6) {
    // Normalise spellings such as 0:0:0:0:0:0:0:1 through the URL parser.
    return new URL(`http://[${h}]/`).hostname === '[::1]';
  }
  return false;
}

/**
 * The refusal message when the API would listen on a non-loopback address with
 * no API key and `server.allow_insecure_bind` unset; `undefined` when safe.
 */
export function checkBindSafety(config: StacyConfig): string | undefined {
  const { host, allow_insecure_bind: allowed } = config.server;
  if (isLoopbackHost(host) || config.auth.api_key !== '' || allowed) return undefined;
  return (
    `refusing to listen on ${host}: it is not a loopback address and no auth.api_key is set, ` +
    'so anyone who can reach the port could run commands. Set auth.api_key ' +
    '(or STACYVM_AUTH_API_KEY), bind server.host to 127.0.0.1, or set ' +
    'server.allow_insecure_bind: true if the network is trusted.'
  );
}

/** The store dialect of `database.driver`, folding the Go-era aliases `sqlite3` and `postgresql`. */
export function databaseDialect(config: StacyConfig): 'sqlite' | 'postgres' {
  const driver = config.database.driver;
  return driver === 'postgres' || driver === 'postgresql' ? 'postgres' : 'sqlite';
}

/** A deep copy with every non-empty secret replaced by `"<redacted>"`. */
export function redactConfig(config: StacyConfig): StacyConfig {
  const copy = structuredClone(config);
  const tree = copy as unknown as Record<string, unknown>;
  for (const path of SECRET_PATHS) {
    const value = getConfigPath(tree, path);
    if (typeof value === 'string' && value !== '') setConfigPath(tree, path, REDACTED);
    else if (Array.isArray(value)) {
      // Per-worker tokens keep their worker id so the output still says who has one.
      const keepId = path === 'auth.worker_tokens';
      const redacted = value.map((entry: unknown) => {
        const text = typeof entry === 'string' ? entry : '';
        const eq = text.indexOf('=');
        return keepId && eq > 0 ? `${text.slice(0, eq)}=${REDACTED}` : REDACTED;
      });
      setConfigPath(tree, path, redacted);
    }
  }
  return copy;
}
