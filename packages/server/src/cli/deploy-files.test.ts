/**
 * Structural checks of deploy/ (Compose files, the production StacyVM
 * config), the Dockerfile and docs/deploy-traefik.md. No image is pulled or
 * run: the Compose files are parsed with `yaml`, interpolated as Compose
 * does, and what they promise is checked against each other, against the
 * StacyVM config loader and against the flags the docs name.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { hasLintFailures, lintConfig } from '../config/lint-config.js';
import { checkBindSafety, loadConfig } from '../config/load-config.js';
import { CONFIG_ENV_VAR } from '../config/load-config.js';
import { CONFIG_KEYS } from '../config/schema.js';
import type { StacyConfig } from '../config/schema.js';
import { parseListenAddr } from '../worker/worker-agent.js';
import { checkTraefikConfig } from './traefik-wiring.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const DEPLOY = join(ROOT, 'deploy');
const SECRET = (n: string): string => `${n}-0123456789abcdef0123456789abcdef`;

type Env = Record<string, string | undefined>;

/** Compose variable interpolation: `$$`, `${V}`, `${V:-default}`, `${V-default}`, `${V:?err}`, `${V?err}`. */
function interpolate(text: string, env: Env): string {
  return text.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])((?:[^{}]|\{[^{}]*\})*))?\}/g,
    (match, name: string | undefined, colon: string | undefined, op, arg: string | undefined) => {
      if (match === '$$') return '$';
      const value = env[name ?? ''];
      const unset = value === undefined || (colon === ':' && value === '');
      if (op === '-') return unset ? interpolate(arg ?? '', env) : (value ?? '');
      if (op === '?') {
        if (unset) throw new Error(`required variable ${name}: ${arg ?? ''}`);
        return value ?? '';
      }
      return value ?? '';
    },
  );
}

function deepInterpolate(node: unknown, env: Env): unknown {
  if (typeof node === 'string') return interpolate(node, env);
  if (Array.isArray(node)) return node.map((n) => deepInterpolate(n, env));
  if (typeof node === 'object' && node !== null) {
    return Object.fromEntries(
      Object.entries(node).map(([k, v]) => [interpolate(k, env), deepInterpolate(v, env)]),
    );
  }
  return node;
}

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  user?: string;
  command?: string[];
  environment?: Record<string, string>;
  env_file?: { path: string; required: boolean }[];
  labels?: string[];
  ports?: string[];
  volumes?: string[];
  networks?: string[];
  depends_on?: Record<string, { condition: string }>;
}

interface ComposeFile {
  name: string;
  services: Record<string, Service>;
  networks: Record<string, { name?: string }>;
  volumes?: Record<string, unknown>;
}

function loadCompose(file: string, env: Env): ComposeFile {
  const raw: unknown = parse(readFileSync(join(DEPLOY, file), 'utf8'));
  return deepInterpolate(raw, env) as ComposeFile;
}

/** `--a.b=c` flags as a map (a flag without `=` maps to `true`). */
function flags(command: readonly string[] | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const arg of command ?? []) {
    expect(arg.startsWith('--'), arg).toBe(true);
    const eq = arg.indexOf('=');
    out.set(eq < 0 ? arg.slice(2) : arg.slice(2, eq), eq < 0 ? 'true' : arg.slice(eq + 1));
  }
  return out;
}

function labels(list: readonly string[] | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of list ?? []) {
    const eq = l.indexOf('=');
    out.set(l.slice(0, eq), l.slice(eq + 1));
  }
  return out;
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Loads StacyVM's config as the container would: its env, optionally a file. */
function containerConfig(env: Record<string, string>, configPath?: string): StacyConfig {
  const dir = mkdtempSync(join(tmpdir(), 'stacyvm-deploy-'));
  dirs.push(dir);
  // Env vars the Dockerfile sets, overridden by the Compose file.
  const image = {
    STACYVM_SERVER_HOST: '0.0.0.0',
    STACYVM_SERVER_PORT: '7423',
    STACYVM_DATABASE_PATH: '/var/lib/stacyvm/stacyvm.db',
    STACYVM_PREVIEW_LISTEN_ADDR: '0.0.0.0:7480',
  };
  const full = { ...image, ...env };
  delete (full as Record<string, string>)[CONFIG_ENV_VAR];
  const loaded = loadConfig({
    env: full,
    cwd: dir,
    homeDir: dir,
    ...(configPath === undefined ? {} : { configPath }),
  });
  expect(loaded.warnings).toEqual([]);
  return loaded.config;
}

/** Checks shared by both Compose files. */
function commonChecks(c: ComposeFile): {
  stacyvm: Service;
  traefik: Service;
  f: Map<string, string>;
} {
  expect(Object.keys(c.services).sort()).toEqual(['stacyvm', 'traefik']);
  const stacyvm = c.services['stacyvm']!;
  const traefik = c.services['traefik']!;
  // StacyVM is built from this repository's Dockerfile.
  expect(stacyvm.build).toEqual({ context: '..', dockerfile: 'Dockerfile' });
  expect(existsSync(resolve(DEPLOY, stacyvm.build!.context, stacyvm.build!.dockerfile))).toBe(true);
  expect(traefik.image).toMatch(/^traefik:v3(\.\d+)*$/);

  // One named network that sandboxes join by that name.
  expect(c.networks['stacyvm-network']?.name).toBe('stacyvm-network');
  expect(stacyvm.networks).toEqual(['stacyvm-network']);
  expect(traefik.networks).toEqual(['stacyvm-network']);

  const f = flags(traefik.command);
  expect(f.get('providers.docker')).toBe('true');
  expect(f.get('providers.docker.exposedbydefault')).toBe('false');
  expect(f.get('providers.docker.network')).toBe('stacyvm-network');
  // The dashboard and API stay off.
  expect([...f.keys()].filter((k) => k === 'api' || k.startsWith('api.'))).toEqual([]);

  // Traefik reads the Docker socket read-only; StacyVM needs it to run sandboxes.
  expect(traefik.volumes).toContain('/var/run/docker.sock:/var/run/docker.sock:ro');
  expect(stacyvm.volumes).toContain('/var/run/docker.sock:/var/run/docker.sock');
  expect(traefik.depends_on?.['stacyvm']?.condition).toBe('service_healthy');

  // The HTTP provider polls StacyVM with the token StacyVM is configured with.
  const endpoint = new URL(f.get('providers.http.endpoint') ?? '');
  expect(endpoint.hostname).toBe('stacyvm');
  expect(endpoint.pathname).toBe('/api/v1/traefik/config');
  expect(f.get('providers.http.headers.Authorization')).toBe(
    `Bearer ${stacyvm.environment?.['STACYVM_TRAEFIK_HTTP_PROVIDER_TOKEN']}`,
  );
  return { stacyvm, traefik, f };
}

/** What StacyVM's config must agree with in the Compose file. */
function configAgrees(config: StacyConfig, c: ComposeFile, f: Map<string, string>): void {
  expect(checkBindSafety(config)).toBeUndefined();
  expect(() => checkTraefikConfig(config)).not.toThrow();
  expect(config.providers.docker.network_mode).toBe('stacyvm-network');
  const endpoint = new URL(f.get('providers.http.endpoint') ?? '');
  expect(Number(endpoint.port)).toBe(config.server.port);
  // Traefik reaches the preview gateway at the service name and the gateway's port.
  const upstream = new URL(config.traefik.upstream_url);
  expect(Object.keys(c.services)).toContain(upstream.hostname);
  expect(config.preview.enabled).toBe(true);
  const gw = parseListenAddr(config.preview.listen_addr, 'preview.listen_addr');
  expect(gw.host).toBe('0.0.0.0');
  expect(Number(upstream.port)).toBe(gw.port);
  expect(config.preview.upstream).toBe('container_ip');
  // The generated routers use entry points Traefik defines.
  for (const ep of config.traefik.entry_points) {
    expect(f.has(`entrypoints.${ep}.address`), ep).toBe(true);
  }
}

describe('deploy/docker-compose.yml (local development)', () => {
  const env: Env = {
    STACYVM_API_KEY: SECRET('api'),
    STACYVM_TRAEFIK_TOKEN: SECRET('traefik'),
  };

  it('refuses to start without its secrets', () => {
    expect(() => loadCompose('docker-compose.yml', { STACYVM_TRAEFIK_TOKEN: 'x' })).toThrow(
      /STACYVM_API_KEY/,
    );
    expect(() => loadCompose('docker-compose.yml', { STACYVM_API_KEY: 'x' })).toThrow(
      /STACYVM_TRAEFIK_TOKEN/,
    );
  });

  it('runs Traefik v3 with the Docker provider on :80 and StacyVM on the shared network', () => {
    const c = loadCompose('docker-compose.yml', env);
    const { stacyvm, traefik, f } = commonChecks(c);
    expect(f.get('entrypoints.web.address')).toBe(':80');
    expect(traefik.ports).toEqual(['80:80']);
    expect(stacyvm.ports).toEqual(['127.0.0.1:7423:7423']);
    expect(
      loadCompose('docker-compose.yml', { ...env, STACYVM_TRAEFIK_HOST_PORT: '8080' }).services[
        'traefik'
      ]?.ports,
    ).toEqual(['8080:80']);
  });

  it('gives StacyVM only real config keys, and they load into a safe, consistent config', () => {
    const c = loadCompose('docker-compose.yml', env);
    const stacyEnv = c.services['stacyvm']?.environment ?? {};
    const known = new Set(CONFIG_KEYS.map((k) => k.envVar));
    for (const name of Object.keys(stacyEnv)) expect(known.has(name), name).toBe(true);
    const config = containerConfig(stacyEnv);
    expect(config.server.preview_domain).toBe('localhost');
    expect(config.providers.mock.enabled).toBe(false);
    expect(config.providers.default).toBe('docker');
    expect(config.auth.api_key).toBe(SECRET('api'));
    expect(config.traefik.http_provider_token).toBe(SECRET('traefik'));
    expect(config.preview.public_port).toBe(80);
    configAgrees(config, c, flags(c.services['traefik']?.command));
  });
});

describe('deploy/docker-compose.production.yml', () => {
  const env: Env = {
    PREVIEW_DOMAIN: 'preview.example.com',
    ACME_EMAIL: 'ops@example.com',
    STACYVM_API_KEY: SECRET('api'),
    STACYVM_ADMIN_API_KEY: SECRET('admin'),
    STACYVM_TRAEFIK_TOKEN: SECRET('traefik'),
    CF_DNS_API_TOKEN: 'cf-token',
  };

  it('refuses to start without the domain, the ACME e-mail or a secret', () => {
    for (const missing of [
      'PREVIEW_DOMAIN',
      'ACME_EMAIL',
      'STACYVM_API_KEY',
      'STACYVM_ADMIN_API_KEY',
      'STACYVM_TRAEFIK_TOKEN',
    ]) {
      expect(() =>
        loadCompose('docker-compose.production.yml', { ...env, [missing]: undefined }),
      ).toThrow(new RegExp(missing));
    }
  });

  it('terminates TLS on 443, redirects 80 to https, and has no dashboard', () => {
    const c = loadCompose('docker-compose.production.yml', env);
    const { traefik, f } = commonChecks(c);
    expect(traefik.ports?.sort()).toEqual(['443:443', '80:80']);
    expect(f.get('entrypoints.web.address')).toBe(':80');
    expect(f.get('entrypoints.web.http.redirections.entrypoint.to')).toBe('websecure');
    expect(f.get('entrypoints.web.http.redirections.entrypoint.scheme')).toBe('https');
    expect(f.get('entrypoints.web.http.redirections.entrypoint.permanent')).toBe('true');
    expect(f.get('entrypoints.websecure.address')).toBe(':443');
    expect(f.get('entrypoints.websecure.http.tls')).toBe('true');
    expect(f.get('entrypoints.websecure.http.tls.certresolver')).toBe('le');
  });

  it('orders one wildcard certificate with an ACME DNS-01 resolver whose provider comes from the env', () => {
    const c = loadCompose('docker-compose.production.yml', env);
    const { stacyvm, traefik, f } = commonChecks(c);
    // The wildcard, on the entry point (label routers) and on the API router.
    expect(f.get('entrypoints.websecure.http.tls.domains[0].main')).toBe('preview.example.com');
    expect(f.get('entrypoints.websecure.http.tls.domains[0].sans')).toBe('*.preview.example.com');
    const l = labels(stacyvm.labels);
    expect(l.get('traefik.enable')).toBe('true');
    expect(l.get('traefik.http.routers.stacyvm-api.tls.certresolver')).toBe('le');
    expect(l.get('traefik.http.routers.stacyvm-api.tls.domains[0].main')).toBe(
      'preview.example.com',
    );
    expect(l.get('traefik.http.routers.stacyvm-api.tls.domains[0].sans')).toBe(
      '*.preview.example.com',
    );
    expect(l.get('traefik.http.routers.stacyvm-api.entrypoints')).toBe('websecure');
    // The API host is one label under the preview domain, so the wildcard covers it.
    expect(l.get('traefik.http.routers.stacyvm-api.rule')).toBe('Host(`api.preview.example.com`)');
    expect(l.get('traefik.http.services.stacyvm-api.loadbalancer.server.port')).toBe('7423');

    // ACME: DNS-01 only (wildcards cannot use HTTP-01 or TLS-ALPN-01), stored on a volume.
    expect(f.get('certificatesresolvers.le.acme.email')).toBe('ops@example.com');
    expect(f.get('certificatesresolvers.le.acme.dnschallenge.provider')).toBe('cloudflare');
    expect(f.get('certificatesresolvers.le.acme.caserver')).toBe(
      'https://acme-v02.api.letsencrypt.org/directory',
    );
    expect([...f.keys()].filter((k) => /httpchallenge|tlschallenge/i.test(k))).toEqual([]);
    const storage = f.get('certificatesresolvers.le.acme.storage') ?? '';
    const acmeMount = traefik.volumes?.find((v) => storage.startsWith(`${v.split(':')[1]}/`));
    expect(acmeMount, 'a volume holds acme.json').toBeDefined();
    expect(Object.keys(c.volumes ?? {})).toContain(acmeMount?.split(':')[0]);
    // The provider and its token come from the environment.
    expect(traefik.environment?.['CF_DNS_API_TOKEN']).toBe('cf-token');
    expect(traefik.env_file).toEqual([{ path: './traefik-dns.env', required: false }]);
    const route53 = loadCompose('docker-compose.production.yml', {
      ...env,
      TRAEFIK_DNS_PROVIDER: 'route53',
      ACME_CA_SERVER: 'https://acme-staging-v02.api.letsencrypt.org/directory',
    });
    const f2 = flags(route53.services['traefik']?.command);
    expect(f2.get('certificatesresolvers.le.acme.dnschallenge.provider')).toBe('route53');
    expect(f2.get('certificatesresolvers.le.acme.caserver')).toMatch(/staging/);
  });

  it('mounts stacyvm.production.yaml, which passes config lint --production and matches Traefik', () => {
    const c = loadCompose('docker-compose.production.yml', env);
    const stacyvm = c.services['stacyvm']!;
    const mount = stacyvm.volumes?.find((v) => v.includes('stacyvm.production.yaml'));
    expect(mount).toBe('./stacyvm.production.yaml:/etc/stacyvm/stacyvm.yaml:ro');
    expect(stacyvm.environment?.[CONFIG_ENV_VAR]).toBe('/etc/stacyvm/stacyvm.yaml');
    const stacyEnv = { ...(stacyvm.environment ?? {}) };
    const known = new Set([...CONFIG_KEYS.map((k) => k.envVar), CONFIG_ENV_VAR]);
    for (const name of Object.keys(stacyEnv)) expect(known.has(name), name).toBe(true);
    const config = containerConfig(stacyEnv, join(DEPLOY, 'stacyvm.production.yaml'));
    const findings = lintConfig(config, { production: true });
    expect(
      findings.filter((x) => x.level === 'fail').map((x) => `${x.name}: ${x.message}`),
    ).toEqual([]);
    expect(hasLintFailures(findings)).toBe(false);
    expect(config.server.preview_domain).toBe('preview.example.com');
    expect(config.preview.public_scheme).toBe('https');
    expect(config.preview.public_port).toBe(443);
    expect(config.traefik.tls).toBe(true);
    expect(config.traefik.wildcard_cert).toBe(true);
    const f = flags(c.services['traefik']?.command);
    // The routers StacyVM generates use the resolver Traefik defines.
    expect(f.has(`certificatesresolvers.${config.traefik.cert_resolver}.acme.email`)).toBe(true);
    configAgrees(config, c, f);
  });
});

describe('Dockerfile', () => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');

  it('is a multi-stage node:20-slim build of packages/server that serves on 0.0.0.0', () => {
    expect(text).toMatch(/^ARG NODE_IMAGE=node:20-slim$/m);
    const stages = [...text.matchAll(/^FROM \S+ AS (\S+)$/gm)].map((m) => m[1]);
    expect(stages).toEqual(['deps', 'build', 'runtime']);
    expect(text).toMatch(/npm run build --workspace packages\/server/);
    expect(text).toMatch(/^CMD \["serve", "--host", "0\.0\.0\.0"\]$/m);
    expect(text).toMatch(/^EXPOSE 7423 7480$/m);
    expect(text).toMatch(/^USER node$/m);
    // No key is baked into the image (comments aside).
    const code = text.split('\n').filter((l) => !l.trimStart().startsWith('#'));
    expect(code.filter((l) => /STACYVM_AUTH|TOKEN|PASSWORD/.test(l))).toEqual([]);
    // Every file it copies from the repository exists.
    for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const src of (m[1] ?? '').split(/\s+/)) {
        expect(existsSync(join(ROOT, src)), src).toBe(true);
      }
    }
  });
});

describe('docs/deploy-traefik.md', () => {
  const doc = readFileSync(join(ROOT, 'docs/deploy-traefik.md'), 'utf8');
  const local = flags(
    loadCompose('docker-compose.yml', { STACYVM_API_KEY: 'a', STACYVM_TRAEFIK_TOKEN: 'b' })
      .services['traefik']?.command,
  );
  const prod = flags(
    loadCompose('docker-compose.production.yml', {
      PREVIEW_DOMAIN: 'p.example.com',
      ACME_EMAIL: 'a@example.com',
      STACYVM_API_KEY: 'a',
      STACYVM_ADMIN_API_KEY: 'b',
      STACYVM_TRAEFIK_TOKEN: 'c',
    }).services['traefik']?.command,
  );

  it('names only Traefik flags the Compose files set (Redis provider flags aside)', () => {
    // Traefik's static-configuration roots; `stacyvm serve --host` and the like are not Traefik's.
    const traefikFlag =
      /--((?:providers|entrypoints|entryPoints|certificatesresolvers|api|log|accesslog|ping|metrics)(?:\.[a-zA-Z0-9[\]]+)*)/g;
    const claimed = new Set([...doc.matchAll(traefikFlag)].map((m) => m[1] ?? ''));
    expect(claimed.size).toBeGreaterThan(20);
    for (const flag of claimed) {
      if (flag.startsWith('providers.redis.') || flag === 'api') continue;
      expect(local.has(flag) || prod.has(flag), `--${flag}`).toBe(true);
    }
  });

  it('covers wildcard DNS, DNS-01 provider setup and local development', () => {
    expect(doc).toMatch(/\| `A` \| `\*\.preview`/);
    expect(doc).toMatch(/dig \+short A \S+\.preview\.example\.com/);
    expect(doc).toMatch(/TRAEFIK_DNS_PROVIDER/);
    expect(doc).toMatch(/CF_DNS_API_TOKEN/);
    expect(doc).toMatch(/## Local development/);
    expect(doc).toMatch(/providers\.http\.headers\.Authorization=Bearer/);
  });
});
