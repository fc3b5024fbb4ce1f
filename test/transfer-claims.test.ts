// A receiver whose peer has its chunker takes the peer's chunks as they are
// cut and leaves their hashes to the writer's hashing thread, which checks
// each chunk before it goes into the blob hash (BlobWriter.appendVerified
// with the peer's chunker). These tests lie to it in the middle of a get,
// and pull between stores with different chunkers (the claims are then
// checked on arrival and the bytes chunked again).
import test, { type ExecutionContext } from 'ava';
import { BlobStore, decodeMessage, encodeMessage, isCabError, merkleRoot, toHex, type Message } from '../src/index.js';
import { createHash } from 'node:crypto';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, readAll } from './helpers/store.js';
import { wsProxy, decodedFrame, type FrameHook } from './helpers/proxies.js';
import { MiB, connectRw, serveRw } from './helpers/transfer.js';

const TOKEN = 'claims';
const BYTES = prngBytes('claimed chunks', 12 * MiB);
const HASH = toHex(merkleRoot(BYTES));
const SMALL_CHUNKER = { min: 4096, avg: 16384, max: 65536 };

const serveT = (t: ExecutionContext, store: BlobStore) => serveRw(t, store, TOKEN);
const connectT = (t: ExecutionContext, store: BlobStore, url: string) => connectRw(t, store, url, TOKEN);

const codeOf = (e: unknown): string => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`);

/** Flips a byte in the second data frame of the nth get (the first item of it); keeps a copy of that item as it was. */
function flipSecondFrame(nth: number): { toServer: FrameHook; toClient: FrameHook; original: () => Buffer | undefined } {
  let gets = 0;
  let target: number | undefined;
  let frames = 0;
  let original: Buffer | undefined;
  return {
    original: () => original,
    toServer: (frame, isBinary) => {
      const m = decodedFrame(frame, isBinary);
      if (m?.t === 'get' && m.items.length >= 2 && ++gets === nth) target = m.id;
      return frame;
    },
    toClient: (frame, isBinary) => {
      const m = decodedFrame(frame, isBinary);
      if (original || m?.t !== 'data' || m.id !== target || m.items.length === 0 || ++frames < 2) return frame;
      const items = m.items.map((x) => Buffer.from(x));
      original = Buffer.from(items[0]!);
      items[0]![items[0]!.length >> 1]! ^= 0x01;
      return Buffer.from(encodeMessage({ ...m, items }));
    },
  };
}

/** Blob `name` of `store` (holding BYTES) as its chunks: bytes and hash. */
async function chunksOf(store: BlobStore, name: string): Promise<Array<{ bytes: Buffer; hash: Buffer }>> {
  const chunks: Array<{ bytes: Buffer; hash: Buffer }> = [];
  let at = 0;
  for await (const c of store.blobChunkStream(name)) {
    chunks.push({ bytes: Buffer.from(BYTES.subarray(at, at + c.size)), hash: Buffer.from(c.hash) });
    at += c.size;
  }
  return chunks;
}

async function heldSize(store: BlobStore, name: string): Promise<{ size: number; finalized: boolean }> {
  const r = await store.newBlobReader(name);
  await r.close();
  return { size: r.size, finalized: r.isFinalized };
}

test('a chunk that fails its claimed hash in the middle of a get: every chunk before it is kept, none after; an honest pull resumes there', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BYTES);
  const srv = await serveT(t, src);
  const flip = flipSecondFrame(3);
  const liar = await wsProxy(srv.url, flip);
  t.teardown(() => liar.close());
  const dst = await tempStore(t);
  const e = await t.throwsAsync((await connectT(t, dst, liar.url)).pull(name));
  t.is(codeOf(e), 'ERR_HASH_MISMATCH');
  const bad = flip.original();
  t.truthy(bad, 'the proxy changed a chunk');
  const at = BYTES.indexOf(bad!);
  t.true(at > 0, 'the changed chunk is one of the blob');
  const held = await heldSize(dst, name);
  t.false(held.finalized);
  t.is(held.size, at, 'the blob ends exactly where the bad chunk starts: the chunks before it in its get are kept');
  t.true((await readAll(dst, name)).equals(BYTES.subarray(0, at)));
  const st = await (await connectT(t, dst, srv.url)).pull(name);
  t.is(st.resumedFrom, at);
  const r = await dst.newBlobReader(name);
  t.is(toHex(r.hash!), HASH);
  await r.close();
  t.true((await readAll(dst, name)).equals(BYTES));
});

test('stores with different chunkers: a pull checks the claims on arrival and chunks the bytes its own way; a lie is still caught', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BYTES);
  const srv = await serveT(t, src);
  const dst = await tempStore(t, { create: true, chunker: SMALL_CHUNKER });
  const st = await (await connectT(t, dst, srv.url)).pull(name);
  t.is(st.receivedBytes, BYTES.length);
  t.true((await readAll(dst, name)).equals(BYTES));
  const r = await dst.newBlobReader(name);
  t.is(toHex(r.hash!), HASH);
  await r.close();
  const sizes = [];
  for await (const c of dst.blobChunkStream(name)) sizes.push(c.size);
  t.true(Math.max(...sizes) <= SMALL_CHUNKER.max, "the receiver's chunks are cut by its own chunker");

  const flip = flipSecondFrame(2);
  const liar = await wsProxy(srv.url, flip);
  t.teardown(() => liar.close());
  const other = await tempStore(t, { create: true, chunker: SMALL_CHUNKER });
  t.is(codeOf(await t.throwsAsync((await connectT(t, other, liar.url)).pull(name))), 'ERR_HASH_MISMATCH');
  const held = await heldSize(other, name);
  t.false(held.finalized);
  t.true(held.size <= BYTES.indexOf(flip.original()!), 'nothing at or after the bad chunk is kept');
  t.true((await readAll(other, name)).equals(BYTES.subarray(0, held.size)));
});

test('claims of chunks our chunker cannot cut (tiny ones) are checked on arrival and the bytes chunked again: the chunk index does not swell', async (t) => {
  const store = await tempStore(t, { create: true });
  const bytes = BYTES.subarray(0, 2 * MiB);
  const tiny: Array<{ bytes: Buffer; hash: Buffer }> = [];
  for (let at = 0; at < bytes.length; at += 512) {
    const piece = bytes.subarray(at, at + 512);
    tiny.push({ bytes: Buffer.from(piece), hash: createHash('sha256').update(piece).digest() });
  }
  const w = await store.newBlobWriter();
  await w.appendVerified(tiny, store.chunker);
  await w.close();
  const sizes = [];
  for await (const c of store.blobChunkStream(w.name)) sizes.push(c.size);
  t.true(sizes.length < 100, `${sizes.length} chunks, cut by the store's chunker, not 4096 of 512 bytes`);
  t.true((await readAll(store, w.name)).equals(bytes));

  // The same tiny claims with one wrong: the chunks before it are kept, durable; the writer fails.
  const w2 = await store.newBlobWriter();
  const lie = tiny.map((c, i) => (i === 1000 ? { bytes: c.bytes, hash: tiny[0]!.hash } : c));
  t.is(codeOf(await t.throwsAsync(w2.appendVerified(lie, store.chunker))), 'ERR_HASH_MISMATCH');
  const held = await heldSize(store, w2.name);
  t.true(held.size <= 1000 * 512, 'nothing from the bad chunk on');
  t.true((await readAll(store, w2.name)).equals(bytes.subarray(0, held.size)));
});

test('claims our chunker could have cut, one of them wrong: checked by the hashing thread; the chunks before it are durable, the writer fails', async (t) => {
  const store = await tempStore(t, { create: true });
  const src = await tempStore(t, { create: true });
  const name = await putBlob(src, BYTES);
  const chunks = await chunksOf(src, name);
  const bad = chunks.length >> 1;
  chunks[bad]!.bytes[7]! ^= 1;
  const w = await store.newBlobWriter();
  await w.appendVerified(chunks.slice(0, 10), store.chunker);
  t.is(codeOf(await t.throwsAsync(w.appendVerified(chunks.slice(10), store.chunker))), 'ERR_HASH_MISMATCH');
  const badAt = chunks.slice(0, bad).reduce((n, c) => n + c.bytes.length, 0);
  const held = await heldSize(store, w.name);
  t.is(held.size, badAt, 'every chunk before the bad one is kept, durable');
  t.true((await readAll(store, w.name)).equals(BYTES.subarray(0, badAt)));
  const again = await store.resumeBlobWriter(w.name);
  t.is(again.size, badAt);
  await again.closeWithoutFinalize();
});

test('claims the caller checked already (a pull from many sources): cut as claimed, not checked again, the blob and its root right', async (t) => {
  const store = await tempStore(t, { create: true });
  const src = await tempStore(t, { create: true });
  const name = await putBlob(src, BYTES);
  const chunks = await chunksOf(src, name);
  const w = await store.newBlobWriter();
  await w.appendVerified(chunks, store.chunker, true);
  await w.close();
  const sizes = [];
  for await (const c of store.blobChunkStream(w.name)) sizes.push(c.size);
  t.deepEqual(sizes, chunks.map((c) => c.bytes.length));
  t.is(toHex(w.hash), HASH);
  t.true((await readAll(store, w.name)).equals(BYTES));
});
