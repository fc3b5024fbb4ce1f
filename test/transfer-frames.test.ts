// The frame reader of the transfer's connections (src/transfer/frame-tap.ts):
// `data` frames are taken apart as their bytes arrive and written straight
// into the fetch window's buffers. These tests feed it frames split at every
// kind of boundary (a TCP relay that cuts the byte stream into small pieces,
// both ways) and frames that look like data frames but do not add up.
import test from 'ava';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { connect, merkleRoot, serve, toHex, type Message } from '../src/index.js';
import { encodeDataFrame } from '../src/transfer/messages.js';
import { prngBytes } from '../tools/data.js';
import { chunksOf, putBlob, readAll, tempStore } from './helpers/store.js';
import { fakeServer, settle } from './helpers/hostile.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A TCP relay to 127.0.0.1:port that forwards each way in pieces of 1 to `most` bytes, one piece per turn of the event loop. */
async function choppy(port: number, most: number): Promise<{ url: string; pieces: () => number; close: () => void }> {
  const sockets = new Set<net.Socket>();
  let pieces = 0;
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
  const relay = (from: net.Socket, to: net.Socket) => {
    const queue: Buffer[] = [];
    let pumping = false;
    const pump = () => {
      const head = queue[0];
      if (!head || to.destroyed) {
        pumping = false;
        if (from.isPaused()) from.resume();
        return;
      }
      const n = Math.min(head.length, 1 + (next() % most));
      to.write(head.subarray(0, n));
      pieces++;
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      setImmediate(pump);
    };
    from.on('data', (d: Buffer) => {
      queue.push(d);
      if (queue.length > 4) from.pause();
      if (!pumping) {
        pumping = true;
        setImmediate(pump);
      }
    });
    from.on('close', () => setTimeout(() => to.destroy(), 50));
    from.on('error', () => {});
  };
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    sockets.add(client).add(upstream);
    relay(client, upstream);
    relay(upstream, client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`,
    pieces: () => pieces,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

test('a pull and a push whose frames arrive cut into pieces of 1 to 700 bytes (headers, heads and items split anywhere) move every byte', async (t) => {
  const src = await tempStore(t);
  const bytes = prngBytes('choppy', 1536 * KiB + 77);
  const name = await putBlob(src, bytes);
  const srv = await serve(src, { insecure: true });
  t.teardown(() => srv.close());
  const relay = await choppy(srv.port, 700);
  t.teardown(() => relay.close());

  const dst = await tempStore(t);
  const client = await connect(dst, relay.url);
  t.teardown(() => client.close());
  const stats = await client.pull(name);
  t.true((await readAll(dst, name)).equals(bytes), 'the pulled blob is byte for byte the source');
  t.is(stats.verifiedBytes, bytes.length);
  t.true(client.wire.received >= bytes.length, 'every data frame was counted whole');

  // And back: the server reads the pushed chunks from frames cut the same way.
  const other = prngBytes('choppy push', 1024 * KiB + 5);
  const pushed = await putBlob(dst, other);
  const r = await client.push(pushed);
  t.deepEqual(r.hash, merkleRoot(other));
  t.true((await readAll(src, pushed)).equals(other), 'the pushed blob is byte for byte the source');
  t.true(relay.pieces() > (bytes.length + other.length) / 700, 'the relay cut the stream into many pieces');
});

/** A fake server holding `bytes` as one blob, whose get answers are built by `frames` (given the get and its items' bytes). */
async function dataServer(t: Parameters<typeof fakeServer>[0], bytes: Buffer, frames: (m: Extract<Message, { t: 'get' }>, items: Uint8Array[]) => Uint8Array[]) {
  const chunks = chunksOf(bytes);
  const byHash = new Map(chunks.map((c) => [toHex(c.hash), c.bytes]));
  return fakeServer(t, (m, send) => {
    if (m.t === 'stat') send({ t: 'statr', id: m.id, size: bytes.length, fin: true, hash: merkleRoot(bytes) });
    else if (m.t === 'list') send({ t: 'listr', id: m.id, c: chunks.map((c) => [c.hash, c.bytes.length]), end: true });
    else if (m.t === 'match') send({ t: 'matchr', id: m.id, ok: false });
    else if (m.t === 'get') for (const f of frames(m, m.items.map(([h, off, len]) => byHash.get(toHex(h))!.subarray(off, off + len)))) send(f);
  });
}

/** A data frame laid out as this end writes them (encodeDataFrame), its items filled in. */
function canonical(id: number, items: Uint8Array[], end: boolean): Buffer {
  const { frame, at } = encodeDataFrame(id, items.map((b) => b.length), end);
  items.forEach((b, k) => frame.set(b, at[k]!));
  return frame;
}

const BLOB = 'f8'.repeat(16);

test('data frames laid out as this end writes them, one item each or all in one frame, are taken apart and every byte checked', async (t) => {
  const bytes = prngBytes('canonical', 700 * KiB);
  for (const perFrame of [1, 64]) {
    const url = await dataServer(t, bytes, (m, items) => {
      const out: Uint8Array[] = [];
      for (let i = 0; i < items.length; i += perFrame) out.push(canonical(m.id, items.slice(i, i + perFrame), i + perFrame >= items.length));
      return out;
    });
    const dst = await tempStore(t);
    const client = await connect(dst, url);
    t.teardown(() => client.close());
    await client.pull(BLOB);
    t.true((await readAll(dst, BLOB)).equals(bytes), `${perFrame} item(s) a frame`);
  }
});

test('a data frame whose items do not add up to it (fewer bytes than its count, bytes past its items, an item not bytes, a wrong byte) fails the pull with its code', async (t) => {
  const bytes = prngBytes('broken frames', 300 * KiB);
  const cases: Array<{ what: string; code: string; frames: (m: Extract<Message, { t: 'get' }>, items: Uint8Array[]) => Uint8Array[] }> = [
    {
      what: 'a count of more items than the frame holds',
      code: 'ERR_PROTOCOL',
      frames: (m, items) => {
        const f = canonical(m.id, items, true);
        const at = f.indexOf(Buffer.from('items')) + 5;
        f[at] = 0x90 | Math.min(15, (f[at]! & 0x0f) + 1);
        return [f];
      },
    },
    { what: 'bytes past its items', code: 'ERR_PROTOCOL', frames: (m, items) => [Buffer.concat([canonical(m.id, items, true), Buffer.from([0xc0])])] },
    {
      what: 'an item that is not bytes',
      code: 'ERR_PROTOCOL',
      frames: (m, items) => {
        const f = canonical(m.id, items, true);
        f[f.indexOf(Buffer.from('items')) + 6] = 0xc0; // nil where the first item's bin header was
        return [f];
      },
    },
    {
      what: 'an item one byte short inside a frame of the right length',
      code: 'ERR_PROTOCOL',
      frames: (m, items) => {
        const f = canonical(m.id, [items[0]!.subarray(1)], true);
        return [Buffer.concat([f, Buffer.from([0])])];
      },
    },
    {
      what: 'a wrong byte in a chunk',
      code: 'ERR_HASH_MISMATCH',
      frames: (m, items) => {
        const f = canonical(m.id, items, true);
        f[f.length - 1] ^= 1;
        return [f];
      },
    },
  ];
  for (const c of cases) {
    const url = await dataServer(t, bytes, c.frames);
    const dst = await tempStore(t);
    const client = await connect(dst, url);
    t.teardown(() => client.close());
    const got = await settle(client.pull(BLOB), 10_000);
    t.is(got, c.code, c.what);
  }
});
