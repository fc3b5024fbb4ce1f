import { Writable } from 'node:stream';
import { CabError, abortError, raceAbort } from '../errors.js';
import { READ_BLOCK, checkSignal } from './input.js';

/** Bytes a blob write stream buffers before `write()` returns false. */
export const DEFAULT_WRITE_STREAM_HIGH_WATER_MARK = 4 * 1024 * 1024;

/** What appendStream reads: an iterable of byte arrays, async or not. A Node Readable is one (without an encoding set). */
export type ByteSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** Options of BlobWriter.createWriteStream. */
export interface WriteStreamOptions {
  /** Bytes the stream buffers before `write()` returns false (default DEFAULT_WRITE_STREAM_HIGH_WATER_MARK, 4 MiB). */
  highWaterMark?: number;
  /**
   * Destroys the stream with ERR_ABORTED. A write under way stops between
   * blocks (4 MiB at most); what was appended before stays, so the blob
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

function iterate(source: ByteSource): AsyncIterator<unknown> {
  if (Symbol.asyncIterator in source) return source[Symbol.asyncIterator]();
  const it = source[Symbol.iterator]();
  return {
    next: async () => it.next(),
    return: async () => it.return?.() ?? { done: true, value: undefined },
  };
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
  let block: Buffer | undefined;
  let fill = 0;
  let bytes = 0;
  const flush = async () => {
    if (fill === 0) return;
    // A full block is given away (to the hashing thread, without a copy); a new one is made for what follows.
    const b = fill === READ_BLOCK ? block! : block!.subarray(0, fill);
    block = undefined;
    fill = 0;
    await append(b);
  };
  let stop: (() => unknown) | undefined;
  try {
    for (;;) {
      let r: IteratorResult<unknown> | typeof ABORTED;
      try {
        r = await nextOrAbort(it, signal);
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
        const what = typeof piece === 'string' ? 'a string' : piece === null ? 'null' : typeof piece === 'object' ? (piece.constructor?.name ?? 'an object') : typeof piece;
        stop = () => bad(`appendStream takes Uint8Arrays from its source, and it gave ${what}`);
        break;
      }
      for (let off = 0; off < piece.length; ) {
        block ??= Buffer.allocUnsafe(READ_BLOCK);
        const n = Math.min(piece.length - off, READ_BLOCK - fill);
        block.set(n === piece.length ? piece : piece.subarray(off, off + n), fill);
        fill += n;
        off += n;
        bytes += n;
        if (fill === READ_BLOCK) await flush();
      }
    }
    await flush();
  } finally {
    if (open) {
      // Not awaited: a source stuck in next() would hold us too (an async generator, a Readable's
      // iterator among them, runs return() only after it). So a Node stream is also destroyed.
      it.return?.().catch(() => {});
      const stream = source as { destroy?: unknown };
      if (typeof stream.destroy === 'function') stream.destroy();
    }
  }
  return stop ? { bytes, stopped: { error: stop() } } : { bytes };
}

/**
 * A Writable that appends to a blob (see BlobWriter.createWriteStream).
 * Writes queued while one is under way reach the writer together
 * (_writev): one append for many small writes.
 */
class BlobWriteStream extends Writable {
  readonly #sink: StreamSink;
  readonly #signal: AbortSignal | undefined;
  /** The append or end under way; destroy waits for it, so that the writer is idle after 'close'. */
  #busy: Promise<void> = Promise.resolve();
  readonly #onAbort = () => this.destroy(abortError(this.#signal!, `the write stream of blob ${this.#sink.name}`, { blob: this.#sink.name }));

  constructor(sink: StreamSink, options: WriteStreamOptions & { highWaterMark: number }) {
    super({ highWaterMark: options.highWaterMark, decodeStrings: false });
    this.#sink = sink;
    this.#signal = options.signal;
    if (this.#signal?.aborted) this.#onAbort();
    else this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  override _write(chunk: unknown, _encoding: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.#append([chunk], cb);
  }

  override _writev(chunks: Array<{ chunk: unknown }>, cb: (e?: Error | null) => void): void {
    this.#append(
      chunks.map((c) => c.chunk),
      cb,
    );
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.#then(this.#sink.end(), cb);
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.#signal?.removeEventListener('abort', this.#onAbort);
    const done = () => cb(err);
    void this.#busy.then(done, done);
  }

  #append(chunks: unknown[], cb: (e?: Error | null) => void): void {
    for (const c of chunks) {
      if (!(c instanceof Uint8Array)) return cb(bad(`a blob write stream takes Uint8Arrays, not ${typeof c === 'string' ? 'strings' : typeof c}: encode them first`));
    }
    this.#then(this.#sink.append(chunks as Uint8Array[], this.#signal), cb);
  }

  #then(p: Promise<void>, cb: (e?: Error | null) => void): void {
    this.#busy = p.then(
      () => cb(),
      (e: unknown) => cb(e as Error),
    );
  }
}

export function createBlobWriteStream(sink: StreamSink, options: WriteStreamOptions & { highWaterMark: number }): Writable {
  return new BlobWriteStream(sink, options);
}
