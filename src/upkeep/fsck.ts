import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError, ioError, isCabError, throwIfAborted } from '../errors.js';
import { HashJob } from '../hash/pool.js';
import { bytesEqual } from '../hash/sha256.js';
import { readExtents } from '../disk/blob-bytes.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import { catchUpBehind } from '../index/catchup.js';
import { readDescriptor, type Descriptor } from '../format/descriptor.js';
import { checkBlob } from './fsck-blob.js';
import { problem, type FsckContext, type FsckOptions, type FsckReport } from './fsck-context.js';
import { FragmentFiles } from '../disk/fragments.js';
import { tempEntries } from '../disk/walk.js';
import type { Layout } from '../format/layout.js';
import type { Cas } from '../disk/cas.js';

export type { FsckOptions, FsckProblem, FsckProblemKind, FsckReport } from './fsck-context.js';

/**
 * Checks a store; see `check`. Only an absent file (ENOENT) counts as a
 * missing fragment or blob: any other failure (EIO, EMFILE, EISDIR, ...)
 * stops fsck with ERR_IO, so that it is never taken for damage and recorded.
 */
export async function fsck(cas: Cas, index: ChunkIndex, blobNames: AsyncIterable<string>, fragIds: AsyncIterable<string>, opts: FsckOptions = {}): Promise<FsckReport> {
  try {
    await catchUpBehind(index, cas.layout);
    return await check(cas, index, blobNames, fragIds, opts);
  } catch (e) {
    throw ioError(e, 'fsck');
  }
}

/**
 * Checks a store.
 *
 * - Plain: descriptors parse and end cleanly; every fragment a blob
 *   references exists, is a regular file and is long enough; the chunk
 *   index agrees with the descriptors (in a store opened with catchUpIndex, the
 *   index of a blob whose writer died since is caught up first, as the next
 *   open would); damage recorded earlier is reported.
 *   No content is read, except the chunks of an extent whose fragment is
 *   missing or short (to tell which are lost).
 * - `verify`: also every finalized, undamaged blob is hashed against its
 *   BEP 52 hash, and every unfinalized blob chunk by chunk against its
 *   recorded chunk hashes (and its open chunk against the hash of it the
 *   last record holds). The chunks of a blob whose hash is wrong are then
 *   hashed one by one against their recorded hashes, which says exactly which are
 *   damaged.
 * - `repair`: torn descriptor tails are truncated (a corrupt descriptor is
 *   only reported), the index rebuilt where it disagrees, and damage
 *   recorded in whole-chunk ranges (readers then fail only the reads that
 *   touch them, and the index stops offering those chunks). Nothing else is
 *   deleted. A blob that a live writer holds is checked but not repaired.
 *
 * Damage is a problem on every run until a pull or an import heals the blob.
 */
async function check(cas: Cas, index: ChunkIndex, blobNames: AsyncIterable<string>, fragIds: AsyncIterable<string>, opts: FsckOptions = {}): Promise<FsckReport> {
  const { layout } = cas;
  const t0 = performance.now();
  const report: FsckReport = { blobs: 0, fragments: 0, bytesVerified: 0, problems: [], damaged: [], corruptFragments: [], repaired: 0, unrepaired: 0, seconds: 0 };
  const ctx: FsckContext = { layout, cas, index, opts, report, fragSizes: new Map() };
  const progress = () => opts.onProgress?.({ blobs: report.blobs, fragments: report.fragments, bytesVerified: report.bytesVerified });

  const names: string[] = [];
  for await (const n of blobNames) names.push(n);

  // With verify, the fragments are counted (listed); their bytes are checked through the blobs that read them.
  if (opts.verify) {
    for await (const _ of fragIds) {
      throwIfAborted(opts.signal, 'fsck');
      report.fragments++;
    }
  }
  const blobHashes = new Map<string, boolean | undefined>();
  const blobPass = (async () => {
    if (!opts.verify) return;
    const files = new FragmentFiles(cas, 16);
    try {
      for (const name of names) {
        throwIfAborted(opts.signal, 'fsck');
        const d = await readDescriptor(layout.descriptor(name), name).catch(skipUnreadable);
        if (!d?.finalized || d.damagedAt !== undefined) continue;
        // A missing or short fragment gives no verdict on the hash; the extent checks report it.
        let ok = await blobHashMatches(d, files, ctx).catch(noVerdictIfMissing);
        if (ok === false && cas.remote) {
          // A bucket-backed store's cas/ holds copies: hashed again from the bucket before the blob counts as damaged.
          for (const f of new Set(d.extents.fragments())) await files.dropCached(f);
          ok = await blobHashMatches(d, files, ctx).catch(noVerdictIfMissing);
        }
        blobHashes.set(name, ok);
      }
    } finally {
      await files.close();
    }
  })();
  await blobPass;

  for (const name of names) {
    throwIfAborted(opts.signal, 'fsck');
    await checkBlob(ctx, name, blobHashes.get(name));
    report.blobs++;
    progress();
  }

  // Index entries whose descriptor is gone.
  const known = new Set(names);
  for (const name of [...index.blobNames()]) {
    if (known.has(name) || (await descriptorIsFile(layout, name))) continue;
    // Looked at again, as committed now: a delete in another process removes the entries before the descriptor,
    // and a new blob of that name gets its descriptor before its entry.
    if (!index.blobNow(name) || (await descriptorIsFile(layout, name))) continue;
    if (opts.repair) await index.removeBlob(name);
    problem(ctx, { kind: 'index-orphan', blob: name, detail: 'the chunk index has a blob with no descriptor' }, !!opts.repair);
  }
  for (const ent of (await tempEntries(layout.tmp)).stray) {
    problem(ctx, { kind: 'stray', detail: `${path.join(layout.tmp, ent)} is not a temp file cabstore makes: gc leaves it; remove it if nothing of yours is in it` });
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

/**
 * For a blob the index knows and the listing of blob/ did not show: false
 * if its descriptor is absent (ENOENT, and only that), true if it is a file
 * (a blob made since the listing). Anything else there (a directory, an
 * EIO) is ERR_IO: the entry is not an orphan to remove.
 */
async function descriptorIsFile(layout: Layout, name: string): Promise<boolean> {
  const file = layout.descriptor(name);
  let st;
  try {
    st = await fs.lstat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw ioError(e, `fsck: the descriptor of blob ${name}`, { blob: name, path: file });
  }
  if (!st.isFile()) throw new CabError('ERR_IO', `fsck: the descriptor of blob ${name} is not a regular file (${file})`, { blob: name, path: file });
  return true;
}

/** A blob deleted while fsck runs is skipped, and a corrupt one (checkBlob reports it); any other failure stops fsck. */
function skipUnreadable(e: unknown): undefined {
  if (isCabError(e, 'ERR_NO_SUCH_BLOB') || isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) return undefined;
  throw e;
}

function noVerdictIfMissing(e: unknown): undefined {
  if (isCabError(e, 'ERR_FRAGMENT_MISSING')) return undefined;
  throw e;
}

/** Reads a blob through its extents into the hashing thread and compares the root. */
async function blobHashMatches(d: Descriptor, files: FragmentFiles, ctx: FsckContext): Promise<boolean> {
  const job = new HashJob();
  try {
    const block = 4 * 1024 * 1024;
    for (let pos = 0; pos < d.size; pos += block) {
      const n = Math.min(block, d.size - pos);
      const buf = Buffer.allocUnsafe(n);
      await readExtents(files, d.extents, buf, pos);
      job.send(buf, true, [], true);
      ctx.report.bytesVerified += n;
      await job.room();
    }
    return bytesEqual(await job.digest(), d.hash!);
  } finally {
    await job.close();
  }
}
