import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError, ioError, isCabError } from '../errors.js';
import { withReserve } from '../disk/reserve.js';
import { openDescriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import { fsyncDir } from '../disk/durable.js';
import { tryLockExclusive } from '../disk/lock.js';
import type { ChunkIndex } from './chunk-index.js';
import type { Tables } from './tables.js';
import { catchUpBlob } from './catchup.js';

export interface RemoveOptions {
  /** Run with the writer lock held, before anything is removed (a bucket-backed store deletes the published descriptor there). */
  whileLocked?: () => Promise<void>;
  /** @internal For tests: run between the descriptor's open and its lock. */
  afterOpen?: () => Promise<void>;
}

/** Whether `file` still names the file `fh` has open (not unlinked, not replaced by another of the same name). */
async function stillNamed(fh: fs.FileHandle, file: string): Promise<boolean> {
  try {
    const [held, named] = await Promise.all([fh.stat(), fs.stat(file)]);
    return held.ino === named.ino && held.dev === named.dev;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw ioError(e, `looking at the descriptor of ${path.basename(file)}`, { path: file });
  }
}

/**
 * Removes a blob from this folder, with the writer lock held (so no writer
 * can resume it meanwhile: ERR_BLOB_LOCKED while one has it): `whileLocked`
 * (a bucket-backed store deletes the published descriptor there), its
 * metadata, its index entries, its descriptor; then what else is derived
 * from it (leaf layer, the mark that it is published). On a full disk the store's
 * reserve (disk/reserve.ts) is spent on the table and index updates. Its
 * fragments stay until GC.
 */
export async function removeBlob(layout: Layout, index: ChunkIndex, tables: Tables, name: string, opts: RemoveOptions = {}): Promise<void> {
  const file = layout.descriptor(name);
  const fh = await openDescriptor(file, name, 'r');
  let unsynced: CabError | undefined;
  try {
    await opts.afterOpen?.();
    if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written or deleted`, { blob: name });
    // The lock is on the file opened; between the open and the lock another deleter may have unlinked it,
    // and a new blob may have taken the name: that one is not ours to unlink.
    if (!(await stillNamed(fh, file))) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name} (deleted meanwhile)`, { blob: name });
    await opts.whileLocked?.();
    // Metadata is about a blob we hold (a signpost says where to find one we do not, so it stays).
    // It goes before the descriptor: a full disk then fails the delete with the blob still here, never
    // leaves a deleted blob's metadata to a later blob of the same name. Put back if the unlink fails.
    const md = tables.metadata.get(name);
    await withReserve(layout, () => tables.metadata.delete(name));
    // The index entries too, while the name is still taken: once the descriptor is unlinked, another
    // process may make a blob of that name (a pull of it again), whose entries must not be the ones removed;
    // and an fsck meanwhile finds a blob being deleted (locked: only looked at), never entries of no blob.
    // A kill before the unlink leaves the blob unindexed: catch-up (an open, a list, fsck --repair) indexes it.
    try {
      await removeEntries(layout, index, name);
      await fs.unlink(file);
    } catch (e) {
      if (md) await tables.metadata.set(name, md).catch(() => {});
      await catchUpBlob(index, layout, name).catch(() => {});
      throw ioError(e, `deleting blob ${name} (it is still there)`, { blob: name, path: file });
    }
    // Unlinked, maybe not durably: what is derived goes as for a delete done, and the delete fails.
    unsynced = await fsyncDir(layout.blobDir(name)).then(() => undefined, (e: unknown) => ioError(e, `deleting blob ${name} (its descriptor is unlinked, maybe not durably)`, { blob: name }));
  } finally {
    await fh.close();
  }
  // Derived (the leaf layer, the mark): whatever is at their paths goes, and never fails a delete that is
  // done. Index entries a full disk kept are removed by the next catch-up or GC.
  await Promise.all([layout.leafLayer(name), layout.publishedMark(name)].map((p) => fs.rm(p, { force: true, recursive: true }).catch(() => {})));
  if (unsynced) throw unsynced;
}

/**
 * Removes a deleted blob's index entries, spending the reserve on a full
 * disk; returns how many. If even that fails for space, they stay (0): a
 * writer or a recipe takes a chunk only from a blob whose descriptor is
 * there (recipes.ts liveLocation), and the next catch-up or GC removes them.
 */
export async function removeEntries(layout: Layout, index: ChunkIndex, name: string): Promise<number> {
  return withReserve(layout, () => index.removeBlob(name)).catch((e: unknown) => {
    if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
    return 0;
  });
}
