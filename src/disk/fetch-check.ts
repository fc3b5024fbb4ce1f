// The fetching thread's check of a GET's planned chunks (see ChunkPlan in
// disk/fetch-thread.ts): each is hashed as its bytes land in the ring, so
// the main thread hashes none of them, and serves them only once checked.
import type crypto from 'node:crypto';
import { bytesEqual, sha256, sha256Stream, toHex } from '../hash/sha256.js';
import type { ChunkPlan, FetchFailure } from './fetch-thread.js';

/** A failure carried by a throw out of Sink.landed (see ioFailure). */
export class FetchError extends Error {
  readonly failure: FetchFailure;
  constructor(f: FetchFailure) {
    super(f.message);
    this.failure = f;
  }
}

export class PlanCheck {
  readonly #at: Float64Array;
  readonly #hashes: Uint8Array;
  readonly #count: number;
  /** The next planned chunk not yet checked. */
  #k = 0;
  /** The hash of chunk #k, once its first bytes landed. */
  #hash: crypto.Hash | undefined;

  constructor(plan: ChunkPlan) {
    this.#at = plan.at;
    this.#hashes = plan.hashes;
    this.#count = plan.at.length / 2;
  }

  /**
   * Fragment bytes [from, from + bytes.length) landed (the next ones): the
   * planned chunks among them are hashed, and each that ends here is
   * checked. Returns how far the bytes are checked (the start of a planned
   * chunk not complete yet, else the end), or throws a FetchError (kind
   * 'corrupt') for a chunk whose bytes do not hash to its hash.
   */
  landed(bytes: Uint8Array, from: number): number {
    const to = from + bytes.length;
    for (; this.#k < this.#count; this.#k++) {
      const k = this.#k;
      const start = this.#at[2 * k]!;
      const end = start + this.#at[2 * k + 1]!;
      if (start >= to) break;
      let found: Uint8Array;
      if (this.#hash === undefined && start >= from && end <= to) {
        // The whole chunk in these bytes (most are: 64 KiB on average, in socket reads of up to MAX_TAKE): one call, no Hash object.
        found = sha256(bytes.subarray(start - from, end - from));
      } else {
        const a = Math.max(from, start);
        const b = Math.min(to, end);
        // A chunk that began before these bytes was hashed as its first ones landed (they land in order).
        if (b > a) (this.#hash ??= sha256Stream()).update(bytes.subarray(a - from, b - from));
        if (end > to) return start;
        found = (this.#hash ?? sha256Stream()).digest();
        this.#hash = undefined;
      }
      const expected = this.#hashes.subarray(32 * k, 32 * k + 32);
      if (!bytesEqual(found, expected)) {
        throw new FetchError({ kind: 'corrupt', message: `bytes ${start}..${end} do not hash to their chunk`, offset: start, size: end - start, expected: toHex(expected), found: toHex(found) });
      }
    }
    return to;
  }

  /** The bytes ended (at `size`): a planned chunk not complete means the fragment is shorter than the plan. */
  ended(size: number): FetchFailure | undefined {
    if (this.#k >= this.#count) return undefined;
    return { kind: 'short', message: `the object ends at ${size}, before the end of the chunk at ${this.#at[2 * this.#k]!}`, bytes: size };
  }
}
