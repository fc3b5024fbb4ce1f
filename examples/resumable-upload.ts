// Recipe: a resumable upload with the library. The uploader appends as the
// bytes come and flushes now and then: a flush makes every byte so far
// durable (kill -9, power loss). After a crash, resumeBlobWriter continues
// from the last durable byte, and close({ expectHash }) finalizes only if
// the whole blob has the root the client announced.
// Run: node dist/examples/resumable-upload.js [DIR]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { BlobStore, merkleRoot, toHex, type BlobWriter } from 'cabstore';

const PIECE = 256 * 1024;

/** The upload: appends `file` from the blob's durable size on, flushing every 1 MiB; dies after `upTo` bytes (the crash, below). */
async function upload(store: BlobStore, name: string, file: string, upTo = Infinity): Promise<BlobWriter> {
  const w = (await store.has(name)) ? await store.resumeBlobWriter(name) : await store.newBlobWriter(name);
  const fh = await fs.open(file);
  try {
    const { size } = await fh.stat();
    for (let at = w.size; at < size; at += PIECE) {
      if (at >= upTo) process.kill(process.pid, 'SIGKILL'); // the crash: no close, no cleanup
      const { buffer, bytesRead } = await fh.read(Buffer.alloc(PIECE), 0, PIECE, at);
      await w.appendBytes(buffer.subarray(0, bytesRead));
      if ((at + bytesRead) % (1024 * 1024) === 0) await w.flush();
    }
  } finally {
    await fh.close();
  }
  return w;
}

const [mode, dir, file, name] = process.argv.slice(2);
if (mode === 'crash') {
  // The first attempt, in a child process that dies after 3.2 MiB.
  await upload(await BlobStore.open(dir!), name!, file!, 3.2 * 1024 * 1024);
} else {
  const root = mode ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-upload-')));
  const src = path.join(root, 'upload.bin');
  const bytes = randomBytes(5 * 1024 * 1024);
  await fs.writeFile(src, bytes);
  const blob = 'c0ffee00c0ffee00c0ffee00c0ffee00'; // the upload's id: a client-chosen blob name
  const storeDir = path.join(root, 'store');
  spawnSync(process.execPath, [fileURLToPath(import.meta.url), 'crash', storeDir, src, blob], { stdio: 'inherit' });

  const store = await BlobStore.open(storeDir);
  console.log(`after the crash the blob holds ${(await store.stat(blob)).size} durable bytes`);
  const w = await upload(store, blob, src);
  // All bytes are in: finalize, checking the root the client announced (a mismatch finalizes nothing).
  await w.close({ expectHash: merkleRoot(bytes) });
  console.log(`finalized ${blob}: ${w.size} bytes, root ${toHex(w.hash)}, as announced: ${toHex(w.hash) === toHex(merkleRoot(bytes))}`);
  await store.close();
}
