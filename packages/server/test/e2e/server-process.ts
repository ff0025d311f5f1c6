import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess, SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The built CLI: e2e tests run what ships. */
export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

export interface ServerProcess {
  url: string;
  dir: string;
  child: ChildProcess;
  env: Record<string, string>;
  logs(): string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'stacyvm-e2e-'));
}

/** Environment for a server that keeps everything inside `dir`. */
export function serverEnv(dir: string, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith('STACYVM_')) env[k] = v;
  }
  return {
    ...env,
    HOME: dir,
    STACYVM_PROVIDERS_MOCK_BASE_DIR: join(dir, 'mock'),
    STACYVM_LOGGING_LEVEL: 'info',
    // The mock-provider suites; Docker e2e tests turn it back on.
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
    ...extra,
  };
}

/** Starts `stacyvm serve --port 0` in `dir` and waits for its listening line. */
export async function startServer(
  opts: { dir?: string; env?: Record<string, string>; args?: string[] } = {},
): Promise<ServerProcess> {
  const dir = opts.dir ?? tempDir();
  const env = serverEnv(dir, opts.env);
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', ...(opts.args ?? [])], {
    cwd: dir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}`)), 20_000);
    const check = (): void => {
      const m = /"address":"(http:\/\/[^"]+)"/.exec(out);
      if (m?.[1] !== undefined) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout?.on('data', check);
    child.stderr?.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${out}`));
    });
  });
  return {
    url,
    dir,
    child,
    env,
    logs: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Runs the CLI synchronously against a server. */
export function cli(
  args: string[],
  opts: { env?: Record<string, string>; input?: string | Buffer; cwd?: string } = {},
): SpawnSyncReturns<Buffer> {
  return spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...opts.env },
    ...(opts.input === undefined ? {} : { input: opts.input }),
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
    timeout: 30_000,
  });
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
