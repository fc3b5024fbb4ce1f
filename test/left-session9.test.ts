// The eighth session's left-outs (ninth session, branch left9): tus metadata
// keys that name Object.prototype's properties, sync-table record sizes, a
// silent peer's slot freed at once by the idle cut, the leaf helper's
// BEHIND bound. Real sockets, real files.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { open as openLmdb } from 'lmdb';
import { BlobStore, connect, encodeMessage, isCabError, serve, type BlobMetadata, type Signpost } from '../src/index.js';
import { helloFor } from '../src/transfer/handshake.js';
import { MerkleHasher } from '../src/hash/merkle.js';
import { AHEAD, BEHIND, onAnswers, pollAnswers, readFiles, stopHelper, type SplitJob } from '../src/hash/leaf-split.js';
import { newBlobName } from '../src/format/layout.js';
import { MAX_RECORD_BYTES, recordBytes } from '../src/index/table-records.js';
import { served, tusHeaders } from './helpers/http.js';
import { codeOf, putBlob, tempDir, tempStore } from './helpers/store.js';
import { connectPeer, servePeer } from './helpers/peers.js';
import { clientFrame, rawUpgrade } from './helpers/hostile.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');

test('tus: an Upload-Metadata key "__proto__", "constructor" or "toString" is 400 ERR_BAD_ARGUMENT with no upload made; "prototype" is kept as given', async (t) => {
  const { store, base } = await served(t, {});
  for (const key of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
    const r = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': `filename ${b64('a')},${key} ${b64('x')}` }) });
    t.is(r.status, 400, key);
    t.regex(await r.text(), /^ERR_BAD_ARGUMENT: .*Upload-Metadata.*key/, key);
    t.is(r.headers.get('tus-resumable'), '1.0.0');
  }
  const left: string[] = [];
  for await (const [name] of store.tables.uploads.stream()) left.push(name);
  t.deepEqual(left, [], 'no upload was made by a refused POST');

  const ok = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': `prototype ${b64('x')},filename ${b64('f')}` }) });
  t.is(ok.status, 201);
  const head = await fetch(new URL(ok.headers.get('location')!, base), { method: 'HEAD', headers: tusHeaders() });
  t.is(head.headers.get('upload-metadata'), `prototype ${b64('x')},filename ${b64('f')}`);
});

test('the uploads table: a metadata key "__proto__" (from JSON) is ERR_BAD_ARGUMENT, not dropped; other names of Object.prototype are kept', async (t) => {
  const store = await tempStore(t);
  const name = newBlobName();
  const metadata = JSON.parse('{"__proto__": "x", "filename": "f"}') as Record<string, string>;
  const e = await t.throwsAsync(store.tables.uploads.set(name, { length: 5, metadata, touched: new Date() }));
  t.is((e as { code?: string }).code, 'ERR_BAD_ARGUMENT');
  t.is(store.tables.uploads.get(name), undefined, 'nothing stored');
  await store.tables.uploads.set(name, { length: 5, metadata: { constructor: 'c', toString: null }, touched: new Date() });
  t.deepEqual(Object.entries(store.tables.uploads.get(name)!.metadata), [['constructor', 'c'], ['toString', null]]);
});

// --- sync-table records have a size limit ------------------------------------

const sizeOf = recordBytes;
const sgId = (i: number) => `sg-${String(i).padStart(6, '0')}-${'x'.repeat(26)}`;
const shares = (from: number, n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [sgId(from + i), 1]));
const peers = (from: number, n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`ws://peer-${from + i}.example:7000`, { whenSeen: new Date(1_700_000_000_123), isProxy: false, isServer: true }]));

/** A signpost within `slack` bytes of MAX_RECORD_BYTES: peers up to about 1000 bytes short, and one more whose name fills the rest. */
function fullSignpost(slack: number): Signpost {
  const of = (n: number): Signpost => ({ locations: peers(0, n), sgIds: ['sg'], fetchAttempts: 1 });
  const perPeer = (sizeOf(of(100)) - sizeOf(of(0))) / 100;
  const base = of(Math.floor((MAX_RECORD_BYTES - slack - 1000 - sizeOf(of(0))) / perPeer));
  const padded = (m: number): Signpost => ({ ...base, locations: { ...base.locations, [`p${'x'.repeat(m)}`]: { whenSeen: new Date(0), isProxy: true, isServer: false } } });
  let m = MAX_RECORD_BYTES - slack - sizeOf(padded(0));
  while (sizeOf(padded(m)) > MAX_RECORD_BYTES - slack) m--;
  return padded(m);
}

async function tooLarge(t: ExecutionContext, p: Promise<unknown>, what: string): Promise<void> {
  const e = (await t.throwsAsync(p, undefined, what)) as { code?: string; data?: { reason?: string; found?: number } } | undefined;
  t.is(e?.code, 'ERR_BAD_ARGUMENT', what);
  t.is(e?.data?.reason, 'too-large', what);
  t.true((e?.data?.found ?? 0) > MAX_RECORD_BYTES, what);
}

test('blob metadata over MAX_RECORD_BYTES is ERR_BAD_ARGUMENT (too-large), by set or by update, and the stored record stays as it was; up to the limit it is taken', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, crypto.randomBytes(1000));
  const small: BlobMetadata = { ownerShares: shares(0, 3), referenced: new Date(1_700_000_000_000), accessed: new Date(1_700_000_000_000) };
  await store.setBlobMetadata(name, small);
  await tooLarge(t, store.setBlobMetadata(name, { ...small, ownerShares: shares(0, 5000) }), 'set');
  t.deepEqual(await store.getBlobMetadata(name), small);
  await tooLarge(t, store.updateBlobMetadata(name, { ownerShares: shares(10, 5000) }), 'update');
  await tooLarge(t, store.updateBlobMetadata(name, (md) => ({ ownerShares: shares(Object.keys(md!.ownerShares).length, 5000) })), 'update by a function');
  t.deepEqual(await store.getBlobMetadata(name), small);
  // Grown a hundred shares at a time: taken while within the limit, refused past it, the last good record kept.
  let n = 3;
  for (;;) {
    const before = await store.getBlobMetadata(name);
    const r = await store.updateBlobMetadata(name, { ownerShares: shares(n, 100) }).then(
      () => 'ok',
      (e: { data?: { reason?: string } }) => e.data?.reason,
    );
    if (r !== 'ok') {
      t.is(r, 'too-large');
      t.deepEqual(await store.getBlobMetadata(name), before);
      break;
    }
    n += 100;
    t.true(sizeOf(await store.getBlobMetadata(name)) <= MAX_RECORD_BYTES);
  }
  t.true(n > 1000, `over a thousand 36-character syncgroups fit (${n})`);
  // Removing shares brings it back: a record at the limit is not stuck.
  await store.updateBlobMetadata(name, { ownerShares: Object.fromEntries(Object.keys(shares(3, 1000)).map((k) => [k, null])) });
  t.true(sizeOf(await store.getBlobMetadata(name)) < MAX_RECORD_BYTES / 2);
});

test('a signpost over MAX_RECORD_BYTES is ERR_BAD_ARGUMENT (too-large), by set or by update, the stored one unchanged; a pull into a blob whose signpost is full still succeeds and sets accessed', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, crypto.randomBytes(200_000));
  const dst = await tempStore(t);
  const full = fullSignpost(20);
  t.true(sizeOf(full) <= MAX_RECORD_BYTES && sizeOf(full) >= MAX_RECORD_BYTES - 20, `a signpost with 20 bytes to spare (${sizeOf(full)})`);
  await dst.setSignpost(name, full);
  await tooLarge(t, dst.setSignpost(name, { ...full, locations: peers(0, 2000) }), 'set');
  await tooLarge(t, dst.setSignpost(name, { ...full, sgIds: Object.keys(shares(0, 2000)) }), 'set with many syncgroups');
  await tooLarge(t, dst.updateSignpost(name, { locations: peers(5000, 1) }), 'update');
  await tooLarge(t, dst.updateSignpost(name, (sp) => ({ sgIds: [...sp!.sgIds, 'one-more-syncgroup-id'] })), 'update by a function');
  t.deepEqual(await dst.getSignpost(name), full);
  // The pull adds the server's URL as a peer: the signpost has no room, the blob still comes and counts as accessed.
  const srv = await servePeer(t, src);
  const c = await connectPeer(t, dst, srv.url);
  const before = Date.now();
  const got = await c.pull(name);
  t.false(got.alreadyHad);
  t.true((await dst.stat(name)).finalized);
  t.deepEqual(await dst.getSignpost(name), full, 'the signpost had no room: unchanged');
  t.true((await dst.getBlobMetadata(name))!.accessed.getTime() >= before, 'accessed was set');
});

test('a record over the limit written before it existed still reads, and takes an update that does not grow it (not one that does)', async (t) => {
  const dir = tempDir(t);
  const name = newBlobName();
  const big: Signpost = { locations: peers(0, 1500), sgIds: [], fetchAttempts: 0 };
  t.true(sizeOf(big) > MAX_RECORD_BYTES);
  {
    const s = await BlobStore.open(dir);
    await s.close();
    // As older code wrote it: straight into the tables' LMDB, unchecked.
    const env = openLmdb({ path: `${dir}/tables`, maxDbs: 8 });
    await env.openDB<Signpost, string>({ name: 'signposts', keyEncoding: 'ordered-binary' }).put(name, big);
    await env.close();
  }
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  t.deepEqual(await store.getSignpost(name), big);
  t.is((await store.updateSignpost(name, { fetchAttempts: 3 })).fetchAttempts, 3);
  t.is(await codeOf(store.updateSignpost(name, { locations: peers(5000, 1) })), 'ERR_BAD_ARGUMENT');
  const shrunk = await store.updateSignpost(name, { locations: Object.fromEntries(Object.keys(peers(0, 1000)).map((k) => [k, null])) });
  t.is(Object.keys(shrunk.locations).length, 500);
});

// --- an idle cut frees the slot at once --------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a peer that says hello and then nothing (no pong, no close) is cut at idleTimeoutMs and its maxConnections slot is free at once, not after ws\'s 30 s close wait', async (t) => {
  const IDLE = 1000;
  const store = await tempStore(t);
  const srv = await serve(store, { insecure: true, maxConnections: 1, idleTimeoutMs: IDLE });
  t.teardown(() => srv.close());
  const s = await rawUpgrade(t, srv.port);
  let got = Buffer.alloc(0);
  s.on('data', (b: Buffer) => (got = Buffer.concat([got, b])));
  let closedAt = 0;
  s.on('close', () => (closedAt = performance.now()));
  s.write(clientFrame(0x82, Buffer.from(encodeMessage(helloFor(store.chunker, undefined)))));
  for (const end = Date.now() + 5000; got.length === 0 && Date.now() < end; ) await sleep(10);
  t.true(got.length > 0, 'welcomed');
  const welcomedAt = performance.now();
  // From now on the raw client says nothing: it answers no ping and no close. Its slot is the only one.
  const other = await tempStore(t);
  let tries = 0;
  let freedAt = 0;
  let last = '';
  while (performance.now() - welcomedAt < 15_000) {
    tries++;
    last = await connect(other, srv.url).then(
      async (c) => (await c.close(), 'connected'),
      (e: unknown) => (isCabError(e) ? e.code : String(e)),
    );
    if (last === 'connected') {
      freedAt = performance.now();
      break;
    }
    await sleep(100);
  }
  t.is(last, 'connected', `a new client got the slot (${tries} tries)`);
  const after = freedAt - welcomedAt;
  t.log(`slot free ${Math.round(after)} ms after the welcome (idle ${IDLE} ms); the silent socket closed at ${Math.round(closedAt - welcomedAt)} ms`);
  t.true(after < IDLE + 3000, `the slot was free within the idle wait and a little (${Math.round(after)} ms)`);
  t.true(closedAt > 0 && closedAt - welcomedAt < IDLE + 3000, 'the silent socket was closed');
  // Told why before the socket went: a close frame 1001 with the code.
  t.true(got.includes(Buffer.concat([Buffer.from([0x03, 0xe9]), Buffer.from('ERR_IDLE_TIMEOUT')])), 'the close frame (1001 ERR_IDLE_TIMEOUT) reached the peer');
});

// --- the leaf helper's BEHIND bound --------------------------------------------

test.serial('leaf split: while the leaf helper is stuck on a share, reads hashed here are acked at once only up to BEHIND; the rest are held (not acked) until the helper answers, then all are acked', async (t) => {
  const MiB = 1024 * 1024;
  const dir = tempDir(t);
  const file = path.join(dir, 'bytes');
  fs.writeFileSync(file, crypto.randomBytes(MiB));
  // The helper's stuck share: a FIFO, whose open blocks the helper until someone opens it for writing.
  const fifo = path.join(dir, 'fifo');
  t.is(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  // Should the FIFO be read here by mistake (this thread blocked), a child opens it for writing in 20 s: the test fails, not hangs.
  const guard = spawn('sh', ['-c', `sleep 20; : > '${fifo}'`], { stdio: 'ignore' });
  t.teardown(() => void guard.kill());
  let acked = 0;
  onAnswers(
    (n) => (acked += n),
    () => {},
  );
  const job: SplitJob = { merkle: new MerkleHasher(), run: 0, parts: [] };
  let fed = 0;
  const read = (f: string) => {
    fed += MiB;
    const n = readFiles(job, [f, 0, MiB], MiB);
    acked += n;
    return n;
  };
  // A long run starts the helper; once it is online it takes a read's whole leaves (that read is not acked at once).
  read(file);
  read(file);
  let took = false;
  for (const end = Date.now() + 10_000; !took && Date.now() < end; ) {
    await sleep(50);
    took = read(file) === 0;
  }
  t.true(took, 'the helper started and took a share');
  await sleep(200); // its answer came
  pollAnswers();
  read(file); // hashed here: the helper's turn is next
  t.is(read(fifo), 0, 'the FIFO read went to the helper');
  const before = acked;
  const stuckFrom = fed;
  // 160 MiB more while the helper is stuck: AHEAD of them go to it (behind the FIFO), the rest are hashed here.
  for (let i = 0; i < 160; i++) read(file);
  const ackedWhileStuck = acked - before;
  t.log(`while the helper was stuck: ${(fed - stuckFrom) / MiB} MiB read, ${ackedWhileStuck / MiB} MiB acked (BEHIND ${BEHIND / MiB} MiB, AHEAD ${AHEAD / MiB} MiB)`);
  t.true(ackedWhileStuck <= BEHIND + MiB, `no more than BEHIND acked past the stuck share (${ackedWhileStuck / MiB} MiB)`);
  t.true(ackedWhileStuck >= BEHIND - AHEAD, `reads hashed here were acked up to the bound (${ackedWhileStuck / MiB} MiB)`);
  // The helper is let go (its positioned read of a FIFO then fails: the job fails, as a fragment that cannot be read fails it).
  // Without blocking: ENXIO if no one has the FIFO open for reading (it was not the helper's to read).
  fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
  for (const end = Date.now() + 10_000; acked < fed && Date.now() < end; ) {
    await sleep(20);
    pollAnswers();
  }
  t.is(acked, fed, 'every byte acked once the helper answered');
  t.truthy(job.error, 'the FIFO share failed the job');
  stopHelper(() => true);
});
