/** How a command is interpreted: through `sh -c`, or as an argv vector. */
export type ExecMode = 'shell' | 'argv';

/** A validated exec request, in domain units. */
export interface ExecSpec {
  command: string;
  args: string[];
  mode: ExecMode;
  env: Record<string, string>;
  /** In-sandbox working directory; empty means the provider default (`/workspace`). */
  workdir: string;
  /** Hard deadline; the process is killed when it passes. */
  timeoutMs: number;
}

/** Outcome of a finished command. A non-zero exit is not an error. */
export interface ExecOutcome {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
  timedOut: boolean;
}

/** One event of a streamed exec. */
export type ExecEvent =
  | { type: 'stdout' | 'stderr'; data: Uint8Array }
  | { type: 'exit'; exitCode: number; timedOut: boolean; durationMs: number };

/** Quotes one argument for POSIX sh, as the reference does (`'` → `'"'"'`). */
export function shellQuote(arg: string): string {
  return `'${arg.replace(/'/g, `'"'"'`)}'`;
}

/**
 * The argv a provider runs. Shell mode appends each arg single-quoted to the
 * command and runs `sh -c`; argv mode runs the command with its args verbatim.
 */
export function buildExecArgv(spec: Pick<ExecSpec, 'command' | 'args' | 'mode'>): string[] {
  if (spec.mode === 'argv') return [spec.command, ...spec.args];
  const script = [spec.command, ...spec.args.map(shellQuote)].join(' ');
  return ['sh', '-c', script];
}

/** Exit code reported for a process killed by its deadline (as `timeout(1)`). */
export const TIMEOUT_EXIT_CODE = 124;
