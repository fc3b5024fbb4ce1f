// Recipe: find and heal a damaged blob. A disk flips bytes in a fragment;
// `fsck({ verify, repair })` finds which chunks of which blob it hurts and
// records them as damaged (reads of them fail with ERR_BLOB_DAMAGED, the
// rest of the blob reads as before); a pull from any store that holds the
// blob fetches exactly those chunks, verifies them and heals it.
// Run: node dist/examples/heal-damaged-blob.js [DIR]
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlobStore, connect, isCabError, serve } from 'cabstore';

const dir = process.argv[2] ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-heal-')));
const mine = await BlobStore.open(path.join(dir, 'mine'));
const backup = await BlobStore.open(path.join(dir, 'backup'));

// The same 2 MiB blob in both stores (written into one, pulled into the other).
const bytes = randomBytes(2 * 1024 * 1024);
const w = await mine.newBlobWriter();
await w.appendBytes(bytes);
await w.close();
const srv = await serve(mine, { tokens: { t: ['read'] } });
const c = await connect(backup, srv.url, { token: 't' });
await c.pull(w.name);
await c.close();
await srv.close();

// The fault: flip a byte in the middle of one of my fragments (cas/xx/yy/ID, see docs/FORMAT.md).
for await (const id of mine.listCaIds()) {
  const fh = await fs.open(path.join(mine.root, 'cas', id.slice(0, 2), id.slice(2, 4), id), 'r+');
  const { size } = await fh.stat();
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, size >> 1);
  b[0] ^= 0xff;
  await fh.write(b, 0, 1, size >> 1);
  await fh.close();
}

// Find it and record it: fsck --verify --repair.
const report = await mine.fsck({ verify: true, repair: true });
for (const d of report.damaged) console.log(`damaged: blob ${d.blob} bytes ${d.offset}..${d.end} (${d.why})`);
console.log(`stat says ${JSON.stringify((await mine.stat(w.name)).damaged)}`);

// Reads that touch the damage fail with a code; the rest of the blob reads.
const r = await mine.newBlobReader(w.name);
try {
  await r.readFully(new Uint8Array(bytes.length), 0); // readAt would return the bytes before the damage (a short read, as fs.read)
} catch (e) {
  if (!isCabError(e, 'ERR_BLOB_DAMAGED')) throw e;
  console.log(`a read of the whole blob fails: ${e.code} at ${e.data.offset}..${e.data.end}`);
} finally {
  await r.close();
}

// Heal: pull the same blob from a store that holds it.
const srv2 = await serve(backup, { tokens: { t: ['read'] } });
const c2 = await connect(mine, srv2.url, { token: 't' });
const st = await c2.pull(w.name);
await c2.close();
await srv2.close();
console.log(`healed ${st.healedBytes} bytes; damaged now: ${JSON.stringify((await mine.stat(w.name)).damaged ?? 'none')}`);
const again = await mine.fsck({ verify: true });
console.log(`fsck --verify: ${again.problems.length} problems, ${again.damaged.length} damaged blobs`);
await mine.close();
await backup.close();
