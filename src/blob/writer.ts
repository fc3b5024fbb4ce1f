import type { Writable } from 'node:stream';
import { CabError, abortError, ioError, isCabError } from '../errors.js';
import { bytesEqual, hashArg, toHex } from '../hash/sha256.js';
import { FragmentFiles } from '../disk/fragments.js';
import { checkBlobName } from '../format/layout.js';
import { sameChunkerParams, type ChunkerParams } from '../chunker/params.js';
import type { Descriptor } from '../format/descriptor.js';
import { Checkpoints } from './checkpoint.js';
import type { StoreInternals } from './context.js';
import { Ingest, type BlockRefs, type BlockSource, type Claimed } from './ingest.js';
import { checkBlobRange, checkCount, checkSignal, closeInputs, feedInputs, openInputs, splitAppendArgs, type AppendItem, type AppendOptions } from './input.js';
import { checkVerified, claimedBlocks, verifiedBlocks, type VerifiedChunk } from './pieces.js';
import { createDescriptor, resumeDescriptor, type OpenDescriptor } from './open.js';
import { WriterPins } from './pins.js';
import { Serial } from './serial.js';
import { feedBlobRange, takeWholeChunks } from './whole-chunks.js';
import { checkSource, checkWriteStreamOptions, createBlobWriteStream, pump, type ByteSource, type Pumped, type WriteStreamOptions } from './write-stream.js';

export type { AppendItem, AppendOptions } from './input.js';
export { DEFAULT_WRITE_STREAM_HIGH_WATER_MARK, type ByteSource, type WriteStreamOptions } from './write-stream.js';

export interface CloseOptions {
  /** The BEP 52 root the blob must have (32 bytes or 64 hex digits); else close fails with ERR_HASH_MISMATCH and finalizes nothing. */
  expectHash?: Uint8Array | string;
}

/**
 * Writes one blob. The work is split by job:
 *
 *   open.ts          creates or resumes the descriptor, locked
 *   input.ts         checks appendBytes' items and reads their files
 *   ingest.ts        chunking, dedup, fragment writes (Ingest)
 *   whole-chunks.ts  appendBlob's fast path at a chunk boundary
 *   write-stream.ts  appendStream's reading and the write stream
 *   serial.ts        one call at a time, in order
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
  readonly #calls = new Serial();
  #leavesLent = 0;
  #checkpointBytes = Infinity; // checkpointEvery's

  private constructor(s: StoreInternals, name: string, o: OpenDescriptor) {
    this.#s = s;
    this.name = name;
    this.#files = new FragmentFiles(s.cas, 8);
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
        // The fragments it read and its hashing job go with it (the descriptor is closed by the caller).
        await w.#files.close();
        await w.#ingest.close();
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

  /** @internal Leaves of the finalized blob (1 MiB or more, not resumed) taken from another blob's leaf layer, not hashed. */
  get leavesLent(): number { return this.#leavesLent; }

  /** BEP 52 hash of the bytes appended so far. */
  get hash(): Uint8Array {
    return Uint8Array.from(this.#ingest.hash);
  }

  /**
   * Appends bytes and local file ranges, in order. Every item is checked
   * before anything is appended: a bad item changes nothing. The last
   * argument may be options (AppendOptions: `{ signal }`), told from an item
   * by having no `file` key.
   *
   * Each call waits for the hashing thread, so that `hash` is current when
   * it resolves: a round trip of about 0.15 ms. For many small pieces, pass
   * them in one call, or use appendStream or createWriteStream.
   */
  appendBytes(...items: AppendItem[]): Promise<void>;
  appendBytes(...args: [...items: AppendItem[], options: AppendOptions]): Promise<void>;
  // async, so that a bad argument is a rejection; the call is queued (#run) before its first await, so calls keep their order.
  async appendBytes(...args: Array<AppendItem | AppendOptions>): Promise<void> {
    const { items, signal } = splitAppendArgs(args);
    return this.#appendItems(items, signal, true);
  }

  /**
   * @internal Appends chunks whose SHA-256 the caller has checked against
   * their bytes (a transfer). They go through the chunker as any bytes do;
   * where it cuts exactly one of them, its hash is the caller's. `refs` go
   * in by reference (appendBlob-style). Chunks end to end from the start of
   * a recycled buffer (hash/pool.ts) go without a copy. With `claimedBy`
   * (the peer's chunker), the hashes are the peer's claims, checked here
   * (claimedBlocks); at the first that fails, the chunks before it are made
   * durable and the writer fails with ERR_HASH_MISMATCH. `checked`: the
   * caller has checked them already; only the cuts are taken as claimed. `blobSize` (if known): only its last chunk may be short.
   */
  async appendVerified(chunks: readonly VerifiedChunk[], claimedBy?: ChunkerParams, checked = false, blobSize?: number): Promise<void> {
    checkVerified(chunks);
    return this.#run(() =>
      this.#mutate(async () => {
        const at = { blob: this.name, offset: this.size };
        const fast = claimedBy && this.#ingest.atBoundary && sameChunkerParams(claimedBy, this.#s.chunker);
        const { blocks, bad } = claimedBy ? claimedBlocks(chunks, fast === true, this.#s.chunker, at, checked, blobSize) : { blocks: verifiedBlocks(chunks) };
        for (const b of blocks) await this.#feed(b.block, b.refs, true, b.known, b.claimed);
        if (bad) throw (await this.#log.run(false), bad);
        await this.#ingest.settle();
      }),
    );
  }

  /** @internal Blob `blob`'s descriptor, pinned until the writer closes: bytes read through its extents may go to appendVerified as `refs`. */
  async source(blob: string): Promise<Descriptor> {
    this.#throwIfNotOpen();
    checkBlobName(blob);
    return this.#pins.source(blob);
  }

  /**
   * Appends bytes [offset, offset + size) of a stored blob (size -1 or
   * omitted: to its end) by reference: no byte is copied, the new extents
   * point at the source's fragments. The bytes are read once, to chunk and
   * hash them.
   */
  async appendBlob(blob: string, offset = 0, size = -1, options: AppendOptions = {}): Promise<void> {
    const signal = checkSignal(options, 'appendBlob');
    return this.#run(async () => {
      checkBlobName(blob);
      checkCount(offset, 'offset');
      if (size !== -1) checkCount(size, 'size');
      const src = await this.#pins.source(blob);
      const n = checkBlobRange(src, blob, offset, size);
      await this.#append(signal, true, async (step) => {
        // At a boundary, whole chunks of the source are taken as they are.
        const whole = this.#ingest.atBoundary ? await takeWholeChunks(this.#s, this.#files, this.#ingest, blob, src, offset, n, signal) : 0;
        await feedBlobRange(this.#files, src, offset + whole, n - whole, (block, ref) => (step(), this.#feed(block, ref, true)));
      });
    }, signal);
  }

  /**
   * Appends everything `source` gives (an AsyncIterable or Iterable of
   * Uint8Arrays, or a Node Readable) and resolves to the number of bytes.
   * Small pieces are gathered into 1 MiB blocks, so that they cost what
   * large ones do; at most one block of the source is held at a time, and
   * the source may reuse its buffer for the next piece. Strings, and a
   * Readable with an encoding set, reject with ERR_BAD_ARGUMENT before
   * anything is read.
   *
   * If the source fails, or gives something other than bytes, every byte it
   * gave before is appended and the call rejects with the source's error as
   * it came (ERR_BAD_ARGUMENT for a piece that is not bytes); the writer
   * stays open, `size` says how far it got. With `signal` aborted the same
   * holds, with ERR_ABORTED, and the source is told to stop (return(): a
   * Readable is destroyed). A failure of the writer itself closes it as any
   * failed append does. `hash` is brought up to date once, at the end.
   * Until the source ends, other calls on this writer wait their turn.
   */
  async appendStream(source: ByteSource, options: AppendOptions = {}): Promise<number> {
    checkSource(source);
    const signal = checkSignal(options, 'appendStream');
    return this.#run(async () => {
      let out: Pumped = { bytes: 0 };
      await this.#append(undefined, true, async () => {
        out = await pump(source, signal, (block) => this.#feed(block, undefined, true), () => this.#aborted(signal!));
      });
      if (out.stopped) throw out.stopped.error;
      return out.bytes;
    }, signal);
  }

  /**
   * A Node Writable that appends what is written to it, in blocks of
   * `highWaterMark` bytes (at most two held, however small the writes).
   * 'finish' means every byte is appended and durable (with `finalize`:
   * finalized); destroy(), an abort or an error never finalize and leave
   * the writer open. Errors of the blob are CabErrors; misuse of the stream
   * (write(5), write after end) gets Node's. ERR_CLOSED if the writer is
   * closed. Details: WriteStreamOptions and blob/write-stream.ts.
   */
  createWriteStream(options: WriteStreamOptions = {}): Writable {
    this.#throwIfNotOpen();
    const o = checkWriteStreamOptions(options);
    const closing = o.expectHash === undefined ? {} : { expectHash: hashArg(o.expectHash, 'expectHash') };
    return createBlobWriteStream(
      {
        name: this.name,
        // The stream's blocks are its own and not touched again: given to the hashing thread without a copy.
        append: (chunks, signal) => this.#appendItems(chunks, signal, false, true),
        // Not finalizing: a flush, which also brings `hash` up to date (the stream's writes did not wait for it).
        end: o.finalize ? () => this.close(closing) : () => this.flush(),
      },
      o,
    );
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

  /** A durable checkpoint: resolves when every byte appended so far would survive kill -9 and power loss, with `hash` up to date. */
  flush(): Promise<void> {
    return this.#run(() => this.#mutate(() => this.#ingest.settle().then(() => this.#log.run(false))));
  }

  /** @internal From now on, a background checkpoint (as a full fragment's) each time `bytes` more are appended, inside a long append (a tus PATCH). */
  checkpointEvery(bytes: number): void { this.#checkpointBytes = bytes; }

  /** Makes everything durable and releases the blob, unfinalized: it can be resumed. */
  closeWithoutFinalize(): Promise<void> {
    if (this.#state !== 'open') return Promise.resolve();
    return this.#run(async () => {
      try {
        await this.#mutate(() => this.#log.run(false));
      } finally {
        await this.#release('closed');
      }
    }, undefined, () => this.#state !== 'open');
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
      const expect = options.expectHash === undefined ? undefined : hashArg(options.expectHash, 'expectHash');
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
      this.#leavesLent = await this.#ingest.finishLayer(this.name);
      await this.#release('finalized');
    }, undefined, () => this.#state === 'finalized');
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.closeWithoutFinalize();
  }

  /** One block into the ingest pipeline; a full fragment (or checkpointEvery's bytes) starts a checkpoint in the background. */
  async #feed(block: Uint8Array, ref: BlockSource | BlockRefs | undefined, give: boolean, known?: Map<number, Uint8Array>, claimed?: Claimed): Promise<void> {
    await this.#ingest.feed(block, ref, give, known, claimed);
    this.#log.throwIfFailed();
    if (this.#ingest.fragmentFull || this.size - this.#log.takenSize >= this.#checkpointBytes) await this.#log.run(false, false);
  }

  /** appendBytes' work; `settle`: bring `hash` up to date at the end; `ours`: the byte arrays are ours to give away. */
  #appendItems(items: AppendItem[], signal: AbortSignal | undefined, settle: boolean, ours = false): Promise<void> {
    return this.#run(async () => {
      const inputs = await openInputs(items);
      try {
        const feed = (step: () => void) => (block: Uint8Array, give: boolean) => (step(), this.#feed(block, undefined, give));
        await this.#append(signal, settle, (step) => feedInputs(inputs, feed(step), ours));
      } finally {
        await closeInputs(inputs);
      }
    }, signal);
  }

  /**
   * The part of an append that feeds blocks. `feed` calls `step()` before
   * each block; once `signal` is aborted that stops it with ERR_ABORTED, the
   * blocks fed before staying appended: the hash is brought up to date and
   * the writer stays open. Any other failure closes it (#mutate).
   */
  async #append(signal: AbortSignal | undefined, settle: boolean, feed: (step: () => void) => Promise<void>): Promise<void> {
    let stopped: unknown;
    const step = () => {
      if (signal?.aborted) throw this.#aborted(signal);
    };
    await this.#mutate(async () => {
      try {
        await feed(step);
      } catch (e) {
        if (!isCabError(e, 'ERR_ABORTED') || !signal?.aborted) throw e;
        stopped = e;
      }
      if (settle || stopped !== undefined) await this.#ingest.settle();
    });
    if (stopped !== undefined) throw stopped;
  }

  #aborted(signal: AbortSignal): CabError {
    return abortError(signal, `appending to blob ${this.name}`, { blob: this.name, offset: this.size });
  }

  /** Serializes calls on one writer (see Serial); after close or failure they reject, but a close queued behind another that did its work (`done`) resolves. */
  #run<T>(fn: () => Promise<T>, signal?: AbortSignal, done?: () => boolean): Promise<T> {
    const call = () => {
      if (done?.()) return Promise.resolve(undefined as T);
      this.#throwIfNotOpen();
      return fn();
    };
    return this.#calls.run(call, signal, () => this.#aborted(signal!));
  }

  #throwIfNotOpen(): void {
    if (this.#state === 'open') return;
    if (this.#failure !== undefined) throw this.#failure;
    throw new CabError('ERR_CLOSED', `writer of ${this.name} is closed`, { blob: this.name });
  }

  /** Runs a step that changes state; if it fails, the writer is unusable and releases the blob. */
  async #mutate(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      // A chunk failed its claimed hash (appendVerified): the chunks before it are kept.
      if (this.#ingest.refused) await this.#log.run(false).catch(() => {});
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
    await this.#pins.release(this.name, state === 'finalized').finally(() => this.#s.untrack(this));
  }
}
