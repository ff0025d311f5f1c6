// The code-runner examples (examples/typescript/code-runner.mjs, examples/python/code_runner.py)
// run as a user would run them — `node` resolving `stacyvm` through the workspace (the built
// dist/), `python3` with PYTHONPATH=sdk/python — against a real `stacyvm serve` with the mock
// provider, configured only through STACYVM_URL and STACYVM_API_KEY.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../src/index.js';
import type { Client } from '../../src/index.js';
import { API_KEY, startSdkServer } from './support.js';
import type { SdkServer } from './support.js';

const REPO = fileURLToPath(new URL('../../../..', import.meta.url));
const PY_SDK = fileURLToPath(new URL('../../../../sdk/python', import.meta.url));
const RUN_TIMEOUT_MS = 45_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Example {
  name: string;
  command: string;
  args: string[];
}

const EXAMPLES: Example[] = [
  { name: 'typescript', command: process.execPath, args: ['examples/typescript/code-runner.mjs'] },
  { name: 'python', command: 'python3', args: ['examples/python/code_runner.py'] },
];

/**
 * Runs an example to its end (killed after RUN_TIMEOUT_MS). With `interruptOn`, sends SIGTERM
 * once stdout contains that text.
 */
function runExample(
  ex: Example,
  env: Record<string, string>,
  opts: { args?: string[]; interruptOn?: string } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const base: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !k.startsWith('STACYVM_') && k !== 'PYTHONPATH') base[k] = v;
    }
    const child = spawn(ex.command, [...ex.args, ...(opts.args ?? [])], {
      cwd: REPO,
      env: { ...base, PYTHONPATH: PY_SDK, PYTHONIOENCODING: 'utf-8', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let interrupted = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (opts.interruptOn !== undefined && !interrupted && stdout.includes(opts.interruptOn)) {
        interrupted = true;
        child.kill('SIGTERM');
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Asserts that `expected` lines appear in `text`, each whole, in this order. */
function expectLinesInOrder(text: string, expected: (string | RegExp)[]): void {
  const lines = text.split('\n');
  let at = 0;
  for (const want of expected) {
    const found = lines.findIndex(
      (l, i) => i >= at && (typeof want === 'string' ? l === want : want.test(l)),
    );
    expect(found, `line ${String(want)} (in order) in:\n${text}`).toBeGreaterThanOrEqual(0);
    at = found + 1;
  }
}

const DURATION = '[0-9.]+(ns|µs|us|ms|s|m)';
/** `[2/3] primes: exit 1 (41.2ms)` */
const exitLine = (n: number, task: string, code: number): RegExp =>
  new RegExp(`^\\[${n}/3\\] ${task}: exit ${code} \\(${DURATION}\\)$`);

function sandboxIdOf(run: Run): string {
  const m = /^sandbox (sb-[0-9a-f]+) spawned \(provider mock, /m.exec(run.stdout);
  expect(m, run.stdout + run.stderr).not.toBeNull();
  return m?.[1] ?? '';
}

async function expectGone(client: Client, id: string): Promise<void> {
  await expect(client.get(id)).rejects.toBeInstanceOf(NotFoundError);
  expect((await client.list()).map((s) => s.id)).not.toContain(id);
}

/** Output with the run-specific parts (sandbox id, durations, host paths) masked. */
function stable(stdout: string, id: string): string {
  return stdout
    .split(id)
    .join('<id>')
    .replace(new RegExp(`\\(${DURATION}\\)`, 'g'), '(<duration>)');
}

describe('examples: the code-runner agent loop against a real stacyvm serve', () => {
  let srv: SdkServer;
  let client: Client;
  let env: Record<string, string>;
  const stdoutOf: Record<string, string> = {};
  beforeAll(async () => {
    srv = await startSdkServer();
    client = srv.client();
    env = { STACYVM_URL: srv.url, STACYVM_API_KEY: API_KEY };
  });
  afterAll(async () => {
    await srv?.stop();
  });

  for (const ex of EXAMPLES) {
    it(`${ex.name}: runs the tasks, fixes the failing one, destroys the sandbox, exits 0`, async () => {
      const run = await runExample(ex, env);
      expect(run.code, run.stdout + run.stderr).toBe(0);
      const id = sandboxIdOf(run);
      expectLinesInOrder(run.stdout, [
        `code-runner: server ${srv.url}`,
        new RegExp(`^sandbox ${id} spawned`),
        '[1/3] hello: python3 hello.py',
        'working... step 1/3',
        'working... step 3/3',
        'hello from python 3 in the sandbox',
        exitLine(1, 'hello', 0),
        '[2/3] primes: python3 primes.py',
        exitLine(2, 'primes', 1),
        "[2/3] primes: fixer (scripted stand-in for an LLM): rename the misspelled variable 'fund' to 'found'",
        '[2/3] primes: retry 1: python3 primes.py',
        '15 primes below 50, largest 47',
        exitLine(2, 'primes', 0),
        '[3/3] report: sh report.sh',
        'primes.txt has 15 lines',
        'largest prime: 47',
        exitLine(3, 'report', 0),
        'primes.txt read back: 2 3 5 7 11 13 17 19 23 29 31 37 41 43 47',
        `sandbox ${id} destroyed`,
        'summary: 3/3 tasks passed (1 after a fix)',
      ]);
      // The failed run's traceback was streamed to stderr, as the sandbox printed it.
      expect(run.stderr).toContain("NameError: name 'fund' is not defined");
      await expectGone(client, id);
      stdoutOf[ex.name] = stable(run.stdout, id);
    });

    it(`${ex.name}: --no-fix gives up on the failing tasks, exits 1, still destroys`, async () => {
      const run = await runExample(ex, env, { args: ['--no-fix'] });
      expect(run.code, run.stdout + run.stderr).toBe(1);
      const id = sandboxIdOf(run);
      expectLinesInOrder(run.stdout, [
        exitLine(2, 'primes', 1),
        '[2/3] primes: no fix proposed, giving up on this task',
        '[3/3] report: sh report.sh',
        /^\[3\/3\] report: exit [1-9][0-9]* /,
        '[3/3] report: no fix proposed, giving up on this task',
        'primes.txt read back: (missing)',
        `sandbox ${id} destroyed`,
        'summary: 1/3 tasks passed (0 after a fix)',
      ]);
      expect(run.stdout).not.toContain('fixer');
      await expectGone(client, id);
    });

    it(`${ex.name}: SIGTERM mid-run stops it with 130 and the sandbox is destroyed`, async () => {
      const run = await runExample(ex, env, { interruptOn: 'working... step 1/3' });
      expect(run.code, run.stdout + run.stderr).toBe(130);
      const id = sandboxIdOf(run);
      expect(run.stdout).toContain(`sandbox ${id} destroyed`);
      expect(run.stdout).not.toContain('summary:');
      expect(run.stderr).toContain('interrupted');
      await expectGone(client, id);
    });

    it(`${ex.name}: a wrong API key is reported, exit 1, nothing spawned`, async () => {
      const before = (await client.list()).length;
      const run = await runExample(ex, { ...env, STACYVM_API_KEY: 'not-the-key' });
      expect(run.code, run.stdout + run.stderr).toBe(1);
      expect(run.stderr).toMatch(/^error: Unauthorized(Error)? \(UNAUTHORIZED, HTTP 401\): /m);
      expect(run.stderr).not.toContain('not-the-key');
      expect(run.stdout).not.toContain('spawned');
      expect((await client.list()).length).toBe(before);
    });
  }

  it('both examples print the same lines (sandbox ids and durations aside)', () => {
    expect(stdoutOf['typescript']).toBeDefined();
    expect(stdoutOf['python']).toBe(stdoutOf['typescript']);
  });
});
