import { CabError } from '../errors.js';
import type { ObjectInfo } from './object-store.js';

/** A page of ListObjectsV2, as far as it is read here (the SDK's output; its types stay out of the published ones). */
export interface ObjectsPage {
  Contents?: Array<{ Key?: string; Size?: number; LastModified?: Date; ETag?: string }>;
  IsTruncated?: boolean;
  NextContinuationToken?: string;
}

/** A page of ListMultipartUploads, likewise. */
export interface UploadsPage {
  Uploads?: Array<{ Key?: string; UploadId?: string; Initiated?: Date }>;
  IsTruncated?: boolean;
  NextKeyMarker?: string;
  NextUploadIdMarker?: string;
}

/** A multipart upload in progress, as a listing shows it. */
export interface UploadInfo {
  key: string;
  uploadId: string;
  initiated: Date;
}

/**
 * Pages through a listing of objects, one request (`page`, given the
 * continuation token) at a time. GC takes what a listing does not show for
 * absent, so a listing that is not whole is ERR_OBJECT_STORE, never a
 * shorter or endless one: a page that says there is more but gives no new
 * token (a server that drops it, or ignores the token and answers the
 * first page again), or keys not in strictly rising order (S3 lists in
 * UTF-8 byte order, each key once).
 */
export async function* listObjects(bucket: string, prefix: string, page: (token: string | undefined) => Promise<ObjectsPage>): AsyncGenerator<ObjectInfo> {
  let token: string | undefined;
  let last: Buffer | undefined;
  do {
    const out = await page(token);
    for (const o of out.Contents ?? []) {
      const key = Buffer.from(o.Key ?? '');
      if (last && Buffer.compare(key, last) <= 0) throw untrusted(bucket, prefix, `listing ${prefix}`, `${o.Key} came after ${last.toString()}`);
      last = key;
      yield { key: o.Key!, size: o.Size ?? 0, mtime: o.LastModified ?? new Date(0), etag: o.ETag ?? '' };
    }
    if (out.IsTruncated && (!out.NextContinuationToken || out.NextContinuationToken === token)) throw untrusted(bucket, prefix, `listing ${prefix}`, 'a page says there is more, and gives no new continuation token');
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
}

/** Pages through the multipart uploads under `prefix` (`page`, given the markers), checked as listObjects checks its pages. */
export async function* listUploads(bucket: string, prefix: string, page: (key?: string, id?: string) => Promise<UploadsPage>): AsyncGenerator<UploadInfo> {
  let keyMarker: string | undefined;
  let idMarker: string | undefined;
  for (;;) {
    const out = await page(keyMarker, idMarker);
    for (const u of out.Uploads ?? []) yield { key: u.Key!, uploadId: u.UploadId!, initiated: u.Initiated ?? new Date(0) };
    if (!out.IsTruncated) return;
    if (!out.NextKeyMarker || (out.NextKeyMarker === keyMarker && out.NextUploadIdMarker === idMarker)) throw untrusted(bucket, prefix, `listing uploads under ${prefix}`, 'a page says there is more, and gives no new marker');
    keyMarker = out.NextKeyMarker;
    idMarker = out.NextUploadIdMarker;
  }
}

function untrusted(bucket: string, prefix: string, what: string, why: string): CabError {
  return new CabError('ERR_OBJECT_STORE', `${what}: ${why}: the server's listing cannot be trusted`, { bucket, key: prefix });
}
