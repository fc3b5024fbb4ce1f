import fs from 'node:fs/promises';
import crypto from 'node:crypto';
import { CabError, ioError, isCabError } from '../errors.js';
import { HashJob } from '../hash/pool.js';
import { bytesEqual } from '../hash/sha256.js';
import type { ChunkIndex } from './chunk-index.js';
import { catchUpBlob } from './catchup.js';
import { chunkEntries, encodeRecord, readDescriptor, type Descriptor } from './descriptor.js';
import { writeAll } from './durable.js';
import { FragmentFiles } from './fragments.js';
import type { Layout } from './layout.js';
import { tryLockExclusive } from './lock.js';

export interface FsckOptions {
  /** Also hash every fragment and every finalized blob's content (reads all data). */
  verify?: boolean;
  /** Fix what can be fixed without losing anything a user could want (see FsckReport). */
  repair?: boolean;
  /** Called after each blob and fragment with bytes verified so far. */
  onProgress?: (p: { blobs: number; fragments: number; bytesVerified: number }) => void;
  signal?: AbortSignal;
}

export type FsckProblemKind =
  | 'no-header' // a descriptor without a valid header: nothing recorded in it
  | 'torn-descriptor' // bytes after the last good record
  | 'missing-fragment'
  | 'short-fragment' // a fragment shorter than the extents that use it
  | 'corrupt-fragment' // bytes do not hash to the fragment's name (--verify)
  | 'hash-mismatch' // a finalized blob's content does not hash to its recorded hash (--verify)
  | 'damaged' // a blob marked damaged (by an earlier repair)
  | 'index-mismatch' // the chunk index disagrees with a descriptor
  | 'index-orphan'; // the chunk index has a blob with no descriptor

export interface FsckProblem {
  kind: FsckProblemKind;
  blob?: string;
  fragment?: string;
  /** Blob offset where the blob's good bytes end, for damage. */
  offset?: number;
  detail: string;
  repaired: boolean;
}

export interface FsckReport {
  blobs: number;
  fragments: number;
  bytesVerified: number;
  problems: FsckProblem[];
  /** Blobs readable only up to some offset (marked by this or an earlier repair). */
  damaged: Array<{ blob: string; offset: number; why: string }>;
  repaired: number;
  /** Problems not repaired (with repair: those that cannot be, such as damage itself). */
  unrepaired: number;
  seconds: number;
}

interface Ctx {
  layout: Layout;
  index: ChunkIndex;
  opts: FsckOptions;
  report: FsckReport;
  fragSizes: Map<string, number | null>;
  corrupt: Set<string>;
}

function problem(ctx: Ctx, p: Omit<FsckProblem, 'repaired'>, repaired = false): void {
  ctx.report.problems.push({ ...p, repaired });
  if (repaired) ctx.report.repaired++;
  else ctx.report.unrepaired++;
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new CabError('ERR_ABORTED', 'fsck was cancelled', {}, { cause: signal.reason });
}

/** A fragment's size; null if it does not exist. Any other failure is an I/O error, not a missing fragment. */
async function fragSize(ctx: Ctx, id: string): Promise<number | null> {
  let s = ctx.fragSizes.get(id);
  if (s === undefined) {
    const file = ctx.layout.fragment(id);
    let st;
    try {
      st = await fs.stat(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `fsck: stat of fragment ${id}`, { path: file });
    }
    if (st && !st.isFile()) throw new CabError('ERR_IO', `fsck: fragment ${id} is not a regular file`, { path: file });
    s = st ? st.size : null;
    ctx.fragSizes.set(id, s);
  }
  return s;
}

/** SHA-256 of a file, read in blocks. */
async function hashFile(file: string, buf: Buffer): Promise<{ hex: string; size: number }> {
  const fh = await fs.open(file, 'r');
  try {
    const h = crypto.createHash('sha256');
    let size = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, size);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
    return { hex: h.digest('hex'), size };
  } finally {
    await fh.close();
  }
}

/**
 * Checks a store; see `check`. Only an absent file (ENOENT) counts as a
 * missing fragment or blob: any other failure (EIO, EMFILE, EISDIR, ...)
 * stops fsck with ERR_IO, so that it is never taken for damage and recorded.
 */
export async function fsck(layout: Layout, index: ChunkIndex, blobNames: AsyncIterable<string>, fragIds: AsyncIterable<string>, opts: FsckOptions = {}): Promise<FsckReport> {
  try {
    return await check(layout, index, blobNames, fragIds, opts);
  } catch (e) {
    throw ioError(e, 'fsck');
  }
}

/**
 * Checks a store: descriptors parse and end cleanly, every referenced
 * fragment exists and is long enough, the chunk index agrees with the
 * descriptors, and with `verify` that every fragment hashes to its name and
 * every finalized blob to its hash. With `repair`: torn descriptor tails are
 * truncated, the chunk index is rebuilt where it disagrees, and blobs whose
 * fragments are missing or corrupt are marked damaged (readable up to the
 * damage). Nothing is deleted except descriptors that hold no record at all.
 * Blobs that a live writer holds are checked but not repaired.
 */
async function check(layout: Layout, index: ChunkIndex, blobNames: AsyncIterable<string>, fragIds: AsyncIterable<string>, opts: FsckOptions = {}): Promise<FsckReport> {
  const t0 = performance.now();
  const report: FsckReport = { blobs: 0, fragments: 0, bytesVerified: 0, problems: [], damaged: [], repaired: 0, unrepaired: 0, seconds: 0 };
  const ctx: Ctx = { layout, index, opts, report, fragSizes: new Map(), corrupt: new Set() };
  const progress = () => opts.onProgress?.({ blobs: report.blobs, fragments: report.fragments, bytesVerified: report.bytesVerified });

  const names: string[] = [];
  for await (const n of blobNames) names.push(n);

  // Fragments first (with verify): their hashing runs on this thread while
  // the blob hashes of the second pass run in the hashing thread.
  const fragPass = (async () => {
    if (!opts.verify) return;
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for await (const id of fragIds) {
      checkAbort(opts.signal);
      const { hex, size } = await hashFile(layout.fragment(id), buf);
      ctx.fragSizes.set(id, size);
      report.fragments++;
      report.bytesVerified += size;
      if (hex !== id) {
        ctx.corrupt.add(id);
        problem(ctx, { kind: 'corrupt-fragment', fragment: id, detail: `bytes hash to ${hex}` });
      }
      progress();
    }
  })();
  const blobHashes = new Map<string, boolean | undefined>();
  const blobPass = (async () => {
    if (!opts.verify) return;
    const files = new FragmentFiles(layout, 16);
    try {
      for (const name of names) {
        checkAbort(opts.signal);
        const d = await readDescriptor(layout.descriptor(name), name).catch(skipDeleted);
        if (!d?.finalized || d.damagedAt !== undefined) continue;
        // A missing or short fragment gives no verdict on the hash; the extent checks report it.
        blobHashes.set(name, await blobHashMatches(d, files, ctx).catch(noVerdictIfMissing));
      }
    } finally {
      await files.close();
    }
  })();
  const [a, b] = await Promise.allSettled([fragPass, blobPass]);
  if (a.status === 'rejected') throw a.reason;
  if (b.status === 'rejected') throw b.reason;

  for (const name of names) {
    checkAbort(opts.signal);
    await checkBlob(ctx, name, blobHashes.get(name));
    report.blobs++;
    progress();
  }

  // Index entries whose descriptor is gone.
  const known = new Set(names);
  for (const name of [...index.blobNames()]) {
    if (known.has(name)) continue;
    if (opts.repair) await index.removeBlob(name);
    problem(ctx, { kind: 'index-orphan', blob: name, detail: 'the chunk index has a blob with no descriptor' }, !!opts.repair);
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

/** A blob deleted while fsck runs is skipped; any other failure stops fsck. */
function skipDeleted(e: unknown): undefined {
  if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return undefined;
  throw e;
}

function noVerdictIfMissing(e: unknown): undefined {
  if (isCabError(e, 'ERR_FRAGMENT_MISSING')) return undefined;
  throw e;
}

/** Reads a blob through its extents into the hashing thread and compares the root. */
async function blobHashMatches(d: Descriptor, files: FragmentFiles, ctx: Ctx): Promise<boolean> {
  const job = new HashJob();
  try {
    const block = 4 * 1024 * 1024;
    for (let pos = 0; pos < d.size; pos += block) {
      const n = Math.min(block, d.size - pos);
      const buf = Buffer.allocUnsafe(n);
      let at = 0;
      for (const e of d.extents.slice(pos, n)) {
        await files.read(e.frag, buf, at, e.size, e.offset);
        at += e.size;
      }
      job.send(buf, true, [], true);
      ctx.report.bytesVerified += n;
      await job.room();
    }
    return bytesEqual(await job.digest(), d.hash!);
  } finally {
    await job.close();
  }
}

async function checkBlob(ctx: Ctx, name: string, hashOk: boolean | undefined): Promise<void> {
  const { layout, index, opts } = ctx;
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(layout.descriptor(name), 'r+');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // deleted meanwhile
    throw e;
  }
  try {
    // Holding the writer lock keeps writers out while we look and repair; a blob a live writer holds is only looked at.
    const mine = tryLockExclusive(fh.fd);
    const repair = !!opts.repair && mine;
    const d = await readDescriptor(layout.descriptor(name), name);
    if (!d.hasHeader) {
      const empty = d.validEnd === 0;
      if (repair && empty) {
        await fs.unlink(layout.descriptor(name));
        await index.removeBlob(name);
      }
      if (mine) problem(ctx, { kind: 'no-header', blob: name, detail: `descriptor has no valid header (${d.fileSize} bytes)` }, repair && empty);
      return;
    }
    if (d.torn && mine) {
      if (repair) {
        await fh.truncate(d.validEnd);
        await fh.datasync();
      }
      problem(ctx, { kind: 'torn-descriptor', blob: name, offset: d.size, detail: `${d.tornReason}: ${d.fileSize - d.validEnd} bytes after the last good record` }, repair);
    }

    // Fragments: present, long enough, not corrupt. The first bad extent is where the damage starts.
    let found: Omit<FsckProblem, 'repaired'> | undefined;
    for (let i = 0; i < d.extents.count && !found; i++) {
      const e = d.extents.at(i);
      const size = await fragSize(ctx, e.frag);
      let kind: FsckProblemKind | undefined;
      if (size === null) kind = 'missing-fragment';
      else if (size < e.offset + e.size) kind = 'short-fragment';
      else if (ctx.corrupt.has(e.frag)) kind = 'corrupt-fragment';
      if (kind) {
        found = { kind, blob: name, fragment: e.frag, offset: e.start, detail: `the extent at blob offset ${e.start} needs bytes ${e.offset}..${e.offset + e.size} of fragment ${e.frag}` };
      }
    }
    if (!found && hashOk === false) {
      found = { kind: 'hash-mismatch', blob: name, offset: await firstBadChunk(ctx, d), detail: 'the content does not hash to the recorded hash' };
    }
    if (found && (d.damagedAt === undefined || found.offset! < d.damagedAt)) {
      // New damage: mark it, so the blob reads up to there and offers no chunk past it.
      const why = found.fragment ? `${found.kind} ${found.fragment}` : found.kind;
      if (repair) {
        await writeAll(fh, encodeRecord({ t: 'd', o: found.offset!, why }), d.validEnd);
        await fh.datasync();
        await index.removeBlob(name);
        await catchUpBlob(index, layout, name);
      }
      problem(ctx, found, repair);
      ctx.report.damaged.push({ blob: name, offset: found.offset!, why });
    } else if (d.damagedAt !== undefined) {
      ctx.report.damaged.push({ blob: name, offset: d.damagedAt, why: d.damagedWhy ?? '' });
    }

    // The chunk index against the descriptor (after any repair above).
    const cur = await readDescriptor(layout.descriptor(name), name, { extents: false });
    const entry = index.blob(name);
    const agrees =
      entry !== undefined &&
      entry.d === cur.validEnd &&
      entry.s === cur.size &&
      entry.n === cur.chunkCount &&
      entry.e === cur.chunkEnd &&
      entry.k === cur.damagedAt &&
      (entry.h === undefined ? cur.hash === undefined : cur.hash !== undefined && bytesEqual(entry.h, cur.hash)) &&
      chunkListAgrees(index, name, cur.chunkCount);
    if (!agrees && (mine || !entry)) {
      if (repair || (!mine && opts.repair)) {
        await index.removeBlob(name);
        await catchUpBlob(index, layout, name);
      }
      problem(ctx, { kind: 'index-mismatch', blob: name, detail: entry ? 'the chunk index disagrees with the descriptor' : 'the chunk index lacks the blob' }, !!opts.repair);
    }
  } finally {
    await fh.close();
  }
}

/** The index's chunk list for a blob has exactly `count` entries. */
function chunkListAgrees(index: ChunkIndex, name: string, count: number): boolean {
  let n = 0;
  for (const _ of index.blobChunks(name)) n++;
  return n === count;
}

/** Offset of the first chunk whose bytes do not hash to its recorded hash (0 if none is found). */
async function firstBadChunk(ctx: Ctx, d: Descriptor): Promise<number> {
  let bad: number | undefined;
  const files = new FragmentFiles(ctx.layout, 16);
  try {
    // One chunk at a time, as the records go by: bounded by the largest chunk.
    await readDescriptor(ctx.layout.descriptor(d.name), d.name, {
      extents: false,
      onAppend: async (rec, _s, _e, off) => {
        for (const [h, size] of chunkEntries(rec.c)) {
          if (bad !== undefined) return;
          const buf = Buffer.allocUnsafe(size);
          let at = 0;
          try {
            for (const e of d.extents.slice(off, size)) {
              await files.read(e.frag, buf, at, e.size, e.offset);
              at += e.size;
            }
          } catch (e) {
            if (!isCabError(e, 'ERR_FRAGMENT_MISSING')) throw e;
            bad = off;
            return;
          }
          if (!bytesEqual(crypto.createHash('sha256').update(buf).digest(), h)) bad = off;
          off += size;
        }
      },
    });
  } finally {
    await files.close();
  }
  return bad ?? 0;
}
