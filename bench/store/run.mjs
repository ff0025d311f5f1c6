#!/usr/bin/env node
// Benchmark: the store under the control plane, SQLite vs PostgreSQL, and one vs two control
// planes on one PostgreSQL database.
//
// Starts a throwaway PostgreSQL cluster (initdb in a temp dir, loopback, fsync off unless
// --pg-durable; see bench/lib/pg.mjs) and the real built server (`stacyvm serve --port 0`, mock
// provider) as child processes, and measures in one run:
//   1. spawn→destroy cycles/s through the API (POST /api/v1/sandboxes, then DELETE), with
//      --concurrency clients, on
//        a. one control plane on SQLite,
//        b. one control plane on PostgreSQL,
//        c. two control planes on the same PostgreSQL database, the clients split evenly
//           between them (each client creates and deletes through the same one);
//      a runs first in odd runs and last in even ones (b and c are always back to back);
//   2. lease acquire latency (p50/p99) through the Store API of the build
//      (packages/server/dist/store), in this process, SQLite vs PostgreSQL, interleaved in
//      rounds: 1 caller in flight, then --concurrency callers in flight.
// and prints PG/SQLite and 2-CP/1-CP throughput ratios against the targets, with CPU per
// cycle of every process involved (control planes, PostgreSQL, this bench) to show where the time
// goes.
//
// Every loop is bounded by a count and by a wall-clock cap. Every process and temp dir is removed
// at the end, on failure and on Ctrl-C (the cluster also from a process 'exit' hook). Exit 0
// whatever the numbers are (a measurement); exit 1 when a process does not start or a request
// fails. See bench/README.md for how to read the output.

import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { cpuQuotas } from '../lib/cgroup.mjs';
import { makeClient } from '../lib/http.mjs';
import { now, repeat } from '../lib/loops.mjs';
import { clusterPids, startPgCluster } from '../lib/pg.mjs';
import { cpuMeter, cpuMs, rssMb } from '../lib/proc.mjs';
import {
  BenchError,
  positiveOption,
  DIST,
  MAIN_JS,
  cleanEnv,
  phaseOf,
  requireBuild,
  startServer,
  stopServer,
  reportFailure,
  runBench,
} from '../lib/server.mjs';
import { fmt, median, ratio, round3, summarize } from '../lib/stats.mjs';

const TARGET_PG_VS_SQLITE = 0.5;
const TARGET_TWO_VS_ONE = 1.5;
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
const CALL_TIMEOUT_MS = 30_000;
const MAX_CYCLES = 1_000_000; // count cap of a throughput loop; its time cap normally ends it
const LEASE_ROUND = 50; // lease samples per side per round
const LEASE_RESOURCES = 256;
const STORE_JS = join(DIST, 'store/create-store.js');
const SCHEMA_JS = join(DIST, 'config/schema.js');

function usage() {
  return `usage: node bench/store/run.mjs [options]

  --seconds S           measuring time of each throughput phase (default 8); warm-up adds 1 s
  --concurrency C       clients in every throughput phase, split across the CPs (default 4)
  --lease-iterations N  lease acquire samples per store and mode (default 2000)
  --runs R              repeat the whole measurement R times and print medians (default 1)
  --pg-durable          run PostgreSQL with fsync and synchronous_commit on (default off,
                        as the tests run it)
  --pg-statements       also list the statements PostgreSQL ran per cycle (pg_stat_statements;
                        costs some throughput, so for finding where the time goes)
  --cpu-prof DIR        run the control planes with --cpu-prof, profiles into DIR
  --cp-cpus X           hold every control plane to X CPUs (a cgroup CFS quota of its own, as if
                        each ran on a host of that size; needs root and cgroups); PostgreSQL and
                        the bench are not limited
  -h, --help            this text

Needs PostgreSQL server binaries (/usr/lib/postgresql/*/bin or STACYVM_PG_BIN).
Run \`npm run build\` first (or use \`npm run bench:store\`, which builds).`;
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: 'string', default: '8' },
      concurrency: { type: 'string', default: '4' },
      'lease-iterations': { type: 'string', default: '2000' },
      runs: { type: 'string', default: '1' },
      'pg-durable': { type: 'boolean', default: false },
      'pg-statements': { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      'cp-cpus': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const positive = positiveOption;
  const concurrency = positive('concurrency', values.concurrency, true);
  if (concurrency < 2) throw new BenchError('--concurrency must be at least 2 (split over 2 CPs)');
  return {
    seconds: positive('seconds', values.seconds, false),
    concurrency,
    leaseIterations: positive('lease-iterations', values['lease-iterations'], true),
    runs: positive('runs', values.runs, true),
    pgDurable: values['pg-durable'],
    pgStatements: values['pg-statements'],
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']),
    cpCpus: values['cp-cpus'] === undefined ? undefined : cpCpusOption(values['cp-cpus']),
  };
}

function cpCpusOption(raw) {
  const n = positiveOption('cp-cpus', raw, false);
  if (n > cpus().length) {
    throw new BenchError(
      `--cp-cpus must be at most the machine's ${cpus().length} CPUs (got ${raw})`,
    );
  }
  return n;
}

// ---------------------------------------------------------------------------
// Processes

/** Config keys of this build the bench sets only when they exist. */
async function knownKeys() {
  const { configKey } = await import(SCHEMA_JS);
  return {
    localWorkerId: configKey('server.local_worker_id') !== undefined,
    previewEnabled: configKey('preview.enabled') !== undefined,
  };
}

async function startCp({ name, dir, keys, database, workerId, cpuProfDir }) {
  const workDir = join(dir, name);
  const env = cleanEnv(workDir, {
    STACYVM_LOGGING_LEVEL: 'info',
    // Each CP is its own "host": its own mock sandbox dir.
    STACYVM_PROVIDERS_MOCK_BASE_DIR: join(workDir, 'mock'),
    STACYVM_PROVIDERS_DOCKER_ENABLED: 'false',
    ...(keys.previewEnabled ? { STACYVM_PREVIEW_ENABLED: 'false' } : {}),
    ...(keys.localWorkerId && workerId !== undefined
      ? { STACYVM_SERVER_LOCAL_WORKER_ID: workerId }
      : {}),
    ...(database.driver === 'sqlite'
      ? { STACYVM_DATABASE_PATH: join(workDir, 'stacyvm.db') }
      : { STACYVM_DATABASE_DRIVER: 'postgres', STACYVM_DATABASE_DSN: database.dsn }),
  });
  await import('node:fs/promises').then((fs) => fs.mkdir(workDir, { recursive: true }));
  const nodeArgs =
    cpuProfDir === undefined
      ? []
      : [
          '--cpu-prof',
          `--cpu-prof-dir=${cpuProfDir}`,
          `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`,
        ];
  return startServer({
    name,
    args: ['serve', '--port', '0'],
    nodeArgs,
    cwd: workDir,
    env,
    startTimeoutMs: START_TIMEOUT_MS,
    stopTimeoutMs: STOP_TIMEOUT_MS,
  });
}

/** Committed + rolled back transactions of database `name` so far (every autocommit statement is one). */
async function pgXacts(cluster, name) {
  const client = new pg.Client({ connectionString: cluster.adminDsn });
  await client.connect();
  try {
    // Backends flush their counters at most once a second while busy; wait for them.
    await new Promise((r) => setTimeout(r, 1100));
    const r = await client.query(
      'select xact_commit + xact_rollback as n from pg_stat_database where datname = $1',
      [name],
    );
    return Number(r.rows[0]?.n ?? NaN);
  } finally {
    await client.end();
  }
}

/** Runs `fn(client)` on a short-lived connection to `dsn`. */
async function withPg(dsn, fn) {
  const client = new pg.Client({ connectionString: dsn });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** The statements of the database behind `dsn` since the last reset, most frequent first. */
async function topStatements(dsn, cycles) {
  return withPg(dsn, async (c) => {
    const r = await c.query(
      `select calls, mean_exec_time, query from pg_stat_statements
       where dbid = (select oid from pg_database where datname = current_database())
         and query not like '%pg_stat_statements%'
       order by calls desc limit 20`,
    );
    return r.rows.map((x) => ({
      per_cycle: round3(Number(x.calls) / Math.max(1, cycles)),
      mean_ms: round3(Number(x.mean_exec_time)),
      query: String(x.query).replace(/\s+/g, ' ').slice(0, 150),
    }));
  });
}

/** User+system CPU ms of a set of processes (the pids looked up now), or undefined. */
function groupCpuMs(pids) {
  let total = 0;
  for (const pid of pids) total += cpuMs(pid) ?? 0;
  return pids.length === 0 ? undefined : total;
}

// ---------------------------------------------------------------------------
// Throughput

/**
 * Runs `clients` (each {call, tag}) doing create→delete cycles until `ms` has passed; returns
 * cycles/s and CPU per cycle of the CPs, the cluster and this process.
 */
async function measureCycles({ phase, clients, cps, cluster, database, statementsDsn, ms }) {
  const xactsBefore = database === undefined ? undefined : await pgXacts(cluster, database);
  if (statementsDsn !== undefined) {
    await withPg(statementsDsn, (c) => c.query('select pg_stat_statements_reset()'));
  }
  const meters = cps.map((cp) => cpuMeter(cp.child.pid));
  const pgBefore = cluster === undefined ? undefined : groupCpuMs(clusterPids(cluster));
  const benchBefore = process.cpuUsage();
  const create = [];
  const destroy = [];
  let cycles = 0;
  const t0 = now();
  const deadline = t0 + ms;
  const loop = (c) =>
    repeat(MAX_CYCLES, deadline, async () => {
      const a = now();
      const sb = await c.call(`${phase}-create`, 'POST', '/api/v1/sandboxes', {}, 201);
      if (typeof sb?.id !== 'string') throw new BenchError('POST /api/v1/sandboxes gave no id');
      const b = now();
      await c.call(
        `${phase}-delete`,
        'DELETE',
        `/api/v1/sandboxes/${encodeURIComponent(sb.id)}`,
        undefined,
        200,
      );
      destroy.push(now() - b);
      create.push(b - a);
      cycles++;
    });
  // Every meter spans the whole phase: start all, then run the clients inside the nesting.
  const runAll = () => Promise.all(clients.map(loop));
  const wrapped = meters.reduce((inner, m) => () => m.around(inner), runAll);
  await wrapped();
  const elapsed = now() - t0;
  const benchCpu = process.cpuUsage(benchBefore);
  const pgAfter = cluster === undefined ? undefined : groupCpuMs(clusterPids(cluster));
  const cpCpu = meters.map((m) => m.per(cycles));
  const xactsAfter = database === undefined ? undefined : await pgXacts(cluster, database);
  const statements =
    statementsDsn === undefined ? undefined : await topStatements(statementsDsn, cycles);
  const perCycle = {
    control_planes: cpCpu.every((x) => x !== null)
      ? round3(cpCpu.reduce((s, x) => s + x, 0))
      : null,
    per_cp: cpCpu,
    postgres:
      pgBefore === undefined || pgAfter === undefined || cycles === 0
        ? null
        : round3((pgAfter - pgBefore) / cycles),
    bench: cycles === 0 ? null : round3((benchCpu.user + benchCpu.system) / 1000 / cycles),
  };
  const cyclesPerS = (cycles * 1000) / elapsed;
  const cpuTotal =
    (perCycle.control_planes ?? 0) + (perCycle.postgres ?? 0) + (perCycle.bench ?? 0);
  return {
    clients: clients.length,
    cycles,
    seconds: round3(elapsed / 1000),
    cycles_per_s: round3(cyclesPerS),
    create_ms: summarize(create),
    delete_ms: summarize(destroy),
    cpu_ms_per_cycle: perCycle,
    /** CPU of everything measured (CPs, PostgreSQL, bench) in cores: 2.0 = a 2-core box is full. */
    cores_busy: round3((cpuTotal * cyclesPerS) / 1000),
    pg_transactions_per_cycle:
      xactsBefore === undefined || cycles === 0
        ? null
        : round3((xactsAfter - xactsBefore) / cycles),
    cp_rss_mb: cps.map((cp) => rssMb(cp.child.pid) ?? null),
    ...(statements === undefined ? {} : { statements }),
  };
}

function clientsFor(cps, total) {
  const out = [];
  for (let i = 0; i < total; i++) {
    const cp = cps[i % cps.length];
    out.push(cp.client);
  }
  return out;
}

function attachClient(cp, connections) {
  const c = makeClient(cp.address, { connections, server: cp, timeoutMs: CALL_TIMEOUT_MS });
  cp.client = c;
  return cp;
}

async function throughputPhase({ phase, cps, cluster, database, statementsDsn, opts }) {
  const perCp = Math.ceil(opts.concurrency / cps.length);
  for (const cp of cps) attachClient(cp, perCp);
  const clients = clientsFor(cps, opts.concurrency);
  // Warm-up: JIT, pools, the store's statement caches, the provider's first spawn.
  await measureCycles({ phase: `${phase}w`, clients, cps, cluster, ms: 1000 });
  const r = await measureCycles({
    phase,
    clients,
    cps,
    cluster,
    database,
    statementsDsn,
    ms: opts.seconds * 1000,
  });
  for (const cp of cps) {
    await cp.client.pool.close();
    cp.client = undefined;
  }
  return r;
}

// ---------------------------------------------------------------------------
// Lease acquire through the Store API

async function measureLeases({ sqlitePath, pgDsn, opts }) {
  const { createStore } = await import(STORE_JS);
  const stores = {
    sqlite: await createStore({ driver: 'sqlite', path: sqlitePath }),
    postgres: await createStore({ driver: 'postgres', dsn: pgDsn }),
  };
  try {
    for (const s of Object.values(stores)) await s.migrate();
    const samples = {
      sqlite: { sequential: [], concurrent: [] },
      postgres: { sequential: [], concurrent: [] },
    };
    let k = 0;
    const once = async (store, into) => {
      const resourceId = `bench-lease-${k++ % LEASE_RESOURCES}`;
      const t0 = now();
      const lease = await store.leases.acquire({
        resourceId,
        resourceType: 'sandbox',
        holderId: 'bench',
        ttlMs: 60_000,
        nowMs: Date.now(),
      });
      into.push(now() - t0);
      await store.leases.release(lease, Date.now());
    };
    const deadline = now() + Math.max(10_000, opts.seconds * 2000);
    const order = ['sqlite', 'postgres'];
    // Warm-up.
    for (const name of order) await repeat(100, deadline, () => once(stores[name], []));
    for (const mode of ['sequential', 'concurrent']) {
      const inFlight = mode === 'sequential' ? 1 : opts.concurrency;
      let round = 0;
      while (
        now() < deadline &&
        order.some((n) => samples[n][mode].length < opts.leaseIterations)
      ) {
        const thisRound = round % 2 === 0 ? order : [...order].reverse();
        for (const name of thisRound) {
          const into = samples[name][mode];
          const todo = Math.min(LEASE_ROUND, opts.leaseIterations - into.length);
          // Distinct resources per caller: this measures the statement, not lock waits.
          let left = todo;
          const caller = async () => {
            while (left > 0 && now() < deadline) {
              left--;
              await once(stores[name], into);
            }
          };
          await Promise.all(Array.from({ length: inFlight }, caller));
        }
        round++;
      }
    }
    const out = {};
    for (const name of order) {
      out[name] = {
        sequential: summarize(samples[name].sequential),
        concurrent: summarize(samples[name].concurrent),
      };
    }
    return out;
  } finally {
    for (const s of Object.values(stores)) await s.close().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------
// One run

async function oneRun({ runIndex, opts, cluster, dir, keys, live, quotas }) {
  const database = `bench_run${runIndex}`;
  const pgDsn = await cluster.createDatabase(database);
  const statementsDsn = opts.pgStatements ? pgDsn : undefined;
  if (statementsDsn !== undefined) {
    await withPg(pgDsn, (c) => c.query('create extension pg_stat_statements'));
  }
  const cp = async (name, database, workerId) => {
    const proc = await startCp({
      name: `${name}-r${runIndex}`,
      dir,
      keys,
      database,
      workerId,
      cpuProfDir: opts.cpuProfDir,
    });
    quotas?.limit(`${name}-r${runIndex}`, proc.child.pid, opts.cpCpus);
    return proc;
  };
  const stopAll = async () => {
    for (const p of [...live]) {
      await stopServer(p);
      live.delete(p);
    }
  };

  // a. one CP on SQLite: first in odd runs, last in even ones, so drift in the machine's load
  // does not always favour the same side.
  const sqlitePhase = async () => {
    const proc = await cp('sqlite', { driver: 'sqlite' }, 'cp-1');
    live.add(proc);
    const r = await throughputPhase({ phase: 'sq', cps: [proc], cluster: undefined, opts });
    await stopAll();
    return { proc, r };
  };
  const sqliteFirst = runIndex % 2 === 1;
  const first = sqliteFirst ? await sqlitePhase() : undefined;

  // b. one CP on Postgres
  const pg1 = await cp('pg-cp1', { driver: 'postgres', dsn: pgDsn }, 'cp-1');
  live.add(pg1);
  const onePg = await throughputPhase({
    phase: 'pg1',
    cps: [pg1],
    cluster,
    database,
    statementsDsn,
    opts,
  });

  // c. a second CP on the same database; the clients split across both
  const pg2 = await cp('pg-cp2', { driver: 'postgres', dsn: pgDsn }, 'cp-2');
  live.add(pg2);
  const twoPg = await throughputPhase({
    phase: 'pg2',
    cps: [pg1, pg2],
    cluster,
    database,
    statementsDsn,
    opts,
  });
  await stopAll();
  const { proc: sq, r: sqlite } = first ?? (await sqlitePhase());

  const serverSide = (proc, phase) => ({
    create: summarize(phaseOf(proc, `${phase}-create`).responseMs),
    delete: summarize(phaseOf(proc, `${phase}-delete`).responseMs),
  });
  const server = {
    sqlite: serverSide(sq, 'sq'),
    pg_one: serverSide(pg1, 'pg1'),
    pg_two_cp1: serverSide(pg1, 'pg2'),
    pg_two_cp2: serverSide(pg2, 'pg2'),
  };

  // 2. lease acquire through the Store API (own files/databases, nothing else running)
  const leasePg = await cluster.createDatabase(`bench_lease${runIndex}`);
  const leases = await measureLeases({
    sqlitePath: join(dir, `lease-r${runIndex}.db`),
    pgDsn: leasePg,
    opts,
  });

  return {
    cycles: { sqlite, pg_one_cp: onePg, pg_two_cp: twoPg },
    server,
    leases,
    ratios: {
      pg_vs_sqlite: ratio(onePg.cycles_per_s, sqlite.cycles_per_s),
      two_vs_one_cp: ratio(twoPg.cycles_per_s, onePg.cycles_per_s),
      lease_p50_pg_vs_sqlite: ratio(leases.postgres.sequential.p50, leases.sqlite.sequential.p50),
      lease_p99_pg_vs_sqlite: ratio(leases.postgres.sequential.p99, leases.sqlite.sequential.p99),
    },
  };
}

// ---------------------------------------------------------------------------
// Output

function row(cells, widths) {
  return cells
    .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
    .join('  ');
}

function printRun(r, label) {
  const lines = [''];
  lines.push(`${label}`);
  const w = [20, 7, 7, 9, 10, 10, 7, 7, 9, 6, 7];
  lines.push(
    row(
      [
        'spawn→destroy',
        'clients',
        'cycles',
        'cycles/s',
        'create p50',
        'delete p50',
        'cpu CP',
        'cpu PG',
        'cpu bench',
      ],
      w,
    ),
  );
  const names = {
    sqlite: '1 CP on SQLite',
    pg_one_cp: '1 CP on Postgres',
    pg_two_cp: '2 CPs on Postgres',
  };
  for (const [k, m] of Object.entries(r.cycles)) {
    lines.push(
      row(
        [
          names[k],
          m.clients,
          m.cycles,
          fmt(m.cycles_per_s, 1),
          fmt(m.create_ms.p50),
          fmt(m.delete_ms.p50),
          fmt(m.cpu_ms_per_cycle.control_planes),
          fmt(m.cpu_ms_per_cycle.postgres),
          fmt(m.cpu_ms_per_cycle.bench),
          fmt(m.cores_busy),
          fmt(m.pg_transactions_per_cycle, 1),
        ],
        w,
      ),
    );
  }
  lines.push(
    '  (cpu: CPU ms per cycle, CP summed over the control planes; cores: all of it in cores;\n' +
      '   PG tx: PostgreSQL transactions per cycle)',
  );
  const sw = [30, 10, 10, 10, 10];
  lines.push(row(['server handling p50 (ms)', 'create', 'delete', 'create p99', 'delete p99'], sw));
  for (const [k, s] of Object.entries(r.server)) {
    lines.push(
      row([k, fmt(s.create.p50), fmt(s.delete.p50), fmt(s.create.p99), fmt(s.delete.p99)], sw),
    );
  }
  for (const [k, m] of Object.entries(r.cycles)) {
    if (m.statements === undefined) continue;
    lines.push(`statements per cycle, ${names[k]} (calls/cycle, mean ms, query):`);
    for (const st of m.statements) {
      lines.push(
        `  ${fmt(st.per_cycle, 2).padStart(6)}  ${fmt(st.mean_ms, 3).padStart(7)}  ${st.query}`,
      );
    }
  }
  const lw = [30, 8, 8, 8, 8];
  lines.push(row(['lease acquire (ms)', 'n', 'p50', 'p99', 'mean'], lw));
  for (const store of ['sqlite', 'postgres']) {
    for (const mode of ['sequential', 'concurrent']) {
      const s = r.leases[store][mode];
      lines.push(row([`${store}, ${mode}`, s.n, fmt(s.p50, 3), fmt(s.p99, 3), fmt(s.mean, 3)], lw));
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
}

function targetsOf(ratios) {
  const t = (label, value, target) => ({
    label,
    value,
    target,
    pass: value !== null && value >= target,
  });
  return {
    pg_vs_sqlite: t(
      'cycles/s, 1 CP on Postgres / 1 CP on SQLite',
      ratios.pg_vs_sqlite,
      TARGET_PG_VS_SQLITE,
    ),
    two_vs_one_cp: t('cycles/s, 2 CPs / 1 CP on Postgres', ratios.two_vs_one_cp, TARGET_TWO_VS_ONE),
  };
}

function medianOf(runs, pick) {
  return median(runs.map(pick));
}

// ---------------------------------------------------------------------------

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  requireBuild([MAIN_JS, STORE_JS, SCHEMA_JS]);
  const keys = await knownKeys();
  const dir = await mkdtemp(join(tmpdir(), 'stacyvm-bench-store-'));
  const live = new Set();
  let cluster;
  const quotas = opts.cpCpus === undefined ? undefined : cpuQuotas();
  const cleanup = async () => {
    for (const p of live) await stopServer(p).catch(() => undefined);
    live.clear();
    quotas?.removeAll();
    cluster?.destroy();
    cluster = undefined;
    await rm(dir, { recursive: true, force: true });
  };
  let interrupted = false;
  const onSignal = (sig) => {
    interrupted = true;
    process.stderr.write(`store bench: ${sig}, stopping\n`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    cluster = await startPgCluster({
      durable: opts.pgDurable,
      preload: opts.pgStatements ? ['pg_stat_statements'] : [],
    });
    process.stdout.write(
      `store bench  node ${process.version}  ${process.platform}/${process.arch}  ${cpus().length} cpus  ` +
        `load ${loadavg()
          .map((x) => x.toFixed(2))
          .join(' ')}  postgres ${opts.pgDurable ? 'durable (fsync on)' : 'fsync off'}\n`,
    );
    if (quotas !== undefined) {
      process.stdout.write(
        `every control plane is held to ${opts.cpCpus} CPUs (cgroup v${quotas.version} CFS quota of its own); ` +
          'PostgreSQL and the bench are not limited\n',
      );
    }
    process.stdout.write(
      keys.localWorkerId
        ? 'two control planes: server.local_worker_id cp-1 and cp-2\n'
        : 'two control planes: this build has no server.local_worker_id, so both register their ' +
            'own worker as "local" and overwrite each other\'s worker row; each client creates and ' +
            "deletes through the same CP, so no call is routed to the other CP's sandbox\n",
    );
    const runs = [];
    for (let i = 1; i <= opts.runs; i++) {
      const r = await oneRun({ runIndex: i, opts, cluster, dir, keys, live, quotas });
      runs.push(r);
      printRun(r, `run ${i} of ${opts.runs}`);
    }

    const med = {
      sqlite_cycles_per_s: medianOf(runs, (r) => r.cycles.sqlite.cycles_per_s),
      pg_one_cp_cycles_per_s: medianOf(runs, (r) => r.cycles.pg_one_cp.cycles_per_s),
      pg_two_cp_cycles_per_s: medianOf(runs, (r) => r.cycles.pg_two_cp.cycles_per_s),
      pg_vs_sqlite: medianOf(runs, (r) => r.ratios.pg_vs_sqlite),
      two_vs_one_cp: medianOf(runs, (r) => r.ratios.two_vs_one_cp),
      lease_sqlite_p50: medianOf(runs, (r) => r.leases.sqlite.sequential.p50),
      lease_sqlite_p99: medianOf(runs, (r) => r.leases.sqlite.sequential.p99),
      lease_pg_p50: medianOf(runs, (r) => r.leases.postgres.sequential.p50),
      lease_pg_p99: medianOf(runs, (r) => r.leases.postgres.sequential.p99),
      lease_sqlite_conc_p50: medianOf(runs, (r) => r.leases.sqlite.concurrent.p50),
      lease_sqlite_conc_p99: medianOf(runs, (r) => r.leases.sqlite.concurrent.p99),
      lease_pg_conc_p50: medianOf(runs, (r) => r.leases.postgres.concurrent.p50),
      lease_pg_conc_p99: medianOf(runs, (r) => r.leases.postgres.concurrent.p99),
    };
    const targets = targetsOf({ pg_vs_sqlite: med.pg_vs_sqlite, two_vs_one_cp: med.two_vs_one_cp });
    const lines = [''];
    lines.push(opts.runs > 1 ? `medians of ${opts.runs} runs` : 'result');
    lines.push(
      `cycles/s: SQLite ${fmt(med.sqlite_cycles_per_s, 1)}, Postgres 1 CP ${fmt(med.pg_one_cp_cycles_per_s, 1)}, ` +
        `Postgres 2 CPs ${fmt(med.pg_two_cp_cycles_per_s, 1)}`,
    );
    lines.push(
      `lease acquire p50/p99 ms, 1 in flight: SQLite ${fmt(med.lease_sqlite_p50, 3)}/${fmt(med.lease_sqlite_p99, 3)}, ` +
        `Postgres ${fmt(med.lease_pg_p50, 3)}/${fmt(med.lease_pg_p99, 3)}`,
    );
    lines.push(
      `lease acquire p50/p99 ms, ${opts.concurrency} in flight: SQLite ${fmt(med.lease_sqlite_conc_p50, 3)}/${fmt(med.lease_sqlite_conc_p99, 3)}, ` +
        `Postgres ${fmt(med.lease_pg_conc_p50, 3)}/${fmt(med.lease_pg_conc_p99, 3)}`,
    );
    lines.push('');
    for (const t of Object.values(targets)) {
      lines.push(
        `${t.pass ? 'PASS' : 'MISS'}  ${t.label}: ${fmt(t.value)}x (target >= ${t.target}x)`,
      );
    }
    lines.push('');
    process.stdout.write(lines.join('\n') + '\n');
    process.stdout.write(
      JSON.stringify({
        bench: 'store',
        node: process.version,
        platform: `${process.platform}/${process.arch}`,
        cpus: cpus().length,
        seconds: opts.seconds,
        concurrency: opts.concurrency,
        lease_iterations: opts.leaseIterations,
        pg_durable: opts.pgDurable,
        cp_cpus: opts.cpCpus ?? null,
        local_worker_id_key: keys.localWorkerId,
        medians: med,
        targets: Object.fromEntries(
          Object.entries(targets).map(([k, t]) => [
            k,
            { value: t.value, target: t.target, result: t.pass ? 'PASS' : 'MISS' },
          ]),
        ),
        runs,
      }) + '\n',
    );
    if (opts.cpuProfDir !== undefined) {
      process.stdout.write(`control plane CPU profiles written to ${opts.cpuProfDir}\n`);
    }
  } catch (err) {
    process.exitCode = 1;
    if (interrupted) return;
    reportFailure('store bench', err, [...live]);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

await runBench('store bench', main);
