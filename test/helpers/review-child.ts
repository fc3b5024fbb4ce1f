// Child processes for test/review-lib.test.ts: each mode does one thing a
// hostile review found crashing or failing a whole process, and prints one
// JSON line. An unhandled rejection or 'error' ends the process with a
// non-zero code, which is what the tests look for.
//   write STORE          newBlobWriter, 1 MiB, close, read back (run under node flags workers refuse)
//   stat-aborted STORE   a client's stat with a signal that has fired, then close()
//   bad-signal STORE     connect({ signal: {} , timeoutMs: 200 }), then outlive the timeout
//   tiny-writes STORE N  pipeline of N one-byte Buffers into createWriteStream: peak RSS growth
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BlobStore, connect, isCabError, merkleRoot, serve, toHex } from '../../src/index.js';
import { prngBytes } from '../../tools/data.js';
import { readAll } from './store.js';

const [mode, root, arg] = process.argv.slice(2);
const store = await BlobStore.open(root!);
const codeOf = (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (mode === 'write') {
  const bytes = prngBytes('flags', 1024 * 1024);
  const w = await store.newBlobWriter();
  await w.appendBytes(bytes);
  await w.close();
  const back = await readAll(store, w.name);
  console.log(JSON.stringify({ same: back.equals(bytes), hash: toHex(w.hash) === toHex(merkleRoot(bytes)) }));
} else if (mode === 'stat-aborted') {
  const srv = await serve(store, { insecure: true });
  const c = await connect(store, srv.url);
  const ac = new AbortController();
  ac.abort();
  const code = await c.stat('a'.repeat(32), { signal: ac.signal }).then(() => 'resolved', codeOf);
  await c.close();
  await sleep(300);
  await srv.close();
  console.log(JSON.stringify({ code }));
} else if (mode === 'bad-signal') {
  const srv = await serve(store, { insecure: true });
  const code = await connect(store, srv.url, { signal: {} as AbortSignal, timeoutMs: 200 }).then(() => 'resolved', codeOf);
  await sleep(600);
  const sockets = srv.connections + srv.pending;
  await srv.close();
  console.log(JSON.stringify({ code, sockets }));
} else if (mode === 'tiny-writes') {
  const n = Number(arg);
  const bytes = Buffer.alloc(n);
  for (let i = 0; i < n; i++) bytes[i] = (i * 31 + (i >> 9)) & 255;
  const w = await store.newBlobWriter();
  const ws = w.createWriteStream();
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  function* ones() {
    for (let i = 0; i < n; i++) yield bytes.subarray(i, i + 1);
  }
  await pipeline(Readable.from(ones()), ws);
  clearInterval(timer);
  peak = Math.max(peak, process.memoryUsage().rss);
  await w.close();
  console.log(JSON.stringify({ size: w.size, hash: toHex(w.hash) === toHex(merkleRoot(bytes)), growth: peak - base }));
}
await store.close();
