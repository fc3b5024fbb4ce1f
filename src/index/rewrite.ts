import fs from 'node:fs/promises';
import { CabError } from '../errors.js';
import type { ChunkIndex } from './chunk-index.js';
import { catchUpBlob } from './catchup.js';
import { openDescriptor } from '../format/descriptor.js';
import { fsyncDir, writeAll } from '../disk/durable.js';
import type { Layout } from '../format/layout.js';
import { tryLockExclusive } from '../disk/lock.js';

/** Attempts to lock the file a name points at, while rewrites or deletes race us. */
const LOCK_TRIES = 8;

/**
 * Opens a blob's descriptor and tries its writer lock without waiting.
 * Returns the handle and whether it is locked, or undefined if the blob
 * does not exist. A locked handle is the file the name points at: a
 * rewrite (rename over) or a delete that finished between our open and our
 * lock would leave a lock on a file no one reads any more, so that case
 * opens again.
 */
export async function tryLockDescriptor(layout: Layout, name: string): Promise<{ fh: fs.FileHandle; locked: boolean } | undefined> {
  const file = layout.descriptor(name);
  for (let i = 0; i < LOCK_TRIES; i++) {
    let fh: fs.FileHandle;
    try {
      fh = await openDescriptor(file, name, 'r+');
    } catch (e) {
      if ((e as CabError).code === 'ERR_NO_SUCH_BLOB') return undefined;
      throw e;
    }
    let ok = false;
    try {
      const locked = tryLockExclusive(fh.fd);
      if (!locked || (await sameFile(fh, file))) {
        ok = true;
        return { fh, locked };
      }
    } finally {
      if (!ok) await fh.close();
    }
  }
  throw new CabError('ERR_BLOB_LOCKED', `blob ${name}: its descriptor keeps being replaced`, { blob: name });
}

/** As tryLockDescriptor, but ERR_NO_SUCH_BLOB or ERR_BLOB_LOCKED unless it gets the lock. */
export async function lockDescriptor(layout: Layout, name: string): Promise<fs.FileHandle> {
  const got = await tryLockDescriptor(layout, name);
  if (!got) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
  if (!got.locked) {
    await got.fh.close();
    throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written`, { blob: name });
  }
  return got.fh;
}

async function sameFile(fh: fs.FileHandle, file: string): Promise<boolean> {
  const [a, b] = await Promise.all([fh.stat(), fs.stat(file).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)))]);
  return b !== undefined && a.ino === b.ino && a.dev === b.dev;
}

/**
 * Replaces a blob's descriptor with a new one, atomically and durably. The
 * caller holds the old one's writer lock. The new file is written in tmp/
 * (by `write`, record by record), locked, fsync'd, renamed over the old
 * name, and blob/ab fsync'd; then the blob's index entries are rebuilt from
 * it. A crash leaves the old descriptor or the new one, and at most a temp
 * file (GC removes it). Readers that opened the old file keep reading it.
 * Returns the new file's handle, still locked: the caller closes it.
 */
export async function replaceDescriptor(
  layout: Layout,
  index: ChunkIndex,
  name: string,
  write: (append: (bytes: Uint8Array) => Promise<void>) => Promise<void>,
): Promise<fs.FileHandle> {
  const tmp = layout.tmpFile('desc');
  const fh = await fs.open(tmp, 'wx+');
  let moved = false;
  try {
    if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `a new descriptor for ${name} is locked by someone else`, { blob: name });
    let pos = 0;
    await write(async (bytes) => {
      await writeAll(fh, bytes, pos);
      pos += bytes.length;
    });
    await fh.sync();
    await fs.rename(tmp, layout.descriptor(name));
    moved = true;
    await fsyncDir(layout.blobDir(name));
    await index.removeBlob(name);
    await catchUpBlob(index, layout, name);
    return fh;
  } catch (e) {
    await fh.close().catch(() => {});
    if (!moved) await fs.rm(tmp, { force: true });
    throw e;
  }
}
