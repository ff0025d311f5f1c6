import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Harness } from '../../test/support/harness.js';
import { startHarness } from '../../test/support/harness.js';

describe('streamed exec over a real socket', () => {
  let h: Harness;
  let base = '';
  let id = '';

  beforeAll(async () => {
    h = await startHarness();
    await h.cp.app.listen({ host: '127.0.0.1', port: 0 });
    const addr = h.cp.app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr !== null ? addr.port : 0}`;
    id = await h.spawn({ provider: 'mock' });
  });
  afterAll(async () => {
    await h.close();
  });

  const stream = (command: string, signal?: AbortSignal) =>
    fetch(`${base}/api/v1/sandboxes/${id}/exec`, {
      method: 'POST',
      // One connection per request: this test is about the stream, not keep-alive.
      headers: { 'content-type': 'application/json', connection: 'close' },
      body: JSON.stringify({ command, stream: true }),
      signal: signal ?? AbortSignal.timeout(10_000),
    });

  it('sends the response headers at once, before a quiet command prints anything', async () => {
    const started = performance.now();
    const res = await stream('sleep 1.5; echo late');
    const headersAfter = performance.now() - started;
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('application/x-ndjson');
    expect(headersAfter).toBeLessThan(1000);
    const body = await res.text();
    expect(body).toContain('late');
    expect(body).toContain('"stream":"exit"');
  });

  it('a stream the client abandons is killed and still gets an exec-log row (exit -1, output so far)', async () => {
    const ac = new AbortController();
    const res = await stream('echo first; sleep 20; echo never', ac.signal);
    const reader = res.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toContain('first');
    ac.abort();
    await reader.cancel().catch(() => undefined);
    const deadline = Date.now() + 5000;
    let row: Record<string, unknown> | undefined;
    while (Date.now() < deadline && row === undefined) {
      await h.cp.sandboxes.drain();
      const rows = await h.cp.store.execLogs.list(id, 10);
      const hit = rows.find((r) => r.command.includes('sleep 20'));
      if (hit !== undefined) row = { ...hit };
      else await new Promise((r) => setTimeout(r, 50));
    }
    expect(row).toMatchObject({ exitCode: -1, streamed: true, timedOut: false });
    expect(String(row?.['stdout'])).toBe('first\n');
  });
});
