import crypto from 'node:crypto';

/**
 * Deterministic pseudo-random bytes from a seed: AES-128-CTR over zeros, with
 * key and IV from SHA-256(seed). Fast (AES-NI) and the same on every machine,
 * so tests and benchmarks are reproducible.
 */
export function prngStream(seed: string): (size: number) => Buffer {
  const k = crypto.createHash('sha256').update(seed).digest();
  const cipher = crypto.createCipheriv('aes-128-ctr', k.subarray(0, 16), k.subarray(16, 32));
  return (size: number) => cipher.update(Buffer.alloc(size));
}

export function prngBytes(seed: string, size: number): Buffer {
  return prngStream(seed)(size);
}

/** A small deterministic integer generator (mulberry32) for sizes and positions. */
export function prngInts(seed: number): (below: number) => number {
  let a = seed >>> 0;
  return (below: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const r = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return Math.floor(r * below);
  };
}
