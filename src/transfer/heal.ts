import { CabError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import { overlapsDamage } from '../format/damage.js';
import type { BlobStore } from '../store.js';
import { BlobHealer } from '../blob/heal.js';
import { throwIfAborted } from './abort.js';
import { getBytes, remoteChunks, type RemoteChunk, type RemoteSource } from './remote.js';

/**
 * Heals blob `name`, here finalized with the same hash as at `src` but with
 * damage recorded by fsck: fetches exactly the sender's chunks that cover
 * the damaged ranges (each checked against the sender's hash, then against
 * the hash recorded here), and rewrites the blob (see BlobHealer). Nothing
 * changes unless every damaged chunk arrives whole and right. Returns the
 * bytes received and the bytes healed.
 */
export async function healFrom(store: BlobStore, src: RemoteSource, name: string, size: number, signal?: AbortSignal): Promise<{ received: number; healed: number }> {
  const healer = await BlobHealer.open(store, name);
  let received = 0;
  try {
    const damage = healer.damage;
    const last = damage[damage.length - 1]?.e ?? 0;
    let batch: RemoteChunk[] = [];
    let batchBytes = 0;
    const fetch = async () => {
      throwIfAborted(signal, name);
      const data = batch.length ? await src.get(batch.map((c) => [c.hash, 0, c.size])) : [];
      for (const [k, c] of batch.entries()) {
        const d = data[k]!;
        received += d.length;
        if (d.length !== c.size || !bytesEqual(sha256(d), c.hash)) {
          throw new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} from ${src.label} does not hash to what was asked for`, { blob: name, offset: c.offset });
        }
        await healer.write(c.offset, d);
      }
      batch = [];
      batchBytes = 0;
    };
    for await (const c of remoteChunks(src, name, size)) {
      if (c.offset >= last) break;
      if (!overlapsDamage(damage, c.offset, c.offset + c.size)) continue;
      if (batch.length && batchBytes + c.size > getBytes(src)) await fetch();
      batch.push(c);
      batchBytes += c.size;
    }
    await fetch();
    if (healer.healedBytes !== damage.reduce((n, r) => n + r.e - r.o, 0)) {
      throw new CabError('ERR_PROTOCOL', `${src.label} did not cover the damaged bytes of ${name}`, { blob: name });
    }
    return { received, healed: await healer.commit() };
  } finally {
    await healer.abort();
  }
}
