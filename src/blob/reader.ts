import type fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import { CabError, abortError } from '../errors.js';
import type { ChunkInfo } from '../disk/chunk-pager.js';
import { damageFrom, widenToChunks, type DamageRange } from '../format/damage.js';
import { openDescriptor, readDescriptorFrom } from '../format/descriptor.js';
import { FragmentFiles } from '../disk/fragments.js';
import type { StoreInternals } from './context.js';
import { checkBlobName } from '../format/layout.js';
import { checkSignal } from './input.js';
import { Follow, makeView, type View } from './follow.js';

/** Bytes a stream reads per step (rounded to chunk boundaries). */
export const STREAM_BLOCK = 1024 * 1024;
/** Blocks a stream has in flight: the next is read from disk while this one is hashed. */
const STREAM_AHEAD = 2;

/**
 * The range of a stream, as fs.createReadStream takes it except that `end`
 * is exclusive: [start, end). An end past the blob is cut at the blob's end,
 * and a start at or past the end gives an empty stream (fs does the same);
 * start > end as given is ERR_ILLEGAL_POSITION, thrown by stream().
 */
export interface StreamOptions {
  /** First byte (default 0). */
  start?: number;
  /** End, exclusive (default, and at most: the blob's size; Infinity: to the end). */
  end?: number;
  /**
   * Bytes the stream buffers for its consumer (default 1: one block at a time, handed out as read, never
   * joined with the next; reads of the next two blocks are under way meanwhile, whatever this is).
   */
  highWaterMark?: number;
  /** Aborting it destroys the stream with ERR_ABORTED (at once if it has already fired). */
  signal?: AbortSignal;
  /**
   * Follow the blob as it is written: the stream waits at the end of what
   * is durable for more, and ends when the blob is finalized (or at `end`).
   * Default: the reader's `follow`; true needs a reader opened with it.
   */
  follow?: boolean;
}

/** Options of BlobStore.newBlobReader. */
export interface ReaderOptions {
  /**
   * Follow a blob that is being written, here or in another process: a
   * read at the end of the bytes flushed so far waits until more are, the
   * blob is finalized (then it ends as any blob does, at its final size),
   * it is deleted (ERR_NO_SUCH_BLOB) or `signal` fires (ERR_ABORTED). Every
   * byte handed out is checked first: against its chunk's SHA-256, or, after
   * the last chunk boundary, with the whole open chunk against the record's
   * `p`. `size` grows as the blob does. Default false: the blob as it was
   * when the reader opened.
   */
  follow?: boolean;
  /** Ends a follower's waits (ERR_ABORTED); it plays no part in reads that need no wait. */
  signal?: AbortSignal;
}

/**
 * Reads one blob as it was when the reader opened: an unfinalized blob's
 * reader sees the records committed then, and nothing later. Every byte it
 * hands out below the last chunk boundary was checked against its chunk's
 * SHA-256 when read from disk (see BlobBytes): damaged bytes give
 * ERR_HASH_MISMATCH, never wrong bytes.
 */
export class BlobReader {
  readonly name: string;
  readonly #s: StoreInternals;
  #damage: DamageRange[];
  readonly #files: FragmentFiles;
  /** What this reader reads: the descriptor as parsed (for a follower, the latest parse), from the file held open. */
  #view: View;
  /** The descriptor file opened with the reader (a follower may open the file of a rewrite later). */
  readonly #desc: fs.FileHandle;
  /** A follower's watch, pins and descriptor files; undefined for a reader of the blob as it was. */
  readonly #follow: Follow | undefined;
  readonly #signal: AbortSignal | undefined;
  #pos = 0;
  #closed = false;

  private constructor(s: StoreInternals, view: View, files: FragmentFiles, options: ReaderOptions) {
    this.#damage = view.d.damage;
    this.#s = s;
    this.name = view.d.name;
    this.#files = files;
    this.#view = view;
    this.#desc = view.desc;
    this.#signal = options.signal;
    if (options.follow) this.#follow = new Follow(s, this.name, files, view.d.extents.fragments());
  }

  /** Bytes readable now: a follower's grow as the blob is flushed (up to the last chunk boundary if the open chunk cannot be checked). */
  get size(): number {
    const { d, open } = this.#view;
    return !this.#follow || d.finalized || open ? d.size : d.chunkEnd;
  }

  get isFinalized(): boolean {
    return this.#view.d.finalized;
  }

  /** BEP 52 hash; undefined until the blob is finalized. */
  get hash(): Uint8Array | undefined {
    const { hash } = this.#view.d;
    return hash ? Uint8Array.from(hash) : undefined;
  }

  /** @internal Use BlobStore.newBlobReader. */
  static async open(s: StoreInternals, name: string, options: ReaderOptions = {}): Promise<BlobReader> {
    checkBlobName(name);
    s.checkOpen();
    const signal = checkSignal(options, 'newBlobReader');
    const follow = options.follow ?? false;
    if (typeof follow !== 'boolean') throw new CabError('ERR_BAD_ARGUMENT', `follow must be a boolean, not ${String(follow)}`, { blob: name });
    // Read the descriptor and publish its fragments as pins with the GC gate held shared.
    const [d, desc] = await s.lease.gate(async () => {
      const desc = await openDescriptor(s.layout.descriptor(name), name, 'r');
      try {
        // A follower's parse grows in place, so it is its own, never the cached one.
        const snap = follow ? undefined : await s.snapshot(name);
        // The cached parse is of the file held here, unless the name was rewritten in between.
        const d = snap?.ino === (await desc.stat()).ino ? snap! : await readDescriptorFrom(desc, name);
        const frags = d.extents.fragments();
        await s.lease.pin(frags, [name]);
        // A bucket-backed store: refused if the blob was deleted elsewhere (GC may have found its fragments unreferenced).
        await s.shared?.confirm(name).catch(async (e: unknown) => {
          await s.lease.unpin(frags, [name]).catch(() => {});
          throw e;
        });
        return [d, desc] as const;
      } catch (e) {
        await desc.close();
        throw e;
      }
    });
    const files = new FragmentFiles(s.cas, 16);
    const r = new BlobReader(s, makeView(d, desc, files), files, { follow, ...(signal ? { signal } : {}) });
    s.track(r);
    try {
      r.#damage = await widenToChunks(d.damage, d.chunkEnd, (pos) => r.#view.bytes.chunkAt(pos));
      if (r.#follow) r.#view.open = await r.#follow.checkOpen(r.#view);
    } catch (e) {
      await r.close();
      throw e;
    }
    return r;
  }

  /** Whether this reader follows the blob as it is written. */
  get following(): boolean {
    return this.#follow !== undefined;
  }

  /**
   * A follower: waits until more than `at` bytes are readable (with
   * `chunks`: until the last chunk boundary is past `at`), or the blob is
   * finalized. Deleted: ERR_NO_SUCH_BLOB; the signal: ERR_ABORTED.
   */
  async #more(at: number, signal: AbortSignal | undefined, chunks = false): Promise<void> {
    const f = this.#follow!;
    const past = () => at < (chunks ? this.#view.d.chunkEnd : this.size) || this.isFinalized;
    while (!past()) {
      const seq = f.watch.seq;
      this.#view = await f.grow(this.#view, at);
      this.#check();
      if (past()) return;
      await f.watch.wait(seq, signal ?? this.#signal, `following blob ${this.name}`);
      this.#check();
    }
  }

  /** @internal A follower: waits until the blob's recorded chunks end past byte `at`, or it is finalized (a server answering a `stat` that waits). */
  waitForChunks(at: number, signal?: AbortSignal): Promise<void> {
    this.#check();
    if (!this.#follow) throw new CabError('ERR_BAD_ARGUMENT', 'waitForChunks needs a follower', { blob: this.name });
    return this.#more(at, signal, true);
  }

  /** @internal A follower: takes in what the descriptor holds now, without waiting (a server asked for a chunk recorded since). */
  async catchUp(): Promise<void> {
    this.#check();
    if (this.#follow && !this.isFinalized) this.#view = await this.#follow.grow(this.#view, 0);
  }

  /** The byte ranges fsck found damaged, in whole chunks: reads that touch them fail with ERR_BLOB_DAMAGED. */
  get damage(): readonly DamageRange[] {
    return this.#damage;
  }

  /** Where the first damage starts, if there is any. */
  get damagedAt(): number | undefined {
    return this.#damage[0]?.o;
  }

  /** The chunks recorded when the reader opened (their SHA-256, size and offset), in order, read from its descriptor a record at a time. */
  chunks(): AsyncGenerator<ChunkInfo> {
    this.#check();
    return this.#view.bytes.chunks();
  }

  /** The fragments this reader needs (for GC pins). */
  fragments(): readonly string[] {
    return this.#view.d.extents.fragments();
  }

  #check(): void {
    if (this.#closed) throw new CabError('ERR_CLOSED', `reader of ${this.name} is closed`, { blob: this.name });
  }

  /**
   * Reads up to buf.length bytes at `position`. Returns the count, 0 at the
   * end; a position past the end is ERR_ILLEGAL_POSITION. A follower waits
   * at (or past) the end for more bytes, and reads 0 at the end once the
   * blob is finalized.
   */
  async readAt(buf: Uint8Array, position: number): Promise<number> {
    this.#check();
    if (!Number.isSafeInteger(position) || position < 0) {
      throw new CabError('ERR_NEGATIVE_POSITION', `position ${position} is not a non-negative integer`, { blob: this.name, offset: position });
    }
    if (this.#follow && buf.length > 0) await this.#more(position, undefined);
    if (position > this.size) {
      throw new CabError('ERR_ILLEGAL_POSITION', `position ${position} is past the end (${this.size})`, {
        blob: this.name,
        offset: position,
        expected: this.size,
      });
    }
    const n = this.#undamaged(position, Math.min(buf.length, this.size - position));
    await this.#read(this.#view, buf.subarray(0, n), position);
    return n;
  }

  /** Bytes [pos, pos + buf.length) of view `v`: a follower's open chunk from its checked copy. */
  async #read(v: View, buf: Uint8Array, pos: number): Promise<void> {
    const split = Math.max(pos, Math.min(pos + buf.length, v.d.chunkEnd));
    if (!v.open || split === pos + buf.length) return v.bytes.read(buf, pos);
    if (split > pos) await v.bytes.read(buf.subarray(0, split - pos), pos);
    buf.set(v.open.subarray(split - v.d.chunkEnd, pos + buf.length - v.d.chunkEnd), split - pos);
  }

  /**
   * Fills `buf` with the bytes at `position`, looping on readAt.
   * ERR_ILLEGAL_POSITION if the blob ends before `buf` is full.
   */
  async readFully(buf: Uint8Array, position: number): Promise<void> {
    for (let at = 0; at < buf.length; ) {
      const n = await this.readAt(buf.subarray(at), position + at);
      if (n === 0) {
        throw new CabError('ERR_ILLEGAL_POSITION', `blob ${this.name} ends at ${this.size}, before ${position + buf.length}`, { blob: this.name, offset: position + at, expected: this.size });
      }
      at += n;
    }
  }

  /**
   * @internal Fills `buf` with the bytes at `position` as they are on disk,
   * not checked against their chunk hashes: for a sender whose receiver
   * checks every byte against the hash it asked for (a transfer's `get`),
   * so that the bytes are hashed once on their way, not twice. Damaged
   * ranges are refused as by readAt (ERR_BLOB_DAMAGED). `now`: fragments
   * already open are read by a blocking read (FragmentFiles.read).
   */
  async readUnchecked(buf: Uint8Array, position: number, now = false): Promise<void> {
    this.#check();
    if (position + buf.length > this.size) {
      throw new CabError('ERR_ILLEGAL_POSITION', `blob ${this.name} ends at ${this.size}, before ${position + buf.length}`, { blob: this.name, offset: position, expected: this.size });
    }
    const clean = this.#undamaged(position, buf.length);
    if (clean < buf.length) this.#undamaged(position + clean, 1); // throws: the damage there
    await this.#view.bytes.readUnchecked(buf, position, now);
  }

  /** Reads from the seek position and advances it. */
  async read(buf: Uint8Array): Promise<number> {
    const n = await this.readAt(buf, this.#pos);
    this.#pos += n;
    return n;
  }

  /** Moves the read position: whence 0 from the start, 1 from here, 2 from the end. */
  seek(offset: number, whence: 0 | 1 | 2 = 0): number {
    this.#check();
    if (!Number.isSafeInteger(offset)) throw new CabError('ERR_NEGATIVE_POSITION', `offset ${offset} is not an integer`, { blob: this.name });
    let to: number;
    if (whence === 0) to = offset;
    else if (whence === 1) to = this.#pos + offset;
    else if (whence === 2) to = this.size + offset;
    else throw new CabError('ERR_BAD_WHENCE', `whence ${String(whence)} is not 0, 1 or 2`, { found: whence });
    if (to < 0) throw new CabError('ERR_NEGATIVE_POSITION', `seek to ${to}`, { blob: this.name, offset: to });
    if (to > this.size) throw new CabError('ERR_ILLEGAL_POSITION', `seek to ${to} is past the end (${this.size})`, { blob: this.name, offset: to });
    this.#pos = to;
    return to;
  }

  /**
   * A Readable of bytes [start, end) (end exclusive, cut at the blob's end;
   * see StreamOptions), with backpressure. Independent of the seek position.
   */
  stream(options: StreamOptions = {}): Readable {
    this.#check();
    const signal = checkSignal(options, 'stream');
    const follow = options.follow ?? this.following;
    if (typeof follow !== 'boolean' || (follow && !this.#follow)) throw new CabError('ERR_BAD_ARGUMENT', 'stream({ follow: true }) needs a reader opened with { follow: true }', { blob: this.name });
    const start = options.start ?? 0;
    // No end, or Infinity: to the end of the blob (a follower's: once it is finalized).
    const toEnd = options.end === undefined || options.end === Infinity;
    const asked = toEnd ? (follow ? Number.MAX_SAFE_INTEGER : this.size) : options.end!;
    for (const [k, v] of [['start', start], ['end', asked]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new CabError('ERR_NEGATIVE_POSITION', `${k} ${String(v)} is not a non-negative integer`, { blob: this.name });
    }
    // One block buffered: a consumer's read() (for await, in particular) takes it as it is; two would be joined, a copy of every byte.
    const hwm = options.highWaterMark ?? 1;
    if (!Number.isSafeInteger(hwm) || hwm < 1) throw new CabError('ERR_BAD_ARGUMENT', `highWaterMark must be a positive integer, not ${String(hwm)}`, { blob: this.name });
    // Only an end given can come before the start: the default end, the blob's size, cuts like any other.
    if (!toEnd && start > asked) throw new CabError('ERR_ILLEGAL_POSITION', `range [${start}, ${asked}) ends before it starts`, { blob: this.name, offset: start });
    let end = Math.min(asked, this.size);
    // destroy() (a pipeline whose consumer went away) ends a wait for more bytes, rather than waiting for the writer.
    const stop = new AbortController();
    const waitOn = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
    const blocks = async function* (this: BlobReader): AsyncGenerator<Buffer> {
      const inflight: Array<Promise<Buffer>> = [];
      let pos = start;
      for (;;) {
        if (follow && pos >= end && inflight.length === 0 && pos < asked) {
          // At the end of what is readable: wait for more, or the end at finalize.
          await this.#more(pos, waitOn);
          end = Math.min(asked, this.size);
          if (pos >= end) break;
        }
        if (pos >= end && inflight.length === 0) break;
        while (inflight.length < STREAM_AHEAD && pos < end) {
          const at = pos;
          const v = this.#view;
          pos = await this.#blockEnd(at, end);
          const buf = Buffer.allocUnsafe(pos - at);
          const read = this.#read(v, buf, at).then(() => buf);
          read.catch(() => {}); // awaited in turn; a stream destroyed first must not leave it unhandled
          inflight.push(read);
        }
        this.#check();
        yield await inflight.shift()!;
      }
    };
    const stream = Readable.from(blocks.call(this), { objectMode: false, highWaterMark: hwm });
    const destroy = stream._destroy.bind(stream);
    stream._destroy = (err, cb) => (stop.abort(), destroy(err, cb));
    if (signal) {
      const onAbort = () => stream.destroy(abortError(signal, `reading blob ${this.name}`, { blob: this.name }));
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener('abort', onAbort, { once: true });
        stream.once('close', () => signal.removeEventListener('abort', onAbort));
      }
    }
    return stream;
  }

  /** The end of the stream block that starts at `pos`: chunk-aligned, about STREAM_BLOCK, stopping short of damage. */
  async #blockEnd(pos: number, end: number): Promise<number> {
    return this.#view.bytes.blockEnd(pos, STREAM_BLOCK, pos + this.#undamaged(pos, end - pos));
  }

  /**
   * How many of the `n` bytes at `pos` can be read: up to the next damage.
   * ERR_BLOB_DAMAGED if `pos` itself is damaged.
   */
  #undamaged(pos: number, n: number): number {
    const r = damageFrom(this.#damage, pos);
    if (n === 0 || !r || r.o >= pos + n) return n;
    if (r.o > pos) return r.o - pos;
    throw new CabError('ERR_BLOB_DAMAGED', `blob ${this.name} is damaged at bytes ${r.o}..${r.e} (${r.why})`, { blob: this.name, offset: r.o, end: r.e });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#follow?.close();
    await this.#files.close();
    await this.#desc.close();
    for (const desc of this.#follow?.descs ?? []) await desc.close().catch(() => {});
    await this.#s.lease.unpin(this.#follow?.pinned ?? this.#view.d.extents.fragments(), [this.name]).catch(() => {});
    this.#s.untrack(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
