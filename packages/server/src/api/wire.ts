import { formatDurationMs } from '../domain/duration.js';
import type { FileEntry } from '../domain/files.js';
import type { SandboxRecord } from '../domain/sandbox.js';
import type { TemplateRecord } from '../domain/template.js';
import type { WorkerRecord } from '../domain/worker.js';
import type { ProviderInfo } from '../rpc/worker-client.js';
import { fileEntryToWire } from '../rpc/protocol.js';
import type { ExecLogEntry } from '../orchestrator/sandbox-service.js';
import type { PreviewInfo, PreviewWire } from '../orchestrator/preview-service.js';
import type { Static } from '@sinclair/typebox';
import type {
  FileInfoSchema,
  PreviewSchema,
  SandboxWire,
  TemplateWire,
  WorkerSchema,
} from './schemas/common.js';

const iso = (ms: number): string => new Date(ms).toISOString();
/** RFC 3339 to the second, as the reference emits for files and workers. */
const isoSeconds = (ms: number): string =>
  new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');

export function sandboxToWire(s: SandboxRecord, preview: PreviewWire): SandboxWire {
  const out: SandboxWire = {
    id: s.id,
    state: s.state,
    provider: s.provider,
    image: s.image,
    memory_mb: s.memoryMb,
    vcpus: s.vcpus,
    worker_id: s.workerId,
    created_at: iso(s.createdAtMs),
    updated_at: iso(s.updatedAtMs),
    expires_at: iso(s.expiresAtMs),
    ports: s.ports,
    preview_domain: preview.domain,
    preview_scheme: preview.scheme,
  };
  if (preview.port !== undefined) out.preview_port = preview.port;
  if (s.ownerId !== '') out.owner_id = s.ownerId;
  if (s.tenantId !== '') out.tenant_id = s.tenantId;
  if (s.vmId !== '' && s.vmId !== s.id) out.vm_id = s.vmId;
  if (Object.keys(s.metadata).length > 0) out.metadata = s.metadata;
  return out;
}

export function previewToWire(p: PreviewInfo): Static<typeof PreviewSchema> {
  const out: Static<typeof PreviewSchema> = {
    url: p.url,
    port: p.port,
    sandbox_id: p.sandboxId,
    private: p.private,
  };
  if (p.token !== undefined) out.token = p.token;
  if (p.expiresAtMs !== undefined) out.expires_at = iso(p.expiresAtMs);
  if (p.openUrl !== undefined) out.open_url = p.openUrl;
  return out;
}

/** The file entry wire form; one converter, shared with worker RPC. */
export function fileToWire(f: FileEntry): Static<typeof FileInfoSchema> {
  return fileEntryToWire(f);
}

export function workerToWire(w: WorkerRecord, stale: boolean): Static<typeof WorkerSchema> {
  return {
    id: w.id,
    hostname: w.hostname,
    status: w.status,
    providers: w.providers,
    capabilities: w.capabilities,
    capacity: w.capacity,
    last_heartbeat: isoSeconds(w.lastHeartbeatMs),
    created_at: isoSeconds(w.createdAtMs),
    updated_at: isoSeconds(w.updatedAtMs),
    stale,
  };
}

export function providerToWire(p: ProviderInfo): Record<string, unknown> {
  const out: Record<string, unknown> = {
    name: p.name,
    healthy: p.healthy,
    default: p.isDefault,
    latency_ms: Math.round(p.latencyMs * 1000) / 1000,
    last_checked: isoSeconds(p.lastCheckedMs),
    capabilities: p.capabilities,
  };
  if (p.error !== undefined) out['error'] = p.error;
  return out;
}

export function execLogToWire(e: ExecLogEntry): Record<string, unknown> {
  return {
    id: e.id,
    command: e.command,
    args: e.args,
    mode: e.mode,
    exit_code: e.exitCode,
    stdout: e.stdout,
    stderr: e.stderr,
    truncated: e.truncated,
    duration: formatDurationMs(e.durationMs),
    timed_out: e.timedOut,
    streamed: e.streamed,
    created_at: iso(e.createdAtMs),
  };
}

export function templateToWire(t: TemplateRecord): TemplateWire {
  return {
    name: t.name,
    version: t.version,
    image: t.image,
    provider: t.provider,
    description: t.description,
    memory_mb: t.memoryMb,
    cpu_cores: t.vcpus,
    ttl_seconds: t.ttlSeconds,
    env: t.env,
    setup: t.setup,
    metadata: t.metadata,
    ports: t.ports,
    created_at: iso(t.createdAtMs),
    updated_at: iso(t.updatedAtMs),
  };
}
