/**
 * What several control planes on one database share beyond the store's
 * rows: a broadcast channel (events) and a leader lock (sweeps). Postgres
 * implements both (store/postgres/pg-cluster.ts); on SQLite there is one
 * control plane and neither is used.
 */

/** A broadcast channel shared by every control plane on one database. */
export interface ClusterChannel {
  /**
   * Sends `payload` to the subscriber of every control plane, this one
   * included (the caller filters its own messages). Rejects when the
   * database cannot take it; nothing is retried.
   */
  publish(payload: string): Promise<void>;
  /**
   * Starts delivering messages to `handler`, in the order the database
   * commits them. Keeps reconnecting after a lost connection; messages sent
   * while it was away are not delivered, and `onResync` is called once
   * delivery resumes after such a gap.
   */
  subscribe(handler: (payload: string) => void, onResync?: () => void): Promise<void>;
  close(): Promise<void>;
}

/**
 * A lock at most one control plane holds at a time. It is tied to a
 * database session: when the holder dies, its session ends and the lock is
 * free for the next {@link LeaderLock.tryLead} of another control plane.
 */
export interface LeaderLock {
  /**
   * Whether this control plane leads now: takes the lock when it is free,
   * checks the session still holds it when it was taken before. Never
   * throws: a database error means "not leading".
   */
  tryLead(): Promise<boolean>;
  /** Whether the last {@link LeaderLock.tryLead} found this control plane leading. */
  readonly leading: boolean;
  /** Gives the lock up (if held) and closes its session. */
  close(): Promise<void>;
}
