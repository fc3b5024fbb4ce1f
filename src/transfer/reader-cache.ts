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
  /** Readers a request is using (hold), and by how many: one pushed out meanwhile is closed when the last lets go. */
  readonly #held = new Map<BlobReader, number>();
  readonly #closing = new Set<BlobReader>();

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
      void p
        .then((x) => {
          if (this.#held.has(x)) this.#closing.add(x);
          else return x.close();
        })
        .catch(() => {});
    }
    return r;
  }

  /**
   * Marks `r` (from get) in use until the function returned is called: a
   * request that waits between finding a reader and reading it (for the
   * byte budget) read a closed one, ERR_CLOSED, when 16 other blobs were
   * opened meanwhile. Take it in the turn get's promise resolves in.
   */
  hold(r: BlobReader): () => void {
    this.#held.set(r, (this.#held.get(r) ?? 0) + 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const n = this.#held.get(r)! - 1;
      if (n > 0) return void this.#held.set(r, n);
      this.#held.delete(r);
      if (this.#closing.delete(r)) void r.close().catch(() => {});
    };
  }

  /** Closes every reader; the cache stays usable. */
  async close(): Promise<void> {
    const all = [...this.#readers.values(), ...[...this.#closing].map((r) => Promise.resolve(r))];
    this.#readers.clear();
    this.#closing.clear();
    for (const r of all) await r.then((x) => x.close()).catch(() => {});
  }
}
