import { describe, expect, it } from 'vitest';
import {
  formatDurationMs,
  formatDurationNs,
  parseDurationMs,
  parseDurationNs,
} from './duration.js';

describe('Go durations', () => {
  it.each([
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h30m', 5_400_000],
    ['1.5h', 5_400_000],
    ['2h45m10s', 9_910_000],
    ['250ms', 250],
    ['0', 0],
    ['-1s', -1000],
    ['+3s', 3000],
    ['.5s', 500],
    ['1500us', 1.5],
    ['1500µs', 1.5],
  ])('parses %s as %d ms', (input, ms) => {
    expect(parseDurationMs(input)).toBe(ms);
  });

  it.each(['', '5', '5x', '1d', 's', 'abc', '1h-5m', '.s', '--1s'])(
    'rejects %j with a message',
    (input) => {
      expect(() => parseDurationNs(input)).toThrow(/invalid duration/);
    },
  );

  it.each([
    [0, '0s'],
    [30_000, '30s'],
    [600_000, '10m0s'],
    [86_400_000, '24h0m0s'],
    [5_400_000, '1h30m0s'],
    [1.234567, '1.234567ms'],
    [1500, '1.5s'],
    [-2000, '-2s'],
  ])('formats %d ms as %s, as Go does', (ms, text) => {
    expect(formatDurationMs(ms)).toBe(text);
  });

  it('formats sub-millisecond values in µs and ns', () => {
    expect(formatDurationNs(1500)).toBe('1.5µs');
    expect(formatDurationNs(999)).toBe('999ns');
  });

  it('round-trips what it formats', () => {
    for (const ms of [1, 999, 61_000, 3_723_000]) {
      expect(parseDurationMs(formatDurationMs(ms))).toBe(ms);
    }
  });
});
