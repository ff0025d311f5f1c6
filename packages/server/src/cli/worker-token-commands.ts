import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { DurationSyntaxError, formatDurationMs, parseDurationMs } from '../domain/duration.js';
import { isStacyError } from '../domain/errors.js';
import {
  DEFAULT_WORKER_TOKEN_TTL_MS,
  formatUnixSeconds,
  inspectWorkerToken,
  issueWorkerToken,
  MAX_WORKER_TOKEN_TTL_MS,
  verifyWorkerToken,
  WORKER_AUDIENCE_CONTROL_PLANE,
  WORKER_AUDIENCE_RPC,
  WORKER_TOKEN_AUDIENCES,
  WorkerTokenError,
} from '../domain/worker-token.js';
import type { WorkerTokenAudience, WorkerTokenClaims } from '../domain/worker-token.js';
import type { OutputStream } from './client-commands.js';

/** Env var the signing key is read from when no flag names one (keeps it out of argv). */
export const SIGNING_KEY_ENV = 'STACYVM_AUTH_WORKER_SIGNING_KEY';

const USAGE_EXIT_CODE = 2;

/** Seams of the worker token commands, all optional; tests inject them to run in-process. */
export interface WorkerTokenCommandDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  /** Environment for {@link SIGNING_KEY_ENV}; defaults to `process.env`. */
  env?: Record<string, string | undefined>;
  /** Receives each command's exit code; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  /** Milliseconds since the epoch; defaults to `Date.now`. */
  now?: () => number;
  /** Reads a secret file; defaults to `readFileSync(path, 'utf8')`. */
  readFile?: (path: string) => string;
}

interface Io {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Record<string, string | undefined>;
  setExitCode: (code: number) => void;
  now: () => number;
  readFile: (path: string) => string;
}

/** A mistake in how the command was invoked; exits with status 2. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Output of `worker token inspect|verify` (the reference's shape; empty fields left out). */
export interface WorkerTokenReport {
  signature_verified: boolean;
  worker_id?: string;
  token_id?: string;
  audience?: string;
  scopes?: string[];
  issued_at?: string;
  not_before?: string;
  expires_at?: string;
}

/** Output of `worker token rotation-plan --format json` (the reference's shape). */
export interface RotationPlan {
  new_key_ref: string;
  previous_key_ref: string;
  max_token_ttl: string;
  steps: string[];
  config_snippet: string;
  validation: string[];
  text: string;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/**
 * Adds `stacyvm worker token <worker-id>` (issue), `worker token inspect`,
 * `worker token verify` and `worker token rotation-plan`. The `worker`
 * command is reused when it already exists (it will also run the worker
 * process), else created as a group.
 *
 * Issuing is the default subcommand `issue`, so that each subcommand owns its
 * flags: with Commander, flags of a parent command would swallow the
 * same-named flags of its subcommands. A worker literally named `inspect`,
 * `verify`, `rotation-plan` or `issue` is issued with `worker token issue <id>`.
 *
 * No key is ever printed, echoed in an error or shown as a default in help.
 * Action handlers never call `process.exit`: they report the exit code through
 * `deps.setExitCode` (0 ok, 1 token refused or failure, 2 usage mistake).
 */
export function registerWorkerTokenCommands(
  program: Command,
  deps: WorkerTokenCommandDeps = {},
): void {
  const io: Io = {
    stdout: deps.stdout ?? process.stdout,
    stderr: deps.stderr ?? process.stderr,
    env: deps.env ?? process.env,
    setExitCode:
      deps.setExitCode ??
      ((code: number): void => {
        process.exitCode = code;
      }),
    now: deps.now ?? Date.now,
    readFile: deps.readFile ?? ((path: string): string => readFileSync(path, 'utf8')),
  };

  const worker =
    program.commands.find((c) => c.name() === 'worker') ??
    program.command('worker').description('remote worker commands');
  const token = worker
    .command('token')
    .description('issue, inspect and verify signed worker identity tokens (no server needed)');

  token
    .command('issue', { isDefault: true })
    .description('issue a signed worker token (the default: `worker token <worker-id>`)')
    .argument('<worker-id>', 'worker the token identifies')
    .option(
      '--signing-key <key>',
      `signing key; visible to other users in the process list, prefer env ${SIGNING_KEY_ENV} or --signing-key-file`,
    )
    .option('--signing-key-file <file>', 'file holding the signing key (trimmed)')
    .option('--ttl <duration>', 'token lifetime, Go syntax, at most 15m (default 5m)')
    .option(
      '--audience <audience>',
      `${WORKER_AUDIENCE_CONTROL_PLANE} or ${WORKER_AUDIENCE_RPC} (default ${WORKER_AUDIENCE_CONTROL_PLANE})`,
    )
    .option('--token-id <id>', 'explicit token id (jti) for revocation tracking; random if empty')
    .option('--not-before <duration>', 'delay before the token becomes valid (default 0s)')
    .option('--format <format>', 'token or json (default token)')
    .option('--scope <scope>', 'worker scope to grant (repeatable; default all)', collect)
    .action(run(io, issueCommand));

  token
    .command('inspect')
    .description('show a token\u2019s claims WITHOUT verifying its signature')
    .argument('<token>', 'signed worker token')
    .action(run(io, inspectCommand));

  token
    .command('verify')
    .description('verify a token against signing keys, audience, worker id and revocations')
    .argument('<token>', 'signed worker token')
    .option(
      '--signing-key <key>',
      `active signing key; visible to other users in the process list, prefer env ${SIGNING_KEY_ENV} or --signing-key-file`,
    )
    .option('--signing-key-file <file>', 'file holding the active signing key')
    .option(
      '--verification-key <key>',
      'additional key accepted during rotation (repeatable; visible in the process list, prefer --verification-key-file)',
      collect,
    )
    .option(
      '--verification-key-file <file>',
      'file holding an additional key accepted during rotation (repeatable)',
      collect,
    )
    .option('--audience <audience>', `expected audience (${WORKER_TOKEN_AUDIENCES.join(' or ')})`)
    .option('--worker-id <id>', 'expected worker id')
    .option('--revoked-token-id <id>', 'revoked token id to refuse (repeatable)', collect)
    .action(run(io, verifyCommand));

  token
    .command('rotation-plan')
    .description('print a signing-key rotation checklist; it names key references, never keys')
    .option(
      '--new-key-ref <ref>',
      'where the new active key lives (default auth.worker_signing_key)',
    )
    .option(
      '--previous-key-ref <ref>',
      'where the previous key lives during the overlap (default auth.worker_signing_keys[0])',
    )
    .option('--ttl <duration>', 'longest token lifetime in use, at most 15m (default 5m)')
    .option('--format <format>', 'text, json or markdown (default text)')
    .action(run(io, rotationPlanCommand));
}

function run(
  io: Io,
  handler: (io: Io, args: string[], opts: Record<string, unknown>) => number,
): (...args: unknown[]) => void {
  return (...args: unknown[]): void => {
    // Commander passes the positional arguments, then the options, then the command.
    const cmd = args[args.length - 1] as Command;
    const positional = args.slice(0, -2).filter((a): a is string => typeof a === 'string');
    let code: number;
    try {
      code = handler(io, positional, cmd.opts());
    } catch (err) {
      code = reportError(io, err);
    }
    io.setExitCode(code);
  };
}

function reportError(io: Io, err: unknown): number {
  const message = err instanceof Error ? err.message : String(err);
  io.stderr.write(`error: ${message}\n`);
  if (err instanceof UsageError) return USAGE_EXIT_CODE;
  // A bad flag value is a usage mistake; a token that fails to parse or verify is not.
  if (isStacyError(err) && err.code === 'BAD_REQUEST' && !(err instanceof WorkerTokenError)) {
    return USAGE_EXIT_CODE;
  }
  return 1;
}

function str(opts: Record<string, unknown>, name: string): string | undefined {
  const v = opts[name];
  return typeof v === 'string' ? v : undefined;
}

function list(opts: Record<string, unknown>, name: string): string[] {
  const v = opts[name];
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

function writeJson(io: Io, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

function duration(flag: string, value: string | undefined, fallbackMs: number): number {
  if (value === undefined || value.trim() === '') return fallbackMs;
  try {
    return parseDurationMs(value);
  } catch (err) {
    if (err instanceof DurationSyntaxError) throw new UsageError(`${flag}: ${err.message}`);
    throw err;
  }
}

function ttlFlag(value: string | undefined): number {
  const ms = duration('--ttl', value, DEFAULT_WORKER_TOKEN_TTL_MS);
  if (ms <= 0) throw new UsageError('--ttl must be positive');
  if (ms > MAX_WORKER_TOKEN_TTL_MS) {
    throw new UsageError(`--ttl must be at most ${formatDurationMs(MAX_WORKER_TOKEN_TTL_MS)}`);
  }
  return ms;
}

function audienceFlag(value: string | undefined): WorkerTokenAudience | undefined {
  const v = value?.trim();
  if (v === undefined || v === '') return undefined;
  const found = WORKER_TOKEN_AUDIENCES.find((a) => a === v);
  if (found === undefined) {
    throw new UsageError(`--audience must be ${WORKER_TOKEN_AUDIENCES.join(' or ')}`);
  }
  return found;
}

/** Reads a secret file; the error names the flag and path, never the content. */
function readSecret(io: Io, flag: string, path: string): string {
  let content: string;
  try {
    content = io.readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`${flag}: cannot read ${path}${code === undefined ? '' : ` (${code})`}`);
  }
  const secret = content.trim();
  if (secret === '') throw new UsageError(`${flag}: ${path} is empty`);
  return secret;
}

/** The active key from --signing-key-file, --signing-key or the environment, in that order. */
function activeKey(io: Io, opts: Record<string, unknown>): string | undefined {
  const inline = str(opts, 'signingKey');
  const file = str(opts, 'signingKeyFile');
  if (inline !== undefined && file !== undefined) {
    throw new UsageError('set the signing key with --signing-key or --signing-key-file, not both');
  }
  if (file !== undefined) return readSecret(io, '--signing-key-file', file);
  if (inline !== undefined) {
    io.stderr.write(
      `warning: --signing-key is visible to other users in the process list; prefer ${SIGNING_KEY_ENV} or --signing-key-file\n`,
    );
    return inline;
  }
  const fromEnv = io.env[SIGNING_KEY_ENV]?.trim();
  return fromEnv === undefined || fromEnv === '' ? undefined : fromEnv;
}

function report(claims: WorkerTokenClaims, verified: boolean): WorkerTokenReport {
  const out: WorkerTokenReport = { signature_verified: verified, worker_id: claims.worker_id };
  if (claims.jti !== undefined) out.token_id = claims.jti;
  if (claims.aud !== undefined) out.audience = claims.aud;
  if (claims.scopes !== undefined && claims.scopes.length > 0) out.scopes = claims.scopes;
  if (claims.iat !== undefined) out.issued_at = formatUnixSeconds(claims.iat);
  if (claims.nbf !== undefined) out.not_before = formatUnixSeconds(claims.nbf);
  out.expires_at = formatUnixSeconds(claims.exp);
  return out;
}

function issueCommand(io: Io, args: string[], opts: Record<string, unknown>): number {
  const workerId = args[0] ?? '';
  const format = (str(opts, 'format') ?? 'token').trim().toLowerCase() || 'token';
  if (format !== 'token' && format !== 'json') {
    throw new UsageError('--format must be token or json');
  }
  const ttlMs = ttlFlag(str(opts, 'ttl'));
  const audience = audienceFlag(str(opts, 'audience'));
  const notBeforeDelayMs = duration('--not-before', str(opts, 'notBefore'), 0);
  const key = activeKey(io, opts);
  if (key === undefined) {
    throw new UsageError(
      `a signing key is required: set ${SIGNING_KEY_ENV}, or pass --signing-key-file`,
    );
  }
  const tokenId = str(opts, 'tokenId');
  const scopes = list(opts, 'scope');
  const { token, claims } = issueWorkerToken(
    {
      workerId,
      ttlMs,
      notBeforeDelayMs,
      ...(audience === undefined ? {} : { audience }),
      ...(tokenId === undefined ? {} : { tokenId }),
      ...(scopes.length === 0 ? {} : { scopes }),
    },
    key,
    io.now(),
  );
  if (format === 'token') {
    io.stdout.write(`${token}\n`);
    return 0;
  }
  writeJson(io, {
    token,
    token_id: claims.jti,
    worker_id: claims.worker_id,
    audience: claims.aud,
    ...(claims.scopes === undefined ? {} : { scopes: claims.scopes }),
    issued_at: formatUnixSeconds(claims.iat ?? Math.floor(io.now() / 1000)),
    ...(claims.nbf === undefined ? {} : { not_before: formatUnixSeconds(claims.nbf) }),
    expires_at: formatUnixSeconds(claims.exp),
  });
  return 0;
}

function inspectCommand(io: Io, args: string[]): number {
  writeJson(io, report(inspectWorkerToken(args[0] ?? ''), false));
  return 0;
}

function verifyCommand(io: Io, args: string[], opts: Record<string, unknown>): number {
  const audience = audienceFlag(str(opts, 'audience'));
  const keys: string[] = [];
  const active = activeKey(io, opts);
  if (active !== undefined) keys.push(active);
  const inlineExtra = list(opts, 'verificationKey');
  if (inlineExtra.length > 0) {
    io.stderr.write(
      'warning: --verification-key is visible to other users in the process list; prefer --verification-key-file\n',
    );
  }
  keys.push(...inlineExtra);
  for (const file of list(opts, 'verificationKeyFile')) {
    keys.push(readSecret(io, '--verification-key-file', file));
  }
  if (keys.every((k) => k.trim() === '')) {
    throw new UsageError(
      `a key is required: set ${SIGNING_KEY_ENV}, or pass --signing-key-file or --verification-key-file`,
    );
  }
  const workerId = str(opts, 'workerId');
  const verified = verifyWorkerToken(args[0] ?? '', {
    keys,
    audience: audience ?? null,
    revokedIds: list(opts, 'revokedTokenId'),
    nowMs: io.now(),
    ...(workerId === undefined ? {} : { workerId }),
  });
  writeJson(io, report(verified.claims, true));
  return 0;
}

/**
 * Builds the no-secret rotation checklist. Key references name where a key
 * lives (a config key, a file, a vault path); the plan never sees a key.
 */
export function buildRotationPlan(
  newKeyRef: string,
  previousKeyRef: string,
  ttlMs: number,
): RotationPlan {
  const ttl = formatDurationMs(ttlMs);
  const steps = [
    `Put the new active signing key at ${newKeyRef}.`,
    `Move the previous active signing key into ${previousKeyRef}.`,
    'Restart or reload control-plane and worker processes so new tokens are minted with the new key.',
    `Wait at least ${ttl}, plus clock skew, before removing the previous verification key.`,
    'Remove the previous verification key after old signed worker tokens have expired.',
  ];
  const configSnippet = `auth:\n  worker_signing_key: "<new key from ${newKeyRef}>"\n  worker_signing_keys:\n    - "<previous key from ${previousKeyRef}>"\n`;
  const validation = [
    'stacyvm config lint --production',
    `stacyvm worker token <worker-id> --ttl ${ttl} --format json`,
    `stacyvm worker token verify '<signed-worker-token>' --worker-id <worker-id> --audience ${WORKER_AUDIENCE_CONTROL_PLANE}`,
  ];
  const lines = [
    'Signed worker token rotation plan',
    '',
    'Key references:',
    `- new active key: ${newKeyRef}`,
    `- previous verification key: ${previousKeyRef}`,
    `- maximum token TTL: ${ttl}`,
    '',
    'Steps:',
    ...steps.map((s, i) => `${i + 1}. ${s}`),
    '',
    'Config sketch:',
    configSnippet.replace(/\n$/, ''),
    '',
    'Validation:',
    ...validation.map((v) => `- ${v}`),
  ];
  return {
    new_key_ref: newKeyRef,
    previous_key_ref: previousKeyRef,
    max_token_ttl: ttl,
    steps,
    config_snippet: configSnippet,
    validation,
    text: `${lines.join('\n')}\n`,
  };
}

/** The plan as a Markdown checklist (`worker token rotation-plan --format markdown`). */
export function rotationPlanMarkdown(plan: RotationPlan): string {
  return [
    '# Signed worker token rotation plan',
    '',
    '| Item | Value |',
    '| --- | --- |',
    `| New active key | \`${plan.new_key_ref}\` |`,
    `| Previous verification key | \`${plan.previous_key_ref}\` |`,
    `| Maximum token TTL | ${plan.max_token_ttl} |`,
    '',
    '## Steps',
    '',
    ...plan.steps.map((s) => `- [ ] ${s}`),
    '',
    '## Config sketch',
    '',
    '```yaml',
    plan.config_snippet.replace(/\n$/, ''),
    '```',
    '',
    '## Validation',
    '',
    ...plan.validation.map((v) => `- \`${v}\``),
    '',
  ].join('\n');
}

function rotationPlanCommand(io: Io, _args: string[], opts: Record<string, unknown>): number {
  const format = (str(opts, 'format') ?? 'text').trim().toLowerCase() || 'text';
  if (format !== 'text' && format !== 'json' && format !== 'markdown') {
    throw new UsageError('--format must be text, json or markdown');
  }
  const newRef = (str(opts, 'newKeyRef') ?? 'auth.worker_signing_key').trim();
  const previousRef = (str(opts, 'previousKeyRef') ?? 'auth.worker_signing_keys[0]').trim();
  if (newRef === '') throw new UsageError('--new-key-ref must not be empty');
  if (previousRef === '') throw new UsageError('--previous-key-ref must not be empty');
  const plan = buildRotationPlan(newRef, previousRef, ttlFlag(str(opts, 'ttl')));
  if (format === 'json') writeJson(io, plan);
  else if (format === 'markdown') io.stdout.write(rotationPlanMarkdown(plan));
  else io.stdout.write(plan.text);
  return 0;
}
