import fs from 'node:fs/promises';
import path from 'node:path';
import { LEAF_SIZE } from '../hash/merkle.js';
import type { HashJob, SamePlan } from '../hash/pool.js';
import { leafCount } from '../hash/proof.js';
import { bytesEqual } from '../hash/sha256.js';
import { ensureDir, writeAll } from '../disk/durable.js';
import { flatDamage } from '../format/damage.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Extent } from '../format/extents.js';
import type { StoreInternals } from './context.js';
import { GROUP, LAYER_HEADER, checkOpenLayer, layerHeader, openLayer, type BlobTree } from './leaf-layer.js';

/** Blobs smaller than this keep no leaf layer at finalize (one is made on a first range request) and lend none. */
export const LAYER_MIN = 1024 * 1024;
/** A writer's leaf hashes wait in the hashing thread until the blob has this many bytes; then the layer's temp file opens. */
const LAYER_OPEN_AT = 16 * 1024 * 1024;
/** Groups of a source's leaf hashes read at once: 32 MiB of blob, 64 KiB of hashes. */
const WINDOW_GROUPS = 32;
/** A source's chunks read from the index at once (about 8 MiB of blob at 64 KiB chunks): one read, and one look at its entry, per batch rather than per block. */
const BATCH_CHUNKS = 128;

/** A run of a source's chunks from the index: chunk number `n` on, their hashes (32 bytes each), sizes and offsets. */
interface Batch {
  n: number;
  hashes: Uint8Array;
  sizes: number[];
  offsets: number[];
}

/**
 * A new blob's leaf layer (src/blob/leaf-layer.ts), written as the blob
 * is: the hashing thread keeps every leaf hash it makes or is given, and
 * writes them to a temp file in tmp/; at finalize the header goes on, the
 * file is fdatasync'd and renamed to layers/. A resumed blob keeps none
 * (its prefix's leaves were not seen). It is derived data, checked against
 * the root wherever it is loaded, so a crash that loses or tears it costs a
 * re-hash later, never a wrong answer: it is not part of the descriptor's
 * durability order, and its failure never fails the blob.
 */
export class LayerOut {
  readonly #s: StoreInternals;
  readonly #job: HashJob;
  #fh: fs.FileHandle | undefined;
  #tmp: string | undefined;
  #done = false;
  /** Leaves taken from another blob's layer rather than hashed, known at finish. */
  lent = 0;

  constructor(s: StoreInternals, job: HashJob) {
    this.#s = s;
    this.#job = job;
    job.keepLeaves(LAYER_HEADER);
  }

  /** Opens the temp file once the blob is large enough to keep a layer for (before the hashing thread's buffer fills). */
  async room(size: number): Promise<void> {
    if (this.#fh || this.#done || size < LAYER_OPEN_AT) return;
    await this.#open();
  }

  async #open(): Promise<void> {
    this.#tmp = this.#s.layout.tmpFile('leaf');
    this.#fh = await fs.open(this.#tmp, 'wx');
    this.#job.layerFile(this.#fh.fd);
  }

  /** At finalize: the layer of blob `name` (`size` bytes, root `root`) into place. Never throws: a layer not made is made when needed. */
  async finish(name: string, size: number, root: Uint8Array): Promise<void> {
    if (this.#done) return;
    try {
      if (size < LAYER_MIN) return;
      if (!this.#fh) await this.#open();
      const [leaves, lent] = await this.#job.endLayer();
      this.lent = lent;
      if (leaves !== leafCount(size)) return;
      await writeAll(this.#fh!, layerHeader(size, root), 0);
      await this.#fh!.datasync();
      const file = this.#s.layout.leafLayer(name);
      await ensureDir(path.dirname(file), this.#s.knownDirs);
      await fs.rename(this.#tmp!, file);
      this.#tmp = undefined;
    } catch {
      // Derived data: the blob is finalized and durable whatever happened here.
    } finally {
      await this.discard();
    }
  }

  /** Drops the temp file (after the hashing thread's job has ended, or at finish). */
  async discard(): Promise<void> {
    this.#done = true;
    const fh = this.#fh;
    const tmp = this.#tmp;
    this.#fh = undefined;
    this.#tmp = undefined;
    await fh?.close().catch(() => {});
    if (tmp) await fs.rm(tmp, { force: true }).catch(() => {});
  }
}

/** A chunk of a block, as SameLeaves.plan sees it: where it starts in the blob, its size, its hash if known now. */
export interface PlanChunk {
  start: number;
  size: number;
  known: Uint8Array | undefined;
}

/**
 * Where a new blob repeats a finalized blob at the same offsets (a second
 * put of a file, an edited copy between its edits), its BEP 52 leaves
 * need not be hashed: they are the other blob's leaves. This finds, per
 * block, the chunks that the source blob has at the same offsets with the
 * same sizes and their hashes (from the chunk index), and the source's
 * leaf hashes over them (from its leaf layer, checked against its root
 * when loaded, each group again when read). The hashing thread takes a
 * source leaf only inside a run of chunks whose hashes it found equal to
 * the source's (so those bytes are the source's bytes, as far as SHA-256
 * tells: the trust dedup already places in chunk hashes); everything else,
 * and whatever cannot be loaded or checked, is hashed from the bytes.
 *
 * The source is the blob of the last dedup hit at the same offset
 * (`note`). Nothing here is ever waited for: a layer still loading, or a
 * window of it still being read, means that block's leaves are hashed.
 */
const EMPTY = new Uint8Array(0);

export class SameLeaves {
  readonly #s: StoreInternals;
  #blob: string | undefined;
  /** The source's checked tree: undefined while loading, null if it has none usable. */
  #tree: BlobTree | null | undefined;
  /** Leaf hashes of the source read so far: groups from `g` (`hashes` undefined while being read). */
  #win: Window | undefined;
  #ahead: Window | undefined;
  /** The source's chunk number at `offset`, where the last block's search stopped. */
  #cursor: { n: number; offset: number } | undefined;
  /** The source's chunks read last (see #batch). */
  #batch: Batch | undefined;
  /** Whether the last plan found any chunk at the same offset. */
  #matched = false;
  #desc: Descriptor | undefined;
  /** The source's layer file, open (one open for the check and every window). */
  #fh: Promise<fs.FileHandle | undefined> | undefined;

  constructor(s: StoreInternals) {
    this.#s = s;
  }

  /** A chunk of ours is stored at the same offset in blob `name` (descriptor `d`): a candidate source. */
  note(name: string, d: Descriptor): void {
    // The same name with another root is another blob (deleted, the name used again): a new source.
    if ((name === this.#blob && bytesEqual(d.hash ?? EMPTY, this.#desc?.hash ?? EMPTY)) || !d.finalized || !d.hash || d.size < LAYER_MIN) return;
    // Keep a source that serves, rather than load a layer for every blob that shares a chunk.
    if (this.#blob !== undefined && this.#tree !== null && this.#matched) return;
    this.#blob = name;
    this.#desc = d;
    this.#tree = undefined;
    this.#win = this.#ahead = undefined;
    this.#cursor = undefined;
    this.#batch = undefined;
    this.#matched = true;
    this.close();
    const file = this.#s.layout.leafLayer(name);
    const fh = openLayer(file);
    this.#fh = fh;
    fh.then((f) => (f ? checkOpenLayer(f, file, d.size, d.hash!, true) : undefined)).then(
      (t) => this.#blob === name && (this.#tree = t ?? null),
      () => this.#blob === name && (this.#tree = null),
    );
  }

  /** Closes the source's layer file (a writer's end, or a new source). */
  close(): void {
    const fh = this.#fh;
    this.#fh = undefined;
    fh?.then((f) => f?.close()).catch(() => {});
  }

  /** The source's descriptor (pinned: it came through WriterPins), while it lends leaves. */
  get source(): Descriptor | undefined {
    return this.#tree ? this.#desc : undefined;
  }

  /** The plan for a block's chunks (the same-offset ones and their source leaves), or undefined. */
  plan(chunks: readonly PlanChunk[]): SamePlan | undefined {
    const blob = this.#blob;
    const tree = this.#tree;
    if (blob === undefined || !tree || chunks.length === 0) return undefined;
    const expect = new Uint8Array(32 * chunks.length);
    const flags = this.#match(blob, chunks, expect);
    if (this.#tree === null) return undefined;
    const firstAt = flags.findIndex((f) => f !== 0);
    this.#matched = firstAt >= 0;
    if (firstAt < 0) return undefined;
    let lastAt = flags.length - 1;
    while (flags[lastAt] === 0) lastAt--;
    const first = Math.ceil(chunks[firstAt]!.start / LEAF_SIZE);
    const end = Math.floor((chunks[lastAt]!.start + chunks[lastAt]!.size) / LEAF_SIZE);
    const leaves = this.#leaves(tree, first, end);
    if (!leaves) return undefined;
    return { flags, expect: expect.buffer, leaves: leaves.hashes, first: leaves.first };
  }

  /** Flags per chunk (see SamePlan) and the source's hashes into `expect`. */
  #match(blob: string, chunks: readonly PlanChunk[], expect: Uint8Array): number[] {
    const flags: number[] = new Array<number>(chunks.length).fill(0);
    const start = chunks[0]!.start;
    let n = this.#cursor?.offset === start ? this.#cursor.n : this.#s.index.chunkNumberAt(blob, start);
    if (n === undefined) return flags;
    let b = this.#batchAt(blob, n);
    let i = 0;
    while (b && i < chunks.length) {
      const k = n - b.n;
      if (k >= b.sizes.length) {
        // Past the batch: the next one, unless the source has no more chunks.
        b = b.sizes.length === BATCH_CHUNKS ? this.#batchAt(blob, n) : undefined;
        continue;
      }
      const offset = b.offsets[k]!;
      const size = b.sizes[k]!;
      while (i < chunks.length && chunks[i]!.start < offset) i++;
      if (i === chunks.length) break;
      n++;
      if (chunks[i]!.start !== offset) continue;
      this.#cursor = { n, offset: offset + size };
      const mine = chunks[i]!;
      if (mine.size === size) {
        const hash = b.hashes.subarray(32 * k, 32 * k + 32);
        if (mine.known === undefined) {
          expect.set(hash, 32 * i);
          flags[i] = 1;
        } else if (bytesEqual(mine.known, hash)) flags[i] = 2;
      }
      i++;
    }
    return flags;
  }

  /**
   * The batch holding the source's chunk number `n`, read from the index
   * if the last one does not (undefined, and no more lending, if the
   * source changed). With each read the index must still describe the blob
   * whose layer and descriptor are held: not another under its name
   * (deleted and written again), nor the same with damage recorded since
   * (its chunks there lend nothing). Between reads the batch is the held
   * blob's, so its hashes and the layer's leaves still agree; a source
   * deleted or damaged meanwhile goes on lending to the end of the batch
   * at most, as a block decided after such a change did before.
   */
  #batchAt(blob: string, n: number): Batch | undefined {
    const last = this.#batch;
    if (last && n >= last.n && n < last.n + last.sizes.length) return last;
    const e = this.#s.index.blob(blob);
    if (!e?.h || !bytesEqual(e.h, this.#desc!.hash!) || String(e.k) !== String(flatDamage(this.#desc!.damage))) {
      this.#tree = null;
      this.#batch = undefined;
      return undefined;
    }
    const b: Batch = { n, hashes: new Uint8Array(32 * BATCH_CHUNKS), sizes: [], offsets: [] };
    for (const c of this.#s.index.blobChunks(blob, n)) {
      b.hashes.set(c.hash, 32 * b.sizes.length);
      b.sizes.push(c.size);
      b.offsets.push(c.offset);
      if (b.sizes.length === BATCH_CHUNKS) break;
    }
    this.#batch = b;
    return b;
  }

  /** The source's leaf hashes [first, end) as far as the windows read hold them from `first`, reading ahead; undefined if none yet. */
  #leaves(tree: BlobTree, first: number, end: number): { hashes: ArrayBuffer; first: number } | undefined {
    if (end <= first) return undefined;
    const g = Math.floor(first / GROUP);
    if (this.#ahead && this.#ahead.g <= g && (!this.#win || this.#win.g < this.#ahead.g)) [this.#win, this.#ahead] = [this.#ahead, undefined];
    const win = this.#win;
    if (!win || g < win.g || g >= win.g + WINDOW_GROUPS) {
      this.#win = this.#read(tree, g);
      this.#ahead = undefined;
      return undefined;
    }
    if (!this.#ahead && Math.floor(end / GROUP) >= win.g + WINDOW_GROUPS / 2) this.#ahead = this.#read(tree, win.g + WINDOW_GROUPS);
    if (!win.hashes) return undefined;
    const from = first - win.g * GROUP;
    const to = Math.min(end - win.g * GROUP, win.hashes.length / 32);
    if (to <= from) return undefined;
    return { hashes: Uint8Array.prototype.slice.call(win.hashes, 32 * from, 32 * to).buffer, first };
  }

  #read(tree: BlobTree, g: number): Window | undefined {
    if (g * GROUP >= tree.leaves) return undefined;
    const w: Window = { g, hashes: undefined };
    const blob = this.#blob;
    this.#fh!.then((fh) => tree.leafGroups(g, WINDOW_GROUPS, fh)).then(
      (hashes) => {
        if (this.#blob !== blob) return;
        // Gone, cut short or changed since it was checked: this source lends no more leaves.
        if (!hashes) this.#tree = null;
        else w.hashes = hashes;
      },
      () => this.#blob === blob && (this.#tree = null),
    );
    return w;
  }
}

interface Window {
  g: number;
  hashes: Buffer | undefined;
}

/**
 * Bytes [from, size) of the chunk at `at` of source `d`, which the hashing
 * thread found equal to ours at the same offset: where they are stored (as
 * WriterPins.stored would find them, without the index lookup), or
 * undefined if they are past its end or its recorded damage.
 */
export function sameAt(d: Descriptor | undefined, at: number, size: number, from: number): Extent[] | undefined {
  if (!d || at + size > d.size || (d.damagedAt !== undefined && at + size > d.damagedAt)) return undefined;
  return [...d.extents.slice(at + from, size - from)];
}

/** The source of a chunk (number `idx` of its block) found equal to the source's at the same offset (see SamePlan), from the block's answer `hashes`. */
export function foundSame(same: { src: Descriptor; flags: number[] } | undefined, hashes: Uint8Array, idx: number): Descriptor | undefined {
  if (!same) return undefined;
  return same.flags[idx] === 2 || hashes[32 * same.flags.length + idx] === 1 ? same.src : undefined;
}
