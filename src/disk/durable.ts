import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError, ioError } from '../errors.js';
import { brokenLink } from '../format/descriptor-file.js';

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
  await makeDirs(dir).catch((e: unknown) => Promise.reject(ioError(e, `making the folder ${dir}`, { path: dir })));
  known.add(dir);
}

async function makeDirs(dir: string): Promise<void> {
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
}

/**
 * A temp file beside `file`, opened exclusively, that commit() makes durable
 * and renames onto `file` (fsync, rename, fsync of the directory), and
 * abort() removes. abort() is safe to call on every path, also after commit.
 */
export class Replacement {
  #open = true;
  #moved = false;
  private constructor(
    readonly file: string,
    readonly tmp: string,
    readonly fh: fs.FileHandle,
  ) {}

  static async open(file: string): Promise<Replacement> {
    const tmp = `${file}.${process.pid}.tmp`;
    return new Replacement(file, tmp, await fs.open(tmp, 'wx'));
  }

  async commit(): Promise<void> {
    await this.fh.sync();
    this.#open = false;
    await this.fh.close();
    await fs.rename(this.tmp, this.file);
    this.#moved = true;
    await fsyncDir(path.dirname(this.file));
  }

  async abort(): Promise<void> {
    if (this.#moved) return;
    if (this.#open) {
      this.#open = false;
      await this.fh.close().catch(() => {}); // the failure that brought us here is the one to report
    }
    await fs.rm(this.tmp, { force: true });
  }
}

/**
 * Creates or replaces `file` atomically and durably: `fill` writes a temp
 * file beside it (opened exclusively), then fsync, rename, fsync of the
 * directory. The temp file is removed on every failure path. For the
 * store's own files; a file the user names goes through openOutput.
 */
export async function replaceDurable(file: string, fill: (fh: fs.FileHandle) => Promise<void>): Promise<void> {
  const r = await Replacement.open(file);
  try {
    await fill(r.fh);
    await r.commit();
  } finally {
    await r.abort();
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
    throw ioError(e, `looking for ${file}`, { path: file });
  }
}

/** Whether a blob's descriptor is there (as `has` asks); ERR_IO if it is behind a link to nothing (not absent: it may come back). */
export async function descriptorThere(file: string): Promise<boolean> {
  if (await exists(file)) return true;
  if (await brokenLink(file)) throw new CabError('ERR_IO', `${file} is behind a link to nothing (a disk not mounted?)`, { path: file, found: 'ENOENT' });
  return false;
}

/**
 * Whether a blob's descriptor is gone (ENOENT), so that its index entries
 * may go: not when it is behind a link to nothing (a disk not mounted),
 * which may come back.
 */
export async function descriptorGone(file: string): Promise<boolean> {
  return !(await exists(file)) && !(await brokenLink(file));
}

/**
 * Writes all of `buf` at `position` (null: at the file's own position, as a
 * pipe or device is written): a short write (a nearly full disk takes part
 * of a record) is continued, and the next write then fails with ENOSPC
 * rather than leaving the rest unwritten and unreported.
 */
export async function writeAll(fh: fs.FileHandle, buf: Uint8Array, position: number | null): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const at = position === null ? null : position + done;
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, at);
    if (bytesWritten <= 0) throw new CabError('ERR_IO', `a write of ${buf.length - done} bytes wrote nothing`, at === null ? {} : { offset: at });
    done += bytesWritten;
  }
}
