// Issue 14, items 7 and 8: findByHash (an index lookup, filled in for
// stores indexed by older code), stream ranges cut like fs.createReadStream
// and cancelled by a signal, partial updates of metadata and signposts, one
// hash type (a plain Uint8Array) in every public result, and `{ signal }` on
// connect, stat, pull, and the bundle functions.
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { open as openLmdb } from 'lmdb';
import { WebSocketServer } from 'ws';
import { BlobStore, CabError, connect, exportBundle, importBundle, serve, toHex, writeHave, type BlobMetadata } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { collect, putBlob, readAll, rejectionCode, tempDir, tempStore } from './helpers/store.js';
import { indexDir } from './helpers/paths.js';
import { flipByte } from './helpers/damage.js';

const TOKEN = 'gaps-token';
const KiB = 1024;
const MiB = 1024 * 1024;

const codeOf = rejectionCode;

async function rootOf(store: BlobStore, name: string): Promise<Uint8Array> {
  return (await store.stat(name)).hash!;
}

/** A plain Uint8Array, as BlobStat.hash and BlobWriter.hash are: not a Buffer, not a string. */
function isPlainHash(x: unknown): boolean {
  return x instanceof Uint8Array && Object.getPrototypeOf(x) === Uint8Array.prototype && x.length === 32;
}

// ---- findByHash ----

test('findByHash lists the finalized blobs with that root, by bytes or hex, and nothing else', async (t) => {
  const s = await tempStore(t);
  const bytes = prngBytes('find a', 300 * KiB);
  const a1 = await putBlob(s, bytes);
  const a2 = await putBlob(s, bytes);
  const other = await putBlob(s, prngBytes('find b', 10 * KiB));
  const open = await s.newBlobWriter(); // same bytes, not finalized: no root yet
  await open.appendBytes(bytes);
  await open.flush();
  t.teardown(() => open.closeWithoutFinalize());
  const root = await rootOf(s, a1);
  const both = [a1, a2].sort();
  t.deepEqual(await collect(s.findByHash(root)), both);
  t.deepEqual(await collect(s.findByHash(toHex(root))), both);
  t.deepEqual(await collect(s.findByHash(toHex(root).toUpperCase())), both);
  t.deepEqual(await collect(s.findByHash(await rootOf(s, other))), [other]);
  t.deepEqual(await collect(s.findByHash(new Uint8Array(32))), []);
  await s.deleteBlob(a1);
  t.deepEqual(await collect(s.findByHash(root)), [a2]);
  // Finalizing the open writer adds it.
  await open.close();
  t.deepEqual(await collect(s.findByHash(root)), [open.name, a2].sort());
  // Breaking out early is fine, and the store goes on.
  for await (const n of s.findByHash(root)) {
    t.true(both.includes(n) || n === open.name);
    break;
  }
  for (const bad of [new Uint8Array(31), 'ab', 42, null, 'z'.repeat(64)]) {
    const code = await codeOf((async () => collect(s.findByHash(bad as Uint8Array)))());
    t.true(code === 'ERR_BAD_ARGUMENT' || code === 'ERR_BAD_HEX', `${String(bad)}: ${code}`);
  }
});

test('findByHash is an index lookup: the roots table holds each finalized blob under its root, and removing the entry hides the blob', async (t) => {
  const dir = tempDir(t);
  let s = await BlobStore.open(dir);
  const name = await putBlob(s, prngBytes('find index', 100 * KiB));
  const root = await rootOf(s, name);
  const idx = indexDir(s);
  await s.close();
  const env = openLmdb({ path: idx, maxDbs: 16, keyEncoding: 'binary' });
  const roots = env.openDB<number, Buffer>({ name: 'roots', keyEncoding: 'binary' });
  const key = Buffer.concat([root, Buffer.from(name, 'hex')]);
  t.is(roots.get(key), 1, 'the entry is root | name');
  // A lookup that scanned descriptors would still find the blob; the index lookup does not (until open fills it in).
  roots.removeSync(key);
  s = await BlobStore.open(dir, { catchUpIndex: false });
  t.deepEqual(await collect(s.findByHash(root)), []);
  await s.close();
  await env.close();
  s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  t.deepEqual(await collect(s.findByHash(root)), [name], 'open filled the entry in');
});

test('a store indexed by older code (no roots table) gets it filled in on open; an index rebuilt after a crash has it too', async (t) => {
  const dir = tempDir(t);
  let s = await BlobStore.open(dir);
  const names = [];
  for (let i = 0; i < 5; i++) names.push(await putBlob(s, prngBytes(`old ${i % 3}`, 40 * KiB + i)));
  const roots = await Promise.all(names.map((n) => rootOf(s, n)));
  const idx = indexDir(s);
  await s.close();
  // Older code never made a 'roots' database: drop it whole.
  const env = openLmdb({ path: idx, maxDbs: 16, keyEncoding: 'binary' });
  await env.openDB({ name: 'roots', keyEncoding: 'binary' }).drop();
  await env.close();
  s = await BlobStore.open(dir);
  for (let i = 0; i < names.length; i++) t.deepEqual(await collect(s.findByHash(roots[i]!)), [names[i]]);
  await s.close();
  // The index is derived data: gone altogether, it is rebuilt with the roots.
  fs.rmSync(idx, { recursive: true });
  s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  for (let i = 0; i < names.length; i++) t.deepEqual(await collect(s.findByHash(roots[i]!)), [names[i]]);
});

test('findByHash leaves out a blob with damage recorded, and lists it again once a pull heals it', async (t) => {
  const s = await tempStore(t);
  const src = await tempStore(t);
  const bytes = prngBytes('find damage', 200 * KiB);
  const name = await putBlob(s, bytes);
  await putBlob(src, bytes, name);
  const root = await rootOf(s, name);
  await flipByte(s, name, 1000);
  await s.fsck({ verify: true, repair: true });
  t.truthy((await s.stat(name)).damaged);
  t.deepEqual(await collect(s.findByHash(root)), []);
  const srv = await serve(src, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  const c = await connect(s, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  t.true((await c.pull(name)).healedBytes > 0);
  t.deepEqual(await collect(s.findByHash(root)), [name]);
});

// ---- stream ranges and signal ----

test('stream: end is exclusive and cut at the blob end, a start past the end is empty, start > end is ERR_ILLEGAL_POSITION', async (t) => {
  const s = await tempStore(t);
  const bytes = prngBytes('range', 100 * KiB);
  const r = await s.newBlobReader(await putBlob(s, bytes));
  t.teardown(() => r.close());
  const read = async (o: { start?: number; end?: number }) => Buffer.concat(await collect(r.stream(o)));
  t.deepEqual(await read({ start: 10, end: 20 }), bytes.subarray(10, 20));
  t.deepEqual(await read({ start: 90 * KiB, end: 200 * KiB }), bytes.subarray(90 * KiB));
  t.deepEqual(await read({ end: Number.MAX_SAFE_INTEGER }), bytes);
  t.is((await read({ start: 100 * KiB })).length, 0);
  t.is((await read({ start: 150 * KiB, end: 160 * KiB })).length, 0);
  t.is((await read({ start: 5, end: 5 })).length, 0);
  t.is(((() => { try { r.stream({ start: 6, end: 5 }); return 'no throw'; } catch (e) { return (e as CabError).code; } })()), 'ERR_ILLEGAL_POSITION');
});

test('stream({ signal }): aborting destroys it with ERR_ABORTED; a signal that has fired gives no bytes; the reader goes on', async (t) => {
  const s = await tempStore(t);
  const bytes = prngBytes('stream abort', 12 * MiB);
  const r = await s.newBlobReader(await putBlob(s, bytes));
  t.teardown(() => r.close());
  const ac = new AbortController();
  const st = r.stream({ signal: ac.signal, highWaterMark: 64 * KiB });
  let got = 0;
  const e = await t.throwsAsync(
    (async () => {
      for await (const b of st) {
        got += (b as Buffer).length;
        ac.abort(new Error('enough'));
      }
    })(),
  );
  t.is((e as CabError).code, 'ERR_ABORTED');
  t.is(((e as CabError).cause as Error).message, 'enough');
  t.true(got < bytes.length, `stopped early (${got} bytes)`);
  t.true(st.destroyed);
  const pre = r.stream({ signal: AbortSignal.abort(), start: 5 });
  let chunks = 0;
  t.is(await codeOf((async () => { for await (const _ of pre) chunks++; })()), 'ERR_ABORTED');
  t.is(chunks, 0);
  // The reader and an unaborted stream still work; a signal that never fires changes nothing.
  t.deepEqual(Buffer.concat(await collect(r.stream({ start: 3 * MiB, end: 3 * MiB + 10, signal: new AbortController().signal }))), bytes.subarray(3 * MiB, 3 * MiB + 10));
});

// ---- metadata and signposts ----

const md = (n: number): BlobMetadata => ({ ownerShares: { sg1: n, sg2: 5 }, referenced: new Date(1_700_000_000_000 + n), accessed: new Date(1_700_000_500_000 + n) });

test('setBlobMetadata and updateBlobMetadata for a blob the store does not hold: ERR_NO_SUCH_BLOB, nothing stored; get says undefined', async (t) => {
  const s = await tempStore(t);
  const absent = 'c'.repeat(32);
  t.is(await s.getBlobMetadata(absent), undefined);
  t.is(await codeOf(s.setBlobMetadata(absent, md(1))), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(s.updateBlobMetadata(absent, { accessed: new Date() })), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(s.setBlobMetadata(absent, { nonsense: 1 } as unknown as BlobMetadata)), 'ERR_BAD_ARGUMENT', 'a bad value is reported first');
  t.deepEqual(await collect(s.blobMetadataStream()), []);
  // Signposts may name blobs not held here.
  t.deepEqual((await s.updateSignpost(absent, { fetchAttempts: 2 })).fetchAttempts, 2);
  // A deleted blob's metadata cannot be set again.
  const name = await putBlob(s, Buffer.from('x'));
  await s.setBlobMetadata(name, md(1));
  await s.deleteBlob(name);
  t.is(await codeOf(s.updateBlobMetadata(name, { accessed: new Date() })), 'ERR_NO_SUCH_BLOB');
  t.is(await s.getBlobMetadata(name), undefined);
});

test('updateBlobMetadata merges: ownerShares per syncgroup (null removes one), dates replaced, the rest kept; an absent record starts empty and now', async (t) => {
  const s = await tempStore(t);
  const name = await putBlob(s, Buffer.from('meta'));
  const before = Date.now();
  const fresh = await s.updateBlobMetadata(name, { ownerShares: { sgA: 1 } });
  t.deepEqual(fresh.ownerShares, { sgA: 1 });
  t.true(fresh.referenced.getTime() >= before && fresh.accessed.getTime() >= before);
  await s.setBlobMetadata(name, md(3));
  const when = new Date(1_800_000_000_000);
  const out = await s.updateBlobMetadata(name, { ownerShares: { sg1: null, sg3: 7 }, accessed: when });
  const want = { ownerShares: { sg2: 5, sg3: 7 }, referenced: md(3).referenced, accessed: when };
  t.deepEqual(out, want);
  t.deepEqual(await s.getBlobMetadata(name), want);
  // A Partial<BlobMetadata> is a patch; undefined fields are left out.
  t.deepEqual(await s.updateBlobMetadata(name, { referenced: undefined } as Partial<BlobMetadata>), want);
  // The function form sees the stored value.
  const bumped = await s.updateBlobMetadata(name, (cur) => ({ ownerShares: { sg3: (cur?.ownerShares.sg3 ?? 0) + 1 } }));
  t.is(bumped.ownerShares.sg3, 8);
  // Bad patches change nothing.
  for (const bad of [{ extra: 1 }, { ownerShares: { sg: 1.5 } }, { accessed: 'yesterday' }, { referenced: null }, { ownerShares: [] }, null, 'x']) {
    t.is(await codeOf(s.updateBlobMetadata(name, bad as never)), 'ERR_BAD_ARGUMENT', JSON.stringify(bad));
  }
  t.is(await codeOf(s.updateBlobMetadata(name, () => ({ ownerShares: { sg: -0.5 } }))), 'ERR_BAD_ARGUMENT');
  const thrown = new Error('mine');
  t.is(await t.throwsAsync(s.updateBlobMetadata(name, () => { throw thrown; })), thrown, 'an error of the patch function comes out as it was');
  t.deepEqual((await s.getBlobMetadata(name))!.ownerShares, { sg2: 5, sg3: 8 });
});

test('updateSignpost merges locations per peer (null removes), replaces sgIds and fetchAttempts, and starts from an empty signpost', async (t) => {
  const s = await tempStore(t);
  const name = 'd'.repeat(32); // not held here
  const seen = new Date(1_650_000_000_000);
  let sp = await s.updateSignpost(name, { locations: { p1: { whenSeen: seen, isProxy: false, isServer: true } } });
  t.deepEqual(sp, { locations: { p1: { whenSeen: seen, isProxy: false, isServer: true } }, sgIds: [], fetchAttempts: 0 });
  sp = await s.updateSignpost(name, { locations: { p2: { whenSeen: seen, isProxy: true, isServer: false } }, sgIds: ['g1', 'g2'] });
  t.deepEqual(Object.keys(sp.locations).sort(), ['p1', 'p2']);
  sp = await s.updateSignpost(name, { locations: { p1: null }, sgIds: ['g3'] });
  t.deepEqual(sp, { locations: { p2: { whenSeen: seen, isProxy: true, isServer: false } }, sgIds: ['g3'], fetchAttempts: 0 });
  sp = await s.updateSignpost(name, (cur) => ({ fetchAttempts: (cur?.fetchAttempts ?? 0) + 1 }));
  t.is(sp.fetchAttempts, 1);
  t.deepEqual(await s.getSignpost(name), sp);
  t.is(await codeOf(s.updateSignpost(name, { locations: { p3: { whenSeen: seen } } } as never)), 'ERR_BAD_ARGUMENT');
  t.is(await codeOf(s.updateSignpost('../x', { fetchAttempts: 1 })), 'ERR_INVALID_BLOB_NAME');
  t.deepEqual(await s.getSignpost(name), sp);
});

const INDEX_JS = fileURLToPath(new URL('../src/index.js', import.meta.url));

/** A child process that opens the store at `dir` and runs `n` increments of a signpost's fetchAttempts and of one ownerShares entry. */
function incrementer(dir: string, name: string, sg: string, n: number): Promise<number | null> {
  const code = `
    import { BlobStore } from ${JSON.stringify(INDEX_JS)};
    const s = await BlobStore.open(${JSON.stringify(dir)});
    for (let i = 0; i < ${n}; i++) {
      await s.updateSignpost(${JSON.stringify(name)}, (cur) => ({ fetchAttempts: (cur?.fetchAttempts ?? 0) + 1 }));
      await s.updateBlobMetadata(${JSON.stringify(name)}, (cur) => ({ ownerShares: { ${JSON.stringify(sg)}: (cur?.ownerShares[${JSON.stringify(sg)}] ?? 0) + 1 } }));
    }
    await s.close();`;
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'inherit', 'inherit'] });
    c.on('exit', (status) => resolve(status));
  });
}

test('partial updates from two processes at once lose nothing: each read-modify-write is one transaction', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  const name = await putBlob(s, Buffer.from('shared'));
  await s.setBlobMetadata(name, { ownerShares: {}, referenced: new Date(0), accessed: new Date(0) });
  const N = 150;
  const [a, b] = await Promise.all([incrementer(dir, name, 'sgA', N), incrementer(dir, name, 'sgB', N)]);
  t.deepEqual([a, b], [0, 0]);
  t.is((await s.getSignpost(name))!.fetchAttempts, 2 * N);
  t.deepEqual((await s.getBlobMetadata(name))!.ownerShares, { sgA: N, sgB: N });
});

// ---- one hash type ----

test('every public hash is a plain Uint8Array (client stat, pull, push, export and import reports), hex in JSON', async (t) => {
  const a = await tempStore(t);
  const b = await tempStore(t);
  const bytes = prngBytes('hash type', 200 * KiB);
  const name = await putBlob(a, bytes);
  const mine = await putBlob(b, prngBytes('hash type push', 50 * KiB));
  const root = await rootOf(a, name);
  const srv = await serve(a, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const c = await connect(b, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const st = await c.stat(name);
  t.true(isPlainHash(st.hash), 'CabClient.stat().hash');
  t.deepEqual(st.hash, root);
  t.deepEqual(st.hash, (await a.stat(name)).hash, 'the same type and bytes as BlobStat.hash');
  t.is(JSON.parse(JSON.stringify(st)).hash, toHex(root));
  const pulled = await c.pull(name);
  t.true(isPlainHash(pulled.hash), 'TransferStats.hash');
  t.deepEqual(pulled.hash, root);
  t.true(isPlainHash((await c.pull(name)).hash), 'TransferStats.hash, already had');
  t.true(isPlainHash((await c.push(mine)).hash), 'PushResult.hash');
  const dir = tempDir(t);
  const exp = await exportBundle(a, [name], path.join(dir, 'x.bundle'));
  t.true(isPlainHash(exp.contents[0]!.hash), 'ExportReport.contents[].hash');
  const c3 = await tempStore(t);
  const imp = await importBundle(c3, path.join(dir, 'x.bundle'));
  t.true(isPlainHash(imp.imported[0]!.hash), 'ImportReport.imported[].hash');
  // A bundle made against a have-file that lists everything lacks the data: the import reports what is missing.
  await writeHave(a, path.join(dir, 'a.have'));
  await exportBundle(a, [name], path.join(dir, 'thin.bundle'), { have: path.join(dir, 'a.have') });
  const thin = await importBundle(await tempStore(t), path.join(dir, 'thin.bundle'));
  const miss = thin.incomplete[0]!.missing[0]!;
  t.true(isPlainHash(miss.hash), 'ImportReport.incomplete[].missing[].hash');
  t.regex(JSON.parse(JSON.stringify(thin)).incomplete[0].missing[0].hash, /^[0-9a-f]{64}$/);
});

// ---- signals: connect, stat, pull ----

test('connect({ signal }): one that has fired rejects at once; aborting a connect stuck in the upgrade or before the welcome rejects with ERR_ABORTED and leaves no socket', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  t.is(await codeOf(connect(store, srv.url, { token: TOKEN, signal: AbortSignal.abort() })), 'ERR_ABORTED');
  // A TCP server that never answers the upgrade.
  const sockets = new Set<net.Socket>();
  const tcp = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    sock.resume(); // read (and drop) the upgrade request, so that the client's hang-up is seen
  });
  await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => tcp.close(() => r())));
  const tcpPort = (tcp.address() as net.AddressInfo).port;
  let ac = new AbortController();
  const stuck = connect(store, `ws://127.0.0.1:${tcpPort}`, { token: TOKEN, signal: ac.signal, timeoutMs: 60_000 });
  while (sockets.size === 0) await new Promise((r) => setTimeout(r, 10));
  ac.abort();
  t.is(await codeOf(stuck), 'ERR_ABORTED');
  while (sockets.size > 0) await new Promise((r) => setTimeout(r, 10)); // the client hung up
  // A WebSocket server that never says welcome.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  t.teardown(() => new Promise<void>((r) => wss.close(() => r())));
  let helloSeen = false;
  wss.on('connection', (ws) => ws.on('message', () => (helloSeen = true)));
  const wsPort = (wss.address() as net.AddressInfo).port;
  ac = new AbortController();
  const silent = connect(store, `ws://127.0.0.1:${wsPort}`, { token: TOKEN, signal: ac.signal, timeoutMs: 60_000 });
  while (!helloSeen) await new Promise((r) => setTimeout(r, 10));
  ac.abort();
  t.is(await codeOf(silent), 'ERR_ABORTED');
  while (wss.clients.size > 0) await new Promise((r) => setTimeout(r, 10));
  // Without a signal, timeoutMs covers the wait for the welcome too.
  t.is(await codeOf(connect(store, `ws://127.0.0.1:${wsPort}`, { token: TOKEN, timeoutMs: 300 })), 'ERR_CONNECTION');
  // A connect that succeeded ignores a later abort.
  ac = new AbortController();
  const ok = await connect(store, srv.url, { token: TOKEN, signal: ac.signal });
  t.teardown(() => ok.close());
  ac.abort();
  const name = await putBlob(store, Buffer.from('still here'));
  t.is((await ok.stat(name)).size, 10);
});

test('stat and pull with a signal that has fired: ERR_ABORTED, and the pull writes nothing', async (t) => {
  const a = await tempStore(t);
  const b = await tempStore(t);
  const name = await putBlob(a, prngBytes('pull pre-abort', 100 * KiB));
  const srv = await serve(a, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  const c = await connect(b, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  t.is(await codeOf(c.stat(name, { signal: AbortSignal.abort() })), 'ERR_ABORTED');
  t.is(await codeOf(c.pull(name, { signal: AbortSignal.abort() })), 'ERR_ABORTED');
  t.false(await b.has(name), 'no blob was started');
  t.is((await c.pull(name)).size, 100 * KiB);
});

// ---- signals: bundles ----

test('exportBundle({ signal }): aborted midway it rejects with ERR_ABORTED and leaves no file at the target path, nor a temp file', async (t) => {
  const s = await tempStore(t);
  const names = [await putBlob(s, prngBytes('export abort 1', 6 * MiB)), await putBlob(s, prngBytes('export abort 2', 6 * MiB))];
  const dir = tempDir(t);
  const target = path.join(dir, 'out.bundle');
  const ac = new AbortController();
  const e = await t.throwsAsync(exportBundle(s, names, target, { signal: ac.signal, onProgress: () => ac.abort() }));
  t.is((e as CabError).code, 'ERR_ABORTED');
  t.deepEqual(fs.readdirSync(dir), []);
  t.is(await codeOf(exportBundle(s, names, target, { signal: AbortSignal.abort() })), 'ERR_ABORTED');
  t.deepEqual(fs.readdirSync(dir), []);
  t.is(await codeOf(writeHave(s, path.join(dir, 'x.have'), { signal: AbortSignal.abort() })), 'ERR_ABORTED');
  t.deepEqual(fs.readdirSync(dir), []);
  // Without a signal, both work.
  t.is((await exportBundle(s, names, target)).blobs, 2);
  t.true((await writeHave(s, path.join(dir, 'x.have'))).chunks > 0);
});

test('importBundle({ signal }): aborted midway it rejects with ERR_ABORTED, finalizes nothing half, keeps only verified bytes, and a rerun finishes', async (t) => {
  const src = await tempStore(t);
  const bytes = prngBytes('import abort', 12 * MiB);
  const name = await putBlob(src, bytes);
  const dir = tempDir(t);
  const file = path.join(dir, 'in.bundle');
  await exportBundle(src, [name], file);
  const s = await tempStore(t);
  t.is(await codeOf(importBundle(s, file, { signal: AbortSignal.abort() })), 'ERR_ABORTED');
  t.false(await s.has(name), 'a signal that had fired: nothing started');
  const ac = new AbortController();
  const e = await t.throwsAsync(importBundle(s, file, { signal: ac.signal, onProgress: (n) => n > 2 * MiB && ac.abort() }));
  t.is((e as CabError).code, 'ERR_ABORTED');
  const st = await s.stat(name);
  t.false(st.finalized);
  t.true(st.size < bytes.length);
  // What was kept is the sender's bytes, chunk-checked as it was written.
  const r = await s.newBlobReader(name);
  const kept = Buffer.alloc(r.size);
  await r.readFully(kept, 0);
  await r.close();
  t.true(kept.equals(bytes.subarray(0, kept.length)));
  const rep = await importBundle(s, file);
  t.is(rep.imported.length, 1);
  t.true(rep.imported[0]!.resumedFrom > 0, 'the rerun resumed');
  t.true((await readAll(s, name)).equals(bytes));
  t.deepEqual(await collect(s.findByHash(await rootOf(src, name))), [name]);
});
