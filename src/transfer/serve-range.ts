import { CabError } from '../errors.js';
import { LEAF_SIZE } from '../hash/merkle.js';
import { leafCount, levelWidth, treeDepth } from '../hash/proof.js';
import { TreeCache } from '../blob/leaf-layer.js';
import type { BlobStore } from '../store.js';
import type { Message } from './messages.js';
import type { ReaderCache } from './reader-cache.js';
import type { ServeContext } from './serve.js';

/** One tree cache per store, shared by all its connections. */
const caches = new WeakMap<BlobStore, TreeCache>();

function treesOf(store: BlobStore): TreeCache {
  let c = caches.get(store);
  if (!c) caches.set(store, (c = new TreeCache(store.layout)));
  return c;
}

/**
 * Answers a `range`: the bytes of leaves [leaf, leaf + n) of a finalized
 * blob, and the tree nodes the asker names, read from the blob's tree (its
 * leaf layer, made once: blob/leaf-layer.ts). The bytes are sent as they
 * are on disk: the asker checks every leaf against the root. The answer's
 * bytes count against the connection's shared get budget until sent.
 * `listable` checks the asker may read the blob and that it is finalized.
 * Resolves with the bytes of blob sent.
 */
export async function answerRange(
  c: ServeContext,
  readers: ReaderCache,
  m: Extract<Message, { t: 'range' }>,
  listable: (name: string) => Promise<string>,
): Promise<number> {
  const r = await readers.get(await listable(m.name));
  const held = readers.hold(r);
  try {
    const leaves = leafCount(r.size);
    if (m.leaf + m.n > leaves) {
      throw new CabError('ERR_ILLEGAL_POSITION', `leaves ${m.leaf}..${m.leaf + m.n} are past the blob's ${leaves}`, { blob: m.name, offset: m.leaf * LEAF_SIZE });
    }
    const depth = treeDepth(leaves);
    for (const [level, index] of m.proof) {
      if (level > depth || index >= levelWidth(leaves, level)) {
        throw new CabError('ERR_PROTOCOL', `node ${level}/${index} is not in the tree of ${leaves} leaves`, { blob: m.name });
      }
    }
    const proof = await treesOf(c.store).nodes(r, m.proof);
    const start = m.leaf * LEAF_SIZE;
    const end = Math.min(r.size, (m.leaf + m.n) * LEAF_SIZE);
    const release = await c.getBudget.take(end - start);
    try {
      const data = Buffer.allocUnsafe(end - start);
      await r.readUnchecked(data, start);
      await c.send({ t: 'ranger', id: m.id, data, proof });
      return data.length;
    } finally {
      release();
    }
  } finally {
    held();
  }
}
