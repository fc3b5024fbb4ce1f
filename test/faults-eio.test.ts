// I/O errors for real: a store on a FUSE mount (test/helpers/faultfs.py)
// whose fsync, fdatasync, open or read of chosen files fail with EIO, as a
// failing disk's do. A failed flush is never a success (the kernel reports
// a writeback error to one fsync only: a failed background fdatasync must
// fail the seal whose own fsync then passes), and an I/O error is never
// taken for "absent": it is ERR_IO, and the store is unchanged.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, isCabError, merkleRoot, toHex, type FsckReport } from '../src/index.js';
import { WRITEBACK_BYTES } from '../src/disk/fragments.js';
import { prngBytes } from '../tools/data.js';
import { readAll } from './helpers/store.js';
import { faultStore } from './helpers/faults.js';

const MiB = 1024 * 1024;

test('a background fdatasync of a fragment that fails with EIO fails the writer with ERR_IO though the seal\'s own fsync passes; the blob holds its last durable byte and resumes', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio writeback', 2 * WRITEBACK_BYTES + 4 * MiB);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  // Flushed before the fault: durable.
  await w.appendBytes(data.subarray(0, 4 * MiB));
  await w.flush();
  fsx.fail('fdatasync \\.frag$'); // only the background writeback's fdatasync; fsync passes
  let failure: unknown;
  let at = 4 * MiB;
  try {
    for (; at < data.length; at += MiB) await w.appendBytes(data.subarray(at, at + MiB));
    await w.flush();
  } catch (e) {
    failure = e;
  }
  t.true(isCabError(failure, 'ERR_IO'), `the writer failed with ERR_IO, not ${String(failure)}`);
  t.regex((failure as Error).message, /back to disk|EIO/);
  // The writer is finished: later calls fail too, none reports a success.
  await t.throwsAsync(w.close(), { instanceOf: CabError });
  fsx.fail();
  await store.close();

  const again = await BlobStore.open(fsx.root);
  t.teardown(() => again.close().catch(() => {}));
  const st = await again.stat(w.name);
  t.false(st.finalized, 'not finalized');
  t.is(st.size, 4 * MiB, 'the blob ends at its last durable flush, before the failed writeback');
  t.true((await readAll(again, w.name)).equals(data.subarray(0, 4 * MiB)));
  t.deepEqual((await again.fsck({ verify: true })).problems, []);
  const w2 = await again.resumeBlobWriter(w.name);
  await w2.appendBytes(data.subarray(w2.size));
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(data)));
  t.true((await readAll(again, w.name)).equals(data));
});

test('an fsync that fails with EIO at finalize fails close() with ERR_IO; the blob is not final and resumes once the disk is back', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio finalize', 3 * MiB);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  fsx.fail('fsync ^/tmp/');
  const e = await t.throwsAsync(w.close(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_IO');
  fsx.fail();
  t.false((await store.stat(w.name)).finalized, 'not reported final');
  t.deepEqual((await store.fsck()).problems, []);
  t.deepEqual(fs.readdirSync(path.join(fsx.root, 'tmp')).filter((f) => f.endsWith('.frag')), [], 'no temp fragment left');
  const w2 = await store.resumeBlobWriter(w.name);
  await w2.appendBytes(data.subarray(w2.size));
  await w2.close();
  t.true((await readAll(store, w.name)).equals(data));
});

test('an I/O error on a blob\'s descriptor or fragment is ERR_IO, never "no such blob"; fsck --repair removes nothing it could not read', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const data = prngBytes('eio read', 2 * MiB + 7);
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  await w.close();
  const name = w.name;
  await store.close();

  const before = fs.readdirSync(path.join(fsx.root, 'cas'), { recursive: true }).length;
  for (const rule of ['open ^/blob/', 'read ^/blob/']) {
    const s = await BlobStore.open(fsx.root);
    fsx.fail(rule);
    try {
      const e = await t.throwsAsync(s.stat(name), undefined, rule);
      t.true(isCabError(e, 'ERR_IO'), `${rule}: stat fails with ERR_IO, not ${String(e)}`);
      const r = await t.throwsAsync(readAll(s, name), undefined, rule);
      t.true(isCabError(r, 'ERR_IO'), `${rule}: a read fails with ERR_IO, not ${String(r)}`);
    } finally {
      fsx.fail();
      await s.close();
    }
  }
  for (const rule of ['open ^/cas/', 'read ^/cas/']) {
    const s = await BlobStore.open(fsx.root);
    fsx.fail(rule);
    try {
      const r = await t.throwsAsync(readAll(s, name), undefined, rule);
      t.true(isCabError(r, 'ERR_IO'), `${rule}: a read of the blob's bytes fails with ERR_IO, not ${String(r)}`);
      // fsck may stop at the error (ERR_IO) or report it; it never takes the fragment for missing or its bytes for corrupt, so repairs nothing.
      const report: FsckReport | Error = await s.fsck({ verify: true, repair: true }).catch((x: Error) => x);
      if (report instanceof Error) t.true(isCabError(report, 'ERR_IO'), `${rule}: fsck fails with ERR_IO, not ${String(report)}`);
      else {
        t.true(report.problems.length > 0, `${rule}: fsck says it could not read`);
        t.deepEqual(report.problems.filter((p) => p.repaired || p.kind !== 'index-mismatch' && /fragment|hash-mismatch|damaged/.test(p.kind)), [], `${rule}: nothing called missing or corrupt, nothing repaired`);
      }
    } finally {
      fsx.fail();
      await s.close();
    }
  }
  const s = await BlobStore.open(fsx.root);
  t.teardown(() => s.close().catch(() => {}));
  t.is(fs.readdirSync(path.join(fsx.root, 'cas'), { recursive: true }).length, before, 'no fragment removed');
  t.true((await s.stat(name)).finalized);
  t.true((await readAll(s, name)).equals(data));
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
});

test('an I/O error listing blob/ or cas/ is ERR_IO for ls, has and gc: gc removes nothing, the list is never cut short', async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  const store = await BlobStore.open(fsx.root);
  t.teardown(() => store.close().catch(() => {}));
  const names: string[] = [];
  for (let i = 0; i < 3; i++) {
    const w = await store.newBlobWriter();
    await w.appendBytes(prngBytes(`eio list ${i}`, 300 * 1024));
    await w.close();
    names.push(w.name);
  }
  const frags = () => fs.readdirSync(path.join(fsx.root, 'cas'), { recursive: true }).length;
  const before = frags();

  fsx.fail('readdir ^/blob');
  const list = async () => {
    const got: string[] = [];
    for await (const n of store.listBlobIds()) got.push(n);
    return got;
  };
  const e = await t.throwsAsync(list());
  t.true(isCabError(e, 'ERR_IO'), `listing fails with ERR_IO, not ${String(e)}`);
  const g = await store.gc().catch((x: Error) => x);
  t.true(g instanceof Error ? isCabError(g, 'ERR_IO') : g.fragmentsDeleted === 0, `gc fails with ERR_IO or removes nothing: ${g instanceof Error ? g.message : JSON.stringify(g)}`);

  fsx.fail('getattr ^/blob/');
  const h = await t.throwsAsync(store.has(names[0]!));
  t.true(isCabError(h, 'ERR_IO'), `has fails with ERR_IO, not ${String(h)}`);

  fsx.fail('readdir ^/cas');
  const g2 = await store.gc().catch((x: Error) => x);
  t.true(g2 instanceof Error ? isCabError(g2, 'ERR_IO') : g2.fragmentsDeleted === 0, `gc fails with ERR_IO or removes nothing: ${g2 instanceof Error ? g2.message : JSON.stringify(g2)}`);

  fsx.fail();
  t.is(frags(), before, 'no fragment removed');
  t.deepEqual((await list()).sort(), [...names].sort());
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
});
