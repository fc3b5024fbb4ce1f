// Review of the ninth session's fine phase (fine9: aligned ends, bisection,
// a second plan with every piece hashed, matched runs given whole to the
// hashing thread with their refs) over real WebSockets on 127.0.0.1: runs at
// a blob's start and end, several edits in one run, a local blob damaged or
// deleted under the pull, stores with other chunkers, push, and a cut in the
// middle of the new paths. After each, the blob reads back byte-exact and
// fsck --verify is clean.
import test, { type ExecutionContext } from 'ava';
import { BlobStore, chunk, sha256, decodeMessage, encodeMessage, isCabError, merkleRoot, toHex, type StoreOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { assertBlobGood, collect, tempStore, putBlob, readAll } from './helpers/store.js';
import { wsProxy } from './helpers/proxies.js';
import { connectPeer, servePeer } from './helpers/peers.js';
import { flipByte } from './helpers/damage.js';
import { MiB, KiB } from './helpers/transfer.js';

/** The blob is finalized, holds exactly `bytes` and hashes to their root; fsck --verify finds nothing wrong. */
const assertGood = assertBlobGood;

/** Blob `name` of `has` pulled into `wants` (served by `has`) or pushed to it (served by `wants`): received and reused bytes. */
async function send(t: ExecutionContext, how: 'pull' | 'push', has: BlobStore, wants: BlobStore, name: string): Promise<{ received: number; reused: number }> {
  if (how === 'push') return (await connectPeer(t, has, (await servePeer(t, wants)).url)).push(name);
  const st = await (await connectPeer(t, wants, (await servePeer(t, has)).url)).pull(name);
  return { received: st.receivedBytes, reused: st.reusedBytes };
}

/** `bytes` pulled into a store holding `old` (or pushed from a store holding `bytes` to one holding `old`): exact, fsck clean, received + reused add up. */
async function update(t: ExecutionContext, old: Buffer, bytes: Buffer, how: 'pull' | 'push', options: { here?: StoreOptions; there?: StoreOptions } = {}): Promise<{ received: number; reused: number }> {
  const has = await tempStore(t, options.here);
  const name = await putBlob(has, bytes);
  const wants = await tempStore(t, options.there);
  await putBlob(wants, old);
  const r = await send(t, how, has, wants, name);
  t.log(`${how}: received ${r.received}, reused ${r.reused}`);
  t.is(r.received + r.reused, bytes.length);
  await assertGood(t, wants, name, bytes);
  return r;
}

const OLD = prngBytes('review9 old', 4 * MiB);
const fresh = (n: number, s: string) => prngBytes(`review9 ${s}`, n);

/** Edits at the blob's first and last bytes: a run with no local range before it (tail only) and one with none after it (head only). */
const ENDS = Buffer.concat([fresh(37, 'start'), OLD.subarray(100, OLD.length - 50), fresh(91, 'end')]);
/** Four edits within 40 KiB (one run): overwrites (same length) at 3 and 11 KiB, an insert at 20 KiB, a delete at 33 KiB; the middle pieces match neither end. */
const AT = 2 * MiB + 777;
const MANY = Buffer.concat([
  OLD.subarray(0, AT),
  fresh(64, 'ow1'),
  OLD.subarray(AT + 64, AT + 11 * KiB),
  fresh(64, 'ow2'),
  OLD.subarray(AT + 11 * KiB + 64, AT + 20 * KiB),
  fresh(200, 'ins'),
  OLD.subarray(AT + 20 * KiB, AT + 33 * KiB),
  OLD.subarray(AT + 33 * KiB + 150),
]);

for (const how of ['pull', 'push'] as const) {
  test(`${how}: edits at the blob's first and last bytes (runs at its start and end): exact, fsck clean, little received`, async (t) => {
    const r = await update(t, OLD, ENDS, how);
    t.true(r.received < 64 * KiB, `received ${r.received}`);
  });

  test(`${how}: four edits in one run (overwrites in the middle that bisection from the head passes over, an insert, a delete): exact, fsck clean`, async (t) => {
    const r = await update(t, OLD, MANY, how);
    t.true(r.received < 64 * KiB, `received ${r.received}`);
  });

  test(`${how}: only overwrites of the same length in one run (both ends put the pieces at the same places): exact, fsck clean`, async (t) => {
    const bytes = Buffer.from(OLD);
    for (const k of [0, 5, 9, 17, 30]) fresh(40, `same ${k}`).copy(bytes, AT + k * KiB);
    const r = await update(t, OLD, bytes, how);
    t.true(r.received < 64 * KiB, `received ${r.received}`);
  });
}

test('pull between stores with other chunkers (few chunks in common, so few local ranges: mostly fetched whole, as PROTOCOL.md says): exact, fsck clean', async (t) => {
  await update(t, OLD, MANY, 'pull', { here: { create: true, chunker: { min: 4 * KiB, avg: 16 * KiB, max: 64 * KiB } } });
});

test('pull over an old version shorter than the new (bytes appended) and one longer (bytes cut off): exact, fsck clean', async (t) => {
  await update(t, OLD.subarray(0, 3 * MiB + 5), Buffer.concat([OLD.subarray(0, 3 * MiB + 5), fresh(3000, 'tail'), OLD.subarray(3 * MiB + 5, 3 * MiB + 9000)]), 'pull');
  await update(t, OLD, Buffer.concat([OLD.subarray(0, 3 * MiB), fresh(10, 'cut')]), 'pull');
});

test('pull over a local blob damaged (not recorded) next to an edit: the damaged piece is not taken; the new blob is exact, and after the old one is deleted and collected fsck --verify is clean', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, MANY);
  const srv = await servePeer(t, src);
  const dst = await tempStore(t);
  const old = await putBlob(dst, OLD);
  // Unchanged bytes in the run's chunks, on both sides of the first edit: a piece the head bisection would take unhashed.
  await flipByte(dst, old, AT - 300);
  await flipByte(dst, old, AT + 5 * KiB);
  await (await connectPeer(t, dst, srv.url)).pull(name);
  t.true((await readAll(dst, name)).equals(MANY), 'content is byte-exact');
  await dst.deleteBlob(old);
  await dst.gc();
  await assertGood(t, dst, name, MANY);
});

test('pull while the local blob it matches against is deleted and collected: refs keep its fragments; exact, fsck clean', async (t) => {
  const src = await tempStore(t);
  const bytes = Buffer.concat([MANY.subarray(0, 3 * MiB), fresh(100, 'late'), MANY.subarray(3 * MiB)]);
  const name = await putBlob(src, bytes);
  const srv = await servePeer(t, src);
  const dst = await tempStore(t);
  const old = await putBlob(dst, OLD);
  let deleting: Promise<unknown> | undefined;
  await (await connectPeer(t, dst, srv.url)).pull(name, { onProgress: () => void (deleting ??= dst.deleteBlob(old).then(() => dst.gc())) });
  await deleting;
  await dst.gc();
  await assertGood(t, dst, name, bytes);
});

test('a connection cut in the middle of the fine answers (at the 3rd get), then resumed: only verified bytes kept, the resumed pull is exact and fsck clean', async (t) => {
  // Edits spread out: many runs, each its own fine lists and gets.
  const parts: Buffer[] = [];
  for (let i = 0; i < 16; i++) parts.push(OLD.subarray(i * 256 * KiB, i * 256 * KiB + 200 * KiB), fresh(80, `spread ${i}`), OLD.subarray(i * 256 * KiB + 200 * KiB + 40, (i + 1) * 256 * KiB));
  const bytes = Buffer.concat(parts);
  const src = await tempStore(t);
  const name = await putBlob(src, bytes);
  const srv = await servePeer(t, src);
  let gets = 0;
  const proxy = await wsProxy(srv.url, {
    toServer: (frame) => {
      if (decodeMessage(frame).t === 'get' && ++gets === 3) setImmediate(() => proxy.close());
      return frame;
    },
  });
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  await putBlob(dst, OLD);
  const e = await t.throwsAsync((await connectPeer(t, dst, proxy.url)).pull(name));
  t.true(isCabError(e), String(e));
  const r = await dst.newBlobReader(name);
  await r.close();
  t.true((await readAll(dst, name)).equals(bytes.subarray(0, r.size)), 'every byte kept is the source prefix');
  await (await connectPeer(t, dst, srv.url)).pull(name);
  await assertGood(t, dst, name, bytes);
});

/** Chunks of `old` as our chunker cuts it, from chunk `first`, `n` of them: each with a ref for all but its first 100 bytes. */
async function claimedWithRefs(s: BlobStore, old: Buffer, a: string, first: number, n: number, w: Awaited<ReturnType<BlobStore['newBlobWriter']>>) {
  const d = await w.source(a);
  const sizes = chunk(old, s.chunker);
  let at = sizes.slice(0, first).reduce((x, y) => x + y, 0);
  const out = [];
  for (const size of sizes.slice(first, first + n)) {
    const bytes = Buffer.from(old.subarray(at, at + size));
    out.push({ bytes, hash: sha256(bytes), refs: [{ at: 100, size: size - 100, src: { extents: d.extents, offset: at + 100 } }] });
    at += size;
  }
  return out;
}

test('appendVerified with claims (our chunker, unchecked) and refs together: good claims give the exact bytes; a false claim in the third chunk fails with ERR_HASH_MISMATCH and keeps exactly the two before; fsck --verify clean', async (t) => {
  const s = await tempStore(t);
  const old = prngBytes('review9 claims refs', 2 * MiB);
  const a = await putBlob(s, old);
  const w1 = await s.newBlobWriter();
  const good = await claimedWithRefs(s, old, a, 3, 6, w1);
  const want = Buffer.concat(good.map((c) => Buffer.from(c.bytes)));
  await w1.appendVerified(good, s.chunker);
  await w1.close();
  t.true((await readAll(s, w1.name)).equals(want), 'claims with refs: exact');
  const w2 = await s.newBlobWriter();
  const bad = await claimedWithRefs(s, old, a, 3, 6, w2);
  const kept = Buffer.concat(bad.slice(0, 2).map((c) => Buffer.from(c.bytes)));
  bad[2]!.hash = sha256(Buffer.from('not this chunk'));
  const e = await t.throwsAsync(w2.appendVerified(bad, s.chunker));
  t.true(isCabError(e, 'ERR_HASH_MISMATCH'), String(e));
  await w2.close().catch(() => {});
  t.true((await readAll(s, w2.name)).equals(kept), 'the two chunks before the false claim, exactly');
  const f = await s.fsck({ verify: true });
  t.deepEqual(f.problems, [], 'fsck --verify finds nothing wrong');
});

/** `rounds` updates of a 1 MiB blob, each 1..6 edits of every kind (1..3000 bytes) close together, some at the blob's ends, pulled or pushed between stores with `chunker`. */
async function fuzz(t: ExecutionContext, how: 'pull' | 'push', rounds: number, seed: number, chunker?: StoreOptions['chunker']): Promise<void> {
  const opts: StoreOptions | undefined = chunker && { create: true, chunker };
  const has = await tempStore(t, opts);
  const base = prngBytes(`review9 fuzz ${seed}`, 1 * MiB);
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  for (let round = 0; round < rounds; round++) {
    const wants = await tempStore(t, opts);
    await putBlob(wants, base);
    let pos = round % 4 === 0 ? 0 : rnd(base.length);
    const parts: Buffer[] = [base.subarray(0, pos)];
    for (let e = 1 + rnd(6); e > 0; e--) {
      const size = 1 + rnd(3000);
      const kind = rnd(3);
      if (kind !== 1) parts.push(prngBytes(`review9 fuzz ${seed} ${round} ${e}`, size));
      const skip = kind === 0 ? 0 : size;
      const end = Math.min(base.length, pos + skip + rnd(round % 2 ? 12 * KiB : 100 * KiB));
      parts.push(base.subarray(Math.min(base.length, pos + skip), end));
      pos = end;
    }
    parts.push(base.subarray(pos));
    const bytes = Buffer.concat(parts);
    const name = await putBlob(has, bytes);
    const r = await send(t, how, has, wants, name);
    t.is(r.received + r.reused, bytes.length, `round ${round}`);
    t.true((await readAll(wants, name)).equals(bytes), `round ${round}: content is byte-exact`);
    const f = await wants.fsck({ verify: true });
    t.deepEqual(f.problems, [], `round ${round}: fsck --verify finds nothing wrong`);
  }
}

for (const how of ['pull', 'push'] as const) {
  test(`${how}, 16 updates of a 1 MiB blob, 1..6 edits close together (some at its start): every one exact, received + reused add up, fsck clean`, (t) => fuzz(t, how, 16, how === 'pull' ? 9 : 10));
}

test('pull, 12 updates between stores with small chunks (2..32 KiB: a run of many chunks, bisection across their boundaries): every one exact, fsck clean', (t) => fuzz(t, 'pull', 12, 11, { min: 2 * KiB, avg: 8 * KiB, max: 32 * KiB }));

test('pull, 8 updates between stores with large chunks (256 KiB..2 MiB: runs of one chunk, some past FINE_RUN_MAX): every one exact, fsck clean', (t) => fuzz(t, 'pull', 8, 12, { min: 256 * KiB, avg: 512 * KiB, max: 2 * MiB }));

test('PROTOCOL.md `fine`: a fine list the fine chunker could not have cut (16-byte pieces, each named by its true hash) is ERR_PROTOCOL, not matched piece by piece (a hash and two objects per 16 bytes: up to 16x the honest pieces per chunk, and 1-byte pieces 256x)', async (t) => {
  const src = await tempStore(t);
  const bytes = MANY;
  const name = await putBlob(src, bytes);
  // The source's chunks by hash, to name the liar's pieces truly.
  const byHash = new Map<string, Buffer>();
  let off = 0;
  for (const size of chunk(bytes, src.chunker)) {
    const c = bytes.subarray(off, (off += size));
    byHash.set(toHex(sha256(c)), c);
  }
  const asked = new Map<number, Buffer>();
  let lied = 0;
  const srv = await servePeer(t, src);
  const proxy = await wsProxy(srv.url, {
    toServer: (frame) => {
      const m = decodeMessage(frame);
      if (m.t === 'fine') asked.set(m.id, byHash.get(toHex(m.hash))!);
      return frame;
    },
    toClient: (frame) => {
      const m = decodeMessage(frame);
      if (m.t !== 'finer' || !asked.has(m.id)) return frame;
      const c = asked.get(m.id)!;
      const pieces: Array<[Uint8Array, number]> = [];
      for (let at = 0; at < c.length; at += 16) {
        const p = c.subarray(at, at + 16);
        pieces.push([sha256(p).subarray(0, 8), p.length]);
      }
      lied++;
      return Buffer.from(encodeMessage({ ...m, c: pieces }));
    },
  });
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  await putBlob(dst, OLD);
  const e = await t.throwsAsync((await connectPeer(t, dst, proxy.url)).pull(name));
  t.true(lied > 0, 'the proxy lied');
  t.true(isCabError(e, 'ERR_PROTOCOL'), `got ${String((e as { code?: string } | undefined)?.code)}: ${String(e?.message)}`);
});

for (const how of ['pull', 'push'] as const) {
  test(`${how} of a blob that repeats itself with edits (its second half's chunks are its own first half's, being written: all fetched, none taken from the blob in progress): exact, fsck clean`, async (t) => {
    const r = prngBytes('review9 self', 3 * MiB);
    const second = Buffer.concat([r.subarray(0, MiB + 333), fresh(120, 'self a'), r.subarray(MiB + 333, 2 * MiB), fresh(50, 'self b'), r.subarray(2 * MiB + 700)]);
    const bytes = Buffer.concat([r, second]);
    await update(t, prngBytes('review9 unrelated', 64 * KiB), bytes, how);
  });
}

/** A blob of `src` cut by our chunker with a one-byte chunk after each of R's first 24 chunks (one chunk per appendVerified, taken as claimed); R and the blob's name and bytes. */
async function tinyChunkBlob(t: ExecutionContext, src: BlobStore): Promise<{ r: Buffer; name: string; bytes: Buffer }> {
  const r = prngBytes('review9 tiny', 3 * MiB);
  const cuts = chunk(r, src.chunker);
  const w = await src.newBlobWriter();
  const parts: Buffer[] = [];
  let off = 0;
  for (const [i, size] of cuts.entries()) {
    const c = r.subarray(off, (off += size));
    await w.appendVerified([{ bytes: Buffer.from(c), hash: sha256(c) }], src.chunker);
    parts.push(c);
    if (i < 24) {
      const x = Buffer.from([i]);
      await w.appendVerified([{ bytes: Buffer.from(x), hash: sha256(x) }], src.chunker);
      parts.push(x);
    }
  }
  await w.close();
  const theirs = await collect(src.blobChunkStream(w.name));
  t.is(theirs.filter((c) => c.size === 1).length, 24, "the peer's blob has 24 one-byte chunks");
  return { r, name: w.name, bytes: Buffer.concat(parts) };
}

for (const [how, holdsR] of [['between chunks we hold (fine-matched runs, each its own appendVerified call, whose last chunk may be short)', true], ['into an empty store (whole chunks, a get\'s landed items per appendVerified call)', false]] as const) {
  test(`DESIGN "same content gives the same chunk list" / pieces.ts "cannot swell the chunk index with tiny chunks": a peer with our chunker whose blob is cut into 1-byte chunks, pulled ${how}, gets none of them stored as chunks of ours`, async (t) => {
    const src = await tempStore(t);
    const { r, name, bytes } = await tinyChunkBlob(t, src);
    const dst = await tempStore(t);
    if (holdsR) await putBlob(dst, r);
    await (await connectPeer(t, dst, (await servePeer(t, src)).url)).pull(name);
    t.true((await readAll(dst, name)).equals(bytes), 'the bytes are right');
    const ours = await collect(dst.blobChunkStream(name));
    const tiny = ours.slice(0, -1).filter((c) => c.size < dst.chunker.min).length;
    t.is(tiny, 0, `stored with ${tiny} chunks under our chunker's min (${dst.chunker.min}) before its last`);
  });
}

test('appendVerified with the blob\'s size (a transfer\'s whole-chunk path, fetch-window.ts): a short chunk at the end of a call is taken as claimed only where the call ends the blob; elsewhere the call is cut again by our chunker (before, a peer whose frames each ended at a tiny chunk got every one into our index)', async (t) => {
  const s = await tempStore(t);
  const r = prngBytes('review9 tiny calls', 3 * MiB);
  const cuts = chunk(r, s.chunker);
  const total = r.length + 24;
  const w = await s.newBlobWriter();
  const parts: Buffer[] = [];
  let off = 0;
  for (const [i, size] of cuts.entries()) {
    const c = r.subarray(off, (off += size));
    const calls = [{ bytes: Buffer.from(c), hash: sha256(c) }];
    parts.push(c);
    if (i < 24) {
      const x = Buffer.from([i]);
      calls.push({ bytes: Buffer.from(x), hash: sha256(x) });
      parts.push(x);
    }
    await w.appendVerified(calls, s.chunker, false, total);
  }
  await w.close();
  const bytes = Buffer.concat(parts);
  t.is(bytes.length, total);
  t.true((await readAll(s, w.name)).equals(bytes));
  const ours = await collect(s.blobChunkStream(w.name));
  const tiny = ours.slice(0, -1).filter((c) => c.size < s.chunker.min).length;
  t.is(tiny, 0, `stored with ${tiny} chunks under the chunker's min (${s.chunker.min}) before its last`);
  // At the blob's end a short last chunk is the blob's own: taken as claimed.
  const w2 = await s.newBlobWriter();
  const tail = Buffer.from('a short last chunk');
  await w2.appendVerified([{ bytes: Buffer.from(cuts.length ? r.subarray(0, cuts[0]!) : r), hash: sha256(r.subarray(0, cuts[0]!)) }, { bytes: tail, hash: sha256(tail) }], s.chunker, false, cuts[0]! + tail.length);
  await w2.close();
  const two = await collect(s.blobChunkStream(w2.name));
  t.deepEqual(two.map((c) => c.size), [cuts[0]!, tail.length]);
});
