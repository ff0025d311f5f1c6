import { describe, expect, it } from 'vitest';
import {
  buildPreviewUrl,
  cookieValues,
  isPreviewDomain,
  parsePreviewHost,
  parsePreviewPort,
  previewTokenCookie,
  signPreviewToken,
  takeQueryParam,
  verifyPreviewToken,
  visiblePreviewPort,
  withoutCookie,
} from './preview.js';

const ID = 'sb-0123abcd';
const DOMAINS = ['localhost', 'preview.example.com'];

describe('preview URLs', () => {
  it('builds {scheme}://{port}-{id}.{domain} and leaves out the default port', () => {
    expect(buildPreviewUrl(3000, ID, { scheme: 'http', domain: 'localhost' })).toBe(
      `http://3000-${ID}.localhost`,
    );
    expect(buildPreviewUrl(5173, ID, { scheme: 'http', domain: 'localhost', publicPort: 80 })).toBe(
      `http://5173-${ID}.localhost`,
    );
    expect(
      buildPreviewUrl(8080, ID, {
        scheme: 'https',
        domain: 'Preview.Example.com',
        publicPort: 443,
      }),
    ).toBe(`https://8080-${ID}.preview.example.com`);
  });

  it('shows a non-default gateway port, including 80 on https and 443 on http', () => {
    expect(buildPreviewUrl(1, ID, { scheme: 'http', domain: 'localhost', publicPort: 7480 })).toBe(
      `http://1-${ID}.localhost:7480`,
    );
    expect(visiblePreviewPort('https', 80)).toBe(80);
    expect(visiblePreviewPort('http', 443)).toBe(443);
    expect(visiblePreviewPort('http', 0)).toBeUndefined();
    expect(visiblePreviewPort('https', 443)).toBeUndefined();
  });

  it('parses ports as URLs write them', () => {
    expect(parsePreviewPort('1')).toBe(1);
    expect(parsePreviewPort('65535')).toBe(65535);
    for (const bad of ['0', '65536', '99999', '030', '-1', '+5', '3e3', '', ' 80', '100000']) {
      expect(parsePreviewPort(bad), bad).toBeUndefined();
    }
  });

  it('accepts DNS names as preview domains', () => {
    expect(isPreviewDomain('localhost')).toBe(true);
    expect(isPreviewDomain('Preview.Example.com')).toBe(true);
    for (const bad of ['', '-x.com', 'x..com', 'x.com.', 'a b', 'a/b', 'x_y.com']) {
      expect(isPreviewDomain(bad), bad).toBe(false);
    }
  });
});

describe('parsing a Host header', () => {
  it('reads port, sandbox id and domain, case-insensitively, with or without a port', () => {
    expect(parsePreviewHost(`3000-${ID}.localhost`, DOMAINS)).toEqual({
      ok: true,
      port: 3000,
      sandboxId: ID,
      domain: 'localhost',
      hostname: `3000-${ID}.localhost`,
    });
    expect(parsePreviewHost(`65535-SB-0123ABCD.Preview.Example.COM:7480`, DOMAINS)).toEqual({
      ok: true,
      port: 65535,
      sandboxId: ID,
      domain: 'preview.example.com',
      hostname: `65535-${ID}.preview.example.com`,
      hostPort: 7480,
    });
    expect(parsePreviewHost(`1-${ID}.localhost.`, DOMAINS)).toMatchObject({ ok: true, port: 1 });
  });

  it('refuses a missing or malformed Host with 400', () => {
    for (const bad of [
      undefined,
      '',
      `3000-${ID}.localhost:`,
      `3000-${ID}.localhost:99999`,
      `3000-${ID}.localhost:abc`,
      `3000-${ID}..localhost`,
      `3000-${ID}.local host`,
      `3000-${ID}.localhost/x`,
      '.',
      'x'.repeat(400),
    ]) {
      const r = parsePreviewHost(bad, DOMAINS);
      expect(r, String(bad)).toMatchObject({ ok: false, status: 400, problem: 'malformed' });
    }
  });

  it('refuses a preview port out of range with 400', () => {
    for (const port of ['0', '65536', '123456', '03000']) {
      expect(parsePreviewHost(`${port}-${ID}.localhost`, DOMAINS)).toMatchObject({
        ok: false,
        status: 400,
        problem: 'port_out_of_range',
      });
    }
  });

  it('refuses other domains, sub-domains and IP hosts with 404', () => {
    for (const host of [
      `3000-${ID}.example.org`,
      `3000-${ID}.evil.localhost`,
      `3000-${ID}.localhost.evil.com`,
      'localhost',
      '127.0.0.1:7480',
      '[::1]:7480',
    ]) {
      expect(parsePreviewHost(host, DOMAINS), host).toMatchObject({
        ok: false,
        status: 404,
        problem: 'unknown_domain',
      });
    }
    expect(parsePreviewHost(`3000-${ID}.localhost`, [])).toMatchObject({ status: 404 });
  });

  it('refuses hosts under a preview domain that are not {port}-{sandbox-id} with 404', () => {
    for (const host of [
      'www.localhost',
      `${ID}.localhost`,
      '3000-sb-xyz.localhost',
      '3000-.localhost',
    ]) {
      expect(parsePreviewHost(host, DOMAINS), host).toMatchObject({
        ok: false,
        status: 404,
        problem: 'not_a_preview_host',
      });
    }
  });
});

describe('preview tokens', () => {
  const key = 'k'.repeat(32);
  const now = 1_800_000_000_000;
  const claims = { sandboxId: ID, port: 3000, expiresAtMs: now + 60_000 };

  it('verifies a token for its sandbox port until it expires', () => {
    const token = signPreviewToken(claims, key);
    expect(token.startsWith(`spt1.${ID}.3000.`)).toBe(true);
    expect(verifyPreviewToken(token, { sandboxId: ID, port: 3000 }, key, now)).toEqual({
      ok: true,
      claims,
    });
    expect(verifyPreviewToken(token, { sandboxId: ID, port: 3000 }, key, now + 60_000)).toEqual({
      ok: false,
      reason: 'expired',
    });
  });

  it('refuses another port, another sandbox, another key and any edit', () => {
    const token = signPreviewToken(claims, key);
    expect(verifyPreviewToken(token, { sandboxId: ID, port: 3001 }, key, now)).toMatchObject({
      reason: 'wrong_target',
    });
    expect(
      verifyPreviewToken(token, { sandboxId: 'sb-ffffffff', port: 3000 }, key, now),
    ).toMatchObject({ reason: 'wrong_target' });
    expect(verifyPreviewToken(token, { sandboxId: ID, port: 3000 }, 'other', now)).toMatchObject({
      reason: 'bad_signature',
    });
    const parts = token.split('.');
    parts[3] = String(Number(parts[3]) + 3600);
    expect(
      verifyPreviewToken(parts.join('.'), { sandboxId: ID, port: 3000 }, key, now),
    ).toMatchObject({ reason: 'bad_signature' });
    for (const bad of [
      '',
      'spt1',
      'spt1.a.b.c.d',
      `${token}x`,
      `x${token}`,
      token.replace('spt1', 'spt2'),
    ]) {
      expect(verifyPreviewToken(bad, { sandboxId: ID, port: 3000 }, key, now).ok, bad).toBe(false);
    }
  });

  it('refuses to sign with an empty key or bad claims', () => {
    expect(() => signPreviewToken(claims, '')).toThrow(/empty/);
    expect(() => signPreviewToken({ ...claims, port: 0 }, key)).toThrow();
    expect(() => signPreviewToken({ ...claims, sandboxId: 'x' }, key)).toThrow();
  });
});

describe('cookies and query parameters', () => {
  it('finds every value of a cookie and removes it from the header', () => {
    const header = 'a=1; stacyvm_preview_token=t1; b="2"; stacyvm_preview_token="t2"';
    expect(cookieValues(header, 'stacyvm_preview_token')).toEqual(['t1', 't2']);
    expect(cookieValues(undefined, 'x')).toEqual([]);
    expect(withoutCookie(header, 'stacyvm_preview_token')).toBe('a=1; b="2"');
    expect(withoutCookie('stacyvm_preview_token=t', 'stacyvm_preview_token')).toBeUndefined();
  });

  it('builds a host-only HttpOnly cookie, Secure on https', () => {
    expect(previewTokenCookie('tok', { maxAgeSeconds: 60.7, secure: false })).toBe(
      'stacyvm_preview_token=tok; Path=/; Max-Age=60; HttpOnly; SameSite=Lax',
    );
    const secure = previewTokenCookie('tok', { maxAgeSeconds: 1, secure: true });
    expect(secure.endsWith('; Secure')).toBe(true);
    expect(secure).not.toMatch(/Domain=/);
  });

  it('takes a query parameter out and keeps the rest byte for byte', () => {
    expect(
      takeQueryParam('/a/b?x=1&stacyvm_preview_token=t%2B1&y=a%20b#f', 'stacyvm_preview_token'),
    ).toEqual({
      target: '/a/b?x=1&y=a%20b#f',
      values: ['t+1'],
    });
    expect(takeQueryParam('/?stacyvm_preview_token=t', 'stacyvm_preview_token')).toEqual({
      target: '/',
      values: ['t'],
    });
    expect(takeQueryParam('/p?q=1', 'stacyvm_preview_token')).toEqual({
      target: '/p?q=1',
      values: [],
    });
  });
});
