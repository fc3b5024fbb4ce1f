import fs from 'node:fs/promises';
import { createRequire } from 'node:module';

// fs-ext is CommonJS without types; flock is all we use of it.
const require = createRequire(import.meta.url);
const fsExt = require('fs-ext') as { flockSync(fd: number, flags: 'sh' | 'ex' | 'shnb' | 'exnb' | 'un'): void };

function tryLock(fd: number, flags: 'exnb' | 'shnb'): boolean {
  try {
    fsExt.flockSync(fd, flags);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return false;
    throw e;
  }
}

/**
 * Takes an exclusive flock on an open file without waiting. Returns false if
 * another open file description holds it (in this process or another). The
 * kernel drops the lock when the descriptor is closed or the process dies,
 * so a lock never outlives a crash.
 */
export function tryLockExclusive(fd: number): boolean {
  return tryLock(fd, 'exnb');
}

/** A shared flock without waiting; false if someone holds it exclusively. */
export function tryLockShared(fd: number): boolean {
  return tryLock(fd, 'shnb');
}

/**
 * Whether some live process holds a flock on `file` (probed by taking and
 * dropping one). A file that does not exist is not locked; any other error
 * opening it (EMFILE, EIO) is thrown: "cannot tell" must never read as
 * "nobody holds it", since GC drops the pins of unlocked leases.
 */
export async function isLocked(file: string): Promise<boolean> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  try {
    return !tryLockExclusive(fh.fd);
  } finally {
    await fh.close();
  }
}

/** Releases a flock taken on `fd`. */
export function unlock(fd: number): void {
  fsExt.flockSync(fd, 'un');
}
