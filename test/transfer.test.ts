// Transfer between two stores over real WebSockets on 127.0.0.1: pull and
// push of a 64 MiB blob (into an empty store and into one holding an edited
// older version, counting bytes on the wire), resume after 20 cuts (sockets
// reset, closed, aborted; a server process SIGKILLed and restarted), lying
// peers, authentication, many transfers at once, and the one-round-trip
// pull of a blob already held. Middlemen are real proxies (helpers/proxies).
import test, { type ExecutionContext } from 'ava';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import {
  BlobStore,
  connect,
  serve,
  decodeMessage,
  encodeMessage,
  isCabError,
  merkleRoot,
  toHex,
  type CabClient,
  type CabServer,
  type Message,
  type ServeOptions,
  type TransferProgress,
  type TransferStats,
} from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll, collect, blobState } from './helpers/store.js';
import { tcpProxy, wsProxy, decodedFrame, type FrameHook } from './helpers/proxies.js';
import { edited, missingChunks, startServerChild, killHard, RawClient, MiB, KiB, MAX_CHUNK } from './helpers/transfer.js';

const RW = 'token-rw';
const RO = 'token-ro';
const WO = 'token-wo';
const TOKENS = { [RW]: ['read', 'write'], [RO]: ['read'], [WO]: ['write'] } as ServeOptions['tokens'];

const SIZE = 64 * MiB;
/** The 64 MiB source, and a copy with 20 small edits (the newer version). */
const BIG = prngBytes('transfer big', SIZE);
const EDIT = edited(BIG, 6, 20);
const BIG_HASH = toHex(merkleRoot(BIG));
const EDIT_HASH = toHex(merkleRoot(EDIT.bytes));

async function serveT(t: ExecutionContext, store: BlobStore, options: Partial<ServeOptions> = {}): Promise<CabServer> {
  const srv = await serve(store, { tokens: TOKENS, ...options });
  t.teardown(() => srv.close());
  return srv;
}

async function connectT(t: ExecutionContext, store: BlobStore, url: string, token = RW): Promise<CabClient> {
  const c = await connect(store, url, { token });
  t.teardown(() => c.close());
  return c;
}

/** The blob is there, finalized, with `hash`, and holds exactly `bytes`. */
async function assertBlob(t: ExecutionContext, store: BlobStore, name: string, bytes: Buffer, hash: string): Promise<void> {
  const st = await blobState(store, name);
  t.truthy(st, `blob ${name} is there`);
  t.true(st!.finalized, 'finalized');
  t.is(st!.hash, hash, 'its hash is the source blob hash');
  t.true((await readAll(store, name)).equals(bytes), 'its content is byte-exact');
}

/** Holds only verified data: unfinalized, and every byte it has is the source's byte at that offset. */
async function assertVerifiedPrefix(t: ExecutionContext, store: BlobStore, name: string, source: Buffer): Promise<number> {
  const st = await blobState(store, name);
  t.truthy(st, 'the interrupted blob is kept (resumable)');
  t.false(st!.finalized, 'the blob stays unfinalized');
  t.true(st!.size <= source.length);
  t.true((await readAll(store, name)).equals(source.subarray(0, st!.size)), 'every byte held equals the source prefix');
  return st!.size;
}

function codeOf(e: unknown): string {
  return isCabError(e) ? e.code : `not a CabError: ${String(e)}`;
}

// --- 64 MiB, empty receiver -------------------------------------------------

test.serial('pull: a 64 MiB blob into an empty store moves each byte once; hash and content match', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  const c = await connectT(t, dst, srv.url);
  const progress: TransferProgress[] = [];
  const st = await c.pull(name, { onProgress: (p) => progress.push(p) });
  const chunks = await collect(src.blobChunkStream(name));
  t.false(st.alreadyHad);
  t.is(st.resumedFrom, 0);
  t.is(toHex(st.hash), BIG_HASH);
  t.is(st.neededBytes, SIZE);
  t.is(st.receivedBytes, SIZE);
  t.is(st.reusedBytes, 0);
  t.is(st.verifiedBytes, SIZE);
  t.is(st.chunksFetched, chunks.length);
  // The wire carries every chunk byte once, plus the chunk list (about 40
  // bytes per chunk), requests and MessagePack framing: well under 1% here.
  const wire = c.wire.sent + c.wire.received;
  t.log(`wire: sent ${c.wire.sent}, received ${c.wire.received}; ${chunks.length} chunks`);
  t.true(c.wire.received >= SIZE);
  t.true(wire <= SIZE + SIZE / 100, `wire ${wire} <= size + 1%`);
  t.true(progress.length > 1, 'progress is reported as it goes');
  for (let i = 1; i < progress.length; i++) t.true(progress[i]!.verifiedBytes >= progress[i - 1]!.verifiedBytes);
  t.is(progress.at(-1)!.verifiedBytes, SIZE);
  await assertBlob(t, dst, name, BIG, BIG_HASH);
});

test.serial('push: a 64 MiB blob into an empty store moves each byte once; hash and content match', async (t) => {
  const local = await tempStore(t);
  const name = await putBlob(local, BIG);
  const remote = await tempStore(t);
  const srv = await serveT(t, remote);
  const c = await connectT(t, local, srv.url);
  const r = await c.push(name);
  t.is(r.received, SIZE);
  t.is(r.reused, 0);
  const wire = c.wire.sent + c.wire.received;
  t.log(`wire: sent ${c.wire.sent}, received ${c.wire.received}`);
  t.true(c.wire.sent >= SIZE);
  t.true(wire <= SIZE + SIZE / 100, `wire ${wire} <= size + 1%`);
  await assertBlob(t, remote, name, BIG, BIG_HASH);
});

// --- 64 MiB, receiver holds an edited older version -------------------------
//
// What is asserted about bytes. D = the bytes that differ, rounded up to
// chunk size = the total size of the new blob's chunks (the store's own
// FastCDC, 16/64/256 KiB) that the old blob does not hold: what a
// whole-chunk sync would move. We assert
//   - the receiver's own count of what it lacked (neededBytes) is exactly D;
//   - chunk-data bytes received (receivedBytes: payload of `data` items) <= 2 D;
//   - everything on the wire both ways (frame payloads: chunk list, fine
//     lists, requests, data, framing) <= 2 D as well;
//   - receivedBytes >= the bytes the edits inserted or overwrote: those are
//     fresh pseudo-random bytes that exist nowhere at the receiver, so they
//     must travel (this keeps the bound from passing vacuously);
//   - received + reused = blob size: every byte came from one or the other.

test.serial('pull into a store holding an edited older version: chunk bytes on the wire within 2x of the differing chunks', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, EDIT.bytes);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  const old = await putBlob(dst, BIG);
  const d = await missingChunks(dst, old, src, name);
  const c = await connectT(t, dst, srv.url);
  const st = await c.pull(name);
  const wire = c.wire.sent + c.wire.received;
  t.log(`edits ${EDIT.edits.length}, fresh bytes ${EDIT.freshBytes}; D = ${d.bytes} (${d.chunks} chunks); received ${st.receivedBytes}, reused ${st.reusedBytes}; wire sent ${c.wire.sent} received ${c.wire.received}`);
  t.true(d.chunks >= 10 && d.chunks <= 3 * EDIT.edits.length, 'the edits touch a few chunks each');
  t.is(st.neededBytes, d.bytes);
  t.true(st.receivedBytes <= 2 * d.bytes, `received ${st.receivedBytes} <= 2 x ${d.bytes}`);
  t.true(wire <= 2 * d.bytes, `wire ${wire} <= 2 x ${d.bytes}`);
  t.true(st.receivedBytes >= EDIT.freshBytes, 'the fresh bytes of the edits travelled');
  t.is(st.receivedBytes + st.reusedBytes, EDIT.bytes.length);
  t.is(st.verifiedBytes, EDIT.bytes.length);
  t.is(toHex(st.hash), EDIT_HASH);
  await assertBlob(t, dst, name, EDIT.bytes, EDIT_HASH);
  await assertBlob(t, dst, old, BIG, BIG_HASH);
});

test.serial('push into a store holding an edited older version: chunk bytes on the wire within 2x of the differing chunks', async (t) => {
  const local = await tempStore(t);
  const name = await putBlob(local, EDIT.bytes);
  const remote = await tempStore(t);
  const old = await putBlob(remote, BIG);
  const d = await missingChunks(remote, old, local, name);
  const srv = await serveT(t, remote);
  const c = await connectT(t, local, srv.url);
  const r = await c.push(name);
  const wire = c.wire.sent + c.wire.received;
  t.log(`D = ${d.bytes} (${d.chunks} chunks); received ${r.received}, reused ${r.reused}; wire sent ${c.wire.sent} received ${c.wire.received}`);
  t.true(r.received <= 2 * d.bytes, `received ${r.received} <= 2 x ${d.bytes}`);
  t.true(wire <= 2 * d.bytes, `wire ${wire} <= 2 x ${d.bytes}`);
  t.true(r.received >= EDIT.freshBytes);
  t.is(r.received + r.reused, EDIT.bytes.length);
  await assertBlob(t, remote, name, EDIT.bytes, EDIT_HASH);
  await assertBlob(t, remote, old, BIG, BIG_HASH);
});

// --- resume ---------------------------------------------------------------

const CUTS = 20;

/** 20 kill points (blob offsets) from a seed: one in each of 21 equal stretches, so the last leaves >= 3 MiB to go. */
function killPoints(seed: number, size: number): number[] {
  const rnd = prngInts(seed);
  const stretch = size / (CUTS + 1);
  return Array.from({ length: CUTS }, (_, i) => Math.floor((i + 0.2 + (0.6 * rnd(1000)) / 1000) * stretch));
}

interface Attempt {
  method: string;
  durableBefore: number;
  /** The last progress report (failed attempts) or the final stats. */
  last: TransferProgress | TransferStats | undefined;
  error?: string;
  stats?: TransferStats;
}

/** What the 21 attempts of a cut-20-times pull must show. */
async function checkResumed(t: ExecutionContext, dst: BlobStore, name: string, attempts: Attempt[]): Promise<void> {
  t.is(attempts.length, CUTS + 1, 'twenty cut attempts, then one that completes');
  t.is(attempts.filter((a) => a.error).length, CUTS);
  const final = attempts.at(-1)!;
  t.truthy(final.stats, `the last attempt completes (${final.error ?? ''})`);
  for (let i = 1; i < attempts.length; i++) {
    const prev = attempts[i - 1]!;
    // Nothing verified is lost to a cut: the next attempt starts at least where the last report stood.
    const reached = prev.durableBefore + (prev.last?.verifiedBytes ?? 0);
    t.true(attempts[i]!.durableBefore >= reached, `attempt ${i} resumes from ${attempts[i]!.durableBefore}, at least ${reached}`);
  }
  t.is(final.stats!.resumedFrom, final.durableBefore, 'the final pull says where it resumed');
  t.true(final.durableBefore > 0);
  // No chunk fetched twice beyond one per interruption.
  const received = attempts.reduce((s, a) => s + (a.last?.receivedBytes ?? 0), 0);
  t.log(`received over all attempts: ${received} for ${SIZE} (bound ${SIZE + CUTS * MAX_CHUNK})`);
  t.true(received <= SIZE + CUTS * MAX_CHUNK, `received ${received} <= ${SIZE} + 20 x 256 KiB`);
  t.true(received >= SIZE, 'every byte came over at least once (the receiver started empty)');
  await assertBlob(t, dst, name, BIG, BIG_HASH);
}

test.serial('resume: a pull cut 20 times by the test (socket reset mid-frame, client close, abort) ends right and refetches at most a chunk per cut', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const srv = await serveT(t, src);
  const proxy = await tcpProxy(() => srv.port);
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  const seed = 20_061;
  const kills = killPoints(seed, SIZE);
  const rnd = prngInts(seed + 1);
  t.log(`seed ${seed}, kill points ${kills.join(' ')}`);
  const methods = ['reset', 'close', 'abort'] as const;
  const attempts: Attempt[] = [];
  let wireReceived = 0;
  while (attempts.length <= CUTS) {
    const cut = attempts.length < CUTS;
    const k = kills[attempts.length]!;
    const method = cut ? methods[attempts.length % 3]! : 'none';
    const durableBefore = (await blobState(dst, name))?.size ?? 0;
    const attempt: Attempt = { method, durableBefore, last: undefined };
    attempts.push(attempt);
    const ac = new AbortController();
    let c: CabClient | undefined;
    if (method === 'reset' || method === 'close') {
      // Cut at exactly this many bytes into the reply stream: the bytes still to come before the kill
      // point, or, when the last attempt ran past it, early in the conversation. Nothing more reaches
      // the client after the cut (else answers already in flight could still complete the pull).
      proxy.next = {
        budget: k > durableBefore ? k - durableBefore : 1 + rnd(64 * KiB),
        onCut: (conn) => {
          if (method === 'reset') {
            conn.client.resetAndDestroy();
            conn.upstream.destroy();
            return;
          }
          // The client hangs up (a close frame goes out), then the connection goes.
          void c?.close();
          setTimeout(() => {
            conn.client.destroy();
            conn.upstream.destroy();
          }, 20);
        },
      };
    }
    let fired = false;
    const onProgress = (p: TransferProgress) => {
      attempt.last = p;
      if (fired || method !== 'abort' || durableBefore + p.verifiedBytes < k) return;
      fired = true;
      ac.abort(new Error('cut by the test'));
    };
    // Past the kill point already: abort right after the pull starts (an attempt writes a whole 4 MiB
    // answer before it looks at the signal, so waiting for progress would run out of blob first).
    if (method === 'abort' && k <= durableBefore) setTimeout(() => ac.abort(new Error('cut by the test')), 1 + (attempts.length % 5));
    try {
      c = await connect(dst, proxy.url, { token: RW });
      attempt.stats = await c.pull(name, { onProgress, signal: ac.signal });
      attempt.last = attempt.stats;
    } catch (e) {
      attempt.error = codeOf(e);
      const expect = method === 'abort' ? 'ERR_ABORTED' : 'ERR_CONNECTION';
      t.is(attempt.error, expect, `attempt ${attempts.length} (${method}) fails with ${expect}`);
      if (!cut) break;
    } finally {
      wireReceived += c?.wire.received ?? 0;
      await c?.close();
    }
    if (cut && attempt.stats) {
      t.fail(`attempt ${attempts.length} (${method} at ${k}) was not cut`);
      break;
    }
    if (cut) {
      const st = await blobState(dst, name);
      t.truthy(st && !st.finalized, 'the cut pull leaves an unfinalized blob');
    }
  }
  t.log(attempts.map((a) => `${a.method}@${a.durableBefore}+${a.last?.verifiedBytes ?? 0}`).join(' '));
  t.log(`frame bytes received by the client over all attempts: ${wireReceived}`);
  await checkResumed(t, dst, name, attempts);
});

test.serial('resume: a pull aborted 20 times through its AbortSignal fetches no chunk twice on the wire beyond one per abort', async (t) => {
  // The "no chunk fetched twice beyond one per interruption", counted where it costs: frame
  // bytes the client received over all attempts (receivedBytes counts only what was written). An
  // app aborts and closes the connection, as it would.
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  const seed = 20_063;
  const kills = killPoints(seed, SIZE);
  t.log(`seed ${seed}, kill points ${kills.join(' ')}`);
  const attempts: Attempt[] = [];
  const waste: number[] = [];
  let wire = 0;
  while (attempts.length <= CUTS) {
    const cut = attempts.length < CUTS;
    const k = kills[attempts.length]!;
    const durableBefore = (await blobState(dst, name))?.size ?? 0;
    const attempt: Attempt = { method: cut ? 'abort' : 'none', durableBefore, last: undefined };
    attempts.push(attempt);
    const ac = new AbortController();
    const c = await connect(dst, srv.url, { token: RW });
    // Each attempt writes at least one 4 MiB answer before it sees the abort; once past the kill
    // point, the abort comes right after the pull starts instead (with its gets on their way, or not).
    if (cut && k <= durableBefore) setTimeout(() => ac.abort(new Error('cut by the test')), 1 + (attempts.length % 5));
    try {
      attempt.stats = await c.pull(name, {
        signal: ac.signal,
        onProgress: (p) => {
          attempt.last = p;
          if (cut && durableBefore + p.verifiedBytes >= k) ac.abort(new Error('cut by the test'));
        },
      });
      attempt.last = attempt.stats;
    } catch (e) {
      attempt.error = codeOf(e);
      t.is(attempt.error, 'ERR_ABORTED');
      if (!cut) break;
    } finally {
      await c.close();
      wire += c.wire.received;
      waste.push(c.wire.received - (attempt.last?.receivedBytes ?? 0));
    }
    if (cut && attempt.stats) {
      t.fail(`attempt ${attempts.length} (abort at ${k}) was not cut`);
      break;
    }
  }
  t.log(attempts.map((a) => `${a.durableBefore}+${a.last?.verifiedBytes ?? 0}`).join(' '));
  await checkResumed(t, dst, name, attempts);
  // Each attempt also carries its own stat, chunk list (~40 bytes a chunk) and framing: 64 KiB is ample.
  const bound = SIZE + CUTS * MAX_CHUNK + (CUTS + 1) * 64 * KiB;
  t.log(`frame bytes received over all attempts: ${wire}; bound ${bound}; per attempt beyond what it wrote: ${waste.join(' ')}`);
  t.true(wire <= bound, `${wire} bytes on the wire for a ${SIZE}-byte blob cut 20 times`);
});

test.serial('resume: a pull whose server process is SIGKILLed 20 times (and restarted on the same store) ends right', async (t) => {
  // The server's store, written here and closed, then served by a child process.
  const root = path.join(tempDir(t), 'server-store');
  const seedStore = await BlobStore.open(root);
  const name = await putBlob(seedStore, BIG);
  await seedStore.close();
  const token = 'child-token';
  let server: { child: ChildProcess; port: number } | undefined;
  let port = 0;
  const start = async () => {
    for (let tries = 0; ; tries++) {
      try {
        server = await startServerChild(root, port, token);
        port = server.port;
        return;
      } catch (e) {
        if (tries >= 20) throw e; // the same port, until the old listener is surely gone
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  t.teardown(async () => {
    if (server) await killHard(server.child);
  });
  await start();
  const proxy = await tcpProxy(() => port);
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  const seed = 20_062;
  const kills = killPoints(seed, SIZE);
  const rnd = prngInts(seed + 1);
  t.log(`seed ${seed}, kill points ${kills.join(' ')}`);
  const attempts: Attempt[] = [];
  while (attempts.length <= CUTS) {
    const cut = attempts.length < CUTS;
    const k = kills[attempts.length]!;
    const durableBefore = (await blobState(dst, name))?.size ?? 0;
    if (!server) await start();
    const victim = server!;
    let killing: Promise<void> | undefined;
    if (cut) {
      // At exactly this many bytes into the reply stream, the proxy stops forwarding and the server dies.
      proxy.next = {
        budget: k > durableBefore ? k - durableBefore : 1 + rnd(64 * KiB),
        onCut: () => {
          killing = killHard(victim.child);
        },
      };
    }
    const attempt: Attempt = { method: cut ? 'SIGKILL' : 'none', durableBefore, last: undefined };
    attempts.push(attempt);
    let c: CabClient | undefined;
    try {
      c = await connect(dst, proxy.url, { token });
      attempt.stats = await c.pull(name, { onProgress: (p) => (attempt.last = p) });
      attempt.last = attempt.stats;
    } catch (e) {
      attempt.error = codeOf(e);
      t.is(attempt.error, 'ERR_CONNECTION', `attempt ${attempts.length} fails with ERR_CONNECTION`);
      if (!cut) break;
    } finally {
      await c?.close();
    }
    if (cut) {
      if (attempt.stats) {
        t.fail(`attempt ${attempts.length} (kill at ${k}) was not cut`);
        break;
      }
      t.truthy(killing, 'the server was killed');
      await killing;
      t.is(victim.child.signalCode, 'SIGKILL');
      server = undefined;
    }
  }
  t.log(attempts.map((a) => `${a.durableBefore}+${a.last?.verifiedBytes ?? 0}`).join(' '));
  await checkResumed(t, dst, name, attempts);
});

test.serial('closing a client while its pull runs fails the pull with ERR_CONNECTION and leaves no stray rejection behind', async (t) => {
  // An unhandled rejection ends a Node process by default: a client app must be able to hang up mid-pull.
  const stray: unknown[] = [];
  const onStray = (e: unknown) => stray.push(e);
  process.on('unhandledRejection', onStray);
  t.teardown(() => process.off('unhandledRejection', onStray));
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  for (let i = 0; i < 3; i++) {
    // Closed at the first progress report, with most of the 64 MiB not yet asked for.
    const c = await connect(dst, srv.url, { token: RW });
    let closing: Promise<void> | undefined;
    const e = await t.throwsAsync(c.pull(name, { onProgress: () => void (closing ??= c.close()) }));
    t.is(codeOf(e), 'ERR_CONNECTION');
    await closing;
    await dst.deleteBlob(name);
  }
  await new Promise((r) => setTimeout(r, 200));
  t.deepEqual(stray.map((e) => (e as Error).message), []);
});

// --- lying peers ----------------------------------------------------------

const LIE = prngBytes('lying peer', 8 * MiB);
const LIE_HASH = toHex(merkleRoot(LIE));
const LIE_EDIT = edited(LIE, 61, 10);
const LIE_EDIT_HASH = toHex(merkleRoot(LIE_EDIT.bytes));

/**
 * Hooks that flip one bit in one item of the answer to the nth `get` (by its id: answers may come
 * out of order), and say whether they did. `requests` watches the side that asks, `answers` the
 * side that answers.
 */
function flipInAnswer(nth: number): { requests: FrameHook; answers: FrameHook; flipped: () => boolean } {
  let gets = 0;
  let target: number | undefined;
  let flipped = false;
  return {
    flipped: () => flipped,
    requests: (frame, isBinary) => {
      const m = decodedFrame(frame, isBinary);
      if (m?.t === 'get' && ++gets === nth) target = m.id;
      return frame;
    },
    answers: (frame, isBinary) => {
      const m = decodedFrame(frame, isBinary);
      if (flipped || m?.t !== 'data' || m.id !== target || m.items.length === 0) return frame;
      const items = m.items.map((x) => Buffer.from(x));
      const item = items[items.length >> 1]!;
      item[item.length >> 1]! ^= 0x10;
      flipped = true;
      return Buffer.from(encodeMessage({ ...m, items }));
    },
  };
}

test('a server that flips a byte in one chunk: ERR_HASH_MISMATCH, only verified bytes kept, an honest pull then resumes', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, LIE);
  const srv = await serveT(t, src);
  const flip = flipInAnswer(2);
  const liar = await wsProxy(srv.url, { toServer: flip.requests, toClient: flip.answers });
  t.teardown(() => liar.close());
  const dst = await tempStore(t);
  const c = await connectT(t, dst, liar.url);
  const e = await t.throwsAsync(c.pull(name));
  t.true(flip.flipped(), 'the proxy corrupted a data frame');
  t.is(codeOf(e), 'ERR_HASH_MISMATCH');
  const kept = await assertVerifiedPrefix(t, dst, name, LIE);
  t.true(kept > 0 && kept < LIE.length, `the answer to the first get, before the bad one, is kept (${kept} bytes)`);
  const honest = await connectT(t, dst, srv.url);
  const st = await honest.pull(name);
  t.is(st.resumedFrom, kept);
  t.true(st.receivedBytes <= LIE.length - kept + MAX_CHUNK);
  await assertBlob(t, dst, name, LIE, LIE_HASH);
});

test('a server that flips a byte in a fine piece (receiver holds an older version): ERR_HASH_MISMATCH, only verified bytes kept', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, LIE_EDIT.bytes);
  const srv = await serveT(t, src);
  const flip = flipInAnswer(1);
  const liar = await wsProxy(srv.url, { toServer: flip.requests, toClient: flip.answers });
  t.teardown(() => liar.close());
  const dst = await tempStore(t);
  await putBlob(dst, LIE);
  const c = await connectT(t, dst, liar.url);
  const e = await t.throwsAsync(c.pull(name));
  t.true(flip.flipped());
  t.is(codeOf(e), 'ERR_HASH_MISMATCH');
  await assertVerifiedPrefix(t, dst, name, LIE_EDIT.bytes);
  const honest = await connectT(t, dst, srv.url);
  await honest.pull(name);
  await assertBlob(t, dst, name, LIE_EDIT.bytes, LIE_EDIT_HASH);
});

test('a server that announces a wrong blob hash: ERR_HASH_MISMATCH before finalizing; an honest pull then finalizes without refetching', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, LIE);
  const srv = await serveT(t, src);
  let lied = false;
  const liar = await wsProxy(srv.url, {
    toClient: (frame) => {
      const m = decodeMessage(frame);
      if (m.t !== 'statr' || !m.hash) return frame;
      const hash = Buffer.from(m.hash);
      hash[0]! ^= 1;
      lied = true;
      return Buffer.from(encodeMessage({ ...m, hash }));
    },
  });
  t.teardown(() => liar.close());
  const dst = await tempStore(t);
  const c = await connectT(t, dst, liar.url);
  t.is(codeOf(await t.throwsAsync(c.pull(name))), 'ERR_HASH_MISMATCH');
  t.true(lied);
  const kept = await assertVerifiedPrefix(t, dst, name, LIE);
  t.is(kept, LIE.length, 'every chunk was verified, so all bytes are kept');
  const honest = await connectT(t, dst, srv.url);
  const st = await honest.pull(name);
  t.is(st.resumedFrom, LIE.length);
  t.is(st.receivedBytes, 0);
  await assertBlob(t, dst, name, LIE, LIE_HASH);
});

test('a client that pushes a flipped byte: the server fails the push with ERR_HASH_MISMATCH and keeps only verified bytes', async (t) => {
  const local = await tempStore(t);
  const name = await putBlob(local, LIE);
  const remote = await tempStore(t);
  const srv = await serveT(t, remote);
  const flip = flipInAnswer(2);
  const liar = await wsProxy(srv.url, { toClient: flip.requests, toServer: flip.answers });
  t.teardown(() => liar.close());
  const c = await connectT(t, local, liar.url);
  t.is(codeOf(await t.throwsAsync(c.push(name))), 'ERR_HASH_MISMATCH');
  t.true(flip.flipped());
  const kept = await assertVerifiedPrefix(t, remote, name, LIE);
  const honest = await connectT(t, local, srv.url);
  const r = await honest.push(name);
  t.true(r.received <= LIE.length - kept + MAX_CHUNK);
  await assertBlob(t, remote, name, LIE, LIE_HASH);
});

// --- authentication -------------------------------------------------------

const SMALL = prngBytes('small', 300_000);

test('a read-only token may pull but not push (ERR_PERMISSION, checked by the server too); a write-only token may not pull', async (t) => {
  const remote = await tempStore(t);
  const there = await putBlob(remote, SMALL);
  const srv = await serveT(t, remote);
  const local = await tempStore(t);
  const mine = await putBlob(local, prngBytes('mine', 200_000));
  const ro = await connectT(t, local, srv.url, RO);
  t.is(codeOf(await t.throwsAsync(ro.push(mine))), 'ERR_PERMISSION');
  t.is(await blobState(remote, mine), undefined, 'nothing was written');
  await ro.pull(there);
  await assertBlob(t, local, there, SMALL, toHex(merkleRoot(SMALL)));
  // The server's own check, whatever the client does: a raw push frame with the read-only token.
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  t.is(((await raw.hello(RO)) as Message).t, 'welcome');
  raw.send({ t: 'push', id: 7, name: mine, size: 200_000, hash: merkleRoot(prngBytes('mine', 200_000)) });
  const answer = await raw.waitFor((m) => m.t === 'err' || m.t === 'done');
  t.like(answer, { t: 'err', id: 7, code: 'ERR_PERMISSION' });
  raw.send({ t: 'stat', id: 8, name: there });
  t.like(await raw.waitFor((m) => 'id' in m && m.id === 8), { t: 'statr', id: 8, fin: true }, 'the connection keeps working');
  t.is(await blobState(remote, mine), undefined);
  const wo = await connectT(t, await tempStore(t), srv.url, WO);
  t.is(codeOf(await t.throwsAsync(wo.pull(there))), 'ERR_PERMISSION');
  t.is(codeOf(await t.throwsAsync(wo.stat(there))), 'ERR_PERMISSION');
});

test('a wrong token, or none, gets ERR_AUTH', async (t) => {
  const store = await tempStore(t);
  await putBlob(store, SMALL);
  const srv = await serveT(t, store);
  const local = await tempStore(t);
  t.is(codeOf(await t.throwsAsync(connect(local, srv.url, { token: 'not-a-token' }))), 'ERR_AUTH');
  t.is(codeOf(await t.throwsAsync(connect(local, srv.url, { token: `${RW}x` }))), 'ERR_AUTH');
  t.is(codeOf(await t.throwsAsync(connect(local, srv.url))), 'ERR_AUTH');
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  t.like(await raw.hello(undefined), { t: 'err', code: 'ERR_AUTH' });
  t.true(await raw.waitClosed(), 'and the connection is closed');
  const ok = await connectT(t, local, srv.url, RW);
  t.is((await ok.stat((await collect(store.listBlobIds()))[0]!)).size, SMALL.length);
});

test('serve() without tokens and without insecure throws ERR_BAD_ARGUMENT; insecure serves anyone', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, SMALL);
  t.is(codeOf(await t.throwsAsync(serve(store))), 'ERR_BAD_ARGUMENT');
  t.is(codeOf(await t.throwsAsync(serve(store, {}))), 'ERR_BAD_ARGUMENT');
  t.is(codeOf(await t.throwsAsync(serve(store, { tokens: {} }))), 'ERR_BAD_ARGUMENT');
  t.is(codeOf(await t.throwsAsync(serve(store, { tokens: new Map() }))), 'ERR_BAD_ARGUMENT');
  t.is(codeOf(await t.throwsAsync(serve(store, { tokens: { T: ['admin'] } } as unknown as ServeOptions))), 'ERR_BAD_ARGUMENT');
  t.is(codeOf(await t.throwsAsync(serve(store, { insecure: false }))), 'ERR_BAD_ARGUMENT');
  const open = await serveT(t, store, { insecure: true, tokens: undefined });
  const local = await tempStore(t);
  const c = await connect(local, open.url);
  t.teardown(() => c.close());
  await c.pull(name);
  await assertBlob(t, local, name, SMALL, toHex(merkleRoot(SMALL)));
  const mine = await putBlob(local, prngBytes('insecure push', 100_000));
  await c.push(mine);
  t.true((await blobState(store, mine))?.finalized);
});

// --- many at once ---------------------------------------------------------

const MANY = Array.from({ length: 5 }, (_, i) => prngBytes(`many ${i}`, 6 * MiB + i * 7777));
const MANY_HASH = MANY.map((b) => toHex(merkleRoot(b)));

test.serial('5 pulls at once on one connection, and 4 connections at once to one server, and a push beside a pull', async (t) => {
  const src = await tempStore(t);
  const names: string[] = [];
  for (const b of MANY) names.push(await putBlob(src, b));
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  const c = await connectT(t, dst, srv.url);
  const stats = await Promise.all(names.map((n) => c.pull(n)));
  stats.forEach((s, i) => t.is(toHex(s.hash), MANY_HASH[i]));
  for (let i = 0; i < names.length; i++) await assertBlob(t, dst, names[i]!, MANY[i]!, MANY_HASH[i]!);

  const others = await Promise.all([0, 1, 2, 3].map(async () => {
    const store = await tempStore(t);
    return { store, c: await connectT(t, store, srv.url) };
  }));
  t.is(srv.connections, 5);
  await Promise.all(others.map(({ c: oc }, k) => Promise.all([names[k]!, names[(k + 2) % 5]!].map((n) => oc.pull(n)))));
  for (const [k, { store }] of others.entries()) {
    for (const i of [k, (k + 2) % 5]) await assertBlob(t, store, names[i]!, MANY[i]!, MANY_HASH[i]!);
  }

  // Both directions at once on one connection.
  const up = await putBlob(dst, prngBytes('push beside pull', 3 * MiB));
  const down = await putBlob(src, prngBytes('pull beside push', 3 * MiB));
  await Promise.all([c.push(up), c.pull(down)]);
  await assertBlob(t, src, up, prngBytes('push beside pull', 3 * MiB), toHex(merkleRoot(prngBytes('push beside pull', 3 * MiB))));
  await assertBlob(t, dst, down, prngBytes('pull beside push', 3 * MiB), toHex(merkleRoot(prngBytes('pull beside push', 3 * MiB))));

  await Promise.all(others.map(({ c: oc }) => oc.close()));
  await c.close();
  for (let i = 0; i < 100 && srv.connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
  t.is(srv.connections, 0, 'closed connections are gone from the server');
});

test.serial('5 pulls at once against a server allowing 3 outstanding requests: the client keeps to the window', async (t) => {
  const src = await tempStore(t);
  const names: string[] = [];
  for (const b of MANY) names.push(await putBlob(src, b.subarray(0, 2 * MiB)));
  const srv = await serveT(t, src, { maxRequests: 3 });
  const dst = await tempStore(t);
  const c = await connectT(t, dst, srv.url);
  await Promise.all(names.map((n) => c.pull(n)));
  for (let i = 0; i < names.length; i++) await assertBlob(t, dst, names[i]!, MANY[i]!.subarray(0, 2 * MiB), toHex(merkleRoot(MANY[i]!.subarray(0, 2 * MiB))));
});

test.serial('chunk requests are pipelined: a pull into an empty store keeps more than one get outstanding', async (t) => {
  const src = await tempStore(t);
  const bytes = BIG.subarray(0, 16 * MiB);
  const name = await putBlob(src, bytes);
  const srv = await serveT(t, src);
  const outstanding = new Set<number>();
  let most = 0;
  const watch = await wsProxy(srv.url, {
    toServer: (frame) => {
      const m = decodeMessage(frame);
      if (m.t === 'get') most = Math.max(most, outstanding.add(m.id).size);
      return frame;
    },
    toClient: (frame) => {
      const m = decodeMessage(frame);
      if ('id' in m && m.id !== undefined) outstanding.delete(m.id);
      return frame;
    },
  });
  t.teardown(() => watch.close());
  const dst = await tempStore(t);
  const c = await connectT(t, dst, watch.url);
  await c.pull(name);
  t.log(`most gets outstanding at once: ${most}`);
  t.true(most >= 2, `at most ${most} get outstanding at a time`);
  await assertBlob(t, dst, name, bytes, toHex(merkleRoot(bytes)));
});

// --- a blob already held; signposts ----------------------------------------

test('a pull of a blob already held costs one round trip; pulls record the peer in the signpost and set accessed', async (t) => {
  const src = await tempStore(t);
  const bytes = prngBytes('held', 5 * MiB);
  const name = await putBlob(src, bytes);
  const srv = await serveT(t, src);
  const dst = await tempStore(t);
  const c = await connectT(t, dst, srv.url);
  t.is(await dst.getSignpost(name), undefined);
  const before = Date.now();
  const first = await c.pull(name);
  const after = Date.now();
  t.false(first.alreadyHad);
  const sp = await dst.getSignpost(name);
  t.truthy(sp?.locations[c.url], `the signpost names the server (${JSON.stringify(sp)})`);
  const seen = sp!.locations[c.url]!.whenSeen.getTime();
  t.true(seen >= before && seen <= after);
  const md = await dst.getBlobMetadata(name);
  t.truthy(md);
  t.true(md!.accessed.getTime() >= before && md!.accessed.getTime() <= after);

  await new Promise((r) => setTimeout(r, 5));
  const wire = { ...c.wire };
  const before2 = Date.now();
  const again = await c.pull(name);
  t.true(again.alreadyHad);
  t.is(again.receivedBytes, 0);
  t.is(toHex(again.hash), toHex(merkleRoot(bytes)));
  // One round trip: exactly one `stat` out and one `statr` back, each no bigger than the largest such frame could be.
  const sent = c.wire.sent - wire.sent;
  const received = c.wire.received - wire.received;
  const maxStat = encodeMessage({ t: 'stat', id: 2 ** 32, name }).length;
  const maxStatr = encodeMessage({ t: 'statr', id: 2 ** 32, size: Number.MAX_SAFE_INTEGER, fin: true, hash: new Uint8Array(32) }).length;
  t.log(`second pull: sent ${sent} (one stat <= ${maxStat}), received ${received} (one statr <= ${maxStatr})`);
  t.true(sent > 0 && sent <= maxStat);
  t.true(received > 0 && received <= maxStatr);
  t.true((await dst.getBlobMetadata(name))!.accessed.getTime() >= before2, 'accessed moves on with each pull');
  await assertBlob(t, dst, name, bytes, toHex(merkleRoot(bytes)));
  // A blob held under that name with other content is not overwritten.
  const clash = await putBlob(dst, prngBytes('clash', 1000));
  const other = await putBlob(src, prngBytes('clash other', 1000), clash);
  t.is(codeOf(await t.throwsAsync(c.pull(other))), 'ERR_BLOB_EXISTS');
  t.true((await readAll(dst, clash)).equals(prngBytes('clash', 1000)));
});
