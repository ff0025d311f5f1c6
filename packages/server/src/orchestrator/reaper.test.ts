import { describe, expect, it } from 'vitest';
import { silentLogger } from '../domain/logger.js';
import { Reaper } from './reaper.js';
import type { SandboxService } from './sandbox-service.js';

function fakeService(): {
  service: SandboxService;
  prunes: () => number;
  ownPrunes: () => number;
} {
  let n = 0;
  let own = 0;
  const service = {
    prune: async () => {
      n += 1;
      return 0;
    },
    pruneOwn: async () => {
      own += 1;
      return 0;
    },
  } as unknown as SandboxService;
  return { service, prunes: () => n, ownPrunes: () => own };
}

describe('Reaper', () => {
  it('without a leader lock every timer tick sweeps', async () => {
    const { service, prunes } = fakeService();
    const reaper = new Reaper({ service, intervalMs: 1000, logger: silentLogger });
    expect(await reaper.tickIfLeader()).toBe(0);
    expect(prunes()).toBe(1);
  });

  it('with a leader lock it sweeps everything only while it leads, else its own worker’s; never after stop', async () => {
    const { service, prunes, ownPrunes } = fakeService();
    let leading = false;
    const reaper = new Reaper({
      service,
      intervalMs: 1000,
      logger: silentLogger,
      leader: { tryLead: async () => leading },
    });
    expect(await reaper.tickIfLeader()).toBeUndefined();
    expect(prunes()).toBe(0);
    expect(ownPrunes()).toBe(1);
    leading = true;
    expect(await reaper.tickIfLeader()).toBe(0);
    expect(prunes()).toBe(1);
    expect(ownPrunes()).toBe(1);
    await reaper.stop();
    expect(await reaper.tickIfLeader()).toBeUndefined();
    expect(prunes()).toBe(1);
    expect(ownPrunes()).toBe(1);
  });

  it('a stop that comes while the lock is asked keeps the sweep from starting', async () => {
    const { service, prunes, ownPrunes } = fakeService();
    let answer: (v: boolean) => void = () => undefined;
    const reaper = new Reaper({
      service,
      intervalMs: 1000,
      logger: silentLogger,
      leader: { tryLead: () => new Promise<boolean>((r) => (answer = r)) },
    });
    const tick = reaper.tickIfLeader();
    await reaper.stop();
    answer(true);
    expect(await tick).toBeUndefined();
    expect(prunes() + ownPrunes()).toBe(0);
  });
});
