import { CabError } from '../errors.js';
import { exists } from '../disk/durable.js';
import type { Layout } from '../format/layout.js';
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

/** Where to look for a chunk: its size (any if undefined), and the step before, whose continuation is preferred. */
interface Wanted {
  size?: number;
  after?: { blob: string; end: number };
}

/**
 * A local location of a chunk in a blob whose descriptor is there,
 * preferring one that continues `want.after`: the index may still name a
 * deleted blob (a process killed after the unlink, a full disk; the next
 * catch-up or GC removes those entries). `alive` remembers, per blob, what
 * one look at its descriptor found: a recipe's chunks come from few blobs,
 * so nearly every chunk is decided without a wait. The index is read
 * between the looks, never across one (no read transaction spans an await).
 */
export async function liveLocation(index: ChunkIndex, layout: Layout, hash: Uint8Array, alive: Map<string, boolean>, want: Wanted = {}): Promise<Location | undefined> {
  for (;;) {
    const found = locate(index, hash, alive, want);
    if (typeof found !== 'string') return found;
    alive.set(found, await exists(layout.descriptor(found)));
  }
}

/** liveLocation's look at the index: the location, or the name of a blob whose descriptor must be looked at first. */
function locate(index: ChunkIndex, hash: Uint8Array, alive: Map<string, boolean>, { size, after }: Wanted): Location | string | undefined {
  // Most chunks of a recipe continue the step before: one look at that place first.
  if (after && alive.get(after.blob) === true) {
    const here = index.sizeAt(hash, after.blob, after.end);
    if (here !== undefined && (size === undefined || here === size)) return { blob: after.blob, offset: after.end, size: here };
  }
  let first: Location | undefined;
  let seen = 0;
  for (const loc of index.locations(hash)) {
    if (size !== undefined && loc.size !== size) continue;
    const here = alive.get(loc.blob);
    if (here === undefined) return loc.blob;
    if (!here) continue;
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
export async function* planRecipe(index: ChunkIndex, layout: Layout, chunks: AsyncIterable<ChunkRef> | Iterable<ChunkRef>): AsyncGenerator<RecipeStep> {
  let cur: RecipeStep | undefined;
  const alive = new Map<string, boolean>(); // a recipe's chunks come from few blobs: one look each
  for await (const c of chunks) {
    if (!(c?.hash instanceof Uint8Array) || c.hash.length !== 32 || !Number.isSafeInteger(c.size) || c.size <= 0) {
      throw new CabError('ERR_BAD_ARGUMENT', 'a chunk reference needs a 32-byte hash and a positive size');
    }
    const after = cur?.kind === 'blob' ? { blob: cur.blob, end: cur.offset + cur.size } : undefined;
    const loc = await liveLocation(index, layout, c.hash, alive, { size: c.size, after });
    if (loc && cur?.kind === 'blob' && after && loc.blob === after.blob && loc.offset === after.end) {
      cur.size += c.size;
      continue;
    }
    if (cur) yield cur;
    cur = loc ? { kind: 'blob', blob: loc.blob, offset: loc.offset, size: loc.size } : { kind: 'chunk', hash: Uint8Array.from(c.hash), size: c.size };
  }
  if (cur) yield cur;
}
