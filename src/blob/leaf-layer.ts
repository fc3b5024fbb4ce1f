import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError, ioError, isCabError } from '../errors.js';
import { LEAF_SIZE } from '../hash/merkle.js';
import { sha256, bytesEqual } from '../hash/sha256.js';
import { parent, zeroHash } from '../hash/merkle.js';
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
 *
 * Memory: only the levels from GROUP_LEVEL up are held (64 bytes of tree
 * per MiB of blob: a 1 TiB blob's is 64 MB). A proof node below them is read
 * from the file with the 63 others of its group (64 leaves, 2 KiB), whose
 * node is computed again and compared with the held one, so a file damaged
 * or replaced since it was checked is caught (and made again), never served.
 */
const MAGIC = Buffer.from('CABLEAF1');
/** Bytes before the leaf hashes in a layer file. */
export const LAYER_HEADER = MAGIC.length + 8 + 32;
const HEADER = LAYER_HEADER;
/** The lowest level held in memory: a node there covers 2^GROUP_LEVEL leaves (a group: 1 MiB of blob). */
const GROUP_LEVEL = 6;
/** Leaves per group. */
export const GROUP = 2 ** GROUP_LEVEL;
/** Groups of leaf hashes read (when a layer is checked) or written (when it is made) at once: 64 KiB. */
const IO_GROUPS = 32;
/** At most this many leaf hashes are held by a tree loaded with `keep` (4 MiB of them: a blob of 2 GiB). */
const KEEP_LEAVES = 128 * 1024;
/** Bytes of trees (held levels: about 64 bytes per MiB of blob) kept in memory per store. */
export const TREE_CACHE_BYTES = 64 * 1024 * 1024;

/** The node at GROUP_LEVEL over one group's leaf hashes (the last group may be short: its padding is zero hashes). */
function groupNode(leafHashes: Uint8Array): Uint8Array {
  const levels = treeLevels(leafHashes);
  let top: Uint8Array = levels[levels.length - 1]!;
  for (let level = levels.length - 1; level < GROUP_LEVEL; level++) top = parent(top, zeroHash(level));
  return top;
}

/** Folds leaf hashes, a group at a time, into the tree's held levels. */
class Folder {
  readonly leaves: number;
  readonly #tops: Buffer;
  /** A blob of one group holds all its levels: its leaf hashes are kept. */
  readonly #small: Buffer | undefined;
  /** Every leaf hash, when asked for (`keep`) and the blob is at most KEEP_LEAVES leaves. */
  readonly #all: Buffer | undefined;
  #groups = 0;

  constructor(size: number, keep = false) {
    this.leaves = leafCount(size);
    this.#tops = Buffer.allocUnsafe(32 * Math.ceil(this.leaves / GROUP));
    this.#small = this.leaves <= GROUP ? Buffer.allocUnsafe(32 * this.leaves) : undefined;
    this.#all = keep && !this.#small && this.leaves <= KEEP_LEAVES ? Buffer.allocUnsafe(32 * this.leaves) : undefined;
  }

  /** The leaf hashes of the next whole groups (the last group may be short). */
  add(hashes: Uint8Array): void {
    if (this.#small) this.#small.set(hashes, 0);
    this.#all?.set(hashes, 32 * GROUP * this.#groups);
    for (let at = 0; at < hashes.length; at += 32 * GROUP) {
      this.#tops.set(groupNode(hashes.subarray(at, Math.min(hashes.length, at + 32 * GROUP))), 32 * this.#groups++);
    }
  }

  /** The tree, if its root is `root`. */
  tree(file: string, root: Uint8Array): BlobTree | undefined {
    const held = this.#small ? treeLevels(this.#small) : treeLevels(this.#tops, GROUP_LEVEL);
    if (!bytesEqual(held[held.length - 1]!, root)) return undefined;
    return new BlobTree(file, this.leaves, this.#small ? 0 : GROUP_LEVEL, held, this.#all);
  }
}

/** A finalized blob's tree: levels from `base` up held, the ones below read from its layer file by group. */
export class BlobTree {
  readonly bytes: number;

  constructor(
    readonly file: string,
    readonly leaves: number,
    readonly base: number,
    readonly held: Buffer[],
    /** Every leaf hash, checked with the tree and held (see checkLayer's `keep`). */
    readonly all?: Buffer,
  ) {
    this.bytes = held.reduce((s, l) => s + l.length, 0);
  }

  /** The hashes of nodes [level, index], in order. ERR_HASH_MISMATCH if a group read from the file is not the one checked. */
  async nodes(asked: ReadonlyArray<readonly [number, number]>): Promise<Uint8Array[]> {
    const groups = new Map<number, Buffer[]>();
    const out: Uint8Array[] = [];
    for (const [level, index] of asked) {
      if (level >= this.base) {
        out.push(this.held[level - this.base]!.subarray(32 * index, 32 * index + 32));
        continue;
      }
      const per = 2 ** (GROUP_LEVEL - level);
      const g = Math.floor(index / per);
      let levels = groups.get(g);
      if (!levels) groups.set(g, (levels = await this.#group(g)));
      const at = index - g * per;
      out.push(levels[level]!.subarray(32 * at, 32 * at + 32));
    }
    return out;
  }

  /**
   * The leaf hashes of groups [g, g + count) (fewer at the end of the
   * blob), each group checked against the tree as it was checked when
   * loaded; undefined if the file is gone, shorter, or changed since.
   */
  async leafGroups(g: number, count: number, fh?: fs.FileHandle): Promise<Buffer | undefined> {
    const from = g * GROUP;
    const n = Math.min(count * GROUP, this.leaves - from);
    if (n <= 0) return undefined;
    if (this.base === 0 || this.all) return (this.all ?? this.held[0]!).subarray(32 * from, 32 * (from + n)); // held, checked
    const hashes = Buffer.allocUnsafe(32 * n);
    if (!(await (fh ? readFull(fh, hashes, HEADER + 32 * from) : readAt(this.file, hashes, HEADER + 32 * from)))) return undefined;
    for (let at = 0; at < n; at += GROUP) {
      const node = groupNode(hashes.subarray(32 * at, 32 * Math.min(n, at + GROUP)));
      const i = g + at / GROUP;
      if (!bytesEqual(node, this.held[0]!.subarray(32 * i, 32 * i + 32))) return undefined;
    }
    return hashes;
  }

  async #group(g: number): Promise<Buffer[]> {
    const hashes = Buffer.allocUnsafe(32 * Math.min(GROUP, this.leaves - g * GROUP));
    const read = await readAt(this.file, hashes, HEADER + 32 * g * GROUP);
    if (!read || !bytesEqual(groupNode(hashes), this.held[0]!.subarray(32 * g, 32 * g + 32))) {
      throw new CabError('ERR_HASH_MISMATCH', `the leaf layer ${this.file} changed since it was checked`, { offset: g * GROUP * LEAF_SIZE });
    }
    return treeLevels(hashes);
  }
}

/** Reads buf.length bytes of `file` at `position`: false if the file is gone (or is no file now) or shorter. */
async function readAt(file: string, buf: Buffer, position: number): Promise<boolean> {
  const fh = await openLayer(file);
  if (!fh) return false;
  try {
    return await readFull(fh, buf, position);
  } catch (e) {
    throw ioError(e, 'reading a leaf layer', { path: file });
  } finally {
    await fh.close();
  }
}

/**
 * The trees of a store's finalized blobs, loaded (or made) once and kept in
 * memory up to TREE_CACHE_BYTES, the least recently used dropped first. A
 * tree being loaded is shared by everyone asking for it.
 */
export class TreeCache {
  readonly #trees = new Map<string, Promise<BlobTree>>();
  readonly #bytes = new Map<string, number>();
  #total = 0;
  readonly #dirs = new Set<string>();

  constructor(
    readonly layout: Layout,
    readonly maxBytes = TREE_CACHE_BYTES,
  ) {}

  /**
   * The hashes of nodes [level, index] of the tree of the finalized blob `r`
   * reads. A layer file found changed since it was checked is checked (or
   * made) again, once. ERR_HASH_MISMATCH if the blob's bytes do not hash to
   * its root.
   */
  async nodes(r: BlobReader, asked: ReadonlyArray<readonly [number, number]>): Promise<Uint8Array[]> {
    for (let again = false; ; again = true) {
      const t = this.#get(r);
      try {
        return await (await t).nodes(asked);
      } catch (e) {
        if (again || !isCabError(e, 'ERR_HASH_MISMATCH') || !(await t.then(() => true, () => false))) throw e;
        this.#drop(r.name, t);
      }
    }
  }

  #get(r: BlobReader): Promise<BlobTree> {
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
      (tree) => {
        if (this.#trees.get(name) !== mine) return;
        this.#bytes.set(name, tree.bytes);
        this.#total += tree.bytes;
        this.#evict();
      },
      () => {
        if (this.#trees.get(name) === mine) this.#trees.delete(name);
      },
    );
    return t;
  }

  #drop(name: string, t: Promise<BlobTree>): void {
    if (this.#trees.get(name) !== t) return;
    this.#trees.delete(name);
    this.#total -= this.#bytes.get(name) ?? 0;
    this.#bytes.delete(name);
  }

  #evict(): void {
    for (const name of this.#trees.keys()) {
      if (this.#total <= this.maxBytes || this.#trees.size <= 1) return;
      if (!this.#bytes.has(name)) continue; // still loading
      this.#drop(name, this.#trees.get(name)!);
    }
  }

  async #load(r: BlobReader): Promise<BlobTree> {
    if (!r.isFinalized || !r.hash) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${r.name} is not finalized`, { blob: r.name });
    const file = this.layout.leafLayer(r.name);
    const found = await checkLayer(file, r.size, r.hash);
    if (found) return found;
    for (let again = false; ; again = true) {
      try {
        await ensureDir(path.dirname(file), this.#dirs);
        await clearNonFile(file);
        let made: BlobTree | undefined;
        await replaceDurable(file, async (fh) => {
          await writeAll(fh, layerHeader(r.size, r.hash!), 0);
          made = await hashLeaves(r, fh, file);
        });
        return made!;
      } catch (e) {
        // Its folder is made again next time: it may have been removed since we made it (layers/ is derived data).
        this.#dirs.delete(path.dirname(file));
        if (again || (e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `making the leaf layer of blob ${r.name}`, { blob: r.name, path: file });
      }
    }
  }
}

/**
 * The head of a layer file: the magic, the blob's size and root. A writer
 * that kept its leaf hashes (src/blob/same-leaves.ts) writes it last.
 */
export function layerHeader(size: number, root: Uint8Array): Buffer {
  const head = Buffer.alloc(HEADER);
  MAGIC.copy(head, 0);
  head.writeBigUInt64BE(BigInt(size), MAGIC.length);
  head.set(root, MAGIC.length + 8);
  return head;
}

/** Groups of leaf hashes read at once when a whole layer is checked: 1 MiB (512 MiB of blob). */
const CHECK_GROUPS = 512;

/** The tree a layer file holds, if it is there, names this blob and checks out; undefined if absent, stale or damaged. */
export async function checkLayer(file: string, size: number, root: Uint8Array): Promise<BlobTree | undefined> {
  const fh = await openLayer(file);
  if (!fh) return undefined;
  try {
    return await checkOpenLayer(fh, file, size, root);
  } finally {
    await fh.close();
  }
}

/** A layer file opened for reading, or undefined if there is none (nothing, or something other than a file, at its path). */
export async function openLayer(file: string): Promise<fs.FileHandle | undefined> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(e, 'opening a leaf layer', { path: file });
  }
  try {
    if ((await fh.stat()).isFile()) return fh;
  } catch (e) {
    await fh.close();
    throw ioError(e, 'opening a leaf layer', { path: file });
  }
  await fh.close();
  return undefined;
}

/**
 * Removes what is at a layer's path if it is not a file (a directory, a
 * link): layers/ is derived data of the store's own (docs/FORMAT.md), and a
 * layer is made again in its place.
 */
async function clearNonFile(file: string): Promise<void> {
  try {
    if ((await fs.lstat(file)).isFile()) return;
    await fs.rm(file, { recursive: true, force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw ioError(e, 'clearing the path of a leaf layer', { path: file });
  }
}

/**
 * checkLayer on the open file `fh` (of path `file`), read in few, large
 * reads. `keep`: the tree holds every leaf hash, up to KEEP_LEAVES, so that
 * leafGroups need not read and check them again.
 */
export async function checkOpenLayer(fh: fs.FileHandle, file: string, size: number, root: Uint8Array, keep = false): Promise<BlobTree | undefined> {
  try {
    return await checkLayerBytes(fh, file, size, root, keep);
  } catch (e) {
    throw ioError(e, 'reading a leaf layer', { path: file });
  }
}

async function checkLayerBytes(fh: fs.FileHandle, file: string, size: number, root: Uint8Array, keep: boolean): Promise<BlobTree | undefined> {
  const folder = new Folder(size, keep);
  const end = HEADER + 32 * folder.leaves;
  const per = 32 * CHECK_GROUPS * GROUP;
  // The header comes with the first hashes; the last read asks for one byte more: a longer file is stale too.
  const buf = Buffer.allocUnsafe(Math.min(end + 1, HEADER + per));
  for (let at = 0; ; ) {
    const n = Math.min(at === 0 ? HEADER + per : per, end + 1 - at);
    const last = at + n > end;
    const { bytesRead } = await fh.read(buf, 0, n, at);
    if (bytesRead !== (last ? n - 1 : n)) return undefined;
    let part = buf.subarray(0, bytesRead);
    if (at === 0) {
      if (!part.subarray(0, MAGIC.length).equals(MAGIC) || part.readBigUInt64BE(MAGIC.length) !== BigInt(size)) return undefined;
      if (!bytesEqual(part.subarray(MAGIC.length + 8, HEADER), root)) return undefined;
      part = part.subarray(HEADER);
    }
    if (part.length > 0) folder.add(part);
    if (last) break;
    at += bytesRead;
  }
  return folder.tree(file, root);
}

/** Reads buf.length bytes of `fh` at `position`: false if the file is shorter. */
async function readFull(fh: fs.FileHandle, buf: Buffer, position: number): Promise<boolean> {
  for (let done = 0; done < buf.length; ) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) return false;
    done += bytesRead;
  }
  return true;
}

/**
 * Writes the SHA-256 of every 16 KiB leaf of the blob to `fh` after the
 * header, reading the blob once, and returns its tree. ERR_HASH_MISMATCH if
 * the bytes do not hash to the blob's root (the file is then not kept).
 */
async function hashLeaves(r: BlobReader, fh: fs.FileHandle, file: string): Promise<BlobTree> {
  const folder = new Folder(r.size);
  const groupBytes = GROUP * LEAF_SIZE;
  const block = Buffer.allocUnsafe(Math.min(groupBytes, r.size));
  const out = Buffer.allocUnsafe(32 * Math.min(folder.leaves, IO_GROUPS * GROUP));
  let filled = 0;
  let written = HEADER;
  const flush = async () => {
    folder.add(out.subarray(0, filled));
    await writeAll(fh, out.subarray(0, filled), written);
    written += filled;
    filled = 0;
  };
  for (let pos = 0; pos < r.size; pos += groupBytes) {
    const n = Math.min(groupBytes, r.size - pos);
    await r.readUnchecked(block.subarray(0, n), pos);
    for (let at = 0; at < n; at += LEAF_SIZE, filled += 32) out.set(sha256(block.subarray(at, Math.min(n, at + LEAF_SIZE))), filled);
    if (filled === out.length) await flush();
  }
  if (filled > 0) await flush();
  const tree = folder.tree(file, r.hash!);
  if (!tree) throw new CabError('ERR_HASH_MISMATCH', `blob ${r.name}'s bytes do not hash to its root`, { blob: r.name, expected: r.hash });
  return tree;
}
