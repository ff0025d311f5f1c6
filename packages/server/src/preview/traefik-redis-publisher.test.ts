/**
 * The Redis client and the Traefik KV publisher against a real
 * `redis-server` (loopback, free port, no persistence, password set).
 * Under CI=true a missing redis-server fails; elsewhere the suite skips.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, redactConfig } from '../config/load-config.js';
import { startHarness } from '../../test/support/harness.js';
import { silentLogger } from '../domain/logger.js';
import { EventBus } from '../orchestrator/events.js';
import { redisUnavailable, startRedisServer } from '../../test/support/redis-server.js';
import type { RedisServer } from '../../test/support/redis-server.js';
import {
  RedisClient,
  RedisError,
  RespParser,
  encodeCommand,
  parseRedisAddress,
} from './redis-client.js';
import type { TraefikBuildOptions, TraefikRouteSource } from './traefik-config.js';
import type { TraefikRouteCatalog } from './traefik-redis-publisher.js';
import { TraefikRedisPublisher } from './traefik-redis-publisher.js';

const PASSWORD = 'redis-test-password-0123456789';
const GW = 'http://127.0.0.1:7480';
const BUILD: TraefikBuildOptions = {
  namePrefix: 'stacyvm-',
  entryPoints: ['web'],
  tls: false,
  certResolver: '',
  wildcardCert: true,
  middlewares: [],
  redirectEntryPoints: [],
};
const MIDDLEWARE_KEYS = [
  'traefik/http/middlewares/stacyvm-redirect-https/redirectScheme/permanent',
  'traefik/http/middlewares/stacyvm-redirect-https/redirectScheme/scheme',
];

function routeKeys(id: string, port: number, domain = 'localhost'): Record<string, string> {
  const n = `stacyvm-${id}-${port}`;
  return {
    [`traefik/http/routers/${n}/rule`]: `Host(\`${port}-${id}.${domain}\`)`,
    [`traefik/http/routers/${n}/service`]: n,
    [`traefik/http/routers/${n}/entryPoints/0`]: 'web',
    [`traefik/http/services/${n}/loadBalancer/servers/0/url`]: GW,
    [`traefik/http/services/${n}/loadBalancer/passHostHeader`]: 'true',
  };
}

describe('RESP encoding and parsing', () => {
  it('encodes commands as arrays of bulk strings (UTF-8 byte lengths)', () => {
    expect(encodeCommand(['SET', 'k', 'é']).toString('utf8')).toBe(
      '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\né\r\n',
    );
  });

  it('parses replies split at any byte, nested arrays, nils and errors', () => {
    const wire = Buffer.from(
      '+OK\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n*-1\r\n-ERR bad\r\n*2\r\n+OK\r\n-WRONGTYPE x\r\n',
    );
    const whole = new RespParser().push(wire);
    const p = new RespParser();
    const split = [];
    for (let i = 0; i < wire.length; i++) split.push(...p.push(wire.subarray(i, i + 1)));
    expect(split).toEqual(whole);
    expect(whole).toEqual([
      { ok: true, value: 'OK' },
      { ok: true, value: 42 },
      { ok: true, value: 'he\r\nl' },
      { ok: true, value: null },
      { ok: true, value: ['0', ['a', 'b']] },
      { ok: true, value: null },
      { ok: false, error: 'ERR bad' },
      { ok: false, error: 'WRONGTYPE x' },
    ]);
  });

  it('parses addresses', () => {
    expect(parseRedisAddress('127.0.0.1:6380')).toEqual({ host: '127.0.0.1', port: 6380 });
    expect(parseRedisAddress('redis')).toEqual({ host: 'redis', port: 6379 });
    expect(parseRedisAddress('redis://cache:7000/0')).toEqual({ host: 'cache', port: 7000 });
    expect(parseRedisAddress('[::1]:6379')).toEqual({ host: '::1', port: 6379 });
    expect(() => parseRedisAddress('h:99999')).toThrow(/bad port/);
    expect(() => parseRedisAddress('redis://u:p@h:1')).toThrow(/credentials/);
  });
});

const skipReason = redisUnavailable();

describe.skipIf(skipReason !== undefined)(
  `against a real redis-server${skipReason === undefined ? '' : ` (skipped: ${skipReason})`}`,
  () => {
    let redis: RedisServer;
    let admin: RedisClient;

    const allKeys = async (): Promise<string[]> => (await admin.scanAll('*')).sort();
    const valuesOf = async (keys: string[]): Promise<Record<string, string>> => {
      const out: Record<string, string> = {};
      for (const k of keys) out[k] = String(await admin.command(['GET', k]));
      return out;
    };

    beforeAll(async () => {
      redis = await startRedisServer(PASSWORD);
      admin = new RedisClient({ host: redis.host, port: redis.port, password: PASSWORD });
    });
    afterAll(async () => {
      await admin?.close();
      await redis?.stop();
    });

    describe('RedisClient', () => {
      it('authenticates, and a wrong or missing password is refused without echoing it', async () => {
        expect(await admin.ping()).toBe('PONG');
        const wrong = new RedisClient({ host: redis.host, port: redis.port, password: 'nope-x1' });
        const err = await wrong.ping().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(RedisError);
        expect((err as Error).message).toMatch(/WRONGPASS|invalid password/i);
        expect((err as Error).message).not.toContain('nope-x1');
        await wrong.close();
        const none = new RedisClient({ host: redis.host, port: redis.port });
        await expect(none.ping()).rejects.toThrow(/NOAUTH/);
        await none.close();
      });

      it('selects the database, pipelines, scans with MATCH and runs MULTI/EXEC', async () => {
        const db3 = new RedisClient({
          host: redis.host,
          port: redis.port,
          password: PASSWORD,
          db: 3,
        });
        const replies = await Promise.all(
          Array.from({ length: 50 }, (_, i) => db3.command(['SET', `scan/${i}`, `v${i}`])),
        );
        expect(replies.every((r) => r === 'OK')).toBe(true);
        await db3.set('other', 'x');
        expect((await db3.scanAll('scan/*', 7)).length).toBe(50);
        // Database 0 does not see them.
        expect(await admin.scanAll('scan/*')).toEqual([]);
        const exec = await db3.transaction([
          ['SET', 'tx/a', '1'],
          ['DEL', 'other', 'missing'],
          ['GET', 'tx/a'],
        ]);
        expect(exec).toEqual(['OK', 1, '1']);
        await expect(db3.transaction([['SET', 'tx/b', '1'], ['NOSUCHCOMMAND']])).rejects.toThrow(
          /unknown command/i,
        );
        expect(await db3.command(['EXISTS', 'tx/b'])).toBe(0);
        await db3.command(['FLUSHDB']);
        await db3.close();
        await expect(db3.ping()).rejects.toThrow(/closed/);
      });

      it('reports an unreachable server as an error, then works once it is back', async () => {
        const gone = new RedisClient({ host: '127.0.0.1', port: 1, timeoutMs: 2_000 });
        await expect(gone.ping()).rejects.toThrow(/cannot connect/);
        await gone.close();
        // A dropped connection is reopened on the next command.
        const c = new RedisClient({ host: redis.host, port: redis.port, password: PASSWORD });
        expect(await c.ping()).toBe('PONG');
        const killed = await admin.command(['CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes']);
        expect(killed).toBeGreaterThanOrEqual(1);
        // The command in flight when the close is noticed fails; the next one reconnects.
        const first = await c.ping().then(
          (r) => r,
          (e: unknown) => (e as Error).message,
        );
        expect(['PONG', 'connection to Redis closed']).toContain(first);
        expect(await c.ping()).toBe('PONG');
        await c.close();
      });
    });

    describe('TraefikRedisPublisher', () => {
      const sources = new Map<string, TraefikRouteSource>();
      const catalog: TraefikRouteCatalog = {
        all: async () => [...sources.values()],
        one: async (id) => sources.get(id),
      };
      let bus: EventBus;
      let pub: TraefikRedisPublisher;

      beforeAll(async () => {
        await admin.command(['FLUSHALL']);
        // Someone else's configuration under the same root, and a key outside it.
        await admin.set('traefik/http/routers/grafana/rule', 'Host(`grafana.example.com`)');
        await admin.set('unrelated', 'x');
        bus = new EventBus({ clock: { nowMs: () => Date.now() } });
        pub = new TraefikRedisPublisher({
          kv: new RedisClient({ host: redis.host, port: redis.port, password: PASSWORD }),
          catalog,
          build: BUILD,
          rootKey: 'traefik',
          subscribe: (l) => bus.subscribe(l),
          resyncIntervalMs: 0,
          logger: silentLogger,
        });
        await pub.start();
      });
      afterAll(async () => {
        await pub?.stop();
      });

      it('starts with only the anchor middleware of its own', async () => {
        expect(await allKeys()).toEqual(
          [...MIDDLEWARE_KEYS, 'traefik/http/routers/grafana/rule', 'unrelated'].sort(),
        );
      });

      it('writes the exact keys when a sandbox starts running, and deletes them when destroyed', async () => {
        sources.set('sb-0000000a', {
          sandboxId: 'sb-0000000a',
          ports: [3000, 5173],
          domain: 'localhost',
          upstreamUrl: GW,
        });
        bus.publish('sandbox.running', 'sb-0000000a');
        await pub.idle();
        const expected = { ...routeKeys('sb-0000000a', 3000), ...routeKeys('sb-0000000a', 5173) };
        const keys = await allKeys();
        expect(keys).toEqual(
          [
            ...Object.keys(expected),
            ...MIDDLEWARE_KEYS,
            'traefik/http/routers/grafana/rule',
            'unrelated',
          ].sort(),
        );
        expect(await valuesOf(Object.keys(expected))).toEqual(expected);

        sources.delete('sb-0000000a');
        bus.publish('sandbox.destroyed', 'sb-0000000a');
        await pub.idle();
        expect(await allKeys()).toEqual(
          [...MIDDLEWARE_KEYS, 'traefik/http/routers/grafana/rule', 'unrelated'].sort(),
        );
      });

      it('an expired sandbox loses its routes; an event for another sandbox leaves them alone', async () => {
        sources.set('sb-1', {
          sandboxId: 'sb-1',
          ports: [3000],
          domain: 'localhost',
          upstreamUrl: GW,
        });
        sources.set('sb-1-2', {
          sandboxId: 'sb-1-2',
          ports: [3000],
          domain: 'localhost',
          upstreamUrl: GW,
        });
        bus.publish('sandbox.running', 'sb-1');
        bus.publish('sandbox.running', 'sb-1-2');
        // Events that do not change routes are ignored.
        bus.publish('exec.completed', 'sb-1');
        await pub.idle();
        sources.delete('sb-1');
        bus.publish('sandbox.expired', 'sb-1');
        await pub.idle();
        const keys = await allKeys();
        expect(keys.filter((k) => k.includes('stacyvm-sb-1-3000'))).toEqual([]);
        expect(keys.filter((k) => k.includes('stacyvm-sb-1-2-3000'))).toHaveLength(5);
        sources.delete('sb-1-2');
        bus.publish('sandbox.destroyed', 'sb-1-2');
        await pub.idle();
      });

      it('a resync removes stale keys with our prefix and keeps everything else', async () => {
        // Left by a crash: routes of a sandbox that no longer exists, and a stray field.
        for (const [k, v] of Object.entries(routeKeys('sb-deadbeef', 3000))) await admin.set(k, v);
        await admin.set('traefik/http/services/stacyvm-sb-0000000b-3000/loadBalancer/sticky', 'x');
        sources.set('sb-0000000b', {
          sandboxId: 'sb-0000000b',
          ports: [3000],
          domain: 'preview.example.com',
          upstreamUrl: GW,
        });
        // Its running event was missed: only the resync can add it.
        const r = await pub.resync();
        expect(r.deleted).toBe(6);
        const expected = routeKeys('sb-0000000b', 3000, 'preview.example.com');
        expect(await allKeys()).toEqual(
          [
            ...Object.keys(expected),
            ...MIDDLEWARE_KEYS,
            'traefik/http/routers/grafana/rule',
            'unrelated',
          ].sort(),
        );
        expect(await valuesOf(Object.keys(expected))).toEqual(expected);
      });

      it('a failed write (refused credentials) rejects syncSandbox', async () => {
        const broken = new TraefikRedisPublisher({
          kv: new RedisClient({ host: redis.host, port: redis.port, password: 'wrong-password' }),
          catalog,
          build: BUILD,
          rootKey: 'traefik',
          subscribe: () => () => undefined,
          resyncIntervalMs: 0,
          logger: silentLogger,
        });
        await expect(broken.syncSandbox('sb-0000000b')).rejects.toThrow(/handshake/);
        await broken.stop();
      });
    });

    describe('in the control plane (traefik.redis.enabled)', () => {
      it('spawn → exact keys in the configured db and root; destroy → gone; stale keys of ours removed at start', async () => {
        const db = new RedisClient({
          host: redis.host,
          port: redis.port,
          password: PASSWORD,
          db: 2,
        });
        await db.command(['FLUSHDB']);
        // Left by an earlier control plane that crashed.
        await db.set('edge/http/routers/cp1-sb-0badf00d-3000/rule', 'Host(`3000-sb-0badf00d.x`)');
        await db.set('edge/http/routers/keep-me/rule', 'Host(`keep.example.com`)');
        // The password comes from traefik.redis.password_file, through the real config loader.
        const dir = mkdtempSync(join(tmpdir(), 'stacyvm-redis-cfg-'));
        writeFileSync(join(dir, 'redis-password'), `${PASSWORD}\n`, { mode: 0o600 });
        writeFileSync(
          join(dir, 'stacyvm.yaml'),
          [
            'traefik:',
            `  upstream_url: ${GW}`,
            '  name_prefix: cp1-',
            '  redis:',
            '    enabled: true',
            `    address: ${redis.host}:${redis.port}`,
            '    password_file: redis-password',
            '    db: 2',
            '    root_key: edge',
            '',
          ].join('\n'),
        );
        const loaded = loadConfig({ cwd: dir, homeDir: dir, env: {} });
        expect(loaded.config.traefik.redis.password).toBe(PASSWORD);
        expect(redactConfig(loaded.config).traefik.redis.password).not.toContain(PASSWORD);
        const h = await startHarness((c) => {
          c.traefik = loaded.config.traefik;
        });
        rmSync(dir, { recursive: true, force: true });
        const keys = async () => (await db.scanAll('*')).sort();
        const anchor = [
          'edge/http/middlewares/cp1-redirect-https/redirectScheme/permanent',
          'edge/http/middlewares/cp1-redirect-https/redirectScheme/scheme',
        ];
        try {
          expect(h.cp.traefikRedis).toBeDefined();
          expect(await keys()).toEqual([...anchor, 'edge/http/routers/keep-me/rule'].sort());

          const id = await h.spawn({ ports: [3000] });
          await h.cp.traefikRedis?.idle();
          const n = `cp1-${id}-3000`;
          const expected: Record<string, string> = {
            [`edge/http/routers/${n}/rule`]: `Host(\`3000-${id}.localhost\`)`,
            [`edge/http/routers/${n}/service`]: n,
            [`edge/http/routers/${n}/entryPoints/0`]: 'web',
            [`edge/http/services/${n}/loadBalancer/servers/0/url`]: GW,
            [`edge/http/services/${n}/loadBalancer/passHostHeader`]: 'true',
          };
          expect(await keys()).toEqual(
            [...Object.keys(expected), ...anchor, 'edge/http/routers/keep-me/rule'].sort(),
          );
          for (const [k, v] of Object.entries(expected)) {
            expect(await db.command(['GET', k]), k).toBe(v);
          }
          // Nothing went to database 0.
          expect(await admin.scanAll('edge/*')).toEqual([]);

          const del = await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${id}` });
          expect(del.statusCode, del.body).toBeLessThan(300);
          await h.cp.traefikRedis?.idle();
          expect(await keys()).toEqual([...anchor, 'edge/http/routers/keep-me/rule'].sort());
        } finally {
          await h.close();
          await db.close();
        }
      });
    });
  },
);
