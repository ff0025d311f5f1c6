import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test as base } from 'vitest';
import { withCannedServer } from '../../test/support/canned-server.js';
import type { Recorded, TestServer } from '../../test/support/canned-server.js';
import { StacyError } from '../domain/errors.js';
import type { ExecSpec } from '../domain/exec.js';
import type { Logger } from '../domain/logger.js';
import { issueWorkerToken, verifyWorkerToken } from '../domain/worker-token.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import type { RuntimeRef } from '../rpc/worker-client.js';
import type { WorkerRpcServer, WorkerRpcServerOptions } from './rpc-server.js';
import {
  advertisedRpcUrl,
  chooseTokenSource,
  isWildcardHost,
  parseListenAddr,
  WorkerAgent,
} from './worker-agent.js';
import type { WorkerAgentOptions } from './worker-agent.js';
import { WorkerRuntime } from './worker-runtime.js';

const TOKEN = 'static-worker-token-5d1c9a7e3f-secret';
const ADMIN_KEY = 'bootstrap-admin-key-8b2f6d0a4c-secret';
const SIGNING_KEY = 'worker-signing-key-3e7a1c5f9b-secret';

interface LogLine {
  level: string;
  msg: string;
  obj: Record<string, unknown>;
}

class RecordingLogger implements Logger {
  readonly lines: LogLine[] = [];
  private add(level: string, obj: Record<string, unknown>, msg?: string): void {
    this.lines.push({ level, obj, msg: msg ?? '' });
  }
  debug(obj: Record<string, unknown>, msg?: string): void {
    this.add('debug', obj, msg);
  }
  info(obj: Record<string, unknown>, msg?: string): void {
    this.add('info', obj, msg);
  }
  warn(obj: Record<string, unknown>, msg?: string): void {
    this.add('warn', obj, msg);
  }
  error(obj: Record<string, unknown>, msg?: string): void {
    this.add('error', obj, msg);
  }
  text(): string {
    return JSON.stringify(this.lines);
  }
}

interface FakeRpc {
  options: WorkerRpcServerOptions[];
  closed: number;
  start: (o: WorkerRpcServerOptions) => Promise<WorkerRpcServer>;
}

function fakeRpc(port = 45678): FakeRpc {
  const rec: FakeRpc = {
    options: [],
    closed: 0,
    start: (o) => {
      rec.options.push(o);
      return Promise.resolve({
        url: `http://${o.host}:${port}`,
        port,
        close: () => {
          rec.closed += 1;
          return Promise.resolve();
        },
      });
    },
  };
  return rec;
}

const heartbeats = (s: TestServer): Recorded[] =>
  s.requests.filter((r) => r.url.endsWith('/heartbeat'));
const bodyOf = (r: Recorded): Record<string, unknown> =>
  JSON.parse(r.body.toString('utf8')) as Record<string, unknown>;
const statuses = (s: TestServer): unknown[] => heartbeats(s).map((r) => bodyOf(r)['status']);

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Answers heartbeats 200 with a worker record and everything else 404. */
function acceptHeartbeats(server: TestServer): void {
  server.handle((req, res) => {
    res.setHeader('Content-Type', 'application/json');
    if (req.url?.endsWith('/heartbeat') === true) {
      res.end(JSON.stringify({ id: 'worker-a', status: 'online' }));
      return;
    }
    res.statusCode = 404;
    res.end(JSON.stringify({ code: 'NOT_FOUND', message: 'no such route' }));
  });
}

interface Ctx {
  tmp: string;
  logger: RecordingLogger;
  runtime: WorkerRuntime;
}

const test = base.extend<Ctx>({
  // eslint-disable-next-line no-empty-pattern
  tmp: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-worker-agent-test-'));
    try {
      await use(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
  // eslint-disable-next-line no-empty-pattern
  logger: async ({}, use) => {
    await use(new RecordingLogger());
  },
  runtime: async ({ tmp, logger }, use) => {
    const runtime = new WorkerRuntime({
      workerId: 'worker-a',
      providers: [new MockProvider({ baseDir: join(tmp, 'mock') })],
      defaultProvider: 'mock',
      logger,
    });
    try {
      await use(runtime);
    } finally {
      await runtime.stop();
    }
  },
});

function agentOptions(
  ctx: Ctx,
  cpUrl: string,
  over: Partial<WorkerAgentOptions> = {},
): WorkerAgentOptions {
  return {
    workerId: 'worker-a',
    controlPlaneUrl: cpUrl,
    listenAddr: '',
    advertiseAddr: '',
    previewDomain: 'preview.example',
    heartbeatIntervalMs: 3_600_000,
    shutdownTimeoutMs: 5_000,
    maxSandboxes: 3,
    maxSandboxesPerOwner: 1,
    runtime: ctx.runtime,
    tokenSource: { kind: 'static', token: TOKEN },
    rpcAuth: { signingKeys: [], revokedTokenIds: [] },
    logger: ctx.logger,
    hostname: 'host-a',
    ...over,
  };
}

const execSpec = (command: string, timeoutMs = 10_000): ExecSpec => ({
  command,
  args: [],
  mode: 'shell',
  env: {},
  workdir: '',
  timeoutMs,
});

async function spawnMock(agent: WorkerAgent, id: string): Promise<RuntimeRef> {
  const res = await agent.runtime.spawn({
    sandboxId: id,
    provider: 'mock',
    image: 'alpine:latest',
    memoryMb: 128,
    vcpus: 1,
    ownerId: '',
    metadata: {},
    ports: [],
  });
  return { sandboxId: id, provider: res.provider, runtimeId: res.runtimeId };
}

describe('chooseTokenSource (reference §2.6 precedence)', () => {
  test('a token file wins over every other credential', () => {
    expect(
      chooseTokenSource({
        tokenFile: '/run/secrets/token',
        staticToken: TOKEN,
        bootstrapAdminKey: ADMIN_KEY,
        signingKey: SIGNING_KEY,
      }),
    ).toEqual({ kind: 'file', path: '/run/secrets/token' });
  });

  test('a token file together with --worker-token is refused, naming both flags but no value', () => {
    const attempt = (): unknown =>
      chooseTokenSource({ tokenFile: '/t', staticToken: TOKEN, staticTokenFromFlag: true });
    expect(attempt).toThrow(/--worker-token or --worker-token-file/);
    expect(attempt).not.toThrow(new RegExp(TOKEN));
  });

  test('the bootstrap admin key beats a static token and a signing key; ttl defaults to 5m', () => {
    expect(
      chooseTokenSource({
        bootstrapAdminKey: ADMIN_KEY,
        staticToken: TOKEN,
        signingKey: SIGNING_KEY,
      }),
    ).toEqual({ kind: 'bootstrap', adminKey: ADMIN_KEY, ttl: '5m' });
    expect(chooseTokenSource({ bootstrapAdminKey: ADMIN_KEY, bootstrapTokenTtl: '90s' })).toEqual({
      kind: 'bootstrap',
      adminKey: ADMIN_KEY,
      ttl: '90s',
    });
  });

  test('a bootstrap ttl that is not a duration or exceeds 15m is refused', () => {
    expect(() =>
      chooseTokenSource({ bootstrapAdminKey: ADMIN_KEY, bootstrapTokenTtl: 'soon' }),
    ).toThrow(/--bootstrap-token-ttl/);
    expect(() =>
      chooseTokenSource({ bootstrapAdminKey: ADMIN_KEY, bootstrapTokenTtl: '16m' }),
    ).toThrow(/at most|15m/);
  });

  test('a static token beats self-signing; a signing key alone self-signs', () => {
    expect(chooseTokenSource({ staticToken: ` ${TOKEN} `, signingKey: SIGNING_KEY })).toEqual({
      kind: 'static',
      token: TOKEN,
    });
    expect(chooseTokenSource({ signingKey: SIGNING_KEY })).toEqual({
      kind: 'signed',
      signingKey: SIGNING_KEY,
    });
  });

  test('blank values count as unset, and no credential at all is a clear error', () => {
    expect(
      chooseTokenSource({ tokenFile: ' ', bootstrapAdminKey: '', staticToken: TOKEN }),
    ).toEqual({
      kind: 'static',
      token: TOKEN,
    });
    expect(() => chooseTokenSource({ staticToken: '  ', signingKey: '' })).toThrow(
      /no worker credential/,
    );
  });
});

describe('addresses', () => {
  test('parses host:port, [v6]:port and :port', () => {
    expect(parseListenAddr('127.0.0.1:7430')).toEqual({ host: '127.0.0.1', port: 7430 });
    expect(parseListenAddr('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListenAddr(':7430')).toEqual({ host: '0.0.0.0', port: 7430 });
    expect(() => parseListenAddr('7430')).toThrow(/worker.listen_addr/);
    expect(() => parseListenAddr('host:99999')).toThrow(/port/);
    expect(() => parseListenAddr('::1:7430')).toThrow(/brackets/);
  });

  test('recognises all-interface hosts', () => {
    for (const h of ['0.0.0.0', '::', '[::]', '', '0:0:0:0:0:0:0:0'])
      expect(isWildcardHost(h)).toBe(true);
    for (const h of ['127.0.0.1', '10.0.0.5', 'worker-a', '::1'])
      expect(isWildcardHost(h)).toBe(false);
  });

  test('advertise_addr wins over the listen address, with the scheme and bound port filled in', () => {
    const listenAddr = '0.0.0.0:7430';
    expect(advertisedRpcUrl({ listenAddr, advertiseAddr: '10.0.0.5:7431', tls: false })).toBe(
      'http://10.0.0.5:7431',
    );
    expect(advertisedRpcUrl({ listenAddr, advertiseAddr: 'worker-a.internal', tls: true })).toBe(
      'https://worker-a.internal:7430',
    );
    expect(
      advertisedRpcUrl({ listenAddr, advertiseAddr: 'https://w.example.com/', tls: false }),
    ).toBe('https://w.example.com');
    expect(advertisedRpcUrl({ listenAddr, advertiseAddr: 'fd00::5', tls: false })).toBe(
      'http://[fd00::5]:7430',
    );
  });

  test('without advertise_addr the listen address is used, with the port actually bound', () => {
    expect(
      advertisedRpcUrl({
        listenAddr: '127.0.0.1:0',
        advertiseAddr: '',
        tls: false,
        boundPort: 41234,
      }),
    ).toBe('http://127.0.0.1:41234');
    expect(advertisedRpcUrl({ listenAddr: '[::1]:7430', advertiseAddr: '', tls: true })).toBe(
      'https://[::1]:7430',
    );
  });

  test('an all-interfaces listen address without advertise_addr is refused, pointing at the fix', () => {
    for (const listenAddr of ['0.0.0.0:7430', '[::]:7430', ':7430']) {
      expect(() => advertisedRpcUrl({ listenAddr, advertiseAddr: '', tls: false })).toThrow(
        /worker\.advertise_addr/,
      );
    }
  });
});

describe('WorkerAgent', () => {
  test('refuses the reserved id "local" and a malformed id', ({ tmp, logger, runtime }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    expect(
      () => new WorkerAgent(agentOptions(ctx, 'http://127.0.0.1:1', { workerId: 'local' })),
    ).toThrow(/reserved/);
    expect(
      () => new WorkerAgent(agentOptions(ctx, 'http://127.0.0.1:1', { workerId: 'a b' })),
    ).toThrow(/worker id/);
  });

  test('sends a heartbeat of the reference shape, advertising advertise_addr as rpc_url', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, `${cp.url}/`, {
          listenAddr: '0.0.0.0:7430',
          advertiseAddr: 'worker-a.internal:7430',
          startRpcServer: rpc.start,
        }),
      );
      await agent.start();
      try {
        expect(rpc.options).toHaveLength(1);
        expect(rpc.options[0]).toMatchObject({ host: '0.0.0.0', port: 7430, workerId: 'worker-a' });
        expect(rpc.options[0]!.auth.staticTokens).toEqual([TOKEN]);
        const [beat] = heartbeats(cp);
        expect(beat).toBeDefined();
        expect(beat!.method).toBe('POST');
        expect(beat!.url).toBe('/api/v1/worker/worker-a/heartbeat');
        expect(beat!.headers['content-type']).toBe('application/json');
        expect(beat!.headers['x-worker-id']).toBe('worker-a');
        expect(beat!.headers['x-worker-token']).toBe(TOKEN);
        expect(beat!.headers['authorization']).toBeUndefined();
        expect(bodyOf(beat!)).toEqual({
          hostname: 'host-a',
          status: 'online',
          providers: ['mock'],
          capabilities: ['remote_worker', 'heartbeat', 'drain', 'rpc', 'exec_stream_ndjson'],
          capacity: {
            max_sandboxes: 3,
            max_sandboxes_per_owner: 1,
            preview_domain: 'preview.example',
            rpc_url: 'http://worker-a.internal:7430',
          },
          protocol_version: 1,
        });
        expect(agent.rpcUrl).toBe('http://worker-a.internal:7430');
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('advertises its preview gateway as preview_url while it serves RPC, and checks the control plane credential for it', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      let previewUrl: string | undefined = 'http://10.0.0.5:7480';
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, {
          listenAddr: '0.0.0.0:7430',
          advertiseAddr: 'worker-a.internal:7430',
          startRpcServer: fakeRpc().start,
          previewUrl: () => previewUrl,
          rpcAuth: { signingKeys: [SIGNING_KEY], revokedTokenIds: [] },
        }),
      );
      await agent.start();
      try {
        const first = bodyOf(heartbeats(cp)[0]!) as { capacity: Record<string, unknown> };
        expect(first.capacity['preview_url']).toBe('http://10.0.0.5:7480');
        previewUrl = undefined;
        await agent.sendHeartbeat();
        const second = bodyOf(heartbeats(cp)[1]!) as { capacity: Record<string, unknown> };
        expect(second.capacity).not.toHaveProperty('preview_url');

        expect(agent.checkRpcCredentials('worker-a', TOKEN)).toBe(true);
        expect(agent.checkRpcCredentials('worker-a', 'wrong')).toBe(false);
        expect(agent.checkRpcCredentials('worker-b', TOKEN)).toBe(false);
        expect(agent.checkRpcCredentials(undefined, TOKEN)).toBe(false);
        const signed = issueWorkerToken(
          { workerId: 'worker-a', audience: 'worker:rpc', ttlMs: 60_000 },
          SIGNING_KEY,
          Date.now(),
        ).token;
        expect(agent.checkRpcCredentials('worker-a', signed)).toBe(true);
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('advertises no preview_url without an RPC server', async ({ tmp, logger, runtime }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, { previewUrl: () => 'http://10.0.0.5:7480' }),
      );
      await agent.start();
      try {
        const body = bodyOf(heartbeats(cp)[0]!) as { capacity: Record<string, unknown> };
        expect(body.capacity).not.toHaveProperty('preview_url');
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('refuses to start on 0.0.0.0 without advertise_addr, before registering or listening', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, { listenAddr: '0.0.0.0:7430', startRpcServer: rpc.start }),
      );
      await expect(agent.start()).rejects.toThrow(/set worker\.advertise_addr/);
      expect(rpc.options).toHaveLength(0);
      expect(cp.requests).toHaveLength(0);
      await agent.stopped;
    });
  });

  test('a failed first heartbeat rejects start with the control plane message, never the token', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.statusCode = 401;
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ code: 'UNAUTHORIZED', message: 'invalid worker credentials' }));
      });
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, { listenAddr: '127.0.0.1:0', startRpcServer: rpc.start }),
      );
      const err = await agent.start().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StacyError);
      const e = err as StacyError;
      expect(e.code).toBe('UNAUTHORIZED');
      expect(e.message).toContain('HTTP 401: invalid worker credentials');
      expect(e.message).not.toContain(TOKEN);
      expect(ctx.logger.text()).not.toContain(TOKEN);
      // Everything that started is stopped again.
      expect(rpc.closed).toBe(1);
      expect(ctx.runtime.state).toBe('stopped');
      await agent.stopped;
    });
  });

  test('an unreachable control plane fails start with the network cause', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    let port = 0;
    await withCannedServer(async (cp) => {
      port = Number(new URL(cp.url).port);
    });
    // The canned server is closed now: nothing listens on that port.
    const agent = new WorkerAgent(agentOptions(ctx, `http://127.0.0.1:${port}`));
    await expect(agent.start()).rejects.toThrow(
      /heartbeat to http:\/\/127\.0\.0\.1:\d+ failed: ECONNREFUSED/,
    );
  });

  test('re-reads the token file before every heartbeat and lets the RPC server accept its current token', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const file = join(ctx.tmp, 'worker-token');
      writeFileSync(file, 'file-token-one\n');
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, {
          tokenSource: { kind: 'file', path: file },
          listenAddr: '127.0.0.1:0',
          heartbeatIntervalMs: 30,
          startRpcServer: rpc.start,
        }),
      );
      await agent.start();
      try {
        expect(heartbeats(cp)[0]!.headers['x-worker-token']).toBe('file-token-one');
        const accepted = rpc.options[0]!.auth.staticTokens;
        expect(accepted).toEqual(['file-token-one']);
        writeFileSync(file, 'file-token-two\n');
        const seen = heartbeats(cp).length;
        await until(() => heartbeats(cp).length >= seen + 2, 'two more loop heartbeats');
        expect(heartbeats(cp).at(-1)!.headers['x-worker-token']).toBe('file-token-two');
        expect(accepted).toEqual(['file-token-two']);
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('with a bootstrap admin key, mints a token before each heartbeat and cannot accept RPC without a signing key', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      let minted = 0;
      cp.handle((req, res) => {
        res.setHeader('Content-Type', 'application/json');
        if (req.url === '/api/v1/admin/worker-tokens') {
          minted += 1;
          res.end(JSON.stringify({ token: `minted-${minted}`, worker_id: 'worker-a' }));
          return;
        }
        res.end(JSON.stringify({ id: 'worker-a' }));
      });
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, {
          tokenSource: { kind: 'bootstrap', adminKey: ADMIN_KEY, ttl: '2m' },
          listenAddr: '127.0.0.1:0',
          startRpcServer: rpc.start,
        }),
      );
      await agent.start();
      try {
        await agent.sendHeartbeat();
        expect(cp.requests.map((r) => r.url)).toEqual([
          '/api/v1/admin/worker-tokens',
          '/api/v1/worker/worker-a/heartbeat',
          '/api/v1/admin/worker-tokens',
          '/api/v1/worker/worker-a/heartbeat',
        ]);
        const mint = cp.requests[0]!;
        expect(mint.method).toBe('POST');
        expect(mint.headers['x-admin-api-key']).toBe(ADMIN_KEY);
        expect(bodyOf(mint)).toEqual({
          worker_id: 'worker-a',
          ttl: '2m',
          audience: 'worker:control-plane',
        });
        expect(cp.requests[1]!.headers['x-worker-token']).toBe('minted-1');
        expect(cp.requests[3]!.headers['x-worker-token']).toBe('minted-2');
        // No credential to verify the control plane: no RPC server, no rpc capability or url.
        expect(rpc.options).toHaveLength(0);
        const body = bodyOf(cp.requests[1]!);
        expect(body['capabilities']).not.toContain('rpc');
        expect(body['capacity']).not.toHaveProperty('rpc_url');
        expect(
          ctx.logger.lines.some((l) => l.level === 'warn' && /cannot accept RPC/.test(l.msg)),
        ).toBe(true);
        expect(ctx.logger.text()).not.toContain(ADMIN_KEY);
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('a refused bootstrap mint fails start with the issuer message, not the admin key', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.statusCode = 503;
        res.setHeader('Content-Type', 'application/json');
        res.end(
          JSON.stringify({ code: 'UNAVAILABLE', message: 'worker signing key is not configured' }),
        );
      });
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, {
          tokenSource: { kind: 'bootstrap', adminKey: ADMIN_KEY, ttl: '5m' },
        }),
      );
      const err = (await agent.start().catch((e: unknown) => e)) as Error;
      expect(err.message).toMatch(
        /bootstrap token request .* HTTP 503: worker signing key is not configured/,
      );
      expect(err.message).not.toContain(ADMIN_KEY);
      expect(heartbeats(cp)).toHaveLength(0);
    });
  });

  test('a signing key self-signs control-plane tokens and is handed to the RPC server', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, {
          tokenSource: { kind: 'signed', signingKey: SIGNING_KEY },
          rpcAuth: { signingKeys: [SIGNING_KEY, 'old-key', ' '], revokedTokenIds: ['jti-1'] },
          listenAddr: '127.0.0.1:0',
          startRpcServer: rpc.start,
        }),
      );
      await agent.start();
      try {
        const token = heartbeats(cp)[0]!.headers['x-worker-token'] as string;
        const verified = verifyWorkerToken(token, {
          keys: [SIGNING_KEY],
          audience: 'worker:control-plane',
          workerId: 'worker-a',
          nowMs: Date.now(),
        });
        expect(verified.claims.exp - (verified.claims.iat ?? 0)).toBe(300);
        expect(rpc.options[0]!.auth).toMatchObject({
          staticTokens: [],
          signingKeys: [SIGNING_KEY, 'old-key'],
          revokedTokenIds: ['jti-1'],
        });
        expect(bodyOf(heartbeats(cp)[0]!)['capabilities']).toContain('rpc');
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('a later heartbeat failure is logged without the token and retried at the interval', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      let refuse = false;
      cp.handle((_req, res) => {
        res.setHeader('Content-Type', 'application/json');
        if (refuse) {
          res.statusCode = 403;
          res.end(JSON.stringify({ code: 'FORBIDDEN', message: 'token revoked' }));
          return;
        }
        res.end('{}');
      });
      const agent = new WorkerAgent(agentOptions(ctx, cp.url, { heartbeatIntervalMs: 30 }));
      await agent.start();
      try {
        refuse = true;
        await until(
          () =>
            ctx.logger.lines.some((l) => l.level === 'error' && /heartbeat rejected/.test(l.msg)),
          'an auth error log',
        );
        const line = ctx.logger.lines.find((l) => /heartbeat rejected/.test(l.msg))!;
        expect(String(line.obj['err'])).toContain('HTTP 403: token revoked');
        refuse = false;
        const seen = heartbeats(cp).length;
        await until(() => heartbeats(cp).length >= seen + 2, 'heartbeats after recovery');
        expect(agent.state).toBe('running');
        expect(ctx.logger.text()).not.toContain(TOKEN);
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('drain: draining beat at once, spawns refused, in-flight exec finishes, then offline and stop', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, { listenAddr: '127.0.0.1:0', startRpcServer: rpc.start }),
      );
      await agent.start();
      const ref = await spawnMock(agent, 'sb-0000d001');
      const exec = agent.runtime.exec(ref, execSpec('sleep 0.4; echo finished'));
      expect(agent.runtime.inFlight).toBe(1);

      let drained = false;
      const draining = agent.drain('SIGTERM').then(() => {
        drained = true;
      });
      await until(() => statuses(cp).includes('draining'), 'the draining heartbeat');
      expect(drained).toBe(false);
      expect(statuses(cp)).toEqual(['online', 'draining']);
      expect(agent.state).toBe('draining');

      const refused = await agent.runtime
        .spawn({
          sandboxId: 'sb-0000d002',
          provider: 'mock',
          image: 'alpine:latest',
          memoryMb: 128,
          vcpus: 1,
          ownerId: '',
          metadata: {},
          ports: [],
        })
        .catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(StacyError);
      expect((refused as StacyError).code).toBe('UNAVAILABLE');

      const outcome = await exec;
      expect(outcome.exitCode).toBe(0);
      expect(outcome.stdout).toBe('finished\n');
      await draining;
      expect(statuses(cp)).toEqual(['online', 'draining', 'offline']);
      expect(rpc.closed).toBe(1);
      expect(agent.state).toBe('stopped');
      expect(ctx.runtime.state).toBe('stopped');
      await agent.stopped;
    });
  });

  test('drain gives up on in-flight work after the shutdown timeout', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const agent = new WorkerAgent(agentOptions(ctx, cp.url, { shutdownTimeoutMs: 200 }));
      await agent.start();
      const ref = await spawnMock(agent, 'sb-0000d003');
      const exec = agent.runtime.exec(ref, execSpec('sleep 20')).catch((e: unknown) => e);
      const started = Date.now();
      await agent.drain('SIGTERM');
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(150);
      expect(took).toBeLessThan(5_000);
      expect(statuses(cp)).toEqual(['online', 'draining', 'offline']);
      expect(
        ctx.logger.lines.some((l) => l.level === 'warn' && /drain deadline passed/.test(l.msg)),
      ).toBe(true);
      // Stopping the runtime ends the leftover command; it must not outlive the test.
      await exec;
    });
  });

  test('the worker.shutdown RPC drains the worker like a signal', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, { listenAddr: '127.0.0.1:0', startRpcServer: rpc.start }),
      );
      await agent.start();
      rpc.options[0]!.onShutdown!();
      await agent.stopped;
      expect(statuses(cp)).toEqual(['online', 'draining', 'offline']);
      expect(rpc.closed).toBe(1);
    });
  });

  test('stopNow (a second signal) does not wait for in-flight work but still reports offline', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const agent = new WorkerAgent(agentOptions(ctx, cp.url, { shutdownTimeoutMs: 60_000 }));
      await agent.start();
      const ref = await spawnMock(agent, 'sb-0000d004');
      const exec = agent.runtime.exec(ref, execSpec('sleep 20')).catch((e: unknown) => e);
      const draining = agent.drain('SIGTERM');
      await until(() => statuses(cp).includes('draining'), 'the draining heartbeat');
      const started = Date.now();
      await agent.stopNow('second SIGTERM');
      expect(Date.now() - started).toBeLessThan(5_000);
      await draining;
      expect(statuses(cp)).toEqual(['online', 'draining', 'offline']);
      expect(agent.state).toBe('stopped');
      await exec;
    });
  });

  test('once sends one online heartbeat without an RPC url and stops the providers', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const rpc = fakeRpc();
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, { listenAddr: '127.0.0.1:7430', startRpcServer: rpc.start }),
      );
      await agent.once();
      expect(statuses(cp)).toEqual(['online']);
      expect(bodyOf(heartbeats(cp)[0]!)['capacity']).not.toHaveProperty('rpc_url');
      expect(rpc.options).toHaveLength(0);
      expect(ctx.runtime.state).toBe('stopped');
    });
  });

  test('once rejects with the control plane error', async ({ tmp, logger, runtime }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.statusCode = 403;
        res.setHeader('Content-Type', 'application/json');
        res.end(
          JSON.stringify({ code: 'FORBIDDEN', message: 'worker id "worker-a" is not allowed' }),
        );
      });
      const agent = new WorkerAgent(agentOptions(ctx, cp.url));
      await expect(agent.once()).rejects.toThrow(/HTTP 403: worker id "worker-a" is not allowed/);
      expect(ctx.runtime.state).toBe('stopped');
    });
  });

  test('over the real RPC server: accepts its own token and signed worker:rpc tokens; worker.shutdown drains while an exec finishes', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      acceptHeartbeats(cp);
      const agent = new WorkerAgent(
        agentOptions(ctx, cp.url, {
          listenAddr: '127.0.0.1:0',
          rpcAuth: { signingKeys: [SIGNING_KEY], revokedTokenIds: [] },
        }),
      );
      await agent.start();
      const rpcUrl = (bodyOf(heartbeats(cp)[0]!)['capacity'] as Record<string, unknown>)['rpc_url'];
      expect(rpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(Number(new URL(String(rpcUrl)).port)).toBeGreaterThan(0);
      const call = (
        token: string,
        method: string,
        params?: Record<string, unknown>,
      ): Promise<Response> =>
        fetch(`${String(rpcUrl)}/rpc`, {
          method: 'POST',
          headers: {
            'Content-Type': 'application/json',
            'X-Worker-ID': 'worker-a',
            'X-Worker-Token': token,
          },
          body: JSON.stringify({
            id: `${method}-1`,
            method,
            worker_id: 'worker-a',
            ...(params === undefined ? {} : { params }),
          }),
        });
      try {
        const ref = await spawnMock(agent, 'sb-0000e001');
        expect(
          (
            await call('not-the-token', 'worker.status', {
              sandbox_id: ref.sandboxId,
              provider: 'mock',
            })
          ).status,
        ).toBe(401);
        const signed = issueWorkerToken(
          { workerId: 'worker-a', audience: 'worker:rpc' },
          SIGNING_KEY,
          Date.now(),
        ).token;
        const status = await call(signed, 'worker.status', {
          sandbox_id: ref.sandboxId,
          provider: 'mock',
        });
        expect(status.status).toBe(200);

        const exec = call(TOKEN, 'worker.exec', {
          sandbox_id: ref.sandboxId,
          provider: 'mock',
          command: 'sleep 0.4; echo over-rpc',
        });
        await until(() => agent.runtime.inFlight === 1, 'the exec to be in flight');
        const shutdown = await call(TOKEN, 'worker.shutdown');
        expect(shutdown.status).toBe(200);
        await until(() => statuses(cp).includes('draining'), 'the draining heartbeat');
        expect(statuses(cp)).not.toContain('offline');
        const execRes = await exec;
        expect(execRes.status).toBe(200);
        const envelope = (await execRes.json()) as {
          result: { stdout: string; exit_code: number };
        };
        expect(envelope.result).toMatchObject({ stdout: 'over-rpc\n', exit_code: 0 });
        // An admin drain keeps serving the sandboxes it holds: still up, still draining.
        await new Promise((r) => setTimeout(r, 700));
        expect(statuses(cp)).not.toContain('offline');
        expect(
          (await call(TOKEN, 'worker.status', { sandbox_id: ref.sandboxId, provider: 'mock' }))
            .status,
        ).toBe(200);
        // Once its last sandbox is destroyed, the drained worker leaves.
        await agent.runtime.destroy(ref);
        await agent.stopped;
        expect(statuses(cp)).toEqual(['online', 'draining', 'offline']);
        // The server is closed: nothing answers at rpc_url any more.
        await expect(call(TOKEN, 'worker.status', { sandbox_id: ref.sandboxId })).rejects.toThrow();
      } finally {
        await agent.stopNow('test over');
      }
    });
  });

  test('renewLease posts the ttl with worker credentials and returns the lease', async ({
    tmp,
    logger,
    runtime,
  }) => {
    const ctx: Ctx = { tmp, logger, runtime };
    await withCannedServer(async (cp) => {
      const lease = {
        resource_id: 'sb-1',
        holder_id: 'worker-a',
        generation: 4,
        expires_at: '2026-01-01T00:05:00Z',
      };
      cp.handle((req, res) => {
        res.setHeader('Content-Type', 'application/json');
        if (req.url?.includes('/leases/') === true) {
          if (req.url.includes('sb-gone')) {
            res.statusCode = 409;
            res.end(
              JSON.stringify({
                code: 'CONFLICT',
                message: 'lease is not held by worker or has expired',
              }),
            );
            return;
          }
          res.end(JSON.stringify({ lease }));
          return;
        }
        res.end('{}');
      });
      const agent = new WorkerAgent(agentOptions(ctx, cp.url));
      await expect(agent.renewLease('sb-1', '10m')).resolves.toEqual(lease);
      const req = cp.requests.at(-1)!;
      expect(req.url).toBe('/api/v1/worker/worker-a/leases/sb-1/renew');
      expect(req.headers['x-worker-id']).toBe('worker-a');
      expect(req.headers['x-worker-token']).toBe(TOKEN);
      expect(bodyOf(req)).toEqual({ ttl: '10m' });
      const err = (await agent.renewLease('sb-gone', '10m').catch((e: unknown) => e)) as StacyError;
      expect(err.code).toBe('CONFLICT');
      expect(err.message).toContain('lease is not held');
    });
  });
});
