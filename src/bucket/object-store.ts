import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import type * as S3 from '@aws-sdk/client-s3';
import { CabError, type CabErrorData } from '../errors.js';
import { s3Error, transient } from './s3-error.js';
import { listObjects, listUploads, type UploadInfo } from './listing.js';
import { fileSha256, signPayload } from './payload.js';

/** How to reach a bucket. */
export interface BucketAddress {
  endpoint: string;
  bucket: string;
  region: string;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** See ObjectStoreOptions.idleTimeout (default 60 000 ms). */
  idleTimeout?: number;
}

/** An object as a listing shows it. */
export interface ObjectInfo {
  key: string;
  size: number;
  /** The server's time of the last write. */
  mtime: Date;
  /** The server's tag of the content (for one PUT, its MD5 in quotes): another tag, other bytes. */
  etag: string;
}

/** An object being read: the bytes that will come, and the bytes. */
export interface Fetched {
  size: number | undefined;
  etag: string;
  chunks: AsyncGenerator<Buffer>;
}

/** A file (or its first `size` bytes) to upload. */
export interface FileBody {
  file: string;
  size: number;
}

/** Above this many bytes a file goes up in parts (a single PUT is faster below it on radosgw: docs/BENCHMARKS.md). */
export const DEFAULT_MULTIPART_THRESHOLD = 1024 * 1024 * 1024;
const PART_SIZE = 64 * 1024 * 1024;
/** Attempts of a streamed upload (the SDK cannot retry a stream it has consumed, so we do). */
const STREAM_ATTEMPTS = 3;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** Per-key errors of a batch delete that are the server's own trouble, worth another try. */
const SERVER_SIDE = new Set(['UnknownError', 'InternalError', 'ServiceUnavailable', 'SlowDown']);

let sdk: Promise<typeof S3> | undefined;
/** The SDK is loaded by the first store that uses a bucket: a store without one never loads it. */
const loadSdk = (): Promise<typeof S3> => (sdk ??= import('@aws-sdk/client-s3'));
let presigner: Promise<typeof import('@aws-sdk/s3-request-presigner')> | undefined;
/** How long a signed GET stays valid: it is sent at once, and tried again at most a few seconds later. */
const SIGNED_FOR_S = 15 * 60;

/** A GET ready to send without the SDK: its URL (signed, in its query) and the headers to send with it. */
export interface SignedGet {
  url: string;
  headers: Record<string, string>;
}

/** Bytes and requests that went to and came from the server, for the bench and the tests. */
export interface ObjectStoreStats {
  bytesUp: number;
  bytesDown: number;
  requests: number;
}

/**
 * A bucket, through @aws-sdk/client-s3: the few calls a store makes. Every
 * failure is ERR_OBJECT_STORE with the S3 error code (`data.s3Code`, or
 * the errno of a failed connection) and HTTP status (`data.status`); only
 * a real NoSuchKey / 404 of an existing bucket reads as "absent".
 */
export class ObjectStore {
  readonly bucket: string;
  readonly endpoint: string;
  readonly region: string;
  /** ms without a byte moving before a request fails (BucketAddress.idleTimeout). */
  readonly idleTimeout: number;
  readonly stats: ObjectStoreStats = { bytesUp: 0, bytesDown: 0, requests: 0 };
  multipartThreshold = DEFAULT_MULTIPART_THRESHOLD;
  readonly #s3: typeof S3;
  readonly #client: S3.S3Client;
  /** The same, making one attempt: for streamed bodies, which the SDK cannot send twice. */
  readonly #once: S3.S3Client;

  private constructor(a: BucketAddress, s3: typeof S3) {
    this.bucket = a.bucket;
    this.endpoint = a.endpoint;
    this.region = a.region;
    this.idleTimeout = a.idleTimeout ?? 60_000;
    this.#s3 = s3;
    const agent = { keepAlive: true, maxSockets: 64 };
    const config: S3.S3ClientConfig = {
      endpoint: a.endpoint,
      region: a.region,
      forcePathStyle: true,
      // With the defaults (WHEN_SUPPORTED) streamed uploads get a trailing checksum that radosgw refuses (411).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // socketTimeout (nothing moving on the socket that long, as idleTimeout promises), not requestTimeout:
      // in @smithy/node-http-handler 4.x that one only logs a warning, and a hung server held every call for good.
      requestHandler: { httpAgent: new http.Agent(agent), httpsAgent: new https.Agent(agent), connectionTimeout: 10_000, socketTimeout: this.idleTimeout },
      ...(a.credentials ? { credentials: a.credentials } : {}),
      // Failures reach the caller as ERR_OBJECT_STORE; the SDK's own warnings on the console would be noise.
      logger: { trace() {}, debug() {}, info() {}, warn() {}, error() {} },
    };
    this.#client = new s3.S3Client({ ...config, maxAttempts: 3 });
    this.#once = new s3.S3Client({ ...config, maxAttempts: 1 });
  }

  static async connect(a: BucketAddress): Promise<ObjectStore> {
    return new ObjectStore(a, await loadSdk());
  }

  async #send<T>(client: S3.S3Client, cmd: unknown, what: string, data: CabErrorData, signal?: AbortSignal): Promise<T> {
    this.stats.requests++;
    try {
      return (await client.send(cmd as Parameters<S3.S3Client['send']>[0], signal ? { abortSignal: signal } : {})) as T;
    } catch (e) {
      throw s3Error(e, what, { bucket: this.bucket, ...data });
    }
  }

  /** Checks that the bucket is there; with `create`, makes it if it is not. */
  async ensureBucket(create: boolean): Promise<void> {
    try {
      await this.#send(this.#client, new this.#s3.HeadBucketCommand({ Bucket: this.bucket }), `looking for bucket ${this.bucket}`, {});
      return;
    } catch (e) {
      if (!(e instanceof CabError) || e.data.status !== 404 || !create) throw e;
    }
    try {
      await this.#send(this.#client, new this.#s3.CreateBucketCommand({ Bucket: this.bucket }), `creating bucket ${this.bucket}`, {});
    } catch (e) {
      if (!(e instanceof CabError) || e.data.s3Code !== 'BucketAlreadyOwnedByYou') throw e;
    }
  }

  /**
   * Writes an object unless one of that name exists (If-None-Match: *):
   * 'exists' when the server answers 412. A file above multipartThreshold
   * goes up in parts (aborted on failure); with a server that ignores
   * If-None-Match on completing those (radosgw of Ceph 16 does), a HEAD
   * before is the only check.
   */
  async putIfAbsent(key: string, body: Uint8Array | FileBody, signal?: AbortSignal): Promise<'created' | 'exists'> {
    if (!(body instanceof Uint8Array) && body.size > this.multipartThreshold) {
      if (await this.head(key)) return 'exists';
      return this.#putParts(key, body, signal);
    }
    try {
      await this.#put(key, body, true, signal);
      return 'created';
    } catch (e) {
      if (e instanceof CabError && e.data.status === 412) return 'exists';
      throw e;
    }
  }

  /** Writes (or replaces) a small object; its tag. */
  put(key: string, body: Uint8Array): Promise<string> {
    return this.#put(key, body, false);
  }

  /** Writes a small object unless one of that name exists: its tag, or undefined if it exists (412). */
  async putOnce(key: string, body: Uint8Array): Promise<string | undefined> {
    try {
      return await this.#put(key, body, true);
    } catch (e) {
      if (e instanceof CabError && e.data.status === 412) return undefined;
      throw e;
    }
  }

  async #put(key: string, body: Uint8Array | FileBody, ifAbsent: boolean, signal?: AbortSignal): Promise<string> {
    const what = `writing ${key}`;
    const size = body instanceof Uint8Array ? body.length : body.size;
    const cond = ifAbsent ? { IfNoneMatch: '*' } : {};
    let out: S3.PutObjectCommandOutput;
    if (body instanceof Uint8Array) {
      out = await this.#send(this.#client, new this.#s3.PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: size, ...cond }), what, { key }, signal);
    } else {
      const sha = await fileSha256(body.file, 0, size);
      out = await retried(() => {
        const stream = fs.createReadStream(body.file, { start: 0, end: Math.max(0, size - 1), highWaterMark: 1024 * 1024 });
        const cmd = signPayload(new this.#s3.PutObjectCommand({ Bucket: this.bucket, Key: key, Body: size ? stream : new Uint8Array(0), ContentLength: size, ...cond }), sha);
        return this.#send<S3.PutObjectCommandOutput>(this.#once, cmd, what, { key }, signal).finally(() => stream.destroy());
      });
    }
    this.stats.bytesUp += size;
    return out.ETag ?? '';
  }

  async #putParts(key: string, body: FileBody, signal?: AbortSignal): Promise<'created' | 'exists'> {
    const s3 = this.#s3;
    const what = `writing ${key} in parts`;
    // Not cut by `signal`: a create cancelled here may still be made there, open for good (aborted below instead).
    const { UploadId } = await this.#send<S3.CreateMultipartUploadCommandOutput>(this.#client, new s3.CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key }), what, { key });
    const partSize = Math.max(PART_SIZE, Math.ceil(body.size / 10_000));
    const count = Math.ceil(body.size / partSize);
    const parts: S3.CompletedPart[] = [];
    try {
      if (signal?.aborted) throw s3Error(Object.assign(new Error('aborted'), { name: 'AbortError' }), what, { bucket: this.bucket, key });
      let next = 0;
      const worker = async () => {
        while (next < count) {
          const i = next++;
          const start = i * partSize;
          const len = Math.min(partSize, body.size - start);
          const sha = await fileSha256(body.file, start, len);
          const out = await retried(() => {
            const stream = fs.createReadStream(body.file, { start, end: start + len - 1, highWaterMark: 1024 * 1024 });
            const cmd = signPayload(new s3.UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId, PartNumber: i + 1, Body: stream, ContentLength: len }), sha);
            return this.#send<S3.UploadPartCommandOutput>(this.#once, cmd, what, { key }, signal).finally(() => stream.destroy());
          });
          this.stats.bytesUp += len;
          parts[i] = { ETag: out.ETag!, PartNumber: i + 1 };
        }
      };
      await Promise.all([worker(), worker()]);
      const done = new s3.CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId, MultipartUpload: { Parts: parts }, IfNoneMatch: '*' });
      await this.#send(this.#client, done, what, { key }, signal);
      return 'created';
    } catch (e) {
      await this.abortUpload(key, UploadId!).catch(() => {}); // the upload's own failure is the one to report
      if (e instanceof CabError && e.data.status === 412) return 'exists';
      throw e;
    }
  }

  /** A small object's bytes; undefined only if it does not exist. */
  async get(key: string): Promise<Buffer | undefined> {
    return (await this.getTagged(key))?.body;
  }

  /** A small object's bytes and tag; undefined only if it does not exist. */
  async getTagged(key: string): Promise<{ body: Buffer; etag: string } | undefined> {
    let got: Fetched;
    try {
      got = await this.getStream(key);
    } catch (e) {
      if (e instanceof CabError && e.data.s3Code === 'NoSuchKey') return undefined;
      throw e;
    }
    const parts: Buffer[] = [];
    for await (const b of got.chunks) parts.push(b);
    return { body: Buffer.concat(parts), etag: got.etag };
  }

  /**
   * The bytes [start, end) of an object (all of it without a range): its
   * size (the bytes that will come) and the bytes as they arrive. Breaking
   * out of the loop closes the connection. Absent: ERR_OBJECT_STORE with
   * s3Code NoSuchKey; a failure midway, ERR_OBJECT_STORE.
   */
  async getStream(key: string, range?: { start: number; end: number }, signal?: AbortSignal): Promise<Fetched> {
    const Range = range ? `bytes=${range.start}-${range.end - 1}` : undefined;
    const out = await this.#send<S3.GetObjectCommandOutput>(this.#client, new this.#s3.GetObjectCommand({ Bucket: this.bucket, Key: key, Range }), `reading ${key}`, { key }, signal);
    const body = out.Body as Readable;
    const stats = this.stats;
    const bucket = this.bucket;
    // The signal ends the body too, not only the request: a reader that stops frees the connection.
    const stop = () => body.destroy(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    signal?.addEventListener('abort', stop, { once: true });
    async function* chunks(): AsyncGenerator<Buffer> {
      try {
        for await (const b of body) {
          stats.bytesDown += (b as Buffer).length;
          yield b as Buffer;
        }
      } catch (e) {
        throw s3Error(e, `reading ${key}`, { bucket, key });
      } finally {
        signal?.removeEventListener('abort', stop);
        body.destroy();
      }
    }
    return { size: out.ContentLength, etag: out.ETag ?? '', chunks: chunks() };
  }

  /**
   * A GET of `key` for sending without the SDK (the fetching thread's:
   * disk/fetch-worker.ts): a URL presigned by the SDK's presigner (AWS
   * Signature Version 4 in the query, with the credentials, endpoint and
   * clock correction the SDK resolves). Counted as a request.
   */
  async signedGet(key: string): Promise<SignedGet> {
    let url: string;
    try {
      const { getSignedUrl } = await (presigner ??= import('@aws-sdk/s3-request-presigner'));
      url = await getSignedUrl(this.#client, new this.#s3.GetObjectCommand({ Bucket: this.bucket, Key: key }), { expiresIn: SIGNED_FOR_S });
    } catch (e) {
      throw s3Error(e, `signing a read of ${key}`, { bucket: this.bucket, key });
    }
    this.stats.requests++;
    return { url, headers: { host: new URL(url).host } };
  }

  /** An object's size and time; undefined only if the bucket exists and the object does not. */
  async head(key: string): Promise<{ size: number; mtime: Date; etag: string } | undefined> {
    try {
      const out = await this.#send<S3.HeadObjectCommandOutput>(this.#client, new this.#s3.HeadObjectCommand({ Bucket: this.bucket, Key: key }), `looking for ${key}`, { key });
      return { size: out.ContentLength ?? 0, mtime: out.LastModified ?? new Date(0), etag: out.ETag ?? '' };
    } catch (e) {
      if (!(e instanceof CabError) || e.data.status !== 404) throw e;
    }
    // A HEAD's 404 has no body to tell a missing object from a missing bucket.
    await this.ensureBucket(false);
    return undefined;
  }

  /** Objects whose keys start with `prefix`, in key order, lazily, a page (`pageSize`, at most 1000) at a time (checked: bucket/listing.ts). */
  list(prefix: string, pageSize = 1000): AsyncGenerator<ObjectInfo> {
    return listObjects(this.bucket, prefix, (token) =>
      this.#send(this.#client, new this.#s3.ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token, MaxKeys: pageSize }), `listing ${prefix}`, { key: prefix }),
    );
  }

  /**
   * Deletes objects, 1000 a request. One that is absent is no failure; a
   * key the server failed to delete for a reason of its own (radosgw under
   * load answers UnknownError or InternalError for single keys) is tried
   * again, twice; any other per-key error is ERR_OBJECT_STORE.
   */
  async deleteMany(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      let batch = keys.slice(i, i + 1000);
      for (let attempt = 1; batch.length > 0; attempt++) {
        const cmd = new this.#s3.DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } });
        const out = await this.#send<S3.DeleteObjectsCommandOutput>(this.#client, cmd, `deleting ${batch.length} objects`, { key: batch[0] });
        const errors = (out.Errors ?? []).filter((x) => x.Code !== 'NoSuchKey');
        const err = errors.find((x) => attempt >= STREAM_ATTEMPTS || !SERVER_SIDE.has(x.Code ?? ''));
        if (err) throw new CabError('ERR_OBJECT_STORE', `deleting ${err.Key}: ${err.Code}: ${err.Message}`, { bucket: this.bucket, key: err.Key, s3Code: err.Code });
        batch = errors.map((x) => x.Key!);
        if (batch.length > 0) await sleep(100 * 4 ** attempt);
      }
    }
  }

  /** Multipart uploads in progress under `prefix` (checked: bucket/listing.ts). */
  listUploads(prefix: string): AsyncGenerator<UploadInfo> {
    return listUploads(this.bucket, prefix, (KeyMarker, UploadIdMarker) =>
      this.#send(this.#client, new this.#s3.ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: prefix, KeyMarker, UploadIdMarker }), `listing uploads under ${prefix}`, { key: prefix }),
    );
  }

  async abortUpload(key: string, uploadId: string): Promise<void> {
    try {
      await this.#send(this.#client, new this.#s3.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }), `aborting an upload of ${key}`, { key });
    } catch (e) {
      if (!(e instanceof CabError) || e.data.s3Code !== 'NoSuchUpload') throw e;
    }
  }

  /** Removes the (empty) bucket. */
  async deleteBucket(): Promise<void> {
    await this.#send(this.#client, new this.#s3.DeleteBucketCommand({ Bucket: this.bucket }), `removing bucket ${this.bucket}`, {});
  }

  /** The server's clock now: the time it gives an object written now (as a listing shows it: HEAD rounds to the second). */
  async serverTime(key: string): Promise<number> {
    await this.put(key, new Uint8Array(0));
    try {
      for await (const o of this.list(key, 1)) if (o.key === key) return o.mtime.getTime();
      throw new CabError('ERR_OBJECT_STORE', `${key} vanished as it was written`, { bucket: this.bucket, key });
    } finally {
      await this.deleteMany([key]).catch(() => {});
    }
  }

  close(): void {
    this.#client.destroy();
    this.#once.destroy();
  }
}

async function retried<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (attempt >= STREAM_ATTEMPTS || !transient(e)) throw e;
      await sleep(100 * 4 ** attempt);
    }
  }
}
