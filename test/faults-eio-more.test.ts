// More real I/O errors (test/helpers/faultfs.py): every path that touches the
// store's files, as a user with a failing disk meets it. Each operation fails
// with ERR_IO (never a raw Node error, never "absent", never "corrupt"),
// nothing is deleted or marked damaged because of an I/O error, nothing is
// reported done before it is durable, and once the fault clears the store is
// whole.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, isCabError, merkleRoot, toHex, type FsckReport } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { readAll } from './helpers/store.js';
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

/** A store on the fault mount with one finalized blob of `data`. */
async function withBlob(t: ExecutionContext, fsx: FaultStore, data: Buffer): Promise<{ store: BlobStore; name: string }> {
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  await w.close();
  return { store, name: w.name };
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
  const data = prngBytes('eio reader', 3 * MiB + 11);
  const { store, name } = await withBlob(t, fsx, data);
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
  const data = prngBytes('eio appendBlob', 2 * MiB + 3);
  const { store, name } = await withBlob(t, fsx, data);
  fsx.fail('read ^/cas/', 'open ^/cas/');
  const w = await store.newBlobWriter();
  const a = await w.appendBlob(name, 100, 1500 * KiB).then(() => undefined, (e: unknown) => e);
  if (a !== undefined) t.true(isCabError(a, 'ERR_IO'), `appendBlob: ERR_IO, not ${String(a)}`);
  const c = await w.close().then(() => undefined, (e: unknown) => e);
  if (c !== undefined) t.true(isCabError(c, 'ERR_IO') || isCabError(c), `close: a CabError, not ${String(c)}`);
  // The same bytes again (dedup may read the chunks it holds to compare them).
  const w2 = await store.newBlobWriter();
  const b = await w2.appendBytes(data).then(() => w2.close()).then(() => undefined, (e: unknown) => e);
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
    const e = await w.appendBytes(data.subarray(MiB, 2 * MiB)).then(() => w.flush()).then(() => undefined, (x: unknown) => x);
    if (e === undefined) {
      // Nothing failed at flush (the rule names a file the flush did not touch): then close must fail, or the blob is whole.
      const c = await w.close().then(() => undefined, (x: unknown) => x);
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
      const w2 = await again.resumeBlobWriter(w.name);
      await w2.appendBytes(data.subarray(w2.size));
      await w2.close();
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
    const e = await w.close().then(() => undefined, (x: unknown) => x);
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
      const w2 = await again.resumeBlobWriter(w.name);
      await w2.appendBytes(data.subarray(w2.size));
      await w2.close();
    }
    await whole(t, again, w.name, data);
  });
}

test('deleteBlob whose unlink or directory fsync fails is ERR_IO, never a raw EIO nor a success; the blob is whole after a failed unlink, and the next delete works', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio delete', MiB + 1);
  const { store, name } = await withBlob(t, fsx, data);
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
  const keep = prngBytes('eio gc keep', MiB + 7);
  const { store, name } = await withBlob(t, fsx, keep);
  const w = await store.newBlobWriter();
  await w.appendBytes(prngBytes('eio gc drop', MiB));
  await w.close();
  await store.deleteBlob(w.name);
  fsx.fail('unlink ^/cas/');
  const g = await store.gc().catch((x: Error) => x);
  t.true(g instanceof Error ? isCabError(g, 'ERR_IO') : g.fragmentsDeleted === 0, `gc: ERR_IO or nothing deleted: ${g instanceof Error ? g.message : JSON.stringify(g)}`);
  for (const rule of ['read ^/blob/', 'open ^/blob/', 'getattr ^/blob/', 'readdir ^/leases', 'open ^/leases/', 'read ^/leases/', 'getattr ^/leases/']) {
    fsx.fail(rule);
    const before = fragCount(fsx.root);
    const g2 = await store.gc().catch((x: Error) => x);
    fsx.fail();
    t.true(g2 instanceof Error ? isCabError(g2, 'ERR_IO') : g2.fragmentsDeleted <= 1, `gc with ${rule}: ERR_IO or only the dropped blob's fragment deleted: ${g2 instanceof Error ? g2.message : JSON.stringify(g2)}`);
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
  const data = prngBytes('eio pins', MiB + 3);
  const { store, name } = await withBlob(t, fsx, data);
  const w = await store.newBlobWriter();
  await w.appendBlob(name);
  await store.deleteBlob(name);
  const before = fragCount(fsx.root);
  for (const rule of ['read \\.pins$', 'open \\.pins$', 'open \\.lease$', 'readdir ^/leases']) {
    fsx.fail(rule);
    const g = await store.gc().catch((x: Error) => x);
    fsx.fail();
    t.true(g instanceof Error ? isCabError(g, 'ERR_IO') : g.fragmentsDeleted === 0, `gc with ${rule}: ERR_IO or nothing deleted: ${g instanceof Error ? g.message : JSON.stringify(g)}`);
    t.is(fragCount(fsx.root), before, `${rule}: no fragment removed`);
  }
  await w.close();
  t.true((await readAll(store, w.name)).equals(data));
});

test('a pin that cannot be written (leases/ write or rename fails) fails appendBlob with ERR_IO, never a pin gc cannot see', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio pin write', MiB + 3);
  const { store, name } = await withBlob(t, fsx, data);
  for (const rule of ['write ^/leases/', 'fsync ^/leases/', 'rename ^/leases/', 'create ^/leases/']) {
    const w = await store.newBlobWriter();
    fsx.fail(rule);
    const e = await w.appendBlob(name).then(() => undefined, (x: unknown) => x);
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
  const data = prngBytes('eio fsck', MiB + 3);
  const { store, name } = await withBlob(t, fsx, data);
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
