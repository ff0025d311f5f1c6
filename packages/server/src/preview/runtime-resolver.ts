import { isStacyError, notFound } from '../domain/errors.js';
import type { CallOptions } from '../providers/provider.js';
import type { PreviewUpstream, RuntimeRef } from '../rpc/worker-client.js';
import type { PreviewResolver } from './gateway.js';

/** What the worker-side resolver needs of a worker runtime; `WorkerRuntime` satisfies it. */
export interface PreviewRuntime {
  readonly providerNames: readonly string[];
  previewUpstream(ref: RuntimeRef, port: number, opts?: CallOptions): Promise<PreviewUpstream>;
}

/**
 * Resolves a preview on a remote worker from its own runtime, without a
 * store: the sandbox id names the runtime (every provider names its runtime
 * after the sandbox id the control plane chose), so each provider is asked
 * in turn. The control plane's routing is not trusted for the id: the worker
 * reads it from the Host itself. NOT_FOUND when no provider holds it.
 */
export function createRuntimeResolver(runtime: PreviewRuntime): PreviewResolver {
  return async (target, signal) => {
    let other: Error | undefined;
    for (const provider of runtime.providerNames) {
      const ref: RuntimeRef = {
        sandboxId: target.sandboxId,
        provider,
        runtimeId: target.sandboxId,
      };
      try {
        return await runtime.previewUpstream(ref, target.port, { signal });
      } catch (err) {
        if (isStacyError(err) && err.code === 'NOT_FOUND') continue;
        other ??= err instanceof Error ? err : new Error(String(err));
      }
    }
    if (other !== undefined) throw other;
    throw notFound(`sandbox not found: ${target.sandboxId}`);
  };
}
