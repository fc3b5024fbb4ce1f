/**
 * The child of test/s3-crash.test.ts: writes one blob of a bucket-backed
 * store while the parent kills it with SIGKILL, then is started again and
 * resumes it.
 *
 *   node s3-writer-child.js <store dir> <objectStore JSON> <blob name> <seed> <size>
 *
 * The content is prngBytes(seed, size). Lines on stdout, each written only
 * once what it states holds:
 *
 *   ready <size>      the writer was created, or resumed at <size>
 *   upload <key>      an upload to the bucket starts (the parent kills soon after)
 *   flushed <size>    flush() resolved: [0, size) is durable
 *   final <hex>       close() resolved: finalized and published
 */
import { BlobStore, toHex } from '../../src/index.js';
import { prngBytes } from '../../tools/data.js';

const [dir, json, name, seed, sizeText] = process.argv.slice(2) as [string, string, string, string, string];
const size = Number(sizeText);
const content = prngBytes(seed, size);
const store = await BlobStore.open(dir, { objectStore: JSON.parse(json) as never, fragmentSize: 6 * 1024 * 1024 });
// Test-only: say when an upload starts, so that the parent's kill lands in the middle of one.
const os = store.shared!.bucket.os;
const put = os.putIfAbsent.bind(os);
os.putIfAbsent = (key, body, signal) => {
  process.stdout.write(`upload ${key}\n`);
  return put(key, body, signal);
};
const w = (await store.has(name)) ? await store.resumeBlobWriter(name) : await store.newBlobWriter(name);
process.stdout.write(`ready ${w.size}\n`);
const STEP = 512 * 1024;
let since = 0;
for (let at = w.size; at < size; at += STEP) {
  await w.appendBytes(content.subarray(at, Math.min(size, at + STEP)));
  since += STEP;
  if (since >= 6 * 1024 * 1024) {
    await w.flush();
    process.stdout.write(`flushed ${w.size}\n`);
    since = 0;
  }
}
await w.close();
process.stdout.write(`final ${toHex(w.hash)}\n`);
await store.close();
