import test from 'ava';
import { BlobStore } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, readAll, collect } from './helpers/store.js';

/** Puts `bytes` as a blob last accessed at `at` (ms), owned by a syncgroup if `owned`. */
async function blob(store: BlobStore, bytes: Uint8Array, at: number, owned = false): Promise<string> {
  const name = await putBlob(store, bytes);
  await store.setBlobMetadata(name, { ownerShares: owned ? { sg: 1 } : {}, referenced: new Date(0), accessed: new Date(at) });
  return name;
}

async function blobs(store: BlobStore): Promise<string[]> {
  return (await collect(store.listBlobIds())).sort();
}

test('a blob whose data an owned blob shares is not evicted; an exclusive, more recent one is', async (t) => {
  const store = await tempStore(t);
  const x = prngBytes('owned data', 300_000);
  const owner = await blob(store, x, 5000, true);
  const shared = await blob(store, x, 1000); // least recent, but frees nothing
  const exclusive = await blob(store, prngBytes('exclusive', 200_000), 2000);
  const recent = await blob(store, prngBytes('recent', 100_000), 3000);
  // 600,000 bytes of fragments; to fit 400,000 only `exclusive` must go.
  const rep = await store.gc({ maxBytes: 400_000 });
  t.deepEqual(rep.evicted, [exclusive]);
  t.deepEqual(rep.passedOver, [shared]);
  t.is(rep.bytesDeleted, 200_000);
  t.is(rep.bytesKept, 400_000);
  t.deepEqual(await blobs(store), [owner, shared, recent].sort());
  t.deepEqual(await readAll(store, shared), x);
  // A budget no eviction can meet: everything evictable that frees bytes goes, the shared one stays.
  const rep2 = await store.gc({ maxBytes: 0 });
  t.deepEqual(rep2.evicted, [recent]);
  t.deepEqual(rep2.passedOver, [shared]);
  t.is(rep2.bytesKept, 300_000);
  t.deepEqual(await blobs(store), [owner, shared].sort());
});

test('a blob whose data an open blob shares is not evicted', async (t) => {
  const store = await tempStore(t);
  const x = prngBytes('open data', 200_000);
  const open = await blob(store, x, 9000);
  const shared = await blob(store, x, 1000);
  const other = await blob(store, prngBytes('other', 100_000), 2000);
  const r = await store.newBlobReader(open);
  t.teardown(() => r.close());
  const rep = await store.gc({ maxBytes: 150_000 });
  t.deepEqual(rep.evicted, [other]);
  t.deepEqual(rep.passedOver, [shared]);
  t.is(rep.bytesKept, 200_000);
  t.deepEqual(await blobs(store), [open, shared].sort());
});

test('two identical unowned blobs: neither alone frees anything, they go together, when the more recent would', async (t) => {
  const store = await tempStore(t);
  const x = prngBytes('twins', 300_000);
  const older = await blob(store, x, 1000);
  const c = await blob(store, prngBytes('c', 100_000), 2000);
  const d = await blob(store, prngBytes('d', 100_000), 3000);
  const newer = await blob(store, x, 4000);
  // 500,000 bytes. Fitting 300,000 takes c and d; evicting `older` would free nothing while `newer` stays.
  let rep = await store.gc({ maxBytes: 300_000 });
  t.deepEqual(rep.evicted, [c, d]);
  t.deepEqual(rep.passedOver, [older]);
  t.is(rep.bytesKept, 300_000);
  // Fitting 0 takes the pair.
  rep = await store.gc({ maxBytes: 0 });
  t.deepEqual(rep.evicted, [older, newer]);
  t.deepEqual(rep.passedOver, []);
  t.is(rep.bytesDeleted, 300_000);
  t.is(rep.bytesKept, 0);
  t.deepEqual(await blobs(store), []);
});

test('an identical pair least recently used goes before a more recent exclusive blob', async (t) => {
  const store = await tempStore(t);
  const x = prngBytes('old twins', 200_000);
  const a = await blob(store, x, 1000);
  const b = await blob(store, x, 2000);
  const keep = await blob(store, prngBytes('keep', 100_000), 3000);
  const rep = await store.gc({ maxBytes: 100_000 });
  t.deepEqual(rep.evicted, [a, b]);
  t.is(rep.bytesKept, 100_000);
  t.deepEqual(await blobs(store), [keep]);
});

test('a blob that shares part of its data with a less recent one goes first when it frees enough alone', async (t) => {
  const store = await tempStore(t);
  const x = prngBytes('base', 300_000);
  const base = await blob(store, x, 1000);
  const longer = await blob(store, Buffer.concat([x, prngBytes('tail', 300_000)]), 2000);
  const total = (await store.gc({ dryRun: true })).bytesKept;
  // `base` alone frees nothing (`longer` uses its fragment); `longer` frees its tail.
  const rep = await store.gc({ maxBytes: total - 1 });
  t.deepEqual(rep.evicted, [longer]);
  t.true(rep.bytesDeleted > 0);
  t.deepEqual(await blobs(store), [base]);
  t.deepEqual(await readAll(store, base), x);
  // Now `base` holds its fragment alone.
  t.deepEqual((await store.gc({ maxBytes: 0 })).evicted, [base]);
});

test('a dry run names exactly the blobs a real run then evicts, and the bytes it frees', async (t) => {
  const store = await tempStore(t);
  const shared = prngBytes('dry shared', 150_000);
  const twin = prngBytes('dry twin', 120_000);
  await blob(store, shared, 9000, true);
  await blob(store, shared, 100);
  await blob(store, twin, 200);
  for (let i = 0; i < 6; i++) await blob(store, prngBytes(`dry ${i}`, 50_000 + i * 10_000), 300 + i * 100);
  await blob(store, twin, 650);
  for (const maxBytes of [700_000, 500_000, 300_000, 0]) {
    const before = await blobs(store);
    const dry = await store.gc({ maxBytes, dryRun: true });
    t.deepEqual(await blobs(store), before, 'the dry run deleted nothing');
    const real = await store.gc({ maxBytes });
    t.deepEqual(real.evicted, dry.evicted, `maxBytes ${maxBytes}`);
    t.deepEqual(real.passedOver, dry.passedOver);
    t.is(real.bytesDeleted, dry.bytesDeleted);
    t.is(real.bytesKept, dry.bytesKept);
    t.deepEqual(await blobs(store), before.filter((n) => !real.evicted.includes(n)));
  }
  t.deepEqual((await store.gc()).bytesKept, 150_000);
});

test('eviction stops when the store fits the budget exactly', async (t) => {
  const store = await tempStore(t);
  const names: string[] = [];
  for (let i = 0; i < 5; i++) names.push(await blob(store, prngBytes(`exact ${i}`, 100_000), 1000 * (i + 1)));
  t.deepEqual((await store.gc({ maxBytes: 500_000 })).evicted, [], 'it fits already');
  const rep = await store.gc({ maxBytes: 300_000 });
  t.deepEqual(rep.evicted, names.slice(0, 2));
  t.is(rep.bytesKept, 300_000);
  t.deepEqual(rep.passedOver, []);
  t.deepEqual(await blobs(store), names.slice(2).sort());
});
