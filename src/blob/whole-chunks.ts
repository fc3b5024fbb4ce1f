import { readExtents } from '../disk/blob-bytes.js';
import type { FragmentFiles } from '../disk/fragments.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Extent } from '../format/extents.js';
import type { FileBytes } from '../hash/pool.js';
import type { StoreInternals } from './context.js';
import type { BlockSource, Ingest } from './ingest.js';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { READ_BLOCK, readBlocks } from './input.js';

/**
 * Bytes of whole chunks per group in a store on disk, whose bytes the
 * hashing thread reads itself (only their places are sent): 4 MiB, a
 * message per group and its answer, each a wake-up of a thread (tens of
 * us in a VM), and the unit the leaf helper takes (hash/leaf-split.ts).
 */
const LOCAL_GROUP = 4 * 1024 * 1024;

/** Chunks are read from the index a page at a time. */
const PAGE = 1024;
/**
 * Bytes taken between turns of the event loop. Reads of open fragments
 * block and blocks whose hashes are known are not waited for, so without a
 * turn now and then a long range would hold the loop: no other connection
 * served, no abort seen.
 */
const TURN_BYTES = 8 * 1024 * 1024;

/**
 * Per source descriptor, the number of the chunk after the last one taken
 * from it: a pull's next local range of that blob starts a chunk or two
 * further on (ChunkIndex.chunkNumberAt's `near`).
 */
const nextTaken = new WeakMap<Descriptor, number>();

/**
 * The fast path of appendBlob. With the chunker at a boundary, a range of
 * blob `blob` (descriptor `src`) that starts at one of the source's chunk
 * boundaries is made of the source's chunks: FastCDC restarted at a
 * boundary cuts the same bytes the same way, so their hashes and sizes come
 * from the index, and the bytes are read only for the blob hash (in the
 * hashing thread). Not the source's last chunk, whose end may be the end of
 * the stream rather than a cut. Returns the bytes taken from the start of
 * [offset, offset + n); once `signal` is aborted, it stops taking at the
 * next group of whole chunks (READ_BLOCK bytes).
 */
export async function takeWholeChunks(
  s: StoreInternals,
  files: FragmentFiles,
  ingest: Ingest,
  blob: string,
  src: Descriptor,
  offset: number,
  n: number,
  signal?: AbortSignal,
): Promise<number> {
  const index = s.index;
  const first = index.chunkNumberAt(blob, offset, nextTaken.get(src));
  if (first === undefined) return 0;
  let chunksTaken = 0;
  const end = offset + n;
  let taken = 0;
  let group: Array<{ hash: Uint8Array; size: number }> = [];
  let groupBytes = 0;
  // Read by the hashing thread (wholeBytes): a message per group, and each costs a wake-up of a thread.
  const groupMax = s.cas.remote ? READ_BLOCK : LOCAL_GROUP;
  const flushGroup = async () => {
    if (groupBytes === 0) return;
    const start = offset + taken;
    const extents = [...src.extents.slice(start, groupBytes)];
    await ingest.addWhole(extents, group, await wholeBytes(s, files, src, extents, start, groupBytes));
    taken += groupBytes;
    chunksTaken += group.length;
    nextTaken.set(src, first + chunksTaken);
    group = [];
    groupBytes = 0;
  };
  for (let from = first; ; from += PAGE) {
    const page = [];
    for (const c of index.blobChunks(blob, from)) {
      page.push(c);
      // No further than the range needs: a short range must not decode a whole page of the index.
      if (page.length === PAGE || c.offset + c.size >= end) break;
    }
    for (const c of page) {
      const cEnd = c.offset + c.size;
      if (c.offset !== offset + taken + groupBytes || cEnd > end) return (await flushGroup(), taken);
      if (src.finalized && cEnd === src.size && c.size < s.chunker.max) return (await flushGroup(), taken);
      group.push(c);
      groupBytes += c.size;
      if (groupBytes >= groupMax) {
        const before = taken;
        await flushGroup();
        if (Math.floor(taken / TURN_BYTES) !== Math.floor(before / TURN_BYTES)) await nextTurn();
        if (signal?.aborted) return taken;
      }
    }
    if (page.length < PAGE) break;
  }
  await flushGroup();
  return taken;
}

/**
 * The bytes of whole chunks, for the blob hash only. In cas/ on disk (a
 * store not backed by a bucket), where the hashing thread reads them
 * itself: the main thread neither reads nor copies them (for a pull's
 * local ranges it read and posted about 0.6 ms per MiB, on the path
 * every later step waits on). Each fragment is opened here first, so a
 * missing one is ERR_FRAGMENT_MISSING now; the writer's pin keeps it.
 * Otherwise read now (at once if the fragment is open: the next step
 * waits for these bytes).
 */
async function wholeBytes(s: StoreInternals, files: FragmentFiles, src: Descriptor, extents: Extent[], start: number, n: number): Promise<Uint8Array | FileBytes> {
  if (!s.cas.remote) {
    const out: FileBytes = { files: [], length: n };
    for (const e of extents) {
      await files.open(e.frag);
      out.files.push(s.cas.layout.fragment(e.frag), e.offset, e.size);
    }
    return out;
  }
  const buf = Buffer.allocUnsafe(n);
  await readExtents(files, src.extents, buf, start, true);
  return buf;
}

/**
 * The rest of appendBlob: bytes [offset, offset + n) of blob `src`, read a
 * block at a time and fed (chunked and hashed) with where they are stored.
 */
export async function feedBlobRange(files: FragmentFiles, src: Descriptor, offset: number, n: number, feed: (block: Uint8Array, ref: BlockSource) => Promise<void>): Promise<void> {
  const read = async (pos: number, len: number) => {
    const buf = Buffer.allocUnsafe(len);
    await readExtents(files, src.extents, buf, offset + pos);
    return buf;
  };
  let pos = offset;
  for await (const block of readBlocks(n, READ_BLOCK, read)) {
    const len = block.length; // fed blocks go to the hashing thread: empty after
    await feed(block, { extents: src.extents, offset: pos });
    pos += len;
  }
}
