import fs from 'node:fs/promises';
import path from 'node:path';

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

/** Writes all of `bytes` at `position`: a write may take fewer bytes than given. */
export async function writeFully(fh: fs.FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) done += (await fh.write(bytes, done, bytes.length - done, position + done)).bytesWritten;
}

/** Writes a small file atomically and durably (replaceDurable). */
export function writeFileDurable(file: string, data: string | Uint8Array): Promise<void> {
  return replaceDurable(file, (fh) => fh.writeFile(data));
}

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}
