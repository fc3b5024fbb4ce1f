import fs from 'node:fs';
import type { MerkleHasher } from './merkle.js';

let scratch: Buffer | undefined;

/**
 * The hashing thread's `read` message: reads [path, position, length]
 * triples of fragments (FileBytes) into `merkle`, `slice` bytes at a time
 * (hashed while in cache). A fragment gone or shorter than that fails the
 * job, as a read on the main thread would (ERR_FRAGMENT_MISSING).
 */
export function hashFiles(merkle: MerkleHasher, files: Array<string | number>, slice: number): void {
  if (!scratch || scratch.length < slice) scratch = Buffer.allocUnsafe(slice);
  for (let i = 0; i < files.length; i += 3) {
    const file = files[i] as string;
    const missing = (why: string) => Object.assign(new Error(`fragment ${file.slice(file.lastIndexOf('/') + 1)} ${why}`), { code: 'ERR_FRAGMENT_MISSING' });
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw (e as NodeJS.ErrnoException).code === 'ENOENT' ? missing('is missing') : e;
    }
    try {
      const end = (files[i + 1] as number) + (files[i + 2] as number);
      for (let pos = files[i + 1] as number; pos < end; ) {
        const n = fs.readSync(fd, scratch, 0, Math.min(slice, end - pos), pos);
        if (n <= 0) throw missing('is shorter than its extents');
        merkle.update(scratch.subarray(0, n));
        pos += n;
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}
