// Cold reads of a bucket-backed store through its fetching thread
// (src/disk/fetch-thread.ts): reads in and behind the shared ring and far
// ahead of it, a reader that stops mid-fetch, failures the thread reports,
// and the presigned GET it sends, on the real radosgw.
import fs from 'node:fs';
import http from 'node:http';
import { CabError } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { S3_ENDPOINT, blobWithBadByte, bucketOptions, fileBucket, filesUnder, objects, openTemp, s3Test, until } from './helpers/s3.js';
import { putBlob, readAll } from './helpers/store.js';
import { dropConnection, tcpProxy } from '../tools/proxy.js';
import type { ExecutionContext } from 'ava';

const MiB = 1024 * 1024;

s3Test('a fragment larger than the ring, read far ahead, in the ring and behind it, is byte-exact; then it is in cas/', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 40 * MiB });
  const bytes = prngBytes('s3 fetch ring', 30 * MiB + 12345);
  const name = await putBlob(a, bytes);
  const b = await openTemp(t, { objectStore });
  const r = await b.newBlobReader(name);
  const at = async (pos: number, n: number) => {
    const buf = Buffer.alloc(n);
    t.is(await r.readAt(buf, pos), n);
    t.true(buf.equals(bytes.subarray(pos, pos + n)), `bytes ${pos}..${pos + n}`);
  };
  await at(25 * MiB, MiB); // far past what has arrived: a range GET of its own
  await at(0, 2 * MiB); // at the start, as it arrives
  for (let pos = 2 * MiB; pos < bytes.length; pos += 3 * MiB) await at(pos, Math.min(3 * MiB, bytes.length - pos)); // following it to the end
  await at(MiB + 7, 4 * MiB); // long out of the 8 MiB ring: from the cache file
  await at(bytes.length - MiB, MiB); // in the ring's last bytes, but the ring went once they were read: from the file
  await r.close();
  await until(() => filesUnder(b.root, 'cas').length === 1, 'the fragment in cas/');
  t.is(fs.statSync(filesUnder(b.root, 'cas')[0]!).size, bytes.length, 'the whole fragment is cached');
  t.deepEqual(filesUnder(b.root, 'tmp'), [], 'no temp file left');
  t.true((await readAll(b, name)).equals(bytes), 'and read from the cache');
});

s3Test('a reader that does not keep up holds the GET back for a while only: the fragment is fetched and cached while it waits', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 64 * MiB });
  const bytes = prngBytes('s3 fetch stall', 40 * MiB);
  const name = await putBlob(a, bytes);
  const b = await openTemp(t, { objectStore });
  const r = await b.newBlobReader(name);
  const buf = Buffer.alloc(MiB);
  t.is(await r.readAt(buf, 0), MiB);
  // The GET stops at the ring's end for this reader, then goes on without it (STALL_MS, 1 s): the whole fragment lands in cas/.
  await until(() => filesUnder(b.root, 'cas').length === 1, 'the fragment in cas/ while the reader is open');
  t.is(fs.statSync(filesUnder(b.root, 'cas')[0]!).size, bytes.length);
  const rest = Buffer.alloc(bytes.length - MiB);
  await r.readFully(rest, MiB);
  t.true(rest.equals(bytes.subarray(MiB)), 'the rest, read from the file');
  await r.close();
});

s3Test('a reader that stops mid-fetch stops the GET: its temp file goes, nothing is cached, and the next read fetches it again', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 128 * MiB });
  // One fragment large enough that its GET is far from done when the reader closes (about 10 ms after it opened).
  const bytes = prngBytes('s3 fetch stop', 80 * MiB);
  const name = await putBlob(a, bytes);
  const b = await openTemp(t, { objectStore });
  const r = await b.newBlobReader(name);
  const buf = Buffer.alloc(MiB);
  t.is(await r.readAt(buf, 0), MiB);
  t.true(buf.equals(bytes.subarray(0, MiB)));
  await r.close();
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  t.deepEqual(filesUnder(b.root, 'cas'), [], 'a fragment no one reads is not cached');
  t.true((await readAll(b, name)).equals(bytes), 'read again, fetched again');
});

s3Test('a fragment missing from the bucket is ERR_FRAGMENT_MISSING; one changed there is ERR_HASH_MISMATCH, never its bytes', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 2 * MiB });
  const bytes = prngBytes('s3 fetch missing', 5 * MiB);
  const name = await putBlob(a, bytes);
  const { os } = await fileBucket();
  const frags = [...(await objects(`${objectStore.prefix}cas/`)).keys()].sort();
  t.true(frags.length >= 2, `${frags.length} fragments`);
  const victim = frags[0]!;
  const saved = (await os.get(victim))!;
  await os.deleteMany([victim]);
  const b = await openTemp(t, { objectStore: { ...objectStore, cacheBytes: 0 } });
  const e = await t.throwsAsync(readAll(b, name), { instanceOf: CabError });
  t.is(e!.code, 'ERR_FRAGMENT_MISSING', e!.message);
  const bad = Buffer.from(saved);
  bad[bad.length - 1] ^= 0x80;
  await os.put(victim, bad);
  const c = await openTemp(t, { objectStore: { ...objectStore, cacheBytes: 0 } });
  t.is((await t.throwsAsync(readAll(c, name), { instanceOf: CabError }))!.code, 'ERR_HASH_MISMATCH');
  await os.put(victim, saved);
  t.true((await readAll(c, name)).equals(bytes));
});

s3Test('the fetching thread checks the chunks as they land: those before a changed one are served, that one is ERR_HASH_MISMATCH at its blob offset, nothing is cached', async (t) => {
  const { b, name, bytes, fragment, chunk: c, restore } = await blobWithBadByte(t, 's3 fetch thread check', 6 * MiB + 777, 4 * MiB + 3, 0x01);
  const r = await b.newBlobReader(name);
  t.true(c.size > 0 && c.start > 0, 'the changed chunk');
  const before = Buffer.concat(await r.stream({ end: c.start }).toArray());
  t.true(before.equals(bytes.subarray(0, c.start)), 'the chunks before it, byte-exact');
  const e = await t.throwsAsync(r.stream({ start: c.start, end: c.start + c.size }).toArray(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_HASH_MISMATCH', e!.message);
  t.like(e!.data, { blob: name, offset: c.start, size: c.size });
  // Found by the fetching thread (its error, about the fragment, is the cause), not by a check here.
  t.like((e!.cause as CabError).data, { fragment: fragment.split('/').pop(), offset: c.start, size: c.size });
  await r.close();
  // readAt inside a chunk (a chunk read whole, then cut): the same check, on a fetch of its own.
  const r2 = await b.newBlobReader(name);
  const some = Buffer.alloc(1000);
  t.is(await r2.readAt(some, 12345), 1000);
  t.true(some.equals(bytes.subarray(12345, 13345)));
  const e2 = await t.throwsAsync(r2.readAt(some, c.start + 10), { instanceOf: CabError });
  t.is(e2!.code, 'ERR_HASH_MISMATCH', e2!.message);
  t.like(e2!.data, { blob: name, offset: c.start, size: c.size });
  t.like((e2!.cause as CabError).data, { offset: c.start, size: c.size });
  await r2.close();
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  t.deepEqual(filesUnder(b.root, 'cas'), [], 'the copy that failed is not cached');
  await restore();
  t.true((await readAll(b, name)).equals(bytes), 'fetched anew once the object is right');
});

s3Test('a prefix with characters that need escaping: keys are signed as the server reads them', async (t) => {
  const base = await bucketOptions(t, { syncInterval: 0 });
  const objectStore = { ...base, prefix: `${base.prefix!.slice(0, -1)}we+ird(x)*'!~=,;@$&/` };
  const a = await openTemp(t, { objectStore, fragmentSize: MiB });
  const bytes = prngBytes('s3 fetch escape', 3 * MiB + 5);
  const name = await putBlob(a, bytes);
  const b = await openTemp(t, { objectStore });
  t.true((await readAll(b, name)).equals(bytes));
});

/** A second store reading through a TCP proxy in front of the server (the first writes to the server itself). */
async function behindProxy(t: ExecutionContext, bytes: Buffer, tamper?: (piece: Buffer) => void) {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 64 * MiB });
  const name = await putBlob(a, bytes);
  const proxy = await tcpProxy(() => Number(new URL(S3_ENDPOINT).port), tamper ? { tamper } : {});
  t.teardown(() => proxy.close());
  const b = await openTemp(t, { objectStore: { ...objectStore, endpoint: `http://127.0.0.1:${proxy.port}`, cacheBytes: 0 } });
  return { b, name, proxy };
}

s3Test('a connection cut mid-body is ERR_OBJECT_STORE for the read, leaves no temp file, and the next read fetches anew', async (t) => {
  const bytes = prngBytes('s3 fetch cut', 12 * MiB);
  const { b, name, proxy } = await behindProxy(t, bytes);
  const r = await b.newBlobReader(name);
  proxy.next = { budget: 3 * MiB, onCut: dropConnection }; // the fragment's GET is the next connection
  const e = await t.throwsAsync(readAll(b, name), { instanceOf: CabError });
  t.is(e!.code, 'ERR_OBJECT_STORE', e!.message);
  t.is(e!.data.s3Code, 'ECONNRESET');
  await r.close();
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  t.true((await readAll(b, name)).equals(bytes), 'fetched again, whole');
});

s3Test('an answer without Content-Length is read through the http module instead', async (t) => {
  const bytes = prngBytes('s3 fetch plain', 5 * MiB + 3);
  let armed = false;
  let tampered = 0;
  const { b, name, proxy } = await behindProxy(t, bytes, (piece) => {
    // The head of the fragment's answer (the store's other requests get small ones).
    const m = armed ? /Content-Length: (\d+)/i.exec(piece.toString('latin1', 0, 4096)) : null;
    if (!m || Number(m[1]) < bytes.length) return;
    const i = m.index;
    piece.write('Content-Lengtx:', i, 'latin1'); // the same length: the head stays well-formed, with no length
    armed = false;
    tampered++;
  });
  const r = await b.newBlobReader(name);
  const before = proxy.connections;
  armed = true;
  t.true((await readAll(b, name)).equals(bytes));
  t.is(tampered, 1);
  t.true(proxy.connections >= before + 2, 'the answer that had no length, then the GET again');
  await r.close();
});

/** A signed GET sent with plain http: the status and the body. */
function send(g: { url: string; headers: Record<string, string> }): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    http
      .get(g.url, { headers: g.headers }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(parts) }));
      })
      .on('error', reject);
  });
}

s3Test('signedGet: the server takes the presigned GET, whole and with a Range header, and refuses a changed signature', async (t) => {
  const { os } = await fileBucket();
  const key = `sig-${Date.now()}/a b+c`;
  const body = prngBytes('s3 fetch sig', 1000);
  await os.put(key, body);
  const g = await os.signedGet(key);
  const whole = await send(g);
  t.is(whole.status, 200);
  t.true(whole.body.equals(body));
  const part = await send({ url: g.url, headers: { ...g.headers, range: 'bytes=10-19' } });
  t.is(part.status, 206);
  t.true(part.body.equals(body.subarray(10, 20)));
  const url = new URL(g.url);
  const sig = url.searchParams.get('X-Amz-Signature')!;
  url.searchParams.set('X-Amz-Signature', (sig[0] === '0' ? '1' : '0') + sig.slice(1));
  const wrong = await send({ url: url.toString(), headers: g.headers });
  t.is(wrong.status, 403);
  t.regex(wrong.body.toString(), /SignatureDoesNotMatch/);
  await os.deleteMany([key]);
});
