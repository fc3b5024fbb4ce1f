import { CabError } from '../errors.js';

/** A non-negative safe integer, or ERR_NEGATIVE_POSITION. */
export function checkCount(x: unknown, what: string): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
    throw new CabError('ERR_NEGATIVE_POSITION', `${what} must be a non-negative integer, not ${String(x)}`, { found: x });
  }
  return x;
}

/**
 * Yields `total` bytes in blocks from `read(pos, n)`, reading one block ahead
 * so that I/O overlaps the caller's work on the previous block.
 */
export async function* readBlocks(total: number, blockSize: number, read: (pos: number, n: number) => Promise<Uint8Array>): AsyncGenerator<Uint8Array> {
  let pos = 0;
  const start = (p: number) => {
    const r = read(p, Math.min(blockSize, total - p));
    r.catch(() => {}); // awaited below; this only keeps an abandoned read from being unhandled
    return r;
  };
  let next = total > 0 ? start(0) : null;
  while (next) {
    const cur = await next;
    pos += cur.length;
    next = pos < total ? start(pos) : null;
    yield cur;
  }
}
