import { CabError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { BlobWriter } from '../blob/writer.js';
import type { ChunkRef } from '../store.js';
import type { GetItem } from './messages.js';
import { getBytes, type RemoteSource } from './remote.js';
import type { TransferStats } from './stats.js';
import { orAbort, throwIfAborted } from './abort.js';
import { recycledBuffer, RECYCLED_BYTES } from '../hash/pool.js';
import { Pace } from './pace.js';

/**
 * Bytes of whole chunks asked for and not yet written: what a fetch holds
 * in memory, at most, and what a cancelled one still takes in (and writes)
 * before it stops.
 */
export const FETCH_WINDOW_BYTES = 8 * 1024 * 1024;
/** Gets are at least this large (a quarter of the least in flight), unless a chunk alone is. */
const MIN_GET_BYTES = 256 * 1024;

/**
 * One get: its chunks, in order, landing in one buffer of their total size,
 * which is written as one append once they are all there.
 */
interface Get {
  chunks: ChunkRef[];
  bytes: number;
  /** Chunks landed (checked and copied into `buf`), and their bytes. */
  got: number;
  at: number;
  buf: Buffer | undefined;
  /** Chunks written (a get written in part: what landed before a failure), and their bytes. */
  written: number;
  writtenBytes: number;
  /** When it was asked for; whether its answer has settled. */
  sent: number;
  settled: boolean;
}

/**
 * Whole chunks, streamed: gathered into gets of a quarter of what may be on
 * its way (Pace: 2 MiB on a local link, more over a long one; gets up to
 * getBytes(src), 1 MiB), as many in flight as that allows, and as many
 * written or waiting to be as FETCH_WINDOW_BYTES allows. A get's answer comes a
 * frame (about a chunk) at a time, and the gets are answered in the order
 * they were asked, so what lands is the blob's next bytes. Each chunk is
 * checked against its hash as it lands, while its bytes are in the CPU's
 * cache, and copied into its get's buffer, so the frame is garbage at once
 * (frames kept for longer were promoted, and cost a full collection every
 * few MiB); a get's buffer, once full, is one append, handed to the hashing
 * thread without a copy.
 *
 * When the transfer fails or is cancelled, everything that landed is
 * written before the error goes up, so the next run resumes after it and a
 * cut loses at most the frame it cut. Nothing lands after a chunk that
 * fails its check.
 *
 *   fetch --> batch --(1 MiB)--> get in flight --frames--> checked, copied --(get complete)--> written
 */
export class FetchWindow {
  #batch: ChunkRef[] = [];
  #batchBytes = 0;
  /** Gets asked for and not wholly written, oldest first. */
  readonly #queue: Get[] = [];
  /** Gets whose answer has not settled. */
  #gets = 0;
  /** Bytes asked for and not yet written. */
  #held = 0;
  /** Bytes asked for and not yet landed (nor given up on): what a cut loses, at most. */
  #inFlight = 0;
  readonly #pace: Pace;
  /** Write what landed of a get not wholly landed too (salvaging: nothing more will land). */
  #flushing = false;
  /** The first failure: of a get, of a check, or of a write (then nothing more lands). */
  #failure: unknown;
  /** A write failed: nothing more is written. */
  #broken = false;
  #writing: Promise<void> | undefined;
  #waiters: Array<() => void> = [];
  /** The last answer of a source without `stream` to land. */
  #inOrder: Promise<void> = Promise.resolve();

  constructor(
    readonly src: RemoteSource,
    readonly name: string,
    readonly w: BlobWriter,
    readonly stats: TransferStats,
    readonly signal: AbortSignal | undefined,
    readonly progress: () => void,
  ) {
    // A source that answers all at once (a bundle, a local file) has no connection to cut: as much on its way as the window holds.
    this.#pace = new Pace(FETCH_WINDOW_BYTES, src.stream ? undefined : FETCH_WINDOW_BYTES);
  }

  /** Queues a chunk; asks for a batch once it is full. */
  async fetch(c: ChunkRef): Promise<void> {
    const most = Math.min(getBytes(this.src), Math.max(MIN_GET_BYTES, this.#pace.limit / 4));
    if (this.#batch.length && this.#batchBytes + c.size > most) await this.#launch();
    this.#batch.push(c);
    this.#batchBytes += c.size;
  }

  /** Everything queued so far is fetched and written. */
  async drain(): Promise<void> {
    await this.#launch();
    while (this.#queue.length > 0 || this.#writing) await this.#step();
    if (this.#failure !== undefined) await this.#fail();
    this.#pace.paused();
  }

  /**
   * After the transfer failed or was cancelled: the gets in flight land
   * (they are paid for; on a dead connection they fail at once), then
   * everything that landed is written, so the next run need not fetch it.
   */
  async salvage(): Promise<void> {
    while (this.#gets > 0) await new Promise<void>((r) => this.#waiters.push(r));
    await this.#flush();
  }

  async #launch(): Promise<void> {
    throwIfAborted(this.signal, this.name);
    if (this.#batch.length === 0) return;
    // Room first: what was asked for before lands, and is written as it does.
    while (
      (this.#held > 0 && this.#held + this.#batchBytes > FETCH_WINDOW_BYTES) ||
      (this.#inFlight > 0 && this.#inFlight + this.#batchBytes > this.#pace.limit)
    ) {
      await this.#step();
    }
    const g: Get = { chunks: this.#batch, bytes: this.#batchBytes, got: 0, at: 0, buf: undefined, written: 0, writtenBytes: 0, sent: performance.now(), settled: false };
    this.#held += g.bytes;
    this.#inFlight += g.bytes;
    this.#batch = [];
    this.#batchBytes = 0;
    this.#queue.push(g);
    this.#gets++;
    const items = g.chunks.map((c): GetItem => [c.hash, 0, c.size]);
    const take = (got: Uint8Array[]) => this.#land(g, got);
    const answer = this.src.stream ? this.src.stream(items, take) : this.#whole(items, take);
    answer
      .then(() => {
        if (g.got < g.chunks.length) this.#failure ??= new CabError('ERR_PROTOCOL', `${this.src.label} answered ${g.got} of ${g.chunks.length} chunks`, { blob: this.name });
      })
      .catch((e: unknown) => {
        this.#failure ??= e;
      })
      .finally(() => {
        this.#gets--;
        // What never landed is no longer on its way.
        this.#inFlight -= g.bytes - g.at;
        g.settled = true;
        if (g.got === g.chunks.length) this.#pace.ended();
        this.#poke();
      });
  }

  /** A source that answers a get all at once (a bundle), maybe out of order: its answers land in the order asked. */
  #whole(items: GetItem[], take: (got: Uint8Array[]) => void): Promise<void> {
    const data = this.src.get(items);
    data.catch(() => {}); // awaited in turn below
    const landed = this.#inOrder.then(() => data).then(take);
    this.#inOrder = landed.catch(() => {});
    return landed;
  }

  /** Frames of get `g` landed (called as they arrive, in order): each chunk checked (or left to the writer), then copied into the get's buffer. */
  #land(g: Get, items: Uint8Array[]): void {
    if (this.#failure !== undefined) return;
    if (g !== this.#queue.find((x) => x.got < x.chunks.length) || g.got + items.length > g.chunks.length) {
      this.#failure = new CabError('ERR_PROTOCOL', `${this.src.label} answered gets out of order, or with more items than asked`, { blob: this.name });
      this.#poke();
      return;
    }
    if (g.at === 0) this.#pace.answered(performance.now() - g.sent);
    const before = g.at;
    for (const bytes of items) {
      const c = g.chunks[g.got]!;
      this.stats.receivedBytes += bytes.length;
      // A source with a chunker: the writer's hashing thread checks the hash (appendVerified), before the chunk counts.
      if (bytes.length !== c.size || (!this.src.chunker && !bytesEqual(sha256(bytes), c.hash))) {
        this.#failure = new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} from ${this.src.label} does not hash to what was asked for`, { blob: this.name });
        break;
      }
      // Memory the hashing thread takes without a copy (and hands back for the next get, if recycled).
      g.buf ??= g.bytes <= RECYCLED_BYTES ? recycledBuffer(g.bytes) : Buffer.allocUnsafeSlow(g.bytes);
      g.buf.set(bytes, g.at);
      g.at += bytes.length;
      g.got++;
    }
    if (!g.settled) this.#inFlight -= g.at - before;
    this.#pace.landed(g.at - before);
    if (this.#ready()) this.#kick();
    this.#poke();
  }

  /** Whether to write now: the oldest get has wholly landed, or (salvaging) some of it has. */
  #ready(): boolean {
    const g = this.#queue[0];
    return g !== undefined && (g.got === g.chunks.length || (this.#flushing && g.got > g.written));
  }

  #kick(): void {
    if (this.#writing || this.#broken) return;
    this.#writing = this.#write().finally(() => {
      this.#writing = undefined;
      if (this.#ready()) this.#kick();
      this.#poke();
    });
  }

  /** Writes what landed of the oldest get. */
  async #write(): Promise<void> {
    const g = this.#queue[0]!;
    const from = g.written;
    const to = g.got;
    if (to === g.chunks.length) this.#queue.shift();
    g.written = to;
    let off = g.writtenBytes;
    const start = off;
    const chunks = g.chunks.slice(from, to).map((c) => {
      const bytes = g.buf!.subarray(off, off + c.size);
      off += c.size;
      return { bytes, hash: c.hash };
    });
    g.writtenBytes = off;
    try {
      // A whole get's buffer goes to the hashing thread as it is (appendVerified takes it): g.buf is not touched again.
      await this.w.appendVerified(chunks, this.src.chunker);
    } catch (e) {
      this.#failure ??= e;
      this.#broken = true;
      return;
    }
    this.stats.verifiedBytes += off - start;
    this.stats.chunksFetched += to - from;
    this.#held -= off - start;
    this.progress();
  }

  /**
   * Waits for something to land, a get to end or a write to end; writes what
   * is ready. Throws (having salvaged) on a failure or an abort. Nothing is
   * awaited before the wait begins: a change in between would wake no one.
   */
  async #step(): Promise<void> {
    if (this.#failure !== undefined) await this.#fail();
    throwIfAborted(this.signal, this.name);
    if (this.#ready()) this.#kick();
    await orAbort(new Promise<void>((r) => this.#waiters.push(r)), this.signal, this.name);
  }

  /** Throws the failure once what landed is written. */
  async #fail(): Promise<never> {
    await this.#flush();
    throw this.#failure;
  }

  /** Writes everything that landed (unless a write failed). */
  async #flush(): Promise<void> {
    this.#flushing = true;
    while (!this.#broken && (this.#writing || this.#ready())) {
      this.#kick();
      await this.#writing;
    }
  }

  #poke(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }
}
