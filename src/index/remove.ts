import fs from 'node:fs/promises';
import { CabError } from '../errors.js';
import { openDescriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import { fsyncDir } from '../disk/durable.js';
import { tryLockExclusive } from '../disk/lock.js';
import type { ChunkIndex } from './chunk-index.js';
import type { Tables } from './tables.js';

/**
 * Removes a blob from this folder: its descriptor (unlinked with the
 * writer lock held, so no writer can resume it meanwhile: ERR_BLOB_LOCKED
 * while one has it), then what is derived from it (index entries, leaf
 * layer, the mark that it is published) and its metadata. `whileLocked`
 * runs with the lock held, before the unlink (a bucket-backed store
 * deletes the published descriptor there). Its fragments stay until GC.
 */
export async function removeBlob(layout: Layout, index: ChunkIndex, tables: Tables, name: string, whileLocked?: () => Promise<void>): Promise<void> {
  const file = layout.descriptor(name);
  const fh = await openDescriptor(file, name, 'r');
  try {
    if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written`, { blob: name });
    await whileLocked?.();
    await fs.unlink(file);
    await fsyncDir(layout.blobDir(name));
  } finally {
    await fh.close();
  }
  // Derived (the leaf layer, the mark): whatever is at their paths goes, and never fails a delete that is done.
  const derived = [layout.leafLayer(name), layout.publishedMark(name)].map((p) => fs.rm(p, { force: true, recursive: true }).catch(() => {}));
  await Promise.all([index.removeBlob(name), ...derived]);
  // Metadata is about a blob we hold; a signpost says where to find one we do not, so it stays.
  await tables.metadata.delete(name);
}
