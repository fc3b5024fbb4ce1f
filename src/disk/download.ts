import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError, ioError, isCabError } from '../errors.js';
import type { ObjectStore, SignedGet } from '../bucket/object-store.js';
import { getError } from '../bucket/s3-error.js';
import { ensureDir, fsyncDir } from './durable.js';
import { bytesEqual } from '../hash/sha256.js';
import { COUNTERS, C_HAVE, C_LANDED, C_PAUSED, C_READ_AT, C_RING_AT, C_WANT, C_WANT_WRITTEN, C_WRITTEN, MAX_TAKE, RING, copyShared, fetchThread, giveRing, hasSpareRing, newFetchId, ringAt, setRingAt, takeRing, type ChunkPlan, type FetchFailure, type FromFetcher } from './fetch-thread.js';

/** A read this far past what has arrived is fetched by a range GET of its own rather than waiting. */
const FAR_AHEAD = 8 * 1024 * 1024;

/**
 * Downloads whose GET has ended and that still hold a ring, oldest first:
 * a new GET with no spare ring takes one of theirs. A reader keeps a
 * fragment's download open after it has moved on (FragmentFiles keeps 16
 * open), and 16 rings held that way made a 1 GiB cold read peak at 300 MB.
 */
const finished = new Set<Download>();

/** A ring for a new GET: a spare one, the one of the oldest finished download, or new. */
function ringForGet(): SharedArrayBuffer {
  if (!hasSpareRing()) (finished.values().next().value as Download | undefined)?.giveUpRing();
  return takeRing();
}

/** A chunk a reader asks for from a download: its size and SHA-256 (see Download.readChecked). */
export interface CheckedChunk {
  size: number;
  hash: Uint8Array;
}

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

/**
 * One fragment being fetched whole from the bucket into the cache: one GET,
 * sent by the fetching thread (disk/fetch-thread.ts), which copies the
 * bytes into a ring in shared memory and writes them to a temp file; once
 * complete, the file is fsync'd here and renamed into cas/. Reads are
 * served as the bytes arrive: from the ring (the last RING bytes; a reader
 * that follows the download never reads the file), else from the file once
 * written; a read far past what has arrived (random access) gets a range
 * GET of its own. Reads of one fragment in this process share its
 * download, which lets go of its file when it is complete and its last
 * reader is done. Nothing is handed out unchecked: the chunks of the
 * plan the first reader gave (see ChunkPlan) are checked by the fetching
 * thread as they land, and handed out by readChecked only from the ring
 * (bytes read back from the file are checked again); the readers above
 * hash every other chunk (disk/blob-bytes.ts).
 */
export class Download {
  readonly id: string;
  #fh!: fs.FileHandle;
  readonly #os: ObjectStore;
  readonly #t: DownloadTarget;
  readonly #fetch = newFetchId();
  /** The fetching thread of its GET, chosen as it is sent. */
  #thread!: ReturnType<typeof fetchThread>;
  /** Shared with the fetching thread until its last message; given back once read to the end, taken by a new GET, or when idle. */
  readonly #ringMem = ringForGet();
  readonly #ring = Buffer.from(this.#ringMem);
  #ringGone = false;
  readonly #ctl = new BigInt64Array(new SharedArrayBuffer(COUNTERS * 8));
  /** The object's size, once the GET answered. */
  #size: number | undefined;
  /** Every byte is received and written to the file. */
  #done = false;
  /** The fetching thread is done with the GET, and the file is in cas/ (or will not be). */
  #settled = false;
  #error: unknown;
  #waiters: Array<{ have: number; written: number; wake: () => void }> = [];
  #refs = 0;
  #idle = false;
  /** The last reader let go before the end: the GET is stopped, and the download no longer handed out (take). */
  #stopping = false;
  #discarded = false;
  readonly #onIdle: () => void;
  #answered: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  /** The chunks the thread checks: fragment offset -> index in `#plan`. */
  readonly #planned = new Map<number, number>();
  readonly #plan: ChunkPlan | undefined;

  private constructor(id: string, os: ObjectStore, t: DownloadTarget, onIdle: () => void, plan: ChunkPlan | undefined) {
    this.id = id;
    this.#plan = plan;
    if (plan) for (let k = 0; k < plan.at.length / 2; k++) this.#planned.set(plan.at[2 * k]!, k);
    this.#os = os;
    this.#t = t;
    this.#onIdle = onIdle;
    this.#ctl[C_WANT] = -1n;
    this.#ctl[C_WANT_WRITTEN] = -1n;
  }

  /**
   * Starts fetching, the chunks of the plan `planFor` gives checked by the
   * fetching thread; resolves once the object answered (its size known),
   * or rejects (ERR_FRAGMENT_MISSING if it does not exist). The plan (the
   * descriptor's records, read through the thread pool), the temp file
   * and the signed GET are made at once: one after another, they were 20
   * to 35 ms on the path of a sequential reader's next GET, sent about as
   * long before the current one ends (2026-12-05 "seventh session").
   */
  static async start(id: string, os: ObjectStore, t: DownloadTarget, onIdle: () => void, planFor?: () => Promise<ChunkPlan | undefined>): Promise<Download> {
    const opening = fs.open(t.tmp, 'wx+');
    let plan: ChunkPlan | undefined;
    let get: SignedGet;
    try {
      [plan, get] = await Promise.all([planFor?.(), os.signedGet(t.key), opening]);
    } catch (e) {
      const fh = await opening.catch(() => undefined);
      if (fh) {
        await fh.close().catch(() => {});
        await fs.rm(t.tmp, { force: true });
      }
      throw missingIfAbsent(e, id);
    }
    const d = new Download(id, os, t, onIdle, plan);
    d.#fh = await opening;
    try {
      const { url, headers } = get;
      await new Promise<void>((resolve, reject) => {
        d.#answered = { resolve, reject };
        const at = ringAt(d.#ringMem, path.dirname(t.tmp));
        d.#thread = fetchThread();
        d.#thread.get({ t: 'get', id: d.#fetch, url, headers, idleMs: os.idleTimeout, fd: d.#fh.fd, tmp: t.tmp, ring: d.#ringMem, ctl: d.#ctl.buffer as SharedArrayBuffer, ...(plan ? { plan } : {}), ...(at !== undefined ? { ringAt: at } : {}) }, (m) => d.#on(m));
      });
    } catch (e) {
      d.#settled = true;
      d.#idle = true;
      if (d.#error !== undefined) d.giveUpRing(); // the thread is done with it
      await d.#fh.close().catch(() => {});
      await fs.rm(t.tmp, { force: true });
      throw missingIfAbsent(e, id);
    }
    return d;
  }

  /** A reader takes the download (`release` when done); undefined if it has ended and let go of its file. */
  /** Its bytes failed a check: never sealed into cas/ (the file is removed instead), never handed out again. */
  discard(): void {
    this.#stopping = true;
    this.#discarded = true;
  }

  take(): this | undefined {
    if (this.#idle || this.#stopping) return undefined;
    this.#refs++;
    return this;
  }

  /** A reader is done. The last one stops a download still under way: a fragment no one reads is not fetched for the cache. */
  release(): void {
    if (--this.#refs > 0) return;
    // Stopped only with bytes still to come: one whose bytes are all here is as good as cached.
    const received = this.#size !== undefined && this.#have() >= this.#size;
    if (!this.#done && !received && this.#error === undefined) {
      this.#thread.stop(this.#fetch);
      // Dying: a reader that comes now gets a download of its own, not this one's ERR_ABORTED.
      this.#stopping = true;
      this.#onIdle();
    }
    this.#maybeIdle();
  }

  #maybeIdle(): void {
    if (this.#idle || this.#refs > 0 || !this.#settled) return;
    this.#idle = true;
    this.giveUpRing();
    this.#onIdle();
    this.#fh.close().catch(() => {});
  }

  /** The ring, once the GET has ended: reads go to the file from now on. */
  giveUpRing(): void {
    finished.delete(this);
    if (this.#ringGone) return;
    this.#ringGone = true;
    giveRing(this.#ringMem);
  }

  #have(): number {
    return Number(Atomics.load(this.#ctl, C_HAVE));
  }

  #landed(): number {
    return Number(Atomics.load(this.#ctl, C_LANDED));
  }

  #written(): number {
    return Number(Atomics.load(this.#ctl, C_WRITTEN));
  }

  /** A message of the fetching thread about this GET. */
  #on(m: FromFetcher): void {
    if (m.t === 'head') {
      this.#size = m.size >= 0 ? m.size : undefined;
      this.#answered?.resolve();
    } else if (m.t === 'tick') this.#wake();
    else if (m.t === 'done') {
      this.#os.stats.bytesDown += m.bytes;
      this.#size = m.bytes;
      this.#done = true;
      setRingAt(this.#ringMem, path.dirname(this.#t.tmp), m.ringAt);
      finished.add(this);
      this.#wake();
      void this.#seal();
    } else {
      this.#os.stats.bytesDown += m.bytes ?? 0;
      this.#error = this.#failure(m);
      finished.add(this);
      this.#answered?.reject(this.#error);
      this.#wake();
      void fs.rm(this.#t.tmp, { force: true }).catch(() => {}).then(() => {
        this.#settled = true;
        this.#maybeIdle();
      });
    }
  }

  #failure(f: FetchFailure): CabError {
    const { key, tmp } = this.#t;
    if (f.kind === 'abort') return new CabError('ERR_ABORTED', `fetching fragment ${this.id} was cancelled`, { key });
    if (f.kind === 'io') return ioError(Object.assign(new Error(f.message), { code: f.s3Code }), `fetching fragment ${this.id} into the cache`, { path: tmp });
    if (f.kind === 'corrupt') {
      return new CabError('ERR_HASH_MISMATCH', `fragment ${this.id} from the bucket: ${f.message}`, { fragment: this.id, key, offset: f.offset, size: f.size, expected: f.expected, found: f.found });
    }
    if (f.kind === 'short') return new CabError('ERR_OBJECT_STORE', `fragment ${this.id}: ${f.message}`, { key, expected: this.#size, found: f.bytes });
    return getError(this.#os.bucket, key, f);
  }

  /** Complete: into cas/ under its name (its readers keep reading through the file handle). */
  async #seal(): Promise<void> {
    const t = this.#t;
    try {
      await this.#fh.sync();
      await ensureDir(t.dir, t.knownDirs);
      if (this.#discarded) throw new Error('discarded');
      await fs.rename(t.tmp, t.final);
      if (this.#discarded) {
        await fs.rm(t.final, { force: true }); // discarded while it was renamed: the copy that failed its check goes
      } else {
        await fsyncDir(t.dir);
        t.cached(this.#size!);
      }
    } catch {
      // A cache that could not be filled (a full disk, say) only costs a fetch next time; the bytes are read from the file.
      await fs.rm(t.tmp, { force: true }).catch(() => {});
    }
    this.#settled = true;
    this.#maybeIdle();
  }

  #ready(w: { have: number; written: number }): boolean {
    return this.#error !== undefined || this.#done || (this.#have() >= w.have && this.#written() >= w.written);
  }

  #wake(): void {
    const left: Array<{ have: number; written: number; wake: () => void }> = [];
    for (const w of this.#waiters) {
      if (this.#ready(w)) w.wake();
      else left.push(w);
    }
    this.#waiters = left;
    this.#arm();
  }

  /** Tells the fetching thread how far the waiters wait; wakes the ones that it reached meanwhile. */
  #arm(): void {
    if (this.#waiters.length === 0) return;
    let have = Infinity;
    let written = Infinity;
    for (const w of this.#waiters) {
      if (w.have > 0) have = Math.min(have, w.have);
      if (w.written > 0) written = Math.min(written, w.written);
    }
    Atomics.store(this.#ctl, C_WANT, have < Infinity ? BigInt(have) : -1n);
    Atomics.store(this.#ctl, C_WANT_WRITTEN, written < Infinity ? BigInt(written) : -1n);
    // The thread may have gone past the marks before they were set: look again (it looks after it moves).
    if (this.#waiters.some((w) => this.#ready(w))) queueMicrotask(() => this.#wake());
  }

  #resume(): void {
    if (Atomics.compareExchange(this.#ctl, C_PAUSED, 1n, 0n) === 1n) this.#thread.resume(this.#fetch);
  }

  /** Resolves once `have` bytes are received and `written` are in the file (or the GET ended). */
  #until(have: number, written: number): Promise<void> | undefined {
    const w = { have, written, wake: () => {} };
    if (this.#ready(w)) return undefined;
    this.#resume(); // a reader waiting never waits on the thread holding back for it
    return new Promise<void>((wake) => {
      w.wake = wake;
      this.#waiters.push(w);
      this.#arm();
    });
  }

  /** Reads up to `len` bytes at `pos` (fewer only at the object's end, 0 past it). */
  async read(buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    const end = pos + len;
    if (pos > this.#have() + FAR_AHEAD && !this.#done && this.#error === undefined) return this.#readRange(buf, off, len, pos);
    await this.#until(end, 0);
    const have = this.#have();
    if (this.#error !== undefined && have < end) throw this.#error;
    const n = Math.max(0, Math.min(len, have - pos));
    if (n === 0) return 0;
    if (this.#copyFromRing(buf, off, n, pos)) return n;
    // Behind the ring: from the file, once written.
    await this.#until(0, pos + n);
    if (this.#error !== undefined && this.#written() < pos + n) throw this.#error;
    const { bytesRead } = await this.#fh.read(buf, off, n, pos);
    return bytesRead;
  }

  /**
   * Reads the chunks `run`, one after another from `pos`, into buf[off..]
   * as far as they are chunks of the plan with those sizes and SHA-256s,
   * checked by the fetching thread, and still in the ring: returns how
   * many, from the first, were read so (they need no other check; one
   * copy for all). 0: none of them was read (the first is not such a
   * chunk, or no longer in the ring); read it with `read`. A failed check
   * of the first chunk, or of one before it, rejects as `read` would
   * (ERR_HASH_MISMATCH); of a later one, the chunks before it are read.
   */
  async readChecked(buf: Uint8Array, off: number, pos: number, run: readonly CheckedChunk[]): Promise<number> {
    const plan = this.#plan;
    let n = 0;
    let end = pos;
    for (const c of run) {
      // At most half the ring at once (the caller reads on): the thread pauses with 6 MiB uncopied, so a long run's
      // start was overwritten before its end arrived, and every chunk was read and hashed again (a 48 MiB readAt 9x slower).
      if (n > 0 && end + c.size - pos > RING / 2) break;
      const k = this.#planned.get(end);
      if (k === undefined || plan!.at[2 * k + 1] !== c.size || !bytesEqual(plan!.hashes.subarray(32 * k, 32 * k + 32), c.hash)) break;
      end += c.size;
      n++;
    }
    if (n === 0) return 0;
    if (pos > this.#have() + FAR_AHEAD && !this.#done && this.#error === undefined) return 0; // far ahead: a range GET of its own
    // A reader ahead of the download waits for the next MAX_TAKE bytes with its chunks, not for each chunk (a message from the thread each).
    if (this.#have() < end) await this.#until(this.#size === undefined ? end : Math.max(end, Math.min(this.#size, end + MAX_TAKE)), 0);
    const have = this.#have();
    if (this.#error !== undefined && have < pos + run[0]!.size) throw this.#error;
    while (end > have) end -= run[--n]!.size;
    return n > 0 && this.#copyFromRing(buf, off, end - pos, pos) ? n : 0;
  }

  /** Copies [pos, pos + n) from the ring, if it holds all of it until the copy is done (see fetch-thread.ts). */
  #copyFromRing(buf: Uint8Array, off: number, n: number, pos: number): boolean {
    if (this.#ringGone) return false;
    if (pos + n > this.#have() || pos < this.#landed() + MAX_TAKE - RING) return false;
    const ringAt = Number(this.#ctl[C_RING_AT]); // set before the thread's `head`, which came before any read
    const from = pos % RING;
    const first = Math.min(n, RING - from);
    copyShared(buf, off, this.#ring, ringAt + from, first);
    if (first < n) copyShared(buf, off + first, this.#ring, ringAt, n - first);
    if (pos < this.#landed() + MAX_TAKE - RING) return false;
    if (this.#done && pos + n === this.#size) this.giveUpRing(); // read to the end: no one needs it now
    if (pos + n > this.#ctl[C_READ_AT]!) Atomics.store(this.#ctl, C_READ_AT, BigInt(pos + n));
    // The thread holds the body back for this reader: once half the ring is free, let it go on.
    if (this.#ctl[C_PAUSED] === 1n && this.#landed() - (pos + n) <= RING / 2) this.#resume();
    return true;
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

/** NoSuchKey: the fragment is missing from the bucket too. */
export function missingIfAbsent(e: unknown, id: string): unknown {
  if (isCabError(e, 'ERR_OBJECT_STORE') && e.data.s3Code === 'NoSuchKey') {
    return new CabError('ERR_FRAGMENT_MISSING', `fragment ${id} is missing (not cached here, not in the bucket)`, { fragment: id, cause: e });
  }
  return e;
}
