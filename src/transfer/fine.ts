import { CabError, isCabError } from '../errors.js';
import { chunk as cdc } from '../chunker/fastcdc.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { BlobWriter } from '../blob/writer.js';
import type { ChunkRef } from '../store.js';
import { FINE_CHUNKER, type GetItem } from './messages.js';
import type { RemoteSource } from './remote.js';
import type { TransferStats } from './stats.js';
import type { ReaderCache } from './reader-cache.js';
import { throwIfAborted } from './abort.js';

/** Local bytes searched on each side of where a missing run would be. */
export const FINE_SLACK = 32 * 1024;

/** What fine matching of one run works with. */
export interface FineContext {
  src: RemoteSource;
  name: string;
  w: BlobWriter;
  stats: TransferStats;
  readers: ReaderCache;
  signal: AbortSignal | undefined;
  progress: () => void;
}

/**
 * A short run of missing chunks: both sides cut it finely (FINE_CHUNKER,
 * the same on every store whatever its own chunker). The sender sends each
 * missing chunk's fine list; pieces found in the local bytes around `near`
 * are taken from there, the rest fetched. Each fetched piece is checked
 * against its fine hash, and each chunk, assembled, against its hash before
 * it is written.
 */
export async function fineRun(x: FineContext, run: ChunkRef[], runBytes: number, near: { blob: string; offset: number }): Promise<void> {
  const lists = run.map((c) => {
    const p = x.src.fine!(c.hash, c.size);
    p.catch(() => {});
    return p;
  });
  const local = await localPieces(x.readers, near, runBytes);
  for (let i = 0; i < run.length; i++) {
    throwIfAborted(x.signal, x.name);
    const c = run[i]!;
    const pieces = await lists[i]!;
    const bytes = new Uint8Array(c.size);
    const want: GetItem[] = [];
    const wantAt: Array<[number, Uint8Array]> = [];
    let off = 0;
    for (const [h, size] of pieces) {
      const mine = local.get(toHex(h));
      if (mine && mine.length === size) {
        bytes.set(mine, off);
        x.stats.reusedBytes += size;
      } else {
        want.push([c.hash, off, size]);
        wantAt.push([off, h]);
      }
      off += size;
    }
    if (off !== c.size) throw new CabError('ERR_PROTOCOL', `fine pieces cover ${off} of ${c.size} bytes`, { blob: x.name });
    if (want.length) {
      const got = await x.src.get(want);
      got.forEach((d, k) => {
        x.stats.receivedBytes += d.length;
        if (d.length !== want[k]![2] || !bytesEqual(sha256(d), wantAt[k]![1])) {
          throw new CabError('ERR_HASH_MISMATCH', `a piece of chunk ${toHex(c.hash)} does not hash to what was asked for`, { blob: x.name });
        }
        bytes.set(d, wantAt[k]![0]);
      });
    }
    if (!bytesEqual(sha256(bytes), c.hash)) {
      throw new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} assembled from pieces does not hash to it`, { blob: x.name });
    }
    await x.w.appendBytes(bytes);
    x.stats.verifiedBytes += c.size;
    x.stats.chunksFetched++;
    x.progress();
  }
}

/** Fine pieces of the local bytes around `near`, by SHA-256 (hex). Bounded by the run size plus slack. */
async function localPieces(readers: ReaderCache, near: { blob: string; offset: number }, runBytes: number): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  let r;
  try {
    r = await readers.get(near.blob);
  } catch (e) {
    // Deleted since the recipe named it: no local bytes to match against, fetch them all.
    if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return out;
    throw e;
  }
  const from = Math.max(0, near.offset - FINE_SLACK);
  const to = Math.min(r.size, near.offset + runBytes + FINE_SLACK);
  if (to <= from) return out;
  const buf = new Uint8Array(to - from);
  await r.readFully(buf, from);
  let off = 0;
  for (const size of cdc(buf, FINE_CHUNKER)) {
    const piece = buf.subarray(off, off + size);
    out.set(toHex(sha256(piece)), piece);
    off += size;
  }
  return out;
}
