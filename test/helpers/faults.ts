import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import type { ExecutionContext } from 'ava';

/**
 * Real faults for tests. The suite runs as root, where chmod 000 gives no
 * EACCES; these make the kernel say no for real.
 */

/**
 * A fresh tmpfs of `mib` MiB, unmounted when the test ends. Returns undefined
 * (after logging why, and counting a pass so the run shows the test ran to
 * that point) where mounting is not allowed; callers return at once then.
 */
export function smallDisk(t: ExecutionContext, mib: number): string | undefined {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    t.log(`NOT RUN: cannot mount a tmpfs here (${(e as Error).message.split('\n')[0]}); this test needs root and mount`);
    t.pass();
    return undefined;
  }
  t.teardown(() => {
    try {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  return dir;
}

/** Free bytes on the file system holding `dir`. */
export function freeBytes(dir: string): number {
  const st = fs.statfsSync(dir);
  return st.bavail * st.bsize;
}

/**
 * Fills the file system holding `dir` until at most `leave` bytes are free,
 * with a file named `filler` in `dir` (delete it to free the space again).
 */
export function fillDisk(dir: string, leave = 0, filler = path.join(dir, 'filler')): string {
  const fd = fs.openSync(filler, 'a');
  try {
    const block = Buffer.alloc(1 << 20, 7);
    for (;;) {
      const free = freeBytes(dir);
      if (free <= leave) break;
      const n = Math.min(block.length, free - leave);
      try {
        fs.writeSync(fd, block, 0, Math.max(1, n));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw e;
      }
      if (n < 4096) break;
    }
  } finally {
    fs.closeSync(fd);
  }
  return filler;
}

/** fillDisk, then smaller writes until the file system takes not one byte more (tmpfs counts pages). Returns the filler. */
export function fillToTheByte(disk: string): string {
  const filler = fillDisk(disk, 0);
  const fd = fs.openSync(filler, 'a');
  try {
    for (const size of [4096, 512, 1]) {
      for (;;) {
        try {
          fs.writeSync(fd, Buffer.alloc(size, 7));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw e;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return filler;
}
