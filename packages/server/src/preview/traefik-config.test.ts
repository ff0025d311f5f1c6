import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import { TRAEFIK_KV_PATHS, TraefikDynamicConfigSchema } from '../../test/support/traefik-schema.js';
import type {
  TraefikBuildOptions,
  TraefikDynamicConfig,
  TraefikRouteSource,
} from './traefik-config.js';
import {
  belongsToStem,
  buildTraefikConfig,
  flattenTraefikKv,
  kvKeyOwner,
  rootKeyProblem,
  sanitizeTraefikName,
  sandboxNameStem,
  traefikOptionProblems,
  traefikRouteName,
  upstreamUrlProblem,
} from './traefik-config.js';

const BASE: TraefikBuildOptions = {
  namePrefix: 'stacyvm-',
  entryPoints: ['web'],
  tls: false,
  certResolver: '',
  wildcardCert: true,
  middlewares: [],
  redirectEntryPoints: [],
};

const GW = 'http://127.0.0.1:7480';

function src(
  id: string,
  ports: number[],
  domain = 'localhost',
  upstreamUrl: string | null = GW,
): TraefikRouteSource {
  return { sandboxId: id, ports, domain, upstreamUrl: upstreamUrl ?? undefined };
}

function schemaErrors(config: unknown): string[] {
  return [...Value.Errors(TraefikDynamicConfigSchema, config)].map(
    (e) => `${e.path}: ${e.message}`,
  );
}

/** Cross-references Traefik resolves at load: router → service, router → own middlewares. */
function danglingRefs(c: TraefikDynamicConfig): string[] {
  const out: string[] = [];
  for (const [name, r] of Object.entries(c.http.routers ?? {})) {
    if (c.http.services?.[r.service] === undefined) out.push(`${name} → service ${r.service}`);
    for (const m of r.middlewares ?? []) {
      if (!m.includes('@') && c.http.middlewares[m] === undefined) out.push(`${name} → ${m}`);
    }
  }
  return out;
}

describe('buildTraefikConfig', () => {
  it('makes one router and service per (sandbox, declared port), Host rule, gateway upstream, host kept', () => {
    const c = buildTraefikConfig(
      [src('sb-0000000b', [5173, 3000]), src('sb-0000000a', [3000], 'preview.example.com')],
      BASE,
    );
    expect(Object.keys(c.http.routers ?? {})).toEqual([
      'stacyvm-sb-0000000a-3000',
      'stacyvm-sb-0000000b-3000',
      'stacyvm-sb-0000000b-5173',
    ]);
    expect(c.http.routers?.['stacyvm-sb-0000000b-5173']).toEqual({
      rule: 'Host(`5173-sb-0000000b.localhost`)',
      service: 'stacyvm-sb-0000000b-5173',
      entryPoints: ['web'],
    });
    expect(c.http.routers?.['stacyvm-sb-0000000a-3000']?.rule).toBe(
      'Host(`3000-sb-0000000a.preview.example.com`)',
    );
    expect(c.http.services?.['stacyvm-sb-0000000b-5173']).toEqual({
      loadBalancer: { servers: [{ url: GW }], passHostHeader: true },
    });
    expect(schemaErrors(c)).toEqual([]);
    expect(danglingRefs(c)).toEqual([]);
  });

  it('is deterministic: the same sandboxes in another order give byte-equal JSON', () => {
    const a = [src('sb-00000002', [3000, 8080]), src('sb-00000001', [3000])];
    const b = [src('sb-00000001', [3000]), src('sb-00000002', [8080, 3000, 3000])];
    expect(JSON.stringify(buildTraefikConfig(a, BASE))).toBe(
      JSON.stringify(buildTraefikConfig(b, BASE)),
    );
  });

  it('never produces an empty configuration (Traefik would keep the last deleted route)', () => {
    const c = buildTraefikConfig([], BASE);
    expect(c.http.routers).toBeUndefined();
    expect(c.http.services).toBeUndefined();
    expect(Object.keys(c.http.middlewares)).toEqual(['stacyvm-redirect-https']);
    expect(schemaErrors(c)).toEqual([]);
  });

  it('TLS: a resolver and one wildcard certificate per domain, or a bare tls section', () => {
    const withResolver = buildTraefikConfig([src('sb-0000000a', [3000], 'Preview.Example.com')], {
      ...BASE,
      entryPoints: ['websecure'],
      tls: true,
      certResolver: 'le',
    });
    expect(withResolver.http.routers?.['stacyvm-sb-0000000a-3000']).toEqual({
      rule: 'Host(`3000-sb-0000000a.preview.example.com`)',
      service: 'stacyvm-sb-0000000a-3000',
      entryPoints: ['websecure'],
      tls: {
        certResolver: 'le',
        domains: [{ main: 'preview.example.com', sans: ['*.preview.example.com'] }],
      },
    });
    const perHost = buildTraefikConfig([src('sb-0000000a', [3000])], {
      ...BASE,
      tls: true,
      certResolver: 'le',
      wildcardCert: false,
    });
    expect(perHost.http.routers?.['stacyvm-sb-0000000a-3000']?.tls).toEqual({ certResolver: 'le' });
    const bare = buildTraefikConfig([src('sb-0000000a', [3000])], { ...BASE, tls: true });
    expect(bare.http.routers?.['stacyvm-sb-0000000a-3000']?.tls).toEqual({});
    for (const c of [withResolver, perHost, bare]) expect(schemaErrors(c)).toEqual([]);
  });

  it('middlewares and https-redirect routers reference defined or provider-qualified middlewares', () => {
    const c = buildTraefikConfig([src('sb-0000000a', [3000])], {
      ...BASE,
      entryPoints: ['websecure'],
      tls: true,
      middlewares: ['ratelimit@file', 'compress'],
      redirectEntryPoints: ['web'],
    });
    expect(c.http.routers?.['stacyvm-sb-0000000a-3000']?.middlewares).toEqual([
      'ratelimit@file',
      'compress',
    ]);
    expect(c.http.routers?.['stacyvm-sb-0000000a-3000-redirect']).toEqual({
      rule: 'Host(`3000-sb-0000000a.localhost`)',
      service: 'stacyvm-sb-0000000a-3000',
      entryPoints: ['web'],
      middlewares: ['stacyvm-redirect-https'],
    });
    expect(c.http.middlewares['stacyvm-redirect-https']).toEqual({
      redirectScheme: { scheme: 'https', permanent: true },
    });
    expect(schemaErrors(c)).toEqual([]);
    // `compress` is not defined by us: the check would flag it, which is the point of the check.
    expect(danglingRefs(c)).toEqual(['stacyvm-sb-0000000a-3000 → compress']);
  });

  it('an empty entry point list leaves entryPoints out (all entry points)', () => {
    const c = buildTraefikConfig([src('sb-0000000a', [3000])], { ...BASE, entryPoints: [] });
    expect(c.http.routers?.['stacyvm-sb-0000000a-3000']).not.toHaveProperty('entryPoints');
    expect(schemaErrors(c)).toEqual([]);
  });

  it('skips what cannot be routed: no upstream, ids or domains that are not DNS names, bad ports', () => {
    const c = buildTraefikConfig(
      [
        src('sb-0000000a', [3000], 'localhost', null),
        src('sb-0000000e', [3000], 'localhost', ''),
        src('Bad_Id', [3000]),
        src('sb-0000000c', [3000], 'bad domain`) || Host(`evil.com'),
        src('sb-0000000d', [0, 70000, 3000.5, 8080]),
        src('x'.repeat(60), [3000]),
      ],
      BASE,
    );
    expect(Object.keys(c.http.routers ?? {})).toEqual(['stacyvm-sb-0000000d-8080']);
    expect(JSON.stringify(c)).not.toContain('evil');
  });

  it('the schema catches what Traefik would reject or ignore (the tests can fail)', () => {
    const good = buildTraefikConfig([src('sb-0000000a', [3000])], BASE);
    const misspelt = structuredClone(good) as unknown as {
      http: { routers: Record<string, Record<string, unknown>>; services: Record<string, unknown> };
    };
    const r = misspelt.http.routers['stacyvm-sb-0000000a-3000']!;
    r['entrypoints'] = r['entryPoints'];
    delete r['entryPoints'];
    expect(schemaErrors(misspelt).length).toBeGreaterThan(0);
    expect(schemaErrors({ http: { routers: {}, services: {} } }).length).toBeGreaterThan(0);
    expect(
      schemaErrors({
        http: { services: { s: { loadBalancer: { servers: [], passHostHeader: true } } } },
      }).length,
    ).toBeGreaterThan(0);
    expect(schemaErrors({ http: { routers: { 'a@b': { rule: 'x', service: 's' } } } }).length).toBe(
      1,
    );
  });
});

describe('names', () => {
  it('keeps valid lower-case ids and hashes anything it had to change', () => {
    expect(sanitizeTraefikName('sb-0123abcd')).toBe('sb-0123abcd');
    const a = sanitizeTraefikName('My.Box/1@x');
    expect(a).toMatch(/^my-box-1-x-[0-9a-f]{8}$/);
    // Two ids that clean up the same still get different names.
    expect(sanitizeTraefikName('a.b')).not.toBe(sanitizeTraefikName('a/b'));
    expect(sanitizeTraefikName('SB-1')).not.toBe('sb-1');
    expect(traefikRouteName('p-', 'sb-0123abcd', 3000)).toBe('p-sb-0123abcd-3000');
  });

  it('tells a sandbox’s routers from those of a sandbox whose id extends it', () => {
    const stem = sandboxNameStem('stacyvm-', 'sb-1');
    expect(belongsToStem('stacyvm-sb-1-3000', stem)).toBe(true);
    expect(belongsToStem('stacyvm-sb-1-3000-redirect', stem)).toBe(true);
    expect(belongsToStem('stacyvm-sb-1-2-3000', stem)).toBe(false);
    expect(belongsToStem('stacyvm-sb-10-3000', stem)).toBe(false);
    expect(belongsToStem('stacyvm-redirect-https', stem)).toBe(false);
  });

  it('validates options, root keys and upstream URLs', () => {
    expect(traefikOptionProblems(BASE)).toEqual([]);
    expect(
      traefikOptionProblems({
        ...BASE,
        namePrefix: 'Bad.Prefix',
        entryPoints: ['web secure'],
        certResolver: 'le/x',
        middlewares: ['a@b@c'],
      }),
    ).toHaveLength(4);
    expect(rootKeyProblem('traefik')).toBeUndefined();
    expect(rootKeyProblem('a/b')).toBeUndefined();
    expect(rootKeyProblem('a//b')).toBeDefined();
    expect(rootKeyProblem('a*')).toBeDefined();
    expect(upstreamUrlProblem('http://stacyvm:7480')).toBeUndefined();
    expect(upstreamUrlProblem('http://stacyvm:7480/')).toBeUndefined();
    expect(upstreamUrlProblem('ftp://x')).toBeDefined();
    expect(upstreamUrlProblem('http://u:p@x')).toBeDefined();
    expect(upstreamUrlProblem('http://x/path')).toBeDefined();
    expect(upstreamUrlProblem('not a url')).toBeDefined();
  });
});

describe('flattenTraefikKv', () => {
  it('writes the documented KV layout, every key a known Traefik KV path', () => {
    const c = buildTraefikConfig([src('sb-0000000a', [3000], 'preview.example.com')], {
      ...BASE,
      entryPoints: ['websecure', 'web'],
      tls: true,
      certResolver: 'le',
      middlewares: ['ratelimit@file'],
      redirectEntryPoints: ['web'],
    });
    const kv = flattenTraefikKv(c, 'traefik');
    const r = 'traefik/http/routers/stacyvm-sb-0000000a-3000';
    const s = 'traefik/http/services/stacyvm-sb-0000000a-3000';
    expect(Object.fromEntries(kv)).toMatchObject({
      [`${r}/rule`]: 'Host(`3000-sb-0000000a.preview.example.com`)',
      [`${r}/entryPoints/0`]: 'websecure',
      [`${r}/entryPoints/1`]: 'web',
      [`${r}/service`]: 'stacyvm-sb-0000000a-3000',
      [`${r}/middlewares/0`]: 'ratelimit@file',
      [`${r}/tls/certResolver`]: 'le',
      [`${r}/tls/domains/0/main`]: 'preview.example.com',
      [`${r}/tls/domains/0/sans/0`]: '*.preview.example.com',
      [`${s}/loadBalancer/servers/0/url`]: GW,
      [`${s}/loadBalancer/passHostHeader`]: 'true',
      'traefik/http/middlewares/stacyvm-redirect-https/redirectScheme/scheme': 'https',
      'traefik/http/middlewares/stacyvm-redirect-https/redirectScheme/permanent': 'true',
    });
    for (const key of kv.keys()) {
      const rest = key.slice('traefik/http/'.length);
      expect(
        TRAEFIK_KV_PATHS.some((re) => re.test(rest)),
        key,
      ).toBe(true);
      expect(kvKeyOwner(key, 'traefik')).toBeDefined();
    }
    // A bare tls section is the key set to "true".
    const bare = flattenTraefikKv(
      buildTraefikConfig([src('sb-0000000a', [3000])], { ...BASE, tls: true }),
      'root/x',
    );
    expect(bare.get('root/x/http/routers/stacyvm-sb-0000000a-3000/tls')).toBe('true');
  });

  it('kvKeyOwner ignores keys outside the http routers/services/middlewares', () => {
    expect(kvKeyOwner('traefik/tcp/routers/a/rule', 'traefik')).toBeUndefined();
    expect(kvKeyOwner('other/http/routers/a/rule', 'traefik')).toBeUndefined();
    expect(kvKeyOwner('traefik/http/routers/a/rule', 'traefik')).toEqual({
      kind: 'routers',
      name: 'a',
    });
  });
});
