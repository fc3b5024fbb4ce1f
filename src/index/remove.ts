import fs from 'node:fs/promises';
import { CabError, ioError, isCabError } from '../errors.js';
import { withReserve } from '../disk/reserve.js';
import { openDescriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import { fsyncDir } from '../disk/durable.js';
import { tryLockExclusive } from '../disk/lock.js';
import type { ChunkIndex } from './chunk-index.js';
import type { Tables } from './tables.js';

/**
 * Removes a blob from this folder, with the writer lock held (so no writer
 * can resume it meanwhile: ERR_BLOB_LOCKED while one has it): `whileLocked`
 * (a bucket-backed store deletes the published descriptor there), its
 * metadata, its descriptor; then what is derived from it (index entries,
 * leaf layer, the mark that it is published). On a full disk the store's
 * reserve (disk/reserve.ts) is spent on the table and index updates. Its
 * fragments stay until GC.
 */
export async function removeBlob(layout: Layout, index: ChunkIndex, tables: Tables, name: string, whileLocked?: () => Promise<void>): Promise<void> {
  const file = layout.descriptor(name);
  const fh = await openDescriptor(file, name, 'r');
  let unsynced: CabError | undefined;
  try {
    if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written`, { blob: name });
    await whileLocked?.();
    // Metadata is about a blob we hold (a signpost says where to find one we do not, so it stays).
    // It goes before the descriptor: a full disk then fails the delete with the blob still here, never
    // leaves a deleted blob's metadata to a later blob of the same name. Put back if the unlink fails.
    const md = tables.metadata.get(name);
    await withReserve(layout, () => tables.metadata.delete(name));
    try {
      await fs.unlink(file);
    } catch (e) {
      if (md) await tables.metadata.set(name, md).catch(() => {});
      throw ioError(e, `deleting blob ${name} (it is still there)`, { blob: name, path: file });
    }
    // Unlinked, maybe not durably: what is derived goes as for a delete done, and the delete fails.
    unsynced = await fsyncDir(layout.blobDir(name)).then(() => undefined, (e: unknown) => ioError(e, `deleting blob ${name} (its descriptor is unlinked, maybe not durably)`, { blob: name }));
  } finally {
    await fh.close();
  }
  // Derived (index entries, the leaf layer, the mark): whatever is at their paths goes, and never fails
  // a delete that is done. Index entries a full disk keeps are removed by the next catch-up or GC.
  const derived = [layout.leafLayer(name), layout.publishedMark(name)].map((p) => fs.rm(p, { force: true, recursive: true }).catch(() => {}));
  await Promise.all([removeEntries(layout, index, name), ...derived]);
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
