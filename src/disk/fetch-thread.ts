import { Worker } from 'node:worker_threads';

/**
 * The fetching threads (disk/fetch-worker.ts) and what they share with this
 * one. A GET of a fragment is handed to it with a ring of RING bytes and a
 * row of counters, both in shared memory:
 *
 *   counters[C_LANDED]        bytes received, each put into the ring at (offset % RING) before this moves
 *   counters[C_HAVE]          bytes received and checked (see ChunkPlan): what readers may be given; <= C_LANDED
 *   counters[C_WRITTEN]       bytes written to the cache file (by the thread, through `fd`)
 *   counters[C_WANT]          set here: post a `tick` once C_HAVE reaches it (then the thread sets it to -1)
 *   counters[C_WANT_WRITTEN]  the same for C_WRITTEN
 *   counters[C_RING_AT]       set by the thread before its `head`: where the ring starts in its memory
 *   counters[C_READ_AT]       set here: the end of the last copy out of the ring
 *   counters[C_PAUSED]        1 while the thread holds the body back (below); set to 0 here, with a `resume`
 *
 * The thread overwrites ring bytes only once they are in the file, and
 * puts at most MAX_TAKE bytes into the ring (a socket read into it, or a
 * copy) before it moves C_HAVE; so
 * the bytes [landed + MAX_TAKE - RING, landed) are in the ring, and a copy out
 * of it stands if that still holds when the copy is done (the thread never
 * waits for this one). Messages: `head` when the server answered (size,
 * ETag); `tick`; and one last message, `done` (every byte received and
 * written) or `fail`, after which the thread touches neither the ring nor
 * the file. A `stop` from here ends a GET (answered with `fail`, kind
 * 'abort').
 *
 * The thread writes the file with O_DIRECT where it can, in WRITE_BLOCK
 * blocks from the ring (the tail through `fd`): a write through the page
 * cache cost 1.1 s of CPU per GiB in the kernel's copy, a direct one 0.07 s
 * (docs/BENCHMARKS.md, 2026-12-05). Direct I/O wants its memory aligned,
 * and JavaScript cannot align it: the ring's memory is RING_SLACK bytes
 * longer, and the thread finds where in it an aligned write is taken.
 * Durability is unchanged: the file is fsync'd before it goes into cas/.
 *
 * Bytes written directly are not in the page cache, so a reader that falls
 * behind the ring reads the disk. So the thread holds the body back
 * (pauses the socket) while the ring holds RING - 2 * MAX_TAKE bytes that
 * no reader has copied out, until a reader catches up (a `resume` from
 * here) or for STALL_MS at most: then it stops holding back for good, for
 * a reader that does not keep up must not hold the GET (nor the server's
 * connection).
 */
export const RING = 8 * 1024 * 1024;
/** Bytes the thread gathers in the ring before one write to the cache file. */
export const WRITE_BLOCK = 1024 * 1024;
/**
 * The most bytes the thread puts into the ring before it moves C_HAVE: the
 * most one socket read takes. A cold read fills each read whole (the
 * socket is ahead of the thread); at 256 KiB, 4,096 reads per GiB, each
 * with its callback, checks and counters. With 1 MiB the fetching
 * threads took 1.34 to 1.40 s/GiB of CPU, 1.50 to 1.66 without (against
 * 1.38 to 1.70 before the seventh session's changes), and the main thread,
 * woken once per MAX_TAKE at most, 0.56 to 0.64 (0.62 to 0.78 before):
 * docs/BENCHMARKS.md, 2026-12-05 "seventh session".
 */
export const MAX_TAKE = 1024 * 1024;
export const C_HAVE = 0;
export const C_WRITTEN = 1;
export const C_WANT = 2;
export const C_WANT_WRITTEN = 3;
export const C_RING_AT = 4;
export const C_READ_AT = 5;
export const C_PAUSED = 6;
export const C_LANDED = 7;
export const COUNTERS = 8;
/** How long the thread holds a body back for a reader at most (see above). */
export const STALL_MS = 1000;
/** Bytes of a ring's memory beyond RING, for aligning it (see above). */
export const RING_SLACK = 4096;

/**
 * The chunks a GET checks as their bytes land, in fragment order: chunk k
 * is bytes [at[2k], at[2k] + at[2k + 1]) of the fragment, and its SHA-256
 * is hashes[32k, 32k + 32). The thread moves C_HAVE past a planned chunk's
 * last byte only once the chunk hashed to its hash, so every byte of a
 * planned chunk below C_HAVE is checked; a chunk that does not is the
 * GET's end (`fail`, kind 'corrupt'), with C_HAVE left at its start.
 */
export interface ChunkPlan {
  at: Float64Array;
  hashes: Uint8Array;
}

/** `ringAt`: where an aligned direct write is taken in `ring`'s memory, found by an earlier GET with this ring (see ringAt). */
export type ToFetcher = { t: 'get'; id: number; url: string; headers: Record<string, string>; idleMs: number; fd: number; tmp: string; ring: SharedArrayBuffer; ctl: SharedArrayBuffer; plan?: ChunkPlan; ringAt?: number } | { t: 'stop' | 'resume'; id: number };

/**
 * Why a GET failed: the server or the connection ('http'), the cache file
 * ('io', s3Code the errno), a short body, a stop, or a planned chunk that
 * did not hash to its hash ('corrupt': `offset` and `size` in the fragment,
 * `expected` and `found` in hex).
 */
export type FetchFailure = { kind: 'http' | 'io' | 'short' | 'abort' | 'corrupt'; s3Code?: string; status?: number; message: string; bytes?: number; offset?: number; size?: number; expected?: string; found?: string };

/** `ringAt` in `done`: the GET's writes of the file were direct ones, taken from that offset in the ring's memory. */
export type FromFetcher = { t: 'head'; id: number; size: number; etag: string } | { t: 'tick'; id: number } | { t: 'done'; id: number; bytes: number; ringAt?: number } | ({ t: 'fail'; id: number } & FetchFailure);

const fill = Buffer.prototype.fill;

/**
 * Copies src[sOff, sOff + n) to dst[dOff..], one of them in shared memory,
 * by one memcpy: Buffer's fill with a buffer as long as the range copies
 * it once in C++. V8's own copies of shared memory (TypedArray set) go a
 * word at a time where both sides are word-aligned alike and a byte at a
 * time otherwise, which most copies here are (chunks and socket reads
 * fall anywhere); through aligned scratch memory (two copies) a cold read
 * of chunks into fresh 1 MiB blocks cost 0.27 to 0.39 s/GiB, by fill 0.15
 * to 0.18 (2026-12-05, measured apart, page faults of the blocks included).
 */
export function copyShared(dst: Uint8Array, dOff: number, src: Uint8Array, sOff: number, n: number): void {
  if (n > 0) fill.call(dst, src.subarray(sOff, sOff + n), dOff, dOff + n);
}

/** Rings of finished GETs kept for the next ones (a sequential reader has two under way at most). */
const SPARE_RINGS = 2;
const spareRings: SharedArrayBuffer[] = [];

/** A ring for a GET: a spare one, or new. */
export function takeRing(): SharedArrayBuffer {
  return spareRings.pop() ?? new SharedArrayBuffer(RING + RING_SLACK);
}

export function hasSpareRing(): boolean {
  return spareRings.length > 0;
}

/** A ring the thread is done with (after the GET's last message), for the next GET. */
export function giveRing(ring: SharedArrayBuffer): void {
  if (spareRings.length < SPARE_RINGS) spareRings.push(ring);
}

/**
 * Rings whose aligned offset a GET found (see RING_SLACK), by the folder
 * of the cache file (stores of one process may be on file systems that
 * align differently): the next GET with the ring into that folder is told
 * it, and skips the trial writes, which are blocking writes to the disk
 * on the fetching thread (63 ms of its 1.5 s per 512 MiB, 8 GETs:
 * `--cpu-prof`, 2026-12-05). A ring's memory does not move.
 */
const aligned = new WeakMap<SharedArrayBuffer, Map<string, number>>();

export function ringAt(ring: SharedArrayBuffer, dir: string): number | undefined {
  return aligned.get(ring)?.get(dir);
}

export function setRingAt(ring: SharedArrayBuffer, dir: string, at: number | undefined): void {
  if (at === undefined) return;
  let m = aligned.get(ring);
  if (!m) aligned.set(ring, (m = new Map()));
  m.set(dir, at);
}

class FetchThread {
  readonly #worker: Worker;
  readonly #gets = new Map<number, (m: FromFetcher) => void>();
  #dead = false;

  constructor() {
    const file = new URL('./fetch-worker.js', import.meta.url);
    // As the hashing thread (hash/pool.ts): the parent's flags where a worker takes them, else none.
    const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
    try {
      this.#worker = new Worker(file, { execArgv });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
      this.#worker = new Worker(file, { execArgv: [] });
    }
    this.#worker.on('message', (m: FromFetcher) => {
      if (m.t === 'head') answered();
      const on = this.#gets.get(m.id);
      if (m.t === 'done' || m.t === 'fail') {
        this.#gets.delete(m.id);
        if (this.#gets.size === 0) this.#worker.unref();
      }
      on?.(m);
    });
    const die = (message: string) => {
      if (this.#dead) return;
      this.#dead = true;
      const at = threads.indexOf(this);
      if (at >= 0) threads.splice(at, 1);
      for (const [id, on] of this.#gets) on({ t: 'fail', id, kind: 'http', s3Code: 'ERR_WORKER', message });
      this.#gets.clear();
    };
    this.#worker.on('error', (e) => die(`the fetching thread failed: ${e.message}`));
    this.#worker.on('exit', (code) => die(`the fetching thread exited with ${code}`));
    this.#worker.unref();
  }

  /** Starts a GET; `on` gets its messages, the last one `done` or `fail`. */
  get(m: Extract<ToFetcher, { t: 'get' }>, on: (m: FromFetcher) => void): void {
    this.#gets.set(m.id, on);
    this.#worker.ref();
    this.#worker.postMessage(m);
  }

  /** GETs under way on it. */
  get busy(): number {
    return this.#gets.size;
  }

  stop(id: number): void {
    if (this.#gets.has(id)) this.#worker.postMessage({ t: 'stop', id } satisfies ToFetcher);
  }

  resume(id: number): void {
    if (this.#gets.has(id)) this.#worker.postMessage({ t: 'resume', id } satisfies ToFetcher);
  }
}

/**
 * Fetching threads, at most FETCH_THREADS. A sequential reader has two
 * GETs under way at a fragment's end (the next one is sent ahead: see
 * PREFETCH in disk/blob-bytes.ts); on one thread the two shared its turn,
 * and the one thread (SHA-256 of every byte, 0.8 s/GiB, and the socket:
 * 1.3 s/GiB in all) was a stage that nothing ran beside.
 */
const FETCH_THREADS = 2;
const threads: FetchThread[] = [];
let nextId = 1;

/**
 * A fetching thread for a new GET: an idle one, else a new one while there
 * are fewer than FETCH_THREADS, else the least busy. Started at the first
 * GET; idle, they do not keep the process alive.
 */
export function fetchThread(): FetchThread {
  let best: FetchThread | undefined;
  for (const t of threads) if (!best || t.busy < best.busy) best = t;
  if (best && (best.busy === 0 || threads.length >= FETCH_THREADS)) return best;
  return startThread();
}

function startThread(): FetchThread {
  const t = new FetchThread();
  threads.push(t);
  return t;
}

/**
 * The first GET answered: the next thread starts now, off the path of the
 * next GET. Started when that GET came (a sequential reader's second,
 * sent as the first ends), its start (40 to 100 ms on a loaded machine)
 * came before that GET's first byte, the connection idle meanwhile; started
 * with the first thread, it slowed the first GET's start as much
 * (2026-12-05 "seventh session").
 */
function answered(): void {
  if (threads.length < FETCH_THREADS) startThread();
}

/** GETs under way on each fetching thread started (for tests). */
export function fetchThreadsBusy(): number[] {
  return threads.map((t) => t.busy);
}

/** A number for a new GET. */
export function newFetchId(): number {
  return nextId++;
}
