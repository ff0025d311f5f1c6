// Cross-SDK parity: one scenario run through the TypeScript SDK (in this process) and through the
// Python SDK (sdk/python, via parity_driver.py), against the same real `stacyvm serve`. Both record
// the same JSON shape with raw values; the two records are normalised the same way (sandbox ids,
// timestamps, durations, request ids) and must be deep-equal.
//
// Representation differences between the SDKs that the records smooth over on purpose (the
// RESULTS are the same; only how each language spells them differs):
// - error classes: each record's `class` is the TypeScript SDK's class name; the Python driver
//   finds it with `isinstance` against its own hierarchy. The Python class itself (`native`) is
//   more specific where Python has subclasses — `FileNotFound` / `SandboxNotFound` for what
//   TypeScript reports as `NotFoundError` — and is checked against PY_NATIVE below, not compared.
// - `details` without field details: TypeScript `undefined`, Python `[]`; recorded as `[]`.
// - a missing `requestId`: TypeScript `undefined`, Python `None`; recorded as `null`.
// - exec argv mode: TypeScript passes an array, Python `command, args=[...], mode="argv"`.
// - the `exit` event: TypeScript `exitCode`/`timedOut`, Python `exit_code`/`timed_out`; both are
//   recorded under the wire names.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BadRequestError,
  ConflictError,
  ConnectionError,
  ForbiddenError,
  InternalError,
  MalformedResponseError,
  NotFoundError,
  PayloadTooLargeError,
  RequestTimeoutError,
  ResourceLimitError,
  StacyVMError,
  StreamInterruptedError,
  TimeoutError,
  UnauthorizedError,
  UnavailableError,
} from '../../src/index.js';
import type { Client, ExecResult, ExecStream, Sandbox } from '../../src/index.js';
import { API_KEY, startSdkServer } from './support.js';
import type { SdkServer } from './support.js';

const REPO = fileURLToPath(new URL('../../../..', import.meta.url));
const DRIVER = fileURLToPath(new URL('./parity_driver.py', import.meta.url));
const PY_SDK = fileURLToPath(new URL('../../../../sdk/python', import.meta.url));
const DRIVER_TIMEOUT_MS = 45_000;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Rec = Record<string, Json>;

interface ScenarioOutput {
  sandbox_id: string;
  result: Rec;
}

// --- the TypeScript half: the twin of scenario() in parity_driver.py ----------------------------

// TypeScript class -> its name, most specific first (the same order as the driver's TS_NAME).
const TS_CLASSES: [abstract new (...args: never[]) => StacyVMError, string][] = [
  [BadRequestError, 'BadRequestError'],
  [UnauthorizedError, 'UnauthorizedError'],
  [ForbiddenError, 'ForbiddenError'],
  [NotFoundError, 'NotFoundError'],
  [TimeoutError, 'TimeoutError'],
  [ConflictError, 'ConflictError'],
  [PayloadTooLargeError, 'PayloadTooLargeError'],
  [ResourceLimitError, 'ResourceLimitError'],
  [InternalError, 'InternalError'],
  [UnavailableError, 'UnavailableError'],
  [StreamInterruptedError, 'StreamInterruptedError'],
  [RequestTimeoutError, 'RequestTimeoutError'],
  [ConnectionError, 'ConnectionError'],
  [MalformedResponseError, 'MalformedResponseError'],
];

async function errorRecord(fn: () => Promise<unknown>): Promise<Rec> {
  try {
    await fn();
  } catch (err) {
    if (!(err instanceof StacyVMError)) throw err;
    const cls = TS_CLASSES.find(([c]) => err instanceof c)?.[1] ?? 'StacyVMError';
    return {
      class: cls,
      native: err.name,
      code: err.code,
      status: err.status,
      message: err.message,
      request_id: err.requestId ?? null,
      details: (err.details ?? []).map((d) => ({ field: d.field, problem: d.problem })),
      is_base: true,
    };
  }
  return { class: null, native: null, error: 'no error raised' };
}

function execRecord(r: ExecResult): Rec {
  return { exit_code: r.exitCode, stdout: r.stdout, stderr: r.stderr, duration: r.duration };
}

/** Python's str.splitlines() for the line endings commands print. */
function splitLines(s: string): string[] {
  const lines = s.split(/\r\n|\n|\r/);
  if (lines.at(-1) === '') lines.pop();
  return lines;
}

async function collectStream(stream: ExecStream): Promise<Rec> {
  const out: string[] = [];
  const err: string[] = [];
  const order: string[] = [];
  const exits: Rec[] = [];
  for await (const ev of stream) {
    if (ev.stream === 'exit') {
      exits.push({
        data: ev.data,
        exit_code: ev.exitCode,
        timed_out: ev.timedOut,
        duration: ev.duration,
      });
    } else {
      (ev.stream === 'stdout' ? out : err).push(ev.data);
      order.push(...splitLines(ev.data).map((l) => `${ev.stream}:${l}`));
    }
  }
  return { stdout: out.join(''), stderr: err.join(''), order, exits };
}

function fileBytes(): Uint8Array {
  const b = new Uint8Array(256 * 4 + 3);
  for (let i = 0; i < b.length; i++) b[i] = (i * 7 + 3) % 256;
  return b;
}

const asJson = (v: unknown): Json => JSON.parse(JSON.stringify(v)) as Json;

async function tsScenario(client: Client): Promise<ScenarioOutput> {
  const r: Rec = {};
  const errors: Rec = {};

  // -- spawn, list, get
  const sb: Sandbox = await client.spawn({ ttl: '10m', metadata: { suite: 'parity', sdk: 'any' } });
  r['spawn'] = asJson({ info: sb.info, state: sb.state, metadata: sb.metadata });
  r['listed'] = (await client.list()).filter((s) => s.id === sb.id).length;
  r['get'] = asJson((await client.get(sb.id)).info);

  // -- exec
  await sb.writeFile('sub/marker.txt', 'm');
  r['exec_env_workdir'] = execRecord(
    await sb.exec('echo "$GREETING"; ls; echo err >&2; exit 3', {
      env: { GREETING: 'hi parity' },
      workdir: '/workspace/sub',
    }),
  );
  r['exec_argv'] = execRecord(await sb.exec(['printf', '%s|', 'a b', '$HOME', "it's"]));
  r['exec_shell_args'] = execRecord(await sb.exec('printf "%s|"', { args: ['x y', '$z'] }));
  r['exec_unicode'] = execRecord(await sb.exec(['printf', 'h\u00e9llo \u2713 \u{1F680}\\n']));

  // -- streamed exec
  r['stream_shell'] = await collectStream(
    sb.execStream('echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 7'),
  );
  r['stream_argv'] = await collectStream(
    sb.execStream(['sh', '-c', 'printf abc; printf def >&2'], { env: { X: '1' } }),
  );

  // -- text and binary files
  const text = 'h\u00e9llo \u2713 \u{1F680}\nline two\n';
  await sb.writeFile('notes/hello.txt', text);
  const back = await sb.readFile('notes/hello.txt');
  r['text'] = { read: back, equal: back === text };
  const data = fileBytes();
  await sb.writeFile('bin/all.bin', data, { mode: 0o600 });
  const got = await sb.readFileBytes('bin/all.bin');
  r['binary'] = {
    distinct: new Set(data).size,
    length: got.length,
    equal: Buffer.from(got).equals(Buffer.from(data)),
    sha256: createHash('sha256').update(got).digest('hex'),
    sandbox_sha256: (await sb.exec('sha256sum bin/all.bin')).stdout.split(' ')[0] ?? '',
  };

  // -- list / stat / glob / move / chmod / delete
  r['list'] = asJson(await sb.listFiles('/workspace'));
  r['stat'] = asJson(await sb.statFile('bin/all.bin'));
  r['glob'] = await sb.globFiles('/workspace/**/*.txt');
  await sb.moveFile('notes/hello.txt', 'archive/deep/hello.txt');
  r['after_move'] = {
    stat: asJson(await sb.statFile('archive/deep/hello.txt')),
    glob: await sb.globFiles('/workspace/**/*.txt'),
    read: await sb.readFile('archive/deep/hello.txt'),
  };
  errors['stat_moved_away'] = await errorRecord(() => sb.statFile('notes/hello.txt'));
  await sb.chmodFile('archive/deep/hello.txt', '0640');
  await sb.writeFile('run.sh', '#!/bin/sh\necho ran "$1"\n');
  await sb.chmodFile('run.sh', 0o755);
  r['chmod'] = {
    text_mode: (await sb.statFile('archive/deep/hello.txt')).mode,
    script_mode: (await sb.statFile('run.sh')).mode,
    run: execRecord(await sb.exec('./run.sh', { args: ['ok'] })),
  };
  errors['delete_nonempty_dir'] = await errorRecord(() => sb.deleteFile('archive'));
  await sb.deleteFile('archive', { recursive: true });
  await sb.deleteFile('run.sh');
  r['after_delete'] = {
    glob: await sb.globFiles('/workspace/**'),
    names: (await sb.listFiles('/workspace')).map((f) => f.name),
  };
  errors['stat_deleted_dir'] = await errorRecord(() => sb.statFile('archive'));
  errors['read_missing_file'] = await errorRecord(() => sb.readFile('nope.txt'));
  errors['read_bytes_missing_file'] = await errorRecord(() => sb.readFileBytes('nope/nope.bin'));
  errors['path_escape'] = await errorRecord(() => sb.readFile('../../etc/passwd'));

  // -- lifetime
  const nowMs = Date.now();
  const returned = await sb.extendTtl('2h');
  r['extend'] = {
    now_ms: nowMs,
    expires_at: sb.expiresAt,
    returned_self: returned === sb,
    state: sb.state,
  };
  const refreshed = await sb.refresh();
  r['refresh'] = { info: asJson(sb.info), returned_self: refreshed === sb };
  errors['extend_above_max'] = await errorRecord(() => sb.extendTtl('100h'));

  // -- destroy, then everything is a missing sandbox
  await sb.destroy();
  r['destroy'] = { state: sb.state };
  errors['destroy_again'] = await errorRecord(() => sb.destroy());
  errors['exec_destroyed'] = await errorRecord(() => sb.exec('true'));
  errors['stream_destroyed'] = await errorRecord(() => sb.execStream('true').wait());
  errors['refresh_destroyed'] = await errorRecord(() => sb.refresh());
  errors['read_destroyed'] = await errorRecord(() => sb.readFile('sub/marker.txt'));
  errors['get_destroyed'] = await errorRecord(() => client.get(sb.id));
  r['listed_after_destroy'] = (await client.list()).filter((s) => s.id === sb.id).length;

  r['errors'] = errors;
  return { sandbox_id: sb.id, result: asJson(r) as Rec };
}

// --- the Python half ---------------------------------------------------------------------------

function runDriver(url: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !k.startsWith('STACYVM_') && k !== 'PYTHONPATH') env[k] = v;
    }
    const child = spawn('python3', [DRIVER, url], {
      cwd: REPO,
      env: { ...env, STACYVM_API_KEY: API_KEY, PYTHONPATH: PY_SDK, PYTHONIOENCODING: 'utf-8' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), DRIVER_TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

// --- normalisation, the same for both ----------------------------------------------------------

const GO_DURATION = /^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$/;
const TIME_KEY = /(^|_)at$|^mod_time$/;

const isRec = (v: Json | undefined): v is Rec =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function rec(v: Json | undefined, what: string): Rec {
  if (!isRec(v)) throw new Error(`${what} is not an object: ${JSON.stringify(v)}`);
  return v;
}

function str(v: Json | undefined, what: string): string {
  if (typeof v !== 'string') throw new Error(`${what} is not a string: ${JSON.stringify(v)}`);
  return v;
}

/** Values computed from the raw times (before they are masked), identically for both SDKs. */
function derive(result: Rec): void {
  const spawnInfo = rec(rec(result['spawn'], 'spawn')['info'], 'spawn.info');
  const created = Date.parse(str(spawnInfo['created_at'], 'created_at'));
  result['spawn_ttl_seconds'] =
    (Date.parse(str(spawnInfo['expires_at'], 'expires_at')) - created) / 1000;
  const extend = rec(result['extend'], 'extend');
  const expires = str(extend['expires_at'], 'extend.expires_at');
  const nowMs = extend['now_ms'];
  if (typeof nowMs !== 'number') throw new Error('extend.now_ms is not a number');
  // expiry = server's now + 2h; the client's clock (same host) read just before the call.
  extend['remaining_minutes'] = Math.round((Date.parse(expires) - nowMs) / 60_000);
  delete extend['now_ms'];
  const refreshInfo = rec(rec(result['refresh'], 'refresh')['info'], 'refresh.info');
  result['refresh_expiry_is_extended_expiry'] = refreshInfo['expires_at'] === expires;
}

function mask(value: Json, sandboxId: string, key = ''): Json {
  if (typeof value === 'string') {
    if (TIME_KEY.test(key)) {
      expect(Number.isNaN(Date.parse(value)), `${key}: ${value}`).toBe(false);
      return '<time>';
    }
    if (key === 'duration') {
      expect(value, key).toMatch(GO_DURATION);
      return '<duration>';
    }
    if (key === 'request_id') {
      expect(value.length, key).toBeGreaterThan(0);
      return '<request-id>';
    }
    return value.split(sandboxId).join('<id>');
  }
  if (Array.isArray(value)) return value.map((v) => mask(v, sandboxId));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, mask(v, sandboxId, k)] as const),
    );
  }
  return value;
}

/** Derives, masks, and takes the SDK-specific error class names out (returned separately). */
function normalise(out: ScenarioOutput): { result: Json; natives: Record<string, Json> } {
  expect(out.sandbox_id).toMatch(/^sb-[0-9a-f]+$/);
  const result = structuredClone(out.result);
  derive(result);
  const natives: Record<string, Json> = {};
  for (const [step, e] of Object.entries(rec(result['errors'], 'errors'))) {
    const err = rec(e, step);
    natives[step] = err['native'] ?? null;
    delete err['native'];
  }
  return { result: mask(result, out.sandbox_id), natives };
}

// The Python class raised for each error step (TypeScript raises the `class` itself).
const PY_NATIVE: Record<string, string> = {
  stat_moved_away: 'FileNotFound',
  delete_nonempty_dir: 'BadRequest',
  stat_deleted_dir: 'FileNotFound',
  read_missing_file: 'FileNotFound',
  read_bytes_missing_file: 'FileNotFound',
  path_escape: 'BadRequest',
  extend_above_max: 'ResourceLimit',
  destroy_again: 'SandboxNotFound',
  exec_destroyed: 'SandboxNotFound',
  stream_destroyed: 'SandboxNotFound',
  refresh_destroyed: 'SandboxNotFound',
  read_destroyed: 'SandboxNotFound',
  get_destroyed: 'SandboxNotFound',
};

describe('cross-SDK parity: the same scenario through the TypeScript and Python SDKs', () => {
  let srv: SdkServer;
  beforeAll(async () => {
    srv = await startSdkServer();
  });
  afterAll(async () => {
    await srv?.stop();
  });

  it('records the same results, errors included, once volatile fields are masked', async () => {
    const py = await runDriver(srv.url);
    expect(py.stderr, 'python driver stderr').toBe('');
    expect(py.code, py.stderr).toBe(0);
    const pyOut = JSON.parse(py.stdout) as ScenarioOutput;
    const tsOut = await tsScenario(srv.client());
    expect(pyOut.sandbox_id).not.toBe(tsOut.sandbox_id);

    const ts = normalise(tsOut);
    const pyN = normalise(pyOut);

    // Error classes: TypeScript's own name is the shared `class`; Python's is the subclass above.
    const tsErrors = rec(rec(ts.result, 'ts')['errors'], 'ts.errors');
    expect(Object.keys(ts.natives).sort()).toEqual(Object.keys(PY_NATIVE).sort());
    for (const [step, native] of Object.entries(ts.natives)) {
      expect(native, step).toBe(rec(tsErrors[step], step)['class']);
    }
    expect(pyN.natives).toEqual(PY_NATIVE);

    // The scenario did what it says (so two equally wrong results cannot pass).
    expect(ts.result).toMatchObject({
      spawn: { state: 'running', metadata: { suite: 'parity', sdk: 'any' } },
      spawn_ttl_seconds: 600,
      listed: 1,
      exec_env_workdir: { exit_code: 3, stdout: 'hi parity\nmarker.txt\n', stderr: 'err\n' },
      exec_argv: { exit_code: 0, stdout: "a b|$HOME|it's|" },
      exec_shell_args: { exit_code: 0, stdout: 'x y|$z|' },
      exec_unicode: { stdout: 'h\u00e9llo \u2713 \u{1F680}\n' },
      stream_shell: {
        stdout: 'one\nthree\n',
        stderr: 'two\n',
        order: ['stdout:one', 'stderr:two', 'stdout:three'],
        exits: [{ data: '', exit_code: 7, timed_out: false, duration: '<duration>' }],
      },
      stream_argv: { stdout: 'abc', stderr: 'def', exits: [{ exit_code: 0 }] },
      text: { equal: true },
      binary: { distinct: 256, length: 1027, equal: true },
      stat: { path: '/workspace/bin/all.bin', size: 1027, mode: '0600', is_dir: false },
      glob: ['/workspace/notes/hello.txt', '/workspace/sub/marker.txt'],
      after_move: { glob: ['/workspace/archive/deep/hello.txt', '/workspace/sub/marker.txt'] },
      chmod: { text_mode: '0640', script_mode: '0755', run: { stdout: 'ran ok\n' } },
      extend: { remaining_minutes: 120, returned_self: true, state: 'running' },
      refresh: { returned_self: true },
      refresh_expiry_is_extended_expiry: true,
      destroy: { state: 'destroyed' },
      listed_after_destroy: 0,
      errors: {
        read_missing_file: { class: 'NotFoundError', code: 'NOT_FOUND', status: 404 },
        delete_nonempty_dir: { class: 'BadRequestError', code: 'BAD_REQUEST', status: 400 },
        path_escape: { class: 'BadRequestError', details: [{ field: 'path' }] },
        extend_above_max: { class: 'ResourceLimitError', code: 'RESOURCE_LIMIT', status: 429 },
        exec_destroyed: {
          class: 'NotFoundError',
          code: 'NOT_FOUND',
          status: 404,
          message: 'sandbox not found: <id>',
          request_id: '<request-id>',
          is_base: true,
        },
      },
    });
    const binary = rec(rec(ts.result, 'ts')['binary'], 'binary');
    expect(binary['sandbox_sha256']).toBe(binary['sha256']);

    // The point of the test: the Python SDK's record is the TypeScript SDK's record.
    expect(pyN.result).toStrictEqual(ts.result);
  });
});
