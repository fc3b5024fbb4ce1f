import { CabError, isCabError } from '../errors.js';
import { bytesEqual, toHex } from '../hash/sha256.js';
import type { BlobStore } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';
import { healFrom } from './heal.js';
import { checkPrefix, type Prefix } from './prefix.js';
import { sharedListPages } from './list-pages.js';
import type { RemoteSource } from './remote.js';
import { withHexJSON, type ReceiveOptions, type TransferStats } from './stats.js';
import { Receiver, isSourceGone } from './receiver.js';
import { DEFAULT_STALL_MS, SourceSet, checkStallMs } from './sources.js';
import { orAbort } from './abort.js';
import { FIRST_LIST_PAGE } from './messages.js';

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
export async function receiveBlob(store: BlobStore, sources: SourceSet, name: string, st: { size: number; hash: Uint8Array }, options: ReceiveOptions = {}): Promise<TransferStats> {
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
  const at = { made: false, attempt: 0 };
  for (;;) {
    try {
      return await receiveOnce(store, sources, name, st, options, stats, at);
    } catch (e) {
      // Another transfer of the blob into this store (a second pull, a push, here or in another process) made or
      // finalized it since it was looked at: it is looked at again, and taken as that one left it (finalized with
      // this hash: nothing to fetch; still being written: ERR_BLOB_LOCKED, the answer for a second writer).
      // Or a local blob it took ranges from was deleted during the pull: what it wrote stands (durable,
      // unfinalized), and the rest is planned again from the index as it is now (resumed, its prefix checked).
      const again = e instanceof LookAgain;
      if ((!again && !isSourceGone(e)) || ++at.attempt > RETRIES) throw again ? e.cause : e;
    }
  }
}

/** Times a transfer looks at its blob again, or plans again, when others change the store under it (see receiveBlob). */
const RETRIES = 3;

/** The blob was made or finalized by another since this transfer looked at it (`cause`: what said so). */
class LookAgain extends Error {
  constructor(cause: unknown) {
    super('look again', { cause });
  }
}

/** `p`, or LookAgain if it fails with one of `codes` (a sign that another transfer changed the blob meanwhile). */
function orLookAgain<T>(p: Promise<T>, ...codes: Array<'ERR_BLOB_EXISTS' | 'ERR_BLOB_FINALIZED'>): Promise<T> {
  return p.catch((e: unknown) => {
    throw codes.some((c) => isCabError(e, c)) ? new LookAgain(e) : e;
  });
}

/** One go of receiveBlob, adding to `stats`; `at.made`: the blob was made by this pull (by this go or an earlier one). */
async function receiveOnce(
  store: BlobStore,
  sources: SourceSet,
  name: string,
  st: { size: number; hash: Uint8Array },
  options: ReceiveOptions,
  stats: TransferStats,
  at: { made: boolean; attempt: number },
): Promise<TransferStats> {
  let writer: BlobWriter;
  let prefix: Prefix | undefined;
  let list = sources.view;
  // Only the store's own answer that it has no such blob means a new one: the same code from the sender (its
  // list, below) is the pull's failure.
  const have = await store.newBlobReader(name).then(
    async (r) => (await r.close(), r),
    (e: unknown) => {
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
      return undefined;
    },
  );
  if (have) {
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
    // Finalized meanwhile (checkPrefix's cut, or the resume, meets it): looked at again.
    const pages = sharedListPages(sources.view);
    prefix = await orLookAgain(checkPrefix(store, pages.first, name, st.size), 'ERR_BLOB_FINALIZED');
    list = pages.second;
    stats.receivedBytes += prefix.wasted;
    writer = await orLookAgain(store.resumeBlobWriter(name), 'ERR_BLOB_FINALIZED');
    if (writer.size !== prefix.kept) {
      await writer.closeWithoutFinalize();
      throw new CabError('ERR_BLOB_LOCKED', `blob ${name} changed while its bytes were checked against the sender's`, { blob: name });
    }
  } else {
    // A new blob: its first list page is asked for while the blob is made here (the descriptor's fsyncs), and
    // taken by the receiver. A sender that no longer has the blob (deleted or replaced since its stat) says so
    // there, before anything is fetched: the blob made for it goes again (dropMade), not left empty.
    const pages = sharedListPages(sources.view);
    const first = pages.first.list(name, 0, FIRST_LIST_PAGE);
    first.catch(() => {});
    list = pages.second;
    writer = await orLookAgain(store.newBlobWriter(name), 'ERR_BLOB_EXISTS'); // made meanwhile: looked at again
    at.made = true;
  }
  try {
    if (writer.size > st.size) throw new CabError('ERR_BLOB_EXISTS', `blob ${name} here is longer than the sender's`, { blob: name });
    if (at.attempt === 0) stats.resumedFrom = writer.size;
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
    if (at.made && writer.size === 0 && (isCabError(e, 'ERR_NO_SUCH_BLOB') || isCabError(e, 'ERR_BLOB_NOT_FINALIZED'))) await dropMade(store, name);
    throw e;
  }
  await noteSources(store, name, options.label !== undefined ? [{ label: options.label }] : sources.live);
  return stats;
}

/**
 * The blob a pull made, when the sender turns out not to have it (deleted,
 * or not finalized, since its stat) and nothing came: removed, so that no
 * empty unfinalized blob is left that nothing would resume. Only if it is
 * still empty and unfinalized with the writer lock held (another process
 * may have resumed it meanwhile); a removal that fails leaves it, and never
 * hides the pull's own error.
 */
async function dropMade(store: BlobStore, name: string): Promise<void> {
  const stillEmpty = async () => {
    const st = await store.stat(name);
    if (st.size > 0 || st.finalized) throw new CabError('ERR_BLOB_EXISTS', `blob ${name} has bytes now: kept`, { blob: name });
  };
  await store.deleteBlob(name, stillEmpty).catch(() => {});
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
