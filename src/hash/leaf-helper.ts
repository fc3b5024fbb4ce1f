// The leaf helper: a second hashing thread, started by the hashing thread
// (src/hash/leaf-split.ts) for the long runs of stored bytes a pull reads.
// It hashes whole 16 KiB leaves of fragment bytes ([path, position,
// length] triples) and answers with their hashes, 32 bytes a leaf; the
// hashing thread puts them into the blob's merkle tree in order.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { LEAF_SIZE, MerkleHasher } from './merkle.js';
import { hashFiles } from './hash-files.js';

/** As the hashing thread's slices: each read hashed while in cache. */
const SLICE = 256 * 1024;

export interface LeafTask { part: number; files: Array<string | number>; len: number }
export type LeafAnswer = { part: number; leaves: Uint8Array } | { part: number; error: { message: string; code?: string } };

/** Tasks come from the hashing thread; answers go back on a port of their own (leaf-split.ts). */
const port = (workerData as { answers: MessagePort }).answers;
parentPort!.on('message', (m: LeafTask) => {
  const leaves = new Uint8Array((32 * m.len) / LEAF_SIZE);
  let n = 0;
  const h = MerkleHasher.leavesOnly((leaf) => {
    leaves.set(leaf, 32 * n++);
  });
  try {
    hashFiles(h, m.files, SLICE);
    if (n * LEAF_SIZE !== m.len) throw new Error(`a leaf task of ${m.len} bytes gave ${n} leaves`);
  } catch (e) {
    port.postMessage({ part: m.part, error: { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code } } satisfies LeafAnswer);
    return;
  }
  port.postMessage({ part: m.part, leaves } satisfies LeafAnswer, [leaves.buffer]);
});
