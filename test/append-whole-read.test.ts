// appendBlob's whole chunks in a store on disk: the hashing thread reads their bytes from the
// source's fragments itself (blob/whole-chunks.ts, FileBytes). What it reads is what counts.
import test from 'ava';
import fs from 'node:fs';
import { merkleRoot, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, readAll, codeOf } from './helpers/store.js';
import { fragmentPath } from './helpers/paths.js';

const MiB = 1024 * 1024;

test('appendBlob of ranges at chunk boundaries, many fragments: the hash is that of the bytes, byte for byte', async (t) => {
  // Small fragments: a range spans several, so the thread reads several files for one group.
  const s = await tempStore(t, { fragmentSize: 1 * MiB });
  const a = prngBytes('whole read a', 6 * MiB + 12345);
  const src = await putBlob(s, a);
  const chunks = [];
  for await (const c of s.blobChunkStream(src)) chunks.push(c);
  let at = 0;
  const starts = chunks.map((c) => ((at += c.size), at - c.size));
  // At a boundary: whole chunks (read by the thread); the range's end and the next range are not, and are read here.
  const w2 = await s.newBlobWriter();
  const from = starts[2]!;
  await w2.appendBlob(src, from, 4 * MiB);
  await w2.appendBlob(src, starts[1]!, -1);
  await w2.close();
  const want = Buffer.concat([a.subarray(from, from + 4 * MiB), a.subarray(starts[1]!)]);
  t.true((await readAll(s, w2.name)).equals(want));
  t.is(toHex(w2.hash), toHex(merkleRoot(want)));
});

test('a source fragment cut short under the writer: appendBlob fails as a read here would (ERR_FRAGMENT_MISSING), never a blob with a wrong hash', async (t) => {
  const s = await tempStore(t);
  const a = prngBytes('whole read cut', 3 * MiB);
  const src = await putBlob(s, a);
  const ids: string[] = [];
  for await (const id of s.listCaIds()) ids.push(id);
  t.is(ids.length, 1);
  // Whole chunks only, so that nothing of the range is read on this thread.
  let end = 0;
  for await (const c of s.blobChunkStream(src)) {
    if (end + c.size > 2 * MiB) break;
    end += c.size;
  }
  t.true(end > MiB);
  // The file is there (so it opens) but ends early: only the thread's read finds out.
  fs.truncateSync(fragmentPath(s, ids[0]!), 64 * 1024);
  const w = await s.newBlobWriter();
  t.is(await codeOf(w.appendBlob(src, 0, end)), 'ERR_FRAGMENT_MISSING');
  t.is(await codeOf(w.close()), 'ERR_FRAGMENT_MISSING', 'the failed writer finalizes nothing');
  const r = await s.newBlobReader(w.name);
  t.false(r.isFinalized);
  await r.close();
});
