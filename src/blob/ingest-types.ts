// The types of the write path (src/blob/ingest.ts): what a block is made of,
// and what a checkpoint takes from it.
import type { MerkleState } from '../hash/merkle.js';
import type { FragmentWriter } from '../disk/fragments.js';
import type { Extent, ExtentMap } from '../format/extents.js';

/**
 * A piece of a chunk: bytes of our own to write, a range of a block the
 * hashing thread holds (`held`: its number), or a range already stored.
 */
export type Part = { lit: Uint8Array } | { held: number; off: number; len: number } | { ext: Extent };

/** A chunk cut by the chunker, waiting for its hash to say whether it is stored already. */
export interface CutChunk {
  parts: Part[];
  size: number;
  /** Its first bytes already in extents (a checkpoint came in the middle of it): it is written, not deduplicated. */
  committed: number;
  /** Its hash, when the caller checked it; otherwise the hashing thread's answer number `idx`. */
  known: Uint8Array | undefined;
  idx: number;
}

/** A block handed to the hashing thread: the chunks that end in it, decided once their hashes are in. */
export interface PendingBlock {
  hold: number;
  /** Its length in bytes. */
  size: number;
  hashes: Promise<Uint8Array>;
  chunks: CutChunk[];
}

/** An extent not yet in a record; `frag` null means the fragment being written. */
export interface NewExtent {
  frag: string | null;
  offset: number;
  size: number;
}

/** Where the bytes of a block come from when they are already stored: that blob's extents, from `offset`. */
export interface BlockSource {
  extents: ExtentMap;
  offset: number;
}

/**
 * Ranges of a block whose bytes are stored already, in block order and not
 * overlapping: `size` bytes at `at` in the block are `src`'s. The rest of
 * the block is new bytes.
 */
export type BlockRefs = ReadonlyArray<{ at: number; size: number; src: BlockSource }>;

/** Everything appended since the last record, handed to a checkpoint (see Ingest.take). */
export interface Taken {
  /** The fragment being written, if any, and when the hashing thread has written all of it. */
  frag: FragmentWriter | null;
  fragWritten: Promise<void> | undefined;
  /** The merkle state, and with `final` the blob hash, for exactly the bytes sent so far. */
  state: Promise<MerkleState>;
  digest: Promise<Uint8Array> | undefined;
  extents: NewExtent[];
  chunks: Array<[Uint8Array, number]>;
  size: number;
  /** Where the chunks of this record start. */
  chunkOffset: number;
  /** The SHA-256 of the open chunk's bytes so far (from the last chunk boundary to `size`), if any. */
  openHash: Promise<Uint8Array> | undefined;
}
