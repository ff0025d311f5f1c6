import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSdkServer, API_KEY } from './support.js';
import type { SdkServer } from './support.js';

// The shipped package: dist/ as built by `npm run build`, resolved by name like a user would.
const PKG_DIR = fileURLToPath(new URL('../..', import.meta.url));
const REPO = join(PKG_DIR, '..', '..');

function node(args: string[], env: Record<string, string> = {}): { out: string; code: number } {
  const r = spawnSync(process.execPath, args, {
    cwd: REPO,
    env: { ...process.env, ...env },
    timeout: 30_000,
    encoding: 'utf8',
  });
  return { out: `${r.stdout}${r.stderr}`, code: r.status ?? -1 };
}

const SCRIPT_BODY = `
  const c = new Client({ baseUrl: process.env.URL, apiKey: process.env.KEY });
  const out = await c.withSandbox({}, async (sb) => {
    const r = await sb.exec('echo built');
    const st = sb.execStream('printf streamed');
    let data = '';
    for await (const ev of st) data += ev.data;
    return r.stdout + data + ':' + (await st.exitCode());
  });
  let unauthorized = '';
  try { await new Client({ baseUrl: process.env.URL, apiKey: 'bad' }).list(); }
  catch (e) { unauthorized = (e instanceof UnauthorizedError) + '/' + (e instanceof StacyVMError); }
  console.log(JSON.stringify({ out, unauthorized }));
`;

describe('the built package', () => {
  let srv: SdkServer;
  beforeAll(async () => {
    srv = await startSdkServer();
  });
  afterAll(async () => {
    await srv?.stop();
  });

  it('package.json: zero runtime dependencies, exports map for import/require/types', () => {
    const pkg = JSON.parse(readFileSync(join(PKG_DIR, 'package.json'), 'utf8'));
    expect(pkg.name).toBe('stacyvm');
    expect(pkg.version).toBe('0.2.0');
    expect(pkg.dependencies ?? {}).toEqual({});
    expect(pkg.peerDependencies ?? {}).toEqual({});
    expect(pkg.exports['.']).toEqual({
      import: { types: './dist/esm/index.d.ts', default: './dist/esm/index.js' },
      require: { types: './dist/cjs/index.d.ts', default: './dist/cjs/index.js' },
    });
    expect(JSON.parse(readFileSync(join(PKG_DIR, 'dist/cjs/package.json'), 'utf8'))).toEqual({
      type: 'commonjs',
    });
  });

  it('the built code has no node: imports and no require of anything but itself', () => {
    for (const flavour of ['esm', 'cjs']) {
      const dir = join(PKG_DIR, 'dist', flavour);
      const files = readdirSync(dir).filter((f) => f.endsWith('.js'));
      let total = 0;
      expect(files).toContain('index.js');
      for (const f of files) {
        const code = readFileSync(join(dir, f), 'utf8');
        expect(code, f).not.toMatch(/['"]node:/);
        const specs = [
          ...code.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s*['"]([^'"]+)['"]/gm),
          ...code.matchAll(/\brequire\(\s*['"]([^'"]+)['"]\s*\)/g),
        ].map((m) => m[1]);
        total += specs.length;
        for (const s of specs) expect(s, `${flavour}/${f}`).toMatch(/^\.\//);
      }
      // The scan does see the internal imports (index.js alone re-exports from 7 modules).
      expect(total, flavour).toBeGreaterThan(10);
      expect(readdirSync(dir)).toContain('index.d.ts');
    }
  });

  it('require("stacyvm") loads the CommonJS build and works against the server', () => {
    const r = node(
      [
        '-e',
        `const { Client, UnauthorizedError, StacyVMError } = require('stacyvm');
         if (!require.resolve('stacyvm').endsWith('dist/cjs/index.js')) throw new Error(require.resolve('stacyvm'));
         (async () => {${SCRIPT_BODY}})().catch((e) => { console.error(e); process.exit(1); });`,
      ],
      { URL: srv.url, KEY: API_KEY },
    );
    expect(r.code, r.out).toBe(0);
    expect(JSON.parse(r.out.trim())).toEqual({
      out: 'built\nstreamed:0',
      unauthorized: 'true/true',
    });
  });

  it('import("stacyvm") loads the ESM build and works against the server', () => {
    const r = node(
      [
        '--input-type=module',
        '-e',
        `import { Client, UnauthorizedError, StacyVMError } from 'stacyvm';
         if (!import.meta.resolve('stacyvm').endsWith('dist/esm/index.js')) throw new Error('wrong entry');
         ${SCRIPT_BODY}`,
      ],
      { URL: srv.url, KEY: API_KEY },
    );
    expect(r.code, r.out).toBe(0);
    expect(JSON.parse(r.out.trim())).toEqual({
      out: 'built\nstreamed:0',
      unauthorized: 'true/true',
    });
  });
});
