import { CabError, ERROR_CODES, type ErrorCode } from '../errors.js';
import type { BlobStore } from '../store.js';
import type { AuthOptions } from './handshake.js';
import type { ByteBudget } from './budget.js';
import type { WireCount } from './stats.js';
import type { Message } from './messages.js';

export interface PushOptions {
  /** Cancels this push only: it rejects with ERR_ABORTED, the server is told to stop (`cancel`), other transfers go on. */
  signal?: AbortSignal;
}

export interface PushResult {
  name: string;
  /** The blob hash (BEP 52); hex in JSON. */
  hash: Uint8Array;
  /** Chunk bytes the server fetched from us. */
  received: number;
  /** Bytes the server took from its own blobs. */
  reused: number;
}

/** Turns an `err` message into a CabError with the remote's code when it is one of ours. */
export function remoteError(m: { code: string; msg: string }): CabError {
  const code = (Object.hasOwn(ERROR_CODES, m.code) ? m.code : 'ERR_REMOTE') as ErrorCode;
  // The peer's message already starts with its code: say it once ("ERR_AUTH: peer: this server needs a token").
  const msg = m.msg.startsWith(`${m.code}: `) ? m.msg.slice(m.code.length + 2) : m.msg;
  return new CabError(code, `peer: ${msg}`, { remote: true, found: m.code });
}

/** What a session needs from a transport (a WebSocket, or anything that carries frames in order). */
export interface Transport {
  /**
   * Sends one frame. Resolves when the transport can take more (under its
   * high-water mark: backpressure). `onWritten` is called once the frame has
   * left the process, or failed to (so that whoever holds its memory can let
   * go); not if the send rejects at once, the connection being closed.
   */
  send(frame: Uint8Array, options?: { onWritten?: () => void }): Promise<void>;
  /**
   * Closes the connection, telling the other end `code` and `reason`.
   * `silent`: the other end has answered nothing for the idle wait, so it
   * will not answer the close either: the connection goes once the close is
   * handed to the socket, not after a wait for the other end's (ws waits
   * 30 s, holding a slot of maxConnections).
   */
  close(code: number, reason: string, silent?: boolean): void;
  /** Bytes of frames read from the connection so far, whole or not (a frame of one 4 MiB chunk takes a while on a slow link); control frames (pings, pongs) do not count. */
  bytesRead?(): number;
  /** Bytes of frames handed to `send` so far, written or still buffered (the other end answers them only once they reach it). */
  bytesSent?(): number;
  /** Asks the other end for a sign of life (its pong goes to Peer.onPong); false if it could not be sent. */
  ping?(): boolean;
}

export interface PeerOptions extends AuthOptions {
  store: BlobStore;
  role: 'server' | 'client';
  /**
   * Client: a connection the hello has gone on (dial.ts): the server's
   * welcome, the first request id free, and the requests sent before, whose
   * answers this peer takes from now on.
   */
  welcomed?: {
    welcome: Extract<Message, { t: 'welcome' }>;
    nextId: number;
    pending: Map<number, { resolve: (m: Message) => void; reject: (e: Error) => void }>;
    /** The answer to request `m` if the dial sent it ahead (undefined once it is in: it may no longer hold, ask again): each taken once. */
    early(m: Message): Promise<Message | undefined> | undefined;
  };
  /** Requests a peer may have outstanding here before it is cut off (server). */
  maxRequests?: number;
  /** Close a connection that sends nothing for this long (a server), or, with requests outstanding, answers nothing (a client); while the peer's silence is no fault (see Peer #slow), a pong to a ping will do. Default DEFAULT_IDLE_MS. */
  idleMs?: number;
  /** A name for the other side (signposts). */
  label?: string;
  /** The largest frame this end accepts (its transport's limit); it bounds the gets it sends. */
  maxFrame?: number;
  /**
   * Bytes of `data` frames being read or waiting to be written, shared with
   * other connections (a server's); a frame waits for its bytes. Default:
   * this connection's own, as much as it may have ahead (SERVE_AHEAD_BYTES).
   */
  getBudget?: ByteBudget;
  /** The transport's count of frame bytes (for a server's ServeEvent). */
  wire?: WireCount;
}
