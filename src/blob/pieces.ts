import { CabError } from '../errors.js';
import { isGiven, isRecycled } from '../hash/pool.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { BlockRefs, BlockSource, Claimed } from './ingest.js';
import { READ_BLOCK } from './input.js';

/**
 * A chunk whose SHA-256 the caller has checked against its bytes (a
 * transfer's receiver), for BlobWriter.appendVerified.
 */
export interface VerifiedChunk {
  bytes: Uint8Array;
  hash: Uint8Array;
  /**
   * Ranges of `bytes` the caller read from a stored blob (its descriptor
   * from BlobWriter.source, which pins it): `size` bytes at `at` in the
   * chunk are the source's bytes from `src.offset`. They are appended by
   * reference; only the rest of the chunk is written. In order, not
   * overlapping.
   */
  refs?: ReadonlyArray<{ at: number; size: number; src: BlockSource }>;
}

/** A block of verified chunks: each chunk's checked hash keyed by (offset in the block * 2^27 + size), and its stored ranges. */
export interface VerifiedBlock {
  block: Buffer;
  known: Map<number, Uint8Array> | undefined;
  refs: BlockRefs | undefined;
  /** Instead of `known`: whole chunks whose hashes the hashing thread is to check (Ingest.feed). */
  claimed?: Claimed;
}

/**
 * appendVerified's blocks when the hashes are a peer's claims, not checked
 * yet. Cut by a peer with our chunker (`ours`, and the writer at a chunk
 * boundary), chunks of sizes our chunker can cut (`min` to `max`; the
 * last may be shorter: a blob's last chunk, where the call ends at
 * `blobSize` if given) go as claims, checked by the
 * hashing thread (unless `checked`), not chunked again; their refs go by
 * reference as appendVerified's always do. A peer that cuts
 * elsewhere only spoils its own blob's dedup; it cannot swell the chunk
 * index with tiny chunks (given `blobSize`, none but the blob's last). Otherwise each
 * is checked here; the chunks before the first that fails are appended,
 * and `bad` says why the rest is not.
 */
export function claimedBlocks(chunks: readonly VerifiedChunk[], ours: boolean, params: { min: number; max: number }, at: { blob: string; offset: number }, checked: boolean, blobSize?: number): { blocks: Iterable<VerifiedBlock>; bad?: CabError } {
  // Only the blob's own last chunk may be short: the call's last, where it ends the blob (`blobSize`, when the caller knows it).
  let end = at.offset;
  for (const c of chunks) end += c.bytes.length;
  const lastMayBeShort = blobSize === undefined || end === blobSize;
  const cuttable = (c: VerifiedChunk, i: number) => c.bytes.length > 0 && c.bytes.length <= params.max && (c.bytes.length >= params.min || (lastMayBeShort && i === chunks.length - 1));
  if (ours && chunks.every(cuttable)) {
    return { blocks: verifiedBlocks(chunks, checked ? 'checked' : 'check') };
  }
  const i = checked ? -1 : chunks.findIndex((c) => !bytesEqual(sha256(c.bytes), c.hash));
  if (i < 0) return { blocks: verifiedBlocks(chunks) };
  const offset = chunks.slice(0, i).reduce((n, c) => n + c.bytes.length, at.offset);
  const bad = new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(chunks[i]!.hash)} at byte ${offset} of blob ${at.blob} does not hash to the hash claimed for it`, { blob: at.blob, offset });
  return { blocks: verifiedBlocks(chunks.slice(0, i)), bad };
}

/**
 * Throws ERR_BAD_ARGUMENT unless every chunk's `refs` are in order, inside
 * the chunk and inside their source: a reference that does not fit would
 * make the blob's extents disagree with its bytes.
 */
export function checkVerified(chunks: readonly VerifiedChunk[]): void {
  for (const c of chunks) {
    let end = 0;
    for (const r of c.refs ?? []) {
      if (!(r.at >= end && r.size > 0 && r.at + r.size <= c.bytes.length && r.src.offset >= 0 && r.src.offset + r.size <= r.src.extents.size)) {
        throw new CabError('ERR_BAD_ARGUMENT', `a stored range [${r.at}, ${r.at + r.size}) of a ${c.bytes.length}-byte chunk is out of order or out of bounds`);
      }
      end = r.at + r.size;
    }
  }
}

/**
 * appendVerified's chunks in blocks of up to READ_BLOCK bytes (a longer
 * chunk is a block of its own). Chunks that lie end to end from the start
 * of a recycled buffer (hash/pool.ts: a receiver's batch), or over all of a
 * given one (a matched run), are that buffer, taken as it is: no copy. With `claims`, each block's
 * hashes are claims, cut as claimed: for the hashing thread
 * to check, or (`checked`) checked by the caller already.
 */
export function* verifiedBlocks(chunks: readonly VerifiedChunk[], claims?: 'check' | 'checked'): Generator<VerifiedBlock> {
  const whole = wholeBuffer(chunks);
  let i = 0;
  while (i < chunks.length) {
    const group: VerifiedChunk[] = [];
    const known = new Map<number, Uint8Array>();
    const refs: Array<BlockRefs[number]> = [];
    let n = 0;
    while (i < chunks.length && (whole || n === 0 || n + chunks[i]!.bytes.length <= READ_BLOCK)) {
      const c = chunks[i++]!;
      known.set(n * 2 ** 27 + c.bytes.length, c.hash);
      for (const r of c.refs ?? []) refs.push(n === 0 ? r : { at: n + r.at, size: r.size, src: r.src });
      group.push(c);
      n += c.bytes.length;
    }
    const block = whole ?? Buffer.concat(group.map((c) => c.bytes), n);
    const stored = refs.length ? refs : undefined;
    if (claims) yield { block, known: undefined, refs: stored, claimed: { sizes: group.map((c) => c.bytes.length), hashes: Buffer.concat(group.map((c) => c.hash)), checked: claims === 'checked' } };
    else yield { block, known, refs: stored };
  }
}

/**
 * The bytes that `chunks` cover end to end from the start of a recycled
 * buffer (hash/pool.ts), whose memory goes to the hashing thread and back,
 * or over all of a buffer its maker gives away (givenBuffer: a pull's
 * matched run). Any other buffer is the caller's, and is copied.
 */
function wholeBuffer(chunks: readonly VerifiedChunk[]): Buffer | undefined {
  const buf = chunks[0]?.bytes.buffer;
  if (buf === undefined) return undefined;
  const given = isGiven(buf);
  if (!given && !isRecycled(buf)) return undefined;
  let at = 0;
  for (const { bytes } of chunks) {
    if (bytes.buffer !== buf || bytes.byteOffset !== at) return undefined;
    at += bytes.length;
  }
  if (given && at !== buf.byteLength) return undefined;
  return Buffer.from(buf, 0, at);
}
