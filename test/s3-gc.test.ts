// GC across stores on one bucket (issue 19, docs/FORMAT.md "GC across
// stores"), on the real radosgw: what one store's GC deletes, another store
// that writes, reads and deduplicates meanwhile never misses; what nothing
// references goes. gcGrace is 0 here (the default is an hour).
import path from 'node:path';
import { BlobStore, CabError, type ObjectStoreOptions } from '../src/index.js';
import { readDescriptorBytes } from '../src/format/descriptor.js';
import { prngBytes } from '../tools/data.js';
import { bucketOptions, fileBucket, objects, s3Test } from './helpers/s3.js';
import { putBlob, readAll, tempDir } from './helpers/store.js';
import type { ExecutionContext } from 'ava';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function open(t: ExecutionContext, o: ObjectStoreOptions, dir = path.join(tempDir(t), 's')): Promise<BlobStore> {
  const s = await BlobStore.open(dir, { objectStore: o, fragmentSize: 1024 * 1024 });
  t.teardown(() => s.close());
  return s;
}

/** The fragments in the bucket, and those the published descriptors reference. */
async function bucketState(prefix: string): Promise<{ stored: Set<string>; referenced: Set<string> }> {
  const { os } = await fileBucket();
  const stored = new Set<string>();
  for (const k of (await objects(`${prefix}cas/`)).keys()) stored.add(k.slice(`${prefix}cas/`.length));
  const referenced = new Set<string>();
  for (const k of (await objects(`${prefix}blob/`)).keys()) {
    const d = await readDescriptorBytes((await os.get(k))!, k.slice(-32));
    for (const f of d.extents.fragments()) referenced.add(f);
  }
  return { stored, referenced };
}

s3Test('GC deletes what no published descriptor references and no lease pins, and nothing younger than gcGrace', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const a = await open(t, o);
  const keep = await putBlob(a, prngBytes('s3 gc keep', 3 * 1024 * 1024));
  const drop = await putBlob(a, prngBytes('s3 gc drop', 3 * 1024 * 1024));
  await a.deleteBlob(drop);
  const patient = await open(t, { ...o, gcGrace: 3_600_000 });
  const young = (await patient.gc()).bucket!;
  t.is(young.fragmentsDeleted, 0, 'nothing younger than gcGrace is deleted');
  const dry = (await a.gc({ dryRun: true })).bucket!;
  t.true(dry.fragmentsDeleted >= 3, `a dry run names the dropped blob's fragments (${dry.fragmentsDeleted})`);
  const r = (await a.gc()).bucket!;
  t.is(r.fragmentsDeleted, dry.fragmentsDeleted, 'and a real run deletes them');
  t.is(r.leases, 2, 'both stores have a lease');
  const { stored, referenced } = await bucketState(o.prefix!);
  t.deepEqual([...stored].sort(), [...referenced].sort(), 'the bucket holds exactly what the published descriptors reference');
  t.true((await readAll(a, keep)).equals(prngBytes('s3 gc keep', 3 * 1024 * 1024)));
  t.deepEqual((await a.fsck({ verify: true })).problems, []);
});

s3Test('a store whose view is stale never relies on fragments GC may take; pins taken in time keep them', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const a = await open(t, o);
  const bx = prngBytes('s3 gc stale x', 4 * 1024 * 1024);
  const by = prngBytes('s3 gc stale y', 2 * 1024 * 1024);
  const bz = prngBytes('s3 gc stale z', 2 * 1024 * 1024);
  const x = await putBlob(a, bx);
  const y = await putBlob(a, by);
  const z = await putBlob(a, bz);
  const b = await open(t, { ...o, cacheBytes: 0 });
  const xFrags = new Set((await b.snapshot(x)).extents.fragments());
  // B pins y (an open reader) and z (a writer that deduplicated against it, unfinalized) before A deletes them.
  const reader = await b.newBlobReader(y);
  const w = await b.newBlobWriter();
  await w.appendBytes(bz);
  await w.flush();
  for (const n of [x, y, z]) await a.deleteBlob(n);
  const r = (await a.gc()).bucket!;
  t.true(r.fragmentsDeleted >= xFrags.size, 'x, which nothing pinned, is deleted');
  // B has not synced: its index still offers x's chunks and its folder x's descriptor. It relies on neither.
  const refused = await t.throwsAsync(b.newBlobReader(x), { instanceOf: CabError });
  t.is(refused!.code, 'ERR_NO_SUCH_BLOB', 'a reader of x is refused: the bucket no longer publishes it');
  const w2 = await b.newBlobWriter();
  await w2.appendBytes(bx);
  await w2.close();
  t.deepEqual((await b.snapshot(w2.name)).extents.fragments().filter((f) => xFrags.has(f)), [], 'a copy of x is written anew, not made of x\'s fragments');
  // y's reader and z's writer pinned in time: their fragments stayed.
  const buf = Buffer.alloc(by.length);
  for (let at = 0; at < buf.length; ) at += await reader.readAt(buf.subarray(at), at);
  t.true(buf.equals(by), 'the open reader of the deleted y reads it all');
  await reader.close();
  await w.close();
  t.true((await readAll(b, w.name)).equals(bz), 'the blob that deduplicated against the deleted z is whole');
  await a.gc();
  await b.sync();
  t.true((await readAll(a, w.name)).equals(bz));
  t.true((await readAll(a, w2.name)).equals(bx));
  const { stored, referenced } = await bucketState(o.prefix!);
  t.deepEqual([...stored].sort(), [...referenced].sort(), "y went once its reader closed; z's fragments stay, referenced by B's blob");
  t.deepEqual((await b.fsck({ verify: true })).problems, []);
});

s3Test('GC running on one store while another writes, dedups and reads loses nothing; then it deletes what nothing references', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0 });
  const a = await open(t, o);
  const b = await open(t, { ...o, cacheBytes: 512 * 1024 });
  // Blobs on A that B knows of; A deletes half of them while B writes copies of them all.
  const sources: Array<{ name: string; bytes: Buffer }> = [];
  for (let i = 0; i < 6; i++) {
    const bytes = prngBytes(`s3 gc source ${i}`, 1024 * 1024 + i * 99_999);
    sources.push({ name: await putBlob(a, bytes), bytes });
  }
  await b.sync();
  const written: Array<{ name: string; bytes: Buffer }> = [];
  let stop = false;
  const gcRuns: number[] = [];
  const gcLoop = (async () => {
    while (!stop) {
      gcRuns.push((await a.gc()).bucket!.fragmentsDeleted);
      await sleep(200);
    }
  })();
  for (let round = 0; round < 6; round++) {
    if (round % 2 === 0) await a.deleteBlob(sources[round]!.name);
    // B: a new blob made of a source (dedup against A's, perhaps just deleted and doomed) and new bytes
    const src = sources[(round * 5) % sources.length]!;
    const bytes = Buffer.concat([src.bytes, prngBytes(`s3 gc new ${round}`, 300_000)]);
    const w = await b.newBlobWriter();
    await w.appendBytes(bytes.subarray(0, 700_000));
    await w.flush();
    await sleep(500); // an unfinalized blob through a GC or two
    await w.appendBytes(bytes.subarray(700_000));
    await w.close();
    written.push({ name: w.name, bytes });
    // and reads what B wrote so far (through the bucket: B's cache is small)
    for (const x of written) t.true((await readAll(b, x.name)).equals(x.bytes), `round ${round}: ${x.name}`);
  }
  stop = true;
  await gcLoop;
  t.true(gcRuns.length >= 4, `GC ran ${gcRuns.length} times meanwhile`);
  await a.sync();
  await b.sync();
  for (const x of written) t.true((await readAll(a, x.name)).equals(x.bytes), `A reads ${x.name}`);
  for (const i of [1, 3, 5]) t.true((await readAll(b, sources[i]!.name)).equals(sources[i]!.bytes), `B reads source ${i}`);
  t.deepEqual((await a.fsck({ verify: true })).problems, [], 'fsck of A');
  t.deepEqual((await b.fsck({ verify: true })).problems, [], 'fsck of B');
  const deleted = gcRuns.reduce((x, y) => x + y, 0) + (await a.gc()).bucket!.fragmentsDeleted;
  t.true(deleted > 0, `GC deleted ${deleted} fragments`);
  const { stored, referenced } = await bucketState(o.prefix!);
  t.deepEqual([...stored].sort(), [...referenced].sort(), 'what nothing references is gone, and nothing else');
  const c = await open(t, o);
  for (const x of [...written, ...[1, 3, 5].map((i) => sources[i]!)]) t.true((await readAll(c, x.name)).equals(x.bytes), `a third store reads ${x.name}`);
});
