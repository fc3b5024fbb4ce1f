import { CabError, isCabError, throwIfAborted } from '../errors.js';
import { readDescriptorBytes } from '../format/descriptor.js';
import type { BucketLayout } from '../bucket/keys.js';
import { parseLease } from '../bucket/node-lease.js';
import type { ObjectStore } from '../bucket/object-store.js';
import type { BucketGcReport } from '../bucket/report.js';

/** Objects fetched at once (descriptors, leases). */
const PARALLEL = 16;

/** What GC across stores needs. */
export interface BucketGcContext {
  os: ObjectStore;
  keys: BucketLayout;
  gcGrace: number;
  dryRun: boolean;
  signal?: AbortSignal;
  onProgress?: (phase: 'bucket', done: number) => void;
}

/**
 * GC of a bucket that many stores share (docs/FORMAT.md, "GC across
 * stores", which argues why it deletes nothing a store needs). No store can
 * take another's locks, so the order of the reads does the work:
 *
 * 1. the server's time, and the fragments in cas/ (the candidates: one
 *    uploaded later is not one);
 * 2. the published descriptors: what they reference is marked;
 * 3. the leases: what they pin is kept (a lease that vanishes while read
 *    makes the pass start again);
 * 4. the published descriptors again: marked too (a writer unpins only
 *    after publishing, so a blob whose pins 3 missed is listed here);
 * 5. delete the candidates older than gcGrace that 2, 3 and 4 left;
 * 6. abort multipart uploads older than gcGrace (left by killed writers).
 *
 * A store taking a new reference to fragments pins them first and then
 * confirms that their blob is still published (SharedNode.confirm): if it
 * was when the store looked, it was at 2, and so the pin was in place at 3.
 * A lease or descriptor that cannot be read stops GC before anything is
 * deleted (ERR_OBJECT_STORE, ERR_DESCRIPTOR_CORRUPT).
 */
export async function collectBucket(c: BucketGcContext): Promise<BucketGcReport> {
  const { os, keys } = c;
  const r: BucketGcReport = { fragmentsDeleted: 0, bytesDeleted: 0, fragmentsKept: 0, bytesKept: 0, descriptors: 0, leases: 0, uploadsAborted: 0 };
  const now = await os.serverTime(keys.clock());
  const sizes = new Map<string, { size: number; mtime: number }>();
  for await (const o of os.list(keys.fragments)) {
    const id = keys.fragmentOf(o.key);
    if (id) sizes.set(id, { size: o.size, mtime: o.mtime.getTime() });
  }
  const marked = new Set<string>();
  await markPublished(c, marked);
  const pinned = await leasePins(c, r);
  r.descriptors = await markPublished(c, marked);
  throwIfAborted(c.signal, 'gc');

  const gone: string[] = [];
  for (const [f, s] of sizes) {
    if (marked.has(f) || pinned.has(f) || s.mtime > now - c.gcGrace) {
      r.fragmentsKept++;
      r.bytesKept += s.size;
      continue;
    }
    gone.push(keys.fragment(f));
    r.fragmentsDeleted++;
    r.bytesDeleted += s.size;
  }
  if (!c.dryRun) await os.deleteMany(gone);

  // Leftovers of writers and GCs that were killed: uploads of fragments only (under the prefix there may be
  // another store's, at a longer prefix, or anything else the bucket's other users put there).
  for await (const u of os.listUploads(keys.fragments)) {
    if (!keys.fragmentOf(u.key) || u.initiated.getTime() > now - c.gcGrace) continue;
    if (!c.dryRun) await os.abortUpload(u.key, u.uploadId);
    r.uploadsAborted++;
  }
  const clocks: string[] = [];
  for await (const o of os.list(`${keys.prefix}clock/`)) if (keys.isClock(o.key) && o.mtime.getTime() < now - c.gcGrace) clocks.push(o.key);
  if (!c.dryRun) await os.deleteMany(clocks);
  return r;
}

/** Adds the fragments of every published descriptor to `marked`; the number of descriptors. */
async function markPublished(c: BucketGcContext, marked: Set<string>): Promise<number> {
  let n = 0;
  await eachObject(c, c.keys.descriptors, (key) => c.keys.blobOf(key), async (key, body) => {
    const name = c.keys.blobOf(key)!;
    let d;
    try {
      d = await readDescriptorBytes(body, name);
    } catch (e) {
      if (!isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) throw e;
      // Its records past the damage may name any fragment: none can be known unused.
      throw new CabError('ERR_DESCRIPTOR_CORRUPT', `gc stopped before deleting anything: the published descriptor ${key}: ${e.message}`, { ...e.data, key }, { cause: e });
    }
    if (!d.finalized || d.torn) throw new CabError('ERR_DESCRIPTOR_CORRUPT', `gc stopped before deleting anything: the published descriptor ${key} is not whole`, { blob: name, key });
    for (const f of d.extents.fragments()) marked.add(f);
    n++;
    if (n % 1000 === 0) c.onProgress?.('bucket', n);
  });
  return n;
}

/**
 * The union of every lease's pins. A lease that vanishes between the
 * listing and its read was closed, or taken over by a later process of
 * its folder, whose own lease the listing may predate: the pass starts
 * again, so that the fragments they hold are seen in one lease or the other.
 */
async function leasePins(c: BucketGcContext, r: BucketGcReport): Promise<Set<string>> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const pinned = new Set<string>();
    let leases = 0;
    const whole = await eachObject(c, c.keys.leases, (key) => c.keys.leaseOf(key), async (key, body) => {
      for (const f of parseLease(key, body).fragments) pinned.add(f);
      leases++;
    });
    if (whole) {
      r.leases = leases;
      return pinned;
    }
  }
  throw new CabError('ERR_OBJECT_STORE', 'gc stopped before deleting anything: the leases kept changing while they were read', { key: c.keys.leases });
}

/** Fetches every object under `prefix` (a few at a time) and hands it to `fn`; false if one vanished meanwhile. */
async function eachObject(c: BucketGcContext, prefix: string, ours: (key: string) => unknown, fn: (key: string, body: Buffer) => Promise<void>): Promise<boolean> {
  const keys: string[] = [];
  // Only the keys `fn` reads (a descriptor, a lease): not the objects of a store at a longer prefix, read whole.
  for await (const o of c.os.list(prefix)) if (ours(o.key)) keys.push(o.key);
  let next = 0;
  let whole = true;
  const worker = async () => {
    while (next < keys.length) {
      throwIfAborted(c.signal, 'gc');
      const key = keys[next++]!;
      const body = await c.os.get(key);
      if (body) await fn(key, body);
      else whole = false;
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, keys.length) }, worker));
  return whole;
}
