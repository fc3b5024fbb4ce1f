// Bucket-backed stores on the real radosgw (issue 19): fragments in the
// bucket, cas/ as a bounded cache, blobs published and read across stores
// on other folders, dedup across them, the bucket's config. See
// helpers/s3.ts for how the server is found (or the tests reported as not run).
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, type StoreOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { bucketOptions, fileBucket, objects, s3Test } from './helpers/s3.js';
import { collect, putBlob, readAll, tempDir } from './helpers/store.js';
import type { ExecutionContext } from 'ava';

/** A store in a fresh folder on the bucket, closed when the test ends. */
async function open(t: ExecutionContext, o: StoreOptions): Promise<BlobStore> {
  const s = await BlobStore.open(path.join(tempDir(t), 's'), o);
  t.teardown(() => s.close());
  return s;
}

/** Bytes of the fragment objects under a prefix. */
async function fragmentBytes(prefix: string): Promise<number> {
  let n = 0;
  for (const [k, size] of await objects(`${prefix}cas/`)) if (/\/cas\/[0-9a-f]{64}$/.test(k)) n += size;
  return n;
}

s3Test('a blob written by one store is read byte-exact by another on another folder; the bucket holds its fragments and descriptor', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await open(t, { objectStore, fragmentSize: 4 * 1024 * 1024 });
  const bytes = prngBytes('s3 store across', 13 * 1024 * 1024 + 777);
  const name = await putBlob(a, bytes);
  const keys = await objects(objectStore.prefix!);
  t.true(keys.has(`${objectStore.prefix}blob/${name}`), 'the descriptor is published');
  t.true(keys.has(`${objectStore.prefix}cabstore.json`), 'the config is there');
  t.true((await fragmentBytes(objectStore.prefix!)) >= bytes.length, 'every fragment is uploaded');
  // B learns of it on a miss by name (no sync has run since it opened: it opened after, so its open saw it too)
  const b = await open(t, { objectStore });
  t.deepEqual(await collect(b.listBlobIds()), [name], 'the first sync on open fetched the descriptor');
  t.true((await readAll(b, name)).equals(bytes));
  const st = await b.stat(name);
  t.true(st.finalized);
  t.deepEqual(await collect(b.blobChunkStream(name)), await collect(a.blobChunkStream(name)), 'the same chunks, indexed from the published descriptor');
  // one written after B opened: fetched on a miss by name, before any sync
  const later = await putBlob(a, prngBytes('s3 store later', 100_000));
  t.true(await b.has(later));
  t.true((await readAll(b, later)).equals(prngBytes('s3 store later', 100_000)));
});

s3Test('the same 256 MiB written on two stores is stored once in the bucket', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const bytes = prngBytes('s3 store dedup', 256 * 1024 * 1024);
  const dir = tempDir(t);
  const file = path.join(dir, 'data');
  fs.writeFileSync(file, bytes);
  const a = await open(t, { objectStore });
  const wa = await a.newBlobWriter();
  await wa.appendBytes({ file });
  await wa.close();
  const once = await fragmentBytes(objectStore.prefix!);
  t.true(once >= bytes.length && once < bytes.length * 1.01, `the first copy: ${once} bytes of fragments`);
  const b = await open(t, { objectStore });
  const wb = await b.newBlobWriter();
  await wb.appendBytes({ file });
  await wb.close();
  t.is(await fragmentBytes(objectStore.prefix!), once, 'the second store wrote no fragment bytes: its chunks were all in the bucket');
  t.deepEqual(wb.hash, wa.hash);
  t.true((await readAll(a, wb.name)).equals(bytes), 'and A reads what B wrote');
});

s3Test('cas/ is a bounded cache: evicted fragments are fetched again, checked against their chunk hashes', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0, cacheBytes: 3 * 1024 * 1024 });
  const a = await open(t, { objectStore, fragmentSize: 2 * 1024 * 1024 });
  const bytes = prngBytes('s3 store cache', 12 * 1024 * 1024);
  const name = await putBlob(a, bytes);
  const cached = () => {
    let n = 0;
    for (const ent of fs.readdirSync(path.join(a.root, 'cas'), { recursive: true, withFileTypes: true })) if (ent.isFile()) n += fs.statSync(path.join(ent.parentPath, ent.name)).size;
    return n;
  };
  await new Promise((r) => setTimeout(r, 100)); // eviction runs beside the writes
  t.true(cached() <= 3 * 1024 * 1024, `cas/ holds ${cached()} bytes, within cacheBytes`);
  t.true((await readAll(a, name)).equals(bytes), 'read back through the bucket');
  // Fetches the reader started ahead end (or stop) after it closed; then the cache is within its bound again.
  for (let i = 0; i < 100 && cached() > 3 * 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 50));
  t.true(cached() <= 3 * 1024 * 1024, `and the cache is within its bound again: ${cached()}`);
  // A fragment changed in the bucket: a read that fetches it fails its chunk check, never hands out wrong bytes.
  const b = await open(t, { objectStore });
  const { os } = await fileBucket();
  const frags = [...(await objects(`${objectStore.prefix}cas/`)).keys()];
  const victim = frags[0]!;
  const good = (await os.get(victim))!;
  const bad = Buffer.from(good);
  bad[1000] ^= 1;
  await os.put(victim, bad);
  const e = await t.throwsAsync(readAll(b, name), { instanceOf: CabError });
  t.is(e!.code, 'ERR_HASH_MISMATCH');
  await os.put(victim, good);
});

s3Test('the bucket fixes the chunker: a new store takes its parameters, other ones are refused', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const chunker = { min: 4096, avg: 16384, max: 65536 };
  const a = await open(t, { objectStore, chunker });
  t.deepEqual({ min: a.chunker.min, avg: a.chunker.avg, max: a.chunker.max }, chunker);
  const b = await open(t, { objectStore });
  t.deepEqual({ min: b.chunker.min, avg: b.chunker.avg, max: b.chunker.max }, chunker, 'a new store on the bucket chunks as the bucket says');
  const other = BlobStore.open(path.join(tempDir(t), 'c'), { objectStore, chunker: { min: 8192, avg: 32768, max: 131072 } });
  t.is((await t.throwsAsync(other, { instanceOf: CabError }))!.code, 'ERR_BAD_CHUNKER_PARAMS');
  // A store on disk with other parameters cannot join the bucket either.
  const dir = path.join(tempDir(t), 'd');
  await (await BlobStore.open(dir)).close();
  t.is((await t.throwsAsync(BlobStore.open(dir, { objectStore }), { instanceOf: CabError }))!.code, 'ERR_BAD_CHUNKER_PARAMS');
});

s3Test('a store remembers its bucket: reopened without objectStore it uses it; another bucket or prefix is refused', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const dir = path.join(tempDir(t), 's');
  const s = await BlobStore.open(dir, { objectStore });
  const name = await putBlob(s, prngBytes('s3 store remember', 50_000));
  await s.close();
  const again = await BlobStore.open(dir);
  t.teardown(() => again.close());
  t.truthy(again.shared, 'bucket-backed again');
  t.true((await readAll(again, name)).equals(prngBytes('s3 store remember', 50_000)));
  await again.close();
  const e = await t.throwsAsync(BlobStore.open(dir, { objectStore: { ...objectStore, prefix: 'elsewhere/' } }), { instanceOf: CabError });
  t.is(e!.code, 'ERR_BAD_ARGUMENT');
});

s3Test('a store kept on disk alone joins a bucket: its fragments are uploaded and its blobs published', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const dir = path.join(tempDir(t), 's');
  const local = await BlobStore.open(dir);
  const bytes = prngBytes('s3 store join', 3 * 1024 * 1024);
  const name = await putBlob(local, bytes);
  await local.close();
  const joined = await BlobStore.open(dir, { objectStore, create: false });
  await joined.close();
  const other = await open(t, { objectStore });
  t.true((await readAll(other, name)).equals(bytes));
});

s3Test('a blob deleted on one store goes from the others at their next sync; fsck checks fragments in the bucket', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0, cacheBytes: 0 });
  const a = await open(t, { objectStore, fragmentSize: 1024 * 1024 });
  const keep = await putBlob(a, prngBytes('s3 store keep', 3 * 1024 * 1024));
  const gone = await putBlob(a, prngBytes('s3 store gone', 100_000));
  const b = await open(t, { objectStore });
  t.deepEqual((await collect(b.listBlobIds())).sort(), [keep, gone].sort());
  await a.deleteBlob(gone);
  t.false((await objects(`${objectStore.prefix}blob/`)).has(`${objectStore.prefix}blob/${gone}`), 'its published descriptor is deleted');
  t.deepEqual(await b.sync(), { imported: 0, removed: 1, published: 0, damaged: [] });
  t.deepEqual(await collect(b.listBlobIds()), [keep]);
  // fsck of a store whose cache holds nothing: every fragment is looked for in the bucket
  const report = await b.fsck();
  t.deepEqual(report.problems, []);
  const { os } = await fileBucket();
  const victim = `${objectStore.prefix}cas/${(await b.snapshot(keep)).extents.fragments()[0]!}`;
  const saved = (await os.get(victim))!;
  await os.deleteMany([victim]);
  const missing = await b.fsck();
  t.true(missing.problems.some((p) => p.kind === 'missing-fragment' && victim.endsWith(p.fragment!)), JSON.stringify(missing.problems));
  await os.put(victim, saved);
});
