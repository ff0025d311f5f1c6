/**
 * A throwaway `redis-server` for tests: loopback only, a free port, no
 * persistence, a temp working directory, optional password. Under CI=true a
 * missing binary is an error; elsewhere tests skip with the reason.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Why Redis tests cannot run here, or undefined when `redis-server` is installed. */
export function redisUnavailable(): string | undefined {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (r.error === undefined && r.status === 0) return undefined;
  const reason = 'redis-server is not installed (apt-get install -y redis-server)';
  if (process.env['CI'] === 'true') throw new Error(`CI=true but ${reason}`);
  return reason;
}

export interface RedisServer {
  host: string;
  port: number;
  password: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const addr = srv.address();
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return addr.port;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Starts a redis-server and waits (at most 10 s) until it accepts connections. */
export async function startRedisServer(password = ''): Promise<RedisServer> {
  const dir = mkdtempSync(join(tmpdir(), 'stacyvm-redis-'));
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    // The password goes in a config file (mode 0600), not on the command line.
    const conf = join(dir, 'redis.conf');
    writeFileSync(conf, password === '' ? '' : `requirepass "${password}"\n`, { mode: 0o600 });
    const args = [
      conf,
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--daemonize',
      'no',
      '--loglevel',
      'warning',
      // What Traefik's Redis provider needs to see changes.
      '--notify-keyspace-events',
      'KEA',
    ];
    const child: ChildProcess = spawn('redis-server', args, { stdio: 'ignore' });
    let exited = false;
    child.once('exit', () => {
      exited = true;
    });
    const deadline = Date.now() + 10_000;
    while (!exited && Date.now() < deadline) {
      if (await canConnect(port)) {
        return {
          host: '127.0.0.1',
          port,
          password,
          stop: async () => {
            if (!exited) {
              const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
              child.kill('SIGTERM');
              const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
              await gone;
              clearTimeout(t);
            }
            rmSync(dir, { recursive: true, force: true });
          },
        };
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!exited) child.kill('SIGKILL');
    // Port taken between probing and binding: try another.
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error('redis-server did not start');
}
