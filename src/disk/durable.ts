import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError } from '../errors.js';

/** fsync a directory so that entries created or renamed in it survive a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * mkdir -p that makes each new level durable: the new directory's parent is
 * fsync'd. `known` remembers directories already seen, so the common case is
 * one stat-free lookup.
 */
export async function ensureDir(dir: string, known: Set<string>): Promise<void> {
  if (known.has(dir)) return;
  const chain: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    try {
      await fs.stat(d);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      chain.push(d);
      if (path.dirname(d) === d) break;
    }
  }
  for (const d of chain.reverse()) {
    try {
      await fs.mkdir(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    await fsyncDir(path.dirname(d));
  }
  known.add(dir);
}

/**
 * Creates or replaces `file` atomically and durably: `fill` writes a temp
 * file beside it (opened exclusively), then fsync, rename, fsync of the
 * directory. The temp file is removed on every failure path.
 */
export async function replaceDurable(file: string, fill: (fh: fs.FileHandle) => Promise<void>): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'wx');
  let open = true;
  let moved = false;
  try {
    await fill(fh);
    await fh.sync();
    open = false;
    await fh.close();
    await fs.rename(tmp, file);
    moved = true;
    await fsyncDir(path.dirname(file));
  } finally {
    if (!moved) {
      if (open) await fh.close().catch(() => {}); // the failure that brought us here is the one to report
      await fs.rm(tmp, { force: true });
    }
  }
}

/** Writes a small file atomically and durably (replaceDurable). */
export function writeFileDurable(file: string, data: string | Uint8Array): Promise<void> {
  return replaceDurable(file, (fh) => fh.writeFile(data));
}

/**
 * Whether a file exists. Only ENOENT means absent; any other error (EMFILE,
 * EIO, ENOTDIR: a fan-out directory that is a file) is thrown, never read as
 * "not there", since callers drop index entries or leases on "absent".
 */
export async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * Writes all of `buf` at `position`: a short write (a nearly full disk takes
 * part of a record) is continued, and the next write then fails with ENOSPC
 * rather than leaving the rest unwritten and unreported.
 */
export async function writeAll(fh: fs.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    if (bytesWritten <= 0) throw new CabError('ERR_IO', `a write of ${buf.length - done} bytes wrote nothing`, { offset: position + done });
    done += bytesWritten;
  }
}
