import { setMaxListeners } from 'node:events';
import { CabError, isCabError } from '../errors.js';
import { bytesEqual } from '../hash/sha256.js';
import { FragmentFiles } from '../disk/fragments.js';
import type { VerifiedChunk } from '../blob/pieces.js';
import type { BlobStore, ChunkRef, RecipeStep } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';
import type { Prefix } from './prefix.js';
import { remoteChunks, type RemoteChunk, type RemoteSource } from './remote.js';
import type { SourceSet } from './sources.js';
import type { ReceiveOptions, TransferStats } from './stats.js';
import { FetchWindow } from './fetch-window.js';
import { FINE_SLACK, matchRun, type FineContext, type LocalWindow } from './fine.js';
import { orAbort, throwIfAborted } from './abort.js';
import { objectArray } from '../lists.js';

/** A run of missing chunks at most this long is matched at the fine grain against nearby local bytes. */
export const FINE_RUN_MAX = 1024 * 1024;
/** Runs being matched at once, ahead of the one being written: a server's default request window (each asks at least one `fine`). */
export const FINE_AHEAD = 64;
/** Bytes those runs may hold (see Queued.held). */
export const FINE_AHEAD_BYTES = 24 * 1024 * 1024;
/** Steps (local ranges and runs) waiting to be written, at most. */
const QUEUE_MAX = 256;

/**
 * A step waiting its turn to be written: a local range, or a run being
 * matched, with a bound on the bytes it holds at once (its local bytes, the
 * pieces fetched, its chunks assembled, and their copy into the writer).
 */
type Queued = { blob: string; offset: number; size: number } | { chunks: Promise<VerifiedChunk[]>; held: number };

/**
 * Writes the sender's blob after what the writer holds: the sender's chunk
 * list goes through the store's recipe; local ranges are appended by
 * reference, short runs of missing chunks next to one are matched finely
 * (fine.ts), longer ones fetched whole (fetch-window.ts).
 *
 *   local range --> (the pending run, then the range) queued
 *   missing ----> pending run --(over FINE_RUN_MAX)--> queue written out; streaming whole chunks until the next local range
 *
 * The queue is a pipeline: a run starts matching (its `fine` and `get`
 * requests go out) the moment it is queued, and steps are written in blob
 * order as the queue fills up (at most FINE_AHEAD runs and FINE_AHEAD_BYTES
 * held, QUEUE_MAX steps) and at the end. So no round trip is waited for per
 * run: while the oldest run is written, the next ones' answers are on
 * their way.
 */
export class Receiver {
  /** Where the last local range ended: the local bytes most like what comes next. */
  #cursor: { blob: string; offset: number } | undefined;
  #run: ChunkRef[] = objectArray();
  #runBytes = 0;
  readonly #queue: Queued[] = objectArray();
  /** The steps are written in the background as soon as the oldest is ready (see #drain), while the list is read on. */
  #draining: Promise<void> | undefined;
  #drainFailure: unknown;
  #landed: Array<() => void> = objectArray();
  #runsQueued = 0;
  #bytesQueued = 0;
  /** Fires when the transfer is cancelled or fails: runs being matched stop waiting for answers. */
  readonly #stop = new AbortController();
  readonly #files: FragmentFiles;
  readonly #window: FetchWindow;
  readonly #fine: FineContext;

  constructor(
    readonly store: BlobStore,
    /** Where the chunks come from: every request goes to one of its sources (FetchWindow, fine runs), or another if that one fails. */
    readonly sources: SourceSet,
    /** Where the sender's chunk list is read: the sources (or pages checkPrefix read and kept). */
    readonly list: RemoteSource,
    readonly name: string,
    readonly w: BlobWriter,
    readonly stats: TransferStats,
    readonly o: ReceiveOptions,
    /** What checkPrefix kept of a resumed blob: where the sender's list is read from, and the chunk it ends inside. */
    readonly prefix: Prefix | undefined,
  ) {
    this.#files = new FragmentFiles(store.cas, 16);
    this.#window = new FetchWindow(sources, name, w, stats, o.signal, () => this.#progress());
    const signal = o.signal ? AbortSignal.any([o.signal, this.#stop.signal]) : this.#stop.signal;
    // Every request of the runs queued waits on it (bounded by FINE_AHEAD): not a leak.
    setMaxListeners(0, signal);
    this.#fine = { src: sources.view, name, w, stats, files: this.#files, sources: new Map(), signal };
  }

  #progress(): void {
    this.o.onProgress?.({ ...this.stats });
  }

  async run(): Promise<void> {
    try {
      await this.#steps();
    } finally {
      // Failed or cancelled: runs still being matched stop, and nothing of theirs is left running.
      this.#stop.abort(new CabError('ERR_ABORTED', 'the transfer stopped'));
      await Promise.allSettled(this.#queue.map((q) => ('chunks' in q ? q.chunks : undefined)));
      this.#drainFailure ??= new CabError('ERR_ABORTED', 'the transfer stopped');
      await this.#draining; // the step being written, if any, ends first
      this.#queue.length = 0;
    }
  }

  async #steps(): Promise<void> {
    const durable = this.w.size;
    const self = this;
    // Skip what a resumed blob holds (its list from the first chunk not wholly held); the chunk it ends inside is finished from the sender.
    async function* rest(): AsyncGenerator<ChunkRef> {
      for await (const c of remoteChunks(self.list, self.name, self.stats.size, self.prefix?.start)) {
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
        await this.#enqueue({ blob: step.blob, offset: step.offset, size: step.size });
        this.#cursor = { blob: step.blob, offset: step.offset + step.size };
      } else {
        this.stats.neededBytes += step.size;
        if (streaming) {
          await this.#window.fetch(step);
          continue;
        }
        this.#run.push(step);
        this.#runBytes += step.size;
        if (this.#runBytes > FINE_RUN_MAX) {
          // The window writes as its answers land: everything before it first.
          await this.#drain();
          streaming = true;
          for (const c of this.#run) await this.#window.fetch(c);
          this.#run = objectArray();
          this.#runBytes = 0;
        }
      }
    }
    await this.#window.drain();
    await this.#flushRun(undefined);
    await this.#drain();
  }

  /** After a cancel: writes the answers already on their way. */
  salvage(): Promise<void> {
    return this.#window.salvage();
  }

  closeReaders(): Promise<void> {
    this.#window.close();
    return this.#files.close();
  }

  /** The chunk that a resumed blob ends inside: its rest, fetched and checked with the local head by checkPrefix. */
  async #finishStraddling(c: RemoteChunk, durable: number): Promise<void> {
    const s = this.prefix?.straddle;
    if (!s || s.chunk.offset !== c.offset || !bytesEqual(s.chunk.hash, c.hash) || s.chunk.size - s.rest.length !== durable - c.offset) {
      throw new CabError('ERR_PROTOCOL', `the sender's chunk list changed during the transfer of ${this.name}`, { blob: this.name, offset: c.offset });
    }
    this.stats.receivedBytes += s.rest.length;
    this.stats.neededBytes += s.rest.length;
    await this.w.appendBytes(s.rest);
    this.stats.verifiedBytes += s.rest.length;
    this.stats.chunksFetched++;
  }

  /**
   * Queues the pending run of missing chunks: it starts matching now. With
   * no local bytes near it, or a source that cannot cut chunks finely (a
   * bundle), it is fetched whole through the window instead, once the queue
   * is written.
   */
  async #flushRun(next: { blob: string; offset: number } | undefined): Promise<void> {
    if (this.#run.length === 0) return;
    const run = this.#run;
    const runBytes = this.#runBytes;
    this.#run = objectArray();
    this.#runBytes = 0;
    const near = this.sources.view.fine ? nearBytes(this.#cursor, next, runBytes) : undefined;
    if (near) {
      // One source matches the whole run (its fine lists and its pieces), so that a chunk that fails names the source to drop.
      const chunks = this.sources.attempt(async (src, e) => {
        const got = await matchRun({ ...this.#fine, src }, run, near);
        e.report.chunks += got.length;
        return got;
      });
      chunks.catch(() => {}); // awaited when its turn comes, unless the transfer stops first
      await this.#enqueue({ chunks, held: 4 * runBytes + 2 * FINE_SLACK });
    } else {
      await this.#drain();
      for (const c of run) await this.#window.fetch(c);
      await this.#window.drain();
    }
    if (this.#cursor) this.#cursor = { blob: this.#cursor.blob, offset: this.#cursor.offset + runBytes };
  }

  /** Adds a step to the queue, which is written in the background; waits while the queue is full. */
  async #enqueue(q: Queued): Promise<void> {
    this.#queue.push(q);
    if ('chunks' in q) {
      this.#runsQueued++;
      this.#bytesQueued += q.held;
    }
    const writing = this.#startDraining();
    while (this.#queue.length > QUEUE_MAX || this.#runsQueued > FINE_AHEAD || (this.#bytesQueued > FINE_AHEAD_BYTES && this.#runsQueued > 1)) {
      await Promise.race([writing, new Promise<void>((r) => this.#landed.push(r))]);
      this.#throwIfDrainFailed();
    }
  }

  /**
   * Writes the queued steps in order, in the background, each as soon as it
   * is ready (a local range at once, a run once matched): writing overlaps
   * reading the list and matching later runs. Never rejects; a failure is
   * kept for #drain and #enqueue.
   */
  #startDraining(): Promise<void> {
    this.#draining ??= (async () => {
      try {
        while (this.#queue.length && this.#drainFailure === undefined) {
          await this.#land();
          for (const wake of this.#landed.splice(0)) wake();
        }
      } catch (e) {
        this.#drainFailure = e;
      } finally {
        this.#draining = undefined;
        for (const wake of this.#landed.splice(0)) wake();
      }
    })();
    return this.#draining;
  }

  /** Waits until every queued step is written; throws the writing's failure. */
  async #drain(): Promise<void> {
    while (this.#queue.length && this.#drainFailure === undefined) await this.#startDraining();
    this.#throwIfDrainFailed();
  }

  #throwIfDrainFailed(): void {
    if (this.#drainFailure !== undefined) throw this.#drainFailure;
  }

  /** Writes the oldest queued step, waiting for its run to be matched if it is one. */
  async #land(): Promise<void> {
    throwIfAborted(this.o.signal, this.name);
    const q = this.#queue[0]!;
    if ('chunks' in q) {
      const chunks = await orAbort(q.chunks, this.o.signal, this.name);
      // Counted first: their bytes go to the hashing thread as they are (empty here after).
      let bytes = 0;
      let reused = 0;
      for (const c of chunks) {
        bytes += c.bytes.length;
        for (const r of c.refs ?? []) reused += r.size;
      }
      // Checked as assembled (fine.ts); cut where the sender cut them: with our chunker, taken as whole chunks, not cut again. A run
      // with a chunk under the chunker's min (but the blob's last: stats.size) is cut again by ours (claimedBlocks).
      await this.w.appendVerified(chunks, this.sources.view.chunker, true, this.stats.size);
      this.stats.verifiedBytes += bytes;
      this.stats.reusedBytes += reused;
      this.stats.chunksFetched += chunks.length;
      this.#runsQueued--;
      this.#bytesQueued -= q.held;
    } else {
      try {
        await this.w.appendBlob(q.blob, q.offset, q.size);
      } catch (e) {
        // The local blob the recipe took this range from was deleted since: receive() plans the rest again.
        if (isCabError(e, 'ERR_NO_SUCH_BLOB') && e.data.blob === q.blob) throw sourceGone(q.blob, e);
        throw e;
      }
      this.stats.reusedBytes += q.size;
      this.stats.verifiedBytes += q.size;
    }
    this.#queue.shift();
    this.#progress();
  }
}

/** The failure of a pull whose local source blob `blob` was deleted after the recipe chose it (see isSourceGone). */
function sourceGone(blob: string, cause: unknown): CabError {
  return new CabError('ERR_NO_SUCH_BLOB', `blob ${blob}, a local source of the transfer, was deleted during it`, { blob, sourceGone: true }, { cause });
}

/** Whether a pull failed only because a local blob it was taking a range from was deleted meanwhile: what it wrote stands, and the rest can be planned again. */
export function isSourceGone(e: unknown): boolean {
  return isCabError(e, 'ERR_NO_SUCH_BLOB') && e.data.sourceGone === true;
}

/**
 * The local bytes most like a run of `runBytes` missing bytes, between the
 * local range before it (`cursor`: where it ended) and the one after it
 * (`next`). Between two ranges of one blob, the run replaces exactly the
 * bytes between them (an edit's old bytes, and the unchanged bytes of its
 * chunks): those, up to the run size plus FINE_SLACK, the run's ends at
 * theirs (`head`, `tail`). Otherwise the run size plus FINE_SLACK on either
 * side of where it would be, from `cursor` (`head`) or up to `next` (`tail`).
 */
export function nearBytes(cursor: { blob: string; offset: number } | undefined, next: { blob: string; offset: number } | undefined, runBytes: number): LocalWindow | undefined {
  if (cursor && next && next.blob === cursor.blob && next.offset >= cursor.offset) {
    return { blob: cursor.blob, from: cursor.offset, to: Math.min(next.offset, cursor.offset + runBytes + FINE_SLACK), head: cursor.offset, tail: next.offset };
  }
  if (cursor) return { blob: cursor.blob, from: Math.max(0, cursor.offset - FINE_SLACK), to: cursor.offset + runBytes + FINE_SLACK, head: cursor.offset };
  if (!next) return undefined;
  const at = Math.max(0, next.offset - runBytes);
  return { blob: next.blob, from: Math.max(0, at - FINE_SLACK), to: at + runBytes + FINE_SLACK, tail: next.offset };
}
