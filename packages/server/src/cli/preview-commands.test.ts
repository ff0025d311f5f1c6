import { Command, CommanderError } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';
import { exitCodeForCommanderError, registerClientCommands } from './client-commands.js';
import type { OutputStream } from './client-commands.js';
import { registerPreviewCommands } from './preview-commands.js';

const API_KEY = 'preview-cli-api-key-0123456789abcdef01';

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

async function run(
  server: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | undefined; stdout: string; stderr: string }> {
  const stdout = new Capture();
  const stderr = new Capture();
  let code: number | undefined;
  const program = new Command('stacyvm').exitOverride().configureOutput({
    writeOut: (s) => void stdout.write(s),
    writeErr: (s) => void stderr.write(s),
  });
  const deps = {
    stdout,
    stderr,
    env: { STACYVM_SERVER: server, ...env },
    setExitCode: (c: number) => {
      code = c;
    },
  };
  registerClientCommands(program, deps);
  registerPreviewCommands(program, deps);
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    code = exitCodeForCommanderError(err);
  }
  return { code, stdout: stdout.text(), stderr: stderr.text() };
}

describe('stacyvm preview', () => {
  let pub: Harness;
  let priv: Harness;
  let pubUrl = '';
  let privUrl = '';
  let pubId = '';
  let privId = '';

  beforeAll(async () => {
    pub = await startHarness((c) => {
      c.preview.public_port = 8443;
      c.preview.public_scheme = 'https';
      c.server.preview_domain = 'preview.example.com';
    });
    pubUrl = await pub.cp.app.listen({ host: '127.0.0.1', port: 0 });
    pubId = await pub.spawn({ provider: 'mock' });
    priv = await startHarness((c) => {
      c.preview.private = true;
      c.auth.api_key = API_KEY;
    });
    privUrl = await priv.cp.app.listen({ host: '127.0.0.1', port: 0 });
    privId = await priv.spawn({ provider: 'mock' });
  });
  afterAll(async () => {
    await pub.close();
    await priv.close();
  });

  it('prints the preview URL of a port', async () => {
    const r = await run(pubUrl, ['preview', pubId, '3000']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`https://3000-${pubId}.preview.example.com:8443\n`);
    expect(r.stderr).toBe('');
  });

  it('prints the whole answer with --json', async () => {
    const r = await run(pubUrl, ['--json', 'preview', pubId, '5173']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      url: `https://5173-${pubId}.preview.example.com:8443`,
      port: 5173,
      sandbox_id: pubId,
      private: false,
    });
  });

  it('prints a link carrying the token for a private preview, never the API key', async () => {
    const r = await run(privUrl, ['preview', privId, '3000'], { STACYVM_API_KEY: API_KEY });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      new RegExp(`^http://3000-${privId}\\.localhost/\\?stacyvm_preview_token=spt1\\.`),
    );
    expect(r.stderr).toMatch(/private preview: the link carries a token valid until/);
    expect(r.stdout + r.stderr).not.toContain(API_KEY);
  });

  it('refuses a port out of range as a usage error, without calling the server', async () => {
    for (const bad of ['0', '65536', 'http', '-1']) {
      const r = await run('http://127.0.0.1:1', ['preview', pubId, bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toMatch(/port must be a whole number from 1 to 65535/);
    }
  });

  it('reports an unknown sandbox and a refused key with the server’s code', async () => {
    const missing = await run(pubUrl, ['preview', 'sb-deadbeef', '3000']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/sandbox not found: sb-deadbeef \(code NOT_FOUND, request /);
    const refused = await run(privUrl, ['preview', privId, '3000'], {
      STACYVM_API_KEY: 'wrong-key-0123456789',
    });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/code UNAUTHORIZED/);
  });
});
