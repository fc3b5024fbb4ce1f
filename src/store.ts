import fs from 'node:fs/promises';
import { CabError, ioError } from './errors.js';
import { resolveChunkerParams, type ChunkerParams, type ResolvedChunkerParams } from './chunker/params.js';
import { BlobWriter } from './blob/writer.js';
import { BlobReader, type ReaderOptions } from './blob/reader.js';
import { ChunkIndex, type Location } from './index/chunk-index.js';
import { catchUpAll, catchUpBlob } from './index/catchup.js';
import { paged } from './index/paging.js';
import { planRecipe, type ChunkRef, type RecipeStep } from './index/recipes.js';
import { Snapshots } from './index/snapshots.js';
import { openDescriptor, type Descriptor } from './format/descriptor.js';
import { ensureDir, exists, fsyncDir } from './disk/durable.js';
import { checkOpenArgs, loadConfig } from './disk/config.js';
import { walk } from './disk/walk.js';
import { Layout, checkBlobName, isBlobName, isFragmentId, newBlobName } from './format/layout.js';
import { tryLockExclusive } from './disk/lock.js';
import { fsck, type FsckOptions, type FsckReport } from './upkeep/fsck.js';
import { Lease } from './disk/lease.js';
import { startHashThread } from './hash/pool.js';
import { collect, type GcOptions, type GcReport } from './upkeep/gc.js';
import { blobsWithRoot } from './index/roots.js';
import { Tables, type BlobMetadata, type BlobMetadataPatch, type PatchOf, type Signpost, type SignpostPatch, type PerSyncgroup } from './index/tables.js';

export interface StoreOptions {
  /** Chunker parameters for a new store (an existing store keeps its own; asking for others is an error). */
  chunker?: Partial<ChunkerParams>;
  /** A writer seals its fragment and writes a durable checkpoint every this many new bytes (default 64 MiB). */
  fragmentSize?: number;
  /**
   * Bring the chunk index up to date with the descriptors on open (default
   * true). fsck opens with false, to report what it finds rather than have
   * open mend it silently.
   */
  catchUpIndex?: boolean;
  /**
   * Create the store if the directory is new or empty (default true). With
   * false, a missing or empty directory is ERR_BAD_STORE (data.reason
   * 'absent') and nothing is created. Either way a directory that holds
   * other files and no store is ERR_BAD_STORE (data.reason 'not-empty'):
   * it is never turned into a store; a file in its place (or above it),
   * data.reason 'not-a-directory'.
   */
  create?: boolean;
}

export const DEFAULT_FRAGMENT_SIZE = 64 * 1024 * 1024;

/** What `stat` tells of a blob: its durable state, as its descriptor records it. */
export interface BlobStat {
  /** Bytes durably appended (all of them, once finalized). */
  size: number;
  finalized: boolean;
  /** The BEP 52 blob hash, once finalized. */
  hash?: Uint8Array;
  /** Byte ranges [start, end) that fsck --repair recorded as lost, and why; absent when none. */
  damaged?: Array<{ start: number; end: number; why: string }>;
}

export type { BlobMetadataPatch, SignpostPatch, SignpostLocation, PatchOf } from './index/tables.js';
export type { ChunkRef, RecipeStep, Location, BlobMetadata, Signpost, PerSyncgroup, FsckOptions, FsckReport, GcOptions, GcReport };

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
  /** @internal */
  readonly chunker: ResolvedChunkerParams;
  /** @internal */
  readonly fragmentSize: number;
  /** @internal */
  readonly knownDirs = new Set<string>();
  readonly #open = new Set<{ close(): Promise<void> }>();
  readonly #snapshots: Snapshots;
  #closing: Promise<void> | null = null;

  private constructor(layout: Layout, index: ChunkIndex, tables: Tables, lease: Lease, chunker: ResolvedChunkerParams, fragmentSize: number) {
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
    checkOpenArgs(root, options);
    startHashThread(); // 30 ms to start: beside the opening, not at the first write (idle and unref'd until then)
    const layout = new Layout(root);
    const fragmentSize = options.fragmentSize ?? DEFAULT_FRAGMENT_SIZE;
    // Each part opened is closed again if a later step fails: a failed open leaves nothing open.
    const opened: Array<{ close(): Promise<void> }> = [];
    try {
      const config = await loadConfig(layout, options.chunker, options.create ?? true);
      // Not fs.mkdir({ recursive: true }): on a path it cannot create, such as /proc/x, it retries forever (Node 20).
      const made = new Set<string>();
      for (const dir of [layout.blobRoot, layout.casRoot, layout.tmp, layout.index, layout.leases, layout.tables]) await ensureDir(dir, made);
      await fsyncDir(layout.root);
      const index = ChunkIndex.open(layout.index);
      opened.push(index);
      const tables = Tables.open(layout.tables);
      opened.push(tables);
      const lease = await Lease.take(layout);
      opened.push(lease);
      const store = new BlobStore(layout, index, tables, lease, resolveChunkerParams(config.chunker), fragmentSize);
      for (const d of [layout.blobRoot, layout.casRoot, layout.tmp]) store.knownDirs.add(d);
      // Re-indexes every descriptor the index is behind on, and forgets blobs whose descriptor is gone.
      if (options.catchUpIndex ?? true) await catchUpAll(index, layout, store.listBlobIds());
      return store;
    } catch (e) {
      for (const part of opened.reverse()) await part.close().catch(() => {});
      throw ioError(e, `opening the store at ${layout.root}`, { path: layout.root });
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
    return BlobReader.open(this, name, options);
  }

  /**
   * A blob's size, state and hash as its descriptor durably records them,
   * without opening a reader or pinning anything. ERR_NO_SUCH_BLOB if absent.
   */
  async stat(name: string): Promise<BlobStat> {
    checkBlobName(name);
    this.checkOpen();
    const d = await this.#snapshots.get(name);
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
      return await exists(this.layout.descriptor(name));
    } catch (e) {
      throw ioError(e, `looking for blob ${name}`, { blob: name });
    }
  }

  /**
   * Removes a blob: its descriptor and index entries. Its fragments stay
   * until GC finds no one needs them. ERR_BLOB_LOCKED while a writer has it.
   */
  async deleteBlob(name: string): Promise<void> {
    checkBlobName(name);
    this.checkOpen();
    const file = this.layout.descriptor(name);
    const fh = await openDescriptor(file, name, 'r');
    try {
      // Holding the writer lock while unlinking: no writer can resume the blob meanwhile.
      if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written`, { blob: name });
      await fs.unlink(file);
      await fsyncDir(this.layout.blobDir(name));
    } finally {
      await fh.close();
    }
    this.#snapshots.forget(name);
    await Promise.all([this.index.removeBlob(name), fs.rm(this.layout.leafLayer(name), { force: true, recursive: true }).catch(() => {})]); // derived: never fails a done delete
    // Metadata is about a blob we hold; a signpost says where to find one we do not, so it stays.
    await this.tables.metadata.delete(name);
  }

  /** The tables, once the store is checked open. */
  get #t(): Tables {
    this.checkOpen();
    return this.tables;
  }

  /** Replaces a blob's metadata. ERR_NO_SUCH_BLOB if the store does not hold the blob (a bad value is ERR_BAD_ARGUMENT first). */
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
    if (!this.index.blob(name)) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
    for await (const c of paged<ChunkRef & { offset: number }>((_, done) => this.index.blobChunks(name, done))) yield { hash: c.hash, size: c.size };
  }

  /**
   * Turns a peer's chunk list into the steps that rebuild the blob here:
   * local ranges where this store has the chunk (contiguous ones merged),
   * and the chunks to fetch. Streams: holds one step at a time.
   */
  async *recipeStreamFromChunkStream(chunks: AsyncIterable<ChunkRef> | Iterable<ChunkRef>): AsyncGenerator<RecipeStep> {
    this.checkOpen();
    yield* planRecipe(this.index, chunks);
  }

  /** A local blob range holding the chunk; ERR_NO_SUCH_CHUNK if none. Never a deleted blob. */
  async lookupChunk(hash: Uint8Array): Promise<Location> {
    this.checkOpen();
    if (!(hash instanceof Uint8Array) || hash.length !== 32) throw new CabError('ERR_BAD_ARGUMENT', 'a chunk hash is 32 bytes');
    for (const loc of this.index.locations(hash)) {
      if (await exists(this.layout.descriptor(loc.blob))) return loc;
    }
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

  /** Names of all blobs (finalized or not), lazily, from the descriptors on disk. */
  async *listBlobIds(): AsyncGenerator<string> {
    this.checkOpen();
    for await (const name of walk(this.layout.blobRoot, 1)) if (isBlobName(name)) yield name;
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
      return await collect(this, options);
    } catch (e) {
      throw ioError(e, 'collecting garbage (nothing more was deleted)');
    } finally {
      this.#snapshots.clear();
    }
  }

  /** Checks the store (and with `repair`, mends it); see FsckReport. Safe while other processes use the store. */
  async fsck(options: FsckOptions = {}): Promise<FsckReport> {
    this.checkOpen();
    const report = await fsck(this.layout, this.index, this.listBlobIds(), this.listCaIds(), options);
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
