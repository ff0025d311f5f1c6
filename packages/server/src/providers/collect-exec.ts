import { StacyError } from '../domain/errors.js';
import type { ExecEvent, ExecOutcome } from '../domain/exec.js';

/**
 * Drains a streamed exec into one outcome, keeping at most `maxOutputBytes`
 * of each stream (the head; the rest is read and dropped so the command never
 * blocks on a full pipe). Shared by every provider's sync `exec`.
 */
export async function collectExecOutcome(
  events: AsyncIterable<ExecEvent>,
  maxOutputBytes: number,
): Promise<ExecOutcome> {
  const parts = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  const kept = { stdout: 0, stderr: 0 };
  for await (const ev of events) {
    if (ev.type === 'exit') {
      return {
        exitCode: ev.exitCode,
        stdout: Buffer.concat(parts.stdout).toString('utf8'),
        stderr: Buffer.concat(parts.stderr).toString('utf8'),
        durationMs: ev.durationMs,
        timedOut: ev.timedOut,
      };
    }
    const room = maxOutputBytes - kept[ev.type];
    if (room <= 0) continue;
    const chunk = Buffer.from(
      ev.data.buffer,
      ev.data.byteOffset,
      Math.min(room, ev.data.byteLength),
    );
    parts[ev.type].push(chunk);
    kept[ev.type] += chunk.byteLength;
  }
  throw new StacyError('INTERNAL_ERROR', 'exec ended without an exit status');
}
