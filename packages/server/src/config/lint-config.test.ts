import { describe, expect, test } from 'vitest';
import {
  LINT_CHECKS,
  formatLintFindings,
  hasLintFailures,
  lintConfig,
  type LintFinding,
} from './lint-config.js';
import { defaultConfig, type StacyConfig } from './schema.js';

const API_KEY = 'a1'.repeat(20);
const ADMIN_KEY = 'b2'.repeat(20);
const WORKER_TOKEN = 'c3'.repeat(20);

function hardened(): StacyConfig {
  const c = defaultConfig();
  c.auth.api_key = API_KEY;
  c.auth.admin_api_key = ADMIN_KEY;
  c.auth.admin_fallback_enabled = false;
  c.server.cors_allowed_origins = ['https://app.example.com'];
  c.database.path = '/var/lib/stacyvm/stacyvm.db';
  c.defaults.max_sandboxes = 50;
  c.defaults.max_sandboxes_per_owner = 5;
  c.providers.mock.enabled = false;
  return c;
}

function levels(findings: LintFinding[]): Record<string, string> {
  return Object.fromEntries(findings.map((f) => [f.name, f.level]));
}

function finding(findings: LintFinding[], name: string): LintFinding {
  const f = findings.find((x) => x.name === name);
  if (f === undefined) throw new Error(`no finding ${name}`);
  return f;
}

describe('lintConfig', () => {
  test('the defaults warn about production gaps but do not fail outside production', () => {
    const findings = lintConfig(defaultConfig(), { production: false });
    expect(hasLintFailures(findings)).toBe(false);
    expect(levels(findings)).toEqual({
      config: 'pass',
      'auth.api_key': 'warn',
      'auth.admin_api_key': 'warn',
      'auth.key_separation': 'warn',
      'auth.admin_fallback_enabled': 'warn',
      'auth.worker_token': 'pass',
      'server.host': 'pass',
      'server.cors_allowed_origins': 'warn',
      'database.path': 'warn',
      'defaults.sandbox_caps': 'warn',
      'defaults.exec_timeouts': 'pass',
      'defaults.max_ttl': 'pass',
      'logging.format': 'pass',
      'providers.mock.enabled': 'warn',
      'worker.rpc_tls': 'pass',
      'database.driver': 'pass',
      'providers.docker': 'pass',
    });
  });

  test('database.driver: SQLite with remote workers or several control planes fails in production', () => {
    const find = (c: StacyConfig, production: boolean) =>
      finding(lintConfig(c, { production }), 'database.driver');
    expect(find(hardened(), true).level).toBe('pass');

    const remote = hardened();
    remote.auth.worker_signing_key = 'k'.repeat(40);
    expect(find(remote, false).level).toBe('warn');
    const failed = find(remote, true);
    expect(failed.level).toBe('fail');
    expect(failed.message).toContain('remote worker credentials are configured');
    expect(failed.fix).toContain('database.driver: postgres');
    expect(JSON.stringify(failed)).not.toContain('k'.repeat(40));

    const perWorker = hardened();
    perWorker.auth.worker_tokens = [`w1=${WORKER_TOKEN}`];
    expect(find(perWorker, true).level).toBe('fail');

    const severalCps = hardened();
    severalCps.server.local_worker_id = 'cp-a';
    const several = find(severalCps, true);
    expect(several.level).toBe('fail');
    expect(several.message).toContain('server.local_worker_id is "cp-a" (several control planes)');
    expect(several.message).not.toContain('remote worker');

    for (const c of [remote, severalCps]) {
      c.database.driver = 'postgres';
      c.database.dsn = 'postgres://stacyvm@db.internal:5432/stacyvm';
      expect(find(c, true).level).toBe('pass');
    }
    expect(find(severalCps, true).message).toContain('"cp-a"');
  });

  test('worker.rpc_tls: plain HTTP with worker credentials is a production failure; skip-verify always fails', () => {
    const plain = defaultConfig();
    plain.auth.worker_token = 'w'.repeat(40);
    const find = (c: typeof plain, production: boolean) =>
      lintConfig(c, { production }).find((f) => f.name === 'worker.rpc_tls');
    expect(find(plain, false)?.level).toBe('warn');
    expect(find(plain, true)?.level).toBe('fail');
    const tls = defaultConfig();
    tls.auth.worker_token = 'w'.repeat(40);
    tls.worker.rpc_tls.enabled = true;
    expect(find(tls, true)?.level).toBe('pass');
    tls.worker.rpc_tls.insecure_skip_verify = true;
    expect(find(tls, false)?.level).toBe('fail');
    expect(find(tls, false)?.message).toContain('insecure_skip_verify');
  });

  test('production turns the "P" warnings and the mock provider into failures', () => {
    const findings = lintConfig(defaultConfig(), { production: true });
    expect(hasLintFailures(findings)).toBe(true);
    const failed = findings.filter((f) => f.level === 'fail').map((f) => f.name);
    expect(failed).toEqual([
      'auth.api_key',
      'auth.admin_api_key',
      'auth.key_separation',
      'auth.admin_fallback_enabled',
      'server.cors_allowed_origins',
      'database.path',
      'defaults.sandbox_caps',
      'providers.mock.enabled',
    ]);
    for (const f of findings.filter((x) => x.level !== 'pass')) expect(f.fix).toBeTruthy();
  });

  test('a hardened configuration passes every check in production', () => {
    const findings = lintConfig(hardened(), { production: true });
    expect(findings.filter((f) => f.level !== 'pass')).toEqual([]);
  });

  test('flags placeholder and short keys without printing them', () => {
    const c = hardened();
    c.auth.api_key = 'please-change-me-before-going-live-ok';
    c.auth.admin_api_key = 'short-admin-key';
    const findings = lintConfig(c, { production: true });
    expect(finding(findings, 'auth.api_key')).toMatchObject({
      level: 'fail',
      message: 'auth.api_key looks like a placeholder',
    });
    expect(finding(findings, 'auth.admin_api_key')).toMatchObject({
      level: 'fail',
      message: 'auth.admin_api_key is 15 bytes, shorter than 32',
    });
    const text = formatLintFindings(findings);
    expect(text).not.toContain(c.auth.api_key);
    expect(text).not.toContain(c.auth.admin_api_key);
  });

  test('flags one key used for both API and admin access', () => {
    const c = hardened();
    c.auth.admin_api_key = c.auth.api_key;
    expect(finding(lintConfig(c, { production: false }), 'auth.key_separation')).toMatchObject({
      level: 'warn',
      message: 'auth.api_key and auth.admin_api_key are the same key',
    });
  });

  test('fails a non-loopback bind without an API key even outside production', () => {
    const c = hardened();
    c.server.host = '0.0.0.0';
    c.server.allow_insecure_bind = true;
    c.auth.api_key = '';
    const findings = lintConfig(c, { production: false });
    expect(finding(findings, 'server.host').level).toBe('fail');
    expect(hasLintFailures(findings)).toBe(true);
    c.auth.api_key = API_KEY;
    expect(finding(lintConfig(c, { production: true }), 'server.host').level).toBe('pass');
  });

  test('warns about a shared worker token, and fails a weak one in production', () => {
    const c = hardened();
    c.auth.worker_token = WORKER_TOKEN;
    expect(finding(lintConfig(c, { production: true }), 'auth.worker_token').level).toBe('warn');
    c.auth.worker_token = 'changeme';
    const weak = finding(lintConfig(c, { production: true }), 'auth.worker_token');
    expect(weak.level).toBe('fail');
    expect(weak.message).not.toContain('changeme');
  });

  test('checks the database: relative SQLite path, postgres DSN', () => {
    const c = hardened();
    c.database.path = 'data/stacyvm.db';
    expect(finding(lintConfig(c, { production: false }), 'database.path').level).toBe('warn');
    c.database.driver = 'postgres';
    c.database.dsn = '';
    const findings = lintConfig(c, { production: false });
    expect(finding(findings, 'database.dsn').level).toBe('fail');
    expect(findings.some((f) => f.name === 'database.path')).toBe(false);
  });

  test('checks sandbox caps, TTL bound, exec timeouts and log format', () => {
    const c = hardened();
    c.defaults.max_sandboxes_per_owner = 0;
    c.defaults.max_ttl = '0s';
    c.logging.format = 'pretty';
    const findings = lintConfig(c, { production: true });
    expect(finding(findings, 'defaults.sandbox_caps')).toMatchObject({
      level: 'fail',
      message: 'defaults.max_sandboxes_per_owner is 0 (unlimited)',
    });
    expect(finding(findings, 'defaults.max_ttl').level).toBe('fail');
    expect(finding(findings, 'logging.format').level).toBe('fail');
    expect(finding(findings, 'defaults.exec_timeouts').message).toBe(
      'execs time out after 10m0s by default, 10m0s at most',
    );
  });

  test('flags weakened Docker isolation', () => {
    const c = hardened();
    c.providers.docker.seccomp_profile = 'unconfined';
    c.providers.docker.dropped_caps = ['NET_RAW'];
    c.providers.docker.added_caps = ['SYS_ADMIN'];
    const f = finding(lintConfig(c, { production: false }), 'providers.docker');
    expect(f.level).toBe('warn');
    expect(f.message).toBe(
      'weakened container isolation: seccomp_profile is "unconfined"; dropped_caps does not include ALL; added_caps adds SYS_ADMIN',
    );
    c.providers.docker.enabled = false;
    expect(lintConfig(c, { production: false }).some((x) => x.name === 'providers.docker')).toBe(
      false,
    );
  });

  test('every finding name is a documented check', () => {
    const documented = new Set(LINT_CHECKS.map((c) => c.name));
    const c = defaultConfig();
    c.auth.worker_token = WORKER_TOKEN;
    const pg = hardened();
    pg.database.driver = 'postgres';
    for (const config of [c, pg, hardened()]) {
      for (const f of lintConfig(config, { production: true })) {
        expect(documented.has(f.name), f.name).toBe(true);
      }
    }
  });
});

test('formatLintFindings prints one line per finding and a fix line under problems', () => {
  const text = formatLintFindings([
    { name: 'config', level: 'pass', message: 'ok', fix: 'never shown' },
    { name: 'auth.api_key', level: 'fail', message: 'auth.api_key is empty', fix: 'set it' },
  ]);
  expect(text).toBe(
    ['[pass] config: ok', '[fail] auth.api_key: auth.api_key is empty', '      fix: set it'].join(
      '\n',
    ),
  );
});
