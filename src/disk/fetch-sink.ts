// One GET of the fetching thread (disk/fetch-worker.ts): where its body goes
// (the shared ring, then the cache file), the counters the main thread
// reads, and its end. See disk/fetch-thread.ts for the protocol.
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { FetchError, PlanCheck } from './fetch-check.js';
import { copyShared, C_HAVE, C_LANDED, C_PAUSED, C_READ_AT, C_RING_AT, C_WANT, C_WANT_WRITTEN, C_WRITTEN, MAX_TAKE, RING, RING_SLACK, STALL_MS, WRITE_BLOCK, type FetchFailure, type FromFetcher, type ToFetcher } from './fetch-thread.js';

/** The most bytes of one write of the file. */
const MAX_WRITE = 4 * 1024 * 1024;
/** What a direct write's offsets, lengths and memory are aligned to (a logical block of any disk). */
const DIRECT_ALIGN = 4096;

/** A body being received: held back and let go, or cut. */
export interface BodySource {
  pause(): void;
  resume(): void;
  destroy(): void;
}

export const post = (m: FromFetcher): void => parentPort!.postMessage(m);

/**
 * A GET's state here. Its body lands in the ring (by `space` and `landed`,
 * where the socket reads straight into it, or by `push`), is written to
 * the cache file in WRITE_BLOCK blocks, and the counters move after.
 */
export class Sink {
  readonly m: Extract<ToFetcher, { t: 'get' }>;
  readonly #ring: Buffer;
  readonly #ctl: BigInt64Array;
  /** The cache file opened with O_DIRECT, or -1 (writes go through the page cache, by `m.fd`). */
  #direct: number;
  /** Bytes received (C_LANDED). */
  have = 0;
  /** Bytes received and checked (C_HAVE). */
  #published = 0;
  readonly #check: PlanCheck | undefined;
  #written = 0;
  /** The body being received, once the server answered; cut by `stop`. */
  source: BodySource | undefined;
  /** Held back for a reader, and the timer that stops that. */
  #held: NodeJS.Timeout | undefined;
  /** No more holding back: a reader did not keep up. */
  #free = false;
  stopped = false;
  #ended = false;
  /** A write of the file under way (one at a time). */
  #writing = false;
  /** The body is held back (paused): for a reader, or for room in the ring. */
  #holding = false;
  /** Bytes pushed that did not fit in the ring yet. */
  #pending: Uint8Array | undefined;
  /** `finish` came while bytes were pending: its size. */
  #finishing: number | undefined;
  /** `finish` came: the tail is written too, then `done`. */
  #tail = false;
  /** The failure to post once the write under way is done. */
  #failure: FromFetcher | undefined;

  readonly #onEnd: () => void;

  constructor(m: Extract<ToFetcher, { t: 'get' }>, onEnd: () => void) {
    this.m = m;
    this.#onEnd = onEnd;
    this.#ctl = new BigInt64Array(m.ctl);
    if (m.plan) this.#check = new PlanCheck(m.plan);
    const { fd, at } = openDirect(m.tmp, m.ring, m.ringAt);
    this.#direct = fd;
    Atomics.store(this.#ctl, C_RING_AT, BigInt(at));
    this.#ring = Buffer.from(m.ring, at, RING);
  }

  /**
   * Where the next bytes of the body go in the ring, at most `left` (a
   * read straight into it is then `landed`). Some of it may be bytes not
   * in the file yet: the body is held back then (#flow) until they are,
   * and the socket asks for its next buffer before it stops, so this is
   * never empty.
   */
  space(left: number): Buffer {
    const at = this.have % RING;
    return this.#ring.subarray(at, at + Math.min(RING - at, MAX_TAKE, left));
  }

  /**
   * `n` bytes were put at `space()`: checked as far as the plan allows,
   * counted, and written to the file once a block is whole. Throws a
   * FetchError for a chunk that failed its check.
   */
  landed(n: number): void {
    const from = this.have;
    const at = from % RING;
    this.have += n;
    Atomics.store(this.#ctl, C_LANDED, BigInt(this.have));
    try {
      this.#published = this.#check ? this.#check.landed(this.#ring.subarray(at, at + n), from) : this.have;
    } catch (e) {
      // The bytes before the chunk that failed are checked (the plan is in order), and readers may have them.
      if (e instanceof FetchError && e.failure.offset !== undefined) Atomics.store(this.#ctl, C_HAVE, BigInt(Math.max(this.#published, e.failure.offset)));
      throw e;
    }
    Atomics.store(this.#ctl, C_HAVE, BigInt(this.#published));
    this.#pump();
  }

  /** Bytes received elsewhere, copied into the ring; what does not fit waits there for the file's writes (the body held back meanwhile). */
  push(b: Uint8Array): void {
    if (this.#pending) b = Buffer.concat([this.#pending, b]); // a piece that came as the body was held back: after the waiting ones
    let o = 0;
    for (; o < b.length; ) {
      const to = this.space(Math.min(b.length - o, this.#written + RING - this.have));
      if (to.length === 0) break;
      copyShared(to, 0, b, o, to.length);
      o += to.length;
      this.landed(to.length);
    }
    this.#pending = o < b.length ? b.subarray(o) : undefined;
    this.#flow();
  }

  /** After bytes landed: wakes the main thread if it waits for them; holds the body back if no reader keeps up. */
  after(): void {
    this.#tick();
    // The ring nearly full of bytes no reader has copied: hold the body back (see fetch-thread.ts).
    if (!this.#free && !this.#held && this.have - Number(Atomics.load(this.#ctl, C_READ_AT)) > RING - 2 * MAX_TAKE) {
      Atomics.store(this.#ctl, C_PAUSED, 1n);
      this.#held = setTimeout(() => this.release(true), STALL_MS);
    }
    this.#flow();
  }

  /** The main thread said how far it waits (C_WANT, C_WANT_WRITTEN): tell it once that is reached (it sets the mark, then looks again). */
  #tick(): void {
    const ctl = this.#ctl;
    const want = Atomics.load(ctl, C_WANT);
    const wantW = Atomics.load(ctl, C_WANT_WRITTEN);
    let wake = false;
    if (want >= 0n && BigInt(this.#published) >= want && Atomics.compareExchange(ctl, C_WANT, want, -1n) === want) wake = true;
    if (wantW >= 0n && BigInt(this.#written) >= wantW && Atomics.compareExchange(ctl, C_WANT_WRITTEN, wantW, -1n) === wantW) wake = true;
    if (wake) post({ t: 'tick', id: this.m.id });
  }

  /** Holds the body back while a reader is waited for, or while the ring has no room for another read (bytes not in the file yet); lets it go otherwise. */
  #flow(): void {
    const hold = !this.stopped && (this.#held !== undefined || this.#pending !== undefined || this.#written + RING - this.have < MAX_TAKE);
    if (hold === this.#holding || this.stopped) return;
    this.#holding = hold;
    if (hold) this.source?.pause();
    else this.source?.resume();
  }

  /** Stops holding the body back for a reader (`free`: for good). */
  release(free: boolean): void {
    this.#free ||= free;
    clearTimeout(this.#held);
    this.#held = undefined;
    Atomics.store(this.#ctl, C_PAUSED, 0n);
    this.#flow();
  }

  /** The whole body is here: `fail` if it is not `size` bytes (or not what the plan has); else the rest into the file, then `done`. */
  finish(size: number): void {
    if (this.#pending) return void (this.#finishing = size); // once the bytes that wait for room are in
    if (size >= 0 && this.have !== size) return this.fail({ kind: 'short', message: `the server sent ${this.have} of ${size} bytes` });
    const short = this.#check?.ended(this.have);
    if (short) return this.fail(short);
    this.#tail = true;
    this.#pump();
  }

  /** Ends the GET with a failure (the body cut), once no write of the file is under way. */
  fail(f: FetchFailure): void {
    if (this.stopped) return;
    this.stopped = true;
    this.source?.destroy();
    this.#failure = { t: 'fail', id: this.m.id, bytes: this.have, ...f };
    if (!this.#writing) this.#end(this.#failure);
  }

  /** The last message of a GET: after it, nothing of its ring or file is touched here. */
  #end(m: FromFetcher): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#held);
    if (this.#direct >= 0) fs.closeSync(this.#direct);
    this.#direct = -1;
    this.#onEnd();
    post(m);
  }

  get ended(): boolean {
    return this.#ended;
  }

  /**
   * Starts the next write of the file, if none is under way: whole blocks
   * at multiples of WRITE_BLOCK (so never across the ring's end, and aligned
   * for O_DIRECT), up to MAX_WRITE; once `finish` came, the tail too, then
   * `done`. One write at a time, off this thread (the libuv pool): a write
   * made here blocked the thread for the disk (0.64 s of 1.17 s wall for
   * 512 MiB, docs/BENCHMARKS.md), time it now spends receiving and hashing.
   */
  #pump(): void {
    if (this.#writing || this.#ended) return;
    if (this.stopped) return this.#end(this.#failure!);
    const left = this.have - this.#written;
    const at = this.#written % RING;
    let n = Math.min(left - (left % WRITE_BLOCK), RING - at, MAX_WRITE);
    if (n === 0 && this.#tail) {
      if (left === 0) return this.#done();
      n = Math.min(left, RING - at);
    }
    if (n === 0) return;
    const direct = this.#direct >= 0 && n % WRITE_BLOCK === 0;
    this.#writing = true;
    writeAll(direct ? this.#direct : this.m.fd, this.#ring, at, n, this.#written, (e) => {
      this.#writing = false;
      if (e && direct && e.code === 'EINVAL') {
        fs.closeSync(this.#direct); // refused after all: through the page cache from here on
        this.#direct = -1;
      } else if (e) {
        if (!this.stopped) this.fail(ioFailure(e));
      } else {
        this.#written += n;
        Atomics.store(this.#ctl, C_WRITTEN, BigInt(this.#written));
        if (!this.stopped) this.#tick();
      }
      if (this.#pending && !this.stopped) {
        const b = this.#pending;
        this.#pending = undefined;
        try {
          this.push(b);
        } catch (err) {
          this.fail(ioFailure(err));
        }
        this.after();
        if (!this.#pending && this.#finishing !== undefined) this.finish(this.#finishing);
      }
      this.#flow();
      this.#pump();
    });
  }

  /** Every byte in the file: its length set, and `done`. */
  #done(): void {
    try {
      fs.ftruncateSync(this.m.fd, this.have); // the trial writes of openDirect may have gone past a short file's end
    } catch (e) {
      this.stopped = true;
      return this.#end({ t: 'fail', id: this.m.id, bytes: this.have, ...ioFailure(e) });
    }
    const ringAt = this.#direct >= 0 ? Number(this.#ctl[C_RING_AT]) : undefined;
    this.#end({ t: 'done', id: this.m.id, bytes: this.have, ...(ringAt !== undefined ? { ringAt } : {}) });
  }
}

/** A failed write of the cache file (or a failed check, thrown by `landed`). */
export function ioFailure(e: unknown): FetchFailure {
  if (e instanceof FetchError) return e.failure;
  const err = e as NodeJS.ErrnoException;
  return { kind: 'io', s3Code: err.code, message: err.message };
}

/**
 * The cache file opened again with O_DIRECT, and the offset in the ring's
 * memory from which a direct write is taken (its address aligned): found
 * by trying, since an unaligned one fails with EINVAL before any I/O. The
 * trial writes land at the file's start, which the first block overwrites
 * (and the end truncates). Where the file system refuses O_DIRECT (tmpfs),
 * fd -1: writes go through the page cache. `known`: the offset an earlier
 * GET with this ring found (no trial; a write refused after all falls back
 * to the page cache, see #pump).
 */
function openDirect(tmp: string, ring: SharedArrayBuffer, known: number | undefined): { fd: number; at: number } {
  if (!fs.constants.O_DIRECT) return { fd: -1, at: 0 };
  let fd: number;
  try {
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch {
    // EINVAL where O_DIRECT is refused; any other failure (EMFILE, say) is met again, and reported, by the writes through m.fd.
    return { fd: -1, at: 0 };
  }
  if (known !== undefined) return { fd, at: known };
  const mem = Buffer.from(ring);
  for (let at = 0; at < RING_SLACK; at += 16) {
    try {
      fs.writeSync(fd, mem, at, DIRECT_ALIGN, 0);
      return { fd, at };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') break;
    }
  }
  fs.closeSync(fd);
  return { fd: -1, at: 0 };
}

/** Writes all `n` bytes of buf[off..] at `pos`, then calls `done`. */
function writeAll(fd: number, buf: Buffer, off: number, n: number, pos: number, done: (e: NodeJS.ErrnoException | null) => void): void {
  fs.write(fd, buf, off, n, pos, (e, k) => {
    if (e) return done(e);
    if (k <= 0) return done(Object.assign(new Error(`a write of the cache file took ${k} of ${n} bytes`), { code: 'EIO' }));
    if (k < n) return writeAll(fd, buf, off + k, n - k, pos + k, done);
    done(null);
  });
}
