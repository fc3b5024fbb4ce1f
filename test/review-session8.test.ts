// Review of the eighth session's merged change (81c033e..main), as a hostile
// reviewer: the frame reader of our own (src/transfer/frame-tap.ts) in front
// of ws's, the reuse of frame and read buffers, admission and keepalive,
// links and non-files in blob/, and the code loaded on call (store.ts). Each
// test is a finding and fails until it is fixed; what held is in the report.
// Real sockets on 127.0.0.1, real files, real child processes.
import test, { type ExecutionContext } from 'ava';
import net from 'node:net';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect, decodeMessage, encodeMessage, fetchBlob, isCabError, merkleRoot, serve, toHex } from '../src/index.js';
import { helloFor } from '../src/transfer/handshake.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { clientFrame, fakeServer, rawUpgrade, settle } from './helpers/hostile.js';
import { ByteBudget } from '../src/transfer/budget.js';
import { SpareFrames } from '../src/transfer/spare-frames.js';

const codeOf = (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; !cond() && Date.now() < end; ) await sleep(20);
  return cond();
}

/** What a server sent on a raw socket, frame by frame (server frames are not masked). */
function serverFrames(s: net.Socket): { frames: Array<{ b0: number; payload: Buffer }>; closed: () => boolean } {
  const frames: Array<{ b0: number; payload: Buffer }> = [];
  let buf = Buffer.alloc(0);
  let closed = false;
  s.on('close', () => (closed = true));
  s.on('data', (b: Buffer) => {
    buf = Buffer.concat([buf, b]);
    for (;;) {
      if (buf.length < 2) return;
      let len = buf[1]! & 0x7f;
      let at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        at = 10;
      }
      if (buf.length < at + len) return;
      frames.push({ b0: buf[0]!, payload: buf.subarray(at, at + len) });
      buf = buf.subarray(at + len);
    }
  });
  return { frames, closed: () => closed };
}

/** What each frame a server sent is: the message type of a binary one, `close <code>` of a close. */
function kinds(frames: Array<{ b0: number; payload: Buffer }>): string[] {
  return frames.map((f) => {
    const op = f.b0 & 0x0f;
    if (op === 2) {
      try {
        return decodeMessage(f.payload).t;
      } catch {
        return 'undecodable';
      }
    }
    if (op === 8) return `close ${f.payload.length >= 2 ? f.payload.readUInt16BE(0) : ''}`;
    return `opcode ${op}`;
  });
}

// ---------------------------------------------------------------------------
// 1. The frame reader (FrameTap)

test('a frame ws refuses (RSV2 set) and a hello behind it in the same TCP read: the hello is not read nor welcomed, as ws reads nothing after the bad frame (the frame reader had read on)', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { insecure: true });
  t.teardown(() => srv.close());
  const hello = Buffer.from(encodeMessage(helloFor(store.chunker, undefined)));
  const bad = clientFrame(0x80 | 0x20 | 0x02, Buffer.from([1, 2, 3])); // binary, RSV2 set: no extension negotiated, ws fails the connection (1002)
  /** One write (on loopback, one read on the server): the bad frame, then a hello masked with `key`. */
  const attempt = async (key: Buffer) => {
    const s = await rawUpgrade(t, srv.port);
    const got = serverFrames(s);
    s.write(Buffer.concat([bad, clientFrame(0x82, hello, key)]));
    await until(got.closed, 3000);
    return kinds(got.frames);
  };
  // A key of its own (any other client's): the tap leaves the frame to ws, which reads nothing after the bad one.
  const theirs = await attempt(Buffer.from([1, 2, 3, 4]));
  // A zero key, as cabstore's client masks: the tap reads the frame itself.
  const ours = await attempt(Buffer.alloc(4));
  t.log(`hello masked with a key of its own: ${theirs.join(', ')}; with a zero key: ${ours.join(', ')}`);
  t.deepEqual(theirs, ['close 1002'], 'ws reads nothing after a frame that fails the connection');
  t.deepEqual(ours, ['close 1002'], 'nor may the tap: the hello behind the bad frame is not welcomed');
});

test('held: a close frame with a stat behind it in the same TCP read: the stat is not answered (the tap stops where ws does)', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('review8 close', 10_000));
  const srv = await serve(store, { insecure: true });
  t.teardown(() => srv.close());
  const s = await rawUpgrade(t, srv.port);
  const got = serverFrames(s);
  s.write(clientFrame(0x82, Buffer.from(encodeMessage(helloFor(store.chunker, undefined)))));
  t.true(await until(() => kinds(got.frames).includes('welcome'), 3000));
  const close = Buffer.from([0x03, 0xe8]); // 1000
  s.write(Buffer.concat([clientFrame(0x88, close), clientFrame(0x82, Buffer.from(encodeMessage({ t: 'stat', id: 1, name })))]));
  await until(got.closed, 3000);
  const seen = kinds(got.frames);
  t.log(seen.join(', '));
  t.false(seen.includes('statr'));
  t.true(seen.includes('close 1000'));
});

test('held: a hello in three fragments (FIN clear), with a ping between them and a 64-bit length on the last, goes to ws whole: welcomed, and the ping ponged', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { insecure: true });
  t.teardown(() => srv.close());
  const s = await rawUpgrade(t, srv.port);
  const got = serverFrames(s);
  const hello = Buffer.from(encodeMessage(helloFor(store.chunker, undefined)));
  const a = Math.floor(hello.length / 3);
  const last = hello.subarray(2 * a);
  // The last fragment's length in the 64-bit form (allowed, if not minimal): built by hand.
  const key = Buffer.alloc(4);
  const longHead = Buffer.alloc(10);
  longHead[0] = 0x80;
  longHead[1] = 0x80 | 127;
  longHead.writeBigUInt64BE(BigInt(last.length), 2);
  const bytes = Buffer.concat([
    clientFrame(0x02, hello.subarray(0, a)),
    clientFrame(0x89, Buffer.from('ping between fragments')),
    clientFrame(0x00, hello.subarray(a, 2 * a)),
    longHead,
    key,
    last,
  ]);
  // One byte a write: every header, mask and length split.
  for (let i = 0; i < bytes.length; i++) {
    s.write(bytes.subarray(i, i + 1));
    if (i % 16 === 0) await sleep(1);
  }
  t.true(await until(() => kinds(got.frames).includes('welcome'), 5000), kinds(got.frames).join(', '));
  t.true(got.frames.some((f) => (f.b0 & 0x0f) === 0x0a && f.payload.toString() === 'ping between fragments'), 'the ping was answered');
  t.false(got.closed());
});

/** A TCP relay to 127.0.0.1:port whose way down (server to client) carries `piece` bytes every `everyMs`: items arrive a piece at a time. */
async function trickle(t: ExecutionContext, port: number, piece: number, everyMs: number): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const up = net.connect(port, '127.0.0.1');
    sockets.add(client).add(up);
    client.on('error', () => {});
    up.on('error', () => {});
    client.pipe(up);
    let queue = Buffer.alloc(0);
    const timer = setInterval(() => {
      if (queue.length === 0) return;
      client.write(queue.subarray(0, piece));
      queue = queue.subarray(piece);
      if (queue.length < 4 * piece) up.resume();
    }, everyMs);
    up.on('data', (b: Buffer) => {
      queue = Buffer.concat([queue, b]);
      if (queue.length > 16 * piece) up.pause();
    });
    const end = () => {
      clearInterval(timer);
      client.destroy();
      up.destroy();
    };
    client.on('close', end);
    up.on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const x of sockets) x.destroy();
    server.close();
  });
  return `ws://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

test('held: a pull from a source that trickles its items in 8 KiB pieces and a fast one: gets stolen from the slow one while its items are half written in place land whole from the other; every byte right', async (t) => {
  const bytes = prngBytes('review8 steal', 12 * 1024 * 1024);
  const slowStore = await tempStore(t);
  const name = await putBlob(slowStore, bytes);
  const fastStore = await tempStore(t);
  await putBlob(fastStore, bytes, name);
  const slow = await serve(slowStore, { insecure: true });
  t.teardown(() => slow.close());
  const fast = await serve(fastStore, { insecure: true });
  t.teardown(() => fast.close());
  const slowUrl = await trickle(t, slow.port, 8 * 1024, 10); // about 800 KB/s
  const local = await tempStore(t);
  // The slow one first: its root is taken, and it is asked first.
  const stats = await fetchBlob(local, name, { from: [slowUrl, fast.url] });
  t.log(JSON.stringify(stats.sources.map((x) => [x.source === slowUrl ? 'slow' : 'fast', x.receivedBytes, x.chunks, x.dropped?.code])));
  t.true((await readAll(local, name)).equals(bytes), 'every byte right');
  t.is(toHex(stats.hash), toHex(merkleRoot(bytes)));
  const report = await local.fsck({ verify: true });
  t.is(report.problems.length, 0, JSON.stringify(report.problems));
  t.true(stats.sources.some((x) => x.source === slowUrl && x.receivedBytes > 0), 'the slow source sent some');
});

// ---------------------------------------------------------------------------
// 4. Code loaded on call (store.ts, ws.ts)

const DIST_SRC = fileURLToPath(new URL('../src/', import.meta.url));
const NODE_MODULES = fileURLToPath(new URL('../../node_modules', import.meta.url));

/**
 * A copy of the compiled library in a temp folder (its own node_modules link), so that a test may take
 * files away from it under a running process: what an in-place upgrade (npm install over a live
 * server) or a file the loader cannot read does to code loaded on call.
 */
function libCopy(t: ExecutionContext): string {
  const dir = tempDir(t, 'cabstore-lib-');
  fs.cpSync(DIST_SRC, path.join(dir, 'src'), { recursive: true });
  fs.symlinkSync(NODE_MODULES, path.join(dir, 'node_modules'));
  fs.writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}\n');
  return dir;
}

/** Runs `script` (an ES module, given the library copy's index URL and a store folder as argv) and parses its last stdout line. */
async function runChild(t: ExecutionContext, lib: string, script: string, maxFiles?: number): Promise<Record<string, string>> {
  const file = path.join(lib, 'child.mjs');
  fs.writeFileSync(file, script);
  const root = path.join(tempDir(t), 'store');
  const args = [file, path.join(lib, 'src'), root];
  // With maxFiles: under `ulimit -n`, as a busy server runs into its limit.
  const c =
    maxFiles === undefined
      ? spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('sh', ['-c', `ulimit -n ${maxFiles} && exec "$0" "$@"`, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  c.stdout.on('data', (b: Buffer) => (out += b.toString()));
  c.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => c.on('close', r));
  const line = out.trim().split('\n').pop() ?? '';
  t.log(`exit ${code}; stdout: ${line}; stderr: ${err.slice(0, 500)}`);
  return JSON.parse(line) as Record<string, string>;
}

/** The start of a child's script: the library copy's exports, `codeOf`, and a store (`store`) holding one small blob (`w`). */
const PRELUDE = `import fs from 'node:fs';
const [src, root] = process.argv.slice(2);
const { BlobStore, connect, serve, isCabError } = await import(src + '/index.js');
const codeOf = (e) => (isCabError(e) ? e.code : 'not a CabError: ' + (e && e.code ? e.code + ' ' : '') + String(e).split('\\n')[0]);
const store = await BlobStore.open(root);
const w = await store.newBlobWriter();
await w.appendBytes(Buffer.alloc(10000, 7));
await w.close();
`;

test('fsck, gc and a client\'s openReader load no code at their first call (it came with the library): their files removed after start, as an upgrade in place would, they still work (a lazy load that failed had failed with a plain Error, and for good)', async (t) => {
  const lib = libCopy(t);
  const got = await runChild(
    t,
    lib,
    `${PRELUDE}const srv = await serve(store, { insecure: true });
const client = await connect(store, srv.url);
// The files go after the process has started and opened everything: as an upgrade in place would take them.
for (const f of ['upkeep/gc.js', 'upkeep/fsck.js', 'transfer/remote-reader.js']) fs.rmSync(src + '/' + f);
const out = {};
out.gc = await store.gc().then(() => 'resolved', codeOf);
out.fsck = await store.fsck().then(() => 'resolved', codeOf);
out.openReader = await client.openReader(w.name).then(async (r) => (await r.close(), 'resolved'), codeOf);
await client.close();
await srv.close();
await store.close();
console.log(JSON.stringify(out));
`,
  );
  t.is(got.gc, 'resolved', 'gc');
  t.is(got.fsck, 'resolved', 'fsck');
  t.is(got.openReader, 'resolved', 'openReader');
});

test('gc and fsck called first while the process is out of file descriptors (EMFILE) fail with a CabError, and work once descriptors are free again (a lazy load of their code had failed for the life of the process)', async (t) => {
  const lib = libCopy(t);
  const got = await runChild(
    t,
    lib,
    `${PRELUDE}// Every descriptor the limit allows, taken (as by many connections at once) ...
const held = [];
try {
  for (;;) held.push(fs.openSync('/dev/null', 'r'));
} catch (e) {
  if (e.code !== 'EMFILE') throw e;
}
const out = { held: String(held.length) };
out.gcBusy = await store.gc().then(() => 'resolved', codeOf);
out.fsckBusy = await store.fsck().then(() => 'resolved', codeOf);
// ... and given back: the connections are gone.
for (const fd of held) fs.closeSync(fd);
// Descriptors are there again: a read opens files as before.
out.readAfter = await store.newBlobReader(w.name).then(async (r) => (await r.close(), 'resolved'), codeOf);
out.gcAfter = await store.gc().then(() => 'resolved', codeOf);
out.fsckAfter = await store.fsck().then(() => 'resolved', codeOf);
await store.close();
console.log(JSON.stringify(out));
`,
    256,
  );
  t.false(String(got.fsckBusy).startsWith('not a CabError'), `fsck out of descriptors: a CabError (${got.fsckBusy})`);
  t.is(got.readAfter, 'resolved', 'the process has descriptors again');
  t.is(got.gcAfter, 'resolved', 'gc works once descriptors are free again');
  t.is(got.fsckAfter, 'resolved', 'fsck works once descriptors are free again');
});

// ---------------------------------------------------------------------------
// 4. Links in blob/

test('blob/ itself a link to nothing (its disk not mounted): gc fails with ERR_IO and keeps the index entries of every blob (it had dropped them first)', async (t) => {
  const store = await tempStore(t);
  const names = [await putBlob(store, prngBytes('review8 a', 200_000)), await putBlob(store, prngBytes('review8 b', 200_000))];
  const blobRoot = path.join(store.root, 'blob');
  const moved = path.join(tempDir(t), 'blob-on-another-disk');
  // The operator moved blob/ to another disk and linked it back; the disk is not mounted now.
  fs.renameSync(blobRoot, moved);
  fs.symlinkSync(path.join(tempDir(t), 'not-mounted', 'blob'), blobRoot);
  const code = await store.gc().then(() => 'resolved', codeOf);
  t.is(code, 'ERR_IO', 'gc stops: blob/ cannot be listed');
  // The disk is back.
  fs.rmSync(blobRoot);
  fs.symlinkSync(moved, blobRoot);
  for (const name of names) t.truthy(store.index.blob(name), `the index entries of ${name} are still there (as for a fan-out folder that is a link to nothing)`);
});

// ---------------------------------------------------------------------------
// 3. Admission: the frame limit before welcome

test('serve({ maxFrame: 0 }) is refused, ERR_BAD_ARGUMENT (it had been taken, and ws reads 0 as no frame limit at all, before welcome too)', async (t) => {
  const store = await tempStore(t);
  const code = await serve(store, { insecure: true, maxFrame: 0 }).then(
    async (srv) => {
      // What such a server takes before any hello: a 1 MiB frame from anyone (64 KiB is the limit meant).
      const s = await rawUpgrade(t, srv.port);
      const got = serverFrames(s);
      s.write(clientFrame(0x82, Buffer.alloc(1024 * 1024, 0xc1), crypto.randomBytes(4)));
      await until(got.closed, 2000);
      t.log(`answered: ${kinds(got.frames).join(', ') || 'nothing'}`);
      await srv.close();
      return 'resolved';
    },
    codeOf,
  );
  t.is(code, 'ERR_BAD_ARGUMENT', 'a maxFrame that is not a positive integer is refused, as connect refuses it');
});

// ---------------------------------------------------------------------------
// 3. Keepalive: what a pong proves

test('a push to a server that takes it and then says nothing but pongs (its disk hung, its event loop not) is cut after ten idle times, ERR_IDLE_TIMEOUT (it had never ended)', async (t) => {
  let pushes = 0;
  // The server welcomes with write permission, takes the push, and never asks for a chunk nor answers: ws answers pings by itself.
  const url = await fakeServer(t, (m) => {
    if (m.t === 'push') pushes++;
  }, { perms: ['read', 'write'] });
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('review8 push', 100_000));
  const client = await connect(store, url, { idleTimeoutMs: 1000 });
  t.teardown(() => client.close());
  const how = await settle(client.push(name), 12_000);
  t.is(pushes, 1);
  t.is(how, 'ERR_IDLE_TIMEOUT', 'a server silent for 12 idle timeouts, with no bytes on their way either side, is cut (before this change: at 1 s)');
});

// ---------------------------------------------------------------------------
// Smaller points of the review: spare frame buffers held across a server

test('spare frame buffers: all of a server\'s connections keep at most its get budget\'s total (256 connections of 5 MiB each had held 1.25 GiB), and bytes dropped or taken free room for others', (t) => {
  const budget = new ByteBudget(10 * 1024);
  const [a, b] = [new SpareFrames(budget, 8 * 1024, 60_000), new SpareFrames(budget, 8 * 1024, 60_000)];
  t.teardown(() => (a.drop(), b.drop()));
  a.keep(Buffer.alloc(6 * 1024));
  b.keep(Buffer.alloc(6 * 1024));
  t.is(b.take(1), undefined, 'over the server-wide total: not kept');
  a.keep(Buffer.alloc(4 * 1024));
  t.is(a.take(5 * 1024)?.length, 6 * 1024, 'the smallest that fits');
  b.keep(Buffer.alloc(6 * 1024));
  t.is(b.take(1)?.length, 6 * 1024, 'room freed by a take is used');
  a.drop();
  b.keep(Buffer.alloc(9 * 1024));
  t.is(b.take(1), undefined, 'over one connection\'s most (8 KiB): not kept');
  b.keep(Buffer.alloc(8 * 1024));
  t.is(b.take(1)?.length, 8 * 1024, 'room freed by a drop is used');
});
