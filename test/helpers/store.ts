import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { BlobStore, chunk, isCabError, merkleRoot, sha256, toHex, type StoreOptions } from '../../src/index.js';

/** A fresh temp directory, removed when the test ends. */
export function tempDir(t: ExecutionContext, prefix = 'cabstore-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A store in a fresh temp directory, closed and removed when the test ends. */
export async function tempStore(t: ExecutionContext, options?: StoreOptions): Promise<BlobStore> {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir, options);
  t.teardown(() => store.close());
  return store;
}

export async function putBlob(store: BlobStore, bytes: Uint8Array, name?: string): Promise<string> {
  const w = await store.newBlobWriter(name);
  await w.appendBytes(bytes);
  await w.close();
  return w.name;
}

export async function readAll(store: BlobStore, name: string): Promise<Buffer> {
  const r = await store.newBlobReader(name);
  try {
    const buf = Buffer.alloc(r.size);
    let at = 0;
    while (at < r.size) at += await r.readAt(buf.subarray(at), at);
    return buf;
  } finally {
    await r.close();
  }
}

export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** The chunks FastCDC cuts from `bytes` (default parameters): each piece and its SHA-256. */
export function chunksOf(bytes: Uint8Array): Array<{ bytes: Uint8Array; hash: Uint8Array }> {
  const out: Array<{ bytes: Uint8Array; hash: Uint8Array }> = [];
  let off = 0;
  for (const size of chunk(bytes)) {
    const piece = bytes.subarray(off, off + size);
    out.push({ bytes: piece, hash: sha256(piece) });
    off += size;
  }
  return out;
}

/** A blob's chunk list from the store as "hash:size" strings, to compare with chunksOf. */
export async function chunkKeys(store: BlobStore, name: string): Promise<string[]> {
  return (await collect(store.blobChunkStream(name))).map((c) => `${toHex(c.hash)}:${c.size}`);
}

export const keysOf = (chunks: Array<{ bytes: Uint8Array; hash: Uint8Array }>): string[] => chunks.map((c) => `${toHex(c.hash)}:${c.bytes.length}`);

/** The CabError code `p` rejects with, 'resolved' if it does not, or what else it threw. */
export async function rejectionCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return isCabError(e) ? e.code : `not a CabError: ${String(e)}`;
  }
}

/** How a promise ends: 'resolved', or the code of the CabError it rejects with. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return isCabError(e) ? e.code : `not a CabError: ${String(e)}`;
  }
}

/** A blob's size, whether finalized, and its hash (hex) if so; undefined if there is no such blob. */
export async function blobState(store: BlobStore, name: string): Promise<{ size: number; finalized: boolean; hash?: string } | undefined> {
  try {
    const r = await store.newBlobReader(name);
    await r.close();
    return { size: r.size, finalized: r.isFinalized, ...(r.hash ? { hash: toHex(r.hash) } : {}) };
  } catch (e) {
    if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return undefined;
    throw e;
  }
}

/** Where each of a blob's chunks starts, in order; with `withEnd`, the blob's size after them. */
export async function chunkStarts(store: BlobStore, blob: string, withEnd = false): Promise<number[]> {
  const starts: number[] = [];
  let at = 0;
  for await (const c of store.blobChunkStream(blob)) {
    starts.push(at);
    at += c.size;
  }
  if (withEnd) starts.push(at);
  return starts;
}

/** Blob `name` of `store` is finalized with the root of `bytes`, reads back as `bytes`, and fsck --verify finds nothing wrong in the store. */
export async function assertBlobGood(t: ExecutionContext, store: BlobStore, name: string, bytes: Uint8Array): Promise<void> {
  const r = await store.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), toHex(merkleRoot(bytes)));
  t.true((await readAll(store, name)).equals(bytes), 'content is byte-exact');
  const f = await store.fsck({ verify: true });
  t.deepEqual(f.problems, [], 'fsck --verify finds nothing wrong');
}
