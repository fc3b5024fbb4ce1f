import fs from 'node:fs/promises';
import { CabError, isCabError } from '../errors.js';
import { readDescriptor } from '../format/descriptor.js';
import { isBlobName, type Layout } from '../format/layout.js';
import type { BucketLayout } from '../bucket/keys.js';
import type { NodeLease } from '../bucket/node-lease.js';
import type { ObjectStore } from '../bucket/object-store.js';
import { ensureDir, exists, fsyncDir, writeAll } from '../disk/durable.js';
import { walk } from '../disk/walk.js';
import { catchUpBlob } from '../index/catchup.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import { replaceDescriptor } from '../index/rewrite.js';
import { tryLockDescriptor } from '../index/rewrite.js';

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
  /** Blobs published elsewhere, now here. */
  imported: number;
  /** Blobs deleted elsewhere, now gone from here. */
  removed: number;
  /** Finalized blobs of this folder that were not in the bucket yet, now published. */
  published: number;
}

/**
 * Publishes a finalized blob's descriptor: write-once into blob/<name>, then
 * the mark that it is there, then its fragments' hold in the lease is
 * dropped (the descriptor keeps them now). If the bucket holds another
 * descriptor of the name (the same blob, written by another store, say
 * both pulled it from one peer), that one is adopted here: it must be
 * finalized with the same hash, and it replaces ours, so that every store
 * on the bucket reads one descriptor per blob.
 */
export async function publishBlob(ctx: SyncContext, name: string): Promise<void> {
  const file = ctx.layout.descriptor(name);
  const ours = await readFileOrAbsent(file);
  if (!ours) throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
  const d = await readDescriptor(file, name, { extents: false });
  if (!d.finalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized: only a finalized blob is published`, { blob: name });
  const key = ctx.keys.descriptor(name);
  if ((await ctx.os.putIfAbsent(key, ours)) === 'exists') {
    const theirs = await ctx.os.get(key);
    if (theirs && !theirs.equals(ours)) await adopt(ctx, name, theirs, d.hash!);
    // Deleted between the put and the get: published, then deleted elsewhere; the next sync removes it here.
  }
  await mark(ctx, name);
  ctx.lease.unhold(name);
}

/** Replaces our descriptor of `name` by the bucket's (`theirs`), which must be finalized with hash `hash`. */
async function adopt(ctx: SyncContext, name: string, theirs: Buffer, hash: Uint8Array): Promise<void> {
  const tmp = await writeTemp(ctx, theirs);
  try {
    const t = await readDescriptor(tmp, name, { extents: false });
    if (!t.finalized || !Buffer.from(t.hash!).equals(Buffer.from(hash))) {
      throw new CabError('ERR_HASH_MISMATCH', `blob ${name}: the bucket holds another blob of that name`, { blob: name, expected: Buffer.from(hash).toString('hex') });
    }
  } finally {
    await fs.rm(tmp, { force: true });
  }
  const got = await tryLockDescriptor(ctx.layout, name);
  if (!got) return;
  try {
    if (!got.locked) return; // a healer has it: left for the next sync
    const fh = await replaceDescriptor(ctx.layout, ctx.index, name, (append) => append(theirs));
    await fh.close();
  } finally {
    await got.fh.close();
  }
}

/**
 * Fetches a published descriptor into this folder: written in tmp/,
 * checked (a finalized descriptor of that name), fsync'd, linked into
 * blob/ (a descriptor already there stays), marked published, indexed.
 * False if the bucket has no such blob.
 */
export async function importBlob(ctx: SyncContext, name: string): Promise<boolean> {
  const body = await ctx.os.get(ctx.keys.descriptor(name));
  if (!body) return false;
  const tmp = await writeTemp(ctx, body);
  try {
    const d = await readDescriptor(tmp, name, { extents: false });
    if (!d.finalized || d.torn) throw new CabError('ERR_DESCRIPTOR_CORRUPT', `the published descriptor of ${name} is not a whole finalized descriptor`, { blob: name, key: ctx.keys.descriptor(name) });
    await ensureDir(ctx.layout.blobDir(name), ctx.knownDirs);
    try {
      await fs.link(tmp, ctx.layout.descriptor(name));
      await fsyncDir(ctx.layout.blobDir(name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  } finally {
    await fs.rm(tmp, { force: true });
  }
  await mark(ctx, name);
  await catchUpBlob(ctx.index, ctx.layout, name);
  return true;
}

/**
 * Brings this folder in line with the bucket: blobs published elsewhere
 * are fetched, blobs deleted elsewhere (marked published here, gone from
 * the bucket, and a HEAD says so: never from the listing alone, which may
 * predate a publish of ours) are removed, and finalized blobs of ours not
 * in the bucket yet (a close that could not publish) are published.
 */
export async function syncBlobs(ctx: SyncContext): Promise<SyncReport> {
  const report: SyncReport = { imported: 0, removed: 0, published: 0 };
  const remote = new Set<string>();
  for await (const o of ctx.os.list(ctx.keys.descriptors)) {
    const name = ctx.keys.blobOf(o.key);
    if (name) remote.add(name);
  }
  const marked = new Set<string>();
  for await (const name of walk(ctx.layout.published, 1)) if (isBlobName(name)) marked.add(name);
  const local = new Set<string>();
  for await (const name of walk(ctx.layout.blobRoot, 1)) if (isBlobName(name)) local.add(name);
  for (const name of remote) {
    if (local.has(name)) continue;
    if (await importBlob(ctx, name)) report.imported++;
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

/** Whether blob `name` is marked as published. */
export function isPublished(layout: Layout, name: string): Promise<boolean> {
  return exists(layout.publishedMark(name));
}

async function mark(ctx: SyncContext, name: string): Promise<void> {
  const dir = ctx.layout.publishedDir(name);
  await ensureDir(dir, ctx.knownDirs);
  await (await fs.open(ctx.layout.publishedMark(name), 'a')).close();
  await fsyncDir(dir);
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
  } finally {
    await fh.close().catch(() => {});
  }
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
