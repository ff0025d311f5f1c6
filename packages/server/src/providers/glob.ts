/**
 * A small, pure glob matcher for in-sandbox paths. Providers that walk a
 * file tree themselves (the mock provider) use it to match and to prune the
 * walk; it does no I/O.
 *
 * Syntax, per `/`-separated segment:
 * - `*` any run of characters (leading dots included, as Go's `filepath.Match`),
 * - `?` one character,
 * - `[abc]`, `[a-z]`, `[!abc]` or `[^abc]` one character of (or not of) a set,
 * - `\x` the character `x` literally,
 * - a segment that is exactly `**` matches zero or more whole segments.
 *
 * Patterns and paths are absolute and `/`-separated; empty segments are
 * ignored, so `/a//b/` is `/a/b`.
 */

type Segment =
  { kind: 'literal'; value: string } | { kind: 'pattern'; re: RegExp } | { kind: 'globstar' };

/** A compiled glob pattern. */
export interface GlobMatcher {
  /** The pattern as given. */
  readonly pattern: string;
  /**
   * The longest leading run of literal segments, as an absolute path: the
   * directory a walk starts from (`/workspace/src` for `/workspace/src/*.ts`).
   */
  readonly base: string;
  /** True when the pattern has no wildcard, so it names exactly one path (its normal form). */
  readonly literalPath: string | undefined;
  /** Whether `path` matches the whole pattern. */
  matches(path: string): boolean;
  /** Whether some path strictly below directory `dir` could match, so a walk must descend. */
  canMatchBelow(dir: string): boolean;
}

// With the `u` flag only syntax characters may be escaped, and the sets differ inside a class.
const REGEX_SPECIAL = /[\\^$.*+?()[\]{}|/]/g;
const CLASS_SPECIAL = /[\\\]^[-]/g;

function escapeRegex(s: string): string {
  return s.replace(REGEX_SPECIAL, '\\$&');
}

function escapeClass(s: string): string {
  return s.replace(CLASS_SPECIAL, '\\$&');
}

function splitPath(path: string): string[] {
  return path.split('/').filter((s) => s.length > 0);
}

/** Parses a `[...]` class starting at `start` (the `[`); returns the regex source and the index after `]`. */
function parseClass(
  chars: string[],
  start: number,
): { source: string; end: number } | { problem: string } {
  const seg = chars.join('');
  let i = start + 1;
  let negate = false;
  if (chars[i] === '!' || chars[i] === '^') {
    negate = true;
    i++;
  }
  const items: string[] = [];
  let first = true;
  for (;;) {
    if (i >= chars.length) return { problem: `unclosed "[" in "${seg}"` };
    let ch = chars[i] as string;
    if (ch === ']' && !first) break;
    first = false;
    if (ch === '\\') {
      i++;
      if (i >= chars.length) return { problem: `unclosed "[" in "${seg}"` };
      ch = chars[i] as string;
    }
    i++;
    if (chars[i] === '-' && i + 1 < chars.length && chars[i + 1] !== ']') {
      i++;
      let hi = chars[i] as string;
      if (hi === '\\') {
        i++;
        if (i >= chars.length) return { problem: `unclosed "[" in "${seg}"` };
        hi = chars[i] as string;
      }
      i++;
      if ((hi.codePointAt(0) ?? 0) < (ch.codePointAt(0) ?? 0))
        return { problem: `bad range "${ch}-${hi}" in "${seg}"` };
      items.push(`${escapeClass(ch)}-${escapeClass(hi)}`);
    } else {
      items.push(escapeClass(ch));
    }
  }
  return { source: `[${negate ? '^' : ''}${items.join('')}]`, end: i + 1 };
}

function compileSegment(seg: string): Segment | { problem: string } {
  if (seg === '**') return { kind: 'globstar' };
  let source = '';
  let literal = '';
  let isLiteral = true;
  const chars = Array.from(seg);
  for (let i = 0; i < chars.length;) {
    const ch = chars[i] as string;
    if (ch === '\\') {
      if (i + 1 >= chars.length) return { problem: `trailing "\\" in "${seg}"` };
      const next = chars[i + 1] as string;
      source += escapeRegex(next);
      literal += next;
      i += 2;
    } else if (ch === '*') {
      source += '.*';
      isLiteral = false;
      i++;
    } else if (ch === '?') {
      source += '.';
      isLiteral = false;
      i++;
    } else if (ch === '[') {
      const cls = parseClass(chars, i);
      if ('problem' in cls) return cls;
      source += cls.source;
      isLiteral = false;
      i = cls.end;
    } else {
      source += escapeRegex(ch);
      literal += ch;
      i++;
    }
  }
  if (isLiteral) return { kind: 'literal', value: literal };
  // `s`: `.` must match every character, newlines included; `u`: code points, not UTF-16 halves.
  return { kind: 'pattern', re: new RegExp(`^${source}$`, 'su') };
}

function segmentMatches(seg: Segment, name: string): boolean {
  switch (seg.kind) {
    case 'literal':
      return seg.value === name;
    case 'pattern':
      return seg.re.test(name);
    case 'globstar':
      return true;
  }
}

/**
 * Matches pattern segments from `i` against path segments from `j`. With
 * `prefix`, asks instead whether the path could be extended by one or more
 * segments into a match. Memoised, so `**` runs stay polynomial.
 */
function matchFrom(pat: Segment[], path: string[], prefix: boolean): boolean {
  const memo = new Map<number, boolean>();
  const width = path.length + 1;
  const go = (i: number, j: number): boolean => {
    const key = i * width + j;
    const known = memo.get(key);
    if (known !== undefined) return known;
    let result: boolean;
    const seg = pat[i];
    if (j === path.length) {
      result = prefix ? i < pat.length : pat.slice(i).every((s) => s.kind === 'globstar');
    } else if (seg === undefined) {
      result = false;
    } else if (seg.kind === 'globstar') {
      result = go(i + 1, j) || go(i, j + 1);
    } else {
      result = segmentMatches(seg, path[j] as string) && go(i + 1, j + 1);
    }
    memo.set(key, result);
    return result;
  };
  return go(0, 0);
}

/**
 * Compiles a glob pattern, or returns the problem with it (an unclosed `[`,
 * a reversed range, a trailing backslash).
 */
export function compileGlob(pattern: string): GlobMatcher | { problem: string } {
  if (pattern.length === 0) return { problem: 'pattern is required' };
  const raw = splitPath(pattern);
  const segments: Segment[] = [];
  for (const s of raw) {
    const seg = compileSegment(s);
    if ('problem' in seg) return seg;
    segments.push(seg);
  }
  const literalPath = segments.every(
    (s): s is Extract<Segment, { kind: 'literal' }> => s.kind === 'literal',
  )
    ? `/${segments.map((s) => s.value).join('/')}`
    : undefined;
  const baseParts: string[] = [];
  for (const seg of segments) {
    if (seg.kind !== 'literal') break;
    baseParts.push(seg.value);
  }
  // A fully literal pattern's base is its parent, so a walk from the base can find it.
  if (baseParts.length === segments.length && baseParts.length > 0) baseParts.pop();
  return {
    pattern,
    base: `/${baseParts.join('/')}`,
    literalPath,
    matches: (path) => matchFrom(segments, splitPath(path), false),
    canMatchBelow: (dir) => matchFrom(segments, splitPath(dir), true),
  };
}

/** Whether `path` matches glob `pattern`; a malformed pattern matches nothing. */
export function matchGlob(pattern: string, path: string): boolean {
  const m = compileGlob(pattern);
  return 'problem' in m ? false : m.matches(path);
}
