import { CabError, isCabError } from '../errors.js';
import { bytesEqual, toHex } from '../hash/sha256.js';
import type { BlobStore } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';
import { healFrom } from './heal.js';
import { checkPrefix, type Prefix } from './prefix.js';
import { sharedListPages } from './list-pages.js';
import type { RemoteSource } from './remote.js';
import { withHexJSON, type ReceiveOptions, type TransferStats } from './stats.js';
import { Receiver } from './receiver.js';
import { DEFAULT_STALL_MS, SourceSet, checkStallMs } from './sources.js';
import { orAbort } from './abort.js';

export type { RemoteSource } from './remote.js';
export type { ReceiveOptions, TransferProgress, TransferStats } from './stats.js';

/** Bytes a receiving writer appends between checkpoints (each: a fragment fdatasync and a descriptor record, in the background). */
const RECEIVE_CHECKPOINT_BYTES = 16 * 1024 * 1024;

/**
 * Fetches blob `name` from `src` into `store` under the same name: only the
 * chunks the store lacks travel, each verified against its hash before it
 * is written, and the blob hash is checked before it is finalized. A blob
 * already here with the same hash costs one stat, or, if fsck recorded damage
 * in it, the fetch of exactly the damaged chunks, which heals it. An
 * unfinalized blob of that name (an interrupted transfer, or anyone's) is
 * resumed from its durable size once its bytes are checked against the
 * sender's, and cut back to where they stop matching (see checkPrefix).
 * The pull of receiveBlob from a set of one source.
 */
export async function receive(store: BlobStore, src: RemoteSource, name: string, options: ReceiveOptions = {}): Promise<TransferStats> {
  checkStallMs(options.stallMs, name);
  const st = await orAbort(src.stat(name), options.signal, name);
  if (!st.finalized || !st.hash) throw new CabError('ERR_BLOB_NOT_FINALIZED', `the sender's blob ${name} is not finalized`, { blob: name });
  if (options.expect && (options.expect.size !== st.size || !bytesEqual(options.expect.hash, st.hash))) {
    throw new CabError('ERR_PROTOCOL', `blob ${name} is not what the sender announced`, { blob: name });
  }
  const set = SourceSet.of(src, { name, signal: options.signal, stallMs: options.stallMs ?? DEFAULT_STALL_MS });
  try {
    return await receiveBlob(store, set, name, { size: st.size, hash: st.hash }, options);
  } finally {
    await set.close(); // its stall watch (the source is the caller's)
  }
}

/**
 * Fetches blob `name`, of `size` bytes and root `hash` (which the caller
 * trusts, or checked every source announces), from `sources` (see
 * receive): each request goes to one source, and to another if that one
 * fails by its own fault; the pull fails only when none is left.
 */
export async function receiveBlob(store: BlobStore, sources: SourceSet, name: string, st: { size: number; hash: Uint8Array }, options: ReceiveOptions = {}, lookedAgain = false): Promise<TransferStats> {
  const stats: TransferStats = withHexJSON({
    name,
    hash: st.hash,
    size: st.size,
    neededBytes: 0,
    reusedBytes: 0,
    receivedBytes: 0,
    verifiedBytes: 0,
    alreadyHad: false,
    resumedFrom: 0,
    chunksFetched: 0,
    healedBytes: 0,
  });
  let writer: BlobWriter;
  let prefix: Prefix | undefined;
  let list = sources.view;
  try {
    const have = await store.newBlobReader(name);
    await have.close();
    if (have.isFinalized) {
      if (!bytesEqual(have.hash!, st.hash)) {
        throw new CabError('ERR_BLOB_EXISTS', `blob ${name} exists here with other content`, { blob: name, expected: toHex(st.hash), found: toHex(have.hash!) });
      }
      if (have.damage.length > 0) {
        const { received, healed } = await sources.attempt((src) => healFrom(store, src, name, st.size, options.signal));
        stats.receivedBytes = stats.neededBytes = received;
        stats.healedBytes = healed;
      } else stats.alreadyHad = true;
      stats.verifiedBytes = st.size;
      await noteSources(store, name, options.label !== undefined ? [{ label: options.label }] : sources.live);
      return stats;
    }
    // The receiver reads the chunk list again: the pages checkPrefix read are kept for it.
    const pages = sharedListPages(sources.view);
    prefix = await checkPrefix(store, pages.first, name, st.size);
    list = pages.second;
    stats.receivedBytes += prefix.wasted;
    writer = await store.resumeBlobWriter(name);
    if (writer.size !== prefix.kept) {
      await writer.closeWithoutFinalize();
      throw new CabError('ERR_BLOB_LOCKED', `blob ${name} changed while its bytes were checked against the sender's`, { blob: name });
    }
  } catch (e) {
    if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
    try {
      writer = await store.newBlobWriter(name);
    } catch (e2) {
      // Made since it was looked for, by another transfer of it (two pulls at once, here or in another
      // process): look again, as at a blob held here. It is finalized by now (nothing to fetch), or that
      // transfer holds it (ERR_BLOB_LOCKED), never ERR_BLOB_EXISTS for a blob this pull was to make.
      if (!isCabError(e2, 'ERR_BLOB_EXISTS') || lookedAgain) throw e2;
      return receiveBlob(store, sources, name, st, options, true);
    }
  }
  try {
    if (writer.size > st.size) throw new CabError('ERR_BLOB_EXISTS', `blob ${name} here is longer than the sender's`, { blob: name });
    stats.resumedFrom = writer.size;
    options.onProgress?.({ ...stats }); // where it starts: a resumed transfer's progress goes on from there
    writer.deferHash();
    // What arrived is made durable as it goes, so a receiver killed (SIGKILL, a power cut) resumes
    // from there: the next pull or push fetches only the rest.
    writer.checkpointEvery(RECEIVE_CHECKPOINT_BYTES);
    const receiver = new Receiver(store, sources, list, name, writer, stats, options, prefix);
    try {
      await receiver.run();
    } catch (e) {
      // Cut, cancelled or failed: what arrived is written first, so that the next run need not fetch it again.
      await receiver.salvage().catch(() => {});
      throw e;
    } finally {
      await receiver.closeReaders();
    }
    const got = await writer.digest();
    if (!bytesEqual(got, st.hash)) {
      throw new CabError('ERR_HASH_MISMATCH', `blob ${name} hashes to ${toHex(got)}, not the announced ${toHex(st.hash)}`, {
        blob: name,
        expected: toHex(st.hash),
        found: toHex(got),
      });
    }
    await writer.close();
  } catch (e) {
    await writer.closeWithoutFinalize().catch(() => {});
    throw e;
  }
  await noteSources(store, name, options.label !== undefined ? [{ label: options.label }] : sources.live);
  return stats;
}

/**
 * A successful transfer: the peers (a label, the URL of a server, and the
 * name of its token if known) go into the blob's signpost (unless it is
 * full: MAX_RECORD_BYTES), and the blob counts as accessed. The blob is
 * durable by now; a full disk that stops this bookkeeping must not turn
 * the transfer into a failure (nor every retry).
 */
async function noteSources(store: BlobStore, name: string, peers: ReadonlyArray<{ label: string; tokenName?: string | undefined }>): Promise<void> {
  try {
    // Partial updates: a concurrent change to the blob's other fields (its owner shares, say) is kept.
    const now = new Date();
    if (peers.length === 0) return void (await store.updateBlobMetadata(name, { accessed: now }));
    // One transaction for both: one commit (an fdatasync) less at the end of every pull.
    await store.updateSignpostAndMetadata(
      name,
      (sp) => ({
        locations: Object.fromEntries(
          peers.map((p) => {
            // A token name known before stays, unless this pull used another.
            const tokenName = p.tokenName ?? sp?.locations[p.label]?.tokenName;
            return [p.label, { whenSeen: now, isProxy: false, isServer: true, ...(tokenName === undefined ? {} : { tokenName }) }];
          }),
        ),
      }),
      { accessed: now },
    );
  } catch (e) {
    // A signpost at its size limit (MAX_RECORD_BYTES) takes no more peers: the blob still counts as accessed.
    if (isCabError(e, 'ERR_BAD_ARGUMENT') && e.data.reason === 'too-large') return peers.length > 0 ? noteSources(store, name, []) : undefined;
    // Nor must a blob deleted the moment it was finalized.
    if (!isCabError(e, 'ERR_NO_SPACE') && !isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
  }
}
