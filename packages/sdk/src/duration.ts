/**
 * Go duration strings, the server's syntax for `ttl` and `timeout` (`30s`, `5m`, `1h30m`,
 * `250ms`, `8.133952ms`). The SDK also accepts a number of milliseconds wherever a duration goes.
 */

/** A duration: a Go duration string, or a number of milliseconds. */
export type Duration = string | number;

const UNIT_MS: Readonly<Record<string, number>> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Converts a duration to the string the server takes. Strings pass through unchanged (the
 * server validates them and answers 400 naming the field); numbers are milliseconds.
 */
export function toGoDuration(value: Duration, field: string): string {
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value) || value < 0 || value > 1e15) {
    throw new RangeError(`${field}: ${value} is not a duration in milliseconds (0 to 1e15)`);
  }
  if (Number.isInteger(value) && value % 1000 === 0) return `${value / 1000}s`;
  return `${value}ms`;
}

/** Parses a Go duration string to milliseconds; `undefined` if it does not parse. */
export function parseGoDuration(text: string): number | undefined {
  let s = text.trim();
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    if (s.startsWith('-')) sign = -1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') return undefined;
  let total = 0;
  const part = /^(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/;
  while (s !== '') {
    const m = part.exec(s);
    if (m === null) return undefined;
    const unit = UNIT_MS[m[2] ?? ''];
    if (unit === undefined) return undefined;
    total += Number(m[1]) * unit;
    s = s.slice(m[0].length);
  }
  return sign * total;
}
