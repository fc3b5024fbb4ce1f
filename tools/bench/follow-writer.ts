// A writer in a process of its own, for following (test/follow.test.ts and
// the bench's follow case):
//
//   node follow-writer.js <store dir> <blob name> <size> <seed> [pause ms] [max piece] [hold]
//
// It writes prngBytes(seed, size) as blob <name> in random pieces of 1 B up
// to <max piece> (default 1 MiB), flushing after each, and pausing <pause ms>
// (default 0) after each flush; then it finalizes. With `hold`, it stops
// after the first flush until a line comes on stdin (the bench's follower
// has started by then). Lines on stdout:
//
//   ready                      the writer is open (the blob exists)
//   flushed <size> <ms> <ms>   flush() resolved: bytes [0, size) are durable;
//                              when flush() was called and when it resolved (ms since the epoch, fractional)
//   final <hash hex>           close() resolved: the blob is finalized
import { BlobStore, toHex } from '../../src/index.js';
import { prngInts, prngStream } from '../data.js';

const [dir, name, sizeArg, seed, pauseArg, maxArg, hold] = process.argv.slice(2);
const size = Number(sizeArg);
const pause = Number(pauseArg ?? 0);
const maxPiece = Number(maxArg ?? 1024 * 1024);
const now = () => performance.timeOrigin + performance.now();

const store = await BlobStore.open(dir!);
try {
  const w = await store.newBlobWriter(name);
  process.stdout.write('ready\n');
  const next = prngStream(seed!);
  const rnd = prngInts(size ^ maxPiece);
  for (let at = 0; at < size; ) {
    const n = Math.min(size - at, 1 + rnd(maxPiece));
    await w.appendBytes(next(n));
    at += n;
    const t = now();
    await w.flush();
    process.stdout.write(`flushed ${at} ${t.toFixed(3)} ${now().toFixed(3)}\n`);
    if (hold === 'hold' && at === n) {
      await new Promise((r) => process.stdin.once('data', r));
      process.stdin.destroy();
    }
    if (pause > 0) await new Promise((r) => setTimeout(r, pause));
  }
  await w.close();
  process.stdout.write(`final ${toHex(w.hash)}\n`);
} finally {
  await store.close();
}
