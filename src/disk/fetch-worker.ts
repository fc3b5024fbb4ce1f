// The fetching thread: GETs of whole fragments from the bucket into the
// cache, so that the socket, the HTTP parsing and the cache file's writes
// are off the thread that hashes and serves the bytes. Each GET's bytes go
// into a ring in shared memory and from there into the cache file; the
// counters beside the ring tell the main thread how far both have come.
// See disk/fetch-thread.ts for the protocol, disk/fetch-sink.ts for a GET.
//
// Over plain HTTP the body is read by the socket straight into the ring
// (net.Socket's `onread`), the response head parsed here: a GET of an
// object is one status line, a few headers and Content-Length bytes. The
// http module's response stream cost a buffer per socket read, a copy of
// it into the ring, and collections of those buffers (docs/BENCHMARKS.md,
// 2026-12-05). HTTPS, and an answer that is not that plain (no
// Content-Length, a transfer coding), go through the http module.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { parentPort } from 'node:worker_threads';
import type { FetchFailure, ToFetcher } from './fetch-thread.js';
import { ioFailure, post, Sink } from './fetch-sink.js';

const agents = { 'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }), 'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }) };
const ATTEMPTS = 3;
/** Statuses and errnos worth another try before the body has begun (the SDK's retry rule for a GetObject). */
const TRANSIENT = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED']);
const CONNECT_TIMEOUT = 10_000;
/** The most bytes of a response head (and of an error's body) read. */
const HEAD_MAX = 64 * 1024;

const gets = new Map<number, Sink>();

parentPort!.on('message', (m: ToFetcher) => {
  if (m.t === 'get') {
    const s = new Sink(m, () => gets.delete(m.id));
    gets.set(m.id, s);
    const url = new URL(m.url);
    if (url.protocol === 'http:') sendRaw(s, url, 1);
    else sendHttp(s, url, 1);
    return;
  }
  const s = gets.get(m.id);
  if (!s) return;
  if (m.t === 'resume') s.release(false);
  else s.fail({ kind: 'abort', message: 'aborted' });
});

type Send = (s: Sink, url: URL, attempt: number) => void;

/** A failure before the body began: tried again if it may pass (as the SDK does a GetObject), else the GET's end. */
function retryOrFail(s: Sink, f: FetchFailure, url: URL, attempt: number, send: Send): void {
  if (s.stopped) return;
  const again = attempt < ATTEMPTS && (f.status !== undefined ? f.status >= 500 || f.status === 429 || f.status === 408 : TRANSIENT.has(f.s3Code ?? ''));
  if (!again) return void s.fail(f);
  s.source = undefined;
  setTimeout(() => !s.stopped && send(s, url, attempt + 1), 100 * 4 ** attempt);
}

/** The S3 error in an answer's XML body. */
function s3Failure(status: number, xml: string, statusText: string): FetchFailure {
  const s3Code = /<Code>([^<]*)<\/Code>/.exec(xml)?.[1] ?? (status === 404 ? 'NotFound' : undefined);
  return { kind: 'http', s3Code, status, message: /<Message>([^<]*)<\/Message>/.exec(xml)?.[1] ?? statusText };
}

/** The error of a request on which nothing moved for `ms` (ObjectStoreOptions.idleTimeout): a failed connection, tried again before the body began. */
const idleError = (ms: number, host: string) => Object.assign(new Error(`nothing from ${host} for ${ms} ms`), { code: 'ETIMEDOUT' });

/** A connection not made in CONNECT_TIMEOUT (the SDK's connectionTimeout) is cut: a slow answer on one made is waited for. */
function connectTimer(socket: net.Socket, host: string): void {
  if (!socket.connecting) return; // a kept-alive one, made already
  const timer = setTimeout(() => socket.destroy(Object.assign(new Error(`no connection to ${host} in ${CONNECT_TIMEOUT} ms`), { code: 'ETIMEDOUT' })), CONNECT_TIMEOUT);
  socket.once('connect', () => clearTimeout(timer));
  socket.once('close', () => clearTimeout(timer));
}

/** The GET on a socket of its own (`Connection: close`), its body read into the ring. */
function sendRaw(s: Sink, url: URL, attempt: number): void {
  const head = Buffer.allocUnsafe(HEAD_MAX);
  let headLen = 0;
  /** 'head' until the blank line; then 'body' (200) or 'error' (the error's body, into `head`). */
  let phase: 'head' | 'body' | 'error' = 'head';
  let size = -1;
  let status = 0;
  let errFrom = 0;
  let errTo = 0;
  let settled = false;
  const settle = () => {
    settled = true;
    socket.destroy();
  };
  const failed = (f: FetchFailure) => {
    if (settled) return;
    settle();
    if (phase === 'body') s.fail(f);
    else retryOrFail(s, f, url, attempt, sendRaw);
  };
  const errorDone = () => {
    settle();
    retryOrFail(s, s3Failure(status, head.toString('utf8', errFrom, Math.min(errTo, headLen)), ''), url, attempt, sendRaw);
  };
  const onHead = (end: number): boolean => {
    const lines = head.toString('latin1', 0, end).split('\r\n');
    status = Number(lines[0]!.split(' ')[1]);
    const h = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      if (i > 0) h.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
    }
    const length = h.get('content-length');
    if (status !== 200) {
      phase = 'error';
      errFrom = end + 4;
      errTo = length !== undefined ? errFrom + Number(length) : HEAD_MAX;
      if (headLen >= errTo) errorDone();
      return !settled;
    }
    if (length === undefined || !/^\d+$/.test(length) || h.has('transfer-encoding')) {
      settle(); // not a plain body: the http module reads it
      sendHttp(s, url, attempt);
      return false;
    }
    size = Number(length);
    phase = 'body';
    post({ t: 'head', id: s.m.id, size, etag: h.get('etag') ?? '' });
    try {
      s.push(head.subarray(end + 4, Math.min(headLen, end + 4 + size))); // bytes past the body are not the fragment's
    } catch (e) {
      settle();
      s.fail(ioFailure(e));
      return false;
    }
    return onBody();
  };
  const onBody = (): boolean => {
    if (s.have >= size) {
      settle();
      s.finish(size);
      return false;
    }
    s.after();
    return true;
  };
  const socket = net.connect({
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'), // an IPv6 address without its URL brackets
    port: Number(url.port) || 80,
    onread: {
      buffer: () => (phase === 'body' ? s.space(size - s.have) : head.subarray(headLen)),
      callback: (n: number): boolean => {
        if (settled || s.stopped) return false;
        if (phase === 'body') {
          try {
            s.landed(n);
          } catch (e) {
            settle();
            s.fail(ioFailure(e));
            return false;
          }
          return onBody();
        }
        headLen += n;
        if (phase === 'error') {
          if (headLen >= errTo || headLen === HEAD_MAX) errorDone();
          return !settled;
        }
        const end = head.subarray(0, headLen).indexOf('\r\n\r\n');
        if (end >= 0) return onHead(end);
        if (headLen === HEAD_MAX) failed({ kind: 'http', message: `a response head longer than ${HEAD_MAX} bytes` });
        return !settled;
      },
    },
  });
  s.source = { pause: () => socket.pause(), resume: () => socket.resume(), destroy: () => socket.destroy() };
  connectTimer(socket, url.host);
  socket.setTimeout(s.m.idleMs, () => socket.destroy(idleError(s.m.idleMs, url.host)));
  socket.on('error', (e: NodeJS.ErrnoException) => failed({ kind: 'http', s3Code: e.code ?? e.name, message: e.message }));
  socket.on('end', () => {
    if (phase === 'error' && !settled) errorDone();
    else failed({ kind: 'http', s3Code: 'ECONNRESET', message: 'the connection closed before the end of the answer' });
  });
  socket.on('close', () => failed({ kind: 'http', s3Code: 'ECONNRESET', message: 'the connection closed before the end of the answer' }));
  const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, ...Object.entries(s.m.headers).map(([k, v]) => `${k}: ${v}`), 'connection: close', '', ''];
  socket.write(lines.join('\r\n'), 'latin1');
}

/** The GET through the http module (HTTPS, or an answer sendRaw does not read): each body buffer copied into the ring. */
function sendHttp(s: Sink, url: URL, attempt: number): void {
  let body = false;
  const mod = url.protocol === 'https:' ? https : http;
  const req = mod.request(url, { method: 'GET', headers: s.m.headers, agent: agents[url.protocol as 'http:'] }, (res) => {
    if (res.statusCode !== 200) {
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (b: Buffer) => n < HEAD_MAX && (parts.push(b), (n += b.length)));
      res.on('end', () => retryOrFail(s, s3Failure(res.statusCode!, Buffer.concat(parts).toString('utf8'), res.statusMessage ?? ''), url, attempt, sendHttp));
      res.on('error', (e: NodeJS.ErrnoException) => retryOrFail(s, { kind: 'http', s3Code: e.code, message: e.message }, url, attempt, sendHttp));
      return;
    }
    body = true;
    const size = Number(res.headers['content-length']);
    post({ t: 'head', id: s.m.id, size: Number.isSafeInteger(size) ? size : -1, etag: String(res.headers.etag ?? '') });
    s.source = res;
    res.on('data', (b: Buffer) => {
      if (s.stopped) return;
      try {
        s.push(b);
      } catch (e) {
        return s.fail(ioFailure(e));
      }
      s.after();
    });
    res.on('end', () => !s.stopped && s.finish(Number.isSafeInteger(size) ? size : -1));
    res.on('error', (e: NodeJS.ErrnoException) => !s.stopped && s.fail({ kind: 'http', s3Code: e.code ?? e.name, message: e.message }));
    res.on('aborted', () => !s.stopped && s.fail({ kind: 'http', s3Code: 'ECONNRESET', message: 'the connection closed before the end of the body' }));
  });
  s.source = { pause() {}, resume() {}, destroy: () => req.destroy() };
  req.on('socket', (socket) => connectTimer(socket, url.host));
  req.setTimeout(s.m.idleMs, () => req.destroy(idleError(s.m.idleMs, url.host)));
  req.on('error', (e: NodeJS.ErrnoException) => !body && retryOrFail(s, { kind: 'http', s3Code: e.code ?? e.name, message: e.message }, url, attempt, sendHttp));
  req.end();
}
