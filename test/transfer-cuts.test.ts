// A connection cut in the middle of an answer frame, 20 times in one 64 MiB
// pull (and push): each `get` is answered in frames of about a chunk, every
// whole frame that arrived is written before the transfer fails, and the
// bytes that crossed the wire for nothing are at most the frame each cut
// went through. Counted on the wire: a TCP proxy on 127.0.0.1 follows the
// WebSocket frames going by, cuts in the middle of a `data` frame, and
// counts every byte it forwarded.
import test, { type ExecutionContext } from 'ava';
import type net from 'node:net';
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
  type Message,
  type ServeEvent,
  type TransferProgress,
} from '../src/index.js';
import { encodeDataFrame, DATA_FRAME_BYTES } from '../src/transfer/messages.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { tempStore, putBlob, readAll } from './helpers/store.js';
import { tcpProxy, type ProxiedConnection } from './helpers/proxies.js';
import { MiB, KiB, MAX_CHUNK } from './helpers/transfer.js';

const SIZE = 64 * MiB;
const CUTS = 20;
const BIG = prngBytes('transfer cuts', SIZE);
const BIG_HASH = toHex(merkleRoot(BIG));
/** A `data` frame's payload starts so (our encoder's key order: t, id, end, items). */
const DATA_PREFIX = Buffer.from([0x84, 0xa1, 0x74, 0xa4, 0x64, 0x61, 0x74, 0x61]);

/**
 * Follows one direction of a WebSocket connection's bytes (the HTTP head,
 * then frames, masked or not), counting the item bytes of the whole `data`
 * frames that went by; armed, it says where to cut: in the middle of the
 * first `data` frame that starts once `after` item bytes have gone by.
 */
class FrameWatch {
  /** Item bytes of whole `data` frames forwarded. */
  delivered = 0;
  /** Payload bytes of whole frames forwarded (what a WireCount counts), and after each one, that total and `delivered`. */
  payloadBytes = 0;
  readonly #marks: Array<[number, number]> = [[0, 0]];
  /** Bytes of the frame the cut went through (its header and the part of its payload forwarded). */
  cutFrameBytes = 0;
  cut = false;
  #head = Buffer.alloc(0);
  #inHttp = true;
  #frame: { headerLength: number; length: number; mask: Buffer | undefined; payload: Buffer[]; got: number; cutAt: number | undefined } | undefined;

  constructor(readonly after: number | undefined) {}

  /** Where in `piece` to cut (bytes to forward), or undefined to forward it all. */
  piece(piece: Buffer): number | undefined {
    let at = 0;
    while (at < piece.length) {
      if (this.#inHttp) {
        this.#head = Buffer.concat([this.#head, piece.subarray(at)]);
        const end = this.#head.indexOf('\r\n\r\n');
        if (end < 0) return undefined;
        const rest = this.#head.subarray(end + 4);
        at = piece.length - rest.length;
        this.#inHttp = false;
        this.#head = Buffer.alloc(0);
        continue;
      }
      if (!this.#frame) {
        // A frame header: 2 bytes, the extended length, the mask.
        const need = (h: Buffer) => (h.length < 2 ? 2 : 2 + ((h[1]! & 0x7f) === 126 ? 2 : (h[1]! & 0x7f) === 127 ? 8 : 0) + (h[1]! & 0x80 ? 4 : 0));
        while (at < piece.length && this.#head.length < need(this.#head)) this.#head = Buffer.concat([this.#head, piece.subarray(at, ++at)]);
        if (this.#head.length < need(this.#head)) return undefined;
        const h = this.#head;
        const len7 = h[1]! & 0x7f;
        const length = len7 === 126 ? h.readUInt16BE(2) : len7 === 127 ? Number(h.readBigUInt64BE(2)) : len7;
        const mask = h[1]! & 0x80 ? h.subarray(h.length - 4) : undefined;
        this.#frame = { headerLength: h.length, length, mask, payload: [], got: 0, cutAt: undefined };
        this.#head = Buffer.alloc(0);
        continue;
      }
      const f = this.#frame;
      const take = Math.min(f.length - f.got, piece.length - at);
      const part = Buffer.from(piece.subarray(at, at + take));
      if (f.mask) for (let i = 0; i < part.length; i++) part[i]! ^= f.mask[(f.got + i) & 3]!;
      // Cut in the middle of this frame, if it is the data frame we wait for (its prefix seen, its middle in this piece).
      if (this.after !== undefined && this.delivered >= this.after && f.length >= 4 * KiB) {
        const seen = Buffer.concat([...f.payload, part]);
        const middle = f.length >> 1;
        if (seen.length >= DATA_PREFIX.length && seen.subarray(0, DATA_PREFIX.length).equals(DATA_PREFIX) && f.got <= middle && middle < f.got + take) {
          this.cut = true;
          this.cutFrameBytes = f.headerLength + middle;
          return at + (middle - f.got);
        }
      }
      f.payload.push(part);
      f.got += take;
      at += take;
      if (f.got === f.length) {
        const payload = Buffer.concat(f.payload);
        if (payload.subarray(0, DATA_PREFIX.length).equals(DATA_PREFIX)) {
          const m = decodeMessage(payload);
          if (m.t === 'data') this.delivered += m.items.reduce((a, b) => a + b.length, 0);
        }
        this.payloadBytes += f.length;
        this.#marks.push([this.payloadBytes, this.delivered]);
        this.#frame = undefined;
      }
    }
    return undefined;
  }

  /** `delivered` as of the whole frames a receiver that counted `payload` bytes of them got (they come in order); undefined if no prefix of them counts that. */
  deliveredAt(payload: number): number | undefined {
    return this.#marks.find(([p]) => p === payload)?.[1];
  }
}

async function blobSize(store: BlobStore, name: string): Promise<number> {
  try {
    const r = await store.newBlobReader(name);
    await r.close();
    return r.size;
  } catch (e) {
    if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return 0;
    throw e;
  }
}

/** Cut points, one in each of 21 equal stretches of the blob, from a seed. */
function targets(seed: number): number[] {
  const rnd = prngInts(seed);
  return Array.from({ length: CUTS }, (_, i) => Math.floor(((i + 0.3 + (0.4 * rnd(1000)) / 1000) * SIZE) / (CUTS + 1)));
}

/** Resolves once what the proxy forwarded on `s` has left it (a destroy would drop what it still holds). */
function flushed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => (s.writableLength === 0 ? resolve() : s.once('drain', () => resolve())));
}

/**
 * Hangs up on a connection whose `to` side was cut off, once what was
 * forwarded to it has left the proxy. `close`: a FIN to `to` after those
 * bytes (the proxy drops the rest of the connection when `to` closes).
 * `reset`: a TCP reset to `rst` (after `ready`), the other side closed at
 * once; the kernel then drops what it had not delivered, so what arrived is
 * taken from the receiver's own count.
 */
async function hangUp(conn: ProxiedConnection, to: 'client' | 'upstream', how: 'reset' | 'close', rst: 'client' | 'upstream', ready: () => Promise<void> = async () => {}): Promise<void> {
  const side = (x: 'client' | 'upstream') => (x === 'client' ? conn.client : conn.upstream);
  await flushed(side(to));
  if (how === 'close') {
    side(to).end();
    return;
  }
  await ready();
  side(rst).resetAndDestroy();
  side(rst === 'client' ? 'upstream' : 'client').destroy();
}

/** Waits (5 s at most) until `count()` reaches `n`. */
async function until(count: () => number, n: number): Promise<void> {
  for (let waited = 0; count() < n && waited < 5000; waited += 5) await new Promise((r) => setTimeout(r, 5));
}

interface Tally {
  /** Per cut: bytes of the frame it went through, and bytes of whole frames forwarded that the receiver never got (dropped by the kernel at a reset). */
  waste: number[];
  lost: number[];
  /** Item bytes of the data frames that arrived, over all attempts. */
  arrived: number;
}

/** One attempt's account: what arrived by the receiver's own count (`received` frame bytes), checked against what it wrote. */
function settle(t: ExecutionContext, tally: Tally, i: number, watch: FrameWatch, received: number, before: number, after: number, how: string): void {
  const arrived = watch.deliveredAt(received);
  t.not(arrived, undefined, `attempt ${i}: the receiver counted ${received} frame bytes, a whole number of the frames forwarded`);
  t.is(after, before + (arrived ?? 0), `attempt ${i} (${how}): every whole data frame that arrived was written (${before} + ${arrived})`);
  tally.arrived += arrived ?? 0;
  if (watch.cut) {
    tally.waste.push(watch.cutFrameBytes);
    tally.lost.push(watch.payloadBytes - received);
  }
}

function report(t: ExecutionContext, what: string, tally: Tally, wire: number): void {
  const waste = tally.waste.reduce((a, b) => a + b, 0);
  const lost = tally.lost.reduce((a, b) => a + b, 0);
  t.log(`${what}: wire ${wire} for ${SIZE}; per cut, bytes of the frame cut: ${tally.waste.join(' ')} (in all ${waste}, bound ${CUTS * MAX_CHUNK}); whole frames dropped by a reset: ${lost}`);
  t.is(tally.waste.length, CUTS, 'every attempt but the last was cut in a data frame');
  for (const w of tally.waste) t.true(w <= MAX_CHUNK + 64, `a cut wastes at most a chunk and a frame header (${w})`);
  t.true(waste <= CUTS * MAX_CHUNK, 'at most a chunk per cut in all');
  t.is(tally.arrived, SIZE, 'no data frame that arrived carried a byte twice: every one was written');
  // Beyond the blob: the frames cut, those a reset dropped, and each attempt's stat, requests, framing and chunk
  // list (about 40 bytes a chunk, 36 KiB here; a resumed attempt checks its prefix against it and goes on without
  // asking for it again).
  const bound = SIZE + waste + lost + (CUTS + 1) * 64 * KiB + SIZE / 1000;
  t.true(wire <= bound, `${wire} bytes on the wire <= ${bound}`);
}

test('a data frame built in place is the bytes encode makes of the same message, and decodes to it', (t) => {
  const ids = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1];
  const shapes = [[], [0], [1, 255, 256], [65535, 65536, 70000], Array.from({ length: 15 }, (_, i) => i * 7), Array.from({ length: 16 }, (_, i) => i), Array.from({ length: 300 }, () => 3)];
  let k = 0;
  for (const id of ids) {
    for (const lengths of shapes) {
      for (const end of [false, true]) {
        const items = lengths.map((n) => prngBytes(`item ${k++}`, n));
        const { frame, at } = encodeDataFrame(id, lengths, end);
        items.forEach((b, i) => frame.set(b, at[i]!));
        const m: Message = { t: 'data', id, end, items };
        const plain = (x: Message) => ({ ...x, items: (x as Extract<Message, { t: 'data' }>).items.map((b) => Buffer.from(b)) });
        // msgpackr writes a map header of its own choosing (map16); the same message either way.
        t.deepEqual(plain(decodeMessage(frame)), plain(decodeMessage(encodeMessage(m))), `id ${id}, ${lengths.length} items, end ${end}`);
        t.deepEqual(plain(decodeMessage(frame)), plain(m));
      }
    }
  }
  // A frame of small items stays within DATA_FRAME_BYTES of payload plus headers.
  t.true(encodeDataFrame(1, [DATA_FRAME_BYTES], true).frame.length < DATA_FRAME_BYTES + 64);
});

test.serial('a pull cut 20 times in the middle of an answer frame writes every whole frame that arrived and refetches at most a chunk per cut, on the wire', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, BIG);
  const srv = await serve(src, { insecure: true });
  t.teardown(() => srv.close());
  const proxy = await tcpProxy(() => srv.port);
  t.teardown(() => proxy.close());
  const dst = await tempStore(t);
  const cuts = targets(15_001);
  const tally: Tally = { waste: [], lost: [], arrived: 0 };
  for (let i = 0; i <= CUTS; i++) {
    const before = await blobSize(dst, name);
    const last = i === CUTS;
    const watch = new FrameWatch(last ? undefined : Math.max(0, cuts[i]! - before));
    const how = i % 2 === 0 ? 'reset' : 'close';
    let c: CabClient | undefined;
    // The reset waits until the client has taken the whole frames forwarded (the kernel would drop them).
    const ready = () => until(() => c!.wire.received, watch.payloadBytes);
    proxy.next = { cutAt: (piece) => watch.piece(piece), onCut: (conn) => void hangUp(conn, 'client', how, 'client', ready) };
    const progress: TransferProgress[] = [];
    let failed: unknown;
    try {
      c = await connect(dst, proxy.url);
      const st = await c.pull(name, { onProgress: (p) => progress.push({ ...p }) });
      t.is(st.resumedFrom, before, 'the pull says where it resumed');
    } catch (e) {
      failed = e;
    } finally {
      await c?.close();
    }
    const after = await blobSize(dst, name);
    if (last) t.is(failed, undefined, 'the last pull completes');
    else {
      t.true(watch.cut, `attempt ${i} was cut in a data frame`);
      t.true(isCabError(failed, 'ERR_CONNECTION'), `attempt ${i} (${how}) fails with ERR_CONNECTION: ${String(failed)}`);
    }
    settle(t, tally, i, watch, c?.wire.received ?? 0, before, after, how);
    // Progress starts where the last attempt stopped, and ends where this one did.
    t.like(progress[0], { resumedFrom: before, verifiedBytes: 0 }, `attempt ${i}: the first progress event says where it resumed`);
    const end = progress.at(-1)!;
    t.is(end.resumedFrom + end.verifiedBytes, after, `attempt ${i}: the last progress event says how far it got`);
  }
  report(t, 'pull', tally, proxy.totalDown);
  t.true((await readAll(dst, name)).equals(BIG), 'the blob arrived whole');
  const r = await dst.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), BIG_HASH);
});

test.serial('a push cut 20 times in the middle of an answer frame: the server writes every whole frame that arrived, refetching at most a chunk per cut', async (t) => {
  const server = await tempStore(t);
  const events: ServeEvent[] = [];
  const srv = await serve(server, { insecure: true, onEvent: (e) => events.push(e) });
  t.teardown(() => srv.close());
  const proxy = await tcpProxy(() => srv.port);
  t.teardown(() => proxy.close());
  const local = await tempStore(t);
  const name = await putBlob(local, BIG);
  const cuts = targets(15_002);
  const tally: Tally = { waste: [], lost: [], arrived: 0 };
  /** The server's durable size of the blob once its receive let go of it (a cut push is salvaged in the background). */
  const settled = async (): Promise<number> => {
    for (;;) {
      try {
        const w = await server.resumeBlobWriter(name);
        await w.closeWithoutFinalize();
        return w.size;
      } catch (e) {
        if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return 0;
        if (isCabError(e, 'ERR_BLOB_FINALIZED')) return SIZE;
        if (!isCabError(e, 'ERR_BLOB_LOCKED')) throw e;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  };
  for (let i = 0; i <= CUTS; i++) {
    const before = await settled();
    const last = i === CUTS;
    const watch = new FrameWatch(last ? undefined : Math.max(0, cuts[i]! - before));
    const how = i % 2 === 0 ? 'reset' : 'close';
    // The reset goes to the pusher; the server's side is closed at once (what arrived there, its ServeEvent counts).
    proxy.next = { direction: 'up', cutAt: (piece) => watch.piece(piece), onCut: (conn) => void hangUp(conn, 'upstream', how, 'client') };
    let c: CabClient | undefined;
    let failed: unknown;
    try {
      c = await connect(local, proxy.url);
      const r = await c.push(name);
      t.is(r.received, SIZE - before, 'the push sends only what the server lacked');
    } catch (e) {
      failed = e;
    } finally {
      await c?.close();
    }
    const after = await settled();
    if (last) t.is(failed, undefined, 'the last push completes');
    else {
      t.true(watch.cut, `attempt ${i} was cut in a data frame`);
      t.true(isCabError(failed, 'ERR_CONNECTION'), `attempt ${i} (${how}) fails with ERR_CONNECTION: ${String(failed)}`);
    }
    await until(() => events.length, i + 1);
    settle(t, tally, i, watch, events[i]?.wire.received ?? 0, before, after, how);
  }
  report(t, 'push', tally, proxy.totalUp);
  t.true((await readAll(server, name)).equals(BIG), 'the blob arrived whole');
  const r = await server.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized);
  t.is(toHex(r.hash!), BIG_HASH);
});

test('small pulls and pushes back to back on one connection each end as soon as their last get is written (none waits for a wake-up that came early)', async (t) => {
  const a = await tempStore(t);
  const b = await tempStore(t);
  const srv = await serve(a, { insecure: true, idleTimeoutMs: 20_000 });
  t.teardown(() => srv.close());
  const c = await connect(b, srv.url);
  t.teardown(() => c.close());
  // A FetchWindow that lost a wake-up left the push waiting until the server's idle timeout cut it (ERR_IDLE_TIMEOUT).
  for (let i = 0; i < 20; i++) {
    const pulled = await putBlob(a, prngBytes(`small pull ${i}`, 1 + ((i * 37 * KiB) % (300 * KiB))));
    const pushed = await putBlob(b, prngBytes(`small push ${i}`, 1 + ((i * 53 * KiB) % (300 * KiB))));
    t.is((await c.pull(pulled)).verifiedBytes, (await a.stat(pulled)).size);
    t.is((await c.push(pushed)).received, (await b.stat(pushed)).size);
  }
});
