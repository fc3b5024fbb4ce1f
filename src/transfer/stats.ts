import { toHex } from '../hash/sha256.js';

export interface TransferProgress {
  /** Blob size. */
  size: number;
  /**
   * Bytes an earlier, interrupted transfer left here and this one kept: it
   * started there. The blob holds resumedFrom + verifiedBytes bytes so far.
   */
  resumedFrom: number;
  /** Bytes the receiver lacked (to fetch). */
  neededBytes: number;
  /** Bytes taken from local blobs (whole chunks or fine pieces). */
  reusedBytes: number;
  /** Chunk payload bytes received. */
  receivedBytes: number;
  /** Bytes appended so far, each checked against its hash. */
  verifiedBytes: number;
}

export interface TransferStats extends TransferProgress {
  name: string;
  hash: Uint8Array;
  /** The receiver already had the blob: one round trip. */
  alreadyHad: boolean;
  chunksFetched: number;
  /** The receiver held the blob with damage recorded by fsck: the bytes of damage the transfer healed. */
  healedBytes: number;
}

export interface ReceiveOptions {
  /**
   * Called as the transfer goes (first as it starts, with where it resumed
   * from); every count in it is a running total since the transfer began.
   */
  onProgress?: (p: TransferProgress) => void;
  /** Cancels; what is written stays, unfinalized and resumable. */
  signal?: AbortSignal;
  /** The sender's name, for the blob's signpost. */
  label?: string;
  /** What the sender announced (push): checked against its stat. */
  expect?: { size: number; hash: Uint8Array };
  /** A sender that owes answers and sends nothing for this long fails the transfer with ERR_IDLE_TIMEOUT (what landed stays, resumable). Default DEFAULT_STALL_MS (30 s). */
  stallMs?: number;
}

function hexJSON(this: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(this).map(([k, v]) => [k, v instanceof Uint8Array ? toHex(v) : v]));
}

/**
 * Gives a result object a `toJSON` (not enumerable: copies and equality
 * ignore it) that writes its byte fields, hashes, as lowercase hex; without
 * it JSON.stringify makes a Uint8Array a map of indexes and a Buffer a
 * {type, data} object.
 */
export function withHexJSON<T extends object>(o: T): T {
  Object.defineProperty(o, 'toJSON', { value: hexJSON, enumerable: false, configurable: true, writable: true });
  return o;
}

/** A remote blob's stat, as CabClient.stat and Dial.stat give it. */
export interface RemoteStat {
  size: number;
  finalized: boolean;
  hash?: Uint8Array;
}

/** A `statr` answer as a RemoteStat: the hash as the library hands every hash out, a plain Uint8Array (the decoder gives a Buffer). */
export function remoteStat(r: { size: number; fin: boolean; hash?: Uint8Array }): RemoteStat {
  return withHexJSON({ size: r.size, finalized: r.fin, ...(r.hash ? { hash: Uint8Array.from(r.hash) } : {}) });
}

/** Application bytes (frame payloads) sent and received on one connection. */
export interface WireCount {
  sent: number;
  received: number;
}
