// What `put` reads. A regular file goes to the writer as ranges ({file,
// offset, size}: the writer reads it, with no copy here). Anything else
// (`-` for stdin, a pipe, a FIFO, a terminal, /dev/stdin) has no size that
// stat can tell, so it is read as a stream to its end and handed over in
// blocks: memory stays bounded whatever the length.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { CabError, ioError } from '../src/errors.js';
import type { BlobWriter } from '../src/index.js';

/** Bytes of a stream handed to the writer at a time. */
const STREAM_BLOCK = 4 * 1024 * 1024;
/** Bytes of a regular file handed to the writer at a time (a progress step). */
const FILE_STEP = 64 * 1024 * 1024;

/** `-` means stdin. */
export const STDIN = '-';

/** A regular file and its size, or a stream of unknown length. */
export type Source = { file: string; size: number } | { file: string; size: undefined; open: () => AsyncIterable<Uint8Array> };

export async function openSource(file: string): Promise<Source> {
  if (file === STDIN) return { file, size: undefined, open: () => process.stdin };
  let st: fs.Stats;
  try {
    st = await fsp.stat(file);
  } catch (e) {
    throw new CabError('ERR_NO_SUCH_FILE', `cannot read ${file}: ${(e as Error).message}`, { path: file }, { cause: e });
  }
  if (st.isFile()) return { file, size: st.size };
  if (st.isDirectory()) throw new CabError('ERR_NO_SUCH_FILE', `${file} is a directory`, { path: file });
  // /dev/stdin, /dev/fd/0: opened again by name, a socket (what a parent process may give as stdin) fails with ENXIO.
  if (isStdin(st)) return { file, size: undefined, open: () => process.stdin };
  return { file, size: undefined, open: () => fs.createReadStream(file, { highWaterMark: 1024 * 1024 }) };
}

function isStdin(st: fs.Stats): boolean {
  let fd0: fs.Stats;
  try {
    fd0 = fs.fstatSync(0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EBADF') return false; // no stdin at all
    throw e;
  }
  return st.dev === fd0.dev && st.ino === fd0.ino;
}

/** Appends all of `src` to `w`; calls `progress` with the bytes appended so far; returns their count. */
export async function appendSource(w: Pick<BlobWriter, 'appendBytes'>, src: Source, progress: (bytes: number) => void): Promise<number> {
  if (src.size !== undefined) {
    const { file, size } = src;
    for (let off = 0; off < size; off += FILE_STEP) {
      await w.appendBytes({ file, offset: off, size: Math.min(FILE_STEP, size - off) });
      progress(Math.min(size, off + FILE_STEP));
    }
    return size;
  }
  let done = 0;
  try {
    for await (const block of inBlocks(src.open(), STREAM_BLOCK)) {
      await w.appendBytes(block);
      done += block.length;
      progress(done);
    }
  } catch (e) {
    // A read error of the source (an errno); the writer's own errors are CabErrors already.
    if (typeof (e as NodeJS.ErrnoException).errno !== 'number') throw e;
    throw ioError(e, `reading ${src.file}`, { path: src.file });
  }
  return done;
}

/** Regroups a stream's pieces into blocks of `size` bytes (the last may be shorter). Each block is new: the writer may still hold the last one. */
async function* inBlocks(pieces: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let block = Buffer.allocUnsafe(size);
  let fill = 0;
  for await (const piece of pieces) {
    for (let at = 0; at < piece.length; ) {
      const n = Math.min(size - fill, piece.length - at);
      block.set(piece.subarray(at, at + n), fill);
      fill += n;
      at += n;
      if (fill === size) {
        yield block;
        block = Buffer.allocUnsafe(size);
        fill = 0;
      }
    }
  }
  if (fill > 0) yield block.subarray(0, fill);
}
