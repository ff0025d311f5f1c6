/**
 * Pure text formatting for the human-readable CLI output. Nothing here does
 * I/O, so every rule is unit-tested without a server.
 */

/**
 * Renders rows as left-aligned columns separated by two spaces. Every column
 * but the last is padded to its widest cell; lines never end in spaces (so
 * output diffs and `grep` behave). Missing cells render as empty. Widths count
 * UTF-16 code units, which is exact for the ASCII our tables hold.
 */
export function renderTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const columns = Math.max(headers.length, ...rows.map((r) => r.length));
  const widths: number[] = [];
  for (let c = 0; c < columns; c++) {
    widths.push(Math.max(headers[c]?.length ?? 0, ...rows.map((r) => r[c]?.length ?? 0)));
  }
  const line = (cells: readonly string[]): string => {
    const parts: string[] = [];
    for (let c = 0; c < columns; c++) {
      const cell = cells[c] ?? '';
      parts.push(c === columns - 1 ? cell : cell.padEnd(widths[c] ?? 0));
    }
    return parts.join('  ').trimEnd();
  };
  return [line(headers), ...rows.map(line)].join('\n');
}

/**
 * Renders `key  value` pairs with the keys aligned, for single-object views
 * such as `stacyvm get`.
 */
export function renderKeyValue(pairs: readonly (readonly [string, string])[]): string {
  const width = Math.max(0, ...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(width)}  ${v}`.trimEnd()).join('\n');
}

const SECOND_MS = 1000;
const MINUTE_MS = 60 * SECOND_MS;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;

/** A compact span: `45s`, `29m`, `1h30m`, `2d3h`. Rounds down, as a countdown reads. */
export function formatSpan(spanMs: number): string {
  const ms = Math.abs(spanMs);
  if (ms < MINUTE_MS) return `${Math.floor(ms / SECOND_MS)}s`;
  if (ms < HOUR_MS) return `${Math.floor(ms / MINUTE_MS)}m`;
  if (ms < DAY_MS) {
    const h = Math.floor(ms / HOUR_MS);
    const m = Math.floor((ms - h * HOUR_MS) / MINUTE_MS);
    return m === 0 ? `${h}h` : `${h}h${m}m`;
  }
  const d = Math.floor(ms / DAY_MS);
  const h = Math.floor((ms - d * DAY_MS) / HOUR_MS);
  return h === 0 ? `${d}d` : `${d}d${h}h`;
}

/**
 * A time relative to now: `in 29m` for the future, `5m ago` for the past, and
 * `now` within a second either way. `NaN` input (an unparsable timestamp)
 * gives `-`.
 */
export function formatRelativeTime(ms: number, nowMs: number): string {
  if (!Number.isFinite(ms) || !Number.isFinite(nowMs)) return '-';
  const diff = ms - nowMs;
  if (Math.abs(diff) < SECOND_MS) return 'now';
  return diff > 0 ? `in ${formatSpan(diff)}` : `${formatSpan(diff)} ago`;
}

/**
 * Relative form of an RFC 3339 timestamp from the wire, or the raw text when
 * it does not parse (better to show what the server said than to hide it).
 */
export function formatTimestampRelative(rfc3339: string | undefined, nowMs: number): string {
  if (rfc3339 === undefined || rfc3339 === '') return '-';
  const ms = Date.parse(rfc3339);
  return Number.isNaN(ms) ? rfc3339 : formatRelativeTime(ms, nowMs);
}

const BYTE_UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/**
 * Binary-prefixed size: `512 B`, `1.5 KiB`, `12 MiB`. One decimal below 10 of
 * a unit, none above, so columns stay short.
 */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '-';
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  let value = bytes;
  let unit: string = 'B';
  for (const next of BYTE_UNITS) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  const text = value < 10 ? value.toFixed(1).replace(/\.0$/, '') : Math.round(value).toString();
  return `${text} ${unit}`;
}
