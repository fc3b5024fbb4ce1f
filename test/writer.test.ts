import test from 'ava';
import { chunk, merkleRoot, sha256, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, readAll, chunksOf, chunkKeys, keysOf } from './helpers/store.js';

// Ranges longer than the writer's 4 MiB read block: each block is handed to
// the hashing thread, so the writer must not look at it afterwards.
test('appendBlob of ranges spanning several read blocks references the right bytes', async (t) => {
  const s = await tempStore(t);
  const src = prngBytes('long range', 11 * 1024 * 1024 + 12345);
  const a = await putBlob(s, src);
  const w = await s.newBlobWriter();
  await w.appendBlob(a, 199, 9 * 1024 * 1024 + 7);
  await w.appendBytes(prngBytes('middle', 1000));
  await w.appendBlob(a, 5);
  await w.close();
  const want = Buffer.concat([src.subarray(199, 199 + 9 * 1024 * 1024 + 7), prngBytes('middle', 1000), src.subarray(5)]);
  t.true((await readAll(s, w.name)).equals(want));
  t.is(toHex(w.hash), toHex(merkleRoot(want)));
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
});

test('appendBytes of a file range longer than a read block, and of many byte arrays at once', async (t) => {
  const s = await tempStore(t);
  const parts = Array.from({ length: 7 }, (_, i) => prngBytes(`part ${i}`, 1_500_000 + i));
  // several views of one buffer, as a network frame would give them
  const one = Buffer.concat(parts);
  const views: Uint8Array[] = [];
  let off = 0;
  for (const p of parts) {
    views.push(one.subarray(off, off + p.length));
    off += p.length;
  }
  const w = await s.newBlobWriter();
  await w.appendBytes(...views);
  await w.close();
  t.true((await readAll(s, w.name)).equals(one));
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
});

test('appendBlob at chunk boundaries takes whole chunks; the chunk list is what chunking the content gives', async (t) => {
  const s = await tempStore(t);
  const x = prngBytes('whole x', 3_000_000);
  const y = prngBytes('whole y', 700_000);
  const a = await putBlob(s, x);
  const sizes = chunk(x);
  const third = sizes.slice(0, 10).reduce((p, c) => p + c, 0); // a boundary of x
  const cases: Array<[string, (w: Awaited<ReturnType<typeof s.newBlobWriter>>) => Promise<void>, Buffer]> = [
    // all of x, whose last chunk was cut by the end of x, then more bytes: that chunk must grow
    ['whole source then bytes', async (w) => { await w.appendBlob(a); await w.appendBytes(y); }, Buffer.concat([x, y])],
    ['from a boundary', async (w) => { await w.appendBlob(a, third); }, x.subarray(third)],
    ['bytes then a boundary range', async (w) => { await w.appendBlob(a, 0, third); await w.appendBlob(a, third, 123_456); await w.appendBytes(y); }, Buffer.concat([x.subarray(0, third + 123_456), y])],
  ];
  for (const [what, write, want] of cases) {
    const w = await s.newBlobWriter();
    await write(w);
    await w.close();
    t.deepEqual(await chunkKeys(s, w.name), keysOf(chunksOf(want)), what);
    t.is(toHex(w.hash), toHex(merkleRoot(want)), what);
    t.true((await readAll(s, w.name)).equals(want), what);
  }
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
});

test('appendVerified: checked hashes are used only where the chunker cuts exactly there', async (t) => {
  const s = await tempStore(t);
  const x = prngBytes('verified', 2_500_000);
  const canonical = chunksOf(x);
  // pieces that are not chunks: their hashes must not end up in the chunk list
  const odd: Array<{ bytes: Uint8Array; hash: Uint8Array }> = [];
  for (let o = 0; o < x.length; o += 50_000) odd.push({ bytes: x.subarray(o, o + 50_000), hash: sha256(x.subarray(o, o + 50_000)) });
  const want = keysOf(canonical);
  for (const pieces of [canonical, odd]) {
    const w = await s.newBlobWriter();
    await w.appendVerified(pieces);
    await w.close();
    t.deepEqual(await chunkKeys(s, w.name), want);
    t.is(toHex(w.hash), toHex(merkleRoot(x)));
  }
});

test('close({ expectHash }) finalizes only a blob with that root; on a mismatch every byte stays and the writer stays open', async (t) => {
  const s = await tempStore(t);
  const bytes = prngBytes('expect', 3 * 1024 * 1024 + 5);
  const w = await s.newBlobWriter();
  await w.appendBytes(bytes.subarray(0, 1_000_000));
  const e = await t.throwsAsync(w.close({ expectHash: merkleRoot(bytes) }));
  t.is((e as { code?: string }).code, 'ERR_HASH_MISMATCH');
  t.false(w.isFinalized);
  await t.throwsAsync(w.close({ expectHash: 'abcd' }), { code: 'ERR_BAD_ARGUMENT' } as never);
  await w.appendBytes(bytes.subarray(1_000_000));
  await w.close({ expectHash: toHex(merkleRoot(bytes)) });
  t.true(w.isFinalized);
  t.true((await readAll(s, w.name)).equals(bytes));
  // A mismatch after a resume leaves the blob resumable, not finalized.
  const v = await s.newBlobWriter();
  await v.appendBytes(bytes.subarray(0, 10));
  await t.throwsAsync(v.close({ expectHash: merkleRoot(bytes) }), { code: 'ERR_HASH_MISMATCH' } as never);
  await v.closeWithoutFinalize();
  t.false((await s.stat(v.name)).finalized);
  t.is((await s.stat(v.name)).size, 10);
});
