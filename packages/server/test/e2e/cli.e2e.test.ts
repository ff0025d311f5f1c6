import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerProcess } from './server-process.js';
import { cleanup, cli, startServer } from './server-process.js';

const API_KEY = 'e2e-api-key-0123456789abcdef0123456789';

describe('the stacyvm binary: serve plus the CLI, as a user drives them', () => {
  let server: ServerProcess;
  let env: Record<string, string>;
  let id: string;

  beforeAll(async () => {
    server = await startServer({ env: { STACYVM_AUTH_API_KEY: API_KEY } });
    env = { STACYVM_SERVER: server.url, STACYVM_API_KEY: API_KEY };
  });
  afterAll(async () => {
    expect(await server.stop()).toBe(0);
    cleanup(server.dir);
  });

  it('spawns a sandbox and prints only its id on stdout', () => {
    const r = cli(['spawn', '--image', 'alpine:latest', '--ttl', '10m'], { env });
    expect(r.status, r.stderr.toString()).toBe(0);
    id = r.stdout.toString().trim();
    expect(id).toMatch(/^sb-[0-9a-f]{8}$/);
  });

  it('refuses calls without the API key', () => {
    const r = cli(['list'], { env: { STACYVM_SERVER: server.url, STACYVM_API_KEY: '' } });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toContain('UNAUTHORIZED');
  });

  it('execs in argv mode by default and exits with the command exit code', () => {
    const ok = cli(['exec', id, '--', 'echo', 'hello world'], { env });
    expect(ok.status).toBe(0);
    expect(ok.stdout.toString()).toBe('hello world\n');
    const fail = cli(['exec', id, '--shell', '--', 'echo oops >&2; exit 42'], { env });
    expect(fail.status).toBe(42);
    expect(fail.stderr.toString()).toContain('oops');
    expect(fail.stdout.toString()).toBe('');
  });

  it('exits 124 when the command hits its timeout', () => {
    const r = cli(['exec', id, '--timeout', '300ms', '--', 'sleep', '5'], { env });
    expect(r.status).toBe(124);
  });

  it('puts, lists and gets files byte for byte', () => {
    const local = join(server.dir, 'upload.bin');
    const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) % 256));
    writeFileSync(local, bytes);
    expect(cli(['files', 'put', id, local, '/workspace/data.bin'], { env }).status).toBe(0);
    const ls = cli(['files', 'ls', id, '/workspace'], { env });
    expect(ls.stdout.toString()).toContain('data.bin');
    const got = cli(['files', 'get', id, '/workspace/data.bin'], { env });
    expect(Buffer.compare(got.stdout, bytes)).toBe(0);
    const out = join(server.dir, 'download.bin');
    expect(cli(['files', 'get', id, '/workspace/data.bin', '--out', out], { env }).status).toBe(0);
    expect(Buffer.compare(readFileSync(out), bytes)).toBe(0);
  });

  it('lists, gets and shows logs, in tables and JSON', () => {
    const table = cli(['list'], { env }).stdout.toString();
    expect(table.split('\n')[0]).toMatch(/^ID\s+STATE\s+PROVIDER/);
    expect(table).toContain(id);
    const json = JSON.parse(cli(['list', '--json'], { env }).stdout.toString()) as Array<{
      id: string;
    }>;
    expect(json.map((s) => s.id)).toContain(id);
    const one = JSON.parse(cli(['get', id, '--json'], { env }).stdout.toString()) as {
      state: string;
    };
    expect(one.state).toBe('running');
    expect(cli(['logs', id, '--lines', '5'], { env }).status).toBe(0);
  });

  it('kills the sandbox; a later get fails with NOT_FOUND and exit 1', () => {
    expect(cli(['kill', id], { env }).status).toBe(0);
    const r = cli(['get', id], { env });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toMatch(/NOT_FOUND/);
  });

  it('prints its version without a server', () => {
    const r = cli(['version'], { env: { STACYVM_SERVER: 'http://127.0.0.1:1' } });
    expect(r.stdout.toString()).toMatch(/^stacyvm \d+\.\d+\.\d+/);
  });

  it('never writes the API key to its logs', () => {
    expect(server.logs()).not.toContain(API_KEY);
  });
});
