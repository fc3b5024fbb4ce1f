import fs from 'node:fs';
import path from 'node:path';
import { open, type RootDatabase, type Database } from 'lmdb';
import { toHex } from '../hash/sha256.js';
import { flatDamage, overlapsDamage, type DamageRange } from '../format/damage.js';
import { chunkEntries, type AppendRecord } from '../format/descriptor.js';
import { lmdbWriteSync } from './lmdb-write.js';
import { lmdbDamage } from './lmdb-check.js';
import { PAGE, paged, takePage } from './paging.js';
import { CabError } from '../errors.js';

/** Where a chunk's bytes are: a range of a local blob. */
export interface Location {
  blob: string;
  offset: number;
  size: number;
}

/** One descriptor record, spanning descriptor bytes [start, end), whose first chunk starts at blob offset `chunkOffset`. */
export interface IndexedRecord {
  rec: AppendRecord;
  start: number;
  end: number;
  chunkOffset: number;
}

/** The index's view of one blob. */
export interface BlobEntry {
  /** Descriptor bytes applied to the index so far. */
  d: number;
  /** Blob size after those records. */
  s: number;
  /** Chunks indexed, and where the last ends. */
  n: number;
  e: number;
  /** BEP 52 hash once finalized. */
  h?: Uint8Array;
  /** Damaged ranges (fsck), flat [o, e, ...]: chunks that touch them are not offered as locations. */
  k?: number[];
}

const nameKey = (name: string) => Buffer.from(name, 'hex');

/** A `chunks` key; `name` as a name key (nameKey) where one is at hand. */
function chunkKey(hash: Uint8Array, name: string | Buffer, offset: number): Buffer {
  const b = Buffer.allocUnsafe(56);
  b.set(hash, 0);
  if (typeof name === 'string') b.write(name, 32, 'hex');
  else b.set(name, 32);
  b.writeUInt32BE(Math.floor(offset / 2 ** 32), 48);
  b.writeUInt32BE(offset >>> 0, 52);
  return b;
}

/** A finalized blob under its BEP 52 root. */
/** A `roots` key: the root, then the blob's name key (a name, or the key it already has). */
function rootKey(root: Uint8Array, name: string | Buffer): Buffer {
  return Buffer.concat([root, typeof name === 'string' ? nameKey(name) : name]);
}

function blobChunkKey(name: string, i: number): Buffer {
  const b = Buffer.allocUnsafe(20);
  b.write(name, 0, 'hex');
  b.writeUInt32BE(i, 16);
  return b;
}

/** The end of the key range that starts with `prefix`: past every key that starts with it. */
function after(prefix: Uint8Array): Buffer {
  return Buffer.concat([prefix, Buffer.alloc(64, 0xff)]);
}

/** Chunks of a blob removed from the index in one transaction. */
const REMOVE_BATCH = 1024;

/**
 * The chunk index, in LMDB under index/. Derived data: everything in it can
 * be rebuilt from the descriptors. Four databases:
 *
 *   chunks:  SHA-256 (32) | blob name (16) | blob offset (u64 BE)  ->  chunk size
 *   bchunks: blob name (16) | chunk number (u32 BE)                ->  [SHA-256, size, offset]
 *   blobs:   blob name (16)                                         ->  BlobEntry
 *   roots:   BEP 52 root (32) | blob name (16)                      ->  1   (finalized blobs)
 *
 * `roots` is written with the entry's `h`, in the same transaction, and
 * removed with it; an index written before it existed lacks it, and
 * fillRoots (run by catch-up on open) adds what is missing.
 *
 * Updates for one descriptor record are one transaction and idempotent: a
 * record is applied only if the blob's entry says the index stops exactly
 * where the record starts, so two processes catching up at once agree.
 */
export class ChunkIndex {
  readonly #env: RootDatabase;
  /**
   * Blobs whose index commit failed on a full disk while their records were
   * durable: catchUpBehind brings them up to date at the next commit that
   * succeeds, and before findByHash, fsck and GC read the index.
   */
  readonly behind = new Set<string>();
  caughtUp = false; // with every descriptor at open (catchUpAll): fsck then catches up a blob behind since, as an open would
  readonly #chunks: Database<number, Buffer>;
  readonly #bchunks: Database<[Uint8Array, number, number], Buffer>;
  readonly #blobs: Database<BlobEntry, Buffer>;
  readonly #roots: Database<number, Buffer>;

  readonly #dir: string;

  private constructor(env: RootDatabase, dir: string) {
    this.#env = env;
    this.#dir = dir;
    this.#chunks = env.openDB({ name: 'chunks', keyEncoding: 'binary' });
    this.#bchunks = env.openDB({ name: 'bchunks', keyEncoding: 'binary' });
    this.#blobs = env.openDB({ name: 'blobs', keyEncoding: 'binary' });
    this.#roots = env.openDB({ name: 'roots', keyEncoding: 'binary' });
  }

  static open(dir: string): ChunkIndex {
    // Derived data: a data file LMDB cannot open safely (lmdbDamage) is removed, and the store's
    // catch-up at open makes the entries again from the descriptors.
    if (lmdbDamage(dir)) for (const f of ['data.mdb', 'lock.mdb']) fs.rmSync(path.join(dir, f), { force: true });
    // noMetaSync: one fsync per commit, not two. A power cut may then undo the last commit (never
    // corrupt the environment), which catch-up redoes from the descriptors, as after a crash between
    // a record and its index update. The two fsyncs blocked a writer's thread about 4 ms per checkpoint.
    return new ChunkIndex(open({ path: dir, maxDbs: 16, keyEncoding: 'binary', overlappingSync: false, noMetaSync: true }), dir);
  }

  blob(name: string): BlobEntry | undefined {
    return this.#blobs.get(nameKey(name));
  }

  /**
   * The blob's entry as committed now. lmdb-js reads through a snapshot
   * that it renews once per event-loop turn (a setTimeout(0) resets it), so
   * blob() may still show what another process has since changed: fsck,
   * comparing the index with a descriptor it just looked at, must not take
   * that for disagreement.
   */
  blobNow(name: string): BlobEntry | undefined {
    this.#env.resetReadTxn();
    return this.blob(name);
  }

  /** Names of every blob the index knows, in order. */
  *blobNames(): Generator<string> {
    for (const key of this.#blobs.getKeys()) yield toHex(key as Buffer);
  }

  /**
   * Applies several records of one blob, in order, in one transaction (one
   * commit, one fsync, for a writer that checkpoints often: see
   * blob/checkpoint.ts). Returns false at the first that does not apply
   * (the index was not where it starts), keeping those before it.
   */
  applyAppends(name: string, recs: readonly IndexedRecord[], headerEnd: number): Promise<boolean> {
    return this.#write(() => recs.every((r) => this.#apply(name, r.rec, r.start, r.end, r.chunkOffset, headerEnd, [])));
  }

  applyAppendSync(name: string, rec: AppendRecord, start: number, end: number, chunkOffset: number, headerEnd: number, damage: readonly DamageRange[] = []): boolean {
    return lmdbWriteSync('updating the chunk index', this.#dir, () => this.#env.transactionSync(() => this.#apply(name, rec, start, end, chunkOffset, headerEnd, damage)));
  }

  /** Records that the index has the whole descriptor (trailing damage records included). */
  markUpTo(name: string, end: number, damage: readonly DamageRange[]): Promise<void> {
    return this.#write(() => {
      const key = nameKey(name);
      const cur = this.#blobs.get(key);
      if (!cur) return;
      const next: BlobEntry = { ...cur, d: end };
      const k = flatDamage(damage);
      if (k) next.k = k;
      this.#blobs.put(key, next);
    });
  }

  /**
   * One write transaction, committed synchronously: lmdb-js's asynchronous
   * commits leave `close()` waiting forever once one has failed (its flush
   * promise never settles), and a full disk must not hang the store. An
   * index commit comes once per descriptor record, so the wait is small.
   */
  async #write<T>(fn: () => T): Promise<T> {
    return lmdbWriteSync('updating the chunk index', this.#dir, () => this.#env.transactionSync(fn));
  }

  #apply(name: string, rec: AppendRecord, start: number, end: number, chunkOffset: number, headerEnd: number, damage: readonly DamageRange[]): boolean {
    const key = nameKey(name);
    const cur = this.#blobs.get(key) ?? { d: headerEnd, s: 0, n: 0, e: 0 };
    if (cur.d !== start || cur.e !== chunkOffset) return false;
    let off = chunkOffset;
    let n = cur.n;
    for (const [hash, size] of chunkEntries(rec.c)) {
      if (!overlapsDamage(damage, off, off + size)) this.#chunks.put(chunkKey(hash, key, off), size);
      this.#bchunks.put(blobChunkKey(name, n), [hash, size, off]);
      off += size;
      n++;
    }
    const next: BlobEntry = { d: end, s: rec.s, n, e: off };
    if (rec.h) {
      next.h = rec.h;
      this.#roots.put(rootKey(rec.h, name), 1);
    }
    const k = flatDamage(damage);
    if (k) next.k = k;
    this.#blobs.put(key, next);
    return true;
  }

  /** Makes sure a blob with only a header has an entry (so fsck sees it indexed). */
  touchBlob(name: string, headerEnd: number): Promise<boolean> {
    return this.#write(() => {
      const key = nameKey(name);
      if (this.#blobs.get(key)) return false;
      this.#blobs.put(key, { d: headerEnd, s: 0, n: 0, e: 0 });
      return true;
    });
  }

  /** Removes every entry of a blob. Returns the number of chunk entries removed. */
  async removeBlob(name: string): Promise<number> {
    // In transactions of REMOVE_BATCH chunks: each needs few new pages (LMDB reuses those the one
    // before freed), so a store's reserve (disk/reserve.ts) covers a blob of any size on a full disk.
    // The blob's own entry goes last: one removed in part is still known, and removed again.
    const prefix = nameKey(name);
    for (let removed = 0; ; ) {
      const n = await this.#write(() => {
        let k = 0;
        for (const { key, value } of this.#bchunks.getRange({ start: prefix, end: after(prefix), limit: REMOVE_BATCH })) {
          this.#chunks.remove(chunkKey(value[0], name, value[2]));
          this.#bchunks.remove(key);
          k++;
        }
        if (k === REMOVE_BATCH) return k;
        const h = this.#blobs.get(prefix)?.h;
        if (h) this.#roots.remove(rootKey(h, name));
        this.#blobs.remove(prefix);
        return k;
      });
      removed += n;
      if (n < REMOVE_BATCH) return removed;
    }
  }

  /**
   * Up to `limit` names of finalized blobs whose BEP 52 root is `root`, in
   * order, after the name `last`: a page, so that no read transaction spans
   * an await.
   */
  rootPage(root: Uint8Array, last: string | undefined, limit = PAGE): string[] {
    const start = last === undefined ? Buffer.from(root) : rootKey(root, last);
    const names = (function* (db: Database<number, Buffer>) {
      for (const key of db.getKeys({ start, end: after(root) })) {
        const name = (key as Buffer).toString('hex', 32, 48);
        if (name !== last) yield name;
      }
    })(this.#roots);
    return takePage(names, limit);
  }

  /**
   * Adds the `roots` entries of finalized blobs that lack one: an index
   * written by code older than `roots` (or by such code running beside
   * this). Reads the blob entries a page at a time; each page's additions
   * are one transaction that checks the entry still has that hash. Returns
   * how many it added.
   */
  async fillRoots(): Promise<number> {
    let added = 0;
    let last: Buffer | undefined;
    for (;;) {
      const page = takePage(this.#finalized(last), PAGE);
      if (page.length === 0) return added;
      last = page[page.length - 1]![0];
      const missing = page.filter(([key, h]) => this.#roots.get(rootKey(h, key)) === undefined);
      if (missing.length === 0) continue;
      added += await this.#write(() => {
        let n = 0;
        for (const [key, h] of missing) {
          const cur = this.#blobs.get(key)?.h;
          if (!cur || Buffer.compare(cur, h) !== 0) continue;
          this.#roots.put(rootKey(h, key), 1);
          n++;
        }
        return n;
      });
    }
  }

  /** Blob entries with a hash, after the key `from`, as [key, hash]. */
  *#finalized(from: Buffer | undefined): Generator<[Buffer, Uint8Array]> {
    for (const { key, value } of this.#blobs.getRange(from ? { start: from } : {})) {
      const k = key as Buffer;
      if (from && k.equals(from)) continue;
      if (value.h) yield [Buffer.from(k), value.h];
    }
  }

  /** Every indexed location of a chunk, lazily. */
  *locations(hash: Uint8Array): Generator<Location> {
    for (const { key, value } of this.#chunks.getRange({ start: Buffer.from(hash), end: after(hash) })) {
      const k = key as Buffer;
      yield { blob: k.toString('hex', 32, 48), offset: Number(k.readBigUInt64BE(48)), size: value };
    }
  }

  /** The size of the chunk with this hash at `offset` of blob `blob`, if the index has it there: one look, not a walk of its locations. */
  sizeAt(hash: Uint8Array, blob: string, offset: number): number | undefined {
    return this.#chunks.get(chunkKey(hash, blob, offset));
  }

  /**
   * Up to `limit` chunk hashes in order, after `after` (a hash), without
   * repeats: a page, so that no read transaction spans an await.
   */
  chunkHashPage(after: Uint8Array | undefined, limit: number): Uint8Array[] {
    return takePage(this.#chunkHashes(after), limit);
  }

  *#chunkHashes(from: Uint8Array | undefined): Generator<Uint8Array> {
    let last: Buffer | undefined;
    for (const key of this.#chunks.getKeys(from ? { start: after(from) } : {})) {
      const h = (key as Buffer).subarray(0, 32);
      if (last && Buffer.compare(last, h) === 0) continue;
      last = h;
      yield Uint8Array.from(h);
    }
  }

  /**
   * The number of the blob's chunk that starts at `offset`, if one does
   * (binary search). `near`: a chunk number at or before it, most likely a
   * few chunks before (the end of the range taken before): the search
   * gallops from there (a pull's next local range starts a chunk or two
   * after the last: three or four looks rather than ten).
   */
  chunkNumberAt(name: string, offset: number, near?: number): number | undefined {
    const n = this.blob(name)?.n ?? 0;
    let lo = 0;
    let hi = n - 1;
    for (let step = 1, at = near ?? n; at < n; step *= 2, at = lo + step) {
      const v = this.#bchunks.get(blobChunkKey(name, at));
      if (!v || v[2] > offset) {
        hi = Math.min(hi, at - 1);
        break;
      }
      if (v[2] === offset) return at;
      lo = at + 1;
    }
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = this.#bchunks.get(blobChunkKey(name, mid));
      if (!v) return undefined;
      if (v[2] === offset) return mid;
      if (v[2] < offset) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** A blob's chunks in order, lazily, from chunk number `from`. */
  *blobChunks(name: string, from = 0): Generator<{ hash: Uint8Array; size: number; offset: number }> {
    const prefix = nameKey(name);
    let n = from;
    for (const { key, value } of this.#bchunks.getRange({ start: blobChunkKey(name, from), end: after(prefix) })) {
      // Chunk n, then n + 1, ...: a blob being removed (its chunks go 1024 to a transaction, the first first)
      // ends the list where one is missing, never lists a later chunk in an earlier one's place.
      if ((key as Buffer).readUInt32BE(prefix.length) !== n++) return;
      yield { hash: Uint8Array.from(value[0]), size: value[1], offset: value[2] };
    }
  }

  /**
   * Every chunk of a blob, lazily, a page at a time; ERR_NO_SUCH_BLOB if it
   * has no entry, or if its entries go before the last page is read (a
   * delete or a rebuild in another process): never a list cut short.
   */
  async *chunkList(name: string): AsyncGenerator<{ hash: Uint8Array; size: number; offset: number }> {
    const n = this.blob(name)?.n;
    if (n === undefined) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
    let got = 0;
    for await (const c of paged<{ hash: Uint8Array; size: number; offset: number }>((_, done) => this.blobChunks(name, done))) yield (got++, c);
    // Fewer than it had (a blob only grows): its entries went meanwhile.
    if (got < n) throw new CabError('ERR_NO_SUCH_BLOB', `blob ${name} was deleted while its chunks were listed`, { blob: name });
  }

  /** Drops everything (for a rebuild). */
  clear(): Promise<void> {
    return this.#write(() => {
      this.#chunks.clearSync();
      this.#bchunks.clearSync();
      this.#blobs.clearSync();
      this.#roots.clearSync();
    });
  }

  async close(): Promise<void> {
    await this.#env.close();
  }
}
