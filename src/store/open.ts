import { ioError } from '../errors.js';
import { resolveChunkerParams, type ResolvedChunkerParams } from '../chunker/params.js';
import { Layout } from '../format/layout.js';
import { ensureDir, fsyncDir } from '../disk/durable.js';
import { checkOpenArgs } from '../disk/config.js';
import { openConfig, type OpenedBucket } from '../disk/bucket-config.js';
import { Cas } from '../disk/cas.js';
import { FragmentCache } from '../disk/cache.js';
import { Lease } from '../disk/lease.js';
import { keepReserve } from '../disk/reserve.js';
import { startHashThread } from '../hash/pool.js';
import { ChunkIndex } from '../index/chunk-index.js';
import { Tables } from '../index/tables.js';
import { DEFAULT_FRAGMENT_SIZE, type StoreOptions } from './options.js';

/** What BlobStore.open wires: the parts of a store, open. `close` closes them (a failed open). */
export interface StoreParts {
  cas: Cas;
  index: ChunkIndex;
  tables: Tables;
  lease: Lease;
  chunker: ResolvedChunkerParams;
  fragmentSize: number;
  bucket: OpenedBucket | undefined;
  close(): Promise<void>;
}

/**
 * Opens the parts of the store at `root`: its cabstore.json (and its
 * bucket's), its folders, the index, the tables, a lease, and cas/ (with
 * its cache and bucket for a bucket-backed store). A failed open leaves
 * nothing open.
 */
export async function openParts(root: string, options: StoreOptions): Promise<StoreParts> {
  checkOpenArgs(root, options);
  startHashThread(); // 30 ms to start: beside the opening, not at the first write (idle and unref'd until then)
  const layout = new Layout(root);
  // Each part opened is closed again if a later step fails.
  const opened: Array<{ close(): Promise<void> | void }> = [];
  const close = async () => {
    for (const part of opened.reverse()) await Promise.resolve(part.close()).catch(() => {});
  };
  try {
    const { config, bucket } = await openConfig(layout, options.objectStore, options.chunker, options.create ?? true);
    if (bucket) opened.push(bucket.os);
    // Not fs.mkdir({ recursive: true }): on a path it cannot create, such as /proc/x, it retries forever (Node 20).
    const made = new Set<string>();
    for (const dir of [layout.blobRoot, layout.casRoot, layout.tmp, layout.index, layout.leases, layout.tables]) await ensureDir(dir, made);
    await fsyncDir(layout.root);
    await keepReserve(layout);
    const cache = bucket && new FragmentCache(layout, bucket.options.cacheBytes);
    await cache?.load();
    const index = ChunkIndex.open(layout.index);
    opened.push(index);
    const tables = Tables.open(layout.tables);
    opened.push(tables);
    const lease = await Lease.take(layout);
    opened.push(lease);
    const remote = bucket && cache && { os: bucket.os, keys: bucket.keys, cache };
    const cas = new Cas(layout, new Set([layout.blobRoot, layout.casRoot, layout.tmp]), remote);
    const chunker = resolveChunkerParams(config.chunker);
    return { cas, index, tables, lease, chunker, fragmentSize: options.fragmentSize ?? DEFAULT_FRAGMENT_SIZE, bucket, close };
  } catch (e) {
    await close();
    throw ioError(e, `opening the store at ${layout.root}`, { path: layout.root });
  }
}
