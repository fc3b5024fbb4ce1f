// Clients of the HTTP face that no one here wrote: tus-js-client for uploads,
// Node's fetch for reads (and curl, in the tests that run it).
import fs from 'node:fs';
import { Upload } from 'tus-js-client';

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
    headers: { authorization: 'Bearer rw', 'tus-resumable': '1.0.0', 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' },
    body,
    duplex: 'half',
  } as RequestInit).catch((e: unknown) => e);
  await wasSent;
  await new Promise((r) => setTimeout(r, 300));
  return { answer };
}
