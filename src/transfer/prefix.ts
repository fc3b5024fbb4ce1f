import { bytesEqual, sha256 } from '../hash/sha256.js';
import { overlapsDamage } from '../format/damage.js';
import type { BlobStore } from '../store.js';
import { truncateBlob } from '../blob/truncate.js';
import { remoteChunks, type RemoteChunk, type RemoteSource } from './remote.js';

/** What checkPrefix found. */
export interface Prefix {
  /** Bytes of the local blob that are the sender's, and stay (the rest was cut). */
  kept: number;
  /** When `kept` ends inside one of the sender's chunks: that chunk and its rest, checked with the head held here. */
  straddle?: { chunk: RemoteChunk; rest: Uint8Array };
  /** Bytes received from the sender for the check and not used. */
  wasted: number;
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
 */
export async function checkPrefix(store: BlobStore, src: RemoteSource, name: string, size: number): Promise<Prefix> {
  const r = await store.newBlobReader(name);
  let held: number;
  let matched = 0;
  let next: RemoteChunk | undefined;
  let differs = false;
  const out: Prefix = { kept: 0, wasted: 0 };
  try {
    held = r.size;
    const local = r.chunks(); // what the reader saw: consistent with r.size whatever a writer does meanwhile
    try {
      for await (const c of remoteChunks(src, name, size)) {
        const l = await local.next();
        if (l.done) {
          next = c;
          break;
        }
        if (l.value.size !== c.size || !bytesEqual(l.value.hash, c.hash) || overlapsDamage(r.damage, c.offset, c.offset + c.size)) {
          differs = true;
          break;
        }
        matched += c.size;
      }
      // The sender's list ended first: chunks held here past its end differ.
      if (!differs && !next && !(await local.next()).done) differs = true;
    } finally {
      await local.return?.(undefined);
    }
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
