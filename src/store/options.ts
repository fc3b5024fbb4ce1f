import type { ChunkerParams } from '../chunker/params.js';
import type { ObjectStoreOptions } from '../bucket/options.js';

export interface StoreOptions {
  /** Chunker parameters for a new store (an existing store keeps its own; asking for others is an error). */
  chunker?: Partial<ChunkerParams>;
  /** A writer seals its fragment and writes a durable checkpoint every this many new bytes (default 64 MiB). */
  fragmentSize?: number;
  /**
   * Bring the chunk index up to date with the descriptors on open (default
   * true). fsck opens with false, to report what it finds rather than have
   * open mend it silently. In a store opened with it, `fsck()` catches up a
   * blob whose writer died since (the index behind its descriptor, as the
   * next open would) and reports only what still disagrees.
   */
  catchUpIndex?: boolean;
  /**
   * Create the store if the directory is new or empty (default true). With
   * false, a missing or empty directory is ERR_BAD_STORE (data.reason
   * 'absent') and nothing is created. Either way a directory that holds
   * other files and no store is ERR_BAD_STORE (data.reason 'not-empty'):
   * it is never turned into a store; a file in its place (or above it),
   * data.reason 'not-a-directory'.
   */
  create?: boolean;
  /**
   * Keep the fragments in an S3 bucket, shared with the other stores
   * opened on it (README, "Stores on one bucket"): cas/ becomes a cache and
   * finalized blobs are published. Recorded in cabstore.json when first
   * given: later opens may leave it out.
   */
  objectStore?: ObjectStoreOptions;
}

export const DEFAULT_FRAGMENT_SIZE = 64 * 1024 * 1024;

/** What `stat` tells of a blob: its durable state, as its descriptor records it. */
export interface BlobStat {
  /** Bytes durably appended (all of them, once finalized). */
  size: number;
  finalized: boolean;
  /** The BEP 52 blob hash, once finalized. */
  hash?: Uint8Array;
  /** Byte ranges [start, end) that fsck --repair recorded as lost, and why; absent when none. */
  damaged?: Array<{ start: number; end: number; why: string }>;
}
