/**
 * One worker-client contract, three transports: the in-process runtime, HTTP
 * worker RPC on loopback, and the same over mutual TLS.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { silentLogger } from '../domain/logger.js';
import { rpcTokenFor } from '../domain/worker-credentials.js';
import { MockProvider } from '../providers/mock/mock-provider.js';
import { startWorkerRpcServer } from '../worker/rpc-server.js';
import { WorkerRuntime } from '../worker/worker-runtime.js';
import { HttpWorkerClient } from './http-worker-client.js';
import {
  describeWorkerClientContract,
  expectStacyError,
  generateTestPki,
} from './worker-client.contract.js';
import type { TestPki, WorkerClientContractSubject } from './worker-client.contract.js';

const SIGNING_KEY = 'contract-signing-key-0123456789ab';

async function runtime(workerId: string): Promise<{ rt: WorkerRuntime; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'stacyvm-wc-contract-'));
  const rt = new WorkerRuntime({
    workerId,
    providers: [new MockProvider({ baseDir: dir })],
    defaultProvider: 'mock',
    logger: silentLogger,
  });
  await rt.start();
  return { rt, dir };
}

describeWorkerClientContract('in-process runtime', async () => {
  const { rt, dir } = await runtime('local');
  return {
    client: rt,
    drain: async () => rt.drain(),
    cleanup: async () => {
      await rt.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

async function remoteSubject(
  workerId: string,
  tls?: { pki: TestPki },
): Promise<WorkerClientContractSubject & { client: HttpWorkerClient; url: string }> {
  const { rt, dir } = await runtime(workerId);
  const server = await startWorkerRpcServer({
    runtime: rt,
    workerId,
    auth: {
      staticTokens: ['worker-a-static-token'],
      signingKeys: [SIGNING_KEY],
      revokedTokenIds: [],
      nowMs: () => Date.now(),
    },
    host: '127.0.0.1',
    port: 0,
    logger: silentLogger,
    ...(tls === undefined
      ? {}
      : {
          tls: { cert: tls.pki.serverCert, key: tls.pki.serverKey, clientCa: tls.pki.ca },
        }),
  });
  const client = new HttpWorkerClient({
    workerId,
    rpcUrl: server.url,
    // Over TLS the client mints signed tokens per call; in plain HTTP it sends the static token.
    token:
      tls === undefined
        ? () => 'worker-a-static-token'
        : () =>
            rpcTokenFor(workerId, {
              perWorkerTokens: new Map(),
              sharedToken: '',
              signingKey: SIGNING_KEY,
              nowMs: Date.now(),
            }) ?? '',
    ...(tls === undefined
      ? {}
      : { tls: { ca: tls.pki.ca, cert: tls.pki.clientCert, key: tls.pki.clientKey } }),
  });
  return {
    client,
    url: server.url,
    drain: () => client.shutdown(),
    cleanup: async () => {
      await client.close();
      await server.close(1000);
      await rt.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

describeWorkerClientContract('HTTP worker RPC', () => remoteSubject('worker-a'));

let pkiDir: string | undefined;
let pki: Promise<TestPki> | undefined;
function testPki(): Promise<TestPki> {
  pki ??= (async () => {
    pkiDir = await mkdtemp(join(tmpdir(), 'stacyvm-wc-pki-'));
    return generateTestPki(pkiDir);
  })();
  return pki;
}
afterAll(async () => {
  if (pkiDir !== undefined) await rm(pkiDir, { recursive: true, force: true });
});

describeWorkerClientContract('HTTP worker RPC over mTLS', async () =>
  remoteSubject('worker-tls', { pki: await testPki() }),
);

describe('HttpWorkerClient transport failures', () => {
  let subject: Awaited<ReturnType<typeof remoteSubject>>;
  beforeAll(async () => {
    subject = await remoteSubject('worker-a');
  });
  afterAll(async () => {
    await subject.cleanup();
  });

  test('a refused connection is UNAVAILABLE, retryable and names the worker, not the token', async () => {
    // A port that was just free: listen on 0, note it, close it.
    const ghost = await runtime('ghost');
    const probe = await startWorkerRpcServer({
      runtime: ghost.rt,
      workerId: 'ghost',
      auth: { staticTokens: ['t'], signingKeys: [], revokedTokenIds: [], nowMs: () => Date.now() },
      host: '127.0.0.1',
      port: 0,
      logger: silentLogger,
    });
    const url = probe.url;
    await probe.close(0);
    await ghost.rt.stop();
    await rm(ghost.dir, { recursive: true, force: true });
    const client = new HttpWorkerClient({
      workerId: 'worker-gone',
      rpcUrl: url,
      token: () => 'secret-token-value',
    });
    try {
      const err = await expectStacyError(client.providers(), 'UNAVAILABLE', /worker-gone/);
      expect(err.retryable).toBe(true);
      expect(err.message).not.toContain('secret-token-value');
      await expectStacyError(client.health(), 'UNAVAILABLE', /worker-gone/);
    } finally {
      await client.close();
    }
  });

  test('a worker that refuses the credentials is UNAVAILABLE (a CP–worker problem, not the caller’s 401)', async () => {
    const client = new HttpWorkerClient({
      workerId: 'worker-a',
      rpcUrl: subject.url,
      token: () => 'wrong-token',
    });
    try {
      const err = await expectStacyError(
        client.providers(),
        'UNAVAILABLE',
        /refused the control plane's RPC credentials/,
      );
      expect(err.retryable).toBe(false);
      expect(err.message).not.toContain('wrong-token');
    } finally {
      await client.close();
    }
  });

  test('a client whose worker id is not the worker it reaches fails authentication', async () => {
    const client = new HttpWorkerClient({
      workerId: 'worker-b',
      rpcUrl: subject.url,
      token: () => 'worker-a-static-token',
    });
    try {
      // worker-b's id in the headers fails authentication on worker-a.
      await expectStacyError(client.providers(), 'UNAVAILABLE', /credentials/);
    } finally {
      await client.close();
    }
  });

  test('a call timeout shorter than an exec never cuts it: execs and streams run to their own deadline', async () => {
    const client = new HttpWorkerClient({
      workerId: 'worker-a',
      rpcUrl: subject.url,
      token: () => 'worker-a-static-token',
      callTimeoutMs: 300,
      execMarginMs: 2000,
    });
    try {
      const ref = { sandboxId: 'sb-00c0ffee', provider: 'mock', runtimeId: 'sb-00c0ffee' };
      await subject.client.spawn({
        sandboxId: ref.sandboxId,
        provider: 'mock',
        image: 'x',
        memoryMb: 64,
        vcpus: 1,
        ownerId: '',
        metadata: {},
        ports: [],
        lease: { resourceId: ref.sandboxId, holderId: 'worker-a', generation: 1 },
      });
      const spec = {
        command: 'sleep 1; echo done',
        args: [],
        mode: 'shell' as const,
        env: {},
        workdir: '',
        timeoutMs: 10_000,
      };
      const out = await client.exec(ref, spec);
      expect(out).toMatchObject({ exitCode: 0, stdout: 'done\n', timedOut: false });
      const events: string[] = [];
      for await (const ev of client.execStream(ref, spec)) {
        events.push(ev.type === 'exit' ? `exit ${ev.exitCode}` : Buffer.from(ev.data).toString());
      }
      expect(events).toEqual(['done\n', 'exit 0']);
      await subject.client.destroy({
        ...ref,
        lease: { resourceId: ref.sandboxId, holderId: 'worker-a', generation: 1 },
      });
    } finally {
      await client.close();
    }
  });

  test('health reports the worker id and state', async () => {
    expect(await subject.client.health()).toEqual({
      status: 'ok',
      worker_id: 'worker-a',
      state: 'active',
    });
  });
});

describe('HttpWorkerClient over mTLS', () => {
  test('a client without a certificate, or with one from another CA, cannot call the worker', async () => {
    const p = await testPki();
    const subject = await remoteSubject('worker-tls2', { pki: p });
    const url = subject.url;
    const token = (): string => 'worker-a-static-token';
    const noCert = new HttpWorkerClient({
      workerId: 'worker-tls2',
      rpcUrl: url,
      token,
      tls: { ca: p.ca },
    });
    const stranger = new HttpWorkerClient({
      workerId: 'worker-tls2',
      rpcUrl: url,
      token,
      tls: { ca: p.ca, cert: p.strangerCert, key: p.strangerKey },
    });
    const untrusting = new HttpWorkerClient({
      workerId: 'worker-tls2',
      rpcUrl: url,
      token,
      tls: { cert: p.clientCert, key: p.clientKey },
    });
    try {
      await expectStacyError(noCert.providers(), 'UNAVAILABLE', /worker-tls2/);
      await expectStacyError(stranger.providers(), 'UNAVAILABLE', /worker-tls2/);
      // Without the CA the client does not trust the worker's certificate either.
      await expectStacyError(untrusting.providers(), 'UNAVAILABLE', /worker-tls2/);
      expect((await subject.client.providers()).map((x) => x.name)).toEqual(['mock']);
    } finally {
      await Promise.all([noCert.close(), stranger.close(), untrusting.close()]);
      await subject.cleanup();
    }
  });
});
