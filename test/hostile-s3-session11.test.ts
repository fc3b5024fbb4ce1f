// Eleventh hostile session: bucket-backed stores (issue 19) against an
// object store that fails, lies, loses objects or is shared with others,
// on a real radosgw (helpers/s3.ts finds it; the tests are NOT RUN without
// one). Each test is a finding (it fails on the code it was written
// against) or, named "held: ...", an attack the code withstood. The faults
// come from a TCP proxy or an HTTP middleman in front of the server (never
// by stopping the server, which other test files share) and from an S3
// client changing objects behind the stores' back.
import path from 'node:path';
import { BlobStore, CabError } from '../src/index.js';
import { ObjectStore } from '../src/bucket/object-store.js';
import { prngBytes } from '../tools/data.js';
import { S3_CREDENTIALS, S3_ENDPOINT, bucketOptions, emptyBucket, fileBucket, filesUnder, objects, s3Test } from './helpers/s3.js';
import { putBlob, readAll, tempDir } from './helpers/store.js';

const codeOf = (e: unknown) => (e instanceof CabError ? e.code : String(e));

// ---------------------------------------------------------------------------
// 1. A store opened on a bucket that is not the one it was on

s3Test('a store whose bucket prefix was emptied (or another endpoint with a bucket of that name) is refused on open with ERR_OBJECT_STORE; it used to make a new cabstore.json and remove every published blob from its folder', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0 });
  const dir = path.join(tempDir(t), 'a');
  const a = await BlobStore.open(dir, { objectStore: o });
  const bytes = prngBytes('s11 emptied', 300_000);
  const name = await putBlob(a, bytes);
  await a.close();
  const { os } = await fileBucket();
  const saved = new Map<string, Buffer>();
  for (const k of (await objects(o.prefix!)).keys()) saved.set(k, (await os.get(k))!);
  await os.deleteMany([...saved.keys()]);
  const e = await t.throwsAsync(BlobStore.open(dir), { instanceOf: CabError });
  t.is(e!.code, 'ERR_OBJECT_STORE', e!.message);
  t.like(e!.data, { s3Code: 'NoSuchKey', key: `${o.prefix}cabstore.json` });
  t.deepEqual([...(await objects(o.prefix!)).keys()], [], 'nothing was written to the bucket');
  t.true(filesUnder(dir, 'blob').some((f) => f.endsWith(name)), 'the blob is still in the folder');
  // The bucket back as it was: the store opens and reads the blob.
  for (const [k, body] of saved) await os.put(k, body);
  const again = await BlobStore.open(dir);
  t.teardown(() => again.close());
  t.true((await readAll(again, name)).equals(bytes));
});

s3Test('a store whose bucket is gone is refused on open (ERR_OBJECT_STORE, 404): the bucket is not made again empty', async (t) => {
  const base = await bucketOptions(t, { syncInterval: 0 });
  const bucket = `cabstore-test-gone-${Date.now().toString(36)}`;
  const o = { ...base, bucket };
  const dir = path.join(tempDir(t), 'a');
  const a = await BlobStore.open(dir, { objectStore: o });
  const name = await putBlob(a, prngBytes('s11 gone', 50_000));
  await a.close();
  const os = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket, region: 'us-east-1', credentials: S3_CREDENTIALS });
  t.teardown(() => os.close());
  await emptyBucket(os);
  const e = await t.throwsAsync(BlobStore.open(dir), { instanceOf: CabError });
  t.is(e!.code, 'ERR_OBJECT_STORE', e!.message);
  t.is(e!.data.status, 404);
  t.is(codeOf(await os.ensureBucket(false).catch((x: unknown) => x)), 'ERR_OBJECT_STORE', 'the bucket was not made again');
  t.true(filesUnder(dir, 'blob').some((f) => f.endsWith(name)), 'the blob is still in the folder');
});
