import { CabError } from '../errors.js';
import { bytesEqual } from '../hash/sha256.js';
import type { BlobStore, ChunkRef, RecipeStep } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';
import type { Prefix } from './prefix.js';
import { remoteChunks, type RemoteChunk, type RemoteSource } from './remote.js';
import type { ReceiveOptions, TransferStats } from './stats.js';
import { ReaderCache } from './reader-cache.js';
import { FetchWindow } from './fetch-window.js';
import { fineRun } from './fine.js';
import { throwIfAborted } from './abort.js';

/** A run of missing chunks at most this long is matched at the fine grain against nearby local bytes. */
export const FINE_RUN_MAX = 1024 * 1024;

/**
 * Writes the sender's blob after what the writer holds: the sender's chunk
 * list goes through the store's recipe; local ranges are appended by
 * reference, short runs of missing chunks next to one are matched finely
 * (fine.ts), longer ones fetched whole (fetch-window.ts).
 *
 *   local range --> (flush the pending run) appendBlob
 *   missing ----> pending run --(over FINE_RUN_MAX)--> streaming whole chunks until the next local range
 */
export class Receiver {
  /** Where the last local range ended: the local bytes most like what comes next. */
  #cursor: { blob: string; offset: number } | undefined;
  #run: ChunkRef[] = [];
  #runBytes = 0;
  readonly #readers: ReaderCache;
  readonly #window: FetchWindow;

  constructor(
    readonly store: BlobStore,
    readonly src: RemoteSource,
    readonly name: string,
    readonly w: BlobWriter,
    readonly stats: TransferStats,
    readonly o: ReceiveOptions,
    readonly straddle: Prefix['straddle'],
  ) {
    this.#readers = new ReaderCache(store);
    this.#window = new FetchWindow(src, name, w, stats, o.signal, () => this.#progress());
  }

  #progress(): void {
    this.o.onProgress?.({ ...this.stats });
  }

  async run(): Promise<void> {
    const durable = this.w.size;
    const self = this;
    // Skip what a resumed blob holds; the chunk it ends inside is finished from the sender.
    async function* rest(): AsyncGenerator<ChunkRef> {
      for await (const c of remoteChunks(self.src, self.name, self.stats.size)) {
        throwIfAborted(self.o.signal, self.name);
        if (c.offset + c.size <= durable) continue;
        if (c.offset < durable) {
          await self.#finishStraddling(c, durable);
          continue;
        }
        yield { hash: c.hash, size: c.size };
      }
    }
    // streaming: a missing region too long to match finely, fetched as it comes
    let streaming = false;
    for await (const step of this.store.recipeStreamFromChunkStream(rest()) as AsyncIterable<RecipeStep>) {
      throwIfAborted(this.o.signal, this.name);
      if (step.kind === 'blob') {
        if (streaming) {
          await this.#window.drain();
          streaming = false;
          this.#cursor = undefined;
        }
        await this.#flushRun(step);
        await this.w.appendBlob(step.blob, step.offset, step.size);
        this.stats.reusedBytes += step.size;
        this.stats.verifiedBytes += step.size;
        this.#cursor = { blob: step.blob, offset: step.offset + step.size };
        this.#progress();
      } else {
        this.stats.neededBytes += step.size;
        if (streaming) {
          await this.#window.fetch(step);
          continue;
        }
        this.#run.push(step);
        this.#runBytes += step.size;
        if (this.#runBytes > FINE_RUN_MAX) {
          streaming = true;
          for (const c of this.#run) await this.#window.fetch(c);
          this.#run = [];
          this.#runBytes = 0;
        }
      }
    }
    await this.#window.drain();
    await this.#flushRun(undefined);
  }

  /** After a cancel: writes the answers already on their way. */
  salvage(): Promise<void> {
    return this.#window.salvage();
  }

  closeReaders(): Promise<void> {
    return this.#readers.close();
  }

  /** The chunk that a resumed blob ends inside: its rest, fetched and checked with the local head by checkPrefix. */
  async #finishStraddling(c: RemoteChunk, durable: number): Promise<void> {
    const s = this.straddle;
    if (!s || s.chunk.offset !== c.offset || !bytesEqual(s.chunk.hash, c.hash) || s.chunk.size - s.rest.length !== durable - c.offset) {
      throw new CabError('ERR_PROTOCOL', `the sender's chunk list changed during the transfer of ${this.name}`, { blob: this.name, offset: c.offset });
    }
    this.stats.receivedBytes += s.rest.length;
    this.stats.neededBytes += s.rest.length;
    await this.w.appendBytes(s.rest);
    this.stats.verifiedBytes += s.rest.length;
    this.stats.chunksFetched++;
  }

  /** Writes the pending run of missing chunks: matched finely against local bytes if it is short, else fetched whole. */
  async #flushRun(next: { blob: string; offset: number } | undefined): Promise<void> {
    if (this.#run.length === 0) return;
    const run = this.#run;
    const runBytes = this.#runBytes;
    this.#run = [];
    this.#runBytes = 0;
    const near = this.#cursor ?? (next ? { blob: next.blob, offset: Math.max(0, next.offset - runBytes) } : undefined);
    if (near && runBytes <= FINE_RUN_MAX && this.src.fine) {
      const { src, name, w, stats } = this;
      await fineRun({ src, name, w, stats, readers: this.#readers, signal: this.o.signal, progress: () => this.#progress() }, run, runBytes, near);
    } else {
      for (const c of run) await this.#window.fetch(c);
      await this.#window.drain();
    }
    if (this.#cursor) this.#cursor = { blob: this.#cursor.blob, offset: this.#cursor.offset + runBytes };
  }
}
