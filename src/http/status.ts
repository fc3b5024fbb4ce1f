import type http from 'node:http';
import { isCabError, type ErrorCode } from '../errors.js';

/** The HTTP status of a store's error; 500 for any other. */
const STATUS: Partial<Record<ErrorCode, number>> = {
  ERR_BAD_ARGUMENT: 400,
  ERR_AUTH: 401,
  ERR_PERMISSION: 403,
  ERR_AUTH_LIMIT: 429,
  ERR_NO_SUCH_BLOB: 404,
  ERR_INVALID_BLOB_NAME: 404,
  ERR_BLOB_NOT_FINALIZED: 409,
  ERR_BLOB_FINALIZED: 409,
  ERR_BLOB_LOCKED: 423,
  ERR_BLOB_DAMAGED: 500,
  ERR_NO_SPACE: 507,
  ERR_CLOSED: 503,
};

export function statusOf(e: unknown): number {
  return (isCabError(e) && STATUS[e.code]) || 500;
}

/** The body of an error answer: the code (if a CabError) and the message, one line. */
export function errorText(e: unknown): string {
  if (typeof e === 'string') return `${e}\n`;
  if (isCabError(e)) return `${e.message}\n`; // a CabError's message starts with its code
  return `${(e as Error)?.message ?? String(e)}\n`;
}

/** How much of an unread body is read and dropped after an error answer, and for how long, before the connection is cut. */
const DRAIN_BYTES = 16 * 1024 * 1024;
const DRAIN_MS = 5000;

/**
 * Answers with an error status and a one-line text body. A request whose
 * body we have not read (an upload refused, or cut short by a full disk)
 * has the rest of it read and dropped, up to DRAIN_BYTES or DRAIN_MS, while
 * the client sees the answer: a client still sending when the connection
 * closed would see a broken pipe (and retry it as a network failure), not
 * the status. Past the bound, the connection is cut.
 */
export function sendError(res: http.ServerResponse, status: number, e: unknown, extra: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorText(e);
  const req = res.req;
  const unread = req && !req.complete && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), ...extra });
  res.end(body);
  if (unread) drainUnread(req);
}

/** After an answer sent before the request's body was read to its end: reads and drops the rest, within the bounds above. */
export function drainUnread(req: http.IncomingMessage): void {
  if (req.complete || req.destroyed) return;
  let n = 0;
  const cut = () => req.socket.destroy();
  const timer = setTimeout(cut, DRAIN_MS);
  timer.unref();
  req.on('data', (b: Buffer) => {
    if ((n += b.length) > DRAIN_BYTES) cut();
  });
  req.once('close', () => clearTimeout(timer));
  req.resume();
}
