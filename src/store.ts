import fs from 'node:fs/promises';
import { CabError, ioError, isCabError } from './errors.js';
import { resolveChunkerParams, sameChunkerParams, type ChunkerParams, type ResolvedChunkerParams } from './chunker/params.js';
import { HASH_NAME } from './hash/sha256.js';
import { BlobWriter } from './blob/writer.js';
import { BlobReader } from './blob/reader.js';
import { ChunkIndex, type Location } from './index/chunk-index.js';
import { catchUpBlob } from './index/catchup.js';
import { openDescriptor, readDescriptor, type Descriptor } from './format/descriptor.js';
import { ensureDir, exists, fsyncDir, writeFileDurable } from './disk/durable.js';
import type { StoreInternals } from './blob/context.js';
import { FORMAT_VERSION, Layout, checkBlobName, isFragmentId, newBlobName } from './format/layout.js';
import { tryLockExclusive } from './disk/lock.js';
import { fsck, type FsckOptions, type FsckReport } from './upkeep/fsck.js';
import { Lease } from './disk/lease.js';
import { collect, type GcOptions, type GcReport } from './upkeep/gc.js';
import { Tables, type BlobMetadata, type Signpost, type PerSyncgroup } from './index/tables.js';

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
}

export const DEFAULT_FRAGMENT_SIZE = 64 * 1024 * 1024;

/** A chunk by its SHA-256 and size: what blobChunkStream yields and a recipe consumes. */
export interface ChunkRef {
  hash: Uint8Array;
  size: number;
}

/** One step to rebuild a remote blob: copy a range of a local blob, or fetch a chunk from the peer. */
export type RecipeStep = { kind: 'blob'; blob: string; offset: number; size: number } | { kind: 'chunk'; hash: Uint8Array; size: number };

export type { Location, BlobMetadata, Signpost, PerSyncgroup, FsckOptions, FsckReport, GcOptions, GcReport };

interface StoreConfig {
  format: number;
  hash: string;
  chunker: ChunkerParams;
}

/** Index pages read at a time by the lazy streams, so no read transaction stays open across awaits. */
const PAGE = 1024;
/** Parsed descriptors kept for dedup and appendBlob. */
const SNAPSHOTS = 16;

/**
 * A content-addressed blob store in a directory. See docs/FORMAT.md for the
 * layout. Any number of processes may open the same store.
 */
export class BlobStore implements StoreInternals {
  readonly root: string;
  readonly layout: Layout;
  readonly index: ChunkIndex;
  readonly tables: Tables;
  readonly lease: Lease;
  readonly chunker: ResolvedChunkerParams;
  readonly fragmentSize: number;
  readonly knownDirs = new Set<string>();
  readonly #open = new Set<{ close(): Promise<void> }>();
  readonly #snapshots = new Map<string, { fileSize: number; ino: number; d: Promise<Descriptor> }>();
  #closing: Promise<void> | null = null;

  private constructor(layout: Layout, index: ChunkIndex, tables: Tables, lease: Lease, chunker: ResolvedChunkerParams, fragmentSize: number) {
    this.lease = lease;
    this.layout = layout;
    this.root = layout.root;
    this.index = index;
    this.tables = tables;
    this.chunker = chunker;
    this.fragmentSize = fragmentSize;
  }

  /** Opens the store at `root`, creating it if absent, and brings the chunk index up to date. */
  static async open(root: string, options: StoreOptions = {}): Promise<BlobStore> {
    const layout = new Layout(root);
    const fragmentSize = options.fragmentSize ?? DEFAULT_FRAGMENT_SIZE;
    if (!Number.isSafeInteger(fragmentSize) || fragmentSize < 1) throw new CabError('ERR_BAD_ARGUMENT', `fragmentSize ${fragmentSize}`);
    // Each part opened is closed again if a later step fails: a failed open leaves nothing open.
    const opened: Array<{ close(): Promise<void> }> = [];
    try {
      // Not fs.mkdir({ recursive: true }): on a path it cannot create, such as /proc/x, it retries forever (Node 20).
      const made = new Set<string>();
      await ensureDir(layout.root, made);
      const config = await loadConfig(layout, options);
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
      if (options.catchUpIndex ?? true) await store.#catchUp();
      return store;
    } catch (e) {
      for (const part of opened.reverse()) await part.close().catch(() => {});
      throw ioError(e, `opening the store at ${layout.root}`, { path: layout.root });
    }
  }

  /** Re-indexes every descriptor the index is behind on, and forgets blobs whose descriptor is gone. */
  async #catchUp(): Promise<void> {
    for await (const name of this.listBlobIds()) {
      try {
        await catchUpBlob(this.index, this.layout, name);
      } catch (e) {
        // A full disk must not lock the store: it opens with this blob's index entries behind, and
        // whoever needs them (a chunk list, appendBlob) catches the blob up first.
        if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
      }
    }
    for (const name of [...this.index.blobNames()]) {
      if (!(await exists(this.layout.descriptor(name)))) await this.index.removeBlob(name);
    }
  }

  checkOpen(): void {
    if (this.#closing) throw new CabError('ERR_CLOSED', 'the store is closed');
  }

  track(r: { close(): Promise<void> }): void {
    this.#open.add(r);
  }

  untrack(r: { close(): Promise<void> }): void {
    this.#open.delete(r);
  }

  async snapshot(name: string): Promise<Descriptor> {
    checkBlobName(name);
    // Keyed by inode too: a rewritten descriptor (healed, cut back) is a new file, maybe of the same size.
    let fileSize: number;
    let ino: number;
    try {
      ({ size: fileSize, ino } = await fs.stat(this.layout.descriptor(name)));
    } catch (e) {
      this.#snapshots.delete(name);
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
      throw e;
    }
    const hit = this.#snapshots.get(name);
    if (hit && hit.fileSize === fileSize && hit.ino === ino) {
      this.#snapshots.delete(name);
      this.#snapshots.set(name, hit);
      return hit.d;
    }
    const d = readDescriptor(this.layout.descriptor(name), name);
    this.#snapshots.set(name, { fileSize, ino, d });
    d.catch(() => this.#snapshots.delete(name));
    if (this.#snapshots.size > SNAPSHOTS) this.#snapshots.delete(this.#snapshots.keys().next().value!);
    return d;
  }

  /** A writer for a new blob (random name unless given). ERR_BLOB_EXISTS if the name is taken. */
  newBlobWriter(name?: string): Promise<BlobWriter> {
    return BlobWriter.create(this, name === undefined ? newBlobName() : name);
  }

  /** A writer that continues an unfinalized blob from its last durable byte. */
  resumeBlobWriter(name: string): Promise<BlobWriter> {
    return BlobWriter.resume(this, name);
  }

  newBlobReader(name: string): Promise<BlobReader> {
    return BlobReader.open(this, name);
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
    this.#snapshots.delete(name);
    await this.index.removeBlob(name);
    // Metadata is about a blob we hold; a signpost says where to find one we do not, so it stays.
    await this.tables.metadata.delete(name);
  }

  async setBlobMetadata(name: string, md: BlobMetadata): Promise<void> {
    this.checkOpen();
    await this.tables.metadata.set(name, md);
  }

  async getBlobMetadata(name: string): Promise<BlobMetadata | undefined> {
    this.checkOpen();
    return this.tables.metadata.get(name);
  }

  async deleteBlobMetadata(name: string): Promise<void> {
    this.checkOpen();
    await this.tables.metadata.delete(name);
  }

  /** Every blob's metadata, ordered by blob name, lazily. */
  blobMetadataStream(): AsyncGenerator<[string, BlobMetadata]> {
    this.checkOpen();
    return this.tables.metadata.stream();
  }

  /** Signposts may name blobs this store does not hold. */
  async setSignpost(name: string, sp: Signpost): Promise<void> {
    this.checkOpen();
    await this.tables.signposts.set(name, sp);
  }

  async getSignpost(name: string): Promise<Signpost | undefined> {
    this.checkOpen();
    return this.tables.signposts.get(name);
  }

  async deleteSignpost(name: string): Promise<void> {
    this.checkOpen();
    await this.tables.signposts.delete(name);
  }

  signpostStream(): AsyncGenerator<[string, Signpost]> {
    this.checkOpen();
    return this.tables.signposts.stream();
  }

  async setPerSyncgroup(sgId: string, psg: PerSyncgroup): Promise<void> {
    this.checkOpen();
    await this.tables.perSyncgroup.set(sgId, psg);
  }

  async getPerSyncgroup(sgId: string): Promise<PerSyncgroup | undefined> {
    this.checkOpen();
    return this.tables.perSyncgroup.get(sgId);
  }

  async deletePerSyncgroup(sgId: string): Promise<void> {
    this.checkOpen();
    await this.tables.perSyncgroup.delete(sgId);
  }

  perSyncgroupStream(): AsyncGenerator<[string, PerSyncgroup]> {
    this.checkOpen();
    return this.tables.perSyncgroup.stream();
  }

  /** The chunks of a blob, in order, lazily. Their sizes sum to the size of a finalized blob. */
  async *blobChunkStream(name: string): AsyncGenerator<ChunkRef> {
    checkBlobName(name);
    this.checkOpen();
    await catchUpBlob(this.index, this.layout, name);
    if (!this.index.blob(name)) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
    for (let from = 0; ; from += PAGE) {
      const page: ChunkRef[] = [];
      for (const c of this.index.blobChunks(name, from)) {
        page.push({ hash: c.hash, size: c.size });
        if (page.length === PAGE) break;
      }
      for (const c of page) yield c;
      if (page.length < PAGE) return;
    }
  }

  /** A local location of a chunk, preferring one that continues `after`. */
  #locate(hash: Uint8Array, size: number, after?: { blob: string; end: number }): Location | undefined {
    let first: Location | undefined;
    let seen = 0;
    for (const loc of this.index.locations(hash)) {
      if (loc.size !== size) continue;
      if (after && loc.blob === after.blob && loc.offset === after.end) return loc;
      first ??= loc;
      if (!after || ++seen >= 16) break;
    }
    return first;
  }

  /**
   * Turns a peer's chunk list into the steps that rebuild the blob here:
   * local ranges where this store has the chunk (contiguous ones merged),
   * and the chunks to fetch. Streams: holds one step at a time.
   */
  async *recipeStreamFromChunkStream(chunks: AsyncIterable<ChunkRef> | Iterable<ChunkRef>): AsyncGenerator<RecipeStep> {
    this.checkOpen();
    let cur: RecipeStep | undefined;
    for await (const c of chunks) {
      if (!(c?.hash instanceof Uint8Array) || c.hash.length !== 32 || !Number.isSafeInteger(c.size) || c.size <= 0) {
        throw new CabError('ERR_BAD_ARGUMENT', 'a chunk reference needs a 32-byte hash and a positive size');
      }
      const after = cur?.kind === 'blob' ? { blob: cur.blob, end: cur.offset + cur.size } : undefined;
      const loc = this.#locate(c.hash, c.size, after);
      if (loc && cur?.kind === 'blob' && after && loc.blob === after.blob && loc.offset === after.end) {
        cur.size += c.size;
        continue;
      }
      if (cur) yield cur;
      cur = loc ? { kind: 'blob', blob: loc.blob, offset: loc.offset, size: loc.size } : { kind: 'chunk', hash: Uint8Array.from(c.hash), size: c.size };
    }
    if (cur) yield cur;
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

  /** Names of all blobs (finalized or not), lazily, from the descriptors on disk. */
  async *listBlobIds(): AsyncGenerator<string> {
    this.checkOpen();
    for await (const name of walk(this.layout.blobRoot, 1)) if (/^[0-9a-f]{32}$/.test(name)) yield name;
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

/**
 * Names of the files `depth` directory levels below `dir`, lazily, in no
 * particular order. Directories of one level are read a few at a time
 * (readdir of a fan-out directory is small; waiting on each in turn is what
 * is slow), so at most READ_AHEAD listings are held.
 */
async function* walk(dir: string, depth: number): AsyncGenerator<string> {
  const list = async (d: string) => {
    try {
      return await fs.readdir(d, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return [];
      throw e;
    }
  };
  if (depth === 0) {
    for (const ent of await list(dir)) if (ent.isFile()) yield ent.name;
    return;
  }
  const subdirs = (await list(dir)).filter((e) => e.isDirectory() && /^[0-9a-f]{2}$/.test(e.name)).map((e) => `${dir}/${e.name}`);
  if (depth === 1) {
    const READ_AHEAD = 16;
    const start = (d: string) => {
      const p = list(d);
      p.catch(() => {}); // awaited in turn; an abandoned walk must not leave an unhandled rejection
      return p;
    };
    const pending = subdirs.slice(0, READ_AHEAD).map(start);
    for (let i = 0; i < subdirs.length; i++) {
      const ents = await pending[i]!;
      if (i + READ_AHEAD < subdirs.length) pending.push(start(subdirs[i + READ_AHEAD]!));
      pending[i] = Promise.resolve([]);
      for (const ent of ents) if (ent.isFile()) yield ent.name;
    }
    return;
  }
  for (const sub of subdirs) yield* walk(sub, depth - 1);
}

async function loadConfig(layout: Layout, options: StoreOptions): Promise<StoreConfig> {
  let text: string | undefined;
  try {
    text = await fs.readFile(layout.config, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (text === undefined) {
    const p = resolveChunkerParams(options.chunker);
    const config: StoreConfig = { format: FORMAT_VERSION, hash: HASH_NAME, chunker: { min: p.min, avg: p.avg, max: p.max } };
    try {
      await writeFileDurable(layout.config, JSON.stringify(config, null, 2) + '\n');
    } catch (e) {
      // Another process created it first: read theirs.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    return loadConfig(layout, options);
  }
  let config: StoreConfig;
  try {
    config = JSON.parse(text) as StoreConfig;
  } catch (e) {
    throw new CabError('ERR_BAD_STORE', `${layout.config} is not JSON`, { path: layout.config }, { cause: e });
  }
  if (typeof config !== 'object' || config === null || !Number.isSafeInteger(config.format)) {
    throw new CabError('ERR_BAD_STORE', `${layout.config} has no format version`, { path: layout.config });
  }
  if (config.format > FORMAT_VERSION) {
    throw new CabError('ERR_FORMAT_VERSION', `store format ${config.format} is newer than this cabstore reads (${FORMAT_VERSION})`, {
      expected: FORMAT_VERSION,
      found: config.format,
    });
  }
  if (config.hash !== HASH_NAME) throw new CabError('ERR_BAD_STORE', `store hash ${config.hash} is not ${HASH_NAME}`, { found: config.hash });
  const stored = resolveChunkerParams(config.chunker);
  if (options.chunker && !sameChunkerParams(stored, resolveChunkerParams(options.chunker))) {
    throw new CabError('ERR_BAD_CHUNKER_PARAMS', `the store chunks with min ${stored.min}, avg ${stored.avg}, max ${stored.max}`, {
      expected: config.chunker,
      found: options.chunker,
    });
  }
  return config;
}

