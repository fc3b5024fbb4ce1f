import crypto from 'node:crypto';
import path from 'node:path';
import { CabError } from '../errors.js';

export const FORMAT_VERSION = 1;
const BLOB_NAME = /^[0-9a-f]{32}$/;
const FRAGMENT_ID = /^[0-9a-f]{64}$/;

export function isBlobName(name: unknown): name is string {
  return typeof name === 'string' && BLOB_NAME.test(name);
}

/** Throws ERR_INVALID_BLOB_NAME unless `name` is 32 lowercase hex characters. Touches nothing. */
export function checkBlobName(name: unknown): string {
  if (!isBlobName(name)) {
    throw new CabError('ERR_INVALID_BLOB_NAME', `not a blob name (32 lowercase hex chars): ${JSON.stringify(String(name).slice(0, 80))}`, {
      found: name,
    });
  }
  return name;
}

export function isFragmentId(id: string): boolean {
  return FRAGMENT_ID.test(id);
}

export function newBlobName(): string {
  return crypto.randomBytes(16).toString('hex');
}

/**
 * Every path inside a store comes from here and nowhere else. Names are
 * checked before they reach this class, so nothing received from outside
 * becomes a path without passing checkBlobName or isFragmentId.
 */
export class Layout {
  readonly root: string;
  readonly config: string;
  readonly blobRoot: string;
  readonly casRoot: string;
  readonly tmp: string;
  /** The reserve kept for a full disk (disk/reserve.ts). */
  readonly reserve: string;
  readonly index: string;
  readonly leases: string;
  readonly tables: string;
  readonly layers: string;
  /** Marks of blobs whose descriptor is in the bucket (bucket-backed stores). */
  readonly published: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.config = path.join(this.root, 'cabstore.json');
    this.blobRoot = path.join(this.root, 'blob');
    this.casRoot = path.join(this.root, 'cas');
    this.tmp = path.join(this.root, 'tmp');
    this.reserve = path.join(this.root, 'reserve');
    this.index = path.join(this.root, 'index');
    this.leases = path.join(this.root, 'leases');
    this.tables = path.join(this.root, 'tables');
    this.layers = path.join(this.root, 'layers');
    this.published = path.join(this.root, 'published');
  }

  publishedDir(name: string): string {
    return path.join(this.published, name.slice(0, 2));
  }

  /** An empty file: blob `name`'s descriptor is in the bucket (published from here, or fetched from there). */
  publishedMark(name: string): string {
    return path.join(this.published, name.slice(0, 2), name);
  }

  blobDir(name: string): string {
    return path.join(this.blobRoot, name.slice(0, 2));
  }

  descriptor(name: string): string {
    return path.join(this.blobRoot, name.slice(0, 2), name);
  }

  /** A finalized blob's leaf layer (its merkle tree's 16 KiB leaf hashes): derived, safe to delete. */
  leafLayer(name: string): string {
    return path.join(this.layers, name.slice(0, 2), name);
  }

  fragmentDir(id: string): string {
    return path.join(this.casRoot, id.slice(0, 2), id.slice(2, 4));
  }

  fragment(id: string): string {
    return path.join(this.casRoot, id.slice(0, 2), id.slice(2, 4), id);
  }

  /** A fresh temp file name: pid first, so GC can tell a live writer's files from a dead one's. */
  tmpFile(kind: 'frag' | 'desc' | 'leaf' = 'frag'): string {
    return path.join(this.tmp, `${process.pid}-${crypto.randomBytes(8).toString('hex')}.${kind}`);
  }
}
