import crypto from 'node:crypto';
import { CabError, isCabError } from '../errors.js';
import { Chunker } from '../chunker/fastcdc.js';
import { LEAF_SIZE, type MerkleState } from '../hash/merkle.js';
import { HashJob } from '../hash/pool.js';
import { sha256, toHex } from '../hash/sha256.js';
import { readExtents } from '../disk/blob-bytes.js';
import { FragmentWriter, type FragmentFiles } from '../disk/fragments.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Extent, ExtentMap } from '../format/extents.js';
import type { StoreInternals } from './context.js';
import type { WriterPins } from './pins.js';

/** A piece of the chunk in progress: bytes to write, or a range already stored. */
type Part = { lit: Uint8Array } | { ext: Extent };

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
  /** The fragment being written, if any, and its SHA-256 once the hashing thread has written all of it. */
  frag: FragmentWriter | null;
  fragId: Promise<string> | undefined;
  /** The merkle state, and with `final` the blob hash, for exactly the bytes sent so far. */
  state: Promise<MerkleState>;
  digest: Promise<Uint8Array> | undefined;
  extents: NewExtent[];
  chunks: Array<[Uint8Array, number]>;
  size: number;
  /** Where the chunks of this record start. */
  chunkOffset: number;
}

const EMPTY_HASH = sha256(new Uint8Array(0));

const isRefs = (ref: BlockSource | BlockRefs): ref is BlockRefs => Array.isArray(ref);

/**
 * The write path of one blob's bytes: content is chunked inline (FastCDC);
 * a chunk the store already holds is referenced instead of written (dedup);
 * other bytes are given the next offsets of a fragment in tmp/, which the
 * hashing thread writes while it hashes them. A checkpoint takes what
 * accumulated here (`take`) and makes it one descriptor record.
 */
export class Ingest {
  readonly #s: StoreInternals;
  readonly #pins: WriterPins;
  /** Merkle hashing, fragment hashing and fragment writes run in the hashing thread. */
  readonly #job: HashJob;
  readonly #chunker: Chunker;
  /** The blob hash after the last completed call (see settle). */
  hash = EMPTY_HASH;
  #deferHash = false;
  #size = 0;

  #chunkHash = crypto.createHash('sha256');
  #pending: Part[] = [];
  #pendingLen = 0;
  /** Bytes of the chunk in progress already in extents (written at a checkpoint). */
  #committed = 0;
  #chunkEnd = 0;
  /** Where the chunks of the next record start. */
  #recordedChunkEnd = 0;

  #newExtents: NewExtent[] = [];
  #newChunks: Array<[Uint8Array, number]> = [];
  #frag: FragmentWriter | null = null;
  /** The block being fed, and its writes as [offset in block, length, fragment offset] triples. */
  #block: Uint8Array | null = null;
  #blockWrites: number[] = [];
  /** Chunks written to the current fragment: SHA-256 hex -> offset in it. */
  readonly #local = new Map<string, number>();
  readonly #cuts: number[] = [];

  /** `merkle`: the hasher's state of a resumed blob (then call restore). */
  constructor(s: StoreInternals, pins: WriterPins, merkle?: MerkleState) {
    this.#s = s;
    this.#pins = pins;
    this.#job = new HashJob(merkle);
    this.#chunker = new Chunker(s.chunker);
  }

  /** Bytes appended so far (durable or not). */
  get size(): number {
    return this.#size;
  }

  /** Whether the chunker is at a chunk boundary (no chunk in progress). */
  get atBoundary(): boolean {
    return this.#pendingLen === 0;
  }

  /** Whether the fragment being written has reached the size at which it is sealed. */
  get fragmentFull(): boolean {
    return this.#frag !== null && this.#frag.size >= this.#s.fragmentSize;
  }

  /** Whether anything was appended since the last `take`. */
  get idle(): boolean {
    return !this.#frag && this.#newExtents.length === 0 && this.#newChunks.length === 0;
  }

  /**
   * Continues a blob from its descriptor `d`: re-reads at most one leaf and
   * one chunk of the prefix to restore the hasher and the chunker.
   */
  async restore(d: Descriptor, files: FragmentFiles, name: string): Promise<void> {
    const { size, chunkEnd } = d;
    this.#size = size;
    this.#chunkEnd = chunkEnd;
    this.#recordedChunkEnd = chunkEnd;
    const leafStart = d.merkle.leaves * LEAF_SIZE;
    const from = Math.min(leafStart, chunkEnd);
    const tail = Buffer.allocUnsafe(size - from);
    await readExtents(files, d.extents, tail, from);
    this.#job.send(tail.subarray(leafStart - from), true, [], false);
    this.hash = await this.#job.digest();
    const open = tail.subarray(chunkEnd - from);
    if (this.#chunker.push(open).length > 0) {
      throw new CabError('ERR_BAD_STORE', `descriptor of ${name} records no boundary where the chunker finds one`, { blob: name });
    }
    this.#chunkHash.update(open);
    this.#pendingLen = open.length;
    this.#committed = open.length;
  }

  /**
   * Chunks, hashes and places one block of input. `give`: the block is ours
   * and goes to the hashing thread without a copy. `ref`: the block's bytes
   * are stored already there (appendBlob), so they are referenced, not
   * written; or, as BlockRefs, some ranges of it are (a transfer's pieces
   * found locally). `known`: hashes the caller checked, by (offset * 2^27 +
   * size).
   */
  async feed(block: Uint8Array, ref: BlockSource | BlockRefs | undefined, give: boolean, known?: Map<number, Uint8Array>): Promise<void> {
    this.#size += block.length;
    this.#block = block;
    // A plain Uint8Array view keeps the chunker's loop monomorphic (Buffers and Uint8Arrays both arrive here).
    const view = block.constructor === Uint8Array ? block : new Uint8Array(block.buffer, block.byteOffset, block.byteLength);
    const cuts = this.#chunker.push(view, this.#cuts);
    let off = 0;
    for (const size of cuts) {
      const take = size - this.#pendingLen;
      // A chunk whole in this block whose hash the caller has checked (a transfer): not hashed again.
      const hash = this.#pendingLen === 0 ? known?.get(off * 2 ** 27 + size) : undefined;
      this.#addPart(block, off, take, ref, hash === undefined);
      off += take;
      await this.#endChunk(hash);
    }
    cuts.length = 0;
    if (off < block.length) this.#addPart(block, off, block.length - off, ref);
    // The chunk in progress keeps its own copy of its bytes, so the block can go.
    for (let i = 0; i < this.#pending.length; i++) {
      const p = this.#pending[i]!;
      if ('lit' in p && p.lit.buffer === block.buffer) this.#pending[i] = { lit: Uint8Array.from(p.lit) };
    }
    this.#block = null;
    const writes = this.#blockWrites;
    this.#blockWrites = [];
    this.#job.send(block, true, writes, give);
    await this.#job.room();
  }

  /**
   * Whole chunks of a stored blob, taken as they are (appendBlob's fast
   * path): their extents and recorded chunks, and their bytes for the blob
   * hash only. The chunker must be at a boundary.
   */
  async addWhole(extents: Iterable<Extent>, chunks: Array<{ hash: Uint8Array; size: number }>, bytes: Uint8Array): Promise<void> {
    for (const e of extents) this.#pushExtent(e.frag, e.offset, e.size);
    for (const c of chunks) {
      this.#newChunks.push([c.hash, c.size]);
      this.#chunkEnd += c.size;
    }
    this.#size += bytes.length;
    this.#job.send(bytes, true, [], true);
    await this.#job.room();
  }

  /** The end of the stream: the chunk in progress, if any, ends here. */
  async end(): Promise<void> {
    if (this.#chunker.end() > 0) await this.#endChunk();
  }

  #addPart(block: Uint8Array, off: number, len: number, ref: BlockSource | BlockRefs | undefined, hash = true): void {
    if (len === 0) return;
    if (hash) this.#chunkHash.update(block.subarray(off, off + len));
    if (ref === undefined) this.#pending.push({ lit: block.subarray(off, off + len) });
    else if (!isRefs(ref)) this.#addStored(ref, off, len);
    else {
      // Stored ranges by reference, the bytes between them as new bytes.
      let at = off;
      const end = off + len;
      for (const r of ref) {
        if (r.at + r.size <= at) continue;
        if (r.at >= end) break;
        if (r.at > at) this.#pending.push({ lit: block.subarray(at, r.at) });
        const from = Math.max(at, r.at);
        const to = Math.min(end, r.at + r.size);
        this.#addStored(r.src, from - r.at, to - from);
        at = to;
      }
      if (at < end) this.#pending.push({ lit: block.subarray(at, end) });
    }
    this.#pendingLen += len;
  }

  /** Bytes [off, off + len) of a stored source, as references to its extents. */
  #addStored(src: BlockSource, off: number, len: number): void {
    for (const ext of src.extents.slice(src.offset + off, len)) this.#pending.push({ ext });
  }

  /** The chunk in progress ended: reference a stored copy, or write its new bytes. */
  async #endChunk(known?: Uint8Array): Promise<void> {
    let hash: Uint8Array;
    if (known) hash = known;
    else {
      hash = this.#chunkHash.digest();
      this.#chunkHash = crypto.createHash('sha256');
    }
    const size = this.#pendingLen;
    const literal = this.#pending.some((p) => 'lit' in p);
    const stored = literal && this.#committed === 0 ? await this.#findStored(hash, size) : undefined;
    if (stored) {
      for (const e of stored) this.#pushExtent(e.frag, e.offset, e.size);
    } else {
      const allLiteral = this.#committed === 0 && this.#pending.every((p) => 'lit' in p);
      const at = this.#frag ? this.#frag.size : 0;
      await this.commitPending();
      if (allLiteral) this.#local.set(toHex(hash), at);
    }
    this.#pending = [];
    this.#newChunks.push([hash, size]);
    this.#chunkEnd += size;
    this.#pendingLen = 0;
    this.#committed = 0;
  }

  /** A stored copy of a chunk: in the fragment being written, or in a blob the index knows. */
  async #findStored(hash: Uint8Array, size: number): Promise<NewExtent[] | undefined> {
    const local = this.#local.get(toHex(hash));
    if (local !== undefined) return [{ frag: null, offset: local, size }];
    for (const loc of this.#s.index.locations(hash)) {
      if (loc.size !== size) continue;
      let d;
      try {
        d = await this.#pins.source(loc.blob);
      } catch (e) {
        if (isCabError(e, 'ERR_NO_SUCH_BLOB')) continue;
        throw e;
      }
      if (loc.offset + size > d.size || (d.damagedAt !== undefined && loc.offset + size > d.damagedAt)) continue;
      return [...d.extents.slice(loc.offset, size)];
    }
    return undefined;
  }

  /**
   * Moves the parts of the chunk in progress into extents. Literal bytes get
   * the next offsets of the fragment; the hashing thread writes them, in the
   * order they are sent, which is their order in the fragment.
   */
  async commitPending(): Promise<void> {
    for (const p of this.#pending) {
      if ('ext' in p) {
        this.#pushExtent(p.ext.frag, p.ext.offset, p.ext.size);
        continue;
      }
      if (!this.#frag) {
        this.#frag = await FragmentWriter.create(this.#s.layout);
        this.#job.startFragment(this.#frag.fd);
      }
      const at = this.#frag.size;
      this.#frag.size += p.lit.length;
      this.#pushExtent(null, at, p.lit.length);
      if (this.#block && p.lit.buffer === this.#block.buffer) {
        const w = this.#blockWrites;
        const off = p.lit.byteOffset - this.#block.byteOffset;
        const n = w.length;
        // Consecutive pieces of one block land consecutively in the fragment: one write.
        if (n > 0 && w[n - 3]! + w[n - 2]! === off && w[n - 1]! + w[n - 2]! === at) w[n - 2]! += p.lit.length;
        else w.push(off, p.lit.length, at);
      } else {
        // An earlier block's bytes, copied when that block was handed off.
        this.#job.send(p.lit, false, [0, p.lit.length, at], true);
      }
    }
    this.#committed = this.#pendingLen;
    this.#pending = [];
  }

  #pushExtent(frag: string | null, offset: number, size: number): void {
    const last = this.#newExtents[this.#newExtents.length - 1];
    if (last && last.frag === frag && last.offset + last.size === offset) last.size += size;
    else this.#newExtents.push({ frag, offset, size });
  }

  /**
   * Hands over everything since the last take and starts afresh: the next
   * bytes go to a new fragment. The hashing thread is asked now, so it
   * answers for exactly the bytes sent so far. Call commitPending first.
   */
  take(final: boolean): Taken {
    const frag = this.#frag;
    const taken: Taken = {
      frag,
      fragId: frag ? this.#job.sealFragment() : undefined,
      state: this.#job.state(),
      digest: final ? this.#job.digest() : undefined,
      extents: this.#newExtents,
      chunks: this.#newChunks,
      size: this.#size,
      chunkOffset: this.#recordedChunkEnd,
    };
    for (const p of [taken.fragId, taken.state, taken.digest]) p?.catch(() => {});
    this.#frag = null;
    this.#local.clear();
    this.#newExtents = [];
    this.#newChunks = [];
    this.#recordedChunkEnd = this.#chunkEnd;
    return taken;
  }

  /**
   * For a caller that appends many pieces and asks for the hash once (a
   * transfer): appends stop waiting for the hashing thread (see settle).
   */
  deferHash(): void {
    this.#deferHash = true;
  }

  /** End of an append call: the blob hash so far (unless deferred). */
  async settle(): Promise<void> {
    if (this.#deferHash) return;
    this.hash = await this.#job.digest();
  }

  /** The blob hash of everything appended so far, from the hashing thread. */
  async digest(): Promise<Uint8Array> {
    this.hash = await this.#job.digest();
    return this.hash;
  }

  /** Ends the hashing job and drops an unsealed fragment. */
  async close(): Promise<void> {
    // The hashing thread may still write to the fragment: wait for it before closing the file.
    await this.#job.close().catch(() => {});
    await this.#frag?.discard();
    this.#frag = null;
  }
}
