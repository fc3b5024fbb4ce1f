import { CabError, isCabError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { ChunkInfo, ChunkPager } from './chunk-pager.js';
import type { ExtentMap } from '../format/extents.js';
import type { FragmentFiles } from './fragments.js';
import type { PlanFor } from './cas.js';

/**
 * How far past a read the fragments of a bucket-backed store are fetched
 * ahead, and how many fragments at most (each GET holds a ring of
 * fetch-thread.ts's RING bytes; a blob of 1 MiB fragments had 16 GETs
 * under way). Not further: a download sent ahead fills its ring and is
 * held for its reader for a second at most (STALL_MS), after which it
 * runs to the end into the file and is read back from the disk and hashed
 * here. With 32 MiB a reader slower than 32 MB/s went that way: paced at
 * 25 MB/s, 5 GETs of 8 ran out their hold (none with 16 MiB) and the read
 * took 6.1 s/GiB of CPU, 2.9 to 4.7 with 16 MiB (2026-12-05).
 */
const PREFETCH = 16 * 1024 * 1024;
export const PREFETCH_FRAGMENTS = 4;

/**
 * Reads blob bytes [pos, pos + buf.length) through the extents into buf,
 * unchecked. Fragments fetched from a bucket: the ones the next PREFETCH
 * bytes need start coming now, so a sequential reader does not wait at
 * each fragment's start. `now`: fragments already open are read by a
 * blocking read (see FragmentFiles.read).
 */
export async function readExtents(files: FragmentFiles, extents: ExtentMap, buf: Uint8Array, pos: number, now = false, planFor?: (i: number) => PlanFor): Promise<void> {
  let at = 0;
  prefetchAfter(files, extents, pos + buf.length, planFor);
  for (const e of extents.slice(pos, buf.length)) {
    await files.read(e.frag, buf, at, e.size, e.offset, now);
    at += e.size;
  }
}

/** Starts fetching the fragments of the PREFETCH bytes from `end` (a bucket-backed store), each with the plan `planFor` gives for its extent. */
function prefetchAfter(files: FragmentFiles, extents: ExtentMap, end: number, planFor?: (i: number) => PlanFor): void {
  if (!files.remote || end >= extents.size) return;
  const seen = new Set<string>();
  for (let i = extents.find(end); i < extents.count; i++) {
    const e = extents.at(i);
    if (e.start >= end + PREFETCH) break;
    if (!seen.has(e.frag) && seen.size === PREFETCH_FRAGMENTS) break;
    seen.add(e.frag);
    files.prefetch(e.frag, planFor?.(i));
  }
}

/** Throws ERR_HASH_MISMATCH unless `bytes` (chunk `c` of blob `blob`) hash to the chunk's recorded SHA-256. */
export function checkChunk(blob: string, c: ChunkInfo, bytes: Uint8Array): void {
  const found = sha256(bytes);
  if (!bytesEqual(found, c.hash)) {
    throw new CabError('ERR_HASH_MISMATCH', `blob ${blob}: bytes ${c.start}..${c.start + c.size} do not hash to their recorded chunk`, {
      blob,
      offset: c.start,
      size: c.size,
      expected: toHex(c.hash),
      found: toHex(found),
    });
  }
}

/**
 * A blob's bytes as its descriptor recorded them, checked: every byte below
 * the last chunk boundary is handed out only after its whole chunk was read
 * from disk and hashed to the chunk's recorded SHA-256. Whole chunks inside
 * a read go straight into the caller's buffer and are checked there; a
 * chunk only partly asked for is read whole, checked, and kept (the last
 * one), so small sequential reads hash each chunk once.
 *
 * Bytes past the last chunk boundary of an unfinalized blob (its open
 * chunk, less than the chunker's max) have no hash yet and are returned
 * unchecked; their chunk's hash covers them once it ends, and a writer or a
 * transfer that completes the chunk checks it then.
 */
export class BlobBytes {
  readonly #name: string;
  readonly #extents: ExtentMap;
  readonly #chunkEnd: number;
  readonly #pager: ChunkPager;
  readonly #files: FragmentFiles;
  #kept: { start: number; bytes: Uint8Array } | undefined;
  #scratch: Buffer = Buffer.alloc(0);
  #scratchBusy = false;

  constructor(name: string, d: { extents: ExtentMap; chunkEnd: number }, pager: ChunkPager, files: FragmentFiles) {
    this.#name = name;
    this.#extents = d.extents;
    this.#chunkEnd = d.chunkEnd;
    this.#pager = pager;
    this.#files = files;
  }

  /** The recorded chunk holding blob offset `pos` (below the last chunk boundary). */
  chunkAt(pos: number): Promise<ChunkInfo> {
    return this.#pager.chunkAt(pos);
  }

  /** The recorded chunks, in order. */
  async *chunks(): AsyncGenerator<ChunkInfo> {
    for (let p = 0; p < this.#chunkEnd; ) {
      const c = await this.#pager.chunkAt(p);
      yield c;
      p = c.start + c.size;
    }
  }

  /** Fills buf with blob bytes [pos, pos + buf.length), checked (see the class comment). */
  async read(buf: Uint8Array, pos: number): Promise<void> {
    const end = pos + buf.length;
    const checkedEnd = Math.min(end, this.#chunkEnd);
    let p = pos;
    while (p < checkedEnd) {
      const c = await this.#pager.chunkAt(p);
      const cEnd = c.start + c.size;
      if (c.start < pos || cEnd > end) {
        const to = Math.min(cEnd, end);
        await this.#copyChunk(c, p, to, buf, p - pos);
        p = to;
        continue;
      }
      // A run of whole chunks: one read into the caller's buffer, each chunk checked in place.
      const run = await this.#pager.chunksUntil(c.start, checkedEnd);
      const last = run[run.length - 1]!;
      const q = last.start + last.size;
      if (this.#files.remote) {
        // The chunks of one extent at a time: a chunk fetched now is checked on its way (see #readChunks).
        prefetchAfter(this.#files, this.#extents, q, this.#planFor);
        for (let k = 0; k < run.length; ) k += await this.#readChunks(run, k, buf, pos);
      } else {
        await readExtents(this.#files, this.#extents, buf.subarray(p - pos, q - pos), p);
        for (const x of run) await this.#check(x, buf.subarray(x.start - pos, x.start - pos + x.size));
      }
      p = q;
    }
    if (p < end) await readExtents(this.#files, this.#extents, buf.subarray(p - pos), p);
  }

  /** Fills buf with blob bytes [pos, pos + buf.length) as they are on disk, unchecked (`now`: see readExtents). */
  readUnchecked(buf: Uint8Array, pos: number, now = false): Promise<void> {
    return readExtents(this.#files, this.#extents, buf, pos, now);
  }

  /**
   * Reads chunks of `run` (a bucket-backed store), from run[k] on, into
   * buf (which holds blob bytes from `pos`), checked: the ones that follow
   * run[k] in its extent at once, if the fetching thread checked them (a
   * fragment being fetched with the plan of that extent, from #planFor),
   * else run[k] alone, checked here. Returns how many chunks it read. A
   * chunk across two extents is read and checked here.
   */
  async #readChunks(run: ChunkInfo[], k: number, buf: Uint8Array, pos: number): Promise<number> {
    const x = run[k]!;
    const bytes = buf.subarray(x.start - pos, x.start - pos + x.size);
    const i = this.#extents.find(x.start);
    const e = this.#extents.at(i);
    const eEnd = e.start + e.size;
    if (x.start + x.size > eEnd) {
      await readExtents(this.#files, this.#extents, bytes, x.start);
      await this.#check(x, bytes);
      return 1;
    }
    let m = k + 1;
    while (m < run.length && run[m]!.start + run[m]!.size <= eEnd) m++;
    const at = e.offset + (x.start - e.start);
    let n: number;
    try {
      n = await this.#files.readChunks(e.frag, buf, x.start - pos, at, m === k + 1 ? [x] : run.slice(k, m), this.#planFor(i));
    } catch (err) {
      if (!isCabError(err, 'ERR_HASH_MISMATCH')) throw err;
      await this.#files.dropCached(e.frag);
      if (err.data.offset !== at) throw err; // a chunk before this one failed: the fragment's error as it is
      const { expected, found } = err.data;
      throw new CabError('ERR_HASH_MISMATCH', `blob ${this.#name}: bytes ${x.start}..${x.start + x.size} do not hash to their recorded chunk (fragment ${e.frag} from the bucket)`, {
        blob: this.#name,
        offset: x.start,
        size: x.size,
        expected,
        found,
      }, { cause: err });
    }
    if (n > 0) return n;
    await this.#check(x, bytes);
    return 1;
  }

  /**
   * The plan of extent `i` for its fetch (see ChunkPlan): the recorded
   * chunks wholly inside it, at their fragment offsets; made only if the
   * fragment is fetched. A chunk across two extents is not in it.
   */
  readonly #planFor = (i: number): PlanFor => async () => {
    const e = this.#extents.at(i);
    const end = Math.min(e.start + e.size, this.#chunkEnd);
    const at: number[] = [];
    const hashes: Uint8Array[] = [];
    let p = e.start;
    if (p < end) {
      const c = await this.#pager.chunkAt(p);
      if (c.start < p) p = c.start + c.size;
    }
    for (const c of p < end ? await this.#pager.chunksUntil(p, end) : []) {
      at.push(e.offset + (c.start - e.start), c.size);
      hashes.push(c.hash);
    }
    if (at.length === 0) return undefined;
    const h = new Uint8Array(32 * hashes.length);
    hashes.forEach((x, k) => h.set(x, 32 * k));
    return { at: Float64Array.from(at), hashes: h };
  };

  /**
   * Copies bytes [from, to) of chunk `c` to buf[at..], the chunk read whole
   * and checked first (or the one kept from the last call). The kept chunk
   * lives in one buffer reused from call to call, since fresh memory for
   * every small read cost more in page faults than the read; a call that
   * finds it in use (reads running at once) takes a buffer of its own. The
   * copy is made in the same turn as the check, so no other call can fill
   * the buffer in between.
   */
  /** checkChunk; a chunk that fails in a bucket-backed store drops the cached copies of its fragments (FragmentFiles.dropCached). */
  async #check(c: ChunkInfo, bytes: Uint8Array): Promise<void> {
    try {
      checkChunk(this.#name, c, bytes);
    } catch (e) {
      if (this.#files.remote) for (const x of this.#extents.slice(c.start, c.size)) await this.#files.dropCached(x.frag);
      throw e;
    }
  }

  async #copyChunk(c: ChunkInfo, from: number, to: number, buf: Uint8Array, at: number): Promise<void> {
    if (this.#kept?.start !== c.start) {
      const mine = !this.#scratchBusy;
      if (mine) {
        this.#scratchBusy = true;
        this.#kept = undefined;
        if (this.#scratch.length < c.size) this.#scratch = Buffer.allocUnsafe(c.size);
      }
      try {
        const bytes = mine ? this.#scratch.subarray(0, c.size) : Buffer.allocUnsafe(c.size);
        if (this.#files.remote) {
          prefetchAfter(this.#files, this.#extents, c.start + c.size, this.#planFor);
          await this.#readChunks([c], 0, bytes, c.start);
        } else {
          await readExtents(this.#files, this.#extents, bytes, c.start);
          await this.#check(c, bytes);
        }
        if (mine || !this.#scratchBusy) this.#kept = { start: c.start, bytes };
        buf.set(bytes.subarray(from - c.start, to - c.start), at);
        return;
      } finally {
        if (mine) this.#scratchBusy = false;
      }
    }
    buf.set(this.#kept.bytes.subarray(from - c.start, to - c.start), at);
  }

  /**
   * Where a block that starts at `pos` and should hold about `want` bytes
   * ends, on a chunk boundary (so no chunk is read twice), never past
   * `limit`: the boundary at or before pos + want, or the end of the chunk
   * there if that chunk starts at pos or before.
   */
  async blockEnd(pos: number, want: number, limit: number): Promise<number> {
    const target = pos + want;
    if (target >= limit) return limit;
    if (target >= this.#chunkEnd) return target;
    const c = await this.#pager.chunkAt(target);
    return Math.min(limit, c.start > pos ? c.start : c.start + c.size);
  }
}
