/**
 * The behaviour every {@link Provider} must show. A provider's test file
 * calls {@link describeProviderContract}; the suite spawns and destroys its
 * own sandbox per test. Commands stay within what busybox offers (sh, echo,
 * printf, cat, sleep, ls, pwd, env, head, wc) and use paths relative to the
 * default workdir, since a host-executing provider maps `/workspace` only for
 * the file API, not for the commands it runs.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { StacyError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import { TIMEOUT_EXIT_CODE } from '../domain/exec.js';
import type { ExecEvent, ExecSpec } from '../domain/exec.js';
import { newSandboxId } from '../domain/sandbox.js';
import type { Provider } from './provider.js';

/** What a provider's test file hands the contract suite. */
export interface ProviderContractSubject {
  /** A constructed provider; the suite calls `init()` itself. */
  provider: Provider;
  /** Image to spawn (busybox-compatible for container providers; ignored by the mock). */
  image: string;
  /** Runs once after the suite, e.g. to remove a temp directory. */
  cleanup?: () => Promise<void>;
}

interface SandboxFixture {
  provider: Provider;
  id: string;
}

/** An exec spec with defaults; a generous deadline so a broken provider cannot hang the run. */
export function spec(command: string, overrides: Partial<ExecSpec> = {}): ExecSpec {
  return {
    command,
    args: [],
    mode: 'shell',
    env: {},
    workdir: '',
    timeoutMs: 15_000,
    ...overrides,
  };
}

export async function expectStacyError(
  promise: Promise<unknown>,
  code: ErrorCode,
  message?: RegExp,
): Promise<StacyError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected a ${code} StacyError`).toBeInstanceOf(StacyError);
  const err = caught as StacyError;
  expect(err.code, err.message).toBe(code);
  if (message !== undefined) expect(err.message).toMatch(message);
  return err;
}

/**
 * A streamed body of `chunks` chunks of `chunkBytes` patterned bytes (each
 * numbered), and the sha256 it hashes to once it has been consumed.
 */
export function patternedBody(
  chunkBytes: number,
  chunks: number,
): { body: AsyncGenerator<Uint8Array>; sha256: () => string } {
  const expected = createHash('sha256');
  async function* body(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < chunks; i++) {
      const chunk = Buffer.alloc(chunkBytes, i % 251);
      chunk.writeUInt32BE(i, 0);
      expected.update(chunk);
      await Promise.resolve();
      yield chunk;
    }
  }
  return { body: body(), sha256: () => expected.digest('hex') };
}

/** Reads a body to its end without keeping it: byte count and sha256. */
export async function digestOf(
  body: AsyncIterable<Uint8Array>,
): Promise<{ total: number; sha256: string }> {
  const actual = createHash('sha256');
  let total = 0;
  for await (const c of body) {
    actual.update(c);
    total += c.byteLength;
  }
  return { total, sha256: actual.digest('hex') };
}

export async function readAll(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of body) parts.push(Buffer.from(chunk));
  return Buffer.concat(parts);
}

async function readText(p: Provider, id: string, path: string): Promise<string> {
  const { body } = await p.readFile(id, path);
  return (await readAll(body)).toString('utf8');
}

async function collect(events: AsyncIterable<ExecEvent>): Promise<ExecEvent[]> {
  const out: ExecEvent[] = [];
  for await (const ev of events) out.push(ev);
  return out;
}

/** Output events with adjacent chunks of the same stream joined, as `[stream, text]` pairs. */
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

/**
 * Registers `provider contract: <name>`. `makeProvider` runs once before the
 * suite; each test spawns its own sandbox and destroys it in `finally`.
 */
export function describeProviderContract(
  name: string,
  makeProvider: () => Promise<ProviderContractSubject>,
): void {
  describe(`provider contract: ${name}`, () => {
    let subject: ProviderContractSubject | undefined;

    beforeAll(async () => {
      subject = await makeProvider();
      await subject.provider.init();
    }, 120_000);

    afterAll(async () => {
      await subject?.cleanup?.();
    });

    const current = (): ProviderContractSubject => {
      if (subject === undefined) throw new Error('provider contract: makeProvider did not run');
      return subject;
    };

    const it = test.extend<{ sb: SandboxFixture }>({
      sb: async ({ task }, use) => {
        const { provider, image } = current();
        const id = newSandboxId();
        await provider.spawn({
          sandboxId: id,
          image,
          memoryMb: 256,
          vcpus: 1,
          metadata: { 'stacyvm.test': task.id },
          ports: [],
        });
        try {
          await use({ provider, id });
        } finally {
          await provider.destroy(id);
        }
      },
    });

    describe('lifecycle', () => {
      it('reports a spawned sandbox as running', async ({ sb }) => {
        const status = await sb.provider.status(sb.id);
        expect(status.state).toBe('running');
      });

      it('treats destroy as idempotent and then reports the sandbox as NOT_FOUND', async ({
        sb,
      }) => {
        await sb.provider.destroy(sb.id);
        await sb.provider.destroy(sb.id);
        await expectStacyError(sb.provider.status(sb.id), 'NOT_FOUND');
        await expectStacyError(sb.provider.exec(sb.id, spec('echo hi')), 'NOT_FOUND');
        await expectStacyError(sb.provider.statFile(sb.id, '/workspace'), 'NOT_FOUND');
      });

      it('answers NOT_FOUND for a runtime it never spawned', async () => {
        const { provider } = current();
        const ghost = newSandboxId();
        await expectStacyError(provider.status(ghost), 'NOT_FOUND');
        await expectStacyError(provider.exec(ghost, spec('echo hi')), 'NOT_FOUND');
        await expectStacyError(provider.readFile(ghost, '/workspace/x'), 'NOT_FOUND');
      });

      it('returns console log lines as strings, at most as many as asked', async ({ sb }) => {
        await sb.provider.exec(sb.id, spec('echo for-the-log'));
        const lines = await sb.provider.logs(sb.id, 50);
        expect(Array.isArray(lines)).toBe(true);
        expect(lines.length).toBeLessThanOrEqual(50);
        for (const line of lines) expect(typeof line).toBe('string');
        expect((await sb.provider.logs(sb.id, 1)).length).toBeLessThanOrEqual(1);
      });

      it('reports itself healthy', async () => {
        const health = await current().provider.health();
        expect(health.error).toBeUndefined();
        expect(health.healthy).toBe(true);
        expect(health.latencyMs).toBeGreaterThanOrEqual(0);
      });
    });

    describe('exec', () => {
      it('returns what the command printed on stdout', async ({ sb }) => {
        const r = await sb.provider.exec(sb.id, spec('echo hello'));
        expect(r).toMatchObject({ exitCode: 0, stdout: 'hello\n', stderr: '', timedOut: false });
        expect(r.durationMs).toBeGreaterThanOrEqual(0);
      });

      it('reports a non-zero exit code as a result, not an error', async ({ sb }) => {
        const r = await sb.provider.exec(sb.id, spec('exit 42'));
        expect(r.exitCode).toBe(42);
        expect(r.timedOut).toBe(false);
      });

      it('keeps stderr apart from stdout', async ({ sb }) => {
        const r = await sb.provider.exec(sb.id, spec('echo out; echo err >&2'));
        expect(r.stdout).toBe('out\n');
        expect(r.stderr).toBe('err\n');
      });

      it('runs shell mode through sh with each arg quoted', async ({ sb }) => {
        const expanded = await sb.provider.exec(sb.id, spec('echo $((6 * 7))'));
        expect(expanded.stdout).toBe('42\n');
        const quoted = await sb.provider.exec(
          sb.id,
          spec("printf '%s|'", { args: ["it's", 'a b', '"q"', '$HOME', '*'] }),
        );
        expect(quoted.stdout).toBe(`it's|a b|"q"|$HOME|*|`);
      });

      it('runs argv mode without a shell, passing args verbatim', async ({ sb }) => {
        const r = await sb.provider.exec(
          sb.id,
          spec('printf', { mode: 'argv', args: ['%s|', "it's", 'a b', '"q"', '$HOME', '*', ';'] }),
        );
        expect(r.exitCode).toBe(0);
        expect(r.stdout).toBe(`it's|a b|"q"|$HOME|*|;|`);
      });

      it('passes the request env to the command', async ({ sb }) => {
        const r = await sb.provider.exec(
          sb.id,
          spec(`printf '%s/%s' "$GREETING" "$QUOTED"`, {
            env: { GREETING: 'hi there', QUOTED: `a'b"c$d` },
          }),
        );
        expect(r.stdout).toBe(`hi there/a'b"c$d`);
      });

      it('runs in the requested workdir', async ({ sb }) => {
        await sb.provider.writeFile(
          sb.id,
          '/workspace/sub/dir/marker.txt',
          Buffer.from('m1'),
          0o644,
        );
        const r = await sb.provider.exec(
          sb.id,
          spec('cat marker.txt; ls', { workdir: '/workspace/sub/dir' }),
        );
        expect(r.stdout).toBe('m1marker.txt\n');
      });

      it('uses /workspace as the default workdir', async ({ sb }) => {
        await sb.provider.writeFile(sb.id, '/workspace/default-marker', Buffer.from('dflt'), 0o644);
        const r = await sb.provider.exec(sb.id, spec('cat default-marker'));
        expect(r.stdout).toBe('dflt');
      });

      it('kills the command at its deadline and reports timedOut', async ({ sb }) => {
        const started = performance.now();
        const r = await sb.provider.exec(
          sb.id,
          spec('(sleep 1; echo late > late.txt) & wait', { timeoutMs: 300 }),
        );
        expect(r.timedOut).toBe(true);
        expect(r.exitCode).toBe(TIMEOUT_EXIT_CODE);
        expect(performance.now() - started).toBeLessThan(950);
        // Had the command or its background child survived, the file would be there by now.
        await sleep(Math.max(0, 1600 - (performance.now() - started)));
        await expectStacyError(sb.provider.statFile(sb.id, '/workspace/late.txt'), 'NOT_FOUND');
      });

      it('streams output in the order it was written, then one exit event', async ({ sb }) => {
        const events = await collect(
          sb.provider.execStream(
            sb.id,
            spec("printf 'a\\n'; sleep 0.2; printf 'b\\n' >&2; sleep 0.2; printf 'c\\n'; exit 3"),
          ),
        );
        expect(joinedOutput(events)).toEqual([
          ['stdout', 'a\n'],
          ['stderr', 'b\n'],
          ['stdout', 'c\n'],
        ]);
        const exits = events.filter((e) => e.type === 'exit');
        expect(exits).toHaveLength(1);
        expect(events[events.length - 1]).toMatchObject({
          type: 'exit',
          exitCode: 3,
          timedOut: false,
        });
      });

      it('ends a stream at its deadline with a timed-out exit event', async ({ sb }) => {
        const events = await collect(
          sb.provider.execStream(sb.id, spec('echo a; sleep 5', { timeoutMs: 300 })),
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
        let seen = '';
        for await (const ev of sb.provider.execStream(
          sb.id,
          spec('(echo started; sleep 1; echo late > stream-late.txt) & wait'),
        )) {
          if (ev.type === 'stdout') {
            seen += Buffer.from(ev.data).toString('utf8');
            break;
          }
        }
        expect(seen).toBe('started\n');
        expect(performance.now() - started).toBeLessThan(950);
        await sleep(Math.max(0, 1600 - (performance.now() - started)));
        await expectStacyError(
          sb.provider.statFile(sb.id, '/workspace/stream-late.txt'),
          'NOT_FOUND',
        );
      });

      it('runs execs on one sandbox concurrently', async ({ sb }) => {
        // Each waits for the other's flag: run one after the other, the first would time out.
        const waitFor = (mine: string, theirs: string): ExecSpec =>
          spec(
            `echo > ${mine}; while [ ! -f ${theirs} ]; do sleep 0.05; done; echo got-${theirs}`,
            {
              timeoutMs: 5_000,
            },
          );
        const [a, b, ...rest] = await Promise.all([
          sb.provider.exec(sb.id, waitFor('a.flag', 'b.flag')),
          sb.provider.exec(sb.id, waitFor('b.flag', 'a.flag')),
          ...Array.from({ length: 6 }, (_, i) => sb.provider.exec(sb.id, spec(`echo n${i}`))),
        ]);
        expect(a).toMatchObject({ exitCode: 0, timedOut: false, stdout: 'got-b.flag\n' });
        expect(b).toMatchObject({ exitCode: 0, timedOut: false, stdout: 'got-a.flag\n' });
        expect(rest.map((r) => r.stdout)).toEqual(Array.from({ length: 6 }, (_, i) => `n${i}\n`));
      });
    });

    describe('files', () => {
      it('writes and reads a text file and reports its size and mode', async ({ sb }) => {
        await sb.provider.writeFile(
          sb.id,
          '/workspace/hello.txt',
          Buffer.from('hello world'),
          0o644,
        );
        const read = await sb.provider.readFile(sb.id, '/workspace/hello.txt');
        expect(read.size).toBe(11);
        expect((await readAll(read.body)).toString('utf8')).toBe('hello world');
        expect(await sb.provider.statFile(sb.id, '/workspace/hello.txt')).toMatchObject({
          path: '/workspace/hello.txt',
          name: 'hello.txt',
          size: 11,
          mode: '0644',
          isDir: false,
        });
      });

      it('round-trips every byte value of a binary file, as commands see it too', async ({
        sb,
      }) => {
        const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
        await sb.provider.writeFile(sb.id, '/workspace/bin/all.bin', bytes, 0o600);
        const back = await readAll(
          (await sb.provider.readFile(sb.id, '/workspace/bin/all.bin')).body,
        );
        expect(Buffer.compare(back, Buffer.from(bytes))).toBe(0);
        const wc = await sb.provider.exec(sb.id, spec('wc -c < bin/all.bin'));
        expect(wc.stdout.trim()).toBe('256');
      });

      it('writes a streamed body of several MiB byte for byte', async ({ sb }) => {
        const chunkBytes = 64 * 1024;
        const chunks = 64;
        const source = patternedBody(chunkBytes, chunks);
        await sb.provider.writeFile(sb.id, '/workspace/big.bin', source.body, 0o644);
        const read = await sb.provider.readFile(sb.id, '/workspace/big.bin');
        expect(read.size).toBe(chunkBytes * chunks);
        expect(await digestOf(read.body)).toEqual({
          total: chunkBytes * chunks,
          sha256: source.sha256(),
        });
      });

      it('takes relative paths from /workspace', async ({ sb }) => {
        await sb.provider.writeFile(sb.id, 'rel/x.txt', Buffer.from('r'), 0o644);
        expect(await readText(sb.provider, sb.id, '/workspace/rel/x.txt')).toBe('r');
      });

      it('lists the direct children of a directory, sorted by name', async ({ sb }) => {
        await sb.provider.writeFile(sb.id, '/workspace/list/b.txt', Buffer.from('bb'), 0o644);
        await sb.provider.writeFile(sb.id, '/workspace/list/a/deep.txt', Buffer.from('d'), 0o644);
        await sb.provider.writeFile(sb.id, '/workspace/list/.hidden', Buffer.from(''), 0o600);
        const entries = await sb.provider.listFiles(sb.id, '/workspace/list');
        expect(entries.map((e) => [e.name, e.path, e.isDir])).toEqual([
          ['.hidden', '/workspace/list/.hidden', false],
          ['a', '/workspace/list/a', true],
          ['b.txt', '/workspace/list/b.txt', false],
        ]);
        expect(entries.find((e) => e.name === 'b.txt')).toMatchObject({ size: 2, mode: '0644' });
        expect(entries.find((e) => e.name === '.hidden')?.mode).toBe('0600');
      });

      it('finds files by glob, with relative patterns taken from /workspace', async ({ sb }) => {
        for (const p of ['g/a.log', 'g/b.log', 'g/c.txt', 'g/sub/d.log', 'g/sub/deeper/e.log']) {
          await sb.provider.writeFile(sb.id, `/workspace/${p}`, Buffer.from(p), 0o644);
        }
        expect(await sb.provider.globFiles(sb.id, '/workspace/g/*.log')).toEqual([
          '/workspace/g/a.log',
          '/workspace/g/b.log',
        ]);
        expect(await sb.provider.globFiles(sb.id, 'g/**/*.log')).toEqual([
          '/workspace/g/a.log',
          '/workspace/g/b.log',
          '/workspace/g/sub/d.log',
          '/workspace/g/sub/deeper/e.log',
        ]);
        expect(await sb.provider.globFiles(sb.id, 'g/[bc].*')).toEqual([
          '/workspace/g/b.log',
          '/workspace/g/c.txt',
        ]);
        expect(await sb.provider.globFiles(sb.id, 'g/?.txt')).toEqual(['/workspace/g/c.txt']);
        expect(await sb.provider.globFiles(sb.id, 'g/*.none')).toEqual([]);
      });

      it('moves a file, creating the target directories', async ({ sb }) => {
        await sb.provider.writeFile(sb.id, '/workspace/mv/src.txt', Buffer.from('moved'), 0o644);
        await sb.provider.moveFile(sb.id, '/workspace/mv/src.txt', '/workspace/mv/new/dir/dst.txt');
        expect(await readText(sb.provider, sb.id, '/workspace/mv/new/dir/dst.txt')).toBe('moved');
        await expectStacyError(sb.provider.statFile(sb.id, '/workspace/mv/src.txt'), 'NOT_FOUND');
      });

      it('applies modes exactly, whatever the umask, and chmod shows in stat', async ({ sb }) => {
        await sb.provider.writeFile(sb.id, '/workspace/open.txt', Buffer.from('o'), 0o666);
        expect((await sb.provider.statFile(sb.id, '/workspace/open.txt')).mode).toBe('0666');
        await sb.provider.writeFile(
          sb.id,
          '/workspace/run.sh',
          Buffer.from('#!/bin/sh\necho ran\n'),
          0o644,
        );
        await sb.provider.chmodFile(sb.id, '/workspace/run.sh', 0o755);
        expect((await sb.provider.statFile(sb.id, '/workspace/run.sh')).mode).toBe('0755');
        const r = await sb.provider.exec(sb.id, spec('./run.sh'));
        expect(r.stdout).toBe('ran\n');
      });

      it('deletes files, and directories only when asked to recurse', async ({ sb }) => {
        await sb.provider.writeFile(sb.id, '/workspace/del/one.txt', Buffer.from('1'), 0o644);
        await sb.provider.writeFile(sb.id, '/workspace/del/sub/two.txt', Buffer.from('2'), 0o644);
        await sb.provider.deleteFile(sb.id, '/workspace/del/one.txt', false);
        await expectStacyError(sb.provider.statFile(sb.id, '/workspace/del/one.txt'), 'NOT_FOUND');
        await expectStacyError(
          sb.provider.deleteFile(sb.id, '/workspace/del', false),
          'BAD_REQUEST',
          /recursive/,
        );
        expect((await sb.provider.statFile(sb.id, '/workspace/del/sub/two.txt')).size).toBe(1);
        await sb.provider.deleteFile(sb.id, '/workspace/del', true);
        await expectStacyError(sb.provider.statFile(sb.id, '/workspace/del'), 'NOT_FOUND');
      });

      it('answers NOT_FOUND naming the path for a missing file', async ({ sb }) => {
        const missing = '/workspace/no/such.txt';
        const named = /\/workspace\/no\/such\.txt/;
        await expectStacyError(sb.provider.readFile(sb.id, missing), 'NOT_FOUND', named);
        await expectStacyError(sb.provider.statFile(sb.id, missing), 'NOT_FOUND', named);
        await expectStacyError(sb.provider.listFiles(sb.id, missing), 'NOT_FOUND', named);
        await expectStacyError(sb.provider.deleteFile(sb.id, missing, false), 'NOT_FOUND', named);
        await expectStacyError(
          sb.provider.moveFile(sb.id, missing, '/workspace/elsewhere'),
          'NOT_FOUND',
          named,
        );
      });

      it('refuses paths that climb out of the sandbox with BAD_REQUEST', async ({ sb }) => {
        const escape = /escapes the sandbox root/;
        await expectStacyError(
          sb.provider.readFile(sb.id, '../../etc/passwd'),
          'BAD_REQUEST',
          escape,
        );
        await expectStacyError(
          sb.provider.writeFile(sb.id, '/workspace/../../x', Buffer.from('x'), 0o644),
          'BAD_REQUEST',
          escape,
        );
        await expectStacyError(sb.provider.statFile(sb.id, '../../..'), 'BAD_REQUEST', escape);
        await sb.provider.writeFile(sb.id, '/workspace/a', Buffer.from('a'), 0o644);
        await expectStacyError(
          sb.provider.moveFile(sb.id, '/workspace/a', '../../../a'),
          'BAD_REQUEST',
          escape,
        );
        await expectStacyError(sb.provider.readFile(sb.id, ''), 'BAD_REQUEST', /required/);
      });
    });
  });
}
