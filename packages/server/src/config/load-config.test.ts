import { mkdirSync, mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, test as base } from 'vitest';
import { StacyError } from '../domain/errors.js';
import {
  ConfigError,
  checkBindSafety,
  databaseDialect,
  defaultConfig,
  durationMs,
  isLoopbackHost,
  loadConfig,
  redactConfig,
  type LoadConfigOptions,
  type LoadedConfig,
} from './load-config.js';

interface Sandbox {
  /** Root of a scratch tree holding `work/` (cwd) and `home/`. */
  root: string;
  cwd: string;
  home: string;
  /** Writes a file relative to the root and returns its absolute path. */
  write(relPath: string, content: string): string;
  /** Loads with this tree's cwd/home and an isolated env (never process.env). */
  load(opts?: Omit<LoadConfigOptions, 'cwd' | 'homeDir'>): LoadedConfig;
  /** Loads and returns the ConfigError it must throw. */
  loadError(opts?: Omit<LoadConfigOptions, 'cwd' | 'homeDir'>): ConfigError;
}

const test = base.extend<{ fs: Sandbox }>({
  // eslint-disable-next-line no-empty-pattern
  fs: async ({}, use) => {
    const root = mkdtempSync(join(tmpdir(), 'stacyvm-config-'));
    const cwd = join(root, 'work');
    const home = join(root, 'home');
    mkdirSync(cwd);
    mkdirSync(home);
    const load = (opts: Omit<LoadConfigOptions, 'cwd' | 'homeDir'> = {}) =>
      loadConfig({ env: {}, ...opts, cwd, homeDir: home });
    const sandbox: Sandbox = {
      root,
      cwd,
      home,
      write(relPath, content) {
        const full = join(root, relPath);
        mkdirSync(dirname(full), { recursive: true });
        writeFileSync(full, content);
        return full;
      },
      load,
      loadError(opts) {
        try {
          load(opts);
        } catch (err) {
          if (err instanceof ConfigError) return err;
          throw err;
        }
        throw new Error('expected loadConfig to throw a ConfigError');
      },
    };
    try {
      await use(sandbox);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  },
});

describe('loadConfig lookup', () => {
  test('bounds a duration key that has a maximum, naming the key and the bound', ({ fs }) => {
    const err = fs.loadError({ env: { STACYVM_PREVIEW_RESOLVE_CACHE_TTL: '2m' } });
    expect(err.details).toEqual([
      {
        field: 'preview.resolve_cache_ttl',
        problem: 'must be at most 1m (got "2m") (from STACYVM_PREVIEW_RESOLVE_CACHE_TTL)',
      },
    ]);
    const ok = fs.load({ env: { STACYVM_PREVIEW_RESOLVE_CACHE_TTL: '60s' } });
    expect(ok.config.preview.resolve_cache_ttl).toBe('60s');
  });

  test('returns the defaults when no file and no env var is present', ({ fs }) => {
    const loaded = fs.load();
    expect(loaded.config).toEqual(defaultConfig());
    expect(loaded.source).toBeUndefined();
    expect(loaded.warnings).toEqual([]);
  });

  test('reads ~/.stacyvm/config.yaml when the working directory has no stacyvm.yaml', ({ fs }) => {
    const file = fs.write('home/.stacyvm/config.yaml', 'server:\n  port: 8001\n');
    const loaded = fs.load();
    expect(loaded.source).toBe(file);
    expect(loaded.config.server.port).toBe(8001);
  });

  test('prefers ./stacyvm.yaml over the home config, without merging them', ({ fs }) => {
    fs.write('home/.stacyvm/config.yaml', 'server:\n  port: 8001\n  preview_domain: home.test\n');
    const file = fs.write('work/stacyvm.yaml', 'server:\n  port: 8002\n');
    const loaded = fs.load();
    expect(loaded.source).toBe(file);
    expect(loaded.config.server.port).toBe(8002);
    expect(loaded.config.server.preview_domain).toBe('localhost');
  });

  test('prefers STACYVM_CONFIG over ./stacyvm.yaml and resolves it against the cwd', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'server:\n  port: 8002\n');
    const file = fs.write('work/conf/env.yaml', 'server:\n  port: 8003\n');
    const loaded = fs.load({ env: { STACYVM_CONFIG: 'conf/env.yaml' } });
    expect(loaded.source).toBe(file);
    expect(loaded.config.server.port).toBe(8003);
  });

  test('prefers --config over STACYVM_CONFIG', ({ fs }) => {
    const envFile = fs.write('env.yaml', 'server:\n  port: 8003\n');
    const flagFile = fs.write('flag.yaml', 'server:\n  port: 8004\n');
    const loaded = fs.load({ configPath: flagFile, env: { STACYVM_CONFIG: envFile } });
    expect(loaded.source).toBe(flagFile);
    expect(loaded.config.server.port).toBe(8004);
  });

  test('fails when --config names a missing file instead of falling back', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'server:\n  port: 8002\n');
    const err = fs.loadError({ configPath: 'missing.yaml' });
    expect(err.details).toEqual([
      {
        field: '--config',
        problem: `config file "${join(fs.cwd, 'missing.yaml')}" does not exist or is not a file`,
      },
    ]);
  });

  test('fails when STACYVM_CONFIG names a missing file instead of falling back', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'server:\n  port: 8002\n');
    const err = fs.loadError({ env: { STACYVM_CONFIG: '/nonexistent/stacyvm.yaml' } });
    expect(err.details?.[0]?.field).toBe('STACYVM_CONFIG');
    expect(err.message).toContain('/nonexistent/stacyvm.yaml');
  });

  test('an empty file means defaults', ({ fs }) => {
    const file = fs.write('work/stacyvm.yaml', '# nothing yet\n');
    const loaded = fs.load();
    expect(loaded.source).toBe(file);
    expect(loaded.config).toEqual(defaultConfig());
  });

  test('names the file, line and column of a YAML syntax error without quoting the line', ({
    fs,
  }) => {
    const file = fs.write(
      'work/stacyvm.yaml',
      'auth:\n  api_key: "s3cret-value\nserver:\n  port: 1\n',
    );
    const err = fs.loadError();
    expect(err).toBeInstanceOf(StacyError);
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toContain(file);
    expect(err.details?.[0]?.field).toBe(file);
    expect(err.details?.[0]?.problem).toMatch(/^YAML error at line \d+, column \d+: /);
    expect(err.message).not.toContain('s3cret-value');
  });

  test('reports the line of a duplicate key', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'server:\n  port: 1\n  port: 2\n');
    expect(fs.loadError().details?.[0]?.problem).toMatch(/^YAML error at line 3, column 3: /);
  });

  test('refuses a file whose top level is not a mapping', ({ fs }) => {
    fs.write('work/stacyvm.yaml', '- server\n- port\n');
    expect(fs.loadError().details?.[0]?.problem).toContain('must be a mapping');
  });
});

describe('loadConfig values', () => {
  test('env overrides beat the file and are parsed by the key type', ({ fs }) => {
    fs.write(
      'work/stacyvm.yaml',
      [
        'server:',
        '  port: 8000',
        '  allow_insecure_bind: false',
        '  cors_allowed_origins: ["https://file.example"]',
        'providers:',
        '  docker:',
        '    network_mode: bridge',
      ].join('\n'),
    );
    const loaded = fs.load({
      env: {
        STACYVM_SERVER_PORT: '9000',
        STACYVM_SERVER_ALLOW_INSECURE_BIND: '1',
        STACYVM_SERVER_CORS_ALLOWED_ORIGINS: 'https://a.example, https://b.example:8443',
        STACYVM_PROVIDERS_DOCKER_NETWORK_MODE: 'none',
        STACYVM_PROVIDERS_DOCKER_CPUS: '0.5',
        STACYVM_PROVIDERS_DOCKER_DROPPED_CAPS: '["ALL","NET_RAW"]',
        STACYVM_AUTH_ADMIN_FALLBACK_ENABLED: 'FALSE',
        STACYVM_DEFAULTS_TTL: '1h30m',
      },
    });
    const c = loaded.config;
    expect(c.server.port).toBe(9000);
    expect(c.server.allow_insecure_bind).toBe(true);
    expect(c.server.cors_allowed_origins).toEqual(['https://a.example', 'https://b.example:8443']);
    expect(c.providers.docker.network_mode).toBe('none');
    expect(c.providers.docker.cpus).toBe(0.5);
    expect(c.providers.docker.dropped_caps).toEqual(['ALL', 'NET_RAW']);
    expect(c.auth.admin_fallback_enabled).toBe(false);
    expect(durationMs(c.defaults.ttl)).toBe(90 * 60_000);
  });

  test('an empty env var counts as unset', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'server:\n  port: 8000\n');
    expect(fs.load({ env: { STACYVM_SERVER_PORT: '' } }).config.server.port).toBe(8000);
  });

  test('a bad env value is an error naming the env var and the key', ({ fs }) => {
    const err = fs.loadError({ env: { STACYVM_SERVER_PORT: 'abc' } });
    expect(err.details).toEqual([
      {
        field: 'server.port',
        problem: 'must be an integer from 1 to 65535 (got "abc" from STACYVM_SERVER_PORT)',
      },
    ]);
    expect(err.message).toContain('server.port: must be an integer from 1 to 65535');
  });

  test('refuses booleans other than true/false/1/0 from env', ({ fs }) => {
    const err = fs.loadError({ env: { STACYVM_PROVIDERS_MOCK_ENABLED: 'yes' } });
    expect(err.details?.[0]).toEqual({
      field: 'providers.mock.enabled',
      problem: 'must be true or false (or 1/0) (got "yes" from STACYVM_PROVIDERS_MOCK_ENABLED)',
    });
  });

  test('a bad file value that env overrides is not an error', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'server:\n  port: 99999\n');
    expect(fs.load({ env: { STACYVM_SERVER_PORT: '8080' } }).config.server.port).toBe(8080);
  });

  test('accepts YAML scalars typed loosely, as the Go loader did', ({ fs }) => {
    fs.write(
      'work/stacyvm.yaml',
      [
        'server:',
        '  port: "8080"',
        '  cors_allowed_origins: "https://a.example,https://b.example"',
        'providers:',
        '  docker:',
        '    user: 1000',
        'defaults:',
        '  default_exec_timeout: 0',
        '  max_ttl: ""',
        'database:',
        '  driver: ""',
        'auth:',
        '  api_key:',
      ].join('\n'),
    );
    const c = fs.load().config;
    expect(c.server.port).toBe(8080);
    expect(c.server.cors_allowed_origins).toEqual(['https://a.example', 'https://b.example']);
    expect(c.providers.docker.user).toBe('1000');
    expect(c.defaults.default_exec_timeout).toBe('0');
    expect(c.defaults.max_ttl).toBe('24h');
    expect(c.database.driver).toBe('sqlite');
    expect(c.auth.api_key).toBe('');
  });

  test('warns about keys it does not implement instead of failing', ({ fs }) => {
    fs.write(
      'work/stacyvm.yaml',
      [
        'server:',
        '  port: 7423',
        '  grpc_port: 9000',
        'providers:',
        '  default: docker',
        '  firecracker:',
        '    enabled: true',
        '    kernel_path: /var/lib/stacyvm/vmlinux.bin',
        'rate_limit:',
        '  enabled: true',
        'auth:',
        '  worker_tokens:',
        '    w1: secret',
      ].join('\n'),
    );
    const loaded = fs.load();
    expect(loaded.warnings).toEqual([
      'unknown key "server.grpc_port" ignored',
      'unknown key "providers.firecracker" ignored',
      'unknown key "rate_limit" ignored',
    ]);
    expect(loaded.config.providers.default).toBe('docker');
    // The Go map form of per-worker tokens is read as id=token entries.
    expect(loaded.config.auth.worker_tokens).toEqual(['w1=secret']);
  });

  test('reports every problem at once, each naming its key', ({ fs }) => {
    fs.write(
      'work/stacyvm.yaml',
      [
        'server:',
        '  port: 70000',
        '  cors_allowed_origins: ["*", "https://ok.example:8443", "http://bad.example/path", "ftp://x"]',
        '  host: ""',
        'database:',
        '  driver: postgres',
        'defaults:',
        '  ttl: 5x',
        '  max_ttl: -1h',
        '  max_exec_timeout: 0s',
        '  memory_mb: 0',
        '  max_sandboxes: -1',
        'logging:',
        '  level: verbose',
        'worker:',
        '  heartbeat_interval: 0s',
        '  control_plane_url: localhost:7423',
        'providers:',
        '  mock: yes-please',
      ].join('\n'),
    );
    const err = fs.loadError();
    expect(err.details).toEqual([
      { field: 'providers.mock', problem: 'must be a mapping of keys' },
      { field: 'server.host', problem: 'must not be empty (got "")' },
      { field: 'server.port', problem: 'must be an integer from 1 to 65535 (got 70000)' },
      {
        field: 'defaults.ttl',
        problem: 'invalid duration "5x": unknown unit "x" (use Go syntax such as 30s, 5m, 1h30m)',
      },
      { field: 'defaults.memory_mb', problem: 'must be a positive integer (got 0)' },
      { field: 'defaults.max_ttl', problem: 'must not be negative (got "-1h")' },
      { field: 'defaults.max_exec_timeout', problem: 'must be greater than 0s (got "0s")' },
      { field: 'defaults.max_sandboxes', problem: 'must be a non-negative integer (got -1)' },
      {
        field: 'logging.level',
        problem: 'must be one of trace, debug, info, warn, error, fatal, silent (got "verbose")',
      },
      { field: 'worker.heartbeat_interval', problem: 'must be greater than 0s (got "0s")' },
      {
        field: 'server.cors_allowed_origins',
        problem:
          'entry 3: "http://bad.example/path" must be "*" or http(s)://host[:port] without a path, query or fragment',
      },
      {
        field: 'server.cors_allowed_origins',
        problem:
          'entry 4: "ftp://x" must be "*" or http(s)://host[:port] without a path, query or fragment',
      },
      {
        field: 'database.dsn',
        problem:
          'required when database.driver is postgres (set database.dsn or database.dsn_file)',
      },
      {
        field: 'worker.control_plane_url',
        problem: 'must be an http(s) URL (got "localhost:7423")',
      },
    ]);
    for (const d of err.details ?? []) expect(err.message).toContain(`${d.field}: ${d.problem}`);
  });

  test('worker.rpc_tls client certificate and key come together', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'worker:\n  rpc_tls:\n    client_cert_file: /etc/cp.pem\n');
    expect(fs.loadError().details).toEqual([
      {
        field: 'worker.rpc_tls.client_key_file',
        problem: 'worker.rpc_tls.client_cert_file and client_key_file must be set together',
      },
    ]);
  });

  test('checks exec timeout and TTL ordering', ({ fs }) => {
    fs.write(
      'work/stacyvm.yaml',
      'defaults:\n  default_exec_timeout: 20m\n  max_exec_timeout: 10m\n  ttl: 48h\n  max_ttl: 24h\n',
    );
    expect(fs.loadError().details).toEqual([
      {
        field: 'defaults.default_exec_timeout',
        problem: 'must not exceed defaults.max_exec_timeout (10m0s)',
      },
      { field: 'defaults.ttl', problem: 'must not exceed defaults.max_ttl (24h0m0s)' },
    ]);
  });

  test('a max_ttl of 0s means no upper bound on ttl', ({ fs }) => {
    fs.write('work/stacyvm.yaml', 'defaults:\n  ttl: 100h\n  max_ttl: 0s\n');
    expect(fs.load().config.defaults.ttl).toBe('100h');
  });

  test('refuses a default provider that is disabled, or no provider at all', ({ fs }) => {
    expect(
      fs.loadError({
        env: { STACYVM_PROVIDERS_DEFAULT: 'docker', STACYVM_PROVIDERS_DOCKER_ENABLED: 'false' },
      }).details,
    ).toEqual([
      {
        field: 'providers.default',
        problem: 'names docker, but providers.docker.enabled is false',
      },
    ]);
    expect(
      fs.loadError({
        env: { STACYVM_PROVIDERS_MOCK_ENABLED: '0', STACYVM_PROVIDERS_DOCKER_ENABLED: '0' },
      }).details?.[0]?.problem,
    ).toContain('no provider is enabled');
  });
});

describe('loadConfig secret files', () => {
  test('reads *_file keys, trimmed, into their secret key', ({ fs }) => {
    const apiKeyFile = fs.write('secrets/api', '  api-key-from-file\n');
    fs.write('work/secrets/dsn', 'postgres://u:p@db/stacyvm\n');
    const workerFile = fs.write('secrets/worker', 'worker-token-from-file');
    fs.write(
      'work/stacyvm.yaml',
      `auth:\n  api_key_file: ${apiKeyFile}\ndatabase:\n  driver: postgres\n  dsn_file: secrets/dsn\n`,
    );
    const c = fs.load({ env: { STACYVM_AUTH_WORKER_TOKEN_FILE: workerFile } }).config;
    expect(c.auth.api_key).toBe('api-key-from-file');
    expect(c.auth.worker_token).toBe('worker-token-from-file');
    expect(c.database.dsn).toBe('postgres://u:p@db/stacyvm');
  });

  test('refuses a secret set both inline and by file, without echoing it', ({ fs }) => {
    const file = fs.write('secrets/admin', 'from-file');
    const err = fs.loadError({
      env: {
        STACYVM_AUTH_ADMIN_API_KEY: 'inline-admin-secret',
        STACYVM_AUTH_ADMIN_API_KEY_FILE: file,
      },
    });
    expect(err.details).toEqual([
      {
        field: 'auth.admin_api_key_file',
        problem: 'set either auth.admin_api_key or auth.admin_api_key_file, not both',
      },
    ]);
    expect(err.message).not.toContain('inline-admin-secret');
  });

  test('names the key of an unreadable or empty secret file', ({ fs }) => {
    const empty = fs.write('secrets/empty', '  \n');
    const err = fs.loadError({
      env: {
        STACYVM_AUTH_API_KEY_FILE: join(fs.root, 'secrets/missing'),
        STACYVM_AUTH_WORKER_TOKEN_FILE: empty,
      },
    });
    expect(err.details).toEqual([
      {
        field: 'auth.api_key_file',
        problem: `cannot read "${join(fs.root, 'secrets/missing')}": ENOENT`,
      },
      { field: 'auth.worker_token_file', problem: `file "${empty}" is empty` },
    ]);
  });

  test('a failed dsn_file does not also report a missing dsn', ({ fs }) => {
    const err = fs.loadError({
      env: { STACYVM_DATABASE_DRIVER: 'postgres', STACYVM_DATABASE_DSN_FILE: '/nonexistent/dsn' },
    });
    expect(err.details?.map((d) => d.field)).toEqual(['database.dsn_file']);
  });

  test.skipIf(process.getuid?.() === 0)('reports permission errors by code only', ({ fs }) => {
    const file = fs.write('secrets/locked', 'top-secret-value');
    chmodSync(file, 0o000);
    const err = fs.loadError({ env: { STACYVM_AUTH_API_KEY_FILE: file } });
    expect(err.details?.[0]?.problem).toBe(`cannot read "${file}": EACCES`);
  });
});

describe('redactConfig', () => {
  test('replaces every non-empty secret and leaves the original untouched', () => {
    const config = defaultConfig();
    config.auth.api_key = 'k'.repeat(40);
    config.auth.admin_api_key = 'a'.repeat(40);
    config.auth.worker_token = 'w'.repeat(40);
    config.database.dsn = 'postgres://user:pw@db/stacyvm';
    config.auth.api_key_file = '/run/secrets/api';
    const redacted = redactConfig(config);
    expect(redacted.auth.api_key).toBe('<redacted>');
    expect(redacted.auth.admin_api_key).toBe('<redacted>');
    expect(redacted.auth.worker_token).toBe('<redacted>');
    expect(redacted.database.dsn).toBe('<redacted>');
    expect(redacted.auth.api_key_file).toBe('/run/secrets/api');
    expect(JSON.stringify(redacted)).not.toMatch(/kkkk|aaaa|wwww|pw@/);
    expect(config.auth.api_key).toBe('k'.repeat(40));
    redacted.server.cors_allowed_origins.push('x');
    expect(config.server.cors_allowed_origins).toEqual(['*']);
  });

  test('keeps empty secrets empty so output shows they are unset', () => {
    const redacted = redactConfig(defaultConfig());
    expect(redacted.auth.api_key).toBe('');
    expect(redacted).toEqual(defaultConfig());
  });
});

describe('bind safety', () => {
  test.each([
    ['127.0.0.1', true],
    ['127.8.9.10', true],
    ['localhost', true],
    ['LOCALHOST', true],
    ['::1', true],
    ['[::1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['::ffff:127.0.0.1', true],
    ['0.0.0.0', false],
    ['::', false],
    ['192.168.1.10', false],
    ['128.0.0.1', false],
    ['127.example.com', false],
    ['example.com', false],
  ])('isLoopbackHost(%s) is %s', (host, expected) => {
    expect(isLoopbackHost(host)).toBe(expected);
  });

  test('refuses a non-loopback bind without an API key unless explicitly allowed', () => {
    const config = defaultConfig();
    expect(checkBindSafety(config)).toBeUndefined();
    config.server.host = '0.0.0.0';
    expect(checkBindSafety(config)).toMatch(/^refusing to listen on 0\.0\.0\.0: /);
    expect(checkBindSafety(config)).toContain('server.allow_insecure_bind');
    config.server.allow_insecure_bind = true;
    expect(checkBindSafety(config)).toBeUndefined();
    config.server.allow_insecure_bind = false;
    config.auth.api_key = 'x'.repeat(32);
    expect(checkBindSafety(config)).toBeUndefined();
  });
});

test('durationMs reads Go durations', () => {
  expect(durationMs('1m30s')).toBe(90_000);
  expect(durationMs('250ms')).toBe(250);
  expect(() => durationMs('5x')).toThrow(/invalid duration/);
});

test('databaseDialect folds the Go-era driver aliases', () => {
  const config = defaultConfig();
  expect(databaseDialect(config)).toBe('sqlite');
  config.database.driver = 'sqlite3';
  expect(databaseDialect(config)).toBe('sqlite');
  config.database.driver = 'postgresql';
  expect(databaseDialect(config)).toBe('postgres');
  config.database.driver = 'postgres';
  expect(databaseDialect(config)).toBe('postgres');
});
