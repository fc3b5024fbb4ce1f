// The hashing thread: BEP 52 merkle hashing of blob bytes, SHA-256 of each
// chunk, and writing of fragment bytes, so that the main thread only reads,
// chunks (finds the boundaries) and decides what to write. Messages are
// processed in order; see src/hash/pool.ts for the protocol.
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { LEAF_SIZE, MerkleHasher, type MerkleState } from './merkle.js';
import type { SamePlan, ToWorker } from './pool.js';
import { sha256 } from './sha256.js';
import { threadCpuNs } from './thread-cpu.js';
import { deferState, onAnswers, pollAnswers, readFiles, stopHelper, waiting, type SplitJob } from './leaf-split.js';

interface Held {
  bytes: Uint8Array;
  /** The buffer goes back to the sender once released (a recycled one), or the shared slot at this offset does. */
  back: boolean;
  slot?: number;
}

interface Job extends SplitJob {
  /** The SHA-256 of the chunk in progress: the bytes since the last cut (`chunkFed`: there are some). */
  chunk: crypto.Hash;
  chunkFed: boolean;
  fd: number;
  /** Blocks kept until the writer says which of their bytes to write. */
  held: Map<number, Held>;
  /** A chunk failed its claimed hash: nothing after it is hashed or written for this job. */
  refused?: boolean;
  /** The blob's leaf hashes as they come, for its leaf layer (see `layer` messages). */
  layer?: LayerOut;
  /** Leaves taken from another blob's layer rather than hashed (hashSame). */
  lent: number;
}

/** Leaf hashes on their way to a leaf-layer file: `fd` -1 until the writer opens it (they wait in `buf`). */
interface LayerOut {
  fd: number;
  buf: Buffer;
  filled: number;
  /** Where in the file the bytes in `buf` go. */
  at: number;
  leaves: number;
  failed: boolean;
}

/** Leaf hashes gathered per write to a layer file: 64 KiB (32 MiB of blob). */
const LAYER_BUF = 64 * 1024;

const jobs = new Map<number, Job>();
threadCpuNs(); // its descriptor opened now, with the thread: a writer's first block takes no file of its own
const port = parentPort!;

function errorOf(e: Error): { message: string; code?: string } {
  return { message: e.message, code: (e as NodeJS.ErrnoException).code };
}

/** Bytes of a `data` message the thread is done with, and the buffer when it goes back (a recycled one). */
interface Ack {
  n: number;
  buf?: ArrayBufferLike;
  /** A shared slot the thread is done with (blocks.ts): its offset. */
  slot?: number;
  /** This thread's CPU time so far (threadCpuNs), on the answer to a block: the writer balances by it. */
  cpu?: number;
}

/**
 * Answers request `seq`; with `ack`, in the same message (a message from
 * this thread costs about 0.2 ms: one per block, not two). `failed`: the
 * failure to answer with instead (the job's by default; null: none).
 */
function reply(seq: number, job: Job | undefined, value: () => unknown, ack: Ack = { n: 0 }, failed: Error | null | undefined = job?.error): void {
  const transfer = ack.buf ? [ack.buf as ArrayBuffer] : [];
  if (!job) return port.postMessage({ t: 'res', seq, ...ack, error: { message: 'no such hash job', code: 'ERR_CLOSED' } }, transfer);
  if (failed) return port.postMessage({ t: 'res', seq, ...ack, error: errorOf(failed) }, transfer);
  let v;
  try {
    v = value();
  } catch (e) {
    return port.postMessage({ t: 'res', seq, ...ack, error: errorOf(e as Error) }, transfer);
  }
  port.postMessage({ t: 'res', seq, ...ack, value: v }, transfer);
}

/** A held block let go: a recycled buffer goes back for the next one. */
function release(h: Held): void {
  if (h.slot !== undefined) port.postMessage({ t: 'ack', n: 0, slot: h.slot });
  else if (h.back) port.postMessage({ t: 'ack', n: 0, buf: h.bytes.buffer }, [h.bytes.buffer as ArrayBuffer]);
}

/**
 * A block is hashed a slice at a time, each pass over a slice while it is
 * in the CPU's cache: the merkle hash, then the chunk hash. (Pass by pass
 * over a whole 4 MiB block, each pass ran from memory, at two thirds of
 * the speed.)
 */
const SLICE = 256 * 1024;

/** Bytes of the chunk in progress, not its end (see chunkEnd). */
function chunkPart(job: Job, bytes: Uint8Array): void {
  job.chunk.update(bytes);
  job.chunkFed = true;
}

/**
 * The hash of the chunk in progress, ending with `last`; the next starts
 * afresh. A chunk that lies whole in `last` (most: they are shorter than a
 * block) is hashed in one shot, without a Hash object (a few us each).
 */
function chunkEnd(job: Job, last: Uint8Array): Uint8Array {
  if (!job.chunkFed) return sha256(last);
  const h = job.chunk.update(last).digest();
  job.chunk = crypto.createHash('sha256');
  job.chunkFed = false;
  return h;
}

/**
 * Hashes `bytes`: into the merkle tree (`merkle`) and, with `cuts` (the
 * offsets in `bytes` where a chunk ends, ascending), into chunk hashes,
 * written to `out` 32 bytes per cut. A cut whose `skip` entry is 1 ends a
 * chunk whose hash the writer knows already: its bytes are not hashed.
 */
function hash(job: Job, bytes: Uint8Array, merkle: boolean, cuts: number[] | undefined, skip: number[] | undefined, out: Uint8Array | undefined): void {
  let ci = 0;
  let from = 0; // bytes before this are in a chunk hash (or skipped)
  for (let s = 0; s < bytes.length; s += SLICE) {
    const e = Math.min(bytes.length, s + SLICE);
    if (merkle) (job.carry ?? job.merkle).update(bytes.subarray(s, e));
    if (!cuts) continue;
    for (; ci < cuts.length && cuts[ci]! <= e; ci++) {
      if (skip?.[ci] !== 1) out!.set(chunkEnd(job, bytes.subarray(from, cuts[ci])), 32 * ci);
      from = cuts[ci]!;
    }
    if (from < e && skip?.[ci] !== 1) chunkPart(job, bytes.subarray(from, e));
    from = e;
  }
}

/**
 * Checks chunks against the hashes claimed for them (`expect`, 32 bytes per
 * cut; the block is whole chunks, the first starting at its start): each
 * chunk is hashed, compared, and only then fed to the merkle tree, both
 * passes while it is in cache. At the first chunk that fails, the job
 * refuses everything from there on, so the tree holds exactly the chunks
 * before it. Returns the number of chunks accepted.
 */
function check(job: Job, bytes: Uint8Array, merkle: boolean, cuts: number[], expect: Uint8Array): number {
  if (job.refused) return 0;
  let from = 0;
  for (let ci = 0; ci < cuts.length; ci++) {
    const chunk = bytes.subarray(from, cuts[ci]);
    const h = sha256(chunk);
    if (Buffer.compare(h, expect.subarray(32 * ci, 32 * ci + 32)) !== 0) {
      job.refused = true;
      return ci;
    }
    if (merkle) (job.carry ?? job.merkle).update(chunk);
    from = cuts[ci]!;
  }
  return cuts.length;
}

/** `writes`: [offset in bytes, length, fragment offset] triples. */
function write(job: Job, bytes: Uint8Array, writes: number[]): void {
  for (let i = 0; i < writes.length; i += 3) {
    const part = bytes.subarray(writes[i]!, writes[i]! + writes[i + 1]!);
    const at = writes[i + 2]!;
    let done = 0;
    while (done < part.length) {
      const n = fs.writeSync(job.fd, part, done, part.length - done, at + done);
      // As writeAll (disk/durable.ts): a write that takes nothing fails (ERR_IO), it is not tried for ever.
      if (n <= 0) throw Object.assign(new Error(`a write of ${part.length - done} bytes wrote nothing`), { code: 'EIO' });
      done += n;
    }
  }
}

/** Writes what `l` gathered; a failure (ENOSPC, EIO) drops the layer, not the blob: it is derived data. */
function flushLayer(l: LayerOut): void {
  if (l.failed || l.filled === 0) return;
  if (l.fd < 0) {
    l.failed = true; // the writer opens the file long before the buffer fills: a layer it did not open is not kept
    return;
  }
  try {
    for (let done = 0; done < l.filled; ) {
      const n = fs.writeSync(l.fd, l.buf, done, l.filled - done, l.at + done);
      if (n <= 0) throw new Error('a write to a leaf layer wrote nothing');
      done += n;
    }
  } catch {
    l.failed = true;
  }
  l.at += l.filled;
  l.filled = 0;
}

function keepLeaves(job: Job, at: number): void {
  const l: LayerOut = { fd: -1, buf: Buffer.allocUnsafe(LAYER_BUF), filled: 0, at, leaves: 0, failed: false };
  job.layer = l;
  job.merkle.onLeaf = (h) => {
    if (l.filled === LAYER_BUF) flushLayer(l);
    l.buf.set(h, l.filled);
    l.filled += 32;
    l.leaves++;
  };
}

/** The leaf layer's last hashes, the partial last leaf's too: the number of leaves written (-1 if the layer failed), and of leaves lent. */
function endLayer(job: Job): [number, number] {
  const l = job.layer;
  if (!l) return [-1, job.lent];
  const last = job.merkle.partialLeaf();
  if (last) job.merkle.onLeaf!(last);
  flushLayer(l);
  job.layer = undefined;
  job.merkle.onLeaf = undefined;
  return [l.failed ? -1 : l.leaves, job.lent];
}

/**
 * Hashes a block with a same-offset plan (see SamePlan): chunk by chunk,
 * its chunk hash and then its merkle leaves, while it is in cache. A run
 * of chunks each shown equal to the source blob's chunk at the same offset
 * (the hash compared here, or by the writer: flag 2) is the source's bytes
 * there, so its whole leaves are the source's leaves, given in `plan`; the
 * leaves at the run's edges, and every other byte, are hashed. Bytes after
 * a run's last whole leaf wait until the next chunk says whether the run
 * goes on.
 */
function hashSame(job: Job, bytes: Uint8Array, cuts: number[], skip: number[] | undefined, out: Uint8Array, plan: SamePlan): void {
  const base = job.merkle.size;
  const expect = new Uint8Array(plan.expect);
  const leaves = new Uint8Array(plan.leaves);
  let from = 0;
  let fed = 0; // bytes before this are in the merkle tree
  let run = -1; // where the run of chunks equal to the source's starts, or -1
  const feedTo = (to: number) => {
    if (to > fed) job.merkle.update(bytes.subarray(fed, to));
    fed = Math.max(fed, to);
  };
  for (let ci = 0; ci < cuts.length; ci++) {
    const end = cuts[ci]!;
    let h: Uint8Array | undefined;
    if (skip?.[ci] !== 1) {
      h = chunkEnd(job, bytes.subarray(from, end));
      out.set(h, 32 * ci);
    }
    const flag = plan.flags[ci];
    const same = flag === 2 || (flag === 1 && h !== undefined && Buffer.compare(h, expect.subarray(32 * ci, 32 * ci + 32)) === 0);
    out[32 * cuts.length + ci] = same ? 1 : 0;
    if (!same) {
      run = -1;
      feedTo(end);
    } else {
      if (run < 0) run = from;
      // The whole leaves of the run so far, [lo, hi) in the block: the source's.
      const lo = Math.ceil((base + run) / LEAF_SIZE) * LEAF_SIZE - base;
      const hi = Math.floor((base + end) / LEAF_SIZE) * LEAF_SIZE - base;
      const a = Math.max(lo, fed);
      const first = (base + a) / LEAF_SIZE - plan.first;
      const n = (hi - a) / LEAF_SIZE;
      if (n > 0 && first >= 0 && 32 * (first + n) <= leaves.length) {
        feedTo(lo);
        job.merkle.pushLeaves(leaves.subarray(32 * first, 32 * (first + n)));
        job.lent += n;
        fed = hi;
      }
    }
    from = end;
  }
  if (from < bytes.length) chunkPart(job, bytes.subarray(from));
  feedTo(bytes.length);
}

/** Writes ranges of held block `hold` and lets it go (a `write` message, or a `data` message's `free`). */
function writeHeld(job: Job | undefined, hold: number, writes: number[]): void {
  const h = job?.held.get(hold);
  if (!job || !h) return;
  job.held.delete(hold);
  if (!job.error) {
    try {
      write(job, h.bytes, writes);
    } catch (e) {
      job.error = e as Error;
    }
  }
  release(h);
}

// Messages in order. While the leaf helper is behind on a job's reads, the bytes of its blocks go after them
// (job.carry, leaf-split.ts); its messages that need the tree itself wait until the helper's leaves are in.
const inbox: ToWorker[] = [];
const needsTree = (m: ToWorker) =>
  m.t === 'digest' || m.t === 'layer-end' || m.t === 'close' || (m.t === 'data' && m.same !== undefined) || (m.t === 'layer' && m.fd === undefined);
function pump(): void {
  pollAnswers();
  while (inbox.length > 0 && !(needsTree(inbox[0]!) && waiting(jobs.get(inbox[0]!.id)))) handle(inbox.shift()!);
}
onAnswers((n) => port.postMessage({ t: 'ack', n, r: 1 }), pump);
port.on('message', (m: ToWorker) => {
  inbox.push(m);
  pump();
});

function handle(m: ToWorker): void {
  const job = jobs.get(m.id);
  switch (m.t) {
    case 'open':
      jobs.set(m.id, { merkle: m.state ? MerkleHasher.fromState(m.state) : new MerkleHasher(), chunk: crypto.createHash('sha256'), chunkFed: false, fd: -1, held: new Map(), lent: 0, run: 0, parts: [] });
      break;
    case 'data': {
      if (m.free) writeHeld(job, m.free.hold, m.free.writes);
      if (job) job.run = 0;
      const bytes = new Uint8Array(m.buf, m.off, m.len);
      // With a same-offset plan, a byte per chunk after the hashes: 1 if it was found equal to the source's.
      let out = m.seq !== undefined && m.cuts && !m.expect ? new Uint8Array((m.same ? 33 : 32) * m.cuts.length) : undefined;
      if (job && !job.error) {
        try {
          // Claimed hashes: the answer is the number of chunks accepted, as a 4-byte count.
          if (m.expect) {
            out = new Uint8Array(4);
            new DataView(out.buffer).setUint32(0, check(job, bytes, m.merkle, m.cuts!, new Uint8Array(m.expect)), true);
          } else if (!job.refused) {
            if (m.same && m.merkle && out) hashSame(job, bytes, m.cuts!, m.skip, out, m.same);
            else hash(job, bytes, m.merkle, m.cuts, m.skip, out);
            if (m.writes.length > 0) write(job, bytes, m.writes);
          }
        } catch (e) {
          job.error = e as Error;
        }
      }
      // Held for the writes to come; otherwise done with (a recycled buffer goes back with the ack).
      const keep = m.hold !== undefined && job !== undefined && !job.error;
      if (keep) job.held.set(m.hold!, { bytes, back: m.back === true, slot: m.slot });
      const ack: Ack = keep || !m.back ? { n: m.len } : m.slot !== undefined ? { n: m.len, slot: m.slot } : { n: m.len, buf: m.buf };
      if (m.seq !== undefined) ack.cpu = threadCpuNs();
      if (m.seq !== undefined) reply(m.seq, job, () => out ?? null, ack);
      else port.postMessage({ t: 'ack', ...ack }, ack.buf ? [ack.buf as ArrayBuffer] : []);
      break;
    }
    case 'read':
      port.postMessage({ t: 'ack', n: job && !job.error && !job.refused ? readFiles(job, m.files, m.len) : m.len, r: 1 });
      break;
    case 'write':
      writeHeld(job, m.hold, m.writes);
      break;
    case 'frag':
      if (job) job.fd = m.fd;
      break;
    case 'layer':
      // Keep the leaf hashes from here (the job's first byte), and later where to write them.
      if (job && m.fd === undefined) keepLeaves(job, m.at);
      else if (job?.layer) job.layer.fd = m.fd!;
      break;
    case 'layer-end':
      reply(m.seq, job, () => endLayer(job!));
      break;
    case 'written':
      // Every write to the fragment sent before this is done (or failed: the error goes back).
      reply(m.seq, job, () => {
        job!.fd = -1;
        return null;
      });
      break;
    case 'open-chunk':
      // The hash of the chunk in progress so far; it goes on.
      reply(m.seq, job, () => {
        const d = job!.chunk.copy().digest();
        return d.buffer.slice(d.byteOffset, d.byteOffset + d.length);
      });
      break;
    case 'state':
      // Behind the helper: answered when its leaves before this point are in (deferState).
      // A later read's failure (job.error set since) does not fail it: only one before it in blob order does.
      if (job && !job.error && deferState(job, (st) => reply(m.seq, job, () => st, undefined, st instanceof Error ? st : null))) break;
      reply(m.seq, job, () => job!.merkle.state() satisfies MerkleState);
      break;
    case 'digest':
      reply(m.seq, job, () => job!.merkle.digest());
      break;
    case 'close':
      jobs.delete(m.id);
      if (job) job.merkle.onLeaf = undefined;
      if (job) for (const h of job.held.values()) release(h);
      if (jobs.size === 0) stopHelper(() => jobs.size === 0);
      port.postMessage({ t: 'res', seq: m.seq, value: null });
      break;
  }
}
