import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { describe, expect, test as base } from 'vitest';
import type { OutputStream } from './client-commands.js';
import { registerWorkerTokenCommands } from './worker-token-commands.js';

const KEY = 'cli-active-signing-key-7f3a9c1e5b';
const OLD_KEY = 'cli-previous-signing-key-2d8e4f6a0c';
const NOW = Date.UTC(2026, 0, 1);
const NOW_S = NOW / 1000;

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

interface Cli {
  run(args: string[], opts?: { env?: Record<string, string>; nowMs?: number }): Promise<CliResult>;
  /** Every output seen so far, for the no-secret assertion. */
  transcript: string[];
}

const test = base.extend<{ tmp: string; cli: Cli }>({
  // eslint-disable-next-line no-empty-pattern
  tmp: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'stacyvm-worker-token-test-'));
    try {
      await use(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
  // eslint-disable-next-line no-empty-pattern
  cli: async ({}, use) => {
    const transcript: string[] = [];
    await use({
      transcript,
      async run(args, opts = {}) {
        const stdout = new Capture();
        const stderr = new Capture();
        let code: number | undefined;
        const program = new Command('stacyvm').exitOverride().configureOutput({
          writeOut: (s) => void stdout.write(s),
          writeErr: (s) => void stderr.write(s),
        });
        registerWorkerTokenCommands(program, {
          stdout,
          stderr,
          env: opts.env ?? {},
          setExitCode: (c) => void (code = c),
          now: () => opts.nowMs ?? NOW,
        });
        try {
          await program.parseAsync(args, { from: 'user' });
        } catch (err) {
          if (!(err instanceof CommanderError)) {
            transcript.push(err instanceof Error ? err.message : String(err));
            throw err;
          }
          code = err.exitCode === 0 ? 0 : 2;
        }
        const result = { code, stdout: stdout.text(), stderr: stderr.text() };
        transcript.push(result.stdout, result.stderr);
        return result;
      },
    });
    // No command, successful or not, may show a key anywhere.
    for (const text of transcript) {
      expect(text).not.toContain(KEY);
      expect(text).not.toContain(OLD_KEY);
    }
  },
});

const env = { STACYVM_AUTH_WORKER_SIGNING_KEY: KEY };

async function issue(cli: Cli, extra: string[] = [], e = env): Promise<string> {
  const r = await cli.run(['worker', 'token', 'worker-a', ...extra], { env: e });
  expect(r.code).toBe(0);
  return r.stdout.trim();
}

describe('stacyvm worker token (issue)', () => {
  test('prints a token signed with the key from the environment, exactly per the reference format', async ({
    cli,
  }) => {
    const token = await issue(cli, ['--token-id', 'certification-token-id']);
    const payload = Buffer.from(
      `{"worker_id":"worker-a","jti":"certification-token-id","aud":"worker:control-plane","exp":${NOW_S + 300},"iat":${NOW_S}}`,
    ).toString('base64url');
    const signed = `stacyvm-worker-v1.${payload}`;
    expect(token).toBe(`${signed}.${createHmac('sha256', KEY).update(signed).digest('base64url')}`);
  });

  test('json output has the reference shape', async ({ cli }) => {
    const r = await cli.run(
      [
        'worker',
        'token',
        'worker-a',
        '--format',
        'json',
        '--ttl',
        '10m',
        '--audience',
        'worker:rpc',
        '--token-id',
        't-1',
        '--not-before',
        '1m',
        '--scope',
        'worker:exec',
        '--scope',
        'worker:logs',
      ],
      { env },
    );
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(Object.keys(out)).toEqual([
      'token',
      'token_id',
      'worker_id',
      'audience',
      'scopes',
      'issued_at',
      'not_before',
      'expires_at',
    ]);
    expect(out).toMatchObject({
      token_id: 't-1',
      worker_id: 'worker-a',
      audience: 'worker:rpc',
      scopes: ['worker:exec', 'worker:logs'],
      issued_at: '2026-01-01T00:00:00Z',
      not_before: '2026-01-01T00:01:00Z',
      expires_at: '2026-01-01T00:10:00Z',
    });
  });

  test('reads the key from --signing-key-file and warns when it is passed on the command line', async ({
    cli,
    tmp,
  }) => {
    const file = join(tmp, 'key');
    writeFileSync(file, `${KEY}\n`);
    const fromFile = await cli.run(['worker', 'token', 'w', '--signing-key-file', file]);
    expect(fromFile.code).toBe(0);
    expect(fromFile.stderr).toBe('');
    const inline = await cli.run(['worker', 'token', 'w', '--signing-key', KEY]);
    expect(inline.code).toBe(0);
    expect(inline.stderr).toContain('visible to other users');
    const both = await cli.run([
      'worker',
      'token',
      'w',
      '--signing-key',
      KEY,
      '--signing-key-file',
      file,
    ]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('not both');
  });

  test('refuses a TTL over 15 minutes, an unknown audience or scope, and a missing key', async ({
    cli,
    tmp,
  }) => {
    const cases: [string[], Record<string, string>, string][] = [
      [['--ttl', '16m'], env, '--ttl must be at most 15m0s'],
      [['--ttl', 'soon'], env, '--ttl: invalid duration'],
      [['--audience', 'worker:other'], env, '--audience must be'],
      [['--scope', 'admin:*'], env, 'is not a worker scope'],
      [['--format', 'yaml'], env, '--format must be token or json'],
      [[], {}, 'a signing key is required'],
      [['--signing-key-file', join(tmp, 'missing')], {}, 'cannot read'],
    ];
    for (const [flags, e, message] of cases) {
      const r = await cli.run(['worker', 'token', 'w', ...flags], { env: e });
      expect(r.code, flags.join(' ')).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain(message);
    }
    writeFileSync(join(tmp, 'empty'), '  \n');
    const empty = await cli.run(['worker', 'token', 'w', '--signing-key-file', join(tmp, 'empty')]);
    expect(empty.stderr).toContain('is empty');
  });

  test('help never shows the key taken from the environment', async ({ cli }) => {
    for (const path of [
      ['worker', 'token', 'issue'],
      ['worker', 'token', 'verify'],
      ['worker', 'token'],
    ]) {
      const r = await cli.run([...path, '--help'], { env });
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('Usage:');
    }
  });

  test('a worker named like a subcommand is issued through the explicit issue subcommand', async ({
    cli,
  }) => {
    const r = await cli.run(['worker', 'token', 'issue', 'inspect', '--format', 'json'], { env });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ worker_id: 'inspect' });
  });

  test('adds token to an existing worker command instead of creating a second one', async () => {
    const program = new Command('stacyvm');
    program
      .command('worker')
      .option('--id <id>')
      .action(() => undefined);
    registerWorkerTokenCommands(program, { env: {} });
    expect(program.commands.filter((c) => c.name() === 'worker')).toHaveLength(1);
    expect(program.commands[0]?.commands.map((c) => c.name())).toEqual(['token']);
  });
});

describe('stacyvm worker token inspect', () => {
  test('prints the unverified claims without needing a key', async ({ cli }) => {
    const token = await issue(cli, ['--token-id', 't-9', '--scope', 'worker:heartbeat']);
    const r = await cli.run(['worker', 'token', 'inspect', token]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      signature_verified: false,
      worker_id: 'worker-a',
      token_id: 't-9',
      audience: 'worker:control-plane',
      scopes: ['worker:heartbeat'],
      issued_at: '2026-01-01T00:00:00Z',
      expires_at: '2026-01-01T00:05:00Z',
    });
  });

  test('explains what is wrong with a malformed token and does not echo it', async ({ cli }) => {
    const bogus = 'stacyvm-worker-v1.bm90LWpzb24.' + 'A'.repeat(43);
    const r = await cli.run(['worker', 'token', 'inspect', bogus]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('error: malformed worker token: claims are not valid JSON\n');
    const prefix = await cli.run(['worker', 'token', 'inspect', 'Bearer abc']);
    expect(prefix.stderr).toContain('does not start with "stacyvm-worker-v1."');
  });
});

describe('stacyvm worker token verify', () => {
  test('prints the verified claims for a good token', async ({ cli }) => {
    const token = await issue(cli, ['--token-id', 't-1']);
    const r = await cli.run(
      [
        'worker',
        'token',
        'verify',
        token,
        '--worker-id',
        'worker-a',
        '--audience',
        'worker:control-plane',
      ],
      { env },
    );
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      signature_verified: true,
      worker_id: 'worker-a',
      token_id: 't-1',
    });
  });

  test('refuses a revoked, expired, other-worker or wrong-audience token with the reason', async ({
    cli,
  }) => {
    const token = await issue(cli, ['--token-id', 't-1']);
    const cases: [string[], number, string][] = [
      [['--revoked-token-id', 'x', '--revoked-token-id', 't-1'], NOW, 'has been revoked'],
      [[], NOW + 300_000, 'expired at 2026-01-01T00:05:00Z'],
      [['--worker-id', 'worker-b'], NOW, 'issued for worker "worker-a", not "worker-b"'],
      [['--audience', 'worker:rpc'], NOW, 'is not the expected "worker:rpc"'],
    ];
    for (const [flags, nowMs, message] of cases) {
      const r = await cli.run(['worker', 'token', 'verify', token, ...flags], { env, nowMs });
      expect(r.code, flags.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain(message);
      expect(r.stderr).not.toContain(token);
    }
  });

  test('during rotation a token signed with the previous key verifies only while that key is given', async ({
    cli,
    tmp,
  }) => {
    const oldToken = await issue(cli, [], { STACYVM_AUTH_WORKER_SIGNING_KEY: OLD_KEY });
    const oldFile = join(tmp, 'previous');
    writeFileSync(oldFile, OLD_KEY);
    const both = await cli.run(
      ['worker', 'token', 'verify', oldToken, '--verification-key-file', oldFile],
      { env },
    );
    expect(both.code).toBe(0);
    expect(JSON.parse(both.stdout)).toMatchObject({ signature_verified: true });
    const inline = await cli.run(
      ['worker', 'token', 'verify', oldToken, '--verification-key', OLD_KEY],
      { env },
    );
    expect(inline.code).toBe(0);
    expect(inline.stderr).toContain('visible to other users');
    const onlyNew = await cli.run(['worker', 'token', 'verify', oldToken], { env });
    expect(onlyNew.code).toBe(1);
    expect(onlyNew.stderr).toBe('error: worker token signature does not match the signing key\n');
  });

  test('asks for a key when none is given', async ({ cli }) => {
    const token = await issue(cli);
    const r = await cli.run(['worker', 'token', 'verify', token]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('a key is required');
  });
});

describe('stacyvm worker token rotation-plan', () => {
  test('json output has the reference fields and names references only', async ({ cli }) => {
    const r = await cli.run(
      [
        'worker',
        'token',
        'rotation-plan',
        '--new-key-ref',
        'file:/etc/stacyvm/new.key',
        '--previous-key-ref',
        'file:/etc/stacyvm/old.key',
        '--ttl',
        '10m',
        '--format',
        'json',
      ],
      { env },
    );
    expect(r.code).toBe(0);
    const plan = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(Object.keys(plan)).toEqual([
      'new_key_ref',
      'previous_key_ref',
      'max_token_ttl',
      'steps',
      'config_snippet',
      'validation',
      'text',
    ]);
    expect(plan).toMatchObject({
      new_key_ref: 'file:/etc/stacyvm/new.key',
      previous_key_ref: 'file:/etc/stacyvm/old.key',
      max_token_ttl: '10m0s',
    });
    expect(plan['steps']).toHaveLength(5);
    expect(plan['config_snippet']).toContain('worker_signing_keys:');
  });

  test('text and markdown formats render the checklist', async ({ cli }) => {
    const text = await cli.run(['worker', 'token', 'rotation-plan'], { env });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^Signed worker token rotation plan\n/);
    expect(text.stdout).toContain('- new active key: auth.worker_signing_key');
    expect(text.stdout).toContain('4. Wait at least 5m0s, plus clock skew');
    const md = await cli.run(['worker', 'token', 'rotation-plan', '--format', 'markdown'], { env });
    expect(md.code).toBe(0);
    expect(md.stdout).toMatch(/^# Signed worker token rotation plan\n/);
    expect(md.stdout).toContain('- [ ] Put the new active signing key at auth.worker_signing_key.');
    expect(md.stdout).toContain('```yaml');
  });

  test('refuses a TTL over 15 minutes and an unknown format', async ({ cli }) => {
    const ttl = await cli.run(['worker', 'token', 'rotation-plan', '--ttl', '1h']);
    expect(ttl.code).toBe(2);
    expect(ttl.stderr).toContain('--ttl must be at most 15m0s');
    const fmt = await cli.run(['worker', 'token', 'rotation-plan', '--format', 'html']);
    expect(fmt.code).toBe(2);
  });
});
