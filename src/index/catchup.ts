import fs from 'node:fs/promises';
import { CabError, ioError, isCabError } from '../errors.js';
import type { ChunkIndex } from './chunk-index.js';
import { flatDamage } from '../format/damage.js';
import { readDescriptor } from '../format/descriptor.js';
import { brokenLink } from '../format/descriptor-file.js';
import { descriptorGone } from '../disk/durable.js';
import type { Layout } from '../format/layout.js';
import { removeEntries } from './remove.js';

/**
 * Brings the index entries of one blob up to date with its descriptor: the
 * index is derived data and may be behind after a crash between a record's
 * fsync and its index commit, or missing altogether. Idempotent, and safe
 * while another process does the same (each record applies once).
 * Returns true if anything changed.
 */
export async function catchUpBlob(index: ChunkIndex, layout: Layout, name: string): Promise<boolean> {
  let size: number;
  try {
    size = (await fs.stat(layout.descriptor(name))).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `looking at the descriptor of blob ${name}`, { blob: name });
    if (await brokenLink(layout.descriptor(name))) {
      throw new CabError('ERR_IO', `the descriptor of blob ${name} is behind a link to nothing (a disk not mounted?)`, { blob: name, path: layout.descriptor(name) });
    }
    if (!index.blob(name)) return false;
    await index.removeBlob(name);
    return true;
  }
  const before = index.blob(name);
  if (before && before.d === size) return false;
  let changed = false;
  // Damage records come last but decide which chunks may be offered: learn them first.
  const { damage } = await readDescriptor(layout.descriptor(name), name, { extents: false });
  if (before && String(before.k) !== String(flatDamage(damage))) {
    await index.removeBlob(name);
    return (await catchUpBlob(index, layout, name)) || true;
  }
  const d = await readDescriptor(layout.descriptor(name), name, {
    extents: false,
    onAppend: (rec, start, end, chunkOffset) => {
      const cur = index.blob(name);
      if (cur && cur.d >= end) return;
      if (index.applyAppendSync(name, rec, start, end, chunkOffset, startOfRecords(start, cur), damage)) changed = true;
    },
  });
  const after = index.blob(name);
  if (!after) {
    await index.touchBlob(name, d.headerEnd);
    return true;
  }
  if (after.d > d.validEnd || after.s !== d.size || after.e !== d.chunkEnd) {
    // The index holds records the descriptor no longer has (its tail was cut): index the blob anew.
    await index.removeBlob(name);
    await catchUpBlob(index, layout, name);
    return true;
  }
  if (after.d < d.validEnd) {
    await index.markUpTo(name, d.validEnd, damage);
    return true;
  }
  return changed;
}

/**
 * Catches up the blobs in index.behind, keeping for later those a full disk
 * still stops. A blob deleted since, or whose descriptor is corrupt, is left
 * to whoever opens it (as at open: catchUpAll); any other failure is thrown.
 */
export async function catchUpBehind(index: ChunkIndex, layout: Layout): Promise<void> {
  for (const name of [...index.behind]) {
    try {
      await catchUpBlob(index, layout, name);
    } catch (e) {
      if (isCabError(e, 'ERR_NO_SPACE')) return;
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB') && !isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) throw e;
    }
    index.behind.delete(name);
  }
}

/** A blob with no index entry yet starts at its first append record. */
function startOfRecords(start: number, cur: { d: number } | undefined): number {
  return cur ? cur.d : start;
}

/**
 * Catches up every blob named (the descriptors on disk), forgets blobs the
 * index knows whose descriptor is gone, and adds the `roots` entries an
 * index written by older code lacks: what a store does on open.
 */
export async function catchUpAll(index: ChunkIndex, layout: Layout, names: AsyncIterable<string>): Promise<void> {
  for await (const name of names) {
    try {
      await catchUpBlob(index, layout, name);
    } catch (e) {
      // A full disk must not lock the store: it opens with this blob's index entries behind, and
      // whoever needs them (a chunk list, appendBlob) catches the blob up first. Nor must one corrupt
      // descriptor, nor one that is not a file (a directory, a link to nothing): its entries stay as they
      // were, and whoever opens the blob is told (GC and fsck stop on it). A blob another process deleted
      // after it was listed is no failure of this open: the loop below forgets it.
      if (isCabError(e, 'ERR_IO') && e.data.blob === name) continue;
      if (!isCabError(e, 'ERR_NO_SPACE') && !isCabError(e, 'ERR_DESCRIPTOR_CORRUPT') && !isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
    }
  }
  for (const name of [...index.blobNames()]) {
    if (await descriptorGone(layout.descriptor(name))) await removeEntries(layout, index, name);
  }
  try {
    await index.fillRoots();
  } catch (e) {
    // As above: entries of deleted blobs stay (harmless: a writer takes a chunk only through a
    // descriptor, and GC removes them), and findByHash misses those blobs until an open with room.
    if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
  }
}
