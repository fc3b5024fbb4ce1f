// Fine matching over real WebSockets on 127.0.0.1: a receiver holding an
// older version of a blob gets only the pieces around each edit, asks for
// them all at once (many runs in flight, not one round trip after another),
// and writes only what arrived: the pieces it found locally go into the new
// blob as references to its old fragments. Push does the same on the
// server. Lying servers still get ERR_HASH_MISMATCH with only verified bytes
// kept, and a cut or cancel mid-pipeline leaves nothing running. Also
// appendVerified's `refs` on their own.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, chunk, connect, serve, decodeMessage, encodeMessage, isCabError, merkleRoot, sha256, toHex, type CabClient, type CabServer, type Message, type ServeOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, readAll } from './helpers/store.js';
import { wsProxy, type FrameHook } from './helpers/proxies.js';
import { flipByte } from './helpers/damage.js';
import { edited, MiB, KiB } from './helpers/transfer.js';

const TOKENS = { rw: ['read', 'write'] } as ServeOptions['tokens'];

/** 64 MiB, and a copy with 100 edits of 1..200 bytes at spread positions (the newer version). */
const BIG = prngBytes('fine big', 64 * MiB);
const EDIT = edited(BIG, 15, 100);
const EDIT_HASH = toHex(merkleRoot(EDIT.bytes));
/** A smaller pair for the lying peers. */
const SMALL = prngBytes('fine small', 8 * MiB);
const SMALL_EDIT = edited(SMALL, 16, 30);
const SMALL_EDIT_HASH = toHex(merkleRoot(SMALL_EDIT.bytes));

async function serveT(t: ExecutionContext, store: BlobStore): Promise<CabServer> {
  const srv = await serve(store, { tokens: TOKENS });
  t.teardown(() => srv.close());
  return srv;
}

async function connectT(t: ExecutionContext, store: BlobStore, url: string): Promise<CabClient> {
  const c = await connect(store, url, { token: 'rw' });
  t.teardown(() => c.close());
  return c;
}

/** Bytes of fragment data in the store (cas/). */
function fragmentBytes(store: BlobStore): number {
  let n = 0;
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else n += fs.statSync(p).size;
    }
  };
  walk(path.join(store.root, 'cas'));
  return n;
}

function codeOf(e: unknown): string {
  return isCabError(e) ? e.code : `not a CabError: ${String(e)}`;
}

/** The blob is finalized with `hash` and holds exactly `bytes`; fsck --verify finds nothing wrong in the store. */
async function assertGood(t: ExecutionContext, store: BlobStore, name: string, bytes: Buffer, hash: string): Promise<void> {
  const r = await store.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), hash);
  t.true((await readAll(store, name)).equals(bytes), 'content is byte-exact');
  const f = await store.fsck({ verify: true });
  t.deepEqual(f.problems, [], 'fsck --verify finds nothing wrong');
}

/** Unfinalized, and every byte it holds is the source's byte at that offset. */
async function assertVerifiedPrefix(t: ExecutionContext, store: BlobStore, name: string, source: Buffer): Promise<number> {
  const r = await store.newBlobReader(name);
  await r.close();
  t.false(r.isFinalized);
  t.true((await readAll(store, name)).equals(source.subarray(0, r.size)), 'every byte kept is the source prefix');
  return r.size;
}

/** Watches a connection's requests: how many `fine` and `get`, and the most outstanding at once. */
function watchRequests(): { toServer: FrameHook; toClient: FrameHook; counts: { fine: number; get: number; mostFine: number; most: number } } {
  const open = new Map<number, string>();
  const counts = { fine: 0, get: 0, mostFine: 0, most: 0 };
  const fines = () => [...open.values()].filter((x) => x === 'fine').length;
  return {
    counts,
    toServer: (frame) => {
      const m = decodeMessage(frame);
      if ((m.t === 'fine' || m.t === 'get') && m.id !== undefined) {
        counts[m.t]++;
        open.set(m.id, m.t);
        counts.most = Math.max(counts.most, open.size);
        counts.mostFine = Math.max(counts.mostFine, fines());
      }
      return frame;
    },
    toClient: (frame) => {
      const m = decodeMessage(frame);
      if ('id' in m && m.id !== undefined) open.delete(m.id);
      return frame;
    },
  };
}

test.serial('pull, 100 edits in 64 MiB: fine requests go out together; the store grows by what arrived, not by whole chunks; fsck --verify is clean', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, EDIT.bytes);
  const srv = await serveT(t, src);
  const w = watchRequests();
  const proxy = await wsProxy(srv.url, { toServer: w.toServer, toClient: w.toClient });
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  const old = await putBlob(dst, BIG);
  const before = fragmentBytes(dst);
  const c = await connectT(t, dst, proxy.url);
  const st = await c.pull(name);
  const grew = fragmentBytes(dst) - before;
  t.log(`received ${st.receivedBytes}, reused ${st.reusedBytes}, store grew ${grew}; ${w.counts.fine} fine, ${w.counts.get} get, most outstanding ${w.counts.most} (fine ${w.counts.mostFine}); wire ${c.wire.sent + c.wire.received}`);
  t.true(st.receivedBytes >= EDIT.freshBytes, 'the fresh bytes of the edits travelled');
  t.true(st.receivedBytes < 1 * MiB, 'only pieces around the edits travelled');
  t.is(st.receivedBytes + st.reusedBytes, EDIT.bytes.length);
  t.true(grew <= 2 * st.receivedBytes + 64 * KiB, `store grew ${grew} <= 2 x ${st.receivedBytes} + 64 KiB`);
  // One run per edit: their fine lists are asked for together, not one after the other.
  t.true(w.counts.fine >= EDIT.edits.length, 'a fine list per missing chunk');
  t.true(w.counts.mostFine >= 16, `most fine requests outstanding at once: ${w.counts.mostFine}`);
  await assertGood(t, dst, name, EDIT.bytes, EDIT_HASH);
  // The new blob's local pieces are references to the old blob's fragments: they survive its deletion and a GC.
  await dst.deleteBlob(old);
  await dst.gc();
  await assertGood(t, dst, name, EDIT.bytes, EDIT_HASH);
});

test.serial('push, 100 edits in 64 MiB: the server matches finely as a pull does, and grows by what arrived', async (t) => {
  const local = await tempStore(t);
  const name = await putBlob(local, EDIT.bytes);
  // The same update pulled, for comparison.
  const pulled = await tempStore(t);
  await putBlob(pulled, BIG);
  const srvLocal = await serveT(t, local);
  const st = await (await connectT(t, pulled, srvLocal.url)).pull(name);
  const remote = await tempStore(t);
  await putBlob(remote, BIG);
  const before = fragmentBytes(remote);
  const srv = await serveT(t, remote);
  const c = await connectT(t, local, srv.url);
  const r = await c.push(name);
  const grew = fragmentBytes(remote) - before;
  t.log(`push: received ${r.received}, reused ${r.reused}, grew ${grew}, wire ${c.wire.sent + c.wire.received}; the pull received ${st.receivedBytes}`);
  t.true(r.received >= EDIT.freshBytes);
  t.true(r.received <= st.receivedBytes * 1.1 + 4 * KiB, `push received ${r.received}, pull ${st.receivedBytes}`);
  t.is(r.received + r.reused, EDIT.bytes.length);
  t.true(grew <= 2 * r.received + 64 * KiB, `server store grew ${grew} <= 2 x ${r.received} + 64 KiB`);
  await assertGood(t, remote, name, EDIT.bytes, EDIT_HASH);
});

/** Rewrites the answer to the `nth` request of type `t` (counted as the client sends them) with `change`. */
function rewriteAnswer(type: 'fine' | 'get', nth: number, change: (m: Message) => Message): { toServer: FrameHook; toClient: FrameHook; done: () => boolean } {
  let seen = 0;
  let target: number | undefined;
  let done = false;
  return {
    done: () => done,
    toServer: (frame) => {
      const m = decodeMessage(frame);
      if (m.t === type && ++seen === nth) target = m.id;
      return frame;
    },
    toClient: (frame) => {
      const m = decodeMessage(frame);
      if (done || !('id' in m) || m.id !== target || m.t === 'err') return frame;
      done = true;
      return Buffer.from(encodeMessage(change(m)));
    },
  };
}

/** Pulls SMALL_EDIT through a liar into a store holding SMALL: the code it fails with, and what it kept. */
async function pullFromLiar(t: ExecutionContext, liar: ReturnType<typeof rewriteAnswer>): Promise<{ code: string; dst: BlobStore; name: string; srv: CabServer }> {
  const src = await tempStore(t);
  const name = await putBlob(src, SMALL_EDIT.bytes);
  const srv = await serveT(t, src);
  const proxy = await wsProxy(srv.url, { toServer: liar.toServer, toClient: liar.toClient });
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  await putBlob(dst, SMALL);
  const c = await connectT(t, dst, proxy.url);
  const e = await t.throwsAsync(c.pull(name));
  t.true(liar.done(), 'the proxy lied');
  await assertVerifiedPrefix(t, dst, name, SMALL_EDIT.bytes);
  return { code: codeOf(e), dst, name, srv };
}

/** An honest pull then completes what the lying one left. */
async function finishHonestly(t: ExecutionContext, dst: BlobStore, name: string, srv: CabServer): Promise<void> {
  await (await connectT(t, dst, srv.url)).pull(name);
  await assertGood(t, dst, name, SMALL_EDIT.bytes, SMALL_EDIT_HASH);
}

test('a server that flips a byte in a fine piece of a late run: ERR_HASH_MISMATCH, only verified bytes kept, an honest pull completes', async (t) => {
  const liar = rewriteAnswer('get', 20, (m) => {
    const d = m as Extract<Message, { t: 'data' }>;
    const items = d.items.map((x) => Buffer.from(x));
    const item = items[items.length >> 1]!;
    item[item.length >> 1]! ^= 0x01;
    return { ...d, items };
  });
  const { code, dst, name, srv } = await pullFromLiar(t, liar);
  t.is(code, 'ERR_HASH_MISMATCH');
  await finishHonestly(t, dst, name, srv);
});

test('a server that swaps two pieces in a fine list: the chunk they make fails its hash (ERR_HASH_MISMATCH), only verified bytes kept', async (t) => {
  const liar = rewriteAnswer('fine', 10, (m) => {
    const f = m as Extract<Message, { t: 'finer' }>;
    const c = [...f.c];
    const k = c.findIndex((x, i) => i > 0 && x[1] !== c[i - 1]![1]);
    [c[k - 1], c[k]] = [c[k]!, c[k - 1]!];
    return { ...f, c };
  });
  const { code, dst, name, srv } = await pullFromLiar(t, liar);
  t.is(code, 'ERR_HASH_MISMATCH');
  await finishHonestly(t, dst, name, srv);
});

test('a server whose own bytes of an edited chunk are wrong on disk (damage not recorded): its fine list and pieces, read unchecked, are made of them; the chunk built from them fails its hash at the receiver (ERR_HASH_MISMATCH), only verified bytes kept', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, SMALL_EDIT.bytes);
  // A byte the receiver holds too, in the chunk of the first edit: matched finely, its piece found locally unless the list changed.
  const offset = SMALL_EDIT.edits[0]!.at - 100;
  await flipByte(src, name, offset);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  await putBlob(dst, SMALL);
  const c = await connectT(t, dst, srv.url);
  t.is(codeOf(await t.throwsAsync(c.pull(name))), 'ERR_HASH_MISMATCH');
  const kept = await assertVerifiedPrefix(t, dst, name, SMALL_EDIT.bytes);
  t.true(kept <= offset, `nothing kept past the wrong byte (kept ${kept})`);
});

test('a fine list that does not cover its chunk: ERR_PROTOCOL, only verified bytes kept', async (t) => {
  const liar = rewriteAnswer('fine', 5, (m) => {
    const f = m as Extract<Message, { t: 'finer' }>;
    return { ...f, c: f.c.slice(0, -1) };
  });
  const { code, dst, name, srv } = await pullFromLiar(t, liar);
  t.is(code, 'ERR_PROTOCOL');
  await finishHonestly(t, dst, name, srv);
});

test('cancelled or cut while many runs are in flight: ERR_ABORTED / ERR_CONNECTION, only verified bytes kept, no stray rejection; the next pull completes', async (t) => {
  const stray: unknown[] = [];
  const onStray = (e: unknown) => stray.push(e);
  process.on('unhandledRejection', onStray);
  t.teardown(() => process.off('unhandledRejection', onStray));
  const src = await tempStore(t);
  const name = await putBlob(src, SMALL_EDIT.bytes);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  await putBlob(dst, SMALL);
  // Cancelled at the first progress report, then hung up on at the first report of the next pull.
  const ac = new AbortController();
  const c1 = await connectT(t, dst, srv.url);
  const e1 = await t.throwsAsync(c1.pull(name, { signal: ac.signal, onProgress: () => ac.abort() }));
  t.is(codeOf(e1), 'ERR_ABORTED');
  const kept1 = await assertVerifiedPrefix(t, dst, name, SMALL_EDIT.bytes);
  const c2 = await connect(dst, srv.url, { token: 'rw' });
  let closing: Promise<void> | undefined;
  const e2 = await t.throwsAsync(c2.pull(name, { onProgress: () => void (closing ??= c2.close()) }));
  t.is(codeOf(e2), 'ERR_CONNECTION');
  await closing;
  const kept2 = await assertVerifiedPrefix(t, dst, name, SMALL_EDIT.bytes);
  t.true(kept2 >= kept1);
  await finishHonestly(t, dst, name, srv);
  await new Promise((r) => setTimeout(r, 200));
  t.deepEqual(stray.map((e) => (e as Error).message), []);
});

// --- appendVerified's refs, on their own -------------------------------------

test('appendVerified with refs: referenced ranges become extents of the source, only the rest is written; survives deleting the source and GC', async (t) => {
  const s = await tempStore(t);
  const old = prngBytes('refs source', 1 * MiB);
  const a = await putBlob(s, old);
  const fresh = prngBytes('refs fresh', 300);
  const bytes = Buffer.concat([old.subarray(100, 5000), fresh, old.subarray(9000, 20_000)]);
  const before = fragmentBytes(s);
  const w = await s.newBlobWriter();
  const d = await w.source(a);
  await w.appendVerified([
    {
      bytes,
      hash: sha256(bytes),
      refs: [
        { at: 0, size: 4900, src: { extents: d.extents, offset: 100 } },
        { at: 5200, size: 11_000, src: { extents: d.extents, offset: 9000 } },
      ],
    },
  ]);
  await w.close();
  t.is(fragmentBytes(s) - before, fresh.length, 'only the 300 new bytes were written');
  await assertGood(t, s, w.name, bytes, toHex(merkleRoot(bytes)));
  await s.deleteBlob(a);
  await s.gc();
  await assertGood(t, s, w.name, bytes, toHex(merkleRoot(bytes)));
});

test("a pull's steps in one writer, hash deferred: 40 checked chunks, each followed by whole chunks of a local blob (appendBlob's fast path, which no longer waits for the hashing thread), a checkpoint halfway; the blob is every step's bytes in order", async (t) => {
  const s = await tempStore(t);
  const old = prngBytes('steps source', 16 * MiB);
  const a = await putBlob(s, old);
  // New chunks as a peer with our chunker cut them: each ends where the writer's chunker cuts, so the next range starts at a boundary.
  const fresh = prngBytes('steps fresh', 8 * MiB);
  const cut = (b: Buffer) => {
    let o = 0;
    return chunk(b, s.chunker).map((n) => b.subarray(o, (o += n)));
  };
  const runs = cut(fresh).slice(0, -1); // not the last: it ends where the stream does, not at a cut
  const local = cut(old);
  t.true(runs.length >= 40 && local.length >= 120);
  const w = await s.newBlobWriter();
  w.deferHash();
  const parts: Buffer[] = [];
  let at = 0;
  for (let i = 0; i < 40; i++) {
    await w.appendVerified([{ bytes: runs[i]!, hash: sha256(runs[i]!) }]);
    parts.push(runs[i]!);
    const range = local.slice(3 * i, 3 * i + 3).reduce((n, c) => n + c.length, 0);
    await w.appendBlob(a, at, range);
    parts.push(old.subarray(at, at + range));
    at += range;
    if (i === 20) await w.flush();
  }
  const bytes = Buffer.concat(parts);
  const hash = toHex(merkleRoot(bytes));
  t.is(toHex(await w.digest()), hash);
  await w.close();
  await assertGood(t, s, w.name, bytes, hash);
  t.true(fragmentBytes(s) < old.length + 40 * 300 * KiB, 'the local ranges were referenced, not written again');
  const again = await BlobStore.open(s.root);
  t.teardown(() => again.close());
  t.true((await readAll(again, w.name)).equals(bytes), 'the same in a store opened anew');
});

test('appendVerified with refs out of order or out of bounds: ERR_BAD_ARGUMENT, nothing appended, the writer stays open; source() after close: ERR_CLOSED', async (t) => {
  const s = await tempStore(t);
  const a = await putBlob(s, prngBytes('refs source 2', 64 * KiB));
  const w = await s.newBlobWriter();
  const d = await w.source(a);
  const bytes = new Uint8Array(1000);
  const src = (offset: number) => ({ extents: d.extents, offset });
  const bad = [
    [{ at: 500, size: 100, src: src(0) }, { at: 550, size: 100, src: src(0) }], // overlapping
    [{ at: 950, size: 100, src: src(0) }], // past the chunk's end
    [{ at: 0, size: 100, src: src(64 * KiB - 50) }], // past the source's end
    [{ at: 0, size: 0, src: src(0) }], // empty
  ];
  for (const refs of bad) {
    const e = await t.throwsAsync(w.appendVerified([{ bytes, hash: sha256(bytes), refs }]));
    t.is(codeOf(e), 'ERR_BAD_ARGUMENT');
  }
  t.is(w.size, 0);
  await w.appendBytes(new Uint8Array([1, 2, 3]));
  await w.close();
  t.is(codeOf(await t.throwsAsync(w.source(a))), 'ERR_CLOSED');
});

test('a fine list names each piece by the first 8 bytes of its SHA-256: a 32-byte piece hash is ERR_PROTOCOL', (t) => {
  const piece = sha256(new Uint8Array([1, 2, 3]));
  const short = decodeMessage(encodeMessage({ t: 'finer', id: 1, c: [[piece.subarray(0, 8), 3]] }));
  t.is((short as Extract<Message, { t: 'finer' }>).c[0]![0].length, 8);
  const e = t.throws(() => decodeMessage(encodeMessage({ t: 'finer', id: 1, c: [[piece, 3]] })));
  t.true(isCabError(e, 'ERR_PROTOCOL'));
});

/** `bytes` pulled into a store holding `old`: received + reused cover it, received is under `most`, the blob is exact. */
async function pullOverOld(t: ExecutionContext, old: Buffer, bytes: Buffer, most: number): Promise<void> {
  const src = await tempStore(t);
  const name = await putBlob(src, bytes);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  await putBlob(dst, old);
  const st = await (await connectT(t, dst, srv.url)).pull(name);
  t.log(`received ${st.receivedBytes}, reused ${st.reusedBytes}`);
  t.is(st.receivedBytes + st.reusedBytes, bytes.length);
  t.true(st.receivedBytes < most, `received ${st.receivedBytes} < ${most}`);
  await assertGood(t, dst, name, bytes, toHex(merkleRoot(bytes)));
}

test('a run with two edits 60 KiB apart (pieces between them match neither end of the run): the local bytes are cut finely and searched, and only the pieces around the edits travel', async (t) => {
  const old = prngBytes('fine two edits', 4 * MiB);
  const at = 2 * MiB + 12345;
  // An insert, then 60 KiB further a delete: the bytes between them are shifted by the insert, and match neither the run's head nor its tail.
  const bytes = Buffer.concat([old.subarray(0, at), prngBytes('fine two edits insert', 150), old.subarray(at, at + 60 * KiB), old.subarray(at + 60 * KiB + 100)]);
  await pullOverOld(t, old, bytes, 40 * KiB);
});

test('a run with an overwrite and, 10 KiB after it, an insert (the pieces between them are where they were from the head, not from the tail): a piece taken unhashed fails its chunk, the run is planned again with every piece hashed; the blob is exact and only the pieces around the edits travel', async (t) => {
  const old = prngBytes('fine overwrite then insert', 4 * MiB);
  const at = 2 * MiB + 12345;
  const bytes = Buffer.concat([old.subarray(0, at), prngBytes('fine overwrite', 100), old.subarray(at + 100, at + 10 * KiB), prngBytes('fine insert', 50), old.subarray(at + 10 * KiB)]);
  await pullOverOld(t, old, bytes, 8 * KiB);
});
