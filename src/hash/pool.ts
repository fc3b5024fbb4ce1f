import { Worker } from 'node:worker_threads';
import { CabError, ioError } from '../errors.js';
import type { MerkleState } from './merkle.js';
import { giveBack, giveSlot, isRecycled } from './blocks.js';

/**
 * Messages to the hashing thread. `data`: bytes to hash into the merkle tree
 * (`merkle`) and, with `cuts`, into the hashes of the chunks that end at
 * those offsets (answered to `seq`, 32 bytes per cut; `skip[i]` 1: a chunk
 * whose hash is known, not hashed), then to write (`writes`), or to keep
 * under `hold` until a `write` message names the ranges to write.
 */
export type ToWorker =
  | { t: 'open'; id: number; state?: MerkleState }
  | {
      t: 'data';
      id: number;
      buf: ArrayBufferLike;
      off: number;
      len: number;
      merkle: boolean;
      writes: number[];
      cuts?: number[];
      skip?: number[];
      seq?: number;
      hold?: number;
      back?: boolean;
      /** `buf` is shared memory (blocks.ts): the slot at this offset goes back instead of the buffer. */
      slot?: number;
      /** Hashes claimed for the chunks ending at `cuts` (32 bytes each): checked (see `hashBlock`). */
      expect?: ArrayBuffer;
      same?: SamePlan;
      /** A held block's writes and release (writeHeld), done before this message's bytes: one message a block, not two. */
      free?: { hold: number; writes: number[] };
    }
  /** Bytes of stored files (FileBytes.files) for the merkle tree only, read by the thread itself: `len` bytes in all. */
  | { t: 'read'; id: number; files: Array<string | number>; len: number }
  | { t: 'layer'; id: number; at: number; fd?: number }
  | { t: 'layer-end'; id: number; seq: number }
  | { t: 'write'; id: number; hold: number; writes: number[] }
  | { t: 'frag'; id: number; fd: number }
  | { t: 'written' | 'state' | 'digest' | 'open-chunk' | 'close'; id: number; seq: number };

/**
 * Leaves of a block that may be taken from another blob's checked leaf
 * layer (src/blob/same-leaves.ts) rather than hashed. `flags[i]` for the
 * chunk ending at cut i: 1, the source blob has a chunk of that size at
 * the same offset whose hash is `expect[32i..]` (compared here); 2, the
 * writer compared it; 0, neither. `leaves`: the source's leaf hashes from
 * leaf number `first`. The answer to such a block has a byte per chunk
 * after the hashes: 1 if the chunk was found equal to the source's.
 */
export interface SamePlan {
  flags: number[];
  expect: ArrayBuffer;
  leaves: ArrayBuffer;
  first: number;
}

type Request = 'written' | 'state' | 'digest' | 'open-chunk' | 'close';

/** Bytes of files that stay as they are while the sender holds them (a pinned blob's fragments): [path, position, length] triples, `length` in all; the hashing thread reads them (HashJob.send). */
export interface FileBytes { files: Array<string | number>; length: number }

/** `n`: bytes of data the thread is done with (an ack), on an answer too; `r`: bytes of files it read (a `read`'s ack). */
type FromWorker = { t: 'ack'; n: number; r?: 1; buf?: ArrayBuffer; slot?: number } | { t: 'res'; seq: number; n?: number; buf?: ArrayBuffer; slot?: number; cpu?: number; value?: unknown; error?: { message: string; code?: string } };

/** Bytes of data (memory) handed to the thread and not yet processed, before senders wait. */
export const MAX_IN_FLIGHT = 16 * 1024 * 1024;
/**
 * Bytes of files (`read`s: no memory here, the thread reads them itself)
 * handed to the thread and not yet hashed, before senders wait. Twice the
 * data's: with the leaf helper 16 MiB ahead (leaf-split.ts AHEAD) a
 * window of 16 MiB held the writer back while both threads had work left.
 * A 1 GiB CLI update: 1.146 s against 1.19 with one 16 MiB window for both
 * (16 alternated pairs), 1.12 against 1.21 with either bound alone
 * (docs/BENCHMARKS.md, twelfth session).
 */
export const MAX_READS_IN_FLIGHT = 32 * 1024 * 1024;

export { RECYCLED_BYTES, blockBuffer, givenBuffer, isGiven, isRecycled, recycledBuffer } from './blocks.js';

/**
 * One hashing thread per process, shared by every writer of every store.
 * It is unref'd: an idle thread never keeps the process alive. Data goes to
 * it by transfer (no copy) when the sender gives up the buffer.
 */
class HashThread {
  readonly #worker: Worker;
  #seq = 1;
  #inFlight = 0;
  #readsInFlight = 0;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #drained: Array<() => void> = [];
  #dead: Error | undefined;
  /** The thread's CPU time (ns) as of its last answer to a block, if the system says. */
  cpuNs: number | undefined;

  constructor() {
    this.#worker = startWorker();
    this.#worker.on('message', (m: FromWorker) => {
      if (m.t === 'ack' || m.n) {
        if (m.t === 'ack' && m.r) this.#readsInFlight -= m.n;
        else this.#inFlight -= m.n ?? 0;
        giveBack(m.buf, m.slot);
        // The window acked has room again (half of it): its waiters go on; one held by the other window waits again.
        if (m.t === 'ack' && m.r ? this.#readsInFlight <= MAX_READS_IN_FLIGHT / 2 : this.#inFlight <= MAX_IN_FLIGHT / 2) this.#wake();
        if (m.t === 'ack') {
          if (this.#waiting.size === 0 && this.#idle) this.#worker.unref();
          return;
        }
      }
      if (m.cpu !== undefined) this.cpuNs = m.cpu;
      const w = this.#waiting.get(m.seq);
      this.#waiting.delete(m.seq);
      if (this.#waiting.size === 0 && this.#idle) this.#worker.unref();
      if (!w) return;
      if (m.error) {
        // An errno from the thread's writes or reads (ENOSPC, EIO) keeps its meaning: ERR_NO_SPACE or ERR_IO.
        const e = Object.assign(new Error(m.error.message), m.error.code ? { code: m.error.code } : {});
        w.reject(m.error.code === 'ERR_CLOSED' || m.error.code === 'ERR_FRAGMENT_MISSING' ? new CabError(m.error.code, m.error.message) : ioError(e, 'a fragment read or write on the hashing thread'));
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

  /** Nothing handed over is still being worked on. */
  get #idle(): boolean {
    return this.#inFlight === 0 && this.#readsInFlight === 0;
  }

  #wake(): void {
    const d = this.#drained;
    this.#drained = [];
    for (const f of d) f();
  }

  post(m: ToWorker, transfer: ArrayBuffer[] = []): void {
    if (this.#dead) throw this.#dead;
    if (m.t === 'data') this.#inFlight += m.len;
    else if (m.t === 'read') this.#readsInFlight += m.len;
    this.#worker.ref();
    this.#worker.postMessage(m, transfer);
  }

  request<T>(t: Request, id: number): Promise<T> {
    return this.ask<T>((seq) => this.post({ t, id, seq }));
  }

  /** Posts a message (by `send`) that the thread answers to the sequence number it is given. */
  ask<T>(send: (seq: number) => void): Promise<T> {
    const seq = this.#seq++;
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(seq, { resolve: resolve as (v: unknown) => void, reject });
      try {
        send(seq);
      } catch (e) {
        this.#waiting.delete(seq);
        reject(e as Error);
      }
    });
  }

  /** Resolves when the thread has room for more data. */
  async room(): Promise<void> {
    while ((this.#inFlight > MAX_IN_FLIGHT || this.#readsInFlight > MAX_READS_IN_FLIGHT) && !this.#dead) await new Promise<void>((r) => this.#drained.push(r));
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
 * One writer's hashing state in the hashing thread: the blob's merkle
 * hasher, and the fragment being written (whose bytes the thread writes, at
 * the offsets the writer chose).
 */
export class HashJob {
  readonly #t: HashThread;
  readonly #id = nextJob++;
  #closed = false;
  /** A writeHeld that goes with the next message (see writeHeld). */
  #free: { hold: number; writes: number[] } | undefined;

  constructor(state?: MerkleState) {
    thread ??= new HashThread();
    this.#t = thread;
    this.#t.post({ t: 'open', id: this.#id, state });
  }

  /**
   * Hands bytes to the thread: `merkle` feeds them to the blob hash;
   * `writes` lists [offset in bytes, length, fragment offset] triples to
   * write to the current fragment. With `give`, the buffer is transferred
   * and the caller must not touch it again; otherwise it is copied.
   * FileBytes (merkle only, no writes) are read by the thread.
   */
  send(bytes: Uint8Array | FileBytes, merkle: boolean, writes: number[], give: boolean): void {
    if (bytes.length === 0) return;
    if (!(bytes instanceof Uint8Array)) return this.#send({ t: 'read', id: this.#id, files: bytes.files, len: bytes.length });
    this.#post(bytes, give, { merkle, writes });
  }

  /**
   * Hands a block to the thread to hash: into the blob hash (`merkle`) and
   * into the hashes of the chunks that end at `cuts` (offsets in the block;
   * `skip[i]` 1 for a chunk whose hash the caller knows). The bytes of a
   * chunk that started in an earlier block, or that goes on into the next,
   * go into the same chunk hash. The thread keeps the block until
   * `writeHeld(hold, ...)`. Resolves to 32 bytes per cut (zeros where skipped).
   *
   * With `expect` (32 bytes per cut, claimed by a peer; the block is whole
   * chunks): each chunk is checked against its claimed hash before it goes
   * into the blob hash, and the answer is 4 bytes, the number of chunks
   * accepted. After one fails, the job takes no more bytes (every later
   * block accepts 0): the blob hash stands at the end of the last good chunk.
   */
  hashBlock(bytes: Uint8Array, merkle: boolean, cuts: number[], skip: number[] | undefined, hold: number, give: boolean, expect?: Uint8Array, same?: SamePlan): Promise<Uint8Array> {
    const claimed = expect && new Uint8Array(expect).buffer; // a copy of its own (a Buffer's slice is a view)
    return this.#t
      .ask<Uint8Array | null>((seq) => this.#post(bytes, give, { merkle, writes: [], cuts, skip, seq, hold, expect: claimed, same }))
      .then((b) => b ?? new Uint8Array(0));
  }

  /**
   * Writes ranges of a block handed over with hashBlock ([offset in block,
   * length, fragment offset] triples), and lets it go. The message waits
   * here until the next one this job sends: a block's data carries it (one
   * message a block rather than two); any other message goes after it.
   */
  writeHeld(hold: number, writes: number[]): void {
    this.#flushFree();
    this.#free = { hold, writes };
  }

  /** A writeHeld not sent yet, posted on its own (before a message that is not a block's data). */
  #flushFree(): void {
    const f = this.#free;
    if (!f) return;
    this.#free = undefined;
    this.#t.post({ t: 'write', id: this.#id, hold: f.hold, writes: f.writes });
  }

  /** Posts a message other than data, after the writeHeld it must follow. */
  #send(m: ToWorker): void {
    this.#flushFree();
    this.#t.post(m);
  }

  #post(bytes: Uint8Array, give: boolean, fields: Pick<Extract<ToWorker, { t: 'data' }>, 'merkle' | 'writes' | 'cuts' | 'skip' | 'seq' | 'hold' | 'expect' | 'same'>): void {
    const m: typeof fields & { free?: { hold: number; writes: number[] } } = fields;
    if (this.#free) m.free = this.#free;
    this.#free = undefined;
    let buf: ArrayBufferLike = bytes.buffer;
    let off = bytes.byteOffset;
    // A shared slot (blocks.ts) is shared, not moved: the thread answers with its offset once done with it.
    const slot = give ? giveSlot(bytes) : undefined;
    if (slot !== undefined) {
      this.#t.post({ t: 'data', id: this.#id, buf, off, len: bytes.length, ...m, back: true, slot });
      return;
    }
    if (give && isRecycled(buf)) {
      this.#t.post({ t: 'data', id: this.#id, buf, off, len: bytes.length, ...m, back: true }, [buf as ArrayBuffer]);
      return;
    }
    if (!give || !(buf instanceof ArrayBuffer) || bytes.byteLength !== buf.byteLength) {
      // A copy of our own (Buffer#slice would be a view, not a copy).
      const copy = new Uint8Array(bytes.length);
      copy.set(bytes);
      buf = copy.buffer;
      off = 0;
    }
    this.#t.post({ t: 'data', id: this.#id, buf, off, len: bytes.length, ...m }, [buf as ArrayBuffer]);
  }

  /** Bytes of the chunk in progress, for its hash only (a resumed blob's open chunk). */
  hashOpenChunk(bytes: Uint8Array): void {
    if (bytes.length > 0) this.#post(bytes, false, { merkle: false, writes: [], cuts: [] });
  }

  /** The SHA-256 of the chunk in progress (the bytes hashed since the last cut), for a record. */
  async openChunkHash(): Promise<Uint8Array> {
    this.#flushFree();
    return new Uint8Array(await this.#t.request<ArrayBuffer>('open-chunk', this.#id));
  }

  /** Starts a new fragment, written through `fd`. */
  startFragment(fd: number): void {
    this.#send({ t: 'frag', id: this.#id, fd });
  }

  /**
   * Keeps the leaf hashes of every byte from now on (the job's first) for
   * a leaf layer: written from file offset `at` once `layerFile` gives the
   * file, which must come before 32 MiB of blob.
   */
  keepLeaves(at: number): void {
    this.#send({ t: 'layer', id: this.#id, at });
  }

  /** Where the kept leaf hashes go (see keepLeaves). */
  layerFile(fd: number): void {
    this.#send({ t: 'layer', id: this.#id, at: 0, fd });
  }

  /**
   * Writes the last kept leaf hashes (the partial last leaf's too): the
   * number of leaves in the file (-1 if the layer failed), and how many
   * leaves of the blob were taken from another's layer (SamePlan).
   */
  endLayer(): Promise<[number, number]> {
    return this.#t.ask<[number, number]>((seq) => this.#send({ t: 'layer-end', id: this.#id, seq }));
  }

  /** Resolves after every write to the fragment is done (rejects if one failed). */
  async fragmentWritten(): Promise<void> {
    this.#flushFree();
    await this.#t.request('written', this.#id);
  }

  state(): Promise<MerkleState> {
    this.#flushFree();
    return this.#t.request('state', this.#id);
  }

  async digest(): Promise<Uint8Array> {
    this.#flushFree();
    return new Uint8Array(await this.#t.request<Uint8Array>('digest', this.#id));
  }

  room(): Promise<void> {
    return this.#t.room();
  }

  /** The hashing thread's CPU time in ns as of its last answer to hashBlock (threadCpuNs), or undefined. */
  get threadCpuNs(): number | undefined {
    return this.#t.cpuNs;
  }

  /** Ends the job once the thread has done everything sent before (so its fd may be closed). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#flushFree();
    } catch {
      // A dead thread: the request below says so.
    }
    await this.#t.request('close', this.#id).catch((e: unknown) => {
      throw new CabError('ERR_CLOSED', 'hash thread failed', {}, { cause: e });
    });
  }
}
