import { sha256Stream } from '../hash/sha256.js';

/**
 * What a `match` carries (PROTOCOL.md, "A pull", step 1): the SHA-256 of a
 * chunk list's first `n` entries, each its 32-byte hash then its size as an
 * 8-byte big-endian integer, in list order. The receiver sums up the chunks
 * it holds; the sender, the same number of its own list's, without sending
 * them.
 */
export class ListDigest {
  readonly #h = sha256Stream();
  readonly #size = Buffer.alloc(8);
  /** Entries added, and the bytes they cover. */
  n = 0;
  bytes = 0;

  add(hash: Uint8Array, size: number): void {
    this.#h.update(hash);
    this.#size.writeUIntBE(size, 2, 6);
    this.#h.update(this.#size);
    this.n++;
    this.bytes += size;
  }

  digest(): Uint8Array {
    return new Uint8Array(this.#h.digest());
  }
}
