import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from './ws-lib.js';
import { CabError, ioError, throwIfAborted } from '../errors.js';
import type { BlobStore } from '../store.js';
import { MAX_FRAME, MAX_GET_BYTES, encode, type Perm } from './messages.js';
import { Peer, DEFAULT_IDLE_MS, DEFAULT_MAX_REQUESTS, type PushOptions, type PushResult, type Transport } from './peer.js';
import type { ReceiveOptions, TransferStats } from './stats.js';
import { ByteBudget } from './budget.js';
import type { ServeEvent } from './serve.js';
import { ServeAccount } from './serve-event.js';
import { Admission, DEFAULT_HELLO_TIMEOUT_MS, type AdmissionOptions } from './admission.js';
import { authenticate } from './handshake.js';
import { wire, wsTransport } from './ws-transport.js';
import { lively } from './ws-life.js';
import { orAbort } from './abort.js';
import { checkConnectArgs, checkMaxFrame } from './connect-args.js';
import type { Readable } from 'node:stream';
import { checkBlobName } from '../format/layout.js';
import { remoteStream, type RemoteStreamOptions } from './follow-remote.js';
import type { WireCount } from './stats.js';
import { RemoteBlobReader, type OpenReaderOptions } from './remote-reader.js';

export type { WireCount } from './stats.js';

/** Bytes of `get` answers (data frames) a server reads and buffers at once, over all its connections. */
export const DEFAULT_MAX_GET_MEMORY = 64 * 1024 * 1024;
/** How long connect waits for the upgrade and the welcome together. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** Largest frame a connection may send before it is welcomed (a hello is small): more closes it with 1009. */
export const HELLO_MAX_FRAME = 64 * 1024;

/**
 * Also, from AdmissionOptions: `maxConnections` open at once (256), `maxPending` connections not yet welcomed (64),
 * `helloTimeoutMs` to be welcomed in (10 s), `maxAuthFailures` failed tokens
 * per address per `authFailureWindowMs` (10 a minute).
 */
export interface ServeOptions extends AdmissionOptions {
  /** Address to bind (default 127.0.0.1: not reachable from other machines unless asked). */
  host?: string;
  /** Port (default 0: any free one; see `port` on the result). */
  port?: number;
  /** Token -> permissions. Required unless `insecure`. */
  tokens?: Record<string, Perm[]> | Map<string, Perm[]>;
  /** Serve without authentication, everyone may read and write. Only by explicit choice. */
  insecure?: boolean;
  /** PEM certificate and key: serve wss:// (TLS). */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Largest frame accepted (default MAX_FRAME); larger closes the connection with 1009. */
  maxFrame?: number;
  /** Requests a client may have outstanding before it is cut off (default 64). */
  maxRequests?: number;
  /** A connection that sends nothing this long is closed (default 120 s); while the server answers one of its requests, it is pinged, and a pong will do. Data the server has sent it since it was last heard adds its time at 1 KiB/s (the client answers only once the data is there), until its pong to a ping sent behind it. */
  idleTimeoutMs?: number;
  /** A connection that takes none of our data this long (it does not read) is cut (default 120 s). */
  drainTimeoutMs?: number;
  /**
   * Bytes of `get` answers (data frames) being read or waiting to be
   * written, over all connections (default 64 MiB, at least 4 MiB); further
   * frames wait. Each connection has at most 4 MiB of them, so this bounds
   * what clients that ask and never read can make the server hold.
   */
  maxGetMemory?: number;
  /**
   * Told what each connection did when it ends (one event per connection:
   * its peer, pull/push/stat, blobs, bytes, duration, error code), for a log.
   * Called on the server's event loop: it should return quickly, and not throw.
   */
  onEvent?: (e: ServeEvent) => void;
}

export interface CabServer {
  readonly url: string;
  readonly port: number;
  /** Open connections (WebSocket). */
  readonly connections: number;
  /** Connections holding a slot of maxConnections: WebSocket and HTTP, welcomed or not (refused ones are not counted). */
  readonly open: number;
  /** Connections not yet welcomed (counted from TCP accept; at most maxPending). */
  readonly pending: number;
  /** Stops serving; calling it again returns the same promise. */
  close(): Promise<void>;
  /** `await using srv = await serve(...)`: close(). */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * What answers the plain HTTP requests on a server's port (the
 * HTTP face, src/http): WebSocket upgrades go to the transfer protocol,
 * every other request to `handle`. `close` runs as the server closes, once
 * its connections are cut, and resolves when the face's work has stopped.
 */
export interface HttpFace {
  handle(req: http.IncomingMessage, res: http.ServerResponse, conn: HttpConnection): void;
  close(): Promise<void>;
}

/** The server's part in an HTTP request. */
export interface HttpConnection {
  /**
   * The permissions the token grants, as for a hello: ERR_AUTH (none, or
   * unknown) or ERR_AUTH_LIMIT (this address failed too often) otherwise.
   * A good token admits the connection: it is no longer cut at the hello deadline.
   */
  authenticate(token: string | undefined): Perm[];
}

/** Serves a store over WebSocket; plain HTTP requests go to `face` (without one: 426). */
export async function serve(store: BlobStore, options: ServeOptions = {}, face?: HttpFace): Promise<CabServer> {
  const tokens = options.tokens instanceof Map ? options.tokens : new Map(Object.entries(options.tokens ?? {}));
  if (!options.insecure && tokens.size === 0) {
    throw new CabError('ERR_BAD_ARGUMENT', 'serve needs tokens, or insecure: true to accept anyone');
  }
  for (const [t, perms] of tokens) {
    if (typeof t !== 'string' || t.length === 0 || !Array.isArray(perms) || perms.some((p) => p !== 'read' && p !== 'write')) {
      throw new CabError('ERR_BAD_ARGUMENT', 'tokens map non-empty strings to arrays of "read" and "write"');
    }
  }
  const host = options.host ?? '127.0.0.1';
  const wantPort = options.port ?? 0;
  if (!Number.isSafeInteger(wantPort) || wantPort < 0 || wantPort > 65535) throw new CabError('ERR_BAD_ARGUMENT', `port ${String(wantPort)} is not in 0..65535`);
  const { maxConnections } = options;
  if (maxConnections !== undefined && !(Number.isSafeInteger(maxConnections) && maxConnections >= 1)) {
    throw new CabError('ERR_BAD_ARGUMENT', `maxConnections must be a whole number of at least 1, not ${String(maxConnections)}`);
  }
  checkMaxFrame(options.maxFrame, 'serve');
  const server = options.tls ? https.createServer({ cert: options.tls.cert, key: options.tls.key }) : http.createServer();
  // A request's body may take long (an upload): none is cut short by its total time, but a socket idle this long is.
  server.requestTimeout = 0;
  server.timeout = options.idleTimeoutMs ?? DEFAULT_IDLE_MS;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(wantPort, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    throw ioError(e, `cannot listen on ${host}:${wantPort}`);
  }
  // Made once listening: it re-emits the server's errors, and one at listen had no listener.
  const wss = new WebSocketServer({ server, maxPayload: options.maxFrame ?? MAX_FRAME, perMessageDeflate: false });
  const port = (server.address() as AddressInfo).port;
  const admission = new Admission(options);
  server.on('connection', (socket) => admission.accept(socket));
  server.on('request', (req, res) => {
    if (admission.refused(req.socket)) {
      // Not `connection: close`: an upload's body is read and dropped (Node does) while the client sees the 503; a retry
      // on the connection is asked again (a slot may have freed), and one refused till the hello deadline is closed then.
      const body = `${admission.busy().message}\n`;
      res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'retry-after': '1' }).end(body);
      return;
    }
    if (!face) {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('cabstore speaks WebSocket here\n');
      return;
    }
    const gate = options.insecure ? undefined : admission.gate(req.socket.remoteAddress ?? '');
    face.handle(req, res, {
      authenticate(token) {
        const perms = authenticate({ tokens, insecure: options.insecure, ...(gate ? { authGate: gate } : {}) }, token);
        admission.welcomed(req.socket);
        return perms;
      },
    });
  });
  const sockets = new Set<WebSocket>();
  const getBudget = new ByteBudget(Math.max(MAX_GET_BYTES, options.maxGetMemory ?? DEFAULT_MAX_GET_MEMORY));
  wss.on('connection', (ws, req) => {
    // Until welcomed, a frame is at most a hello's worth: the connections not yet welcomed cannot make the server
    // buffer maxFrame each (64 of 4 MiB). ws keeps the limit in its receiver; the welcome restores maxFrame.
    const receiver = (ws as unknown as { _receiver?: { _maxPayload: number } })._receiver;
    if (receiver) receiver._maxPayload = Math.min(HELLO_MAX_FRAME, options.maxFrame ?? MAX_FRAME);
    if (admission.refused(req.socket)) return refuse(ws, admission.busy(), `${req.socket.remoteAddress}:${req.socket.remotePort}`, options.onEvent);
    sockets.add(ws);
    ws.on('close', () => sockets.delete(ws));
    const count = { sent: 0, received: 0 };
    const transport = lively(ws, wsTransport(ws, count, { drainTimeoutMs: options.drainTimeoutMs, onStall: (e) => peer.closed(e) }), count, true);
    const peer = new Peer(transport, {
      store,
      getBudget,
      role: 'server',
      tokens,
      insecure: options.insecure,
      ...(options.insecure ? {} : { authGate: admission.gate(req.socket.remoteAddress ?? '') }),
      maxRequests: options.maxRequests ?? DEFAULT_MAX_REQUESTS,
      idleMs: options.idleTimeoutMs ?? DEFAULT_IDLE_MS,
      maxFrame: options.maxFrame ?? MAX_FRAME,
      label: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
      wire: count,
    });
    wire(ws, peer, count);
    ws.on('pong', () => peer.onPong());
    // Registered after wire()'s, which has told the peer why it ended. 1000 and 1005: a normal close.
    const onEvent = options.onEvent;
    if (onEvent) ws.on('close', (code) => onEvent(peer.serveEvent(code === 1000 || code === 1005)));
    admission.upgraded(req.socket, () => peer.fail(new CabError('ERR_IDLE_TIMEOUT', `no hello within ${options.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS} ms`)));
    peer.ready.then(
      () => {
        if (receiver) receiver._maxPayload = options.maxFrame ?? MAX_FRAME;
        admission.welcomed(req.socket);
      },
      () => {}, // the connection ended before welcome: its socket's close took it off the list
    );
  });
  const url = `${options.tls ? 'wss' : 'ws'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  let closing: Promise<void> | undefined;
  const cab: CabServer = {
    url,
    port,
    get connections() {
      return sockets.size;
    },
    get pending() {
      return admission.pending;
    },
    get open() {
      return admission.open;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const ws of sockets) ws.terminate();
        admission.close();
        wss.close(() => {
          server.close(() => resolve());
          server.closeAllConnections(); // HTTP requests under way, and idle keep-alive connections
        });
      }).then(() => face?.close());
      return closing;
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
  return cab;
}

export interface ConnectOptions {
  /** The credential (a token the server knows). */
  token?: string;
  /** For wss:// with a private CA or a self-signed certificate. */
  ca?: string | Buffer;
  /** Largest frame accepted from the server. */
  maxFrame?: number;
  /** Give up connecting after this long, the WebSocket upgrade and the hello/welcome handshake together (default 10 s): ERR_CONNECTION. */
  timeoutMs?: number;
  /** Cancels the connect (the upgrade or the handshake): it rejects with ERR_ABORTED and leaves no socket open. Once connected, the signal plays no part. */
  signal?: AbortSignal;
  /** With requests outstanding, a server that sends nothing for this long is cut off: every waiting request (a pull, a stream, a remote read) fails with ERR_IDLE_TIMEOUT. While a push, get or follow stat is outstanding (its answer may rightly take long), the server is pinged and a pong will do. Data sent since the server was last heard (a push's chunks) adds its time at 1 KiB/s, until a pong to a ping sent behind it. Default DEFAULT_IDLE_MS (120 s). */
  idleTimeoutMs?: number;
}

export interface CabClient {
  readonly url: string;
  /** @internal The session, for fetchBlob (its source, and the server's chunker). */
  readonly peer: Peer;
  /** @internal Resolves once the connection has closed, for whatever reason. */
  readonly closed: Promise<void>;
  /** Frame payload bytes this connection has sent and received so far. */
  readonly wire: Readonly<WireCount>;
  /** Size, finalized, and hash (a Uint8Array, as everywhere; hex in JSON) of a remote blob. `signal` stops waiting for the answer (ERR_ABORTED). */
  stat(name: string, options?: { signal?: AbortSignal }): Promise<{ size: number; finalized: boolean; hash?: Uint8Array }>;
  /** Fetches a remote blob into the local store (only what the store lacks travels). `signal` cancels (ERR_ABORTED): what was written stays, unfinalized and resumable. */
  pull(name: string, options?: ReceiveOptions): Promise<TransferStats>;
  /** Sends a local blob to the remote store (only what it lacks travels). `signal` cancels that push only. */
  push(name: string, options?: PushOptions): Promise<PushResult>;
  /**
   * Reads a finalized remote blob without storing it: only the 16 KiB leaves
   * covering what is read travel, each checked against the blob's root (the
   * trusted `hash`, else the one the server announces) before it is returned.
   */
  openReader(name: string, options?: OpenReaderOptions): Promise<RemoteBlobReader>;
  /** A remote blob's bytes, each chunk checked as it comes, the root at the end; with `follow`, a blob still being written (see RemoteStreamOptions). Nothing is stored here. */
  stream(name: string, options?: RemoteStreamOptions): Readable;
  /** Closes the connection; calling it again returns the same promise. */
  close(): Promise<void>;
  /** `await using c = await connect(...)`: close(). */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Connects a local store to a cabstore server. */
export async function connect(store: BlobStore, url: string, options: ConnectOptions = {}): Promise<CabClient> {
  checkConnectArgs(store, url, options);
  const { signal } = options;
  throwIfAborted(signal, `connecting to ${url}`);
  const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const ws = new WebSocket(url, {
    maxPayload: options.maxFrame ?? MAX_FRAME,
    perMessageDeflate: false,
    // A zero mask: ws then neither masks what we send nor the server unmasks it, a pass over every
    // pushed byte on each side. Masking guards proxies against scripts in browsers; this is not one.
    generateMask: (mask: Buffer) => mask.fill(0),
    handshakeTimeout: timeoutMs,
    ...(options.ca ? { ca: options.ca } : {}),
  });
  // An abort or the timeout ends the socket; whichever step is waiting then fails, and the catch says why.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ws.terminate();
  }, timeoutMs);
  const onAbort = () => ws.terminate();
  signal?.addEventListener('abort', onAbort, { once: true });
  const count = { sent: 0, received: 0 };
  let peer: Peer;
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', (e) => reject(new CabError('ERR_CONNECTION', `cannot connect to ${url}: ${e.message}`, {}, { cause: e })));
    });
    peer = new Peer(lively(ws, wsTransport(ws, count), count, false), { store, role: 'client', token: options.token, label: url, maxFrame: options.maxFrame ?? MAX_FRAME, idleMs: options.idleTimeoutMs ?? DEFAULT_IDLE_MS });
    wire(ws, peer, count);
    ws.on('pong', () => peer.onPong());
    await peer.hello();
  } catch (e) {
    ws.terminate();
    throwIfAborted(signal, `connecting to ${url}`);
    if (timedOut) throw new CabError('ERR_CONNECTION', `cannot connect to ${url}: not connected (upgrade and welcome) within ${timeoutMs} ms`, {}, { cause: e });
    throw e;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  let closing: Promise<void> | undefined;
  const client: CabClient = {
    url,
    peer,
    closed,
    wire: count,
    stat: (name, o) => orAbort(peer.source().stat(name), o?.signal, name),
    pull: (name, o) => peer.pull(name, o),
    push: (name, o) => peer.push(name, o),
    openReader: (name, o) => RemoteBlobReader.open(peer, name, o ?? {}, store),
    stream: (name, o) => remoteStream(peer.source(), checkBlobName(name), o),
    close() {
      closing ??= (async () => {
        if (ws.readyState !== WebSocket.CLOSED) {
          ws.close(1000, 'bye');
          await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
          ws.terminate();
        }
      })();
      return closing;
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
  return client;
}

/**
 * Answers the hello of a connection that came when the server was full:
 * `err` with why, close 1013 (try again later). At its hello, not before: a
 * client hears frames only once it is ready for them. One that says nothing
 * is closed at the hello deadline.
 */
function refuse(ws: WebSocket, e: CabError, label: string, onEvent: ((e: ServeEvent) => void) | undefined): void {
  ws.on('error', () => {});
  ws.once('message', () => {
    ws.send(encode({ t: 'err', code: e.code, msg: e.message }), { binary: true });
    ws.close(1013, e.code);
    setTimeout(() => ws.terminate(), 1000).unref();
    onEvent?.(new ServeAccount().event(label, e));
  });
}
