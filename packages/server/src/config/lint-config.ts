/**
 * `stacyvm config lint`: judges a loaded configuration for production use.
 * Checks marked "P" in the reference warn normally and fail with
 * `production`. Findings name keys, never print secret values.
 */
import { isAbsolute } from 'node:path';
import { parseDurationNs, formatDurationNs } from '../domain/duration.js';
import { databaseDialect, isLoopbackHost } from './load-config.js';
import type { StacyConfig } from './schema.js';

/** Outcome of one lint check. */
export type LintLevel = 'pass' | 'warn' | 'fail';

/** One lint result; `fix` says what to change when the level is not `pass`. */
export interface LintFinding {
  name: string;
  level: LintLevel;
  message: string;
  fix?: string;
}

/** Options of {@link lintConfig}. */
export interface LintConfigOptions {
  /** Turn production-relevant warnings ("P" checks) into failures. */
  production: boolean;
}

/** Every check {@link lintConfig} can report, for docs and `config lint --help`. */
export const LINT_CHECKS: readonly { name: string; description: string }[] = [
  { name: 'config', description: 'The configuration loaded and validated.' },
  {
    name: 'auth.api_key',
    description: 'P: API key empty, a placeholder (change-me …) or shorter than 32 bytes.',
  },
  {
    name: 'auth.admin_api_key',
    description: 'P: admin key empty, a placeholder or shorter than 32 bytes.',
  },
  { name: 'auth.key_separation', description: 'P: API key and admin key are the same.' },
  {
    name: 'auth.admin_fallback_enabled',
    description: 'P: the regular API key is accepted on admin routes when no admin key is set.',
  },
  {
    name: 'auth.worker_token',
    description: 'warn: one shared token authenticates every worker (P when it is weak).',
  },
  {
    name: 'auth.worker_tokens',
    description:
      'Only when set: fail for an entry that is not worker-id=token, P for a weak per-worker token.',
  },
  {
    name: 'auth.worker_signing_key',
    description:
      'Only when set: P for a weak signing or rotation key; warn while static worker tokens are still accepted.',
  },
  { name: 'server.host', description: 'fail: non-loopback bind with no API key (always).' },
  { name: 'server.cors_allowed_origins', description: 'P: any origin ("*") may call the API.' },
  { name: 'database.path', description: 'P: SQLite path is relative to the working directory.' },
  { name: 'database.dsn', description: 'fail: postgres driver without a DSN.' },
  {
    name: 'defaults.sandbox_caps',
    description: 'P: no limit on sandboxes in total or per owner.',
  },
  { name: 'defaults.exec_timeouts', description: 'P: exec timeouts not positive.' },
  { name: 'defaults.max_ttl', description: 'P: no upper bound on sandbox lifetime.' },
  { name: 'logging.format', description: 'P: logs are not JSON.' },
  {
    name: 'providers.mock.enabled',
    description: 'warn, fail in production: the mock provider runs commands on the host.',
  },
  {
    name: 'worker.rpc_tls',
    description:
      'fail in production: insecure_skip_verify; P: remote worker credentials configured but worker RPC is plain HTTP.',
  },
  {
    name: 'database.driver',
    description:
      'P: SQLite while remote worker credentials are configured or server.local_worker_id is not "local" (several control planes need one shared PostgreSQL database).',
  },
  {
    name: 'providers.docker',
    description:
      'P (when Docker is enabled): seccomp unconfined, capabilities not all dropped or added back, no pids/memory limit.',
  },
];

const PLACEHOLDERS = ['change-me', 'changeme', 'replace-me', 'replaceme'];
const MIN_SECRET_BYTES = 32;

/** Why a secret is weak, or undefined when it is fine. Never includes the value. */
function secretWeakness(value: string): string | undefined {
  if (value === '') return 'is empty';
  const lower = value.toLowerCase();
  if (PLACEHOLDERS.some((p) => lower.includes(p))) return 'looks like a placeholder';
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes < MIN_SECRET_BYTES) return `is ${bytes} bytes, shorter than ${MIN_SECRET_BYTES}`;
  return undefined;
}

/** Runs every check against `config`. */
export function lintConfig(config: StacyConfig, options: LintConfigOptions): LintFinding[] {
  const p: LintLevel = options.production ? 'fail' : 'warn';
  const out: LintFinding[] = [];
  const pass = (name: string, message: string) => out.push({ name, level: 'pass', message });
  const flag = (name: string, level: LintLevel, message: string, fix: string) =>
    out.push({ name, level, message, fix });
  const { auth, server, database, defaults, logging, providers } = config;
  const generate = 'generate one with: openssl rand -hex 32';

  pass('config', 'configuration loaded and validated');

  for (const [name, value, env] of [
    ['auth.api_key', auth.api_key, 'STACYVM_AUTH_API_KEY'],
    ['auth.admin_api_key', auth.admin_api_key, 'STACYVM_AUTH_ADMIN_API_KEY'],
  ] as const) {
    const weakness = secretWeakness(value);
    if (weakness === undefined) pass(name, 'set and at least 32 bytes');
    else {
      flag(
        name,
        p,
        `${name} ${weakness}`,
        `set ${name} (or ${name}_file, or ${env}) to a random secret; ${generate}`,
      );
    }
  }

  if (auth.api_key === auth.admin_api_key) {
    flag(
      'auth.key_separation',
      p,
      auth.api_key === ''
        ? 'auth.api_key and auth.admin_api_key are both empty'
        : 'auth.api_key and auth.admin_api_key are the same key',
      'use a distinct auth.admin_api_key so an API client cannot administer the server',
    );
  } else {
    pass('auth.key_separation', 'API and admin keys differ');
  }

  if (auth.admin_fallback_enabled) {
    flag(
      'auth.admin_fallback_enabled',
      p,
      auth.admin_api_key === ''
        ? 'no admin key is set, so the regular API key grants admin access'
        : 'the regular API key would grant admin access if the admin key were removed',
      'set auth.admin_fallback_enabled: false and give admins their own auth.admin_api_key',
    );
  } else {
    pass('auth.admin_fallback_enabled', 'admin routes require the admin key');
  }

  if (auth.worker_token !== '') {
    const weakness = secretWeakness(auth.worker_token);
    flag(
      'auth.worker_token',
      weakness === undefined ? 'warn' : p,
      weakness === undefined
        ? 'one shared token authenticates every worker; a leaked worker host can impersonate any worker'
        : `the shared worker token ${weakness}`,
      `keep worker hosts trusted and rotate the token regularly; ${generate}`,
    );
  } else {
    pass('auth.worker_token', 'no shared worker token configured');
  }

  if (auth.worker_tokens.some((e) => e.trim() !== '')) {
    const malformed: number[] = [];
    const weak: string[] = [];
    for (const [i, raw] of auth.worker_tokens.entries()) {
      const entry = raw.trim();
      if (entry === '') continue;
      const eq = entry.indexOf('=');
      const id = eq > 0 ? entry.slice(0, eq).trim() : '';
      const token = eq > 0 ? entry.slice(eq + 1).trim() : '';
      if (id === '' || token === '') malformed.push(i);
      else if (secretWeakness(token) !== undefined) weak.push(id);
    }
    if (malformed.length > 0) {
      flag(
        'auth.worker_tokens',
        'fail',
        `entries ${malformed.map((i) => `[${i}]`).join(', ')} are not worker-id=token`,
        'write each entry as worker-id=token',
      );
    } else if (weak.length > 0) {
      flag(
        'auth.worker_tokens',
        p,
        `the tokens of ${weak.map((id) => `"${id}"`).join(', ')} are empty, placeholders or shorter than ${MIN_SECRET_BYTES} bytes`,
        `give each worker a random token; ${generate}`,
      );
    } else {
      pass('auth.worker_tokens', 'each listed worker authenticates with its own token');
    }
  }

  if (auth.worker_signing_key !== '') {
    const weakKeys = [auth.worker_signing_key, ...auth.worker_signing_keys].filter(
      (k) => k.trim() !== '' && secretWeakness(k) !== undefined,
    ).length;
    const staticTokens =
      auth.worker_token !== '' || auth.worker_tokens.some((e) => e.trim() !== '');
    if (weakKeys > 0) {
      flag(
        'auth.worker_signing_key',
        p,
        `${weakKeys} worker signing or rotation key(s) are placeholders or shorter than ${MIN_SECRET_BYTES} bytes`,
        `use random keys; ${generate}`,
      );
    } else if (staticTokens) {
      flag(
        'auth.worker_signing_key',
        'warn',
        'signed worker tokens are enabled but static worker tokens are still accepted',
        'remove auth.worker_token and auth.worker_tokens once every worker uses signed tokens',
      );
    } else {
      pass('auth.worker_signing_key', 'workers authenticate with short-lived signed tokens');
    }
  }

  if (!isLoopbackHost(server.host) && auth.api_key === '') {
    flag(
      'server.host',
      'fail',
      `the API listens on ${server.host} (not loopback) with no API key: anyone who can reach it can run commands`,
      'set auth.api_key, or bind server.host to 127.0.0.1 behind an authenticating proxy',
    );
  } else if (!isLoopbackHost(server.host)) {
    pass('server.host', `listens on ${server.host}; requests need the API key`);
  } else {
    pass('server.host', `listens on loopback (${server.host})`);
  }

  if (server.cors_allowed_origins.includes('*')) {
    flag(
      'server.cors_allowed_origins',
      p,
      'any web origin may call the API from a browser',
      'list the exact origins of your web apps, e.g. ["https://app.example.com"]',
    );
  } else {
    pass(
      'server.cors_allowed_origins',
      server.cors_allowed_origins.length === 0
        ? 'no cross-origin browser calls allowed'
        : `${server.cors_allowed_origins.length} explicit origin(s)`,
    );
  }

  if (database.driver === 'postgres' || database.driver === 'postgresql') {
    if (database.dsn === '') {
      flag(
        'database.dsn',
        'fail',
        `database.driver is ${database.driver} but no DSN is set`,
        'set database.dsn or database.dsn_file',
      );
    } else {
      pass('database.dsn', 'PostgreSQL DSN set');
    }
  } else if (!isAbsolute(database.path)) {
    flag(
      'database.path',
      p,
      `SQLite path "${database.path}" is relative, so the database moves with the working directory`,
      'set database.path to an absolute path, e.g. /var/lib/stacyvm/stacyvm.db',
    );
  } else {
    pass('database.path', `SQLite database at ${database.path}`);
  }

  if (defaults.max_sandboxes <= 0 || defaults.max_sandboxes_per_owner <= 0) {
    const unlimited = [
      defaults.max_sandboxes <= 0 ? 'defaults.max_sandboxes' : undefined,
      defaults.max_sandboxes_per_owner <= 0 ? 'defaults.max_sandboxes_per_owner' : undefined,
    ].filter((v) => v !== undefined);
    flag(
      'defaults.sandbox_caps',
      p,
      `${unlimited.join(' and ')} ${unlimited.length > 1 ? 'are' : 'is'} 0 (unlimited)`,
      'set positive caps so one client cannot exhaust the host',
    );
  } else {
    pass(
      'defaults.sandbox_caps',
      `at most ${defaults.max_sandboxes} sandboxes, ${defaults.max_sandboxes_per_owner} per owner`,
    );
  }

  const maxExecNs = parseDurationNs(defaults.max_exec_timeout);
  const defaultExecNs = parseDurationNs(defaults.default_exec_timeout);
  if (maxExecNs <= 0 || defaultExecNs < 0) {
    flag(
      'defaults.exec_timeouts',
      p,
      'exec timeouts are not positive, so a command can run forever',
      'set defaults.max_exec_timeout to a positive duration such as 10m',
    );
  } else {
    const effective = defaultExecNs === 0 ? maxExecNs : defaultExecNs;
    pass(
      'defaults.exec_timeouts',
      `execs time out after ${formatDurationNs(effective)} by default, ${formatDurationNs(maxExecNs)} at most`,
    );
  }

  const maxTtlNs = parseDurationNs(defaults.max_ttl);
  if (maxTtlNs <= 0) {
    flag(
      'defaults.max_ttl',
      p,
      'defaults.max_ttl is 0s, so a sandbox can be kept alive forever',
      'set defaults.max_ttl to a positive duration such as 24h',
    );
  } else {
    pass('defaults.max_ttl', `sandboxes live at most ${formatDurationNs(maxTtlNs)}`);
  }

  if (logging.format !== 'json') {
    flag(
      'logging.format',
      p,
      `logging.format is ${logging.format}; log collectors expect JSON lines`,
      'set logging.format: json',
    );
  } else {
    pass('logging.format', 'JSON logs');
  }

  if (providers.mock.enabled) {
    flag(
      'providers.mock.enabled',
      options.production ? 'fail' : 'warn',
      'the mock provider runs sandbox commands directly on the host, without isolation',
      'set providers.mock.enabled: false outside development',
    );
  } else {
    pass('providers.mock.enabled', 'mock provider disabled');
  }

  const rpcTls = config.worker.rpc_tls;
  const remoteWorkers =
    auth.worker_token !== '' || auth.worker_tokens.length > 0 || auth.worker_signing_key !== '';
  if (rpcTls.insecure_skip_verify) {
    flag(
      'worker.rpc_tls',
      'fail',
      'worker.rpc_tls.insecure_skip_verify accepts any worker certificate, so anyone on the path can impersonate a worker',
      'set worker.rpc_tls.ca_file to the CA that signs worker certificates and turn insecure_skip_verify off',
    );
  } else if (remoteWorkers && !rpcTls.enabled) {
    flag(
      'worker.rpc_tls',
      p,
      'remote worker credentials are configured but worker RPC is plain HTTP (tokens and sandbox data cross the network in clear)',
      'enable worker.rpc_tls (server cert on workers, ca_file and a client certificate on the control plane)',
    );
  } else {
    pass('worker.rpc_tls', rpcTls.enabled ? 'worker RPC uses TLS' : 'no remote worker credentials');
  }

  const ownId = server.local_worker_id.trim();
  if (databaseDialect(config) === 'sqlite') {
    const why = [
      remoteWorkers ? 'remote worker credentials are configured' : undefined,
      ownId !== 'local'
        ? `server.local_worker_id is "${ownId}" (several control planes)`
        : undefined,
    ].filter((v) => v !== undefined);
    if (why.length > 0) {
      flag(
        'database.driver',
        p,
        `the store is SQLite, a file only this control plane can use, but ${why.join(' and ')}: a second control plane cannot share it, so this one is a single point of failure for every worker`,
        'set database.driver: postgres and database.dsn (or dsn_file), the same database on every control plane; see docs/operations.md (Several control planes)',
      );
    } else {
      pass('database.driver', 'SQLite for a single control plane with only its own worker');
    }
  } else {
    pass(
      'database.driver',
      ownId === 'local'
        ? 'PostgreSQL (give each control plane its own server.local_worker_id to run several)'
        : `PostgreSQL; this control plane's own worker is "${ownId}"`,
    );
  }

  if (providers.docker.enabled) {
    const docker = providers.docker;
    const issues: string[] = [];
    if (docker.seccomp_profile === '' || docker.seccomp_profile === 'unconfined') {
      issues.push(`seccomp_profile is "${docker.seccomp_profile}"`);
    }
    if (!docker.dropped_caps.some((c) => c.toUpperCase() === 'ALL')) {
      issues.push('dropped_caps does not include ALL');
    }
    if (docker.added_caps.length > 0)
      issues.push(`added_caps adds ${docker.added_caps.join(', ')}`);
    if (docker.pids_limit <= 0) issues.push('pids_limit is 0 (unlimited)');
    if (docker.memory.trim() === '') issues.push('memory is empty (unlimited)');
    if (issues.length > 0) {
      flag(
        'providers.docker',
        p,
        `weakened container isolation: ${issues.join('; ')}`,
        'use seccomp_profile: default, dropped_caps: [ALL], no added_caps, and set memory and pids_limit',
      );
    } else {
      pass(
        'providers.docker',
        'containers drop all capabilities under the default seccomp profile',
      );
    }
  }

  return out;
}

/** Whether any finding failed (the CLI exits non-zero then). */
export function hasLintFailures(findings: readonly LintFinding[]): boolean {
  return findings.some((f) => f.level === 'fail');
}

/** Prints findings as `[level] name: message` with an indented `fix:` line. */
export function formatLintFindings(findings: readonly LintFinding[]): string {
  const lines: string[] = [];
  for (const f of findings) {
    lines.push(`[${f.level}] ${f.name}: ${f.message}`);
    if (f.fix !== undefined && f.level !== 'pass') lines.push(`      fix: ${f.fix}`);
  }
  return lines.join('\n');
}
