// client.openReader(name, { cache: true }) over a real socket: verified
// bytes read in order land in the local store, a whole read leaves the blob
// finalized with its root, a partial one an unfinalized prefix that a pull
// resumes; out-of-order reads keep nothing; a lying server leaves only
// verified bytes; the writer is held while the reader is open.
import test, { type ExecutionContext } from 'ava';
import { connect, decodeMessage, encodeMessage, isCabError, merkleRoot, serve, toHex, type Message } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { blobState, putBlob, readAll, tempStore } from './helpers/store.js';
import { wsProxy } from './helpers/proxies.js';
import { MiB } from './helpers/transfer.js';

const TOKEN = 'cache-token';
const SIZE = 12 * MiB - 777;
const BYTES = prngBytes('range cache', SIZE);
const ROOT = toHex(merkleRoot(BYTES));

async function fixture(t: ExecutionContext): Promise<{ url: string; name: string }> {
  const server = await tempStore(t);
  const name = await putBlob(server, BYTES);
  const srv = await serve(server, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  return { url: srv.url, name };
}

test('a whole stream with cache: true leaves the blob here, finalized with its root; a second reader finds it whole', async (t) => {
  const { url, name } = await fixture(t);
  const local = await tempStore(t);
  const c = await connect(local, url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name, { cache: true });
  const parts: Uint8Array[] = [];
  for await (const b of r.stream() as AsyncIterable<Uint8Array>) parts.push(b);
  t.true(Buffer.concat(parts).equals(BYTES), 'the stream is the blob');
  t.deepEqual(await blobState(local, name), { size: SIZE, finalized: true, hash: ROOT }, 'finalized as soon as the last byte landed');
  await r.close();
  t.true((await readAll(local, name)).equals(BYTES));
  const again = await c.openReader(name, { cache: true });
  const buf = Buffer.alloc(1000);
  t.is(await again.readAt(buf, SIZE - 1000), 1000);
  t.true(buf.equals(BYTES.subarray(SIZE - 1000)));
  await again.close();
  t.deepEqual(await blobState(local, name), { size: SIZE, finalized: true, hash: ROOT }, 'left as it was');
});

test('a partial sequential read caches a verified prefix, unfinalized; a pull resumes it; a reader with cache resumes it too', async (t) => {
  const { url, name } = await fixture(t);
  const local = await tempStore(t);
  const c = await connect(local, url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name, { cache: true });
  const buf = Buffer.alloc(300_000);
  let pos = 0;
  while (pos < 3 * MiB) pos += await r.read(buf);
  await r.close();
  const st = await blobState(local, name);
  t.false(st!.finalized);
  t.true(st!.size >= 3 * MiB && st!.size < SIZE, `a prefix of ${st!.size} bytes`);
  t.true((await readAll(local, name)).equals(BYTES.subarray(0, st!.size)), 'every byte kept is the blob byte');

  // Another reader with cache goes on from there: a stream from the middle of what is held to the end completes it.
  const r2 = await c.openReader(name, { cache: true });
  for await (const b of r2.stream({ start: MiB }) as AsyncIterable<Uint8Array>) void b;
  await r2.close();
  t.deepEqual(await blobState(local, name), { size: SIZE, finalized: true, hash: ROOT });

  const other = await tempStore(t);
  const c2 = await connect(other, url, { token: TOKEN });
  t.teardown(() => c2.close());
  const r3 = await c2.openReader(name, { cache: true });
  await r3.read(Buffer.alloc(2 * MiB));
  await r3.close();
  const held = (await blobState(other, name))!.size;
  const pulled = await c2.pull(name);
  t.true(pulled.resumedFrom > 0 && pulled.resumedFrom <= held, `the pull resumed from ${pulled.resumedFrom} of ${held}`);
  t.deepEqual(await blobState(other, name), { size: SIZE, finalized: true, hash: ROOT });
});

test('reads out of order cache nothing (a reader that cached nothing leaves no blob); the writer is held while the reader is open', async (t) => {
  const { url, name } = await fixture(t);
  const local = await tempStore(t);
  const c = await connect(local, url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name, { cache: true });
  await t.throwsAsync(c.openReader(name, { cache: true }), { code: 'ERR_BLOB_LOCKED' }, 'one writer of the local copy');
  const buf = Buffer.alloc(100_000);
  await r.readAt(buf, 5 * MiB);
  t.true(buf.equals(BYTES.subarray(5 * MiB, 5 * MiB + buf.length)));
  await r.close();
  t.is(await blobState(local, name), undefined, 'nothing cached, nothing left');
  const other = await putBlob(local, Buffer.from('another blob'), name);
  t.is(other, name);
  await t.throwsAsync(c.openReader(name, { cache: true }), { code: 'ERR_BLOB_EXISTS' }, 'a blob of that name with another root here');
  const plain = await c.openReader(name);
  t.is(plain.size, SIZE, 'without cache the local blob plays no part');
  await plain.close();
});

test('a server that flips a byte in a range answer: the read fails, the local copy holds only verified bytes', async (t) => {
  const { url, name } = await fixture(t);
  let answers = 0;
  const proxy = await wsProxy(url, {
    toClient: (frame) => {
      const m = decodeMessage(frame) as Message;
      if (m.t !== 'ranger' || ++answers !== 4) return frame;
      const data = Buffer.from(m.data);
      data[12345]! ^= 1;
      return Buffer.from(encodeMessage({ ...m, data }));
    },
  });
  t.teardown(() => proxy.close());
  const local = await tempStore(t);
  const c = await connect(local, proxy.url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name, { cache: true });
  const err = await t.throwsAsync(async () => {
    for await (const b of r.stream() as AsyncIterable<Uint8Array>) void b;
  });
  t.true(isCabError(err, 'ERR_HASH_MISMATCH'), String(err));
  await r.close();
  const st = (await blobState(local, name))!;
  t.false(st.finalized);
  t.true(st.size < SIZE - MiB, `the blocks before the bad one (${st.size} bytes)`);
  t.true((await readAll(local, name)).equals(BYTES.subarray(0, st.size)));
});
