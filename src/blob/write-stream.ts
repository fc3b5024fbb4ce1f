import { Writable } from 'node:stream';
import { CabError, abortError, raceAbort } from '../errors.js';
import { RECYCLED_BYTES, recycledBuffer } from '../hash/pool.js';
import { READ_BLOCK, checkSignal } from './input.js';

/** Bytes of a blob write stream's block (see WriteStreamOptions.highWaterMark): one recycled buffer. */
export const DEFAULT_WRITE_STREAM_HIGH_WATER_MARK = RECYCLED_BYTES;

/** What appendStream reads: an iterable of byte arrays, async or not. A Node Readable is one (without an encoding set). */
export type ByteSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/**
 * Options of BlobWriter.createWriteStream. The stream copies writes into a
 * block of `highWaterMark` bytes and acknowledges them at once; a full block
 * is appended while the next fills, and a write that fills that one too
 * waits: two blocks at most, and Node's queue behind a waiting write is
 * 16 KiB (`writableHighWaterMark`). An append that fails destroys the stream
 * with its error. It takes Uint8Arrays only (a string is 'error'
 * ERR_BAD_ARGUMENT); write() of what is not a string, Buffer or Uint8Array
 * throws Node's ERR_INVALID_ARG_TYPE (null: ERR_STREAM_NULL_VALUES), a write
 * after end() is 'error' ERR_STREAM_WRITE_AFTER_END. 'finish' means every
 * byte written is appended and durable (a flush) and `hash` is up to date;
 * with `finalize`, end() finalizes (close, with `expectHash`). destroy(), an
 * abort of `signal` or an error leave the writer open, holding a prefix of
 * what was written; once the stream has emitted 'close', no append of it is
 * under way.
 */
export interface WriteStreamOptions {
  /**
   * The stream's block (default DEFAULT_WRITE_STREAM_HIGH_WATER_MARK, 1 MiB):
   * writes are copied into it and acknowledged at once; a full block is
   * appended while the next fills, and a write that fills that one too
   * waits. The stream holds two blocks at most, however small the writes.
   */
  highWaterMark?: number;
  /**
   * Destroys the stream with ERR_ABORTED. A write under way stops between
   * blocks (1 MiB by default); what was appended before stays, so the blob
   * holds a prefix of what was written. The writer stays open.
   */
  signal?: AbortSignal;
  /** On end(), finalize the blob (writer.close) instead of flushing it: 'finish' then means finalized. */
  finalize?: boolean;
  /** With `finalize`: the BEP 52 root the blob must have, as for close({ expectHash }); a mismatch is 'error' ERR_HASH_MISMATCH and the writer stays open. */
  expectHash?: Uint8Array | string;
}

/** What a write stream needs of its writer. */
export interface StreamSink {
  readonly name: string;
  /** Appends `chunks`, in order, as one call on the writer (without bringing `hash` up to date). */
  append(chunks: Uint8Array[], signal: AbortSignal | undefined): Promise<void>;
  /** At end(): a durable flush and `hash` brought up to date, or finalizing. */
  end(): Promise<void>;
}

const bad = (message: string) => new CabError('ERR_BAD_ARGUMENT', message);

/** Checks appendStream's source before anything is read: an iterable of byte arrays, not a string or a byte array itself. */
export function checkSource(source: unknown): void {
  if (typeof source === 'string' || source instanceof String) throw bad('appendStream takes byte arrays, not a string: encode it first');
  if (ArrayBuffer.isView(source) || source instanceof ArrayBuffer) throw bad('appendStream takes an iterable of byte arrays; for one array, use appendBytes');
  const s = source as { [Symbol.asyncIterator]?: unknown; [Symbol.iterator]?: unknown; readableEncoding?: unknown } | null;
  if (s === null || typeof s !== 'object' || (typeof s[Symbol.asyncIterator] !== 'function' && typeof s[Symbol.iterator] !== 'function')) {
    throw bad('appendStream takes an AsyncIterable or Iterable of Uint8Arrays, or a Node Readable');
  }
  if (typeof s.readableEncoding === 'string') throw bad(`appendStream takes bytes, and this Readable gives ${s.readableEncoding} strings (setEncoding was called)`);
}

/** Checks createWriteStream's options; returns them with their defaults. */
export function checkWriteStreamOptions(options: WriteStreamOptions): WriteStreamOptions & { highWaterMark: number } {
  const signal = checkSignal(options, 'createWriteStream');
  const highWaterMark = options.highWaterMark ?? DEFAULT_WRITE_STREAM_HIGH_WATER_MARK;
  if (!Number.isSafeInteger(highWaterMark) || highWaterMark < 1) throw bad(`highWaterMark must be a positive integer, not ${String(highWaterMark)}`);
  if (options.expectHash !== undefined && !options.finalize) throw bad('expectHash is checked when the stream finalizes the blob: it needs finalize: true');
  return { ...options, highWaterMark, signal };
}

const ABORTED = Symbol('aborted');

/** The source's next piece, or ABORTED as soon as `signal` fires (the pending next() is left to the source). */
function nextOrAbort(it: AsyncIterator<unknown>, signal: AbortSignal | undefined): Promise<IteratorResult<unknown> | typeof ABORTED> {
  return signal?.aborted ? Promise.resolve(ABORTED) : raceAbort(it.next(), signal, () => ABORTED);
}

/** A source that breaks the iteration protocol is a bad argument, as a piece that is not bytes is. */
const brokenSource = (what: string) => bad(`appendStream's source broke the iteration protocol: ${what}`);

function describe(x: unknown): string {
  return x === null ? 'null' : typeof x === 'object' ? (x.constructor?.name ?? 'an object') : typeof x === 'string' ? 'a string' : typeof x;
}

function iterate(source: ByteSource): AsyncIterator<unknown> {
  const it: unknown = Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]();
  if (it === null || typeof it !== 'object' || typeof (it as { next?: unknown }).next !== 'function') {
    throw brokenSource(`its iterator method returned ${describe(it)}, not an object with next()`);
  }
  if (Symbol.asyncIterator in source) return it as AsyncIterator<unknown>;
  const sync = it as Iterator<unknown>;
  return {
    next: async () => sync.next(),
    return: async () => sync.return?.() ?? { done: true, value: undefined },
  };
}

/** `next()`'s answer, checked: { done, value } read once, or a bad-argument error for anything else. */
function checkResult(r: unknown): { done: boolean; value: unknown } {
  if (r === null || typeof r !== 'object') throw brokenSource(`next() gave ${describe(r)}, not { done, value }`);
  const { done, value } = r as { done?: unknown; value?: unknown };
  return { done: !!done, value };
}

/** Tells a source left early to stop, and forgets it: what a broken one does then (throw, return no promise) is not our failure. */
function stopSource(it: AsyncIterator<unknown>, source: ByteSource): void {
  try {
    // Not awaited: a source stuck in next() would hold us too (an async generator, a Readable's
    // iterator among them, runs return() only after it). So a Node stream is also destroyed.
    Promise.resolve(it.return?.()).catch(() => {});
    const stream = source as { destroy?: unknown };
    if (typeof stream.destroy === 'function') stream.destroy();
  } catch {
    // The source's own trouble; what it gave is appended and the call's answer stands.
  }
}

/** How pump ended: the bytes appended, and what stopped it early (the source's error, a piece that is not bytes, an abort). */
export interface Pumped {
  bytes: number;
  stopped?: { error: unknown };
}

/**
 * Reads `source` to its end. Its pieces are copied into blocks of
 * READ_BLOCK bytes of our own (a source may reuse its buffer once asked for
 * the next piece), and each full block is one `append`: many small pieces
 * cost what a few large ones do. It holds one block and the piece in hand.
 *
 * The source failing, or giving something other than bytes, is not a
 * failure of the writer: what the source gave before is appended and the
 * error is returned in `stopped`. So is an abort of `signal` (from
 * `aborted()`, called once the bytes read are appended), which is watched
 * while waiting for the source too. A source left early is told to stop:
 * return(), and destroy() for a Node stream. A failure of `append` is
 * thrown.
 */
export async function pump(source: ByteSource, signal: AbortSignal | undefined, append: (block: Uint8Array) => Promise<void>, aborted: () => unknown): Promise<Pumped> {
  let it: AsyncIterator<unknown>;
  try {
    it = iterate(source);
  } catch (e) {
    return { bytes: 0, stopped: { error: e } };
  }
  let open = true; // whether the source may still have pieces, and so must be told to stop
  const blocks = new BlockFiller(READ_BLOCK);
  let bytes = 0;
  const flush = async () => {
    const b = blocks.take();
    if (b) await append(b);
  };
  let stop: (() => unknown) | undefined;
  try {
    for (;;) {
      let r: { done: boolean; value: unknown } | typeof ABORTED;
      try {
        const got = await nextOrAbort(it, signal);
        r = got === ABORTED ? got : checkResult(got);
      } catch (e) {
        open = false;
        stop = () => e;
        break;
      }
      if (r === ABORTED) {
        stop = aborted;
        break;
      }
      if (r.done) {
        open = false;
        break;
      }
      const piece = r.value;
      if (!(piece instanceof Uint8Array)) {
        stop = () => bad(`appendStream takes Uint8Arrays from its source, and it gave ${describe(piece)}`);
        break;
      }
      for (let off = 0; off < piece.length; ) {
        const n = blocks.put(piece, off);
        off += n;
        bytes += n;
        if (blocks.full) await flush();
      }
    }
    await flush();
  } finally {
    if (open) stopSource(it, source);
  }
  return stop ? { bytes, stopped: { error: stop() } } : { bytes };
}

/**
 * Writes Node's own queue may hold while one waits (`writableHighWaterMark`).
 * Small, because Node keeps an object per queued write: counted in bytes, a
 * queue of 4 MiB of one-byte writes would be four million of them.
 */
export const WRITE_QUEUE_BYTES = 16 * 1024;

/**
 * A Writable that appends to a blob (see BlobWriter.createWriteStream).
 * Writes are copied into a block of `highWaterMark` bytes and acknowledged
 * at once; a full block is appended to the blob while the next one fills,
 * and a write that fills that one too waits until the append under way is
 * done. So it holds two blocks at most, however small the writes, and many
 * small writes cost one append per block:
 *
 *   write --copy--> block (full) --append, in the background--> writer
 *                   next block (full) --waits for that append--> ...
 *
 * An append that fails destroys the stream with its error.
 */
class BlobWriteStream extends Writable {
  readonly #sink: StreamSink;
  readonly #signal: AbortSignal | undefined;
  readonly #blocks: BlockFiller;
  /** The append (or end) under way; it never rejects. destroy waits for it, so that the writer is idle after 'close'. */
  #current: Promise<void> | undefined;
  /** Why an append failed: later writes and end() fail with it, and no block after it is appended. */
  #failed: Error | undefined;
  readonly #onAbort = () => this.destroy(abortError(this.#signal!, `the write stream of blob ${this.#sink.name}`, { blob: this.#sink.name }));

  constructor(sink: StreamSink, options: WriteStreamOptions & { highWaterMark: number }) {
    super({ highWaterMark: Math.min(options.highWaterMark, WRITE_QUEUE_BYTES), decodeStrings: false });
    this.#sink = sink;
    this.#signal = options.signal;
    this.#blocks = new BlockFiller(options.highWaterMark);
    if (this.#signal?.aborted) this.#onAbort();
    else this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  override _write(chunk: unknown, _encoding: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (!(chunk instanceof Uint8Array)) return cb(bad(`a blob write stream takes Uint8Arrays, not ${typeof chunk === 'string' ? 'strings' : typeof chunk}: encode them first`));
    let off = 0;
    const copy = (): void => {
      if (this.#failed || this.destroyed) return cb(this.#failed);
      while (off < chunk.length) {
        off += this.#blocks.put(chunk, off);
        if (this.#blocks.full) {
          // A full block goes to the writer now, or once the append under way is done: this write goes on then.
          const later = this.#appendNext(this.#signal);
          if (later) return void later.then(copy);
        }
      }
      cb();
    };
    copy();
  }

  override _final(cb: (e?: Error | null) => void): void {
    void this.#appendNext(this.#signal);
    void this.#idle().then(() => {
      if (this.#failed || this.destroyed) return cb(this.#failed);
      this.#track(this.#sink.end().then(() => cb(), (e: unknown) => cb(e as Error)));
    });
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.#signal?.removeEventListener('abort', this.#onAbort);
    // Writes acknowledged are appended, even on abort (a block at most), unless an append failed: the blob
    // then holds exactly what was acknowledged, or a prefix of it. 'close' comes after.
    void this.#appendNext(undefined);
    void this.#idle().then(() => cb(err));
  }

  /**
   * Appends the block (what it holds) now if no append is under way, and
   * returns undefined; else returns a promise that resolves when it has
   * started, after the one under way (so one block waits at most). Nothing
   * is appended after an append that failed: the blob stays a prefix of
   * what was written.
   */
  #appendNext(signal: AbortSignal | undefined): Promise<void> | undefined {
    const bytes = this.#blocks.take();
    if (!bytes) return undefined;
    const start = () => {
      if (this.#failed) return;
      this.#track(
        this.#sink.append([bytes], signal).catch((e: unknown) => {
          this.#failed ??= e as Error;
          this.destroy(this.#failed);
        }),
      );
    };
    if (!this.#current) return void start();
    return this.#current.then(start);
  }

  /** Makes `p` (which never rejects) the work under way, until it is done. */
  #track(p: Promise<void>): void {
    this.#current = p;
    void p.then(() => {
      if (this.#current === p) this.#current = undefined;
    });
  }

  /** Resolves once no append or end is under way, nor waiting to start. */
  async #idle(): Promise<void> {
    while (this.#current) await this.#current;
  }
}

export function createBlobWriteStream(sink: StreamSink, options: WriteStreamOptions & { highWaterMark: number }): Writable {
  return new BlobWriteStream(sink, options);
}

/**
 * Gathers pieces into blocks of `size` bytes, for appendStream and the write
 * stream alike: many small pieces become one append per block.
 */
class BlockFiller {
  #block: Buffer | undefined;
  #fill = 0;
  constructor(readonly size: number) {}

  /**
   * Copies what fits of piece[off..] into the block; returns how many bytes.
   * A block of up to RECYCLED_BYTES is recycled memory, which the hashing
   * thread hands back once done with it: fresh memory for every block cost
   * a page fault per 4 KiB.
   */
  put(piece: Uint8Array, off: number): number {
    this.#block ??= this.size <= RECYCLED_BYTES ? recycledBuffer(this.size) : Buffer.allocUnsafe(this.size);
    const n = Math.min(piece.length - off, this.size - this.#fill);
    this.#block.set(n === piece.length ? piece : piece.subarray(off, off + n), this.#fill);
    this.#fill += n;
    return n;
  }

  get full(): boolean {
    return this.#fill === this.size;
  }

  /**
   * What the block holds, undefined if nothing; a full block is given away
   * whole (to the hashing thread, without a copy), and a new one is made
   * for what follows.
   */
  take(): Buffer | undefined {
    if (this.#fill === 0) return undefined;
    const b = this.full ? this.#block! : this.#block!.subarray(0, this.#fill);
    this.#block = undefined;
    this.#fill = 0;
    return b;
  }
}
