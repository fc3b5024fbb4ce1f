// The transfer API's loose ends (issue 13): a push cancelled alone, the
// handshake's and a bundle header's hash and chunker checked, onProgress
// cumulative everywhere, Symbol.asyncDispose on client and server, and
// hashes as hex in JSON (library results and the CLI's --json).
import test from 'ava';
import path from 'node:path';
import { WebSocketServer } from 'ws';
import {
  BlobStore,
  connect,
  decodeMessage,
  encodeMessage,
  exportBundle,
  importBundle,
  isCabError,
  serve,
  toHex,
  type Message,
  PROTOCOL_VERSION,
} from '../src/index.js';
import { RecordWriter, scan } from '../src/transfer/records.js';
import { prngBytes } from '../tools/data.js';
import { collect, putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { RawClient, MiB, KiB } from './helpers/transfer.js';
import { ok } from './helpers/cli.js';

const TOKEN = 'api-token';
const CHUNKER = { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB };

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return isCabError(e) ? e.code : `not a CabError: ${String(e)}`;
  }
}

const HEX64 = /^[0-9a-f]{64}$/;

async function hashOf(store: BlobStore, name: string): Promise<string> {
  const r = await store.newBlobReader(name);
  await r.close();
  return toHex(r.hash!);
}

test('a cancelled push rejects with ERR_ABORTED alone: the other push on the client completes, the connection stays usable, the server stops', async (t) => {
  const server = await tempStore(t);
  const client = await tempStore(t);
  const srv = await serve(server, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const a = await putBlob(client, prngBytes('api cancel a', 24 * MiB));
  const bBytes = prngBytes('api cancel b', 3 * MiB);
  const b = await putBlob(client, bBytes);
  const c = await connect(client, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const ac = new AbortController();
  const pa = c.push(a, { signal: ac.signal });
  const pb = c.push(b);
  setTimeout(() => ac.abort(new Error('changed my mind')), 30);
  t.is(await codeOf(pa), 'ERR_ABORTED', 'the cancelled push rejects with ERR_ABORTED');
  t.like(await pb, { received: bBytes.length }, 'the other push completes');
  t.true(Buffer.from(await readAll(server, b)).equals(bBytes));
  // The connection goes on: a stat, and the same blob pushed again (the server's writer of it was let go).
  t.like(await c.stat(b), { size: bBytes.length, finalized: true });
  const again = await c.push(a);
  t.is(again.received + again.reused, 24 * MiB, 'pushed again, whole');
  const r = await server.newBlobReader(a);
  t.true(r.isFinalized, 'the second push of the cancelled blob finished it');
  await r.close();
  // A push cancelled before it starts never reaches the server.
  const early = new AbortController();
  early.abort();
  t.is(await codeOf(c.push(b, { signal: early.signal })), 'ERR_ABORTED');
});

test('cancel decodes with its id and nothing else; a malformed one is ERR_PROTOCOL', (t) => {
  t.deepEqual(decodeMessage(encodeMessage({ t: 'cancel', id: 7 } as Message)), { t: 'cancel', id: 7 } as Message);
  for (const bad of [{ t: 'cancel' }, { t: 'cancel', id: -1 }, { t: 'cancel', id: 2 ** 32 }, { t: 'cancel', id: 'x' }]) {
    t.throws(() => decodeMessage(encodeMessage(bad as unknown as Message)), { code: 'ERR_PROTOCOL' }, JSON.stringify(bad));
  }
});

test('a cancel for no running push is ignored: the connection goes on', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('api stray cancel', 1000));
  const srv = await serve(store, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  t.like(await raw.hello(TOKEN), { t: 'welcome' });
  raw.send({ t: 'cancel', id: 99 } as Message);
  raw.send({ t: 'stat', id: 1, name });
  t.like(await raw.waitFor((m) => m.t === 'statr'), { t: 'statr', id: 1, size: 1000 });
  t.true(raw.isOpen);
});

test('hello with another hash or version is ERR_VERSION, with malformed chunker params ERR_PROTOCOL; other chunker params are welcome', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['hash blake3', { hash: 'blake3' }, 'ERR_VERSION'],
    ['version 1 (an older client, whose get answers would not stream)', { v: 1 }, 'ERR_VERSION'],
    ['version 2 (an older client, which knows no match)', { v: 2 }, 'ERR_VERSION'],
    ['avg not a power of two', { chunker: { min: 1024, avg: 3000, max: 8192 } }, 'ERR_PROTOCOL'],
    ['min > max', { chunker: { min: 8192, avg: 4096, max: 1024 } }, 'ERR_PROTOCOL'],
    ['min below 64', { chunker: { min: 1, avg: 4096, max: 8192 } }, 'ERR_PROTOCOL'],
  ];
  for (const [what, change, code] of cases) {
    const raw = await RawClient.open(srv.url);
    t.teardown(() => raw.close());
    raw.send({ t: 'hello', v: PROTOCOL_VERSION, token: TOKEN, chunker: CHUNKER, hash: 'sha256', ...change });
    t.like(await raw.waitFor((m) => m.t === 'err' || m.t === 'welcome'), { t: 'err', code }, what);
    await raw.waitFor(() => false, 2000);
    t.false(raw.isOpen, `${what}: closed`);
  }
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, token: TOKEN, chunker: { min: 1024, avg: 4096, max: 16384 }, hash: 'sha256' });
  t.like(await raw.waitFor((m) => m.t === 'err' || m.t === 'welcome'), { t: 'welcome' }, 'other chunker params');
});

test('a welcome with another hash or version, or malformed chunker params, fails connect (ERR_VERSION, ERR_PROTOCOL)', async (t) => {
  const store = await tempStore(t);
  for (const [change, code] of [
    [{ hash: 'md5' }, 'ERR_VERSION'],
    [{ v: 1 }, 'ERR_VERSION'],
    [{ v: 2 }, 'ERR_VERSION'],
    [{ chunker: { min: 100, avg: 100, max: 100 } }, 'ERR_PROTOCOL'],
  ] as const) {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => wss.once('listening', r));
    t.teardown(() => new Promise<void>((r) => wss.close(() => r())));
    wss.on('connection', (ws) => {
      ws.on('message', () => ws.send(encodeMessage({ t: 'welcome', v: PROTOCOL_VERSION, chunker: CHUNKER, hash: 'sha256', perms: ['read'], maxFrame: 1 << 20, maxRequests: 4, ...change } as Message)));
    });
    const port = (wss.address() as { port: number }).port;
    const connected = connect(store, `ws://127.0.0.1:${port}`, { token: TOKEN, timeoutMs: 3000 }).then((c) => c.close());
    t.is(await codeOf(connected), code, JSON.stringify(change));
    for (const ws of wss.clients) ws.terminate();
  }
});

test('pull and push between stores with other chunker params: the blob arrives whole, re-chunked by the receiver', async (t) => {
  const small = await tempStore(t, { chunker: { min: 2 * KiB, avg: 8 * KiB, max: 32 * KiB } });
  const big = await tempStore(t);
  const bytes = prngBytes('api chunkers', 2 * MiB);
  const name = await putBlob(big, bytes);
  const srv = await serve(big, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const c = await connect(small, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const st = await c.pull(name);
  t.is(st.receivedBytes, bytes.length);
  t.true(Buffer.from(await readAll(small, name)).equals(bytes));
  const mine = await collect(small.blobChunkStream(name));
  t.true(mine.every((x) => x.size <= 32 * KiB), "the receiver's chunks follow its own params");
  // An edited copy pushed back: the server re-chunks. Few chunk names are shared, so most bytes travel (PROTOCOL.md).
  const edited = Buffer.from(bytes);
  edited.fill(7, 1000_000, 1000_100);
  const w = await small.newBlobWriter();
  await w.appendBytes(edited);
  await w.close();
  const r = await c.push(w.name);
  t.is(r.received + r.reused, edited.length);
  t.true(Buffer.from(await readAll(big, w.name)).equals(edited), 'pushed whole, re-chunked by the server');
});

type Rec = Record<string, unknown>;
const BUNDLE = Buffer.from('CABBNDL1');

test('a bundle header with another hash is ERR_VERSION, with malformed chunker params ERR_BUNDLE_CORRUPT; other params import', async (t) => {
  const src = await tempStore(t, { chunker: { min: 2 * KiB, avg: 8 * KiB, max: 32 * KiB } });
  const bytes = prngBytes('api bundle header', 300_000);
  const name = await putBlob(src, bytes);
  const dir = tempDir(t);
  const good = path.join(dir, 'good.bundle');
  await exportBundle(src, [name], good);
  const recs: Rec[] = [];
  await scan(good, BUNDLE, (r) => {
    if (r.t !== 'end') recs.push(r);
  });
  const store = await tempStore(t);
  for (const [what, change, code] of [
    ['hash blake3', { hash: 'blake3' }, 'ERR_VERSION'],
    ['no hash', { hash: undefined }, 'ERR_BUNDLE_CORRUPT'],
    ['avg not a power of two', { chunker: { min: 1024, avg: 3000, max: 8192 } }, 'ERR_BUNDLE_CORRUPT'],
    ['chunker not a map', { chunker: 'fastcdc' }, 'ERR_BUNDLE_CORRUPT'],
  ] as const) {
    const f = path.join(dir, `${what}.bundle`);
    const w = await RecordWriter.create(f, BUNDLE);
    for (const r of recs) await w.put(r.t === 'bundle' ? { ...r, ...change } : r);
    await w.finish({});
    t.is(await codeOf(importBundle(store, f)), code, what);
    t.deepEqual(await collect(store.listBlobIds()), [], `${what}: nothing imported`);
  }
  const r = await importBundle(store, good);
  t.is(r.imported.length, 1, 'a bundle from a store with other chunker params imports');
  t.true(Buffer.from(await readAll(store, name)).equals(bytes));
});

test('onProgress is a running total in export, import and pull, ending at the total', async (t) => {
  const src = await tempStore(t);
  const dst = await tempStore(t);
  const names = [await putBlob(src, prngBytes('api progress 1', 6 * MiB)), await putBlob(src, prngBytes('api progress 2', 5 * MiB))];
  const file = path.join(tempDir(t), 'p.bundle');
  const ex: number[] = [];
  const rep = await exportBundle(src, names, file, { onProgress: (b) => ex.push(b) });
  t.true(ex.length >= 2, 'export reports more than once');
  t.deepEqual(ex, [...ex].sort((x, y) => x - y), 'export: never decreasing');
  t.is(ex.at(-1), rep.dataBytes, 'export: ends at the data bytes written');
  const im: number[] = [];
  const ir = await importBundle(dst, file, { onProgress: (b) => im.push(b) });
  t.true(im.length >= 2, 'import reports more than once');
  t.deepEqual(im, [...im].sort((x, y) => x - y), 'import: never decreasing');
  t.is(im.at(-1), ir.imported.reduce((n, s) => n + s.receivedBytes, 0), 'import: ends at the bytes taken from the bundle');

  const third = await tempStore(t);
  const srv = await serve(src, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const c = await connect(third, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const pl: number[] = [];
  const st = await c.pull(names[0]!, { onProgress: (p) => pl.push(p.verifiedBytes) });
  t.deepEqual(pl, [...pl].sort((x, y) => x - y), 'pull: never decreasing');
  t.is(pl.at(-1), st.size, 'pull: ends at the blob size');
  // A push has no onProgress: the server does the receiving (PROTOCOL.md has no progress message).
  const own = await putBlob(third, prngBytes('api progress 3', 3 * MiB));
  const pr = await c.push(own);
  t.is(pr.received, 3 * MiB);
});

test('client and server are AsyncDisposable, and closing twice is safe', async (t) => {
  const store = await tempStore(t);
  const other = await tempStore(t);
  const name = await putBlob(store, prngBytes('api dispose', 1000));
  let url: string;
  {
    await using srv = await serve(store, { tokens: { [TOKEN]: ['read'] } });
    url = srv.url;
    {
      await using c = await connect(other, srv.url, { token: TOKEN });
      t.like(await c.stat(name), { size: 1000 });
      await c.close();
    }
    await srv[Symbol.asyncDispose]();
    await srv.close();
  }
  t.is(await codeOf(connect(other, url, { token: TOKEN, timeoutMs: 2000 })), 'ERR_CONNECTION', 'the server is gone');
});

test('transfer results turn their hashes into 64-char hex in JSON', async (t) => {
  const src = await tempStore(t);
  const dst = await tempStore(t);
  const name = await putBlob(src, prngBytes('api json', 300_000));
  const srv = await serve(src, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const c = await connect(dst, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const st = await c.pull(name);
  const hex = toHex(st.hash);
  t.regex(hex, HEX64);
  t.is((JSON.parse(JSON.stringify(st)) as { hash: unknown }).hash, hex, 'pull stats');
  t.is((JSON.parse(JSON.stringify(await c.stat(name))) as { hash: unknown }).hash, hex, 'remote stat');
  const file = path.join(tempDir(t), 'j.bundle');
  await exportBundle(src, [name], file);
  const third = await tempStore(t);
  const ir = await importBundle(third, file);
  t.is((JSON.parse(JSON.stringify(ir)) as { imported: Array<{ hash: unknown }> }).imported[0]!.hash, hex, 'import report');
});

test('the CLI prints hashes as hex with --json: pull, push, stat URL NAME, import, export', async (t) => {
  const srcDir = path.join(tempDir(t), 'src');
  const dstDir = path.join(tempDir(t), 'dst');
  const src = await BlobStore.open(srcDir);
  const bytes = prngBytes('api cli json', 200_000);
  const name = await putBlob(src, bytes);
  const own = await putBlob(src, prngBytes('api cli json push', 100_000));
  const hash = await hashOf(src, name);
  const ownHash = await hashOf(src, own);
  const srv = await serve(src, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(async () => {
    await srv.close();
    await src.close();
  });
  const env = { CABSTORE_TOKEN: TOKEN };
  // The client store made by the CLI, holding the blob to push.
  const dst = await BlobStore.open(dstDir);
  const pushed = await putBlob(dst, prngBytes('api cli json pushed', 150_000));
  const pushedHash = await hashOf(dst, pushed);
  await dst.close();
  const pull = JSON.parse(await ok(t, dstDir, ['--json', 'pull', srv.url, name], { env })) as Record<string, unknown>;
  t.is(pull.hash, hash, 'pull --json');
  const stat = JSON.parse(await ok(t, dstDir, ['--json', 'stat', srv.url, name], { env })) as Record<string, unknown>;
  t.is(stat.hash, hash, 'stat URL NAME --json');
  const push = JSON.parse(await ok(t, dstDir, ['--json', 'push', srv.url, pushed], { env })) as Record<string, unknown>;
  t.is(push.hash, pushedHash, 'push --json');
  const file = path.join(tempDir(t), 'cli.bundle');
  const ex = JSON.parse(await ok(t, dstDir, ['--json', 'export', name, '-o', file])) as Record<string, unknown>;
  t.deepEqual(ex.contents, [{ name, size: bytes.length, hash }], 'export --json names each blob with its hash');
  const third = path.join(tempDir(t), 'third');
  const im = JSON.parse(await ok(t, third, ['--json', 'import', file])) as { imported: Array<Record<string, unknown>> };
  t.is(im.imported[0]!.hash, hash, 'import --json');
  for (const s of [JSON.stringify(pull), JSON.stringify(stat), JSON.stringify(push), JSON.stringify(im)]) t.false(s.includes('"type":"Buffer"'), s);
  t.truthy(ownHash);
});
