import { CabError } from '../errors.js';
import type { ChunkerParams } from '../chunker/params.js';
import { FIRST_LIST_PAGE, MAX_LIST, type GetItem, type WireChunk } from './messages.js';

/** Where `receive` gets a blob from: a peer over a connection, or a bundle. */
export interface RemoteSource {
  label: string;
  /** The most bytes one `get` may ask for (default MAX_GET_BYTES). */
  maxGetBytes?: number;
  /**
   * The source's chunker, when it cuts the chunks it sends: where it is
   * ours, its chunks are not cut again, and their hashes are checked by the
   * writer's hashing thread rather than on arrival (BlobWriter.appendVerified).
   */
  chunker?: ChunkerParams;
  /** With `after` (a follower; peers only): answers once the blob's recorded chunks end past that byte, it is finalized, or a while has passed. */
  stat(name: string, after?: number): Promise<{ size: number; finalized: boolean; hash?: Uint8Array }>;
  /** The blob's chunks from number `from`, a page at a time (of at most `max`, if given and the source heeds it). */
  list(name: string, from: number, max?: number): Promise<{ chunks: WireChunk[]; end: boolean }>;
  /**
   * Whether the blob's first `n` chunks are those `digest` sums up
   * (ListDigest), checked by the source without sending them. Absent: the
   * list is read and compared here (bundles, whose lists cost no wire).
   */
  match?(name: string, n: number, digest: Uint8Array): Promise<boolean>;
  /** The chunk cut again by the fine chunker: [SHA-256, size] of each piece. Absent: no fine matching (bundles). */
  fine?(hash: Uint8Array, size: number): Promise<WireChunk[]>;
  /** Byte ranges of chunks, in order. */
  get(items: GetItem[]): Promise<Uint8Array[]>;
  /**
   * The same, handed to `take` as they arrive, a few at a time, in order;
   * resolves once all have been. Items that arrived before a failure have
   * been taken. Absent: `get` (the items arrive all at once).
   */
  stream?(items: GetItem[], take: Take): Promise<void>;
  /** Bytes that have arrived from the source so far, whole answers or not (a peer's connection): while they grow, it is not stalled. */
  bytesRead?(): number;
}

/**
 * Takes a get's items as they arrive (RemoteSource.stream). `place`, if
 * there, says where item `k` of the frame now arriving (`len` bytes) is to
 * be written, or undefined: a transport that reads frames itself writes it
 * there as it comes, and hands over that place as the item (one copy out of
 * the socket's buffers, not two). `placing()`: whether the places given are
 * still wanted (asked before each write into one).
 */
export type Take = ((items: Uint8Array[]) => void) & { place?(k: number, len: number): Uint8Array | undefined; placing?(): boolean };

/** A chunk of the sender's list, with its offset in the blob. */
export interface RemoteChunk {
  hash: Uint8Array;
  size: number;
  offset: number;
}

/** Bytes a receiver asks for in one `get` (less if the source says so). */
export const GET_BYTES = 1024 * 1024;

export function getBytes(src: RemoteSource): number {
  return Math.min(GET_BYTES, src.maxGetBytes ?? GET_BYTES);
}

/** Where in a sender's chunk list to start reading: chunk number `from`, which starts at byte `offset` of the blob. */
export interface ListStart {
  from: number;
  offset: number;
}

/**
 * The sender's chunk list of blob `name` (of `size` bytes), a page at a
 * time, the next page asked for while this one is used; from its start, or
 * from `start`. ERR_PROTOCOL if the list does not cover the blob exactly
 * (checked once it is read to the end).
 */
export async function* remoteChunks(src: RemoteSource, name: string, total: number, start: ListStart = { from: 0, offset: 0 }): AsyncGenerator<RemoteChunk> {
  let { from, offset } = start;
  // Pages grow from FIRST_LIST_PAGE: the same sizes from the same start, whoever reads (sharedListPages relies on it).
  let max = FIRST_LIST_PAGE;
  let next = src.list(name, from, max);
  for (;;) {
    const page = await next;
    from += page.chunks.length;
    if (!page.end) {
      max = Math.min(MAX_LIST, 2 * max);
      next = src.list(name, from, max);
      next.catch(() => {}); // awaited in turn; a caller that stops early must not leave it unhandled
    }
    for (const [hash, size] of page.chunks) {
      // Caught as it goes: a list running past the size announced would have us write (or hand out) without end.
      if (offset + size > total) throw new CabError('ERR_PROTOCOL', `the chunk list runs past the ${total} bytes announced`, { blob: name });
      yield { hash, size, offset };
      offset += size;
    }
    if (page.end || page.chunks.length === 0) break;
  }
  if (offset !== total) throw new CabError('ERR_PROTOCOL', `the chunk list covers ${offset} bytes of ${total}`, { blob: name });
}
