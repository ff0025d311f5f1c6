#!/usr/bin/env node
// Splits the CPU profiles of `bench/remote-overhead/run.mjs --cpu-prof DIR` into the local and the
// remote exec blocks and prints, per process (control plane, worker), the main-thread CPU time per
// exec by category: where each side's time goes, and what the remote side adds.
//
//   node bench/remote-overhead/run.mjs --workers 0 --stream-iterations 0 --cpu-prof /tmp/prof
//   node bench/remote-overhead/profile-split.mjs /tmp/prof
//
// The bench writes DIR/windows.json: the pids of the two processes and the monotonic-clock
// windows (µs, the clock of V8 profile timestamps) of its local and remote blocks. A sample counts
// for a block when it was taken inside one of its windows; its time is the interval to the next
// sample. Each sample goes to a category: the nearest StacyVM frame on its stack (so library and
// Node internals called from StacyVM code count for that code), else what the sampled frame is
// (Node internals by module, a dependency by package, idle, GC). Only the main JS thread is
// profiled: the libuv thread pool (fs calls) and the kernel's work for a write show up only as the
// time the main thread spends in them.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const top = Number(process.argv[3] ?? 25);
if (dir === undefined) {
  process.stderr.write('usage: node bench/remote-overhead/profile-split.mjs DIR [rows]\n');
  process.exit(2);
}
const meta = JSON.parse(readFileSync(join(dir, 'windows.json'), 'utf8'));

function profileOf(pid) {
  const name = readdirSync(dir).find((f) => f.endsWith('.cpuprofile') && f.includes(`.${pid}.`));
  if (name === undefined) throw new Error(`no .cpuprofile for pid ${pid} in ${dir}`);
  return JSON.parse(readFileSync(join(dir, name), 'utf8'));
}

function category(node) {
  const { url, functionName } = node.callFrame;
  if (functionName === '(idle)') return '(idle)';
  if (functionName === '(garbage collector)') return '(gc)';
  if (functionName === '(program)') return '(program: native, outside JS)';
  if (url.includes('node_modules/')) return `dep ${url.split('node_modules/').pop().split('/')[0]}`;
  if (url.startsWith('node:')) return url;
  if (url === '') return `native ${functionName}`;
  return url;
}

function owner(nodes, parent, id) {
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const { url, functionName } = nodes.get(cur).callFrame;
    if (url.includes('/dist/')) return `${url.split('/dist/')[1]} ${functionName || '(anonymous)'}`;
  }
  return category(nodes.get(id));
}

/** µs of main-thread time per category inside `windows`. */
function split(prof, windows) {
  const nodes = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const cache = new Map();
  const out = new Map();
  let t = prof.startTime;
  let w = 0;
  const sorted = [...windows].sort((a, b) => a[0] - b[0]);
  for (let i = 0; i < prof.samples.length; i++) {
    t += prof.timeDeltas[i];
    const dt = prof.timeDeltas[i + 1] ?? 0;
    while (w < sorted.length && sorted[w][1] < t) w++;
    if (w >= sorted.length) break;
    if (t < sorted[w][0]) continue;
    const id = prof.samples[i];
    let c = cache.get(id);
    if (c === undefined) cache.set(id, (c = owner(nodes, parent, id)));
    out.set(c, (out.get(c) ?? 0) + dt);
  }
  return out;
}

const fmt = (us) => (us / 1000).toFixed(3).padStart(8);
for (const [label, pid] of [
  ['control plane', meta.cp_pid],
  ['worker', meta.worker_pid],
]) {
  const prof = profileOf(pid);
  const local = split(prof, meta.local.windows);
  const remote = split(prof, meta.remote.windows);
  const perL = (c) => (local.get(c) ?? 0) / meta.local.execs;
  const perR = (c) => (remote.get(c) ?? 0) / meta.remote.execs;
  const cats = [...new Set([...local.keys(), ...remote.keys()])];
  const busy = (m, n) =>
    [...m.entries()].filter(([c]) => c !== '(idle)').reduce((s, [, v]) => s + v, 0) / n;
  process.stdout.write(
    `\n${label} (pid ${pid}): main-thread ms per exec, ${meta.local.execs} local / ${meta.remote.execs} remote execs\n`,
  );
  process.stdout.write(
    `${'local'.padStart(8)} ${'remote'.padStart(8)} ${'r − l'.padStart(8)}  category\n`,
  );
  process.stdout.write(
    `${fmt(busy(local, meta.local.execs))} ${fmt(busy(remote, meta.remote.execs))} ${fmt(busy(remote, meta.remote.execs) - busy(local, meta.local.execs))}  all but idle\n`,
  );
  cats.sort((a, b) => Math.max(perR(b), perL(b)) - Math.max(perR(a), perL(a)));
  for (const c of cats.slice(0, top)) {
    process.stdout.write(`${fmt(perL(c))} ${fmt(perR(c))} ${fmt(perR(c) - perL(c))}  ${c}\n`);
  }
}
