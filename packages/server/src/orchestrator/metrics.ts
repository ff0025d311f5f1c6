/** Per-operation outcome counters and latency, rendered in Prometheus text format. */
interface OpStats {
  success: number;
  failure: number;
  latencyCount: number;
  latencySumMs: number;
  latencyMaxMs: number;
  lastError?: string;
}

export interface GaugeSample {
  name: string;
  help: string;
  labels?: Record<string, string>;
  value: number;
  type?: 'gauge' | 'counter';
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(labels: Record<string, string> | undefined): string {
  if (labels === undefined || Object.keys(labels).length === 0) return '';
  return `{${Object.entries(labels)
    .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
    .join(',')}}`;
}

export class Metrics {
  private readonly ops = new Map<string, OpStats>();
  private readonly httpRequests = new Map<string, number>();

  observe(operation: string, provider: string, ms: number, error?: unknown): void {
    const key = `${operation}\u0000${provider}`;
    let s = this.ops.get(key);
    if (s === undefined) {
      s = { success: 0, failure: 0, latencyCount: 0, latencySumMs: 0, latencyMaxMs: 0 };
      this.ops.set(key, s);
    }
    if (error === undefined) s.success += 1;
    else {
      s.failure += 1;
      s.lastError = error instanceof Error ? error.message : JSON.stringify(error);
    }
    s.latencyCount += 1;
    s.latencySumMs += ms;
    if (ms > s.latencyMaxMs) s.latencyMaxMs = ms;
  }

  /** Times an async operation and records its outcome. */
  async time<T>(operation: string, provider: string, fn: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      const out = await fn();
      this.observe(operation, provider, performance.now() - started);
      return out;
    } catch (err) {
      this.observe(operation, provider, performance.now() - started, err);
      throw err;
    }
  }

  countHttp(method: string, route: string, status: number): void {
    const key = `${method}\u0000${route}\u0000${status}`;
    this.httpRequests.set(key, (this.httpRequests.get(key) ?? 0) + 1);
  }

  snapshot(): Array<{ operation: string; provider: string } & OpStats> {
    return [...this.ops.entries()].map(([k, s]) => {
      const [operation = '', provider = ''] = k.split('\u0000');
      return { operation, provider, ...s };
    });
  }

  /** Prometheus text exposition (version 0.0.4) of these metrics plus the given gauges. */
  render(gauges: GaugeSample[]): string {
    const lines: string[] = [];
    const declared = new Set<string>();
    const declare = (name: string, help: string, type: string): void => {
      if (declared.has(name)) return;
      declared.add(name);
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    };
    for (const g of gauges) {
      declare(g.name, g.help, g.type ?? 'gauge');
      lines.push(`${g.name}${labelText(g.labels)} ${g.value}`);
    }
    const snap = this.snapshot();
    const fams: Array<[string, string, string, (s: OpStats) => number]> = [
      [
        'stacyvm_operation_success_total',
        'Operations that succeeded.',
        'counter',
        (s) => s.success,
      ],
      ['stacyvm_operation_failure_total', 'Operations that failed.', 'counter', (s) => s.failure],
      [
        'stacyvm_operation_latency_milliseconds_sum',
        'Total operation latency.',
        'counter',
        (s) => s.latencySumMs,
      ],
      [
        'stacyvm_operation_latency_milliseconds_count',
        'Operations timed.',
        'counter',
        (s) => s.latencyCount,
      ],
      [
        'stacyvm_operation_latency_milliseconds_max',
        'Slowest operation seen.',
        'gauge',
        (s) => s.latencyMaxMs,
      ],
    ];
    for (const [name, help, type, pick] of fams) {
      declare(name, help, type);
      for (const s of snap) {
        lines.push(
          `${name}${labelText({ operation: s.operation, provider: s.provider })} ${pick(s)}`,
        );
      }
    }
    declare('stacyvm_http_requests_total', 'HTTP requests served.', 'counter');
    for (const [k, n] of this.httpRequests) {
      const [method = '', route = '', status = ''] = k.split('\u0000');
      lines.push(`stacyvm_http_requests_total${labelText({ method, route, status })} ${n}`);
    }
    return `${lines.join('\n')}\n`;
  }
}
