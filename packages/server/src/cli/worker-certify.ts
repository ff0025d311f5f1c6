/**
 * `stacyvm worker token certify [worker-id]`: worker identity certification
 * (reference §2.7), in-process. With the operator's signing key (or a key
 * generated for the run in a temporary directory that is removed afterwards)
 * it issues a token, reads it unverified, verifies it, and checks that a
 * revoked token, a wrong key, an expired token, the wrong audience and the
 * wrong worker are all refused, then builds the key rotation plan. The report
 * (text, JSON or Markdown) names every check; it never contains the token or
 * a key. Exit status: 0 every check passed, 1 a check failed or the report
 * could not be written, 2 usage mistake.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { DurationSyntaxError, formatDurationMs, parseDurationMs } from '../domain/duration.js';
import {
  DEFAULT_WORKER_TOKEN_TTL_MS,
  formatUnixSeconds,
  inspectWorkerToken,
  issueWorkerToken,
  MAX_WORKER_TOKEN_TTL_MS,
  verifyWorkerToken,
  WORKER_AUDIENCE_CONTROL_PLANE,
  WORKER_AUDIENCE_RPC,
  WorkerTokenError,
} from '../domain/worker-token.js';
import type { WorkerTokenAudience, WorkerTokenRejection } from '../domain/worker-token.js';
import type { OutputStream } from './client-commands.js';
import { buildRotationPlan, rotationPlanMarkdown } from './worker-token-commands.js';
import type { RotationPlan } from './worker-token-commands.js';

/** Token id (`jti`) of the token the certification issues. */
export const CERTIFICATION_TOKEN_ID = 'certification-token-id';
/** Token id of the already-expired token used by the expiry check. */
export const CERTIFICATION_EXPIRED_TOKEN_ID = 'certification-expired-token-id';
/** Worker certified when none is named. */
export const DEFAULT_CERTIFICATION_WORKER_ID = 'worker-a';
/** Key references of the rotation plan (where the keys live, never the keys). */
export const ROTATION_NEW_KEY_REF = 'auth.worker_signing_key';
export const ROTATION_PREVIOUS_KEY_REF = 'auth.worker_signing_keys[0]';

const USAGE_EXIT_CODE = 2;
const FORMATS = ['text', 'json', 'markdown'] as const;
export type CertificationFormat = (typeof FORMATS)[number];

export type CheckStatus = 'pass' | 'fail';

export interface CertificationCheck {
  name: string;
  status: CheckStatus;
  detail: string;
}

/** The certification output; `--format json` prints exactly this. */
export interface CertificationReport {
  status: CheckStatus;
  generated_at: string;
  worker_id: string;
  audience: WorkerTokenAudience;
  ttl: string;
  token_id: string;
  /** `file` (--signing-key-file) or `generated` (a key made for this run and deleted). */
  signing_key_source: 'file' | 'generated';
  checks: CertificationCheck[];
}

export interface CertificationResult {
  report: CertificationReport;
  /** Rendered by the Markdown format; names key references only. */
  rotationPlan: RotationPlan | undefined;
}

/** Inputs of {@link certifyWorkerIdentity}. */
export interface CertifyInput {
  workerId: string;
  ttlMs: number;
  signingKey: string;
  signingKeySource: 'file' | 'generated';
  /** A key that is not the signing key, for the wrong-key check. */
  wrongKey: string;
  nowMs: number;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Runs the certification checks. Pure apart from the crypto it calls; never
 * throws for a failed check (it is reported), and no detail carries the token
 * or a key: the domain's messages never echo either.
 */
export function certifyWorkerIdentity(input: CertifyInput): CertificationResult {
  const { workerId, ttlMs, signingKey, wrongKey, nowMs } = input;
  const audience = WORKER_AUDIENCE_CONTROL_PLANE;
  const ttl = formatDurationMs(ttlMs);
  const checks: CertificationCheck[] = [];
  const pass = (name: string, detail: string): void => {
    checks.push({ name, status: 'pass', detail });
  };
  const fail = (name: string, detail: string): void => {
    checks.push({ name, status: 'fail', detail });
  };

  let token: string | undefined;
  try {
    const issued = issueWorkerToken(
      { workerId, ttlMs, audience, tokenId: CERTIFICATION_TOKEN_ID },
      signingKey,
      nowMs,
    );
    token = issued.token;
    pass(
      'issue',
      `signed token ${CERTIFICATION_TOKEN_ID} for ${issued.claims.worker_id}, audience ${audience}, expires ${formatUnixSeconds(issued.claims.exp)}`,
    );
  } catch (err) {
    fail('issue', `could not issue a token: ${errorMessage(err)}`);
  }

  /** A check that needs the issued token. */
  const withToken = (name: string, check: (t: string) => void): void => {
    if (token === undefined) {
      fail(name, 'not run: no token was issued');
      return;
    }
    try {
      check(token);
    } catch (err) {
      fail(name, errorMessage(err));
    }
  };

  /** A verification that must be refused for `reason`. */
  const mustRefuse = (
    name: string,
    what: string,
    reason: WorkerTokenRejection,
    attempt: () => unknown,
  ): void => {
    try {
      attempt();
      fail(name, `${what}: accepted, but must be refused (${reason})`);
    } catch (err) {
      if (err instanceof WorkerTokenError && err.reason === reason) {
        pass(name, `${what}: refused (${err.message})`);
      } else if (err instanceof WorkerTokenError) {
        fail(name, `${what}: refused for the wrong reason (${err.reason}, expected ${reason})`);
      } else {
        fail(name, `${what}: ${errorMessage(err)}`);
      }
    }
  };

  withToken('inspect', (t) => {
    const claims = inspectWorkerToken(t);
    const problems: string[] = [];
    if (claims.worker_id !== workerId) problems.push('worker_id');
    if (claims.jti !== CERTIFICATION_TOKEN_ID) problems.push('token id');
    if (claims.aud !== audience) problems.push('audience');
    if (claims.iat === undefined || (claims.exp - claims.iat) * 1000 !== ttlMs) {
      problems.push('lifetime');
    }
    if (problems.length > 0) fail('inspect', `unverified claims differ in ${problems.join(', ')}`);
    else {
      pass(
        'inspect',
        `claims read without the key (signature_verified false): worker_id, token id, audience and a ${ttl} lifetime as issued`,
      );
    }
  });

  withToken('verify', (t) => {
    const verified = verifyWorkerToken(t, { keys: [signingKey], audience, workerId, nowMs });
    pass(
      'verify',
      `signature, audience ${audience} and worker id ${verified.claims.worker_id} verified (signature_verified true, ${verified.scopes.length} worker scopes)`,
    );
  });

  withToken('revoked_token_refused', (t) =>
    mustRefuse(
      'revoked_token_refused',
      `verify with revoked token id ${CERTIFICATION_TOKEN_ID}`,
      'revoked',
      () =>
        verifyWorkerToken(t, {
          keys: [signingKey],
          audience,
          workerId,
          revokedIds: [CERTIFICATION_TOKEN_ID],
          nowMs,
        }),
    ),
  );

  withToken('wrong_key_refused', (t) =>
    mustRefuse('wrong_key_refused', 'verify with a different key', 'bad_signature', () =>
      verifyWorkerToken(t, { keys: [wrongKey], audience, workerId, nowMs }),
    ),
  );

  try {
    // Issued one TTL and a second ago, so it expired a second ago.
    const expired = issueWorkerToken(
      { workerId, ttlMs, audience, tokenId: CERTIFICATION_EXPIRED_TOKEN_ID },
      signingKey,
      nowMs - ttlMs - 1000,
    );
    mustRefuse('expired_token_refused', 'verify a token that expired 1s ago', 'expired', () =>
      verifyWorkerToken(expired.token, { keys: [signingKey], audience, workerId, nowMs }),
    );
  } catch (err) {
    fail('expired_token_refused', `could not issue the expired token: ${errorMessage(err)}`);
  }

  withToken('wrong_audience_refused', (t) =>
    mustRefuse(
      'wrong_audience_refused',
      `verify for audience ${WORKER_AUDIENCE_RPC}`,
      'wrong_audience',
      () =>
        verifyWorkerToken(t, {
          keys: [signingKey],
          audience: WORKER_AUDIENCE_RPC,
          workerId,
          nowMs,
        }),
    ),
  );

  const otherWorker = `${workerId}-other`;
  withToken('wrong_worker_refused', (t) =>
    mustRefuse('wrong_worker_refused', `verify as worker ${otherWorker}`, 'worker_mismatch', () =>
      verifyWorkerToken(t, { keys: [signingKey], audience, workerId: otherWorker, nowMs }),
    ),
  );

  let rotationPlan: RotationPlan | undefined;
  try {
    rotationPlan = buildRotationPlan(ROTATION_NEW_KEY_REF, ROTATION_PREVIOUS_KEY_REF, ttlMs);
    const rendered = JSON.stringify(rotationPlan);
    if (rotationPlan.steps.length === 0) fail('rotation_plan', 'the plan has no steps');
    else if (rotationPlan.max_token_ttl !== ttl) {
      fail('rotation_plan', `the plan assumes ${rotationPlan.max_token_ttl}, not ${ttl}`);
    } else if (rendered.includes(signingKey) || (token !== undefined && rendered.includes(token))) {
      fail('rotation_plan', 'the plan contains secret material');
    } else {
      pass(
        'rotation_plan',
        `${rotationPlan.steps.length} steps; the previous key stays accepted for at least ${ttl}; key references only (${ROTATION_NEW_KEY_REF}, ${ROTATION_PREVIOUS_KEY_REF})`,
      );
    }
  } catch (err) {
    rotationPlan = undefined;
    fail('rotation_plan', `could not build the rotation plan: ${errorMessage(err)}`);
  }

  const report: CertificationReport = {
    status: checks.every((c) => c.status === 'pass') ? 'pass' : 'fail',
    generated_at: formatUnixSeconds(Math.floor(nowMs / 1000)),
    worker_id: workerId,
    audience,
    ttl,
    token_id: CERTIFICATION_TOKEN_ID,
    signing_key_source: input.signingKeySource,
    checks,
  };
  return { report, rotationPlan };
}

function keySourceText(source: CertificationReport['signing_key_source']): string {
  return source === 'file'
    ? '--signing-key-file'
    : 'generated for this run in a temporary directory, then deleted';
}

/** Moves Markdown headings one level down, leaving fenced code alone. */
export function demoteHeadings(markdown: string): string {
  let fenced = false;
  return markdown
    .split('\n')
    .map((line) => {
      if (line.startsWith('```')) fenced = !fenced;
      return !fenced && /^#{1,5} /.test(line) ? `#${line}` : line;
    })
    .join('\n');
}

function markdownCell(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

/** Renders a report; Markdown also carries the rotation plan. */
export function renderCertificationReport(
  result: CertificationResult,
  format: CertificationFormat,
): string {
  const r = result.report;
  if (format === 'json') return `${JSON.stringify(r, null, 2)}\n`;
  if (format === 'text') {
    const width = Math.max(...r.checks.map((c) => c.name.length));
    return [
      `Worker identity certification: ${r.status.toUpperCase()}`,
      `generated_at: ${r.generated_at}`,
      `worker_id:    ${r.worker_id}`,
      `audience:     ${r.audience}`,
      `ttl:          ${r.ttl}`,
      `token_id:     ${r.token_id}`,
      `signing key:  ${keySourceText(r.signing_key_source)}`,
      'checks:',
      ...r.checks.map((c) => `  [${c.status}] ${c.name.padEnd(width)}  ${c.detail}`),
      '',
    ].join('\n');
  }
  const lines = [
    '# Worker identity certification',
    '',
    '| Field | Value |',
    '| --- | --- |',
    `| Status | **${r.status}** |`,
    `| Generated at | ${r.generated_at} |`,
    `| Worker id | \`${markdownCell(r.worker_id)}\` |`,
    `| Audience | \`${r.audience}\` |`,
    `| TTL | ${r.ttl} |`,
    `| Token id | \`${r.token_id}\` |`,
    `| Signing key | ${keySourceText(r.signing_key_source)} |`,
    '',
    '## Checks',
    '',
    '| Check | Status | Detail |',
    '| --- | --- | --- |',
    ...r.checks.map((c) => `| ${c.name} | ${c.status} | ${markdownCell(c.detail)} |`),
    '',
  ];
  if (result.rotationPlan !== undefined) {
    // The plan's own headings move one level down, under this document's title.
    lines.push(demoteHeadings(rotationPlanMarkdown(result.rotationPlan)));
  }
  return `${lines.join('\n').replace(/\n+$/, '')}\n`;
}

/** Seams of the certify command, all optional; tests inject them to run in-process. */
export interface WorkerCertifyDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  /** Receives the exit code; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  /** Milliseconds since the epoch; defaults to `Date.now`. */
  now?: () => number;
  /** Reads the signing key file; defaults to `readFileSync(path, 'utf8')`. */
  readFile?: (path: string) => string;
  /** Writes `--output`; defaults to `writeFileSync`. */
  writeFile?: (path: string, content: string) => void;
  /** A fresh random key (signing key when none is given, and the wrong key); defaults to 32 random bytes as hex. */
  generateKey?: () => string;
  /** Directory the temporary key directory is made in; defaults to `os.tmpdir()`. */
  tempRoot?: string;
}

/** A mistake in how the command was invoked; exits with status 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

interface CertifyOptions {
  format?: string;
  output?: string;
  signingKeyFile?: string;
  ttl?: string;
}

function parseTtl(value: string | undefined): number {
  if (value === undefined || value.trim() === '') return DEFAULT_WORKER_TOKEN_TTL_MS;
  let ms: number;
  try {
    ms = parseDurationMs(value.trim());
  } catch (err) {
    if (err instanceof DurationSyntaxError) throw new UsageError(`--ttl: ${err.message}`);
    throw err;
  }
  if (ms < 1000) throw new UsageError('--ttl must be at least 1s');
  if (ms > MAX_WORKER_TOKEN_TTL_MS) {
    throw new UsageError(`--ttl must be at most ${formatDurationMs(MAX_WORKER_TOKEN_TTL_MS)}`);
  }
  return ms;
}

function readKeyFile(readFile: (path: string) => string, flag: string, path: string): string {
  let content: string;
  try {
    content = readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`${flag}: cannot read ${path}${code === undefined ? '' : ` (${code})`}`);
  }
  const key = content.trim();
  if (key === '') throw new UsageError(`${flag}: ${path} is empty`);
  return key;
}

/**
 * Adds `certify` under `stacyvm worker token` (registered by
 * registerWorkerTokenCommands; created here if it is missing).
 */
export function registerWorkerCertifyCommand(program: Command, deps: WorkerCertifyDeps = {}): void {
  const stdout = deps.stdout ?? process.stdout;
  const stderr = deps.stderr ?? process.stderr;
  const setExitCode =
    deps.setExitCode ??
    ((code: number): void => {
      process.exitCode = code;
    });
  const now = deps.now ?? Date.now;
  const readFile = deps.readFile ?? ((path: string): string => readFileSync(path, 'utf8'));
  const writeFile =
    deps.writeFile ??
    ((path: string, content: string): void => writeFileSync(path, content, 'utf8'));
  const generateKey = deps.generateKey ?? ((): string => randomBytes(32).toString('hex'));

  const worker =
    program.commands.find((c) => c.name() === 'worker') ??
    program.command('worker').description('remote worker commands');
  const token =
    worker.commands.find((c) => c.name() === 'token') ??
    worker.command('token').description('signed worker identity tokens');

  token
    .command('certify')
    .description(
      'certify signed worker identity: issue, inspect and verify a token, check that revoked, wrong-key and expired tokens are refused, and build the rotation plan; never prints the token or a key',
    )
    .argument('[worker-id]', `worker to certify (default ${DEFAULT_CERTIFICATION_WORKER_ID})`)
    .option('--format <format>', 'text, json or markdown (default text)')
    .option('--output <file>', 'write the report to this file instead of stdout')
    .option(
      '--signing-key-file <file>',
      'file holding the signing key to certify (default: a key generated for this run, deleted after)',
    )
    .option('--ttl <duration>', 'token lifetime, Go syntax, at most 15m (default 5m)')
    .action((workerIdArg: string | undefined, opts: CertifyOptions) => {
      let code: number;
      try {
        code = run(workerIdArg, opts);
      } catch (err) {
        stderr.write(`error: ${errorMessage(err)}\n`);
        code = err instanceof UsageError ? USAGE_EXIT_CODE : 1;
      }
      setExitCode(code);
    });

  function run(workerIdArg: string | undefined, opts: CertifyOptions): number {
    const format = (opts.format ?? 'text').trim().toLowerCase() || 'text';
    const chosen = FORMATS.find((f) => f === format);
    if (chosen === undefined) throw new UsageError('--format must be text, json or markdown');
    const workerId = (workerIdArg ?? DEFAULT_CERTIFICATION_WORKER_ID).trim();
    if (workerId === '') throw new UsageError('the worker id must not be empty');
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(workerId)) {
      throw new UsageError('the worker id must not contain control characters');
    }
    const ttlMs = parseTtl(opts.ttl);
    const output = opts.output?.trim();
    if (opts.output !== undefined && output === '') {
      throw new UsageError('--output must not be empty');
    }

    let signingKey: string;
    let source: CertificationReport['signing_key_source'];
    if (opts.signingKeyFile !== undefined) {
      signingKey = readKeyFile(readFile, '--signing-key-file', opts.signingKeyFile);
      source = 'file';
    } else {
      // Like the reference script: a key file in a private temporary directory, read back the
      // same way an operator's file is, and removed whatever happens.
      const dir = mkdtempSync(join(deps.tempRoot ?? tmpdir(), 'stacyvm-certify-'));
      try {
        const file = join(dir, 'worker-signing.key');
        writeFileSync(file, `${generateKey()}\n`, { mode: 0o600 });
        signingKey = readKeyFile(
          (path) => readFileSync(path, 'utf8'),
          'generated signing key',
          file,
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      source = 'generated';
    }
    let wrongKey = generateKey();
    for (let i = 0; wrongKey.trim() === signingKey && i < 3; i += 1) wrongKey = generateKey();

    const result = certifyWorkerIdentity({
      workerId,
      ttlMs,
      signingKey,
      signingKeySource: source,
      wrongKey,
      nowMs: now(),
    });
    const text = renderCertificationReport(result, chosen);
    if (output === undefined) stdout.write(text);
    else {
      try {
        writeFile(output, text);
      } catch (err) {
        const errno = (err as NodeJS.ErrnoException).code;
        throw new Error(`cannot write ${output}${errno === undefined ? '' : ` (${errno})`}`);
      }
      stderr.write(
        `worker identity certification ${result.report.status}: report written to ${output}\n`,
      );
    }
    return result.report.status === 'pass' ? 0 : 1;
  }
}
