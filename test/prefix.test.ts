// Writing into someone else's partial blob: a transfer or `cabstore resume`
// checks the bytes an unfinalized blob holds before it appends to them.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, chunk, decodeMessage, encodeMessage, exportBundle, importBundle, merkleRoot, toHex } from '../src/index.js';
import { truncateBlob } from '../src/blob/truncate.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll, chunksOf, chunkKeys, keysOf } from './helpers/store.js';
import { wsProxy } from './helpers/proxies.js';
import { runCli } from './helpers/cli.js';
import { connectPeer, servePeer } from './helpers/peers.js';

const S = prngBytes('prefix sender', 6_000_000);
const S_HASH = toHex(merkleRoot(S));

/** Chunk boundaries of S (default chunker), from 0. */
const BOUNDS = (() => {
  const out = [0];
  for (const n of chunk(S)) out.push(out[out.length - 1]! + n);
  return out;
})();
/** The last chunk boundary of S at or before `pos`. */
const boundaryAtOrBefore = (pos: number) => BOUNDS.filter((b) => b <= pos).pop()!;

/** An unfinalized blob `name` holding `bytes`, written in records of 1 MB. */
async function partial(store: BlobStore, name: string, bytes: Uint8Array): Promise<void> {
  const w = await store.newBlobWriter(name);
  for (let off = 0; off < bytes.length; off += 1_000_000) {
    await w.appendBytes(bytes.subarray(off, off + 1_000_000));
    await w.flush();
  }
  await w.closeWithoutFinalize();
}

/** S with `n` bytes changed at `at`. */
function changed(at: number, n = 100): Buffer {
  const b = Buffer.from(S);
  for (let i = at; i < at + n; i++) b[i]! ^= 0x5a;
  return b;
}

async function assertIsS(t: ExecutionContext, store: BlobStore, name: string): Promise<void> {
  const r = await store.newBlobReader(name);
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), S_HASH);
  await r.close();
  t.true((await readAll(store, name)).equals(S), 'the content is the sender blob, byte for byte');
  t.deepEqual(await chunkKeys(store, name), keysOf(chunksOf(S)));
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
}

test('a pull into a local partial blob that holds other bytes: cut back to the last matching chunk, then the sender blob', async (t) => {
  const a = await tempStore(t);
  const name = await putBlob(a, S);
  const srv = await servePeer(t, a);
  const b = await tempStore(t);
  // someone else's partial blob of that name: S's first 2 MB, then other bytes
  await partial(b, name, Buffer.concat([S.subarray(0, 2_000_000), prngBytes('other', 1_500_000)]));
  const st = await (await connectPeer(t, b, srv.url)).pull(name);
  // the chunk that holds byte 2,000,000 differs (other bytes follow it here): kept up to its start
  t.is(st.resumedFrom, boundaryAtOrBefore(2_000_000));
  t.true(st.receivedBytes <= S.length - st.resumedFrom, 'what was kept is not fetched again');
  await assertIsS(t, b, name);
});

test('a partial blob whose bytes after its last chunk boundary differ: cut back to that boundary, then the sender blob', async (t) => {
  const a = await tempStore(t);
  const name = await putBlob(a, S);
  const srv = await servePeer(t, a);
  const b = await tempStore(t);
  // S's first bytes up to the middle of a chunk, the last of them changed (in the open chunk: no hash covers it)
  const i = BOUNDS.findIndex((x) => x > 3_000_000);
  const mid = Math.floor((BOUNDS[i - 1]! + BOUNDS[i]!) / 2);
  const head = Buffer.from(S.subarray(0, mid));
  head[mid - 1]! ^= 1;
  await partial(b, name, head);
  const st = await (await connectPeer(t, b, srv.url)).pull(name);
  t.is(st.resumedFrom, BOUNDS[i - 1]);
  await assertIsS(t, b, name);
});

test('a pull that failed on a hash mismatch from a lying peer, then a pull from an honest one: it succeeds', async (t) => {
  const a = await tempStore(t);
  const name = await putBlob(a, S);
  const honest = await servePeer(t, a);
  // The liar holds other bytes under the name (S with 100 bytes changed at 4 MB) and announces S's hash.
  const l = await tempStore(t);
  await putBlob(l, changed(4_000_000), name);
  const liarSrv = await servePeer(t, l);
  const liar = await wsProxy(liarSrv.url, {
    toClient: (frame) => {
      const m = decodeMessage(frame);
      return m.t === 'statr' ? Buffer.from(encodeMessage({ ...m, hash: Buffer.from(S_HASH, 'hex') })) : frame;
    },
  });
  t.teardown(() => liar.close());
  const b = await tempStore(t);
  const e = await t.throwsAsync((await connectPeer(t, b, liar.url)).pull(name), { instanceOf: CabError });
  t.is(e?.code, 'ERR_HASH_MISMATCH');
  const st = await (await connectPeer(t, b, honest.url)).pull(name);
  t.is(st.resumedFrom, boundaryAtOrBefore(4_000_000), 'what matches the honest sender is kept');
  await assertIsS(t, b, name);
  // and again: a second failure is no more sticky than the first
  const again = await (await connectPeer(t, b, honest.url)).pull(name);
  t.true(again.alreadyHad);
});

test('an import of a bundle into a partial blob that holds other bytes: cut back, then the sender blob', async (t) => {
  const a = await tempStore(t);
  const name = await putBlob(a, S);
  const dir = tempDir(t);
  const bundle = path.join(dir, 'x.bundle');
  await exportBundle(a, [name], bundle);
  const b = await tempStore(t);
  await partial(b, name, changed(1_500_000).subarray(0, 3_000_000));
  const rep = await importBundle(b, bundle);
  t.deepEqual(rep.incomplete, []);
  t.is(rep.imported[0]!.resumedFrom, boundaryAtOrBefore(1_500_000));
  await assertIsS(t, b, name);
});

test('truncateBlob cuts an unfinalized blob back to a chunk boundary inside a record; resuming from there gives the same blob as one write', async (t) => {
  const store = await tempStore(t);
  const name = '7'.repeat(32);
  await partial(store, name, S.subarray(0, 5_000_000));
  const cut = boundaryAtOrBefore(3_500_000);
  t.true(cut > 3_000_000, 'the cut is inside the fourth record, not at its end');
  const before = await store.newBlobReader(name); // opened before: keeps reading what it saw
  const notBoundary = await t.throwsAsync(truncateBlob(store, name, cut + 1), { instanceOf: CabError });
  t.is(notBoundary?.code, 'ERR_ILLEGAL_POSITION');
  await truncateBlob(store, name, cut);
  const after = await store.newBlobReader(name);
  t.is(after.size, cut);
  await after.close();
  const old = Buffer.alloc(before.size);
  t.is(await before.readAt(old, 0), 5_000_000);
  t.true(old.equals(S.subarray(0, 5_000_000)));
  await before.close();
  const w = await store.resumeBlobWriter(name);
  t.is(w.size, cut);
  await w.appendBytes(S.subarray(cut));
  await w.close();
  await assertIsS(t, store, name);
});

test('cabstore resume NAME FILE with a file the blob is not the beginning of: exit 1, ERR_HASH_MISMATCH at the first difference, blob unchanged', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const store = await BlobStore.open(root);
  const name = 'a'.repeat(32);
  await partial(store, name, S.subarray(0, 3_000_000));
  await store.close();
  const desc = fs.readFileSync(path.join(root, 'blob', name.slice(0, 2), name));
  const other = path.join(dir, 'other');
  fs.writeFileSync(other, changed(1_234_567, 1));
  const r = await runCli(root, 'resume', name, other);
  t.is(r.code, 1, r.stdout);
  t.regex(r.stderr, /ERR_HASH_MISMATCH.*1234567/);
  t.is(r.stderr.trimEnd().split('\n').length, 1);
  t.true(fs.readFileSync(path.join(root, 'blob', name.slice(0, 2), name)).equals(desc), 'the descriptor is unchanged');
  // the right file finishes it
  const right = path.join(dir, 'right');
  fs.writeFileSync(right, S);
  const ok = await runCli(root, 'resume', name, right);
  t.is(ok.code, 0, ok.stderr);
  t.is(ok.stdout.trim(), `${name} ${S_HASH}`);
});
