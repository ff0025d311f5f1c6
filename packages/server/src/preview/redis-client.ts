/**
 * A minimal Redis client over `node:net`: RESP2 framing, one connection,
 * pipelined commands answered in order, and the few commands the Traefik KV
 * publisher needs (AUTH, SELECT, PING, SET, DEL, SCAN, MULTI/EXEC).
 *
 * The connection opens on first use and again after a failure; AUTH and
 * SELECT are sent first on every new connection. A command that gets no
 * answer within the timeout fails and drops the connection (its reply could
 * otherwise be taken for the next command's). The password never appears in
 * an error message or a log line.
 */
import { connect } from 'node:net';
import type { Socket } from 'node:net';

/** A decoded RESP2 reply. Bulk strings are UTF-8 text; null is a nil bulk or array. */
export type RedisReply = string | number | null | RedisReply[];

/** An error reply from the server (`-ERR …`), or a transport failure. */
export class RedisError extends Error {
  constructor(
    message: string,
    /** True when the server answered with an error reply (the connection is fine). */
    readonly fromServer: boolean,
  ) {
    super(message);
    this.name = 'RedisError';
  }
}

export interface RedisClientOptions {
  host: string;
  port: number;
  /** ACL user name (`AUTH user pass`); empty = `AUTH pass`. */
  username?: string;
  /** Empty or undefined: no AUTH. */
  password?: string;
  /** Database selected after connecting (default 0). */
  db?: number;
  /** Time to connect and to get each reply (default 5 s). */
  timeoutMs?: number;
}

/** `host:port`, `[v6]:port` or `redis://host:port` → host and port (default 6379). */
export function parseRedisAddress(addr: string): { host: string; port: number } {
  let rest = addr.trim();
  if (rest.startsWith('redis://')) rest = rest.slice('redis://'.length).replace(/\/.*$/, '');
  if (rest.includes('@')) throw new Error('the Redis address must not carry credentials');
  let host = rest;
  let portText = '';
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(rest);
  if (v6 !== null) {
    host = v6[1] ?? '';
    portText = v6[2] ?? '';
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon >= 0) {
      host = rest.slice(0, colon);
      portText = rest.slice(colon + 1);
    }
  }
  if (host === '') throw new Error(`invalid Redis address ${JSON.stringify(addr)}: no host`);
  const port = portText === '' ? 6379 : Number(portText);
  if (!/^\d{0,5}$/.test(portText) || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid Redis address ${JSON.stringify(addr)}: bad port`);
  }
  return { host, port };
}

/** Encodes one command as a RESP array of bulk strings. */
export function encodeCommand(args: readonly (string | number)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.from(String(a), 'utf8');
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** A reply or an error reply, as the parser yields them. */
type Parsed = { ok: true; value: RedisReply } | { ok: false; error: string };

const INCOMPLETE = Symbol('incomplete');

/**
 * Incremental RESP2 parser: feed bytes, take complete replies. Error
 * replies nested in an array (EXEC results) become RedisError values.
 */
export class RespParser {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Parsed[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Parsed[] = [];
    for (;;) {
      const r = this.parseAt(0);
      if (r === INCOMPLETE) break;
      this.buf = this.buf.subarray(r.end);
      out.push(r.parsed);
    }
    return out;
  }

  private line(at: number): { text: string; next: number } | typeof INCOMPLETE {
    const end = this.buf.indexOf('\r\n', at);
    if (end < 0) return INCOMPLETE;
    return { text: this.buf.toString('utf8', at, end), next: end + 2 };
  }

  private parseAt(at: number): { parsed: Parsed; end: number } | typeof INCOMPLETE {
    if (at >= this.buf.length) return INCOMPLETE;
    const type = String.fromCharCode(this.buf[at] ?? 0);
    const l = this.line(at + 1);
    if (l === INCOMPLETE) return INCOMPLETE;
    switch (type) {
      case '+':
        return { parsed: { ok: true, value: l.text }, end: l.next };
      case '-':
        return { parsed: { ok: false, error: l.text }, end: l.next };
      case ':':
        return { parsed: { ok: true, value: Number(l.text) }, end: l.next };
      case '$': {
        const n = Number(l.text);
        if (n < 0) return { parsed: { ok: true, value: null }, end: l.next };
        if (this.buf.length < l.next + n + 2) return INCOMPLETE;
        const value = this.buf.toString('utf8', l.next, l.next + n);
        return { parsed: { ok: true, value }, end: l.next + n + 2 };
      }
      case '*': {
        const n = Number(l.text);
        if (n < 0) return { parsed: { ok: true, value: null }, end: l.next };
        const items: RedisReply[] = [];
        let pos = l.next;
        let firstError: string | undefined;
        for (let i = 0; i < n; i++) {
          const r = this.parseAt(pos);
          if (r === INCOMPLETE) return INCOMPLETE;
          pos = r.end;
          if (r.parsed.ok) items.push(r.parsed.value);
          else {
            firstError ??= r.parsed.error;
            items.push(null);
          }
        }
        if (firstError !== undefined) return { parsed: { ok: false, error: firstError }, end: pos };
        return { parsed: { ok: true, value: items }, end: pos };
      }
      default:
        throw new RedisError(`unexpected RESP type byte ${JSON.stringify(type)}`, false);
    }
  }
}

interface Pending {
  resolve: (value: RedisReply) => void;
  reject: (err: Error) => void;
}

/** A Redis connection with pipelining, reconnect-on-use, AUTH and SELECT. */
export class RedisClient {
  private socket: Socket | undefined;
  private ready: Promise<Socket> | undefined;
  private readonly pending: Pending[] = [];
  private parser = new RespParser();
  private closed = false;
  private readonly timeoutMs: number;

  constructor(private readonly o: RedisClientOptions) {
    this.timeoutMs = o.timeoutMs ?? 5_000;
  }

  /** Sends one command and resolves with its reply; an error reply rejects with RedisError. */
  async command(args: readonly (string | number)[]): Promise<RedisReply> {
    const [reply] = await this.send([args]);
    return reply ?? null;
  }

  async ping(): Promise<string> {
    return String(await this.command(['PING']));
  }

  async set(key: string, value: string): Promise<void> {
    await this.command(['SET', key, value]);
  }

  /** Deletes keys; resolves with how many existed. */
  async del(keys: readonly string[]): Promise<number> {
    if (keys.length === 0) return 0;
    return Number(await this.command(['DEL', ...keys]));
  }

  /** Every key matching a glob pattern (SCAN with MATCH until the cursor is back at 0). */
  async scanAll(match: string, count = 500): Promise<string[]> {
    const found = new Set<string>();
    let cursor = '0';
    // SCAN guarantees termination; the bound only guards against a misbehaving server.
    for (let round = 0; round < 1_000_000; round++) {
      const reply = await this.command(['SCAN', cursor, 'MATCH', match, 'COUNT', count]);
      if (!Array.isArray(reply) || reply.length !== 2 || !Array.isArray(reply[1])) {
        throw new RedisError('unexpected SCAN reply', false);
      }
      cursor = String(reply[0]);
      for (const k of reply[1]) if (typeof k === 'string') found.add(k);
      if (cursor === '0') return [...found];
    }
    throw new RedisError('SCAN did not finish', false);
  }

  /**
   * Runs the commands in one MULTI/EXEC transaction, written to the socket
   * in one piece so no other command can interleave. Resolves with EXEC's
   * replies; an error queuing or running any command rejects.
   */
  async transaction(commands: readonly (readonly (string | number)[])[]): Promise<RedisReply[]> {
    if (commands.length === 0) return [];
    const replies = await this.send([['MULTI'], ...commands, ['EXEC']], true);
    const exec = replies[replies.length - 1];
    if (!Array.isArray(exec)) throw new RedisError('transaction aborted (EXEC returned nil)', true);
    return exec;
  }

  /** Closes the connection; later commands fail. */
  async close(): Promise<void> {
    this.closed = true;
    const s = this.socket;
    this.fail(new RedisError('redis client closed', false));
    if (s !== undefined && !s.destroyed) {
      await new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.end();
        setTimeout(() => s.destroy(), 1_000).unref();
      });
    }
  }

  private async connection(): Promise<Socket> {
    if (this.closed) throw new RedisError('redis client closed', false);
    if (this.socket !== undefined && !this.socket.destroyed && this.ready !== undefined) {
      return this.ready;
    }
    this.ready ??= this.open();
    try {
      return await this.ready;
    } catch (err) {
      this.ready = undefined;
      throw err;
    }
  }

  private open(): Promise<Socket> {
    return new Promise<Socket>((resolve, reject) => {
      const socket = connect({ host: this.o.host, port: this.o.port });
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new RedisError(`connect to ${this.o.host}:${this.o.port} timed out`, false));
      }, this.timeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          new RedisError(
            `cannot connect to Redis at ${this.o.host}:${this.o.port}: ${err.code ?? err.message}`,
            false,
          ),
        );
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        this.socket = socket;
        this.parser = new RespParser();
        socket.on('data', (chunk: Buffer) => this.onData(chunk));
        socket.on('error', () => {
          // Reported through 'close'.
        });
        socket.on('close', () => {
          if (this.socket === socket) {
            this.socket = undefined;
            this.ready = undefined;
          }
          this.fail(new RedisError('connection to Redis closed', false));
        });
        const hello: (readonly (string | number)[])[] = [];
        const password = this.o.password ?? '';
        if (password !== '') {
          const user = this.o.username ?? '';
          hello.push(user === '' ? ['AUTH', password] : ['AUTH', user, password]);
        }
        if ((this.o.db ?? 0) !== 0) hello.push(['SELECT', this.o.db ?? 0]);
        if (hello.length === 0) {
          resolve(socket);
          return;
        }
        this.write(socket, hello, false).then(
          () => resolve(socket),
          (err: unknown) => {
            socket.destroy();
            const msg = err instanceof Error ? err.message : String(err);
            // AUTH errors name no secret; keep the server's words.
            reject(new RedisError(`Redis handshake failed: ${msg}`, true));
          },
        );
      });
    });
  }

  private async send(
    commands: readonly (readonly (string | number)[])[],
    atomic = false,
  ): Promise<RedisReply[]> {
    const socket = await this.connection();
    return this.write(socket, commands, atomic);
  }

  /** Writes commands in one piece and waits for all their replies. */
  private write(
    socket: Socket,
    commands: readonly (readonly (string | number)[])[],
    atomic: boolean,
  ): Promise<RedisReply[]> {
    const waits = commands.map(
      () =>
        new Promise<RedisReply>((resolve, reject) => {
          this.pending.push({ resolve, reject });
        }),
    );
    socket.write(Buffer.concat(commands.map((c) => encodeCommand(c))));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(new RedisError(`Redis did not answer within ${this.timeoutMs} ms`, false));
        // Replies still owed would be matched to the wrong commands: start over.
        socket.destroy();
      }, this.timeoutMs);
    });
    // In a transaction, a queuing error shows again as EXECABORT on EXEC: report the first one.
    const all = atomic
      ? Promise.allSettled(waits).then((results) => {
          const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
          if (bad !== undefined) throw bad.reason;
          return results.map((r) => (r as PromiseFulfilledResult<RedisReply>).value);
        })
      : Promise.all(waits);
    return Promise.race([all, timeout]).finally(() => clearTimeout(timer));
  }

  private onData(chunk: Buffer): void {
    let parsed: Parsed[];
    try {
      parsed = this.parser.push(chunk);
    } catch (err) {
      this.socket?.destroy();
      this.fail(err instanceof Error ? err : new RedisError(String(err), false));
      return;
    }
    for (const p of parsed) {
      const waiter = this.pending.shift();
      if (waiter === undefined) continue;
      if (p.ok) waiter.resolve(p.value);
      else waiter.reject(new RedisError(p.error, true));
    }
  }

  private fail(err: Error): void {
    for (const p of this.pending.splice(0)) p.reject(err);
  }
}
