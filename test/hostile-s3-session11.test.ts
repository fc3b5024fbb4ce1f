// Eleventh hostile session: bucket-backed stores (issue 19) against an
// object store that fails, lies, loses objects or is shared with others,
// on a real radosgw (helpers/s3.ts finds it; the tests are NOT RUN without
// one). Each test is a finding (it fails on the code it was written
// against) or, named "held: ...", an attack the code withstood. The faults
// come from a TCP proxy or an HTTP middleman in front of the server (never
// by stopping the server, which other test files share) and from an S3
// client changing objects behind the stores' back.
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { CreateMultipartUploadCommand, S3Client } from '@aws-sdk/client-s3';
import { BlobStore, CabError } from '../src/index.js';
import { ObjectStore } from '../src/bucket/object-store.js';
import { prngBytes } from '../tools/data.js';
import { S3_CREDENTIALS, S3_ENDPOINT, bucketOptions, emptyBucket, fileBucket, filesUnder, objects, s3Test } from './helpers/s3.js';
import { putBlob, readAll, tempDir } from './helpers/store.js';
import { connectPeer, servePeer } from './helpers/peers.js';
import { dropConnection, tcpProxy } from '../tools/proxy.js';

const codeOf = (e: unknown) => (e instanceof CabError ? e.code : String(e));
const MiB = 1024 * 1024;

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

// ---------------------------------------------------------------------------
// 2. GC on a bucket shared with other stores (other prefixes) and other applications

s3Test('gc keeps to its own keys: uploads of other applications and of a store at a longer prefix stay, and so does a store at prefix clock/; it reads no one else\'s objects', async (t) => {
  const base = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const bucket = `cabstore-test-mixed-${Date.now().toString(36)}`;
  const os = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket, region: 'us-east-1', credentials: S3_CREDENTIALS });
  t.teardown(async () => {
    await emptyBucket(os);
    os.close();
  });
  // A store at the bucket's root, one at clock/ and one at nodes/ (each a prefix of its own, as the docs allow).
  const root = await BlobStore.open(path.join(tempDir(t), 'root'), { objectStore: { ...base, bucket, prefix: '' } });
  t.teardown(() => root.close());
  await putBlob(root, prngBytes('s11 root', 1000));
  const others = [];
  for (const prefix of ['clock/', 'nodes/']) {
    const s = await BlobStore.open(path.join(tempDir(t), prefix.slice(0, -1)), { objectStore: { ...base, bucket, prefix }, fragmentSize: 1024 * 1024 });
    const bytes = prngBytes(`s11 ${prefix}`, 3 * 1024 * 1024);
    others.push({ prefix, bytes, name: await putBlob(s, bytes) });
    await s.close();
  }
  // Multipart uploads under way: another application's, and one of a store at tenant/.
  const c = new S3Client({ endpoint: S3_ENDPOINT, region: 'us-east-1', forcePathStyle: true, credentials: S3_CREDENTIALS as never });
  t.teardown(() => c.destroy());
  const uploads = ['backups/db.tar', `tenant/cas/${'ab'.repeat(32)}`];
  for (const Key of uploads) await c.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key }));
  await new Promise((r) => setTimeout(r, 1100)); // older than gcGrace (0) by the server's clock, to the second
  const down = root.shared!.bucket.os.stats.bytesDown;
  const r = (await root.gc()).bucket!;
  t.is(r.uploadsAborted, 0, 'none of those uploads is this store\'s');
  const left: string[] = [];
  for await (const u of os.listUploads('')) left.push(u.key);
  t.deepEqual(left.sort(), uploads.sort(), 'the uploads are all still open');
  t.true(root.shared!.bucket.os.stats.bytesDown - down < 64 * 1024, `gc read ${root.shared!.bucket.os.stats.bytesDown - down} bytes: not the other stores' fragments`);
  for (const x of others) {
    const s = await BlobStore.open(path.join(tempDir(t), `${x.prefix.slice(0, -1)}-reader`), { objectStore: { ...base, bucket, prefix: x.prefix, cacheBytes: 0 } });
    t.true((await readAll(s, x.name)).equals(x.bytes), `the store at ${x.prefix} reads its blob whole`);
    t.deepEqual((await s.fsck()).problems, [], `fsck of the store at ${x.prefix}`);
    await s.close();
  }
});

// ---------------------------------------------------------------------------
// 3. A server whose listings are wrong

/** What a middleman's hook sees of one request: its method and URL, and the answer's status and body (to change). */
interface Exchange {
  method: string;
  url: URL;
  status: number;
  body: Buffer;
}

/** A request body as a middleman's `body` hook sees it: one piece of it, at byte `at` of the body; it may change the piece in place. */
type BodyHook = (req: { method: string; url: URL }, piece: Buffer, at: number) => void;

/**
 * An HTTP middleman on 127.0.0.1 in front of the S3 server: every request
 * goes through as it came (its Host header too, so its signature holds),
 * except what `body` changes of its body on the way; `answer` may change
 * the answer's body (its length is set again) before the client sees it.
 */
async function s3Middleman(hooks: { answer?: (x: Exchange) => Buffer | undefined; body?: BodyHook }): Promise<{ endpoint: string; close(): Promise<void> }> {
  const target = new URL(S3_ENDPOINT);
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (ans) => {
      const parts: Buffer[] = [];
      ans.on('data', (d: Buffer) => parts.push(d));
      ans.on('end', () => {
        const body = Buffer.concat(parts);
        const out = req.method === 'HEAD' ? undefined : hooks.answer?.({ method: req.method!, url, status: ans.statusCode!, body });
        const headers = { ...ans.headers };
        if (out) {
          delete headers['transfer-encoding'];
          headers['content-length'] = String(out.length);
        }
        res.writeHead(ans.statusCode!, headers);
        res.end(out ?? body);
      });
    });
    up.on('error', () => res.destroy());
    let at = 0;
    req.on('data', (d: Buffer) => {
      hooks.body?.({ method: req.method!, url }, d, at);
      at += d.length;
      up.write(d);
    });
    req.on('end', () => up.end());
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return {
    endpoint: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    close: () => new Promise<void>((r) => (srv.closeAllConnections(), srv.close(() => r()))),
  };
}

/** Whether an exchange is a listing of keys under `prefix`. */
const listing = (x: Exchange, prefix: string) => x.method === 'GET' && x.url.searchParams.get('list-type') === '2' && x.url.searchParams.get('prefix') === prefix;

s3Test('a listing that says it is truncated but gives no continuation token is ERR_OBJECT_STORE: gc used to take it for the whole listing and delete the fragments of the published blobs it left out', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o, fragmentSize: 1024 * 1024 });
  const blobs = [];
  for (let i = 0; i < 3; i++) {
    const bytes = prngBytes(`s11 truncated ${i}`, 2 * 1024 * 1024);
    blobs.push({ bytes, name: await putBlob(a, bytes) });
  }
  await a.close();
  // Once armed, every listing of blob/ keeps its first key only, says there is more, and gives no token.
  let armed = false;
  const mid = await s3Middleman({ answer: (x) => {
    if (!armed || !listing(x, `${o.prefix}blob/`)) return undefined;
    const s = x.body.toString();
    const first = s.indexOf('</Contents>') + '</Contents>'.length;
    const rest = s.lastIndexOf('</Contents>') + '</Contents>'.length;
    return Buffer.from((s.slice(0, first) + s.slice(rest)).replace(/<IsTruncated>false<\/IsTruncated>/, '<IsTruncated>true</IsTruncated>').replace(/<NextContinuationToken>.*?<\/NextContinuationToken>/, ''));
  } });
  t.teardown(() => mid.close());
  const g = await BlobStore.open(path.join(tempDir(t), 'g'), { objectStore: { ...o, endpoint: mid.endpoint } });
  armed = true;
  const e = await t.throwsAsync(g.gc(), { instanceOf: CabError });
  t.is(e?.code, 'ERR_OBJECT_STORE', e?.message);
  await g.close();
  const b = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: { ...o, cacheBytes: 0 } });
  t.teardown(() => b.close());
  for (const x of blobs) t.true((await readAll(b, x.name)).equals(x.bytes), `blob ${x.name} is whole`);
});

s3Test('a server that answers a continued listing with its first page again is ERR_OBJECT_STORE, not a listing that never ends', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o });
  t.teardown(() => a.close());
  await putBlob(a, prngBytes('s11 again', 1000));
  // A server that ignores continuation-token (a ListObjects v1 server reading v2 requests): the same page, always truncated.
  const mid = await s3Middleman({ answer: (x) => {
    if (!listing(x, `${o.prefix}cas/`)) return undefined;
    return Buffer.from(x.body.toString().replace(/<IsTruncated>false<\/IsTruncated>/, '<IsTruncated>true</IsTruncated><NextContinuationToken>again</NextContinuationToken>'));
  } });
  t.teardown(() => mid.close());
  const g = await BlobStore.open(path.join(tempDir(t), 'g'), { objectStore: { ...o, endpoint: mid.endpoint } });
  t.teardown(() => g.close());
  const outcome = await Promise.race([g.gc().then(() => 'done', codeOf), new Promise((r) => setTimeout(() => r('still listing after 10 s'), 10_000))]);
  t.is(outcome, 'ERR_OBJECT_STORE');
});

// ---------------------------------------------------------------------------
// 4. Two folders on one bucket

s3Test('a copy of a store\'s folder takes a node of its own: it used to drop the original\'s lease as its own dead process\'s, and gc deleted fragments the original had flushed', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0, cacheBytes: 0 });
  const dirA = path.join(tempDir(t), 'a');
  const dirB = path.join(tempDir(t), 'b');
  const bytes = prngBytes('s11 copied folder', 5 * MiB);
  let a = await BlobStore.open(dirA, { objectStore: o, fragmentSize: MiB });
  let w = await a.newBlobWriter();
  const name = w.name;
  await w.appendBytes(bytes.subarray(0, 1.5 * MiB));
  await w.closeWithoutFinalize();
  await a.close();
  const node = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'cabstore.json'), 'utf8')).objectStore.node;
  const nodeA = node(dirA);
  // The operator makes a second node from a copy of the first's folder; the first goes on writing.
  fs.cpSync(dirA, dirB, { recursive: true });
  a = await BlobStore.open(dirA, { objectStore: o, fragmentSize: MiB });
  w = await a.resumeBlobWriter(name);
  await w.appendBytes(bytes.subarray(1.5 * MiB, 4 * MiB));
  await w.closeWithoutFinalize(); // durable at 4 MiB: its fragments held in A's lease while A is down
  await a.close();
  const b = await BlobStore.open(dirB, { objectStore: o, fragmentSize: MiB });
  t.not(node(dirB), nodeA, 'the copy has a node of its own');
  t.is((await b.gc()).bucket!.fragmentsDeleted, 0, 'gc on the copy deletes none of what A holds');
  await b.close();
  a = await BlobStore.open(dirA, { objectStore: o, fragmentSize: MiB });
  t.teardown(() => a.close());
  t.is(node(dirA), nodeA, 'A keeps its node');
  w = await a.resumeBlobWriter(name);
  t.is(w.size, 4 * MiB);
  await w.appendBytes(bytes.subarray(w.size));
  await w.close();
  t.true((await readAll(a, name)).equals(bytes), 'A\'s blob is whole, read from the bucket');
});

// ---------------------------------------------------------------------------
// 5. Damage: in the bucket, in the cache, on the way

/** Changes one byte of a file in place. */
function flipByte(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0]! ^= 0x55;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
}

s3Test('fsck --verify --repair of a bucket-backed store whose cached copy of a fragment is damaged (the bucket\'s is whole) fetches it again and records no damage: it used to record the blob as damaged, unreadable here for good', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o, fragmentSize: MiB });
  t.teardown(() => a.close());
  const bytes = prngBytes('s11 cache damage', 3 * MiB);
  const name = await putBlob(a, bytes);
  // And an unfinalized blob (checked chunk by chunk, without a blob hash).
  const open = prngBytes('s11 cache damage open', 2 * MiB + 5000);
  const w = await a.newBlobWriter();
  await w.appendBytes(open);
  await w.closeWithoutFinalize();
  const cached = filesUnder(a.root, 'cas');
  t.true(cached.length >= 4, `${cached.length} fragments cached`);
  for (const f of cached) flipByte(f, 1000);
  t.deepEqual((await a.fsck({ verify: true })).problems, [], 'the cached copies are only copies: fetched again, they are whole');
  for (const f of filesUnder(a.root, 'cas')) flipByte(f, 2000);
  const r = await a.fsck({ verify: true, repair: true });
  t.deepEqual(r.problems, [], 'nothing recorded as damaged');
  t.deepEqual(r.damaged, []);
  t.true((await readAll(a, name)).equals(bytes), 'the blob reads here');
  // A cached copy cut short (a plain fsck reads the chunks of a short fragment): not damage either.
  for (const f of filesUnder(a.root, 'cas')) fs.truncateSync(f, 500_000);
  const short = await a.fsck({ repair: true });
  t.deepEqual(short.problems, [], 'a short cached copy is fetched again, not recorded');
  t.true((await readAll(a, name)).equals(bytes), 'the blob reads here');
  const again = await a.resumeBlobWriter(w.name);
  t.is(again.size, open.length);
  await again.close();
  t.true((await readAll(a, w.name)).equals(open), 'and the unfinalized one, finished');
});

s3Test('a bucket-backed store with a corrupt descriptor of an unpublished blob in its folder opens (only that blob fails, as on disk), and every gc on the bucket stops until it is deleted: it used to refuse to open at all (not even for fsck)', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const dir = path.join(tempDir(t), 'a');
  let a = await BlobStore.open(dir, { objectStore: o, fragmentSize: MiB });
  const keep = prngBytes('s11 corrupt keep', MiB);
  const kept = await putBlob(a, keep);
  const w = await a.newBlobWriter();
  await w.appendBytes(prngBytes('s11 corrupt 1', 3 * MiB));
  await w.flush();
  await w.appendBytes(prngBytes('s11 corrupt 2', MiB));
  await w.flush();
  await w.closeWithoutFinalize();
  await a.close();
  // A record in the middle of its descriptor damaged on disk: good records follow it, so no crash left it.
  const file = path.join(dir, 'blob', w.name.slice(0, 2), w.name);
  flipByte(file, Math.floor(fs.statSync(file).size / 2));
  a = await BlobStore.open(dir);
  t.teardown(() => a.close());
  t.true((await readAll(a, kept)).equals(keep), 'the other blob reads');
  t.is(codeOf(await a.resumeBlobWriter(w.name).catch((e: unknown) => e)), 'ERR_DESCRIPTOR_CORRUPT');
  t.deepEqual((await a.fsck()).problems.map((p) => p.kind), ['corrupt-descriptor']);
  // Another store's gc: the blob's records past the damage may name any fragment in the bucket.
  const b = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: o });
  t.teardown(() => b.close());
  const before = (await objects(`${o.prefix}cas/`)).size;
  const e = await t.throwsAsync(b.gc(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_DESCRIPTOR_CORRUPT', e!.message);
  t.is((await objects(`${o.prefix}cas/`)).size, before, 'nothing deleted');
  // Deleted where it is: gc runs again, and deletes its fragments.
  await a.deleteBlob(w.name);
  const r = (await b.gc()).bucket!;
  t.true(r.fragmentsDeleted >= 4, `gc deleted ${r.fragmentsDeleted} fragments`);
  t.true((await readAll(b, kept)).equals(keep));
});

s3Test('a fragment whose upload is changed on the way is refused by the server and sent again; changed every time, the write fails: it used to be stored changed, answered 200, and reported durable (the blob unreadable from the bucket)', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, cacheBytes: 0 });
  // Flips one byte of the body of the first `times` fragment uploads (a middlebox, a NIC: TCP's checksum is weak).
  let times = 1;
  const mid = await s3Middleman({
    body: (req, piece, at) => {
      if (times === 0 || req.method !== 'PUT' || !/\/cas\/[0-9a-f]{64}$/.test(req.url.pathname) || at > 100_000 || at + piece.length <= 100_000) return;
      piece[100_000 - at]! ^= 1;
      times--;
    },
  });
  t.teardown(() => mid.close());
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: { ...o, endpoint: mid.endpoint }, fragmentSize: MiB });
  t.teardown(() => a.close());
  const bytes = prngBytes('s11 changed upload', 3 * MiB);
  const name = await putBlob(a, bytes);
  t.is(times, 0, 'an upload was changed');
  const b = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: o });
  t.teardown(() => b.close());
  t.true((await readAll(b, name)).equals(bytes), 'another store reads it whole from the bucket');
  // Every upload changed: the write fails, and nothing of it is published.
  times = Infinity;
  const w = await a.newBlobWriter();
  await w.appendBytes(prngBytes('s11 changed upload 2', 2 * MiB));
  const e = await t.throwsAsync(w.close(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_OBJECT_STORE', e!.message);
  t.is(e!.data.s3Code, 'XAmzContentSHA256Mismatch');
  t.false((await objects(`${o.prefix}blob/`)).has(`${o.prefix}blob/${w.name}`), 'not published');
});

// ---------------------------------------------------------------------------
// 6. Held

s3Test('held: a pull into a bucket-backed store whose S3 connections are cut mid-way fails with ERR_OBJECT_STORE, keeps what was durable, and the next pull resumes and reads byte-exact elsewhere', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0 });
  const src = await BlobStore.open(path.join(tempDir(t), 'src'), { fragmentSize: MiB });
  t.teardown(() => src.close());
  const bytes = prngBytes('s11 pull cut', 24 * MiB);
  const name = await putBlob(src, bytes);
  const srv = await servePeer(t, src);
  // Every S3 connection cut at its next byte up once `cut` is set (the store's uploads, its lease).
  let cut = false;
  const proxy = await tcpProxy(() => Number(new URL(S3_ENDPOINT).port), { every: { direction: 'up', cutAt: () => (cut ? 0 : undefined), onCut: dropConnection } });
  t.teardown(() => proxy.close());
  const dst = await BlobStore.open(path.join(tempDir(t), 'dst'), { objectStore: { ...o, endpoint: `http://127.0.0.1:${proxy.port}`, idleTimeout: 2000 }, fragmentSize: MiB });
  t.teardown(() => dst.close());
  const c = await connectPeer(t, dst, srv.url);
  const pulling = c.pull(name, { onProgress: (p) => void (p.verifiedBytes >= 8 * MiB && (cut = true)) });
  t.is(codeOf(await pulling.catch((e: unknown) => e)), 'ERR_OBJECT_STORE');
  cut = false;
  const kept = (await dst.stat(name)).size;
  t.true(kept < bytes.length, `${kept} bytes kept`);
  const st = await (await connectPeer(t, dst, srv.url)).pull(name);
  t.true(st.receivedBytes <= bytes.length - kept + 4 * MiB, `resumed: ${st.receivedBytes} bytes received after ${kept} were kept`);
  const other = await BlobStore.open(path.join(tempDir(t), 'other'), { objectStore: { ...o, cacheBytes: 0 } });
  t.teardown(() => other.close());
  t.true((await readAll(other, name)).equals(bytes));
  t.deepEqual(filesUnder(dst.root, 'tmp'), [], 'no temp file left');
});
