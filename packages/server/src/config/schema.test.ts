import { Value } from '@sinclair/typebox/value';
import { describe, expect, test } from 'vitest';
import {
  CONFIG_KEYS,
  CONFIG_SECTIONS,
  SECRET_FILE_KEYS,
  SECRET_PATHS,
  StacyConfigSchema,
  configKey,
  defaultConfig,
  envVarFor,
  type StacyConfig,
} from './schema.js';

describe('config schema', () => {
  test('defaults are exactly the documented ones', () => {
    const expected: StacyConfig = {
      server: {
        host: '127.0.0.1',
        port: 7423,
        preview_domain: 'localhost',
        cors_allowed_origins: ['*'],
        allow_insecure_bind: false,
        max_body_bytes: 16777216,
        shutdown_timeout: '30s',
        sse_keepalive_interval: '15s',
        reaper_interval: '30s',
        worker_stale_after: '2m',
        local_worker_id: 'local',
        local_worker_max_sandboxes: 0,
      },
      database: {
        driver: 'sqlite',
        path: 'stacyvm.db',
        dsn: '',
        dsn_file: '',
        max_open_conns: 10,
        statement_timeout: '30s',
        prepared_statements: true,
      },
      providers: {
        default: 'auto',
        mock: { enabled: true, base_dir: '', spawn_helper: true },
        docker: {
          enabled: true,
          socket: '',
          runtime: 'runc',
          default_image: 'alpine:latest',
          network_mode: 'bridge',
          seccomp_profile: 'default',
          read_only_rootfs: false,
          memory: '512m',
          cpus: 1,
          pids_limit: 256,
          user: '',
          dropped_caps: ['ALL'],
          added_caps: [],
          orphans: 'adopt',
        },
      },
      defaults: {
        ttl: '30m',
        image: 'alpine:latest',
        memory_mb: 1024,
        vcpus: 1,
        max_ttl: '24h',
        default_exec_timeout: '0s',
        max_exec_timeout: '10m',
        max_sandboxes: 0,
        max_sandboxes_per_owner: 0,
      },
      auth: {
        api_key: '',
        api_key_file: '',
        admin_api_key: '',
        admin_api_key_file: '',
        admin_fallback_enabled: true,
        worker_token: '',
        worker_token_file: '',
        worker_tokens: [],
        worker_signing_key: '',
        worker_signing_key_file: '',
        worker_signing_keys: [],
        worker_revoked_token_ids: [],
      },
      logging: { level: 'info', format: 'json' },
      worker: {
        id: '',
        control_plane_url: 'http://localhost:7423',
        listen_addr: '',
        advertise_addr: '',
        preview_domain: '',
        heartbeat_interval: '30s',
        shutdown_timeout: '30s',
        rpc_tls: {
          enabled: false,
          server_cert_file: '',
          server_key_file: '',
          client_ca_file: '',
          ca_file: '',
          client_cert_file: '',
          client_key_file: '',
          server_name: '',
          insecure_skip_verify: false,
        },
      },
      preview: {
        enabled: true,
        listen_addr: '127.0.0.1:7480',
        public_scheme: 'http',
        public_port: 0,
        private: false,
        token_ttl: '1h',
        token_key: '',
        token_key_file: '',
        extend_ttl_on_traffic: '0s',
        resolve_cache_ttl: '1s',
        host_rewrite: false,
        upstream: 'auto',
        upstream_timeout: '60s',
        max_connections: 4096,
      },
      traefik: {
        entry_points: ['web'],
        tls: false,
        cert_resolver: '',
        wildcard_cert: true,
        middlewares: [],
        redirect_entry_points: [],
        name_prefix: 'stacyvm-',
        include_local_docker: false,
        upstream_url: '',
        http_provider_token: '',
        http_provider_token_file: '',
        redis: {
          enabled: false,
          address: '127.0.0.1:6379',
          username: '',
          password: '',
          password_file: '',
          db: 0,
          root_key: 'traefik',
          resync_interval: '60s',
          timeout: '5s',
        },
      },
    };
    expect(defaultConfig()).toEqual(expected);
  });

  test('the defaults satisfy the TypeBox schema itself', () => {
    expect(Value.Check(StacyConfigSchema, defaultConfig())).toBe(true);
  });

  test('each call returns a fresh copy, so callers cannot corrupt the defaults', () => {
    const first = defaultConfig();
    first.server.cors_allowed_origins.push('https://evil.example');
    first.server.port = 1;
    expect(defaultConfig().server.cors_allowed_origins).toEqual(['*']);
    expect(defaultConfig().server.port).toBe(7423);
  });

  test('every key has a description, and the sections have one too', () => {
    expect(CONFIG_KEYS.length).toBeGreaterThan(50);
    for (const key of CONFIG_KEYS) expect(key.description.length, key.path).toBeGreaterThan(10);
    expect(CONFIG_SECTIONS.map((s) => s.name)).toEqual([
      'server',
      'database',
      'providers',
      'defaults',
      'auth',
      'logging',
      'worker',
      'preview',
      'traefik',
    ]);
  });

  test('maps dotted keys to STACYVM_ env vars without collisions', () => {
    expect(envVarFor('server.port')).toBe('STACYVM_SERVER_PORT');
    expect(envVarFor('providers.docker.network_mode')).toBe(
      'STACYVM_PROVIDERS_DOCKER_NETWORK_MODE',
    );
    const vars = CONFIG_KEYS.map((k) => k.envVar);
    expect(new Set(vars).size).toBe(vars.length);
  });

  test('marks the secret keys, each single-value one backed by a *_file key that exists', () => {
    expect([...SECRET_PATHS].sort()).toEqual([
      'auth.admin_api_key',
      'auth.api_key',
      'auth.worker_signing_key',
      'auth.worker_signing_keys',
      'auth.worker_token',
      'auth.worker_tokens',
      'database.dsn',
      'preview.token_key',
      'traefik.http_provider_token',
      'traefik.redis.password',
    ]);
    for (const path of SECRET_PATHS) {
      expect(configKey(path)?.secret).toBe(true);
      // Secret lists (per-worker tokens, rotation keys) have no file form.
      if (configKey(path)?.kind === 'string-list') continue;
      const file = SECRET_FILE_KEYS[path];
      expect(file).toBe(`${path}_file`);
      expect(configKey(file ?? '')?.kind).toBe('string');
    }
    expect(CONFIG_KEYS.filter((k) => k.secret).length).toBe(SECRET_PATHS.size);
  });

  test('classifies leaves by kind with their bounds', () => {
    expect(configKey('server.port')).toMatchObject({ kind: 'integer', minimum: 1, maximum: 65535 });
    expect(configKey('defaults.max_exec_timeout')).toMatchObject({
      kind: 'duration',
      durationBound: 'positive',
    });
    expect(configKey('defaults.max_ttl')).toMatchObject({
      kind: 'duration',
      durationBound: 'non-negative',
    });
    expect(configKey('database.driver')).toMatchObject({
      kind: 'enum',
      values: ['sqlite', 'sqlite3', 'postgres', 'postgresql'],
    });
    expect(configKey('providers.docker.cpus')?.kind).toBe('number');
    expect(configKey('server.cors_allowed_origins')?.kind).toBe('string-list');
    expect(configKey('auth.admin_fallback_enabled')?.kind).toBe('boolean');
    expect(configKey('server')).toBeUndefined();
  });
});
