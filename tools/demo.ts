// npm start: cabstore end to end in a few seconds. Two stores in a temp
// folder; a generated file goes into store A; an older version of it is
// already in store B; A serves on 127.0.0.1 and B pulls the new version over
// WebSocket, fetching only what it lacks; then GC tidies B.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlobStore, connect, serve, toHex } from '../src/index.js';
import { prngBytes, prngInts } from './data.js';
import { fmtBytes } from './progress.js';

const SIZE = 64 * 1024 * 1024;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-demo-'));
const t0 = performance.now();
const secs = () => ((performance.now() - t0) / 1000).toFixed(2);

try {
  const a = await BlobStore.open(path.join(dir, 'a'));
  const b = await BlobStore.open(path.join(dir, 'b'));

  // Version 1, in both stores (as if synced earlier).
  const v1 = prngBytes('cabstore demo', SIZE);
  const put = async (s: BlobStore, bytes: Uint8Array, name?: string) => {
    const w = await s.newBlobWriter(name);
    await w.appendBytes(bytes);
    await w.close();
    return w;
  };
  const old = await put(a, v1);
  await put(b, v1, old.name);
  console.log(`[${secs()} s] version 1: ${fmtBytes(SIZE)} in both stores as blob ${old.name}`);

  // Version 2: 25 small edits (inserts, deletes, overwrites) written to a file and put into A.
  let v2 = Buffer.from(v1);
  const rnd = prngInts(2026);
  let changed = 0;
  for (let i = 0; i < 25; i++) {
    const at = rnd(v2.length - 500);
    const n = 1 + rnd(200);
    changed += n;
    const kind = i % 3;
    if (kind === 0) v2 = Buffer.concat([v2.subarray(0, at), prngBytes(`insert ${i}`, n), v2.subarray(at)]);
    else if (kind === 1) v2 = Buffer.concat([v2.subarray(0, at), v2.subarray(at + n)]);
    else prngBytes(`overwrite ${i}`, n).copy(v2, at);
  }
  const file = path.join(dir, 'version2.bin');
  fs.writeFileSync(file, v2);
  const w = await a.newBlobWriter();
  await w.appendBytes({ file });
  await w.close();
  console.log(`[${secs()} s] version 2: 25 edits (${changed} bytes) put into store A as blob ${w.name}`);

  // A serves, B pulls.
  const token = 'demo-token';
  const server = await serve(a, { tokens: { [token]: ['read'] } });
  const client = await connect(b, server.url, { token });
  const st = await client.pull(w.name);
  const wire = client.wire.sent + client.wire.received;
  console.log(`[${secs()} s] B pulled version 2 from ${server.url}:`);
  console.log(`    ${fmtBytes(st.receivedBytes)} of chunk data received, ${fmtBytes(st.reusedBytes)} reused from version 1`);
  console.log(`    ${wire} bytes on the wire for a ${v2.length}-byte file (${((100 * wire) / v2.length).toFixed(3)}%)`);
  const r = await b.newBlobReader(w.name);
  console.log(`    hash ${toHex(r.hash!)} ${toHex(r.hash!) === toHex(w.hash) ? 'matches' : 'DIFFERS FROM'} A's`);
  await r.close();
  await client.close();
  await server.close();

  // B no longer needs version 1: delete it and collect what only it used.
  await b.deleteBlob(old.name);
  const gc = await b.gc();
  console.log(
    `[${secs()} s] B deleted version 1; GC freed ${fmtBytes(gc.bytesDeleted)} (${gc.fragmentsDeleted} fragments) and kept ${fmtBytes(gc.bytesKept)}: ` +
      'version 2 references the fragments of version 1 it shares, so they stay',
  );
  const fsck = await b.fsck({ verify: true });
  console.log(`[${secs()} s] fsck --verify on B: ${fsck.problems.length} problems`);
  await a.close();
  await b.close();
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
