// Reads running at once on one reader (a server answers a get's items
// together) each get their own bytes: the reader's reused chunk buffer is
// never shared between calls in flight.
import test from 'ava';
import { prngBytes, prngInts } from '../tools/data.js';
import { tempStore, putBlob } from './helpers/store.js';

test('300 small reads at once on one reader, across many chunks, each return exactly their bytes', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('concurrent reads', 8 * 1024 * 1024);
  const name = await putBlob(store, bytes);
  const r = await store.newBlobReader(name);
  t.teardown(() => r.close());
  const rnd = prngInts(7);
  const reads = Array.from({ length: 300 }, () => {
    const pos = rnd(bytes.length - 5000);
    const len = 1 + rnd(5000);
    const buf = Buffer.alloc(len);
    return r.readAt(buf, pos).then((n) => ({ pos, len, n, buf }));
  });
  let wrong = 0;
  for (const { pos, len, n, buf } of await Promise.all(reads)) {
    t.is(n, len);
    if (!buf.equals(bytes.subarray(pos, pos + len))) wrong++;
  }
  t.is(wrong, 0, 'every read got its own bytes');
});
