import type fs from 'node:fs/promises';
import { isCabError } from '../errors.js';
import { fromHex } from '../hash/sha256.js';
import { encodeRecord, merkleToRecord, packChunks, type AppendRecord } from '../format/descriptor.js';
import { writeAll } from '../disk/durable.js';
import { catchUpBlob } from '../index/catchup.js';
import type { StoreInternals } from './context.js';
import type { Ingest, Taken } from './ingest.js';
import type { WriterPins } from './pins.js';

/**
 * The durable end of a writer: its descriptor, locked, and the checkpoints
 * appended to it. A checkpoint is one descriptor record for everything
 * ingested since the last one: fragment fsync + rename + directory fsync,
 * then the record and its fsync, then the index.
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
  /** The checkpoint being made durable in the background, and the first failure of one. */
  #bg: Promise<void> = Promise.resolve();
  #bgError: unknown;

  constructor(s: StoreInternals, name: string, fh: fs.FileHandle, ends: { headerEnd: number; descEnd: number; size: number }, ingest: Ingest, pins: WriterPins) {
    this.#s = s;
    this.#name = name;
    this.#fh = fh;
    this.#headerEnd = ends.headerEnd;
    this.#descEnd = ends.descEnd;
    this.#durableSize = ends.size;
    this.#ingest = ingest;
    this.#pins = pins;
  }

  get durableSize(): number {
    return this.#durableSize;
  }

  /** Throws the failure of a background checkpoint, if one failed. */
  throwIfFailed(): void {
    if (this.#bgError !== undefined) throw this.#bgError;
  }

  /** Resolves when the checkpoint in the background has ended, however it ended. */
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
   * at most one checkpoint behind; with `wait` this resolves only once the
   * record is durable (and so are all before it). `final` ends the blob: the
   * record carries its hash.
   */
  async run(final: boolean, wait = true): Promise<void> {
    const ingest = this.#ingest;
    await ingest.commitPending();
    if (!final && ingest.idle) {
      if (wait) await this.#bg;
      return;
    }
    if (!wait) await this.#bg; // bound the work in the background to one checkpoint
    const taken = ingest.take(final);
    const task = this.#record(taken, this.#bg);
    task.catch((e: unknown) => {
      this.#bgError ??= e;
    });
    this.#bg = task;
    if (wait) await task;
  }

  /** Seals the fragment, then (after the record before, `prev`) writes the record and applies it to the index. */
  async #record(t: Taken, prev: Promise<void>): Promise<void> {
    const { frag, size } = t;
    try {
      if (frag) {
        await t.fragWritten!;
        await this.#pins.fragment(frag.id);
        await frag.seal(this.#s.cas);
      }
    } catch (e) {
      await frag?.discard();
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
    this.#descEnd += buf.length;
    this.#durableSize = size;
    try {
      if (!(await this.#s.index.applyAppend(this.#name, rec, start, this.#descEnd, t.chunkOffset, this.#headerEnd))) {
        await catchUpBlob(this.#s.index, this.#s.layout, this.#name);
      }
    } catch (e) {
      // The record is durable, so the bytes are safe; the index is derived and catches up from
      // the descriptor when next asked (catchUpBlob). A full disk must not fail a write that stands.
      if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
    }
  }
}
