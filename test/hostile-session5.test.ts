// Hostile review, fifth session: failing tests for what the review found.
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { merkleRoot, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { readAll, tempDir, tempStore } from './helpers/store.js';

const MiB = 1024 * 1024;
const SIZE = 40 * MiB + 12345;
const SRC = '5a'.repeat(16);

function file(t: ExecutionContext, bytes: Uint8Array, name: string): string {
  const f = path.join(tempDir(t), name);
  fs.writeFileSync(f, bytes);
  return f;
}

test('same-leaves: a source name deleted and reused under a writer lends the old blob\'s leaves and bytes for the new blob\'s chunks', async (t) => {
  const store = await tempStore(t);
  const p = prngBytes('h5-p', SIZE);
  // q repeats p for 16 MiB, then differs; the writer writes q.
  const q = Buffer.concat([p.subarray(0, 16 * MiB), prngBytes('h5-r', SIZE - 16 * MiB)]);
  const fp = file(t, p, 'p.bin');
  const fq = file(t, q, 'q.bin');
  const a = await store.newBlobWriter(SRC);
  await a.appendBytes({ file: fp });
  await a.close();
  const w = await store.newBlobWriter();
  await w.appendBytes({ file: fq, offset: 0, size: 16 * MiB }); // dedup hits on 'src' (p): it becomes the source
  await new Promise((r) => setTimeout(r, 300)); // its layer loaded and checked
  await store.deleteBlob(SRC);
  const b = await store.newBlobWriter(SRC); // the name again, now with q's bytes
  await b.appendBytes({ file: fq });
  await b.close();
  t.is(toHex(b.hash), toHex(merkleRoot(q)));
  await w.appendBytes({ file: fq, offset: 16 * MiB });
  await w.close();
  t.true((await readAll(store, w.name)).equals(q), 'the writer\'s blob reads back its bytes');
  t.is(w.leavesLent, 0, 'no leaves lent from a blob that is gone');
  t.is(toHex(w.hash), toHex(merkleRoot(q)), 'the writer\'s root is the true root of its bytes');
});
