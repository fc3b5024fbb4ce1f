// Real damage for tests: bytes of a blob changed where they lie on disk.
import fs from 'node:fs';
import type { BlobStore } from '../../src/index.js';
import { readDescriptor } from '../../src/format/descriptor.js';
import { descriptorPath, fragmentPath } from './paths.js';

/** Where blob byte `offset` of `name` lies: the fragment file and the offset in it. */
export async function whereIs(store: BlobStore, name: string, offset: number): Promise<{ file: string; at: number; frag: string }> {
  const d = await readDescriptor(descriptorPath(store, name), name);
  const [e] = [...d.extents.slice(offset, 1)];
  return { file: fragmentPath(store, e!.frag), at: e!.offset, frag: e!.frag };
}

/** Flips one bit of blob byte `offset` in its fragment file (every blob sharing that fragment sees it). */
export async function flipByte(store: BlobStore, name: string, offset: number): Promise<string> {
  const { file, at, frag } = await whereIs(store, name, offset);
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x20;
    fs.writeSync(fd, b, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
  return frag;
}

/** The chunk [start, end) of a blob that holds byte `offset`. */
export async function chunkHolding(store: BlobStore, name: string, offset: number): Promise<{ start: number; end: number }> {
  let start = 0;
  for await (const c of store.blobChunkStream(name)) {
    if (offset < start + c.size) return { start, end: start + c.size };
    start += c.size;
  }
  throw new Error(`offset ${offset} is past the chunks of ${name}`);
}
