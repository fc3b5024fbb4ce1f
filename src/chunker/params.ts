import { CabError } from '../errors.js';

/** FastCDC parameters, in bytes. */
export interface ChunkerParams {
  /** No chunk is shorter, except the last of a stream. */
  min: number;
  /** The target average; a power of two. */
  avg: number;
  /** No chunk is longer. */
  max: number;
}

export const DEFAULT_MIN_CHUNK = 16 * 1024;
export const DEFAULT_AVG_CHUNK = 64 * 1024;
export const DEFAULT_MAX_CHUNK = 256 * 1024;
export const DEFAULT_CHUNKER_PARAMS: Readonly<ChunkerParams> = Object.freeze({
  min: DEFAULT_MIN_CHUNK,
  avg: DEFAULT_AVG_CHUNK,
  max: DEFAULT_MAX_CHUNK,
});

/** Bounds: the gear hash needs a 32-byte window past `min`; `max` keeps a chunk in memory cheap. */
export const MIN_CHUNK_LOWER_BOUND = 64;
export const MAX_CHUNK_UPPER_BOUND = 64 * 1024 * 1024;

/**
 * The largest `max` a store is made with, and the largest chunk a peer may
 * list: one get (4 MiB) carries a chunk whole, and a bundle record holds
 * one. The chunker itself cuts up to MAX_CHUNK_UPPER_BOUND.
 */
export const STORE_MAX_CHUNK = 4 * 1024 * 1024;

/** resolveChunkerParams, and `max` no more than STORE_MAX_CHUNK (ERR_BAD_CHUNKER_PARAMS): a new store's chunker. */
export function resolveStoreChunkerParams(params: Partial<ChunkerParams> = {}): ResolvedChunkerParams {
  const p = resolveChunkerParams(params);
  if (p.max > STORE_MAX_CHUNK) {
    throw new CabError('ERR_BAD_CHUNKER_PARAMS', `max is above ${STORE_MAX_CHUNK}, the largest chunk a store takes (min ${p.min}, avg ${p.avg}, max ${p.max})`, { found: { min: p.min, avg: p.avg, max: p.max } });
  }
  return p;
}

/** Parameters with the two FastCDC masks derived from them. */
export interface ResolvedChunkerParams extends ChunkerParams {
  /** Harder mask (log2(avg) + 2 bits) used before `avg` bytes. */
  maskS: number;
  /** Easier mask (log2(avg) - 2 bits) used from `avg` to `max`. */
  maskL: number;
}

/** The top `bits` bits of a 32-bit word, as a signed 32-bit integer. */
function topMask(bits: number): number {
  return (0xffffffff << (32 - bits)) | 0;
}

export function resolveChunkerParams(params: Partial<ChunkerParams> = {}): ResolvedChunkerParams {
  const p = {
    min: params.min ?? DEFAULT_MIN_CHUNK,
    avg: params.avg ?? DEFAULT_AVG_CHUNK,
    max: params.max ?? DEFAULT_MAX_CHUNK,
  };
  const bad = (why: string) => new CabError('ERR_BAD_CHUNKER_PARAMS', `${why} (min ${p.min}, avg ${p.avg}, max ${p.max})`, { found: p });
  for (const k of ['min', 'avg', 'max'] as const) {
    if (!Number.isSafeInteger(p[k])) throw bad(`${k} is not an integer`);
  }
  if (p.min < MIN_CHUNK_LOWER_BOUND) throw bad(`min is below ${MIN_CHUNK_LOWER_BOUND}`);
  if (p.max > MAX_CHUNK_UPPER_BOUND) throw bad(`max is above ${MAX_CHUNK_UPPER_BOUND}`);
  if (!(p.min < p.avg && p.avg < p.max)) throw bad('not min < avg < max');
  const bits = Math.log2(p.avg);
  if (!Number.isInteger(bits)) throw bad('avg is not a power of two');
  return { ...p, maskS: topMask(bits + 2), maskL: topMask(bits - 2) };
}

export function sameChunkerParams(a: ChunkerParams, b: ChunkerParams): boolean {
  return a.min === b.min && a.avg === b.avg && a.max === b.max;
}
