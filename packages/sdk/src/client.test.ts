import { describe, expect, it } from 'vitest';
import { Client, spawnBody } from './client.js';
import { RequestTimeoutError } from './errors.js';
import { execBody, modeString } from './sandbox.js';
import { templateBody, templateSpawnBody } from './templates.js';

describe('request bodies', () => {
  it('spawnBody maps both option spellings to the wire names and omits the rest', () => {
    expect(spawnBody()).toEqual({});
    expect(
      spawnBody({ memoryMb: 1, memory_mb: 2, ownerId: 'a', owner_id: 'b', ttl: 60_000, vcpus: 2 }),
    ).toEqual({ memory_mb: 1, owner_id: 'a', ttl: '60s', vcpus: 2 });
    expect(spawnBody({ memory_mb: 2, owner_id: 'b', image: 'i', ports: [80] })).toEqual({
      memory_mb: 2,
      owner_id: 'b',
      image: 'i',
      ports: [80],
    });
  });

  it('execBody: a string is shell mode, an array argv mode', () => {
    expect(execBody('echo hi')).toEqual({ command: 'echo hi' });
    expect(
      execBody('echo', { args: ['a'], env: { A: '1' }, workdir: '/w', timeout: 2500 }),
    ).toEqual({ command: 'echo', args: ['a'], env: { A: '1' }, workdir: '/w', timeout: '2500ms' });
    expect(execBody(['ls', '-l', 'x'], { args: ['ignored'], timeout: '5s' })).toEqual({
      command: 'ls',
      args: ['-l', 'x'],
      mode: 'argv',
      timeout: '5s',
    });
    expect(() => execBody([])).toThrow(TypeError);
  });

  it('modeString: numbers are permission bits, strings pass through', () => {
    expect(modeString(0o755)).toBe('0755');
    expect(modeString(0o4755)).toBe('4755');
    expect(modeString('644')).toBe('644');
    expect(() => modeString(-1)).toThrow(RangeError);
    expect(() => modeString(0o10000)).toThrow(RangeError);
  });

  it('templateBody uses the server field names and maps the 0.1 names', () => {
    expect(templateBody({ name: 'n', image: 'i', vcpus: 2, ttl: '5m', memoryMb: 256 })).toEqual({
      name: 'n',
      image: 'i',
      cpu_cores: 2,
      ttl: '5m',
      memory_mb: 256,
    });
    expect(templateBody({ name: 'n', image: 'i', ttl: 90_000, setupCommands: ['a'] })).toEqual({
      name: 'n',
      image: 'i',
      ttl: '90s',
      setup: ['a'],
    });
    expect(
      templateBody({
        name: 'n',
        image: 'i',
        provider: 'mock',
        description: 'd',
        cpu_cores: 4,
        vcpus: 1,
        ttl_seconds: 9,
        ttl: '1h',
        setup: ['x'],
        env: { A: '1' },
        metadata: { k: 'v' },
        ports: [80],
      }),
    ).toEqual({
      name: 'n',
      image: 'i',
      provider: 'mock',
      description: 'd',
      cpu_cores: 4,
      ttl_seconds: 9,
      setup: ['x'],
      env: { A: '1' },
      metadata: { k: 'v' },
      ports: [80],
    });
    expect(() => templateBody({ name: 'n', image: 'i', ttl: -1 })).toThrow(RangeError);
  });

  it('templateSpawnBody sends only the overrides given', () => {
    expect(templateSpawnBody()).toEqual({});
    expect(
      templateSpawnBody({
        ttl: 300_000,
        owner_id: 'b',
        ownerId: 'a',
        provider: 'mock',
        metadata: { m: '1' },
        env: { E: '2' },
      }),
    ).toEqual({
      ttl: '300s',
      owner_id: 'a',
      provider: 'mock',
      metadata: { m: '1' },
      env: { E: '2' },
    });
  });
});

describe('Client transport (stub fetch)', () => {
  it('validates timeoutMs', () => {
    expect(() => new Client({ timeoutMs: -1 })).toThrow(RangeError);
  });

  it('the timeout aborts a fetch that never settles', async () => {
    const c = new Client({
      timeoutMs: 50,
      fetch: (_url, init) =>
        new Promise((_resolve, reject) => {
          init.signal?.addEventListener('abort', () => reject(init.signal?.reason as Error));
        }),
    });
    await expect(c.health()).rejects.toBeInstanceOf(RequestTimeoutError);
  });

  it('sends JSON with a content type, and no body or content type on GET', async () => {
    const calls: { url: string; init: RequestInit }[] = [];
    const c = new Client({
      baseUrl: 'http://h:1/',
      apiKey: 'k',
      fetch: async (url, init) => {
        calls.push({ url, init });
        return new Response(JSON.stringify({ allowed: true }), { status: 200 });
      },
    });
    await c.admission({ ttl: '1h' });
    await c.admission();
    expect(calls[0]).toMatchObject({
      url: 'http://h:1/api/v1/sandboxes/admission',
      init: {
        method: 'POST',
        body: '{"ttl":"1h"}',
        headers: { 'X-API-Key': 'k', 'Content-Type': 'application/json' },
      },
    });
    expect(calls[1]?.init.body).toBe('{}');
  });
});

describe('Sandbox.getPreviewUrl', () => {
  const base = {
    id: 'sb-0000abcd',
    state: 'running',
    provider: 'mock',
    image: 'i',
    memory_mb: 1,
    vcpus: 1,
    worker_id: 'local',
    created_at: '',
    updated_at: '',
    expires_at: '',
    ports: [3000],
  };
  const sandboxFrom = async (info: Record<string, unknown>) =>
    new Client({
      fetch: async () => new Response(JSON.stringify({ ...base, ...info }), { status: 200 }),
    }).get('sb-0000abcd');

  it('uses preview_domain, and preview_scheme / preview_port when the server sends them', async () => {
    expect((await sandboxFrom({ preview_domain: 'p.test' })).getPreviewUrl(3000)).toBe(
      'http://3000-sb-0000abcd.p.test',
    );
    expect(
      (
        await sandboxFrom({ preview_domain: 'p.test', preview_scheme: 'https', preview_port: 8443 })
      ).getPreviewUrl(5173),
    ).toBe('https://5173-sb-0000abcd.p.test:8443');
    expect((await sandboxFrom({ preview_domain: '' })).getPreviewUrl(80)).toBe(
      'http://80-sb-0000abcd.localhost',
    );
  });
});
