import type fs from 'node:fs/promises';
import { isCabError } from '../errors.js';
import { fromHex } from '../hash/sha256.js';
import { encodeRecord, merkleToRecord, packChunks, type AppendRecord } from '../format/descriptor.js';
import { writeAll } from '../disk/durable.js';
import { catchUpBehind, catchUpBlob } from '../index/catchup.js';
import type { IndexedRecord } from '../index/chunk-index.js';
import type { StoreInternals } from './context.js';
import type { Ingest, Taken } from './ingest.js';
import type { WriterPins } from './pins.js';

/**
 * Blob bytes of durable records a background checkpoint may leave out of
 * the index before it commits them, all in one transaction. An index commit
 * (LMDB, synchronous, with an fdatasync) blocked the writer's thread 2 to 3
 * ms, once per record: a tus upload checkpointing every 4 MiB made 256 a
 * GiB. The index is derived data, so being behind is safe: a process that
 * needs the blob's entries catches up from the descriptor (catchUpBlob),
 * and a checkpoint that is waited for (flush, close) commits everything.
 * What it costs: a chunk repeated within this window of the same blob is
 * stored again (the index has not seen it yet), and lookupChunk finds the
 * window's chunks only once it is committed.
 */
export const INDEX_BATCH_BYTES = 64 * 1024 * 1024;

/**
 * Background checkpoints under way at once. A checkpoint's fsyncs (the
 * fragment, its directory, the record) took 20 to 45 ms on the shared
 * machine, longer than a tus upload takes to bring the next 4 MiB: with one
 * at a time the writer's thread stood idle 17 ms per checkpoint waiting for
 * the one before (2.2 s of a 512 MiB upload). Two overlap those waits; a
 * process killed loses at most one checkpoint's bytes more.
 */
export const CHECKPOINTS_IN_FLIGHT = 2;

/**
 * The durable end of a writer: its descriptor, locked, and the checkpoints
 * appended to it. A checkpoint is one descriptor record for everything
 * ingested since the last one: fragment fsync + rename + directory fsync,
 * then the record and its fsync, then the index (for a background
 * checkpoint, once INDEX_BATCH_BYTES have gathered).
 */
export class Checkpoints {
  readonly #s: StoreInternals;
  readonly #name: string;
  readonly #fh: fs.FileHandle;
  readonly #headerEnd: number;
  readonly #ingest: Ingest;
  readonly #pins: WriterPins;
  #descEnd: number;
  /** Blob size as of the last durable record: where a resume would continue. */
  #durableSize: number;
  /** Blob size as of the last checkpoint begun (durable or not yet). */
  #takenSize: number;
  /** The checkpoints being made durable in the background, oldest first (each resolves after those before it), and the first failure of one. */
  #bgs: Array<Promise<void>> = [];
  #bgError: unknown;
  /** Durable records not in the index yet, and the blob bytes they add. */
  #unindexed: IndexedRecord[] = [];
  #unindexedBytes = 0;

  constructor(s: StoreInternals, name: string, fh: fs.FileHandle, ends: { headerEnd: number; descEnd: number; size: number }, ingest: Ingest, pins: WriterPins) {
    this.#s = s;
    this.#name = name;
    this.#fh = fh;
    this.#headerEnd = ends.headerEnd;
    this.#descEnd = ends.descEnd;
    this.#durableSize = ends.size;
    this.#takenSize = ends.size;
    this.#ingest = ingest;
    this.#pins = pins;
  }

  get durableSize(): number {
    return this.#durableSize;
  }

  get takenSize(): number {
    return this.#takenSize;
  }

  /** Throws the failure of a background checkpoint, if one failed. */
  throwIfFailed(): void {
    if (this.#bgError !== undefined) throw this.#bgError;
  }

  /** The latest checkpoint begun: it ends after every one before it. */
  get #bg(): Promise<void> {
    return this.#bgs.at(-1) ?? Promise.resolve();
  }

  /** Resolves when the checkpoints in the background have ended, however they ended. */
  settled(): Promise<void> {
    return this.#bg.catch(() => {});
  }

  /** Closes the descriptor, and so releases its lock. */
  async close(): Promise<void> {
    await this.#fh.close().catch(() => {});
  }

  /**
   * Makes one record of everything ingested since the last one. The sealing
   * (hashing thread done, fragment fsync + rename + directory fsync) and the
   * record's write and fsync run in the background while the writer goes on,
   * at most CHECKPOINTS_IN_FLIGHT checkpoints behind; with `wait` this
   * resolves only once the record is durable (and so are all before it).
   * `final` ends the blob: the record carries its hash.
   */
  async run(final: boolean, wait = true): Promise<void> {
    const ingest = this.#ingest;
    await ingest.commitPending();
    if (!final && ingest.idle) {
      if (wait) {
        await this.#bg;
        await this.#index();
      }
      return;
    }
    // Bound the work in the background: the oldest checkpoint ends before another begins.
    if (!wait && this.#bgs.length >= CHECKPOINTS_IN_FLIGHT) await this.#bgs[0];
    const taken = ingest.take(final);
    this.#takenSize = taken.size;
    const task = this.#record(taken, this.#bg, wait);
    task.catch((e: unknown) => {
      this.#bgError ??= e;
    });
    this.#bgs.push(task);
    void task.then(
      () => this.#bgs.splice(this.#bgs.indexOf(task), 1),
      () => this.#bgs.splice(this.#bgs.indexOf(task), 1),
    );
    if (wait) await task;
  }

  /**
   * Seals the fragment, then (after the record before, `prev`) writes the
   * record, and applies it to the index now if `index` (else once
   * INDEX_BATCH_BYTES have gathered).
   */
  async #record(t: Taken, prev: Promise<void>, index: boolean): Promise<void> {
    const { frag, size } = t;
    try {
      if (frag) {
        // The pin (a file written and renamed) goes out while the hashing thread ends its writes to the fragment.
        const pinned = this.#pins.fragment(frag.id);
        pinned.catch(() => {});
        await t.fragWritten!;
        await pinned;
        await frag.seal(this.#s.cas);
      }
    } catch (e) {
      await frag?.discard();
      await prev.catch(() => {}); // settled after the one before, always: the latest settled means every checkpoint did
      throw e;
    }
    await prev;
    const rec: AppendRecord = {
      t: 'x',
      s: size,
      x: t.extents.map((e) => [fromHex(e.frag ?? frag!.id), e.offset, e.size]),
      c: packChunks(t.chunks),
      m: merkleToRecord(await t.state),
    };
    if (t.openHash) rec.p = await t.openHash;
    if (t.digest) {
      this.#ingest.hash = await t.digest;
      rec.h = this.#ingest.hash;
    }
    const buf = encodeRecord(rec);
    const start = this.#descEnd;
    try {
      await writeAll(this.#fh, buf, start);
      await this.#fh.datasync();
    } catch (e) {
      // Not durable: cut what part of the record got written, so the descriptor ends cleanly where it did.
      await this.#fh.truncate(start).catch(() => {});
      throw e;
    }
    if (frag) this.#pins.durable(frag.id); // the record references it now
    this.#unindexed.push({ rec, start, end: start + buf.length, chunkOffset: t.chunkOffset });
    this.#unindexedBytes += size - this.#durableSize;
    this.#descEnd += buf.length;
    this.#durableSize = size;
    if (index || this.#unindexedBytes >= INDEX_BATCH_BYTES) await this.#index();
  }

  /** Applies the durable records not yet in the index, in one transaction. */
  async #index(): Promise<void> {
    const recs = this.#unindexed;
    if (recs.length === 0) return;
    this.#unindexed = [];
    this.#unindexedBytes = 0;
    try {
      if (!(await this.#s.index.applyAppends(this.#name, recs, this.#headerEnd))) {
        await catchUpBlob(this.#s.index, this.#s.layout, this.#name);
      }
      await catchUpBehind(this.#s.index, this.#s.layout);
    } catch (e) {
      // The records are durable, so the bytes are safe; the index is derived and catches up from
      // the descriptor (catchUpBehind). A full disk must not fail a write that stands.
      if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
      this.#s.index.behind.add(this.#name);
    }
  }
}
