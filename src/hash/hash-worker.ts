// The hashing thread: BEP 52 merkle hashing of blob bytes, SHA-256 of each
// chunk, and writing of fragment bytes, so that the main thread only reads,
// chunks (finds the boundaries) and decides what to write. Messages are
// processed in order; see src/hash/pool.ts for the protocol.
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { MerkleHasher, type MerkleState } from './merkle.js';
import type { ToWorker } from './pool.js';
import { threadCpuNs } from './thread-cpu.js';

interface Held {
  bytes: Uint8Array;
  /** The buffer goes back to the sender once released (a recycled one). */
  back: boolean;
}

interface Job {
  merkle: MerkleHasher;
  /** The SHA-256 of the chunk in progress: the bytes since the last cut. */
  chunk: crypto.Hash;
  fd: number;
  /** Blocks kept until the writer says which of their bytes to write. */
  held: Map<number, Held>;
  error?: Error;
  /** A chunk failed its claimed hash: nothing after it is hashed or written for this job. */
  refused?: boolean;
}

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
  /** This thread's CPU time so far (threadCpuNs), on the answer to a block: the writer balances by it. */
  cpu?: number;
}

/**
 * Answers request `seq`; with `ack`, in the same message (a message from
 * this thread costs about 0.2 ms: one per block, not two).
 */
function reply(seq: number, job: Job | undefined, value: () => unknown, ack: Ack = { n: 0 }): void {
  const transfer = ack.buf ? [ack.buf as ArrayBuffer] : [];
  if (!job) return port.postMessage({ t: 'res', seq, ...ack, error: { message: 'no such hash job', code: 'ERR_CLOSED' } }, transfer);
  if (job.error) return port.postMessage({ t: 'res', seq, ...ack, error: errorOf(job.error) }, transfer);
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
  if (h.back) port.postMessage({ t: 'ack', n: 0, buf: h.bytes.buffer }, [h.bytes.buffer as ArrayBuffer]);
}

/**
 * A block is hashed a slice at a time, each pass over a slice while it is
 * in the CPU's cache: the merkle hash, then the chunk hash. (Pass by pass
 * over a whole 4 MiB block, each pass ran from memory, at two thirds of
 * the speed.)
 */
const SLICE = 256 * 1024;

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
    if (merkle) job.merkle.update(bytes.subarray(s, e));
    if (!cuts) continue;
    for (; ci < cuts.length && cuts[ci]! <= e; ci++) {
      if (skip?.[ci] !== 1) {
        job.chunk.update(bytes.subarray(from, cuts[ci]));
        out!.set(job.chunk.digest(), 32 * ci);
        job.chunk = crypto.createHash('sha256');
      }
      from = cuts[ci]!;
    }
    if (from < e && skip?.[ci] !== 1) job.chunk.update(bytes.subarray(from, e));
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
    const h = crypto.createHash('sha256').update(chunk).digest();
    if (h.compare(expect, 32 * ci, 32 * ci + 32) !== 0) {
      job.refused = true;
      return ci;
    }
    if (merkle) job.merkle.update(chunk);
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

port.on('message', (m: ToWorker) => {
  const job = jobs.get(m.id);
  switch (m.t) {
    case 'open':
      jobs.set(m.id, { merkle: m.state ? MerkleHasher.fromState(m.state) : new MerkleHasher(), chunk: crypto.createHash('sha256'), fd: -1, held: new Map() });
      break;
    case 'data': {
      const bytes = new Uint8Array(m.buf, m.off, m.len);
      let out = m.seq !== undefined && m.cuts && !m.expect ? new Uint8Array(32 * m.cuts.length) : undefined;
      if (job && !job.error) {
        try {
          // Claimed hashes: the answer is the number of chunks accepted, as a 4-byte count.
          if (m.expect) {
            out = new Uint8Array(4);
            new DataView(out.buffer).setUint32(0, check(job, bytes, m.merkle, m.cuts!, new Uint8Array(m.expect)), true);
          } else if (!job.refused) {
            hash(job, bytes, m.merkle, m.cuts, m.skip, out);
            if (m.writes.length > 0) write(job, bytes, m.writes);
          }
        } catch (e) {
          job.error = e as Error;
        }
      }
      // Held for the writes to come; otherwise done with (a recycled buffer goes back with the ack).
      const keep = m.hold !== undefined && job !== undefined && !job.error;
      if (keep) job.held.set(m.hold!, { bytes, back: m.back === true });
      const ack: Ack = !keep && m.back ? { n: m.len, buf: m.buf } : { n: m.len };
      if (m.seq !== undefined) ack.cpu = threadCpuNs();
      if (m.seq !== undefined) reply(m.seq, job, () => out ?? null, ack);
      else port.postMessage({ t: 'ack', ...ack }, ack.buf ? [ack.buf as ArrayBuffer] : []);
      break;
    }
    case 'write': {
      const h = job?.held.get(m.hold);
      if (!job || !h) break;
      job.held.delete(m.hold);
      if (!job.error) {
        try {
          write(job, h.bytes, m.writes);
        } catch (e) {
          job.error = e as Error;
        }
      }
      release(h);
      break;
    }
    case 'frag':
      if (job) job.fd = m.fd;
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
      reply(m.seq, job, () => job!.merkle.state() satisfies MerkleState);
      break;
    case 'digest':
      reply(m.seq, job, () => job!.merkle.digest());
      break;
    case 'close':
      jobs.delete(m.id);
      if (job) for (const h of job.held.values()) release(h);
      port.postMessage({ t: 'res', seq: m.seq, value: null });
      break;
  }
});
