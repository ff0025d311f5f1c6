import { describe, expect, it } from 'vitest';
import {
  canTransition,
  isSandboxId,
  newSandboxId,
  statesLeadingTo,
  validateOwnerId,
} from './sandbox.js';
import { buildExecArgv, shellQuote } from './exec.js';
import { normalizeSandboxPath, parseFileMode, formatFileMode } from './files.js';

describe('sandbox rules', () => {
  it('makes ids of sb- and 8 lowercase hex digits', () => {
    for (let i = 0; i < 50; i++) expect(isSandboxId(newSandboxId())).toBe(true);
    expect(isSandboxId('sb-ABCDEF12')).toBe(false);
  });

  it('allows only the state machine transitions', () => {
    expect(canTransition('creating', 'running')).toBe(true);
    expect(canTransition('running', 'destroying')).toBe(true);
    expect(canTransition('destroyed', 'running')).toBe(false);
    expect(canTransition('expired', 'running')).toBe(false);
    expect(statesLeadingTo('destroyed')).not.toContain('destroyed');
    expect(statesLeadingTo('destroying')).toEqual(
      expect.arrayContaining(['creating', 'running', 'unhealthy', 'expired', 'error']),
    );
  });

  it('validates owner ids', () => {
    expect(validateOwnerId('  alice ')).toBe('alice');
    expect(validateOwnerId('a/b')).toHaveProperty('problem');
    expect(validateOwnerId('a b')).toHaveProperty('problem');
    expect(validateOwnerId('x'.repeat(129))).toHaveProperty('problem');
  });
});

describe('exec argv', () => {
  it('quotes shell args so they survive sh -c', () => {
    expect(shellQuote("it's")).toBe(`'it'"'"'s'`);
    expect(buildExecArgv({ command: 'echo', args: ['a b', '$x'], mode: 'shell' })).toEqual([
      'sh',
      '-c',
      "echo 'a b' '$x'",
    ]);
  });

  it('runs argv mode verbatim', () => {
    expect(buildExecArgv({ command: 'ls', args: ['-la', 'a b'], mode: 'argv' })).toEqual([
      'ls',
      '-la',
      'a b',
    ]);
  });
});

describe('sandbox paths and modes', () => {
  it('normalises paths and takes relative ones from /workspace', () => {
    expect(normalizeSandboxPath('/workspace/./a//b/../c')).toBe('/workspace/a/c');
    expect(normalizeSandboxPath('x.txt')).toBe('/workspace/x.txt');
    expect(normalizeSandboxPath('../../etc/passwd')).toEqual({
      problem: 'path escapes the sandbox root',
    });
    expect(normalizeSandboxPath('/..')).toEqual({ problem: 'path escapes the sandbox root' });
    expect(normalizeSandboxPath('')).toEqual({ problem: 'path is required' });
    expect(normalizeSandboxPath('a\0b')).toHaveProperty('problem');
  });

  it('parses octal modes and refuses others', () => {
    expect(parseFileMode('0755')).toBe(0o755);
    expect(parseFileMode('644')).toBe(0o644);
    expect(parseFileMode('0o600')).toBe(0o600);
    expect(() => parseFileMode('999')).toThrow(/octal/);
    expect(formatFileMode(0o100644)).toBe('0644');
  });
});
