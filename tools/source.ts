// What `put` reads. A regular file goes to the writer as ranges ({file,
// offset, size}: the writer reads it, with no copy here). Anything else
// (`-` for stdin, a pipe, a FIFO, a terminal, /dev/stdin) has no size that
// stat can tell, so it is read as a stream to its end and handed over in
// blocks: memory stays bounded whatever the length.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CabError, inputFileError, ioError } from '../src/errors.js';
import { orAbort } from '../src/transfer/abort.js';
import type { BlobWriter } from '../src/blob/writer.js';

/** Bytes of a stream handed to the writer at a time. */
const STREAM_BLOCK = 4 * 1024 * 1024;
/** Bytes of a regular file handed to the writer at a time (a progress step). */
const FILE_STEP = 64 * 1024 * 1024;

/** `-` means stdin. */
export const STDIN = '-';

/** A regular file and its size, or a stream of unknown length. */
export type Source = { file: string; size: number } | { file: string; size: undefined; open: () => Readable };

/**
 * A file the user names as input, checked before any work (and before a
 * store is made for it): it exists, is not a directory, and a regular file
 * may be read. ERR_NO_SUCH_FILE otherwise.
 */
export async function statInput(file: string): Promise<fs.Stats> {
  let st: fs.Stats;
  try {
    st = await fsp.stat(file);
    if (st.isFile()) await fsp.access(file, fs.constants.R_OK);
  } catch (e) {
    throw inputFileError(e, file);
  }
  if (st.isDirectory()) throw new CabError('ERR_NO_SUCH_FILE', `${file} is a directory`, { path: file });
  return st;
}

export async function openSource(file: string): Promise<Source> {
  if (file === STDIN) {
    // Node reads a directory on fd 0 (`put - < /tmp`) as an empty stream: that would store an empty blob.
    if (fstat0()?.isDirectory()) throw new CabError('ERR_NO_SUCH_FILE', 'stdin is a directory: give - a file or a pipe', { path: file });
    return { file, size: undefined, open: () => process.stdin };
  }
  const st = await statInput(file);
  if (st.isFile()) return { file, size: st.size };
  // /dev/stdin, /dev/fd/0: opened again by name, a socket (what a parent process may give as stdin) fails with ENXIO.
  if (isStdin(st)) return { file, size: undefined, open: () => process.stdin };
  return { file, size: undefined, open: () => fs.createReadStream(file, { highWaterMark: 1024 * 1024 }) };
}

function isStdin(st: fs.Stats): boolean {
  const fd0 = fstat0();
  return fd0 !== undefined && st.dev === fd0.dev && st.ino === fd0.ino;
}

/** What stdin (fd 0) is; undefined if there is none. */
function fstat0(): fs.Stats | undefined {
  try {
    return fs.fstatSync(0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EBADF') return undefined; // no stdin at all
    throw e;
  }
}

export interface AppendOptions {
  /** Stops the appending (see appendSource). */
  signal?: AbortSignal;
  /** A file only: start at this byte (a resume), not at 0. */
  from?: number;
}

/**
 * Appends all of `src` to `w`; calls `progress` with the position reached
 * so far; returns it. Once `signal` fires it appends nothing more: a
 * file stops after the range being appended, a stream at once (a read that
 * waits is cut short, and what it had is not appended). It then returns,
 * or throws what the cut stream threw: the caller looks at the signal.
 */
export async function appendSource(w: Pick<BlobWriter, 'appendBytes'>, src: Source, progress: (bytes: number) => void, o: AppendOptions = {}): Promise<number> {
  const { signal } = o;
  if (src.size !== undefined) {
    const { file, size } = src;
    let done = o.from ?? 0;
    while (done < size && !signal?.aborted) {
      const n = Math.min(FILE_STEP, size - done);
      await w.appendBytes({ file, offset: done, size: n });
      done += n;
      progress(done);
    }
    return done;
  }
  let done = 0;
  const input = src.open();
  const blocks = inBlocks(input, STREAM_BLOCK);
  try {
    // A read that waits (a FIFO nobody writes to) cannot be cut short, even by destroying the stream: stop waiting for it.
    for (let next; !(next = await orAbort(blocks.next(), signal)).done; ) {
      await w.appendBytes(next.value);
      done += next.value.length;
      progress(done);
    }
  } catch (e) {
    // A read error of the source (an errno); the writer's own errors and ERR_ABORTED are CabErrors already.
    if (typeof (e as NodeJS.ErrnoException).errno !== 'number') throw e;
    throw ioError(e, `reading ${src.file}`, { path: src.file });
  } finally {
    if (signal?.aborted) input.destroy();
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
