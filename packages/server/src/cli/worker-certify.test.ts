import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { describe, expect, test as base } from 'vitest';
import { issueWorkerToken, WORKER_AUDIENCE_CONTROL_PLANE } from '../domain/worker-token.js';
import type { OutputStream } from './client-commands.js';
import {
  CERTIFICATION_EXPIRED_TOKEN_ID,
  CERTIFICATION_TOKEN_ID,
  certifyWorkerIdentity,
  demoteHeadings,
  registerWorkerCertifyCommand,
  renderCertificationReport,
} from './worker-certify.js';
import type { CertificationReport, WorkerCertifyDeps } from './worker-certify.js';
import { registerWorkerTokenCommands } from './worker-token-commands.js';

const KEY = 'certify-test-signing-key-5e1c9a7f3b';
const GEN_KEY = 'certify-generated-key-0a9b8c7d6e5f';
const WRONG_KEY = 'certify-wrong-key-1f2e3d4c5b6a';
const NOW = Date.UTC(2026, 4, 9, 10, 30, 0);
const FIVE_MIN = 5 * 60_000;

const CHECK_NAMES = [
  'issue',
  'inspect',
  'verify',
  'revoked_token_refused',
  'wrong_key_refused',
  'expired_token_refused',
  'wrong_audience_refused',
  'wrong_worker_refused',
  'rotation_plan',
];

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

interface CliResult {
  code: number | undefined;
  stdout: string;
  stderr: string;
}

type Run = (
  args: string[],
  deps?: Partial<WorkerCertifyDeps> & { withTokenCommands?: boolean },
) => Promise<CliResult>;

/** The tokens a run with `key` at `NOW` issues (the certification token and the expired one). */
function tokensFor(key: string, workerId = 'worker-a', ttlMs = FIVE_MIN): string[] {
  const base = { workerId, ttlMs, audience: WORKER_AUDIENCE_CONTROL_PLANE } as const;
  return [
    issueWorkerToken({ ...base, tokenId: CERTIFICATION_TOKEN_ID }, key, NOW).token,
    issueWorkerToken({ ...base, tokenId: CERTIFICATION_EXPIRED_TOKEN_ID }, key, NOW - ttlMs - 1000)
      .token,
  ];
}

/** No part of a key or a token (each of its segments but the fixed prefix) may be shown. */
function expectNoSecrets(text: string, keys: string[], tokens: string[]): void {
  for (const key of keys) expect(text).not.toContain(key);
  for (const token of tokens) {
    expect(text).not.toContain(token);
    const [, payload, signature] = token.split('.');
    expect(text).not.toContain(payload);
    expect(text).not.toContain(signature);
  }
  expect(text).not.toMatch(/stacyvm-worker-v1\.[A-Za-z0-9_-]{8}/);
}

const test = base.extend<{ tmp: string; run: Run }>({
  // eslint-disable-next-line no-empty-pattern
  tmp: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-certify-test-'));
    try {
      await use(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
  run: async ({ tmp }, use) => {
    await use(async (args, { withTokenCommands, ...deps } = {}) => {
      const stdout = new Capture();
      const stderr = new Capture();
      let code: number | undefined;
      const program = new Command('stacyvm').exitOverride().configureOutput({
        writeOut: (s) => void stdout.write(s),
        writeErr: (s) => void stderr.write(s),
      });
      if (withTokenCommands !== false) {
        registerWorkerTokenCommands(program, {
          stdout,
          stderr,
          env: {},
          setExitCode: (c) => void (code = c),
          now: () => NOW,
        });
      }
      const keys = [GEN_KEY, WRONG_KEY];
      registerWorkerCertifyCommand(program, {
        stdout,
        stderr,
        setExitCode: (c) => void (code = c),
        now: () => NOW,
        generateKey: () => keys.shift() ?? 'certify-spare-key-99887766',
        tempRoot: tmp,
        ...deps,
      });
      try {
        await program.parseAsync(args, { from: 'user' });
      } catch (err) {
        if (!(err instanceof CommanderError)) throw err;
        code = err.exitCode === 0 ? 0 : 2;
      }
      return { code, stdout: stdout.text(), stderr: stderr.text() };
    });
  },
});

function keyFile(tmp: string, content = `${KEY}\n`): string {
  const file = join(tmp, 'signing.key');
  writeFileSync(file, content, { mode: 0o600 });
  return file;
}

describe('certifyWorkerIdentity', () => {
  const input = {
    workerId: 'worker-a',
    ttlMs: FIVE_MIN,
    signingKey: KEY,
    signingKeySource: 'file' as const,
    wrongKey: WRONG_KEY,
    nowMs: NOW,
  };

  test('passes every check for a sound key and names them in order', () => {
    const { report, rotationPlan } = certifyWorkerIdentity(input);
    expect(report).toMatchObject({
      status: 'pass',
      generated_at: '2026-05-09T10:30:00Z',
      worker_id: 'worker-a',
      audience: 'worker:control-plane',
      ttl: '5m0s',
      token_id: 'certification-token-id',
      signing_key_source: 'file',
    });
    expect(report.checks.map((c) => c.name)).toEqual(CHECK_NAMES);
    for (const c of report.checks) {
      expect(c.status, `${c.name}: ${c.detail}`).toBe('pass');
      expect(c.detail).not.toBe('');
    }
    expect(report.checks.find((c) => c.name === 'revoked_token_refused')?.detail).toContain(
      'refused (worker token "certification-token-id" has been revoked)',
    );
    expect(report.checks.find((c) => c.name === 'expired_token_refused')?.detail).toContain(
      'expired at 2026-05-09T10:29:59Z',
    );
    expect(rotationPlan?.max_token_ttl).toBe('5m0s');
  });

  test('fails the wrong-key check, and the report, when the "wrong" key is the signing key', () => {
    const { report } = certifyWorkerIdentity({ ...input, wrongKey: KEY });
    expect(report.status).toBe('fail');
    const failed = report.checks.filter((c) => c.status === 'fail');
    expect(failed.map((c) => c.name)).toEqual(['wrong_key_refused']);
    expect(failed[0]?.detail).toBe(
      'verify with a different key: accepted, but must be refused (bad_signature)',
    );
  });

  test('a token that cannot be issued fails issue and every check that needs it', () => {
    const { report } = certifyWorkerIdentity({ ...input, signingKey: '   ' });
    expect(report.status).toBe('fail');
    const byName = Object.fromEntries(report.checks.map((c) => [c.name, c]));
    expect(byName['issue']?.status).toBe('fail');
    expect(byName['verify']).toEqual({
      name: 'verify',
      status: 'fail',
      detail: 'not run: no token was issued',
    });
    expect(byName['expired_token_refused']?.status).toBe('fail');
  });

  test('the ttl shapes the token lifetime, the report and the rotation plan', () => {
    const { report, rotationPlan } = certifyWorkerIdentity({ ...input, ttlMs: 90_000 });
    expect(report.status).toBe('pass');
    expect(report.ttl).toBe('1m30s');
    expect(rotationPlan?.max_token_ttl).toBe('1m30s');
    expect(report.checks.find((c) => c.name === 'inspect')?.detail).toContain('1m30s lifetime');
  });

  test('markdown demotes the rotation plan headings but not fenced code', () => {
    expect(demoteHeadings('# A\n## B\n```\n# not a heading\n```\ntext')).toBe(
      '## A\n### B\n```\n# not a heading\n```\ntext',
    );
    const md = renderCertificationReport(certifyWorkerIdentity(input), 'markdown');
    expect(md.startsWith('# Worker identity certification\n')).toBe(true);
    expect(md.match(/^# /gm)).toHaveLength(1);
    expect(md).toContain('## Signed worker token rotation plan');
    expect(md).toContain('### Steps');
  });
});

describe('stacyvm worker token certify', () => {
  test('text report with a key file: every check passes, exit 0', async ({ run, tmp }) => {
    const r = await run(['worker', 'token', 'certify', '--signing-key-file', keyFile(tmp)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('Worker identity certification: PASS\n');
    expect(r.stdout).toContain('worker_id:    worker-a\n');
    expect(r.stdout).toContain('token_id:     certification-token-id\n');
    expect(r.stdout).toContain('signing key:  --signing-key-file\n');
    for (const name of CHECK_NAMES) expect(r.stdout).toMatch(new RegExp(`\\[pass\\] ${name} `));
    expect(r.stdout).not.toContain('[fail]');
  });

  test('json report has the documented fields and no rotation plan', async ({ run, tmp }) => {
    const r = await run([
      'worker',
      'token',
      'certify',
      'worker-b',
      '--format',
      'json',
      '--ttl',
      '2m',
      '--signing-key-file',
      keyFile(tmp),
    ]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as CertificationReport;
    expect(Object.keys(report)).toEqual([
      'status',
      'generated_at',
      'worker_id',
      'audience',
      'ttl',
      'token_id',
      'signing_key_source',
      'checks',
    ]);
    expect(report).toMatchObject({
      status: 'pass',
      generated_at: '2026-05-09T10:30:00Z',
      worker_id: 'worker-b',
      audience: 'worker:control-plane',
      ttl: '2m0s',
      token_id: 'certification-token-id',
      signing_key_source: 'file',
    });
    for (const c of report.checks) expect(Object.keys(c)).toEqual(['name', 'status', 'detail']);
    expect(report.checks.map((c) => c.name)).toEqual(CHECK_NAMES);
  });

  test('markdown report carries the checks and the rotation plan', async ({ run, tmp }) => {
    const r = await run([
      'worker',
      'token',
      'certify',
      '--format',
      'markdown',
      '--signing-key-file',
      keyFile(tmp),
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('| Status | **pass** |');
    expect(r.stdout).toContain('| verify | pass | signature, audience worker:control-plane');
    expect(r.stdout).toContain('## Signed worker token rotation plan');
    expect(r.stdout).toContain('auth.worker_signing_keys[0]');
  });

  test('never shows the key or any issued token, in any format, from a key file', async ({
    run,
    tmp,
  }) => {
    const file = keyFile(tmp);
    const tokens = [...tokensFor(KEY), ...tokensFor(KEY, 'worker-z', 60_000)];
    for (const format of ['text', 'json', 'markdown']) {
      for (const extra of [[], ['worker-z', '--ttl', '1m']]) {
        const r = await run([
          'worker',
          'token',
          'certify',
          ...extra,
          '--format',
          format,
          '--signing-key-file',
          file,
        ]);
        expect(r.code).toBe(0);
        expect(r.stdout.length).toBeGreaterThan(200);
        expectNoSecrets(r.stdout + r.stderr, [KEY, GEN_KEY, WRONG_KEY], tokens);
      }
    }
  });

  test('without a key file: generates one in a temporary directory, deletes it, and never shows it', async ({
    run,
    tmp,
  }) => {
    for (const format of ['text', 'json', 'markdown']) {
      const r = await run(['worker', 'token', 'certify', '--format', format]);
      expect(r.code, r.stderr).toBe(0);
      expectNoSecrets(r.stdout + r.stderr, [GEN_KEY, WRONG_KEY], tokensFor(GEN_KEY));
      expect(readdirSync(tmp)).toEqual([]);
    }
    const json = await run(['worker', 'token', 'certify', '--format', 'json']);
    expect((JSON.parse(json.stdout) as CertificationReport).signing_key_source).toBe('generated');
  });

  test('--output writes the report to a file and says so on stderr', async ({ run, tmp }) => {
    const out = join(tmp, 'report.json');
    const r = await run([
      'worker',
      'token',
      'certify',
      '--format',
      'json',
      '--output',
      out,
      '--signing-key-file',
      keyFile(tmp),
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`worker identity certification pass: report written to ${out}\n`);
    const written = readFileSync(out, 'utf8');
    expect((JSON.parse(written) as CertificationReport).status).toBe('pass');
    expectNoSecrets(written, [KEY], tokensFor(KEY));
  });

  test('an unwritable --output exits 1', async ({ run, tmp }) => {
    const r = await run([
      'worker',
      'token',
      'certify',
      '--output',
      join(tmp, 'missing-dir', 'report.txt'),
      '--signing-key-file',
      keyFile(tmp),
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot write .*report\.txt \(ENOENT\)\n$/);
  });

  test('exits 1 with a fail report when a check fails', async ({ run }) => {
    // The "wrong" key comes out equal to the signing key, so a different key is not refused.
    const r = await run(['worker', 'token', 'certify', '--format', 'json'], {
      generateKey: () => GEN_KEY,
    });
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout) as CertificationReport;
    expect(report.status).toBe('fail');
    expect(report.checks.filter((c) => c.status === 'fail').map((c) => c.name)).toEqual([
      'wrong_key_refused',
    ]);
    expectNoSecrets(r.stdout + r.stderr, [GEN_KEY], tokensFor(GEN_KEY));
  });

  test.each([
    [['--format', 'yaml'], '--format must be text, json or markdown'],
    [['--ttl', '16m'], '--ttl must be at most 15m0s'],
    [['--ttl', '500ms'], '--ttl must be at least 1s'],
    [['--ttl', 'soon'], '--ttl: '],
    [['--signing-key-file', '/nonexistent/stacyvm/key'], 'cannot read /nonexistent/stacyvm/key'],
    [['  '], 'the worker id must not be empty'],
    [['bad\u0007id'], 'must not contain control characters'],
    [['--output', ''], '--output must not be empty'],
  ])('usage mistake %j exits 2 without a report', async (args, message) => {
    const tmp = mkdtempSync(join(tmpdir(), 'stacyvm-certify-usage-'));
    try {
      const stdout = new Capture();
      const stderr = new Capture();
      let code: number | undefined;
      const program = new Command('stacyvm').exitOverride();
      registerWorkerCertifyCommand(program, {
        stdout,
        stderr,
        setExitCode: (c) => void (code = c),
        now: () => NOW,
        tempRoot: tmp,
      });
      await program.parseAsync(['worker', 'token', 'certify', ...args], { from: 'user' });
      expect(code).toBe(2);
      expect(stdout.text()).toBe('');
      expect(stderr.text()).toContain(message);
      expect(readdirSync(tmp)).toEqual([]);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test('an empty key file is a usage mistake', async ({ run, tmp }) => {
    const r = await run(['worker', 'token', 'certify', '--signing-key-file', keyFile(tmp, ' \n')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--signing-key-file: .*signing\.key is empty/);
  });

  test('sits beside the other token subcommands without taking over the default issue', async ({
    run,
    tmp,
  }) => {
    const file = keyFile(tmp);
    const issued = await run(['worker', 'token', 'worker-a', '--signing-key-file', file]);
    expect(issued.code).toBe(0);
    expect(issued.stdout).toMatch(/^stacyvm-worker-v1\./);
    const certified = await run(['worker', 'token', 'certify', '--signing-key-file', file]);
    expect(certified.code).toBe(0);
    expect(certified.stdout).toContain('PASS');
    // A program without the token commands still gets `worker token certify`.
    const alone = await run(['worker', 'token', 'certify', '--signing-key-file', file], {
      withTokenCommands: false,
    });
    expect(alone.code).toBe(0);
    expect(alone.stdout).toContain('PASS');
  });
});
