import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError, ioError } from '../errors.js';

/**
 * Opens a blob's descriptor, through links (an operator may move a
 * descriptor, or a fan-out folder, to another disk and link it back);
 * ERR_NO_SUCH_BLOB if there is none. Anything else there (a directory, a
 * FIFO, a link to nothing: a disk not mounted) is ERR_IO, never "absent",
 * so that GC never takes it for a deleted blob. O_NONBLOCK: opening a FIFO
 * must fail here, not wait for a writer; it changes nothing for a file.
 */
export async function openDescriptor(file: string, name: string, flags: 'r' | 'r+'): Promise<fs.FileHandle> {
  const what = `opening the descriptor of blob ${name}`;
  let fh;
  try {
    fh = await fs.open(file, (flags === 'r' ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | fs.constants.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, what, { blob: name });
    let broken;
    try {
      broken = await brokenLink(file);
    } catch (e2) {
      throw ioError(e2, what, { blob: name });
    }
    if (!broken) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
    throw new CabError('ERR_IO', `${what}: ${file} is behind a link to nothing (a disk not mounted?)`, { blob: name, path: file, found: 'ENOENT' });
  }
  try {
    if ((await fh.stat()).isFile()) return fh;
  } catch (e) {
    await fh.close();
    throw ioError(e, what, { blob: name });
  }
  await fh.close();
  throw new CabError('ERR_IO', `${what}: ${file} is not a regular file`, { blob: name, path: file });
}

/** Whether ENOENT at `file` comes from a link to nothing: the file's own, or one of its folders' (its fan-out folder, blob/ itself). */
export async function brokenLink(file: string): Promise<boolean> {
  // The nearest of the file and its folders that is there: the file, its fan-out folder, blob/ itself, or above.
  for (let p = file; ; ) {
    const st = await fs.lstat(p).catch(undefinedIfAbsent);
    if (st !== undefined) return st.isSymbolicLink() && (await fs.stat(p).catch(undefinedIfAbsent)) === undefined;
    const up = path.dirname(p);
    if (up === p) return false;
    p = up;
  }
}

function undefinedIfAbsent(e: unknown): undefined {
  if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  return undefined;
}
