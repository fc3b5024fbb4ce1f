// The fetching thread: GETs of whole fragments from the bucket into the
// cache, so that the socket, the HTTP parsing and the cache file's writes
// are off the thread that hashes and serves the bytes. Each GET's bytes go
// into a ring in shared memory and from there into the cache file; the
// counters beside the ring tell the main thread how far both have come.
// See disk/fetch-thread.ts for the protocol.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parentPort } from 'node:worker_threads';
import { C_HAVE, C_WANT, C_WANT_WRITTEN, C_WRITTEN, MAX_TAKE, RING, WRITE_BLOCK, type FromFetcher, type ToFetcher } from './fetch-thread.js';

const port = parentPort!;
const agents = { 'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }), 'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }) };
const ATTEMPTS = 3;
/** Statuses and errnos worth another try before the body has begun (the SDK's retry rule for a GetObject). */
const TRANSIENT = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED']);
const CONNECT_TIMEOUT = 10_000;

interface Get {
  m: Extract<ToFetcher, { t: 'get' }>;
  ring: Buffer;
  ctl: BigInt64Array;
  req?: http.ClientRequest;
  stopped: boolean;
  ended: boolean;
}

const gets = new Map<number, Get>();
const post = (m: FromFetcher) => port.postMessage(m);

port.on('message', (m: ToFetcher) => {
  if (m.t === 'get') {
    const g: Get = { m, ring: Buffer.from(m.ring), ctl: new BigInt64Array(m.ctl), stopped: false, ended: false };
    gets.set(m.id, g);
    send(g, 1);
  } else {
    const g = gets.get(m.id);
    if (!g) return;
    g.stopped = true;
    g.req?.destroy();
    end(g, { t: 'fail', id: m.id, kind: 'abort', message: 'aborted' });
  }
});

/** The last message of a GET: after it, nothing of its ring or file is touched here. */
function end(g: Get, m: FromFetcher): void {
  if (g.ended) return;
  g.ended = true;
  gets.delete(g.m.id);
  post(m);
}

function send(g: Get, attempt: number): void {
  const { m } = g;
  const url = new URL(m.url);
  const mod = url.protocol === 'https:' ? https : http;
  let body = false;
  const retry = (f: { s3Code?: string; status?: number; message: string }) => {
    const again = !body && !g.stopped && attempt < ATTEMPTS && (f.status !== undefined ? f.status >= 500 || f.status === 429 || f.status === 408 : TRANSIENT.has(f.s3Code ?? ''));
    if (again) setTimeout(() => !g.stopped && send(g, attempt + 1), 100 * 4 ** attempt);
    else end(g, { t: 'fail', id: m.id, kind: 'http', ...f });
  };
  const req = mod.request(url, { method: 'GET', headers: m.headers, agent: agents[url.protocol as 'http:'] }, (res) => {
    if (res.statusCode !== 200) {
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (b: Buffer) => n < 65536 && (parts.push(b), (n += b.length)));
      res.on('end', () => {
        const xml = Buffer.concat(parts).toString('utf8');
        const s3Code = /<Code>([^<]*)<\/Code>/.exec(xml)?.[1] ?? (res.statusCode === 404 ? 'NotFound' : undefined);
        retry({ s3Code, status: res.statusCode, message: /<Message>([^<]*)<\/Message>/.exec(xml)?.[1] ?? res.statusMessage ?? '' });
      });
      res.on('error', (e: NodeJS.ErrnoException) => retry({ s3Code: e.code, message: e.message }));
      return;
    }
    body = true;
    const size = Number(res.headers['content-length']);
    post({ t: 'head', id: m.id, size: Number.isSafeInteger(size) ? size : -1, etag: String(res.headers.etag ?? '') });
    pump(g, res, size);
  });
  g.req = req;
  // A connection not made in CONNECT_TIMEOUT (the SDK's connectionTimeout): a slow answer on one made is waited for.
  const timer = setTimeout(() => req.destroy(Object.assign(new Error(`no connection to ${url.host} in ${CONNECT_TIMEOUT} ms`), { code: 'ETIMEDOUT' })), CONNECT_TIMEOUT);
  req.on('socket', (s) => (s.connecting ? s.once('connect', () => clearTimeout(timer)) : clearTimeout(timer)));
  req.on('error', (e: NodeJS.ErrnoException) => {
    clearTimeout(timer);
    if (!g.stopped && !body) retry({ s3Code: e.code ?? e.name, message: e.message });
  });
  req.end();
}

/** The body into the ring and the cache file: every byte written in order, the counters advanced after. */
function pump(g: Get, res: http.IncomingMessage, size: number): void {
  const { ring, ctl, m } = g;
  let have = 0;
  let written = 0;
  const fail = (f: Omit<Extract<FromFetcher, { t: 'fail' }>, 't' | 'id'>) => {
    g.stopped = true;
    res.destroy();
    end(g, { t: 'fail', id: m.id, bytes: have, ...f });
  };
  const writeOut = () => {
    while (written < have) {
      const at = written % RING;
      const n = Math.min(have - written, RING - at);
      written += fs.writeSync(m.fd, ring, at, n, written);
    }
    Atomics.store(ctl, C_WRITTEN, BigInt(written));
  };
  const tell = () => {
    // The main thread said how far it waits: tell it once that is reached (it sets the mark, then looks again).
    const want = Atomics.load(ctl, C_WANT);
    const wantW = Atomics.load(ctl, C_WANT_WRITTEN);
    let wake = false;
    if (want >= 0n && BigInt(have) >= want && Atomics.compareExchange(ctl, C_WANT, want, -1n) === want) wake = true;
    if (wantW >= 0n && BigInt(written) >= wantW && Atomics.compareExchange(ctl, C_WANT_WRITTEN, wantW, -1n) === wantW) wake = true;
    if (wake) post({ t: 'tick', id: m.id });
  };
  res.on('data', (b: Buffer) => {
    if (g.stopped) return;
    try {
      for (let o = 0; o < b.length; ) {
        // Ring bytes are overwritten only once in the file: written is never WRITE_BLOCK behind, and the ring is far larger.
        const at = have % RING;
        const take = Math.min(b.length - o, RING - at, MAX_TAKE);
        ring.set(b.subarray(o, o + take), at);
        o += take;
        have += take;
        Atomics.store(ctl, C_HAVE, BigInt(have));
        if (have - written >= WRITE_BLOCK) writeOut();
      }
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return fail({ kind: 'io', s3Code: err.code, message: err.message });
    }
    tell();
  });
  res.on('end', () => {
    if (g.stopped) return;
    try {
      writeOut();
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return fail({ kind: 'io', s3Code: err.code, message: err.message });
    }
    if (size >= 0 && have !== size) return fail({ kind: 'short', message: `the server sent ${have} of ${size} bytes` });
    end(g, { t: 'done', id: m.id, bytes: have });
  });
  res.on('error', (e: NodeJS.ErrnoException) => !g.stopped && fail({ kind: 'http', s3Code: e.code ?? e.name, message: e.message }));
  res.on('aborted', () => !g.stopped && fail({ kind: 'http', s3Code: 'ECONNRESET', message: 'the connection closed before the end of the body' }));
}
