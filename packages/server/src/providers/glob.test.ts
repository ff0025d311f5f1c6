import { describe, expect, it } from 'vitest';
import { compileGlob, matchGlob } from './glob.js';
import type { GlobMatcher } from './glob.js';

function compile(pattern: string): GlobMatcher {
  const m = compileGlob(pattern);
  if ('problem' in m) throw new Error(`unexpected problem: ${m.problem}`);
  return m;
}

describe('matchGlob', () => {
  it.each([
    ['/workspace/*.log', '/workspace/a.log', true],
    ['/workspace/*.log', '/workspace/.hidden.log', true],
    ['/workspace/*.log', '/workspace/a.txt', false],
    ['/workspace/*.log', '/workspace/sub/a.log', false],
    ['/workspace/*', '/workspace', false],
    ['/workspace/?.txt', '/workspace/a.txt', true],
    ['/workspace/?.txt', '/workspace/ab.txt', false],
    ['/workspace/[ab].txt', '/workspace/b.txt', true],
    ['/workspace/[ab].txt', '/workspace/c.txt', false],
    ['/workspace/[a-c]x', '/workspace/bx', true],
    ['/workspace/[a-c]x', '/workspace/dx', false],
    ['/workspace/[!a-c]x', '/workspace/dx', true],
    ['/workspace/[^a-c]x', '/workspace/ax', false],
    ['/workspace/[]]', '/workspace/]', true],
    ['/workspace/[a-]', '/workspace/-', true],
    ['/workspace/\\*', '/workspace/*', true],
    ['/workspace/\\*', '/workspace/a', false],
    ['/workspace/a.b', '/workspace/aXb', false],
    ['/workspace/(a|b)', '/workspace/(a|b)', true],
    ['/workspace/(a|b)', '/workspace/a', false],
    ['/workspace/**/*.ts', '/workspace/a.ts', true],
    ['/workspace/**/*.ts', '/workspace/x/y/z/a.ts', true],
    ['/workspace/**/*.ts', '/workspace/x/y/a.js', false],
    ['/workspace/**', '/workspace', true],
    ['/workspace/**', '/workspace/deep/er', true],
    ['/**/b/**/c', '/a/b/x/y/c', true],
    ['/**/b/**/c', '/a/x/y/c', false],
    ['/workspace/a**b', '/workspace/aXYb', true],
    ['/workspace/a**b', '/workspace/aX/Yb', false],
    ['/workspace//a/', '/workspace/a', true],
    ['/workspace/😀?', '/workspace/😀😀', true],
    ['/workspace/[😀-😂]', '/workspace/😁', true],
    ['/workspace/*', '/workspace/line\nbreak', true],
  ])('pattern %j against %j is %s', (pattern, path, expected) => {
    expect(matchGlob(pattern, path)).toBe(expected);
  });

  it('treats a malformed pattern as matching nothing', () => {
    expect(matchGlob('/workspace/[ab', '/workspace/[ab')).toBe(false);
  });
});

describe('compileGlob', () => {
  it.each([
    ['/workspace/[ab', 'unclosed "["'],
    ['/workspace/[z-a]', 'bad range "z-a"'],
    ['/workspace/a\\', 'trailing "\\"'],
    ['', 'pattern is required'],
  ])('reports the problem with %j', (pattern, problem) => {
    const m = compileGlob(pattern);
    expect('problem' in m ? m.problem : '').toContain(problem);
  });

  it.each([
    ['/workspace/src/*.ts', '/workspace/src'],
    ['/workspace/**/x', '/workspace'],
    ['/workspace/a.txt', '/workspace'],
    ['/*/x', '/'],
    ['/', '/'],
    ['/workspace/\\*/x', '/workspace/*'],
  ])('starts the walk for %j at %j', (pattern, base) => {
    expect(compile(pattern).base).toBe(base);
  });

  it('names the one path a pattern without wildcards stands for', () => {
    expect(compile('/workspace//a.txt').literalPath).toBe('/workspace/a.txt');
    expect(compile('/workspace/\\*').literalPath).toBe('/workspace/*');
    expect(compile('/workspace/*.txt').literalPath).toBeUndefined();
    expect(compile('/workspace/**').literalPath).toBeUndefined();
  });

  it('says a walk must descend only into directories that can lead to a match', () => {
    const m = compile('/workspace/src/*/index.ts');
    expect(m.canMatchBelow('/workspace')).toBe(true);
    expect(m.canMatchBelow('/workspace/src')).toBe(true);
    expect(m.canMatchBelow('/workspace/src/lib')).toBe(true);
    expect(m.canMatchBelow('/workspace/src/lib/deeper')).toBe(false);
    expect(m.canMatchBelow('/workspace/docs')).toBe(false);
    expect(m.canMatchBelow('/tmp')).toBe(false);
  });

  it('keeps descending under a globstar', () => {
    const m = compile('/workspace/**/*.ts');
    expect(m.canMatchBelow('/workspace/a/b/c/d')).toBe(true);
    expect(m.canMatchBelow('/tmp')).toBe(false);
  });

  it('matches many globstars without blowing up', () => {
    const pattern = `/${Array.from({ length: 30 }, () => '**').join('/')}/z`;
    const path = `/${Array.from({ length: 60 }, () => 'a').join('/')}/y`;
    const started = performance.now();
    expect(matchGlob(pattern, path)).toBe(false);
    expect(performance.now() - started).toBeLessThan(1000);
  });
});
