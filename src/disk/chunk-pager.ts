import type fs from 'node:fs/promises';
import type { ChunkRecords } from '../format/chunk-records.js';
import { CHUNK_ENTRY, readRecordAt } from '../format/descriptor.js';

/** One recorded chunk: its blob offset, size and SHA-256. */
export interface ChunkInfo {
  start: number;
  size: number;
  hash: Uint8Array;
}

/** One record's chunk list, decoded, with each chunk's blob offset for binary search. */
interface Page {
  c: Uint8Array;
  starts: Float64Array;
}

/**
 * Decoded records kept per reader. A record holds the chunks of one
 * checkpoint (64 MiB by default: about 1,000 chunks, 36 KB), so this is
 * about 2.3 MB at most, and random reads over a 4 GiB blob rarely decode
 * one again (with 8, random 4 KiB reads over 1 GiB decoded a record every
 * other read: p99 7.7 ms).
 */
const PAGES = 64;

/**
 * A blob's recorded chunks, read a record at a time from a descriptor file
 * held open. The file must be the one the ChunkRecords were parsed from:
 * records before its valid end never change in place (a rewrite replaces
 * the file, and an open handle keeps the old one).
 */
export class ChunkPager {
  readonly #fh: fs.FileHandle;
  readonly #records: ChunkRecords;
  readonly #pages = new Map<number, Promise<Page>>();

  constructor(fh: fs.FileHandle, records: ChunkRecords) {
    this.#fh = fh;
    this.#records = records;
  }

  /** The chunk holding blob offset `pos` (below the last chunk boundary). */
  async chunkAt(pos: number): Promise<ChunkInfo> {
    const page = await this.#page(this.#records.find(pos));
    return entry(page, indexIn(page.starts, pos));
  }

  /**
   * The recorded chunks from chunk boundary `from` on, in order, that end
   * at or before `end` (at most the last chunk boundary): one look at a
   * record per record, where a chunkAt per chunk was an await each (16 for
   * a stream's 1 MiB block).
   */
  async chunksUntil(from: number, end: number): Promise<ChunkInfo[]> {
    const out: ChunkInfo[] = [];
    let p = from;
    while (p < end) {
      const page = await this.#page(this.#records.find(p));
      const at = p;
      for (let k = indexIn(page.starts, p); k < page.starts.length; k++) {
        const c = entry(page, k);
        if (c.start + c.size > end) return out;
        out.push(c);
        p = c.start + c.size;
      }
      if (p === at) break; // a record without chunks here (none is written so): not a loop
    }
    return out;
  }

  #page(i: number): Promise<Page> {
    let p = this.#pages.get(i);
    if (p) {
      this.#pages.delete(i);
      this.#pages.set(i, p);
      return p;
    }
    const row = this.#records.at(i);
    p = readRecordAt(this.#fh, row.fileStart, row.fileEnd).then((rec) => {
      const c = rec.c as Uint8Array;
      const starts = new Float64Array(c.length / CHUNK_ENTRY);
      const dv = new DataView(c.buffer, c.byteOffset, c.byteLength);
      let off = row.first;
      for (let k = 0; k < starts.length; k++) {
        starts[k] = off;
        off += dv.getUint32(k * CHUNK_ENTRY + 32);
      }
      return { c, starts };
    });
    p.catch(() => this.#pages.delete(i));
    this.#pages.set(i, p);
    if (this.#pages.size > PAGES) this.#pages.delete(this.#pages.keys().next().value!);
    return p;
  }
}

/** The index in `starts` of the chunk holding `pos`. */
function indexIn(starts: Float64Array, pos: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= pos) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function entry({ starts, c }: Page, k: number): ChunkInfo {
  const at = k * CHUNK_ENTRY;
  const size = new DataView(c.buffer, c.byteOffset + at + 32, 4).getUint32(0);
  return { start: starts[k]!, size, hash: c.subarray(at, at + 32) };
}
