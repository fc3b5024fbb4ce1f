// The heap floor a receiver holds once a pull has brought FLOOR_AFTER_BYTES
// (src/transfer/fetch-window.ts): not before, so a small pull never pays for
// building it, and never after the pull, whether it ends well or not. Its own
// file: ava runs a file's tests in one process, and the floor is per process.
import test from 'ava';
import crypto from 'node:crypto';
import { connect, serve, toHex, type ServeOptions, type TransferProgress } from '../src/index.js';
import { FLOOR_AFTER_BYTES } from '../src/transfer/fetch-window.js';
import { HeapFloor } from '../src/transfer/heap-floor.js';
import { putBlob, readAll, tempStore } from './helpers/store.js';

const MiB = 1024 * 1024;
const TOKENS: ServeOptions['tokens'] = { rw: ['read', 'write'] };

test.serial('a pull holds the heap floor once FLOOR_AFTER_BYTES have arrived, and lets it go when it ends', async (t) => {
  const src = await tempStore(t);
  const dst = await tempStore(t);
  const bytes = crypto.randomBytes(FLOOR_AFTER_BYTES + 8 * MiB);
  const name = await putBlob(src, bytes);
  const srv = await serve(src, { tokens: TOKENS });
  t.teardown(() => srv.close());
  const c = await connect(dst, srv.url, { token: 'rw' });
  t.teardown(() => c.close());

  // What each progress event saw: the bytes received so far, and whether the floor was held.
  const seen: Array<[number, boolean]> = [];
  t.false(HeapFloor.held);
  const st = await c.pull(name, { onProgress: (p: TransferProgress) => seen.push([p.receivedBytes, HeapFloor.held]) });
  t.false(HeapFloor.held, 'let go when the pull ends');

  t.is(st.receivedBytes, bytes.length);
  const r = await src.newBlobReader(name);
  await r.close();
  t.is(toHex(st.hash), toHex(r.hash!));
  t.true((await readAll(dst, name)).equals(bytes));
  t.true(
    seen.every(([n, held]) => held === n >= FLOOR_AFTER_BYTES),
    `held exactly from ${FLOOR_AFTER_BYTES} bytes on: ${JSON.stringify(seen.filter(([n]) => Math.abs(n - FLOOR_AFTER_BYTES) < 4 * MiB))}`,
  );
  t.true(seen.some(([, held]) => held), 'held at some point');
});

test.serial('a pull cut after the floor was taken lets it go', async (t) => {
  const src = await tempStore(t);
  const dst = await tempStore(t);
  const bytes = crypto.randomBytes(FLOOR_AFTER_BYTES + 32 * MiB);
  const name = await putBlob(src, bytes);
  const srv = await serve(src, { tokens: TOKENS });
  t.teardown(() => srv.close());
  const c = await connect(dst, srv.url, { token: 'rw' });
  t.teardown(() => c.close());
  const ac = new AbortController();
  let heldBeforeCut = false;
  const e = await t.throwsAsync(
    c.pull(name, {
      signal: ac.signal,
      onProgress: (p: TransferProgress) => {
        if (p.receivedBytes < FLOOR_AFTER_BYTES + 4 * MiB) return;
        heldBeforeCut ||= HeapFloor.held;
        ac.abort();
      },
    }),
  );
  t.is((e as { code?: string }).code, 'ERR_ABORTED');
  t.true(heldBeforeCut, 'held before the cut');
  t.false(HeapFloor.held, 'let go after the cut');
});
