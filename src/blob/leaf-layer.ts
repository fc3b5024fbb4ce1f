import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError } from '../errors.js';
import { LEAF_SIZE } from '../hash/merkle.js';
import { sha256, bytesEqual } from '../hash/sha256.js';
import { leafCount, treeLevels } from '../hash/proof.js';
import { ensureDir, replaceDurable, writeAll } from '../disk/durable.js';
import type { Layout } from '../format/layout.js';
import type { BlobReader } from './reader.js';

/**
 * The leaf layer of a finalized blob's merkle tree, kept so that serving a
 * proof never re-hashes the blob: `layers/<2 hex>/<name>` holds the header
 * (magic "CABLEAF1", the blob size as a u64 big-endian, the root) and the
 * SHA-256 of every 16 KiB leaf, end to end: 32 bytes per 16 KiB, 0.2% of
 * the blob. It is derived data, made on the first range request by reading
 * the blob once, and safe to delete (the next request makes it again). It
 * is never trusted as it is: loading it rebuilds the levels above the
 * leaves (one SHA-256 of 64 bytes per leaf) and compares the root with the
 * blob's, so a damaged or stale file is made again.
 */
const MAGIC = Buffer.from('CABLEAF1');
const HEADER = MAGIC.length + 8 + 32;
/** Bytes of the blob read at once while its leaf layer is made. */
const BUILD_BLOCK = 1024 * 1024;
/** Bytes of trees (all levels: about 64 bytes per 16 KiB of blob) kept in memory per store. */
export const TREE_CACHE_BYTES = 64 * 1024 * 1024;

/** Every level of a blob's tree (treeLevels): levels[0] the leaf hashes, the last one the root. */
export type TreeLevels = Buffer[];

/**
 * The trees of a store's finalized blobs, loaded (or made) once and kept in
 * memory up to TREE_CACHE_BYTES, the least recently used dropped first. A
 * tree being loaded is shared by everyone asking for it.
 */
export class TreeCache {
  readonly #trees = new Map<string, Promise<TreeLevels>>();
  readonly #bytes = new Map<string, number>();
  #total = 0;
  readonly #dirs = new Set<string>();

  constructor(
    readonly layout: Layout,
    readonly maxBytes = TREE_CACHE_BYTES,
  ) {}

  /** The tree of the finalized blob `r` reads. ERR_HASH_MISMATCH if the blob's bytes do not hash to its root. */
  get(r: BlobReader): Promise<TreeLevels> {
    const name = r.name;
    let t = this.#trees.get(name);
    if (t) {
      this.#trees.delete(name); // to the back: most recently used
      this.#trees.set(name, t);
      return t;
    }
    t = this.#load(r);
    const mine = t;
    this.#trees.set(name, t);
    t.then(
      (levels) => {
        if (this.#trees.get(name) !== mine) return;
        const n = levels.reduce((s, l) => s + l.length, 0);
        this.#bytes.set(name, n);
        this.#total += n;
        this.#evict();
      },
      () => {
        if (this.#trees.get(name) === mine) this.#trees.delete(name);
      },
    );
    return t;
  }

  #evict(): void {
    for (const name of this.#trees.keys()) {
      if (this.#total <= this.maxBytes || this.#trees.size <= 1) return;
      const n = this.#bytes.get(name);
      if (n === undefined) continue; // still loading
      this.#trees.delete(name);
      this.#bytes.delete(name);
      this.#total -= n;
    }
  }

  async #load(r: BlobReader): Promise<TreeLevels> {
    if (!r.isFinalized || !r.hash) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${r.name} is not finalized`, { blob: r.name });
    const file = this.layout.leafLayer(r.name);
    const leaves = await readLeafLayer(file, r.size, r.hash);
    if (leaves) {
      const levels = treeLevels(leaves);
      if (bytesEqual(levels[levels.length - 1]!, r.hash)) return levels;
    }
    const made = await hashLeaves(r);
    const levels = treeLevels(made);
    if (!bytesEqual(levels[levels.length - 1]!, r.hash)) {
      throw new CabError('ERR_HASH_MISMATCH', `blob ${r.name}'s bytes do not hash to its root`, { blob: r.name, expected: r.hash, found: levels[levels.length - 1] });
    }
    await ensureDir(path.dirname(file), this.#dirs);
    await replaceDurable(file, async (fh) => {
      const head = Buffer.alloc(HEADER);
      MAGIC.copy(head, 0);
      head.writeBigUInt64BE(BigInt(r.size), MAGIC.length);
      head.set(r.hash!, MAGIC.length + 8);
      await writeAll(fh, head, 0);
      await writeAll(fh, made, HEADER);
    });
    return levels;
  }
}

/** The leaf hashes a layer file holds, if it is there and its header names this blob; undefined if absent or stale. */
async function readLeafLayer(file: string, size: number, root: Uint8Array): Promise<Uint8Array | undefined> {
  let buf: Buffer;
  try {
    buf = await fs.readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  if (buf.length !== HEADER + 32 * leafCount(size) || !buf.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  if (buf.readBigUInt64BE(MAGIC.length) !== BigInt(size) || !bytesEqual(buf.subarray(MAGIC.length + 8, HEADER), root)) return undefined;
  return buf.subarray(HEADER);
}

/** The SHA-256 of every 16 KiB leaf of the blob, read once. */
async function hashLeaves(r: BlobReader): Promise<Buffer> {
  const out = Buffer.allocUnsafe(32 * leafCount(r.size));
  const block = Buffer.allocUnsafe(Math.min(BUILD_BLOCK, r.size));
  let leaf = 0;
  for (let pos = 0; pos < r.size; pos += BUILD_BLOCK) {
    const n = Math.min(BUILD_BLOCK, r.size - pos);
    await r.readUnchecked(block.subarray(0, n), pos);
    for (let at = 0; at < n; at += LEAF_SIZE) out.set(sha256(block.subarray(at, Math.min(n, at + LEAF_SIZE))), 32 * leaf++);
  }
  return out;
}
