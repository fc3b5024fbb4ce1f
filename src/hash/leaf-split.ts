// Leaf hashing of long runs of stored bytes over two threads. A pull's
// local ranges come to the hashing thread as `read` messages (fragment
// bytes it reads itself); after the first insert their leaves no longer
// line up with the local blob's, so every byte is hashed again, ~1.1 s/GiB
// on one thread while the main thread waits. Once a job has read
// SPLIT_RUN bytes in a row, a second thread (the leaf helper, started
// then, stopped when no job is open) takes whole leaves of each read and
// answers with their hashes while this thread hashes the rest; the leaves
// go into the blob's merkle tree in blob order.
import { Worker } from 'node:worker_threads';
import { LEAF_SIZE, MerkleHasher } from './merkle.js';
import { hashFiles } from './hash-files.js';
import type { LeafAnswer, LeafTask } from './leaf-helper.js';

/** Bytes a job reads in a row (no `data` between) before the helper takes a share. */
export const SPLIT_RUN = 2 * 1024 * 1024;
/** The helper's bytes not yet answered, at most: past this the hashing thread hashes reads whole. */
const AHEAD = 4 * 1024 * 1024;
/** A share smaller than this is hashed here (a message costs more than it saves). */
const MIN_SHARE = 128 * 1024;
const SLICE = 256 * 1024;

/** Leaves of the blob in order, not yet in its tree: a helper's share (leaves once answered) or leaves hashed here. */
interface Part {
  id: number;
  helper: boolean;
  leaves: Uint8Array[];
  done: boolean;
  bytes: number;
  files: Array<string | number>;
  error?: Error;
}

export interface SplitJob {
  merkle: MerkleHasher;
  error?: Error;
  /** Bytes read in a row. */
  run: number;
  /** Parts not yet in `merkle`, the first a helper's share: bytes read after it go to `carry`. */
  parts: Part[];
  carry?: MerkleHasher;
}

let helper: Worker | undefined;
let ready = false;
/** The helper failed once: the reads are hashed here from then on. */
let broken = false;
let ahead = 0;
let nextPart = 1;
const asked = new Map<number, { job: SplitJob; part: Part }>();
let ack: (n: number) => void = () => {};
let resume: () => void = () => {};

/**
 * `[path, position, length]` triples for bytes [from, from + n) of the
 * bytes that `files` lists one after the other.
 */
export function sliceFiles(files: Array<string | number>, from: number, n: number): Array<string | number> {
  const out: Array<string | number> = [];
  let at = 0;
  for (let i = 0; i < files.length && n > 0; i += 3) {
    const len = files[i + 2] as number;
    if (at + len > from) {
      const skip = Math.max(0, from - at);
      const take = Math.min(len - skip, n);
      out.push(files[i]!, (files[i + 1] as number) + skip, take);
      n -= take;
      from += take;
    }
    at += len;
  }
  return out;
}

function startHelper(): void {
  const file = new URL('./leaf-helper.js', import.meta.url);
  try {
    helper = new Worker(file, { execArgv: process.execArgv.filter((a) => !a.startsWith('--input-type')) });
  } catch {
    try {
      helper = new Worker(file, { execArgv: [] });
    } catch {
      broken = true;
      return;
    }
  }
  const w = helper;
  w.on('online', () => {
    if (helper === w) ready = true;
  });
  w.on('message', (a: LeafAnswer) => answered(a));
  w.on('error', () => fail(w));
  w.on('exit', () => fail(w));
  w.unref(); // after the listeners, which ref it again
}

/** The helper is gone (a crash, not a stop): its shares not answered are hashed here. */
function fail(w: Worker): void {
  if (helper !== w) return;
  helper = undefined;
  ready = false;
  broken = true;
  for (const [id, { part }] of asked) {
    const h = new MerkleHasher();
    h.onLeaf = (leaf) => part.leaves.push(leaf);
    let error: { message: string; code?: string } | undefined;
    try {
      hashFiles(h, part.files, SLICE);
    } catch (e) {
      error = { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code };
    }
    part.leaves.length = error ? 0 : part.leaves.length;
    answered(error ? { part: id, error } : { part: id, leaves: new Uint8Array(0) }, true);
  }
}

function answered(a: LeafAnswer, here = false): void {
  const got = asked.get(a.part);
  if (!got) return;
  asked.delete(a.part);
  const { job, part } = got;
  if ('error' in a) part.error = Object.assign(new Error(a.error.message), a.error.code ? { code: a.error.code } : {});
  else if (!here) for (let at = 0; at < a.leaves.length; at += 32) part.leaves.push(a.leaves.subarray(at, at + 32));
  part.done = true;
  ahead -= part.bytes;
  ack(part.bytes);
  settle(job);
  resume();
}

/** Puts the parts answered, in order, into the job's tree; with none left, the carry's partial leaf too. */
function settle(job: SplitJob): void {
  while (job.parts.length > 0 && job.parts[0]!.done) {
    const p = job.parts.shift()!;
    if (p.error) job.error ??= p.error;
    if (!job.error) for (const leaf of p.leaves) job.merkle.pushLeaves(leaf);
  }
  if (job.parts.length > 0 || !job.carry) return;
  if (!job.error) job.merkle.update(job.carry.partialBytes());
  job.carry = undefined;
}

/** Whether the job waits for the helper: none of its messages but reads may be handled (the tree is behind). */
export function waiting(job: SplitJob | undefined): boolean {
  return job !== undefined && job.parts.length > 0;
}

/**
 * Hashes a `read` of `len` bytes into the job's tree, a share of whole
 * leaves by the helper once the job's run is long. Returns the bytes done
 * with now (the helper's share is acked once answered). A failure sets
 * `job.error`, as a read here would.
 */
export function readFiles(job: SplitJob, files: Array<string | number>, len: number): number {
  job.run += len;
  if (job.run >= SPLIT_RUN && !helper && !broken) startHelper();
  let given = 0;
  try {
    if (!ready || job.run < SPLIT_RUN) {
      hashFiles(job.carry ?? job.merkle, files, SLICE);
      return len;
    }
    const sink = job.carry ?? job.merkle;
    const lead = Math.min(len, (LEAF_SIZE - (sink.size % LEAF_SIZE)) % LEAF_SIZE);
    const whole = Math.floor((len - lead) / LEAF_SIZE) * LEAF_SIZE;
    // The later half of the whole leaves to the helper, while this thread hashes the rest.
    const share = ahead + whole / 2 <= AHEAD ? Math.floor(whole / 2 / LEAF_SIZE) * LEAF_SIZE : 0;
    const own = lead + whole - share;
    hashFiles(sink, sliceFiles(files, 0, own), SLICE);
    if (share < MIN_SHARE) {
      hashFiles(sink, sliceFiles(files, own, len - own), SLICE);
      return len;
    }
    const part: Part = { id: nextPart++, helper: true, leaves: [], done: false, bytes: share, files: sliceFiles(files, own, share) };
    if (!job.carry) {
      const carry = new MerkleHasher();
      carry.onLeaf = (leaf) => {
        let last = job.parts[job.parts.length - 1]!;
        if (last.helper) job.parts.push((last = { id: 0, helper: false, leaves: [], done: true, bytes: 0, files: [] }));
        last.leaves.push(leaf);
      };
      job.carry = carry;
    }
    job.parts.push(part);
    asked.set(part.id, { job, part });
    ahead += share;
    given = share;
    helper!.postMessage({ part: part.id, files: part.files, len: share } satisfies LeafTask);
    hashFiles(job.carry, sliceFiles(files, own + share, len - own - share), SLICE);
  } catch (e) {
    job.error ??= e as Error;
  }
  return len - given;
}

/** How answers are acked to the writer, and how the held messages are taken up again once a job is settled. */
export function onAnswers(ackBytes: (n: number) => void, next: () => void): void {
  ack = ackBytes;
  resume = next;
}

/** No job open: the helper stops (started again by the next long run). */
export function stopHelper(): void {
  const w = helper;
  if (!w || asked.size > 0) return;
  helper = undefined;
  ready = false;
  void w.terminate();
}
