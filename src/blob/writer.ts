import { CabError, ioError } from '../errors.js';
import { bytesEqual, fromHex, toHex } from '../hash/sha256.js';
import { readExtents } from '../disk/blob-bytes.js';
import { FragmentFiles } from '../disk/fragments.js';
import { checkBlobName } from '../format/layout.js';
import { Checkpoints } from './checkpoint.js';
import type { StoreInternals } from './context.js';
import { Ingest, type BlockSource } from './ingest.js';
import { READ_BLOCK, checkBlobRange, checkCount, closeInputs, feedInputs, openInputs, readBlocks, verifiedBlocks, type AppendItem } from './input.js';
import { createDescriptor, resumeDescriptor, type OpenDescriptor } from './open.js';
import { WriterPins } from './pins.js';
import { takeWholeChunks } from './whole-chunks.js';

export type { AppendItem } from './input.js';

export interface CloseOptions {
  /** The BEP 52 root the blob must have (32 bytes or 64 hex digits); else close fails with ERR_HASH_MISMATCH and finalizes nothing. */
  expectHash?: Uint8Array | string;
}

/** A hash argument: 32 bytes, or 64 hex digits. */
function hashArg(h: Uint8Array | string): Uint8Array {
  const b = typeof h === 'string' ? fromHex(h) : h;
  if (!(b instanceof Uint8Array) || b.length !== 32) throw new CabError('ERR_BAD_ARGUMENT', 'expectHash is 32 bytes or 64 hex digits');
  return b;
}

/**
 * Writes one blob. The work is split by job:
 *
 *   open.ts          creates or resumes the descriptor, locked
 *   input.ts         checks appendBytes' items and reads their files
 *   ingest.ts        chunking, dedup, fragment writes (Ingest)
 *   whole-chunks.ts  appendBlob's fast path at a chunk boundary
 *   checkpoint.ts    the durable records, in the background (Checkpoints)
 *   pins.ts          fragments of other blobs kept from GC while referenced
 *
 * and this class holds the state machine, serializes calls, and releases
 * everything at the end. A checkpoint (flush, close, or every
 * `fragmentSize` bytes) is one descriptor record.
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
  readonly #files: FragmentFiles;
  readonly #pins: WriterPins;
  readonly #ingest: Ingest;
  readonly #log: Checkpoints;
  #state: 'open' | 'closed' | 'finalized' = 'open';
  #failure: unknown;
  #chain: Promise<unknown> = Promise.resolve();

  private constructor(s: StoreInternals, name: string, o: OpenDescriptor) {
    this.#s = s;
    this.name = name;
    this.#files = new FragmentFiles(s.layout, 8);
    this.#pins = new WriterPins(s);
    this.#ingest = new Ingest(s, this.#pins, o.d?.merkle);
    this.#log = new Checkpoints(s, name, o.fh, { headerEnd: o.headerEnd, descEnd: o.descEnd, size: o.d?.size ?? 0 }, this.#ingest, this.#pins);
  }

  /** @internal Creates a new blob; use BlobStore.newBlobWriter. */
  static create(s: StoreInternals, name: string): Promise<BlobWriter> {
    return createDescriptor(s, name, (o) => BlobWriter.#start(s, name, o));
  }

  /** @internal Continues a blob from its last durable record; use BlobStore.resumeBlobWriter. */
  static resume(s: StoreInternals, name: string): Promise<BlobWriter> {
    return resumeDescriptor(s, name, (o) => BlobWriter.#start(s, name, o));
  }

  /** A writer on an open descriptor: the blob pinned, a resumed one's hasher and chunker restored. */
  static async #start(s: StoreInternals, name: string, o: OpenDescriptor): Promise<BlobWriter> {
    const w = new BlobWriter(s, name, o);
    await s.lease.pin([], [name]);
    if (o.d) {
      await w.#ingest.restore(o.d, w.#files, name).catch(async (e: unknown) => {
        await s.lease.unpin([], [name]);
        throw e;
      });
    }
    s.track(w);
    return w;
  }

  /** Bytes appended so far (durable or not). */
  get size(): number {
    return this.#ingest.size;
  }

  get isFinalized(): boolean {
    return this.#state === 'finalized';
  }

  /** BEP 52 hash of the bytes appended so far. */
  get hash(): Uint8Array {
    return Uint8Array.from(this.#ingest.hash);
  }

  /**
   * Appends bytes and local file ranges, in order. Every item is checked
   * before anything is appended: a bad item changes nothing.
   */
  appendBytes(...items: AppendItem[]): Promise<void> {
    return this.#run(async () => {
      const inputs = await openInputs(items);
      try {
        await this.#mutate(async () => {
          await feedInputs(inputs, (block, give) => this.#feed(block, undefined, give));
          await this.#ingest.settle();
        });
      } finally {
        await closeInputs(inputs);
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
        for (const { block, known } of verifiedBlocks(chunks)) await this.#feed(block, undefined, true, known);
        await this.#ingest.settle();
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
      const src = await this.#pins.source(blob);
      const n = checkBlobRange(src, blob, offset, size);
      await this.#mutate(async () => {
        const read = async (pos: number, len: number) => {
          const buf = Buffer.allocUnsafe(len);
          await readExtents(this.#files, src.extents, buf, offset + pos);
          return buf;
        };
        // At a boundary, whole chunks of the source are taken as they are.
        const whole = this.#ingest.atBoundary ? await takeWholeChunks(this.#s, this.#files, this.#ingest, blob, src, offset, n) : 0;
        let pos = offset + whole;
        for await (const block of readBlocks(n - whole, READ_BLOCK, (p, len) => read(whole + p, len))) {
          const len = block.length; // #feed hands the block to the hashing thread: it is empty after
          await this.#feed(block, { extents: src.extents, offset: pos }, true);
          pos += len;
        }
        await this.#ingest.settle();
      });
    });
  }

  /**
   * @internal For a caller that appends many pieces and asks for the hash
   * once (a transfer): appends stop waiting for the hashing thread, so it
   * works while the caller fetches more; `hash` is then only current after
   * `digest()`.
   */
  deferHash(): void {
    this.#ingest.deferHash();
  }

  /** The BEP 52 hash of everything appended so far, from the hashing thread. */
  digest(): Promise<Uint8Array> {
    return this.#run(async () => Uint8Array.from(await this.#ingest.digest()));
  }

  /** A durable checkpoint: resolves when every byte appended so far would survive kill -9 and power loss. */
  flush(): Promise<void> {
    return this.#run(() => this.#mutate(() => this.#log.run(false)));
  }

  /** Makes everything durable and releases the blob, unfinalized: it can be resumed. */
  closeWithoutFinalize(): Promise<void> {
    if (this.#state !== 'open') return Promise.resolve();
    return this.#run(async () => {
      try {
        await this.#mutate(() => this.#log.run(false));
      } finally {
        await this.#release('closed');
      }
    });
  }

  /**
   * Finalizes the blob: its content and hash are fixed from now on. With
   * `expectHash` (32 bytes, or 64 hex digits), a blob whose BEP 52 root is
   * another is not finalized: close rejects with ERR_HASH_MISMATCH and the
   * writer stays open, every byte still there, to append more or to
   * closeWithoutFinalize.
   */
  close(options: CloseOptions = {}): Promise<void> {
    if (this.#state === 'finalized') return Promise.resolve();
    return this.#run(async () => {
      const expect = options.expectHash === undefined ? undefined : hashArg(options.expectHash);
      if (expect) {
        const root = await this.#ingest.digest();
        if (!bytesEqual(root, expect)) {
          throw new CabError('ERR_HASH_MISMATCH', `blob ${this.name} hashes to ${toHex(root)}, not the expected ${toHex(expect)}: not finalized`, {
            blob: this.name,
            expected: toHex(expect),
            found: toHex(root),
          });
        }
      }
      await this.#mutate(async () => {
        await this.#ingest.end();
        await this.#log.run(true);
      });
      await this.#release('finalized');
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.closeWithoutFinalize();
  }

  /** One block into the ingest pipeline; a full fragment starts a checkpoint in the background. */
  async #feed(block: Uint8Array, ref: BlockSource | undefined, give: boolean, known?: Map<number, Uint8Array>): Promise<void> {
    await this.#ingest.feed(block, ref, give, known);
    this.#log.throwIfFailed();
    if (this.#ingest.fragmentFull) await this.#log.run(false, false);
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
      this.#failure = ioError(e, `writing blob ${this.name}`, { blob: this.name, offset: this.#log.durableSize });
      await this.#release('closed');
      throw this.#failure;
    }
  }

  async #release(state: 'closed' | 'finalized'): Promise<void> {
    if (this.#state !== 'open') return;
    this.#state = state;
    await this.#log.settled();
    await this.#ingest.close();
    await this.#files.close();
    await this.#log.close();
    await this.#pins.release(this.name);
    this.#s.untrack(this);
  }
}
