import { CabError, type CabErrorData } from '../errors.js';

/** Whether a failure may pass if tried again: the server busy or failing, the connection cut, or a body changed on the way. */
export function transient(e: unknown): boolean {
  if (!(e instanceof CabError) || e.code !== 'ERR_OBJECT_STORE') return false;
  const status = e.data.status as number | undefined;
  // A body the server hashed to something else than the client signed (or sent as Content-MD5): changed on the way.
  if (['XAmzContentSHA256Mismatch', 'BadDigest'].includes(String(e.data.s3Code))) return true;
  if (status !== undefined) return status >= 500 || status === 429 || status === 408;
  return ['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'TimeoutError', 'RequestTimeout'].includes(String(e.data.s3Code));
}

/** A failed GET sent without the SDK (disk/fetch-worker.ts) as ERR_OBJECT_STORE, as s3Error gives an SDK's. */
export function getError(bucket: string, key: string, f: { s3Code?: string; status?: number; message: string }): CabError {
  const msg = `reading ${key}: ${f.s3Code ?? 'failed'}${f.status ? ` (HTTP ${f.status})` : ''}${f.message && f.message !== f.s3Code ? `: ${f.message}` : ''}`;
  return new CabError('ERR_OBJECT_STORE', msg, { bucket, key, s3Code: f.s3Code, status: f.status });
}

/**
 * An SDK failure as ERR_OBJECT_STORE: data.s3Code is the S3 error code (or
 * the errno of a failed connection), data.status the HTTP status. An
 * aborted call is ERR_ABORTED; a CabError passes through.
 */
export function s3Error(e: unknown, what: string, data: CabErrorData = {}): CabError {
  if (e instanceof CabError) return e;
  const err = e as { name?: string; Code?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  if (err?.name === 'AbortError') return new CabError('ERR_ABORTED', `${what} was cancelled`, data, { cause: e });
  const status = err?.$metadata?.httpStatusCode;
  const s3Code = err?.Code ?? err?.code ?? (err?.name && err.name !== 'Error' ? err.name : undefined);
  const msg = `${what}: ${s3Code ?? 'failed'}${status ? ` (HTTP ${status})` : ''}${err?.message && err.message !== s3Code ? `: ${err.message}` : ''}`;
  return new CabError('ERR_OBJECT_STORE', msg, { ...data, s3Code, status }, { cause: e });
}
