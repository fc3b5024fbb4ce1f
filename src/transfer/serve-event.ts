import type { CabError, ErrorCode } from '../errors.js';
import type { Message } from './messages.js';
import type { WireCount } from './stats.js';

/**
 * What one connection to a server did, told to `ServeOptions.onEvent` when
 * it ends. A client command (pull, push, stat) is one connection, so one
 * event; a program that keeps a connection for many transfers gets one
 * event for all of them.
 */
export interface ServeEvent {
  /** The other end, "address:port". */
  peer: string;
  /**
   * The most it did: 'push' (it sent a blob), 'pull' (it listed or read a
   * blob's chunks), 'stat' (it only asked about blobs: a pull of a blob it
   * already had is one stat), or 'connect' (no request: refused, or idle).
   */
  op: 'push' | 'pull' | 'stat' | 'connect';
  /** Blobs it named (stat, list, push), in order, the first 16. */
  blobs: string[];
  /** Chunk bytes sent to it (its pulls). */
  bytesSent: number;
  /** Chunk bytes received from it (its pushes). */
  bytesReceived: number;
  /**
   * Bytes of the WebSocket messages sent to it and received from it, the
   * protocol's included: what CabClient.wire counts at the other end.
   */
  wire: WireCount;
  /** When it connected (ms since the epoch), and for how long, in ms. */
  start: number;
  ms: number;
  /**
   * Absent if all went well; else the code of the first request that
   * failed, or of why the connection ended (ERR_AUTH, ERR_IDLE_TIMEOUT,
   * ERR_PROTOCOL, ERR_CONNECTION if it dropped without closing,
   * ERR_TOO_MANY_REQUESTS if it came when maxConnections were open).
   */
  error?: ErrorCode;
}

/** Blob names a ServeEvent keeps. */
const EVENT_BLOBS = 16;
const RANK = { connect: 0, stat: 1, pull: 2, push: 3 } as const;

/** The running account of one connection, for its ServeEvent. */
export class ServeAccount {
  readonly #start = Date.now();
  #op: ServeEvent['op'] = 'connect';
  readonly #blobs: string[] = [];
  #error: ErrorCode | undefined;
  bytesSent = 0;
  bytesReceived = 0;
  /** The connection's frame bytes, counted by its transport (none without one). */
  wire: WireCount = { sent: 0, received: 0 };

  /** A request came: what it does, and the blob it names. */
  note(m: Message): void {
    const op = m.t === 'stat' ? 'stat' : m.t === 'push' ? 'push' : 'pull';
    if (RANK[op] > RANK[this.#op]) this.#op = op;
    if ('name' in m && typeof m.name === 'string' && this.#blobs.length < EVENT_BLOBS && !this.#blobs.includes(m.name)) this.#blobs.push(m.name);
  }

  /** A request failed: the first such code is the event's error. */
  failed(code: ErrorCode): void {
    this.#error ??= code;
  }

  /** The event, now that the connection is over; `ended` is why, if not a clean close. */
  event(peer: string, ended: CabError | undefined): ServeEvent {
    const error = this.#error ?? ended?.code;
    return {
      peer,
      op: this.#op,
      blobs: [...this.#blobs],
      bytesSent: this.bytesSent,
      bytesReceived: this.bytesReceived,
      wire: { ...this.wire },
      start: this.#start,
      ms: Date.now() - this.#start,
      ...(error ? { error } : {}),
    };
  }
}
