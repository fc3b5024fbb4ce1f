import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { CabError, isCabError, throwIfAborted } from '../errors.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import { readDescriptor } from '../format/descriptor.js';
import { descriptorGone } from '../disk/durable.js';
import { isBlobName, type Layout } from '../format/layout.js';
import { livePins, type Lease } from '../disk/lease.js';
import { isLocked, tryLockExclusive } from '../disk/lock.js';
import { tempEntries, walk } from '../disk/walk.js';
import { keepReserve } from '../disk/reserve.js';
import { removeEntries } from '../index/remove.js';
import { catchUpBehind } from '../index/catchup.js';
import type { BlobMetadata, Tables } from '../index/tables.js';
import { forEachLimit } from './limit.js';
import { evict, type Candidate } from './evict.js';
import type { BucketGcReport } from '../bucket/report.js';

/** File system calls in flight at once. */
const IO_PARALLEL = 16;

export interface GcOptions {
  /** Report what would be deleted, delete nothing. */
  dryRun?: boolean;
  /**
   * Also evict whole finalized blobs until the fragments fit in this many bytes,
   * least recently accessed first: by BlobMetadata `accessed`, else creation
   * time. Reads do not set `accessed`; the application does (updateBlobMetadata),
   * and so does a transfer that brings the blob in (pull, push, bundle import).
   * never one with an ownerShares entry > 0 or one open in any live process.
   * Only bytes eviction frees count: a fragment is freed when no blob that stays
   * uses it and no live reader or writer pins it. A blob whose data is all
   * shared with a blob that stays is not evicted (see GcReport.passedOver);
   * blobs that share data only among candidates go together, as late as their
   * most recently accessed one (two identical blobs go as a pair). See
   * docs/FORMAT.md, "Eviction".
   */
  maxBytes?: number;
  /** If another GC runs: wait for it (true) or fail with ERR_GC_RUNNING (false, the default). */
  wait?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: GcProgress) => void;
}

export interface GcProgress {
  phase: 'index' | 'list' | 'mark' | 'evict' | 'sweep' | 'tmp';
  done: number;
  total?: number;
}

export interface GcReport {
  dryRun: boolean;
  fragmentsDeleted: number;
  bytesDeleted: number;
  fragmentsKept: number;
  bytesKept: number;
  tempFilesDeleted: number;
  /** Leaf layers (layers/) of blobs that are gone, removed: a delete killed before it removed one, or one made while its blob was deleted. */
  layersDeleted: number;
  /** Index entries (chunk locations) removed because their blob is gone. */
  indexEntriesRemoved: number;
  /** Leases of dead processes whose pins were dropped. */
  deadLeases: number;
  /** Blobs evicted for maxBytes, in the order evicted (a dry run: those a real run would evict). */
  evicted: string[];
  /**
   * Eviction candidates that stayed although a more recently accessed one was
   * evicted (or, when maxBytes was not met, all that stayed): evicting them
   * would free no bytes, because each of their fragments is also used by a
   * blob that stays, or pinned by a live reader or writer.
   */
  passedOver: string[];
  /** A bucket-backed store: what GC did in the bucket (docs/FORMAT.md, "GC across stores"). The rest of the report is about this folder. */
  bucket?: BucketGcReport;
  seconds: number;
}

/** What GC needs from its store. */
export interface GcStore {
  readonly layout: Layout;
  readonly index: ChunkIndex;
  readonly tables: Tables;
  readonly lease: Lease;
  listBlobIds(): AsyncIterable<string>;
  listCaIds(): AsyncIterable<string>;
  deleteBlob(name: string): Promise<void>;
}

/**
 * Mark and sweep, safe while other processes use the store:
 *
 * 1. one GC at a time (gcLock);
 * 2. list cas/: only these fragments are candidates (one renamed in later is not);
 * 3. with the gate held exclusively (no reader or writer takes a new
 *    reference meanwhile): read the pins of live leases, mark the fragments
 *    of every descriptor, evict if asked, delete candidates neither marked
 *    nor pinned;
 * 4. delete temp files of dead processes.
 *
 * A corrupt descriptor (ERR_DESCRIPTOR_CORRUPT) stops it at step 3 before
 * anything is deleted: the records past its damage may name any fragment.
 *
 * docs/FORMAT.md argues why no live reference is collected.
 */
export async function collect(store: GcStore, options: GcOptions = {}): Promise<GcReport> {
  const t0 = performance.now();
  const { layout, index } = store;
  const dryRun = !!options.dryRun;
  const report: GcReport = {
    dryRun,
    fragmentsDeleted: 0,
    bytesDeleted: 0,
    fragmentsKept: 0,
    bytesKept: 0,
    tempFilesDeleted: 0,
    layersDeleted: 0,
    indexEntriesRemoved: 0,
    deadLeases: 0,
    evicted: [],
    passedOver: [],
    seconds: 0,
  };
  if (options.maxBytes !== undefined && (!Number.isSafeInteger(options.maxBytes) || options.maxBytes < 0)) {
    throw new CabError('ERR_BAD_ARGUMENT', `maxBytes must be a non-negative integer, not ${options.maxBytes}`);
  }
  const progress = options.onProgress ?? (() => {});
  const release = await gcLock(layout, !!options.wait, options.signal);
  try {
    // Index entries of blobs whose descriptor is gone (a crash between unlink and index update).
    // On a full disk they stay (a writer takes a chunk only through its blob's descriptor, so an entry
    // of a deleted blob leads nowhere): GC goes on to free space.
    progress({ phase: 'index', done: 0 });
    await catchUpBehind(index, layout);
    for (const name of [...index.blobNames()]) {
      throwIfAborted(options.signal, 'gc');
      if (!(await descriptorGone(layout.descriptor(name)))) continue;
      if (!dryRun) report.indexEntriesRemoved += await removeEntries(layout, index, name);
    }

    // Candidates: the fragments there are now.
    const sizes = new Map<string, number>();
    await forEachLimit(store.listCaIds(), IO_PARALLEL, async (id) => {
      throwIfAborted(options.signal, 'gc');
      try {
        sizes.set(id, (await fs.stat(layout.fragment(id))).size);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // ENOENT: deleted meanwhile
      }
      if (sizes.size % 10_000 === 0) progress({ phase: 'list', done: sizes.size });
    });

    const listed = new Set<string>(); // blobs the mark read
    const livePids = await store.lease.gateExclusive(async () => {
      const live = await livePins(layout, dryRun);
      report.deadLeases = live.deadLeases;
      const pinned = new Set<string>();
      const openBlobs = new Set<string>();
      for (const p of live.pins) {
        for (const f of p.fragments ?? []) pinned.add(f);
        for (const b of p.blobs ?? []) openBlobs.add(b);
      }

      // Mark. With maxBytes, also remember who uses what, for eviction.
      const marked = new Map<string, number>(); // fragment -> number of blobs using it
      const evictable: Candidate[] = [];
      let n = 0;
      await forEachLimit(store.listBlobIds(), IO_PARALLEL, async (name) => {
        throwIfAborted(options.signal, 'gc');
        let d;
        try {
          d = await readDescriptor(layout.descriptor(name), name);
        } catch (e) {
          if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return;
          if (isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) {
            // Its records past the damage may name any fragment: none can be known unused.
            throw new CabError('ERR_DESCRIPTOR_CORRUPT', `gc stopped before deleting anything: ${e.message}`, e.data, { cause: e });
          }
          throw e;
        }
        listed.add(name);
        const frags = d.extents.fragments();
        for (const f of frags) marked.set(f, (marked.get(f) ?? 0) + 1);
        if (options.maxBytes !== undefined && d.finalized && !openBlobs.has(name)) {
          const md = store.tables.metadata.get(name);
          if (!owned(md)) evictable.push({ name, when: md ? md.accessed.getTime() : d.ctime, frags: [...frags] });
        }
        if (++n % 1000 === 0) progress({ phase: 'mark', done: n });
      });
      const keep = (f: string) => (marked.get(f) ?? 0) > 0 || pinned.has(f);

      if (options.maxBytes !== undefined) {
        const state = { marked, sizes, pinned, bytes: 0 };
        for (const [f, s] of sizes) if (keep(f)) state.bytes += s;
        evictable.sort((a, b) => a.when - b.when || (a.name < b.name ? -1 : 1));
        let full = false;
        const remove = async (b: Candidate): Promise<boolean> => {
          throwIfAborted(options.signal, 'gc');
          // Owned since the mark: it stays (an owner set from now on is the application's race).
          if (owned(store.tables.metadata.get(b.name))) return false;
          if (dryRun) return true;
          if (full) return false;
          try {
            await store.deleteBlob(b.name);
            return true;
          } catch (e) {
            // Opened or deleted since we looked: leave it, and keep its fragments. A disk too full to
            // delete even with the reserve spent: evict no more, and sweep what was evicted.
            if (isCabError(e, 'ERR_BLOB_LOCKED') || isCabError(e, 'ERR_NO_SUCH_BLOB')) return false;
            if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
            full = true;
            return false;
          }
        };
        const done = await evict(state, evictable, options.maxBytes, remove, (n) => progress({ phase: 'evict', done: n }));
        report.evicted = done.evicted;
        report.passedOver = done.passedOver;
      }

      // Sweep.
      let swept = 0;
      await forEachLimit(sizes, IO_PARALLEL, async ([id, size]) => {
        if (keep(id)) {
          report.fragmentsKept++;
          report.bytesKept += size;
          return;
        }
        throwIfAborted(options.signal, 'gc');
        if (!dryRun) {
          try {
            await fs.unlink(layout.fragment(id));
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
            return;
          }
        }
        report.fragmentsDeleted++;
        report.bytesDeleted += size;
        if (++swept % 1000 === 0) progress({ phase: 'sweep', done: swept });
      });
      return live.livePids;
    });

    // Leaf layers of blobs that are gone: derived data that only deleteBlob removes, so one it left (killed
    // between the descriptor's unlink and the layer's, or a layer made for a range read as the blob went)
    // would stay for good. One of a blob made since the mark is looked at again, and kept.
    for await (const name of walk(layout.layers, 1)) {
      throwIfAborted(options.signal, 'gc');
      if (listed.has(name) || !isBlobName(name) || !(await descriptorGone(layout.descriptor(name)))) continue;
      if (!dryRun) await fs.rm(layout.leafLayer(name), { force: true });
      report.layersDeleted++;
    }

    // Temp files of processes that are gone (the pid starts the name: fragments, descriptors, leases
    // being made), and pins files left without their lease.
    for (const ent of (await tempEntries(layout.tmp)).own) {
      throwIfAborted(options.signal, 'gc');
      const pid = Number(ent.split('-')[0]);
      // A process that runs has temp files in flight even before its lease exists (the lease itself
      // is made in tmp/): only those of processes that are gone are removed.
      if (livePids.has(pid) || processRuns(pid)) continue;
      if (ent.endsWith('.lease') && (await isLocked(path.join(layout.tmp, ent)))) continue;
      if (!dryRun) await fs.rm(path.join(layout.tmp, ent), { force: true });
      report.tempFilesDeleted++;
    }
    progress({ phase: 'tmp', done: report.tempFilesDeleted });
    if (!dryRun) await dropOrphanPins(layout);
    if (!dryRun) await keepReserve(layout); // spent on a full disk: made again if there is room now
  } finally {
    await release().catch(() => {});
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

/** Whether an owner holds the blob: some ownerShares entry > 0. */
function owned(md: BlobMetadata | undefined): boolean {
  return md ? Object.values(md.ownerShares).some((v) => v > 0) : false;
}

/**
 * Whether a process of this pid runs on this machine (signal 0 probes
 * without sending). EPERM: it runs, as another user.
 */
function processRuns(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Pins files whose lease is gone: their process died between writing and renaming them. */
async function dropOrphanPins(layout: Layout): Promise<void> {
  const entries = await fs.readdir(layout.leases);
  const names = new Set(entries);
  for (const ent of entries) {
    const m = /^(.*)\.pins(\.tmp)?$/.exec(ent);
    if (m && !names.has(`${m[1]}.lease`)) await fs.rm(path.join(layout.leases, ent), { force: true });
  }
}

/**
 * One GC at a time: an exclusive flock on `leases/gc`, which the kernel
 * drops when its process dies, so a GC killed mid-run stops no GC after it;
 * and proper-lockfile's lock beside it (`leases/gc.lock`), which is what a
 * GC of older code, or one on another machine of a network file system,
 * takes. `leases/gc.owner` names the host and the inode of the gc.lock
 * that a flock-holding GC made: one found while holding the flock, on this
 * host and naming that same gc.lock, was left by a GC that died, and is
 * removed. Any other gc.lock is someone's: ERR_GC_RUNNING (proper-lockfile
 * takes it over once it is stale, 60 s unrefreshed). With `wait`, tried
 * again (20 ms, growing to 1 s) until free or `signal` aborts.
 */
async function gcLock(layout: Layout, wait: boolean, signal: AbortSignal | undefined): Promise<() => Promise<void>> {
  for (let delay = 20; ; delay = Math.min(1000, delay * 1.2)) {
    throwIfAborted(signal, 'gc');
    const release = await tryGcLock(path.join(layout.leases, 'gc'));
    if (release) return release;
    if (!wait) throw new CabError('ERR_GC_RUNNING', 'another GC is running on this store: wait for it (gc({ wait: true }), `cabstore gc --wait`) or run this one later');
    await new Promise((r) => setTimeout(r, delay));
  }
}

async function tryGcLock(target: string): Promise<(() => Promise<void>) | undefined> {
  const fh = await fs.open(target, 'a');
  const lockDir = `${target}.lock`;
  const owner = `${target}.owner`;
  try {
    if (!tryLockExclusive(fh.fd)) {
      await fh.close();
      return undefined;
    }
    const take = () => lockfile.lock(target, { realpath: false, stale: 60_000, update: 10_000, retries: 0 });
    let unlock: () => Promise<void>;
    try {
      unlock = await take();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e;
      const [left, dir] = await Promise.all([fs.readFile(owner, 'utf8').catch(() => ''), fs.stat(lockDir).catch(() => undefined)]);
      if (!dir || left !== `${os.hostname()} ${dir.ino}\n`) {
        await fh.close();
        return undefined;
      }
      await fs.rm(lockDir, { recursive: true, force: true }); // a dead GC's, of this host, that held the flock
      unlock = await take();
    }
    // Best effort: on a full disk (where GC is the way out) there may be no room for it; a GC that
    // then dies leaves a gc.lock that waits out proper-lockfile's stale time.
    await fs.writeFile(owner, `${os.hostname()} ${(await fs.stat(lockDir)).ino}\n`).catch(() => {});
    return async () => {
      await fs.rm(owner, { force: true }).catch(() => {});
      await unlock().catch(() => {});
      await fh.close();
    };
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
}
