import fs from 'node:fs/promises';
import { CabError, ioError, isCabError } from '../errors.js';
import type { Fetched, ObjectStore } from '../bucket/object-store.js';
import { ensureDir, fsyncDir } from './durable.js';

/** Bytes gathered from the socket before one write to the cache file. */
const WRITE_BLOCK = 1024 * 1024;
/** Writes to the cache file in flight at once (the socket is read meanwhile). */
const WRITES_AHEAD = 4;
/** The most recent bytes kept in memory, so that a reader following the download copies them without a read of the file. */
const WINDOW = 8 * 1024 * 1024;
/** A read this far past what has arrived is fetched by a range GET of its own rather than waiting. */
const FAR_AHEAD = 8 * 1024 * 1024;

/** Where a downloaded fragment goes, and what to tell when it is there. */
export interface DownloadTarget {
  key: string;
  tmp: string;
  dir: string;
  final: string;
  knownDirs: Set<string>;
  /** Called once the file is in cas/ under its name. */
  cached(size: number): void;
}

/** Bytes received, at fragment offset `at`. */
interface Piece {
  at: number;
  buf: Buffer;
}

/**
 * One fragment being fetched whole from the bucket into the cache: one GET,
 * its bytes written to a temp file (a few writes in flight, so the socket
 * keeps flowing), which is fsync'd and renamed into cas/ once complete.
 * Reads are served as the bytes arrive: from the last WINDOW bytes kept in
 * memory (a reader that follows the download never reads the file), else
 * from the file once written; a read far past what has arrived (random
 * access) gets a range GET of its own. Reads of one fragment in this
 * process share its download, which lets go of its file when it is
 * complete and its last reader is done. Nothing is handed out unchecked:
 * the readers above hash every chunk (disk/blob-bytes.ts).
 */
export class Download {
  readonly id: string;
  #fh!: fs.FileHandle;
  readonly #os: ObjectStore;
  readonly #t: DownloadTarget;
  /** Bytes received (contiguous from 0), and bytes written to the file. */
  #have = 0;
  #written = 0;
  /** The last bytes received, in order. */
  #window: Piece[] = [];
  #windowLen = 0;
  /** The object's size, once the GET answered. */
  #size: number | undefined;
  #done = false;
  #error: unknown;
  #waiters: Array<{ ready: () => boolean; wake: () => void }> = [];
  #refs = 0;
  #idle = false;
  readonly #onIdle: () => void;
  /** Stops the GET when the last reader lets go before it is complete. */
  readonly #stop = new AbortController();

  private constructor(id: string, os: ObjectStore, t: DownloadTarget, onIdle: () => void) {
    this.id = id;
    this.#os = os;
    this.#t = t;
    this.#onIdle = onIdle;
  }

  /** Starts fetching; resolves once the object answered (its size known), or rejects (ERR_FRAGMENT_MISSING if it does not exist). */
  static async start(id: string, os: ObjectStore, t: DownloadTarget, onIdle: () => void): Promise<Download> {
    const d = new Download(id, os, t, onIdle);
    d.#fh = await fs.open(t.tmp, 'wx+');
    let got: Fetched;
    try {
      got = await os.getStream(t.key, undefined, d.#stop.signal);
    } catch (e) {
      await d.#fh.close().catch(() => {});
      await fs.rm(t.tmp, { force: true });
      throw missingIfAbsent(e, id);
    }
    d.#size = got.size;
    d.#pump(got.chunks).catch(() => {}); // its failure is kept in #error and given to every read
    return d;
  }

  /** A reader takes the download (`release` when done); undefined if it has ended and let go of its file. */
  take(): this | undefined {
    if (this.#idle) return undefined;
    this.#refs++;
    return this;
  }

  /** A reader is done. The last one stops a download still under way: a fragment no one reads is not fetched for the cache. */
  release(): void {
    if (--this.#refs > 0) return;
    if (!this.#done && this.#error === undefined) this.#stop.abort();
    this.#maybeIdle();
  }

  #maybeIdle(): void {
    if (this.#idle || this.#refs > 0 || (!this.#done && this.#error === undefined)) return;
    this.#idle = true;
    this.#window = [];
    this.#onIdle();
    this.#fh.close().catch(() => {});
  }

  async #pump(body: AsyncGenerator<Buffer>): Promise<void> {
    const t = this.#t;
    const writes: Array<Promise<void>> = [];
    try {
      let pending: Buffer[] = [];
      let pendingAt = 0;
      let pendingLen = 0;
      const flush = () => {
        const [bufs, at, n] = [pending, pendingAt, pendingLen];
        pending = [];
        pendingAt += n;
        pendingLen = 0;
        const prev = writes[writes.length - 1] ?? Promise.resolve();
        const w = writeAllV(this.#fh, bufs, at, n).then(async () => {
          await prev; // #written advances in order
          this.#written = at + n;
          this.#wake();
        });
        w.catch(() => {});
        writes.push(w);
      };
      for await (const b of body) {
        this.#window.push({ at: this.#have, buf: b });
        this.#windowLen += b.length;
        this.#have += b.length;
        pending.push(b);
        pendingLen += b.length;
        if (pendingLen >= WRITE_BLOCK) flush();
        this.#trim();
        this.#wake();
        if (writes.length >= WRITES_AHEAD) await writes.shift();
      }
      if (pendingLen > 0) flush();
      if (this.#size !== undefined && this.#have !== this.#size) {
        throw new CabError('ERR_OBJECT_STORE', `fragment ${this.id}: the server sent ${this.#have} of ${this.#size} bytes`, { key: t.key, expected: this.#size, found: this.#have });
      }
      this.#size = this.#have;
      for (const w of writes.splice(0)) await w;
      this.#done = true;
      this.#wake();
    } catch (e) {
      await body.return(undefined).catch(() => {});
      await Promise.allSettled(writes);
      this.#error = ioError(e, `fetching fragment ${this.id} into the cache`, { path: t.tmp });
      this.#wake();
      await fs.rm(t.tmp, { force: true }).catch(() => {});
      this.#maybeIdle();
      return;
    }
    // Complete: into cas/ under its name (its readers keep reading through the file handle).
    try {
      await this.#fh.sync();
      await ensureDir(t.dir, t.knownDirs);
      await fs.rename(t.tmp, t.final);
      await fsyncDir(t.dir);
      t.cached(this.#size);
    } catch {
      // A cache that could not be filled (a full disk, say) only costs a fetch next time; the bytes are read from the file.
      await fs.rm(t.tmp, { force: true }).catch(() => {});
    }
    this.#maybeIdle();
  }

  /** Drops the oldest pieces past WINDOW bytes, once they are in the file. */
  #trim(): void {
    while (this.#windowLen > WINDOW && this.#window.length > 1) {
      const p = this.#window[0]!;
      if (p.at + p.buf.length > this.#written) return;
      this.#window.shift();
      this.#windowLen -= p.buf.length;
    }
  }

  #wake(): void {
    const left: Array<{ ready: () => boolean; wake: () => void }> = [];
    for (const w of this.#waiters) {
      if (this.#error !== undefined || w.ready()) w.wake();
      else left.push(w);
    }
    this.#waiters = left;
  }

  #until(ready: () => boolean): Promise<void> | undefined {
    if (this.#error !== undefined || ready()) return undefined;
    return new Promise<void>((wake) => this.#waiters.push({ ready, wake }));
  }

  /** Reads up to `len` bytes at `pos` (fewer only at the object's end, 0 past it). */
  async read(buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    const end = pos + len;
    if (pos > this.#have + FAR_AHEAD && !this.#done && this.#error === undefined) return this.#readRange(buf, off, len, pos);
    await this.#until(() => this.#done || this.#have >= end);
    if (this.#error !== undefined && this.#have < end) throw this.#error;
    const n = Math.max(0, Math.min(len, this.#have - pos));
    if (n === 0) return 0;
    if (this.#copyFromWindow(buf, off, n, pos)) return n;
    // Behind the window: from the file, once written.
    await this.#until(() => this.#done || this.#written >= pos + n);
    if (this.#error !== undefined && this.#written < pos + n) throw this.#error;
    const { bytesRead } = await this.#fh.read(buf, off, n, pos);
    return bytesRead;
  }

  /** Copies [pos, pos + n) from the pieces in memory, if they hold all of it. */
  #copyFromWindow(buf: Uint8Array, off: number, n: number, pos: number): boolean {
    const w = this.#window;
    if (w.length === 0 || w[0]!.at > pos) return false;
    // The first piece holding pos: the window is short, and reads move forward, so from the end.
    let i = w.length - 1;
    while (i > 0 && w[i]!.at > pos) i--;
    let at = pos;
    const end = pos + n;
    for (; at < end && i < w.length; i++) {
      const p = w[i]!;
      const from = at - p.at;
      const take = Math.min(p.buf.length - from, end - at);
      buf.set(p.buf.subarray(from, from + take), off + (at - pos));
      at += take;
    }
    return at === end;
  }

  /** A range GET straight into buf, for a read far ahead of the download. */
  async #readRange(buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    const end = this.#size === undefined ? pos + len : Math.min(pos + len, this.#size);
    if (end <= pos) return 0;
    let at = off;
    try {
      for await (const chunk of (await this.#os.getStream(this.#t.key, { start: pos, end })).chunks) {
        const n = Math.min(chunk.length, off + (end - pos) - at);
        buf.set(chunk.subarray(0, n), at);
        at += n;
      }
    } catch (e) {
      throw missingIfAbsent(e, this.id);
    }
    return at - off;
  }
}

/** Writes `n` bytes of `bufs` at `at`, all of them (a short write is continued). */
async function writeAllV(fh: fs.FileHandle, bufs: Buffer[], at: number, n: number): Promise<void> {
  let done = 0;
  while (done < n) {
    const { bytesWritten } = await fh.writev(done === 0 ? bufs : [Buffer.concat(bufs).subarray(done)], at + done);
    if (bytesWritten <= 0) throw new CabError('ERR_IO', `a write to the cache wrote nothing`, { offset: at + done });
    done += bytesWritten;
  }
}

/** NoSuchKey: the fragment is missing from the bucket too. */
export function missingIfAbsent(e: unknown, id: string): unknown {
  if (isCabError(e, 'ERR_OBJECT_STORE') && e.data.s3Code === 'NoSuchKey') {
    return new CabError('ERR_FRAGMENT_MISSING', `fragment ${id} is missing (not cached here, not in the bucket)`, { fragment: id, cause: e });
  }
  return e;
}
