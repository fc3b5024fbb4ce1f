// The hashing thread: BEP 52 merkle hashing of blob bytes, and SHA-256 and
// writing of fragment bytes, so that the main thread only chunks, hashes
// chunks and decides what to write. Messages are processed in order; see
// src/hash/pool.ts for the protocol.
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { MerkleHasher, type MerkleState } from './merkle.js';
import type { ToWorker } from './pool.js';

interface Job {
  merkle: MerkleHasher;
  frag: crypto.Hash;
  fd: number;
  error?: Error;
}

const jobs = new Map<number, Job>();
const port = parentPort!;

function reply(seq: number, job: Job | undefined, value: () => unknown): void {
  if (!job) return port.postMessage({ t: 'res', seq, error: { message: 'no such hash job', code: 'ERR_CLOSED' } });
  if (job.error) return port.postMessage({ t: 'res', seq, error: { message: job.error.message, code: (job.error as NodeJS.ErrnoException).code } });
  try {
    port.postMessage({ t: 'res', seq, value: value() });
  } catch (e) {
    port.postMessage({ t: 'res', seq, error: { message: (e as Error).message, code: (e as NodeJS.ErrnoException).code } });
  }
}

/**
 * A block is hashed and written a slice at a time, each pass over a slice
 * while it is in the CPU's cache: the merkle hash, then the fragment hash
 * and write of the parts of it that are new bytes. (Pass by pass over a
 * whole 4 MiB block, the write's copy ran from memory, at a third of the speed.)
 */
const SLICE = 256 * 1024;

/** `writes`: [offset in bytes, length, fragment offset] triples, in order. */
function ingest(job: Job, bytes: Uint8Array, merkle: boolean, writes: number[]): void {
  let i = 0;
  for (let s = 0; s < bytes.length; s += SLICE) {
    const e = Math.min(bytes.length, s + SLICE);
    if (merkle) job.merkle.update(bytes.subarray(s, e));
    for (; i < writes.length; i += 3) {
      const from = Math.max(s, writes[i]!);
      const to = Math.min(e, writes[i]! + writes[i + 1]!);
      if (from < to) {
        const part = bytes.subarray(from, to);
        job.frag.update(part);
        const at = writes[i + 2]! + from - writes[i]!;
        let done = 0;
        while (done < part.length) {
          const n = fs.writeSync(job.fd, part, done, part.length - done, at + done);
          // As writeAll (disk/durable.ts): a write that takes nothing fails (ERR_IO), it is not tried for ever.
          if (n <= 0) throw Object.assign(new Error(`a write of ${part.length - done} bytes wrote nothing`), { code: 'EIO' });
          done += n;
        }
      }
      if (writes[i]! + writes[i + 1]! > e) break; // the rest of this write is in the next slice
    }
  }
}

port.on('message', (m: ToWorker) => {
  const job = jobs.get(m.id);
  switch (m.t) {
    case 'open':
      jobs.set(m.id, { merkle: m.state ? MerkleHasher.fromState(m.state) : new MerkleHasher(), frag: crypto.createHash('sha256'), fd: -1 });
      break;
    case 'data': {
      const bytes = new Uint8Array(m.buf, m.off, m.len);
      if (job && !job.error) {
        try {
          ingest(job, bytes, m.merkle, m.writes);
        } catch (e) {
          job.error = e as Error;
        }
      }
      // A recycled buffer goes back with the ack, for the next one.
      if (m.back) port.postMessage({ t: 'ack', n: m.len, buf: m.buf }, [m.buf as ArrayBuffer]);
      else port.postMessage({ t: 'ack', n: m.len });
      break;
    }
    case 'frag':
      if (job) {
        job.fd = m.fd;
        job.frag = crypto.createHash('sha256');
      }
      break;
    case 'seal':
      reply(m.seq, job, () => {
        const hex = job!.frag.digest('hex');
        job!.frag = crypto.createHash('sha256');
        job!.fd = -1;
        return hex;
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
      port.postMessage({ t: 'res', seq: m.seq, value: null });
      break;
  }
});
