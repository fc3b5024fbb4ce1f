import { CabError, ioError, isCabError } from './errors.js';
import type { ResolvedChunkerParams } from './chunker/params.js';
import { BlobWriter } from './blob/writer.js';
import { BlobReader, type ReaderOptions } from './blob/reader.js';
import { ChunkIndex, type Location } from './index/chunk-index.js';
import { catchUpAll, catchUpBlob } from './index/catchup.js';
import { liveLocation, planRecipe, type ChunkRef, type RecipeStep } from './index/recipes.js';
import { Snapshots } from './index/snapshots.js';
import type { Descriptor } from './format/descriptor.js';
import { descriptorThere } from './disk/durable.js';
import type { Cas } from './disk/cas.js';
import { removeBlob } from './index/remove.js';
import { SharedNode } from './shared/node.js';
import type { SyncReport } from './shared/sync.js';
import { walk } from './disk/walk.js';
import { checkBlobName, isBlobName, isFragmentId, newBlobName, type Layout } from './format/layout.js';
import { fsck, type FsckOptions, type FsckReport } from './upkeep/fsck.js';
import type { Lease } from './disk/lease.js';
import { collect, type GcOptions, type GcReport } from './upkeep/gc.js';
import { blobsWithRoot } from './index/roots.js';
import { openParts } from './store/open.js';
import type { BlobStat, StoreOptions } from './store/options.js';
import type { Tables, BlobMetadata, BlobMetadataPatch, PatchOf, Signpost, SignpostPatch, PerSyncgroup } from './index/tables.js';

export { DEFAULT_FRAGMENT_SIZE, type StoreOptions, type BlobStat } from './store/options.js';
export type { BlobMetadataPatch, SignpostPatch, SignpostLocation, PatchOf } from './index/tables.js';
export type { ChunkRef, RecipeStep, Location, BlobMetadata, Signpost, PerSyncgroup, FsckOptions, FsckReport, GcOptions, GcReport, SyncReport };

/**
 * A content-addressed blob store in a directory (docs/FORMAT.md); any number
 * of processes may open the same store. It opens the parts below and wires
 * them; members tagged internal serve those parts (blob/ sees them as
 * StoreInternals) and are left out of the published typings. (The tag must
 * not appear in this comment: stripInternal would drop the whole class.)
 */
export class BlobStore {
  readonly root: string;
  /** @internal */
  readonly layout: Layout;
  /** @internal */
  readonly index: ChunkIndex;
  /** @internal */
  readonly tables: Tables;
  /** @internal */
  readonly lease: Lease;
  /** The chunker parameters of this store (from its cabstore.json): what `connect` announces for it, and what `dial` takes as `chunker`. */
  readonly chunker: ResolvedChunkerParams;
  /** @internal */
  readonly fragmentSize: number;
  /** @internal */
  readonly knownDirs: Set<string>;
  /** @internal */
  readonly cas: Cas;
  /** @internal A bucket-backed store's part in its bucket. */
  shared: SharedNode | undefined;
  readonly #open = new Set<{ close(): Promise<void> }>();
  readonly #snapshots: Snapshots;
  #closing: Promise<void> | null = null;

  private constructor(cas: Cas, index: ChunkIndex, tables: Tables, lease: Lease, chunker: ResolvedChunkerParams, fragmentSize: number) {
    const layout = cas.layout;
    this.cas = cas;
    this.knownDirs = cas.knownDirs;
    this.lease = lease;
    this.layout = layout;
    this.root = layout.root;
    this.index = index;
    this.tables = tables;
    this.chunker = chunker;
    this.fragmentSize = fragmentSize;
    this.#snapshots = new Snapshots(layout);
  }

  /**
   * Opens the store at `root` and brings the chunk index up to date. A new
   * or empty directory becomes a store unless `create` is false; one that
   * holds other files never does (ERR_BAD_STORE).
   */
  static async open(root: string, options: StoreOptions = {}): Promise<BlobStore> {
    const p = await openParts(root, options);
    try {
      const store = new BlobStore(p.cas, p.index, p.tables, p.lease, p.chunker, p.fragmentSize);
      // Re-indexes every descriptor the index is behind on, and forgets blobs whose descriptor is gone.
      if (options.catchUpIndex ?? true) {
        await catchUpAll(p.index, p.cas.layout, store.listBlobIds());
        p.index.caughtUp = true;
      }
      if (p.bucket) store.shared = await SharedNode.start(store, p.bucket);
      return store;
    } catch (e) {
      await p.close();
      throw ioError(e, `opening the store at ${p.cas.layout.root}`, { path: p.cas.layout.root });
    }
  }

  /** @internal Throws ERR_CLOSED once the store is closed. */
  checkOpen(): void {
    if (this.#closing) throw new CabError('ERR_CLOSED', 'the store is closed');
  }

  /** @internal An open writer or reader, for close() to close. */
  track(r: { close(): Promise<void> }): void {
    this.#open.add(r);
  }

  /** @internal */
  untrack(r: { close(): Promise<void> }): void {
    this.#open.delete(r);
  }

  /** @internal The durable state of a blob, parsed (cached while its descriptor does not change). */
  snapshot(name: string): Promise<Descriptor> {
    return this.#snapshots.get(name);
  }

  /** A writer for a new blob (random name unless given). ERR_BLOB_EXISTS if the name is taken. */
  newBlobWriter(name?: string): Promise<BlobWriter> {
    return BlobWriter.create(this, name === undefined ? newBlobName() : name);
  }

  /** A writer that continues an unfinalized blob from its last durable byte. */
  resumeBlobWriter(name: string): Promise<BlobWriter> {
    return BlobWriter.resume(this, name);
  }

  /** A reader of the blob as it is now, or (`follow`) as it grows: see ReaderOptions. */
  newBlobReader(name: string, options?: ReaderOptions): Promise<BlobReader> {
    return this.#fetched(name, () => BlobReader.open(this, name, options));
  }

  /** `fn`; if the blob is not here but in the bucket (a bucket-backed store), fetched first and `fn` again. */
  async #fetched<T>(name: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB') || !this.shared || !(await this.shared.fetch(name))) throw e;
      return fn();
    }
  }

  /**
   * A bucket-backed store: looks for blobs that other stores on the bucket
   * published or deleted, now (it also does every `syncInterval` ms, and
   * fetches a blob asked for by name that is not here yet).
   */
  async sync(): Promise<SyncReport> {
    this.checkOpen();
    if (!this.shared) return { imported: 0, removed: 0, published: 0, damaged: [] };
    return this.shared.sync();
  }

  /**
   * A blob's size, state and hash as its descriptor durably records them,
   * without opening a reader or pinning anything. ERR_NO_SUCH_BLOB if absent.
   */
  async stat(name: string): Promise<BlobStat> {
    checkBlobName(name);
    this.checkOpen();
    const d = await this.#fetched(name, () => this.#snapshots.get(name));
    const st: BlobStat = { size: d.size, finalized: d.finalized };
    if (d.hash) st.hash = Uint8Array.from(d.hash);
    if (d.damage.length) st.damaged = d.damage.map((r) => ({ start: r.o, end: r.e, why: r.why }));
    return st;
  }

  /** Whether the store holds the blob (finalized or not). Only a missing descriptor (ENOENT) is false; other errors reject with ERR_IO. */
  async has(name: string): Promise<boolean> {
    checkBlobName(name);
    this.checkOpen();
    try {
      return (await descriptorThere(this.layout.descriptor(name))) || ((await this.shared?.fetch(name)) ?? false);
    } catch (e) {
      throw ioError(e, `looking for blob ${name}`, { blob: name });
    }
  }

  /**
   * Removes a blob: its descriptor and index entries (and in a bucket-backed
   * store its published descriptor: every store on the bucket loses it).
   * Its fragments stay until GC finds no one needs them. ERR_BLOB_LOCKED
   * while a writer has it. `onlyIf` (internal): run with the writer lock held, before anything is removed; if it rejects, the blob stays.
   */
  async deleteBlob(name: string, onlyIf?: () => Promise<void>): Promise<void> {
    checkBlobName(name);
    this.checkOpen();
    const shared = this.shared;
    const whileLocked = async () => (await onlyIf?.(), await shared?.unpublish(name));
    await this.#fetched(name, () => removeBlob(this.layout, this.index, this.tables, name, { whileLocked }));
    await shared?.forget(name);
    this.#snapshots.forget(name);
  }

  /** @internal Removes a blob from this folder only (the bucket deleted it). */
  async removeLocal(name: string): Promise<void> {
    await removeBlob(this.layout, this.index, this.tables, name);
    await this.shared?.forget(name);
    this.#snapshots.forget(name);
  }

  /** The tables, once the store is checked open. */
  get #t(): Tables {
    this.checkOpen();
    return this.tables;
  }

  /** Replaces a blob's metadata. ERR_NO_SUCH_BLOB if the store does not hold the blob (a bad value, or one over MAX_RECORD_BYTES, is ERR_BAD_ARGUMENT first). */
  async setBlobMetadata(name: string, md: BlobMetadata): Promise<void> {
    await this.#t.forHeldBlob(name, () => this.has(name), this.tables.metadata.setter(name, md));
  }

  /**
   * Changes some fields of a blob's metadata in one transaction and returns
   * the result (see BlobMetadataPatch: ownerShares merge per syncgroup, null
   * removes one); with none stored yet, starts from no shares and both dates
   * now. ERR_NO_SUCH_BLOB as setBlobMetadata.
   */
  async updateBlobMetadata(name: string, patch: PatchOf<BlobMetadata, BlobMetadataPatch>): Promise<BlobMetadata> {
    return this.#t.forHeldBlob(name, () => this.has(name), this.tables.metadata.updater(name, patch));
  }

  /**
   * @internal updateSignpost and updateBlobMetadata in one transaction (one
   * commit: a pull's bookkeeping). A blob not held here gets the signpost
   * alone, and ERR_NO_SUCH_BLOB as updateBlobMetadata.
   */
  async updateSignpostAndMetadata(name: string, sp: PatchOf<Signpost, SignpostPatch>, md: PatchOf<BlobMetadata, BlobMetadataPatch>): Promise<void> {
    const t = this.#t;
    const signpost = t.signposts.updater(name, sp);
    const metadata = t.metadata.updater(name, md);
    try {
      await t.forHeldBlob(name, () => this.has(name), () => t.together(() => (signpost(), metadata())));
    } catch (e) {
      if (isCabError(e, 'ERR_NO_SUCH_BLOB')) signpost();
      throw e;
    }
  }

  /** undefined if the blob has no metadata, or does not exist (it does not look for the blob). */
  async getBlobMetadata(name: string): Promise<BlobMetadata | undefined> {
    return this.#t.metadata.get(name);
  }
  async deleteBlobMetadata(name: string): Promise<void> {
    await this.#t.metadata.delete(name);
  }
  /** Every blob's metadata, ordered by blob name, lazily. */
  blobMetadataStream(): AsyncGenerator<[string, BlobMetadata]> {
    return this.#t.metadata.stream();
  }

  /** Signposts may name blobs this store does not hold. */
  async setSignpost(name: string, sp: Signpost): Promise<void> {
    await this.#t.signposts.set(name, sp);
  }
  /**
   * Changes some fields of a signpost in one transaction and returns the
   * result (see SignpostPatch: locations merge per peer, null removes one);
   * with none stored yet, starts empty. The blob need not be held here.
   */
  async updateSignpost(name: string, patch: PatchOf<Signpost, SignpostPatch>): Promise<Signpost> {
    return this.#t.signposts.updater(name, patch)();
  }
  async getSignpost(name: string): Promise<Signpost | undefined> {
    return this.#t.signposts.get(name);
  }
  async deleteSignpost(name: string): Promise<void> {
    await this.#t.signposts.delete(name);
  }
  signpostStream(): AsyncGenerator<[string, Signpost]> {
    return this.#t.signposts.stream();
  }

  async setPerSyncgroup(sgId: string, psg: PerSyncgroup): Promise<void> {
    await this.#t.perSyncgroup.set(sgId, psg);
  }
  async getPerSyncgroup(sgId: string): Promise<PerSyncgroup | undefined> {
    return this.#t.perSyncgroup.get(sgId);
  }
  async deletePerSyncgroup(sgId: string): Promise<void> {
    await this.#t.perSyncgroup.delete(sgId);
  }
  perSyncgroupStream(): AsyncGenerator<[string, PerSyncgroup]> {
    return this.#t.perSyncgroup.stream();
  }

  /** The chunks of a blob, in order, lazily. Their sizes sum to the size of a finalized blob. */
  async *blobChunkStream(name: string): AsyncGenerator<ChunkRef> {
    checkBlobName(name);
    this.checkOpen();
    await catchUpBlob(this.index, this.layout, name);
    for await (const c of this.index.chunkList(name)) yield { hash: c.hash, size: c.size };
  }

  /**
   * Turns a peer's chunk list into the steps that rebuild the blob here:
   * local ranges where this store has the chunk (contiguous ones merged),
   * and the chunks to fetch. Streams: holds one step at a time.
   */
  async *recipeStreamFromChunkStream(chunks: AsyncIterable<ChunkRef> | Iterable<ChunkRef>): AsyncGenerator<RecipeStep> {
    this.checkOpen();
    yield* planRecipe(this.index, this.layout, chunks);
  }

  /** A local blob range holding the chunk; ERR_NO_SUCH_CHUNK if none. Never a deleted blob. */
  async lookupChunk(hash: Uint8Array): Promise<Location> {
    this.checkOpen();
    if (!(hash instanceof Uint8Array) || hash.length !== 32) throw new CabError('ERR_BAD_ARGUMENT', 'a chunk hash is 32 bytes');
    const loc = await liveLocation(this.index, this.layout, hash, new Map());
    if (loc) return loc;
    throw new CabError('ERR_NO_SUCH_CHUNK', `no chunk ${Buffer.from(hash).toString('hex')}`, { found: Buffer.from(hash).toString('hex') });
  }

  /**
   * Names of the finalized blobs whose BEP 52 root is `root` (32 bytes or 64
   * hex digits), lazily, in name order: "do I hold these bytes already?". A
   * lookup in the chunk index, not a scan. Left out: unfinalized blobs (no
   * root yet), deleted ones, and ones with damage recorded by fsck (they do
   * not hold every byte; a pull heals them).
   */
  findByHash(root: Uint8Array | string): AsyncGenerator<string> {
    this.checkOpen();
    return blobsWithRoot(this.index, this.layout, root);
  }

  /** Names of all blobs (finalized or not), lazily, from blob/ on disk: also those whose descriptor cannot be opened (ERR_IO then). */
  async *listBlobIds(): AsyncGenerator<string> {
    this.checkOpen();
    for await (const name of walk(this.layout.blobRoot, 1, { everyEntry: true })) if (isBlobName(name)) yield name;
  }

  /** Ids of all fragments, lazily. */
  async *listCaIds(): AsyncGenerator<string> {
    this.checkOpen();
    for await (const id of walk(this.layout.casRoot, 2)) if (isFragmentId(id)) yield id;
  }

  /**
   * Deletes fragments no blob, open reader or writer (in any live process)
   * needs, temp files of dead processes, and index entries of deleted blobs;
   * with maxBytes, evicts blobs too. See GcOptions and docs/FORMAT.md.
   */
  async gc(options: GcOptions = {}): Promise<GcReport> {
    this.checkOpen();
    try {
      const report = await collect(this, options);
      if (this.shared) report.bucket = await this.shared.gc(options);
      return report;
    } catch (e) {
      throw ioError(e, 'collecting garbage (nothing more was deleted)');
    } finally {
      this.#snapshots.clear();
    }
  }

  /** Checks the store (and with `repair`, mends it); see FsckReport. Safe while other processes use the store. */
  async fsck(options: FsckOptions = {}): Promise<FsckReport> {
    this.checkOpen();
    const report = await fsck(this.cas, this.index, this.listBlobIds(), this.listCaIds(), options);
    this.#snapshots.clear();
    return report;
  }

  /**
   * Closes every writer (without finalizing: what it had appended is made
   * durable) and reader, then the index. Everything is closed even if a
   * step fails; then close rejects with the first failure (a writer that
   * could not make its bytes durable, say), so no loss goes unreported.
   * Safe to call twice.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      let first: unknown;
      const step = async (fn: () => Promise<void>) => {
        try {
          await fn();
        } catch (e) {
          first ??= e;
        }
      };
      for (const r of [...this.#open]) await step(() => closeResource(r));
      if (this.shared) await step(() => this.shared!.close());
      await step(() => this.index.close());
      await step(() => this.tables.close());
      await step(() => this.lease.close());
      if (first !== undefined) throw ioError(first, 'closing the store');
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A writer is closed without finalizing; a reader just closed. */
async function closeResource(r: { close(): Promise<void> }): Promise<void> {
  const w = r as { closeWithoutFinalize?: () => Promise<void> };
  if (typeof w.closeWithoutFinalize === 'function') await w.closeWithoutFinalize();
  else await r.close();
}
