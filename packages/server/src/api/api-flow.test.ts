import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';

interface ExecJson {
  exit_code: number;
  stdout: string;
  stderr: string;
  duration: string;
}

describe('REST API v1 with the mock provider (reference black-box flow)', () => {
  let h: Harness;
  let id: string;
  const base = () => `/api/v1/sandboxes/${id}`;

  beforeAll(async () => {
    h = await startHarness();
    id = await h.spawn({ image: 'alpine:latest' });
  });
  afterAll(async () => {
    await h.close();
  });

  it('reports health with version and uptime', async () => {
    const res = await h.request({ method: 'GET', url: '/api/v1/health' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ status: 'ok', version: expect.any(String) });
  });

  it('creates a running sandbox with an sb- id, worker local and a preview domain', async () => {
    const res = await h.request({ method: 'GET', url: base() });
    expect(res.statusCode).toBe(200);
    const sb = res.json();
    expect(sb.id).toMatch(/^sb-[0-9a-f]{8}$/);
    expect(sb).toMatchObject({
      state: 'running',
      provider: 'mock',
      image: 'alpine:latest',
      worker_id: 'local',
    });
    expect(sb.preview_domain).toBe('localhost');
    expect(Date.parse(sb.expires_at) - Date.parse(sb.created_at)).toBe(30 * 60 * 1000);
  });

  it('lists the sandbox', async () => {
    const res = await h.request({ method: 'GET', url: '/api/v1/sandboxes' });
    expect(res.json().map((s: { id: string }) => s.id)).toContain(id);
  });

  it('runs commands, keeping stdout, stderr and the exit code apart', async () => {
    const ok = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'echo hello' },
    });
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toMatchObject({ exit_code: 0, stdout: 'hello\n', stderr: '' });
    const code = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'exit 42' },
    });
    expect(code.json<ExecJson>().exit_code).toBe(42);
    const err = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'echo oops >&2' },
    });
    expect(err.json()).toMatchObject({ stdout: '', stderr: 'oops\n' });
  });

  it('runs argv mode without a shell and shell mode with quoted args', async () => {
    const argv = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'printf', args: ['%s|', 'a b', "it's", '$HOME'], mode: 'argv' },
    });
    expect(argv.json<ExecJson>().stdout).toBe("a b|it's|$HOME|");
    const shell = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'printf "%s|"', args: ['a b', "it's"] },
    });
    expect(shell.json<ExecJson>().stdout).toBe("a b|it's|");
  });

  it('passes env and workdir', async () => {
    await h.request({
      method: 'POST',
      url: `${base()}/files`,
      body: { path: '/workspace/sub/x.txt', content: 'x' },
    });
    const res = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'echo $GREETING; ls', env: { GREETING: 'hi' }, workdir: '/workspace/sub' },
    });
    expect(res.json<ExecJson>().stdout).toBe('hi\nx.txt\n');
  });

  it('kills a command at its deadline and answers 408 TIMEOUT', async () => {
    const started = Date.now();
    const res = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'sleep 5; touch /tmp/never', timeout: '300ms' },
    });
    expect(res.statusCode).toBe(408);
    expect(res.json()).toMatchObject({ code: 'TIMEOUT' });
    expect(res.json().message).toContain(id);
    expect(Date.now() - started).toBeLessThan(4000);
  });

  it('streams NDJSON chunks in order and ends with an exit line', async () => {
    const res = await h.request({
      method: 'POST',
      url: `${base()}/exec`,
      body: { command: 'echo one; echo two >&2; echo three; exit 3', stream: true },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toContain('application/x-ndjson');
    const lines = res.body
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const stdout = lines
      .filter((l) => l['stream'] === 'stdout')
      .map((l) => l['data'])
      .join('');
    const stderr = lines
      .filter((l) => l['stream'] === 'stderr')
      .map((l) => l['data'])
      .join('');
    expect(stdout).toBe('one\nthree\n');
    expect(stderr).toBe('two\n');
    const last = lines.at(-1)!;
    expect(last).toMatchObject({ stream: 'exit', data: '', exit_code: 3 });
    // Every line has the stream/data pair the reference SDKs read.
    for (const l of lines) {
      expect(typeof l['stream']).toBe('string');
      expect(typeof l['data']).toBe('string');
    }
  });

  it('records exec log rows for sync and streamed execs', async () => {
    const res = await h.request({ method: 'GET', url: `${base()}/execs?limit=100` });
    expect(res.statusCode).toBe(200);
    const rows = res.json<Array<{ command: string; streamed: boolean; exit_code: number }>>();
    expect(rows.some((r) => r.streamed && r.exit_code === 3)).toBe(true);
    expect(rows.some((r) => !r.streamed && r.command === 'exit 42' && r.exit_code === 42)).toBe(
      true,
    );
  });

  it('writes, reads, lists, stats, globs, moves, chmods and deletes files', async () => {
    const w = await h.request({
      method: 'POST',
      url: `${base()}/files`,
      body: { path: '/workspace/hello.txt', content: 'hello world' },
    });
    expect(w.json()).toEqual({ status: 'written' });
    const r = await h.request({ method: 'GET', url: `${base()}/files?path=/workspace/hello.txt` });
    expect(r.headers['content-type']).toBe('application/octet-stream');
    expect(r.body).toBe('hello world');
    const ls = await h.request({ method: 'GET', url: `${base()}/files/list?path=/workspace` });
    expect(ls.json().map((f: { name: string }) => f.name)).toContain('hello.txt');
    const st = await h.request({
      method: 'GET',
      url: `${base()}/files/stat?path=/workspace/hello.txt`,
    });
    expect(st.json()).toMatchObject({ size: 11, is_dir: false, path: '/workspace/hello.txt' });
    for (const n of ['a.log', 'b.log']) {
      await h.request({
        method: 'POST',
        url: `${base()}/files`,
        body: { path: `/workspace/${n}`, content: n },
      });
    }
    const g = await h.request({
      method: 'GET',
      url: `${base()}/files/glob?pattern=/workspace/*.log`,
    });
    expect(g.json()).toEqual(['/workspace/a.log', '/workspace/b.log']);
    const mv = await h.request({
      method: 'POST',
      url: `${base()}/files/move`,
      body: { old_path: '/workspace/hello.txt', new_path: '/workspace/moved/hello.txt' },
    });
    expect(mv.json()).toEqual({ status: 'moved' });
    const ch = await h.request({
      method: 'POST',
      url: `${base()}/files/chmod`,
      body: { path: '/workspace/moved/hello.txt', mode: '0755' },
    });
    expect(ch.json()).toEqual({ status: 'chmod applied' });
    const st2 = await h.request({
      method: 'GET',
      url: `${base()}/files/stat?path=/workspace/moved/hello.txt`,
    });
    expect(st2.json().mode).toBe('0755');
    const del = await h.request({
      method: 'DELETE',
      url: `${base()}/files?path=/workspace/moved&recursive=true`,
    });
    expect(del.json()).toEqual({ status: 'deleted' });
    const gone = await h.request({
      method: 'GET',
      url: `${base()}/files?path=/workspace/moved/hello.txt`,
    });
    expect(gone.statusCode).toBe(404);
  });

  it('round-trips binary content byte for byte (base64 write, raw PUT, raw read)', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await h.request({
      method: 'POST',
      url: `${base()}/files`,
      body: { path: '/workspace/bin.dat', content: bytes.toString('base64'), encoding: 'base64' },
    });
    const r = await h.request({ method: 'GET', url: `${base()}/files?path=/workspace/bin.dat` });
    expect(Buffer.compare(r.rawPayload, bytes)).toBe(0);
    const put = await h.request({
      method: 'PUT',
      url: `${base()}/files?path=/workspace/raw.dat&mode=0600`,
      headers: { 'content-type': 'application/octet-stream' },
      rawBody: Buffer.concat([bytes, bytes]),
    });
    expect(put.json()).toEqual({ status: 'written' });
    const r2 = await h.request({ method: 'GET', url: `${base()}/files?path=/workspace/raw.dat` });
    expect(Buffer.compare(r2.rawPayload, Buffer.concat([bytes, bytes]))).toBe(0);
    const st = await h.request({
      method: 'GET',
      url: `${base()}/files/stat?path=/workspace/raw.dat`,
    });
    expect(st.json().mode).toBe('0600');
  });

  it('returns console logs as strings', async () => {
    const res = await h.request({ method: 'GET', url: `${base()}/logs?lines=5` });
    expect(res.statusCode).toBe(200);
    const lines = res.json<string[]>();
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(5);
  });

  it('extends the TTL from now, bounded by max_ttl', async () => {
    const res = await h.request({ method: 'POST', url: `${base()}/extend`, body: { ttl: '2h' } });
    expect(res.statusCode).toBe(200);
    const remaining = Date.parse(res.json().expires_at) - Date.now();
    expect(remaining).toBeGreaterThan(2 * 3600 * 1000 - 60_000);
    const tooLong = await h.request({
      method: 'POST',
      url: `${base()}/extend`,
      body: { ttl: '48h' },
    });
    expect(tooLong.statusCode).toBe(429);
    expect(tooLong.json().details[0].field).toBe('ttl');
  });

  it('answers admission preflight with the selected worker', async () => {
    const res = await h.request({ method: 'POST', url: '/api/v1/sandboxes/admission', body: {} });
    expect(res.json()).toMatchObject({
      allowed: true,
      selected_worker_id: 'local',
      eligible_workers: ['local'],
    });
  });

  it('lists providers and workers, including the self-registered local worker', async () => {
    const p = await h.request({ method: 'GET', url: '/api/v1/providers' });
    expect(p.json()).toEqual([
      expect.objectContaining({ name: 'mock', healthy: true, default: true }),
    ]);
    const pd = await h.request({ method: 'GET', url: '/api/v1/providers/mock' });
    expect(pd.json()).toMatchObject({ name: 'mock', config: { type: 'mock' } });
    const missing = await h.request({ method: 'GET', url: '/api/v1/providers/nope' });
    expect(missing.statusCode).toBe(404);
    const test = await h.request({ method: 'POST', url: '/api/v1/providers/test' });
    expect(test.json()).toEqual({ mock: true });
    const w = await h.request({ method: 'GET', url: '/api/v1/workers' });
    expect(w.json()).toEqual([
      expect.objectContaining({ id: 'local', status: 'online', stale: false }),
    ]);
  });

  it('exposes Prometheus metrics and the OpenAPI document', async () => {
    const m = await h.request({ method: 'GET', url: '/api/v1/metrics/prometheus' });
    expect(m.headers['content-type']).toContain('text/plain');
    expect(m.body).toMatch(/stacyvm_sandboxes_total\{state="running"\} \d+/);
    expect(m.body).toMatch(
      /stacyvm_operation_success_total\{operation="exec",provider="mock"\} \d+/,
    );
    const o = await h.request({ method: 'GET', url: '/api/v1/openapi.json' });
    const doc = o.json<{ openapi: string; paths: Record<string, unknown> }>();
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        '/api/v1/sandboxes',
        '/api/v1/sandboxes/{id}/exec',
        '/api/v1/sandboxes/{id}/files/glob',
      ]),
    );
  });

  it('echoes X-Request-ID and puts it in error bodies', async () => {
    const res = await h.request({
      method: 'GET',
      url: '/api/v1/sandboxes/sb-00000000',
      headers: { 'x-request-id': 'trace-123' },
    });
    expect(res.headers['x-request-id']).toBe('trace-123');
    expect(res.json()).toEqual({
      code: 'NOT_FOUND',
      message: 'sandbox not found: sb-00000000',
      request_id: 'trace-123',
    });
  });

  it('destroys once; a second destroy and a get are 404', async () => {
    const other = await h.spawn();
    const d1 = await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${other}` });
    expect(d1.json()).toEqual({ status: 'destroyed' });
    const d2 = await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${other}` });
    expect(d2.statusCode).toBe(404);
    const g = await h.request({ method: 'GET', url: `/api/v1/sandboxes/${other}` });
    expect(g.statusCode).toBe(404);
    const audit = await h.cp.store.audit.list({ sandboxId: other });
    expect(audit.map((a) => a.action)).toEqual(
      expect.arrayContaining(['sandbox.spawn', 'sandbox.destroy']),
    );
  });
});
