import { Readable } from 'node:stream';
import { CabError } from '../errors.js';
import type { ExtentMap } from '../fsstore/extents.js';
import { FragmentFiles } from '../fsstore/fragments.js';
import type { StoreInternals } from '../fsstore/internals.js';
import { checkBlobName } from '../fsstore/layout.js';

/** Bytes a stream reads per step. */
export const STREAM_BLOCK = 1024 * 1024;

export interface StreamOptions {
  /** First byte (default 0). */
  start?: number;
  /** End, exclusive (default: the blob's size). */
  end?: number;
  /** Bytes buffered ahead of the consumer (default 2 MiB). */
  highWaterMark?: number;
}

/**
 * Reads one blob as it was when the reader opened: an unfinalized blob's
 * reader sees the records committed then, and nothing later.
 */
export class BlobReader {
  readonly name: string;
  readonly size: number;
  readonly isFinalized: boolean;
  /** BEP 52 hash; undefined until the blob is finalized. */
  readonly hash: Uint8Array | undefined;
  readonly #s: StoreInternals;
  readonly #extents: ExtentMap;
  /** Where fsck found the blob damaged, if it did. */
  readonly damagedAt: number | undefined;
  readonly #files: FragmentFiles;
  #pos = 0;
  #closed = false;

  private constructor(
    s: StoreInternals,
    name: string,
    size: number,
    finalized: boolean,
    hash: Uint8Array | undefined,
    extents: ExtentMap,
    damagedAt: number | undefined,
  ) {
    this.damagedAt = damagedAt;
    this.#s = s;
    this.name = name;
    this.size = size;
    this.isFinalized = finalized;
    this.hash = hash;
    this.#extents = extents;
    this.#files = new FragmentFiles(s.layout, 16);
  }

  /** @internal Use BlobStore.newBlobReader. */
  static async open(s: StoreInternals, name: string): Promise<BlobReader> {
    checkBlobName(name);
    s.checkOpen();
    // Read the descriptor and publish its fragments as pins with the GC gate held shared.
    const d = await s.lease.gate(async () => {
      const d = await s.snapshot(name);
      await s.lease.pin(d.extents.fragments(), [name]);
      return d;
    });
    const r = new BlobReader(s, name, d.size, d.finalized, d.hash ? Uint8Array.from(d.hash) : undefined, d.extents, d.damagedAt);
    s.track(r);
    return r;
  }

  /** The fragments this reader needs (for GC pins). */
  fragments(): readonly string[] {
    return this.#extents.fragments();
  }

  #check(): void {
    if (this.#closed) throw new CabError('ERR_CLOSED', `reader of ${this.name} is closed`, { blob: this.name });
  }

  /**
   * Reads up to buf.length bytes at `position`. Returns the count, 0 at the
   * end; a position past the end is ERR_ILLEGAL_POSITION.
   */
  async readAt(buf: Uint8Array, position: number): Promise<number> {
    this.#check();
    if (!Number.isSafeInteger(position) || position < 0) {
      throw new CabError('ERR_NEGATIVE_POSITION', `position ${position} is not a non-negative integer`, { blob: this.name, offset: position });
    }
    if (position > this.size) {
      throw new CabError('ERR_ILLEGAL_POSITION', `position ${position} is past the end (${this.size})`, {
        blob: this.name,
        offset: position,
        expected: this.size,
      });
    }
    let n = Math.min(buf.length, this.size - position);
    if (this.damagedAt !== undefined && position + n > this.damagedAt) {
      // Readable up to the damage; a read that starts at or after it fails.
      if (position < this.damagedAt) n = this.damagedAt - position;
      else throw new CabError('ERR_BLOB_DAMAGED', `blob ${this.name} is damaged from byte ${this.damagedAt}`, {
        blob: this.name,
        offset: this.damagedAt,
      });
    }
    let at = 0;
    for (const e of this.#extents.slice(position, n)) {
      await this.#files.read(e.frag, buf, at, e.size, e.offset);
      at += e.size;
    }
    return n;
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

  /** A Readable of bytes [start, end), with backpressure. Independent of the seek position. */
  stream(options: StreamOptions = {}): Readable {
    this.#check();
    const start = options.start ?? 0;
    const end = options.end ?? this.size;
    for (const [k, v] of [['start', start], ['end', end]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new CabError('ERR_NEGATIVE_POSITION', `${k} ${v} is not a non-negative integer`, { blob: this.name });
    }
    if (end > this.size || start > end) {
      throw new CabError('ERR_ILLEGAL_POSITION', `range [${start}, ${end}) is outside the blob (${this.size})`, { blob: this.name, offset: start });
    }
    let pos = start;
    const r: Readable = new Readable({
      highWaterMark: options.highWaterMark ?? 2 * STREAM_BLOCK,
      read: () => {
        if (pos >= end) {
          r.push(null);
          return;
        }
        const n = Math.min(STREAM_BLOCK, end - pos);
        const buf = Buffer.allocUnsafe(n);
        const at = pos;
        pos += n;
        this.readAt(buf, at).then(
          () => {
            r.push(buf);
            if (pos >= end) r.push(null);
          },
          (e: Error) => r.destroy(e),
        );
      },
    });
    return r;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#files.close();
    await this.#s.lease.unpin(this.#extents.fragments(), [this.name]).catch(() => {});
    this.#s.untrack(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
