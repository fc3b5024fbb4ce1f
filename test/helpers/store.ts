import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { BlobStore, type StoreOptions } from '../../src/index.js';

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
