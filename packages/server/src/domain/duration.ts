/**
 * Go-style durations (`time.ParseDuration` / `Duration.String()`), because the
 * reference's configs, SDKs and scripts speak them: `30s`, `1h30m`, `1.5h`,
 * `250ms`. No `d` unit, as in Go.
 */

const UNIT_NS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3, // U+00B5 micro sign
  μs: 1e3, // U+03BC Greek mu
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

const UNITS_BY_LENGTH = Object.keys(UNIT_NS).sort((a, b) => b.length - a.length);

export class DurationSyntaxError extends Error {
  constructor(input: string, reason: string) {
    super(`invalid duration "${input}": ${reason} (use Go syntax such as 30s, 5m, 1h30m)`);
    this.name = 'DurationSyntaxError';
  }
}

/** Parses a Go duration string into nanoseconds. Throws {@link DurationSyntaxError}. */
export function parseDurationNs(input: string): number {
  const s = input.trim();
  if (s === '') throw new DurationSyntaxError(input, 'empty');
  let i = 0;
  let sign = 1;
  if (s[0] === '-' || s[0] === '+') {
    if (s[0] === '-') sign = -1;
    i = 1;
  }
  if (s.slice(i) === '0') return 0;
  if (i >= s.length) throw new DurationSyntaxError(input, 'missing number');
  let total = 0;
  while (i < s.length) {
    const numMatch = /^([0-9]*)(\.[0-9]*)?/.exec(s.slice(i));
    const whole = numMatch?.[1] ?? '';
    const frac = numMatch?.[2] ?? '';
    if (whole === '' && (frac === '' || frac === '.')) {
      throw new DurationSyntaxError(input, `expected a number at "${s.slice(i)}"`);
    }
    i += whole.length + frac.length;
    const unit = UNITS_BY_LENGTH.find((u) => s.startsWith(u, i));
    if (unit === undefined) {
      const rest = s.slice(i);
      throw new DurationSyntaxError(
        input,
        rest === '' ? 'missing unit' : `unknown unit "${/^[^0-9.]*/.exec(rest)?.[0] ?? rest}"`,
      );
    }
    i += unit.length;
    const value = Number(`${whole === '' ? '0' : whole}${frac === '.' ? '' : frac}`);
    total += value * (UNIT_NS[unit] ?? 0);
  }
  if (!Number.isFinite(total) || total > Number.MAX_SAFE_INTEGER) {
    throw new DurationSyntaxError(input, 'out of range');
  }
  return Math.round(sign * total);
}

/** Parses a Go duration string into milliseconds (fractions kept). */
export function parseDurationMs(input: string): number {
  return parseDurationNs(input) / 1e6;
}

function trimFraction(value: string): string {
  return value.includes('.') ? value.replace(/0+$/, '').replace(/\.$/, '') : value;
}

/** Formats nanoseconds as Go's `Duration.String()`: `0s`, `1.5ms`, `10m0s`, `24h0m0s`. */
export function formatDurationNs(nsIn: number): string {
  let ns = Math.round(nsIn);
  if (ns === 0) return '0s';
  const neg = ns < 0;
  if (neg) ns = -ns;
  let out: string;
  if (ns < 1e9) {
    if (ns < 1e3) out = `${ns}ns`;
    else if (ns < 1e6) out = `${trimFraction((ns / 1e3).toFixed(3))}µs`;
    else out = `${trimFraction((ns / 1e6).toFixed(6))}ms`;
  } else {
    const h = Math.floor(ns / 3600e9);
    let rest = ns - h * 3600e9;
    const m = Math.floor(rest / 60e9);
    rest -= m * 60e9;
    const secs = trimFraction((rest / 1e9).toFixed(9));
    out = h > 0 ? `${h}h${m}m${secs}s` : m > 0 ? `${m}m${secs}s` : `${secs}s`;
  }
  return neg ? `-${out}` : out;
}

/** Formats milliseconds as a Go duration string. */
export function formatDurationMs(ms: number): string {
  return formatDurationNs(ms * 1e6);
}
