import test from 'ava';
import { merkleRoot, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, readAll } from './helpers/store.js';

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
