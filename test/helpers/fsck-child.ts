// fsck in its own process, for tests that take file descriptors away from it.
// Usage: node fsck-child.js STORE
//   opens STORE and starts the hashing thread, prints "fds N" (the open file
//   descriptors at that point), waits for a line on stdin (the test lowers
//   this process's RLIMIT_NOFILE meanwhile), then runs fsck --verify --repair:
//   prints "ok P" (P problems) and exits 0, or the error's code and exits 1.
import fs from 'node:fs';
import { once } from 'node:events';
import { BlobStore, isCabError } from '../../src/index.js';
import { HashJob } from '../../src/hash/pool.js';

const [root] = process.argv.slice(2);
const store = await BlobStore.open(root!);
const job = new HashJob(); // the hashing thread, started as fsck --verify would
await job.digest();
await job.close();
console.log(`fds ${fs.readdirSync('/proc/self/fd').length}`);
await once(process.stdin, 'data');
process.stdin.destroy();
try {
  const r = await store.fsck({ verify: true, repair: true });
  console.log(`ok ${r.problems.length} ${JSON.stringify(r.problems)}`);
  process.exitCode = 0;
} catch (e) {
  console.log(isCabError(e) ? e.code : `not a CabError: ${(e as Error).stack}`);
  process.exitCode = 1;
}
await store.close().catch(() => {});
