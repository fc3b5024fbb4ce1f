// A resumed pull checks the chunks it holds against the sender's list with
// one `match` (a digest), and reads the list only from where it resumes; a
// partial blob that is not the sender's fails the match, is compared chunk
// by chunk, cut back to where the two part, and the pull still verifies.
// Real sockets: a TCP proxy (tools/proxy.ts) cuts the first pull, a
// WebSocket proxy watches every message of the next one.
import test from 'ava';
import { BlobStore, connect, serve, decodeMessage, merkleRoot, toHex, type Message } from '../src/index.js';
import { ListDigest } from '../src/transfer/list-digest.js';
import { FIRST_LIST_PAGE } from '../src/transfer/messages.js';
import { prngBytes } from '../tools/data.js';
import { dropConnection } from '../tools/proxy.js';
import { tempStore, putBlob, readAll, collect } from './helpers/store.js';
import { tcpProxy, wsProxy } from './helpers/proxies.js';
import { MiB, MAX_CHUNK, RawClient } from './helpers/transfer.js';

const SIZE = 24 * MiB;
const BIG = prngBytes('transfer resume', SIZE);

/** The messages each way of the connections through a watching proxy. */
interface Watched {
  up: Message[];
  down: Message[];
}

async function watchingProxy(target: string): Promise<{ url: string; seen: Watched; close(): Promise<void> }> {
  const seen: Watched = { up: [], down: [] };
  const note = (to: Message[]) => (frame: Buffer) => {
    to.push(decodeMessage(frame));
    return frame;
  };
  const p = await wsProxy(target, { toServer: note(seen.up), toClient: note(seen.down) });
  return { url: p.url, seen, close: () => p.close() };
}

/** The blob's recorded chunks here (an unfinalized blob's, as a resume would check them). */
async function heldChunks(store: BlobStore, name: string): Promise<Array<{ hash: Uint8Array; size: number }>> {
  const r = await store.newBlobReader(name);
  try {
    return await collect(r.chunks());
  } finally {
    await r.close();
  }
}

async function blobSize(store: BlobStore, name: string): Promise<number> {
  const r = await store.newBlobReader(name);
  await r.close();
  return r.size;
}

const listEntries = (w: Watched) => w.down.reduce((n, m) => n + (m.t === 'listr' ? m.c.length : 0), 0);

test.serial('a pull resumed after a cut checks what it holds with one match and reads the list only from where it resumes', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const all = await collect(src.blobChunkStream(name));
  const srv = await serve(src, { insecure: true });
  t.teardown(() => srv.close());
  const dst = await tempStore(t);

  // The first pull is cut after about half the blob has crossed.
  const cutter = await tcpProxy(() => srv.port, { every: { budget: SIZE / 2, onCut: dropConnection } });
  t.teardown(() => cutter.close());
  const first = await connect(dst, cutter.url);
  await t.throwsAsync(first.pull(name), { code: 'ERR_CONNECTION' });
  await first.close();
  const held = await heldChunks(dst, name);
  const before = await blobSize(dst, name);
  t.true(held.length > 10 && before < SIZE, `the cut pull left ${held.length} chunks, ${before} bytes`);

  // The next pull, watched message by message.
  const watch = await watchingProxy(srv.url);
  t.teardown(() => watch.close());
  const c = await connect(dst, watch.url);
  const st = await c.pull(name);
  await c.close();
  t.is(st.resumedFrom, before, 'it resumed where the cut pull stopped');
  const { up, down } = watch.seen;
  const matches = up.filter((m): m is Extract<Message, { t: 'match' }> => m.t === 'match');
  t.is(matches.length, 1, 'one match');
  t.is(matches[0]!.n, held.length, 'of every chunk held');
  const d = new ListDigest();
  for (const h of held) d.add(h.hash, h.size);
  t.deepEqual(Buffer.from(matches[0]!.digest), Buffer.from(d.digest()), 'with the digest of the chunks held');
  t.like(
    down.find((m) => m.t === 'matchr'),
    { t: 'matchr', ok: true },
  );
  const lists = up.filter((m): m is Extract<Message, { t: 'list' }> => m.t === 'list');
  t.true(lists.length > 0);
  t.true(
    lists.every((m) => m.from >= held.length),
    `no list page starts before the resume point (from: ${lists.map((m) => m.from).join(' ')}; ${held.length} chunks held)`,
  );
  t.is(lists[0]!.max, FIRST_LIST_PAGE, 'the first page is a small one');
  t.true(listEntries(watch.seen) <= all.length - held.length, `list entries read: ${listEntries(watch.seen)}, chunks not held: ${all.length - held.length}`);

  t.true((await readAll(dst, name)).equals(BIG), 'the blob arrived whole');
  const r = await dst.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), toHex(merkleRoot(BIG)));
});

test.serial('a partial blob that parts from the sender fails the match, is compared chunk by chunk and cut back where they part, and the pull verifies', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const srv = await serve(src, { insecure: true });
  t.teardown(() => srv.close());
  const dst = await tempStore(t);
  // The receiver holds the sender's first 9 MiB and a bit, then 3 MiB of other bytes, unfinalized.
  const same = 9 * MiB + 12_345;
  const w = await dst.newBlobWriter(name);
  await w.appendBytes(BIG.subarray(0, same));
  await w.appendBytes(prngBytes('not the sender', 3 * MiB));
  await w.closeWithoutFinalize();
  t.is(await blobSize(dst, name), same + 3 * MiB);

  const watch = await watchingProxy(srv.url);
  t.teardown(() => watch.close());
  const c = await connect(dst, watch.url);
  const st = await c.pull(name);
  await c.close();
  const { up, down } = watch.seen;
  t.is(up.filter((m) => m.t === 'match').length, 1, 'one match');
  t.like(
    down.find((m) => m.t === 'matchr'),
    { t: 'matchr', ok: false },
  );
  t.like(
    up.find((m) => m.t === 'list'),
    { t: 'list', from: 0 },
    'then the list is read from its start',
  );
  // Chunks wholly before the first changed byte are the sender's (content-defined boundaries): the cut is at the last boundary before it.
  t.true(st.resumedFrom <= same && st.resumedFrom > same - MAX_CHUNK, `cut back to ${st.resumedFrom}, within a chunk before ${same}`);
  t.is(st.verifiedBytes, SIZE - st.resumedFrom);
  t.true((await readAll(dst, name)).equals(BIG), 'the blob arrived whole');
  const r = await dst.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), toHex(merkleRoot(BIG)));
});

test('match answers whether the first n chunks are the digest`s: yes, no for another digest or more chunks than the blob has, errors for a blob not there or not finalized', async (t) => {
  const src = await tempStore(t);
  const bytes = prngBytes('match answers', 2 * MiB);
  const name = await putBlob(src, bytes);
  const partial = 'cd'.repeat(16);
  const pw = await src.newBlobWriter(partial);
  await pw.appendBytes(bytes.subarray(0, 100_000));
  await pw.closeWithoutFinalize();
  const chunks = await collect(src.blobChunkStream(name));
  const digestOf = (n: number) => {
    const d = new ListDigest();
    for (const c of chunks.slice(0, n)) d.add(c.hash, c.size);
    return d.digest();
  };
  const srv = await serve(src, { insecure: true });
  t.teardown(() => srv.close());
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  t.like(await raw.hello(undefined), { t: 'welcome' });
  const ask = async (m: Message) => {
    raw.send(m);
    return raw.waitFor((a) => 'id' in a && a.id === (m as { id: number }).id);
  };
  const k = Math.floor(chunks.length / 2);
  t.like(await ask({ t: 'match', id: 1, name, n: k, digest: digestOf(k) }), { t: 'matchr', ok: true });
  t.like(await ask({ t: 'match', id: 2, name, n: chunks.length, digest: digestOf(chunks.length) }), { t: 'matchr', ok: true });
  t.like(await ask({ t: 'match', id: 3, name, n: k, digest: digestOf(k + 1) }), { t: 'matchr', ok: false });
  t.like(await ask({ t: 'match', id: 4, name, n: chunks.length + 1, digest: digestOf(chunks.length) }), { t: 'matchr', ok: false });
  t.like(await ask({ t: 'match', id: 5, name: 'ef'.repeat(16), n: 1, digest: digestOf(1) }), { t: 'err', code: 'ERR_NO_SUCH_BLOB' });
  t.like(await ask({ t: 'match', id: 6, name: partial, n: 1, digest: digestOf(1) }), { t: 'err', code: 'ERR_BLOB_NOT_FINALIZED' });
  // A list page asks for at most `max` chunks.
  const page = await ask({ t: 'list', id: 7, name, from: 1, max: 3 });
  t.like(page, { t: 'listr', end: false });
  t.deepEqual(
    (page as Extract<Message, { t: 'listr' }>).c.map(([h, size]) => [toHex(h), size]),
    chunks.slice(1, 4).map((c) => [toHex(c.hash), c.size]),
  );
  t.true(raw.isOpen);
  // A digest that is not 32 bytes, and a page of no chunks, are malformed: ERR_PROTOCOL, and the connection closes.
  raw.send({ t: 'list', id: 8, name, from: 0, max: 0 });
  t.true(await raw.waitClosed());
  t.deepEqual(
    raw.fatalErrors.map((e) => e.code),
    ['ERR_PROTOCOL'],
  );
  const raw2 = await RawClient.open(srv.url);
  t.teardown(() => raw2.close());
  t.like(await raw2.hello(undefined), { t: 'welcome' });
  raw2.send({ t: 'match', id: 1, name, n: 1, digest: new Uint8Array(31) });
  t.true(await raw2.waitClosed());
  t.deepEqual(
    raw2.fatalErrors.map((e) => e.code),
    ['ERR_PROTOCOL'],
  );
});
