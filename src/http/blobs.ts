import type http from 'node:http';
import { pipeline } from 'node:stream/promises';
import { CabError, isCabError } from '../errors.js';
import { toHex } from '../hash/sha256.js';
import type { BlobStore } from '../store.js';
import { ifRangeHolds, noneMatch, parseRange } from './range.js';
import { sendError } from './status.js';

/** The header that carries a finalized blob's BEP 52 root (64 hex digits): it is not the SHA-256 of the bytes, so not a Repr-Digest. */
export const ROOT_HEADER = 'x-cabstore-root';

/**
 * GET or HEAD of a blob: its bytes (all, or one Range) through the store's
 * reader, which checks every byte against its chunk's SHA-256 before it is
 * handed out. A read that finds damage mid-answer cuts the connection: the
 * client sees a short body, never wrong bytes.
 *
 * A blob still being written is 409, unless the client asks to follow it
 * (`?follow=1`, GET only, no Range): then its bytes are sent chunked as
 * they are flushed (each checked as any read), and the response ends when
 * the writer finalizes, with the root in the X-Cabstore-Root trailer. A
 * blob deleted meanwhile cuts the response short.
 */
export async function getBlob(store: BlobStore, name: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const follow = req.method === 'GET' && new URLSearchParams((req.url ?? '').split('?')[1] ?? '').get('follow') === '1';
  const gone = new AbortController();
  res.once('close', () => gone.abort());
  let r;
  try {
    r = await store.newBlobReader(name, follow ? { follow: true, signal: gone.signal } : {});
  } catch (e) {
    if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return sendError(res, 404, e);
    throw e;
  }
  try {
    if (!r.isFinalized && follow) {
      if (header(req, 'range') !== undefined) return sendError(res, 416, 'a Range cannot be followed: ask for the whole blob with ?follow=1');
      // A quiet writer is not an idle client: no socket timeout (idleTimeoutMs) on a follow.
      res.setTimeout(0);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-store', trailer: ROOT_HEADER });
      // The stream ends at finalize; a delete, a damaged chunk or the client leaving cuts it (no trailer then).
      await pipeline(r.stream(), res, { end: false }).catch(() => res.destroy());
      if (!res.destroyed) {
        if (r.hash) res.addTrailers({ [ROOT_HEADER]: toHex(r.hash) });
        res.end();
      }
      return;
    }
    if (!r.isFinalized) return sendError(res, 409, `blob ${name} is still being written (${r.size} bytes so far); it can be read once finalized, or followed with ?follow=1`);
    const root = toHex(r.hash!);
    const etag = `"${root}"`;
    const headers: http.OutgoingHttpHeaders = {
      'accept-ranges': 'bytes',
      etag,
      [ROOT_HEADER]: root,
      'cache-control': 'no-cache', // a name's bytes never change once finalized, but the blob may be deleted and the name reused
    };
    if (noneMatch(req.headers['if-none-match'], etag)) {
      res.writeHead(304, headers).end();
      return;
    }
    const range = ifRangeHolds(header(req, 'if-range'), etag) ? parseRange(header(req, 'range'), r.size) : ({ kind: 'all' } as const);
    if (range.kind === 'unsatisfiable') {
      res.writeHead(416, { ...headers, 'content-range': `bytes */${r.size}`, 'content-type': 'text/plain', 'content-length': 0 }).end();
      return;
    }
    const [start, end] = range.kind === 'range' ? [range.start, range.end] : [0, r.size];
    // Damage where the body would start: a whole error answer, not a response cut after its headers.
    const hit = start < end ? r.damage.find((d) => d.o <= start && start < d.e) : undefined;
    if (hit) return sendError(res, 500, new CabError('ERR_BLOB_DAMAGED', `bytes ${hit.o}..${hit.e} of blob ${name} are damaged (${hit.why})`, { blob: name, offset: hit.o, end: hit.e }));
    res.writeHead(range.kind === 'range' ? 206 : 200, {
      ...headers,
      'content-type': 'application/octet-stream',
      'content-length': end - start,
      ...(range.kind === 'range' ? { 'content-range': `bytes ${start}-${end - 1}/${r.size}` } : {}),
    });
    if (req.method === 'HEAD' || start === end) {
      res.end();
      return;
    }
    // A client gone or a read failed: pipeline destroys the response (the connection is cut mid-body).
    await pipeline(r.stream({ start, end }), res).catch(() => {});
  } finally {
    await r.close();
  }
}

function header(req: http.IncomingMessage, name: 'range' | 'if-range'): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
