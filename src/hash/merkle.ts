import { CabError, checkBytes } from '../errors.js';
import { sha256, toHex, fromHex, HASH_SIZE } from './sha256.js';
import { objectArray } from '../lists.js';

/** BEP 52 leaf (block) size. */
export const LEAF_SIZE = 16384;

/**
 * A hasher's resumable state: the roots of the perfect subtrees over the full
 * leaves so far (largest first, one per set bit of `leaves`), the count of
 * full leaves, and the total size fed. The bytes of the partial last leaf are
 * not kept: a hasher made by `MerkleHasher.fromState` stands at
 * `leaves * LEAF_SIZE`, and the caller feeds it the rest (at most one leaf).
 */
export interface MerkleState {
  size: number;
  leaves: number;
  stack: string[];
}

const EMPTY_HASH = sha256(new Uint8Array(0));

/** ZERO[k]: the root of a perfect subtree of 2^k padding leaves (32 zero bytes each). */
const ZERO: Uint8Array[] = [new Uint8Array(HASH_SIZE)];
/** The root of a perfect subtree of 2^level padding leaves: what BEP 52 pads a layer with. */
export function zeroHash(level: number): Uint8Array {
  while (ZERO.length <= level) {
    const z = ZERO[ZERO.length - 1]!;
    ZERO.push(parent(z, z));
  }
  return ZERO[level]!;
}

const pair = Buffer.allocUnsafe(2 * HASH_SIZE);
/** A merkle node: SHA-256(left || right). */
export function parent(left: Uint8Array, right: Uint8Array): Uint8Array {
  pair.set(left, 0);
  pair.set(right, HASH_SIZE);
  return sha256(pair);
}

/** Levels of the stack entries for `n` leaves: the set bits of n, highest first. */
function levelsOf(n: number): number[] {
  const levels: number[] = [];
  for (let level = 0; n > 0; level++, n = Math.floor(n / 2)) {
    if (n % 2 === 1) levels.push(level);
  }
  return levels.reverse();
}

/**
 * BEP 52 "pieces root" of a byte stream: SHA-256 of each 16 KiB leaf (the last
 * may be shorter), the leaf layer padded with zero hashes to a power of two,
 * parent = SHA-256(left || right). The empty stream hashes to SHA-256("").
 *
 * Fed in any split, it gives the same root; `digest()` does not end it.
 */
export class MerkleHasher {
  /** Called with each full leaf's hash, in order (the writer keeps them as the blob's leaf layer). */
  onLeaf: ((hash: Uint8Array) => void) | undefined;
  #stack: Uint8Array[] = objectArray();
  #leaves = 0;
  #size = 0;
  readonly #partial = Buffer.allocUnsafe(LEAF_SIZE);
  #partialLen = 0;
  #leavesOnly = false;

  /** A hasher that only makes leaf hashes (to `onLeaf`), for another hasher's tree: no tree of its own, no digest. */
  static leavesOnly(onLeaf: (hash: Uint8Array) => void): MerkleHasher {
    const h = new MerkleHasher();
    h.#leavesOnly = true;
    h.onLeaf = onLeaf;
    return h;
  }

  /** Bytes fed so far. */
  get size(): number {
    return this.#size;
  }

  update(bytes: Uint8Array): this {
    checkBytes(bytes, 'MerkleHasher.update');
    let off = 0;
    const len = bytes.byteLength;
    if (this.#partialLen > 0) {
      const take = Math.min(LEAF_SIZE - this.#partialLen, len);
      this.#partial.set(bytes.subarray(0, take), this.#partialLen);
      this.#partialLen += take;
      off = take;
      if (this.#partialLen === LEAF_SIZE) {
        this.#pushLeaf(sha256(this.#partial));
        this.#partialLen = 0;
      }
    }
    while (len - off >= LEAF_SIZE) {
      this.#pushLeaf(sha256(bytes.subarray(off, off + LEAF_SIZE)));
      off += LEAF_SIZE;
    }
    if (off < len) {
      this.#partial.set(bytes.subarray(off), this.#partialLen);
      this.#partialLen += len - off;
    }
    this.#size += len;
    return this;
  }

  /**
   * Full leaves given by their hashes, 32 bytes each, instead of their
   * bytes: for leaves known to be byte for byte those of a checked tree
   * (src/blob/same-leaves.ts). The hasher must stand at a leaf boundary.
   */
  pushLeaves(hashes: Uint8Array): this {
    checkBytes(hashes, 'MerkleHasher.pushLeaves');
    if (hashes.length % HASH_SIZE !== 0) throw new CabError('ERR_BAD_ARGUMENT', `MerkleHasher.pushLeaves takes 32-byte hashes, not ${hashes.length} bytes`);
    if (this.#partialLen !== 0) throw new CabError('ERR_BAD_ARGUMENT', 'MerkleHasher.pushLeaves: leaf hashes fed in the middle of a leaf');
    for (let at = 0; at < hashes.length; at += HASH_SIZE) this.#pushLeaf(hashes.subarray(at, at + HASH_SIZE));
    this.#size += (hashes.length / HASH_SIZE) * LEAF_SIZE;
    return this;
  }

  /** The bytes of the partial last leaf (a copy): what a hasher that goes on from this one's leaves is fed. */
  partialBytes(): Uint8Array {
    return Uint8Array.from(this.#partial.subarray(0, this.#partialLen));
  }

  /** The hash of the partial last leaf, if the bytes fed end inside one (the last entry of a leaf layer). */
  partialLeaf(): Uint8Array | undefined {
    return this.#partialLen > 0 ? sha256(this.#partial.subarray(0, this.#partialLen)) : undefined;
  }

  #pushLeaf(hash: Uint8Array): void {
    this.onLeaf?.(hash);
    if (this.#leavesOnly) return void this.#leaves++;
    let h = hash;
    for (let n = this.#leaves; n % 2 === 1; n = (n - 1) / 2) {
      h = parent(this.#stack.pop()!, h);
    }
    this.#stack.push(h);
    this.#leaves++;
  }

  /** The root of everything fed so far; the hasher goes on. */
  digest(): Uint8Array {
    if (this.#size === 0) return Uint8Array.from(EMPTY_HASH);
    let stack = this.#stack;
    let n = this.#leaves;
    if (this.#partialLen > 0) {
      stack = stack.slice();
      let h = sha256(this.#partial.subarray(0, this.#partialLen));
      for (let m = n; m % 2 === 1; m = (m - 1) / 2) h = parent(stack.pop()!, h);
      stack.push(h);
      n++;
    }
    const levels = levelsOf(n);
    let acc = stack[stack.length - 1]!;
    let level = levels[levels.length - 1]!;
    for (let i = stack.length - 2; i >= 0; i--) {
      while (level < levels[i]!) acc = parent(acc, zeroHash(level++));
      acc = parent(stack[i]!, acc);
      level++;
    }
    return Uint8Array.from(acc);
  }

  state(): MerkleState {
    return { size: this.#size, leaves: this.#leaves, stack: this.#stack.map(toHex) };
  }

  /**
   * A hasher that continues from `state`. It stands at `leaves * LEAF_SIZE`
   * bytes: feed it the bytes from there to `state.size` (the partial last
   * leaf) before anything new.
   */
  static fromState(state: MerkleState): MerkleHasher {
    const bad = (why: string) => new CabError('ERR_BAD_HASH_STATE', why, { found: state });
    if (state === null || typeof state !== 'object') throw bad('state is not an object');
    const { size, leaves, stack } = state;
    if (!Number.isSafeInteger(leaves) || leaves < 0) throw bad('leaves is not a non-negative integer');
    if (!Number.isSafeInteger(size) || size < leaves * LEAF_SIZE || size - leaves * LEAF_SIZE >= LEAF_SIZE) {
      throw bad('size does not agree with leaves');
    }
    if (!Array.isArray(stack) || stack.length !== levelsOf(leaves).length) throw bad('stack does not agree with leaves');
    const roots = stack.map((h) => {
      if (typeof h !== 'string' || h.length !== 2 * HASH_SIZE) throw bad('stack entry is not a 32-byte hex hash');
      return fromHex(h);
    });
    const hasher = new MerkleHasher();
    hasher.#stack = roots;
    hasher.#leaves = leaves;
    hasher.#size = leaves * LEAF_SIZE;
    return hasher;
  }
}

/**
 * Why a blob announced with `size` bytes and BEP 52 root `root` cannot be
 * taken on the announcer's word, or undefined. A BEP 52 root does not pin
 * the size: the 64 bytes of a root's two children hash to that same root
 * as a one-leaf blob. So with a trusted root and no trusted size
 * (`sizeTrusted` false), 64 bytes are refused; 0 bytes have the root
 * SHA-256("") and no other. (No other size is ambiguous: any other leaf
 * would have to be a 16 KiB preimage of a node's hash.)
 */
export function sizeDoubt(size: number, root: Uint8Array, sizeTrusted: boolean): string | undefined {
  if (size === 0 && Buffer.compare(root, EMPTY_HASH) !== 0) return 'a blob of 0 bytes has the root SHA-256(""), not this one';
  if (size === 64 && !sizeTrusted) return 'a blob of 64 bytes may be the two hashes under a larger blob\'s root: pass the size you trust with the root';
  return undefined;
}

/** The blob hash of a whole byte array. */
export function merkleRoot(bytes: Uint8Array): Uint8Array {
  return new MerkleHasher().update(bytes).digest();
}
