// The heap floor a receiver holds once a pull has brought FLOOR_AFTER_BYTES
// (src/transfer/fetch-window.ts), and a server once a connection has been sent
// as much (serve.ts): not before, so a small pull never pays for building it,
// and never after, whether the transfer ends well or not. Its own file: ava
// runs a file's tests in one process, and the floor is per process. The pulls
// are from a server in another process, whose floor is its own.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import { connect, serve, toHex, type ServeOptions, type TransferProgress } from '../src/index.js';
import { FLOOR_AFTER_BYTES, HeapFloor } from '../src/transfer/heap-floor.js';
import type { GetItem, Message } from '../src/transfer/messages.js';
import { putBlob, readAll, tempStore } from './helpers/store.js';
import { killHard, RawClient, startServerChild } from './helpers/transfer.js';

const MiB = 1024 * 1024;
const TOKENS: ServeOptions['tokens'] = { rw: ['read', 'write'] };

/** A blob of `size` random bytes served by a server in another process, and a client here connected to it. */
async function pullSetup(t: ExecutionContext, size: number) {
  const src = await tempStore(t);
  const dst = await tempStore(t);
  const bytes = crypto.randomBytes(size);
  const name = await putBlob(src, bytes);
  const hash = (await src.newBlobReader(name).then(async (r) => (await r.close(), r.hash!)));
  await src.close();
  const srv = await startServerChild(src.root, 0, 'rw');
  t.teardown(() => killHard(srv.child));
  const c = await connect(dst, srv.url, { token: 'rw' });
  t.teardown(() => c.close());
  return { dst, bytes, name, hash, c };
}

test.serial('a pull holds the heap floor once FLOOR_AFTER_BYTES have arrived, and lets it go when it ends', async (t) => {
  const { dst, bytes, name, hash, c } = await pullSetup(t, FLOOR_AFTER_BYTES + 8 * MiB);

  // What each progress event saw: the bytes received so far, and whether the floor was held.
  const seen: Array<[number, boolean]> = [];
  t.false(HeapFloor.held);
  const st = await c.pull(name, { onProgress: (p: TransferProgress) => seen.push([p.receivedBytes, HeapFloor.held]) });
  t.false(HeapFloor.held, 'let go when the pull ends');

  t.is(st.receivedBytes, bytes.length);
  t.is(toHex(st.hash), toHex(hash));
  t.true((await readAll(dst, name)).equals(bytes));
  t.true(
    seen.every(([n, held]) => held === n >= FLOOR_AFTER_BYTES),
    `held exactly from ${FLOOR_AFTER_BYTES} bytes on: ${JSON.stringify(seen.filter(([n]) => Math.abs(n - FLOOR_AFTER_BYTES) < 4 * MiB))}`,
  );
  t.true(seen.some(([, held]) => held), 'held at some point');
});

test.serial('a pull cut after the floor was taken lets it go', async (t) => {
  const { name, c } = await pullSetup(t, FLOOR_AFTER_BYTES + 32 * MiB);
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

test.serial('a server holds the heap floor once a connection has been sent FLOOR_AFTER_BYTES, until the connection goes', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, crypto.randomBytes(FLOOR_AFTER_BYTES + 8 * MiB));
  const srv = await serve(store, { tokens: TOKENS });
  t.teardown(() => srv.close());
  const c = await RawClient.open(srv.url);
  t.teardown(() => c.ws.terminate());
  t.is(((await c.hello('rw')) as Message).t, 'welcome');
  let sent = 0;
  let id = 1;
  let items: GetItem[] = [];
  let bytes = 0;
  // One get at a time: once its last frame is here, the server has counted exactly `sent` bytes for this connection.
  const ask = async () => {
    const me = id++;
    c.send({ t: 'get', id: me, items });
    const m = await c.waitFor((x) => (x.t === 'err' || x.t === 'data') && x.id === me && (x.t === 'err' || x.end), 10_000);
    t.is((m as Message).t, 'data');
    sent += bytes;
    items = [];
    bytes = 0;
    c.heard.length = 0;
    t.is(HeapFloor.held, sent >= FLOOR_AFTER_BYTES, `after ${sent} bytes`);
  };
  for await (const ch of store.blobChunkStream(name)) {
    if (bytes + ch.size > MiB) await ask();
    items.push([ch.hash, 0, ch.size]);
    bytes += ch.size;
  }
  await ask();
  t.true(HeapFloor.held);
  c.ws.close();
  for (let i = 0; i < 100 && HeapFloor.held; i++) await new Promise((r) => setTimeout(r, 50));
  t.false(HeapFloor.held, 'let go once the connection is gone');
});
