import type http from 'node:http';
import { Server as TusServer } from '@tus/server';
import { CabError, isCabError } from '../errors.js';
import { isBlobName, newBlobName } from '../format/layout.js';
import type { BlobStore } from '../store.js';
import type { Perm } from '../transfer/messages.js';
import type { HttpConnection, HttpFace } from '../transfer/ws.js';
import { getBlob } from './blobs.js';
import { drainUnread, errorText, sendError, statusOf } from './status.js';
import { BlobUploads, metadataKeyRefusal } from './tus-store.js';
import { RequestBodies } from './tus-body.js';
import { HeapFloor } from './heap-floor.js';

/** An upload untouched this long expires (its unfinished blob deleted). */
export const DEFAULT_UPLOAD_EXPIRY_MS = 24 * 60 * 60 * 1000;
/** Upload requests (tus PATCH and POST) a server works on at once: see HttpOptions.maxUploads. */
export const DEFAULT_MAX_UPLOADS = 32;
/** An upload body that brings nothing this long is cut: see HttpOptions.uploadStallMs. */
export const DEFAULT_UPLOAD_STALL_MS = 30_000;
/** What a client refused for maxUploads is told to wait (Retry-After, seconds). */
const BUSY_RETRY_AFTER_S = 5;
/** The longest wait between two sweeps for expired uploads. */
const MAX_SWEEP_MS = 60 * 60 * 1000;

export interface HttpOptions {
  /**
   * An upload (tus, at /files/) that no request has created or written for
   * this long expires: its blob, if unfinished, is deleted (its fragments
   * are left to GC) and its record removed; a finished upload's blob stays.
   * Checked every quarter of this (at most hourly). Default 24 h; 0: never.
   */
  uploadExpiryMs?: number;
  /** Largest upload accepted, in bytes (a larger Upload-Length is 413). Default: no limit. */
  maxUploadSize?: number;
  /**
   * Upload requests (tus PATCH, and POST, which may carry a body) worked on
   * at once; each holds a writer (file descriptors, buffers) until its
   * body ends. One more is answered 503 with Retry-After, which tus
   * clients retry (tus-js-client does not retry a 429). Default
   * DEFAULT_MAX_UPLOADS (32).
   */
  maxUploads?: number;
  /**
   * An upload body that brings no byte for this long while the server
   * waits for it is cut (the connection reset): what came before is
   * durable, and the client resumes from it (its HEAD gives the offset).
   * Default DEFAULT_UPLOAD_STALL_MS (30 s); 0: no limit but the
   * connection's idleTimeoutMs.
   */
  uploadStallMs?: number;
}

/** Where a request goes: a blob to read, the tus uploads, or nowhere. */
type Route = { kind: 'blob'; name: string } | { kind: 'files'; name: string | undefined } | undefined;

function routeOf(url: string | undefined): Route {
  const path = (url ?? '/').split('?')[0]!;
  if (path.startsWith('/blobs/')) return { kind: 'blob', name: path.slice('/blobs/'.length) };
  if (path === '/files' || path === '/files/') return { kind: 'files', name: undefined };
  if (path.startsWith('/files/')) return { kind: 'files', name: path.slice('/files/'.length) };
  return undefined;
}

/** The token of an `Authorization: Bearer TOKEN` header. */
function bearer(req: http.IncomingMessage): string | undefined {
  return /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
}

/**
 * The HTTP face of a server: `GET`/`HEAD /blobs/NAME` (and `GET
 * /files/NAME`) read a finalized blob, with one Range; `/files/` takes tus
 * 1.0 uploads (@tus/server on BlobUploads). Every request but a tus OPTIONS
 * (which says what the server supports, and which browsers send without
 * credentials) needs a token as for a hello: read to read, write to upload.
 */
export class HttpFront implements HttpFace {
  readonly #store: BlobStore;
  readonly #tus: TusServer;
  readonly #uploads: BlobUploads;
  readonly #bodies = new RequestBodies();
  /** Held from the first upload until close: see HeapFloor. */
  readonly #floor = new HeapFloor();
  readonly #inflight = new Set<Promise<void>>();
  readonly #timer: NodeJS.Timeout | undefined;
  readonly #maxUploads: number;
  /** Upload requests (PATCH, POST) under way: at most #maxUploads. */
  #uploading = 0;
  #sweeping: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(store: BlobStore, o: HttpOptions = {}) {
    const expiry = o.uploadExpiryMs ?? DEFAULT_UPLOAD_EXPIRY_MS;
    if (!Number.isSafeInteger(expiry) || expiry < 0) throw new CabError('ERR_BAD_ARGUMENT', `uploadExpiryMs must be an integer >= 0, not ${String(expiry)}`);
    if (o.maxUploadSize !== undefined && (!Number.isSafeInteger(o.maxUploadSize) || o.maxUploadSize < 1)) {
      throw new CabError('ERR_BAD_ARGUMENT', `maxUploadSize must be a positive integer, not ${String(o.maxUploadSize)}`);
    }
    const maxUploads = o.maxUploads ?? DEFAULT_MAX_UPLOADS;
    if (!Number.isSafeInteger(maxUploads) || maxUploads < 1) throw new CabError('ERR_BAD_ARGUMENT', `maxUploads must be a positive integer, not ${String(maxUploads)}`);
    const stallMs = o.uploadStallMs ?? DEFAULT_UPLOAD_STALL_MS;
    if (!Number.isSafeInteger(stallMs) || stallMs < 0) throw new CabError('ERR_BAD_ARGUMENT', `uploadStallMs must be an integer >= 0, not ${String(stallMs)}`);
    this.#store = store;
    this.#maxUploads = maxUploads;
    this.#uploads = new BlobUploads(store, expiry, this.#bodies, o.maxUploadSize, stallMs);
    this.#tus = new TusServer({
      path: '/files',
      datastore: this.#uploads,
      locker: this.#bodies.locker,
      relativeLocation: true,
      namingFunction: () => newBlobName(),
      // A finished upload is a blob like any other: deleting it is not the uploader's business.
      disableTerminationForFinishedUploads: true,
      ...(o.maxUploadSize ? { maxSize: o.maxUploadSize } : {}),
      onResponseError: (_req, err) => (isCabError(err) ? { status_code: statusOf(err), body: errorText(err) } : undefined),
    });
    if (expiry > 0) {
      this.#timer = setInterval(() => this.#sweep(), Math.min(MAX_SWEEP_MS, Math.max(1000, Math.floor(expiry / 4))));
      this.#timer.unref();
    }
  }

  handle(req: http.IncomingMessage, res: http.ServerResponse, conn: HttpConnection): void {
    // A response whose connection was cut may never be told it was sent (@tus/server waits for a
    // 'close' that has passed): the request is done when its response closes. The store's own
    // work goes on to its end, and close() waits for it (BlobUploads.idle).
    const closed = new Promise<void>((resolve) => res.once('close', resolve));
    const p: Promise<void> = Promise.race([this.#route(req, res, conn).catch((e: unknown) => sendError(res, statusOf(e), e)), closed]).finally(() => this.#inflight.delete(p));
    this.#inflight.add(p);
  }

  async #route(req: http.IncomingMessage, res: http.ServerResponse, conn: HttpConnection): Promise<void> {
    const route = routeOf(req.url);
    if (!route) return sendError(res, 404, 'not here: cabstore answers GET and HEAD at /blobs/NAME, and tus uploads at /files/');
    if (route.kind === 'files' && req.method === 'OPTIONS') return this.#toTus(req, res);
    let perms: Perm[];
    try {
      perms = conn.authenticate(bearer(req));
    } catch (e) {
      if (!isCabError(e, 'ERR_AUTH') && !isCabError(e, 'ERR_AUTH_LIMIT')) throw e;
      return sendError(res, statusOf(e), e, e.code === 'ERR_AUTH' ? { 'www-authenticate': 'Bearer realm="cabstore"' } : { 'retry-after': '60' });
    }
    const read = route.kind === 'blob' || req.method === 'GET';
    const need: Perm = read ? 'read' : 'write';
    if (!perms.includes(need)) return sendError(res, 403, new CabError('ERR_PERMISSION', `this token has no ${need} permission`));
    if (read) {
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendError(res, 405, `${String(req.method)} is not allowed here`, { allow: 'GET, HEAD' });
      if (!route.name || !isBlobName(route.name)) return sendError(res, 404, 'not a blob name (32 lowercase hex characters)');
      return getBlob(this.#store, route.name, req, res);
    }
    return this.#toTus(req, res);
  }

  /** A request for @tus/server; an upload (PATCH, POST) counts against maxUploads until its store work is done. */
  async #toTus(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'PATCH' && req.method !== 'POST') return this.#tusAnswer(req, res);
    const refused = req.method === 'POST' ? metadataKeyRefusal(req.headers['upload-metadata']?.toString()) : undefined;
    if (refused) return sendError(res, 400, refused, { 'tus-resumable': '1.0.0' });
    if (this.#uploading >= this.#maxUploads) {
      const busy = new CabError('ERR_TOO_MANY_REQUESTS', `this server takes ${this.#maxUploads} uploads at once: try again later`);
      return sendError(res, 503, busy, { 'retry-after': String(BUSY_RETRY_AFTER_S), 'tus-resumable': '1.0.0' });
    }
    this.#uploading++;
    try {
      this.#floor.hold();
      await this.#tusAnswer(req, res);
    } finally {
      this.#uploading--;
    }
  }

  /** Answers through @tus/server, whose data store reads the body from Node's request (RequestBodies). */
  async #tusAnswer(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let answer: Response;
    let status = 500;
    try {
      answer = await this.#tus.handleWeb(this.#bodies.request(req, res));
      status = answer.status;
    } finally {
      // Before the answer goes: a client told 413, or gone (its body cut: tus may still say 201 to no one), must find no upload left behind.
      const gone = res.destroyed || !!res.socket?.destroyed || (req.destroyed && !req.complete);
      await this.#uploads.dropUnnamed(req, gone ? 0 : status);
    }
    const body = answer.body ? Buffer.from(await answer.arrayBuffer()) : undefined;
    if (res.destroyed) return;
    const headers: Record<string, string> = {};
    answer.headers.forEach((v, k) => (headers[k] = v));
    // tus says `Connection: close` after a failed PATCH; the client, still sending, would see that as a broken pipe.
    if (!req.complete) delete headers.connection;
    res.writeHead(answer.status, headers);
    res.end(body);
    // A body not read to its end (an upload refused part way): the rest is dropped while the client reads the answer.
    drainUnread(req);
  }

  #sweep(): void {
    if (this.#closed) return;
    this.#sweeping = this.#sweeping
      .then(() => this.#uploads.deleteExpired())
      .then(
        () => {},
        () => {}, // a sweep that failed (a full disk, say) is tried again at the next tick
      );
  }

  /** Stops sweeping and waits for the requests under way (their connections are cut by then) and the store work they started. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await Promise.allSettled([...this.#inflight, this.#sweeping]);
    await this.#uploads.idle();
    this.#floor.release();
  }
}
