import fs from 'node:fs/promises';
import { CabError, ioError } from '../errors.js';
import { encodeHeader, readDescriptorFrom, type Descriptor } from '../format/descriptor.js';
import { checkBlobName } from '../format/layout.js';
import { ensureDir, fsyncDir, writeAll } from '../disk/durable.js';
import { tryLockExclusive } from '../disk/lock.js';
import { lockDescriptor } from '../index/rewrite.js';
import { catchUpBlob } from '../index/catchup.js';
import type { StoreInternals } from './context.js';

/** A blob's descriptor, open and locked for appending. */
export interface OpenDescriptor {
  fh: fs.FileHandle;
  /** End of the header record. */
  headerEnd: number;
  /** End of the last valid record: where the next one goes. */
  descEnd: number;
  /** The durable state of a resumed blob; undefined for a new one. */
  d?: Descriptor;
}

/**
 * Creates the descriptor of a new blob and hands it, locked, to `start`.
 * The descriptor appears under its name only with its header durable and its
 * lock held: written in tmp/, fsync'd, locked, then hard-linked into blob/
 * (EEXIST: the name is taken). A crash leaves at most a temp file; a failure
 * here or in `start` leaves nothing.
 */
export async function createDescriptor<T>(s: StoreInternals, name: string, start: (o: OpenDescriptor) => Promise<T>): Promise<T> {
  checkBlobName(name);
  s.checkOpen();
  const { layout } = s;
  await ensureDir(layout.blobDir(name), s.knownDirs);
  const tmp = layout.tmpFile('desc');
  const fh = await fs.open(tmp, 'wx+').catch((e: unknown) => Promise.reject(ioError(e, `creating blob ${name}`, { blob: name })));
  let linked = false;
  let ok = false;
  try {
    if (!tryLockExclusive(fh.fd)) throw new CabError('ERR_BLOB_LOCKED', `blob ${name} is being written`, { blob: name });
    const header = encodeHeader(name, Date.now());
    await writeAll(fh, header, 0);
    await fh.datasync();
    try {
      await fs.link(tmp, layout.descriptor(name));
      linked = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new CabError('ERR_BLOB_EXISTS', `blob ${name} exists`, { blob: name });
      throw e;
    }
    await fs.unlink(tmp);
    await fsyncDir(layout.blobDir(name));
    await s.index.touchBlob(name, header.length);
    const out = await start({ fh, headerEnd: header.length, descEnd: header.length });
    ok = true;
    return out;
  } catch (e) {
    throw ioError(e, `creating blob ${name}`, { blob: name });
  } finally {
    if (!ok) {
      await fh.close().catch(() => {});
      await fs.rm(tmp, { force: true }).catch(() => {});
      if (linked) {
        await fs.rm(layout.descriptor(name), { force: true }).catch(() => {});
        // Its index entry too (touchBlob above), or fsck would find an entry with no descriptor.
        await s.index.removeBlob(name).catch(() => {});
      }
    }
  }
}

/**
 * Opens the descriptor of an unfinalized blob, locked, cut back to its last
 * valid record (a torn tail goes; a corrupt descriptor is
 * ERR_DESCRIPTOR_CORRUPT and is left as it is), with the index caught up,
 * and hands it to `start`. On any failure the descriptor is closed (and so
 * unlocked).
 */
export async function resumeDescriptor<T>(s: StoreInternals, name: string, start: (o: OpenDescriptor) => Promise<T>): Promise<T> {
  checkBlobName(name);
  s.checkOpen();
  const { layout } = s;
  // Locked, and the file the name points at (a descriptor may be replaced: see index/rewrite.ts).
  const fh = await lockDescriptor(layout, name);
  let ok = false;
  try {
    const d = await readDescriptorFrom(fh, name);
    if (d.finalized) throw new CabError('ERR_BLOB_FINALIZED', `blob ${name} is finalized`, { blob: name });
    if (d.damagedAt !== undefined) throw new CabError('ERR_BLOB_DAMAGED', `blob ${name} is damaged from byte ${d.damagedAt}`, { blob: name, offset: d.damagedAt });
    if (d.torn) {
      // What a crash left after the last good record (a corrupt descriptor was refused by the parse): it goes.
      await fh.truncate(d.validEnd);
      await fh.datasync();
    }
    await catchUpBlob(s.index, layout, name);
    const out = await start({ fh, headerEnd: d.headerEnd, descEnd: d.validEnd, d });
    ok = true;
    return out;
  } catch (e) {
    throw ioError(e, `resuming blob ${name}`, { blob: name });
  } finally {
    if (!ok) await fh.close().catch(() => {});
  }
}
