import { Worker } from 'node:worker_threads';
import { CabError, ioError } from '../errors.js';
import type { MerkleState } from './merkle.js';

/** Messages to the hashing thread. */
export type ToWorker =
  | { t: 'open'; id: number; state?: MerkleState }
  | { t: 'data'; id: number; buf: ArrayBufferLike; off: number; len: number; merkle: boolean; writes: number[]; back?: boolean }
  | { t: 'frag'; id: number; fd: number }
  | { t: 'seal' | 'state' | 'digest' | 'close'; id: number; seq: number };

type FromWorker = { t: 'ack'; n: number; buf?: ArrayBuffer } | { t: 'res'; seq: number; value?: unknown; error?: { message: string; code?: string } };

/** Bytes handed to the thread and not yet processed, before senders wait. */
export const MAX_IN_FLIGHT = 16 * 1024 * 1024;

/** The size of a recycled buffer (see recycledBuffer). */
export const RECYCLED_BYTES = 1024 * 1024;
/** Recycled buffers kept free, at most (what an idle process keeps of them: 16 MiB). */
const MAX_FREE = 16;
/** Buffers that go back to the free list once the hashing thread is done with them. */
const recyclable = new WeakSet<ArrayBuffer>();
const free: ArrayBuffer[] = [];

/**
 * A Buffer of `n` bytes (at most RECYCLED_BYTES) over memory that the
 * hashing thread, once it has hashed and written it, hands back for the
 * next one: a receiver that fills a buffer per 1 MiB received and gives it
 * to a writer made the main thread's garbage collector run a full
 * collection every few MiB.
 */
export function recycledBuffer(n: number): Buffer {
  if (n > RECYCLED_BYTES) throw new RangeError(`a recycled buffer holds at most ${RECYCLED_BYTES} bytes`);
  let ab = free.pop();
  if (!ab) {
    ab = new ArrayBuffer(RECYCLED_BYTES);
    recyclable.add(ab);
  }
  return Buffer.from(ab, 0, n);
}

/** Whether `buf` is a recycled buffer's memory: given to the hashing thread, it is sent whole and comes back. */
export function isRecycled(buf: ArrayBufferLike): boolean {
  return buf instanceof ArrayBuffer && recyclable.has(buf);
}

/**
 * One hashing thread per process, shared by every writer of every store.
 * It is unref'd: an idle thread never keeps the process alive. Data goes to
 * it by transfer (no copy) when the sender gives up the buffer.
 */
class HashThread {
  readonly #worker: Worker;
  #seq = 1;
  #inFlight = 0;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #drained: Array<() => void> = [];
  #dead: Error | undefined;

  constructor() {
    this.#worker = startWorker();
    this.#worker.on('message', (m: FromWorker) => {
      if (m.t === 'ack') {
        this.#inFlight -= m.n;
        if (m.buf && free.length < MAX_FREE) {
          recyclable.add(m.buf);
          free.push(m.buf);
        }
        if (this.#inFlight <= MAX_IN_FLIGHT / 2) this.#wake();
        if (this.#waiting.size === 0 && this.#inFlight === 0) this.#worker.unref();
        return;
      }
      const w = this.#waiting.get(m.seq);
      this.#waiting.delete(m.seq);
      if (this.#waiting.size === 0 && this.#inFlight === 0) this.#worker.unref();
      if (!w) return;
      if (m.error) {
        // An errno from the thread's writes (ENOSPC, EIO) keeps its meaning: ERR_NO_SPACE or ERR_IO.
        const e = Object.assign(new Error(m.error.message), m.error.code ? { code: m.error.code } : {});
        w.reject(m.error.code === 'ERR_CLOSED' ? new CabError('ERR_CLOSED', m.error.message) : ioError(e, 'writing a fragment'));
      } else w.resolve(m.value);
    });
    this.#worker.on('error', (e) => this.#die(new CabError('ERR_CLOSED', `the hashing thread failed: ${e.message}`, {}, { cause: e })));
    this.#worker.on('exit', (code) => this.#die(new CabError('ERR_CLOSED', `the hashing thread exited with ${code}`)));
    // After the listeners: adding a 'message' listener refs the worker again, and a thread started ahead
    // of its first job (startHashThread) would keep the process alive.
    this.#worker.unref();
  }

  #die(e: Error): void {
    if (this.#dead) return;
    this.#dead = e;
    if (thread === this) thread = undefined;
    for (const w of this.#waiting.values()) w.reject(e);
    this.#waiting.clear();
    this.#wake();
  }

  #wake(): void {
    const d = this.#drained;
    this.#drained = [];
    for (const f of d) f();
  }

  post(m: ToWorker, transfer: ArrayBuffer[] = []): void {
    if (this.#dead) throw this.#dead;
    if (m.t === 'data') this.#inFlight += m.len;
    this.#worker.ref();
    this.#worker.postMessage(m, transfer);
  }

  request<T>(t: 'seal' | 'state' | 'digest' | 'close', id: number): Promise<T> {
    const seq = this.#seq++;
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(seq, { resolve: resolve as (v: unknown) => void, reject });
      try {
        this.post({ t, id, seq });
      } catch (e) {
        this.#waiting.delete(seq);
        reject(e as Error);
      }
    });
  }

  /** Resolves when the thread has room for more data. */
  async room(): Promise<void> {
    while (this.#inFlight > MAX_IN_FLIGHT && !this.#dead) await new Promise<void>((r) => this.#drained.push(r));
  }
}

/**
 * The hashing thread, with the parent's flags where a worker takes them. It
 * needs none of them (its file imports node: modules and ours only), so when
 * Node refuses one (--max-old-space-size, --expose-gc, --stack-size and
 * other per-process V8 flags are ERR_WORKER_INVALID_EXEC_ARGV) it starts
 * with none rather than make every writer fail.
 */
function startWorker(): Worker {
  const file = new URL('./hash-worker.js', import.meta.url);
  // Not the parent's --input-type (node -e scripts): it would stop the worker loading its file.
  const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
  try {
    return new Worker(file, { execArgv });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
    return new Worker(file, { execArgv: [] });
  }
}

let thread: HashThread | undefined;
let nextJob = 1;

/**
 * Starts the hashing thread now rather than at the first writer: a process
 * about to write (a CLI put or pull) overlaps the thread's start-up, about
 * 30 ms, with its own. Idle, the thread does not keep the process alive.
 */
export function startHashThread(): void {
  thread ??= new HashThread();
}

/**
 * One writer's hashing state in the hashing thread: the blob's merkle hasher
 * and the SHA-256 of the fragment being written (whose bytes the thread
 * also writes, at the offsets the writer chose).
 */
export class HashJob {
  readonly #t: HashThread;
  readonly #id = nextJob++;
  #closed = false;

  constructor(state?: MerkleState) {
    thread ??= new HashThread();
    this.#t = thread;
    this.#t.post({ t: 'open', id: this.#id, state });
  }

  /**
   * Hands bytes to the thread: `merkle` feeds them to the blob hash;
   * `writes` lists [offset in bytes, length, fragment offset] triples to hash
   * and write to the current fragment. With `give`, the buffer is
   * transferred and the caller must not touch it again; otherwise it is
   * copied.
   */
  send(bytes: Uint8Array, merkle: boolean, writes: number[], give: boolean): void {
    if (bytes.length === 0) return;
    let buf: ArrayBufferLike = bytes.buffer;
    let off = bytes.byteOffset;
    if (give && isRecycled(buf)) {
      this.#t.post({ t: 'data', id: this.#id, buf, off, len: bytes.length, merkle, writes, back: true }, [buf as ArrayBuffer]);
      return;
    }
    if (!give || !(buf instanceof ArrayBuffer) || bytes.byteLength !== buf.byteLength) {
      // A copy of our own (Buffer#slice would be a view, not a copy).
      const copy = new Uint8Array(bytes.length);
      copy.set(bytes);
      buf = copy.buffer;
      off = 0;
    }
    this.#t.post({ t: 'data', id: this.#id, buf, off, len: bytes.length, merkle, writes }, [buf as ArrayBuffer]);
  }

  /** Starts a new fragment, written through `fd`. */
  startFragment(fd: number): void {
    this.#t.post({ t: 'frag', id: this.#id, fd });
  }

  /** Resolves after every write to the fragment is done: its SHA-256 (hex). */
  sealFragment(): Promise<string> {
    return this.#t.request('seal', this.#id);
  }

  state(): Promise<MerkleState> {
    return this.#t.request('state', this.#id);
  }

  async digest(): Promise<Uint8Array> {
    return new Uint8Array(await this.#t.request<Uint8Array>('digest', this.#id));
  }

  room(): Promise<void> {
    return this.#t.room();
  }

  /** Ends the job once the thread has done everything sent before (so its fd may be closed). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#t.request('close', this.#id).catch((e: unknown) => {
      throw new CabError('ERR_CLOSED', 'hash thread failed', {}, { cause: e });
    });
  }
}
