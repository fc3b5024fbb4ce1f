import { bytesEqual, sha256 } from '../hash/sha256.js';
import { overlapsDamage } from '../format/damage.js';
import type { BlobStore } from '../store.js';
import { truncateBlob } from '../blob/truncate.js';
import type { BlobReader } from '../blob/reader.js';
import { remoteChunks, type ListStart, type RemoteChunk, type RemoteSource } from './remote.js';
import { ListDigest } from './list-digest.js';

/** What checkPrefix found. */
export interface Prefix {
  /** Bytes of the local blob that are the sender's, and stay (the rest was cut). */
  kept: number;
  /** When `kept` ends inside one of the sender's chunks: that chunk and its rest, checked with the head held here. */
  straddle?: { chunk: RemoteChunk; rest: Uint8Array };
  /** Bytes received from the sender for the check and not used. */
  wasted: number;
  /** Where the receiver reads the sender's list on from: the first of its chunks not wholly among those kept. */
  start: ListStart;
}

/** The chunks held here that are the sender's first ones (`n` of them, `bytes` long), and the sender's next chunk if any. */
interface Matched {
  n: number;
  bytes: number;
  next: RemoteChunk | undefined;
  /** A chunk held here after them is not the sender's (or the sender's list ended before them). */
  differs: boolean;
}

/**
 * Before a transfer appends to blob `name`, held here unfinalized (an
 * interrupted transfer, or anyone's partial blob of that name), checks that
 * what it holds is the sender's: its chunks against the sender's list
 * (hashes and sizes; a damaged chunk counts as different), then the bytes
 * after its last chunk boundary against the sender's next chunk (hashed
 * whole if they cover it, else completed with its rest from the sender and
 * hashed). What does not match is cut back to the last chunk boundary that
 * does (truncateBlob), so a bad prefix is never built on, nor kept to fail
 * every later transfer.
 *
 * The chunks are checked with one `match` (a digest of them all) when the
 * source can: a resumed transfer then reads none of the list it already
 * holds. When that says no, the list is read and compared chunk by chunk to
 * find where they part.
 */
export async function checkPrefix(store: BlobStore, src: RemoteSource, name: string, size: number): Promise<Prefix> {
  const r = await store.newBlobReader(name);
  let held: number;
  const out: Prefix = { kept: 0, wasted: 0, start: { from: 0, offset: 0 } };
  try {
    held = r.size;
    const { n, bytes: matched, next, differs } = (await matchByDigest(r, src, name, size)) ?? (await matchByList(r, src, name, size));
    out.start = { from: n, offset: matched };
    out.kept = matched;
    const open = held - matched;
    if (!differs && open === 0) out.kept = held;
    else if (!differs && next && open <= next.size && !overlapsDamage(r.damage, matched, held)) {
      const head = new Uint8Array(open);
      await r.readFully(head, matched);
      if (open === next.size) {
        if (bytesEqual(sha256(head), next.hash)) out.kept = held;
      } else {
        const [rest] = await src.get([[next.hash, open, next.size - open]]);
        const whole = new Uint8Array(next.size);
        whole.set(head);
        whole.set(rest!.subarray(0, next.size - open), open);
        if (rest!.length === next.size - open && bytesEqual(sha256(whole), next.hash)) {
          out.kept = held;
          out.straddle = { chunk: next, rest: rest! };
        } else out.wasted = rest!.length; // the head held here, or the sender's rest, is wrong: the chunk is fetched whole and checked after the cut
      }
    }
  } finally {
    await r.close();
  }
  if (out.kept < held) await truncateBlob(store, name, out.kept);
  return out;
}

/**
 * The chunks held here, all of them, checked with one `match`; the sender's
 * next chunk read from its list after them. Undefined when that cannot
 * settle it (no `match`, nothing held, damage held, or the digests differ):
 * then matchByList finds where the two part.
 */
async function matchByDigest(r: BlobReader, src: RemoteSource, name: string, size: number): Promise<Matched | undefined> {
  if (!src.match || r.damage.length > 0) return undefined;
  const d = new ListDigest();
  for await (const c of r.chunks()) d.add(c.hash, c.size);
  if (d.n === 0 || !(await src.match(name, d.n, d.digest()))) return undefined;
  const list = remoteChunks(src, name, size, { from: d.n, offset: d.bytes });
  try {
    const first = await list.next();
    return { n: d.n, bytes: d.bytes, next: first.done ? undefined : first.value, differs: false };
  } finally {
    await list.return(undefined);
  }
}

/** The chunks held here against the sender's list, one by one from the start, up to the first that differs. */
async function matchByList(r: BlobReader, src: RemoteSource, name: string, size: number): Promise<Matched> {
  const m: Matched = { n: 0, bytes: 0, next: undefined, differs: false };
  const local = r.chunks(); // what the reader saw: consistent with r.size whatever a writer does meanwhile
  try {
    for await (const c of remoteChunks(src, name, size)) {
      const l = await local.next();
      if (l.done) {
        m.next = c;
        break;
      }
      if (l.value.size !== c.size || !bytesEqual(l.value.hash, c.hash) || overlapsDamage(r.damage, c.offset, c.offset + c.size)) {
        m.differs = true;
        break;
      }
      m.n++;
      m.bytes += c.size;
    }
    // The sender's list ended first: chunks held here past its end differ.
    if (!m.differs && !m.next && !(await local.next()).done) m.differs = true;
  } finally {
    await local.return?.(undefined);
  }
  return m;
}
