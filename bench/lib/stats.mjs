// Statistics shared by the benchmarks: nearest-rank percentiles, summaries, ratios, medians and
// the Go-style durations the wire uses.

/** Nearest-rank percentile of an ascending array; NaN for an empty one. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

/** Rounds to 3 decimals; null for NaN and infinities (so JSON output stays valid). */
export function round3(x) {
  return Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null;
}

/** n, p50, p90, p99, mean and max of `samples` (ms), rounded; null figures when empty. */
export function summarize(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = sorted.reduce((s, x) => s + x, 0) / (sorted.length || 1);
  return {
    n: sorted.length,
    p50: round3(percentile(sorted, 50)),
    p90: round3(percentile(sorted, 90)),
    p99: round3(percentile(sorted, 99)),
    mean: round3(sorted.length === 0 ? NaN : mean),
    max: round3(sorted.length === 0 ? NaN : sorted[sorted.length - 1]),
  };
}

/** a / b rounded, or null when either is missing or b is 0. */
export function ratio(a, b) {
  return a === null || a === undefined || b === null || b === undefined || b === 0
    ? null
    : round3(a / b);
}

/** a − b rounded, or null when either is missing. */
export function diff(a, b) {
  return a === null || a === undefined || b === null || b === undefined ? null : round3(a - b);
}

/**
 * Median of the finite numbers in `values` (mean of the middle two for an even count), or null
 * when there are none. For combining figures of several runs.
 */
export function median(values) {
  const xs = values
    .filter((v) => typeof v === 'number' && Number.isFinite(v))
    .sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = Math.floor(xs.length / 2);
  return round3(xs.length % 2 === 1 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2);
}

/** Parses a Go-style duration string as the wire uses ("11.07ms", "850µs", "1.2s") into ms. */
export function goDurationMs(text) {
  if (typeof text !== 'string') return undefined;
  const unit = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1e3, m: 6e4, h: 3.6e6 };
  let total = 0;
  let matched = '';
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(m[1]) * unit[m[2]];
    matched += m[0];
  }
  return matched.length > 0 && matched === text ? total : undefined;
}

/** Formats a number for a table: fixed digits, '-' when missing. */
export function fmt(x, digits = 2) {
  return x === null || x === undefined ? '-' : x.toFixed(digits);
}
