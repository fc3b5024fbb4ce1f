import fs from 'node:fs/promises';
import { CabError, isCabError } from '../errors.js';
import { readDescriptorBytes } from '../format/descriptor.js';
import { isBlobName, type Layout } from '../format/layout.js';
import type { BucketLayout } from '../bucket/keys.js';
import type { NodeLease } from '../bucket/node-lease.js';
import type { ObjectStore } from '../bucket/object-store.js';
import { ensureDir, fsyncDir, writeAll, writeFileDurable } from '../disk/durable.js';
import { walk } from '../disk/walk.js';
import { catchUpBlob } from '../index/catchup.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import { replaceDescriptor, tryLockDescriptor } from '../index/rewrite.js';

/** What publishing and fetching descriptors need. */
export interface SyncContext {
  layout: Layout;
  index: ChunkIndex;
  knownDirs: Set<string>;
  os: ObjectStore;
  keys: BucketLayout;
  lease: NodeLease;
  /** Removes a blob from this folder only (the bucket deleted it). */
  removeLocal(name: string): Promise<void>;
}

/** What one sync did. */
export interface SyncReport {
  /** Blobs published elsewhere, now here (or replaced here: healed elsewhere). */
  imported: number;
  /** Blobs deleted elsewhere, now gone from here. */
  removed: number;
  /** Finalized blobs of this folder that were not in the bucket yet, now published. */
  published: number;
  /**
   * Blobs whose descriptor object in the bucket is not a whole finalized
   * descriptor (damaged behind the stores' back): skipped. This folder's
   * copy, if any, stays as it is; a read of one fetched by name fails with
   * ERR_DESCRIPTOR_CORRUPT, and GC on the bucket stops before deleting.
   */
  damaged: string[];
}

/**
 * Publishes a finalized blob's descriptor: write-once into blob/<name>,
 * then the mark that it is there (holding the object's tag), then its
 * fragments' hold in the lease is dropped (the descriptor keeps them now).
 * If the bucket holds another descriptor of the name (the same blob,
 * written by another store: say both pulled it from one peer), that one is
 * adopted: it must be finalized with the same hash, and it replaces ours,
 * so that every store on the bucket reads one descriptor per blob.
 */
export async function publishBlob(ctx: SyncContext, name: string): Promise<void> {
  const file = ctx.layout.descriptor(name);
  const ours = await readFileOrAbsent(file);
  if (!ours) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
  const d = await readDescriptorBytes(ours, name, { extents: false });
  if (!d.finalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized: only a finalized blob is published`, { blob: name });
  const key = ctx.keys.descriptor(name);
  let etag = await ctx.os.putOnce(key, ours);
  if (etag === undefined) {
    const theirs = await ctx.os.getTagged(key);
    // Deleted between the put and the get: published, then deleted elsewhere; the next sync removes it here.
    if (!theirs) return;
    if (!theirs.body.equals(ours)) {
      const t = await readDescriptorBytes(theirs.body, name, { extents: false });
      if (!t.finalized || !Buffer.from(t.hash!).equals(Buffer.from(d.hash!))) {
        throw new CabError('ERR_HASH_MISMATCH', `blob ${name}: the bucket holds another blob of that name`, { blob: name, expected: Buffer.from(d.hash!).toString('hex') });
      }
      if (!(await replaceLocal(ctx, name, theirs.body))) return; // a healer has it: the next sync adopts it
    }
    etag = theirs.etag;
  }
  await mark(ctx, name, etag);
  ctx.lease.unhold(name);
}

/**
 * Brings blob `name` here as the bucket has it: fetched if this folder
 * lacks it; replaced if this folder's copy is marked with another tag (a
 * descriptor healed elsewhere). Checked first: a whole finalized
 * descriptor of that name. False if the bucket has no such blob.
 */
export async function fetchBlob(ctx: SyncContext, name: string): Promise<boolean> {
  const got = await ctx.os.getTagged(ctx.keys.descriptor(name));
  if (!got) return false;
  const d = await readDescriptorBytes(got.body, name, { extents: false });
  if (!d.finalized || d.torn) throw new CabError('ERR_DESCRIPTOR_CORRUPT', `the published descriptor of ${name} is not a whole finalized descriptor`, { blob: name, key: ctx.keys.descriptor(name) });
  const tag = await readMark(ctx.layout, name);
  if (tag === got.etag) return true;
  if (tag !== undefined) {
    if (!(await replaceLocal(ctx, name, got.body))) return true;
  } else {
    const tmp = await writeTemp(ctx, got.body);
    try {
      await ensureDir(ctx.layout.blobDir(name), ctx.knownDirs);
      await fs.link(tmp, ctx.layout.descriptor(name));
      await fsyncDir(ctx.layout.blobDir(name));
    } catch (e) {
      // A blob of that name here already (being written, or not yet published): it stays as it is.
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return true;
      throw e;
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
  await mark(ctx, name, got.etag);
  await catchUpBlob(ctx.index, ctx.layout, name);
  return true;
}

/** Replaces this folder's descriptor of `name` by `body`; false if a writer or healer holds it. */
async function replaceLocal(ctx: SyncContext, name: string, body: Buffer): Promise<boolean> {
  const got = await tryLockDescriptor(ctx.layout, name);
  if (!got) return false;
  try {
    if (!got.locked) return false;
    const fh = await replaceDescriptor(ctx.layout, ctx.index, name, (append) => append(body));
    await fh.close();
    return true;
  } finally {
    await got.fh.close();
  }
}

/**
 * Brings this folder in line with the bucket: blobs published elsewhere
 * are fetched (and copies healed elsewhere replaced), blobs deleted
 * elsewhere (marked published here, gone from the bucket, and a HEAD says
 * so: never from the listing alone, which may predate a publish of ours)
 * are removed, and finalized blobs of ours not in the bucket yet (a close
 * that could not publish) are published.
 */
export async function syncBlobs(ctx: SyncContext): Promise<SyncReport> {
  const report: SyncReport = { imported: 0, removed: 0, published: 0, damaged: [] };
  const remote = new Map<string, string>();
  for await (const o of ctx.os.list(ctx.keys.descriptors)) {
    const name = ctx.keys.blobOf(o.key);
    if (name) remote.set(name, o.etag);
  }
  const local = new Set<string>();
  for await (const name of walk(ctx.layout.blobRoot, 1, { everyEntry: true })) if (isBlobName(name)) local.add(name);
  const marked = new Set<string>();
  for await (const name of walk(ctx.layout.published, 1)) if (isBlobName(name)) marked.add(name);
  for (const [name, etag] of remote) {
    if (local.has(name) && (!marked.has(name) || (await readMark(ctx.layout, name)) === etag)) continue;
    try {
      if (await fetchBlob(ctx, name)) report.imported++;
    } catch (e) {
      // One damaged object must not stop every store on the bucket from opening and syncing: only that blob fails.
      if (!isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) throw e;
      report.damaged.push(name);
    }
  }
  for (const name of marked) {
    if (remote.has(name) || !local.has(name)) continue;
    if (await ctx.os.head(ctx.keys.descriptor(name))) continue;
    try {
      await ctx.removeLocal(name);
      report.removed++;
    } catch (e) {
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB') && !isCabError(e, 'ERR_BLOB_LOCKED')) throw e;
    }
  }
  for (const name of local) {
    if (marked.has(name) || !ctx.index.blob(name)?.h) continue;
    try {
      await publishBlob(ctx, name);
      report.published++;
    } catch (e) {
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
    }
  }
  return report;
}

/** The tag of blob `name`'s published descriptor as this folder has it; undefined if it is not marked published. */
export async function readMark(layout: Layout, name: string): Promise<string | undefined> {
  try {
    return await fs.readFile(layout.publishedMark(name), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

async function mark(ctx: SyncContext, name: string, etag: string): Promise<void> {
  await ensureDir(ctx.layout.publishedDir(name), ctx.knownDirs);
  await writeFileDurable(ctx.layout.publishedMark(name), etag);
}

async function writeTemp(ctx: SyncContext, body: Buffer): Promise<string> {
  const tmp = ctx.layout.tmpFile('desc');
  const fh = await fs.open(tmp, 'wx');
  try {
    await writeAll(fh, body, 0);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await fs.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  return tmp;
}

async function readFileOrAbsent(file: string): Promise<Buffer | undefined> {
  try {
    return await fs.readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

