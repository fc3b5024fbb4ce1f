import { checkBytes } from '../errors.js';
import { GEAR } from './gear.js';
import { DATA_AT, DATA_MAX, WASM_LANE, gearWasm } from './gear-wasm.js';
import { resolveChunkerParams, type ChunkerParams, type ResolvedChunkerParams } from './params.js';

/** The gear hash after the last `scan`, so that scan returns a plain integer. */
let scanFp = 0;

/**
 * Runs the gear hash over piece[i..stop) from `fp` and returns the index just
 * past the first byte where (fp & mask) == 0, or -1. Unrolled by four: a cut
 * is rare, so the loop is mostly the hash update and the compare.
 */
function scan1(p: Uint8Array, i: number, stop: number, mask: number, fp: number): number {
  const gear = GEAR;
  let j = i;
  const stop4 = stop - 4;
  while (j <= stop4) {
    fp = ((fp << 1) + gear[p[j]!]!) | 0;
    if ((fp & mask) === 0) { scanFp = fp; return j + 1; }
    fp = ((fp << 1) + gear[p[j + 1]!]!) | 0;
    if ((fp & mask) === 0) { scanFp = fp; return j + 2; }
    fp = ((fp << 1) + gear[p[j + 2]!]!) | 0;
    if ((fp & mask) === 0) { scanFp = fp; return j + 3; }
    fp = ((fp << 1) + gear[p[j + 3]!]!) | 0;
    if ((fp & mask) === 0) { scanFp = fp; return j + 4; }
    j += 4;
  }
  while (j < stop) {
    fp = ((fp << 1) + gear[p[j]!]!) | 0;
    j++;
    if ((fp & mask) === 0) { scanFp = fp; return j; }
  }
  scanFp = fp;
  return -1;
}

/**
 * `scan1`'s answer, in about 60% of its time where WebAssembly runs. The
 * update fp = (fp << 1) + g is one long chain of dependent steps, so one
 * lane runs at the latency of two instructions per byte whatever the CPU
 * could do besides. Since fp is 32 bits shifted left once per byte, it
 * depends only on the last 32 bytes hashed: a lane started 32 bytes before
 * a position has the exact fp there. So gear-wasm.ts hashes a window of
 * four consecutive segments as four independent lanes at once (lanes 1-3
 * warmed up on the 32 bytes before their segment; lane 0 goes on from
 * `fp`), fp after the window being lane 3's, and stops at the first window
 * in which any lane finds a cut. From there (and for the tail shorter than
 * a window) `scan1` goes on one byte at a time and returns the first cut:
 * the boundaries are exactly `scan1`'s. `at`: the piece's bytes are in
 * the module's memory from this address (-1: they are not). (The same lanes in
 * JavaScript ran no faster than `scan1`: each typed-array access there
 * costs a bounds check.)
 */
function scan(p: Uint8Array, i: number, stop: number, mask: number, fp: number, at: number): number {
  let j = i;
  if (at >= 0 && stop - j >= 4 * WASM_LANE) {
    j = gearWasm!.lanes(at + j, at + stop, mask, fp) - at;
    fp = gearWasm!.fp.getInt32(0, true);
  }
  return scan1(p, j, stop, mask, fp);
}

/**
 * Streaming FastCDC (Xia et al., 2016) with normalized chunking (level 2) and
 * cut-point skipping.
 *
 * Within a chunk, the first `min` bytes are skipped; from there the gear hash
 * fp = (fp << 1) + GEAR[byte] (32-bit) runs, and the chunk ends after the
 * first byte at which (fp & maskS) == 0 while the chunk is shorter than
 * `avg`, or (fp & maskL) == 0 after that, or at `max` bytes. fp restarts at 0
 * at each boundary, so boundaries depend only on the bytes since the previous
 * boundary and a new Chunker resumes from any boundary.
 */
export class Chunker {
  readonly params: ResolvedChunkerParams;
  /** @internal Tests: scan in JavaScript alone even where WebAssembly runs (the two must cut alike). */
  static jsOnly = false;
  /** Bytes of the current, unfinished chunk. */
  #pos = 0;
  #fp = 0;

  constructor(params?: Partial<ChunkerParams>) {
    this.params = resolveChunkerParams(params);
  }

  /** Bytes fed since the last boundary. */
  get pending(): number {
    return this.#pos;
  }

  /**
   * Feeds the next piece of the stream. Appends to `out` the size of every
   * chunk that ends inside this piece, in order, and returns `out`.
   */
  push(piece: Uint8Array, out: number[] = []): number[] {
    checkBytes(piece, 'the chunker');
    if (piece.length > DATA_MAX && gearWasm) {
      for (let o = 0; o < piece.length; o += DATA_MAX) this.push(piece.subarray(o, o + DATA_MAX), out);
      return out;
    }
    const { min, avg, max, maskS, maskL } = this.params;
    const n = piece.length;
    // The bytes into WebAssembly's memory once, when a window could fit, unless they are there already
    // (a block read into one of its slots: src/hash/blocks.ts). The copy, of bytes just read and out of
    // cache, cost a third as much as the scan.
    let at = -1;
    if (gearWasm !== undefined && !Chunker.jsOnly && n >= 4 * WASM_LANE) {
      if (gearWasm.shared !== undefined && piece.buffer === gearWasm.shared) at = piece.byteOffset;
      else {
        gearWasm.data.set(piece);
        at = DATA_AT;
      }
    }
    let pos = this.#pos;
    let fp = this.#fp;
    let i = 0;
    while (i < n) {
      if (pos < min) {
        const skip = Math.min(min - pos, n - i);
        pos += skip;
        i += skip;
        if (pos < min) break;
        if (i === n) break;
      }
      let stop: number;
      let mask: number;
      if (pos < avg) {
        stop = i + Math.min(avg - pos, n - i);
        mask = maskS;
      } else {
        stop = i + Math.min(max - pos, n - i);
        mask = maskL;
      }
      const end = scan(piece, i, stop, mask, fp, at);
      fp = scanFp;
      const found = end >= 0;
      const j = found ? end : stop;
      pos += j - i;
      i = j;
      if (found || pos === max) {
        out.push(pos);
        pos = 0;
        fp = 0;
      }
    }
    this.#pos = pos;
    this.#fp = fp;
    return out;
  }

  /** Ends the stream: returns the size of the last chunk (0 if none) and resets. */
  end(): number {
    const last = this.#pos;
    this.#pos = 0;
    this.#fp = 0;
    return last;
  }
}

/** The chunk sizes of a whole byte array. They sum to its length. */
export function chunk(bytes: Uint8Array, params?: Partial<ChunkerParams>): number[] {
  const c = new Chunker(params);
  const sizes = c.push(bytes);
  const last = c.end();
  if (last > 0) sizes.push(last);
  return sizes;
}
