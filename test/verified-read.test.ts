// Reads check what they return: a byte changed on disk gives
// ERR_HASH_MISMATCH (with blob and offset), never wrong bytes.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll } from './helpers/store.js';
import { chunkHolding, flipByte } from './helpers/damage.js';
import { runCli } from './helpers/cli.js';

const BYTES = prngBytes('verified read', 8_000_000);
const AT = 5_000_000;

async function drainStream(s: NodeJS.ReadableStream): Promise<{ got: Buffer; error: unknown }> {
  const parts: Buffer[] = [];
  try {
    for await (const b of s) parts.push(b as Buffer);
    return { got: Buffer.concat(parts), error: undefined };
  } catch (e) {
    return { got: Buffer.concat(parts), error: e };
  }
}

test('a byte changed in a fragment: every read that covers it fails with ERR_HASH_MISMATCH, other reads give the right bytes', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, BYTES);
  // a second blob that references the same fragment (appendBlob copies no bytes)
  const w = await store.newBlobWriter();
  await w.appendBlob(name, 1_000_000, 6_000_000);
  await w.close();
  await flipByte(store, name, AT);
  const bad = await chunkHolding(store, name, AT);
  t.log(`byte ${AT} changed; its chunk is ${bad.start}..${bad.end}`);

  const r = await store.newBlobReader(name);
  t.teardown(() => r.close());
  const mismatch = async (p: Promise<unknown>, what: string) => {
    const e = await t.throwsAsync(p, { instanceOf: CabError }, what);
    t.is(e?.code, 'ERR_HASH_MISMATCH', what);
    t.is(e?.data.blob, name, what);
    t.is(e?.data.offset, bad.start, what);
  };
  await mismatch(r.readAt(Buffer.alloc(10), AT), 'a 10-byte read of the changed byte');
  await mismatch(r.readAt(Buffer.alloc(1), bad.start), 'a 1-byte read of the first byte of its chunk');
  await mismatch(r.readAt(Buffer.alloc(2 << 20), AT - (1 << 20)), 'a 2 MiB read across it');
  // around it, the right bytes
  const before = Buffer.alloc(bad.start);
  t.is(await r.readAt(before, 0), bad.start);
  t.true(before.equals(BYTES.subarray(0, bad.start)));
  const after = Buffer.alloc(BYTES.length - bad.end);
  t.is(await r.readAt(after, bad.end), after.length);
  t.true(after.equals(BYTES.subarray(bad.end)));

  // small sequential reads: right bytes up to the bad chunk, then the error
  r.seek(bad.start - 10_000);
  const small = Buffer.alloc(4096);
  let pos = bad.start - 10_000;
  const e = await t.throwsAsync(async () => {
    for (;;) {
      const n = await r.read(small);
      t.true(small.subarray(0, n).equals(BYTES.subarray(pos, pos + n)), `bytes at ${pos}`);
      pos += n;
    }
  });
  t.is((e as CabError).code, 'ERR_HASH_MISMATCH');
  t.true(pos <= bad.start && pos > bad.start - 4096, `the sequential reads stopped at the bad chunk (${pos})`);

  // a stream: what it yields is right, and it ends in the error
  const s = await drainStream(r.stream());
  t.is((s.error as CabError)?.code, 'ERR_HASH_MISMATCH');
  t.true(s.got.length <= bad.start && s.got.equals(BYTES.subarray(0, s.got.length)));
  const tail = await drainStream(r.stream({ start: bad.end }));
  t.is(tail.error, undefined);
  t.true(tail.got.equals(BYTES.subarray(bad.end)));

  // the blob sharing the fragment fails at its own offset of the same bytes
  const r2 = await store.newBlobReader(w.name);
  t.teardown(() => r2.close());
  const e2 = await t.throwsAsync(r2.readAt(Buffer.alloc(10), AT - 1_000_000), { instanceOf: CabError });
  t.is(e2?.code, 'ERR_HASH_MISMATCH');
  t.is(e2?.data.blob, w.name);
  t.true((e2?.data.offset as number) <= AT - 1_000_000);
});

test('cabstore get of a blob with a changed byte exits 1 with ERR_HASH_MISMATCH', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  const name = await putBlob(store, BYTES);
  await flipByte(store, name, AT);
  await store.close();
  const out = path.join(dir, 'out');
  const r = await runCli(dir, 'get', name, '-o', out);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /ERR_HASH_MISMATCH/);
  t.false(fs.existsSync(out));
  const cat = await runCli(dir, 'cat', name);
  t.is(cat.code, 1);
  t.regex(cat.stderr, /ERR_HASH_MISMATCH/);
  t.true(cat.stdout.length <= AT, 'no byte past the bad chunk went out');
});

test('random reads across a blob of many records page its chunk lists in and return the right bytes', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('many records', 6_000_000);
  const w = await store.newBlobWriter();
  for (let off = 0; off < bytes.length; off += 250_000) {
    await w.appendBytes(bytes.subarray(off, off + 250_000));
    await w.flush(); // a record each
  }
  await w.close();
  const r = await store.newBlobReader(w.name);
  t.teardown(() => r.close());
  const rnd = prngInts(7);
  for (let i = 0; i < 300; i++) {
    const pos = rnd(bytes.length);
    const buf = Buffer.alloc(1 + rnd(300_000));
    const n = await r.readAt(buf, pos);
    t.is(n, Math.min(buf.length, bytes.length - pos));
    if (!buf.subarray(0, n).equals(bytes.subarray(pos, pos + n))) t.fail(`bytes at ${pos}+${n}`);
  }
  t.true((await readAll(store, w.name)).equals(bytes));
});
