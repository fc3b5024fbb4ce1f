import { CabError } from '../errors.js';
import { isRecycled } from '../hash/pool.js';
import type { BlockRefs, BlockSource } from './ingest.js';
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
  known: Map<number, Uint8Array>;
  refs: BlockRefs | undefined;
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
 * chunk is a block of its own). Chunks without refs that lie end to end
 * from the start of a recycled buffer (hash/pool.ts: a receiver's batch)
 * are that buffer, taken as it is: no copy.
 */
export function* verifiedBlocks(chunks: readonly VerifiedChunk[]): Generator<VerifiedBlock> {
  const whole = wholeBuffer(chunks);
  if (whole) {
    const known = new Map<number, Uint8Array>();
    for (const c of chunks) known.set(c.bytes.byteOffset * 2 ** 27 + c.bytes.length, c.hash);
    yield { block: whole, known, refs: undefined };
    return;
  }
  let i = 0;
  while (i < chunks.length) {
    const parts: Uint8Array[] = [];
    const known = new Map<number, Uint8Array>();
    const refs: Array<BlockRefs[number]> = [];
    let n = 0;
    while (i < chunks.length && (n === 0 || n + chunks[i]!.bytes.length <= READ_BLOCK)) {
      const c = chunks[i++]!;
      known.set(n * 2 ** 27 + c.bytes.length, c.hash);
      for (const r of c.refs ?? []) refs.push(n === 0 ? r : { at: n + r.at, size: r.size, src: r.src });
      parts.push(c.bytes);
      n += c.bytes.length;
    }
    yield { block: Buffer.concat(parts, n), known, refs: refs.length ? refs : undefined };
  }
}

/**
 * The bytes that `chunks` cover end to end from the start of a recycled
 * buffer (hash/pool.ts), whose memory goes to the hashing thread and back.
 * Any other buffer is the caller's, and is copied; so are chunks with refs.
 */
function wholeBuffer(chunks: readonly VerifiedChunk[]): Buffer | undefined {
  const buf = chunks[0]?.bytes.buffer;
  if (buf === undefined || !isRecycled(buf)) return undefined;
  let at = 0;
  for (const { bytes, refs } of chunks) {
    if (refs?.length || bytes.buffer !== buf || bytes.byteOffset !== at) return undefined;
    at += bytes.length;
  }
  return Buffer.from(buf, 0, at);
}
