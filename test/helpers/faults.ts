import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { BlobStore } from '../../src/index.js';

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

/** A store whose files go through faultfs.py (a pass-through FUSE file system that fails named operations with EIO). */
export interface FaultStore {
  /** The store's directory, on the FUSE mount. */
  root: string;
  /** Sets the faults: lines "OP REGEX" (faultfs.py lists the OPs), on paths relative to the store (`^/tmp/`, `\.frag$`); none clears them. */
  fail(...rules: string[]): void;
}

const FAULTFS = fileURLToPath(new URL('../../../test/helpers/faultfs.py', import.meta.url));

/**
 * A new store on a FUSE mount of test/helpers/faultfs.py (Debian's
 * python3-fusepy), so that fsync, fdatasync, open or read of chosen files
 * fail with a real EIO from the kernel, as a failing disk's do. The store's
 * LMDB environments (index/, tables/) stay on the real disk, through
 * symlinks: LMDB maps its files, and a mapping over FUSE takes SIGBUS.
 * Unmounted when the test ends. Returns undefined (after logging NOT RUN
 * and why, and a pass) where FUSE or fusepy is missing, unless
 * CABSTORE_FAULTFS_REQUIRED is set (.ci/run sets it): then the test fails.
 */
export async function faultStore(t: ExecutionContext): Promise<FaultStore | undefined> {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-faultfs-'));
  const [real, under, mnt, control] = ['real', 'under', 'mnt', 'control'].map((d) => path.join(base, d)) as [string, string, string, string];
  for (const d of [real, under, mnt]) fs.mkdirSync(d);
  fs.writeFileSync(control, '');
  const child = spawn('/usr/bin/python3', [FAULTFS, under, mnt, control], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const mounted = await new Promise<boolean>((resolve) => {
    child.stdout.on('data', (b: Buffer) => b.toString().includes('ready') && resolve(true));
    child.on('exit', () => resolve(false));
    child.on('error', () => resolve(false));
  });
  t.teardown(() => {
    try {
      if (mounted) execFileSync('umount', ['-l', mnt], { stdio: 'pipe' });
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(base, { recursive: true, force: true });
    }
  });
  if (!mounted) {
    const why = `cannot mount faultfs.py (FUSE, /usr/bin/python3 with Debian's python3-fusepy): ${err.trim().split('\n').pop() ?? 'no output'}`;
    if (process.env.CABSTORE_FAULTFS_REQUIRED) t.fail(why);
    else {
      t.log(`NOT RUN: ${why}`);
      t.pass();
    }
    return undefined;
  }
  // The store is made on the real disk, then all but its LMDB environments moved under the mount.
  const made = await BlobStore.open(path.join(real, 's'));
  await made.close();
  for (const e of fs.readdirSync(path.join(real, 's'))) {
    if (e === 'index' || e === 'tables') fs.symlinkSync(path.join(real, 's', e), path.join(under, e));
    else fs.renameSync(path.join(real, 's', e), path.join(under, e));
  }
  return {
    root: mnt,
    fail: (...rules) => fs.writeFileSync(control, rules.map((r) => `${r}\n`).join('')),
  };
}
