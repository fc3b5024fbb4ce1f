// Damage is recorded per chunk range, keeps fsck failing while it lasts, and
// is healed by a pull or an import of the blob from a store that holds it.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, exportBundle, importBundle, merkleRoot, toHex, writeHave } from '../src/index.js';
import { encodeRecord } from '../src/format/descriptor.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll } from './helpers/store.js';
import { chunkHolding, flipByte } from './helpers/damage.js';
import { runCli } from './helpers/cli.js';
import { connectPeer, servePeer } from './helpers/peers.js';
import { descriptorPath } from './helpers/paths.js';

const BYTES = prngBytes('damage', 12_000_000);
const HASH = toHex(merkleRoot(BYTES));
const AT = [5_000_000, 9_000_000];

/** Store `dir` gets blob `name` (BYTES) by a pull from `src`, so both hold it in their own fragments. */
async function pulledCopy(t: ExecutionContext, src: BlobStore, name: string): Promise<{ dir: string; store: BlobStore; url: string }> {
  const srv = await servePeer(t, src);
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  await (await connectPeer(t, store, srv.url)).pull(name);
  return { dir, store, url: srv.url };
}

async function expectDamaged(t: ExecutionContext, store: BlobStore, name: string, at: number, range: { start: number; end: number }): Promise<void> {
  const r = await store.newBlobReader(name);
  try {
    const e = await t.throwsAsync(r.readAt(Buffer.alloc(100), at), { instanceOf: CabError });
    t.is(e?.code, 'ERR_BLOB_DAMAGED');
    t.is(e?.data.offset, range.start);
    t.is(e?.data.end, range.end);
  } finally {
    await r.close();
  }
}

test('fsck --verify --repair records damage per chunk; reads fail only inside it; fsck exits 1 until a pull heals exactly the damaged chunks', async (t) => {
  const a = await tempStore(t);
  const name = await putBlob(a, BYTES);
  const b = await pulledCopy(t, a, name);
  // a second blob in b that shares the damaged fragment (appendBlob references it)
  const w = await b.store.newBlobWriter();
  await w.appendBlob(name, 4_000_000, 2_000_000);
  await w.close();
  for (const at of AT) await flipByte(b.store, name, at);
  const bad = await Promise.all(AT.map((at) => chunkHolding(b.store, name, at)));
  t.log(`bytes ${AT.join(', ')} changed; their chunks: ${bad.map((c) => `${c.start}..${c.end}`).join(', ')}`);

  const plain = await b.store.fsck();
  t.deepEqual(plain.problems, [], 'plain fsck reads no content: it cannot see a changed byte');
  const repaired = await b.store.fsck({ verify: true, repair: true });
  t.deepEqual(
    repaired.damaged.filter((d) => d.blob === name).map((d) => [d.offset, d.end]),
    bad.map((c) => [c.start, c.end]),
    'exactly the two chunks are recorded, not the blob from byte 0',
  );
  t.true(repaired.damaged.some((d) => d.blob === w.name), 'the blob sharing the fragment is damaged too');
  t.true(repaired.problems.some((p) => p.kind === 'damaged' && !p.repaired));

  // reads fail inside the damage only
  for (const [i, at] of AT.entries()) await expectDamaged(t, b.store, name, at, bad[i]!);
  const r = await b.store.newBlobReader(name);
  const before = Buffer.alloc(bad[0]!.start);
  t.is(await r.readAt(before, 0), before.length);
  t.true(before.equals(BYTES.subarray(0, bad[0]!.start)));
  const between = Buffer.alloc(bad[1]!.start - bad[0]!.end);
  t.is(await r.readAt(between, bad[0]!.end), between.length);
  t.true(between.equals(BYTES.subarray(bad[0]!.end, bad[1]!.start)));
  const after = Buffer.alloc(BYTES.length - bad[1]!.end);
  t.is(await r.readAt(after, bad[1]!.end), after.length);
  t.true(after.equals(BYTES.subarray(bad[1]!.end)));
  t.is((await r.readAt(Buffer.alloc(1 << 20), bad[0]!.start - 1000)), 1000, 'a read that runs into the damage stops short of it');
  await r.close();

  // the index offers the healthy chunks, not the damaged ones
  for await (const c of b.store.blobChunkStream(name)) {
    const loc = await b.store.lookupChunk(c.hash).catch(() => undefined);
    const damaged = bad.some((x) => loc?.offset === x.start && loc.blob === name);
    t.false(damaged, 'a damaged chunk is not offered');
  }

  // the CLI: fsck exits 1 while the blob is damaged
  await b.store.close();
  const cli = await runCli(b.dir, 'fsck');
  t.is(cli.code, 1, cli.stdout);
  t.regex(cli.stdout, /damaged/);

  // a pull from the healthy store heals exactly the damaged chunks
  const s = await BlobStore.open(b.dir);
  t.teardown(() => s.close());
  const st = await (await connectPeer(t, s, b.url)).pull(name);
  const damagedBytes = bad.reduce((n, c) => n + c.end - c.start, 0);
  t.false(st.alreadyHad);
  t.is(st.healedBytes, damagedBytes);
  t.is(st.receivedBytes, damagedBytes, 'exactly the damaged chunks travelled');
  t.true((await readAll(s, name)).equals(BYTES));
  const rd = await s.newBlobReader(name);
  t.is(toHex(rd.hash!), HASH);
  t.deepEqual(rd.damage, []);
  await rd.close();
  const again = await s.fsck({ verify: true });
  t.deepEqual(again.problems.filter((p) => p.blob === name), [], JSON.stringify(again.problems));
  const other = await (await connectPeer(t, s, b.url)).pull(name);
  t.true(other.alreadyHad, 'healed: the next pull has nothing to do');
  // the second blob is still damaged until it is pulled too
  t.true(again.problems.some((p) => p.kind === 'damaged' && p.blob === w.name));
});

test('an import of a bundle heals a damaged blob; the have file asks for the damaged chunks', async (t) => {
  const a = await tempStore(t);
  const name = await putBlob(a, BYTES);
  const b = await pulledCopy(t, a, name);
  await flipByte(b.store, name, AT[0]!);
  await b.store.fsck({ verify: true, repair: true });
  const dir = tempDir(t);
  const have = path.join(dir, 'b.have');
  await writeHave(b.store, have);
  const bundle = path.join(dir, 'x.bundle');
  const ex = await exportBundle(a, [name], bundle, { have });
  const bad = await chunkHolding(b.store, name, AT[0]!);
  t.is(ex.dataBytes, bad.end - bad.start, 'the bundle holds exactly the damaged chunk');
  const rep = await importBundle(b.store, bundle);
  t.deepEqual(rep.incomplete, []);
  t.is(rep.imported[0]!.healedBytes, bad.end - bad.start);
  t.true((await readAll(b.store, name)).equals(BYTES));
  t.deepEqual((await b.store.fsck({ verify: true })).problems, []);
  await b.store.close();
  const cli = await runCli(b.dir, 'fsck', '--verify');
  t.is(cli.code, 0, cli.stdout);
});

test('a damage record written by an older version (no end) still means: damaged from there to the end', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, BYTES.subarray(0, 3_000_000));
  fs.appendFileSync(descriptorPath(store, name), encodeRecord({ t: 'd', o: 1_500_000, why: 'missing-fragment x' }));
  const r = await store.newBlobReader(name);
  t.teardown(() => r.close());
  const c = await chunkHolding(store, name, 1_500_000);
  t.deepEqual(r.damage.map((d) => [d.o, d.e]), [[c.start, 3_000_000]]);
  t.is((await t.throwsAsync(r.readAt(Buffer.alloc(10), 2_900_000), { instanceOf: CabError }))?.code, 'ERR_BLOB_DAMAGED');
  const report = await store.fsck();
  t.deepEqual(report.problems.map((p) => p.kind), ['damaged']);
});
