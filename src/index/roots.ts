import { exists } from '../disk/durable.js';
import { bytesEqual, hashArg } from '../hash/sha256.js';
import type { Layout } from '../format/layout.js';
import type { ChunkIndex } from './chunk-index.js';
import { paged } from './paging.js';
import { catchUpBehind } from './catchup.js';

/**
 * The finalized blobs whose BEP 52 root is `root` (32 bytes or 64 hex
 * digits, checked now), lazily, in name order, from the index's `roots`
 * table a page at a time. Left out: blobs with damage recorded (they do not
 * hold every byte), blobs whose descriptor is gone (deleted by a process
 * that died before it updated the index), and stale entries.
 */
export function blobsWithRoot(index: ChunkIndex, layout: Layout, root: unknown): AsyncGenerator<string> {
  const key = hashArg(root, 'a blob root');
  return (async function* () {
    await catchUpBehind(index, layout);
    for await (const name of paged<string>((last) => index.rootPage(key, last))) {
      // An entry left by older code (which never removes one) may name a blob deleted, or made again with other bytes.
      const entry = index.blob(name);
      if (!entry?.h || !bytesEqual(entry.h, key) || entry.k) continue;
      if (await exists(layout.descriptor(name))) yield name;
    }
  })();
}
