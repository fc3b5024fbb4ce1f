import test from 'ava';
import { BlobStore, CabError, type BlobMetadata, type Signpost, type PerSyncgroup } from '../src/index.js';
import { tempDir, tempStore, putBlob, collect } from './helpers/store.js';
import { indexDir } from './helpers/paths.js';

const A = 'a'.repeat(32);
const B = 'b'.repeat(32);

const md = (n: number): BlobMetadata => ({ ownerShares: { sg1: n, 'sg/2': 0 }, referenced: new Date(1_700_000_000_123 + n), accessed: new Date(1_700_000_100_456 + n) });
const sp = (n: number): Signpost => ({
  locations: { 'peer-a': { whenSeen: new Date(1_600_000_000_001 + n), isProxy: false, isServer: true }, 'peer b': { whenSeen: new Date(5), isProxy: true, isServer: false } },
  sgIds: ['sg1', 'sg2'],
  fetchAttempts: n,
});
const psg = (n: number): PerSyncgroup => ({ priority: { devType: n, distance: 1.5 + n, serverTime: new Date(1_500_000_000_000 + n) } });

test('metadata: set, get, delete and stream round-trip exactly, dates included', async (t) => {
  const s = await tempStore(t);
  await putBlob(s, Buffer.from('a'), A);
  await putBlob(s, Buffer.from('b'), B);
  t.is(await s.getBlobMetadata(A), undefined);
  await s.setBlobMetadata(B, md(2));
  await s.setBlobMetadata(A, md(1));
  t.deepEqual(await s.getBlobMetadata(A), md(1));
  t.true((await s.getBlobMetadata(A))!.accessed instanceof Date);
  t.deepEqual(await collect(s.blobMetadataStream()), [
    [A, md(1)],
    [B, md(2)],
  ]);
  await s.deleteBlobMetadata(A);
  t.is(await s.getBlobMetadata(A), undefined);
  await s.deleteBlobMetadata(A); // deleting an absent entry is fine
});

test('signposts and per-syncgroup entries round-trip and survive a reopen', async (t) => {
  const dir = tempDir(t);
  let s = await BlobStore.open(dir);
  await s.setSignpost(A, sp(3));
  await s.setPerSyncgroup('sg-x', psg(7));
  await s.close();
  s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  t.deepEqual(await s.getSignpost(A), sp(3));
  t.deepEqual(await s.getPerSyncgroup('sg-x'), psg(7));
  t.deepEqual(await collect(s.signpostStream()), [[A, sp(3)]]);
  t.deepEqual(await collect(s.perSyncgroupStream()), [['sg-x', psg(7)]]);
  await s.deleteSignpost(A);
  await s.deletePerSyncgroup('sg-x');
  t.is(await s.getSignpost(A), undefined);
  t.is(await s.getPerSyncgroup('sg-x'), undefined);
});

test('bad values and keys are rejected and nothing is written', async (t) => {
  const s = await tempStore(t);
  const badMd: unknown[] = [
    null,
    {},
    { ...md(1), extra: 1 },
    { ...md(1), ownerShares: { sg: Number.NaN } },
    { ...md(1), ownerShares: { sg: Infinity } },
    { ...md(1), ownerShares: { sg: 1.5 } },
    { ...md(1), ownerShares: [] },
    { ...md(1), referenced: new Date('nope') },
    { ...md(1), accessed: 12345 },
  ];
  for (const v of badMd) {
    const e = await t.throwsAsync(s.setBlobMetadata(A, v as BlobMetadata), { instanceOf: CabError });
    t.is(e!.code, 'ERR_BAD_ARGUMENT', JSON.stringify(v));
  }
  const badSp: unknown[] = [
    { ...sp(1), fetchAttempts: -1 },
    { ...sp(1), fetchAttempts: Number.NaN },
    { ...sp(1), sgIds: 'sg1' },
    { ...sp(1), sgIds: [''] },
    { ...sp(1), locations: { p: { whenSeen: new Date(), isProxy: 'no', isServer: false } } },
    { ...sp(1), locations: { p: { whenSeen: new Date(Number.NaN), isProxy: false, isServer: false } } },
  ];
  for (const v of badSp) {
    t.is((await t.throwsAsync(s.setSignpost(A, v as Signpost), { instanceOf: CabError }))!.code, 'ERR_BAD_ARGUMENT');
  }
  // "__proto__" from JSON is an own key, but a plain object would drop it when copied: refused, never lost silently.
  const proto = <T>(v: T) => JSON.parse(`{"__proto__": ${JSON.stringify(v)}, "ok": ${JSON.stringify(v)}}`) as Record<string, T>;
  const loc = { whenSeen: new Date(5), isProxy: false, isServer: true };
  const protoCalls: Array<() => Promise<unknown>> = [
    () => s.setBlobMetadata(A, { ...md(1), ownerShares: proto(3) }),
    () => s.updateBlobMetadata(A, { ownerShares: proto(3) }),
    () => s.updateBlobMetadata(A, { ownerShares: proto(null) }),
    () => s.setSignpost(A, { ...sp(1), locations: Object.fromEntries(Object.entries(proto(0)).map(([k]) => [k, loc])) }),
    () => s.updateSignpost(A, { locations: Object.fromEntries(Object.entries(proto(0)).map(([k]) => [k, loc])) }),
  ];
  for (const call of protoCalls) t.is((await t.throwsAsync(call(), { instanceOf: CabError }))!.code, 'ERR_BAD_ARGUMENT');
  const badPsg: unknown[] = [{ priority: { ...psg(1).priority, distance: Infinity } }, { priority: { ...psg(1).priority, devType: 'x' } }, { priority: null }];
  for (const v of badPsg) {
    t.is((await t.throwsAsync(s.setPerSyncgroup('sg', v as PerSyncgroup), { instanceOf: CabError }))!.code, 'ERR_BAD_ARGUMENT');
  }
  for (const k of ['../../etc/passwd', 'A'.repeat(32), 'a'.repeat(31), 42]) {
    t.is((await t.throwsAsync(s.setBlobMetadata(k as string, md(1)), { instanceOf: CabError }))!.code, 'ERR_INVALID_BLOB_NAME');
    t.is((await t.throwsAsync(s.setSignpost(k as string, sp(1)), { instanceOf: CabError }))!.code, 'ERR_INVALID_BLOB_NAME');
  }
  for (const k of ['', 'x\u0000y', 'a'.repeat(2000)]) {
    t.is((await t.throwsAsync(s.setPerSyncgroup(k, psg(1)), { instanceOf: CabError }))!.code, 'ERR_BAD_ARGUMENT');
  }
  t.deepEqual(await collect(s.blobMetadataStream()), []);
  t.deepEqual(await collect(s.signpostStream()), []);
  t.deepEqual(await collect(s.perSyncgroupStream()), []);
});

test('a stream of 10,000 entries is ordered and lazy: breaking out early works', async (t) => {
  const s = await tempStore(t);
  const keys = Array.from({ length: 10_000 }, (_, i) => `sg-${String(i).padStart(5, '0')}`);
  await Promise.all(keys.map((k, i) => s.setPerSyncgroup(k, psg(i))));
  let n = 0;
  let prev = '';
  for await (const [k, v] of s.perSyncgroupStream()) {
    t.true(k > prev);
    prev = k;
    t.is(v.priority.devType, Number(k.slice(3)));
    if (++n === 1500) break;
  }
  t.is(n, 1500);
  // the store still works after the early break, and the full stream has every key once
  await s.setPerSyncgroup('zz', psg(1));
  const all = await collect(s.perSyncgroupStream());
  t.is(all.length, 10_001);
  t.deepEqual(all.slice(0, 10_000).map(([k]) => k), keys);
});

test('deleteBlob removes metadata but keeps the signpost', async (t) => {
  const s = await tempStore(t);
  const name = await putBlob(s, Buffer.from('hello'));
  await s.setBlobMetadata(name, md(1));
  await s.setSignpost(name, sp(1));
  await s.deleteBlob(name);
  t.is(await s.getBlobMetadata(name), undefined);
  t.deepEqual(await s.getSignpost(name), sp(1));
});

test('the tables survive deleting index/', async (t) => {
  const dir = tempDir(t);
  let s = await BlobStore.open(dir);
  const name = await putBlob(s, Buffer.from('some bytes'));
  await s.setBlobMetadata(name, md(4));
  await s.setPerSyncgroup('g', psg(4));
  const indexDirectory = indexDir(s);
  await s.close();
  (await import('node:fs')).rmSync(indexDirectory, { recursive: true });
  s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  t.deepEqual(await s.getBlobMetadata(name), md(4));
  t.deepEqual(await s.getPerSyncgroup('g'), psg(4));
  t.is((await collect(s.blobChunkStream(name))).length, 1);
});

test("updateSignpostAndMetadata: one transaction (a patch that throws writes neither); a blob not held gets the signpost alone", async (t) => {
  const s = await tempStore(t);
  await putBlob(s, Buffer.from('a'), A);
  await s.setSignpost(A, sp(1));
  await s.setBlobMetadata(A, md(1));
  const seen = { whenSeen: new Date(1_800_000_000_000), isProxy: false, isServer: true };
  await s.updateSignpostAndMetadata(A, { locations: { 'peer-c': seen } }, { accessed: new Date(1_800_000_000_001) });
  t.deepEqual((await s.getSignpost(A))!.locations['peer-c'], seen);
  t.truthy((await s.getSignpost(A))!.locations['peer-a'], 'locations merge');
  t.deepEqual((await s.getBlobMetadata(A))!.accessed, new Date(1_800_000_000_001));
  t.deepEqual((await s.getBlobMetadata(A))!.ownerShares, md(1).ownerShares);

  // The metadata's patch fails after the signpost's ran: the signpost's write is undone with it.
  const before = { sp: await s.getSignpost(A), md: await s.getBlobMetadata(A) };
  const boom = new Error('patch failed');
  const e = await t.throwsAsync(() =>
    s.updateSignpostAndMetadata(A, { locations: { 'peer-d': seen } }, () => {
      throw boom;
    }),
  );
  t.is(e, boom);
  t.deepEqual(await s.getSignpost(A), before.sp, 'the signpost is as it was');
  t.deepEqual(await s.getBlobMetadata(A), before.md);

  // Not held: the signpost is written, the metadata refused.
  const err = await t.throwsAsync(() => s.updateSignpostAndMetadata(B, { locations: { 'peer-c': seen } }, { accessed: new Date(7) }));
  t.is((err as CabError).code, 'ERR_NO_SUCH_BLOB');
  t.deepEqual((await s.getSignpost(B))!.locations['peer-c'], seen);
  t.is(await s.getBlobMetadata(B), undefined);
});
