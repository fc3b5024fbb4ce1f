// Hostile review of verified range reads and leaf layers (2026-12-04): each
// test here failed on the code it was written against and says what a
// demanding user expects instead.
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { encodeMessage, fetchBlob, isCabError, merkleRoot, sha256 } from '../src/index.js';
import { treeLevels } from '../src/hash/proof.js';
import { decodedFrame } from './helpers/proxies.js';
import { throughLiar } from './helpers/hostile.js';
import { putBlob, tempStore } from './helpers/store.js';

const LEAF = 16384;

/** The two children of a blob's root: SHA-256(left || right) is the root, so these 64 bytes, as a blob, have the same BEP 52 hash. */
function rootChildren(bytes: Uint8Array): Buffer {
  const leaves: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += LEAF) leaves.push(sha256(bytes.subarray(i, i + LEAF)));
  const levels = treeLevels(Buffer.concat(leaves));
  return Buffer.from(levels[levels.length - 2]!);
}

async function readAllRemote(r: { stream(): NodeJS.ReadableStream }): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of r.stream()) parts.push(b as Buffer);
  return Buffer.concat(parts);
}

test('PROTOCOL.md "Trust": with a trusted root, a server that announces another size is caught (size 64: the root\'s two children pass as a one-leaf blob)', async (t) => {
  const src = await tempStore(t);
  const bytes = crypto.randomBytes(100_000);
  const name = await putBlob(src, bytes);
  const root = merkleRoot(bytes);
  const fake = rootChildren(bytes);
  t.true(Buffer.from(sha256(fake)).equals(root), 'the 64 bytes hash to the root, as a 1-leaf BEP 52 tree would');
  const { client: c } = await throughLiar(t, src, (frame, isBinary) => {
    const m = decodedFrame(frame, isBinary);
    if (m?.t === 'statr') return Buffer.from(encodeMessage({ ...m, size: 64 }));
    if (m?.t === 'ranger') return Buffer.from(encodeMessage({ ...m, data: fake, proof: [] }));
    return frame;
  });
  let got: Buffer | undefined;
  const e = await t.throwsAsync(async () => {
    const r = await c.openReader(name, { hash: root });
    got = await readAllRemote(r);
  });
  t.log(got ? `the reader returned ${got.length} bytes as verified, none of them the blob's` : 'refused');
  t.true(isCabError(e), 'a lying server is refused with a CabError (ERR_HASH_MISMATCH); the fix needs the size to be trusted too, or checked');
});

test('PROTOCOL.md "Trust": with a trusted root, a server that announces size 0 for a non-empty blob is caught (no leaf is ever checked)', async (t) => {
  const src = await tempStore(t);
  const bytes = crypto.randomBytes(100_000);
  const name = await putBlob(src, bytes);
  const { client: c } = await throughLiar(t, src, (frame, isBinary) => {
    const m = decodedFrame(frame, isBinary);
    return m?.t === 'statr' ? Buffer.from(encodeMessage({ ...m, size: 0 })) : frame;
  });
  const e = await t.throwsAsync(async () => {
    const r = await c.openReader(name, { hash: merkleRoot(bytes) });
    await readAllRemote(r);
  });
  t.true(isCabError(e, 'ERR_HASH_MISMATCH'), 'the empty blob has the root SHA-256(""): any other root cannot be of 0 bytes');
});

test('deleteBlob of a blob whose leaf layer path is a directory: a CabError, and not half done (the blob gone, its metadata left)', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, crypto.randomBytes(50_000));
  await store.setBlobMetadata(name, { ownerShares: { sg: 1 }, referenced: new Date(), accessed: new Date() });
  const layer = store.layout.leafLayer(name);
  fs.mkdirSync(layer, { recursive: true });
  let err: unknown;
  try {
    await store.deleteBlob(name);
  } catch (e) {
    err = e;
  }
  t.log(err === undefined ? 'deleteBlob resolved' : `deleteBlob threw ${String((err as { code?: string }).code)}: ${String((err as Error).message)}`);
  if (err === undefined) {
    t.false(await store.has(name));
    t.is(await store.getBlobMetadata(name), undefined, 'its metadata went with it');
  } else {
    t.true(isCabError(err, 'ERR_IO'), 'an I/O failure is ERR_IO');
    t.true(await store.has(name), 'a delete that fails leaves the blob as it was');
  }
});

test('a genuine 64-byte blob: read with its root and size; with its root alone it is refused (a root does not pin 64 bytes), and so is a pull of it', async (t) => {
  const src = await tempStore(t);
  const bytes = crypto.randomBytes(64);
  const name = await putBlob(src, bytes);
  const root = merkleRoot(bytes);
  const { client: c, dst, url } = await throughLiar(t, src, (frame) => frame);
  const r = await c.openReader(name, { hash: root, size: 64 });
  t.true((await readAllRemote(r)).equals(bytes));
  const e = await t.throwsAsync(c.openReader(name, { hash: root }));
  t.true(isCabError(e, 'ERR_HASH_MISMATCH'), 'refused without the size');
  t.true(isCabError(await t.throwsAsync(fetchBlob(dst, name, { from: [url], hash: root, token: 'ro' })), 'ERR_HASH_MISMATCH'), 'fetchBlob too');
  const st = await fetchBlob(dst, name, { from: [url], hash: root, size: 64, token: 'ro' });
  t.is(st.size, 64);
});

test('fetchBlob with a trusted root: a source announcing 64 bytes (the root\'s two children) is refused', async (t) => {
  const src = await tempStore(t);
  const bytes = crypto.randomBytes(100_000);
  const name = await putBlob(src, bytes);
  const root = merkleRoot(bytes);
  const fake = rootChildren(bytes);
  const { client: c, dst, url } = await throughLiar(t, src, (frame, isBinary) => {
    const m = decodedFrame(frame, isBinary);
    if (m?.t === 'statr') return Buffer.from(encodeMessage({ ...m, size: 64 }));
    if (m?.t === 'listr') return Buffer.from(encodeMessage({ ...m, c: [[root, 64]], end: true }));
    if (m?.t === 'data') return Buffer.from(encodeMessage({ ...m, items: [fake] }));
    return frame;
  });
  const e = await t.throwsAsync(fetchBlob(dst, name, { from: [url], hash: root, token: 'ro' }));
  t.true(isCabError(e, 'ERR_HASH_MISMATCH') || isCabError(e, 'ERR_BLOB_NOT_FINALIZED'), String(e));
  t.false(await dst.has(name), 'nothing stored');
});
