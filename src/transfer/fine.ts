import { CabError, isCabError } from '../errors.js';
import { chunk as cdc } from '../chunker/fastcdc.js';
import { sha256Latin1, bytesEqual, sha256, toHex } from '../hash/sha256.js';
import { givenBuffer } from '../hash/pool.js';
import { readExtents } from '../disk/blob-bytes.js';
import type { FragmentFiles } from '../disk/fragments.js';
import type { BlobWriter } from '../blob/writer.js';
import type { VerifiedChunk } from '../blob/pieces.js';
import type { Descriptor } from '../format/descriptor.js';
import type { ChunkRef } from '../store.js';
import { FINE_CHUNKER, FINE_HASH_BYTES, MAX_GET_ITEMS, type GetItem, type WireChunk } from './messages.js';
import { getBytes, type RemoteSource } from './remote.js';
import type { TransferStats } from './stats.js';
import { orAbort } from './abort.js';

/** Local bytes searched on each side of where a missing run would be. */
export const FINE_SLACK = 32 * 1024;

/**
 * Local bytes to match a run against: blob bytes [from, to), cut at the
 * blob's end. `head`: where in the blob the run's first byte would be (the
 * end of the local range before it), `tail`: where its last byte would end
 * (the start of the local range after it), when known.
 */
export interface LocalWindow {
  blob: string;
  from: number;
  to: number;
  head?: number;
  tail?: number;
}

/**
 * Bytes of a run's pieces left unmatched by its aligned ends (see planRun)
 * above which the whole window is cut finely and searched: more than one
 * edit's worth (an edit touches a piece or two, of up to FINE_CHUNKER.max).
 */
export const FINE_ALIGNED_LEFT = FINE_CHUNKER.max;

/** What matching a run works with. */
export interface FineContext {
  src: RemoteSource;
  name: string;
  w: BlobWriter;
  stats: TransferStats;
  /** Reads local bytes through a pinned descriptor's extents. */
  files: FragmentFiles;
  /** Descriptors of local blobs, pinned by the writer once per transfer (see localBytes). */
  sources: Map<string, Promise<Descriptor>>;
  /** Stops waiting for answers (the transfer was cancelled or failed). */
  signal: AbortSignal;
}

/** Local bytes around where a run would be: blob bytes [from, from + bytes.length) of `d`; cut finely (cutLocal) only when the aligned ends leave much unmatched. */
interface Local {
  d: Descriptor;
  from: number;
  bytes: Uint8Array;
}

/** The local bytes' fine pieces by hashKey -> [offset in Local.bytes, size, SHA-256 as latin1]. */
type LocalPieces = Map<number, [number, number, string]>;

/** One piece of a chunk: where it is in the chunk, and whether it is local (offset in Local.bytes) or to fetch (its fine hash). */
type Piece = { at: number; size: number; local: number } | { at: number; size: number; hash: Uint8Array };

/**
 * A run of missing chunks, matched at the fine grain (FINE_CHUNKER, the
 * same on every store whatever its own chunker) against the local bytes
 * `near`: the sender's fine list of each chunk is asked at once, while the
 * local bytes are read; pieces found locally (planRun) are taken from
 * there, the rest fetched, all the run's pieces in one `get` (or a few,
 * within the limits). Each fetched piece is checked against its fine hash
 * and each chunk, assembled, against its hash. Resolves to the run's chunks,
 * the local pieces as references to the blob they came from (contiguous ones
 * merged), so that only received bytes are written.
 * Nothing waits for anything but this run's own answers, so many runs go
 * at once (Receiver). The source must have `fine`.
 */
export async function matchRun(x: FineContext, run: ChunkRef[], near: LocalWindow): Promise<VerifiedChunk[]> {
  const lists = run.map((c) => {
    const p = x.src.fine!(c.hash, c.size);
    p.catch(() => {}); // awaited below, unless the local read fails first
    return p;
  });
  const local = await localBytes(x, near);
  const got: WireChunk[][] = [];
  for (const l of lists) got.push(await orAbort(l, x.signal, x.name));
  // Pieces fetched, by chunk and place (piece #i of chunk #c: c * 2^32 + its offset in the chunk), kept for a second plan.
  const fetched = new Map<number, Uint8Array>();
  const guessed = await withPieces(x, run, planRun(x, run, got, local, near, false), local, fetched);
  if (guessed.every((c) => c !== undefined)) return guessed;
  // A chunk with pieces taken unhashed failed its hash (more than one edit between the probes): planned again, every local piece hashed.
  const checked = await withPieces(x, run, planRun(x, run, got, local, near, true), local, fetched);
  return run.map((c, i) => {
    const v = checked[i];
    if (v === undefined) throw new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} assembled from pieces does not hash to it`, { blob: x.name });
    return v;
  });
}

/** The hash of a piece that an earlier plan fetched (withPieces): not asked for again. */
const FETCHED = new Uint8Array(0);

/** Fetches the pieces the plans do not find locally (unless in `fetched`, to which they are added), and assembles each chunk: undefined where it fails its hash. */
async function withPieces(x: FineContext, run: ChunkRef[], plans: Piece[][], local: Local | undefined, fetched: Map<number, Uint8Array>): Promise<Array<VerifiedChunk | undefined>> {
  const want: Array<{ c: ChunkRef; piece: Extract<Piece, { hash: Uint8Array }> }> = [];
  const place = new Map<Piece, number>();
  plans.forEach((plan, i) => {
    plan.forEach((piece, k) => {
      // Fetched for an earlier plan: taken as fetched, so that bytes received and bytes reused still add up to the chunk.
      if ('local' in piece && fetched.has(i * 2 ** 32 + piece.at)) plan[k] = { at: piece.at, size: piece.size, hash: FETCHED };
    });
    for (const piece of plan) {
      if (!('hash' in piece)) continue;
      place.set(piece, i * 2 ** 32 + piece.at);
      if (!fetched.has(i * 2 ** 32 + piece.at)) want.push({ c: run[i]!, piece });
    }
  });
  for (const [piece, bytes] of await fetchPieces(x, want)) fetched.set(place.get(piece)!, bytes);
  // The run's chunks end to end in one buffer, given to the writer as it is (appendVerified: no copy).
  const buf = givenBuffer(run.reduce((n, c) => n + c.size, 0));
  let at = 0;
  return run.map((c, i) => assemble(c, buf.subarray(at, (at += c.size)), plans[i]!, local, (p) => fetched.get(i * 2 ** 32 + p.at)!));
}

/**
 * Each chunk's fine pieces, each found in `local` or to fetch. An edit
 * between two local ranges leaves its bytes on either side where they
 * were: from where the run would start (`near.head`), the local bytes are
 * the sender's pieces in order up to the first piece the edit touched, and
 * from where it would end (`near.tail`) backwards. So the pieces at the
 * aligned ends are found with no fine cut of the local bytes: bisecting
 * for the first piece that differs from each end, a few pieces hashed per
 * run, the pieces up to it taken unhashed (their chunk's SHA-256, checked
 * as it is assembled, covers them; matchRun plans again if it fails). With
 * `hashEach`, or when both ends put the pieces at the same places (an
 * overwrite: the head's pieces after it are where they were too), every
 * piece is hashed where the head puts it, and if not there, where the
 * tail does. Only if more than
 * FINE_ALIGNED_LEFT bytes are left between (several edits, bytes moved, a
 * window without both ends) is the window cut finely and each piece left
 * looked up among its pieces. A hashed local piece counts if it has the
 * sender's size and FINE_HASH_BYTES of hash.
 */
function planRun(x: FineContext, run: ChunkRef[], lists: WireChunk[][], local: Local | undefined, near: LocalWindow, hashEach: boolean): Piece[][] {
  const plans: Piece[][] = [];
  // Every piece of the run in order: its plan, its index there, and where it starts in the run.
  const flat: Array<{ plan: Piece[]; k: number; runAt: number; size: number; hash: Uint8Array }> = [];
  let runAt = 0;
  run.forEach((c, i) => {
    const plan: Piece[] = [];
    let at = 0;
    for (const [hash, size] of lists[i]!) {
      flat.push({ plan, k: plan.length, runAt: runAt + at, size, hash });
      plan.push({ at, size, hash });
      at += size;
    }
    if (at !== c.size) throw new CabError('ERR_PROTOCOL', `fine pieces cover ${at} of ${c.size} bytes`, { blob: x.name });
    plans.push(plan);
    runAt += at;
  });
  if (!local) return plans;
  const { bytes, from } = local;
  const n = flat.length;
  const found = (p: (typeof flat)[number], off: number) => {
    p.plan[p.k] = { at: p.plan[p.k]!.at, size: p.size, local: off };
  };
  // Where piece k would be in `bytes`, from the head or from the tail.
  const headAt = (k: number) => near.head! - from + flat[k]!.runAt;
  const tailAt = (k: number) => near.tail! - from - runAt + flat[k]!.runAt;
  // Whether the local bytes at `off` are piece k.
  const alike = (k: number, off: number) => {
    const p = flat[k]!;
    return off >= 0 && off + p.size <= bytes.length && sameFine(sha256Latin1(bytes.subarray(off, off + p.size)), p.hash);
  };
  const head = near.head !== undefined && near.head >= from;
  // The tail must end inside the window (the bound checks are monotone only from the head).
  const tail = near.tail !== undefined && near.tail - from <= bytes.length;
  // The run as long as the bytes between its ends (an overwrite): the head's pieces after the edit are where they were too, so no bisecting.
  if (hashEach || (head && tail && tailAt(0) === headAt(0))) {
    // Every piece hashed where the head puts it, and those that are not there where the tail puts it (unless that is the same place).
    for (let k = 0; k < n; k++) {
      if (head && alike(k, headAt(k))) found(flat[k]!, headAt(k));
      else if (tail && (!head || tailAt(k) !== headAt(k)) && alike(k, tailAt(k))) found(flat[k]!, tailAt(k));
    }
  } else {
    // Pieces [0, f) at the head, [f, b) bisected for where they stop; [b, n) at the tail.
    let f = 0;
    for (let hi = n; head && f < hi; ) {
      const mid = (f + hi) >> 1;
      if (alike(mid, headAt(mid))) f = mid + 1;
      else hi = mid;
    }
    let b = n;
    for (let lo = f; tail && lo < b; ) {
      const mid = (lo + b) >> 1;
      if (alike(mid, tailAt(mid))) b = mid;
      else lo = mid + 1;
    }
    for (let k = 0; k < f; k++) found(flat[k]!, headAt(k));
    for (let k = b; k < n; k++) found(flat[k]!, tailAt(k));
  }
  let left = 0;
  for (const p of flat) if (!('local' in p.plan[p.k]!)) left += p.size;
  if (left <= FINE_ALIGNED_LEFT) return plans;
  const pieces = cutLocal(bytes);
  for (const p of flat) {
    if ('local' in p.plan[p.k]!) continue;
    const mine = pieces.get(hashKey(p.hash));
    if (mine && mine[1] === p.size && sameFine(mine[2], p.hash)) found(p, mine[0]);
  }
  return plans;
}

/** Whether a SHA-256 (latin1) starts with a fine hash (FINE_HASH_BYTES). */
function sameFine(h: string, fine: Uint8Array): boolean {
  if (fine.length !== FINE_HASH_BYTES) return false;
  for (let i = 0; i < FINE_HASH_BYTES; i++) if (h.charCodeAt(i) !== fine[i]) return false;
  return true;
}

/**
 * Fetches the pieces, adjacent ones of a chunk as one item, in as few
 * `get`s as the limits allow, all at once. Each piece is checked against
 * its fine hash. Returns the bytes by piece.
 */
async function fetchPieces(x: FineContext, want: Array<{ c: ChunkRef; piece: Extract<Piece, { hash: Uint8Array }> }>): Promise<Map<Piece, Uint8Array>> {
  const out = new Map<Piece, Uint8Array>();
  // Items (adjacent pieces of one chunk merged), and the pieces each covers.
  const items: Array<{ item: GetItem; pieces: Array<Extract<Piece, { hash: Uint8Array }>> }> = [];
  for (const { c, piece } of want) {
    const last = items.at(-1);
    if (last && last.item[0] === c.hash && last.item[1] + last.item[2] === piece.at && last.item[2] + piece.size <= getBytes(x.src)) {
      last.item[2] += piece.size;
      last.pieces.push(piece);
    } else items.push({ item: [c.hash, piece.at, piece.size], pieces: [piece] });
  }
  const answers = await Promise.all(inGets(x.src, items, (i) => i.item).map(async (group) => ({ group, data: await orAbort(x.src.get(group.map((g) => g.item)), x.signal, x.name) })));
  for (const { group, data } of answers) {
    group.forEach((g, k) => {
      const d = data[k]!;
      x.stats.receivedBytes += d.length;
      if (d.length !== g.item[2]) throw new CabError('ERR_HASH_MISMATCH', `a piece of chunk ${toHex(g.item[0])} came with ${d.length} bytes, not ${g.item[2]}`, { blob: x.name });
      let off = 0;
      for (const p of g.pieces) {
        const bytes = d.subarray(off, off + p.size);
        if (!sameFine(sha256Latin1(bytes), p.hash)) {
          throw new CabError('ERR_HASH_MISMATCH', `a piece of chunk ${toHex(g.item[0])} does not hash to what was asked for`, { blob: x.name });
        }
        out.set(p, bytes);
        off += p.size;
      }
    });
  }
  return out;
}

/** Splits items into `get`s within the source's byte limit and MAX_GET_ITEMS. */
function inGets<T>(src: RemoteSource, items: T[], item: (t: T) => GetItem): T[][] {
  const max = getBytes(src);
  const gets: T[][] = [];
  let cur: T[] = [];
  let bytes = 0;
  for (const t of items) {
    const n = item(t)[2];
    if (cur.length && (bytes + n > max || cur.length === MAX_GET_ITEMS)) {
      gets.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(t);
    bytes += n;
  }
  if (cur.length) gets.push(cur);
  return gets;
}

/** The chunk from its pieces into `bytes` (its size), checked against its hash (undefined if it fails); its local pieces as references, contiguous ones merged. */
function assemble(c: ChunkRef, bytes: Uint8Array, plan: Piece[], local: Local | undefined, got: (p: Piece) => Uint8Array): VerifiedChunk | undefined {
  const refs: Array<{ at: number; size: number; local: number }> = [];
  for (const p of plan) {
    if ('local' in p) {
      const last = refs.at(-1);
      if (last && last.at + last.size === p.at && last.local + last.size === p.local) last.size += p.size;
      else refs.push({ at: p.at, size: p.size, local: p.local });
    } else bytes.set(got(p), p.at);
  }
  for (const r of refs) bytes.set(local!.bytes.subarray(r.local, r.local + r.size), r.at);
  if (!bytesEqual(sha256(bytes), c.hash)) return undefined;
  if (refs.length === 0) return { bytes, hash: c.hash };
  const { d, from } = local!;
  return { bytes, hash: c.hash, refs: refs.map((r) => ({ at: r.at, size: r.size, src: { extents: d.extents, offset: from + r.local } })) };
}

/**
 * The local bytes `near`, read through the descriptor the writer pinned (so
 * that pieces of them can be referenced). Undefined if there are none: the
 * blob was deleted since the recipe named it, or a fragment is missing.
 * Bytes are not checked here: a piece is used only if it hashes to the
 * sender's piece.
 */
async function localBytes(x: FineContext, near: LocalWindow): Promise<Local | undefined> {
  let d = x.sources.get(near.blob);
  if (!d) {
    // One descriptor per blob for the whole transfer: the bytes read and the extents referenced are the same.
    d = x.w.source(near.blob);
    x.sources.set(near.blob, d);
  }
  let desc: Descriptor;
  try {
    desc = await d;
  } catch (e) {
    if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return undefined;
    throw e;
  }
  const from = near.from;
  const to = Math.min(desc.damagedAt ?? desc.size, near.to);
  if (to <= from) return undefined;
  const bytes = new Uint8Array(to - from);
  try {
    await readExtents(x.files, desc.extents, bytes, from);
  } catch (e) {
    if (isCabError(e, 'ERR_FRAGMENT_MISSING')) return undefined;
    throw e;
  }
  return { d: desc, from, bytes };
}

/**
 * A `finer` answer (the sender's side): the chunk's bytes cut finely, each
 * piece with the first FINE_HASH_BYTES of its SHA-256. The hashes are taken
 * as latin1 strings and packed into one array (each piece a view of it):
 * per piece of ~1 KiB that cost about two thirds of a Buffer's digest.
 */
export function finePieces(bytes: Uint8Array): WireChunk[] {
  const sizes = cdc(bytes, FINE_CHUNKER);
  const packed = new Uint8Array(sizes.length * FINE_HASH_BYTES);
  const c: WireChunk[] = [];
  let off = 0;
  let at = 0;
  for (const size of sizes) {
    const h = sha256Latin1(bytes.subarray(off, off + size));
    for (let k = 0; k < FINE_HASH_BYTES; k++) packed[at + k] = h.charCodeAt(k);
    c.push([packed.subarray(at, at + FINE_HASH_BYTES), size]);
    off += size;
    at += FINE_HASH_BYTES;
  }
  return c;
}

/** The local bytes cut finely, each piece by hashKey. */
function cutLocal(bytes: Uint8Array): LocalPieces {
  const pieces: LocalPieces = new Map();
  let off = 0;
  for (const size of cdc(bytes, FINE_CHUNKER)) {
    const hash = sha256Latin1(bytes.subarray(off, off + size));
    pieces.set(hashKeyOf(hash), [off, size, hash]);
    off += size;
  }
  return pieces;
}

/** The first 48 bits of a hash, as a number: a cheap map key (a match is then checked on the FINE_HASH_BYTES the sender gave). */
function hashKey(h: Uint8Array): number {
  return h[0]! * 2 ** 40 + h[1]! * 2 ** 32 + h[2]! * 2 ** 24 + h[3]! * 2 ** 16 + h[4]! * 2 ** 8 + h[5]!;
}

/** hashKey of a hash as latin1. */
function hashKeyOf(h: string): number {
  return h.charCodeAt(0) * 2 ** 40 + h.charCodeAt(1) * 2 ** 32 + h.charCodeAt(2) * 2 ** 24 + h.charCodeAt(3) * 2 ** 16 + h.charCodeAt(4) * 2 ** 8 + h.charCodeAt(5);
}
