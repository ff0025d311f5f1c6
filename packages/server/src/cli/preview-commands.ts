/**
 * `stacyvm preview <id> <port>`: prints the preview URL of a sandbox port,
 * from `GET /api/v1/sandboxes/{id}/preview/{port}`. For a private preview the
 * printed URL carries a token (the gateway moves it into a cookie).
 *
 * Uses the global `--server`, `--api-key` and `--json` options of the client
 * commands when they are registered.
 */
import type { Command } from 'commander';
import { parsePreviewPort } from '../domain/preview.js';
import { StacyError } from '../domain/errors.js';
import { ApiClient, ApiError } from './api-client.js';
import type { OutputStream } from './client-commands.js';
import { DEFAULT_SERVER, USAGE_EXIT_CODE } from './client-commands.js';

/** Seams of the preview command, all optional; tests inject them to run it in-process. */
export interface PreviewCommandDeps {
  stdout?: OutputStream;
  stderr?: OutputStream;
  fetch?: typeof fetch;
  /** Environment for `STACYVM_SERVER` / `STACYVM_API_KEY`; defaults to `process.env`. */
  env?: Record<string, string | undefined>;
  /** Receives the exit code; defaults to setting `process.exitCode`. */
  setExitCode?: (code: number) => void;
  /** Deadline of the API call; default 30 s. */
  timeoutMs?: number;
}

interface Globals {
  server?: string;
  apiKey?: string;
  json?: boolean;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/** Adds `stacyvm preview <id> <port>` to `program`. */
export function registerPreviewCommands(program: Command, deps: PreviewCommandDeps = {}): void {
  const stdout = deps.stdout ?? process.stdout;
  const stderr = deps.stderr ?? process.stderr;
  const env = deps.env ?? process.env;
  const setExitCode =
    deps.setExitCode ??
    ((code: number): void => {
      process.exitCode = code;
    });

  program
    .command('preview')
    .description('print the preview URL of a sandbox port (with a token when previews are private)')
    .argument('<id>', 'sandbox id')
    .argument('<port>', 'port inside the sandbox, 1-65535')
    .addHelpText(
      'after',
      '\nExample:\n  stacyvm preview sb-1a2b3c4d 3000\n  http://3000-sb-1a2b3c4d.localhost:7480',
    )
    .action(async (id: string, portText: string, _opts: unknown, cmd: Command) => {
      const globals = cmd.optsWithGlobals<Globals>();
      const apiKey = nonEmpty(globals.apiKey) ?? nonEmpty(env['STACYVM_API_KEY']);
      const scrub = (text: string): string =>
        apiKey === undefined ? text : text.split(apiKey).join('[redacted]');
      const port = parsePreviewPort(portText.trim());
      if (port === undefined) {
        stderr.write(`error: port must be a whole number from 1 to 65535, got "${portText}"\n`);
        setExitCode(USAGE_EXIT_CODE);
        return;
      }
      const raw = nonEmpty(globals.server) ?? nonEmpty(env['STACYVM_SERVER']) ?? DEFAULT_SERVER;
      const server = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
      try {
        let client: ApiClient;
        try {
          client = new ApiClient({
            server,
            ...(apiKey === undefined ? {} : { apiKey }),
            ...(deps.timeoutMs === undefined ? {} : { timeoutMs: deps.timeoutMs }),
            ...(deps.fetch === undefined ? {} : { fetch: deps.fetch }),
          });
        } catch (err) {
          stderr.write(`error: --server: ${scrub((err as Error).message)}\n`);
          setExitCode(USAGE_EXIT_CODE);
          return;
        }
        const p = await client.preview(id, port);
        if (globals.json === true) {
          stdout.write(`${JSON.stringify(p, null, 2)}\n`);
        } else {
          stdout.write(`${p.open_url ?? p.url}\n`);
          if (p.private) {
            stderr.write(
              `private preview: the link carries a token${p.expires_at === undefined ? '' : ` valid until ${p.expires_at}`}; do not share it\n`,
            );
          }
        }
        setExitCode(0);
      } catch (err) {
        if (err instanceof StacyError) {
          const tags = [`code ${err.code}`];
          if (err instanceof ApiError && err.requestId !== undefined) {
            tags.push(`request ${err.requestId}`);
          }
          stderr.write(scrub(`error: ${err.message} (${tags.join(', ')})\n`));
        } else {
          stderr.write(scrub(`error: ${err instanceof Error ? err.message : String(err)}\n`));
        }
        setExitCode(1);
      }
    });
}
