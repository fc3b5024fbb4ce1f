// store.stat and store.has: what a blob is, from its descriptor, without
// opening a reader, pinning anything or creating anything.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { CabError, merkleRoot, toHex, type BlobStat } from '../src/index.js';
import { encodeRecord } from '../src/format/descriptor.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob } from './helpers/store.js';
import { blobDirPath, descriptorPath, leasesDir } from './helpers/paths.js';

const BYTES = prngBytes('stat', 300_000);
const MISSING = 'ab'.repeat(16);

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return (await p.then(() => undefined, (e: unknown) => (e instanceof CabError ? e.code : String(e))));
}

/** The pin files of this store's leases, with their contents and modification times. */
function pinFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.pins'))
    .map((f) => `${f} ${fs.statSync(path.join(dir, f)).mtimeMs} ${fs.readFileSync(path.join(dir, f), 'utf8')}`);
}

test('stat of a finalized blob: its size, finalized, its blob hash, no damage', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, BYTES);
  const st: BlobStat = await store.stat(name);
  t.is(st.size, BYTES.length);
  t.true(st.finalized);
  t.is(toHex(st.hash!), toHex(merkleRoot(BYTES)));
  t.is(st.damaged, undefined);
  // A copy: changing what stat returned changes nothing in the store.
  st.hash!.fill(0);
  t.is(toHex((await store.stat(name)).hash!), toHex(merkleRoot(BYTES)));
});

test('stat of an unfinalized blob: the bytes durably appended, not finalized, no hash', async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  t.deepEqual(await store.stat(w.name), { size: 0, finalized: false });
  await w.appendBytes(BYTES.subarray(0, 100_000));
  await w.flush();
  t.deepEqual(await store.stat(w.name), { size: 100_000, finalized: false });
  await w.appendBytes(BYTES.subarray(100_000));
  await w.close();
  const st = await store.stat(w.name);
  t.is(st.size, BYTES.length);
  t.true(st.finalized);
});

test('stat names the damaged ranges fsck recorded', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, BYTES);
  fs.appendFileSync(descriptorPath(store, name), encodeRecord({ t: 'd', o: 0, e: BYTES.length, why: 'missing-fragment x' }));
  t.deepEqual((await store.stat(name)).damaged, [{ start: 0, end: BYTES.length, why: 'missing-fragment x' }]);
});

test('stat opens no reader and rewrites no pins', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, BYTES);
  const before = pinFiles(leasesDir(store));
  await store.stat(name);
  t.deepEqual(pinFiles(leasesDir(store)), before);
  // The check can fail: opening a reader does rewrite them.
  const r = await store.newBlobReader(name);
  t.notDeepEqual(pinFiles(leasesDir(store)), before);
  await r.close();
});

test('stat of a missing blob is ERR_NO_SUCH_BLOB; of a bad name ERR_INVALID_BLOB_NAME; after close ERR_CLOSED', async (t) => {
  const store = await tempStore(t);
  t.is(await codeOf(store.stat(MISSING)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(store.stat('../../etc/passwd')), 'ERR_INVALID_BLOB_NAME');
  t.false(fs.existsSync(blobDirPath(store, MISSING)), 'stat created nothing');
  const name = await putBlob(store, BYTES);
  await store.deleteBlob(name);
  t.is(await codeOf(store.stat(name)), 'ERR_NO_SUCH_BLOB', 'not a cached answer after delete');
  await store.close();
  t.is(await codeOf(store.stat(MISSING)), 'ERR_CLOSED');
});

test('has: true for a finalized or unfinalized blob, false for a missing one and after delete', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, BYTES);
  const w = await store.newBlobWriter();
  t.true(await store.has(name));
  t.true(await store.has(w.name));
  t.false(await store.has(MISSING));
  await w.closeWithoutFinalize();
  await store.deleteBlob(name);
  t.false(await store.has(name));
  t.true(await store.has(w.name));
  t.is(await codeOf(store.has('UPPER'.repeat(4) + 'a'.repeat(12))), 'ERR_INVALID_BLOB_NAME');
  await store.close();
  t.is(await codeOf(store.has(w.name)), 'ERR_CLOSED');
});

test('has: only "no such file" means false; any other failure rejects', async (t) => {
  const store = await tempStore(t);
  // The fan-out directory is a file: looking up the descriptor fails with ENOTDIR, which is not absence.
  fs.writeFileSync(blobDirPath(store, MISSING), 'not a directory');
  const e = await t.throwsAsync(store.has(MISSING), { instanceOf: CabError });
  t.is(e?.code, 'ERR_IO');
});
