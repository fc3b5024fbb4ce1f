// A full disk, for real: stores on a small tmpfs filled to the last few
// KiB. A write the disk cuts short is ERR_NO_SPACE for that operation; what
// was durable before it stands, reads back and resumes; the store stays
// readable while the disk is full; a server keeps serving; nothing is left
// in tmp/. (Issue "Never lose a byte", items 1 and 2.)
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, connect, isCabError, merkleRoot, serve, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { readAll, tempStore, putBlob } from './helpers/store.js';
import { fillDisk, smallDisk } from './helpers/faults.js';
import { runCli } from './helpers/cli.js';

const MiB = 1024 * 1024;
const KiB = 1024;

function tmpEntries(store: BlobStore): string[] {
  return fs.readdirSync(path.join(store.root, 'tmp'));
}

test('a writer that runs out of disk fails with ERR_NO_SPACE; every flushed byte stands, reads back and resumes; tmp/ is left empty', async (t) => {
  const disk = smallDisk(t, 24);
  if (!disk) return;
  const data = prngBytes('full disk writer', 16 * MiB);
  const store = await BlobStore.open(path.join(disk, 's'), { fragmentSize: MiB });
  t.teardown(() => store.close().catch(() => {}));
  fillDisk(disk, 5 * MiB);
  const w = await store.newBlobWriter();
  let durable = 0;
  let failure: unknown;
  for (let off = 0; off < data.length; off += MiB) {
    try {
      await w.appendBytes(data.subarray(off, off + MiB));
      await w.flush();
      durable = off + MiB;
    } catch (e) {
      failure = e;
      break;
    }
  }
  t.true(isCabError(failure, 'ERR_NO_SPACE'), `the write failed with ERR_NO_SPACE, not ${String(failure)}`);
  t.true(durable >= MiB, `some flushes passed before the disk filled (${durable})`);
  // The writer is finished: later calls give the same failure, not a hang or a success.
  t.is((await t.throwsAsync(w.appendBytes(new Uint8Array(1)), { instanceOf: CabError }))!.code, 'ERR_NO_SPACE');
  t.deepEqual(tmpEntries(store).filter((f) => f.startsWith(`${process.pid}-`) && !f.endsWith('.lease')), [], 'no temp fragment left');

  // Readable while the disk is still full.
  const names: string[] = [];
  for await (const n of store.listBlobIds()) names.push(n);
  t.deepEqual(names, [w.name]);
  const got = await readAll(store, w.name);
  t.is(got.length, durable, 'the blob holds exactly the flushed bytes');
  t.true(got.equals(data.subarray(0, durable)));
  const report = await store.fsck();
  t.deepEqual(report.problems, [], 'the descriptor ends cleanly at its last durable record');

  // Space again: resume from the last durable byte and finish.
  fs.rmSync(path.join(disk, 'filler'));
  const w2 = await store.resumeBlobWriter(w.name);
  t.is(w2.size, durable);
  await w2.appendBytes(data.subarray(durable));
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(data)));
  t.true((await readAll(store, w.name)).equals(data));
});

test('on a disk with 128 KiB free, a put that dedups everything either stands whole or fails with ERR_NO_SPACE; the index catches up once there is room', async (t) => {
  // The reported case: the descriptor record fits, the index commit does not (LMDB says EIO).
  const disk = smallDisk(t, 64);
  if (!disk) return;
  const data = prngBytes('full disk dedup', 24 * MiB);
  const root = path.join(disk, 's');
  let store = await BlobStore.open(root);
  const base = await putBlob(store, data);
  fillDisk(disk, 128 * KiB);
  let name: string | undefined;
  try {
    const w = await store.newBlobWriter();
    name = w.name;
    await w.appendBytes(data);
    await w.close();
  } catch (e) {
    t.true(isCabError(e, 'ERR_NO_SPACE'), `failed with ERR_NO_SPACE, not ${String(e)}`);
  }
  // Whatever happened, every blob reads back as a prefix of what was written (the base whole).
  t.true((await readAll(store, base)).equals(data));
  if (name) {
    const r = await store.newBlobReader(name);
    await r.close();
    const got = await readAll(store, name);
    t.true(got.equals(data.subarray(0, got.length)));
    if (r.isFinalized) t.is(got.length, data.length);
  }
  await store.close();
  // Reopened while still full: open must not fail on an index it cannot update.
  store = await BlobStore.open(root);
  t.true((await readAll(store, base)).equals(data));
  await store.close();
  fs.rmSync(path.join(disk, 'filler'));
  store = await BlobStore.open(root);
  t.teardown(() => store.close());
  const report = await store.fsck();
  t.deepEqual(report.problems.filter((p) => p.kind !== 'torn-descriptor'), [], 'with room again, the index agrees with every descriptor');
});

test('a push larger than the server disk fails with ERR_NO_SPACE; the server keeps serving, and the pushed prefix resumes', async (t) => {
  const disk = smallDisk(t, 24);
  if (!disk) return;
  const server = await BlobStore.open(path.join(disk, 's'), { fragmentSize: 2 * MiB });
  t.teardown(() => server.close().catch(() => {}));
  const small = await putBlob(server, prngBytes('server small', 256 * KiB));
  fillDisk(disk, 8 * MiB);
  const srv = await serve(server, { tokens: { tok: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const client = await tempStore(t);
  const big = prngBytes('push too big', 16 * MiB);
  const name = await putBlob(client, big);
  const c = await connect(client, srv.url, { token: 'tok' });
  t.teardown(() => c.close());
  const e = await t.throwsAsync(c.push(name), { instanceOf: CabError });
  t.is(e!.code, 'ERR_NO_SPACE', e!.message);
  // The same connection and a new one still work.
  t.is((await c.stat(small)).size, 256 * KiB);
  const c2 = await connect(await tempStore(t), srv.url, { token: 'tok' });
  t.teardown(() => c2.close());
  const pulled = await c2.pull(small);
  t.is(pulled.size, 256 * KiB);
  // Room again: the same push finishes, keeping what had been made durable.
  fs.rmSync(path.join(disk, 'filler'));
  await c.push(name);
  t.true((await readAll(server, name)).equals(big));
});


test('cabstore put on a full disk exits 1 naming ERR_NO_SPACE and prints no NAME HASH; ls and fsck still run', async (t) => {
  const disk = smallDisk(t, 48);
  if (!disk) return;
  const file = path.join(disk, 'input');
  fs.writeFileSync(file, prngBytes('cli full disk', 20 * MiB));
  const store = path.join(disk, 's');
  const first = await runCli(store, 'put', file);
  t.is(first.code, 0, first.stderr);
  for (const leave of [16 * KiB, 128 * KiB]) {
    fillDisk(disk, leave, path.join(disk, `filler-${leave}`));
    const r = await runCli(store, 'put', file);
    if (r.code === 0) {
      // Stood whole: it must then read back whole.
      const [name] = r.stdout.trim().split(' ');
      const back = await runCli(store, 'stat', name!);
      t.is(back.code, 0, back.stderr);
      t.regex(back.stdout, /20971520/);
    } else {
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr.trim().split('\n').pop()!, /ERR_NO_SPACE/);
      t.is(r.stdout, '', 'no NAME HASH for a blob that is not stored');
    }
    t.notRegex(r.stderr, /Node\.js v\d+|at process\./, 'no crash trace');
    const ls = await runCli(store, 'ls');
    t.is(ls.code, 0, `ls while the disk is full: ${ls.stderr}`);
    const fsck = await runCli(store, 'fsck');
    t.true(fsck.code === 0 || fsck.code === 1, `fsck while the disk is full exits 0 or 1: ${fsck.code} ${fsck.stderr}`);
    t.notRegex(fsck.stderr, /Node\.js v\d+/, 'no crash trace');
    fs.rmSync(path.join(disk, `filler-${leave}`));
  }
});
