import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { Command } from 'commander';
import { describe, expect, test as base } from 'vitest';
import { withCannedServer } from '../../test/support/canned-server.js';
import type { Recorded, TestServer } from '../../test/support/canned-server.js';
import { httpCall } from '../../test/support/preview-upstream.js';
import { defaultConfig } from '../config/load-config.js';
import type { StacyConfig } from '../config/load-config.js';
import type { OutputStream } from './client-commands.js';
import { registerClientCommands } from './client-commands.js';
import {
  advertisedPreviewUrl,
  isLoopbackHost,
  registerWorkerCommand,
  resolveWorkerSettings,
  workerPreviewListen,
  WorkerUsageError,
} from './worker-command.js';
import type { ResolveIo, WorkerCommandDeps } from './worker-command.js';
import { registerWorkerTokenCommands } from './worker-token-commands.js';

const TOKEN = 'cli-worker-token-4a9e2c7b1d-secret';
const FILE_TOKEN = 'cli-file-token-6f0b3d8a2e-secret';
const ADMIN_KEY = 'cli-admin-key-1c5e9a3f7b-secret';
const SIGNING_KEY = 'cli-signing-key-8d2a6e0c4f-secret';
const SECRETS = [TOKEN, FILE_TOKEN, ADMIN_KEY, SIGNING_KEY];

class Capture implements OutputStream {
  private readonly chunks: Buffer[] = [];
  write(chunk: string | Uint8Array, callback?: (err?: Error | null) => void): boolean {
    this.chunks.push(Buffer.from(chunk));
    callback?.(null);
    return true;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

function config(mutate: (c: StacyConfig) => void = () => undefined): StacyConfig {
  const c = defaultConfig();
  mutate(c);
  return c;
}

function resolveIo(
  files: Record<string, string> = {},
  env: Record<string, string> = {},
): ResolveIo {
  return {
    env,
    hostname: () => 'box-7',
    readFile: (path) => {
      const v = files[path];
      if (v === undefined) {
        const err = new Error(`ENOENT: ${path}`) as NodeJS.ErrnoException;
        err.code = 'ENOENT';
        throw err;
      }
      return v;
    },
  };
}

describe('the worker preview gateway address', () => {
  test('listens beside the RPC server on a free port unless told otherwise', () => {
    expect(workerPreviewListen({}, config(), '10.0.0.5:7430')).toBe('10.0.0.5:0');
    expect(workerPreviewListen({ listen: '[::1]:7430' }, config(), '')).toBe('[::1]:0');
    expect(workerPreviewListen({}, config(), '')).toBe('');
    expect(workerPreviewListen({ previewListen: '0.0.0.0:7480' }, config(), '10.0.0.5:7430')).toBe(
      '0.0.0.0:7480',
    );
    const set = config((c) => {
      c.preview.listen_addr = '10.0.0.5:7481';
    });
    expect(workerPreviewListen({}, set, '10.0.0.5:7430')).toBe('10.0.0.5:7481');
    const off = config((c) => {
      c.preview.enabled = false;
    });
    expect(workerPreviewListen({ previewListen: '0.0.0.0:1' }, off, '10.0.0.5:7430')).toBe('');
  });

  test('a bad --preview-listen is a usage error naming the flag', () => {
    expect(() =>
      resolveWorkerSettings(
        { previewListen: 'nonsense' },
        config((c) => {
          c.auth.worker_token = TOKEN;
        }),
        resolveIo(),
      ),
    ).toThrow(/--preview-listen/);
  });

  test('advertises the listen host, or the RPC URL host for an all-interfaces listen', () => {
    expect(
      advertisedPreviewUrl({
        listenHost: '10.0.0.5',
        boundPort: 40000,
        tls: false,
        rpcUrl: 'http://x:1',
      }),
    ).toBe('http://10.0.0.5:40000');
    expect(
      advertisedPreviewUrl({
        listenHost: '0.0.0.0',
        boundPort: 40000,
        tls: true,
        rpcUrl: 'https://worker-a.internal:7430',
      }),
    ).toBe('https://worker-a.internal:40000');
    expect(
      advertisedPreviewUrl({
        listenHost: '::1',
        boundPort: 1,
        tls: false,
        rpcUrl: 'http://[::1]:2',
      }),
    ).toBe('http://[::1]:1');
    expect(isLoopbackHost('127.0.0.1')).toBe(true);
    expect(isLoopbackHost('[::1]')).toBe(true);
    expect(isLoopbackHost('localhost')).toBe(true);
    expect(isLoopbackHost('10.0.0.5')).toBe(false);
  });
});

describe('resolveWorkerSettings', () => {
  test('config supplies every value when no flag is given', () => {
    const s = resolveWorkerSettings(
      {},
      config((c) => {
        c.worker.id = 'worker-cfg';
        c.worker.control_plane_url = 'http://cp.internal:7423';
        c.worker.listen_addr = '0.0.0.0:7430';
        c.worker.advertise_addr = '10.0.0.5:7430';
        c.worker.preview_domain = 'preview.cfg';
        c.worker.heartbeat_interval = '2s';
        c.worker.shutdown_timeout = '45s';
        c.defaults.max_sandboxes = 9;
        c.defaults.max_sandboxes_per_owner = 2;
        c.auth.worker_token = TOKEN;
        c.auth.worker_signing_keys = ['old-key'];
        c.auth.worker_revoked_token_ids = ['jti-9'];
      }),
      resolveIo(),
    );
    expect(s).toMatchObject({
      workerId: 'worker-cfg',
      controlPlaneUrl: 'http://cp.internal:7423',
      listenAddr: '0.0.0.0:7430',
      advertiseAddr: '10.0.0.5:7430',
      previewDomain: 'preview.cfg',
      heartbeatIntervalMs: 2000,
      shutdownTimeoutMs: 45000,
      maxSandboxes: 9,
      maxSandboxesPerOwner: 2,
      tokenSource: { kind: 'static', token: TOKEN },
      rpcAuth: { staticToken: TOKEN, signingKeys: ['old-key'], revokedTokenIds: ['jti-9'] },
      once: false,
      warnings: [],
    });
  });

  test('flags override config', () => {
    const s = resolveWorkerSettings(
      {
        id: 'worker-flag',
        controlPlane: 'http://127.0.0.1:9999',
        listen: '127.0.0.1:0',
        advertiseAddr: 'w.example:1234',
        previewDomain: 'preview.flag',
        heartbeatInterval: '1500ms',
        shutdownTimeout: '0s',
        once: true,
      },
      config((c) => {
        c.worker.id = 'worker-cfg';
        c.worker.listen_addr = '0.0.0.0:7430';
        c.worker.preview_domain = 'preview.cfg';
        c.auth.worker_token = TOKEN;
      }),
      resolveIo(),
    );
    expect(s).toMatchObject({
      workerId: 'worker-flag',
      controlPlaneUrl: 'http://127.0.0.1:9999',
      listenAddr: '127.0.0.1:0',
      advertiseAddr: 'w.example:1234',
      previewDomain: 'preview.flag',
      heartbeatIntervalMs: 1500,
      shutdownTimeoutMs: 0,
      once: true,
    });
  });

  test('the worker id falls back to the host name; the preview domain to server.preview_domain', () => {
    const s = resolveWorkerSettings(
      {},
      config((c) => {
        c.auth.worker_token = TOKEN;
        c.server.preview_domain = 'preview.server';
      }),
      resolveIo(),
    );
    expect(s.workerId).toBe('box-7');
    expect(s.previewDomain).toBe('preview.server');
  });

  test('--worker-token-file beats the config token, which the RPC server still accepts', () => {
    const s = resolveWorkerSettings(
      { workerTokenFile: '/run/token' },
      config((c) => {
        c.auth.worker_token = TOKEN;
      }),
      resolveIo(),
    );
    expect(s.tokenSource).toEqual({ kind: 'file', path: '/run/token' });
    expect(s.rpcAuth.staticToken).toBe(TOKEN);
  });

  test('--worker-token and --worker-token-file together are a usage error', () => {
    expect(() =>
      resolveWorkerSettings(
        { workerToken: TOKEN, workerTokenFile: '/run/token' },
        config(),
        resolveIo(),
      ),
    ).toThrow(WorkerUsageError);
  });

  test('the bootstrap admin key comes from its file, else the flag, else the env var, and beats a static token', () => {
    const cfg = config((c) => {
      c.auth.worker_token = TOKEN;
    });
    const fromFile = resolveWorkerSettings(
      { bootstrapAdminKeyFile: '/run/admin', bootstrapTokenTtl: '2m' },
      cfg,
      resolveIo(
        { '/run/admin': `${ADMIN_KEY}\n` },
        { STACYVM_WORKER_BOOTSTRAP_ADMIN_KEY: 'env-key' },
      ),
    );
    expect(fromFile.tokenSource).toEqual({ kind: 'bootstrap', adminKey: ADMIN_KEY, ttl: '2m' });
    const fromEnv = resolveWorkerSettings(
      {},
      cfg,
      resolveIo({}, { STACYVM_WORKER_BOOTSTRAP_ADMIN_KEY: 'env-key' }),
    );
    expect(fromEnv.tokenSource).toEqual({ kind: 'bootstrap', adminKey: 'env-key', ttl: '5m' });
    expect(fromEnv.warnings).toEqual([]);
    expect(() =>
      resolveWorkerSettings(
        { bootstrapAdminKey: ADMIN_KEY, bootstrapAdminKeyFile: '/run/admin' },
        cfg,
        resolveIo({ '/run/admin': ADMIN_KEY }),
      ),
    ).toThrow(/not both/);
  });

  test('secrets given on argv are accepted with a warning that names the flag, not the value', () => {
    const s = resolveWorkerSettings(
      { workerToken: TOKEN, bootstrapAdminKey: ADMIN_KEY },
      config(),
      resolveIo(),
    );
    expect(s.tokenSource.kind).toBe('bootstrap');
    expect(s.warnings).toHaveLength(2);
    expect(s.warnings.join('\n')).toMatch(/--worker-token is visible/);
    expect(s.warnings.join('\n')).toMatch(/--bootstrap-admin-key is visible/);
    for (const secret of SECRETS) expect(s.warnings.join('\n')).not.toContain(secret);
  });

  test('--worker-signing-key-file self-signs and joins the rotation keys for RPC verification', () => {
    const s = resolveWorkerSettings(
      { workerSigningKeyFile: '/run/key' },
      config((c) => {
        c.auth.worker_signing_key = 'config-key';
        c.auth.worker_signing_keys = ['old-key'];
      }),
      resolveIo({ '/run/key': ` ${SIGNING_KEY} ` }),
    );
    expect(s.tokenSource).toEqual({ kind: 'signed', signingKey: SIGNING_KEY });
    expect(s.rpcAuth.signingKeys).toEqual([SIGNING_KEY, 'old-key']);
    expect(s.rpcAuth.staticToken).toBeUndefined();
  });

  test('an unreadable or empty secret file names the flag and path only', () => {
    expect(() =>
      resolveWorkerSettings({ workerSigningKeyFile: '/nope' }, config(), resolveIo()),
    ).toThrow('--worker-signing-key-file: cannot read /nope (ENOENT)');
    expect(() =>
      resolveWorkerSettings(
        { bootstrapAdminKeyFile: '/empty' },
        config(),
        resolveIo({ '/empty': '\n' }),
      ),
    ).toThrow('--bootstrap-admin-key-file: /empty is empty');
  });

  test('no credential at all is a usage error', () => {
    expect(() => resolveWorkerSettings({}, config(), resolveIo())).toThrow(/no worker credential/);
  });

  test('a bad duration flag is a usage error', () => {
    const cfg = config((c) => {
      c.auth.worker_token = TOKEN;
    });
    expect(() => resolveWorkerSettings({ heartbeatInterval: 'often' }, cfg, resolveIo())).toThrow(
      /--heartbeat-interval/,
    );
    expect(() => resolveWorkerSettings({ heartbeatInterval: '0s' }, cfg, resolveIo())).toThrow(
      /--heartbeat-interval must be positive/,
    );
  });

  test('worker.rpc_tls reads the server certificate, key and client CA', () => {
    const cfg = config((c) => {
      c.auth.worker_token = TOKEN;
      c.worker.rpc_tls.enabled = true;
    });
    expect(() => resolveWorkerSettings({}, cfg, resolveIo())).toThrow(/server_cert_file/);
    cfg.worker.rpc_tls.server_cert_file = '/tls/cert.pem';
    cfg.worker.rpc_tls.server_key_file = '/tls/key.pem';
    cfg.worker.rpc_tls.client_ca_file = '/tls/ca.pem';
    const s = resolveWorkerSettings(
      {},
      cfg,
      resolveIo({ '/tls/cert.pem': 'CERT', '/tls/key.pem': 'KEY', '/tls/ca.pem': 'CA' }),
    );
    expect(s.rpcTls?.cert.toString()).toBe('CERT');
    expect(s.rpcTls?.key.toString()).toBe('KEY');
    expect(s.rpcTls?.clientCa?.toString()).toBe('CA');
  });
});

// ---------------------------------------------------------------------------
// The command, in-process

interface RunResult {
  exitCode: number | undefined;
  exited: number | undefined;
  stdout: string;
  stderr: string;
  logs: string;
}

interface Harness {
  tmp: string;
  /** Runs `stacyvm <args>`; `during` runs while the command is in flight (for long-running workers). */
  run(
    args: string[],
    opts?: {
      env?: Record<string, string>;
      during?: (signals: Map<string, () => void>) => Promise<void>;
    },
  ): Promise<RunResult>;
}

const test = base.extend<{ h: Harness }>({
  // eslint-disable-next-line no-empty-pattern
  h: async ({}, use) => {
    const tmp = mkdtempSync(join(tmpdir(), 'stacyvm-worker-cmd-test-'));
    try {
      await use({
        tmp,
        async run(args, opts = {}) {
          const stdout = new Capture();
          const stderr = new Capture();
          const logStream = new PassThrough();
          const logChunks: Buffer[] = [];
          logStream.on('data', (c: Buffer) => logChunks.push(c));
          const signals = new Map<string, () => void>();
          const result: RunResult = {
            exitCode: undefined,
            exited: undefined,
            stdout: '',
            stderr: '',
            logs: '',
          };
          const env = { HOME: tmp, ...opts.env };
          const deps: WorkerCommandDeps = {
            stdout,
            stderr,
            env,
            setExitCode: (c) => {
              result.exitCode = c;
            },
            exit: (c) => {
              result.exited ??= c;
            },
            onSignal: (sig, handler) => {
              signals.set(sig, handler);
            },
            hostname: () => 'test-host',
            logDestination: logStream,
            cwd: tmp,
            homeDir: tmp,
          };
          const program = new Command('stacyvm').exitOverride().configureOutput({
            writeOut: (s) => void stdout.write(s),
            writeErr: (s) => void stderr.write(s),
          });
          registerClientCommands(program, { stdout, stderr, env, setExitCode: deps.setExitCode! });
          registerWorkerTokenCommands(program, {
            stdout,
            stderr,
            env,
            setExitCode: deps.setExitCode!,
          });
          registerWorkerCommand(program, deps);
          const parsing = program.parseAsync(['node', 'stacyvm', ...args]);
          if (opts.during !== undefined) await opts.during(signals);
          await parsing;
          result.stdout = stdout.text();
          result.stderr = stderr.text();
          result.logs = Buffer.concat(logChunks).toString('utf8');
          return result;
        },
      });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  },
});

function workerYaml(h: Harness, extra = ''): string {
  const path = join(h.tmp, 'worker.yaml');
  writeFileSync(
    path,
    `worker:
  id: "worker-yaml"
  heartbeat_interval: "1h"
providers:
  default: "mock"
  mock:
    enabled: true
    base_dir: "${join(h.tmp, 'mock')}"
  docker:
    enabled: false
logging:
  level: "debug"
${extra}`,
  );
  return path;
}

const heartbeats = (s: TestServer): Recorded[] =>
  s.requests.filter((r) => r.url.endsWith('/heartbeat'));
const statusOf = (r: Recorded): unknown =>
  (JSON.parse(r.body.toString('utf8')) as Record<string, unknown>)['status'];

function acceptAll(server: TestServer): void {
  server.handle((_req, res) => {
    res.setHeader('Content-Type', 'application/json');
    res.end('{"status":"online"}');
  });
}

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function expectNoSecrets(r: RunResult): void {
  for (const secret of SECRETS) {
    expect(r.stdout).not.toContain(secret);
    expect(r.stderr).not.toContain(secret);
    expect(r.logs).not.toContain(secret);
  }
}

describe('stacyvm worker', () => {
  test('--once sends one heartbeat with the token file and flags over config, then exits 0', async ({
    h,
  }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const tokenFile = join(h.tmp, 'token');
      writeFileSync(tokenFile, `${FILE_TOKEN}\n`);
      const cfg = workerYaml(h, `auth:\n  worker_token: "${TOKEN}"\n`);
      const r = await h.run([
        'worker',
        '--once',
        '--config',
        cfg,
        '--control-plane',
        cp.url,
        '--id',
        'worker-flag',
        '--worker-token-file',
        tokenFile,
        '--preview-domain',
        'preview.flag',
      ]);
      expect(r.exited).toBe(0);
      expect(heartbeats(cp)).toHaveLength(1);
      const beat = heartbeats(cp)[0]!;
      expect(beat.url).toBe('/api/v1/worker/worker-flag/heartbeat');
      expect(beat.headers['x-worker-token']).toBe(FILE_TOKEN);
      const body = JSON.parse(beat.body.toString('utf8')) as Record<string, unknown>;
      expect(body).toMatchObject({
        hostname: 'test-host',
        status: 'online',
        providers: ['mock'],
        capacity: { preview_domain: 'preview.flag' },
      });
      expectNoSecrets(r);
    });
  });

  test('STACYVM_CONFIG is honoured and STACYVM_AUTH_WORKER_TOKEN supplies the token', async ({
    h,
  }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const cfg = join(h.tmp, 'env-worker.yaml');
      writeFileSync(
        cfg,
        `worker:\n  id: "worker-env"\n  control_plane_url: "${cp.url}"\nproviders:\n  default: "mock"\n  mock:\n    base_dir: "${join(h.tmp, 'mock')}"\n  docker:\n    enabled: false\n`,
      );
      const r = await h.run(['worker', '--once'], {
        env: { STACYVM_CONFIG: cfg, STACYVM_AUTH_WORKER_TOKEN: TOKEN },
      });
      expect(r.exited).toBe(0);
      expect(heartbeats(cp).map((b) => b.url)).toEqual(['/api/v1/worker/worker-env/heartbeat']);
      expect(heartbeats(cp)[0]!.headers['x-worker-token']).toBe(TOKEN);
      expectNoSecrets(r);
    });
  });

  test('--once with a refused heartbeat exits 1 with the control plane message and no secret', async ({
    h,
  }) => {
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.statusCode = 401;
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ code: 'UNAUTHORIZED', message: 'invalid worker credentials' }));
      });
      const r = await h.run([
        'worker',
        '--once',
        '--config',
        workerYaml(h),
        '--control-plane',
        cp.url,
        '--worker-token',
        TOKEN,
      ]);
      expect(r.exited).toBe(1);
      expect(r.stderr).toContain('invalid worker credentials');
      expect(r.logs).toMatch(/--worker-token is visible to other users/);
      expectNoSecrets(r);
    });
  });

  test('a usage mistake exits 2 before contacting anyone', async ({ h }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const r = await h.run([
        'worker',
        '--config',
        workerYaml(h),
        '--control-plane',
        cp.url,
        '--worker-token',
        TOKEN,
        '--worker-token-file',
        join(h.tmp, 'token'),
      ]);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(/--worker-token or --worker-token-file/);
      expect(cp.requests).toHaveLength(0);
      expectNoSecrets(r);
    });
  });

  test('an all-interfaces --listen without --advertise-addr is refused', async ({ h }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const r = await h.run(
        ['worker', '--config', workerYaml(h), '--control-plane', cp.url, '--listen', '0.0.0.0:0'],
        { env: { STACYVM_AUTH_WORKER_TOKEN: TOKEN } },
      );
      expect(r.exited).toBe(2);
      expect(r.stderr).toMatch(/set worker\.advertise_addr \(or --advertise-addr\)/);
      expect(cp.requests).toHaveLength(0);
    });
  });

  test('runs until SIGTERM, then drains: draining and offline heartbeats, exit 0', async ({
    h,
  }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const r = await h.run(
        [
          'worker',
          '--config',
          workerYaml(h),
          '--control-plane',
          cp.url,
          '--listen',
          '127.0.0.1:0',
          '--advertise-addr',
          '127.0.0.1',
        ],
        {
          env: { STACYVM_AUTH_WORKER_TOKEN: TOKEN },
          during: async (signals) => {
            await until(() => heartbeats(cp).length === 1, 'the first heartbeat');
            const body = JSON.parse(heartbeats(cp)[0]!.body.toString('utf8')) as {
              capacity: { rpc_url: string };
            };
            expect(body.capacity.rpc_url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
            const health = await fetch(`${body.capacity.rpc_url}/health`);
            expect(health.status).toBe(200);
            signals.get('SIGTERM')!();
          },
        },
      );
      expect(heartbeats(cp).map(statusOf)).toEqual(['online', 'draining', 'offline']);
      expect(r.exited).toBe(0);
      expectNoSecrets(r);
    });
  });

  test('runs a preview gateway beside the RPC server and advertises it as preview_url', async ({
    h,
  }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const r = await h.run(
        [
          'worker',
          '--config',
          workerYaml(h),
          '--control-plane',
          cp.url,
          '--listen',
          '127.0.0.1:0',
          '--preview-domain',
          'w.test',
        ],
        {
          env: { STACYVM_AUTH_WORKER_TOKEN: TOKEN },
          during: async (signals) => {
            await until(() => heartbeats(cp).length === 1, 'the first heartbeat');
            const body = JSON.parse(heartbeats(cp)[0]!.body.toString('utf8')) as {
              capacity: { rpc_url: string; preview_url?: string; preview_domain: string };
            };
            expect(body.capacity.preview_domain).toBe('w.test');
            expect(body.capacity.preview_url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
            expect(body.capacity.preview_url).not.toBe(body.capacity.rpc_url);
            const port = Number(new URL(body.capacity.preview_url ?? '').port);
            const host = '3000-sb-0123abcd.w.test';
            // Only the control plane may call it: without the worker credential, 401.
            const anon = await httpCall(port, host, '/');
            expect(anon.status).toBe(401);
            // With it, the worker resolves the sandbox itself: this one does not exist here.
            const relayed = await httpCall(port, host, '/', {
              headers: { 'x-worker-id': 'worker-yaml', 'x-worker-token': TOKEN },
            });
            expect(relayed.status).toBe(404);
            expect(relayed.headers['x-stacyvm-preview-error']).toBe('sandbox_not_found');
            signals.get('SIGTERM')!();
          },
        },
      );
      expect(r.exited).toBe(0);
      expectNoSecrets(r);
    });
  });

  test('a second signal stops at once with exit 1', async ({ h }) => {
    await withCannedServer(async (cp) => {
      acceptAll(cp);
      const r = await h.run(['worker', '--config', workerYaml(h), '--control-plane', cp.url], {
        env: { STACYVM_AUTH_WORKER_TOKEN: TOKEN },
        during: async (signals) => {
          await until(() => heartbeats(cp).length === 1, 'the first heartbeat');
          signals.get('SIGINT')!();
          signals.get('SIGINT')!();
        },
      });
      expect(heartbeats(cp).map(statusOf)).toContain('offline');
      await until(() => r.exited !== undefined, 'the exit');
      expect(r.exited).toBe(1);
    });
  });

  test('`worker token` still works next to the worker command', async ({ h }) => {
    const keyFile = join(h.tmp, 'signing-key');
    writeFileSync(keyFile, SIGNING_KEY);
    const r = await h.run([
      'worker',
      'token',
      'issue',
      'worker-a',
      '--signing-key-file',
      keyFile,
      '--format',
      'json',
    ]);
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      worker_id: 'worker-a',
      audience: 'worker:control-plane',
    });
    expect(r.exited).toBeUndefined();
  });
});

describe('stacyvm worker drain', () => {
  test('posts to the admin drain route with the admin key from the env and prints the answer', async ({
    h,
  }) => {
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ id: 'worker-a', status: 'draining' }));
      });
      const r = await h.run(['--server', cp.url, 'worker', 'drain', 'worker-a'], {
        env: { STACYVM_ADMIN_API_KEY: ADMIN_KEY },
      });
      expect(r.exitCode).toBe(0);
      expect(cp.requests).toHaveLength(1);
      const req = cp.requests[0]!;
      expect(req.method).toBe('POST');
      expect(req.url).toBe('/api/v1/admin/workers/worker-a/drain');
      expect(req.headers['x-admin-api-key']).toBe(ADMIN_KEY);
      expect(JSON.parse(r.stdout)).toEqual({ id: 'worker-a', status: 'draining' });
      expect(r.stderr).toBe('');
      expectNoSecrets(r);
    });
  });

  test('--admin-api-key after the id works, with a process-list warning', async ({ h }) => {
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.setHeader('Content-Type', 'application/json');
        res.end('{"id":"w-1"}');
      });
      const r = await h.run([
        'worker',
        'drain',
        'w-1',
        '--admin-api-key',
        ADMIN_KEY,
        '--server',
        cp.url,
      ]);
      expect(r.exitCode).toBe(0);
      expect(cp.requests[0]!.headers['x-admin-api-key']).toBe(ADMIN_KEY);
      expect(r.stderr).toMatch(/--admin-api-key is visible/);
      expectNoSecrets(r);
    });
  });

  test('an error answer prints the envelope message and exits 1', async ({ h }) => {
    await withCannedServer(async (cp) => {
      cp.handle((_req, res) => {
        res.statusCode = 404;
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ code: 'NOT_FOUND', message: 'not found: worker "ghost"' }));
      });
      const r = await h.run(['--server', cp.url, 'worker', 'drain', 'ghost'], {
        env: { STACYVM_ADMIN_API_KEY: ADMIN_KEY },
      });
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toContain('not found: worker "ghost"');
      expect(r.stdout).toBe('');
      expectNoSecrets(r);
    });
  });

  test('without an admin key it is a usage error and sends nothing', async ({ h }) => {
    await withCannedServer(async (cp) => {
      const r = await h.run(['--server', cp.url, 'worker', 'drain', 'worker-a']);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(/STACYVM_ADMIN_API_KEY/);
      expect(cp.requests).toHaveLength(0);
    });
  });

  test('an unreachable control plane is reported with the cause', async ({ h }) => {
    let url = '';
    await withCannedServer(async (cp) => {
      url = cp.url;
    });
    const r = await h.run(['--server', url, 'worker', 'drain', 'worker-a'], {
      env: { STACYVM_ADMIN_API_KEY: ADMIN_KEY },
    });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/cannot reach the control plane .*ECONNREFUSED/);
    expectNoSecrets(r);
  });
});
