import { CabError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { BlobWriter } from '../blob/writer.js';
import type { ChunkRef } from '../store.js';
import type { GetItem } from './messages.js';
import { getBytes, type RemoteSource } from './remote.js';
import type { TransferStats } from './stats.js';
import { orAbort, throwIfAborted } from './abort.js';

/**
 * Whole-chunk fetching: requests of up to GET_BYTES, GET_WINDOW of them in
 * flight. The window bounds memory and also what an interruption wastes: the
 * answers in flight when a transfer is cut are not written, and are fetched
 * again by the next run (chunks already written never are).
 */
export const GET_WINDOW = 4;

/**
 * Whole chunks, streamed: gathered into requests of up to getBytes(src),
 * GET_WINDOW requests in flight, each answer checked chunk by chunk and
 * written in order as it comes. A long missing region flows through here
 * without waiting for its end.
 */
export class FetchWindow {
  #batch: ChunkRef[] = [];
  #batchBytes = 0;
  #inflight: Array<{ chunks: ChunkRef[]; data: Promise<Uint8Array[]> }> = [];

  constructor(
    readonly src: RemoteSource,
    readonly name: string,
    readonly w: BlobWriter,
    readonly stats: TransferStats,
    readonly signal: AbortSignal | undefined,
    readonly progress: () => void,
  ) {}

  /** Queues a chunk; sends a request once a batch is full. */
  async fetch(c: ChunkRef): Promise<void> {
    if (this.#batch.length && this.#batchBytes + c.size > getBytes(this.src)) await this.#launch();
    this.#batch.push(c);
    this.#batchBytes += c.size;
  }

  /** Everything queued so far is fetched and written. */
  async drain(): Promise<void> {
    await this.#launch();
    while (this.#inflight.length) await this.#land();
  }

  /**
   * After a cancel: answers already asked for are on their way; write them
   * (they were paid for) rather than fetch them again on the next run.
   */
  async salvage(): Promise<void> {
    while (this.#inflight.length) await this.#land(true);
  }

  async #launch(): Promise<void> {
    throwIfAborted(this.signal, this.name);
    if (this.#batch.length === 0) return;
    const chunks = this.#batch;
    this.#batch = [];
    this.#batchBytes = 0;
    const data = this.src.get(chunks.map((c) => [c.hash, 0, c.size] as GetItem));
    data.catch(() => {});
    this.#inflight.push({ chunks, data });
    while (this.#inflight.length > GET_WINDOW) await this.#land();
  }

  /** Writes the oldest answer. */
  async #land(salvage = false): Promise<void> {
    if (!salvage) throwIfAborted(this.signal, this.name);
    const { chunks, data } = this.#inflight[0]!;
    const items = salvage ? await data : await orAbort(data, this.signal, this.name);
    this.#inflight.shift();
    for (let k = 0; k < chunks.length; k++) {
      const c = chunks[k]!;
      const d = items[k]!;
      this.stats.receivedBytes += d.length;
      if (d.length !== c.size || !bytesEqual(sha256(d), c.hash)) {
        throw new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} from ${this.src.label} does not hash to what was asked for`, { blob: this.name });
      }
    }
    await this.w.appendVerified(items.map((bytes, k) => ({ bytes, hash: chunks[k]!.hash })));
    for (const d of items) this.stats.verifiedBytes += d.length;
    this.stats.chunksFetched += chunks.length;
    this.progress();
  }
}
