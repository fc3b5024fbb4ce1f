// One GET of the fetching thread (disk/fetch-worker.ts): where its body goes
// (the shared ring, then the cache file), the counters the main thread
// reads, and its end. See disk/fetch-thread.ts for the protocol.
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { copyShared, C_HAVE, C_PAUSED, C_READ_AT, C_RING_AT, C_WANT, C_WANT_WRITTEN, C_WRITTEN, MAX_TAKE, RING, RING_SLACK, STALL_MS, WRITE_BLOCK, type FetchFailure, type FromFetcher, type ToFetcher } from './fetch-thread.js';

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
  have = 0;
  #written = 0;
  /** The body being received, once the server answered; cut by `stop`. */
  source: BodySource | undefined;
  /** Held back for a reader, and the timer that stops that. */
  #held: NodeJS.Timeout | undefined;
  /** No more holding back: a reader did not keep up. */
  #free = false;
  stopped = false;
  #ended = false;

  readonly #onEnd: () => void;

  constructor(m: Extract<ToFetcher, { t: 'get' }>, onEnd: () => void) {
    this.m = m;
    this.#onEnd = onEnd;
    this.#ctl = new BigInt64Array(m.ctl);
    const { fd, at } = openDirect(m.tmp, m.ring);
    this.#direct = fd;
    Atomics.store(this.#ctl, C_RING_AT, BigInt(at));
    this.#ring = Buffer.from(m.ring, at, RING);
  }

  /** Where the next bytes of the body go in the ring, at most `left` (a read straight into it is then `landed`). */
  space(left: number): Buffer {
    const at = this.have % RING;
    return this.#ring.subarray(at, at + Math.min(RING - at, MAX_TAKE, left));
  }

  /** `n` bytes were put at `space()`: into the file once a block is whole, then counted. Throws a write's errno. */
  landed(n: number): void {
    this.have += n;
    Atomics.store(this.#ctl, C_HAVE, BigInt(this.have));
    if (this.have - this.#written >= WRITE_BLOCK) this.#writeOut(false);
  }

  /** Bytes received elsewhere, copied into the ring. */
  push(b: Uint8Array): void {
    for (let o = 0; o < b.length; ) {
      const to = this.space(b.length - o);
      copyShared(to, 0, b, o, to.length);
      o += to.length;
      this.landed(to.length);
    }
  }

  /** After bytes landed: wakes the main thread if it waits for them; holds the body back if no reader keeps up. */
  after(): void {
    const ctl = this.#ctl;
    // The main thread said how far it waits: tell it once that is reached (it sets the mark, then looks again).
    const want = Atomics.load(ctl, C_WANT);
    const wantW = Atomics.load(ctl, C_WANT_WRITTEN);
    let wake = false;
    if (want >= 0n && BigInt(this.have) >= want && Atomics.compareExchange(ctl, C_WANT, want, -1n) === want) wake = true;
    if (wantW >= 0n && BigInt(this.#written) >= wantW && Atomics.compareExchange(ctl, C_WANT_WRITTEN, wantW, -1n) === wantW) wake = true;
    if (wake) post({ t: 'tick', id: this.m.id });
    // The ring nearly full of bytes no reader has copied: hold the body back (see fetch-thread.ts).
    if (!this.#free && !this.#held && this.have - Number(Atomics.load(ctl, C_READ_AT)) > RING - 2 * MAX_TAKE) {
      this.source?.pause();
      Atomics.store(ctl, C_PAUSED, 1n);
      this.#held = setTimeout(() => this.release(true), STALL_MS);
    }
  }

  /** Stops holding the body back (`free`: for good). */
  release(free: boolean): void {
    this.#free ||= free;
    clearTimeout(this.#held);
    this.#held = undefined;
    Atomics.store(this.#ctl, C_PAUSED, 0n);
    if (!this.stopped) this.source?.resume();
  }

  /** The whole body is here: the tail into the file; then `done`, or `fail` if it is not `size` bytes. */
  finish(size: number): void {
    try {
      this.#writeOut(true);
    } catch (e) {
      return this.fail(ioFailure(e));
    }
    if (size >= 0 && this.have !== size) return this.fail({ kind: 'short', message: `the server sent ${this.have} of ${size} bytes` });
    this.#end({ t: 'done', id: this.m.id, bytes: this.have });
  }

  /** Ends the GET with a failure (the body cut). */
  fail(f: FetchFailure): void {
    this.stopped = true;
    this.source?.destroy();
    this.#end({ t: 'fail', id: this.m.id, bytes: this.have, ...f });
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

  // Whole blocks, at multiples of WRITE_BLOCK (so never across the ring's end, and aligned for O_DIRECT); with `all`, the tail too.
  #writeOut(all: boolean): void {
    while (this.have - this.#written >= WRITE_BLOCK || (all && this.#written < this.have)) {
      const n = Math.min(WRITE_BLOCK, this.have - this.#written);
      const at = this.#written % RING;
      if (this.#direct >= 0 && n === WRITE_BLOCK) {
        try {
          writeAll(this.#direct, this.#ring, at, n, this.#written);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
          fs.closeSync(this.#direct); // refused after all: through the page cache from here on
          this.#direct = -1;
          continue;
        }
      } else writeAll(this.m.fd, this.#ring, at, n, this.#written);
      this.#written += n;
    }
    if (all) fs.ftruncateSync(this.m.fd, this.have); // the trial writes of openDirect may have gone past a short file's end
    Atomics.store(this.#ctl, C_WRITTEN, BigInt(this.#written));
  }
}

/** A failed write of the cache file. */
export function ioFailure(e: unknown): FetchFailure {
  const err = e as NodeJS.ErrnoException;
  return { kind: 'io', s3Code: err.code, message: err.message };
}

/**
 * The cache file opened again with O_DIRECT, and the offset in the ring's
 * memory from which a direct write is taken (its address aligned): found
 * by trying, since an unaligned one fails with EINVAL before any I/O. The
 * trial writes land at the file's start, which the first block overwrites
 * (and the end truncates). Where the file system refuses O_DIRECT (tmpfs),
 * fd -1: writes go through the page cache.
 */
function openDirect(tmp: string, ring: SharedArrayBuffer): { fd: number; at: number } {
  if (!fs.constants.O_DIRECT) return { fd: -1, at: 0 };
  let fd: number;
  try {
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch {
    // EINVAL where O_DIRECT is refused; any other failure (EMFILE, say) is met again, and reported, by the writes through m.fd.
    return { fd: -1, at: 0 };
  }
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

/** Writes all `n` bytes of buf[off..] at `pos`. */
function writeAll(fd: number, buf: Buffer, off: number, n: number, pos: number): void {
  for (let done = 0; done < n; ) {
    const k = fs.writeSync(fd, buf, off + done, n - done, pos + done);
    if (k <= 0) throw Object.assign(new Error(`a write of the cache file took ${k} of ${n - done} bytes`), { code: 'EIO' });
    done += k;
  }
}
