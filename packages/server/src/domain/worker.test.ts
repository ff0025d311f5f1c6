import { describe, expect, test } from 'vitest';
import { LOCAL_WORKER_ID, resolveLocalWorkerId } from './worker.js';

describe('resolveLocalWorkerId', () => {
  test('keeps a given id, "local" included', () => {
    expect(resolveLocalWorkerId(LOCAL_WORKER_ID, 'h', 7423)).toBe('local');
    expect(resolveLocalWorkerId(' cp-a ', 'h', 7423)).toBe('cp-a');
  });

  test('"auto" derives local-<hostname>-<port>, folding characters ids cannot hold', () => {
    expect(resolveLocalWorkerId('auto', 'Node-1.Example', 7423)).toBe('local-node-1.example-7423');
    expect(resolveLocalWorkerId('auto', 'weird host!name', 80)).toBe('local-weird-host-name-80');
    expect(resolveLocalWorkerId('auto', '', 80)).toBe('local-host-80');
    expect(resolveLocalWorkerId('auto', 'h'.repeat(200), 80)).toHaveLength(128);
  });

  test('"auto" with port 0 is refused: the id would collide between control planes', () => {
    expect(() => resolveLocalWorkerId('auto', 'h', 0)).toThrow(
      /server\.local_worker_id: "auto" needs a fixed server\.port/,
    );
  });

  test('refuses ids outside the worker id alphabet, naming the key', () => {
    for (const bad of ['', 'a b', 'cp/a', 'x'.repeat(129)]) {
      expect(() => resolveLocalWorkerId(bad, 'h', 1)).toThrow(/^server\.local_worker_id: /);
    }
  });
});
