import fs from 'node:fs/promises';
import crypto from 'node:crypto';
import { CabError, ioError, isCabError } from '../errors.js';
import { Chunker } from '../chunker/fastcdc.js';
import { LEAF_SIZE, type MerkleState } from '../hash/merkle.js';
import { HashJob } from '../hash/pool.js';
import { fromHex, sha256, toHex } from '../hash/sha256.js';
import { encodeHeader, encodeRecord, merkleToRecord, packChunks, readDescriptorFrom, type AppendRecord, type Descriptor } from '../format/descriptor.js';
import { ensureDir, fsyncDir, writeAll } from '../disk/durable.js';
import { FragmentFiles, FragmentWriter } from '../disk/fragments.js';
import { checkBlobName } from '../format/layout.js';
import { tryLockExclusive } from '../disk/lock.js';
import { lockDescriptor } from '../index/rewrite.js';
import { catchUpBlob } from '../index/catchup.js';
import type { Extent, ExtentMap } from '../format/extents.js';
import type { StoreInternals } from './context.js';
import { checkCount, readBlocks } from './input.js';

/** What appendBytes takes: bytes, or a range of a local file. */
export type AppendItem = Uint8Array | { file: string; offset?: number; size?: number };

/** Input is read and processed in blocks of this size. */
export const READ_BLOCK = 4 * 1024 * 1024;

/** A piece of the chunk in progress: bytes to write, or a range already stored. */
type Part = { lit: Uint8Array } | { ext: Extent };
/** An extent not yet in a record; `frag` null means the fragment being written. */
interface NewExtent {
  frag: string | null;
  offset: number;
  size: number;
}

/**
 * Writes one blob. Content is chunked inline (FastCDC); a chunk the store
 * already holds is referenced instead of written (dedup); other bytes go to
 * a fragment in tmp/ that is sealed into cas/ at each checkpoint. A
 * checkpoint (flush, close, or every `fragmentSize` bytes) is one descriptor
 * record: fragment fsync + rename + directory fsync, then the record and its
 * fsync, then the index.
 *
 * The writer holds an flock on the descriptor: one writer per blob across
 * processes, and the kernel frees it if the process dies.
 *
 *   open --append/flush--> open --close--> finalized
 *     |                                      
 *     +--closeWithoutFinalize / failure--> closed (resumable from the last record)
 */
export class BlobWriter {
  readonly name: string;
  readonly #s: StoreInternals;
  readonly #fh: fs.FileHandle;
  readonly #files: FragmentFiles;
  #headerEnd: number;
  #descEnd: number;
  #state: 'open' | 'closed' | 'finalized' = 'open';
  #failure: unknown;
  #chain: Promise<unknown> = Promise.resolve();

  #size = 0;
  /** Blob size as of the last durable record: where a resume would continue. */
  #durableSize = 0;
  /** Merkle hashing, fragment hashing and fragment writes run in the hashing thread. */
  #job: HashJob;
  /** The blob hash after the last completed call. */
  #hash: Uint8Array;
  #deferHash = false;
  readonly #chunker: Chunker;
  #chunkHash = crypto.createHash('sha256');
  #pending: Part[] = [];
  #pendingLen = 0;
  /** Bytes of the chunk in progress already in extents (written at a checkpoint). */
  #committed = 0;
  #chunkCount = 0;
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
  /** Fragments this writer pinned (published in the lease until it closes), and the snapshots they came from. */
  readonly #pinned = new Set<string>();
  readonly #pinnedSnapshots = new WeakSet<Descriptor>();
  /** The checkpoint being made durable in the background, and the first failure of one. */
  #bg: Promise<void> = Promise.resolve();
  #bgError: unknown;

  private constructor(s: StoreInternals, name: string, fh: fs.FileHandle, headerEnd: number, descEnd: number) {
    this.#s = s;
    this.name = name;
    this.#fh = fh;
    this.#headerEnd = headerEnd;
    this.#descEnd = descEnd;
    this.#files = new FragmentFiles(s.layout, 8);
    this.#job = new HashJob();
    this.#hash = EMPTY_HASH;
    this.#chunker = new Chunker(s.chunker);
  }

  /** @internal Creates a new blob; use BlobStore.newBlobWriter. */
  static async create(s: StoreInternals, name: string): Promise<BlobWriter> {
    checkBlobName(name);
    s.checkOpen();
    const { layout } = s;
    await ensureDir(layout.blobDir(name), s.knownDirs);
    // The descriptor appears under its name only with its header durable and
    // its lock held: written in tmp/, fsync'd, locked, then hard-linked into
    // blob/ (EEXIST: the name is taken). A crash leaves at most a temp file.
    const tmp = layout.tmpFile('desc');
    const fh = await fs.open(tmp, 'wx+');
    let linked = false;
    let ok = false;
    try {
      if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written`, { blob: name });
      const header = encodeHeader(name, Date.now());
      await writeAll(fh, header, 0);
      await fh.datasync();
      try {
        await fs.link(tmp, layout.descriptor(name));
        linked = true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new CabError('ERR_BLOB_EXISTS', `blob ${name} exists`, { blob: name });
        throw e;
      }
      await fs.unlink(tmp);
      await fsyncDir(layout.blobDir(name));
      await s.index.touchBlob(name, header.length);
      const w = new BlobWriter(s, name, fh, header.length, header.length);
      await s.lease.pin([], [name]);
      s.track(w);
      ok = true;
      return w;
    } catch (e) {
      throw ioError(e, `creating blob ${name}`, { blob: name });
    } finally {
      if (!ok) {
        await fh.close().catch(() => {});
        await fs.rm(tmp, { force: true }).catch(() => {});
        if (linked) await fs.rm(layout.descriptor(name), { force: true }).catch(() => {});
      }
    }
  }

  /** @internal Continues a blob from its last durable record; use BlobStore.resumeBlobWriter. */
  static async resume(s: StoreInternals, name: string): Promise<BlobWriter> {
    checkBlobName(name);
    s.checkOpen();
    const { layout } = s;
    // Locked, and the file the name points at (a descriptor may be replaced: see fsstore/rewrite.ts).
    const fh = await lockDescriptor(layout, name);
    let ok = false;
    try {
      const d = await readDescriptorFrom(fh, name);
      if (d.finalized) throw new CabError('ERR_BLOB_FINALIZED', `blob ${name} is finalized`, { blob: name });
      if (d.damagedAt !== undefined) throw new CabError('ERR_BLOB_DAMAGED', `blob ${name} is damaged from byte ${d.damagedAt}`, { blob: name, offset: d.damagedAt });
      let headerEnd: number;
      if (!d.hasHeader) {
        // Created but its header never became durable: start it again.
        const header = encodeHeader(name, Date.now());
        await fh.truncate(0);
        await writeAll(fh, header, 0);
        await fh.datasync();
        headerEnd = header.length;
        d.validEnd = headerEnd;
      } else {
        if (d.torn) {
          // Everything before the first bad record stands; the rest goes.
          await fh.truncate(d.validEnd);
          await fh.datasync();
        }
        headerEnd = (await firstRecordEnd(fh)) ?? d.validEnd;
      }
      await catchUpBlob(s.index, layout, name);
      const w = new BlobWriter(s, name, fh, headerEnd, d.validEnd);
      await s.lease.pin([], [name]);
      await w.#restore(d.size, d.chunkCount, d.chunkEnd, d.merkle, d.extents).catch(async (e: unknown) => {
        await s.lease.unpin([], [name]);
        throw e;
      });
      s.track(w);
      ok = true;
      return w;
    } catch (e) {
      throw ioError(e, `resuming blob ${name}`, { blob: name });
    } finally {
      if (!ok) await fh.close().catch(() => {});
    }
  }

  /** Re-reads at most one leaf and one chunk of the prefix to restore the hasher and the chunker. */
  async #restore(size: number, chunkCount: number, chunkEnd: number, merkle: MerkleState, extents: ExtentMap): Promise<void> {
    this.#size = size;
    this.#durableSize = size;
    this.#chunkCount = chunkCount;
    this.#chunkEnd = chunkEnd;
    this.#recordedChunkEnd = chunkEnd;
    await this.#job.close();
    this.#job = new HashJob(merkle);
    const leafStart = merkle.leaves * LEAF_SIZE;
    const from = Math.min(leafStart, chunkEnd);
    const tail = Buffer.allocUnsafe(size - from);
    let at = 0;
    for (const e of extents.slice(from, size - from)) {
      await this.#files.read(e.frag, tail, at, e.size, e.offset);
      at += e.size;
    }
    this.#job.send(tail.subarray(leafStart - from), true, [], false);
    this.#hash = await this.#job.digest();
    const open = tail.subarray(chunkEnd - from);
    if (this.#chunker.push(open).length > 0) {
      throw new CabError('ERR_BAD_STORE', `descriptor of ${this.name} records no boundary where the chunker finds one`, { blob: this.name });
    }
    this.#chunkHash.update(open);
    this.#pendingLen = open.length;
    this.#committed = open.length;
  }

  /** Bytes appended so far (durable or not). */
  get size(): number {
    return this.#size;
  }

  get isFinalized(): boolean {
    return this.#state === 'finalized';
  }

  /** BEP 52 hash of the bytes appended so far. */
  get hash(): Uint8Array {
    return Uint8Array.from(this.#hash);
  }

  /**
   * Appends bytes and local file ranges, in order. Every item is checked
   * before anything is appended: a bad item changes nothing.
   */
  appendBytes(...items: AppendItem[]): Promise<void> {
    return this.#run(async () => {
      const inputs: Array<{ bytes: Uint8Array } | { fh: fs.FileHandle; offset: number; size: number; file: string }> = [];
      try {
        for (const item of items) {
          if (item instanceof Uint8Array) {
            inputs.push({ bytes: item });
            continue;
          }
          if (item === null || typeof item !== 'object' || typeof item.file !== 'string') {
            throw new CabError('ERR_BAD_ARGUMENT', 'appendBytes takes Uint8Arrays and { file, offset?, size? } objects');
          }
          const offset = checkCount(item.offset ?? 0, 'offset');
          let fh: fs.FileHandle;
          try {
            fh = await fs.open(item.file, 'r');
          } catch (e) {
            throw new CabError('ERR_NO_SUCH_FILE', `cannot read ${item.file}: ${(e as Error).message}`, { path: item.file }, { cause: e });
          }
          inputs.push({ fh, offset, size: 0, file: item.file });
          const st = await fh.stat();
          if (!st.isFile()) throw new CabError('ERR_NO_SUCH_FILE', `not a regular file: ${item.file}`, { path: item.file });
          const size = item.size === undefined || item.size === -1 ? st.size - offset : checkCount(item.size, 'size');
          if (offset > st.size || offset + size > st.size) {
            throw new CabError('ERR_ILLEGAL_POSITION', `range [${offset}, ${offset + size}) is past the end of ${item.file} (${st.size} bytes)`, {
              path: item.file,
              offset,
              expected: st.size,
            });
          }
          (inputs[inputs.length - 1] as { size: number }).size = size;
        }
        await this.#mutate(async () => {
          // Small byte arrays in a row (a network batch of chunks, say) are gathered into one
          // block: one pass through the chunker and one hand-off to the hashing thread.
          let gather: Uint8Array[] = [];
          let gathered = 0;
          const flushGather = async () => {
            if (gathered === 0) return;
            const block = gather.length === 1 ? gather[0]! : Buffer.concat(gather, gathered);
            const ours = gather.length > 1;
            gather = [];
            gathered = 0;
            await this.#feed(block, undefined, ours);
          };
          for (const input of inputs) {
            if ('bytes' in input) {
              if (input.bytes.length < READ_BLOCK / 4) {
                if (gathered + input.bytes.length > READ_BLOCK) await flushGather();
                gather.push(input.bytes);
                gathered += input.bytes.length;
                continue;
              }
              await flushGather();
              for (let off = 0; off < input.bytes.length; off += READ_BLOCK) {
                await this.#feed(input.bytes.subarray(off, off + READ_BLOCK), undefined, false);
              }
            } else {
              await flushGather();
              for await (const block of readBlocks(input.size, READ_BLOCK, (pos, n) => readFile(input.fh, input.offset + pos, n))) {
                await this.#feed(block, undefined, true);
              }
            }
          }
          await flushGather();
          await this.#settle();
        });
      } finally {
        for (const input of inputs) if ('fh' in input) await input.fh.close().catch(() => {});
      }
    });
  }

  /**
   * @internal Appends chunks whose SHA-256 the caller has already checked
   * against the bytes (a transfer's receiver). They go through the chunker
   * as any bytes do; where it cuts exactly one of them, that chunk's hash is
   * taken from the caller instead of computed a second time.
   */
  appendVerified(chunks: Array<{ bytes: Uint8Array; hash: Uint8Array }>): Promise<void> {
    return this.#run(() =>
      this.#mutate(async () => {
        let i = 0;
        while (i < chunks.length) {
          // Up to READ_BLOCK bytes in one block, each chunk keyed by (offset, size) in it.
          const parts: Uint8Array[] = [];
          const known = new Map<number, Uint8Array>();
          let n = 0;
          while (i < chunks.length && (n === 0 || n + chunks[i]!.bytes.length <= READ_BLOCK)) {
            const c = chunks[i++]!;
            known.set(n * 2 ** 27 + c.bytes.length, c.hash);
            parts.push(c.bytes);
            n += c.bytes.length;
          }
          await this.#feed(Buffer.concat(parts, n), undefined, true, known);
        }
        await this.#settle();
      }),
    );
  }

  /**
   * Appends bytes [offset, offset + size) of a stored blob (size -1 or
   * omitted: to its end) by reference: no byte is copied, the new extents
   * point at the source's fragments. The bytes are read once, to chunk and
   * hash them.
   */
  appendBlob(blob: string, offset = 0, size = -1): Promise<void> {
    return this.#run(async () => {
      checkBlobName(blob);
      checkCount(offset, 'offset');
      if (size !== -1) checkCount(size, 'size');
      const src = await this.#source(blob);
      const n = size === -1 ? src.size - offset : size;
      if (offset > src.size || offset + n > src.size) {
        throw new CabError('ERR_ILLEGAL_POSITION', `range [${offset}, ${offset + n}) is past the end of blob ${blob} (${src.size} bytes)`, {
          blob,
          offset,
          expected: src.size,
        });
      }
      if (src.damagedAt !== undefined && offset + n > src.damagedAt) {
        throw new CabError('ERR_BLOB_DAMAGED', `blob ${blob} is damaged from byte ${src.damagedAt}`, { blob, offset: src.damagedAt });
      }
      await this.#mutate(async () => {
        const read = async (pos: number, len: number) => {
          const buf = Buffer.allocUnsafe(len);
          let at = 0;
          for (const e of src.extents.slice(offset + pos, len)) {
            await this.#files.read(e.frag, buf, at, e.size, e.offset);
            at += e.size;
          }
          return buf;
        };
        // At a boundary, whole chunks of the source are taken as they are.
        const whole = this.#pendingLen === 0 ? await this.#wholeChunks(blob, src, offset, n) : 0;
        let pos = offset + whole;
        for await (const block of readBlocks(n - whole, READ_BLOCK, (p, len) => read(whole + p, len))) {
          const len = block.length; // #feed hands the block to the hashing thread: it is empty after
          await this.#feed(block, { extents: src.extents, offset: pos }, true);
          pos += len;
        }
        await this.#settle();
      });
    });
  }

  /**
   * The fast path of appendBlob. With the chunker at a boundary, a range
   * that starts at one of the source's chunk boundaries is made of the
   * source's chunks: FastCDC restarted at a boundary cuts the same bytes the
   * same way, so their hashes and sizes come from the index, and the bytes
   * are read only for the blob hash (in the hashing thread). Not the
   * source's last chunk, whose end may be the end of the stream rather than
   * a cut. Returns the bytes taken.
   */
  async #wholeChunks(blob: string, src: Descriptor, offset: number, n: number): Promise<number> {
    const index = this.#s.index;
    const first = index.chunkNumberAt(blob, offset);
    if (first === undefined) return 0;
    const end = offset + n;
    let taken = 0;
    let group: Array<{ hash: Uint8Array; size: number }> = [];
    let groupBytes = 0;
    const flushGroup = async () => {
      if (groupBytes === 0) return;
      const start = offset + taken;
      const buf = Buffer.allocUnsafe(groupBytes);
      let at = 0;
      for (const e of src.extents.slice(start, groupBytes)) {
        await this.#files.read(e.frag, buf, at, e.size, e.offset);
        this.#pushExtent(e.frag, e.offset, e.size);
        at += e.size;
      }
      for (const c of group) {
        this.#newChunks.push([c.hash, c.size]);
        this.#chunkCount++;
        this.#chunkEnd += c.size;
      }
      this.#size += groupBytes;
      taken += groupBytes;
      group = [];
      groupBytes = 0;
      this.#job.send(buf, true, [], true);
      await this.#job.room();
    };
    for (let from = first; ; from += 1024) {
      const page = [];
      for (const c of index.blobChunks(blob, from)) {
        page.push(c);
        if (page.length === 1024) break;
      }
      for (const c of page) {
        const cEnd = c.offset + c.size;
        if (c.offset !== offset + taken + groupBytes || cEnd > end) return (await flushGroup(), taken);
        if (src.finalized && cEnd === src.size && c.size < this.#s.chunker.max) return (await flushGroup(), taken);
        group.push(c);
        groupBytes += c.size;
        if (groupBytes >= READ_BLOCK) await flushGroup();
      }
      if (page.length < 1024) break;
    }
    await flushGroup();
    return taken;
  }

  /** A durable checkpoint: resolves when every byte appended so far would survive kill -9 and power loss. */
  flush(): Promise<void> {
    return this.#run(() => this.#mutate(() => this.#checkpoint(false)));
  }

  /** Makes everything durable and releases the blob, unfinalized: it can be resumed. */
  closeWithoutFinalize(): Promise<void> {
    if (this.#state !== 'open') return Promise.resolve();
    return this.#run(async () => {
      try {
        await this.#mutate(() => this.#checkpoint(false));
      } finally {
        await this.#release('closed');
      }
    });
  }

  /** Finalizes the blob: its content and hash are fixed from now on. */
  close(): Promise<void> {
    if (this.#state === 'finalized') return Promise.resolve();
    return this.#run(async () => {
      await this.#mutate(async () => {
        const last = this.#chunker.end();
        if (last > 0) await this.#endChunk();
        await this.#checkpoint(true);
      });
      await this.#release('finalized');
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.closeWithoutFinalize();
  }

  /** Serializes calls on one writer; after close or failure they reject. */
  #run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#chain.then(() => {
      if (this.#state !== 'open') {
        if (this.#failure !== undefined) throw this.#failure;
        throw new CabError('ERR_CLOSED', `writer of ${this.name} is closed`, { blob: this.name });
      }
      return fn();
    });
    this.#chain = p.catch(() => {});
    return p;
  }

  /** Runs a step that changes state; if it fails, the writer is unusable and releases the blob. */
  async #mutate(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      // A full disk is ERR_NO_SPACE, any other errno ERR_IO: the blob stays as its last durable record left it.
      this.#failure = ioError(e, `writing blob ${this.name}`, { blob: this.name, offset: this.#durableSize });
      await this.#release('closed');
      throw this.#failure;
    }
  }

  async #release(state: 'closed' | 'finalized'): Promise<void> {
    if (this.#state !== 'open') return;
    this.#state = state;
    await this.#bg.catch(() => {});
    // The hashing thread may still write to the fragment: wait for it before closing the file.
    await this.#job.close().catch(() => {});
    await this.#frag?.discard();
    this.#frag = null;
    await this.#files.close();
    await this.#fh.close().catch(() => {});
    await this.#s.lease.unpin(this.#pinned, [this.name]).catch(() => {});
    this.#pinned.clear();
    this.#s.untrack(this);
  }

  /**
   * Chunks, hashes and places one block of input. `give`: the block is ours
   * and goes to the hashing thread without a copy.
   */
  async #feed(
    block: Uint8Array,
    ref: { extents: ExtentMap; offset: number } | undefined,
    give: boolean,
    known?: Map<number, Uint8Array>,
  ): Promise<void> {
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
    if (this.#bgError !== undefined) throw this.#bgError;
    if (this.#frag && this.#frag.size >= this.#s.fragmentSize) await this.#checkpoint(false, false);
  }

  #addPart(block: Uint8Array, off: number, len: number, ref: { extents: ExtentMap; offset: number } | undefined, hash = true): void {
    if (len === 0) return;
    if (hash) this.#chunkHash.update(block.subarray(off, off + len));
    if (ref) {
      for (const ext of ref.extents.slice(ref.offset + off, len)) this.#pending.push({ ext });
    } else {
      this.#pending.push({ lit: block.subarray(off, off + len) });
    }
    this.#pendingLen += len;
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
      await this.#commitPending();
      if (allLiteral) this.#local.set(toHex(hash), at);
    }
    this.#pending = [];
    this.#newChunks.push([hash, size]);
    this.#chunkCount++;
    this.#chunkEnd += size;
    this.#pendingLen = 0;
    this.#committed = 0;
  }

  /**
   * A blob whose fragments this writer is about to reference. Its fragments
   * are pinned (until the writer closes) with the GC gate held, so that the
   * blob may be deleted meanwhile and GC still keeps them.
   */
  async #source(name: string): Promise<Descriptor> {
    const d = await this.#s.snapshot(name);
    if (this.#pinnedSnapshots.has(d)) return d;
    return this.#s.lease.gate(async () => {
      const fresh = await this.#s.snapshot(name); // under the gate: it still exists
      const add = fresh.extents.fragments().filter((f) => !this.#pinned.has(f));
      for (const f of add) this.#pinned.add(f);
      await this.#s.lease.pin(add);
      this.#pinnedSnapshots.add(fresh);
      return fresh;
    });
  }

  /** A stored copy of a chunk: in the fragment being written, or in a blob the index knows. */
  async #findStored(hash: Uint8Array, size: number): Promise<NewExtent[] | undefined> {
    const local = this.#local.get(toHex(hash));
    if (local !== undefined) return [{ frag: null, offset: local, size }];
    for (const loc of this.#s.index.locations(hash)) {
      if (loc.size !== size) continue;
      let d;
      try {
        d = await this.#source(loc.blob);
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
  async #commitPending(): Promise<void> {
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

  /** End of an append call: the blob hash so far (unless deferred). */
  async #settle(): Promise<void> {
    if (this.#deferHash) return;
    this.#hash = await this.#job.digest();
  }

  /**
   * @internal For a caller that appends many pieces and asks for the hash
   * once (a transfer): appends stop waiting for the hashing thread, so it
   * works while the caller fetches more; `hash` is then only current after
   * `digest()`.
   */
  deferHash(): void {
    this.#deferHash = true;
  }

  /** The BEP 52 hash of everything appended so far, from the hashing thread. */
  digest(): Promise<Uint8Array> {
    return this.#run(async () => {
      this.#hash = await this.#job.digest();
      return Uint8Array.from(this.#hash);
    });
  }

  /**
   * One descriptor record for everything appended since the last one. The
   * sealing (hashing thread done, fragment fsync + rename + directory fsync)
   * and the record's write and fsync run in the background while the writer
   * goes on, at most one checkpoint behind; with `wait` this resolves only
   * once the record is durable (and so are all before it).
   */
  async #checkpoint(final: boolean, wait = true): Promise<void> {
    await this.#commitPending();
    const frag = this.#frag;
    if (!frag && !final && this.#newExtents.length === 0 && this.#newChunks.length === 0) {
      if (wait) await this.#bg;
      return;
    }
    if (!wait) await this.#bg; // bound the work in the background to one checkpoint
    this.#frag = null;
    this.#local.clear();
    const extents = this.#newExtents;
    const chunks = this.#newChunks;
    const size = this.#size;
    const chunkOffset = this.#recordedChunkEnd;
    this.#newExtents = [];
    this.#newChunks = [];
    this.#recordedChunkEnd = this.#chunkEnd;
    // Asked now, so the hashing thread answers for exactly the bytes sent so far.
    const fragId = frag ? this.#job.sealFragment() : undefined;
    const state = this.#job.state();
    const digest = final ? this.#job.digest() : undefined;
    for (const p of [fragId, state, digest]) p?.catch(() => {});
    const prev = this.#bg;
    const task = (async () => {
      let id: string | undefined;
      try {
        if (frag) {
          id = await fragId!;
          // Pinned before it appears in cas/, so no GC can take it before the record references it.
          if (!this.#pinned.has(id)) {
            this.#pinned.add(id);
            await this.#s.lease.pin([id]);
          }
          await frag.seal(id, this.#s.layout, this.#s.knownDirs);
        }
      } catch (e) {
        await frag?.discard();
        throw e;
      }
      await prev;
      const rec: AppendRecord = {
        t: 'x',
        s: size,
        x: extents.map((e) => [fromHex(e.frag ?? id!), e.offset, e.size]),
        c: packChunks(chunks),
        m: merkleToRecord(await state),
      };
      if (digest) {
        this.#hash = await digest;
        rec.h = this.#hash;
      }
      const buf = encodeRecord(rec);
      const start = this.#descEnd;
      try {
        await writeAll(this.#fh, buf, start);
        await this.#fh.datasync();
      } catch (e) {
        // Not durable: cut what part of the record got written, so the descriptor ends cleanly where it did.
        await this.#fh.truncate(start).catch(() => {});
        throw e;
      }
      this.#descEnd += buf.length;
      this.#durableSize = size;
      try {
        if (!(await this.#s.index.applyAppend(this.name, rec, start, this.#descEnd, chunkOffset, this.#headerEnd))) {
          await catchUpBlob(this.#s.index, this.#s.layout, this.name);
        }
      } catch (e) {
        // The record is durable, so the bytes are safe; the index is derived and catches up from
        // the descriptor when next asked (catchUpBlob). A full disk must not fail a write that stands.
        if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
      }
    })();
    task.catch((e: unknown) => {
      this.#bgError ??= e;
    });
    this.#bg = task;
    if (wait) await task;
  }
}

const EMPTY_HASH = sha256(new Uint8Array(0));

async function readFile(fh: fs.FileHandle, position: number, n: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(n);
  let done = 0;
  while (done < n) {
    const { bytesRead } = await fh.read(buf, done, n - done, position + done);
    if (bytesRead === 0) throw new CabError('ERR_ILLEGAL_POSITION', 'the file shrank while it was being read', { offset: position + done });
    done += bytesRead;
  }
  return buf;
}

/** The end of the header record, read from the file. */
async function firstRecordEnd(fh: fs.FileHandle): Promise<number | undefined> {
  const b = Buffer.alloc(4);
  const { bytesRead } = await fh.read(b, 0, 4, 0);
  return bytesRead === 4 ? 8 + b.readUInt32LE(0) : undefined;
}
