// The heap floor a server holds while it takes uploads (src/http/heap-floor.ts):
// taken by the first upload request, let go when the server closes. Its own
// file: ava runs a file's tests in one process, and the floor is per process.
import test from 'ava';
import v8 from 'node:v8';
import vm from 'node:vm';
import crypto from 'node:crypto';
import { serve } from '../src/index.js';
import { HEAP_FLOOR_BYTES, HeapFloor } from '../src/http/heap-floor.js';
import { tempStore } from './helpers/store.js';

// A full collection before each measure: what was garbage before the upload must not be counted against the floor.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const largeObjects = () => {
  gc();
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === 'large_object_space')!.space_used_size;
};

test('a server holds the heap floor from its first upload until it closes; reads alone do not take it', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const base = `http://127.0.0.1:${srv.port}`;
  const headers = { authorization: 'Bearer rw', 'tus-resumable': '1.0.0' };

  t.is((await fetch(`${base}/blobs/${'0'.repeat(32)}`, { headers })).status, 404);
  t.false(HeapFloor.held);
  const before = largeObjects();

  const bytes = crypto.randomBytes(100_000);
  const r = await fetch(`${base}/files/`, {
    method: 'POST',
    headers: { ...headers, 'upload-length': String(bytes.length), 'content-type': 'application/offset+octet-stream' },
    body: bytes,
  });
  t.is(r.status, 201);
  t.true(HeapFloor.held);
  t.true(largeObjects() - before >= HEAP_FLOOR_BYTES, `large object space grew by ${largeObjects() - before} bytes`);

  await srv.close();
  t.false(HeapFloor.held);
});
