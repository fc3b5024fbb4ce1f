import { CabError, isCabError } from '../errors.js';
import { bytesEqual, toHex } from '../hash/sha256.js';
import type { BlobStore } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';

/**
 * The local copy a remote reader opened with `cache: true` fills: verified
 * bytes are appended to the store's blob of the same name as they extend
 * it, in order from where it ends (bytes read elsewhere are not kept: a
 * blob is append-only). Once it holds the whole blob it is finalized, with
 * the root checked; closed before, it stays unfinalized and durable, and a
 * later pull, or reader with `cache`, resumes it (a pull checks the bytes
 * it holds against the sender's first).
 */
export class LocalCopy {
  #tail: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(
    readonly store: BlobStore,
    readonly w: BlobWriter,
    readonly size: number,
    readonly root: Uint8Array,
    /** Made by this copy (not resumed): closed empty, it is deleted, so that a read that cached nothing leaves nothing. */
    readonly made: boolean,
  ) {}

  /**
   * The copy to fill, or undefined if the store holds the blob finalized
   * with this root already. ERR_BLOB_EXISTS if it holds it finalized with
   * another, or longer; ERR_BLOB_LOCKED if a writer holds it.
   */
  static async open(store: BlobStore, name: string, size: number, root: Uint8Array): Promise<LocalCopy | undefined> {
    let w: BlobWriter;
    let made = false;
    try {
      const r = await store.newBlobReader(name);
      await r.close();
      if (r.isFinalized) {
        if (bytesEqual(r.hash!, root)) return undefined;
        throw new CabError('ERR_BLOB_EXISTS', `blob ${name} exists here with another root: it cannot cache the remote one`, { blob: name, expected: toHex(root), found: toHex(r.hash!) });
      }
      w = await store.resumeBlobWriter(name);
    } catch (e) {
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
      w = await store.newBlobWriter(name);
      made = true;
    }
    if (w.size > size) {
      await w.closeWithoutFinalize();
      throw new CabError('ERR_BLOB_EXISTS', `blob ${name} here is longer than the remote one`, { blob: name, expected: size, found: w.size });
    }
    const copy = new LocalCopy(store, w, size, root, made);
    if (w.size === size) await copy.#finalize(); // nothing to read (an empty blob, or a copy whose last bytes came before its close)
    return copy;
  }

  /** Verified bytes [at, at + data.length) of the blob: their part past the copy's end, if they reach it, is appended (in call order). */
  add(at: number, data: Uint8Array): Promise<void> {
    const next = this.#tail.then(async () => {
      const w = this.w;
      if (this.#closed || w.isFinalized || at > w.size || at + data.length <= w.size) return;
      await w.appendBytes(data.subarray(w.size - at));
      if (w.size === this.size) await this.#finalize();
    });
    this.#tail = next.catch(() => {});
    return next;
  }

  /** The whole blob is here: finalized if it has the root; else (the prefix held before was another blob's) left unfinalized for a pull to cut back. */
  async #finalize(): Promise<void> {
    try {
      await this.w.close({ expectHash: this.root });
    } catch (e) {
      if (!isCabError(e, 'ERR_HASH_MISMATCH')) throw e;
      await this.w.closeWithoutFinalize();
    }
  }

  /** What is appended is made durable; the blob stays unfinalized unless it is whole (or, made here and empty, is deleted). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#tail;
    if (this.w.isFinalized) return;
    await this.w.closeWithoutFinalize();
    if (this.made && this.w.size === 0) await this.store.deleteBlob(this.w.name);
  }
}
