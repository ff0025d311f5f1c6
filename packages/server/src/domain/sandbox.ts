import { randomBytes } from 'node:crypto';

/**
 * Sandbox lifecycle states. `creating` while the provider works, `running`
 * when usable, `unhealthy` when its worker stopped answering, `expired` when
 * its TTL passed while its worker was away, `error` when the provider failed,
 * `destroying` while teardown runs, `destroyed` (terminal, row kept).
 */
export const SANDBOX_STATES = [
  'creating',
  'running',
  'unhealthy',
  'expired',
  'error',
  'destroying',
  'destroyed',
] as const;

export type SandboxState = (typeof SANDBOX_STATES)[number];

/** States that count against capacity and show in listings. */
export const LIVE_STATES: readonly SandboxState[] = [
  'creating',
  'running',
  'unhealthy',
  'expired',
  'error',
  'destroying',
];

const TRANSITIONS: Record<SandboxState, readonly SandboxState[]> = {
  creating: ['running', 'error', 'destroying', 'destroyed'],
  running: ['unhealthy', 'expired', 'error', 'destroying', 'destroyed'],
  unhealthy: ['running', 'expired', 'error', 'destroying', 'destroyed'],
  expired: ['destroying', 'destroyed'],
  error: ['running', 'destroying', 'destroyed'],
  destroying: ['destroyed', 'error'],
  destroyed: [],
};

/** Whether the state machine allows `from` → `to`. */
export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** States from which `to` may be entered (for compare-and-set updates). */
export function statesLeadingTo(to: SandboxState): SandboxState[] {
  return SANDBOX_STATES.filter((s) => TRANSITIONS[s].includes(to));
}

export function isSandboxState(value: string): value is SandboxState {
  return (SANDBOX_STATES as readonly string[]).includes(value);
}

/** A sandbox as the control plane records it. Times are epoch milliseconds. */
export interface SandboxRecord {
  id: string;
  state: SandboxState;
  provider: string;
  image: string;
  memoryMb: number;
  vcpus: number;
  ownerId: string;
  tenantId: string;
  /** The runtime id the provider or worker uses (container name, temp dir id). */
  vmId: string;
  workerId: string;
  metadata: Record<string, string>;
  /** Ports inside the sandbox that previews may route to. */
  ports: number[];
  /**
   * Default environment of every exec in the sandbox (a request's own `env`
   * wins per variable). Absent when empty; set by template spawns.
   */
  env?: Record<string, string>;
  createdAtMs: number;
  updatedAtMs: number;
  expiresAtMs: number;
}

const SANDBOX_ID = /^sb-[0-9a-f]{8}$/;

/** A new sandbox id: `sb-` and 8 lowercase hex digits, as the reference. */
export function newSandboxId(): string {
  return `sb-${randomBytes(4).toString('hex')}`;
}

export function isSandboxId(value: string): boolean {
  return SANDBOX_ID.test(value);
}

/** Owner ids are free text from headers, so they are checked before use. */
export function validateOwnerId(raw: string): string | { problem: string } {
  const v = raw.trim();
  if (v.length > 128) return { problem: 'must be at most 128 characters' };
  // eslint-disable-next-line no-control-regex
  if (/[/\\\s\u0000-\u001f\u007f]/.test(v)) {
    return { problem: 'must not contain slashes, whitespace or control characters' };
  }
  return v;
}
