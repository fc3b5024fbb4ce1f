// Merkle proofs for verified range reads (issue 17), without sockets: a
// plan's climb over leaves and proof hashes gives the blob's BEP 52 root for
// every range and tree shape, a changed leaf or proof hash is caught, and
// nodes already held are not asked for again.
import test from 'ava';
import { LEAF_SIZE, merkleRoot, sha256, isCabError } from '../src/index.js';
import { leafCount, levelWidth, nodeKey, planProof, treeDepth, treeLevels, verifyRange, type KnownNode } from '../src/hash/proof.js';
import { prngBytes, prngInts } from '../tools/data.js';

function leafLayer(bytes: Buffer): Buffer {
  const n = leafCount(bytes.length);
  const out = Buffer.alloc(32 * n);
  for (let i = 0; i < n; i++) out.set(sha256(bytes.subarray(i * LEAF_SIZE, (i + 1) * LEAF_SIZE)), 32 * i);
  return out;
}

/** What a server answers: the bytes of leaves [a, b) and the nodes the plan needs, from the full tree. */
function answer(levels: Buffer[], bytes: Buffer, a: number, b: number, need: Array<[number, number]>) {
  return {
    data: bytes.subarray(a * LEAF_SIZE, Math.min(bytes.length, b * LEAF_SIZE)),
    proof: need.map(([k, i]) => levels[k]!.subarray(32 * i, 32 * i + 32)),
  };
}

test('treeLevels ends in the BEP 52 root for every shape of tree, the last leaf short or whole', (t) => {
  for (const size of [1, LEAF_SIZE - 1, LEAF_SIZE, LEAF_SIZE + 1, 3 * LEAF_SIZE, 5 * LEAF_SIZE + 7, 8 * LEAF_SIZE, 33 * LEAF_SIZE - 100]) {
    const bytes = prngBytes(`shape ${size}`, size);
    const levels = treeLevels(leafLayer(bytes));
    t.is(levels.length, treeDepth(leafCount(size)) + 1, `depth of ${size}`);
    levels.forEach((l, k) => t.is(l.length, 32 * levelWidth(leafCount(size), k)));
    t.deepEqual(Buffer.from(levels[levels.length - 1]!), Buffer.from(merkleRoot(bytes)), `root of ${size}`);
  }
});

test('every range of a tree checks out against the root alone, and the nodes it verifies are the tree\'s', (t) => {
  for (const size of [LEAF_SIZE, 2 * LEAF_SIZE, 7 * LEAF_SIZE + 3, 13 * LEAF_SIZE]) {
    const bytes = prngBytes(`ranges ${size}`, size);
    const levels = treeLevels(leafLayer(bytes));
    const leaves = leafCount(size);
    const root = merkleRoot(bytes);
    const rootKey = nodeKey(treeDepth(leaves), 0);
    for (let a = 0; a < leaves; a++) {
      for (let b = a + 1; b <= leaves; b++) {
        const plan = planProof(leaves, a, b, (k) => (k === rootKey ? root : undefined));
        const { data, proof } = answer(levels, bytes, a, b, plan.need);
        const nodes = verifyRange(plan, size, data, proof);
        for (const [key, h] of nodes) {
          const level = Math.floor(key / 2 ** 40);
          const i = key - level * 2 ** 40;
          t.deepEqual(Buffer.from(h), levels[level]!.subarray(32 * i, 32 * i + 32), `node ${level}/${i} of [${a}, ${b}) in ${size}`);
        }
      }
    }
  }
});

test('a changed byte of a leaf, a changed proof hash, a short answer: ERR_HASH_MISMATCH', (t) => {
  const size = 37 * LEAF_SIZE + 1000;
  const bytes = prngBytes('lies', size);
  const levels = treeLevels(leafLayer(bytes));
  const leaves = leafCount(size);
  const root = merkleRoot(bytes);
  const rootKey = nodeKey(treeDepth(leaves), 0);
  const held = (k: number) => (k === rootKey ? root : undefined);
  const mismatch = (fn: () => unknown) => t.true(isCabError(t.throws(fn), 'ERR_HASH_MISMATCH'));
  const plan = planProof(leaves, 5, 9, held);
  t.true(plan.need.length > 0);
  const { data, proof } = answer(levels, bytes, 5, 9, plan.need);
  for (const at of [0, LEAF_SIZE - 1, 2 * LEAF_SIZE + 77, data.length - 1]) {
    const bad = Buffer.from(data);
    bad[at]! ^= 1;
    mismatch(() => verifyRange(plan, size, bad, proof));
  }
  for (let k = 0; k < proof.length; k++) {
    const bad = proof.map((h) => Buffer.from(h));
    bad[k]![31]! ^= 0x80;
    mismatch(() => verifyRange(plan, size, data, bad));
  }
  mismatch(() => verifyRange(plan, size, data.subarray(1), proof));
  mismatch(() => verifyRange(plan, size, data, proof.slice(1)));
  // The last, short leaf.
  const last = planProof(leaves, leaves - 1, leaves, held);
  const tail = answer(levels, bytes, leaves - 1, leaves, last.need);
  t.is(tail.data.length, 1000);
  t.is(verifyRange(last, size, tail.data, tail.proof).size > 0, true);
  mismatch(() => verifyRange(last, size, Buffer.concat([tail.data, Buffer.alloc(1)]), tail.proof));
});

test('nodes held are not asked for again: a neighbouring range needs at most one hash per level, a range read before none', (t) => {
  const size = 1000 * LEAF_SIZE;
  const bytes = prngBytes('held', size);
  const levels = treeLevels(leafLayer(bytes));
  const leaves = leafCount(size);
  const heldNodes = new Map<number, KnownNode>([[nodeKey(treeDepth(leaves), 0), merkleRoot(bytes)]]);
  const read = (a: number, b: number) => {
    const plan = planProof(leaves, a, b, (k) => heldNodes.get(k));
    const { data, proof } = answer(levels, bytes, a, b, plan.need);
    for (const [k, h] of verifyRange(plan, size, data, proof)) heldNodes.set(k, h);
    return plan.need.length;
  };
  const first = read(100, 164);
  t.true(first > 0 && first <= 2 * treeDepth(leaves));
  t.is(read(100, 164), 0);
  t.is(read(120, 130), 0);
  const next = read(164, 228);
  t.true(next <= treeDepth(leaves), `a neighbour asked for ${next}`);
  // Random ranges: every one checks, and the proof hashes over all of them stay far below a fresh proof each.
  const rand = prngInts(17);
  let total = 0;
  for (let k = 0; k < 200; k++) {
    const a = rand(leaves);
    total += read(a, Math.min(leaves, a + 1 + rand(64)));
  }
  t.true(total < 200 * treeDepth(leaves), `${total} proof hashes for 200 ranges`);
});

test('planProof refuses an empty range or one past the tree', (t) => {
  const held = () => new Uint8Array(32);
  for (const [a, b] of [[3, 3], [5, 4], [0, 9], [-1, 2]] as const) {
    t.true(isCabError(t.throws(() => planProof(8, a, b, held)), 'ERR_BAD_ARGUMENT'), `[${a}, ${b})`);
  }
});
