import type fs from 'node:fs/promises';
import { CabError } from '../errors.js';
import { LEAF_SIZE, MerkleHasher } from '../hash/merkle.js';
import { fromHex } from '../hash/sha256.js';
import { BlobBytes } from '../disk/blob-bytes.js';
import { ChunkPager } from '../disk/chunk-pager.js';
import { chunkEntries, encodeRecord, merkleFromRecord, merkleToRecord, packChunks, readDescriptorFrom, type AppendRecord, type Descriptor } from '../format/descriptor.js';
import { FragmentFiles } from '../disk/fragments.js';
import type { StoreInternals } from './context.js';
import { checkBlobName } from '../format/layout.js';
import { lockDescriptor, replaceDescriptor } from '../index/rewrite.js';

/** Bytes read at a time to bring the merkle state up to the cut. */
const BLOCK = 4 * 1024 * 1024;

/**
 * Cuts an unfinalized blob back to its first `size` bytes, `size` being one
 * of its chunk boundaries (or its size: then nothing changes), so that a
 * writer resumed afterwards continues from there. For a transfer whose local
 * prefix turned out not to be the sender's. ERR_BLOB_LOCKED while a writer
 * holds the blob, ERR_BLOB_FINALIZED, ERR_ILLEGAL_POSITION if `size` is no
 * boundary.
 *
 * The descriptor is replaced (see replaceDescriptor): the records that end
 * at or before `size` are kept as they are, and one record is added for the
 * rest up to `size`: its extents, its chunks, and the merkle state at
 * `size`, computed from the last kept state and the bytes after it (at most
 * one record's worth, each chunk checked against its hash as it is read).
 * Damage records are cut to `size`.
 */
export async function truncateBlob(s: StoreInternals, name: string, size: number): Promise<void> {
  checkBlobName(name);
  s.checkOpen();
  const fh = await lockDescriptor(s.layout, name);
  try {
    const d = await readDescriptorFrom(fh, name);
    if (d.finalized) throw new CabError('ERR_BLOB_FINALIZED', `blob ${name} is finalized`, { blob: name });
    if (size === d.size) return;
    const pager = new ChunkPager(fh, d.chunkRecords);
    if (!Number.isSafeInteger(size) || size < 0 || size > d.chunkEnd || (size < d.chunkEnd && (await pager.chunkAt(size)).start !== size)) {
      throw new CabError('ERR_ILLEGAL_POSITION', `${size} is not a chunk boundary of blob ${name} (its chunks end at ${d.chunkEnd})`, { blob: name, offset: size });
    }
    // The last record that ends at or before the cut: kept with all before it.
    let keep = { end: d.headerEnd, s: 0, chunkEnd: 0, m: [0, new Uint8Array(0)] as AppendRecord['m'] };
    await readDescriptorFrom(fh, name, {
      extents: false,
      onAppend: (rec, _start, end, chunkOffset) => {
        if (rec.s > size) return;
        let chunkEnd = chunkOffset;
        for (const [, n] of chunkEntries(rec.c)) chunkEnd += n;
        keep = { end, s: rec.s, chunkEnd, m: [rec.m[0], Uint8Array.from(rec.m[1])] };
      },
    });
    const rest = keep.s < size ? await restRecord(s, d, pager, keep, size) : undefined;
    const out = await replaceDescriptor(s.layout, s.index, name, async (append) => {
      for (let at = 0; at < keep.end; at += BLOCK) await append(await readBytes(fh, at, Math.min(BLOCK, keep.end - at)));
      if (rest) await append(encodeRecord(rest));
      for (const r of d.damage) if (r.o < size) await append(encodeRecord({ t: 'd', o: r.o, e: Math.min(r.e, size), why: r.why }));
    });
    await out.close();
  } finally {
    await fh.close();
  }
}

/** The record for blob bytes [keep.s, size): their extents and chunks, and the merkle state at `size`. */
async function restRecord(
  s: StoreInternals,
  d: Descriptor,
  pager: ChunkPager,
  keep: { s: number; chunkEnd: number; m: AppendRecord['m'] },
  size: number,
): Promise<AppendRecord> {
  const chunks: Array<[Uint8Array, number]> = [];
  for (let p = keep.chunkEnd; p < size; ) {
    const c = await pager.chunkAt(p);
    chunks.push([Uint8Array.from(c.hash), c.size]);
    p = c.start + c.size;
  }
  const hasher = MerkleHasher.fromState(merkleFromRecord(keep.s, keep.m));
  const files = new FragmentFiles(s.cas, 8);
  try {
    const bytes = new BlobBytes(d.name, d, pager, files);
    for (let at = keep.m[0] * LEAF_SIZE; at < size; at += BLOCK) {
      const buf = Buffer.allocUnsafe(Math.min(BLOCK, size - at));
      await bytes.read(buf, at);
      hasher.update(buf);
    }
  } finally {
    await files.close();
  }
  return {
    t: 'x',
    s: size,
    x: [...d.extents.slice(keep.s, size - keep.s)].map((e) => [fromHex(e.frag), e.offset, e.size]),
    c: packChunks(chunks),
    m: merkleToRecord(hasher.state()),
  };
}

async function readBytes(fh: fs.FileHandle, at: number, n: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(n);
  const { bytesRead } = await fh.read(buf, 0, n, at);
  if (bytesRead !== n) throw new CabError('ERR_IO', `the descriptor ended at ${at + bytesRead} while it was copied`, { offset: at + bytesRead });
  return buf;
}
