import { CabError } from '../errors.js';
import type { ChunkIndex, Location } from './chunk-index.js';

/** A chunk by its SHA-256 and size: what blobChunkStream yields and a recipe consumes. */
export interface ChunkRef {
  hash: Uint8Array;
  size: number;
}

/** One step to rebuild a remote blob: copy a range of a local blob, or fetch a chunk from the peer. */
export type RecipeStep = { kind: 'blob'; blob: string; offset: number; size: number } | { kind: 'chunk'; hash: Uint8Array; size: number };

/** Locations looked at for one that continues the step before, before settling for the first. */
const CONTINUE_SEARCH = 16;

/** A local location of a chunk, preferring one that continues `after`. */
function locate(index: ChunkIndex, hash: Uint8Array, size: number, after?: { blob: string; end: number }): Location | undefined {
  let first: Location | undefined;
  let seen = 0;
  for (const loc of index.locations(hash)) {
    if (loc.size !== size) continue;
    if (after && loc.blob === after.blob && loc.offset === after.end) return loc;
    first ??= loc;
    if (!after || ++seen >= CONTINUE_SEARCH) break;
  }
  return first;
}

/**
 * Turns a peer's chunk list into the steps that rebuild the blob here:
 * local ranges where the index has the chunk (contiguous ones merged), and
 * the chunks to fetch. Streams: holds one step at a time.
 */
export async function* planRecipe(index: ChunkIndex, chunks: AsyncIterable<ChunkRef> | Iterable<ChunkRef>): AsyncGenerator<RecipeStep> {
  let cur: RecipeStep | undefined;
  for await (const c of chunks) {
    if (!(c?.hash instanceof Uint8Array) || c.hash.length !== 32 || !Number.isSafeInteger(c.size) || c.size <= 0) {
      throw new CabError('ERR_BAD_ARGUMENT', 'a chunk reference needs a 32-byte hash and a positive size');
    }
    const after = cur?.kind === 'blob' ? { blob: cur.blob, end: cur.offset + cur.size } : undefined;
    const loc = locate(index, c.hash, c.size, after);
    if (loc && cur?.kind === 'blob' && after && loc.blob === after.blob && loc.offset === after.end) {
      cur.size += c.size;
      continue;
    }
    if (cur) yield cur;
    cur = loc ? { kind: 'blob', blob: loc.blob, offset: loc.offset, size: loc.size } : { kind: 'chunk', hash: Uint8Array.from(c.hash), size: c.size };
  }
  if (cur) yield cur;
}
