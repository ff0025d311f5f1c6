import { describe, expect, it } from 'vitest';
import { parseGoDuration, toGoDuration } from './duration.js';

describe('toGoDuration', () => {
  it('passes strings through and writes milliseconds as s or ms', () => {
    expect(toGoDuration('1h30m', 'ttl')).toBe('1h30m');
    expect(toGoDuration(0, 'ttl')).toBe('0s');
    expect(toGoDuration(90_000, 'ttl')).toBe('90s');
    expect(toGoDuration(1500, 'ttl')).toBe('1500ms');
    expect(toGoDuration(0.5, 'ttl')).toBe('0.5ms');
  });
  it('refuses numbers that are not durations, naming the field', () => {
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, 1e16]) {
      expect(() => toGoDuration(bad, 'timeout')).toThrow(/^timeout: /);
    }
  });
});

describe('parseGoDuration', () => {
  it.each([
    ['0', 0],
    ['0s', 0],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h30m', 5_400_000],
    ['1.5h', 5_400_000],
    ['250ms', 250],
    ['8.133952ms', 8.133952],
    ['10m0s', 600_000],
    ['24h0m0s', 86_400_000],
    ['1500us', 1.5],
    ['2µs', 0.002],
    ['100ns', 0.0001],
    ['-1s', -1000],
    ['.5s', 500],
  ])('%s = %d ms', (text, ms) => {
    expect(parseGoDuration(text)).toBeCloseTo(ms, 9);
  });
  it.each(['', 'forever', '1d', '5', 's', '1h 30m', '--1s'])('%j does not parse', (text) => {
    expect(parseGoDuration(text)).toBeUndefined();
  });
});
