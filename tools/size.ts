import { CabError } from '../src/errors.js';

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, kib: 1024,
  m: 1e6, mb: 1e6, mib: 1024 ** 2,
  g: 1e9, gb: 1e9, gib: 1024 ** 3,
  t: 1e12, tb: 1e12, tib: 1024 ** 4,
};

/** "64KiB", "1GiB", "1.5GB", "4096" -> bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const mult = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || mult === undefined) throw new CabError('ERR_BAD_ARGUMENT', `not a size: ${JSON.stringify(text)} (try 64KiB, 1GiB)`, { found: text });
  const n = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n)) throw new CabError('ERR_BAD_ARGUMENT', `size out of range: ${text}`, { found: text });
  return n;
}
