import { Writable } from 'node:stream';
import pino from 'pino';
import type { Logger as PinoLogger } from 'pino';

export interface LoggerOptions {
  level: string;
  format: 'json' | 'pretty';
  destination?: NodeJS.WritableStream;
}

/** Request headers that carry credentials; never logged. */
export const REDACT_PATHS = [
  'req.headers["x-api-key"]',
  'req.headers["x-admin-api-key"]',
  'req.headers.authorization',
  'req.headers["x-worker-token"]',
  'req.headers.cookie',
];

const LEVELS: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

/** A minimal human-readable line format (the `pretty` logging format). */
function prettyStream(out: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line === '') continue;
        try {
          const rec = JSON.parse(line) as Record<string, unknown>;
          const { level, time, msg, pid: _pid, hostname: _h, ...rest } = rec;
          const ts = new Date(typeof time === 'number' ? time : Date.now())
            .toISOString()
            .slice(11, 23);
          const extras = Object.entries(rest)
            .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
            .join(' ');
          out.write(
            `${ts} ${(LEVELS[level as number] ?? String(level)).padEnd(5)} ${typeof msg === 'string' ? msg : JSON.stringify(msg ?? '')}${extras === '' ? '' : ` ${extras}`}\n`,
          );
        } catch {
          out.write(`${line}\n`);
        }
      }
      cb();
    },
  });
}

export function createLogger(o: LoggerOptions): PinoLogger {
  const dest = o.destination ?? process.stderr;
  return pino(
    {
      level: o.level,
      base: { service: 'stacyvm' },
      redact: { paths: REDACT_PATHS, censor: '<redacted>' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      ...(o.format === 'pretty'
        ? { timestamp: pino.stdTimeFunctions.epochTime, formatters: {} }
        : {}),
    },
    o.format === 'pretty' ? prettyStream(dest) : dest,
  );
}
