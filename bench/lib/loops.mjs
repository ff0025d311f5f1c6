// Bounded loops: every loop of a benchmark stops at its count or at its deadline
// (performance.now() ms), whichever comes first.

import { BenchError } from './server.mjs';

export const now = () => performance.now();

/**
 * Runs `fn(i)` `count` times or until `deadline`, one after another. `check` (optional) runs
 * before each step and may throw to stop the loop (an interrupt).
 */
export async function repeat(count, deadline, fn, check) {
  for (let i = 0; i < count && now() < deadline; i++) {
    check?.();
    await fn(i);
  }
}

/**
 * Runs `fn(i)` for i < count with at most `limit` in flight, starting none after `deadline` or
 * once `stopped()` says so. Failures are collected, not thrown; with `stopOnError` (default) the
 * first one stops further starts.
 *
 * @returns {Promise<{done: number, errors: unknown[]}>}
 */
export async function bounded(count, limit, deadline, fn, { stopOnError = true, stopped } = {}) {
  let next = 0;
  let done = 0;
  const errors = [];
  const worker = async () => {
    while (next < count && now() < deadline && !(stopped?.() ?? false)) {
      if (stopOnError && errors.length > 0) return;
      const i = next++;
      try {
        await fn(i);
        done++;
      } catch (err) {
        errors.push(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  return { done, errors };
}

/** Rejects with BenchError after `ms` unless `p` settles first. */
export async function within(ms, what, p) {
  let timer;
  const late = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new BenchError(`${what} took longer than ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
