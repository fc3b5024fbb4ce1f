// FragmentFiles after close: a read still under way (a reader closed while a
// cut connection's get was reading, say) must not open a file that nothing
// would close again; it fails with ERR_CLOSED, and no descriptor is left.
// Reads "now" (blocking, of an open fragment) give the bytes asynchronous
// ones give; a close waits for the reads under way on its descriptors.
import test from 'ava';
import fs from 'node:fs';
import { FragmentFiles } from '../src/disk/fragments.js';
import { isCabError } from '../src/index.js';
import { putBlob, tempStore } from './helpers/store.js';
import { prngBytes } from '../tools/data.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

test('a read after close is ERR_CLOSED and opens no file', async (t) => {
  const s = await tempStore(t);
  await putBlob(s, prngBytes('ff', 100_000));
  const ids: string[] = [];
  for await (const id of s.listCaIds()) ids.push(id);
  const files = new FragmentFiles(s.cas, 4);
  const buf = new Uint8Array(10);
  await files.read(ids[0]!, buf, 0, 10, 0);
  await files.close();
  const before = openFds();
  const e = await t.throwsAsync(files.read(ids[0]!, buf, 0, 10, 0));
  t.true(isCabError(e, 'ERR_CLOSED'), String(e));
  t.is(openFds(), before);
});

test('a read "now" of an open fragment gives the bytes an asynchronous read gives; before the fragment is open it reads asynchronously', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('a1', 300_000);
  await putBlob(s, data);
  const ids: string[] = [];
  for await (const id of s.listCaIds()) ids.push(id);
  const id = ids[0]!;
  const files = new FragmentFiles(s.cas, 4);
  t.teardown(() => files.close());
  // Not open yet: the read opens it (asynchronously) and still returns the bytes.
  const first = new Uint8Array(1000);
  await files.read(id, first, 0, 1000, 5000, true);
  const later = new Uint8Array(70_000);
  const async = new Uint8Array(70_000);
  await files.read(id, later, 0, 70_000, 123_456, true);
  await files.read(id, async, 0, 70_000, 123_456);
  t.deepEqual(later, async);
  const again = new Uint8Array(1000);
  await files.read(id, again, 0, 1000, 5000);
  t.deepEqual(first, again);
  // Past the end of the fragment: ERR_FRAGMENT_MISSING, as for an asynchronous read.
  const size = fs.statSync(s.layout.fragment(id)).size;
  const e = await t.throwsAsync(files.read(id, new Uint8Array(10), 0, 10, size - 5, true));
  t.true(isCabError(e, 'ERR_FRAGMENT_MISSING'), String(e));
});

test('fragment files closed while many reads are under way: every read ends with its bytes or ERR_CLOSED, none reads another file, no descriptor is left', async (t) => {
  const s = await tempStore(t);
  await putBlob(s, prngBytes('b2', 400_000));
  await putBlob(s, prngBytes('c3', 400_000));
  const ids: string[] = [];
  for await (const id of s.listCaIds()) ids.push(id);
  t.true(ids.length >= 2);
  const expected = new Map(ids.map((id) => [id, fs.readFileSync(s.layout.fragment(id))]));
  const before = openFds();
  // An LRU of one: every read of the other fragment closes the first while its reads may be under way.
  const files = new FragmentFiles(s.cas, 1);
  const reads: Array<Promise<void>> = [];
  const checks: Array<() => void> = [];
  for (let i = 0; i < 200; i++) {
    const id = ids[i % ids.length]!;
    const want = expected.get(id)!;
    const pos = (i * 7919) % (want.length - 4096);
    const buf = new Uint8Array(4096);
    reads.push(files.read(id, buf, 0, 4096, pos, i % 3 === 0));
    checks.push(() => t.deepEqual(Buffer.from(buf), want.subarray(pos, pos + 4096), `read ${i} of ${id} at ${pos}`));
  }
  const closing = files.close();
  const results = await Promise.allSettled(reads);
  await closing;
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') checks[i]!();
    else t.true(isCabError(r.reason, 'ERR_CLOSED') || (r.reason as NodeJS.ErrnoException).code === 'EBADF', String(r.reason));
  });
  t.true(results.some((r) => r.status === 'fulfilled'));
  t.is(openFds(), before);
});
