import type http from 'node:http';
import { isCabError, type ErrorCode } from '../errors.js';

/** The HTTP status of a store's error; 500 for any other. */
const STATUS: Partial<Record<ErrorCode, number>> = {
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

/**
 * Answers with an error status and a one-line text body. A request whose
 * body we have not read (an upload refused) gets `Connection: close`, so
 * that Node does not read the rest of it.
 */
export function sendError(res: http.ServerResponse, status: number, e: unknown, extra: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorText(e);
  const req = res.req;
  const unread = req && !req.complete && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), ...(unread ? { connection: 'close' } : {}), ...extra });
  res.end(body);
}
