// npm start: a short demo of what has landed so far. It generates a file,
// chunks it with FastCDC, hashes it (BEP 52 root), edits it, and shows how
// many chunks the edit left intact: the basis of cabstore's dedup and transfer.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Chunker, MerkleHasher, sha256, toHex } from '../src/index.js';
import { prngStream } from './data.js';

const SIZE = 64 * 1024 * 1024;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-demo-'));

async function summarize(file: string): Promise<{ root: string; chunks: Set<string>; count: number }> {
  const chunker = new Chunker();
  const merkle = new MerkleHasher();
  const chunks = new Set<string>();
  let pending: Buffer[] = [];
  const cut = (size: number) => {
    const all = Buffer.concat(pending);
    chunks.add(toHex(sha256(all.subarray(0, size))));
    pending = [all.subarray(size)];
  };
  let count = 0;
  for await (const piece of fs.createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    merkle.update(piece);
    pending.push(piece);
    for (const size of chunker.push(piece)) {
      cut(size);
      count++;
    }
  }
  const last = chunker.end();
  if (last) {
    cut(last);
    count++;
  }
  return { root: toHex(merkle.digest()), chunks, count };
}

try {
  const base = path.join(dir, 'base.bin');
  const edited = path.join(dir, 'edited.bin');
  const next = prngStream('cabstore demo');
  const data = next(SIZE);
  fs.writeFileSync(base, data);
  // three small edits: an insert, a delete, an overwrite
  const e = Buffer.concat([data.subarray(0, 10_000_000), Buffer.from('inserted!'), data.subarray(10_000_000, 30_000_000), data.subarray(30_000_050)]);
  e.write('overwrite', 50_000_000);
  fs.writeFileSync(edited, e);

  const t = performance.now();
  const a = await summarize(base);
  const b = await summarize(edited);
  const secs = (performance.now() - t) / 1000;
  const shared = [...b.chunks].filter((h) => a.chunks.has(h)).length;
  console.log(`base:   ${SIZE} bytes, ${a.count} chunks, blob hash ${a.root}`);
  console.log(`edited: ${e.length} bytes, ${b.count} chunks, blob hash ${b.root}`);
  console.log(`3 small edits left ${shared} of ${b.count} chunks unchanged: only ${b.count - shared} would travel.`);
  console.log(`chunked and hashed ${((SIZE + e.length) / 1e6).toFixed(0)} MB in ${secs.toFixed(2)} s`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
