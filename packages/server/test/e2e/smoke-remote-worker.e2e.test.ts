import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanup, CLI, tempDir } from './server-process.js';

/** scripts/smoke-remote-worker.sh at the repo root. */
const SCRIPT = fileURLToPath(
  new URL('../../../../scripts/smoke-remote-worker.sh', import.meta.url),
);
/** scripts/certify-worker-identity.sh at the repo root. */
const CERTIFY = fileURLToPath(
  new URL('../../../../scripts/certify-worker-identity.sh', import.meta.url),
);

const hasCurl = spawnSync('curl', ['--version']).status === 0;
const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

/** A port nothing listens on right now (the OS picks it). */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

interface Run {
  code: number | null;
  out: string;
}

/** Runs the script against the built CLI with its own ports and TMPDIR; bounded by `timeoutMs`. */
async function runSmoke(
  args: string[],
  tmp: string,
  timeoutMs: number,
  binary: string = CLI,
): Promise<Run> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  }
  env['TMPDIR'] = tmp;
  env['STACYVM_REMOTE_SMOKE_CONTROL_PORT'] = String(await freePort());
  let workerPort = await freePort();
  while (String(workerPort) === env['STACYVM_REMOTE_SMOKE_CONTROL_PORT']) {
    workerPort = await freePort();
  }
  env['STACYVM_REMOTE_SMOKE_WORKER_PORT'] = String(workerPort);
  env['STACYVM_REMOTE_SMOKE_WAIT_S'] = '30';
  const child = spawn('bash', [SCRIPT, binary, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  return { code, out };
}

const SETUPS = ['shared', 'per-worker', 'signed'];
const STEPS = [
  'control plane ready',
  'worker-a registered (status online, rpc_url ',
  'DELETE /admin/workers/local',
  'spawn placed sb-',
  'GET sandbox (running on worker-a)',
  'exec "echo remote worker ok" (exit_code 0',
  'streamed exec',
  'file write and read back',
  'logs',
  'destroy (then GET is 404)',
  'POST /admin/workers/worker-a/drain',
  'worker process exited 0 on its own',
  'control plane stopped (exit 0)',
];

function expectAllSteps(out: string, mode: 'plain-HTTP' | 'mTLS'): void {
  for (const setup of SETUPS) {
    for (const s of STEPS) expect(out).toContain(`ok: [${setup}] ${s}`);
    const scheme = mode === 'mTLS' ? 'https' : 'http';
    expect(out).toContain(
      `ok: [${setup}] worker-a registered (status online, rpc_url ${scheme}://`,
    );
  }
  expect(out).toContain(`Remote worker smoke PASSED [${mode}] (shared, per-worker, signed)`);
  expect(out).not.toContain('FAILED');
  // No signed worker token ever reaches the output.
  expect(out).not.toContain('stacyvm-worker-v1.');
}

describe.skipIf(!hasCurl)('scripts/smoke-remote-worker.sh against the built binary', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = tempDir();
  });
  afterAll(() => cleanup(tmp));

  it('passes every auth setup over plain HTTP and leaves nothing behind', async () => {
    const r = await runSmoke([], tmp, 110_000);
    expect(r.code, r.out).toBe(0);
    expectAllSteps(r.out, 'plain-HTTP');
    expect(readdirSync(tmp)).toEqual([]);
  }, 120_000);

  it.skipIf(!hasOpenssl)(
    'passes every auth setup with worker RPC over mTLS, refusing callers without a client certificate',
    async () => {
      const r = await runSmoke(['--mtls'], tmp, 110_000);
      expect(r.code, r.out).toBe(0);
      expectAllSteps(r.out, 'mTLS');
      for (const setup of SETUPS) {
        expect(r.out).toContain(
          `ok: [${setup}] worker RPC refuses curl without a client certificate and plain HTTP`,
        );
      }
      expect(readdirSync(tmp)).toEqual([]);
    },
    120_000,
  );

  it('fails with exit 1, naming the step and showing both logs, when the worker cannot start', async () => {
    const bin = tempDir();
    try {
      const wrapper = join(bin, 'stacyvm');
      writeFileSync(
        wrapper,
        `#!/bin/sh\nif [ "$1" = worker ]; then echo "worker broke on purpose" >&2; exit 3; fi\nexec "${process.execPath}" "${CLI}" "$@"\n`,
        { mode: 0o755 },
      );
      const r = await runSmoke(['--auth', 'shared'], tmp, 60_000, wrapper);
      expect(r.code, r.out).toBe(1);
      expect(r.out).toContain('ok: [shared] control plane ready');
      expect(r.out).toContain(
        'FAILED: [shared] start the worker and wait for its registration: stacyvm worker exited',
      );
      expect(r.out).toContain('--- last 40 lines of the control-plane log:');
      expect(r.out).toContain('--- last 40 lines of the worker log:\nworker broke on purpose');
      expect(r.out).not.toContain('PASSED');
      expect(readdirSync(tmp)).toEqual([]);
    } finally {
      cleanup(bin);
    }
  }, 90_000);

  it('refuses an unknown --auth value with exit 2 before starting anything', async () => {
    const r = await runSmoke(['--auth', 'bogus'], tmp, 30_000);
    expect(r.code).toBe(2);
    expect(r.out).toContain('--auth must be shared, per-worker, signed or all, got "bogus"');
    expect(readdirSync(tmp)).toEqual([]);
  });
});

describe('scripts/certify-worker-identity.sh against the built binary', () => {
  it('passes every check, writes the report where asked, and shows neither key nor token', () => {
    const dir = tempDir();
    try {
      const key = 'e2e-certify-signing-key-4b7d1e9a2c6f';
      const keyPath = join(dir, 'signing.key');
      writeFileSync(keyPath, `${key}\n`, { mode: 0o600 });
      const out = join(dir, 'report.md');
      const r = spawnSync(
        'bash',
        [
          CERTIFY,
          'worker-e2e',
          '--format',
          'markdown',
          '--output',
          out,
          '--signing-key-file',
          keyPath,
        ],
        { env: { ...process.env, STACYVM_BIN: CLI, TMPDIR: dir }, timeout: 30_000 },
      );
      expect(r.status, r.stderr.toString()).toBe(0);
      const report = readFileSync(out, 'utf8');
      expect(report).toContain('| Status | **pass** |');
      expect(report).toContain('| Worker id | `worker-e2e` |');
      expect(report).toContain('## Signed worker token rotation plan');
      for (const text of [report, r.stdout.toString(), r.stderr.toString()]) {
        expect(text).not.toContain(key);
        expect(text).not.toMatch(/stacyvm-worker-v1\.[A-Za-z0-9_-]{8}/);
      }

      const failing = spawnSync('bash', [CERTIFY, '--format', 'yaml'], {
        env: { ...process.env, STACYVM_BIN: CLI },
        timeout: 30_000,
      });
      expect(failing.status).toBe(2);
    } finally {
      cleanup(dir);
    }
  });
});
