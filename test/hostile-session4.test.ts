// Hostile review, session 4: the night's changes attacked from outside.
// Each test here is a finding (it fails on the code it was written against)
// or a probe that held. Real radosgw, real sockets, real files; the odd
// server is a TCP proxy written here that answers the fetching thread's
// presigned GETs itself (from the real server's answer, changed), and
// passes everything else through untouched.
import { execFileSync, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import test, { type ExecutionContext } from 'ava';
import { BlobStore, CabError, connect, serve, type StoreOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { Chunker } from '../src/chunker/fastcdc.js';
import { GEAR } from '../src/chunker/gear.js';
import { parseRange } from '../src/http/range.js';
import { S3_ENDPOINT, bucketOptions, filesUnder, s3Test, until } from './helpers/s3.js';
import { putBlob, readAll, tempDir, tempStore } from './helpers/store.js';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function open(t: ExecutionContext, root: string, o: StoreOptions): Promise<BlobStore> {
  const s = await BlobStore.open(root, o);
  t.teardown(() => s.close());
  return s;
}

/** How the proxy answers a presigned GET, given the real server's whole answer (head and body). */
type Answer = (real: { head: string; body: Buffer; raw: Buffer }, client: net.Socket, n: number) => Promise<void> | void;

interface OddServer {
  port: number;
  /** The answer for presigned GETs (undefined: passed through). */
  answer: Answer | undefined;
  /** Presigned GETs seen. */
  gets: number;
  close(): Promise<void>;
}

/** A proxy in front of the real server that lets `answer` reply to each presigned GET (the fetching thread's). */
async function oddServer(t: ExecutionContext): Promise<OddServer> {
  const target = Number(new URL(S3_ENDPOINT).port);
  const sockets = new Set<net.Socket>();
  const self: OddServer = { port: 0, answer: undefined, gets: 0, close: async () => {} };
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('error', () => {});
    client.on('close', () => sockets.delete(client));
    let first = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      first = Buffer.concat([first, d]);
      if (first.indexOf('\r\n\r\n') < 0) return;
      client.off('data', onData);
      client.pause();
      const line = first.toString('latin1', 0, first.indexOf('\r\n'));
      const upstream = net.connect(target, '127.0.0.1');
      sockets.add(upstream);
      upstream.on('error', () => {});
      upstream.on('close', () => sockets.delete(upstream));
      const answer = self.answer;
      if (!(line.startsWith('GET ') && line.includes('X-Amz-Signature') && answer)) {
        upstream.write(first);
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        return;
      }
      const n = ++self.gets;
      const parts: Buffer[] = [];
      upstream.write(first);
      upstream.on('data', (b: Buffer) => parts.push(b));
      upstream.on('end', () => {
        const raw = Buffer.concat(parts);
        const at = raw.indexOf('\r\n\r\n');
        void Promise.resolve(answer({ head: raw.toString('latin1', 0, at + 4), body: raw.subarray(at + 4), raw }, client, n)).catch(() => client.destroy());
      });
    };
    client.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  self.port = (server.address() as AddressInfo).port;
  self.close = () => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  };
  t.teardown(() => self.close());
  return self;
}

/** A blob written to the bucket by one store, and a second store reading it through the odd server. */
async function coldStore(t: ExecutionContext, bytes: Buffer, o: { fragmentSize?: number; root?: string; idleTimeout?: number } = {}) {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await open(t, path.join(tempDir(t), 'a'), { objectStore, fragmentSize: o.fragmentSize ?? 64 * MiB });
  const name = await putBlob(a, bytes);
  const odd = await oddServer(t);
  const idle = o.idleTimeout === undefined ? {} : { idleTimeout: o.idleTimeout };
  const b = await open(t, o.root ?? path.join(tempDir(t), 'b'), { objectStore: { ...objectStore, ...idle, endpoint: `http://127.0.0.1:${odd.port}` } });
  return { b, name, odd, objectStore };
}

/** Writes the pieces one after the other, a little apart, then ends the connection. */
async function dribble(client: net.Socket, pieces: Buffer[], gap = 2): Promise<void> {
  for (const p of pieces) {
    client.write(p);
    await sleep(gap);
  }
  client.end();
}

/** A read that must fail with a CabError, and no temp file of the cache left. */
async function failsClean(t: ExecutionContext, b: BlobStore, name: string, code: CabError['code']): Promise<CabError> {
  const e = await t.throwsAsync(readAll(b, name), { instanceOf: CabError });
  t.is(e!.code, code, e!.message);
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  return e!;
}

// ---------------------------------------------------------------- 1. the fetching thread against an odd server

s3Test('fetch: a response head split into 1-byte reads is read right', async (t) => {
  const bytes = prngBytes('h4 split', 3 * MiB + 17);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = async ({ head, body }, c) => {
    const pieces = [...Buffer.from(head, 'latin1')].map((x) => Buffer.from([x]));
    await dribble(c, [...pieces, body.subarray(0, 1), body.subarray(1)], 1);
  };
  t.true((await readAll(b, name)).equals(bytes));
  t.is(odd.gets, 1);
});

s3Test('fetch: a head longer than 64 KiB is ERR_OBJECT_STORE, no hang, no temp file', async (t) => {
  const bytes = prngBytes('h4 bighead', 1 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = async ({ head, body }, c) => {
    const i = head.indexOf('\r\n') + 2;
    const pad = `x-pad: ${'a'.repeat(70 * 1024)}\r\n`;
    await dribble(c, [Buffer.from(head.slice(0, i) + pad + head.slice(i), 'latin1'), body]);
  };
  await failsClean(t, b, name, 'ERR_OBJECT_STORE');
});

s3Test('fetch: a 500 then the real answer is tried again and read right', async (t) => {
  const bytes = prngBytes('h4 500', 2 * MiB + 3);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = ({ raw }, c, n) => {
    if (n === 1) c.end('HTTP/1.1 500 Internal Server Error\r\nContent-Length: 91\r\n\r\n<?xml version="1.0"?><Error><Code>InternalError</Code><Message>try again</Message></Error>');
    else c.end(raw);
  };
  t.true((await readAll(b, name)).equals(bytes));
  t.is(odd.gets, 2);
});

s3Test('fetch: a connection reset before any answer is tried again; three 503s are ERR_OBJECT_STORE with status 503', async (t) => {
  const bytes = prngBytes('h4 reset', 2 * MiB + 1);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = ({ raw }, c, n) => {
    if (n === 1) c.resetAndDestroy();
    else c.end(raw);
  };
  t.true((await readAll(b, name)).equals(bytes));
  t.is(odd.gets, 2);
  const bytes2 = prngBytes('h4 503', MiB + 1);
  const { b: b2, name: name2, odd: odd2 } = await coldStore(t, bytes2);
  odd2.answer = (_, c) => void c.end('HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n');
  const e = await failsClean(t, b2, name2, 'ERR_OBJECT_STORE');
  t.is(e.data.status, 503);
  t.is(odd2.gets, 3, 'three tries, as the SDK makes');
});

s3Test('fetch: a 403 is ERR_OBJECT_STORE with status 403 and the S3 code, not tried again', async (t) => {
  const bytes = prngBytes('h4 403', MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  const xml = '<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>';
  odd.answer = (_, c) => void c.end(`HTTP/1.1 403 Forbidden\r\nContent-Length: ${xml.length}\r\n\r\n${xml}`);
  const e = await failsClean(t, b, name, 'ERR_OBJECT_STORE');
  t.is(e.data.status, 403);
  t.is(e.data.s3Code, 'AccessDenied');
  t.is(odd.gets, 1);
});

s3Test('fetch: a 301 is ERR_OBJECT_STORE (status 301), never its body as the fragment', async (t) => {
  const bytes = prngBytes('h4 301', MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = (_, c) => void c.end('HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:1/x\r\nContent-Length: 5\r\n\r\nhello');
  const e = await failsClean(t, b, name, 'ERR_OBJECT_STORE');
  t.is(e.data.status, 301);
  t.deepEqual(filesUnder(b.root, 'cas'), []);
});

s3Test('fetch: a body shorter than its Content-Length, then close, is ERR_OBJECT_STORE; nothing cached; the next read is whole', async (t) => {
  const bytes = prngBytes('h4 short', 3 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = async ({ head, body }, c) => dribble(c, [Buffer.from(head, 'latin1'), body.subarray(0, body.length - 1000)]);
  await failsClean(t, b, name, 'ERR_OBJECT_STORE');
  t.deepEqual(filesUnder(b.root, 'cas'), []);
  odd.answer = undefined;
  t.true((await readAll(b, name)).equals(bytes));
});

s3Test('fetch: extra bytes after the body, in the same packet as the head, are not part of the fragment (small fragment read whole)', async (t) => {
  // A server that sends more than Content-Length (a buggy one, or a pipelined next answer) in the same read as the head: sendRaw's
  // head buffer holds the head, the whole small body and the extra bytes, and all of them are pushed into the ring.
  const bytes = prngBytes('h4 extra', 20_000);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = ({ raw }, c) => void c.end(Buffer.concat([raw, Buffer.from('HTTP/1.1 200 OK\r\n\r\nGARBAGE')]));
  t.true((await readAll(b, name)).equals(bytes), 'the fragment is its Content-Length bytes; the rest ignored');
  await until(() => filesUnder(b.root, 'cas').length === 1, 'the fragment cached');
  t.is(fs.statSync(filesUnder(b.root, 'cas')[0]!).size, bytes.length, 'no extra bytes in the cache');
});

s3Test('fetch: extra bytes after the body in a later packet are ignored; the fragment is cached at its size', async (t) => {
  const bytes = prngBytes('h4 extra later', 2 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = async ({ raw }, c) => dribble(c, [raw, Buffer.from('GARBAGE-GARBAGE')], 20);
  t.true((await readAll(b, name)).equals(bytes));
  await until(() => filesUnder(b.root, 'cas').length === 1, 'the fragment cached');
  t.is(fs.statSync(filesUnder(b.root, 'cas')[0]!).size, bytes.length);
});

s3Test('fetch: a 200 whose Content-Length (and body) is short of the fragment fails the read, and does not poison the cache', async (t) => {
  const bytes = prngBytes('h4 shortlen', 3 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = ({ head, body }, c) => {
    const cut = body.subarray(0, body.length - 4096);
    c.end(Buffer.concat([Buffer.from(head.replace(/Content-Length: \d+/i, `Content-Length: ${cut.length}`), 'latin1'), cut]));
  };
  const e = await t.throwsAsync(readAll(b, name), { instanceOf: CabError });
  t.truthy(e, 'the short fragment is an error');
  odd.answer = undefined; // the server is right again
  await sleep(500);
  t.true((await readAll(b, name)).equals(bytes), 'read again: fetched anew, not served from a short cached copy');
});

s3Test('fetch: a body changed in flight is ERR_HASH_MISMATCH, and does not poison the cache for later reads', async (t) => {
  const bytes = prngBytes('h4 flip', 3 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = ({ head, body }, c) => {
    const bad = Buffer.from(body);
    bad[bad.length >> 1] ^= 1;
    c.end(Buffer.concat([Buffer.from(head, 'latin1'), bad]));
  };
  t.is((await t.throwsAsync(readAll(b, name), { instanceOf: CabError }))!.code, 'ERR_HASH_MISMATCH');
  odd.answer = undefined;
  await sleep(500);
  t.true((await readAll(b, name)).equals(bytes), 'read again once the server is right: not the bad copy from cas/');
});

s3Test('fetch: many fragments at once, each through a dribbling server: every byte right, nothing left in tmp', async (t) => {
  const bytes = prngBytes('h4 many', 24 * MiB + 5);
  const { b, name, odd } = await coldStore(t, bytes, { fragmentSize: MiB });
  odd.answer = async ({ raw }, c) => {
    const pieces: Buffer[] = [];
    for (let i = 0; i < raw.length; i += 7919) pieces.push(raw.subarray(i, i + 7919));
    await dribble(c, pieces, 0);
  };
  const reads = await Promise.all(
    [0, 1, 2, 3].map(async (k) => {
      const r = await b.newBlobReader(name);
      try {
        const buf = Buffer.alloc(bytes.length);
        // Readers at different places, so many fragments are fetched at once.
        const start = Math.floor((k * bytes.length) / 4);
        let at = start;
        while (at < bytes.length) at += await r.readAt(buf.subarray(at, Math.min(bytes.length, at + 300_000)), at);
        at = 0;
        while (at < start) at += await r.readAt(buf.subarray(at, Math.min(start, at + 300_000)), at);
        return buf.equals(bytes);
      } finally {
        await r.close();
      }
    }),
  );
  t.deepEqual(reads, [true, true, true, true]);
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'no temp file');
});

s3Test('fetch: a reader that opens a fragment just as another reader closes it (stopping its GET) gets the bytes, not ERR_ABORTED', async (t) => {
  // Download.release stops the GET when its last reader goes, but the download stays in CasReader's map (and take() still
  // hands it out) until its 'fail' has come back and the temp file is removed: a reader arriving in that window shares a
  // download that is being cancelled and its read fails with ERR_ABORTED, though no one cancelled it.
  const bytes = prngBytes('h4 abort race', 24 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = async ({ raw }, c) => {
    const pieces: Buffer[] = [];
    for (let i = 0; i < raw.length; i += 64 * 1024) pieces.push(raw.subarray(i, i + 64 * 1024));
    await dribble(c, pieces, 5); // about 2 s for the fragment
  };
  const ra = await b.newBlobReader(name);
  const rb = await b.newBlobReader(name);
  const buf = Buffer.alloc(MiB);
  t.is(await ra.readAt(buf, 0), MiB);
  await ra.close(); // the GET's only reader goes: the GET is stopped
  const got = await rb.readAt(buf, 4 * MiB).then(
    (n) => (n === MiB && buf.equals(bytes.subarray(4 * MiB, 5 * MiB)) ? 'bytes' : 'wrong bytes'),
    (e: CabError) => e.code,
  );
  t.is(got, 'bytes');
  await rb.close();
});

s3Test('fetch: a server that stops mid-body does not hang the store close (a read in flight ends with a CabError)', async (t) => {
  const bytes = prngBytes('h4 stall', 6 * MiB);
  const { b, name, odd } = await coldStore(t, bytes);
  odd.answer = ({ head, body }, c) => void c.write(Buffer.concat([Buffer.from(head, 'latin1'), body.subarray(0, MiB)])); // then nothing, never closed
  const read = readAll(b, name).then(
    () => 'read whole?',
    (e: unknown) => (e instanceof CabError ? e.code : String(e)),
  );
  await until(() => odd.gets === 1, 'the GET');
  await sleep(500);
  const closed = await Promise.race([b.close().then(() => 'closed'), sleep(15_000).then(() => 'close hangs')]);
  t.is(closed, 'closed');
  const outcome = await Promise.race([read, sleep(5_000).then(() => 'read hangs after close')]);
  t.not(outcome, 'read hangs after close');
  await odd.close(); // lets a hung read go, so the file's other tests finish
});

s3Test('fetch: a server that stops mid-body, the connection left open: the read fails after idleTimeout with ERR_OBJECT_STORE (ETIMEDOUT), no temp file', async (t) => {
  const bytes = prngBytes('h4 idle body', 6 * MiB);
  const { b, name, odd } = await coldStore(t, bytes, { idleTimeout: 2000 });
  odd.answer = ({ head, body }, c) => void c.write(Buffer.concat([Buffer.from(head, 'latin1'), body.subarray(0, MiB)])); // then nothing, never closed
  const started = Date.now();
  const e = await failsClean(t, b, name, 'ERR_OBJECT_STORE');
  t.regex(e.message, /ETIMEDOUT|nothing from/);
  t.true(Date.now() - started >= 1900, 'not before the timeout');
  t.is(odd.gets, 1, 'a body begun is not tried again');
});

s3Test('fetch: a server that never answers: tried three times, each cut after idleTimeout, then ERR_OBJECT_STORE', async (t) => {
  const bytes = prngBytes('h4 idle head', 3 * MiB);
  const { b, name, odd } = await coldStore(t, bytes, { idleTimeout: 2000 });
  odd.answer = () => {}; // reads the request, answers nothing
  await failsClean(t, b, name, 'ERR_OBJECT_STORE');
  t.is(odd.gets, 3);
  odd.answer = undefined;
  t.true((await readAll(b, name)).equals(bytes), 'an answering server: read whole');
});

// ---------------------------------------------------------------- 2. the WebAssembly gear scan

/** FastCDC as DESIGN states it, one byte at a time, written here apart from src/chunker (the oracle). */
function referenceCuts(data: Uint8Array, p: { min: number; avg: number; max: number }): number[] {
  const bits = Math.log2(p.avg);
  const top = (b: number) => (0xffffffff << (32 - b)) | 0;
  const maskS = top(bits + 2);
  const maskL = top(bits - 2);
  const out: number[] = [];
  let start = 0;
  while (start < data.length) {
    let fp = 0;
    let len = Math.min(p.min, data.length - start);
    let cut = -1;
    while (start + len < data.length && len < p.max) {
      fp = ((fp << 1) + GEAR[data[start + len]!]!) | 0;
      len++;
      if ((fp & (len <= p.avg ? maskS : maskL)) === 0) {
        cut = len;
        break;
      }
    }
    if (cut < 0) cut = len;
    out.push(cut);
    start += cut;
  }
  return out;
}

function chunkIn(data: Uint8Array, p: { min: number; avg: number; max: number }, sizes: () => number): number[] {
  const c = new Chunker(p);
  const out: number[] = [];
  for (let o = 0; o < data.length; ) {
    const n = Math.max(1, Math.min(sizes(), data.length - o));
    c.push(data.subarray(o, o + n), out);
    o += n;
  }
  const last = c.end();
  if (last > 0) out.push(last);
  return out;
}

test('gear scan: cuts equal the byte-at-a-time oracle for odd inputs, pieces and parameters at their limits', (t) => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const inputs: Array<[string, Uint8Array]> = [
    ['random', prngBytes('h4 gear random', 3 * MiB + 777)],
    ['zero', new Uint8Array(2 * MiB + 5)],
    ['period 512', Buffer.alloc(2 * MiB, prngBytes('h4 p512', 512))],
    ['period 2048', Buffer.alloc(2 * MiB + 100, prngBytes('h4 p2048', 2048))],
    ['period 31', Buffer.alloc(MiB, prngBytes('h4 p31', 31))],
    ['ones', Buffer.alloc(MiB, 0xff)],
  ];
  const params = [
    { min: 64, avg: 128, max: 129 },
    { min: 64, avg: 128, max: 256 },
    { min: 127, avg: 128, max: 4096 },
    { min: 2048, avg: 4096, max: 8192 },
    { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
    { min: 64, avg: 32 * MiB, max: 64 * MiB },
  ];
  const splits: Array<[string, () => number]> = [
    ['whole', () => Number.MAX_SAFE_INTEGER],
    ['2047/2048/2049', () => 2047 + rnd(3)],
    ['random up to 3 MiB', () => 1 + rnd(3 * MiB)],
    ['small and large', () => (rnd(2) ? 1 + rnd(40) : 2048 + rnd(70_000))],
  ];
  for (const [what, data] of inputs) {
    for (const p of params) {
      const want = referenceCuts(data, p);
      for (const [how, sizes] of splits) t.deepEqual(chunkIn(data, p, sizes), want, `${what}, ${JSON.stringify(p)}, ${how}`);
    }
  }
  const small = prngBytes('h4 gear bytes', 200_000);
  t.deepEqual(chunkIn(small, { min: 64, avg: 128, max: 256 }, () => 1), referenceCuts(small, { min: 64, avg: 128, max: 256 }), '1-byte pieces');
});

test('gear scan: a huge input (> DATA_MAX in one piece, max 64 MiB) and a chunker resumed at each boundary cut alike', (t) => {
  const data = prngBytes('h4 gear huge', 70 * MiB);
  const p = { min: 64, avg: 16 * MiB, max: 64 * MiB };
  const want = referenceCuts(data, p);
  t.deepEqual(chunkIn(data, p, () => data.length), want);
  // Resumed: a new Chunker from each boundary, fed the rest in 1 MiB + 1 pieces, gives the same next cut.
  const q = { min: 64, avg: 256, max: 1024 };
  const d2 = prngBytes('h4 gear resume', 4 * MiB + 3);
  const all = referenceCuts(d2, q);
  let at = 0;
  let bad = 0;
  for (const [k, size] of all.entries()) {
    if (k % 97 === 0) {
      const c = new Chunker(q);
      const got = c.push(d2.subarray(at, Math.min(d2.length, at + MiB + 1)));
      if ((got[0] ?? c.end()) !== size) bad++;
    }
    at += size;
  }
  t.is(bad, 0);
});

// ---------------------------------------------------------------- 1b. the cache on a full (tmpfs) disk

/** A fresh tmpfs of `mb` MiB, unmounted and removed when the test ends. */
function smallTmpfs(t: ExecutionContext, mb: number): string {
  const dir = fs.mkdtempSync(path.join(tempDir(t), 'tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${mb}m`, 'tmpfs', dir]);
  t.teardown(() => {
    execFileSync('umount', ['-l', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

s3Test('fetch: the cache on a full tmpfs: a read is the bytes or a CabError, never wrong, no temp file left, no hang; later reads still work', async (t) => {
  const bytes = prngBytes('h4 enospc', 30 * MiB);
  const root = path.join(smallTmpfs(t, 20), 's');
  const { b, name } = await coldStore(t, bytes, { root });
  const got = await Promise.race([
    readAll(b, name).then(
      (x) => (x.equals(bytes) ? 'bytes' : 'WRONG BYTES'),
      (e: unknown) => (e instanceof CabError ? e.code : `not a CabError: ${String(e)}`),
    ),
    sleep(30_000).then(() => 'hang'),
  ]);
  t.true(got === 'bytes' || got === 'ERR_NO_SPACE', got);
  await until(() => filesUnder(b.root, 'tmp').length === 0, 'the temp file to go');
  // A range near the end, read through the same full disk: the bytes, or ERR_NO_SPACE.
  const r = await b.newBlobReader(name);
  const buf = Buffer.alloc(MiB);
  const tail = await r.readAt(buf, bytes.length - MiB).then(
    () => (buf.equals(bytes.subarray(bytes.length - MiB)) ? 'bytes' : 'WRONG BYTES'),
    (e: unknown) => (e instanceof CabError ? e.code : String(e)),
  );
  await r.close();
  t.true(tail === 'bytes' || tail === 'ERR_NO_SPACE', tail);
  t.log(`whole read: ${got}; tail: ${tail}`);
});

s3Test('fetch: a store on tmpfs (O_DIRECT where the kernel takes it, else the page cache) reads byte-exact and caches', async (t) => {
  const bytes = prngBytes('h4 tmpfs', 9 * MiB + 4097);
  const root = path.join(smallTmpfs(t, 200), 's');
  const { b, name } = await coldStore(t, bytes, { root });
  t.true((await readAll(b, name)).equals(bytes));
  await until(() => filesUnder(b.root, 'cas').length === 1, 'cached');
  t.is(fs.statSync(filesUnder(b.root, 'cas')[0]!).size, bytes.length);
  t.true((await readAll(b, name)).equals(bytes), 'from the cache');
});

// ---------------------------------------------------------------- 4. fragment names sharing their directory

const INDEX_JS = fileURLToPath(new URL('../src/index.js', import.meta.url));
const DATA_JS = fileURLToPath(new URL('../tools/data.js', import.meta.url));

const blobName = (tag: string, i: number) => (tag === 'pa' ? 'a' : 'b') + i.toString(16).padStart(31, '0');

/** A child process writing `n` blobs (each sealing fragments of its own) into the store at `dir`, deleting every third. */
function writer(dir: string, tag: string, n: number): Promise<number | null> {
  const code = `
    import { BlobStore } from ${JSON.stringify(INDEX_JS)};
    import { prngBytes } from ${JSON.stringify(DATA_JS)};
    const s = await BlobStore.open(${JSON.stringify(dir)}, { fragmentSize: 4096 });
    for (let i = 0; i < ${n}; i++) {
      const w = await s.newBlobWriter('${tag === 'pa' ? 'a' : 'b'}' + i.toString(16).padStart(31, '0'));
      await w.appendBytes(prngBytes('${tag}' + i, 9000 + i));
      await w.close();
      if (i % 3 === 2) await s.deleteBlob('${tag === 'pa' ? 'a' : 'b'}' + (i - 1).toString(16).padStart(31, '0'));
    }
    await s.close();`;
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'inherit', 'inherit'] });
    c.on('exit', (status) => resolve(status));
  });
}

test('fragment names: two processes writing 300 blobs each (over 256 fragments per directory prefix) while gc runs: fsck clean, every blob byte-exact', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  const N = 300;
  let gcs = 0;
  let running = true;
  const children = Promise.all([writer(dir, 'pa', N), writer(dir, 'pb', N)]).finally(() => (running = false));
  while (running) {
    await s.gc();
    gcs++;
    await sleep(50);
  }
  t.deepEqual(await children, [0, 0]);
  await s.gc();
  const rep = await s.fsck({ verify: true });
  t.deepEqual(rep.problems, []);
  t.deepEqual(rep.damaged, []);
  let bad = 0;
  for (const tag of ['pa', 'pb']) {
    for (let i = 0; i < N; i++) {
      const deleted = i % 3 === 1 && i + 1 < N;
      if (deleted) continue;
      if (!(await readAll(s, blobName(tag, i))).equals(prngBytes(tag + i, 9000 + i))) bad++;
    }
  }
  t.is(bad, 0);
  const dirs = fs.readdirSync(path.join(dir, 'cas'), { recursive: true }).length;
  t.log(`${gcs} gc runs during the writes; ${rep.fragments} fragments; ${dirs} entries under cas/`);
});

// ---------------------------------------------------------------- 7. range serving from the leaf layer

test('leaf layer: damaged, truncated, replaced by another blob\'s and deleted while its tree is cached, under concurrent range reads: every read verified and right', async (t) => {
  const a = await tempStore(t);
  const b = await tempStore(t);
  const bytes = prngBytes('h4 layer', 24 * MiB + 5000);
  const other = prngBytes('h4 layer other', 24 * MiB + 5000);
  const name = await putBlob(a, bytes);
  const otherName = await putBlob(a, other);
  const srv = await serve(a, { tokens: { tok: ['read'] } });
  t.teardown(() => srv.close());
  const c = await connect(b, srv.url, { token: 'tok' });
  t.teardown(() => c.close());
  const r = await c.openReader(name);
  t.teardown(() => r.close());
  const ro = await c.openReader(otherName);
  t.teardown(() => ro.close());
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const round = async (what: string) => {
    const outcomes = await Promise.all(
      Array.from({ length: 12 }, async () => {
        const pos = rnd(bytes.length - 70_000);
        const n = 1 + rnd(70_000);
        const buf = Buffer.alloc(n);
        try {
          const got = await r.readAt(buf, pos);
          return got === n && buf.equals(bytes.subarray(pos, pos + n)) ? 'ok' : `wrong at ${pos}+${n}`;
        } catch (e) {
          return e instanceof CabError ? `${e.code} at ${pos}+${n}` : String(e);
        }
      }),
    );
    t.deepEqual(outcomes.filter((o) => o !== 'ok'), [], what);
  };
  const layer = (n: string) => path.join(a.root, 'layers', n.slice(0, 2), n);
  await round('first: the layer made');
  await ro.readAt(Buffer.alloc(10), 5 * MiB); // the other blob's layer made too
  t.true(fs.existsSync(layer(name)) && fs.existsSync(layer(otherName)));
  // Damaged in the middle of a group's leaf hashes.
  const fd = fs.openSync(layer(name), 'r+');
  const at = 48 + 32 * 64 * 7 + 100;
  const one = Buffer.alloc(1);
  fs.readSync(fd, one, 0, 1, at);
  one[0] ^= 0xff;
  fs.writeSync(fd, one, 0, 1, at);
  fs.closeSync(fd);
  await round('after a flipped byte');
  fs.truncateSync(layer(name), 48 + 32 * 64 * 3);
  await round('after truncation');
  fs.copyFileSync(layer(otherName), layer(name));
  await round('after another blob\'s layer was put in its place');
  fs.rmSync(layer(name));
  await Promise.all([round('after deletion (1)'), round('after deletion (2)')]);
});

// ---------------------------------------------------------------- 6. Range parsing

test('parseRange: odd headers (RFC 9110 14.1.2): whitespace, case, empty blobs, multiple ranges, signs, exponents, huge numbers', (t) => {
  const all = { kind: 'all' };
  const no = { kind: 'unsatisfiable' };
  const r = (start: number, end: number) => ({ kind: 'range', start, end });
  const cases: Array<[string | undefined, number, object]> = [
    ['bytes=0-0', 10, r(0, 1)],
    ['bytes=9-9', 10, r(9, 10)],
    ['bytes=10-10', 10, no],
    ['bytes=-1', 10, r(9, 10)],
    ['bytes=-0', 10, no],
    ['bytes=-5', 0, no],
    ['bytes=0-', 0, no],
    ['bytes=0-0,2-3', 10, all],
    ['bytes=5-4', 10, all],
    ['bytes=+1-2', 10, all],
    ['bytes=1e3-', 10000, all],
    ['bytes=0x10-', 100, all],
    ['bytes=-', 10, all],
    ['bytes=', 10, all],
    ['items=0-1', 10, all],
    ['BYTES=1-2', 10, r(1, 3)],
    ['bytes=99999999999999999999-', 10, no],
    ['bytes=0-99999999999999999999', 10, r(0, 10)],
    ['bytes=-99999999999999999999', 10, r(0, 10)],
  ];
  for (const [h, size, want] of cases) t.deepEqual(parseRange(h, size), want, `${h} of ${size}`);
});
