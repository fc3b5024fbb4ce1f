// Recipe: run GC from cron while an app holds the store open. GC is safe
// across processes: fragments that an open reader or writer of any live
// process uses are kept (leases, docs/FORMAT.md), so the app need not stop.
// A crontab line would be:
//   17 3 * * *  npx cabstore --store /var/lib/myapp/blobs gc --max-bytes 50GiB --wait
// Run: node dist/examples/gc-from-cron.js [DIR]
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BlobStore } from 'cabstore';

const dir = process.argv[2] ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-gc-')));
const store = await BlobStore.open(dir);

// Two blobs; the app deletes one but is still reading it.
const put = async () => {
  const w = await store.newBlobWriter();
  await w.appendBytes(randomBytes(1024 * 1024));
  await w.close();
  return w.name;
};
const kept = await put();
const dropped = await put();
const reading = await store.newBlobReader(dropped);
await store.deleteBlob(dropped);

// The cron job: the CLI, in another process.
const cli = fileURLToPath(new URL('../bin/cabstore.js', import.meta.resolve('cabstore')));
const run = (...args: string[]) => promisify(execFile)(process.execPath, [cli, '--store', dir, ...args]);
console.log('gc while the app reads:', (await run('gc', '--wait')).stdout.trim());

// The app's open reader still reads every byte of the deleted blob.
const buf = new Uint8Array(reading.size);
await reading.readAt(buf, 0);
await reading.close();
console.log(`the app read all ${buf.length} bytes of the deleted blob; ${kept} is still here: ${await store.has(kept)}`);

// Once the reader is closed, the next run frees the deleted blob's fragments.
console.log('gc after the reader closed:', (await run('gc')).stdout.trim());
await store.close();
