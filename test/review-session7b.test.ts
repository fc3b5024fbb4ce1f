// Second review of the seventh session's merged changes (2026-12-05): the
// review fixes (abf1019: ReaderCache.hold, bytesRead as a sign of life,
// IdleWatch, stallMs, bundle bounds) and the cold-read merge (5639a28).
// Each test asserts what a user reads in the docs; those that fail on the
// code they were written against are findings (the review's report lists
// them). Serial: the tests time what a peer waits for, on a shared machine.
import test, { type ExecutionContext } from 'ava';
import { once } from 'node:events';
import { BlobStore, connect, serve, encodeMessage, isCabError, type Message } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { filesUnder, blobWithBadByte, bucketOptions, openTemp, s3Test, until } from './helpers/s3.js';
import { putBlob, tempStore } from './helpers/store.js';
import { drain, fakeServer, settle } from './helpers/hostile.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const NAME = 'b7'.repeat(16);
const TOKEN = 'review7b';




test.serial('serve idleTimeoutMs below the 20 s a server holds a follow stat (STAT_WAIT_MS): the server does not cut a follower it owes the answer to, and the blob that grows after 3 s reaches it', async (t) => {
  // abf1019 made the CLIENT wait at least STAT_WAIT_MS + 10 s while a follow stat is outstanding. The server's
  // IdleWatch has no such rule (its waitLonger looks at the server peer's own parked stats: none), so a server with
  // idleTimeoutMs 2000 cuts, after 2 s, every follower whose stat it is itself holding: the follower is silent
  // because it is waiting for the server's answer.
  const src = await tempStore(t);
  const first = prngBytes('review7b follow 1', 256 * KiB);
  const second = prngBytes('review7b follow 2', 256 * KiB);
  const w = await src.newBlobWriter(NAME);
  t.teardown(() => w.closeWithoutFinalize().catch(() => {}));
  await w.appendBytes(first);
  await w.flush();
  const srv = await serve(src, { tokens: { [TOKEN]: ['read'] }, idleTimeoutMs: 2000 });
  t.teardown(() => srv.close());
  const dst = await tempStore(t);
  const c = await connect(dst, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const ended = drain(c.stream(NAME, { follow: true }));
  await new Promise((r) => setTimeout(r, 3500)); // the follower waits on the server, which holds its stat
  await w.appendBytes(second);
  await w.close();
  // The server's cut reaches the follower as ERR_IDLE_TIMEOUT ("peer: no message for 2001 ms") about 2 s in.
  const late = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 25_000).unref());
  const r = await Promise.race([ended, late]);
  t.is(r?.how ?? 'pending', 'end');
  t.true(r?.bytes.equals(Buffer.concat([first, second])), 'every byte, in order');
});

test.serial('connect idleTimeoutMs 1000: a server that trickles a frame (4 bytes every 250 ms of a 60,000-byte answer, 62 minutes at that rate) does not hold a stat for good', async (t) => {
  // abf1019's IdleWatch re-arms for the full idleMs whenever bytesRead grew, with no floor on the rate and no bound
  // on how long one frame may take: any byte per idleMs keeps a request (a pull, a stream, a remote read) waiting
  // for ever. Before, idleTimeoutMs bounded the wait for each whole message. The SourceSet stall check takes the same
  // growth as life. A rate floor (or a bound of idleMs + maxFrame / some minimum rate per frame) would keep the slow
  // healthy link of review-session7 working and still end this.
  const drips: NodeJS.Timeout[] = [];
  t.teardown(() => drips.forEach((d) => clearInterval(d)));
  const url = await fakeServer(t, (m, _send, ws) => {
    if (m.t !== 'stat') return;
    const socket = (ws as unknown as { _socket: { write(b: Uint8Array): boolean; destroyed: boolean } })._socket;
    // A binary frame (FIN, opcode 2, unmasked as a server's are) announcing 60,000 payload bytes.
    socket.write(Buffer.from([0x82, 126, (60_000 >> 8) & 0xff, 60_000 & 0xff]));
    const drip = setInterval(() => {
      if (!socket.destroyed) socket.write(Buffer.alloc(4, 0x90));
    }, 250);
    drips.push(drip);
  });
  const dst = await tempStore(t);
  const c = await connect(dst, url, { idleTimeoutMs: 1000 });
  t.teardown(() => c.close());
  t.is(await settle(c.stat(NAME), 8000), 'ERR_IDLE_TIMEOUT');
});

// --- the cold-read merge (5639a28): readChecked over a run of chunks ---------------------------------

s3Test.serial('cold read: one 12 MiB readAt over a run of whole chunks with a changed chunk in its middle rejects with ERR_HASH_MISMATCH at that chunk, and nothing is cached', async (t) => {
  const at = 7 * MiB + 12_345;
  const { b, name, bytes, chunk: c, restore } = await blobWithBadByte(t, 'review7b run with a bad chunk', 16 * MiB + 99, at, 0x04);
  const r = await b.newBlobReader(name);
  let first = { start: 0 };
  for await (const x of r.chunks()) if (x.start >= 1 * MiB) {
    first = x;
    break;
  }
  const buf = Buffer.alloc(12 * MiB);
  const got = await r.readAt(buf, first.start).then(
    () => 'read',
    (e: unknown) => (isCabError(e) ? `${e.code} ${String(e.data.offset)}` : String(e)),
  );
  t.is(got, `ERR_HASH_MISMATCH ${c.start}`);
  await r.close();
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  t.deepEqual(filesUnder(b.root, 'cas'), [], 'the copy that failed is not cached');
  await restore();
  const again = await b.newBlobReader(name);
  t.teardown(() => again.close());
  await again.readAt(buf, first.start);
  t.true(buf.equals(bytes.subarray(first.start, first.start + buf.length)), 'read right once the object is right');
});

s3Test.serial('cold read: one readAt of a whole 20 MiB one-fragment blob (a run of chunks longer than the ring) is byte-exact, and a second store reading it in 1 MiB pieces agrees', async (t) => {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 64 * MiB });
  const bytes = prngBytes('review7b one long run', 20 * MiB + 4321);
  const name = await putBlob(a, bytes);
  const b = await openTemp(t, { objectStore: { ...objectStore, cacheBytes: 0 } });
  const r = await b.newBlobReader(name);
  t.teardown(() => r.close());
  const buf = Buffer.alloc(bytes.length);
  t.is(await r.readAt(buf, 0), bytes.length);
  t.true(buf.equals(bytes), 'byte-exact');
  const c = await openTemp(t, { objectStore: { ...objectStore, cacheBytes: 0 } });
  const r2 = await c.newBlobReader(name);
  t.teardown(() => r2.close());
  const piece = Buffer.alloc(MiB);
  for (let p = 0; p < bytes.length; p += MiB) {
    const n = await r2.readAt(piece, p);
    t.true(piece.subarray(0, n).equals(bytes.subarray(p, p + n)), `at ${p}`);
  }
});
