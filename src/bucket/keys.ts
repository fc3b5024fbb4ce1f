import crypto from 'node:crypto';
import { CabError } from '../errors.js';
import { isBlobName, isFragmentId } from '../format/layout.js';

/**
 * Every key a store uses in its bucket comes from here (docs/FORMAT.md,
 * "In an object store"), as every path on disk comes from Layout. Names
 * read back from a listing pass isFragmentId / isBlobName before anything
 * acts on them: a key that is not one of ours is left alone.
 */
export class BucketLayout {
  /** '' or a prefix ending in '/'. */
  readonly prefix: string;
  readonly config: string;
  readonly fragments: string;
  readonly descriptors: string;
  readonly leases: string;
  readonly doomedLists: string;

  constructor(prefix: string) {
    this.prefix = normalizePrefix(prefix);
    this.config = `${this.prefix}cabstore.json`;
    this.fragments = `${this.prefix}cas/`;
    this.descriptors = `${this.prefix}blob/`;
    this.leases = `${this.prefix}nodes/`;
    this.doomedLists = `${this.prefix}doomed/`;
  }

  fragment(id: string): string {
    return `${this.fragments}${id}`;
  }

  descriptor(name: string): string {
    return `${this.descriptors}${name}`;
  }

  /** One process's lease: nodes/<node>/<lease name>, where the lease name is its local lease file's. */
  lease(node: string, lease: string): string {
    return `${this.leases}${node}/${lease}`;
  }

  /** A doomed list: its name sorts by the time it was made (ms since 1970, 15 digits), then random. */
  doomedList(): string {
    return `${this.doomedLists}${String(Date.now()).padStart(15, '0')}-${crypto.randomBytes(6).toString('hex')}`;
  }

  /** An object GC writes to learn the server's clock. */
  clock(): string {
    return `${this.prefix}clock/${crypto.randomBytes(8).toString('hex')}`;
  }

  /** Whether a key is one clock() names (and not, say, an object of a store whose prefix is this one's + 'clock/'). */
  isClock(key: string): boolean {
    return key.startsWith(this.prefix) && /^clock\/[0-9a-f]{16}$/.test(key.slice(this.prefix.length));
  }

  /** The fragment id a key names, or undefined if it names none. */
  fragmentOf(key: string): string | undefined {
    const id = key.startsWith(this.fragments) ? key.slice(this.fragments.length) : '';
    return isFragmentId(id) ? id : undefined;
  }

  /** The blob name a descriptor key names, or undefined. */
  blobOf(key: string): string | undefined {
    const name = key.startsWith(this.descriptors) ? key.slice(this.descriptors.length) : '';
    return isBlobName(name) ? name : undefined;
  }

  /** [node, lease] of a lease key, or undefined. */
  leaseOf(key: string): [string, string] | undefined {
    const m = key.startsWith(this.leases) ? /^([0-9a-f]{16})\/([0-9]+-[0-9a-f]{12})$/.exec(key.slice(this.leases.length)) : null;
    return m ? [m[1]!, m[2]!] : undefined;
  }
}

/** A bucket name S3 accepts: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit. */
export function checkBucketName(bucket: unknown): string {
  if (typeof bucket !== 'string' || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new CabError('ERR_BAD_ARGUMENT', `not an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens): ${JSON.stringify(String(bucket).slice(0, 80))}`);
  }
  return bucket;
}

/** '' stays ''; otherwise one trailing '/'. No leading '/', no '//' or '.' / '..' segments, at most 512 characters. */
export function normalizePrefix(prefix: unknown): string {
  if (prefix === undefined || prefix === '') return '';
  const ok = typeof prefix === 'string' && prefix.length <= 512 && !prefix.startsWith('/') && /^[\x21-\x7e]+$/.test(prefix);
  const p = ok ? (prefix.endsWith('/') ? prefix : `${prefix}/`) : '';
  if (!ok || p.slice(0, -1).split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw new CabError('ERR_BAD_ARGUMENT', `not a key prefix (printable ASCII without spaces, no leading '/', no empty, '.' or '..' parts): ${JSON.stringify(String(prefix).slice(0, 80))}`);
  }
  return p;
}

/** s3://bucket/prefix as the command line takes it: [bucket, prefix]. */
export function parseS3Url(url: string): [string, string] {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (!m) throw new CabError('ERR_BAD_ARGUMENT', `not an s3://bucket/prefix URL: ${JSON.stringify(url.slice(0, 80))}`);
  return [checkBucketName(m[1]), normalizePrefix(m[2])];
}
