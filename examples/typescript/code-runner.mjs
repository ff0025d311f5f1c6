#!/usr/bin/env node
// A small "code-runner agent loop" on the StacyVM TypeScript SDK.
//
// It spawns one sandbox, and for each task writes a program into it, runs it with a streamed
// exec (output is printed live, as it arrives), looks at the exit code and, when a run fails,
// asks a "model" for a fixed program and runs that. The model here is SCRIPTED: a stand-in for
// an LLM call that returns canned fixes, so the example runs offline and its output is stable.
// The sandbox is always destroyed at the end (`client.withSandbox`), after a failure or Ctrl-C
// too.
//
//   STACYVM_URL=http://127.0.0.1:7423 STACYVM_API_KEY=... node examples/typescript/code-runner.mjs
//
// Options (flags win over environment variables):
//   --url URL          STACYVM_URL        server URL (default http://127.0.0.1:7423)
//                      STACYVM_API_KEY    API key (environment only: keys do not belong in argv)
//   --provider NAME    STACYVM_PROVIDER   provider (default: the server's default, e.g. mock)
//   --image IMAGE      STACYVM_IMAGE      image (default: the server's; it needs python3 and sh)
//   --no-fix                             do not ask the scripted model for fixes
//
// Exit status: 0 when every task passed (possibly after a fix), 1 otherwise, 130 on Ctrl-C or
// SIGTERM.
/* global process, console, AbortController */
import { parseArgs } from 'node:util';
import { Client, NotFoundError, StacyVMError } from 'stacyvm';

// JSDoc types, for editors and `tsc --checkJs` (examples/tsconfig.json); plain JS to node.
/** @typedef {import('stacyvm').Sandbox} Sandbox */
/** @typedef {{ name: string, file: string, argv: string[], code: string }} Task */
/** @typedef {{ exitCode: number, duration: string, timedOut: boolean, stdout: string, stderr: string }} RunResult */

const { values: flags } = parseArgs({
  options: {
    url: { type: 'string' },
    provider: { type: 'string' },
    image: { type: 'string' },
    'no-fix': { type: 'boolean', default: false },
  },
});
const url = flags.url ?? process.env.STACYVM_URL ?? 'http://127.0.0.1:7423';
const apiKey = process.env.STACYVM_API_KEY;
const provider = flags.provider ?? process.env.STACYVM_PROVIDER;
const image = flags.image ?? process.env.STACYVM_IMAGE;
const allowFixes = !flags['no-fix'];

// --- the tasks: programs the "agent" wants to run ---------------------------------------------
// `argv` runs without a shell; relative paths are under the working directory, /workspace.
/** @type {Task[]} */
const TASKS = [
  {
    name: 'hello',
    file: 'hello.py',
    argv: ['python3', 'hello.py'],
    code: [
      'import sys, time',
      'for i in range(1, 4):',
      '    print(f"working... step {i}/3", flush=True)',
      '    time.sleep(0.2)',
      'print(f"hello from python {sys.version_info[0]} in the sandbox")',
      '',
    ].join('\n'),
  },
  {
    // This first version has a bug (a misspelled variable): the run fails and the loop asks the
    // model for a fix.
    name: 'primes',
    file: 'primes.py',
    argv: ['python3', 'primes.py'],
    code: [
      'def primes_below(n):',
      '    found = []',
      '    for k in range(2, n):',
      '        if all(k % p for p in fund):',
      '            found.append(k)',
      '    return found',
      '',
      'primes = primes_below(50)',
      'with open("primes.txt", "w") as f:',
      '    f.write("\\n".join(str(p) for p in primes) + "\\n")',
      'print(f"{len(primes)} primes below 50, largest {primes[-1]}")',
      '',
    ].join('\n'),
  },
  {
    // Uses the file the previous task wrote: the sandbox keeps its files between commands.
    name: 'report',
    file: 'report.sh',
    argv: ['sh', 'report.sh'],
    code: [
      'set -e',
      'count=$(wc -l < primes.txt)',
      'echo "primes.txt has $((count)) lines"',
      'echo "largest prime: $(tail -n 1 primes.txt)"',
      '',
    ].join('\n'),
  },
];

/**
 * SCRIPTED STAND-IN FOR AN LLM. A real agent would send the task, the program and the failed
 * run's output to a model and get a new program back. This one recognises the one bug planted
 * above and returns a canned fix; for anything else it gives up (returns null).
 *
 * @param {Task} task
 * @param {string} code
 * @param {RunResult} result
 * @returns {{ explanation: string, code: string } | null}
 */
function scriptedModel(task, code, result) {
  if (task.name === 'primes' && /NameError: name 'fund' is not defined/.test(result.stderr)) {
    return {
      explanation: "rename the misspelled variable 'fund' to 'found'",
      code: code.replace('for p in fund', 'for p in found'),
    };
  }
  return null;
}

const MAX_ATTEMPTS = 3;

/**
 * Writes the program, runs it streaming its output live, returns the exit code and output.
 *
 * @param {Sandbox} sb
 * @param {Task} task
 * @param {string} code
 * @param {AbortSignal} signal
 * @returns {Promise<RunResult>}
 */
async function run(sb, task, code, signal) {
  await sb.writeFile(task.file, code);
  const stream = sb.execStream(task.argv, {
    env: { PYTHONUNBUFFERED: '1' },
    timeout: '60s',
    signal,
  });
  let stdout = '';
  let stderr = '';
  for await (const ev of stream) {
    if (ev.stream === 'stdout') {
      stdout += ev.data;
      process.stdout.write(ev.data);
    } else if (ev.stream === 'stderr') {
      stderr += ev.data;
      process.stderr.write(ev.data);
    }
  }
  const exit = await stream.wait(); // the final exit event, already received
  return {
    exitCode: exit.exitCode,
    duration: exit.duration,
    timedOut: exit.timedOut,
    stdout,
    stderr,
  };
}

/**
 * The agent loop: run each task, feed failures to the model, rerun with its fix.
 *
 * @param {Sandbox} sb
 * @param {AbortSignal} signal
 */
async function agent(sb, signal) {
  const outcomes = [];
  for (const [i, task] of TASKS.entries()) {
    const tag = `[${i + 1}/${TASKS.length}] ${task.name}`;
    let code = task.code;
    let outcome = { name: task.name, passed: false, fixed: false };
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      console.log(`${tag}: ${attempt === 1 ? '' : `retry ${attempt - 1}: `}${task.argv.join(' ')}`);
      const result = await run(sb, task, code, signal);
      const why = result.timedOut ? ', timed out' : '';
      console.log(`${tag}: exit ${result.exitCode} (${result.duration}${why})`);
      if (result.exitCode === 0) {
        outcome = { name: task.name, passed: true, fixed: attempt > 1 };
        break;
      }
      const fix = allowFixes ? scriptedModel(task, code, result) : null;
      if (fix === null) {
        console.log(`${tag}: no fix proposed, giving up on this task`);
        break;
      }
      console.log(`${tag}: fixer (scripted stand-in for an LLM): ${fix.explanation}`);
      code = fix.code;
    }
    outcomes.push(outcome);
  }
  // Results can also be read back as files.
  try {
    const primes = await sb.readFile('primes.txt');
    console.log(`primes.txt read back: ${primes.trim().split('\n').join(' ')}`);
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
    console.log('primes.txt read back: (missing)');
  }
  return outcomes;
}

async function main() {
  const client = new Client({ baseUrl: url, apiKey });
  const ac = new AbortController();
  // Ctrl-C (or a SIGTERM) aborts the running stream, which makes the server kill the command;
  // withSandbox then destroys the sandbox before the process exits.
  for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => ac.abort());
  console.log(`code-runner: server ${client.baseUrl}`);

  let sandboxId = '';
  /** @type {import('stacyvm').SpawnOptions} */
  const spawnOpts = { ttl: '10m', metadata: { example: 'code-runner' } };
  if (provider) spawnOpts.provider = provider;
  if (image) spawnOpts.image = image;
  try {
    const outcomes = await client.withSandbox(spawnOpts, async (sb) => {
      sandboxId = sb.id;
      console.log(`sandbox ${sb.id} spawned (provider ${sb.provider}, image ${sb.image})`);
      return agent(sb, ac.signal);
    });
    console.log(`sandbox ${sandboxId} destroyed`);
    const passed = outcomes.filter((o) => o.passed).length;
    const fixed = outcomes.filter((o) => o.fixed).length;
    console.log(`summary: ${passed}/${outcomes.length} tasks passed (${fixed} after a fix)`);
    return passed === outcomes.length ? 0 : 1;
  } catch (err) {
    if (sandboxId !== '') console.log(`sandbox ${sandboxId} destroyed`);
    if (ac.signal.aborted) {
      console.error('interrupted');
      return 130;
    }
    if (err instanceof StacyVMError) {
      const status = err.status ? `, HTTP ${err.status}` : '';
      console.error(`error: ${err.name} (${err.code}${status}): ${err.message}`);
      return 1;
    }
    throw err;
  }
}

process.exitCode = await main();
