import crypto from 'node:crypto';

/** Credentials to sign with. */
export interface SigningKeys {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** A GET ready to send: its URL and the headers that sign it. */
export interface SignedGet {
  url: string;
  headers: Record<string, string>;
}

/** SHA-256 of no bytes: the payload hash of a GET. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

const sha256Hex = (s: string) => crypto.createHash('sha256').update(s).digest('hex');
const hmac = (key: crypto.BinaryLike, s: string) => crypto.createHmac('sha256', key).update(s).digest();

/** A path segment encoded as SigV4 (and S3) wants it: RFC 3986 unreserved characters kept, everything else %XX. */
function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * A path-style GET of `key` in `bucket` at `endpoint`, signed with AWS
 * Signature Version 4 in headers (docs.aws.amazon.com, "Signature Version 4
 * signing process"): what the SDK sends for a GetObject, made by hand so
 * that a thread without the SDK (disk/fetch-worker.ts) can send it. `now`
 * is the signing time (default: the clock).
 */
export function signGet(endpoint: string, region: string, bucket: string, key: string, keys: SigningKeys, range?: { start: number; end: number }, now = new Date()): SignedGet {
  const base = new URL(endpoint);
  const prefix = base.pathname.replace(/\/+$/, '');
  const path = `${prefix}/${encodeSegment(bucket)}/${key.split('/').map(encodeSegment).join('/')}`;
  const amzDate = now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const day = amzDate.slice(0, 8);
  const headers: Record<string, string> = { host: base.host, 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': amzDate };
  if (range) headers.range = `bytes=${range.start}-${range.end - 1}`;
  if (keys.sessionToken) headers['x-amz-security-token'] = keys.sessionToken;
  const names = Object.keys(headers).sort();
  const canonical = ['GET', path, '', ...names.map((n) => `${n}:${headers[n]!.trim()}`), '', names.join(';'), EMPTY_SHA256].join('\n');
  const scope = `${day}/${region}/s3/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonical)].join('\n');
  const signingKey = hmac(hmac(hmac(hmac(`AWS4${keys.secretAccessKey}`, day), region), 's3'), 'aws4_request');
  const signature = crypto.createHmac('sha256', signingKey).update(toSign).digest('hex');
  headers.authorization = `AWS4-HMAC-SHA256 Credential=${keys.accessKeyId}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`;
  return { url: `${base.protocol}//${base.host}${path}`, headers };
}
