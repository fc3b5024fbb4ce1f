import { CabError } from '../errors.js';
import { Chunker } from '../chunker/fastcdc.js';
import type { MerkleState } from '../hash/merkle.js';
import { HashJob, type FileBytes } from '../hash/pool.js';
import { sha256, toHex } from '../hash/sha256.js';
import { FragmentWriter, type FragmentFiles } from '../disk/fragments.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Extent } from '../format/extents.js';
import { pushExtent, pushParts, restoreTail, type BlockRefs, type BlockSource, type Claimed, type CutChunk, type NewExtent, type PendingBlock, type Part, type Taken } from './ingest-types.js';
import type { StoreInternals } from './context.js';
import { HashShare } from './ingest-share.js';
import type { WriterPins } from './pins.js';
import { LayerOut, SameLeaves, foundSame, sameAt, type PlanChunk } from './same-leaves.js';
import { objectArray } from '../lists.js';

export type { BlockRefs, BlockSource, Claimed, NewExtent, Taken } from './ingest-types.js';

const EMPTY_HASH = sha256(new Uint8Array(0));
/** Blocks handed to the hashing thread before the oldest is decided: two, so that a slow block on either thread does not stall the other. */
const BEHIND = 2;

/**
 * The write path of one blob's bytes. The main thread reads and chunks
 * (FastCDC finds the boundaries); the hashing thread hashes each block into
 * the blob's merkle tree and into chunk hashes, a slice at a time while it
 * is in cache, and keeps it. One block behind, as the next is chunked, the
 * chunks of a block are decided by their hashes: one the store holds
 * already is referenced (dedup); the others get the next offsets of a
 * fragment in tmp/, which the hashing thread then writes from the block it
 * kept. A checkpoint takes what accumulated here (`take`) and makes it one
 * descriptor record.
 */
export class Ingest {
  readonly #s: StoreInternals;
  readonly #pins: WriterPins;
  /** Merkle and chunk hashing and fragment writes run in the hashing thread. */
  readonly #job: HashJob;
  readonly #chunker: Chunker;
  /** The blob hash after the last completed call (see settle). */
  hash = EMPTY_HASH;
  #deferHash = false;
  #size = 0;

  /** The chunk in progress: its parts so far, their length, and how much of it is in extents already. */
  #pending: Part[] = objectArray();
  #pendingLen = 0;
  #committed = 0;
  #chunkEnd = 0;
  /** Where the chunks of the next record start. */
  #recordedChunkEnd = 0;
  /** Blocks handed to the hashing thread whose chunks are not decided yet (at most BEHIND + 1). */
  #queue: PendingBlock[] = objectArray();
  #queuedBytes = 0;
  #nextHold = 1;
  /** How long this thread hashes chunks itself per block, so that both threads work alike. */
  readonly #share: HashShare;
  /** A chunk failed its claimed hash (see feed): the blob ends before it, and nothing more is taken. */
  #refusal: CabError | undefined;
  /** The hashing thread's failure on a block whose answer was not waited for (#decide), and the last such answer: the next drain waits for it. */
  #unheard: unknown;
  #tail: Promise<void> | undefined;
  #newExtents: NewExtent[] = objectArray();
  #newChunks: Array<[Uint8Array, number]> = objectArray();
  #frag: FragmentWriter | null = null;
  /** Chunks written to the current fragment: SHA-256 hex -> offset in it. */
  readonly #local = new Map<string, number>();
  readonly #cuts: number[] = [];
  /** The leaf layer this blob keeps (a new blob's), and the leaves it may take from another's. */
  readonly #layer: LayerOut | undefined;
  readonly #same: SameLeaves;

  /** `merkle`: the hasher's state of a resumed blob (then call restore). */
  constructor(s: StoreInternals, pins: WriterPins, merkle?: MerkleState) {
    this.#s = s;
    this.#pins = pins;
    this.#job = new HashJob(merkle);
    this.#share = new HashShare(this.#job);
    this.#chunker = new Chunker(s.chunker);
    this.#layer = merkle ? undefined : new LayerOut(s, this.#job);
    this.#same = new SameLeaves(s);
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
    // With the bytes of blocks not decided yet, most of which usually become new fragment bytes.
    return (this.#frag?.size ?? 0) + this.#queuedBytes >= this.#s.fragmentSize;
  }

  /** Whether anything was appended since the last `take`. */
  get idle(): boolean {
    return !this.#frag && this.#newExtents.length === 0 && this.#newChunks.length === 0 && this.#queue.length === 0;
  }

  /** Continues a blob from its descriptor `d` (restoreTail: at most one leaf and one chunk of the prefix are read again). */
  async restore(d: Descriptor, files: FragmentFiles, name: string): Promise<void> {
    const { size, chunkEnd } = d;
    this.#size = size;
    this.#chunkEnd = chunkEnd;
    this.#recordedChunkEnd = chunkEnd;
    const open = await restoreTail(d, files, name, this.#chunker, this.#job);
    this.hash = await this.#job.digest();
    this.#pendingLen = open.length;
    this.#committed = open.length;
  }

  /**
   * Chunks and places one block of input. `give`: the block goes to the
   * hashing thread without a copy. `ref`: its bytes are stored already there
   * (appendBlob), or as BlockRefs some ranges are: referenced, not written.
   * `known`: hashes the caller checked, by (offset * 2^27 + size). `claimed`
   * (at a boundary only): whole chunks cut where a peer with our chunker cut
   * them, with hashes it claims, each checked by the hashing thread before it
   * counts; at the first that fails the blob ends before it, and this and
   * every later call fails with ERR_HASH_MISMATCH (see `refused`).
   */
  async feed(block: Uint8Array, ref: BlockSource | BlockRefs | undefined, give: boolean, known?: Map<number, Uint8Array>, claimed?: Claimed): Promise<void> {
    const len = block.length; // the block is the hashing thread's once handed over (then empty here)
    this.#throwIfRefused();
    if (len === 0) return;
    await this.#layer?.room(this.#size);
    const base = this.#size;
    this.#size += len;
    const hold = this.#nextHold++;
    // A plain Uint8Array view keeps the chunker's loop monomorphic (Buffers and Uint8Arrays both arrive here).
    const view = block.constructor === Uint8Array ? block : new Uint8Array(block.buffer, block.byteOffset, block.byteLength);
    const cuts = claimed ? claimed.sizes : this.#chunker.push(view, this.#cuts);
    // For #share.next() ms this thread hashes whole chunks of this block itself, in cache: the work balances between the two.
    const share = this.#share.next();
    let budget = known || claimed ? 0 : share;
    const ends: number[] = [];
    const skip: number[] | undefined = known || budget > 0 || claimed?.checked ? [] : undefined;
    const chunks: CutChunk[] = [];
    const plan: PlanChunk[] = [];
    let off = 0;
    for (const size of cuts) {
      const take = size - this.#pendingLen;
      // A chunk whole in this block whose hash the caller has checked (a transfer): not hashed again.
      let hash = this.#pendingLen === 0 ? known?.get(off * 2 ** 27 + size) : undefined;
      const claim = claimed?.hashes.subarray(32 * ends.length, 32 * ends.length + 32);
      if (budget > 0 && this.#pendingLen === 0) {
        const t = performance.now();
        hash = sha256(view.subarray(off, off + take));
        budget -= performance.now() - t;
      }
      plan.push({ start: base + off - this.#pendingLen, size, known: hash });
      this.#addPart(hold, off, take, ref);
      off += take;
      ends.push(off);
      skip?.push(hash || claimed?.checked ? 1 : 0);
      chunks.push({ parts: this.#pending, size, committed: this.#committed, known: hash ?? claim, idx: ends.length - 1 });
      this.#pending = objectArray();
      this.#pendingLen = 0;
      this.#committed = 0;
    }
    if (!claimed) cuts.length = 0;
    if (off < block.length) this.#addPart(hold, off, block.length - off, ref);
    // The chunk in progress keeps its own copy of its bytes: the block goes to the hashing thread.
    for (let i = 0; i < this.#pending.length; i++) {
      const p = this.#pending[i]!;
      // Uint8Array.from copies (a Buffer's slice would be a view of memory about to be transferred).
      if ('held' in p) this.#pending[i] = { lit: Uint8Array.from(block.subarray(p.off, p.off + p.len)) };
    }
    // Claims not checked yet are checked by the hashing thread, each chunk before it goes into the blob hash.
    const expect = claimed && !claimed.checked ? claimed.hashes : undefined;
    const same = claimed ? undefined : this.#same.plan(plan);
    const hashes = this.#job.hashBlock(block, true, ends, expect ? undefined : skip, hold, give, expect, same);
    hashes.catch(() => {}); // awaited in #decide
    const src = same && this.#same.source;
    this.#queue.push({ hold, hashes, chunks, size: len, claimed: expect !== undefined, same: src ? { src, flags: same.flags } : undefined });
    this.#queuedBytes += len;
    // BEHIND blocks behind: their hashes are in, or nearly, while this one is hashed.
    while (this.#queue.length > BEHIND) await this.#decide(this.#queue.shift()!, true);
    this.#throwIfRefused();
    await this.#job.room();
  }

  /** Whether a chunk failed its claimed hash (feed): the blob ends before it, and the writer must fail once that is recorded. */
  get refused(): boolean {
    return this.#refusal !== undefined;
  }

  #throwIfRefused(): void {
    if (this.#refusal) throw this.#refusal;
  }

  /**
   * Chunk `bad` of a claimed block failed its hash (the hashing thread took
   * none of its bytes, nor any after it): the blob ends where it starts, and
   * the blocks after it, the hashing thread's and the chunker's, are dropped.
   */
  #refuse(bad: CutChunk): void {
    for (const later of this.#queue.splice(0)) {
      this.#queuedBytes -= later.size;
      this.#job.writeHeld(later.hold, []);
    }
    this.#chunker.end();
    this.#pending = objectArray();
    this.#pendingLen = 0;
    this.#committed = 0;
    this.#size = this.#chunkEnd;
    this.#refusal = new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(bad.known!)} at byte ${this.#chunkEnd} does not hash to the hash claimed for it`, { offset: this.#chunkEnd });
  }

  /** Decides every block handed over (before a checkpoint, or anything that adds extents directly). `steady`: see #decide. */
  async #drain(steady = false): Promise<void> {
    while (this.#queue.length > 0) await this.#decide(this.#queue.shift()!, steady);
    if (!steady) await this.#tail;
    if (!steady && this.#unheard !== undefined) throw this.#unheard;
  }

  /** Whole chunks of a stored blob, taken as they are (appendBlob's fast path): their extents and recorded chunks, and their bytes (or where the hashing thread reads them) for the blob hash only. The chunker must be at a boundary. */
  async addWhole(extents: Iterable<Extent>, chunks: Array<{ hash: Uint8Array; size: number }>, bytes: Uint8Array | FileBytes): Promise<void> {
    await this.#drain(true);
    this.#throwIfRefused();
    await this.#layer?.room(this.#size);
    for (const e of extents) pushExtent(this.#newExtents, e.frag, e.offset, e.size);
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
    await this.#drain();
    this.#throwIfRefused();
    if (this.#chunker.end() === 0) return;
    const size = this.#pendingLen;
    const c: CutChunk = { parts: this.#pending, size, committed: this.#committed, known: await this.#job.openChunkHash(), idx: -1 };
    this.#pending = objectArray();
    this.#pendingLen = 0;
    this.#committed = 0;
    await this.#place(c, c.known!, undefined);
  }

  /** Bytes [off, off + len) of block `hold` into the chunk in progress. */
  #addPart(hold: number, off: number, len: number, ref: BlockSource | BlockRefs | undefined): void {
    pushParts(this.#pending, hold, off, len, ref);
    this.#pendingLen += len;
  }

  /** The chunks that ended in a block, by their hashes; then the block's new bytes are written and it goes. `steady`: one block behind (feed), or before whole chunks (addWhole: a pull's local ranges, which waited ~1.5 ms each for the hashing thread to catch up); a drain that is not steady waits for the last answer not waited for, so for all (answers come in order): #unheard fails it. */
  async #decide(b: PendingBlock, steady = false): Promise<void> {
    this.#queuedBytes -= b.size;
    const writes: number[] = [];
    try {
      // Every hash known, no verdict to hear (a pull's checked chunks): no wait for the answer, which queues behind this loop's work.
      const needed = b.claimed || b.chunks.some((c) => c.known === undefined);
      const t = performance.now();
      const hashes = needed || !steady ? await b.hashes : new Uint8Array(0);
      if (!needed) this.#tail = b.hashes.then(() => {}, (e: unknown) => void (this.#unheard ??= e));
      if (!steady && this.#unheard !== undefined) throw this.#unheard;
      if (steady && needed) this.#share.waited(performance.now() - t);
      // A claimed block: the chunks the hashing thread accepted; the first it did not ends the blob.
      const n = b.claimed ? new DataView(hashes.buffer, hashes.byteOffset, 4).getUint32(0, true) : b.chunks.length;
      const seen = new Map<string, Descriptor>();
      for (let i = 0; i < n; i++) {
        const c = b.chunks[i]!;
        await this.#place(c, c.known ?? hashes.slice(32 * c.idx, 32 * c.idx + 32), writes, seen, foundSame(b.same, hashes, c.idx));
      }
      if (n < b.chunks.length) this.#refuse(b.chunks[n]!);
    } finally {
      // Released on every path: the hashing thread keeps nothing for a writer that failed.
      this.#job.writeHeld(b.hold, writes);
    }
  }

  /** A chunk with its hash: reference a stored copy, or write its new bytes (those of a held block into `writes`). A chunk cut by a checkpoint has its first `committed` bytes in extents already: the rest may still be stored. */
  async #place(c: CutChunk, hash: Uint8Array, writes: number[] | undefined, seen?: Map<string, Descriptor>, same?: Descriptor): Promise<void> {
    const literal = c.parts.some((p) => !('ext' in p));
    // A stored copy (of the bytes past `committed`): in the fragment being written, or in a blob the index knows.
    const local = literal && this.#local.size > 0 ? this.#local.get(toHex(hash)) : undefined;
    const from = c.committed;
    const at = this.#chunkEnd;
    const note = (blob: string, offset: number, d: Descriptor) => offset === at && this.#same.note(blob, d);
    const stored: NewExtent[] | undefined =
      local !== undefined ? [{ frag: null, offset: local + from, size: c.size - from }] : literal ? (sameAt(same, at, c.size, from) ?? (await this.#pins.stored(hash, c.size, from, seen, note))) : undefined;
    if (stored) {
      for (const e of stored) pushExtent(this.#newExtents, e.frag, e.offset, e.size);
    } else {
      const allLiteral = c.committed === 0 && !c.parts.some((p) => 'ext' in p);
      const fragAt = this.#frag ? this.#frag.size : 0;
      await this.#commitParts(c.parts, writes);
      if (allLiteral) this.#local.set(toHex(hash), fragAt);
    }
    this.#newChunks.push([hash, c.size]);
    this.#chunkEnd += c.size;
  }

  /**
   * Moves parts into extents. New bytes get the next offsets of the
   * fragment; the hashing thread writes them in the order they are sent:
   * those of a held block with the block's `writes`, our own copies at once.
   */
  async #commitParts(parts: Part[], writes: number[] | undefined): Promise<void> {
    for (const p of parts) {
      if ('ext' in p) {
        pushExtent(this.#newExtents, p.ext.frag, p.ext.offset, p.ext.size);
        continue;
      }
      if (!this.#frag) {
        this.#frag = await FragmentWriter.create(this.#s.layout);
        this.#job.startFragment(this.#frag.fd);
      }
      const len = 'lit' in p ? p.lit.length : p.len;
      const at = this.#frag.assign(len);
      pushExtent(this.#newExtents, null, at, len);
      if ('lit' in p) this.#job.send(p.lit, false, [0, len, at], true);
      else {
        const w = writes!;
        const n = w.length;
        // Consecutive pieces of one block land consecutively in the fragment: one write.
        if (n > 0 && w[n - 3]! + w[n - 2]! === p.off && w[n - 1]! + w[n - 2]! === at) w[n - 2]! += len;
        else w.push(p.off, len, at);
      }
    }
  }

  /** Decides every block handed over, then writes the chunk in progress so far (a checkpoint in its middle: its rest is still deduplicated, #place). */
  async commitPending(): Promise<void> {
    await this.#drain();
    await this.#commitParts(this.#pending, undefined);
    this.#committed = this.#pendingLen;
    this.#pending = objectArray();
  }

  /** Hands over everything since the last take (after commitPending); the hashing thread answers for exactly the bytes sent so far. */
  take(final: boolean): Taken {
    const frag = this.#frag;
    const taken: Taken = {
      frag,
      fragWritten: frag ? this.#job.fragmentWritten() : undefined,
      state: this.#job.state(),
      digest: final ? this.#job.digest() : undefined,
      extents: this.#newExtents,
      chunks: this.#newChunks,
      size: this.#size,
      chunkOffset: this.#recordedChunkEnd,
      openHash: this.#pendingLen > 0 ? this.#job.openChunkHash() : undefined,
    };
    for (const p of [taken.fragWritten, taken.state, taken.digest, taken.openHash]) p?.catch(() => {});
    this.#frag = null;
    this.#local.clear();
    this.#newExtents = objectArray();
    this.#newChunks = objectArray();
    this.#recordedChunkEnd = this.#chunkEnd;
    return taken;
  }

  /** For a caller that appends many pieces and asks for the hash once (a transfer): appends stop waiting for the hashing thread (see settle). */
  deferHash(): void {
    this.#deferHash = true;
  }

  /** End of an append call: its blocks decided (new bytes written, not yet durable) and the blob hash so far, unless deferred. */
  async settle(): Promise<void> {
    if (this.#deferHash) return;
    const digest = this.#job.digest(); // asked first: the block's hashes, then the digest, in one round trip
    digest.catch(() => {});
    await this.#drain();
    this.#throwIfRefused();
    this.hash = await digest;
  }

  /** The blob hash of everything appended so far, from the hashing thread. */
  async digest(): Promise<Uint8Array> {
    this.hash = await this.#job.digest();
    return this.hash;
  }

  /** At finalize, after the final record: the blob's leaf layer into place (never fails). Returns the leaves lent (SameLeaves). */
  async finishLayer(name: string): Promise<number> {
    await this.#layer?.finish(name, this.#size, this.hash);
    return this.#layer?.lent ?? 0;
  }

  /** Ends the hashing job and drops an unsealed fragment and leaf layer. */
  async close(): Promise<void> {
    // The hashing thread may still write to the fragment: wait for it before closing the file.
    await this.#job.close().catch(() => {});
    this.#same.close();
    await this.#layer?.discard();
    await this.#frag?.discard();
    this.#frag = null;
  }
}
