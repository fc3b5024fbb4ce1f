// Verified range reads of a remote blob (issue 17), over real sockets: random
// ranges of a 64 MiB blob equal the local bytes; a proxy that changes one
// byte of a data or a proof answer is caught before any byte of that leaf
// reaches the caller; the server's leaf layer is made once, and a damaged
// one is made again; a trusted root the server disagrees with fails.
import test from 'ava';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlobStore, connect, isCabError, serve, sha256, toHex, LEAF_SIZE, type CabServer } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { tcpProxy } from '../tools/proxy.js';
import { codeOf, putBlob, tempStore } from './helpers/store.js';
import { assertUsage, cli } from './helpers/cli.js';
import { MiB, RawClient } from './helpers/transfer.js';
import { decodeMessage, encodeMessage } from '../src/index.js';

const TOKEN = 'range-token';
/** 64 MiB less a bit: the last leaf is short. */
const SIZE = 64 * MiB - 5000;

interface Fixture {
  server: BlobStore;
  srv: CabServer;
  name: string;
  bytes: Buffer;
}

let fixture: Promise<Fixture> | undefined;
let fixtureDir: string | undefined;
/** One server store with one 64 MiB blob, shared by the tests of this file (each connects on its own); removed after them all. */
function shared(): Promise<Fixture> {
  fixture ??= (async () => {
    fixtureDir = await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-range-'));
    const server = await BlobStore.open(fixtureDir);
    const bytes = prngBytes('range 64', SIZE);
    const name = await putBlob(server, bytes);
    const srv = await serve(server, { tokens: { [TOKEN]: ['read'] } });
    return { server, srv, name, bytes };
  })();
  return fixture;
}
test.after.always(async () => {
  if (fixture) {
    const { srv, server } = await fixture;
    await srv.close();
    await server.close();
  }
  if (fixtureDir) await fs.rm(fixtureDir, { recursive: true, force: true });
});

/** The bytes a stream gave before it ended, and how it ended. */
async function drain(s: AsyncIterable<Uint8Array>): Promise<{ got: Buffer; code: string }> {
  const parts: Uint8Array[] = [];
  try {
    for await (const b of s) parts.push(b);
    return { got: Buffer.concat(parts), code: 'ok' };
  } catch (e) {
    return { got: Buffer.concat(parts), code: isCabError(e) ? e.code : String(e) };
  }
}

test('random ranges of a 64 MiB remote blob (inside leaves, across them, the short last leaf, empty) equal the local bytes', async (t) => {
  const { srv, name, bytes } = await shared();
  const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name);
  t.is(r.size, SIZE);
  const local = await (await shared()).server.newBlobReader(name);
  await local.close();
  t.is(toHex(r.hash), toHex(local.hash!));
  const rand = prngInts(64);
  const ranges: Array<[number, number]> = [
    [0, 0],
    [SIZE, SIZE],
    [12345, 12345],
    [100, 200], // inside the first leaf
    [LEAF_SIZE - 10, LEAF_SIZE + 10], // across a leaf boundary
    [5 * LEAF_SIZE, 6 * LEAF_SIZE], // exactly one leaf
    [SIZE - 100, SIZE], // inside the short last leaf
    [SIZE - LEAF_SIZE - 7, SIZE], // the last two leaves
    [33 * MiB + 1, 35 * MiB + 3], // over two requests
    [0, SIZE], // all of it
  ];
  for (let k = 0; k < 40; k++) {
    const a = rand(SIZE);
    ranges.push([a, Math.min(SIZE, a + rand(k % 2 ? 3 * MiB : 40000))]);
  }
  for (const [a, b] of ranges) {
    const buf = Buffer.alloc(b - a);
    t.is(await r.readAt(buf, a), b - a, `readAt ${a}..${b}`);
    t.true(buf.equals(bytes.subarray(a, b)), `readAt ${a}..${b}`);
    if (b - a <= 4 * MiB) {
      const { got, code } = await drain(r.stream({ start: a, end: b }));
      t.is(code, 'ok');
      t.true(got.equals(bytes.subarray(a, b)), `stream ${a}..${b}`);
    }
  }
  // read and seek: small reads one after another, then from the end.
  r.seek(40 * MiB + 3);
  const small = Buffer.alloc(1000);
  for (let k = 0; k < 50; k++) {
    t.is(await r.read(small), 1000);
    t.true(small.equals(bytes.subarray(40 * MiB + 3 + 1000 * k, 40 * MiB + 3 + 1000 * (k + 1))));
  }
  const before = r.fetched.requests;
  r.seek(40 * MiB + 3 + 50000);
  await r.read(small);
  t.is(r.fetched.requests, before, 'sequential small reads come from the leaves fetched before');
  r.seek(-10, 2);
  t.is(await r.read(small), 10);
  t.true(small.subarray(0, 10).equals(bytes.subarray(SIZE - 10)));
  t.is(await r.read(small), 0);
  t.is(await codeOf(r.readAt(small, SIZE + 1)), 'ERR_ILLEGAL_POSITION');
  t.is(await codeOf(r.readAt(small, -1)), 'ERR_NEGATIVE_POSITION');
  t.is(await codeOf(Promise.resolve().then(() => r.seek(0, 3 as 0))), 'ERR_BAD_WHENCE');
  await r.close();
  t.is(await codeOf(r.readAt(small, 0)), 'ERR_CLOSED');
});

test('a sequential stream of the whole blob asks for few proof hashes: those of a neighbouring range are not sent again', async (t) => {
  const { srv, name, bytes } = await shared();
  const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name);
  const { got, code } = await drain(r.stream());
  t.is(code, 'ok');
  t.true(got.equals(bytes));
  // 64 requests of 1 MiB; a fresh proof each would be 12 hashes (the tree has 12 levels).
  t.is(r.fetched.requests, 64);
  t.true(r.fetched.proofHashes <= 64, `${r.fetched.proofHashes} proof hashes`);
  // Read again: every node is held, no proof at all.
  const was = r.fetched.proofHashes;
  const buf = Buffer.alloc(3 * MiB);
  await r.readAt(buf, 7 * MiB + 123);
  t.is(r.fetched.proofHashes, was);
  t.true(r.fetched.bytes <= SIZE + 4 * MiB);
});

test('a trusted root the server does not announce: ERR_HASH_MISMATCH; the right one, as bytes or hex, reads', async (t) => {
  const { srv, name, bytes, server } = await shared();
  const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const wrong = Buffer.from(sha256(Buffer.from('another blob')));
  t.is(await codeOf(c.openReader(name, { hash: wrong })), 'ERR_HASH_MISMATCH');
  t.is(await codeOf(c.openReader(name, { hash: 'zz' })), 'ERR_BAD_HEX');
  t.is(await codeOf(c.openReader(name, { hash: new Uint8Array(3) })), 'ERR_BAD_ARGUMENT');
  t.is(await codeOf(c.openReader('not-a-name')), 'ERR_INVALID_BLOB_NAME');
  const lr = await server.newBlobReader(name);
  await lr.close();
  const r = await c.openReader(name, { hash: toHex(lr.hash!) });
  const buf = Buffer.alloc(100);
  await r.readAt(buf, 1000);
  t.true(buf.equals(bytes.subarray(1000, 1100)));
  // An unfinalized blob has no root to check against.
  const w = await server.newBlobWriter();
  await w.appendBytes(Buffer.from('growing'));
  await w.flush();
  t.is(await codeOf(c.openReader(w.name)), 'ERR_BLOB_NOT_FINALIZED');
  await w.close();
});

test('the leaf layer is made once beside the store, 32 bytes per 16 KiB; damaged, it is made again: never trusted as it is', async (t) => {
  const { server, srv, name, bytes } = await shared();
  const file = path.join(server.root, 'layers', name.slice(0, 2), name);
  const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const buf = Buffer.alloc(50000);
  await (await c.openReader(name)).readAt(buf, 9 * MiB);
  const st = await fs.stat(file);
  t.is(st.size, 48 + 32 * Math.ceil(SIZE / LEAF_SIZE));
  // A flipped leaf hash in the file: the server rebuilds the tree, checks its root, and finds the file wrong.
  // Its tree is cached in memory, so the test uses a second server on the same store... the same process:
  // the cache is per store object, so a store opened again reads the file.
  const f = await fs.open(file, 'r+');
  await f.write(Buffer.from([0xff, 0xee]), 0, 2, 48 + 32 * 100);
  await f.close();
  const again = await BlobStore.open(server.root);
  t.teardown(() => again.close());
  const srv2 = await serve(again, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv2.close());
  const c2 = await connect(await tempStore(t), srv2.url, { token: TOKEN });
  t.teardown(() => c2.close());
  const r2 = await c2.openReader(name);
  await r2.readAt(buf, 100 * LEAF_SIZE - 7);
  t.true(buf.equals(bytes.subarray(100 * LEAF_SIZE - 7, 100 * LEAF_SIZE - 7 + 50000)));
  const fixed = await fs.readFile(file);
  t.deepEqual(fixed.subarray(48 + 32 * 100, 48 + 32 * 101), Buffer.from(sha256(bytes.subarray(100 * LEAF_SIZE, 101 * LEAF_SIZE))));
});

test('a leaf layer damaged after its tree is held: the group of leaf hashes read for a proof is checked, the layer made again, the read right', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('layer groups', 3 * MiB + 777);
  const name = await putBlob(store, bytes);
  const srv = await serve(store, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  const file = path.join(store.root, 'layers', name.slice(0, 2), name);
  const leafHash = (i: number) => Buffer.from(sha256(bytes.subarray(i * LEAF_SIZE, (i + 1) * LEAF_SIZE)));
  const read = async (leaf: number) => {
    const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
    try {
      const buf = Buffer.alloc(3 * LEAF_SIZE);
      await (await c.openReader(name)).readAt(buf, leaf * LEAF_SIZE + 5);
      t.true(buf.equals(bytes.subarray(leaf * LEAF_SIZE + 5, leaf * LEAF_SIZE + 5 + buf.length)), `bytes at leaf ${leaf}`);
    } finally {
      await c.close();
    }
  };
  await read(0); // the layer is made, the tree held
  const f = await fs.open(file, 'r+');
  await f.write(Buffer.from([0xff, 0xee, 0xdd]), 0, 3, 48 + 32 * 97);
  await f.close();
  // Leaves 100.. need node 2/24 (leaves 96..99): below the held levels, read from the damaged group.
  await read(100);
  const fixed = await fs.readFile(file);
  t.deepEqual(fixed.subarray(48 + 32 * 97, 48 + 32 * 98), leafHash(97), 'the layer was made again');
  t.is(fixed.length, 48 + 32 * Math.ceil(bytes.length / LEAF_SIZE));
});

/**
 * A proxy that flips the last byte of the first place where `pattern` (8
 * bytes) shows up in what the server sends, once; `flipped` says if it has.
 */
async function liar(port: number, pattern: Buffer) {
  let tail = Buffer.alloc(0);
  const state = { flipped: false };
  const proxy = await tcpProxy(() => port, {
    tamper: (piece) => {
      if (state.flipped) return;
      const seen = Buffer.concat([tail, piece]);
      const at = seen.indexOf(pattern);
      if (at >= 0) {
        piece[at + pattern.length - 1 - tail.length]! ^= 0x01; // the pattern's last byte is always in this piece
        state.flipped = true;
      }
      tail = Buffer.from(seen.subarray(Math.max(0, seen.length - (pattern.length - 1))));
    },
  });
  return { proxy, state };
}

test('one byte changed in a data answer: ERR_HASH_MISMATCH, and no byte of that leaf (or after it) reaches the reader', async (t) => {
  const { srv, name, bytes } = await shared();
  const target = 20 * MiB + 5 * LEAF_SIZE + 999; // in the third request of a stream from 18 MiB + 100
  const { proxy, state } = await liar(srv.port, bytes.subarray(target - 7, target + 1));
  t.teardown(() => proxy.close());
  const c = await connect(await tempStore(t), proxy.url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name);
  const start = 18 * MiB + 100;
  const { got, code } = await drain(r.stream({ start, end: 30 * MiB }));
  t.true(state.flipped);
  t.is(code, 'ERR_HASH_MISMATCH');
  t.true(start + got.length <= 20 * MiB + 5 * LEAF_SIZE, `${got.length} bytes reached the reader`);
  t.true(got.equals(bytes.subarray(start, start + got.length)));
  // readAt over the same leaf on the same connection: the lie was once; the bytes come right now.
  const buf = Buffer.alloc(LEAF_SIZE);
  await r.readAt(buf, 20 * MiB + 5 * LEAF_SIZE);
  t.true(buf.equals(bytes.subarray(20 * MiB + 5 * LEAF_SIZE, 20 * MiB + 6 * LEAF_SIZE)));
});

test('one byte changed in a proof hash: ERR_HASH_MISMATCH before any byte; a readAt leaves the buffer untouched', async (t) => {
  const { srv, name, bytes } = await shared();
  // A first read from leaf 301 (odd) needs leaf 300's hash as its lowest uncle: the proof carries it.
  const uncle = Buffer.from(sha256(bytes.subarray(300 * LEAF_SIZE, 301 * LEAF_SIZE)));
  const { proxy, state } = await liar(srv.port, uncle.subarray(0, 8));
  t.teardown(() => proxy.close());
  const c = await connect(await tempStore(t), proxy.url, { token: TOKEN });
  t.teardown(() => c.close());
  const r = await c.openReader(name);
  const buf = Buffer.alloc(200000, 0xa5);
  t.is(await codeOf(r.readAt(buf, 301 * LEAF_SIZE + 10)), 'ERR_HASH_MISMATCH');
  t.true(state.flipped);
  t.true(buf.equals(Buffer.alloc(200000, 0xa5)), 'no byte of the range was written');
});

test('CLI: get --from --range writes the verified range; a lying peer: exit 1, ERR_HASH_MISMATCH, no file', async (t) => {
  const { srv, name, bytes } = await shared();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-range-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const tokenFile = path.join(dir, 'token');
  await fs.writeFile(tokenFile, TOKEN);
  const out = path.join(dir, 'part');
  const env = { CABSTORE_DIR: path.join(dir, 'nostore') };
  const okRun = await cli(['get', name, '--from', srv.url, '--range', `${3 * MiB + 7}-${5 * MiB}`, '-o', out, '--token-file', tokenFile], { env });
  t.is(okRun.code, 0, okRun.stderr);
  t.true((await fs.readFile(out)).equals(bytes.subarray(3 * MiB + 7, 5 * MiB)));
  await t.throwsAsync(fs.stat(env.CABSTORE_DIR), { code: 'ENOENT' }, 'nothing stored here');
  const target = 4 * MiB + 77;
  const { proxy, state } = await liar(srv.port, bytes.subarray(target - 7, target + 1));
  t.teardown(() => proxy.close());
  const lie = path.join(dir, 'lie');
  const bad = await cli(['get', name, '--from', proxy.url, '--range', `${3 * MiB}-${5 * MiB}`, '-o', lie, '--token-file', tokenFile], { env });
  t.true(state.flipped);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /ERR_HASH_MISMATCH/);
  await t.throwsAsync(fs.stat(lie), { code: 'ENOENT' });
  t.deepEqual((await fs.readdir(dir)).sort(), ['part', 'token']);
  for (const range of ['9-3', 'abc', '1-2-3', '99999999999999999999-']) {
    assertUsage(t, await cli(['get', name, '--from', srv.url, '--range', range, '--token-file', tokenFile], { env }), `--range ${range}`);
  }
  assertUsage(t, await cli(['get', name, '--range', '0-9'], { env }), '--range without --from');
  assertUsage(t, await cli(['get', name, '--from', srv.url, '--size', '9'], { env }), '--size without --hash');
});

test('a hostile range: past the end, a node not in the tree, an unfinalized blob get err with their id and the connection goes on; a malformed one is ERR_PROTOCOL and closes it', async (t) => {
  const { srv, name, server } = await shared();
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.ws.terminate());
  t.like(await raw.hello(TOKEN), { t: 'welcome' });
  const leaves = Math.ceil(SIZE / LEAF_SIZE);
  const ask = async (id: number, m: Record<string, unknown>) => {
    raw.send({ t: 'range', id, name, leaf: 0, n: 1, proof: [], ...m });
    return raw.waitFor((x) => 'id' in x && x.id === id);
  };
  t.like(await ask(1, { leaf: leaves - 1, n: 2 }), { t: 'err', code: 'ERR_ILLEGAL_POSITION' });
  t.like(await ask(2, { proof: [[0, leaves]] }), { t: 'err', code: 'ERR_PROTOCOL' });
  t.like(await ask(3, { proof: [[13, 0]] }), { t: 'err', code: 'ERR_PROTOCOL' });
  const w = await server.newBlobWriter();
  t.teardown(() => w.close());
  await w.appendBytes(Buffer.from('open'));
  await w.flush();
  t.like(await ask(4, { name: w.name }), { t: 'err', code: 'ERR_BLOB_NOT_FINALIZED' });
  const okAnswer = await ask(5, { leaf: leaves - 1, proof: [[12, 0]] });
  t.like(okAnswer, { t: 'ranger' });
  t.is((okAnswer as Extract<ReturnType<typeof decodeMessage>, { t: 'ranger' }>).data.length, SIZE - (leaves - 1) * LEAF_SIZE);
  t.is(raw.fatalErrors.length, 0);
  raw.send({ t: 'range', id: 6, name, leaf: 0, n: 257, proof: [] });
  t.true(await raw.waitClosed());
  t.like(raw.fatalErrors[0], { code: 'ERR_PROTOCOL' });
});

test('the range decoder is bounded: every malformed field is ERR_PROTOCOL', (t) => {
  const base = { t: 'range', id: 1, name: 'a'.repeat(32), leaf: 0, n: 1, proof: [] as unknown[] };
  for (const bad of [{ n: 0 }, { n: 257 }, { leaf: -1 }, { leaf: 2 ** 41 }, { proof: [[64, 0]] }, { proof: [[0]] }, { proof: Array(129).fill([0, 0]) }, { name: 7 }]) {
    t.true(isCabError(t.throws(() => decodeMessage(encodeMessage({ ...base, ...bad } as never))), 'ERR_PROTOCOL'), JSON.stringify(bad).slice(0, 60));
  }
  for (const bad of [{ data: 'x' }, { data: Buffer.alloc(256 * LEAF_SIZE + 1) }, { proof: [Buffer.alloc(31)] }]) {
    t.true(isCabError(t.throws(() => decodeMessage(encodeMessage({ t: 'ranger', id: 1, data: Buffer.alloc(1), proof: [], ...bad } as never))), 'ERR_PROTOCOL'));
  }
});

test('deleting a blob deletes its leaf layer', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('deleted', 300 * 1024));
  const srv = await serve(store, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  await (await c.openReader(name)).readAt(Buffer.alloc(10), 5);
  const file = path.join(store.root, 'layers', name.slice(0, 2), name);
  t.is((await fs.stat(file)).size, 48 + 32 * 19);
  await store.deleteBlob(name);
  await t.throwsAsync(fs.stat(file), { code: 'ENOENT' });
});
