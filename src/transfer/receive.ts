import { CabError, isCabError } from '../errors.js';
import { chunk as cdc } from '../chunker/fastcdc.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { BlobStore, ChunkRef } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';
import type { BlobReader } from '../blob/reader.js';
import { FINE_CHUNKER, type GetItem } from './messages.js';
import { healFrom } from './heal.js';
import { checkPrefix, type Prefix } from './prefix.js';
import { getBytes, remoteChunks, type RemoteChunk, type RemoteSource } from './remote.js';

export type { RemoteSource } from './remote.js';

export interface TransferProgress {
  /** Blob size. */
  size: number;
  /** Bytes the receiver lacked (to fetch). */
  neededBytes: number;
  /** Bytes taken from local blobs (whole chunks or fine pieces). */
  reusedBytes: number;
  /** Chunk payload bytes received. */
  receivedBytes: number;
  /** Bytes appended so far, each checked against its hash. */
  verifiedBytes: number;
}

export interface TransferStats extends TransferProgress {
  name: string;
  hash: Uint8Array;
  /** The receiver already had the blob: one round trip. */
  alreadyHad: boolean;
  /** Bytes of an earlier, interrupted transfer that were kept. */
  resumedFrom: number;
  chunksFetched: number;
  /** The receiver held the blob with damage recorded by fsck: the bytes of damage the transfer healed. */
  healedBytes: number;
}

export interface ReceiveOptions {
  onProgress?: (p: TransferProgress) => void;
  /** Cancels; what is written stays, unfinalized and resumable. */
  signal?: AbortSignal;
  /** The sender's name, for the blob's signpost. */
  label?: string;
  /** What the sender announced (push): checked against its stat. */
  expect?: { size: number; hash: Uint8Array };
}

/** A run of missing chunks at most this long is matched at the fine grain against nearby local bytes. */
const FINE_RUN_MAX = 1024 * 1024;
/** Local bytes searched on each side of where a missing run would be. */
const FINE_SLACK = 32 * 1024;
/**
 * Whole-chunk fetching: requests of up to GET_BYTES, GET_WINDOW of them in
 * flight. The window bounds memory and also what an interruption wastes: the
 * answers in flight when a transfer is cut are not written, and are fetched
 * again by the next run (chunks already written never are).
 */
const GET_WINDOW = 4;

type Step = { kind: 'blob'; blob: string; offset: number; size: number } | { kind: 'chunk'; hash: Uint8Array; size: number };

/**
 * Fetches blob `name` from `src` into `store` under the same name: only the
 * chunks the store lacks travel, each verified against its hash before it
 * is written, and the blob hash is checked before it is finalized. A blob
 * already here with the same hash costs one stat, or, if fsck recorded damage
 * in it, the fetch of exactly the damaged chunks, which heals it. An
 * unfinalized blob of that name (an interrupted transfer, or anyone's) is
 * resumed from its durable size once its bytes are checked against the
 * sender's, and cut back to where they stop matching (see checkPrefix).
 */
export async function receive(store: BlobStore, src: RemoteSource, name: string, options: ReceiveOptions = {}): Promise<TransferStats> {
  const st = await src.stat(name);
  if (!st.finalized || !st.hash) throw new CabError('ERR_BLOB_NOT_FINALIZED', `the sender's blob ${name} is not finalized`, { blob: name });
  if (options.expect && (options.expect.size !== st.size || !bytesEqual(options.expect.hash, st.hash))) {
    throw new CabError('ERR_PROTOCOL', `blob ${name} is not what the sender announced`, { blob: name });
  }
  const stats: TransferStats = {
    name,
    hash: st.hash,
    size: st.size,
    neededBytes: 0,
    reusedBytes: 0,
    receivedBytes: 0,
    verifiedBytes: 0,
    alreadyHad: false,
    resumedFrom: 0,
    chunksFetched: 0,
    healedBytes: 0,
  };
  let writer: BlobWriter;
  let prefix: Prefix | undefined;
  try {
    const have = await store.newBlobReader(name);
    await have.close();
    if (have.isFinalized) {
      if (!bytesEqual(have.hash!, st.hash)) {
        throw new CabError('ERR_BLOB_EXISTS', `blob ${name} exists here with other content`, { blob: name, expected: toHex(st.hash), found: toHex(have.hash!) });
      }
      if (have.damage.length > 0) {
        const { received, healed } = await healFrom(store, src, name, st.size, options.signal);
        stats.receivedBytes = stats.neededBytes = received;
        stats.healedBytes = healed;
      } else stats.alreadyHad = true;
      stats.verifiedBytes = st.size;
      await noteSource(store, name, options.label);
      return stats;
    }
    prefix = await checkPrefix(store, src, name, st.size);
    stats.receivedBytes += prefix.wasted;
    writer = await store.resumeBlobWriter(name);
    if (writer.size !== prefix.kept) {
      await writer.closeWithoutFinalize();
      throw new CabError('ERR_BLOB_LOCKED', `blob ${name} changed while its bytes were checked against the sender's`, { blob: name });
    }
  } catch (e) {
    if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
    writer = await store.newBlobWriter(name);
  }
  try {
    if (writer.size > st.size) throw new CabError('ERR_BLOB_EXISTS', `blob ${name} here is longer than the sender's`, { blob: name });
    stats.resumedFrom = writer.size;
    writer.deferHash();
    const receiver = new Receiver(store, src, name, writer, stats, options, prefix?.straddle);
    try {
      await receiver.run();
    } catch (e) {
      if (isCabError(e, 'ERR_ABORTED')) await receiver.salvage().catch(() => {});
      throw e;
    } finally {
      await receiver.closeReaders();
    }
    const got = await writer.digest();
    if (!bytesEqual(got, st.hash)) {
      throw new CabError('ERR_HASH_MISMATCH', `blob ${name} hashes to ${toHex(got)}, not the announced ${toHex(st.hash)}`, {
        blob: name,
        expected: toHex(st.hash),
        found: toHex(got),
      });
    }
    await writer.close();
  } catch (e) {
    await writer.closeWithoutFinalize().catch(() => {});
    throw e;
  }
  await noteSource(store, name, options.label);
  return stats;
}

/**
 * A successful transfer: the peer goes into the blob's signpost, and the blob
 * counts as accessed. The blob is durable by now; a full disk that stops this
 * bookkeeping must not turn the transfer into a failure (nor every retry).
 */
async function noteSource(store: BlobStore, name: string, label?: string): Promise<void> {
  try {
    await recordSource(store, name, label);
  } catch (e) {
    if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
  }
}

async function recordSource(store: BlobStore, name: string, label?: string): Promise<void> {
  const now = new Date();
  if (label) {
    const sp = (await store.getSignpost(name)) ?? { locations: {}, sgIds: [], fetchAttempts: 0 };
    sp.locations[label] = { whenSeen: now, isProxy: false, isServer: true };
    await store.setSignpost(name, sp);
  }
  const md = (await store.getBlobMetadata(name)) ?? { ownerShares: {}, referenced: now, accessed: now };
  md.accessed = now;
  await store.setBlobMetadata(name, md);
}

class Receiver {
  /** Where the last local range ended: the local bytes most like what comes next. */
  #cursor: { blob: string; offset: number } | undefined;
  #run: Array<{ hash: Uint8Array; size: number }> = [];
  #runBytes = 0;

  constructor(
    readonly store: BlobStore,
    readonly src: RemoteSource,
    readonly name: string,
    readonly w: BlobWriter,
    readonly stats: TransferStats,
    readonly o: ReceiveOptions,
    readonly straddle: Prefix['straddle'],
  ) {}

  #check(): void {
    if (this.o.signal?.aborted) throw new CabError('ERR_ABORTED', 'the transfer was cancelled', { blob: this.name }, { cause: this.o.signal.reason });
  }

  /** Waits for `p`, or throws ERR_ABORTED as soon as the signal fires. */
  #orAbort<T>(p: Promise<T>): Promise<T> {
    const signal = this.o.signal;
    if (!signal) return p;
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(new CabError('ERR_ABORTED', 'the transfer was cancelled', { blob: this.name }, { cause: signal.reason }));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
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
        self.#check();
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
    for await (const step of this.store.recipeStreamFromChunkStream(rest()) as AsyncIterable<Step>) {
      this.#check();
      if (step.kind === 'blob') {
        if (streaming) {
          await this.#drain();
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
          await this.#fetch(step);
          continue;
        }
        this.#run.push(step);
        this.#runBytes += step.size;
        if (this.#runBytes > FINE_RUN_MAX) {
          streaming = true;
          for (const c of this.#run) await this.#fetch(c);
          this.#run = [];
          this.#runBytes = 0;
        }
      }
    }
    await this.#drain();
    await this.#flushRun(undefined);
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
    if (near && runBytes <= FINE_RUN_MAX && this.src.fine) await this.#fine(run, runBytes, near);
    else {
      for (const c of run) await this.#fetch(c);
      await this.#drain();
    }
    if (this.#cursor) this.#cursor = { blob: this.#cursor.blob, offset: this.#cursor.offset + runBytes };
  }

  /**
   * Whole chunks, streamed: gathered into requests of up to MAX_GET_BYTES,
   * GET_WINDOW requests in flight, written in order as answers come. A long
   * missing region flows through here without waiting for its end.
   */
  #batch: Array<{ hash: Uint8Array; size: number }> = [];
  #batchBytes = 0;
  #inflight: Array<{ chunks: Array<{ hash: Uint8Array; size: number }>; data: Promise<Uint8Array[]> }> = [];

  async #fetch(c: { hash: Uint8Array; size: number }): Promise<void> {
    if (this.#batch.length && this.#batchBytes + c.size > getBytes(this.src)) await this.#launch();
    this.#batch.push(c);
    this.#batchBytes += c.size;
  }

  async #launch(): Promise<void> {
    this.#check();
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
    if (!salvage) this.#check();
    const { chunks, data } = this.#inflight[0]!;
    const items = salvage ? await data : await this.#orAbort(data);
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
    this.#progress();
  }

  /**
   * After a cancel: answers already asked for are on their way; write them
   * (they were paid for) rather than fetch them again on the next run.
   */
  async salvage(): Promise<void> {
    while (this.#inflight.length) await this.#land(true);
  }

  /** Everything fetched so far is written. */
  async #drain(): Promise<void> {
    await this.#launch();
    while (this.#inflight.length) await this.#land();
  }

  /**
   * A short run: both sides cut it finely. The sender sends each missing
   * chunk's fine list; pieces found in the nearby local bytes are taken from
   * there, the rest fetched. Each chunk is assembled and checked against its
   * hash before it is written.
   */
  async #fine(run: Array<{ hash: Uint8Array; size: number }>, runBytes: number, near: { blob: string; offset: number }): Promise<void> {
    const lists = run.map((c) => {
      const p = this.src.fine!(c.hash, c.size);
      p.catch(() => {});
      return p;
    });
    const local = await this.#localPieces(near, runBytes);
    for (let i = 0; i < run.length; i++) {
      this.#check();
      const c = run[i]!;
      const pieces = await lists[i]!;
      const bytes = new Uint8Array(c.size);
      const want: GetItem[] = [];
      const wantAt: Array<[number, Uint8Array]> = [];
      let off = 0;
      for (const [h, size] of pieces) {
        const mine = local.get(toHex(h));
        if (mine && mine.length === size) {
          bytes.set(mine, off);
          this.stats.reusedBytes += size;
        } else {
          want.push([c.hash, off, size]);
          wantAt.push([off, h]);
        }
        off += size;
      }
      if (off !== c.size) throw new CabError('ERR_PROTOCOL', `fine pieces cover ${off} of ${c.size} bytes`, { blob: this.name });
      if (want.length) {
        const got = await this.src.get(want);
        got.forEach((d, k) => {
          this.stats.receivedBytes += d.length;
          if (d.length !== want[k]![2] || !bytesEqual(sha256(d), wantAt[k]![1])) {
            throw new CabError('ERR_HASH_MISMATCH', `a piece of chunk ${toHex(c.hash)} does not hash to what was asked for`, { blob: this.name });
          }
          bytes.set(d, wantAt[k]![0]);
        });
      }
      if (!bytesEqual(sha256(bytes), c.hash)) {
        throw new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} assembled from pieces does not hash to it`, { blob: this.name });
      }
      await this.w.appendBytes(bytes);
      this.stats.verifiedBytes += c.size;
      this.stats.chunksFetched++;
      this.#progress();
    }
  }

  /** Fine pieces of the local bytes around `near`, by SHA-256 (hex). Bounded by the run size plus slack. */
  async #localPieces(near: { blob: string; offset: number }, runBytes: number): Promise<Map<string, Uint8Array>> {
    const out = new Map<string, Uint8Array>();
    let r;
    try {
      r = await this.#reader(near.blob);
    } catch (e) {
      // Deleted since the recipe named it: no local bytes to match against, fetch them all.
      if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return out;
      throw e;
    }
    {
      const from = Math.max(0, near.offset - FINE_SLACK);
      const to = Math.min(r.size, near.offset + runBytes + FINE_SLACK);
      if (to <= from) return out;
      const buf = new Uint8Array(to - from);
      let at = 0;
      while (at < buf.length) {
        const n = await r.readAt(buf.subarray(at), from + at);
        if (n === 0) break;
        at += n;
      }
      let off = 0;
      for (const size of cdc(buf, FINE_CHUNKER)) {
        const piece = buf.subarray(off, off + size);
        out.set(toHex(sha256(piece)), piece);
        off += size;
      }
    }
    return out;
  }

  /** Readers of local blobs, kept for the whole transfer (opening one publishes pins). */
  readonly #readers = new Map<string, Promise<BlobReader>>();

  #reader(name: string): Promise<BlobReader> {
    let r = this.#readers.get(name);
    if (!r) {
      r = this.store.newBlobReader(name);
      r.catch(() => this.#readers.delete(name));
      this.#readers.set(name, r);
    }
    return r;
  }

  async closeReaders(): Promise<void> {
    for (const r of this.#readers.values()) await r.then((x) => x.close()).catch(() => {});
    this.#readers.clear();
  }
}
