/**
 * The behaviour every {@link WorkerClient} must show, whatever the transport:
 * the in-process runtime and the HTTP worker RPC client pass the same suite,
 * so the orchestrator cannot tell them apart. The subject's worker runs the
 * mock provider (commands execute on the host, relative to the sandbox's
 * `/workspace`).
 */
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { StacyError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import { TIMEOUT_EXIT_CODE } from '../domain/exec.js';
import type { ExecEvent } from '../domain/exec.js';
import type { LeaseToken } from '../domain/lease.js';
import { newSandboxId } from '../domain/sandbox.js';
import {
  digestOf,
  expectStacyError,
  patternedBody,
  readAll,
  spec,
} from '../providers/provider.contract.js';
import type { RuntimeRef, WorkerClient } from './worker-client.js';

export { expectStacyError, readAll, spec };

/** What a test file hands the contract suite. */
export interface WorkerClientContractSubject {
  client: WorkerClient;
  /** Puts the subject's worker into drain mode (in-process `drain()`, remote `worker.shutdown`). */
  drain(): Promise<void>;
  cleanup(): Promise<void>;
}

interface SandboxFixture {
  client: WorkerClient;
  ref: RuntimeRef;
}

/** A lease held by `workerId` on `sandboxId`, valid for ten minutes. */
export function testLease(workerId: string, sandboxId: string, generation = 1): LeaseToken {
  return {
    resourceId: sandboxId,
    holderId: workerId,
    generation,
    expiresAtMs: Date.now() + 10 * 60_000,
  };
}

/** Spawns a mock sandbox through `client` under a fresh lease. */
export async function spawnSandbox(client: WorkerClient, generation = 1): Promise<RuntimeRef> {
  const sandboxId = newSandboxId();
  const lease = testLease(client.workerId, sandboxId, generation);
  const result = await client.spawn({
    sandboxId,
    provider: 'mock',
    image: 'ignored',
    memoryMb: 128,
    vcpus: 1,
    ownerId: 'owner-1',
    metadata: { purpose: 'contract' },
    ports: [],
    lease,
  });
  return { sandboxId, provider: result.provider, runtimeId: result.runtimeId, lease };
}

async function collect(events: AsyncIterable<ExecEvent>): Promise<ExecEvent[]> {
  const out: ExecEvent[] = [];
  for await (const ev of events) out.push(ev);
  return out;
}

/** Starts and drains a stream; a refusal thrown at call time or during iteration both reject. */
async function streamAll(start: () => AsyncIterable<ExecEvent>): Promise<ExecEvent[]> {
  return collect(start());
}

function joinedOutput(events: ExecEvent[]): [string, string][] {
  const out: [string, string][] = [];
  for (const ev of events) {
    if (ev.type === 'exit') continue;
    const text = Buffer.from(ev.data).toString('utf8');
    const last = out[out.length - 1];
    if (last !== undefined && last[0] === ev.type) last[1] += text;
    else out.push([ev.type, text]);
  }
  return out;
}

async function text(client: WorkerClient, ref: RuntimeRef, path: string): Promise<string> {
  return (await readAll((await client.readFile(ref, path)).body)).toString('utf8');
}

/**
 * Expects `fn` to fail with a StacyError of `code`. Called through a thunk:
 * the in-process runtime throws some refusals synchronously, the HTTP client
 * asynchronously, and a caller inside an async function sees both the same way.
 */
export function expectErr(
  fn: () => Promise<unknown>,
  code: ErrorCode,
  message?: RegExp,
): Promise<StacyError> {
  return expectStacyError((async () => fn())(), code, message);
}

/** Test PKI made with the `openssl` CLI: a CA, a server cert for IP 127.0.0.1, a client cert. */
export interface TestPki {
  ca: Buffer;
  serverCert: Buffer;
  serverKey: Buffer;
  clientCert: Buffer;
  clientKey: Buffer;
  /** A second CA and a client cert it signed: a certificate the server must not trust. */
  strangerCert: Buffer;
  strangerKey: Buffer;
}

/** Generates {@link TestPki} in `dir` (EC P-256 keys, valid for a day). */
export async function generateTestPki(dir: string): Promise<TestPki> {
  const run = (args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'pipe', timeout: 30_000 });
  };
  const key = (name: string): void =>
    run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name]);
  const ca = (name: string, cn: string): void => {
    key(`${name}.key`);
    run([
      'req',
      '-x509',
      '-new',
      '-key',
      `${name}.key`,
      '-out',
      `${name}.crt`,
      '-days',
      '1',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
  };
  const leaf = (name: string, caName: string, cn: string, ext: string): void => {
    key(`${name}.key`);
    run(['req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
    execFileSync('sh', ['-c', `printf '%s\\n' "$EXT" > ${name}.ext`], {
      cwd: dir,
      env: { ...process.env, EXT: ext },
    });
    run([
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${caName}.crt`,
      '-CAkey',
      `${caName}.key`,
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      '1',
      '-extfile',
      `${name}.ext`,
    ]);
  };
  ca('ca', 'stacyvm-test-ca');
  ca('stranger-ca', 'stranger-ca');
  leaf('server', 'ca', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth');
  leaf('client', 'ca', 'control-plane', 'extendedKeyUsage=clientAuth');
  leaf('stranger', 'stranger-ca', 'stranger', 'extendedKeyUsage=clientAuth');
  const read = (name: string): Promise<Buffer> => readFile(join(dir, name));
  await writeFile(join(dir, 'done'), 'ok');
  return {
    ca: await read('ca.crt'),
    serverCert: await read('server.crt'),
    serverKey: await read('server.key'),
    clientCert: await read('client.crt'),
    clientKey: await read('client.key'),
    strangerCert: await read('stranger.crt'),
    strangerKey: await read('stranger.key'),
  };
}

/**
 * Registers `worker client contract: <name>`. `makeSubject` runs once for the
 * main suite and once more for the drain test (draining cannot be undone).
 */
export function describeWorkerClientContract(
  name: string,
  makeSubject: () => Promise<WorkerClientContractSubject>,
): void {
  describe(`worker client contract: ${name}`, () => {
    let subject: WorkerClientContractSubject | undefined;

    beforeAll(async () => {
      subject = await makeSubject();
    }, 60_000);

    afterAll(async () => {
      await subject?.cleanup();
    });

    const client = (): WorkerClient => {
      if (subject === undefined) throw new Error('worker client contract: makeSubject did not run');
      return subject.client;
    };

    const it = test.extend<{ sb: SandboxFixture }>({
      // eslint-disable-next-line no-empty-pattern
      sb: async ({}, use) => {
        const c = client();
        const ref = await spawnSandbox(c);
        try {
          await use({ client: c, ref });
        } finally {
          await c.destroy(ref).catch(() => undefined);
        }
      },
    });

    describe('lifecycle', () => {
      it('spawns on the named provider and reports the sandbox running', async ({ sb }) => {
        expect(sb.ref.provider).toBe('mock');
        expect(sb.ref.runtimeId).toBe(sb.ref.sandboxId);
        expect(await sb.client.status(sb.ref)).toEqual({ state: 'running' });
      });

      it('reports a destroyed sandbox as NOT_FOUND, and destroy stays idempotent', async ({
        sb,
      }) => {
        await sb.client.destroy(sb.ref);
        await expectErr(
          () => sb.client.status(sb.ref),
          'NOT_FOUND',
          new RegExp(`sandbox not found: ${sb.ref.sandboxId}`),
        );
        await expectErr(() => sb.client.exec(sb.ref, spec('echo hi')), 'NOT_FOUND');
        await sb.client.destroy(sb.ref);
      });

      it('answers NOT_FOUND for a sandbox it never spawned, on every kind of call', async () => {
        const c = client();
        const ghost: RuntimeRef = { sandboxId: newSandboxId(), provider: 'mock', runtimeId: '' };
        ghost.runtimeId = ghost.sandboxId;
        const named = new RegExp(`sandbox not found: ${ghost.sandboxId}`);
        await expectErr(() => c.status(ghost), 'NOT_FOUND', named);
        await expectErr(() => c.exec(ghost, spec('echo hi')), 'NOT_FOUND', named);
        await expectErr(
          () => streamAll(() => c.execStream(ghost, spec('echo hi'))),
          'NOT_FOUND',
          named,
        );
        await expectErr(() => c.readFile(ghost, '/workspace/x'), 'NOT_FOUND', named);
        await expectErr(
          () => c.writeFile(ghost, '/workspace/x', Buffer.from('x'), 0o644),
          'NOT_FOUND',
          named,
        );
        await expectErr(() => c.listFiles(ghost, '/workspace'), 'NOT_FOUND', named);
        await expectErr(() => c.logs(ghost, 10), 'NOT_FOUND', named);
      });

      it('answers NOT_FOUND for an unknown provider', async ({ sb }) => {
        const other = { ...sb.ref, provider: 'no-such-provider' };
        await expectErr(() => sb.client.status(other), 'NOT_FOUND', /provider not found/);
        await expectErr(
          () => sb.client.providerHealth('no-such-provider'),
          'NOT_FOUND',
          /provider not found/,
        );
        await expectErr(
          () => streamAll(() => sb.client.execStream(other, spec('echo hi'))),
          'NOT_FOUND',
          /provider not found/,
        );
      });

      it('refuses a stale lease generation with CONFLICT and keeps serving the current one', async () => {
        const c = client();
        const ref = await spawnSandbox(c, 5);
        try {
          const stale: RuntimeRef = { ...ref, lease: { ...ref.lease!, generation: 4 } };
          await expectErr(() => c.status(stale), 'CONFLICT', /stale lease/);
          await expectErr(() => c.exec(stale, spec('echo hi')), 'CONFLICT', /stale lease/);
          await expectErr(() => c.destroy(stale), 'CONFLICT', /stale lease/);
          expect(await c.status(ref)).toEqual({ state: 'running' });
          const newer: RuntimeRef = { ...ref, lease: { ...ref.lease!, generation: 6 } };
          expect((await c.exec(newer, spec('echo fenced'))).stdout).toBe('fenced\n');
          // Generation 6 has now been seen: 5 is stale too.
          await expectErr(() => c.status(ref), 'CONFLICT');
          await c.destroy(newer);
        } finally {
          await c.destroy({ ...ref, lease: undefined }).catch(() => undefined);
        }
      });

      it('returns console log lines, at most as many as asked', async ({ sb }) => {
        await sb.client.exec(sb.ref, spec('echo for-the-log'));
        const lines = await sb.client.logs(sb.ref, 50);
        expect(lines.length).toBeGreaterThan(0);
        expect(lines.length).toBeLessThanOrEqual(50);
        expect(lines.some((l) => l.includes(sb.ref.sandboxId))).toBe(true);
        expect(await sb.client.logs(sb.ref, 1)).toHaveLength(1);
      });

      it('lists providers, their health and runtimes', async ({ sb }) => {
        const providers = await sb.client.providers();
        const mock = providers.find((p) => p.name === 'mock');
        expect(mock).toMatchObject({ name: 'mock', healthy: true, isDefault: true });
        expect(mock?.capabilities).toEqual(
          expect.arrayContaining(['exec', 'exec_stream', 'files']),
        );
        expect(mock?.config).toMatchObject({ type: 'mock' });
        expect(mock?.lastCheckedMs).toBeGreaterThan(0);
        const health = await sb.client.providerHealth('mock');
        expect(health.healthy).toBe(true);
        expect(health.latencyMs).toBeGreaterThanOrEqual(0);
        expect(await sb.client.listRuntimes('mock')).toContain(sb.ref.sandboxId);
        await expectErr(() => sb.client.listRuntimes('nope'), 'NOT_FOUND');
        // The mock provider measures no stats.
        expect(await sb.client.stats(sb.ref)).toBeUndefined();
      });
    });

    describe('exec', () => {
      it('returns stdout, stderr and the exit code', async ({ sb }) => {
        const r = await sb.client.exec(sb.ref, spec('echo out; echo err >&2; exit 3'));
        expect(r).toMatchObject({ exitCode: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false });
        expect(r.durationMs).toBeGreaterThan(0);
      });

      it('passes env and runs in the workdir', async ({ sb }) => {
        await sb.client.writeFile(sb.ref, '/workspace/sub/marker.txt', Buffer.from('m1'), 0o644);
        const r = await sb.client.exec(
          sb.ref,
          spec(`printf '%s|' "$GREETING" "$QUOTED"; cat marker.txt`, {
            env: { GREETING: 'hi there', QUOTED: `a'b"c$d ü` },
            workdir: '/workspace/sub',
          }),
        );
        expect(r.stdout).toBe(`hi there|a'b"c$d ü|m1`);
      });

      it('quotes args in shell mode and passes them verbatim in argv mode', async ({ sb }) => {
        const args = ["it's", 'a b', '"q"', '$HOME', '*', ';'];
        const shell = await sb.client.exec(sb.ref, spec("printf '%s|'", { args }));
        expect(shell.stdout).toBe(`it's|a b|"q"|$HOME|*|;|`);
        const argv = await sb.client.exec(
          sb.ref,
          spec('printf', { mode: 'argv', args: ['%s|', ...args] }),
        );
        expect(argv.stdout).toBe(`it's|a b|"q"|$HOME|*|;|`);
        const expanded = await sb.client.exec(sb.ref, spec('echo $((6 * 7))'));
        expect(expanded.stdout).toBe('42\n');
      });

      it('kills a command at its deadline and reports timedOut with exit 124', async ({ sb }) => {
        const started = performance.now();
        const r = await sb.client.exec(sb.ref, spec('echo before; sleep 5', { timeoutMs: 300 }));
        expect(r).toMatchObject({
          timedOut: true,
          exitCode: TIMEOUT_EXIT_CODE,
          stdout: 'before\n',
        });
        expect(performance.now() - started).toBeLessThan(3000);
      });

      it('streams chunks live, long before the command exits', async ({ sb }) => {
        const started = performance.now();
        const seen: { ev: ExecEvent; atMs: number }[] = [];
        for await (const ev of sb.client.execStream(sb.ref, spec('echo a; sleep 1; echo b'))) {
          seen.push({ ev, atMs: performance.now() - started });
        }
        const first = seen[0];
        expect(first?.ev.type).toBe('stdout');
        expect(first!.atMs).toBeLessThan(700);
        const exit = seen[seen.length - 1];
        expect(exit?.ev).toMatchObject({ type: 'exit', exitCode: 0, timedOut: false });
        expect(exit!.atMs).toBeGreaterThanOrEqual(950);
        expect(joinedOutput(seen.map((s) => s.ev))).toEqual([['stdout', 'a\nb\n']]);
      });

      it('streams both streams in order, then one exit event', async ({ sb }) => {
        const events = await collect(
          sb.client.execStream(
            sb.ref,
            spec("printf 'a\\n'; sleep 0.2; printf 'b\\n' >&2; sleep 0.2; printf 'c\\n'; exit 3"),
          ),
        );
        expect(joinedOutput(events)).toEqual([
          ['stdout', 'a\n'],
          ['stderr', 'b\n'],
          ['stdout', 'c\n'],
        ]);
        expect(events.filter((e) => e.type === 'exit')).toHaveLength(1);
        expect(events[events.length - 1]).toMatchObject({ type: 'exit', exitCode: 3 });
      });

      it('streams bytes that are not UTF-8 unchanged', async ({ sb }) => {
        const events = await collect(
          sb.client.execStream(sb.ref, spec("printf '\\377\\376ok\\300'")),
        );
        const bytes = Buffer.concat(
          events.flatMap((e) => (e.type === 'stdout' ? [Buffer.from(e.data)] : [])),
        );
        expect([...bytes]).toEqual([0xff, 0xfe, 0x6f, 0x6b, 0xc0]);
      });

      it('ends a stream at its deadline with a timed-out exit event', async ({ sb }) => {
        const events = await collect(
          sb.client.execStream(sb.ref, spec('echo a; sleep 5', { timeoutMs: 300 })),
        );
        expect(joinedOutput(events)).toEqual([['stdout', 'a\n']]);
        expect(events[events.length - 1]).toMatchObject({
          type: 'exit',
          timedOut: true,
          exitCode: TIMEOUT_EXIT_CODE,
        });
      });

      it('kills the command when the consumer leaves the stream early', async ({ sb }) => {
        const started = performance.now();
        for await (const ev of sb.client.execStream(
          sb.ref,
          spec('(echo started; sleep 1; echo late > stream-late.txt) & wait'),
        )) {
          if (ev.type === 'stdout') break;
        }
        expect(performance.now() - started).toBeLessThan(950);
        await sleep(Math.max(0, 1600 - (performance.now() - started)));
        await expectErr(
          () => sb.client.statFile(sb.ref, '/workspace/stream-late.txt'),
          'NOT_FOUND',
        );
      });

      it("ends a stream with the caller's abort reason when its signal fires", async ({ sb }) => {
        const ac = new AbortController();
        const events = sb.client.execStream(sb.ref, spec('echo go; sleep 5'), {
          signal: ac.signal,
        });
        const started = performance.now();
        const err = await expectErr(
          () =>
            (async () => {
              for await (const ev of events) {
                if (ev.type === 'stdout') ac.abort(new StacyError('TIMEOUT', 'caller gave up'));
              }
            })(),
          'TIMEOUT',
          /caller gave up/,
        );
        expect(err).toBeInstanceOf(StacyError);
        expect(performance.now() - started).toBeLessThan(3000);
      });
    });

    describe('files', () => {
      it('writes, reads and stats a text file', async ({ sb }) => {
        await sb.client.writeFile(
          sb.ref,
          '/workspace/hello.txt',
          Buffer.from('hello wörld'),
          0o644,
        );
        const read = await sb.client.readFile(sb.ref, '/workspace/hello.txt');
        expect(read.size).toBe(12);
        expect((await readAll(read.body)).toString('utf8')).toBe('hello wörld');
        const st = await sb.client.statFile(sb.ref, 'hello.txt');
        expect(st).toMatchObject({
          path: '/workspace/hello.txt',
          name: 'hello.txt',
          size: 12,
          mode: '0644',
          isDir: false,
        });
        expect(Math.abs(st.modTimeMs - Date.now())).toBeLessThan(60_000);
      });

      it('round-trips every byte value', async ({ sb }) => {
        const bytes = Uint8Array.from({ length: 512 }, (_, i) => i % 256);
        await sb.client.writeFile(sb.ref, '/workspace/bin/all.bin', bytes, 0o600);
        const back = await readAll(
          (await sb.client.readFile(sb.ref, '/workspace/bin/all.bin')).body,
        );
        expect(Buffer.compare(back, Buffer.from(bytes))).toBe(0);
        expect((await sb.client.statFile(sb.ref, '/workspace/bin/all.bin')).mode).toBe('0600');
      });

      it('streams a file of several MiB both ways byte for byte', async ({ sb }) => {
        const chunkBytes = 256 * 1024;
        const chunks = 22; // 5.5 MiB
        const source = patternedBody(chunkBytes, chunks);
        await sb.client.writeFile(sb.ref, '/workspace/big.bin', source.body, 0o644);
        const read = await sb.client.readFile(sb.ref, '/workspace/big.bin');
        expect(read.size).toBe(chunkBytes * chunks);
        expect(await digestOf(read.body)).toEqual({
          total: chunkBytes * chunks,
          sha256: source.sha256(),
        });
      });

      it('refuses a body whose source fails, leaving no file', async ({ sb }) => {
        async function* broken(): AsyncGenerator<Uint8Array> {
          yield Buffer.from('partial');
          await sleep(20);
          throw new Error('upstream went away');
        }
        await expectErr(
          () => sb.client.writeFile(sb.ref, '/workspace/broken.bin', broken(), 0o644),
          'BAD_REQUEST',
          /upstream went away/,
        );
        await expectErr(() => sb.client.statFile(sb.ref, '/workspace/broken.bin'), 'NOT_FOUND');
      });

      it('lists, moves, chmods, globs and deletes', async ({ sb }) => {
        const c = sb.client;
        await c.writeFile(sb.ref, '/workspace/d/b.txt', Buffer.from('bb'), 0o644);
        await c.writeFile(sb.ref, '/workspace/d/a/deep.log', Buffer.from('d'), 0o644);
        await c.writeFile(sb.ref, '/workspace/d/c.log', Buffer.from('c'), 0o644);
        const entries = await c.listFiles(sb.ref, '/workspace/d');
        expect(entries.map((e) => [e.name, e.path, e.isDir])).toEqual([
          ['a', '/workspace/d/a', true],
          ['b.txt', '/workspace/d/b.txt', false],
          ['c.log', '/workspace/d/c.log', false],
        ]);
        expect(entries.find((e) => e.name === 'b.txt')).toMatchObject({ size: 2, mode: '0644' });

        expect(await c.globFiles(sb.ref, 'd/**/*.log')).toEqual([
          '/workspace/d/a/deep.log',
          '/workspace/d/c.log',
        ]);
        expect(await c.globFiles(sb.ref, '/workspace/d/*.none')).toEqual([]);

        await c.moveFile(sb.ref, '/workspace/d/b.txt', '/workspace/e/moved.txt');
        expect(await text(c, sb.ref, '/workspace/e/moved.txt')).toBe('bb');
        await expectErr(() => c.statFile(sb.ref, '/workspace/d/b.txt'), 'NOT_FOUND');

        await c.writeFile(sb.ref, '/workspace/run.sh', Buffer.from('#!/bin/sh\necho ran\n'), 0o644);
        await c.chmodFile(sb.ref, '/workspace/run.sh', 0o755);
        expect((await c.statFile(sb.ref, '/workspace/run.sh')).mode).toBe('0755');
        expect((await c.exec(sb.ref, spec('./run.sh'))).stdout).toBe('ran\n');

        await expectErr(
          () => c.deleteFile(sb.ref, '/workspace/d', false),
          'BAD_REQUEST',
          /recursive/,
        );
        await c.deleteFile(sb.ref, '/workspace/d/c.log', false);
        await expectErr(() => c.statFile(sb.ref, '/workspace/d/c.log'), 'NOT_FOUND');
        await c.deleteFile(sb.ref, '/workspace/d', true);
        await expectErr(() => c.statFile(sb.ref, '/workspace/d'), 'NOT_FOUND');
      });

      it('answers NOT_FOUND naming the path, and BAD_REQUEST for escaping paths and bad modes', async ({
        sb,
      }) => {
        const c = sb.client;
        const named = /\/workspace\/no\/such\.txt/;
        await expectErr(() => c.readFile(sb.ref, '/workspace/no/such.txt'), 'NOT_FOUND', named);
        await expectErr(() => c.statFile(sb.ref, '/workspace/no/such.txt'), 'NOT_FOUND', named);
        await expectErr(
          () => c.moveFile(sb.ref, '/workspace/no/such.txt', '/workspace/x'),
          'NOT_FOUND',
          named,
        );
        const escape = /escapes the sandbox root/;
        await expectErr(() => c.readFile(sb.ref, '../../etc/passwd'), 'BAD_REQUEST', escape);
        await expectErr(
          () => c.writeFile(sb.ref, '/workspace/../../x', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          escape,
        );
        await expectErr(
          () => c.writeFile(sb.ref, '/workspace/m.txt', Buffer.from('x'), 0o10000),
          'BAD_REQUEST',
          /mode/,
        );
      });
    });

    describe('drain', () => {
      test('a draining worker refuses spawns with UNAVAILABLE and keeps its sandboxes working', async () => {
        const drainable = await makeSubject();
        try {
          const ref = await spawnSandbox(drainable.client);
          await drainable.drain();
          await expectErr(() => spawnSandbox(drainable.client), 'UNAVAILABLE', /draining/);
          expect((await drainable.client.exec(ref, spec('echo still-here'))).stdout).toBe(
            'still-here\n',
          );
          await drainable.client.destroy(ref);
          await expectErr(() => drainable.client.status(ref), 'NOT_FOUND');
        } finally {
          await drainable.cleanup();
        }
      });
    });
  });
}
