import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { HashShare } from '../src/blob/ingest-share.js';
import { readBlocks } from '../src/blob/input.js';
import type { HashJob } from '../src/hash/pool.js';
import { threadCpuNs } from '../src/hash/thread-cpu.js';
import { BlobStore, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { readAll, tempDir } from './helpers/store.js';

/** Runs on this thread for at least `ms` of its CPU time (threadCpuNs, which may move in scheduler ticks), as the writer's thread does a block's work. */
function burn(ms: number): void {
  const until = threadCpuNs()! + ms * 1e6;
  let x = 0;
  while (threadCpuNs()! < until) for (let i = 0; i < 1000; i++) x += i;
  if (x < 0) throw new Error('unreachable');
}

test('HashShare: a writer thread busier than the hashing thread shares nothing, even when the hashing thread reports its time in steps', (t) => {
  if (threadCpuNs() === undefined) return t.pass('no per-thread CPU figures here (not Linux): HashShare goes by waits');
  // The hashing thread's time as of its last answer comes in steps: here one answer every other block, for
  // 70% of the time this thread ran over those two blocks. This thread is the busier, and should hash no chunk.
  let hashing = 0;
  const job = { get threadCpuNs() { return hashing; } } as unknown as HashJob;
  const share = new HashShare(job);
  const shares: number[] = [];
  let from = threadCpuNs()!;
  for (let i = 0; i < 60; i++) {
    shares.push(share.next());
    burn(1);
    if (i % 2 === 1) {
      const now = threadCpuNs()!;
      hashing += 0.7 * (now - from);
      from = now;
    }
  }
  // A balance clamped at zero turned every step up into a share.
  t.deepEqual(shares.slice(20).filter((s) => s > 0), []);
});

test('HashShare: a hashing thread busier than the writer thread gets a share taken off it, up to 4 ms a block', (t) => {
  if (threadCpuNs() === undefined) return t.pass('no per-thread CPU figures here (not Linux): HashShare goes by waits');
  let hashing = 0;
  const job = { get threadCpuNs() { return hashing; } } as unknown as HashJob;
  const share = new HashShare(job);
  let last = 0;
  for (let i = 0; i < 40; i++) {
    last = share.next();
    const from = threadCpuNs()!;
    burn(0.5);
    hashing += 3 * (threadCpuNs()! - from) + 4e6; // far more than this thread, whatever the share it is given
  }
  t.is(last, 4);
});

test('readBlocks keeps two reads ahead of its caller, in order, and yields every byte once', async (t) => {
  const total = 10 * 1000 + 7;
  const src = prngBytes('read-ahead', total);
  const started: number[] = [];
  const reads = async (pos: number, n: number) => {
    started.push(pos);
    await new Promise((r) => setTimeout(r, 2));
    return src.subarray(pos, pos + n);
  };
  const got: Buffer[] = [];
  const aheadAt: number[] = [];
  for await (const block of readBlocks(total, 1000, reads)) {
    aheadAt.push(started.length - got.length - 1); // reads started beyond this block
    got.push(Buffer.from(block));
  }
  t.deepEqual(Buffer.concat(got), Buffer.from(src));
  t.deepEqual(started, Array.from({ length: 11 }, (_, i) => i * 1000));
  t.deepEqual(aheadAt.slice(0, 8), [2, 2, 2, 2, 2, 2, 2, 2]);
  t.deepEqual(aheadAt.slice(8), [2, 1, 0]);
});

test('a put with many small fragments (two background checkpoints at once) stores every byte and finalizes with the root of its bytes', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'in.bin');
  const bytes = prngBytes('small-fragments', 24 * 1024 * 1024 + 12345);
  fs.writeFileSync(file, bytes);
  const store = await BlobStore.open(path.join(dir, 'store'), { fragmentSize: 1024 * 1024 });
  t.teardown(() => store.close());
  const w = await store.newBlobWriter();
  await w.appendBytes({ file });
  await w.close();
  t.true(Buffer.compare(await readAll(store, w.name), bytes) === 0);
  // The same bytes in one piece, into a store with the default fragments: the same root.
  const other = await BlobStore.open(path.join(dir, 'other'));
  t.teardown(() => other.close());
  const w2 = await other.newBlobWriter();
  await w2.appendBytes(bytes);
  await w2.close();
  t.is(toHex(w.hash), toHex(w2.hash));
  const report = await store.fsck({ verify: true });
  t.deepEqual(report.problems, []);
  t.true(report.fragments >= 20, `${report.fragments} fragments`);
});
