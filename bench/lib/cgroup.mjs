// CPU quotas for benchmark processes: each process gets a Linux cgroup of its own with a CFS
// quota of `cores` CPUs, so that on one machine it behaves like a host of that size (for
// "does a second control plane add capacity" when the machine, not the control plane, would
// otherwise be the limit). Needs root and the cgroup v2 `cpu` controller or the v1 `cpu`
// hierarchy mounted at /sys/fs/cgroup/cpu. Groups are made under a `stacyvm-bench-<pid>` parent
// and removed by `removeAll()` (processes still inside go back to the root group first).

import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BenchError } from './server.mjs';

const ROOT = '/sys/fs/cgroup';
const PERIOD_US = 100_000;

function layout() {
  const v2 = join(ROOT, 'cgroup.controllers');
  if (existsSync(v2) && readFileSync(v2, 'utf8').split(/\s+/).includes('cpu')) {
    return { version: 2, base: ROOT };
  }
  if (existsSync(join(ROOT, 'cpu', 'cpu.cfs_quota_us')))
    return { version: 1, base: join(ROOT, 'cpu') };
  return undefined;
}

/** Why CPU quotas cannot be used here, or undefined when they can. */
export function cpuQuotaUnavailable() {
  if (process.platform !== 'linux') return 'CPU quotas need Linux cgroups';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'CPU quotas need root';
  if (layout() === undefined) return `no cgroup cpu controller under ${ROOT}`;
  return undefined;
}

/** Makes groups for one bench run; `limit(name, pid, cores)` puts a process in its own group. */
export function cpuQuotas() {
  const why = cpuQuotaUnavailable();
  if (why !== undefined) throw new BenchError(why);
  const { version, base } = layout();
  const parent = join(base, `stacyvm-bench-${process.pid}`);
  mkdirSync(parent, { recursive: true });
  if (version === 2) writeFileSync(join(parent, 'cgroup.subtree_control'), '+cpu');
  const groups = [];
  return {
    version,
    /** Puts `pid` (all its threads) in a new group limited to `cores` CPUs. */
    limit(name, pid, cores) {
      const dir = join(parent, name.replace(/[^a-zA-Z0-9_.-]/g, '_'));
      mkdirSync(dir, { recursive: true });
      const quota = Math.max(1000, Math.round(cores * PERIOD_US));
      if (version === 2) {
        writeFileSync(join(dir, 'cpu.max'), `${quota} ${PERIOD_US}`);
      } else {
        writeFileSync(join(dir, 'cpu.cfs_period_us'), String(PERIOD_US));
        writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quota));
      }
      writeFileSync(join(dir, 'cgroup.procs'), String(pid));
      groups.push(dir);
    },
    /** Moves what is left back to the root group and removes the groups. */
    removeAll() {
      for (const dir of [...groups.reverse(), parent]) {
        try {
          const pids = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split(/\s+/).filter(Boolean);
          for (const p of pids) {
            try {
              writeFileSync(join(base, 'cgroup.procs'), p);
            } catch {
              // gone meanwhile
            }
          }
          rmdirSync(dir);
        } catch {
          // already removed
        }
      }
      groups.length = 0;
    },
  };
}
