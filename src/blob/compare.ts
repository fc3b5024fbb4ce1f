import fs from 'node:fs/promises';
import { inputFileError, isCabError } from '../errors.js';
import { bytesEqual, sha256 } from '../hash/sha256.js';
import type { BlobReader } from './reader.js';

/**
 * Where blob `name` first differs from the start of `file` (undefined if the
 * file begins with the blob's bytes): each recorded chunk is compared by
 * hashing the file's bytes of its range, so the blob's own bytes are read
 * only where a chunk differs (to find the byte) and after its last chunk
 * boundary (no hash there). A file shorter than the blob differs where it
 * ends. For `cabstore resume NAME FILE`, which must not append FILE to a
 * blob that is not FILE's beginning.
 */
export async function firstDifference(store: { newBlobReader(name: string): Promise<BlobReader> }, name: string, file: string): Promise<number | undefined> {
  const r = await store.newBlobReader(name);
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    await r.close();
    throw inputFileError(e, file);
  }
  try {
    const fileBytes = async (pos: number, n: number) => {
      const buf = Buffer.alloc(n);
      for (let at = 0; at < n; ) {
        const { bytesRead } = await fh.read(buf, at, n - at, pos + at);
        if (bytesRead === 0) return buf.subarray(0, at);
        at += bytesRead;
      }
      return buf;
    };
    let pos = 0;
    for await (const c of r.chunks()) {
      const mine = await fileBytes(pos, c.size);
      if (mine.length < c.size || !bytesEqual(sha256(mine), c.hash)) return pos + (await firstByte(r, pos, mine));
      pos += c.size;
    }
    if (pos < r.size) {
      const mine = await fileBytes(pos, r.size - pos);
      const at = await firstByte(r, pos, mine);
      if (at < r.size - pos) return pos + at;
    }
    return undefined;
  } finally {
    await fh.close();
    await r.close();
  }
}

/** Index of the first byte where `bytes` differs from the blob's bytes at `pos` (bytes.length if none; 0 if the blob's cannot be read). */
async function firstByte(r: BlobReader, pos: number, bytes: Uint8Array): Promise<number> {
  const theirs = Buffer.alloc(Math.min(bytes.length + 1, r.size - pos));
  try {
    await r.readFully(theirs, pos);
  } catch (e) {
    if (isCabError(e, 'ERR_HASH_MISMATCH') || isCabError(e, 'ERR_BLOB_DAMAGED')) return 0;
    throw e;
  }
  let i = 0;
  while (i < bytes.length && i < theirs.length && bytes[i] === theirs[i]) i++;
  return i;
}
