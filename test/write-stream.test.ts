// Streaming into a writer: appendStream, createWriteStream, and { signal }
// on every append (issue 14, item 7). What must hold: bytes and hash equal
// what went in, however it was cut; backpressure; a source that fails or an
// abort leaves the writer open holding a prefix; destroy never finalizes.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { once } from 'node:events';
import { BlobStore, CabError, merkleRoot, toHex, type BlobWriter } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll, chunksOf, chunkKeys, keysOf } from './helpers/store.js';

const KiB = 1024;
const MiB = 1024 * 1024;

/** The code of the CabError `p` rejects with. */
async function codeOf(t: import('ava').ExecutionContext, p: Promise<unknown>): Promise<string> {
  return (await t.throwsAsync(p, { instanceOf: CabError }))!.code;
}

/** `data` in pieces of pseudo-random sizes from 1 to `max` bytes. */
function pieces(data: Uint8Array, max: number, seed = 1): Uint8Array[] {
  const rnd = prngInts(seed);
  const out: Uint8Array[] = [];
  for (let off = 0; off < data.length; ) {
    const n = 1 + rnd(max);
    out.push(data.subarray(off, off + n));
    off += n;
  }
  return out;
}

/** The blob's bytes as durably recorded: flushes first, then reads. */
async function durableBytes(store: BlobStore, w: BlobWriter): Promise<Buffer> {
  await w.flush();
  return readAll(store, w.name);
}

test('pipeline(Readable, createWriteStream): every byte and the hash; finish means durable, not finalized', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('pipeline', 9 * MiB + 777);
  const w = await s.newBlobWriter();
  const ws = w.createWriteStream();
  t.is(ws.writableHighWaterMark, 16 * KiB, "Node's own queue is small: the stream gathers writes in blocks of its highWaterMark");
  await pipeline(Readable.from(pieces(data, 64 * KiB)), ws);
  t.false(w.isFinalized);
  t.is(w.size, data.length);
  t.is(toHex(w.hash), toHex(merkleRoot(data)), 'hash is up to date at finish');
  const st = await s.stat(w.name);
  t.is(st.size, data.length, 'every byte is in a durable record');
  t.false(st.finalized);
  await w.close();
  t.true((await readAll(s, w.name)).equals(data));
  t.is(toHex(w.hash), toHex(merkleRoot(data)));
  t.deepEqual(await chunkKeys(s, w.name), keysOf(chunksOf(data)), 'the chunks one appendBytes would give');
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
});

test('createWriteStream({ finalize, expectHash }): end() finalizes; a wrong hash is ERR_HASH_MISMATCH and the writer stays open', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('finalize', 3 * MiB);
  const w = await s.newBlobWriter();
  await pipeline(Readable.from(pieces(data, 100 * KiB)), w.createWriteStream({ finalize: true, expectHash: merkleRoot(data) }));
  t.true(w.isFinalized);
  t.true((await s.stat(w.name)).finalized);
  t.true((await readAll(s, w.name)).equals(data));

  const w2 = await s.newBlobWriter();
  const e = await t.throwsAsync(pipeline(Readable.from([data]), w2.createWriteStream({ finalize: true, expectHash: toHex(new Uint8Array(32)) })), { instanceOf: CabError });
  t.is(e!.code, 'ERR_HASH_MISMATCH');
  t.false(w2.isFinalized);
  t.is(w2.size, data.length, 'the writer keeps every byte');
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(data)));

  const w3 = await s.newBlobWriter();
  t.is(await codeOf(t, (async () => w3.createWriteStream({ expectHash: merkleRoot(data) }))()), 'ERR_BAD_ARGUMENT', 'expectHash without finalize');
  t.is(await codeOf(t, (async () => w3.createWriteStream({ finalize: true, expectHash: 'abc' }))()), 'ERR_BAD_HEX', 'as close({ expectHash }) says');
  t.is(await codeOf(t, (async () => w3.createWriteStream({ finalize: true, expectHash: new Uint8Array(31) }))()), 'ERR_BAD_ARGUMENT');
  t.is(await codeOf(t, (async () => w3.createWriteStream({ highWaterMark: -1 }))()), 'ERR_BAD_ARGUMENT');
  await w3.closeWithoutFinalize();
});

test('the write stream has backpressure in bytes: two blocks of highWaterMark, then write() is false until the first is appended', async (t) => {
  const s = await tempStore(t);
  const w = await s.newBlobWriter();
  const ws = w.createWriteStream({ highWaterMark: 64 * KiB });
  const data = prngBytes('backpressure', 400 * KiB);
  // Small writes, as fast as write() allows: a block fills and goes to the writer, the next fills, then the
  // write that finds it full waits, and Node queues at most 16 KiB behind it.
  let off = 0;
  let ok = true;
  while (ok && off < data.length) {
    ok = ws.write(data.subarray(off, off + KiB));
    off += KiB;
  }
  t.false(ok, 'write() returned false');
  t.true(off > 128 * KiB && off <= 128 * KiB + 17 * KiB, `false came after two blocks and Node's 16 KiB queue: ${off} bytes`);
  t.is(w.size, 0, 'nothing is appended while the writes come in one turn');
  await once(ws, 'drain');
  t.true(w.size >= 64 * KiB, 'drain: the first block is appended');
  t.true(off - w.size <= 2 * 64 * KiB + 16 * KiB, 'the stream holds two blocks and the queue at most');
  ws.end(data.subarray(off));
  await once(ws, 'finish');
  await w.close();
  t.true((await readAll(s, w.name)).equals(data));

  // The default: blocks of 1 MiB.
  const w2 = await s.newBlobWriter();
  const ws2 = w2.createWriteStream();
  let off2 = 0;
  while (ws2.write(new Uint8Array(4 * KiB))) off2 += 4 * KiB;
  t.true(off2 >= 2 * MiB && off2 <= 2 * MiB + 16 * KiB, `${off2}`);
  ws2.end();
  await once(ws2, 'finish');
  t.is(w2.size, off2 + 4 * KiB);
  await w2.closeWithoutFinalize();
});

test('appendStream of many tiny pieces, of a Readable, of an iterable; a source that reuses its buffer', async (t) => {
  const s = await tempStore(t);
  const dir = tempDir(t);
  const data = prngBytes('tiny pieces', 5 * MiB + 3);

  const tiny = pieces(data, 200);
  t.true(tiny.length > 40_000);
  const w = await s.newBlobWriter();
  t.is(await w.appendStream((async function* () { yield* tiny; })()), data.length);
  t.is(toHex(w.hash), toHex(merkleRoot(data)), 'hash is up to date when appendStream resolves');
  await w.close();
  t.true((await readAll(s, w.name)).equals(data));
  t.deepEqual(await chunkKeys(s, w.name), keysOf(chunksOf(data)));

  const file = path.join(dir, 'data.bin');
  fs.writeFileSync(file, data);
  const w2 = await s.newBlobWriter();
  t.is(await w2.appendStream(fs.createReadStream(file, { highWaterMark: 16 * KiB })), data.length);
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(data)));

  const w3 = await s.newBlobWriter();
  t.is(await w3.appendStream(pieces(data, 300 * KiB)), data.length, 'a plain array of pieces');
  t.is(await w3.appendStream([]), 0);
  await w3.close();
  t.is(toHex(w3.hash), toHex(merkleRoot(data)));

  // One buffer, overwritten for every piece: appendStream must copy what it keeps.
  const w4 = await s.newBlobWriter();
  await w4.appendStream(
    (async function* () {
      const buf = new Uint8Array(10_000);
      for (let off = 0; off < data.length; off += buf.length) {
        const n = Math.min(buf.length, data.length - off);
        buf.set(data.subarray(off, off + n));
        yield buf.subarray(0, n);
        buf.fill(0xee);
      }
    })(),
  );
  await w4.close();
  t.true((await readAll(s, w4.name)).equals(data));
});

test('a source that throws: its error as it came, the bytes before it appended, the writer open', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('throws', 6 * MiB);
  const boom = new Error('source failed');
  const cut = 5 * MiB + 12_345; // more than one block, and a part block
  const w = await s.newBlobWriter();
  const e = await t.throwsAsync(
    w.appendStream(
      (async function* () {
        yield* pieces(data.subarray(0, cut), 50 * KiB);
        throw boom;
      })(),
    ),
  );
  t.is(e, boom, 'the source error itself');
  t.is(w.size, cut, 'every byte the source gave before it');
  t.is(toHex(w.hash), toHex(merkleRoot(data.subarray(0, cut))));
  t.true((await durableBytes(s, w)).equals(data.subarray(0, cut)));

  // A piece that is not bytes stops it the same way, with ERR_BAD_ARGUMENT.
  t.is(
    await codeOf(
      t,
      w.appendStream(
        (async function* () {
          yield data.subarray(cut, cut + 1000);
          yield 'a string' as unknown as Uint8Array;
        })(),
      ),
    ),
    'ERR_BAD_ARGUMENT',
  );
  t.is(w.size, cut + 1000);

  // The writer is usable: the rest, then finalize.
  await w.appendBytes(data.subarray(cut + 1000));
  await w.close();
  t.true((await readAll(s, w.name)).equals(data));
  t.is(toHex(w.hash), toHex(merkleRoot(data)));
});

test('abort during appendStream: ERR_ABORTED, the blob is what the source gave before, the source is stopped', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('abort stream', 7 * MiB);
  const ac = new AbortController();
  let given = 0;
  let stopped!: () => void;
  const generatorStopped = new Promise<void>((r) => (stopped = r));
  const w = await s.newBlobWriter();
  const e = await t.throwsAsync(
    w.appendStream(
      (async function* () {
        try {
          for (const p of pieces(data, 64 * KiB)) {
            if (given >= 5 * MiB) {
              ac.abort(new Error('enough'));
              await new Promise(setImmediate);
              yield p; // given after the abort: not appended
            }
            given += p.length;
            yield p;
          }
        } finally {
          stopped(); // after the abort: appendStream does not wait for a source to stop, it may be stuck
        }
      })(),
      { signal: ac.signal },
    ),
    { instanceOf: CabError },
  );
  t.is(e!.code, 'ERR_ABORTED');
  t.is((e!.cause as Error).message, 'enough');
  await generatorStopped; // the generator was told to stop (else the test times out)
  t.is(w.size, given, 'every piece given before the abort is appended, none after');
  t.is(e!.data.offset, given);
  t.is(toHex(w.hash), toHex(merkleRoot(data.subarray(0, given))));
  t.true((await durableBytes(s, w)).equals(data.subarray(0, given)));

  // A source stuck waiting: the abort does not wait for it. A Readable is destroyed.
  const ac2 = new AbortController();
  const stuck = new Readable({ read() {} });
  stuck.push(data.subarray(0, 1000));
  const p = w.appendStream(stuck, { signal: ac2.signal });
  setTimeout(() => ac2.abort(), 50);
  t.is(await codeOf(t, p), 'ERR_ABORTED');
  t.true(stuck.destroyed);
  t.is(w.size, given + 1000);
  await w.close();
  t.true((await readAll(s, w.name)).equals(Buffer.concat([data.subarray(0, given), data.subarray(0, 1000)])));
});

test('abort during appendBytes of a file and appendBlob: ERR_ABORTED between blocks, a prefix appended, the writer open', async (t) => {
  const s = await tempStore(t);
  const dir = tempDir(t);
  const data = prngBytes('abort bytes', 48 * MiB);
  const file = path.join(dir, 'big.bin');
  fs.writeFileSync(file, data);
  const src = await putBlob(s, data);

  /** Aborts as soon as the writer has taken some bytes (checked at every turn of the event loop). */
  const abortOnceWriting = (w: BlobWriter, from: number) => {
    const ac = new AbortController();
    const poll = () => (w.size > from ? ac.abort() : setImmediate(poll));
    setImmediate(poll);
    return ac.signal;
  };

  // [what, bytes appended first, the call]: appendBlob from a boundary takes whole chunks (takeWholeChunks), off one it reads blocks
  const cases: Array<[string, number, (w: BlobWriter, signal: AbortSignal) => Promise<void>]> = [
    ['appendBytes of a file', 0, (w, signal) => w.appendBytes({ file }, { signal })],
    ['appendBlob at a boundary', 0, (w, signal) => w.appendBlob(src, 0, -1, { signal })],
    ['appendBlob off a boundary', 1, (w, signal) => w.appendBlob(src, 1, -1, { signal })],
  ];
  for (const [what, first, append] of cases) {
    const w = await s.newBlobWriter();
    if (first) await w.appendBytes(data.subarray(0, first));
    const e = await t.throwsAsync(append(w, abortOnceWriting(w, first)), { instanceOf: CabError });
    t.is(e!.code, 'ERR_ABORTED', what);
    const n = w.size;
    t.true(n > first && n <= data.length / 2, `${what}: stopped within a few blocks of the abort (${n})`);
    t.is(e!.data.offset, n, what);
    t.is(toHex(w.hash), toHex(merkleRoot(data.subarray(0, n))), what);
    await w.close();
    t.true((await readAll(s, w.name)).equals(data.subarray(0, n)), what);
  }
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
});

test('a signal aborted before the call changes nothing; an abort while queued rejects at once', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('pre-aborted', 100 * KiB);
  const src = await putBlob(s, data);
  const w = await s.newBlobWriter();
  await w.appendBytes(data.subarray(0, 10));
  const signal = AbortSignal.abort(new Error('no'));
  let read = false;
  t.is(await codeOf(t, w.appendBytes(data, { signal })), 'ERR_ABORTED');
  t.is(await codeOf(t, w.appendBlob(src, 0, -1, { signal })), 'ERR_ABORTED');
  t.is(
    await codeOf(
      t,
      w.appendStream(
        (async function* () {
          read = true;
          yield data;
        })(),
        { signal },
      ),
    ),
    'ERR_ABORTED',
  );
  t.false(read, 'the source was not read');
  const ws = w.createWriteStream({ signal });
  const [err] = (await once(ws, 'error')) as [CabError];
  t.is(err.code, 'ERR_ABORTED');
  t.is(w.size, 10);
  t.is(toHex(w.hash), toHex(merkleRoot(data.subarray(0, 10))));

  // Queued behind a stream that waits on its source: the abort rejects the queued call at once.
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const streaming = w.appendStream(
    (async function* () {
      yield data.subarray(10, 20);
      await gate;
      yield data.subarray(20, 30);
    })(),
  );
  const ac = new AbortController();
  const queued = w.appendBytes(data.subarray(0, 50), { signal: ac.signal });
  ac.abort();
  t.is(await codeOf(t, queued), 'ERR_ABORTED');
  release();
  t.is(await streaming, 20);
  await w.close();
  t.true((await readAll(s, w.name)).equals(data.subarray(0, 30)), 'the aborted call appended nothing');
});

test('destroy() of a write stream, or an abort of its signal, does not finalize: the writer stays open with a prefix; a closed writer streams nothing', async (t) => {
  const s = await tempStore(t);
  const data = prngBytes('destroy', 2 * MiB);
  const w = await s.newBlobWriter();
  const ws = w.createWriteStream();
  ws.write(data.subarray(0, MiB));
  ws.write(data.subarray(MiB, MiB + 1000));
  ws.destroy(); // both writes were copied into the stream's block and acknowledged: they are appended
  await once(ws, 'close');
  t.false(w.isFinalized);
  t.is(w.size, MiB + 1000, "'close': every write acknowledged is appended");
  await t.throwsAsync(new Promise((resolve, reject) => ws.write(data, (e) => (e ? reject(e) : resolve(undefined)))), undefined, 'no write after destroy');
  t.is(w.size, MiB + 1000);

  const ac = new AbortController();
  const ws2 = w.createWriteStream({ signal: ac.signal });
  await new Promise<void>((resolve, reject) => ws2.write(data.subarray(MiB + 1000), (e) => (e ? reject(e) : resolve())));
  ac.abort();
  const [err] = (await once(ws2, 'error')) as [CabError];
  t.is(err.code, 'ERR_ABORTED');
  t.false(w.isFinalized);
  t.is(w.size, data.length);
  t.false((await s.stat(w.name)).finalized);
  await w.closeWithoutFinalize();
  t.is(t.throws(() => w.createWriteStream(), { instanceOf: CabError })!.code, 'ERR_CLOSED');
  let read = false;
  const source = (async function* () {
    read = true;
    yield data;
  })();
  t.is(await codeOf(t, w.appendStream(source)), 'ERR_CLOSED');
  t.false(read, 'a closed writer reads nothing');
  const w2 = await s.resumeBlobWriter(w.name);
  t.is(w2.size, data.length, 'resumable');
  await w2.close();
  t.true((await readAll(s, w.name)).equals(data));
});

test('strings and other non-bytes are ERR_BAD_ARGUMENT and append nothing; so are bad options', async (t) => {
  const s = await tempStore(t);
  const w = await s.newBlobWriter();
  const bytes = new Uint8Array([1, 2, 3]);
  for (const source of ['text', new String('text'), bytes, 42, null, { length: 3 }]) {
    t.is(await codeOf(t, w.appendStream(source as never)), 'ERR_BAD_ARGUMENT', String(source));
  }
  const withEncoding = Readable.from([Buffer.from('abc')], { objectMode: false });
  withEncoding.setEncoding('utf8');
  t.is(await codeOf(t, w.appendStream(withEncoding)), 'ERR_BAD_ARGUMENT', 'a Readable with an encoding');
  t.is(await codeOf(t, w.appendStream([bytes], { signal: 'x' as never })), 'ERR_BAD_ARGUMENT');
  t.is(await codeOf(t, w.appendStream([bytes], 5 as never)), 'ERR_BAD_ARGUMENT');
  const badIterable = { [Symbol.asyncIterator]: () => { throw new Error('no iterator'); } };
  t.is((await t.throwsAsync(w.appendStream(badIterable as never)))!.message, 'no iterator', 'a source that fails to start is its own error');

  // appendBytes' options: the last argument without a `file` key, holding nothing but `signal`.
  t.is(await codeOf(t, w.appendBytes(bytes, { fil: '/etc/passwd' } as never)), 'ERR_BAD_ARGUMENT', 'a misspelt item is not taken for options');
  t.is(await codeOf(t, w.appendBytes(bytes, { signal: {} as AbortSignal })), 'ERR_BAD_ARGUMENT');
  t.is(await codeOf(t, w.appendBlob('0'.repeat(32), 0, -1, { signal: 1 as never })), 'ERR_BAD_ARGUMENT');
  t.is(await codeOf(t, w.appendBlob('0'.repeat(32), 0, -1, 'fast' as never)), 'ERR_BAD_ARGUMENT');
  t.is(w.size, 0, 'nothing appended');

  await w.appendBytes(bytes, {});
  await w.appendBytes(bytes, { signal: new AbortController().signal });
  t.is(w.size, 6);

  const ws = w.createWriteStream();
  ws.write('text');
  const [err] = (await once(ws, 'error')) as [CabError];
  t.true(err instanceof CabError);
  t.is(err.code, 'ERR_BAD_ARGUMENT');
  t.is(w.size, 6);
  await w.close();
  t.deepEqual([...(await readAll(s, w.name))], [1, 2, 3, 1, 2, 3]);
});
