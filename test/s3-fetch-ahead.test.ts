// A sequential cold read of a bucket-backed store fetches ahead: the next
// fragments' GETs are sent before the reader needs them (PREFETCH in
// src/disk/blob-bytes.ts), on a second fetching thread while the first is
// busy (src/disk/fetch-thread.ts), and no more than PREFETCH_FRAGMENTS at a
// time; a chunk changed in the bucket in the middle of a stream block;
// rings reused across file systems; the second thread started early. On the
// real radosgw. Serial: the fetching threads are this file's.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError } from '../src/index.js';
import { PREFETCH_FRAGMENTS } from '../src/disk/blob-bytes.js';
import { fetchThreadsBusy } from '../src/disk/fetch-thread.js';
import { prngBytes } from '../tools/data.js';
import { blobWithBadByte, bucketOptions, fileBucket, filesUnder, objects, openTemp, s3Test, until } from './helpers/s3.js';
import { putBlob, readAll, tempDir } from './helpers/store.js';

const MiB = 1024 * 1024;

// First in this file: no GET has run in this process before it.
s3Test.serial('the second fetching thread starts once the first GET answered, before any second GET needs it', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore });
  const bytes = prngBytes('s3 one fragment', 3 * MiB + 5);
  const name = await putBlob(a, bytes);
  t.is((await objects(`${objectStore.prefix}cas/`)).size, 1, 'one fragment');
  t.deepEqual(fetchThreadsBusy(), [], 'no fetching thread yet');
  const b = await openTemp(t, { objectStore });
  t.true((await readAll(b, name)).equals(bytes), 'byte-exact');
  const busy = fetchThreadsBusy();
  t.is(busy.length, 2, 'two fetching threads after one GET');
  t.is(busy[1], 0, 'the second one has had no GET');
});

s3Test.serial('a stream fetches the next fragments while it reads one, on two fetching threads at once; every byte exact, every fragment cached whole', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 12 * MiB });
  const bytes = prngBytes('s3 fetch ahead', 50 * MiB + 4321);
  const name = await putBlob(a, bytes);
  const frags = await objects(`${objectStore.prefix}cas/`);
  t.true(frags.size >= 4, `${frags.size} fragments`);
  const b = await openTemp(t, { objectStore });
  const r = await b.newBlobReader(name);
  let both = 0;
  const seen = new Set<number>();
  const parts: Buffer[] = [];
  for await (const x of r.stream()) {
    const busy = fetchThreadsBusy();
    busy.forEach((n, i) => n > 0 && seen.add(i));
    if (busy.length === 2 && busy[0]! > 0 && busy[1]! > 0) both++;
    parts.push(x as Buffer);
  }
  await r.close();
  t.true(Buffer.concat(parts).equals(bytes), 'byte-exact');
  t.is(fetchThreadsBusy().length, 2, 'two fetching threads');
  t.true(seen.size === 2 && both > 0, `GETs under way on both threads at once (${both} blocks saw it)`);
  // Rings reused from GET to GET (their aligned offset remembered): every cache file whole and right.
  await until(() => filesUnder(b.root, 'tmp').length === 0 && filesUnder(b.root, 'cas').length === frags.size, 'every fragment in cas/');
  const sizes = filesUnder(b.root, 'cas').map((f) => fs.statSync(f).size).sort((x, y) => x - y);
  t.deepEqual(sizes, [...frags.values()].sort((x, y) => x - y), 'each cached file is its object, whole');
  const c = await openTemp(t, { objectStore });
  fs.rmSync(path.join(c.root, 'cas'), { recursive: true, force: true });
  fs.cpSync(path.join(b.root, 'cas'), path.join(c.root, 'cas'), { recursive: true });
  t.true((await readAll(c, name)).equals(bytes), 'the cached files read (and checked) as the blob');
});

s3Test.serial('a reader that closes stops every GET it started, on either thread: no temp file left, nothing cached', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  // The first block sends the GETs of the fragments of the next 16 MiB: the first two, on the two threads.
  const a = await openTemp(t, { objectStore, fragmentSize: 10 * MiB });
  const bytes = prngBytes('s3 fetch ahead stop', 80 * MiB);
  const name = await putBlob(a, bytes);
  const b = await openTemp(t, { objectStore });
  const r = await b.newBlobReader(name);
  const s = r.stream();
  const first = (await s[Symbol.asyncIterator]().next()).value as Buffer;
  t.true(first.equals(bytes.subarray(0, first.length)));
  s.destroy();
  await r.close();
  // Unstopped, a GET sent ahead would be held for a second and then run to the end into cas/ (see fetch-thread.ts).
  await new Promise((res) => setTimeout(res, 1500));
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp files to go');
  t.deepEqual(filesUnder(b.root, 'cas'), [], 'a fragment no one reads is not cached');
  t.true((await readAll(b, name)).equals(bytes), 'read again, fetched again');
});

s3Test.serial(`fetching ahead stops at ${PREFETCH_FRAGMENTS} fragments, however small they are`, async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 1 * MiB });
  const bytes = prngBytes('s3 fetch ahead cap', 24 * MiB);
  const name = await putBlob(a, bytes);
  t.true((await objects(`${objectStore.prefix}cas/`)).size >= 16, 'many small fragments');
  const b = await openTemp(t, { objectStore });
  const r = await b.newBlobReader(name);
  const buf = Buffer.alloc(64 * 1024);
  t.is(await r.readAt(buf, 0), buf.length);
  t.true(buf.equals(bytes.subarray(0, buf.length)));
  // The GETs sent ahead run to the end once held for a second: then each fragment fetched is in cas/.
  await new Promise((res) => setTimeout(res, 1500));
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the fetches to end');
  const fetched = filesUnder(b.root, 'cas').length;
  t.true(fetched >= 2 && fetched <= PREFETCH_FRAGMENTS + 1, `${fetched} fragments fetched for a read of the first 64 KiB`);
  await r.close();
});

s3Test.serial('a stream over a chunk changed in the bucket: every block before it byte-exact, then ERR_HASH_MISMATCH at that chunk\'s blob offset, nothing cached', async (t) => {
  const at = 3 * MiB + 500 * 1024; // inside a stream block, with whole chunks before it in the block
  const { b, name, bytes, chunk: c, restore } = await blobWithBadByte(t, 's3 fetch ahead run', 5 * MiB + 99, at, 0x10);
  const r = await b.newBlobReader(name);
  const got: Buffer[] = [];
  const e = await t.throwsAsync(
    (async () => {
      for await (const x of r.stream()) got.push(x as Buffer);
    })(),
    { instanceOf: CabError },
  );
  t.is(e!.code, 'ERR_HASH_MISMATCH', e!.message);
  t.like(e!.data, { blob: name, offset: c.start, size: c.size });
  const before = Buffer.concat(got);
  t.true(before.length > 0 && before.length <= c.start && before.equals(bytes.subarray(0, before.length)), `${before.length} bytes before it, byte-exact`);
  await r.close();
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  t.deepEqual(filesUnder(b.root, 'cas'), [], 'the copy that failed is not cached');
  await restore();
  t.true((await readAll(b, name)).equals(bytes), 'fetched anew once the object is right');
});

s3Test.serial('rings reused across stores on two file systems (a disk, a tmpfs) in one process: every read byte-exact, every fragment cached whole', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 10 * MiB });
  const bytes = prngBytes('s3 fetch ahead two file systems', 30 * MiB + 77);
  const name = await putBlob(a, bytes);
  const sizes = [...(await objects(`${objectStore.prefix}cas/`)).values()].sort((x, y) => x - y);
  const tmpfs = fs.mkdtempSync(path.join(tempDir(t), 'tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=200m', 'tmpfs', tmpfs]);
  t.teardown(() => {
    execFileSync('umount', ['-l', tmpfs]);
    fs.rmSync(tmpfs, { recursive: true, force: true });
  });
  // Disk, tmpfs, disk again: the offset a ring's direct writes take is remembered per folder (see ringAt).
  for (const root of [path.join(tempDir(t), 'd1'), path.join(tmpfs, 's'), path.join(tempDir(t), 'd2')]) {
    const b = await BlobStore.open(root, { objectStore });
    try {
      t.true((await readAll(b, name)).equals(bytes), root);
      await until(() => filesUnder(root, 'tmp').length === 0 && filesUnder(root, 'cas').length === sizes.length, `every fragment in ${root}/cas`);
      t.deepEqual(filesUnder(root, 'cas').map((f) => fs.statSync(f).size).sort((x, y) => x - y), sizes, `${root}: each cached file whole`);
    } finally {
      await b.close();
    }
  }
});
