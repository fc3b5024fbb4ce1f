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

/** Writes a small file atomically and durably: temp, fsync, rename, fsync dir. */
export async function writeFileDurable(file: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'wx');
  let moved = false;
  try {
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    await fs.rename(tmp, file);
    moved = true;
    await fsyncDir(path.dirname(file));
  } finally {
    if (!moved) {
      await fh.close().catch(() => {});
      await fs.rm(tmp, { force: true });
    }
  }
}

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Writes all of `buf` at `position`: a short write is continued, never taken for the whole. */
export async function writeAll(fh: fs.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    if (bytesWritten <= 0) throw new CabError('ERR_IO', `a write of ${buf.length - done} bytes wrote nothing`, { offset: position + done });
    done += bytesWritten;
  }
}
