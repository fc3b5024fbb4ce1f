import type net from 'node:net';
import { CabError } from '../errors.js';

/** Connections open on the server's port at once, of every kind (WebSocket and HTTP, welcomed or not). */
export const DEFAULT_MAX_CONNECTIONS = 256;
/** Connections that have not been welcomed yet (no hello, or not answered), over the whole server. */
export const DEFAULT_MAX_PENDING = 64;
/** A connection must be welcomed within this long of connecting. */
export const DEFAULT_HELLO_TIMEOUT_MS = 10_000;
/** Failed token tries one address may make per window before it is refused. */
export const DEFAULT_MAX_AUTH_FAILURES = 10;
export const DEFAULT_AUTH_FAILURE_WINDOW_MS = 60_000;
/** Addresses remembered for their failures; past this, those that have earned all their tries back are forgotten, then the oldest. */
const MAX_ADDRESSES = 10_000;
/** After asking a connection to close, how long it has to do so before it is destroyed. */
const CLOSE_GRACE_MS = 1000;

export interface AdmissionOptions {
  /**
   * At most this many connections open on the port at once (default 256):
   * WebSocket sessions, HTTP connections, and those not yet welcomed. One
   * more is refused with ERR_TOO_MANY_REQUESTS (its upgrade gets `err` and
   * close 1013, its HTTP request 503 with Retry-After); a slot frees when a
   * connection closes.
   */
  maxConnections?: number;
  /** At most this many connections not yet welcomed at once; more are closed on arrival (default 64). */
  maxPending?: number;
  /** A connection not welcomed this long after it connected is closed (default 10 s). */
  helloTimeoutMs?: number;
  /** Failed token tries (unknown or missing token) one address may make per window (default 10). */
  maxAuthFailures?: number;
  /** The window of maxAuthFailures (default 60 s); tries come back at maxAuthFailures per window. */
  authFailureWindowMs?: number;
}

/** What a peer needs to ask before it checks a token from its address, and to report a failed one. */
export interface AuthGate {
  /** False while the address has used up its failed tries. */
  mayTry(): boolean;
  failed(): void;
}

interface Pending {
  socket: net.Socket;
  timer: NodeJS.Timeout;
  /** Came when maxConnections were open, and has not taken a slot since: each request on it is told so. */
  refused: boolean;
  /** Says why to the peer on this socket, if it has one yet. */
  tellExpired?: () => void;
}

/**
 * Who may hold a connection, and who may try a token. Every connection
 * holds a slot of maxConnections until it closes. Before hello a connection
 * costs the server without any credential, so those are capped in number
 * and in time; and an address that keeps presenting bad tokens is refused
 * for a while, so tokens cannot be guessed at the speed of the wire.
 *
 *   TCP accept --(over maxPending)--> closed at once
 *       |--(maxConnections open)--> refused: each request told so while all are still open; one that finds a slot
 *       |                           free takes it (and goes on as any other); still pending, so closed at the deadline
 *       |--(welcomed)--> admitted: no longer pending, no deadline, holds its slot till it closes
 *       |                    +--(HTTP-welcomed, then upgraded to WebSocket)--> pending again, a new deadline
 *       +--(helloTimeoutMs)--> told why (if it speaks WebSocket), closed
 */
export class Admission {
  readonly #maxPending: number;
  readonly #maxOpen: number;
  /** Connections holding a slot of maxConnections (all but the refused). */
  #open = 0;
  readonly #helloMs: number;
  readonly #maxFailures: number;
  readonly #windowMs: number;
  /** By "address:port", which names one live connection on either side of TLS. */
  readonly #pending = new Map<string, Pending>();
  /** Per address: failed tries still allowed (refilled over time), as of `at`. */
  readonly #allowance = new Map<string, { left: number; at: number }>();

  constructor(o: AdmissionOptions = {}) {
    this.#maxPending = o.maxPending ?? DEFAULT_MAX_PENDING;
    this.#maxOpen = o.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.#helloMs = o.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS;
    this.#maxFailures = o.maxAuthFailures ?? DEFAULT_MAX_AUTH_FAILURES;
    this.#windowMs = o.authFailureWindowMs ?? DEFAULT_AUTH_FAILURE_WINDOW_MS;
  }

  /** Connections not yet welcomed. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Connections holding a slot (at most maxConnections). */
  get open(): number {
    return this.#open;
  }

  /**
   * A TCP connection arrived: counted and given its deadline, or closed if
   * too many are waiting; refused (to be told so) if maxConnections are open.
   */
  accept(socket: net.Socket): void {
    const key = keyOf(socket);
    if (this.#pending.size >= this.#maxPending || key === undefined) {
      socket.destroy();
      return;
    }
    const p = this.#wait(socket, key, this.#open >= this.#maxOpen);
    if (!p.refused) this.#open++;
    socket.once('close', () => {
      if (!p.refused) this.#open--;
    });
  }

  /** Puts `socket` on the pending list, its hello deadline helloTimeoutMs from now. */
  #wait(socket: net.Socket, key: string, refused: boolean): Pending {
    const p: Pending = { socket, refused, timer: setTimeout(() => this.#expire(p), this.#helloMs) };
    p.timer.unref();
    this.#pending.set(key, p);
    socket.once('close', () => {
      clearTimeout(p.timer);
      if (this.#pending.get(key) === p) this.#pending.delete(key);
    });
    return p;
  }

  /**
   * Whether `socket`, which came when maxConnections were open, is still
   * refused: asked at each of its requests, so that a client retrying on its
   * keep-alive connection (after Retry-After, as fetch does) takes a slot
   * that has freed since. A refused request is answered ERR_TOO_MANY_REQUESTS.
   */
  refused(socket: net.Socket): boolean {
    const p = this.#pending.get(keyOf(socket) ?? '');
    if (p?.refused !== true) return false;
    if (this.#open >= this.#maxOpen) return true;
    p.refused = false;
    this.#open++;
    return false;
  }

  /** The error a refused connection is told. */
  busy(): CabError {
    return new CabError('ERR_TOO_MANY_REQUESTS', `the server has ${this.#maxOpen} connections open, as many as it takes: try again later`);
  }

  /**
   * The connection speaks WebSocket now: at its deadline, `tellExpired` says
   * why before it is closed. One an HTTP request welcomed (a good token) is
   * not welcomed as a WebSocket: it waits for its hello again, with a new
   * deadline (and closed at once if maxPending wait), or it held its slot
   * for good by saying nothing.
   */
  upgraded(socket: net.Socket, tellExpired: () => void): void {
    const key = keyOf(socket);
    if (key === undefined) return;
    let p = this.#pending.get(key);
    if (!p) {
      if (this.#pending.size >= this.#maxPending) {
        socket.destroy();
        return;
      }
      p = this.#wait(socket, key, false);
    }
    p.tellExpired = tellExpired;
  }

  /** The connection was welcomed: it no longer counts, and has no deadline. */
  welcomed(socket: net.Socket): void {
    const key = keyOf(socket) ?? '';
    const p = this.#pending.get(key);
    if (!p || p.refused) return;
    clearTimeout(p.timer);
    this.#pending.delete(key);
  }

  #expire(p: Pending): void {
    p.tellExpired?.();
    p.socket.end();
    setTimeout(() => p.socket.destroy(), CLOSE_GRACE_MS).unref();
  }

  /** The token gate for connections from `address`. */
  gate(address: string): AuthGate {
    return {
      mayTry: () => this.#left(address) >= 1,
      failed: () => {
        const left = this.#left(address) - 1;
        this.#allowance.delete(address); // re-inserted last: the map is in order of last failure
        this.#allowance.set(address, { left, at: Date.now() });
        this.#forget();
      },
    };
  }

  /** Failed tries `address` may still make, earned back at maxFailures per window. */
  #left(address: string): number {
    const a = this.#allowance.get(address);
    if (!a) return this.#maxFailures;
    return Math.min(this.#maxFailures, a.left + ((Date.now() - a.at) * this.#maxFailures) / this.#windowMs);
  }

  #forget(): void {
    if (this.#allowance.size <= MAX_ADDRESSES) return;
    for (const address of this.#allowance.keys()) if (this.#left(address) >= this.#maxFailures) this.#allowance.delete(address);
    for (const address of this.#allowance.keys()) {
      if (this.#allowance.size <= MAX_ADDRESSES) break;
      this.#allowance.delete(address);
    }
  }

  /** Closes every connection not yet welcomed (the server is closing). */
  close(): void {
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.socket.destroy();
    }
    this.#pending.clear();
  }
}

function keyOf(socket: net.Socket): string | undefined {
  return socket.remoteAddress === undefined ? undefined : `${socket.remoteAddress}:${socket.remotePort}`;
}
