// More real I/O errors (test/helpers/faultfs.py): every path that touches the
// store's files, as a user with a failing disk meets it. Each operation fails
// with ERR_IO (never a raw Node error, never "absent", never "corrupt"),
// nothing is deleted or marked damaged because of an I/O error, nothing is
// reported done before it is durable, and once the fault clears the store is
// whole.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, exportBundle, writeHave, fetchBlob, importBundle, isCabError, merkleRoot, toHex, type CabServer, type ChunkRef, type FsckReport, type GcOptions, type GcReport } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { collect, putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { runCli } from './helpers/cli.js';
import { settle } from './helpers/hostile.js';
import { connectRw, edited, serveRw } from './helpers/transfer.js';
import { faultStore, type FaultStore } from './helpers/faults.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** `p` rejects with ERR_IO (what: the operation, for the message). */
async function failsIo(t: ExecutionContext, p: Promise<unknown>, what: string): Promise<void> {
  const e = await p.then(
    (v) => new Error(`succeeded: ${JSON.stringify(v)?.slice(0, 200)}`),
    (x: unknown) => x,
  );
  t.true(isCabError(e, 'ERR_IO'), `${what}: ERR_IO, not ${String(e)}${(e as Error)?.stack && !isCabError(e) ? `\n${(e as Error).stack}` : ''}`);
}

/** A store on the fault mount with one finalized blob of `size` bytes made from `seed` (`data`). */
async function withBlob(t: ExecutionContext, fsx: FaultStore, seed: string, size: number): Promise<{ store: BlobStore; name: string; data: Buffer }> {
  const data = prngBytes(seed, size);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  await w.close();
  return { store, name: w.name, data };
}

/** withBlob of 1 MiB + 3 bytes, its chunks, and the store closed again. */
async function closedBlob(t: ExecutionContext, fsx: FaultStore, seed: string): Promise<{ name: string; data: Buffer; chunks: ChunkRef[] }> {
  const { store, name, data } = await withBlob(t, fsx, seed, MiB + 3);
  const chunks = await collect(store.blobChunkStream(name));
  await store.close();
  return { name, data, chunks };
}

/** What `p` rejects with; undefined if it resolves. */
const rejection = (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (e: unknown) => e);

/** Resumes blob `name` and appends the rest of `data`, finalizing it. */
async function finish(store: BlobStore, name: string, data: Buffer): Promise<void> {
  const w = await store.resumeBlobWriter(name);
  await w.appendBytes(data.subarray(w.size));
  await w.close();
}

/** gc failed with ERR_IO, or its report passes `ok` (it removed nothing it should keep). */
async function gcSafe(t: ExecutionContext, store: BlobStore, options: GcOptions, ok: (g: GcReport) => boolean, what: string): Promise<void> {
  const g = await store.gc(options).catch((x: Error) => x);
  t.true(g instanceof Error ? isCabError(g, 'ERR_IO') : ok(g), `${what}: gc: ERR_IO, or a report that removed nothing it should keep: ${g instanceof Error ? g.message : JSON.stringify(g)}`);
}

const fragCount = (root: string) => fs.readdirSync(path.join(root, 'cas'), { recursive: true }).length;

/** fsck --verify finds nothing, and `name` reads back as `data`. */
async function whole(t: ExecutionContext, store: BlobStore, name: string, data: Buffer): Promise<void> {
  t.deepEqual((await store.fsck({ verify: true })).problems, [], 'fsck --verify is clean');
  const st = await store.stat(name);
  t.true(st.finalized, 'finalized');
  t.is(toHex(st.hash!), toHex(merkleRoot(data)));
  t.true((await readAll(store, name)).equals(data), 'reads back byte-exact');
}

test('a reader whose fragment read fails: readAt, readFully, read after seek and stream all fail with ERR_IO; the blob reads once the disk is back', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio reader', 3 * MiB + 11);
  const r = await store.newBlobReader(name);
  t.teardown(() => r.close().catch(() => {}));
  fsx.fail('read \\.frag$', 'read ^/cas/');
  const buf = Buffer.alloc(100 * KiB);
  await failsIo(t, r.readAt(buf, 2 * MiB), 'readAt');
  await failsIo(t, r.readFully(buf, MiB + 5), 'readFully');
  r.seek(-1000, 2);
  await failsIo(t, r.read(buf), 'read after seek');
  await failsIo(t, r.readUnchecked(buf, 0), 'readUnchecked');
  const s = r.stream({ start: 5, end: 2 * MiB });
  await failsIo(t, (async () => { for await (const _ of s) void _; })(), 'stream');
  fsx.fail();
  const r2 = await store.newBlobReader(name);
  await r2.readFully(buf, 2 * MiB);
  t.true(buf.equals(data.subarray(2 * MiB, 2 * MiB + buf.length)));
  await r2.close();
  await whole(t, store, name, data);
});

test('appendBlob from a blob whose fragments cannot be read, and a copy of bytes the store holds: ERR_IO or a good copy, never a wrong one', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio appendBlob', 2 * MiB + 3);
  fsx.fail('read ^/cas/', 'open ^/cas/');
  const w = await store.newBlobWriter();
  const a = await rejection(w.appendBlob(name, 100, 1500 * KiB));
  if (a !== undefined) t.true(isCabError(a, 'ERR_IO'), `appendBlob: ERR_IO, not ${String(a)}`);
  const c = await rejection(w.close());
  if (c !== undefined) t.true(isCabError(c, 'ERR_IO') || isCabError(c), `close: a CabError, not ${String(c)}`);
  // The same bytes again (dedup may read the chunks it holds to compare them).
  const w2 = await store.newBlobWriter();
  const b = await rejection(w2.appendBytes(data).then(() => w2.close()));
  if (b !== undefined) t.true(isCabError(b, 'ERR_IO'), `a second copy: ERR_IO, not ${String(b)}`);
  fsx.fail();
  if (a === undefined && c === undefined) t.true((await readAll(store, w.name)).equals(data.subarray(100, 100 + 1500 * KiB)), 'the appended range is right');
  if (b === undefined) t.true((await readAll(store, w2.name)).equals(data), 'the copy is right');
  await whole(t, store, name, data);
});

for (const rule of ['write \\.frag$', 'fsync \\.frag$', 'write \\.desc$', 'fsync \\.desc$', 'create ^/tmp/', 'rename ^/tmp/', 'fsync ^/tmp/']) {
  test(`a writer's flush with "${rule}" fails with ERR_IO, reports nothing durable that is not, and the blob resumes`, async (t) => {
    const fsx = await faultStore(t);
    if (!fsx) return;
    const data = prngBytes(`eio flush ${rule}`, 3 * MiB);
    const store = await BlobStore.open(fsx.root);
    t.teardown(() => store.close().catch(() => {}));
    const w = await store.newBlobWriter();
    await w.appendBytes(data.subarray(0, MiB));
    await w.flush();
    fsx.fail(rule);
    const e = await rejection(w.appendBytes(data.subarray(MiB, 2 * MiB)).then(() => w.flush()));
    if (e === undefined) {
      // Nothing failed at flush (the rule names a file the flush did not touch): then close must fail, or the blob is whole.
      const c = await rejection(w.close());
      if (c !== undefined) t.true(isCabError(c, 'ERR_IO'), `close: ERR_IO, not ${String(c)}`);
    } else {
      t.true(isCabError(e, 'ERR_IO'), `flush: ERR_IO, not ${String(e)}`);
      await w.close().catch(() => {});
    }
    fsx.fail();
    await store.close();
    const again = await BlobStore.open(fsx.root);
    t.teardown(() => again.close().catch(() => {}));
    const st = await again.stat(w.name);
    if (!st.finalized) {
      t.true(st.size >= MiB, `the flushed MiB stands (size ${st.size})`);
      t.true((await readAll(again, w.name)).equals(data.subarray(0, st.size)), 'what it holds is right');
      t.deepEqual((await again.fsck({ verify: true })).problems, []);
      await finish(again, w.name, data);
    } else {
      t.is(st.size, 2 * MiB);
      const w2 = await again.resumeBlobWriter(w.name).catch(() => undefined);
      t.is(w2, undefined);
      await again.deleteBlob(w.name);
      return;
    }
    await whole(t, again, w.name, data);
  });
}

for (const rule of ['rename \\.frag$', 'rename ^/tmp/', 'fsync \\.desc$', 'write \\.desc$', 'fsync ^/blob/', 'create ^/cas/', 'rename ^/blob/', 'fsyncdir ^/blob/', 'fsyncdir ^/cas/', 'mkdir ^/cas/']) {
  test(`finalize with "${rule}" fails with ERR_IO; the blob is not final, and resumes to a whole blob`, async (t) => {
    const fsx = await faultStore(t);
    if (!fsx) return;
    const data = prngBytes(`eio finalize ${rule}`, 2 * MiB + 5);
    const store = await BlobStore.open(fsx.root);
    t.teardown(() => store.close().catch(() => {}));
    const w = await store.newBlobWriter();
    await w.appendBytes(data);
    fsx.fail(rule);
    const e = await rejection(w.close());
    fsx.fail();
    if (e === undefined) {
      t.log(`${rule}: finalize did not touch it`);
      await whole(t, store, w.name, data);
      return;
    }
    t.true(isCabError(e, 'ERR_IO'), `close: ERR_IO, not ${String(e)}`);
    await store.close();
    const again = await BlobStore.open(fsx.root);
    t.teardown(() => again.close().catch(() => {}));
    const st = await again.stat(w.name);
    if (!st.finalized) {
      t.deepEqual((await again.fsck({ verify: true })).problems, []);
      await finish(again, w.name, data);
    }
    await whole(t, again, w.name, data);
  });
}

test('deleteBlob whose unlink or directory fsync fails is ERR_IO, never a raw EIO nor a success; the blob is whole after a failed unlink, and the next delete works', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio delete', MiB + 1);
  fsx.fail('unlink ^/blob/', 'rename ^/blob/');
  await failsIo(t, store.deleteBlob(name), 'deleteBlob');
  fsx.fail();
  await whole(t, store, name, data);
  // The unlink is done, its directory's fsync fails: not reported done (it may come back after a crash).
  fsx.fail('fsyncdir ^/blob/');
  await failsIo(t, store.deleteBlob(name), 'deleteBlob, its directory not durable');
  fsx.fail();
  const again = await store.deleteBlob(name).then(() => 'deleted', (e: unknown) => (isCabError(e, 'ERR_NO_SUCH_BLOB') ? 'gone' : String(e)));
  t.true(['deleted', 'gone'].includes(again), again);
  t.false(await store.has(name));
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
});

test('gc whose unlink of a fragment fails is ERR_IO and reports nothing deleted it did not delete; a live blob loses nothing', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data: keep } = await withBlob(t, fsx, 'eio gc keep', MiB + 7);
  const w = await store.newBlobWriter();
  await w.appendBytes(prngBytes('eio gc drop', MiB));
  await w.close();
  await store.deleteBlob(w.name);
  fsx.fail('unlink ^/cas/');
  await gcSafe(t, store, {}, (g) => g.fragmentsDeleted === 0, 'unlink ^/cas/');
  for (const rule of ['read ^/blob/', 'open ^/blob/', 'getattr ^/blob/', 'readdir ^/leases', 'open ^/leases/', 'read ^/leases/', 'getattr ^/leases/']) {
    fsx.fail(rule);
    const before = fragCount(fsx.root);
    await gcSafe(t, store, {}, (g) => g.fragmentsDeleted <= 1, rule); // at most the deleted blob's fragment
    fsx.fail();
    t.true(fragCount(fsx.root) >= before - 1, `${rule}`);
    await whole(t, store, name, keep);
  }
  const g3 = await store.gc();
  t.true(g3.fragmentsDeleted <= 1);
  await whole(t, store, name, keep);
});

test('gc while a writer pins a blob it appends from: a lease it cannot read stops gc, and the pinned fragments stay', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio pins', MiB + 3);
  const w = await store.newBlobWriter();
  await w.appendBlob(name);
  await store.deleteBlob(name);
  const before = fragCount(fsx.root);
  for (const rule of ['read \\.pins$', 'open \\.pins$', 'open \\.lease$', 'readdir ^/leases']) {
    fsx.fail(rule);
    await gcSafe(t, store, {}, (g) => g.fragmentsDeleted === 0, rule);
    fsx.fail();
    t.is(fragCount(fsx.root), before, `${rule}: no fragment removed`);
  }
  await w.close();
  t.true((await readAll(store, w.name)).equals(data));
});

test('a pin that cannot be written (leases/ write or rename fails) fails appendBlob with ERR_IO, never a pin gc cannot see', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio pin write', MiB + 3);
  for (const rule of ['write ^/leases/', 'fsync ^/leases/', 'rename ^/leases/', 'create ^/leases/']) {
    const w = await store.newBlobWriter();
    fsx.fail(rule);
    const e = await rejection(w.appendBlob(name));
    fsx.fail();
    if (e !== undefined) t.true(isCabError(e, 'ERR_IO'), `${rule}: appendBlob: ERR_IO, not ${String(e)}`);
    else t.log(`${rule}: appendBlob did not write a pin`);
    await w.close().catch(() => {});
    await store.deleteBlob(w.name).catch(() => {});
  }
  await whole(t, store, name, data);
});

test('fsck --repair with descriptors or fragments it cannot stat or list is ERR_IO or a report that repairs nothing', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio fsck', MiB + 3);
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, 300 * KiB));
  await w.flush();
  const before = fragCount(fsx.root);
  for (const rule of ['getattr ^/cas/', 'getattr ^/blob/', 'readdir ^/cas', 'readdir ^/blob', 'readdir ^/tmp', 'getattr ^/tmp/', 'open ^/tmp/', 'read ^/tmp/', 'getattr ^/layers', 'read ^/layers/']) {
    fsx.fail(rule);
    const report: FsckReport | Error = await store.fsck({ verify: true, repair: true }).catch((x: Error) => x);
    fsx.fail();
    if (report instanceof Error) t.true(isCabError(report, 'ERR_IO'), `${rule}: fsck fails with ERR_IO, not ${String(report)}`);
    else t.deepEqual(report.problems.filter((p) => p.repaired || /missing|mismatch|damaged|corrupt/.test(p.kind)), [], `${rule}: nothing called missing or corrupt, nothing repaired: ${JSON.stringify(report.problems)}`);
    t.is(fragCount(fsx.root), before, `${rule}: no fragment removed`);
  }
  await w.close();
  await whole(t, store, name, data);
  t.true((await readAll(store, w.name)).equals(data.subarray(0, 300 * KiB)));
});

// --- transfer, bundles and the HTTP face ---

const TOKEN = 'eio';
const serveT = (t: ExecutionContext, store: BlobStore) => serveRw(t, store, TOKEN);
const connectT = (t: ExecutionContext, store: BlobStore, url: string) => connectRw(t, store, url, TOKEN);

/** The code `p` settles with within `ms` ('resolved', 'pending', or the CabError's code). */
const within = settle;

test('a server whose fragment read fails mid-pull: the pull fails (ERR_REMOTE or ERR_IO, never "absent") at once, the server serves other requests, and the pull completes once the disk is back', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store: server, name, data } = await withBlob(t, fsx, 'eio serve', 3 * MiB + 9);
  const other = await putBlob(server, prngBytes('eio serve other', 200 * KiB));
  const srv = await serveT(t, server);
  const client = await tempStore(t);
  const c = await connectT(t, client, srv.url);
  // Only the big blob's fragments fail.
  const r = await server.newBlobReader(name);
  const frags = r.fragments().map((f) => f.slice(0, 16));
  await r.close();
  fsx.fail(...frags.map((f) => `read ${f}`), ...frags.map((f) => `open ${f}`));
  const got = await within(c.pull(name), 20_000);
  t.true(['ERR_REMOTE', 'ERR_IO'].includes(got), `the pull fails with ERR_REMOTE or ERR_IO, not ${got}`);
  t.log(`the pull: ${got}`);
  t.is(await within(c.stat(other), 5000), 'resolved', 'the server answers another request');
  t.is(await within(c.pull(other), 10_000), 'resolved', 'and serves another blob');
  const again = await within(c.openReader(name).then((rr) => rr.close()), 10_000);
  t.not(again, 'pending');
  fsx.fail();
  await c.pull(name);
  await whole(t, client, name, data);
  await whole(t, server, name, data);
});

test('a push into a server whose fsyncs fail is not acknowledged: it fails with ERR_REMOTE or ERR_IO, the server\'s blob is not final, and a push once the disk is back completes', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const server = await BlobStore.open(fsx.root);
  t.teardown(() => server.close().catch(() => {}));
  const srv = await serveT(t, server);
  const client = await tempStore(t);
  const data = prngBytes('eio push', 3 * MiB + 1);
  const name = await putBlob(client, data);
  const c = await connectT(t, client, srv.url);
  fsx.fail('fsync ^/tmp/', 'fsync \\.frag$', 'fsyncdir .');
  const got = await within(c.push(name), 20_000);
  t.true(['ERR_REMOTE', 'ERR_IO'].includes(got), `the push fails with ERR_REMOTE or ERR_IO, not ${got}`);
  fsx.fail();
  const st = await server.stat(name).catch(() => undefined);
  t.false(st?.finalized ?? false, 'not final on the server');
  await c.push(name);
  await whole(t, server, name, data);
});

test('a receiver whose local chunk read fails while it builds from an older version: ERR_IO, or a blob fetched and verified; never a wrong blob', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store: client, data: old } = await withBlob(t, fsx, 'eio fine', 4 * MiB);
  const next = edited(old, 3, 8).bytes;
  const server = await tempStore(t);
  const name = await putBlob(server, next);
  const srv = await serveT(t, server);
  const c = await connectT(t, client, srv.url);
  fsx.fail('read ^/cas/', 'read \\.frag$');
  const got = await within(c.pull(name), 30_000);
  t.true(['ERR_IO', 'resolved'].includes(got), `the pull fails with ERR_IO or completes, not ${got}`);
  t.log(`the pull: ${got}`);
  fsx.fail();
  if (got !== 'resolved') await c.pull(name);
  await whole(t, client, name, next);
});

test('bundles: an export whose fragment read fails, and an import whose fsync fails, are ERR_IO; the import completes once the disk is back', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio bundle', 2 * MiB + 3);
  const dir = tempDir(t);
  const file = path.join(dir, 'b.cab');
  fsx.fail('read ^/cas/');
  await failsIo(t, exportBundle(store, [name], file), 'export');
  fsx.fail();
  await exportBundle(store, [name], file);
  // Into a second store on another fault mount.
  const fsy = await faultStore(t);
  if (!fsy) return;
  const dst = await BlobStore.open(fsy.root);
  t.teardown(() => dst.close().catch(() => {}));
  fsy.fail('fsync ^/tmp/', 'fsync \\.frag$');
  await failsIo(t, importBundle(dst, file), 'import');
  fsy.fail();
  const st = await dst.stat(name).catch(() => undefined);
  t.false(st?.finalized ?? false, 'not final after the failed import');
  await importBundle(dst, file);
  await whole(t, dst, name, data);
});

test('HTTP: GET /blobs/NAME (whole, and a Range) with a fragment EIO is a 5xx or a cut body, never a 404 nor a clean end; the server answers after', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio http get', 2 * MiB + 3);
  const srv = await serveT(t, store);
  const base = `http://127.0.0.1:${srv.port}`;
  fsx.fail('read ^/cas/', 'open ^/cas/');
  for (const range of [undefined, 'bytes=1000-300000', 'bytes=-5000']) {
    const how = await fetch(`${base}/blobs/${name}`, { headers: { authorization: `Bearer ${TOKEN}`, ...(range ? { range } : {}) } }).then(
      async (res) => (res.status >= 500 ? `status ${res.status}` : res.status < 300 ? await res.arrayBuffer().then(() => `status ${res.status}, clean end`, () => 'cut') : `status ${res.status}`),
      () => 'cut',
    );
    t.true(/^status 5\d\d$|^cut$/.test(how), `${range ?? 'whole'}: a 5xx or a cut body, not ${how}`);
  }
  fsx.fail();
  const ok = await fetch(`${base}/blobs/${name}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  t.is(ok.status, 200);
  t.true(Buffer.from(await ok.arrayBuffer()).equals(data));
});

test('HTTP: a tus PATCH whose fsync fails is not acknowledged (a 5xx), HEAD then gives a durable offset, and the upload completes from it once the disk is back', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const srv = await serveT(t, store);
  const base = `http://127.0.0.1:${srv.port}`;
  const data = prngBytes('eio tus', 2 * MiB + 3);
  const headers = (o: Record<string, string> = {}) => ({ authorization: `Bearer ${TOKEN}`, 'tus-resumable': '1.0.0', ...o });
  const created = await fetch(`${base}/files/`, { method: 'POST', headers: headers({ 'upload-length': String(data.length) }) });
  t.is(created.status, 201);
  const url = new URL(created.headers.get('location')!, base).href;
  const name = url.split('/').pop()!;
  const patch = (at: number, body: Buffer) => fetch(url, { method: 'PATCH', headers: headers({ 'upload-offset': String(at), 'content-type': 'application/offset+octet-stream' }), body });
  t.is((await patch(0, data.subarray(0, MiB))).status, 204);
  fsx.fail('fsync ^/tmp/', 'fsync \\.frag$', 'fdatasync .');
  const failed = await patch(MiB, data.subarray(MiB, 2 * MiB)).then((r) => `status ${r.status}`, () => 'cut');
  t.true(/^status 5\d\d$|^cut$/.test(failed), `the PATCH is not acknowledged: ${failed}`);
  fsx.fail();
  const head = await fetch(url, { method: 'HEAD', headers: headers() });
  const at = Number(head.headers.get('upload-offset'));
  t.true(head.status === 200 && at >= MiB && at <= 2 * MiB, `HEAD: ${head.status} at ${at}`);
  const done = await patch(at, data.subarray(at));
  t.is(done.status, 204);
  await whole(t, store, name, data);
});

test('verified range reads from a server whose leaf layer or fragment read fails: an error that is not "corrupt", and the server serves after', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio range', 3 * MiB + 1);
  const srv = await serveT(t, store);
  const client = await tempStore(t);
  const c = await connectT(t, client, srv.url);
  const buf = Buffer.alloc(64 * KiB);
  // A first read makes the leaf layer.
  const r0 = await c.openReader(name);
  await r0.readAt(buf, MiB);
  await r0.close();
  for (const rule of ['read ^/layers/', 'open ^/layers/', 'read ^/cas/']) {
    fsx.fail(rule);
    const c2 = await connectT(t, client, srv.url);
    const got = await within(c2.openReader(name).then(async (r) => {
      try {
        await r.readAt(buf, 2 * MiB + 77);
      } finally {
        await r.close();
      }
    }), 20_000);
    fsx.fail();
    t.true(['ERR_REMOTE', 'ERR_IO', 'resolved'].includes(got), `${rule}: ERR_REMOTE or ERR_IO (or the bytes), not ${got}`);
    if (got === 'resolved') t.true(buf.equals(data.subarray(2 * MiB + 77, 2 * MiB + 77 + buf.length)));
    t.is(await within(c2.stat(name), 5000), 'resolved', `${rule}: the server answers after`);
  }
  await whole(t, store, name, data);
});

// --- opening, resuming, lookups, followers, eviction, the CLI ---

test('opening the store while blob/ or its descriptors fail: ERR_IO or an open store, and the catch-up removes no index entry for it', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { name, data, chunks } = await closedBlob(t, fsx, 'eio open');
  for (const rule of ['readdir ^/blob', 'getattr ^/blob/', 'open ^/blob/', 'read ^/blob/', 'readdir ^/tmp', 'unlink ^/tmp/', 'readdir ^/leases', 'open ^/leases/', 'create ^/leases/', 'getattr ^/tmp', 'mkdir .', 'statfs .']) {
    fsx.fail(rule);
    const s = await BlobStore.open(fsx.root).catch((e: unknown) => e);
    fsx.fail();
    if (s instanceof BlobStore) await s.close();
    else t.true(isCabError(s, 'ERR_IO'), `${rule}: open fails with ERR_IO, not ${String(s)}`);
  }
  const again = await BlobStore.open(fsx.root);
  t.teardown(() => again.close().catch(() => {}));
  for (const c of chunks) t.is((await again.lookupChunk(c.hash)).blob, name, 'the chunk index still has the blob');
  await whole(t, again, name, data);
});

test('lookups while the disk fails: lookupChunk, blobChunkStream, findByHash and listCaIds are ERR_IO, never "no such chunk" nor a short list', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { name, data, chunks } = await closedBlob(t, fsx, 'eio lookups');
  for (const rule of ['getattr ^/blob/', 'open ^/blob/', 'read ^/blob/']) {
    const s = await BlobStore.open(fsx.root);
    fsx.fail(rule);
    try {
      const l = await s.lookupChunk(chunks[0]!.hash).then((v) => v.blob, (e: unknown) => e);
      t.true(l === name || isCabError(l, 'ERR_IO'), `${rule}: lookupChunk: the blob or ERR_IO, not ${String(l)}`);
      const cs = await collect(s.blobChunkStream(name)).then((v) => v, (e: unknown) => e);
      t.true(Array.isArray(cs) ? cs.length === chunks.length : isCabError(cs, 'ERR_IO'), `${rule}: blobChunkStream: the chunks or ERR_IO, not ${String(cs)}`);
      const f = await collect(s.findByHash(merkleRoot(data))).then((v) => v, (e: unknown) => e);
      t.true(Array.isArray(f) ? f.includes(name) : isCabError(f, 'ERR_IO'), `${rule}: findByHash: the blob or ERR_IO, not ${String(f)}`);
    } finally {
      fsx.fail();
      await s.close();
    }
  }
  const s = await BlobStore.open(fsx.root);
  t.teardown(() => s.close().catch(() => {}));
  fsx.fail('readdir ^/cas');
  await failsIo(t, collect(s.listCaIds()), 'listCaIds');
  fsx.fail();
  await whole(t, s, name, data);
});

test('resuming a blob whose descriptor cannot be read or cut is ERR_IO, never ERR_DESCRIPTOR_CORRUPT nor a shorter blob', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio resume', 2 * MiB + 3);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, MiB));
  await w.closeWithoutFinalize();
  for (const rule of ['read ^/blob/', 'open ^/blob/', 'getattr ^/blob/', 'truncate ^/blob/', 'fsync ^/blob/', 'read ^/cas/', 'read \\.frag$', 'open \\.frag$', 'truncate \\.frag$', 'getattr \\.frag$', 'create ^/tmp/']) {
    fsx.fail(rule);
    const e = await store.resumeBlobWriter(w.name).then(async (w2) => {
      await w2.appendBytes(data.subarray(w2.size, w2.size + 1000));
      await w2.closeWithoutFinalize();
    }).then(() => undefined, (x: unknown) => x);
    fsx.fail();
    if (e !== undefined) t.true(isCabError(e, 'ERR_IO'), `${rule}: ERR_IO, not ${String(e)}`);
    const st = await store.stat(w.name);
    t.true(st.size >= MiB, `${rule}: size ${st.size}`);
    const back = await readAll(store, w.name);
    t.true(back.equals(data.subarray(0, st.size)), `${rule}: the bytes are right (${String(e)}; size ${st.size}, read ${back.length}, first difference at ${back.findIndex((b, i) => b !== data[i])})`);
  }
  await finish(store, w.name, data);
  await whole(t, store, w.name, data);
});

test('a follower of a blob being written whose descriptor or fragments cannot be read fails with ERR_IO, never waits forever nor ends early', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio follow', 2 * MiB);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  for (const rule of ['read ^/blob/', 'open ^/blob/', 'getattr ^/blob/', 'read ^/tmp/', 'open ^/tmp/']) {
    const w = await store.newBlobWriter();
    await w.appendBytes(data.subarray(0, 512 * KiB));
    await w.flush();
    const r = await store.newBlobReader(w.name, { follow: true });
    const got: Buffer[] = [];
    const done = (async () => {
      for await (const b of r.stream()) got.push(b as Buffer);
    })();
    await new Promise((resolve) => setTimeout(resolve, 100));
    fsx.fail(rule);
    const wrote = await w.appendBytes(data.subarray(512 * KiB, MiB)).then(() => w.flush()).then(() => 'ok', (e: unknown) => (isCabError(e) ? e.code : String(e)));
    const how = await settle(done, 1500);
    fsx.fail();
    t.true(['ERR_IO', 'pending'].includes(how) || how === 'resolved', `${rule}: ${how}`);
    if (how === 'pending') {
      // The fault is gone: the follower goes on, and ends with the blob.
      if (wrote !== 'ok') {
        await w.close().catch(() => {});
        await finish(store, w.name, data);
      } else {
        await w.appendBytes(data.subarray(MiB));
        await w.close();
      }
      const end = await settle(done, 10_000);
      t.true(end === 'resolved' || end === 'ERR_IO', `${rule}: after the fault: ${end}`);
      if (end === 'resolved') t.true(Buffer.concat(got).equals(data), `${rule}: the follower got the blob`);
    } else {
      t.not(how, 'resolved', `${rule}: the follower ended early with ${Buffer.concat(got).length} bytes`);
      await w.close().catch(() => {});
    }
    await r.close().catch(() => {});
    t.log(`${rule}: writer ${wrote}, follower ${how}`);
  }
});

test('gc with maxBytes while descriptors cannot be read evicts nothing on doubt: ERR_IO or nothing evicted', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const blobs: Array<[string, Buffer]> = [];
  for (let i = 0; i < 3; i++) {
    const d = prngBytes(`eio evict ${i}`, 400 * KiB + i);
    blobs.push([await putBlob(store, d), d]);
  }
  for (const rule of ['read ^/blob/', 'open ^/blob/', 'getattr ^/blob/', 'getattr ^/cas/', 'fsyncdir ^/blob/', 'rename ^/blob/']) {
    fsx.fail(rule);
    await gcSafe(t, store, { maxBytes: 0 }, (g) => g.evicted.length === 0, rule);
    fsx.fail();
    for (const [name, d] of blobs) if (await store.has(name)) await whole(t, store, name, d);
  }
});

test('the CLI on a failing disk: put (of a file it cannot stat or open), get, cat, stat, ls, rm, gc and fsck exit 1 with ERR_IO on stderr, never "no such blob"', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio cli', MiB + 3);
  await store.close();
  const out = path.join(tempDir(t), 'out');
  fs.mkdirSync(path.join(fsx.root, 'in'));
  const input = path.join(fsx.root, 'in', 'input.bin');
  fs.writeFileSync(input, data.subarray(0, 1000));
  const runs: Array<[string, string[]]> = [
    ['getattr ^/in/', ['put', input]],
    ['open ^/in/', ['put', input]],
    ['read ^/cas/', ['get', name, '-o', out]],
    ['read ^/cas/', ['cat', name]],
    ['read ^/blob/', ['stat', name]],
    ['readdir ^/blob', ['ls']],
    ['rename ^/blob/', ['rm', name]],
    ['readdir ^/cas', ['gc']],
    ['read ^/cas/', ['fsck', '--verify', '--repair']],
  ];
  for (const [rule, args] of runs) {
    fsx.fail(rule);
    const r = await runCli(fsx.root, ...args);
    fsx.fail();
    t.is(r.code, 1, `${args.join(' ')} with ${rule}: exit 1 (${r.stderr.trim()})`);
    t.regex(r.stderr, /ERR_IO/, `${args.join(' ')} with ${rule}: says ERR_IO`);
    t.notRegex(r.stderr, /ERR_NO_SUCH|ERR_FRAGMENT_MISSING|ERR_HASH_MISMATCH|ERR_DESCRIPTOR_CORRUPT/, `${args.join(' ')}: nothing called absent or corrupt`);
  }
  fs.rmSync(path.join(fsx.root, 'in'), { recursive: true });
  const again = await BlobStore.open(fsx.root);
  t.teardown(() => again.close().catch(() => {}));
  await whole(t, again, name, data);
});

// --- a descriptor that cannot be read is not "no such blob", on any face ---

test('a server whose descriptors cannot be read: stat, pull and GET /blobs/NAME (and tus HEAD) fail as I/O errors, never "no such blob" nor 404', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio remote desc', MiB + 3);
  const srv = await serveT(t, store);
  const base = `http://127.0.0.1:${srv.port}`;
  const created = await fetch(`${base}/files/`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'tus-resumable': '1.0.0', 'upload-length': '5000' } });
  t.is(created.status, 201);
  const upload = new URL(created.headers.get('location')!, base).href;
  const client = await tempStore(t);
  const c = await connectT(t, client, srv.url);
  for (const rule of ['open ^/blob/', 'read ^/blob/', 'getattr ^/blob/']) {
    fsx.fail(rule);
    try {
      for (const [what, p] of [['stat', c.stat(name)], ['pull', c.pull(name)], ['openReader', c.openReader(name).then((r) => r.close())]] as const) {
        const got = await within(p, 10_000);
        t.true(['ERR_IO', 'ERR_REMOTE'].includes(got), `${rule}: ${what}: ERR_IO or ERR_REMOTE, not ${got}`);
      }
      const get = await fetch(`${base}/blobs/${name}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      await get.arrayBuffer().catch(() => {});
      t.true(get.status >= 500, `${rule}: GET: a 5xx, not ${get.status}`);
      const head = await fetch(upload, { method: 'HEAD', headers: { authorization: `Bearer ${TOKEN}`, 'tus-resumable': '1.0.0' } });
      t.true(head.status >= 500 || (head.status === 200 && head.headers.get('upload-offset') === '0'), `${rule}: tus HEAD: a 5xx (or the offset it knows), not ${head.status}`);
    } finally {
      fsx.fail();
    }
  }
  await c.pull(name);
  await whole(t, client, name, data);
  t.is((await fetch(upload, { method: 'HEAD', headers: { authorization: `Bearer ${TOKEN}`, 'tus-resumable': '1.0.0' } })).status, 200);
});

test('fetchBlob from two servers, one whose fragments fail: the failing one is dropped and the blob comes whole from the other; from it alone, an error that is not "absent"', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store: bad, name, data } = await withBlob(t, fsx, 'eio multi', 3 * MiB + 3);
  const good = await tempStore(t);
  await putBlob(good, data, name);
  const [sb, sg] = [await serveT(t, bad), await serveT(t, good)];
  fsx.fail('read ^/cas/');
  const alone = await tempStore(t);
  const got = await within(fetchBlob(alone, name, { from: [sb.url], token: TOKEN }), 20_000);
  t.true(['ERR_IO', 'ERR_REMOTE'].includes(got), `from the failing server alone: ERR_IO or ERR_REMOTE, not ${got}`);
  const local = await tempStore(t);
  const stats = await fetchBlob(local, name, { from: [sb.url, sg.url], token: TOKEN });
  t.log(JSON.stringify(stats.sources.map((s) => [s.source === sb.url ? 'bad' : 'good', s.chunks, s.dropped?.code])));
  fsx.fail();
  await whole(t, local, name, data);
});

test('appendBytes from a file that cannot be read, and a write stream whose fragment writes fail: ERR_IO, never "no such file"; the blob resumes', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio input', 2 * MiB + 3);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  // An input file on the faulty mount (outside the store's own folders).
  fs.mkdirSync(path.join(fsx.root, 'in'), { recursive: true });
  const input = path.join(fsx.root, 'in', 'input.bin');
  fs.writeFileSync(input, data);
  for (const rule of ['read ^/in/', 'open ^/in/', 'getattr ^/in/']) {
    const w = await store.newBlobWriter();
    fsx.fail(rule);
    const e = await rejection(w.appendBytes({ file: input }));
    fsx.fail();
    t.true(isCabError(e, 'ERR_IO'), `${rule}: appendBytes(file): ERR_IO, not ${String(e)}`);
    await w.close().catch(() => {});
    await store.deleteBlob(w.name).catch(() => {});
  }
  fs.rmSync(path.join(fsx.root, 'in'), { recursive: true });
  const w = await store.newBlobWriter();
  const ws = w.createWriteStream();
  ws.write(data.subarray(0, MiB));
  await new Promise((resolve) => setTimeout(resolve, 50));
  fsx.fail('write \\.frag$', 'write ^/tmp/');
  const done = new Promise<unknown>((resolve) => {
    ws.on('error', resolve);
    ws.on('finish', () => resolve('finished'));
  });
  ws.end(data.subarray(MiB));
  const e = await done;
  fsx.fail();
  t.true(isCabError(e, 'ERR_IO'), `the stream fails with ERR_IO, not ${String(e)}`);
  await w.close().catch(() => {});
  await finish(store, w.name, data);
  await whole(t, store, w.name, data);
});

test('fsck --repair while descriptors cannot be read: ERR_IO or a report that calls nothing corrupt and repairs nothing', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio fsck desc', MiB + 3);
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, 300 * KiB));
  await w.closeWithoutFinalize();
  const before = fragCount(fsx.root);
  for (const rule of ['open ^/blob/', 'read ^/blob/', 'truncate .', 'read ^/tmp/', 'rename .', 'unlink .']) {
    fsx.fail(rule);
    const report: FsckReport | Error = await store.fsck({ verify: true, repair: true }).catch((x: Error) => x);
    fsx.fail();
    if (report instanceof Error) t.true(isCabError(report, 'ERR_IO'), `${rule}: fsck fails with ERR_IO, not ${String(report)}`);
    else t.deepEqual(report.problems.filter((p) => p.repaired || /missing|mismatch|damaged|corrupt/.test(p.kind)), [], `${rule}: nothing called missing or corrupt, nothing repaired: ${JSON.stringify(report.problems)}`);
    t.is(fragCount(fsx.root), before, `${rule}: no fragment removed`);
    t.is((await store.stat(w.name)).size, 300 * KiB, `${rule}: the open blob keeps its bytes`);
  }
  await whole(t, store, name, data);
  t.true((await readAll(store, w.name)).equals(data.subarray(0, 300 * KiB)));
});

// --- more writers' and upkeep's paths ---

test('gc while a writer is open and tmp/ cannot be listed or looked at: ERR_IO or nothing of the writer removed; the writer finishes', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio gc tmp', 2 * MiB + 3);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, MiB));
  await w.flush();
  const tmpBefore = fs.readdirSync(path.join(fsx.root, 'tmp')).sort();
  for (const rule of ['readdir ^/tmp', 'getattr ^/tmp/', 'open ^/tmp/', 'unlink ^/tmp/', 'open ^/leases/', 'getattr ^/leases/']) {
    fsx.fail(rule);
    await gcSafe(t, store, {}, (g) => g.tempFilesDeleted === 0, rule);
    fsx.fail();
    t.deepEqual(fs.readdirSync(path.join(fsx.root, 'tmp')).sort(), tmpBefore, `${rule}: tmp/ as it was`);
  }
  await w.appendBytes(data.subarray(MiB));
  await w.close();
  await whole(t, store, w.name, data);
});

test('a checkpoint (checkpointEvery) whose writes or fsyncs fail: ERR_IO, and the blob resumes from what was durable', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio checkpoint', 3 * MiB);
  for (const rule of ['write ^/tmp/', 'fsync ^/tmp/', 'fdatasync ^/tmp/']) {
    const store = await BlobStore.open(fsx.root);
    const w = await store.newBlobWriter();
    w.checkpointEvery(256 * KiB);
    await w.appendBytes(data.subarray(0, 512 * KiB));
    fsx.fail(rule);
    let e: unknown;
    try {
      for (let at = 512 * KiB; at < 2 * MiB; at += 256 * KiB) await w.appendBytes(data.subarray(at, at + 256 * KiB));
      await w.flush();
    } catch (x) {
      e = x;
    }
    fsx.fail();
    t.true(isCabError(e, 'ERR_IO'), `${rule}: ERR_IO, not ${String(e)}`);
    await store.close().catch(() => {});
    const again = await BlobStore.open(fsx.root);
    const w2 = await again.resumeBlobWriter(w.name);
    t.true(w2.size <= 2 * MiB, `${rule}: resumes at ${w2.size}`);
    t.true((await readAll(again, w.name)).equals(data.subarray(0, w2.size)), `${rule}: what it holds is right`);
    await w2.appendBytes(data.subarray(w2.size));
    await w2.close();
    await whole(t, again, w.name, data);
    await again.close();
  }
});

test('a pull into a store whose fsyncs or writes fail: ERR_IO (the local disk, not the source\'s fault), and the pull resumes once the disk is back', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio pull in', 3 * MiB + 1);
  const server = await tempStore(t);
  const name = await putBlob(server, data);
  const srv = await serveT(t, server);
  const client = await BlobStore.open(fsx.root);
  t.teardown(() => client.close().catch(() => {}));
  for (const rule of ['fsync ^/tmp/', 'write ^/tmp/', 'rename ^/tmp/', 'create ^/tmp/']) {
    fsx.fail(rule);
    const got = await within(fetchBlob(client, name, { from: [srv.url], token: TOKEN }), 20_000);
    fsx.fail();
    t.true(['ERR_IO', 'resolved'].includes(got), `${rule}: ERR_IO (or done), not ${got}`);
    const st = await client.stat(name).catch(() => undefined);
    if (got === 'resolved') break;
    t.false(st?.finalized ?? false, `${rule}: not final`);
  }
  const c = await connectT(t, client, srv.url);
  await c.pull(name);
  await whole(t, client, name, data);
});

test('a push from a store whose fragment read fails: ERR_IO, and the server holds no finalized blob of it', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store: client, name, data } = await withBlob(t, fsx, 'eio push from', 3 * MiB + 1);
  const server = await tempStore(t);
  const srv = await serveT(t, server);
  const c = await connectT(t, client, srv.url);
  fsx.fail('read ^/cas/');
  const got = await within(c.push(name), 20_000);
  fsx.fail();
  t.is(got, 'ERR_IO');
  t.false((await server.stat(name).catch(() => undefined))?.finalized ?? false, 'not final on the server');
  await c.push(name);
  await whole(t, server, name, data);
});

test('a range read whose leaf layer cannot be made (layers/ create, write, fsync, rename or mkdir fails, or layers/ was removed under the server): the bytes, or ERR_IO, not a raw error nor "corrupt"; later reads work', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio layer make', 3 * MiB + 1);
  const client = await tempStore(t);
  const buf = Buffer.alloc(64 * KiB);
  const readVia = async (srv: CabServer, blob: string, at: number) => {
    const c = await connectT(t, client, srv.url);
    const r = await c.openReader(blob);
    try {
      await r.readAt(buf, at);
    } finally {
      await r.close();
    }
  };
  let srv: CabServer | undefined;
  // Each rule on a fresh server (a tree it loaded stays in its memory), with no layer file.
  for (const rule of ['mkdir ^/layers', 'create ^/layers/', 'write ^/layers/', 'fsync ^/layers/', 'rename ^/layers/', 'fsyncdir ^/layers']) {
    fs.rmSync(path.join(fsx.root, 'layers'), { recursive: true, force: true });
    srv = await serveT(t, store);
    fsx.fail(rule);
    const got = await within(readVia(srv, name, MiB + 5), 20_000);
    fsx.fail();
    t.true(['ERR_IO', 'resolved'].includes(got), `${rule}: ${got}`);
    if (got === 'resolved') t.true(buf.equals(data.subarray(MiB + 5, MiB + 5 + buf.length)), `${rule}: the bytes`);
    t.log(`${rule}: ${got}`);
    await readVia(srv, name, 2 * MiB);
    t.true(buf.equals(data.subarray(2 * MiB, 2 * MiB + buf.length)), `${rule}: a later read`);
  }
  // layers/ removed under a server that made a layer there: a blob whose layer goes in the same folder is served.
  const other = prngBytes('eio layer other', 2 * MiB);
  const near = await putBlob(store, other, `${name.slice(0, 2)}${'0'.repeat(29)}1`);
  fs.rmSync(path.join(fsx.root, 'layers'), { recursive: true });
  await readVia(srv!, near, MiB);
  t.true(buf.equals(other.subarray(MiB, MiB + buf.length)), 'served after layers/ was removed');
  await whole(t, store, name, data);
});

test('HTTP: a tus POST whose descriptor cannot be made, and a PATCH whose writes fail, are 5xx, never 2xx or 404', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const srv = await serveT(t, store);
  const base = `http://127.0.0.1:${srv.port}`;
  const headers = (o: Record<string, string> = {}) => ({ authorization: `Bearer ${TOKEN}`, 'tus-resumable': '1.0.0', ...o });
  for (const rule of ['create ^/tmp/', 'fsync ^/tmp/', 'mkdir ^/blob']) {
    fsx.fail(rule);
    const r = await fetch(`${base}/files/`, { method: 'POST', headers: headers({ 'upload-length': '1000' }) });
    fsx.fail();
    t.true(r.status >= 500 || r.status === 201, `${rule}: POST: a 5xx (or made), not ${r.status}`);
  }
  const created = await fetch(`${base}/files/`, { method: 'POST', headers: headers({ 'upload-length': String(MiB) }) });
  const url = new URL(created.headers.get('location')!, base).href;
  const name = url.split('/').pop()!;
  const data = prngBytes('eio tus write', MiB);
  fsx.fail('write ^/tmp/', 'write \\.frag$');
  const r = await fetch(url, { method: 'PATCH', headers: headers({ 'upload-offset': '0', 'content-type': 'application/offset+octet-stream' }), body: data }).then((x) => `status ${x.status}`, () => 'cut');
  fsx.fail();
  t.true(/^status 5\d\d$|^cut$/.test(r), `PATCH: ${r}`);
  const head = await fetch(url, { method: 'HEAD', headers: headers() });
  const at = Number(head.headers.get('upload-offset'));
  const done = await fetch(url, { method: 'PATCH', headers: headers({ 'upload-offset': String(at), 'content-type': 'application/offset+octet-stream' }), body: data.subarray(at) });
  t.is(done.status, 204);
  await whole(t, store, name, data);
});

// --- reuse of what the store holds, when reading it fails ---

test('appendBlob whose source descriptor cannot be read, and a whole-blob copy whose source leaf layer cannot be read: ERR_IO or a good copy', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio reuse', 2 * MiB + 3);
  // The leaf layer, made by a range request.
  const srv = await serveT(t, store);
  const c = await connectT(t, await tempStore(t), srv.url);
  const rr = await c.openReader(name);
  await rr.readAt(Buffer.alloc(100), 5);
  await rr.close();
  for (const rule of ['open ^/blob/', 'read ^/blob/', 'read ^/layers/', 'open ^/layers/']) {
    await store.close();
    const s = await BlobStore.open(fsx.root);
    const w = await s.newBlobWriter();
    fsx.fail(rule);
    const e = await rejection(w.appendBlob(name).then(() => w.close()));
    fsx.fail();
    if (e === undefined) t.true((await readAll(s, w.name)).equals(data), `${rule}: the copy is right`);
    else {
      t.true(isCabError(e, 'ERR_IO'), `${rule}: ERR_IO, not ${String(e)}`);
      await w.close().catch(() => {});
    }
    t.log(`${rule}: ${e === undefined ? 'copied' : (e as Error).message.slice(0, 100)}`);
    await s.close();
  }
  const s = await BlobStore.open(fsx.root);
  t.teardown(() => s.close().catch(() => {}));
  await whole(t, s, name, data);
});

test('a push into a server that builds from its own older version and cannot read it: the push fails (ERR_IO from the peer) or the blob is whole; never a wrong blob', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store: server, data: old } = await withBlob(t, fsx, 'eio push fine', 4 * MiB);
  const next = edited(old, 5, 8).bytes;
  const srv = await serveT(t, server);
  const client = await tempStore(t);
  const name = await putBlob(client, next);
  const c = await connectT(t, client, srv.url);
  fsx.fail('read ^/cas/');
  const got = await within(c.push(name), 30_000);
  fsx.fail();
  t.true(['ERR_IO', 'ERR_REMOTE', 'resolved'].includes(got), `the push: ${got}`);
  t.log(`the push: ${got}`);
  if (got !== 'resolved') await c.push(name);
  await whole(t, server, name, next);
});

test('an import into a store that holds an older version it cannot read: ERR_IO or a whole blob', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const old = prngBytes('eio import fine', 4 * MiB);
  const next = edited(old, 7, 8).bytes;
  const src = await tempStore(t);
  const name = await putBlob(src, next);
  const file = path.join(tempDir(t), 'b.cab');
  await exportBundle(src, [name], file);
  const dst = await BlobStore.open(fsx.root);
  t.teardown(() => dst.close().catch(() => {}));
  await putBlob(dst, old);
  fsx.fail('read ^/cas/');
  const got = await within(importBundle(dst, file), 30_000);
  fsx.fail();
  t.true(['ERR_IO', 'resolved'].includes(got), `the import: ${got}`);
  if (got !== 'resolved') await importBundle(dst, file);
  await whole(t, dst, name, next);
});

test('a cached remote reader (cache: true) whose local copy cannot be written: the reads give the right bytes or ERR_IO, and the copy is never final and wrong', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio cache', 2 * MiB + 3);
  const server = await tempStore(t);
  const name = await putBlob(server, data);
  const srv = await serveT(t, server);
  const local = await BlobStore.open(fsx.root);
  t.teardown(() => local.close().catch(() => {}));
  const c = await connectT(t, local, srv.url);
  const r = await c.openReader(name, { cache: true });
  const buf = Buffer.alloc(256 * KiB);
  await r.readAt(buf, 0);
  fsx.fail('write ^/tmp/', 'fsync ^/tmp/', 'fdatasync ^/tmp/');
  const results: string[] = [];
  for (let at = buf.length; at < data.length; at += buf.length) {
    const n = await r.readAt(buf, at).then((k) => k, (e: unknown) => e);
    if (typeof n === 'number') {
      t.true(buf.subarray(0, n).equals(data.subarray(at, at + n)), `the bytes at ${at}`);
      results.push('ok');
    } else {
      t.true(isCabError(n, 'ERR_IO'), `a read at ${at}: ERR_IO, not ${String(n)}`);
      results.push('ERR_IO');
    }
  }
  const closed = await r.close().then(() => 'closed', (e: unknown) => (isCabError(e) ? e.code : String(e)));
  fsx.fail();
  t.log(results.join(' '), closed);
  t.true(['closed', 'ERR_IO'].includes(closed), `close: ${closed}`);
  const st = await local.stat(name).catch(() => undefined);
  if (st?.finalized) await whole(t, local, name, data);
  else {
    await c.pull(name);
    await whole(t, local, name, data);
  }
});

test('a bundle or have-file on a failing disk: reading it is ERR_IO, never "truncated" nor "corrupt"; writing one that fails is ERR_IO and leaves no bundle', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const src = await tempStore(t);
  const data = prngBytes('eio bundle file', 2 * MiB + 3);
  const name = await putBlob(src, data);
  const dir = path.join(fsx.root, 'in');
  fs.mkdirSync(dir);
  const bundle = path.join(dir, 'b.cab');
  const have = path.join(dir, 'have');
  await exportBundle(src, [name], bundle);
  const dst = await tempStore(t);
  await putBlob(dst, data.subarray(0, MiB));
  await writeHave(dst, have);
  for (const rule of ['read ^/in/', 'open ^/in/', 'getattr ^/in/']) {
    fsx.fail(rule);
    await failsIo(t, importBundle(dst, bundle), `${rule}: import`);
    await failsIo(t, exportBundle(src, [name], path.join(tempDir(t), 'x.cab'), { have }), `${rule}: export with a have-file`);
    fsx.fail();
    t.false((await dst.stat(name).catch(() => undefined))?.finalized ?? false, `${rule}: nothing imported`);
  }
  for (const rule of ['write ^/in/', 'fsync ^/in/', 'create ^/in/', 'rename ^/in/']) {
    fsx.fail(rule);
    const out = path.join(dir, 'out.cab');
    const e = await rejection(exportBundle(src, [name], out));
    const h = await rejection(writeHave(dst, path.join(dir, 'have2')));
    fsx.fail();
    t.true(isCabError(e, 'ERR_IO'), `${rule}: export: ERR_IO, not ${String(e)}`);
    t.true(h === undefined || isCabError(h, 'ERR_IO'), `${rule}: writeHave: ERR_IO, not ${String(h)}`);
    t.false(fs.existsSync(out), `${rule}: no bundle left`);
  }
  await importBundle(dst, bundle);
  await whole(t, dst, name, data);
  fs.rmSync(dir, { recursive: true });
});

test('HTTP: a tus termination (DELETE) whose unlink fails is not a success, and the upload is still there', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const srv = await serveT(t, store);
  const base = `http://127.0.0.1:${srv.port}`;
  const headers = (o: Record<string, string> = {}) => ({ authorization: `Bearer ${TOKEN}`, 'tus-resumable': '1.0.0', ...o });
  const created = await fetch(`${base}/files/`, { method: 'POST', headers: headers({ 'upload-length': '5000' }) });
  const url = new URL(created.headers.get('location')!, base).href;
  t.is((await fetch(url, { method: 'PATCH', headers: headers({ 'upload-offset': '0', 'content-type': 'application/offset+octet-stream' }), body: Buffer.alloc(1000, 1) })).status, 204);
  fsx.fail('unlink ^/blob/', 'rename ^/blob/', 'fsyncdir ^/blob/');
  const del = await fetch(url, { method: 'DELETE', headers: headers() });
  fsx.fail();
  t.true(del.status >= 500, `DELETE: a 5xx, not ${del.status}`);
  const head = await fetch(url, { method: 'HEAD', headers: headers() });
  t.true(head.status === 200 || head.status === 404, `HEAD after: ${head.status}`);
  if (head.status === 200) t.is(head.headers.get('upload-offset'), '1000');
});

test('a reader whose pins cannot be published (leases/ write or rename fails): ERR_IO, or a reader whose fragments gc keeps', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const { store, name, data } = await withBlob(t, fsx, 'eio reader pins', MiB + 3);
  for (const rule of ['write ^/leases/', 'rename ^/leases/', 'create ^/leases/']) {
    fsx.fail(rule);
    const r = await store.newBlobReader(name).catch((e: Error) => e);
    fsx.fail();
    if (!(r instanceof Error)) {
      const before = fragCount(fsx.root);
      await store.deleteBlob(name);
      await store.gc();
      t.is(fragCount(fsx.root), before, `${rule}: gc keeps the open reader's fragments`);
      const buf = Buffer.alloc(data.length);
      await r.readFully(buf, 0);
      t.true(buf.equals(data), `${rule}: the reader reads the blob`);
      await r.close();
      t.log(`${rule}: a reader`);
      return;
    }
    t.true(isCabError(r, 'ERR_IO'), `${rule}: ERR_IO, not ${String(r)}`);
  }
  await whole(t, store, name, data);
});
