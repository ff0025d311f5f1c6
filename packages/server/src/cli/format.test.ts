import { describe, expect, test } from 'vitest';
import {
  formatBytes,
  formatRelativeTime,
  formatSpan,
  formatTimestampRelative,
  renderKeyValue,
  renderTable,
} from './format.js';

describe('renderTable', () => {
  test('aligns every column to its widest cell with two spaces between columns', () => {
    const out = renderTable(
      ['ID', 'STATE', 'IMAGE'],
      [
        ['sb-1', 'running', 'alpine:latest'],
        ['sb-22222', 'creating', 'node:20'],
      ],
    );
    expect(out.split('\n')).toEqual([
      'ID        STATE     IMAGE',
      'sb-1      running   alpine:latest',
      'sb-22222  creating  node:20',
    ]);
  });

  test('never leaves trailing spaces, even when the last cells are empty', () => {
    const out = renderTable(['A', 'B', 'C'], [['x', 'long value', ''], ['yy']]);
    for (const line of out.split('\n')) expect(line).toBe(line.trimEnd());
    expect(out.split('\n')).toEqual(['A   B           C', 'x   long value', 'yy']);
  });

  test('renders only the header line when there are no rows', () => {
    expect(renderTable(['NAME', 'SIZE'], [])).toBe('NAME  SIZE');
  });
});

describe('renderKeyValue', () => {
  test('aligns values after the longest key', () => {
    expect(
      renderKeyValue([
        ['ID', 'sb-1'],
        ['Preview domain', 'p.example'],
      ]),
    ).toBe('ID              sb-1\nPreview domain  p.example');
  });
});

describe('formatRelativeTime', () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);

  test('says "in 29m" for a TTL a few seconds short of 30 minutes', () => {
    expect(formatRelativeTime(now + 30 * 60_000 - 5_000, now)).toBe('in 29m');
  });

  test('says "5m ago" for a time in the past', () => {
    expect(formatRelativeTime(now - 5 * 60_000 - 10_000, now)).toBe('5m ago');
  });

  test('says "now" within a second either way', () => {
    expect(formatRelativeTime(now + 400, now)).toBe('now');
    expect(formatRelativeTime(now - 999, now)).toBe('now');
  });

  test('uses seconds, hours with minutes, and days with hours as the span grows', () => {
    expect(formatRelativeTime(now + 42_000, now)).toBe('in 42s');
    expect(formatRelativeTime(now + 90 * 60_000, now)).toBe('in 1h30m');
    expect(formatRelativeTime(now - 2 * 3_600_000, now)).toBe('2h ago');
    expect(formatRelativeTime(now - (3 * 24 + 4) * 3_600_000, now)).toBe('3d4h ago');
    expect(formatSpan(48 * 3_600_000)).toBe('2d');
  });

  test('gives "-" for a time that is not a number', () => {
    expect(formatRelativeTime(Number.NaN, now)).toBe('-');
  });
});

describe('formatTimestampRelative', () => {
  const now = Date.UTC(2026, 4, 9, 10, 0, 0);

  test('reads RFC 3339 with nanoseconds and a zone offset', () => {
    expect(formatTimestampRelative('2026-05-09T12:30:00.123456789+02:00', now)).toBe('in 30m');
  });

  test('shows unparsable text as it came rather than hiding it', () => {
    expect(formatTimestampRelative('soonish', now)).toBe('soonish');
    expect(formatTimestampRelative(undefined, now)).toBe('-');
  });
});

describe('formatBytes', () => {
  test('uses bytes below one KiB', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
  });

  test('keeps one decimal below ten of a unit and none above', () => {
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(1024)).toBe('1 KiB');
    expect(formatBytes(12 * 1024 * 1024 + 300_000)).toBe('12 MiB');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5 GiB');
  });

  test('gives "-" for negative or non-finite sizes', () => {
    expect(formatBytes(-1)).toBe('-');
    expect(formatBytes(Number.POSITIVE_INFINITY)).toBe('-');
  });
});
