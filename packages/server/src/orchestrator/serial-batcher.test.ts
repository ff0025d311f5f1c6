import { describe, expect, it } from 'vitest';
import { SerialBatcher } from './serial-batcher.js';

/** A writer that records batches and holds each write until released. */
function gatedWriter() {
  const batches: number[][] = [];
  const gates: (() => void)[] = [];
  let failNext = false;
  const write = async (batch: number[]): Promise<void> => {
    batches.push([...batch]);
    await new Promise<void>((resolve) => gates.push(resolve));
    if (failNext) {
      failNext = false;
      throw new Error('refused');
    }
  };
  const started = async (): Promise<void> => {
    while (gates.length === 0) await new Promise((r) => setImmediate(r));
  };
  const releaseOne = async (): Promise<void> => {
    await started();
    gates.shift()?.();
  };
  return {
    batches,
    write,
    started,
    releaseOne,
    failNextWrite: () => {
      failNext = true;
    },
  };
}

describe('SerialBatcher', () => {
  it('writes items pushed together in one batch, and those queued meanwhile in the next, in order', async () => {
    const w = gatedWriter();
    const b = new SerialBatcher<number>({ maxBatch: 10, maxPending: 100, write: w.write });
    b.push(1);
    b.push(2);
    await w.started(); // [1, 2] is on its way
    b.push(3);
    b.push(4);
    expect(b.pending).toBe(4);
    let idle = false;
    const waiting = b.idle().then(() => (idle = true));
    await w.releaseOne();
    await w.releaseOne();
    await waiting;
    expect(idle).toBe(true);
    expect(w.batches).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(b.pending).toBe(0);
  });

  it('splits a long queue into batches of maxBatch', async () => {
    const batches: number[][] = [];
    const b = new SerialBatcher<number>({
      maxBatch: 3,
      maxPending: 100,
      write: (batch) => {
        batches.push(batch);
        return Promise.resolve();
      },
    });
    for (let i = 1; i <= 7; i++) b.push(i);
    await b.idle();
    expect(batches).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
  });

  it('refuses items past maxPending (queued and in flight) and keeps going after a failed write', async () => {
    const w = gatedWriter();
    const b = new SerialBatcher<number>({ maxBatch: 2, maxPending: 3, write: w.write });
    expect([b.push(1), b.push(2), b.push(3), b.push(4)]).toEqual([true, true, true, false]);
    w.failNextWrite();
    await w.releaseOne(); // [1, 2] fails
    await w.releaseOne(); // [3]
    await b.idle();
    expect(w.batches).toEqual([[1, 2], [3]]);
    expect(b.push(5)).toBe(true);
    await w.releaseOne();
    await b.idle();
    expect(w.batches.at(-1)).toEqual([5]);
  });

  it('is idle at once when nothing was pushed', async () => {
    const b = new SerialBatcher<number>({
      maxBatch: 1,
      maxPending: 1,
      write: () => Promise.resolve(),
    });
    await expect(b.idle()).resolves.toBeUndefined();
    expect(b.pending).toBe(0);
  });
});
