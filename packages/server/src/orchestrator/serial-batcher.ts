/**
 * A queue written by one loop at a time, in order, several items per write:
 * the items queued while one write is on its way go together in the next.
 * The loop starts after the caller's current synchronous work (a microtask),
 * so items queued back to back share a write. Used for audit rows and for
 * cluster event messages.
 */
export interface SerialBatcherOptions<T> {
  /** Items one write carries at most. */
  maxBatch: number;
  /** Items waiting at most (queued and being written); more are refused. */
  maxPending: number;
  /** Writes a batch (in order). A rejection is the writer's to report: it is swallowed here. */
  write: (batch: T[]) => Promise<void>;
}

export class SerialBatcher<T> {
  private queue: T[] = [];
  private inFlight = 0;
  private loop: Promise<void> | undefined;

  constructor(private readonly o: SerialBatcherOptions<T>) {}

  /** Queues an item; false (and nothing queued) when {@link SerialBatcherOptions.maxPending} are waiting. */
  push(item: T): boolean {
    if (this.pending >= this.o.maxPending) return false;
    this.queue.push(item);
    this.loop ??= this.run();
    return true;
  }

  /** Items queued or being written. */
  get pending(): number {
    return this.queue.length + this.inFlight;
  }

  /** Resolves once every item pushed so far has been written (or its write failed). */
  idle(): Promise<void> {
    return this.loop ?? Promise.resolve();
  }

  private async run(): Promise<void> {
    await Promise.resolve();
    for (;;) {
      if (this.queue.length === 0) {
        // Cleared in the same turn as the check, so a later push starts a new loop.
        this.loop = undefined;
        return;
      }
      const batch = this.queue.splice(0, this.o.maxBatch);
      this.inFlight = batch.length;
      try {
        await this.o.write(batch);
      } catch {
        // The writer reports its own failures.
      }
      this.inFlight = 0;
    }
  }
}
