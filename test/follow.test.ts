// Follow mode, local (issue 18, item 1): a reader that follows a blob while
// it is written, in this process and in another one.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { BlobStore, decodeMessage, encodeMessage, isCabError, type BlobReader } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { start, finished } from './helpers/cli.js';
import { flipByte } from './helpers/damage.js';
import { PEER_TOKEN, connectPeer, servePeer } from './helpers/peers.js';
import { tempDir, tempStore } from './helpers/store.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const WRITER = fileURLToPath(new URL('../tools/bench/follow-writer.js', import.meta.url));

/** Reads a follower to its end through readAt, as it grows: the bytes, and how many reads found more after waiting. */
async function readToEnd(r: BlobReader, buf = Buffer.alloc(64 * KiB)): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; ; ) {
    const n = await r.readAt(buf, at);
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
    at += n;
  }
  return Buffer.concat(parts);
}

/** Settles within `ms`, or says it did not (a follower must be waiting, not done). */
/** Waits until `cond()` holds (at most 30 s: a loaded machine may be slow to deliver what is there). */
async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
}

async function pending<T>(p: Promise<T>, ms = 300): Promise<boolean> {
  const late = Symbol('late');
  p.catch(() => {});
  return (await Promise.race([p, new Promise((r) => setTimeout(() => r(late), ms))])) === late;
}

test('a follower in the same process: a read at the end waits for the next flush, the stream ends at finalize with every byte', async (t) => {
  const store = await tempStore(t);
  const data = prngBytes('follow-same', 3 * MiB + 12345);
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, 10 * KiB)); // under the chunker's min: all of it is the open chunk
  await w.flush();
  const r = await store.newBlobReader(w.name, { follow: true });
  t.teardown(() => r.close());
  t.true(r.following);
  // The open chunk's bytes are handed out, checked against the record's p, before any chunk has ended.
  t.is(r.size, 10 * KiB);
  const head = Buffer.alloc(20 * KiB);
  t.is(await r.readAt(head, 0), 10 * KiB);
  t.deepEqual(head.subarray(0, 10 * KiB), data.subarray(0, 10 * KiB));
  // At the end: the read waits until the writer flushes more.
  const next = r.readAt(head, 10 * KiB);
  t.true(await pending(next), 'a read at the end waits');
  await w.appendBytes(data.subarray(10 * KiB, 100 * KiB));
  t.true(await pending(next), 'appended but not flushed: still waiting');
  await w.flush();
  const n = await next;
  t.true(n > 0 && n <= 20 * KiB);
  t.deepEqual(head.subarray(0, n), data.subarray(10 * KiB, 10 * KiB + n));

  const s = store.newBlobReader(w.name, { follow: true }).then((r2) => {
    t.teardown(() => r2.close());
    return r2.stream({ start: 5 });
  });
  const got: Buffer[] = [];
  const drained = s.then(async (st) => {
    for await (const b of st as AsyncIterable<Buffer>) got.push(b);
  });
  for (let at = 100 * KiB; at < data.length; ) {
    const k = Math.min(data.length - at, 1 + crypto.randomInt(400 * KiB));
    await w.appendBytes(data.subarray(at, at + k));
    at += k;
    if (crypto.randomInt(3) === 0) await w.flush();
  }
  t.true(await pending(drained, 150), 'the stream does not end before finalize');
  await w.close();
  await drained;
  t.deepEqual(Buffer.concat(got), data.subarray(5));
  t.deepEqual(await readToEnd(r), data, 'the reader reads on to the final size, then 0');
  t.true(r.isFinalized);
  t.deepEqual(r.hash, w.hash);
  t.is(await r.readAt(head, data.length), 0);
});

test('a follower of a finalized blob reads it as any reader does; follow on a plain reader is a bad argument', async (t) => {
  const store = await tempStore(t);
  const data = prngBytes('follow-final', 300 * KiB);
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  await w.close();
  const r = await store.newBlobReader(w.name, { follow: true });
  t.teardown(() => r.close());
  t.deepEqual(await readToEnd(r), data);
  const plain = await store.newBlobReader(w.name);
  t.teardown(() => plain.close());
  t.throws(() => plain.stream({ follow: true }), { code: 'ERR_BAD_ARGUMENT' });
  await t.throwsAsync(store.newBlobReader(w.name, { follow: 'yes' as unknown as boolean }), { code: 'ERR_BAD_ARGUMENT' });
});

test('a blob deleted while it is followed: the waiting read fails with ERR_NO_SUCH_BLOB', async (t) => {
  const store = await tempStore(t);
  const data = prngBytes('follow-delete', 200 * KiB);
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  await w.closeWithoutFinalize();
  const r = await store.newBlobReader(w.name, { follow: true });
  t.teardown(() => r.close());
  const all = Buffer.alloc(data.length);
  await r.readFully(all, 0);
  t.deepEqual(all, data);
  const buf = Buffer.alloc(KiB);
  const waiting = r.readAt(buf, data.length);
  t.true(await pending(waiting), 'waiting at the end');
  await store.deleteBlob(w.name);
  await t.throwsAsync(waiting, { code: 'ERR_NO_SUCH_BLOB' });
  // A stream of it ends the same way.
  const r2 = await store.newBlobReader(w.name, { follow: true }).catch((e: unknown) => e);
  t.true(isCabError(r2, 'ERR_NO_SUCH_BLOB'));
});

test('a stream that follows: ERR_NO_SUCH_BLOB when the blob is deleted, after every byte before it', async (t) => {
  const store = await tempStore(t);
  const data = prngBytes('follow-delete-stream', 500 * KiB);
  const w = await store.newBlobWriter();
  await w.appendBytes(data);
  await w.closeWithoutFinalize();
  const r = await store.newBlobReader(w.name, { follow: true });
  t.teardown(() => r.close());
  const got: Buffer[] = [];
  const done = (async () => {
    for await (const b of r.stream() as AsyncIterable<Buffer>) got.push(b);
  })();
  // Every byte first (however slow the machine), then the stream waits at the end.
  await until(() => Buffer.concat(got).length >= data.length);
  t.true(await pending(done), 'the stream waits at the end');
  t.deepEqual(Buffer.concat(got), data);
  await store.deleteBlob(w.name);
  await t.throwsAsync(done, { code: 'ERR_NO_SUCH_BLOB' });
});

test("the follower's signal ends a waiting read, and a stream's signal its stream, with ERR_ABORTED", async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  t.teardown(() => w.closeWithoutFinalize());
  await w.appendBytes(prngBytes('follow-abort', 50 * KiB));
  await w.flush();
  const ac = new AbortController();
  const r = await store.newBlobReader(w.name, { follow: true, signal: ac.signal });
  t.teardown(() => r.close());
  const buf = Buffer.alloc(KiB);
  const waiting = r.readAt(buf, 50 * KiB);
  t.true(await pending(waiting));
  ac.abort();
  await t.throwsAsync(waiting, { code: 'ERR_ABORTED' });

  const r2 = await store.newBlobReader(w.name, { follow: true });
  t.teardown(() => r2.close());
  const ac2 = new AbortController();
  const s = r2.stream({ signal: ac2.signal });
  let bytes = 0;
  const done = (async () => {
    for await (const b of s as AsyncIterable<Buffer>) bytes += b.length;
  })();
  await until(() => bytes >= 50 * KiB);
  t.true(await pending(done));
  t.is(bytes, 50 * KiB);
  ac2.abort();
  await t.throwsAsync(done, { code: 'ERR_ABORTED' });
});

test("open-chunk bytes that do not hash to the record's p are not handed out: ERR_HASH_MISMATCH", async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  t.teardown(() => w.closeWithoutFinalize());
  await w.appendBytes(prngBytes('follow-p', 12 * KiB)); // one open chunk, no boundary yet
  await w.flush();
  await flipByte(store, w.name, 5000);
  await t.throwsAsync(store.newBlobReader(w.name, { follow: true }), { code: 'ERR_HASH_MISMATCH' });
});

test('cat --follow in one process while another writes 64 MiB in random pieces with flushes: the same bytes, ending at finalize', async (t) => {
  const dir = tempDir(t);
  await (await BlobStore.open(dir)).close();
  const name = crypto.randomBytes(16).toString('hex');
  const size = 64 * MiB;
  // `hold`: after its first flush the writer waits for the follower's first bytes (a fast writer could otherwise be
  // done before `cat --follow` has started, and there would be nothing left to follow).
  const writer = spawn(process.execPath, [WRITER, dir, name, String(size), 'follow-64', '2', String(2 * MiB), 'hold'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const wrote = finished(writer);
  await new Promise<void>((resolve, reject) => {
    writer.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    writer.on('exit', () => reject(new Error('the writer ended before it was ready')));
  });
  const follower = start(['--store', dir, 'cat', name, '--follow']);
  const hash = crypto.createHash('sha256');
  let got = 0;
  let writerDone = false;
  let firstBeforeFinal: boolean | undefined;
  writer.stdout!.on('data', (d: Buffer) => (writerDone ||= d.toString().includes('final')));
  follower.stdout!.on('data', (d: Buffer) => {
    if (firstBeforeFinal === undefined) writer.stdin!.write('go\n');
    firstBeforeFinal ??= !writerDone;
    hash.update(d);
    got += d.length;
  });
  const followed = finished(follower, false);
  // The follower is still running while the writer writes: it ends only with the writer.
  const w = await wrote;
  t.is(w.code, 0, w.stderr);
  const flushes = w.out.split('\n').filter((l) => l.startsWith('flushed')).length;
  t.true(flushes > 20, `the writer flushed ${flushes} times`);
  const f = await followed;
  t.is(f.code, 0, f.stderr);
  t.true(firstBeforeFinal, 'the follower had bytes before the writer finalized');
  t.is(got, size);
  t.is(hash.digest('hex'), crypto.createHash('sha256').update(prngBytes('follow-64', size)).digest('hex'));
});

test('a client follows a blob the server is still writing, over a real socket: every chunk checked, the root at the end', async (t) => {
  const server = await tempStore(t);
  const here = await tempStore(t);
  const srv = await servePeer(t, server);
  const c = await connectPeer(t, here, srv.url);
  const data = prngBytes('follow-remote', 5 * MiB + 777);
  const w = await server.newBlobWriter();
  await w.appendBytes(data.subarray(0, 300 * KiB));
  await w.flush();
  // Not following: a blob being written is refused, as before.
  await t.throwsAsync(collectStream(c.stream(w.name)), { code: 'ERR_BLOB_NOT_FINALIZED' });
  const got: Buffer[] = [];
  const done = (async () => {
    for await (const b of c.stream(w.name, { follow: true }) as AsyncIterable<Buffer>) got.push(b);
  })();
  for (let at = 300 * KiB; at < data.length; ) {
    const k = Math.min(data.length - at, 1 + crypto.randomInt(600 * KiB));
    await w.appendBytes(data.subarray(at, at + k));
    at += k;
    await w.flush();
  }
  await until(() => got.length > 0);
  t.true(await pending(done, 200), 'the stream waits for the finalize');
  t.true(Buffer.concat(got).length > 0, 'bytes came before the finalize');
  await w.close();
  await done;
  t.deepEqual(Buffer.concat(got), data);
  // A finalized blob streams without follow; a blob deleted while followed ends the stream with ERR_NO_SUCH_BLOB.
  t.deepEqual(await collectStream(c.stream(w.name)), data);
  const w2 = await server.newBlobWriter();
  await w2.appendBytes(data.subarray(0, 100 * KiB));
  await w2.closeWithoutFinalize();
  const gone = collectStream(c.stream(w2.name, { follow: true }));
  t.true(await pending(gone));
  await server.deleteBlob(w2.name);
  await t.throwsAsync(gone, { code: 'ERR_NO_SUCH_BLOB' });
  await t.throwsAsync(async () => collectStream(c.stream(w.name, { signal: AbortSignal.abort() })), { code: 'ERR_ABORTED' });
});

test('stat with after: decoded and checked like every field', (t) => {
  t.deepEqual(decodeMessage(encodeMessage({ t: 'stat', id: 1, name: 'x', after: 5 })), { t: 'stat', id: 1, name: 'x', after: 5 });
  t.deepEqual(decodeMessage(encodeMessage({ t: 'stat', id: 1, name: 'x' })), { t: 'stat', id: 1, name: 'x' });
  t.throws(() => decodeMessage(encodeMessage({ t: 'stat', id: 1, name: 'x', after: -1 })), { code: 'ERR_PROTOCOL' });
});

test('get --from URL --follow -o FILE in one process while another writes: the file holds every byte once the writer finalizes', async (t) => {
  const dir = tempDir(t);
  const server = await BlobStore.open(dir);
  t.teardown(() => server.close());
  const srv = await servePeer(t, server);
  const name = crypto.randomBytes(16).toString('hex');
  const size = 12 * MiB + 5;
  const writer = spawn(process.execPath, [WRITER, dir, name, String(size), 'follow-get', '5', String(MiB)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const wrote = finished(writer);
  await new Promise<void>((resolve) => writer.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve()));
  const file = path.join(tempDir(t), 'out.bin');
  const got = start(['get', name, '--from', srv.url, '--follow', '-o', file], { env: { CABSTORE_TOKEN: PEER_TOKEN } });
  const w = await wrote;
  t.is(w.code, 0, w.stderr);
  const r = await finished(got);
  t.is(r.code, 0, r.stderr);
  t.deepEqual(fs.readFileSync(file), prngBytes('follow-get', size));
});

async function collectStream(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of s as AsyncIterable<Buffer>) parts.push(b);
  return Buffer.concat(parts);
}
