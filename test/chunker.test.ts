import test from 'ava';
import fs from 'node:fs';
import { chunk, Chunker, GEAR, CabError, sha256, toHex, DEFAULT_CHUNKER_PARAMS, resolveChunkerParams } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';

const vectors = JSON.parse(fs.readFileSync(new URL('../../test/vectors/fastcdc.json', import.meta.url), 'utf8')) as {
  gearSha256: string;
  cases: Array<{ seed: string; size: number; params: { min: number; avg: number; max: number }; sizes: number[] }>;
};

function sum(a: number[]): number {
  return a.reduce((x, y) => x + y, 0);
}

test('the gear table is the documented one', (t) => {
  const bytes = Buffer.alloc(1024);
  GEAR.forEach((g, i) => bytes.writeInt32BE(g, 4 * i));
  t.is(toHex(sha256(bytes)), vectors.gearSha256);
  t.is(GEAR[0]! >>> 0, 0x6e340b9c); // SHA-256 of the byte 0x00 starts 6e340b9c
});

test('committed boundary vectors', (t) => {
  t.is(vectors.cases.length, 3);
  for (const c of vectors.cases) {
    t.deepEqual(chunk(prngBytes(c.seed, c.size), c.params), c.sizes, c.seed);
  }
});

test('the same boundaries whatever the piece sizes fed', (t) => {
  const data = prngBytes('pieces', 3 * 1024 * 1024);
  const want = chunk(data);
  const rnd = prngInts(11);
  for (const maxPiece of [1, 100, 4096, 70_000, 1 << 20]) {
    const c = new Chunker();
    const got: number[] = [];
    let off = 0;
    // 1-byte pieces over 3 MiB would be slow; feed a prefix that way, then bigger pieces.
    while (off < data.length) {
      const n = Math.min(data.length - off, 1 + rnd(off < 200_000 ? maxPiece : Math.max(maxPiece, 4096)));
      c.push(data.subarray(off, off + n), got);
      off += n;
    }
    const last = c.end();
    if (last) got.push(last);
    t.deepEqual(got, want, `pieces up to ${maxPiece}`);
  }
});

test('min and max are respected and the sizes sum to the input', (t) => {
  const p = { min: 1024, avg: 4096, max: 8192 };
  const data = prngBytes('bounds', 2 * 1024 * 1024);
  const sizes = chunk(data, p);
  t.is(sum(sizes), data.length);
  sizes.slice(0, -1).forEach((s) => t.true(s >= p.min && s <= p.max));
  t.true(sizes.some((s) => s === p.max) || sizes.length > 0);
  // all-zero input never matches the masks by content, so every chunk is max-sized
  const zeros = chunk(new Uint8Array(10 * p.max + 5), p);
  t.deepEqual(zeros, [...Array(10).fill(p.max), 5]);
});

test('the average is within 25% of the target on random data', (t) => {
  for (const p of [DEFAULT_CHUNKER_PARAMS, { min: 4096, avg: 16384, max: 65536 }]) {
    const data = prngBytes(`avg ${p.avg}`, 32 * 1024 * 1024);
    const sizes = chunk(data, p);
    const avg = data.length / sizes.length;
    t.true(Math.abs(avg - p.avg) / p.avg <= 0.25, `average ${avg} for target ${p.avg}`);
  }
});

test('a local edit changes only the chunks around it', (t) => {
  const data = prngBytes('edit', 8 * 1024 * 1024);
  const edited = Buffer.concat([data.subarray(0, 4_000_000), Buffer.from('an insertion'), data.subarray(4_000_100)]);
  const hashes = (d: Buffer) => {
    const out: string[] = [];
    let off = 0;
    for (const s of chunk(d)) {
      out.push(toHex(sha256(d.subarray(off, off + s))));
      off += s;
    }
    return out;
  };
  const a = hashes(data);
  const b = new Set(hashes(edited));
  const lost = a.filter((h) => !b.has(h));
  t.true(lost.length >= 1 && lost.length <= 3, `lost ${lost.length} chunks`);
});

test('a new chunker started at any boundary gives the rest of the boundaries', (t) => {
  const data = prngBytes('resume', 4 * 1024 * 1024);
  const sizes = chunk(data);
  let off = 0;
  for (let i = 0; i < sizes.length; i += 9) {
    t.deepEqual(chunk(data.subarray(off)), sizes.slice(i), `from boundary ${i}`);
    for (let k = i; k < Math.min(i + 9, sizes.length); k++) off += sizes[k]!;
  }
});

test('bad parameters are rejected with ERR_BAD_CHUNKER_PARAMS', (t) => {
  const bad = [
    { min: 32 },
    { min: 1.5 },
    { avg: 100_000 },
    { min: 65536, avg: 65536 },
    { max: 65536 },
    { max: 128 * 1024 * 1024 },
    { avg: Number.NaN },
    { min: '16' as unknown as number },
  ];
  for (const p of bad) {
    t.is(t.throws(() => new Chunker(p), { instanceOf: CabError })!.code, 'ERR_BAD_CHUNKER_PARAMS', JSON.stringify(p));
  }
  t.notThrows(() => resolveChunkerParams({ min: 64, avg: 128, max: 256 }));
});

/** FastCDC as the format states it (docs/FORMAT.md), one byte at a time: what the chunker's multi-lane scan must equal. */
function referenceChunk(data: Uint8Array, params: { min: number; avg: number; max: number }): number[] {
  const { min, avg, max, maskS, maskL } = resolveChunkerParams(params);
  const sizes: number[] = [];
  let start = 0;
  while (start < data.length) {
    let fp = 0;
    let size = Math.min(max, data.length - start);
    for (let pos = min; pos < size; pos++) {
      fp = ((fp << 1) + GEAR[data[start + pos]!]!) | 0;
      if ((fp & (pos < avg ? maskS : maskL)) === 0) {
        size = pos + 1;
        break;
      }
    }
    sizes.push(size);
    start += size;
  }
  return sizes;
}

test('the multi-lane gear scan (WebAssembly) and the JavaScript one cut where the byte-at-a-time definition does', (t) => {
  // Random stretches, and stretches where fp repeats or stays near zero (zeros, short periods, one byte value).
  const data = Buffer.concat([
    prngBytes('lanes a', 3_000_001),
    Buffer.alloc(700_000),
    Buffer.from(Array.from({ length: 500_000 }, (_, i) => (i % 7) * 37)),
    Buffer.alloc(300_000, 0x5a),
    prngBytes('lanes b', 2_000_003),
  ]);
  const rnd = prngInts(5);
  const params = [DEFAULT_CHUNKER_PARAMS, { min: 64, avg: 256, max: 1024 }, { min: 2048, avg: 8192, max: 12_000 }, { min: 100, avg: 4096, max: 300_000 }];
  for (const [p, jsOnly] of params.flatMap((p) => [[p, false], [p, true]] as const)) {
    Chunker.jsOnly = jsOnly;
    const want = referenceChunk(data, p);
    t.deepEqual(chunk(data, p), want, `whole, ${JSON.stringify(p)}, jsOnly ${jsOnly}`);
    const c = new Chunker(p);
    const got: number[] = [];
    for (let off = 0; off < data.length; ) {
      const n = Math.min(data.length - off, 1 + rnd(50_000));
      c.push(data.subarray(off, off + n), got);
      off += n;
    }
    const last = c.end();
    if (last) got.push(last);
    t.deepEqual(got, want, `in pieces, ${JSON.stringify(p)}, jsOnly ${jsOnly}`);
  }
  Chunker.jsOnly = false;
});
