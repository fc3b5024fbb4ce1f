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
import { copyShared, C_HAVE, C_PAUSED, C_READ_AT, C_RING_AT, STALL_MS, C_WANT, C_WANT_WRITTEN, C_WRITTEN, MAX_TAKE, RING, RING_SLACK, WRITE_BLOCK, type FromFetcher, type ToFetcher } from './fetch-thread.js';

const port = parentPort!;
const agents = { 'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }), 'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }) };
const ATTEMPTS = 3;
/** Statuses and errnos worth another try before the body has begun (the SDK's retry rule for a GetObject). */
const TRANSIENT = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED']);
const CONNECT_TIMEOUT = 10_000;
/** What a direct write's offsets, lengths and memory are aligned to (a logical block of any disk). */
const DIRECT_ALIGN = 4096;

interface Get {
  m: Extract<ToFetcher, { t: 'get' }>;
  ring: Buffer;
  ctl: BigInt64Array;
  req?: http.ClientRequest;
  /** The cache file opened with O_DIRECT, or -1 (writes go through the page cache, by `m.fd`). */
  direct: number;
  /** The body being read (once the server answered 200). */
  res?: http.IncomingMessage;
  /** Held back for a reader, and the timer that stops that. */
  held?: NodeJS.Timeout;
  /** No more holding back: a reader did not keep up. */
  free: boolean;
  stopped: boolean;
  ended: boolean;
}

const gets = new Map<number, Get>();
const post = (m: FromFetcher) => port.postMessage(m);

port.on('message', (m: ToFetcher) => {
  if (m.t === 'get') {
    const ctl = new BigInt64Array(m.ctl);
    const { fd, at } = openDirect(m.tmp, m.ring);
    Atomics.store(ctl, C_RING_AT, BigInt(at));
    const g: Get = { m, ring: Buffer.from(m.ring, at, RING), ctl, direct: fd, free: false, stopped: false, ended: false };
    gets.set(m.id, g);
    send(g, 1);
  } else if (m.t === 'resume') {
    const g = gets.get(m.id);
    if (g) release(g, false);
  } else {
    const g = gets.get(m.id);
    if (!g) return;
    clearTimeout(g.held);
    g.stopped = true;
    g.req?.destroy();
    end(g, { t: 'fail', id: m.id, kind: 'abort', message: 'aborted' });
  }
});

/** Stops holding the body back (`free`: for good). */
function release(g: Get, free: boolean): void {
  g.free ||= free;
  clearTimeout(g.held);
  g.held = undefined;
  Atomics.store(g.ctl, C_PAUSED, 0n);
  if (!g.stopped) g.res?.resume();
}

/** The last message of a GET: after it, nothing of its ring or file is touched here. */
function end(g: Get, m: FromFetcher): void {
  if (g.ended) return;
  g.ended = true;
  clearTimeout(g.held);
  gets.delete(g.m.id);
  if (g.direct >= 0) fs.closeSync(g.direct);
  g.direct = -1;
  post(m);
}

/**
 * The cache file opened again with O_DIRECT, and the offset in the ring's
 * memory from which a direct write is taken (its address aligned): found
 * by trying, since an unaligned one fails with EINVAL before any I/O. The
 * trial writes land at the file's start, which the first block overwrites
 * (and the end truncates). Where the file system refuses O_DIRECT (tmpfs),
 * fd -1: writes go through the page cache.
 */
function openDirect(tmp: string, ring: SharedArrayBuffer): { fd: number; at: number } {
  if (!fs.constants.O_DIRECT) return { fd: -1, at: 0 };
  let fd: number;
  try {
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch {
    return { fd: -1, at: 0 };
  }
  const mem = Buffer.from(ring);
  for (let at = 0; at < RING_SLACK; at += 16) {
    try {
      fs.writeSync(fd, mem, at, DIRECT_ALIGN, 0);
      return { fd, at };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') break;
    }
  }
  fs.closeSync(fd);
  return { fd: -1, at: 0 };
}

/** Writes all `n` bytes of buf[off..] at `pos`. */
function writeAll(fd: number, buf: Buffer, off: number, n: number, pos: number): void {
  for (let done = 0; done < n; ) done += fs.writeSync(fd, buf, off + done, n - done, pos + done);
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
    g.res = res;
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
  // Whole blocks, at multiples of WRITE_BLOCK (so never across the ring's end, and aligned for O_DIRECT); with `all`, the tail too.
  const writeOut = (all: boolean) => {
    while (have - written >= WRITE_BLOCK || (all && written < have)) {
      const n = Math.min(WRITE_BLOCK, have - written);
      const at = written % RING;
      if (g.direct >= 0 && n === WRITE_BLOCK) {
        try {
          writeAll(g.direct, ring, at, n, written);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
          fs.closeSync(g.direct); // refused after all: through the page cache from here on
          g.direct = -1;
          continue;
        }
      } else writeAll(m.fd, ring, at, n, written);
      written += n;
    }
    if (all) fs.ftruncateSync(m.fd, have); // the trial writes of openDirect may have gone past a short file's end
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
        copyShared(ring, at, b, o, take);
        o += take;
        have += take;
        Atomics.store(ctl, C_HAVE, BigInt(have));
        if (have - written >= WRITE_BLOCK) writeOut(false);
      }
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return fail({ kind: 'io', s3Code: err.code, message: err.message });
    }
    tell();
    // The ring nearly full of bytes no reader has copied: hold the body back (see fetch-thread.ts).
    if (!g.free && !g.held && have - Number(Atomics.load(ctl, C_READ_AT)) > RING - 2 * MAX_TAKE) {
      res.pause();
      Atomics.store(ctl, C_PAUSED, 1n);
      g.held = setTimeout(() => release(g, true), STALL_MS);
    }
  });
  res.on('end', () => {
    if (g.stopped) return;
    try {
      writeOut(true);
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
