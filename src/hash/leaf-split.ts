// Leaf hashing of long runs of stored bytes over two threads. A pull's
// local ranges come to the hashing thread as `read` messages (fragment
// bytes it reads itself); after the first insert their leaves no longer
// line up with the local blob's, so every byte is hashed again, ~1.1 s/GiB
// on one thread while the main thread waits. Once a job has read
// SPLIT_RUN bytes in a row, a second thread (the leaf helper, started
// then, stopped when no job is open) takes whole leaves of each read and
// answers with their hashes while this thread hashes the rest; the leaves
// go into the blob's merkle tree in blob order.
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { LEAF_SIZE, MerkleHasher, type MerkleState } from './merkle.js';
import { hashFiles } from './hash-files.js';
import type { LeafAnswer, LeafTask } from './leaf-helper.js';

/** Bytes a job reads in a row (no `data` between) that start the helper (it then takes a share of every read). */
export const SPLIT_RUN = 2 * 1024 * 1024;
/** The helper's bytes not yet answered, at most: past this the reads are hashed here (with pool.ts MAX_READS_IN_FLIGHT, which it must stay under). */
export const AHEAD = 16 * 1024 * 1024;
/** Bytes of reads hashed here behind a helper's share not yet answered, past which they are acked only once it is (their leaves wait in memory). */
export const BEHIND = 64 * 1024 * 1024;
/** A read with fewer bytes of whole leaves is hashed here (a message costs more than it saves). */
const MIN_SHARE = 256 * 1024;
const SLICE = 256 * 1024;
/**
 * The helper takes about this many bytes of reads for each one hashed here:
 * this thread has the other messages too (the blocks that arrive, the
 * leaf layer, the answers).
 */
const HELPER_RATIO = 1.5;
/** Bytes of reads hashed here less those the helper took (over HELPER_RATIO), since it started: it takes the next read while >= 0. */
let balance = 0;

/** Leaves of the blob in order, not yet in its tree: a helper's share (leaves once answered) or leaves hashed here. */
interface Part {
  id: number;
  helper: boolean;
  leaves: Uint8Array[];
  done: boolean;
  /** Bytes of the read acked once answered (the whole read), and the helper's (whole leaves). */
  bytes: number;
  share: number;
  files: Array<string | number>;
  error?: Error;
  /** A `state` asked for at this point of the blob: answered once the parts before it are in the tree. */
  mark?: () => void;
  /** Bytes of a read hashed here, acked once the parts before it are in the tree (see BEHIND). */
  held?: number;
}

export interface SplitJob {
  merkle: MerkleHasher;
  error?: Error;
  /**
   * The first failure in blob order among the parts put in the tree: a
   * `state` marked before it is failed. `error` may be set sooner, by a read
   * after a mark (hashed here while the helper's share before the mark is
   * out); that mark still answers, its leaves all good.
   */
  treeError?: Error;
  /** Bytes read in a row. */
  run: number;
  /** Parts not yet in `merkle`, the first a helper's share: bytes read after it go to `carry`. */
  parts: Part[];
  carry?: MerkleHasher;
  /** Bytes hashed into `carry` since the tree fell behind. */
  behind?: number;
}

let helper: Worker | undefined;
let answers: MessagePort | undefined;
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
  // Answers come on a port of their own, which this thread also polls between messages (pollAnswers): a
  // MessagePort's queue is drained whole before another's, so answers waited behind every queued read.
  const { port1, port2 } = new MessageChannel();
  const options = { workerData: { answers: port2 }, transferList: [port2] };
  // As the hashing thread (pool.ts startWorker): without the parent's flags if Node refuses one. A helper that
  // cannot start at all (no thread to be had) costs only speed: the reads are hashed here, as before it existed.
  try {
    try {
      helper = new Worker(file, { ...options, execArgv: process.execArgv.filter((a) => !a.startsWith('--input-type')) });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
      helper = new Worker(file, { ...options, execArgv: [] });
    }
  } catch {
    port1.close();
    broken = true;
    return;
  }
  const w = helper;
  answers = port1;
  port1.on('message', (a: LeafAnswer) => {
    answered(a);
    resume();
  });
  port1.unref();
  w.on('online', () => {
    if (helper !== w) return;
    ready = true;
    balance = 0;
  });
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
    const h = MerkleHasher.leavesOnly((leaf) => part.leaves.push(leaf));
    let error: { message: string; code?: string } | undefined;
    try {
      hashFiles(h, part.files, SLICE);
    } catch (e) {
      error = { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code };
    }
    part.leaves.length = error ? 0 : part.leaves.length;
    answered(error ? { part: id, error } : { part: id, leaves: new Uint8Array(0) }, true);
  }
  answers?.close();
  answers = undefined;
  resume();
}

/** Takes the helper's answers that have come (between messages: see startHelper). */
export function pollAnswers(): void {
  for (let m; answers && (m = receiveMessageOnPort(answers)); ) answered(m.message as LeafAnswer);
}

function answered(a: LeafAnswer, here = false): void {
  const got = asked.get(a.part);
  if (!got) return;
  asked.delete(a.part);
  const { job, part } = got;
  if ('error' in a) part.error = Object.assign(new Error(a.error.message), a.error.code ? { code: a.error.code } : {});
  else if (!here) for (let at = 0; at < a.leaves.length; at += 32) part.leaves.push(a.leaves.subarray(at, at + 32));
  part.done = true;
  ahead -= part.share;
  ack(part.bytes);
  settle(job);
}

/** Puts the parts answered, in order, into the job's tree; with none left, the carry's partial leaf too. */
function settle(job: SplitJob): void {
  while (job.parts.length > 0 && job.parts[0]!.done) {
    const p = job.parts.shift()!;
    if (p.error) {
      job.treeError ??= p.error;
      job.error ??= p.error;
    }
    if (!job.treeError) for (const leaf of p.leaves) job.merkle.pushLeaves(leaf);
    p.mark?.();
    if (p.held) ack(p.held);
  }
  if (job.parts.length > 0 || !job.carry) return;
  job.behind = 0;
  if (!job.error) job.merkle.update(job.carry.partialBytes());
  job.carry = undefined;
}

/** Whether the job waits for the helper: none of its messages but reads may be handled (the tree is behind). */
export function waiting(job: SplitJob | undefined): boolean {
  return job !== undefined && job.parts.length > 0;
}

/**
 * Hashes a `read` of `len` bytes into the job's tree. Once the helper runs
 * (a long run started it), reads go by turns: the whole leaves of one to
 * the helper, the next here, so that the helper hashes about 60% (by
 * bytes, HELPER_RATIO) with one message each way per read the helper takes. Returns the
 * bytes done with now (a read the helper takes is acked once answered). A
 * failure sets `job.error`, as a read here would.
 */
export function readFiles(job: SplitJob, files: Array<string | number>, len: number): number {
  job.run += len;
  if (job.run >= SPLIT_RUN && !helper && !broken) startHelper();
  pollAnswers();
  if (job.error) return len; // a share before this one failed (settle)
  const sink = job.carry ?? job.merkle;
  const lead = Math.min(len, (LEAF_SIZE - (sink.size % LEAF_SIZE)) % LEAF_SIZE);
  const whole = Math.floor((len - lead) / LEAF_SIZE) * LEAF_SIZE;
  try {
    if (!ready || whole < MIN_SHARE || balance < 0 || ahead + whole > AHEAD) {
      hashFiles(sink, files, SLICE);
      if (ready) balance += len;
      if (sink !== job.carry || (job.behind = (job.behind ?? 0) + len) <= BEHIND) return len;
      // The helper is behind: this read's leaves wait in memory, so the writer is held back until they go in.
      job.parts.push({ id: 0, helper: false, leaves: [], done: true, bytes: 0, share: 0, files: [], held: len });
      return 0;
    }
  } catch (e) {
    job.error ??= e as Error;
    return len;
  }
  balance -= whole / HELPER_RATIO;
  const part: Part = { id: nextPart++, helper: true, leaves: [], done: false, bytes: len, share: whole, files: sliceFiles(files, lead, whole) };
  try {
    hashFiles(sink, sliceFiles(files, 0, lead), SLICE);
    if (!job.carry) {
      job.carry = MerkleHasher.leavesOnly((leaf) => {
        let last = job.parts[job.parts.length - 1]!;
        if (last.helper || last.mark) job.parts.push((last = { id: 0, helper: false, leaves: [], done: true, bytes: 0, share: 0, files: [] }));
        last.leaves.push(leaf);
      });
    }
    job.parts.push(part);
    asked.set(part.id, { job, part });
    ahead += whole;
    helper!.postMessage({ part: part.id, files: part.files, len: whole } satisfies LeafTask);
    hashFiles(job.carry, sliceFiles(files, lead + whole, len - lead - whole), SLICE);
  } catch (e) {
    job.error ??= e as Error;
    if (!asked.has(part.id)) return len;
  }
  return 0;
}

/**
 * The tree's state at this point (`answer`ed once the helper's leaves
 * before it are in), so that a checkpoint holds up no later message; false
 * if the tree is not behind (the caller answers at once). A failure of a
 * part before the mark is its answer; one of a later read is not (the
 * checkpoint of the bytes before it stands).
 */
export function deferState(job: SplitJob, answer: (state: MerkleState | Error) => void): boolean {
  if (job.parts.length === 0) return false;
  // The tree stands at a leaf boundary when the mark comes up; the bytes after it are the carry's partial leaf.
  const partial = job.carry!.size % LEAF_SIZE;
  const mark = () => {
    if (job.treeError) return answer(job.treeError);
    const st = job.merkle.state();
    answer({ ...st, size: st.size + partial });
  };
  job.parts.push({ id: 0, helper: false, leaves: [], done: true, bytes: 0, share: 0, files: [], mark });
  return true;
}

/** How answers are acked to the writer, and how the held messages are taken up again once a job is settled. */
export function onAnswers(ackBytes: (n: number) => void, next: () => void): void {
  ack = ackBytes;
  resume = next;
}

/** How long the helper stays with no job open (the next pull of a library finds it running), in ms. */
const IDLE_MS = 2000;
let idle: NodeJS.Timeout | undefined;

/**
 * No job open (`none` says whether that is still so): the helper stops
 * after IDLE_MS, started again by the next long run. The timer is unref'd.
 */
export function stopHelper(none: () => boolean): void {
  clearTimeout(idle);
  if (!helper) return;
  idle = setTimeout(() => {
    const w = helper;
    if (!w || asked.size > 0 || !none()) return;
    helper = undefined;
    ready = false;
    answers?.close();
    answers = undefined;
    void w.terminate();
  }, IDLE_MS);
  idle.unref();
}
