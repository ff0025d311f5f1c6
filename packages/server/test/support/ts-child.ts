import { spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * Module hooks that let a plain `node` child run this repository's
 * TypeScript sources without a build: `.ts` files are transpiled with the
 * repo's own `typescript` (types are not checked; `tsc` does that), and a
 * relative `./x.js` import falls back to `./x.ts` as NodeNext sources write it.
 */
function hooksSource(typescriptUrl: string): string {
  return `import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import ts from ${JSON.stringify(typescriptUrl)};

export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (err) {
    const parent = context.parentURL;
    if (err && err.code === 'ERR_MODULE_NOT_FOUND' && specifier.startsWith('.') &&
        specifier.endsWith('.js') && parent && parent.startsWith('file:')) {
      const url = new URL(specifier.slice(0, -3) + '.ts', parent);
      if (existsSync(fileURLToPath(url))) return { url: url.href, format: 'module', shortCircuit: true };
    }
    throw err;
  }
}

export async function load(url, context, next) {
  if (url.startsWith('file:') && url.endsWith('.ts')) {
    const fileName = fileURLToPath(url);
    const out = ts.transpileModule(await readFile(fileName, 'utf8'), {
      fileName,
      compilerOptions: {
        module: ts.ModuleKind.ESNext,
        target: ts.ScriptTarget.ES2022,
        verbatimModuleSyntax: true,
        inlineSourceMap: true,
      },
    });
    return { format: 'module', source: out.outputText, shortCircuit: true };
  }
  return next(url, context);
}
`;
}

let registerFile: string | undefined;

/** Writes a file unless present, via a rename so a concurrent reader never sees half of it. */
function writeOnce(path: string, text: string): void {
  if (existsSync(path)) return;
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** `node` arguments that install the hooks (written once per process to a temp dir). */
export function tsNodeArgs(): string[] {
  if (registerFile === undefined) {
    const typescriptUrl = pathToFileURL(createRequire(import.meta.url).resolve('typescript')).href;
    const hooks = hooksSource(typescriptUrl);
    const hash = createHash('sha256').update(hooks).digest('hex').slice(0, 16);
    const dir = join(tmpdir(), `stacyvm-ts-child-${hash}`);
    mkdirSync(dir, { recursive: true });
    const hooksFile = join(dir, 'hooks.mjs');
    const register = join(dir, 'register.mjs');
    writeOnce(hooksFile, hooks);
    writeOnce(
      register,
      `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooksFile).href)});\n`,
    );
    registerFile = register;
  }
  return ['--import', pathToFileURL(registerFile).href];
}

/** Spawns `node <entry.ts> ...args` with the TypeScript hooks installed. */
export function spawnTsChild(entry: string, args: string[], options: SpawnOptions): ChildProcess {
  return spawn(process.execPath, [...tsNodeArgs(), entry, ...args], options);
}
