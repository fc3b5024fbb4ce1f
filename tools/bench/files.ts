import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BlobStore } from '../../src/index.js';
import { prngStream, prngInts, prngBytes } from '../data.js';
import type { BenchContext } from './harness.js';

/** A deterministic pseudo-random file of `size` bytes in the bench folder, made once per run. */
export async function dataFile(ctx: BenchContext, seed: string, size: number): Promise<string> {
  const file = path.join(ctx.workDir, `${seed}-${size}.bin`);
  if (fs.existsSync(file) && fs.statSync(file).size === size) return file;
  const next = prngStream(`cabstore bench ${seed}`);
  const fd = fs.openSync(`${file}.tmp`, 'w');
  try {
    for (let left = size; left > 0; ) {
      const n = Math.min(left, 8 * 1024 * 1024);
      fs.writeSync(fd, next(n));
      left -= n;
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(`${file}.tmp`, file);
  return file;
}

/**
 * `base`, and `edited`: base with 100 small edits (inserts, deletes,
 * overwrites of 1..200 bytes) at spread positions, streamed so that memory
 * stays small whatever the size. Also returns how many bytes the edits touch.
 */
export async function baseAndEdited(ctx: BenchContext): Promise<{ base: string; edited: string; changedBytes: number }> {
  const size = ctx.sizeBytes;
  const base = await dataFile(ctx, 'base', size);
  const edited = path.join(ctx.workDir, `edited-${size}.bin`);
  const rnd = prngInts(100);
  const edits = Array.from({ length: 100 }, (_, i) => ({
    at: Math.floor(((i + 0.1 + (rnd(800) / 1000)) * size) / 100),
    kind: i % 3,
    n: 1 + rnd(200),
    i,
  }));
  const changedBytes = edits.reduce((a, e) => a + e.n, 0);
  if (fs.existsSync(edited)) return { base, edited, changedBytes };
  const inFd = fs.openSync(base, 'r');
  const outFd = fs.openSync(`${edited}.tmp`, 'w');
  try {
    let pos = 0;
    const copy = (to: number) => {
      const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
      while (pos < to) {
        const n = fs.readSync(inFd, buf, 0, Math.min(buf.length, to - pos), pos);
        fs.writeSync(outFd, buf, 0, n);
        pos += n;
      }
    };
    for (const e of edits) {
      copy(e.at);
      if (e.kind === 0) fs.writeSync(outFd, prngBytes(`insert ${e.i}`, e.n));
      else if (e.kind === 1) pos += e.n;
      else {
        fs.writeSync(outFd, prngBytes(`overwrite ${e.i}`, e.n));
        pos += e.n;
      }
    }
    copy(size);
  } finally {
    fs.closeSync(inFd);
    fs.closeSync(outFd);
  }
  fs.renameSync(`${edited}.tmp`, edited);
  return { base, edited, changedBytes };
}

/** A store holding `base` (made once per bench run and size, and shared by the cases that only read it). */
export async function baseStore(ctx: BenchContext): Promise<{ root: string; name: string }> {
  const root = path.join(ctx.workDir, `store-base-${ctx.sizeBytes}`);
  const marker = path.join(ctx.workDir, `store-base-${ctx.sizeBytes}.name`);
  if (fs.existsSync(marker)) return { root, name: fs.readFileSync(marker, 'utf8') };
  const { base } = await baseAndEdited(ctx);
  const [name] = await storeOf(root, [base]);
  fs.writeFileSync(marker, name!);
  return { root, name: name! };
}

/** A new store at `root` (anything there before is removed) holding each file as a finalized blob; their names. */
export async function storeOf(root: string, files: string[]): Promise<string[]> {
  fs.rmSync(root, { recursive: true, force: true });
  const s = await BlobStore.open(root);
  const names: string[] = [];
  try {
    for (const file of files) {
      const w = await s.newBlobWriter();
      await w.appendBytes({ file });
      await w.close();
      names.push(w.name);
    }
  } finally {
    await s.close();
  }
  return names;
}

export function du(dir: string): number {
  return Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0]);
}

export function dropCaches(): void {
  execFileSync('sync');
}
