// Reads over a blob whose chunks are listed in many descriptor records (a
// writer that checkpointed every 512 KiB): a read's run of whole chunks is
// taken from the records a record at a time (ChunkPager.chunksUntil), also
// where it crosses from one record to the next.
import crypto from 'node:crypto';
import test from 'ava';
import { readDescriptor } from '../src/format/descriptor.js';
import { prngInts } from '../tools/data.js';
import { descriptorPath } from './helpers/paths.js';
import { tempStore } from './helpers/store.js';

const KiB = 1024;

async function* pieces(bytes: Buffer): AsyncGenerator<Buffer> {
  for (let at = 0; at < bytes.length; at += 64 * KiB) yield bytes.subarray(at, at + 64 * KiB);
}

test('reads across the records of a blob checkpointed every 512 KiB: a stream and 60 reads at any offset, every byte exact', async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  const bytes = crypto.randomBytes(6 * 1024 * KiB + 77);
  w.checkpointEvery(512 * KiB);
  t.is(await w.appendStream(pieces(bytes)), bytes.length);
  await w.close();
  let records = 0;
  await readDescriptor(descriptorPath(store, w.name), w.name, { onAppend: () => void records++ });
  t.true(records >= 5, `${records} records`);

  const r = await store.newBlobReader(w.name);
  t.teardown(() => r.close());
  const parts: Buffer[] = [];
  for await (const x of r.stream()) parts.push(x as Buffer);
  t.true(Buffer.concat(parts).equals(bytes), 'the stream, byte-exact');

  const rnd = prngInts(19);
  let wrong = 0;
  for (let i = 0; i < 60; i++) {
    const pos = rnd(bytes.length - 1);
    const len = 1 + rnd(Math.min(2048 * KiB, bytes.length - pos));
    const buf = Buffer.alloc(len);
    await r.readFully(buf, pos);
    if (!buf.equals(bytes.subarray(pos, pos + len))) wrong++;
  }
  t.is(wrong, 0, 'every read got its bytes');
});
