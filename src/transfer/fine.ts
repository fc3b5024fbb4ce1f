import { CabError, isCabError } from '../errors.js';
import { chunk as cdc } from '../chunker/fastcdc.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
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

/** Local bytes to match a run against: blob bytes [from, to), cut at the blob's end. */
export interface LocalWindow {
  blob: string;
  from: number;
  to: number;
}

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

/** Local bytes around where a run would be: blob bytes [from, from + bytes.length) of `d`, and their fine pieces by hashKey -> [offset in `bytes`, size, SHA-256]. */
interface Local {
  d: Descriptor;
  from: number;
  bytes: Uint8Array;
  pieces: Map<number, [number, number, Uint8Array]>;
}

/** One piece of a chunk: where it is in the chunk, and whether it is local (offset in Local.bytes) or to fetch (its fine hash). */
type Piece = { at: number; size: number; local: number } | { at: number; size: number; hash: Uint8Array };

/**
 * A run of missing chunks, matched at the fine grain (FINE_CHUNKER, the
 * same on every store whatever its own chunker) against the local bytes
 * `near`: the sender's fine list of each chunk is asked at once,
 * while the local bytes are read and cut; pieces found locally are taken
 * from there, the rest fetched, all the run's pieces in one `get` (or a few,
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
  const plans: Piece[][] = [];
  const want: Array<{ c: ChunkRef; piece: Extract<Piece, { hash: Uint8Array }> }> = [];
  for (let i = 0; i < run.length; i++) {
    const c = run[i]!;
    const plan = planChunk(x, c, await orAbort(lists[i]!, x.signal, x.name), local);
    plans.push(plan);
    for (const piece of plan) if ('hash' in piece) want.push({ c, piece });
  }
  const got = await fetchPieces(x, want);
  return run.map((c, i) => assemble(x, c, plans[i]!, local, got));
}

/** The chunk's fine pieces, each found in `local` or to fetch. */
function planChunk(x: FineContext, c: ChunkRef, list: WireChunk[], local: Local | undefined): Piece[] {
  const plan: Piece[] = [];
  let at = 0;
  for (const [hash, size] of list) {
    const mine = local?.pieces.get(hashKey(hash));
    if (mine && mine[1] === size && bytesEqual(mine[2].subarray(0, FINE_HASH_BYTES), hash)) plan.push({ at, size, local: mine[0] });
    else plan.push({ at, size, hash });
    at += size;
  }
  if (at !== c.size) throw new CabError('ERR_PROTOCOL', `fine pieces cover ${at} of ${c.size} bytes`, { blob: x.name });
  return plan;
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
        if (!bytesEqual(sha256(bytes).subarray(0, FINE_HASH_BYTES), p.hash)) {
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

/** The chunk from its pieces, checked against its hash; its local pieces as references, contiguous ones merged. */
function assemble(x: FineContext, c: ChunkRef, plan: Piece[], local: Local | undefined, got: Map<Piece, Uint8Array>): VerifiedChunk {
  const bytes = new Uint8Array(c.size);
  const refs: Array<{ at: number; size: number; local: number }> = [];
  for (const p of plan) {
    if ('local' in p) {
      bytes.set(local!.bytes.subarray(p.local, p.local + p.size), p.at);
      const last = refs.at(-1);
      if (last && last.at + last.size === p.at && last.local + last.size === p.local) last.size += p.size;
      else refs.push({ at: p.at, size: p.size, local: p.local });
    } else bytes.set(got.get(p)!, p.at);
  }
  if (!bytesEqual(sha256(bytes), c.hash)) {
    throw new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} assembled from pieces does not hash to it`, { blob: x.name });
  }
  if (refs.length === 0) return { bytes, hash: c.hash };
  const { d, from } = local!;
  return { bytes, hash: c.hash, refs: refs.map((r) => ({ at: r.at, size: r.size, src: { extents: d.extents, offset: from + r.local } })) };
}

/**
 * The local bytes `near`, read through the descriptor the writer pinned (so
 * that pieces of them can be referenced), and cut finely. Undefined if
 * there are none: the blob was deleted since the recipe named it, or a
 * fragment is missing. Bytes are not checked here: a piece is used only if
 * it hashes to the sender's piece.
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
  const pieces = new Map<number, [number, number, Uint8Array]>();
  let off = 0;
  for (const size of cdc(bytes, FINE_CHUNKER)) {
    const hash = sha256(bytes.subarray(off, off + size));
    pieces.set(hashKey(hash), [off, size, hash]);
    off += size;
  }
  return { d: desc, from, bytes, pieces };
}

/** The first 48 bits of a hash, as a number: a cheap map key (a match is then checked on the FINE_HASH_BYTES the sender gave). */
function hashKey(h: Uint8Array): number {
  return h[0]! * 2 ** 40 + h[1]! * 2 ** 32 + h[2]! * 2 ** 24 + h[3]! * 2 ** 16 + h[4]! * 2 ** 8 + h[5]!;
}
