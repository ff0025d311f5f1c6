import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BadRequestError,
  NotFoundError,
  PayloadTooLargeError,
  ResourceLimitError,
} from '../../src/index.js';
import type { Client, Sandbox } from '../../src/index.js';
import { caught, startSdkServer } from './support.js';
import type { SdkServer } from './support.js';

describe('Sandbox files and lifetime against a real stacyvm serve', () => {
  let srv: SdkServer;
  let client: Client;
  let sb: Sandbox;
  beforeAll(async () => {
    // A small JSON body limit, to show raw uploads are not subject to it.
    srv = await startSdkServer({ STACYVM_SERVER_MAX_BODY_BYTES: '65536' });
    client = srv.client();
    sb = await client.spawn({ ports: [3000, 5173] });
  });
  afterAll(async () => {
    await sb?.destroy().catch(() => undefined);
    await srv?.stop();
  });

  it('writeFile/readFile round-trip UTF-8 text', async () => {
    const text = 'héllo ✓ 🚀\nline two\n';
    await sb.writeFile('/workspace/hello.txt', text);
    expect(await sb.readFile('/workspace/hello.txt')).toBe(text);
    expect(await sb.readFile('hello.txt')).toBe(text);
    expect((await sb.exec('cat hello.txt')).stdout).toBe(text);
  });

  it('a binary file with all 256 byte values round-trips byte for byte', async () => {
    const bytes = new Uint8Array(256 * 4 + 3);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 3) % 256;
    expect(new Set(bytes).size).toBe(256);
    await sb.writeFile('/workspace/bin/all.bin', bytes, { mode: 0o600 });
    const back = await sb.readFileBytes('/workspace/bin/all.bin');
    expect(back).toBeInstanceOf(Uint8Array);
    expect(back.length).toBe(bytes.length);
    expect(Buffer.from(back).equals(Buffer.from(bytes))).toBe(true);
    // What is on disk in the sandbox is the same bytes (not just a symmetric encoding).
    const sha = createHash('sha256').update(bytes).digest('hex');
    expect((await sb.exec('sha256sum bin/all.bin')).stdout.split(' ')[0]).toBe(sha);
    expect(await sb.statFile('bin/all.bin')).toMatchObject({
      path: '/workspace/bin/all.bin',
      name: 'all.bin',
      size: bytes.length,
      mode: '0600',
      is_dir: false,
    });
    // An ArrayBuffer works too.
    await sb.writeFile('ab.bin', bytes.buffer);
    expect(Buffer.from(await sb.readFileBytes('ab.bin')).equals(Buffer.from(bytes))).toBe(true);
  });

  it('raw uploads are not subject to the JSON body limit; JSON ones are', async () => {
    const big = new Uint8Array(300_000).fill(0x61);
    await sb.writeFile('big.bin', big);
    expect((await sb.statFile('big.bin')).size).toBe(300_000);
    const err = await caught(() => sb.writeFile('big.txt', 'a'.repeat(100_000)));
    expect(err).toBeInstanceOf(PayloadTooLargeError);
    expect(err).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', status: 413 });
    // Strings above 1M characters go raw, so they pass.
    await sb.writeFile('huge.txt', 'b'.repeat(1_200_000));
    expect((await sb.statFile('huge.txt')).size).toBe(1_200_000);
  });

  it('writeFile mode: options object, 0.1 positional string, number', async () => {
    await sb.writeFile('m1.sh', 'echo 1', { mode: '0755' });
    await sb.writeFile('m2.sh', 'echo 2', '0700');
    await sb.writeFile('m3.sh', 'echo 3', 0o750);
    expect((await sb.statFile('m1.sh')).mode).toBe('0755');
    expect((await sb.statFile('m2.sh')).mode).toBe('0700');
    expect((await sb.statFile('m3.sh')).mode).toBe('0750');
    expect((await sb.statFile('hello.txt')).mode).toBe('0644');
  });

  it('listFiles, globFiles, moveFile, chmodFile, statFile, deleteFile', async () => {
    await sb.writeFile('/workspace/tree/a.log', 'a');
    await sb.writeFile('/workspace/tree/b.log', 'b');
    await sb.writeFile('/workspace/tree/deep/c.txt', 'c');
    const list = await sb.listFiles('/workspace/tree');
    expect(list.map((f) => f.name).sort()).toEqual(['a.log', 'b.log', 'deep']);
    expect(list.find((f) => f.name === 'deep')).toMatchObject({ is_dir: true });
    expect(await sb.globFiles('/workspace/tree/*.log')).toEqual([
      '/workspace/tree/a.log',
      '/workspace/tree/b.log',
    ]);
    expect(await sb.globFiles('/workspace/tree/**/*.txt')).toEqual(['/workspace/tree/deep/c.txt']);
    expect((await sb.listFiles()).map((f) => f.path)).toContain('/workspace');

    await sb.moveFile('/workspace/tree/a.log', '/workspace/moved/a.log');
    expect(await sb.readFile('/workspace/moved/a.log')).toBe('a');
    await expect(sb.statFile('/workspace/tree/a.log')).rejects.toBeInstanceOf(NotFoundError);

    await sb.chmodFile('/workspace/moved/a.log', '0755');
    expect((await sb.statFile('/workspace/moved/a.log')).mode).toBe('0755');
    await sb.chmodFile('/workspace/moved/a.log', 0o640);
    expect((await sb.statFile('/workspace/moved/a.log')).mode).toBe('0640');

    await sb.deleteFile('/workspace/tree/b.log');
    await expect(sb.readFile('/workspace/tree/b.log')).rejects.toBeInstanceOf(NotFoundError);
    const notEmpty = await caught(() => sb.deleteFile('/workspace/tree'));
    expect(notEmpty).toBeInstanceOf(BadRequestError);
    expect((notEmpty as Error).message).toContain('recursive=true');
    await sb.deleteFile('/workspace/tree', { recursive: true });
    await expect(sb.statFile('/workspace/tree')).rejects.toBeInstanceOf(NotFoundError);
    await sb.writeFile('/workspace/tree2/x', 'x');
    await sb.deleteFile('/workspace/tree2', true);
    await expect(sb.statFile('/workspace/tree2')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('file errors: missing file → NotFoundError, escape → BadRequestError', async () => {
    const missing = await caught(() => sb.readFile('/workspace/nope'));
    expect(missing).toBeInstanceOf(NotFoundError);
    expect((missing as Error).message).toBe('no such file: /workspace/nope');
    await expect(sb.readFileBytes('../../../etc/passwd')).rejects.toBeInstanceOf(BadRequestError);
    await expect(sb.deleteFile('/workspace/nope')).rejects.toBeInstanceOf(NotFoundError);
    await expect(sb.chmodFile('x', 'rwx')).rejects.toBeInstanceOf(BadRequestError);
  });

  it('extendTtl (Go duration and ms), refresh, stats', async () => {
    const before = Date.parse(sb.expiresAt);
    const t0 = Date.now();
    const same = await sb.extendTtl('2h');
    expect(same).toBe(sb);
    const exp = Date.parse(sb.expiresAt);
    expect(exp).toBeGreaterThan(before);
    expect(exp - t0).toBeGreaterThanOrEqual(2 * 3_600_000 - 1_000);
    expect(exp - t0).toBeLessThanOrEqual(2 * 3_600_000 + 5_000);
    await sb.extendTtl(60_000);
    expect(Date.parse(sb.expiresAt) - Date.now()).toBeLessThanOrEqual(60_000);
    await sb.extendTtl();
    expect(Date.parse(sb.expiresAt) - Date.now()).toBeGreaterThan(29 * 60_000);
    await expect(sb.extendTtl('25h')).rejects.toBeInstanceOf(ResourceLimitError);
    await expect(sb.extendTtl('soon')).rejects.toBeInstanceOf(BadRequestError);

    const other = await client.get(sb.id);
    await sb.extendTtl('45m');
    expect(other.expiresAt).not.toBe(sb.expiresAt);
    expect(await other.refresh()).toBe(other);
    expect(other.expiresAt).toBe(sb.expiresAt);

    expect(await sb.stats()).toEqual({ supported: false });
  });

  it('getPreviewUrl builds {scheme}://{port}-{id}.{preview_domain}[:{gateway port}]', async () => {
    // Scheme and gateway port come from the server object when it carries them (unit-tested).
    const { preview_scheme: scheme, preview_port: gw } = sb.info;
    const tail = `.localhost${gw === undefined ? '' : `:${gw}`}`;
    expect(sb.getPreviewUrl(3000)).toBe(`${scheme ?? 'http'}://3000-${sb.id}${tail}`);
    expect(sb.getPreviewUrl(5173)).toBe(`${scheme ?? 'http'}://5173-${sb.id}${tail}`);
    expect(sb.getPreviewUrl(3000)).toMatch(/^https?:\/\/3000-sb-[0-9a-f]{8}\.localhost(:\d+)?$/);
    expect(() => sb.getPreviewUrl(0)).toThrow(RangeError);
  });

  it('the preview domain comes from the server', async () => {
    const other = await startSdkServer({ STACYVM_SERVER_PREVIEW_DOMAIN: 'preview.example.test' });
    try {
      const s = await other.client().spawn({});
      expect(s.previewDomain).toBe('preview.example.test');
      expect(s.getPreviewUrl(8080)).toMatch(
        new RegExp(`^https?://8080-${s.id}\\.preview\\.example\\.test(:\\d+)?$`),
      );
      await s.destroy();
    } finally {
      await other.stop();
    }
  });
});
