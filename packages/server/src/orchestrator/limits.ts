/** Operational limits the orchestrator enforces, in domain units. */
export interface SandboxLimits {
  defaultTtlMs: number;
  maxTtlMs: number;
  defaultImage: string;
  defaultMemoryMb: number;
  defaultVcpus: number;
  /** 0 means "use maxExecTimeoutMs". */
  defaultExecTimeoutMs: number;
  maxExecTimeoutMs: number;
  /** 0 = unlimited. */
  maxSandboxes: number;
  /** 0 = unlimited. */
  maxSandboxesPerOwner: number;
}
