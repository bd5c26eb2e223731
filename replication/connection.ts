import net from 'node:net';
import { ScramClient } from './scram.js';
import { createHash } from 'node:crypto';

/**
 * Where and how to connect. `replication: 'true'` opens a physical walsender connection. A `host` that starts
 * with `/` is a folder holding the server's Unix socket (`<host>/.s.PGSQL.<port>`), as in libpq.
 */
export interface ConnectOptions {
  host: string;
  port: number;
  user: string;
  password?: string;
  database?: string;
  replication?: 'true' | 'database';
  applicationName?: string;
  connectTimeoutMs?: number;
  /**
   * Read the socket into one buffer of this many bytes, reused for every read, instead of a new buffer per read
   * and Node's stream machinery (a WAL stream reads thousands of times a second). A payload handed to a handler
   * is then valid only until the end of the batch it came in (see {@link WireConnection.copyBoth}): copy what
   * must outlive it.
   */
  readBuffer?: number;
}

/** An ErrorResponse from the server, with its SQLSTATE. */
export class PgError extends Error {
  readonly code: string;
  readonly severity: string;
  readonly detail?: string;

  constructor(fields: Record<string, string>) {
    super(fields.M ?? 'unknown server error');
    this.name = 'PgError';
    this.code = fields.C ?? '';
    this.severity = fields.S ?? fields.V ?? 'ERROR';
    this.detail = fields.D;
  }
}

/** The result of a simple query: column names, raw column values (text format), the command tag. */
export interface QueryResult {
  fields: string[];
  rows: (Buffer | null)[][];
  command: string;
}

/** Rows of a result as objects of strings. */
export function textRows(result: QueryResult): Record<string, string | null>[] {
  return result.rows.map((row) => Object.fromEntries(result.fields.map((field, i) => [field, row[i]?.toString('utf8') ?? null])));
}

type Handler = (type: number, body: Buffer) => void;

const PROTOCOL_3_0 = 196608;
const EMPTY = Buffer.alloc(0);

/**
 * A minimal frontend of the Postgres wire protocol (v3): startup and authentication (SCRAM-SHA-256, MD5,
 * cleartext), the simple query protocol, and the COPY sub-protocols that replication uses (CopyBoth for
 * START_REPLICATION, CopyOut for BASE_BACKUP). Written by hand because the streaming replication protocol is
 * exactly what client libraries leave out.
 */
export class WireConnection {
  /** ParameterStatus values the server reported (server_version, …). */
  readonly parameters: Record<string, string> = {};
  /** A message split across reads, gathered here; `pending` is its capacity, grown on demand. */
  private pending: Buffer = EMPTY;
  private pendingLength = 0;
  private handler: Handler = () => undefined;
  /** Called after the messages of one read have been handled (see {@link copyBoth}). */
  private batchEnd?: () => void;
  private closed = false;
  private copyEnded = false;
  private closeError?: Error;
  private readonly closeListeners: ((error?: Error) => void)[] = [];

  private constructor(
    private readonly socket: net.Socket,
    /** True when reads go to one reused buffer, so that a message's bytes are overwritten by the next read. */
    private readonly reusesReads = false,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () => this.fail(new Error('connection closed by the server')));
  }

  /** Connect, authenticate, and wait until the server is ready for queries. */
  static async connect(options: ConnectOptions): Promise<WireConnection> {
    const unix = options.host.startsWith('/');
    const where = unix ? `${options.host}/.s.PGSQL.${options.port}` : `${options.host}:${options.port}`;
    let connection: WireConnection | undefined;
    // With a reused buffer, Node calls back with each read instead of emitting 'data' (and allocates nothing).
    const reuse = options.readBuffer
      ? {
          onread: {
            buffer: Buffer.allocUnsafe(options.readBuffer),
            callback: (n: number, buffer: Uint8Array) => (connection?.receiveRead(buffer, n), true),
          },
        }
      : {};
    const socket = unix ? net.connect({ path: where, ...reuse }) : net.connect({ host: options.host, port: options.port, ...reuse });
    const timeout = options.connectTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => (socket.destroy(), reject(new Error(`connecting to ${where} timed out`))), timeout);
      socket.once('connect', () => (clearTimeout(timer), resolve()));
      socket.once('error', (error) => (clearTimeout(timer), reject(error)));
    });
    connection = new WireConnection(socket, !!options.readBuffer);
    await connection.startup(options);
    return connection;
  }

  /** Call `listener` once when the connection ends (with the error, if it broke). */
  onClose(listener: (error?: Error) => void): void {
    if (this.closed) listener(this.closeError);
    else this.closeListeners.push(listener);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private fail(error: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = error;
    this.batchEnd = undefined;
    this.socket.destroy();
    this.handler(0, Buffer.from(error.message));
    for (const listener of this.closeListeners.splice(0)) listener(error);
  }

  /** Close politely (Terminate), then drop the socket. */
  close(): void {
    if (this.closed) return;
    const terminate = Buffer.from([0x58, 0, 0, 0, 4]);
    this.socket.end(terminate);
    this.closed = true;
    // A command still waiting (a stream being stopped) ends now: the socket's own close is ignored from here on.
    this.handler(0, Buffer.from('connection closed'));
    this.handler = () => undefined;
    this.batchEnd = undefined;
    for (const listener of this.closeListeners.splice(0)) listener();
  }

  private receiveRead(buffer: Uint8Array, length: number): void {
    this.receive(Buffer.from(buffer.buffer, buffer.byteOffset, length));
  }

  // Messages are handled in place (a view of the read, no copy); only a message split across reads is gathered,
  // in `pending`. Then the batch ends: a handler that kept views of this read writes them out now.
  private receive(chunk: Buffer): void {
    if (this.closed) return;
    let offset = 0;
    if (this.pendingLength) {
      offset = this.completePending(chunk);
      if (offset < 0 || this.closed) return;
    }
    const length = chunk.length;
    while (length - offset >= 5) {
      const end = offset + 1 + chunk.readUInt32BE(offset + 1);
      if (end > length) break;
      this.dispatch(chunk, offset, end);
      offset = end;
      if (this.closed) return;
    }
    this.batchEnd?.();
    if (offset < length) this.append(chunk, offset, length);
  }

  /** Add the start of `chunk` to the pending message; returns where the rest begins, or -1 if it is still incomplete. */
  private completePending(chunk: Buffer): number {
    let used = 0;
    if (this.pendingLength < 5) {
      used = Math.min(5 - this.pendingLength, chunk.length);
      this.append(chunk, 0, used);
      if (this.pendingLength < 5) return -1;
    }
    const total = this.pending.readUInt32BE(1) + 1;
    const take = Math.min(total - this.pendingLength, chunk.length - used);
    this.append(chunk, used, used + take);
    if (this.pendingLength < total) return -1;
    this.pendingLength = 0;
    this.dispatch(this.pending, 0, total);
    // A handler may keep a view of it. With reused reads its batch ends before the next tail is gathered here
    // (see receive); otherwise a view may live on, so the next tail goes to a new buffer.
    if (!this.reusesReads) this.pending = EMPTY;
    return used + take;
  }

  private append(chunk: Buffer, from: number, to: number): void {
    const needed = this.pendingLength + to - from;
    if (needed > this.pending.length) {
      const known = this.pendingLength >= 5 ? this.pending.readUInt32BE(1) + 1 : 0;
      const grown = Buffer.allocUnsafe(Math.max(needed, known, 2 * this.pending.length, 256));
      this.pending.copy(grown, 0, 0, this.pendingLength);
      this.pending = grown;
    }
    chunk.copy(this.pending, this.pendingLength, from, to);
    this.pendingLength = needed;
  }

  private dispatch(buffer: Buffer, offset: number, end: number): void {
    const type = buffer[offset];
    const body = buffer.subarray(offset + 5, end);
    if (type === 0x53 /* S */) {
      const [name, value] = body.toString('utf8').split('\0');
      this.parameters[name] = value;
    } else if (type !== 0x4e /* N: notice */ && type !== 0x41 /* A: notification */) {
      this.handler(type, body);
    }
  }

  // One allocation per message: the header and the parts copied into it.
  private send(type: string | null, ...parts: Buffer[]): void {
    const head = type ? 1 : 0;
    let length = 4;
    for (const part of parts) length += part.length;
    const message = Buffer.allocUnsafe(head + length);
    if (type) message[0] = type.charCodeAt(0);
    message.writeUInt32BE(length, head);
    let at = head + 4;
    for (const part of parts) at += part.copy(message, at);
    this.socket.write(message);
  }

  private async startup(options: ConnectOptions): Promise<void> {
    const params: Record<string, string> = { user: options.user, database: options.database ?? options.user };
    if (options.replication) params.replication = options.replication;
    if (options.applicationName) params.application_name = options.applicationName;
    const version = Buffer.alloc(4);
    version.writeUInt32BE(PROTOCOL_3_0);
    const pairs = Object.entries(params).flatMap(([k, v]) => [cstring(k), cstring(v)]);
    this.send(null, version, ...pairs, Buffer.from([0]));

    let scram: ScramClient | undefined;
    await new Promise<void>((resolve, reject) => {
      this.handler = (type, body) => {
        try {
          if (type === 0) return reject(new Error(body.toString()));
          if (type === 0x45 /* E */) return reject(new PgError(errorFields(body)));
          if (type === 0x5a /* Z */) return resolve();
          if (type !== 0x52 /* R */) return;
          const code = body.readUInt32BE(0);
          const password = options.password ?? '';
          if (code === 0) return; // AuthenticationOk
          if (code === 3) return this.send('p', cstring(password));
          if (code === 5) {
            const md5 = (data: string | Buffer) => createHash('md5').update(data).digest('hex');
            return this.send('p', cstring('md5' + md5(Buffer.concat([Buffer.from(md5(password + options.user)), body.subarray(4, 8)]))));
          }
          if (code === 10) {
            const mechanisms = body.subarray(4).toString().split('\0');
            if (!mechanisms.includes('SCRAM-SHA-256')) throw new Error(`the server offers only ${mechanisms.join(', ')}`);
            scram = new ScramClient(password);
            const first = Buffer.from(scram.first());
            const length = Buffer.alloc(4);
            length.writeInt32BE(first.length);
            return this.send('p', cstring('SCRAM-SHA-256'), length, first);
          }
          if (code === 11) return this.send('p', Buffer.from(scram!.final(body.subarray(4).toString())));
          if (code === 12) return scram!.verify(body.subarray(4).toString());
          throw new Error(`unsupported authentication method (code ${code})`);
        } catch (error) {
          reject(error);
          this.fail(error as Error);
        }
      };
    });
  }

  /** Run one simple query and collect its (last) result set. */
  async query(sql: string): Promise<QueryResult> {
    return last(await this.run(sql, {}));
  }

  /**
   * Run a command that switches to CopyBoth (START_REPLICATION). `onData` receives each CopyData payload. Resolves
   * once the server has ended the copy and the command completed, with the result set that followed (the next
   * timeline after a switch), if any. `onBatchEnd` is called after the messages of each read from the socket: the
   * moment to write out what they carried in one go (with {@link ConnectOptions.readBuffer}, the payloads are
   * overwritten after it returns).
   */
  async copyBoth(sql: string, onData: (payload: Buffer) => void, onBatchEnd?: () => void): Promise<QueryResult> {
    return last(await this.run(sql, { onData, onBatchEnd, both: true }));
  }

  /**
   * Run a command that answers with CopyOut (BASE_BACKUP); payloads go to `onData`, in order. Resolves with every
   * result set the command sent (BASE_BACKUP sends its start position and tablespaces before the copy, and its end
   * position after).
   */
  copyOut(sql: string, onData: (payload: Buffer) => void): Promise<QueryResult[]> {
    return this.run(sql, { onData });
  }

  /** Stop reading from the server (backpressure: the kernel buffers fill and the server waits). */
  pause(): void {
    this.socket.pause();
  }

  /** Read from the server again after {@link pause}. */
  resume(): void {
    this.socket.resume();
  }

  /** Send a CopyData message (a standby status update during streaming). */
  sendCopyData(payload: Buffer): void {
    if (!this.closed) this.send('d', payload);
  }

  /** End our side of a CopyBoth stream; the server answers with CopyDone and completes the command. */
  endCopy(): void {
    if (this.closed || this.copyEnded) return;
    this.copyEnded = true;
    this.send('c');
  }

  private run(sql: string, copy: { onData?: (payload: Buffer) => void; onBatchEnd?: () => void; both?: boolean }): Promise<QueryResult[]> {
    if (this.closed) return Promise.reject(this.closeError ?? new Error('connection is closed'));
    this.copyEnded = false;
    this.batchEnd = copy.onBatchEnd;
    return new Promise((resolve, reject) => {
      const results: QueryResult[] = [];
      let current: QueryResult = { fields: [], rows: [], command: '' };
      let error: Error | undefined;
      this.handler = (type, body) => {
        switch (type) {
          case 0:
            return reject(new Error(body.toString()));
          case 0x54 /* T */:
            current = { fields: rowDescription(body), rows: [], command: '' };
            results.push(current);
            return;
          case 0x44 /* D */:
            current.rows.push(dataRow(body));
            return;
          case 0x43 /* C */:
            current.command = body.toString('utf8', 0, body.length - 1);
            return;
          case 0x64 /* d */:
            copy.onData?.(body);
            return;
          case 0x63 /* c: the server ended the copy; in CopyBoth our side must end too */:
            if (copy.both) this.endCopy();
            return;
          case 0x45 /* E */:
            error = new PgError(errorFields(body));
            return;
          case 0x5a /* Z */:
            this.handler = () => undefined;
            this.batchEnd = undefined;
            return error ? reject(error) : resolve(results);
          default:
            return; // I, W, H, G and the like need no answer
        }
      };
      this.send('Q', cstring(sql));
    });
  }
}

function last(results: QueryResult[]): QueryResult {
  return results[results.length - 1] ?? { fields: [], rows: [], command: '' };
}

function cstring(text: string): Buffer {
  return Buffer.from(text + '\0', 'utf8');
}

function errorFields(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let offset = 0;
  while (offset < body.length && body[offset] !== 0) {
    const end = body.indexOf(0, offset + 1);
    fields[String.fromCharCode(body[offset])] = body.toString('utf8', offset + 1, end);
    offset = end + 1;
  }
  return fields;
}

function rowDescription(body: Buffer): string[] {
  const count = body.readUInt16BE(0);
  const names: string[] = [];
  let offset = 2;
  for (let i = 0; i < count; i++) {
    const end = body.indexOf(0, offset);
    names.push(body.toString('utf8', offset, end));
    offset = end + 1 + 18;
  }
  return names;
}

function dataRow(body: Buffer): (Buffer | null)[] {
  const count = body.readUInt16BE(0);
  const values: (Buffer | null)[] = [];
  let offset = 2;
  for (let i = 0; i < count; i++) {
    const length = body.readInt32BE(offset);
    offset += 4;
    if (length < 0) values.push(null);
    else {
      values.push(Buffer.from(body.subarray(offset, offset + length)));
      offset += length;
    }
  }
  return values;
}
