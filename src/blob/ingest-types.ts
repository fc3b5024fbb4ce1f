// The types of the write path (src/blob/ingest.ts): what a block is made of,
// and what a checkpoint takes from it; and two of its steps that need no state.
import { CabError } from '../errors.js';
import type { Chunker } from '../chunker/fastcdc.js';
import { LEAF_SIZE, type MerkleState } from '../hash/merkle.js';
import type { HashJob } from '../hash/pool.js';
import { bytesEqual } from '../hash/sha256.js';
import { readExtents } from '../disk/blob-bytes.js';
import type { FragmentFiles, FragmentWriter } from '../disk/fragments.js';
import type { Descriptor } from '../format/descriptor.js';
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
  /** Whole chunks with claimed hashes, checked by the hashing thread: `hashes` is the count accepted (u32 LE). */
  claimed: boolean;
  /** A same-offset plan went with it (SameLeaves): the source, and per chunk 2 where this thread found it equal to the source's. */
  same?: { src: Descriptor; flags: number[] };
}

/**
 * Whole chunks and the hashes a peer claims for them (32 bytes each, in
 * order): cut where the peer cut, each checked by the hashing thread before
 * it counts (see Ingest.feed).
 */
export interface Claimed {
  sizes: number[];
  hashes: Uint8Array;
  /** The caller has checked the hashes already (a pull from many sources checks each on arrival): cut as claimed, not checked again. */
  checked?: boolean;
}

/** Adds fragment bytes [offset, offset + size) to `into`, growing its last extent when they follow it. */
export function pushExtent(into: NewExtent[], frag: string | null, offset: number, size: number): void {
  const last = into[into.length - 1];
  if (last && last.frag === frag && last.offset + last.size === offset) last.size += size;
  else into.push({ frag, offset, size });
}

/** Pushes to `into` the parts of bytes [off, off + len) of block `hold`: new bytes, or references where `ref` says they are stored. */
export function pushParts(into: Part[], hold: number, off: number, len: number, ref: BlockSource | BlockRefs | undefined): void {
  if (len === 0) return;
  const stored = (src: BlockSource, from: number, n: number) => {
    for (const ext of src.extents.slice(src.offset + from, n)) into.push({ ext });
  };
  if (ref === undefined) into.push({ held: hold, off, len });
  else if (!Array.isArray(ref)) stored(ref as BlockSource, off, len);
  else {
    // Stored ranges by reference, the bytes between them as new bytes.
    let at = off;
    const end = off + len;
    for (const r of ref as BlockRefs) {
      if (r.at + r.size <= at) continue;
      if (r.at >= end) break;
      if (r.at > at) into.push({ held: hold, off: at, len: r.at - at });
      const from = Math.max(at, r.at);
      const to = Math.min(end, r.at + r.size);
      stored(r.src, from - r.at, to - from);
      at = to;
    }
    if (at < end) into.push({ held: hold, off: at, len: end - at });
  }
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

/**
 * A resumed blob's tail, read back: the bytes of its partial last leaf go to
 * the hasher `job`, and those of its open chunk (after the last recorded
 * boundary) through `chunker`, which must find no cut in them, and into
 * the open chunk's hash, which must be the one recorded. Returns the open chunk's bytes.
 */
export async function restoreTail(d: Descriptor, files: FragmentFiles, name: string, chunker: Chunker, job: HashJob): Promise<Uint8Array> {
  const { size, chunkEnd } = d;
  const leafStart = d.merkle.leaves * LEAF_SIZE;
  const from = Math.min(leafStart, chunkEnd);
  const tail = Buffer.allocUnsafe(size - from);
  await readExtents(files, d.extents, tail, from);
  job.send(tail.subarray(leafStart - from), true, [], false);
  const open = tail.subarray(chunkEnd - from);
  if (chunker.push(open).length > 0) {
    throw new CabError('ERR_BAD_STORE', `descriptor of ${name} records no boundary where the chunker finds one`, { blob: name });
  }
  job.hashOpenChunk(open);
  if (d.openHash && !bytesEqual(await job.openChunkHash(), d.openHash)) {
    throw new CabError('ERR_HASH_MISMATCH', `the last ${open.length} bytes of blob ${name} (its open chunk) no longer hash to their recorded hash: fsck --verify --repair records the damage`, { blob: name, offset: chunkEnd });
  }
  return open;
}
