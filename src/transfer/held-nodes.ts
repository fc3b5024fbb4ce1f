import { HASH_SIZE } from '../hash/sha256.js';
import type { KnownNode } from '../hash/proof.js';

/** Verified tree nodes a reader keeps; the oldest go first, and are asked for again if needed. */
export const MAX_HELD_NODES = 65536;

/**
 * Verified nodes of one blob's tree, the root always among them, and the
 * nodes that requests in flight will verify.
 *
 * The hashes sit in one slab used as a ring (MAX_HELD_NODES * 32 bytes, 2
 * MiB), indexed by a map of numbers: a node costs about 50 bytes and no
 * object of its own. (A map of one small buffer per node cost some 600
 * bytes a node, 40 MB of a 1 GiB stream's peak RSS, and churned the old
 * generation.) A node handed out is a copy: its slot may be reused.
 */
export class HeldNodes {
  /** Node key -> its slot in the slab. */
  readonly #slots = new Map<number, number>();
  /** The key in each slot (NaN: free), to forget it when the slot is reused. */
  readonly #keys = new Float64Array(MAX_HELD_NODES).fill(Number.NaN);
  readonly #slab = new Uint8Array(MAX_HELD_NODES * HASH_SIZE);
  #next = 0;
  /** Node key -> the verified nodes of the request in flight that will verify it. */
  readonly #promised = new Map<number, Promise<Map<number, Uint8Array>>>();

  constructor(
    readonly rootKey: number,
    readonly root: Uint8Array,
  ) {}

  get(key: number): KnownNode | undefined {
    if (key === this.rootKey) return this.root;
    const s = this.#slots.get(key);
    if (s !== undefined) return this.#slab.slice(s * HASH_SIZE, (s + 1) * HASH_SIZE);
    const p = this.#promised.get(key);
    if (!p) return undefined;
    const node = p.then((nodes) => nodes.get(key)!);
    // The plan that holds it may fail on its own request first and never await it: that must not be an unhandled rejection.
    node.catch(() => {});
    return node;
  }

  /** The nodes a request's answer will verify: a request made meanwhile waits for them rather than asking for them again. */
  promise(keys: Iterable<number>, verified: Promise<Map<number, Uint8Array>>): void {
    verified.catch(() => {}); // a failed request fails whoever waits on it; nobody else need hear
    for (const key of keys) if (key !== this.rootKey && !this.#slots.has(key) && !this.#promised.has(key)) this.#promised.set(key, verified);
  }

  /** A request ended: its promises go, and the nodes it verified (if it did) are kept, as the newest. */
  settle(keys: Iterable<number>, nodes: Map<number, Uint8Array> | undefined): void {
    for (const key of keys) this.#promised.delete(key);
    if (!nodes) return;
    for (const [k, h] of nodes) {
      const old = this.#slots.get(k);
      if (old !== undefined) this.#keys[old] = Number.NaN;
      const s = this.#next;
      this.#next = (s + 1) % MAX_HELD_NODES;
      const gone = this.#keys[s]!;
      if (!Number.isNaN(gone)) this.#slots.delete(gone);
      this.#keys[s] = k;
      this.#slots.set(k, s);
      this.#slab.set(h, s * HASH_SIZE);
    }
  }
}
