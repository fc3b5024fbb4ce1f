// Clients of the HTTP face that no one here wrote: tus-js-client for uploads,
// Node's fetch for reads (and curl, in the tests that run it).
import fs from 'node:fs';
import type { ExecutionContext } from 'ava';
import { Upload } from 'tus-js-client';
import { serve, type BlobStore, type ServeOptions } from '../../src/index.js';
import { tempStore } from './store.js';

/** tus request headers with the token rw, and `o`. */
export const tusHeaders = (o: Record<string, string> = {}) => ({ authorization: 'Bearer rw', 'tus-resumable': '1.0.0', ...o });

/** A server on a fresh store, token rw, with `o`; closed at the test's end. */
export async function served(t: ExecutionContext, o: ServeOptions): Promise<{ store: BlobStore; base: string }> {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] }, ...o });
  t.teardown(() => srv.close());
  return { store, base: `http://127.0.0.1:${srv.port}` };
}

/**
 * A tus upload of `length` bytes made with a POST: its URL. With `busyMs`, a
 * 503 (every upload place taken) is tried again, 50 ms apart, for that long.
 */
export async function create(base: string, length: number, busyMs = 0): Promise<string> {
  const began = Date.now();
  let r = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': String(length) }) });
  while (r.status === 503 && Date.now() - began < busyMs) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    r = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': String(length) }) });
  }
  if (r.status !== 201) throw new Error(`POST: ${r.status}`);
  return new URL(r.headers.get('location')!, base).href;
}

export interface TusResult {
  /** The upload's URL (the Location the server gave). */
  url: string;
  /** The blob's name: the last part of the URL. */
  name: string;
  /** Body bytes the client sent, counting the bytes sent again after a resume. */
  wire: number;
}

export interface TusOptions {
  token: string;
  metadata?: Record<string, string>;
  /** Told the absolute offset as bytes leave (tus-js-client's onProgress). */
  onProgress?: (sent: number) => void;
  /** Waits between tries after a failure (default: no retries). */
  retryDelays?: number[];
  chunkSize?: number;
}

/** Uploads a file (a path: read as fs.ReadStream, which tus-js-client can seek to resume) or a Buffer to `endpoint`. */
export function tusUpload(endpoint: string, source: string | Buffer, o: TusOptions): Promise<TusResult> {
  return new Promise((resolve, reject) => {
    const size = typeof source === 'string' ? fs.statSync(source).size : source.length;
    let wire = 0;
    let last = 0;
    const up = new Upload(typeof source === 'string' ? fs.createReadStream(source) : source, {
      endpoint,
      uploadSize: size,
      headers: { Authorization: `Bearer ${o.token}` },
      metadata: o.metadata ?? {},
      retryDelays: o.retryDelays ?? [],
      ...(o.chunkSize ? { chunkSize: o.chunkSize } : {}),
      // A resumed upload's progress restarts at the offset the server gave.
      onProgress: (sent) => {
        if (sent > last) wire += sent - last;
        last = sent;
        o.onProgress?.(sent);
      },
      onError: reject,
      onSuccess: () => resolve({ url: up.url!, name: up.url!.split('/').pop()!, wire }),
    });
    up.start();
  });
}

/** fetch with the token. */
export function get(url: string, token: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Response> {
  return fetch(url, { method, headers: { authorization: `Bearer ${token}`, ...headers } });
}

/**
 * A tus PATCH (token rw) at `offset` whose body sends `first` and then
 * nothing, never ending: a client whose connection went quiet. Resolves once
 * `first` is handed to fetch, and a little later (the bytes cross the
 * loopback meanwhile); `answer` settles with the response or fetch's error.
 */
export async function stalledPatch(url: string, offset: number, first: Uint8Array): Promise<{ answer: Promise<unknown> }> {
  let sent!: () => void;
  const wasSent = new Promise<void>((r) => (sent = r));
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(first);
      sent();
    },
  });
  const answer = fetch(url, {
    method: 'PATCH',
    headers: tusHeaders({ 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' }),
    body,
    duplex: 'half',
  } as RequestInit).catch((e: unknown) => e);
  await wasSent;
  await new Promise((r) => setTimeout(r, 300));
  return { answer };
}
