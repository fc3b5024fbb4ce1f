import type { BlobStore } from '../store.js';
import type { BlobReader } from '../blob/reader.js';

/** Readers a cache keeps open unless told otherwise. */
export const DEFAULT_READERS = 16;

/**
 * Readers of local blobs, opened once and reused (opening one reads a
 * descriptor and publishes pins), at most `max` open: past that the oldest
 * is closed. A reader that failed to open is forgotten, so the next ask
 * tries again.
 */
export class ReaderCache {
  readonly #readers = new Map<string, Promise<BlobReader>>();

  /** `follow`: readers that follow (BlobReader.catchUp takes in what a blob being written has recorded since). */
  constructor(
    readonly store: BlobStore,
    readonly max = DEFAULT_READERS,
    readonly follow = false,
  ) {}

  get(name: string): Promise<BlobReader> {
    let r = this.#readers.get(name);
    if (r) return r;
    r = this.store.newBlobReader(name, { follow: this.follow });
    const mine = r;
    r.catch(() => {
      if (this.#readers.get(name) === mine) this.#readers.delete(name);
    });
    this.#readers.set(name, r);
    if (this.#readers.size > this.max) {
      const [oldest, p] = this.#readers.entries().next().value as [string, Promise<BlobReader>];
      this.#readers.delete(oldest);
      void p.then((x) => x.close()).catch(() => {});
    }
    return r;
  }

  /** Closes every reader; the cache stays usable. */
  async close(): Promise<void> {
    const all = [...this.#readers.values()];
    this.#readers.clear();
    for (const r of all) await r.then((x) => x.close()).catch(() => {});
  }
}
