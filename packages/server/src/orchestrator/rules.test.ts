import { describe, expect, it } from 'vitest';
import { isStacyError } from '../domain/errors.js';
import type { WorkerRecord } from '../domain/worker.js';
import { EventBus } from './events.js';
import { ManualClock } from '../domain/clock.js';
import type { SandboxLimits } from './limits.js';
import { resolveExecSpec, resolveTtlMs } from './request-rules.js';
import { placeSandbox } from './scheduler.js';

const limits: SandboxLimits = {
  defaultTtlMs: 1_800_000,
  maxTtlMs: 86_400_000,
  defaultImage: 'alpine:latest',
  defaultMemoryMb: 1024,
  defaultVcpus: 1,
  defaultExecTimeoutMs: 0,
  maxExecTimeoutMs: 600_000,
  maxSandboxes: 0,
  maxSandboxesPerOwner: 0,
};

function fieldOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (isStacyError(err)) return err.details?.[0]?.field;
    throw err;
  }
  return undefined;
}

describe('exec request rules', () => {
  it('defaults to shell mode and the max timeout when none is configured', () => {
    expect(resolveExecSpec({ command: 'ls' }, limits)).toMatchObject({
      mode: 'shell',
      timeoutMs: 600_000,
      args: [],
    });
  });

  it('uses default_exec_timeout when set', () => {
    expect(
      resolveExecSpec({ command: 'ls' }, { ...limits, defaultExecTimeoutMs: 5000 }).timeoutMs,
    ).toBe(5000);
  });

  it('names the field of every rejection', () => {
    expect(fieldOf(() => resolveExecSpec({ command: 'ls', mode: 'tty' }, limits))).toBe('mode');
    expect(fieldOf(() => resolveExecSpec({ command: ' ' }, limits))).toBe('command');
    expect(fieldOf(() => resolveExecSpec({ command: 'ls', timeout: '1y' }, limits))).toBe(
      'timeout',
    );
    expect(fieldOf(() => resolveExecSpec({ command: 'ls', timeout: '-1s' }, limits))).toBe(
      'timeout',
    );
    expect(fieldOf(() => resolveExecSpec({ command: 'ls', timeout: '20m' }, limits))).toBe(
      'timeout',
    );
    expect(fieldOf(() => resolveExecSpec({ command: 'ls', env: { '1X': 'a' } }, limits))).toBe(
      'env.1X',
    );
    expect(fieldOf(() => resolveExecSpec({ command: 'ls', workdir: '/..' }, limits))).toBe(
      'workdir',
    );
  });

  it('bounds TTLs by max_ttl and refuses non-positive ones', () => {
    expect(resolveTtlMs(undefined, limits)).toBe(1_800_000);
    expect(resolveTtlMs('1h', limits)).toBe(3_600_000);
    expect(fieldOf(() => resolveTtlMs('0s', limits))).toBe('ttl');
    expect(fieldOf(() => resolveTtlMs('25h', limits))).toBe('ttl');
  });
});

function worker(id: string, over: Partial<WorkerRecord> = {}): WorkerRecord {
  return {
    id,
    hostname: id,
    status: 'online',
    providers: ['mock'],
    capabilities: [],
    capacity: {},
    lastHeartbeatMs: 1_000_000,
    createdAtMs: 0,
    updatedAtMs: 0,
    ...over,
  };
}

describe('placement', () => {
  const base = {
    provider: 'mock',
    localWorkerId: 'local',
    nowMs: 1_000_000,
    staleAfterMs: 120_000,
  };

  it('prefers a fresh eligible local worker even when a remote one is less loaded', () => {
    const d = placeSandbox({
      ...base,
      workers: [worker('local'), worker('w-a')],
      activeByWorker: new Map([['local', 5]]),
    });
    expect(d).toMatchObject({ workerId: 'local', reason: 'local_selected' });
  });

  it('picks the least-loaded eligible remote worker when local is not eligible', () => {
    const d = placeSandbox({
      ...base,
      workers: [worker('local', { status: 'draining' }), worker('w-a'), worker('w-b')],
      activeByWorker: new Map([
        ['w-a', 3],
        ['w-b', 1],
      ]),
    });
    expect(d.workerId).toBe('w-b');
    expect(d.rejected['local']).toContain('draining');
  });

  it('skips stale, full and provider-less workers and says why', () => {
    const d = placeSandbox({
      ...base,
      workers: [
        worker('w-stale', { lastHeartbeatMs: 0 }),
        worker('w-full', { capacity: { max_sandboxes: 1 } }),
        worker('w-docker', { providers: ['docker'] }),
      ],
      activeByWorker: new Map([['w-full', 1]]),
    });
    expect(d.workerId).toBeUndefined();
    expect(d.reason).toBe('no_eligible_worker');
    expect(Object.keys(d.rejected).sort()).toEqual(['w-docker', 'w-full', 'w-stale']);
  });

  it('passes over a worker the control plane cannot call, even the least loaded', () => {
    const d = placeSandbox({
      ...base,
      workers: [worker('w-a'), worker('w-b')],
      activeByWorker: new Map([['w-b', 4]]),
      unreachable: (w) => (w.id === 'w-a' ? 'advertises no rpc_url' : undefined),
    });
    expect(d.workerId).toBe('w-b');
    expect(d.rejected['w-a']).toBe('unreachable: advertises no rpc_url');
    expect(d.eligible).toEqual(['w-b']);
  });
});

describe('event bus', () => {
  it('numbers events, replays after a Last-Event-ID and bounds history', () => {
    const bus = new EventBus({ clock: new ManualClock(), historySize: 3 });
    const seen: string[] = [];
    const off = bus.subscribe((e) => seen.push(e.type));
    for (let i = 0; i < 5; i++) bus.publish('sandbox.created', `sb-0000000${i}`);
    off();
    bus.publish('sandbox.destroyed');
    expect(seen).toHaveLength(5);
    expect(bus.since('evt-4').map((e) => e.id)).toEqual(['evt-5', 'evt-6']);
    expect(bus.historyLength).toBe(3);
    expect(bus.since('garbage')).toEqual([]);
  });

  it('keeps publishing when a subscriber throws', () => {
    const bus = new EventBus({ clock: new ManualClock() });
    let ok = 0;
    bus.subscribe(() => {
      throw new Error('boom');
    });
    bus.subscribe(() => (ok += 1));
    bus.publish('sandbox.running');
    expect(ok).toBe(1);
  });
});
