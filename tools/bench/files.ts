import fs from 'node:fs';
import path from 'node:path';
import { prngStream } from '../data.js';
import type { BenchContext } from './harness.js';

/** A deterministic pseudo-random file of `size` bytes in the bench folder, made once per run. */
export async function dataFile(ctx: BenchContext, seed: string, size: number): Promise<string> {
  const file = path.join(ctx.workDir, `${seed}-${size}.bin`);
  if (fs.existsSync(file) && fs.statSync(file).size === size) return file;
  const next = prngStream(`cabstore bench ${seed}`);
  const fd = fs.openSync(file, 'w');
  try {
    for (let left = size; left > 0; ) {
      const n = Math.min(left, 8 * 1024 * 1024);
      fs.writeSync(fd, next(n));
      left -= n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return file;
}
