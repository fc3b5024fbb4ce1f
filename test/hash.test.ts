import test from 'ava';
import fs from 'node:fs';
import { MerkleHasher, merkleRoot, toHex, fromHex, sha256, LEAF_SIZE, CabError } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';

const vectors = JSON.parse(fs.readFileSync(new URL('../../test/vectors/bep52.json', import.meta.url), 'utf8')) as {
  vectors: Array<{ size: number; root: string }>;
};

function vectorContent(size: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (i * 7) % 251;
  return b;
}

test('BEP 52 vectors from libtorrent', (t) => {
  t.true(vectors.vectors.length >= 6);
  for (const v of vectors.vectors) {
    t.is(toHex(merkleRoot(vectorContent(v.size))), v.root, `size ${v.size}`);
  }
});

test('empty input hashes to SHA-256 of nothing', (t) => {
  t.is(toHex(new MerkleHasher().digest()), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
});

test('a tree of three leaves pads with a zero hash', (t) => {
  const data = prngBytes('three leaves', 2 * LEAF_SIZE + 5);
  const l = [0, 1, 2].map((i) => sha256(data.subarray(i * LEAF_SIZE, (i + 1) * LEAF_SIZE)));
  const h = (a: Uint8Array, b: Uint8Array) => sha256(Buffer.concat([a, b]));
  t.is(toHex(merkleRoot(data)), toHex(h(h(l[0]!, l[1]!), h(l[2]!, new Uint8Array(32)))));
});

test('any split of the input gives the same root', (t) => {
  const data = prngBytes('splits', 300_000);
  const want = toHex(merkleRoot(data));
  const rnd = prngInts(7);
  for (let round = 0; round < 20; round++) {
    const h = new MerkleHasher();
    let off = 0;
    while (off < data.length) {
      const n = Math.min(data.length - off, round % 2 ? rnd(40_000) : rnd(50));
      h.update(data.subarray(off, off + n));
      off += n;
    }
    t.is(toHex(h.digest()), want);
  }
});

test('digest of a prefix equals the root of that prefix, and the hasher goes on', (t) => {
  const data = prngBytes('prefix', 200_000);
  const h = new MerkleHasher();
  for (const cut of [0, 1, 16383, 16384, 16385, 50_000, 131072, 200_000]) {
    h.update(data.subarray(h.size, cut));
    t.is(toHex(h.digest()), toHex(merkleRoot(data.subarray(0, cut))), `prefix ${cut}`);
  }
});

test('state -> fromState -> refeed of the partial leaf gives the same root as one pass', (t) => {
  const data = prngBytes('resume', 500_000);
  const want = toHex(merkleRoot(data));
  for (const cut of [0, 7, 16384, 16385, 49152, 100_001, 499_999]) {
    const a = new MerkleHasher().update(data.subarray(0, cut));
    const state = JSON.parse(JSON.stringify(a.state()));
    t.true(state.stack.length <= 64);
    const b = MerkleHasher.fromState(state);
    t.is(b.size, state.leaves * LEAF_SIZE);
    t.true(state.size - b.size < LEAF_SIZE);
    b.update(data.subarray(b.size));
    t.is(toHex(b.digest()), want, `cut ${cut}`);
  }
});

test('malformed states are rejected with ERR_BAD_HASH_STATE', (t) => {
  const good = new MerkleHasher().update(prngBytes('s', 70_000)).state();
  const bad = [
    null,
    { ...good, leaves: -1 },
    { ...good, leaves: 1.5 },
    { ...good, size: good.size + LEAF_SIZE },
    { ...good, stack: [] },
    { ...good, stack: ['zz'] },
    { ...good, stack: good.stack.map(() => 'g'.repeat(64)) },
  ];
  for (const s of bad) {
    const e = t.throws(() => MerkleHasher.fromState(s as never), { instanceOf: CabError });
    t.true(['ERR_BAD_HASH_STATE', 'ERR_BAD_HEX'].includes(e!.code));
  }
});

test('toHex and fromHex round-trip; bad hex is ERR_BAD_HEX', (t) => {
  const b = prngBytes('hex', 33);
  t.deepEqual(Buffer.from(fromHex(toHex(b))), b);
  for (const s of ['abc', 'zz', '0x00', ' 00']) {
    t.is(t.throws(() => fromHex(s), { instanceOf: CabError })!.code, 'ERR_BAD_HEX');
  }
});

test('each thread reads its own CPU time, and the hashing thread reports its own with each block (the writer shares hashing by them)', async (t) => {
  const { threadCpuNs } = await import('../src/hash/thread-cpu.js');
  const { HashJob } = await import('../src/hash/pool.js');
  const first = threadCpuNs();
  if (process.platform !== 'linux') {
    t.is(first, undefined);
    return;
  }
  t.true(Number.isSafeInteger(first) && first! > 0);
  const bytes = prngBytes('cpu', 32 * 1024 * 1024);
  const spin = merkleRoot(bytes); // about 20 ms of CPU on this thread
  t.is(spin.length, 32);
  const after = threadCpuNs()!;
  t.true(after - first! >= 5e6, `this thread ran ${after - first!} ns hashing 32 MiB`);
  const job = new HashJob();
  try {
    t.is(job.threadCpuNs === undefined || Number.isSafeInteger(job.threadCpuNs), true);
    const a = await job.hashBlock(Uint8Array.from(bytes.subarray(0, 8 << 20)), true, [8 << 20], undefined, 1, true);
    job.writeHeld(1, []);
    t.is(a.length, 32);
    const one = job.threadCpuNs!;
    const b = await job.hashBlock(Uint8Array.from(bytes.subarray(8 << 20)), true, [24 << 20], undefined, 2, true);
    job.writeHeld(2, []);
    t.deepEqual(Buffer.from(b), Buffer.from(sha256(bytes.subarray(8 << 20))));
    // Not this thread's figures: the hashing thread ran the 48 MiB of SHA-256 in between (merkle and chunk).
    t.true(job.threadCpuNs! - one >= 5e6, `the hashing thread reported ${job.threadCpuNs! - one} ns for 24 MiB hashed twice`);
  } finally {
    await job.close();
  }
});
