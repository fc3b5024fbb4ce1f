// The object-store module (src/bucket/object-store.ts) against the real
// radosgw: write-once puts, files in one PUT and in parts, ranges, paged
// listings, batch deletes, and how each failure is reported (only a real
// NoSuchKey is "absent"). See helpers/s3.ts for how the server is found.
import fs from 'node:fs';
import path from 'node:path';
import { CabError } from '../src/index.js';
import { ObjectStore } from '../src/bucket/object-store.js';
import { prngBytes } from '../tools/data.js';
import { S3_CREDENTIALS, S3_ENDPOINT, fileBucket, s3Test } from './helpers/s3.js';
import { tempDir } from './helpers/store.js';

const key = (t: { title: string }, k: string) => `objects-${Buffer.from(t.title).toString('hex').slice(0, 16)}/${k}`;

async function text(os: ObjectStore, k: string, range?: { start: number; end: number }): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of (await os.getStream(k, range)).chunks) parts.push(b);
  return Buffer.concat(parts);
}

s3Test('putIfAbsent writes once: a second put of the name is "exists" and changes nothing', async (t) => {
  const { os } = await fileBucket();
  const k = key(t, 'a');
  t.is(await os.putIfAbsent(k, Buffer.from('first')), 'created');
  t.is(await os.putIfAbsent(k, Buffer.from('second, longer')), 'exists');
  t.deepEqual(await os.get(k), Buffer.from('first'));
  t.deepEqual(await os.head(k).then((h) => h?.size), 5);
  t.is(await os.get(key(t, 'nothing')), undefined);
  t.is(await os.head(key(t, 'nothing')), undefined);
});

s3Test('a file goes up in one PUT below the multipart threshold and in parts above it; ranges read back exactly', async (t) => {
  const { os } = await fileBucket();
  const dir = tempDir(t);
  const bytes = prngBytes('s3 objects file', 12 * 1024 * 1024 + 12345);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, bytes);
  t.is(await os.putIfAbsent(key(t, 'one'), { file, size: bytes.length }), 'created');
  const big = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket: os.bucket, region: 'us-east-1', credentials: S3_CREDENTIALS });
  t.teardown(() => big.close());
  big.multipartThreshold = 5 * 1024 * 1024;
  t.is(await big.putIfAbsent(key(t, 'parts'), { file, size: bytes.length }), 'created');
  t.is(await big.putIfAbsent(key(t, 'parts'), { file, size: bytes.length }), 'exists', 'a HEAD finds it before any part is sent');
  for (const k of ['one', 'parts']) {
    t.true((await text(os, key(t, k))).equals(bytes), `${k}: whole`);
    t.true((await text(os, key(t, k), { start: 5_000_000, end: 5_000_100 })).equals(bytes.subarray(5_000_000, 5_000_100)), `${k}: a range`);
  }
  let open = 0;
  for await (const u of os.listUploads(key(t, ''))) if (u.key.startsWith(key(t, ''))) open++;
  t.is(open, 0, 'no upload is left open');
  // only the first `size` bytes of a file
  t.is(await os.putIfAbsent(key(t, 'head'), { file, size: 1000 }), 'created');
  t.true((await text(os, key(t, 'head'))).equals(bytes.subarray(0, 1000)));
});

s3Test('a listing pages through every object; deleteMany removes them, absent ones included', async (t) => {
  const { os } = await fileBucket();
  const names = Array.from({ length: 25 }, (_, i) => key(t, `k${String(i).padStart(3, '0')}`));
  await Promise.all(names.map((k) => os.put(k, Buffer.from(k))));
  const seen: string[] = [];
  for await (const o of os.list(key(t, ''), 7)) {
    seen.push(o.key);
    t.is(o.size, Buffer.byteLength(o.key));
    t.true(o.mtime.getTime() > Date.now() - 3_600_000 && o.mtime.getTime() < Date.now() + 3_600_000, 'the server time is about now');
  }
  t.deepEqual(seen, names);
  await os.deleteMany([...names, key(t, 'never-was')]);
  const left: string[] = [];
  for await (const o of os.list(key(t, ''))) left.push(o.key);
  t.deepEqual(left, []);
});

s3Test('an upload in parts left open is listed and aborted', async (t) => {
  const { os } = await fileBucket();
  const dir = tempDir(t);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, prngBytes('s3 objects abort', 140 * 1024 * 1024));
  // Parts under way when the upload is cancelled: it is aborted, not left open.
  const big = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket: os.bucket, region: 'us-east-1', credentials: S3_CREDENTIALS });
  t.teardown(() => big.close());
  big.multipartThreshold = 5 * 1024 * 1024;
  const ac = new AbortController();
  const up = big.putIfAbsent(key(t, 'short'), { file, size: 140 * 1024 * 1024 }, ac.signal);
  setTimeout(() => ac.abort(), 50);
  t.is((await t.throwsAsync(up, { instanceOf: CabError }))!.code, 'ERR_ABORTED');
  const open: string[] = [];
  for await (const u of os.listUploads(key(t, ''))) open.push(u.key);
  t.deepEqual(open, [], 'the failed upload was aborted');
  t.is(await os.head(key(t, 'short')), undefined);
});

s3Test('failures are ERR_OBJECT_STORE with the S3 code and status, never "absent"', async (t) => {
  const { os } = await fileBucket();
  const code = async (p: Promise<unknown>) => {
    const e = await t.throwsAsync(p, { instanceOf: CabError });
    return [e!.code, (e as CabError).data.s3Code, (e as CabError).data.status];
  };
  const nobucket = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket: 'cabstore-test-no-such-bucket', region: 'us-east-1', credentials: S3_CREDENTIALS });
  t.teardown(() => nobucket.close());
  t.deepEqual(await code(nobucket.get('x')), ['ERR_OBJECT_STORE', 'NoSuchBucket', 404], 'a GET in a missing bucket is not an absent object');
  t.deepEqual(await code(nobucket.head('x')), ['ERR_OBJECT_STORE', 'NotFound', 404], 'nor is a HEAD');
  t.deepEqual(await code(nobucket.ensureBucket(false)), ['ERR_OBJECT_STORE', 'NotFound', 404]);
  const badKey = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket: os.bucket, region: 'us-east-1', credentials: { accessKeyId: 'nobody', secretAccessKey: 'wrong' } });
  t.teardown(() => badKey.close());
  const [c, , status] = await code(badKey.get('x'));
  t.deepEqual([c, status], ['ERR_OBJECT_STORE', 403]);
  const down = await ObjectStore.connect({ endpoint: 'http://127.0.0.1:1', bucket: os.bucket, region: 'us-east-1', credentials: S3_CREDENTIALS });
  t.teardown(() => down.close());
  t.deepEqual(await code(down.head('x')), ['ERR_OBJECT_STORE', 'ECONNREFUSED', undefined]);
});
