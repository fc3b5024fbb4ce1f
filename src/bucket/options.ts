import { CabError } from '../errors.js';
import { checkBucketName, normalizePrefix } from './keys.js';
import { DEFAULT_MULTIPART_THRESHOLD } from './object-store.js';

/**
 * Where a bucket-backed store keeps its fragments and publishes its
 * finalized blobs: an S3 bucket (docs/FORMAT.md, "In an object store").
 * Many stores (folders, processes, machines) may share one bucket and
 * prefix: each reads and deduplicates against what the others publish.
 */
export interface ObjectStoreOptions {
  /** The S3 endpoint, such as http://127.0.0.1:17480 (requests are path-style: endpoint/bucket/key). */
  endpoint: string;
  /** The bucket. A store that may be created (StoreOptions.create) makes it if it is absent. */
  bucket: string;
  /** Every key of the store starts with this (default ''): stores with different prefixes share nothing. */
  prefix?: string;
  /** The region to sign requests for (default 'us-east-1'). */
  region?: string;
  /** Default: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else the AWS SDK's default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /**
   * Bytes of fragments the local cas/ keeps as a cache (default 4 GiB),
   * least recently used evicted first (every one is in the bucket); a
   * reader holding a fragment open keeps reading it.
   */
  cacheBytes?: number;
  /**
   * How often (ms) the store looks for blobs that other stores on the
   * bucket published or deleted (default 30 000; 0: never in the
   * background). It also looks on open, when a blob asked for by name is
   * not here, and on `sync()`.
   */
  syncInterval?: number;
  /**
   * GC deletes no fragment younger than this (ms, default 3 600 000): a
   * margin, not what keeps GC safe (docs/FORMAT.md, "GC across stores").
   * Also the age at which a multipart upload is taken for a killed
   * writer's and aborted.
   */
  gcGrace?: number;
  /** Files above this many bytes are uploaded in parts (default 1 GiB). */
  multipartThreshold?: number;
  /**
   * A request on which no byte moves for this long (ms, default 60 000,
   * at least 2 000: a download is held back up to 1 s for a slow reader)
   * fails with ERR_OBJECT_STORE (ETIMEDOUT): a server that stops answering,
   * or stops mid-body. Before its body began it is tried again, like any
   * failed connection.
   */
  idleTimeout?: number;
}

export const DEFAULT_CACHE_BYTES = 4 * 1024 ** 3;
export const DEFAULT_SYNC_INTERVAL = 30_000;
export const DEFAULT_GC_GRACE = 3_600_000;
export const DEFAULT_IDLE_TIMEOUT = 60_000;

/** The options with their defaults, checked. */
export type ResolvedObjectStoreOptions = Required<Omit<ObjectStoreOptions, 'credentials'>> & Pick<ObjectStoreOptions, 'credentials'>;

/** Checks objectStore options (ERR_BAD_ARGUMENT) and fills in the defaults. */
export function resolveObjectStoreOptions(o: unknown): ResolvedObjectStoreOptions {
  const bad = (why: string) => new CabError('ERR_BAD_ARGUMENT', `objectStore: ${why}`);
  if (o === null || typeof o !== 'object') throw bad('must be an object of endpoint, bucket, prefix, ...');
  const x = o as Record<string, unknown>;
  if (typeof x.endpoint !== 'string' || !/^https?:\/\/[^/]+/.test(x.endpoint)) throw bad(`endpoint must be an http:// or https:// URL, not ${JSON.stringify(x.endpoint)}`);
  const num = (k: string, dflt: number, min: number): number => {
    const v = x[k] ?? dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw bad(`${k} must be an integer >= ${min}, not ${String(v)}`);
    return v;
  };
  const c = x.credentials as Record<string, unknown> | undefined;
  if (c !== undefined && (c === null || typeof c !== 'object' || typeof c.accessKeyId !== 'string' || typeof c.secretAccessKey !== 'string')) {
    throw bad('credentials must be { accessKeyId, secretAccessKey } strings');
  }
  if (x.region !== undefined && (typeof x.region !== 'string' || !x.region)) throw bad('region must be a non-empty string');
  const env = process.env;
  const credentials = (c as ObjectStoreOptions['credentials']) ?? (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY ? { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) } : undefined);
  return {
    endpoint: x.endpoint.replace(/\/+$/, ''),
    bucket: checkBucketName(x.bucket),
    prefix: normalizePrefix(x.prefix),
    region: (x.region as string | undefined) ?? 'us-east-1',
    ...(credentials ? { credentials } : {}),
    cacheBytes: num('cacheBytes', DEFAULT_CACHE_BYTES, 0),
    syncInterval: num('syncInterval', DEFAULT_SYNC_INTERVAL, 0),
    gcGrace: num('gcGrace', DEFAULT_GC_GRACE, 0),
    multipartThreshold: num('multipartThreshold', DEFAULT_MULTIPART_THRESHOLD, 5 * 1024 * 1024),
    idleTimeout: num('idleTimeout', DEFAULT_IDLE_TIMEOUT, 2000),
  };
}
