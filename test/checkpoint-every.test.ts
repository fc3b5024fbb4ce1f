// A writer that checkpoints inside one long append (checkpointEvery, what a
// tus PATCH uses) and leaves the chunk index behind its durable records
// until INDEX_BATCH_BYTES have gathered or a checkpoint is waited for.
import crypto from 'node:crypto';
import fs from 'node:fs';
import test from 'ava';
import { readDescriptor } from '../src/format/descriptor.js';
import { CHECKPOINTS_IN_FLIGHT, INDEX_BATCH_BYTES } from '../src/blob/checkpoint.js';
import { descriptorPath, fragmentPath } from './helpers/paths.js';
import { readAll, tempStore } from './helpers/store.js';

const MiB = 1024 * 1024;

/** The descriptor's append records: how many, and the blob size the last one makes durable. */
async function records(dir: string, name: string): Promise<{ n: number; size: number }> {
  let n = 0;
  const d = await readDescriptor(dir, name, { onAppend: () => void n++ });
  return { n, size: d.size };
}

/** `bytes` in 64 KiB pieces; after `stopAt` bytes it waits for `go` (the body of a request that stalled). */
async function* pieces(bytes: Buffer, stopAt: number, go: Promise<void>): AsyncGenerator<Buffer> {
  for (let at = 0; at < bytes.length; at += 64 * 1024) {
    if (at === stopAt) await go;
    yield bytes.subarray(at, at + 64 * 1024);
  }
}

test('checkpointEvery makes a durable record every N bytes inside one append; the index follows at a flush, not at each record', async (t) => {
  t.true(INDEX_BATCH_BYTES > 6 * MiB, 'the batch is larger than what this test appends before its flush');
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  const file = descriptorPath(store, w.name);
  const bytes = crypto.randomBytes(8 * MiB);
  let go!: () => void;
  const held = new Promise<void>((r) => (go = r));
  w.checkpointEvery(MiB);
  const appending = w.appendStream(pieces(bytes, 6 * MiB, held));

  // The source has stalled at 6 MiB: the checkpoints before it are durable (at most one behind), each its own record.
  const deadline = Date.now() + 20_000;
  while ((await records(file, w.name)).size < 5 * MiB && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const mid = await records(file, w.name);
  t.true(mid.size >= 5 * MiB && mid.size <= 6 * MiB, `durable size ${mid.size} while the source waits at 6 MiB`);
  t.true(mid.n >= 5, `${mid.n} records for ${mid.size} bytes`);
  // ...and none of them is in the index yet: a background checkpoint leaves it for the batch.
  t.is(store.index.blob(w.name)?.s ?? 0, 0);

  go();
  t.is(await appending, bytes.length);
  await w.flush();
  // A flush brings the index up to the durable end, all the records at once.
  t.is(store.index.blob(w.name)?.s, bytes.length);
  t.true((await records(file, w.name)).n >= 8);
  let chunks = 0;
  for await (const c of store.blobChunkStream(w.name)) {
    const loc = await store.lookupChunk(c.hash);
    t.is(loc.size, c.size);
    chunks++;
  }
  t.true(chunks > 0);
  await w.close();
  t.true((await readAll(store, w.name)).equals(bytes), 'the blob holds the bytes appended');
});

test('a source that fails mid-append: closeWithoutFinalize commits the records the index had not taken yet, and the blob resumes from them', async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  const bytes = crypto.randomBytes(4 * MiB);
  w.checkpointEvery(MiB);
  // A source that fails after 3 MiB: the append rejects with its error, the writer stays open.
  async function* failing(): AsyncGenerator<Buffer> {
    for (let at = 0; at < 3 * MiB; at += 64 * 1024) yield bytes.subarray(at, at + 64 * 1024);
    throw Object.assign(new Error('the client went'), { code: 'ECONNRESET' });
  }
  await t.throwsAsync(w.appendStream(failing()), { message: 'the client went' });
  t.is(w.size, 3 * MiB);
  // closeWithoutFinalize waits for its checkpoint, and so commits the index too.
  await w.closeWithoutFinalize();
  t.is(store.index.blob(w.name)?.s, 3 * MiB);
  const again = await store.resumeBlobWriter(w.name);
  t.is(again.size, 3 * MiB);
  await again.appendBytes(bytes.subarray(3 * MiB));
  await again.close();
  t.true((await readAll(store, w.name)).equals(bytes), 'the blob holds the bytes appended');
});

test('checkpoints made two at a time: the records follow one another in order, each after its fragment is named, and the blob reads back', async (t) => {
  t.true(CHECKPOINTS_IN_FLIGHT >= 2, 'checkpoints overlap');
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  const bytes = crypto.randomBytes(24 * MiB);
  // A checkpoint every 256 KiB: far more often than the fsyncs end, so they overlap.
  w.checkpointEvery(256 * 1024);
  t.is(await w.appendStream(pieces(bytes, -1, Promise.resolve())), bytes.length);
  await w.flush();
  const sizes: number[] = [];
  const frags = new Set<string>();
  await readDescriptor(descriptorPath(store, w.name), w.name, {
    onAppend: (rec) => {
      sizes.push(rec.s);
      for (const [frag] of rec.x) frags.add(Buffer.from(frag).toString('hex'));
    },
  });
  t.true(sizes.length >= 24, `${sizes.length} records`);
  t.true(
    sizes.every((s, i) => i === 0 || s > sizes[i - 1]!),
    `each record ends past the one before: ${sizes.join(' ')}`,
  );
  t.is(sizes.at(-1), bytes.length);
  for (const f of frags) t.true(fs.existsSync(fragmentPath(store, f)), `fragment ${f} of a durable record is in cas/`);
  await w.close();
  t.true((await readAll(store, w.name)).equals(bytes), 'the blob holds the bytes appended');
});
