import fs from 'node:fs/promises';
import { isCabError } from '../errors.js';
import { bytesEqual, sha256 } from '../hash/sha256.js';
import { checkChunk, readExtents } from '../disk/blob-bytes.js';
import { catchUpBlob } from '../index/catchup.js';
import { ChunkPager, type ChunkInfo } from '../disk/chunk-pager.js';
import { flatDamage, normalizeDamage, uncovered, type DamageRange } from '../format/damage.js';
import { encodeRecord, readDescriptorFrom, type Descriptor } from '../format/descriptor.js';
import { writeAll } from '../disk/durable.js';
import { FragmentFiles } from '../disk/fragments.js';
import { fragSize, problem, type FsckContext, type FsckProblemKind } from './fsck-context.js';
import { tryLockDescriptor } from '../index/rewrite.js';

/** Blob bytes that may be damaged, and the reason to think so. */
type Suspect = DamageRange & { kind: FsckProblemKind; fragment?: string };

/**
 * Checks one blob and, with repair, mends it: a torn tail truncated, damage
 * recorded (in whole chunks), the index entries rebuilt. A corrupt
 * descriptor is reported and left as it is. `hashOk` says whether its
 * content hashed to its recorded hash (--verify), if that is known. A blob
 * whose writer lock another process holds is only looked at.
 */
export async function checkBlob(ctx: FsckContext, name: string, hashOk: boolean | undefined): Promise<void> {
  const { layout, index, opts } = ctx;
  const got = await tryLockDescriptor(layout, name);
  if (!got) return; // deleted meanwhile
  const { fh, locked: mine } = got;
  try {
    const repair = !!opts.repair && mine;
    let d: Descriptor;
    try {
      d = await readDescriptorFrom(fh, name);
    } catch (e) {
      if (!isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) throw e;
      // Not a crash's leftover: cutting or deleting it could lose records. Only a person can mend it.
      const at = e.data.offset ?? 0;
      const cut = at > 0 ? `, or cut to ${at} bytes to keep the records before (losing those after)` : '';
      const detail = `descriptor bytes from ${at} on are corrupt (${String(e.data.reason)}); the blob cannot be read or resumed, and GC stops, until the descriptor is restored from a copy${cut}, or the blob deleted (see docs/FORMAT.md)`;
      problem(ctx, { kind: 'corrupt-descriptor', blob: name, detail });
      return;
    }
    if (d.torn && mine) {
      if (repair) {
        await fh.truncate(d.validEnd);
        await fh.datasync();
      }
      problem(ctx, { kind: 'torn-descriptor', blob: name, offset: d.size, detail: `${d.tornReason}: ${d.fileSize - d.validEnd} bytes after the last good record` }, repair);
    }
    await checkDamage(ctx, fh, d, hashOk, repair);

    // The chunk index against the descriptor (after any repair above).
    const cur = await readDescriptorFrom(fh, name, { extents: false });
    let entry = index.blobNow(name); // not lmdb-js's snapshot of an older turn: the last writer may have just committed
    // No writer (the lock is ours), and the index behind the descriptor or without the blob, in a store
    // whose open caught the index up: a writer died since, between a durable record (or the descriptor's
    // link) and its index commit. The index is derived data, which the next open catches up from the
    // descriptors (catchUpAll): so does this, and only what still disagrees after is a problem. (A store
    // opened with catchUpIndex false shows its index as it is.)
    if (mine && index.caughtUp && (entry === undefined || entry.d < cur.validEnd)) {
      // A full disk (no room for the index's commit) leaves it behind: reported below, as before.
      await catchUpBlob(index, layout, name).catch((e: unknown) => {
        if (!isCabError(e, 'ERR_NO_SPACE')) throw e;
      });
      entry = index.blobNow(name);
    }
    const agrees =
      entry !== undefined &&
      entry.d === cur.validEnd &&
      entry.s === cur.size &&
      entry.n === cur.chunkCount &&
      entry.e === cur.chunkEnd &&
      String(entry.k) === String(flatDamage(cur.damage)) &&
      (entry.h === undefined ? cur.hash === undefined : cur.hash !== undefined && bytesEqual(entry.h, cur.hash)) &&
      chunkCount(ctx, name) === cur.chunkCount;
    // A live writer's blob may be behind in the index, or not in it yet (between its descriptor's link
    // and its first index commit, blob/open.ts): its writer commits what it wrote. Not a problem here.
    if (!agrees && mine) {
      if (opts.repair) {
        await index.removeBlob(name);
        await catchUpBlob(index, layout, name);
      }
      problem(ctx, { kind: 'index-mismatch', blob: name, detail: entry ? 'the chunk index disagrees with the descriptor' : 'the chunk index lacks the blob' }, !!opts.repair);
    }
  } finally {
    await fh.close();
  }
}

function chunkCount(ctx: FsckContext, name: string): number {
  let n = 0;
  for (const _ of ctx.index.blobChunks(name)) n++;
  return n;
}

/**
 * Finds the blob's damaged chunks (those in a missing or short fragment,
 * and with verify any that no longer hash to their recorded hash), records
 * the new ones with repair, and reports every damaged range. A damaged blob
 * is a problem that only a pull or an import heals: it is reported as not
 * repaired on every run until then.
 */
async function checkDamage(ctx: FsckContext, fh: fs.FileHandle, d: Descriptor, hashOk: boolean | undefined, repair: boolean): Promise<void> {
  const name = d.name;
  const suspects: Suspect[] = [];
  for (let i = 0; i < d.extents.count; i++) {
    const e = d.extents.at(i);
    const size = await fragSize(ctx, e.frag);
    const kind = size === null ? 'missing-fragment' : size < e.offset + e.size ? 'short-fragment' : undefined;
    if (kind) suspects.push({ o: e.start, e: e.start + e.size, why: `${kind} ${e.frag}`, kind, fragment: e.frag });
  }
  // With verify, every chunk not proven by the blob hash is hashed: a wrong blob hash, an unfinalized or damaged blob.
  const whole = ctx.opts.verify === true && hashOk !== true;
  const found = await badChunks(ctx, fh, d, suspects, whole);
  if (hashOk === false && found.length === 0) {
    problem(ctx, { kind: 'hash-mismatch', blob: name, detail: 'every chunk hashes to its recorded hash, but the content does not hash to the recorded blob hash' });
  }
  const fresh = uncovered(found, d.damage);
  if (repair && fresh.length > 0) {
    let at = d.validEnd;
    for (const r of fresh) {
      const rec = encodeRecord({ t: 'd', o: r.o, e: r.e, why: r.why });
      await writeAll(fh, rec, at);
      // One record durable before the next is written: a crash then leaves at most the last one torn (docs/FORMAT.md).
      await fh.datasync();
      at += rec.length;
    }
    await ctx.index.removeBlob(name);
    await catchUpBlob(ctx.index, ctx.layout, name);
  }
  for (const r of fresh) {
    const what = r.kind === 'missing-fragment' ? 'are in a fragment that is missing' : r.kind === 'short-fragment' ? 'lie past the end of their fragment' : 'do not hash to their recorded chunks';
    const detail = `blob bytes ${r.o}..${r.e} ${r.fragment ? `(fragment ${r.fragment}) ` : ''}${what}${repair ? ': recorded as damaged' : ''}`;
    problem(ctx, { kind: r.kind, blob: name, fragment: r.fragment, offset: r.o, end: r.e, detail }, repair);
  }
  const all = normalizeDamage<DamageRange>([...d.damage, ...fresh]);
  for (const r of all) ctx.report.damaged.push({ blob: name, offset: r.o, end: r.e, why: r.why });
  const recorded = repair ? all : d.damage;
  if (recorded.length > 0) {
    const bytes = recorded.reduce((n, r) => n + r.e - r.o, 0);
    problem(ctx, {
      kind: 'damaged',
      blob: name,
      offset: recorded[0]!.o,
      end: recorded[recorded.length - 1]!.e,
      detail: `${bytes} bytes in ${recorded.length} ranges are recorded as damaged; a pull or an import of the blob from a store that holds it heals them`,
    });
  }
}

/**
 * The chunks that fail their check, merged into ranges: those the suspects
 * touch, or with `whole` every chunk outside recorded damage. A chunk
 * counts against the first suspect it touches (a missing or short
 * fragment), or else against the fragments it is read from
 * ('corrupt-fragment': fragments are not named by their bytes, so a
 * chunk's hash is what says they changed).
 */
async function badChunks(ctx: FsckContext, fh: fs.FileHandle, d: Descriptor, suspects: Suspect[], whole: boolean): Promise<Suspect[]> {
  const out: Suspect[] = [];
  const ranges = whole ? uncovered([{ o: 0, e: d.size, why: '' }], d.damage) : normalizeDamage(suspects);
  if (ranges.length === 0) return out;
  const mark = (o: number, e: number) => {
    const s = suspects.find((x) => x.o < e && x.e > o) ?? corruptAt(ctx, d, o, e);
    const last = out[out.length - 1];
    if (last && last.e === o && last.why === s.why) last.e = e;
    else out.push({ ...s, o, e });
  };
  const pager = new ChunkPager(fh, d.chunkRecords);
  const files = new FragmentFiles(ctx.cas, 16);
  try {
    let done = 0; // chunks before this are checked
    for (const r of ranges) {
      for (let p = Math.max(r.o, done); p < Math.min(r.e, d.chunkEnd); p = done) {
        const c = await pager.chunkAt(p);
        if (!(await chunkOk(ctx, d, files, c))) mark(c.start, c.start + c.size);
        done = c.start + c.size;
      }
      // The open chunk of an unfinalized blob: checked against the hash the last record holds, if it holds one.
      if (r.e > d.chunkEnd && done <= d.chunkEnd && !(await openChunkOk(ctx, d, files))) mark(d.chunkEnd, d.size);
      done = Math.max(done, r.e);
    }
  } finally {
    await files.close();
  }
  return out;
}

/** Chunk bytes [o, e) that fail their hash: a suspect naming the fragments they are read from. */
function corruptAt(ctx: FsckContext, d: Descriptor, o: number, e: number): Suspect {
  const frags = [...new Set([...d.extents.slice(o, e - o)].map((x) => x.frag))];
  for (const f of frags) if (!ctx.report.corruptFragments.includes(f)) ctx.report.corruptFragments.push(f);
  return { o, e, why: `corrupt-fragment ${frags.join(' ')}`, kind: 'corrupt-fragment', fragment: frags[0] };
}

/**
 * Whether the open chunk's bytes [chunkEnd, size) read and match the hash
 * the last record holds. Without one (records written before it was kept)
 * there is no verdict on their content: true if they read.
 */
function openChunkOk(ctx: FsckContext, d: Descriptor, files: FragmentFiles): Promise<boolean> {
  return bytesPass(ctx, d, files, d.chunkEnd, d.size - d.chunkEnd, (bytes) => d.openHash === undefined || bytesEqual(sha256(bytes), d.openHash));
}

function chunkOk(ctx: FsckContext, d: Descriptor, files: FragmentFiles, c: ChunkInfo): Promise<boolean> {
  return bytesPass(ctx, d, files, c.start, c.size, (bytes) => (checkChunk(d.name, c, bytes), true));
}

/**
 * Whether the blob's bytes [start, start + size) read (their fragments are
 * there, long enough) and pass `check` (false, or ERR_HASH_MISMATCH: they
 * do not). In a bucket-backed store cas/ holds copies: bytes that fail are
 * read once more from the bucket, their cached copies dropped, before they
 * count as damaged (a damaged cached copy is not damage, and recording it
 * would make the blob unreadable here while the bucket holds it whole).
 */
async function bytesPass(ctx: FsckContext, d: Descriptor, files: FragmentFiles, start: number, size: number, check: (bytes: Buffer) => boolean): Promise<boolean> {
  for (let again = false; ; again = true) {
    const bytes = Buffer.allocUnsafe(size);
    let ok: boolean;
    try {
      await readExtents(files, d.extents, bytes, start);
      ok = check(bytes);
    } catch (e) {
      if (!isCabError(e, 'ERR_FRAGMENT_MISSING') && !isCabError(e, 'ERR_HASH_MISMATCH')) throw e;
      ok = false;
    } finally {
      ctx.report.bytesVerified += size;
    }
    if (ok || again || !ctx.cas.remote) return ok;
    for (const x of d.extents.slice(start, size)) await files.dropCached(x.frag);
  }
}
