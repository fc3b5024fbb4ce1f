import { CabError } from '../errors.js';
import { LEAF_SIZE, parent, zeroHash } from './merkle.js';
import { sha256, bytesEqual } from './sha256.js';

/**
 * Merkle proofs over a blob's BEP 52 tree, for verified range reads.
 *
 * A node is (level, index): level 0 holds the leaf hashes (SHA-256 of each
 * 16 KiB leaf), level k+1 node i is parent(level k nodes 2i, 2i+1), and the
 * root is the one node at level `treeDepth(leaves)`. Level k has
 * `levelWidth(leaves, k)` real nodes; a node past them covers padding only
 * and is `zeroHash(k)`, which a reader computes itself and never asks for.
 *
 * A reader holds some verified nodes (at first only the root). To check
 * leaves [a, b) it hashes their bytes, then climbs: each level's nodes are
 * paired, and a partner outside the range (an "uncle") comes from its
 * verified nodes or from the proof; it stops at the first level where every
 * node it has computed is one it holds, and compares. planProof says which
 * uncles it lacks; verifyRange does the climb.
 */

/** Leaves of a blob of `size` bytes (the last may be short). */
export function leafCount(size: number): number {
  return Math.ceil(size / LEAF_SIZE);
}

/** Level of the root over `leaves` leaves: the padded leaf layer has 2^depth entries. */
export function treeDepth(leaves: number): number {
  let d = 0;
  while (2 ** d < leaves) d++;
  return d;
}

/** Real (not padding) nodes at `level` over `leaves` leaves. */
export function levelWidth(leaves: number, level: number): number {
  return Math.ceil(leaves / 2 ** level);
}

/** A number naming node (level, index): levels below 64, indices below 2^40 (a blob below 2^54 bytes). */
export function nodeKey(level: number, index: number): number {
  return level * 2 ** 40 + index;
}

/** A verified node, or one an earlier request will verify (its answer is awaited first). */
export type KnownNode = Uint8Array | Promise<Uint8Array>;

export interface ProofPlan {
  /** Leaves [a, b). */
  a: number;
  b: number;
  leaves: number;
  /** Uncles the reader lacks, in the order the proof must carry them: [level, index]. */
  need: Array<[number, number]>;
  /** Uncles and the nodes compared at the top, held when the plan was made (kept here, so evicting them later changes nothing). */
  known: Map<number, KnownNode>;
  /** The level where the climb stops and compares. */
  stop: number;
}

/**
 * What checking leaves [a, b) of a tree over `leaves` leaves needs beyond
 * `held` (the reader's verified nodes; it must hold the root).
 */
export function planProof(leaves: number, a: number, b: number, held: (key: number) => KnownNode | undefined): ProofPlan {
  if (!(Number.isSafeInteger(a) && Number.isSafeInteger(b) && 0 <= a && a < b && b <= leaves)) {
    throw new CabError('ERR_BAD_ARGUMENT', `leaves [${a}, ${b}) are not a non-empty range of the ${leaves}`);
  }
  const need: Array<[number, number]> = [];
  const known = new Map<number, KnownNode>();
  const uncle = (level: number, index: number) => {
    if (index >= levelWidth(leaves, level)) return; // padding: computed, never asked for
    const h = held(nodeKey(level, index));
    if (h) known.set(nodeKey(level, index), h);
    else need.push([level, index]);
  };
  const depth = treeDepth(leaves);
  let lo = a;
  let hi = b - 1;
  for (let level = 0; ; level++) {
    const tops: Array<[number, KnownNode]> = [];
    for (let i = lo; i <= hi; i++) {
      const h = held(nodeKey(level, i));
      if (!h) break;
      tops.push([nodeKey(level, i), h]);
    }
    if (tops.length === hi - lo + 1) {
      for (const [k, h] of tops) known.set(k, h);
      return { a, b, leaves, need, known, stop: level };
    }
    if (level >= depth) throw new CabError('ERR_BAD_ARGUMENT', 'the reader does not hold the root');
    if (lo % 2 === 1) uncle(level, lo - 1);
    if (hi % 2 === 0) uncle(level, hi + 1);
    lo = Math.floor(lo / 2);
    hi = Math.floor(hi / 2);
  }
}

/** The nodes a plan's climb depends on (uncles and tops) that are still promised: await them before verifyRange. */
export async function settle(plan: ProofPlan): Promise<void> {
  for (const [k, h] of plan.known) if (h instanceof Promise) plan.known.set(k, await h);
}

function mismatch(plan: ProofPlan, why: string): CabError {
  return new CabError('ERR_HASH_MISMATCH', `leaves ${plan.a}..${plan.b} of the range read do not check out against the blob's root: ${why}`, {
    offset: plan.a * LEAF_SIZE,
  });
}

/**
 * Checks `data`, the bytes of the plan's leaves (the last leaf of the blob
 * may be short: `size` says where the blob ends), and `proof`, the hashes
 * of `plan.need` in order, against the plan's known nodes (settled).
 * Returns every node it verified (keyed by nodeKey), for the reader to hold;
 * ERR_HASH_MISMATCH if anything fails, and then nothing is returned.
 */
export function verifyRange(plan: ProofPlan, size: number, data: Uint8Array, proof: readonly Uint8Array[]): Map<number, Uint8Array> {
  const { a, b, leaves } = plan;
  const want = Math.min(size, b * LEAF_SIZE) - a * LEAF_SIZE;
  if (data.length !== want) throw mismatch(plan, `${data.length} bytes came for ${want}`);
  if (proof.length !== plan.need.length) throw mismatch(plan, `${proof.length} proof hashes came for ${plan.need.length}`);
  const nodes = new Map<number, Uint8Array>();
  // Copied: a proof hash may be a view of a large frame, which a held node would keep alive.
  plan.need.forEach(([level, index], k) => nodes.set(nodeKey(level, index), Uint8Array.from(proof[k]!)));
  const other = (level: number, index: number): Uint8Array => {
    if (index >= levelWidth(leaves, level)) return zeroHash(level);
    const key = nodeKey(level, index);
    const h = nodes.get(key) ?? plan.known.get(key);
    if (!(h instanceof Uint8Array)) throw new CabError('ERR_BAD_ARGUMENT', `node ${level}/${index} is neither known nor in the proof`);
    return h;
  };
  let row: Uint8Array[] = [];
  for (let i = a; i < b; i++) row.push(sha256(data.subarray((i - a) * LEAF_SIZE, Math.min(data.length, (i - a + 1) * LEAF_SIZE))));
  let lo = a;
  let level = 0;
  for (; level < plan.stop; level++) {
    row.forEach((h, k) => nodes.set(nodeKey(level, lo + k), h));
    const hi = lo + row.length - 1;
    const next: Uint8Array[] = [];
    for (let p = Math.floor(lo / 2); p <= Math.floor(hi / 2); p++) {
      const l = 2 * p >= lo ? row[2 * p - lo]! : other(level, 2 * p);
      const r = 2 * p + 1 <= hi ? row[2 * p + 1 - lo]! : other(level, 2 * p + 1);
      next.push(parent(l, r));
    }
    row = next;
    lo = Math.floor(lo / 2);
  }
  row.forEach((h, k) => {
    const top = plan.known.get(nodeKey(level, lo + k));
    if (!(top instanceof Uint8Array) || !bytesEqual(top, h)) throw mismatch(plan, `node ${level}/${lo + k} differs`);
  });
  return nodes;
}

/**
 * Every level of a tree, from its leaf layer (32-byte hashes end to end):
 * levels[k] holds levelWidth(leaves, k) hashes. levels[depth] is the root.
 * With `base`, the hashes given are the nodes of that level, not leaves, and
 * levels[k] is level base + k.
 */
export function treeLevels(leafLayer: Uint8Array, base = 0): Buffer[] {
  const levels = [Buffer.from(leafLayer.buffer, leafLayer.byteOffset, leafLayer.byteLength)];
  for (;;) {
    const below = levels[levels.length - 1]!;
    const n = below.length / 32;
    if (n <= 1) return levels;
    const up = Buffer.allocUnsafe(Math.ceil(n / 2) * 32);
    const level = base + levels.length - 1;
    for (let p = 0; 2 * p < n; p++) {
      const l = below.subarray(64 * p, 64 * p + 32);
      const r = 2 * p + 1 < n ? below.subarray(64 * p + 32, 64 * p + 64) : zeroHash(level);
      up.set(parent(l, r), 32 * p);
    }
    levels.push(up);
  }
}
