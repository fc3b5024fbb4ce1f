import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { isCabError } from '../errors.js';
import type { Layout } from '../format/layout.js';

/**
 * Space the store keeps for the way out of a full disk: `<root>/reserve`,
 * a file of RESERVE_BYTES. Deleting a blob frees its fragments only at the
 * next GC, and updating the chunk index and the tables on the way there
 * needs pages of its own, which a disk full to the last byte does not have.
 * A delete that meets ERR_NO_SPACE there releases the reserve and tries
 * once more; the reserve is made again by the next open or GC that has the
 * room. Making it is best effort and never fails an operation.
 */
export const RESERVE_BYTES = 1024 * 1024;

/**
 * Makes the reserve if it is missing or short (written in full, then
 * renamed in); a full disk leaves it missing. Random bytes, not zeros: a
 * file system that compresses or dedups would store zeros in no space, and
 * deleting them would free none. Not fsynced: one lost to a crash is made
 * again at the next open.
 */
export async function keepReserve(layout: Layout): Promise<void> {
  let st;
  try {
    st = await fs.stat(layout.reserve);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return; // cannot tell: leave it be
  }
  if (st && (!st.isFile() || st.size >= RESERVE_BYTES)) return; // there, or not ours to replace
  const tmp = layout.tmpFile();
  try {
    await fs.writeFile(tmp, crypto.randomBytes(RESERVE_BYTES), { flag: 'wx' });
    await fs.rename(tmp, layout.reserve);
  } catch {
    await fs.rm(tmp, { force: true }).catch(() => {});
  }
}

/** Runs `op`; if it fails with ERR_NO_SPACE and the reserve was there to release, releases it and runs `op` again. */
export async function withReserve<T>(layout: Layout, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (e) {
    if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
    try {
      await fs.unlink(layout.reserve);
    } catch {
      throw e; // no reserve left: the disk is full
    }
    return await op();
  }
}
