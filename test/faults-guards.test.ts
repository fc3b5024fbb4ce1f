// Guards that must fail closed (issue "Never lose a byte", items 7 and 8):
// an error is never read as "nothing there". Real faults: a pins file that
// is garbage or a directory (EISDIR), a descriptor path that is a symlink
// loop (ELOOP), a full tmpfs under a closing store, a gate file that is a
// directory under a store being opened, a live process without a lease.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { BlobStore, CabError } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { runGcChild } from './helpers/children.js';
import { tempDir, putBlob, readAll, collect } from './helpers/store.js';
import { fillDisk, smallDisk } from './helpers/faults.js';

const MiB = 1024 * 1024;

/** A store with one blob deleted (its fragment is garbage) and one kept. */
async function storeWithGarbage(dir: string): Promise<{ store: BlobStore; garbage: string[]; kept: string }> {
  const store = await BlobStore.open(dir);
  const dead = await putBlob(store, prngBytes('garbage', 300_000));
  const kept = await putBlob(store, prngBytes('kept', 300_000));
  const before = await collect(store.listCaIds());
  await store.deleteBlob(dead);
  return { store, garbage: before, kept };
}

function pinsFiles(dir: string): string[] {
  return fs.readdirSync(path.join(dir, 'leases')).filter((f) => f.endsWith('.pins'));
}

for (const [what, spoil] of [
  ['garbage', (file: string) => fs.writeFileSync(file, '{"pid": 1, "fragments": [tor')],
  ['a directory (EISDIR)', (file: string) => {
    fs.rmSync(file, { force: true });
    fs.mkdirSync(file);
  }],
] as const) {
  test(`a live lease whose pins file is ${what} stops GC with ERR_IO, and nothing is deleted`, async (t) => {
    const dir = tempDir(t);
    const { store, garbage, kept } = await storeWithGarbage(dir);
    t.teardown(() => store.close().catch(() => {})); // its own pins file is spoilt too
    // A second process-like holder: another store instance with a reader open, so its lease has pins.
    const other = await BlobStore.open(dir);
    t.teardown(() => other.close().catch(() => {}));
    const r = await other.newBlobReader(kept);
    t.teardown(() => r.close().catch(() => {}));
    const mine = new Set(pinsFiles(dir));
    t.true(mine.size >= 1);
    for (const f of mine) spoil(path.join(dir, 'leases', f));
    const e = await t.throwsAsync(store.gc(), { instanceOf: CabError });
    t.is(e!.code, 'ERR_IO', e!.message);
    t.deepEqual((await collect(store.listCaIds())).sort(), garbage.sort(), 'not one fragment was deleted');
  });
}

test('GC of a store whose descriptor path is a symlink loop (ELOOP) stops with ERR_IO and drops no index entry', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const bytes = prngBytes('eloop', 200_000);
  const name = await putBlob(store, bytes);
  const [first] = await collect(store.blobChunkStream(name));
  const file = path.join(dir, 'blob', name.slice(0, 2), name);
  fs.renameSync(file, `${file}.away`);
  fs.symlinkSync(path.basename(file), file); // points at itself
  const e = await t.throwsAsync(store.gc(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_IO', e!.message);
  fs.rmSync(file);
  fs.renameSync(`${file}.away`, file);
  // The index still knows the blob's chunks: an I/O error did not read as "deleted".
  const loc = await store.lookupChunk(first!.hash);
  t.is(loc.blob, name);
  t.true((await readAll(store, name)).equals(bytes));
});

// An operator moved a descriptor, or a whole fan-out folder, to another disk and linked it back, and that disk
// is not mounted now: the link leads nowhere. Not "absent": the blob comes back with the disk, and its fragments
// must still be there then.
for (const [what, unmount] of [
  ['a descriptor', (dir: string, name: string) => path.join(dir, 'blob', name.slice(0, 2), name)],
  ['a fan-out folder', (dir: string, name: string) => path.join(dir, 'blob', name.slice(0, 2))],
] as const) {
  test(`${what} behind a link to nothing (a disk not mounted): gc stops with ERR_IO deleting nothing, the blob reads ERR_IO (not ERR_NO_SUCH_BLOB), and it is whole once the link leads somewhere again`, async (t) => {
    const dir = tempDir(t);
    const { store, garbage, kept } = await storeWithGarbage(dir);
    t.teardown(() => store.close());
    const bytes = await readAll(store, kept);
    const [first] = await collect(store.blobChunkStream(kept));
    const moved = unmount(dir, kept);
    const elsewhere = path.join(tempDir(t), 'disk');
    fs.renameSync(moved, elsewhere);
    fs.symlinkSync(path.join(tempDir(t), 'not-mounted'), moved);
    const e = await t.throwsAsync(store.gc(), { instanceOf: CabError });
    t.is(e!.code, 'ERR_IO', e!.message);
    t.deepEqual((await collect(store.listCaIds())).sort(), garbage.sort(), 'not one fragment was deleted');
    t.is((await t.throwsAsync(store.newBlobReader(kept), { instanceOf: CabError }))!.code, 'ERR_IO');
    t.is((await t.throwsAsync(store.has(kept), { instanceOf: CabError }))!.code, 'ERR_IO');
    const fsckErr = await t.throwsAsync(store.fsck(), { instanceOf: CabError });
    t.is(fsckErr!.code, 'ERR_IO');
    fs.rmSync(moved);
    fs.symlinkSync(elsewhere, moved); // the disk is back
    t.is((await store.lookupChunk(first!.hash)).blob, kept, 'the index did not drop the blob meanwhile');
    t.true((await readAll(store, kept)).equals(bytes));
    await store.gc();
    t.true((await readAll(store, kept)).equals(bytes), 'a gc through the link keeps what the blob uses');
    t.is((await collect(store.listCaIds())).length, 1);
  });
}

test('a FIFO where a descriptor should be: gc stops with ERR_IO (it does not wait on the FIFO), and a reader of it gets ERR_IO', async (t) => {
  const dir = tempDir(t);
  const { store, garbage, kept } = await storeWithGarbage(dir);
  t.teardown(() => store.close());
  const file = path.join(dir, 'blob', kept.slice(0, 2), kept);
  fs.renameSync(file, `${file}.away`);
  execFileSync('mkfifo', [file]);
  const e = await t.throwsAsync(store.gc(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_IO', e!.message);
  t.deepEqual((await collect(store.listCaIds())).sort(), garbage.sort());
  t.is((await t.throwsAsync(store.newBlobReader(kept), { instanceOf: CabError }))!.code, 'ERR_IO');
  fs.rmSync(file);
  fs.renameSync(`${file}.away`, file);
});

test('GC spares the temp files of a live process that has no lease yet (a lease being taken)', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
  t.teardown(() => {
    sleeper.kill('SIGKILL');
  });
  const live = path.join(dir, 'tmp', `${sleeper.pid}-0123456789abcdef.lease`);
  const liveFrag = path.join(dir, 'tmp', `${sleeper.pid}-0123456789abcdef.frag`);
  fs.writeFileSync(live, '');
  fs.writeFileSync(liveFrag, 'bytes in flight');
  // A process that is gone: its temp file goes.
  const gone = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
  await new Promise((r) => gone.on('exit', r));
  const dead = path.join(dir, 'tmp', `${gone.pid}-fedcba9876543210.frag`);
  fs.writeFileSync(dead, 'left by a crash');
  const rep = await store.gc();
  t.true(fs.existsSync(live), 'the live process keeps its lease in the making');
  t.true(fs.existsSync(liveFrag), 'the live process keeps its fragment in flight');
  t.false(fs.existsSync(dead), 'the dead process loses its temp file');
  t.is(rep.tempFilesDeleted, 1);
});


test('200 rounds of open, put, close beside a GC loop in another process: no lease is lost, every put stands', async (t) => {
  t.timeout(240_000);
  const dir = tempDir(t);
  await (await BlobStore.open(dir)).close();
  const [gc, puts] = await Promise.all([runGcChild(['gc-loop', dir, '12']), runGcChild(['put-loop', dir, '200'])]);
  t.is(gc.code, 0, gc.out);
  t.is(puts.code, 0, puts.out);
  t.regex(puts.out, /done failures=0/, puts.out);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  t.is((await collect(store.listBlobIds())).length, 200);
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
});

test('store.close() rejects when a writer cannot make its bytes durable (full disk); it does not report success for lost bytes', async (t) => {
  const disk = smallDisk(t, 16);
  if (!disk) return;
  const store = await BlobStore.open(path.join(disk, 's'));
  const w = await store.newBlobWriter();
  await w.appendBytes(prngBytes('close on full disk', 2 * MiB)); // held in a temp fragment, not yet durable
  fillDisk(disk, 0);
  const e = await t.throwsAsync(store.close(), { instanceOf: CabError });
  t.is(e!.code, 'ERR_NO_SPACE', e!.message);
  fs.rmSync(path.join(disk, 'filler'));
  const again = await BlobStore.open(path.join(disk, 's'));
  t.teardown(() => again.close());
  const r = await again.newBlobReader(w.name);
  await r.close();
  t.is(r.size, 0, 'the blob holds what was durable: nothing');
});

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

// Serial: it counts this process's open files, which concurrent tests would change.
test.serial('a store that fails to open leaves no LMDB environment, lease or lock open behind it', async (t) => {
  const dir = tempDir(t);
  // A write first: the hashing thread (started by open) is up and idle before the files are counted.
  const first = await BlobStore.open(dir);
  await putBlob(first, Buffer.from('warm the hashing thread'));
  await first.close();
  // The GC gate is a directory: taking the lease fails after both LMDB environments are open.
  fs.rmSync(path.join(dir, 'leases', 'gc.gate'), { force: true });
  fs.mkdirSync(path.join(dir, 'leases', 'gc.gate'));
  const before = openFds();
  for (let i = 0; i < 5; i++) {
    const e = await t.throwsAsync(BlobStore.open(dir), { instanceOf: CabError });
    t.is(e!.code, 'ERR_IO', e!.message);
  }
  t.is(openFds(), before, 'every file the failed opens took is closed again');
  t.deepEqual(fs.readdirSync(path.join(dir, 'leases')).filter((f) => f.endsWith('.lease')), [], 'no lease left behind');
  fs.rmdirSync(path.join(dir, 'leases', 'gc.gate'));
  const s = await BlobStore.open(dir);
  await s.close();
  t.pass();
});
