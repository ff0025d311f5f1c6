// Per-process CPU and memory from /proc (Linux only; undefined/null elsewhere).

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { round3 } from './stats.mjs';

/** The text of a /proc file, or undefined when it cannot be read. */
export function readProc(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

let clockTicks;
function ticksPerSecond() {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** User+system CPU time (ms) the process has used so far (all threads), or undefined. */
export function cpuMs(pid) {
  const stat = readProc(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond();
}

/** Resident set size in KiB, or undefined. */
export function rssKb(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readProc(`/proc/${pid}/status`) ?? '');
  return m === null ? undefined : Number(m[1]);
}

/** Resident set size in whole MB, or undefined. */
export function rssMb(pid) {
  const kb = rssKb(pid);
  return kb === undefined ? undefined : Math.round(kb / 1024);
}

/** Sums a process's CPU time over the stretches passed to `around`. */
export function cpuMeter(pid) {
  let total = 0;
  let known = cpuMs(pid) !== undefined;
  return {
    async around(fn) {
      const before = cpuMs(pid);
      await fn();
      const after = cpuMs(pid);
      if (before === undefined || after === undefined) known = false;
      else total += after - before;
    },
    /** CPU ms per operation, or null when /proc was not readable. */
    per(ops) {
      return known && ops > 0 ? round3(total / ops) : null;
    },
  };
}
