import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from './ws-lib.js';
import { CabError, ioError } from '../errors.js';
import type { BlobStore } from '../store.js';
import { MAX_FRAME, MAX_GET_BYTES, encode, type Perm } from './messages.js';
import { Peer, DEFAULT_IDLE_MS, DEFAULT_MAX_REQUESTS } from './peer.js';
import { ByteBudget } from './budget.js';
import type { ServeEvent } from './serve.js';
import { ServeAccount } from './serve-event.js';
import { Admission, DEFAULT_HELLO_TIMEOUT_MS, type AdmissionOptions } from './admission.js';
import { authenticate } from './handshake.js';
import { wire, wsTransport } from './ws-transport.js';
import { lively } from './ws-life.js';
import { checkMaxFrame } from './connect-args.js';

// The client's side lives in connect.ts (and dial.ts): a pull loads none of the server's code.
export { connect, type CabClient, type ConnectOptions } from './connect.js';
export { dial, Dial, DEFAULT_CONNECT_TIMEOUT_MS, type DialOptions } from './dial.js';
export type { WireCount } from './stats.js';

/** Bytes of `get` answers (data frames) a server reads and buffers at once, over all its connections. */
export const DEFAULT_MAX_GET_MEMORY = 64 * 1024 * 1024;

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
