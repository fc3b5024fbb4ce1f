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
          if (m.merkle) job.merkle.update(bytes);
          const w = m.writes;
          for (let i = 0; i < w.length; i += 3) {
            const part = bytes.subarray(w[i]!, w[i]! + w[i + 1]!);
            job.frag.update(part);
            let done = 0;
            while (done < part.length) done += fs.writeSync(job.fd, part, done, part.length - done, w[i + 2]! + done);
          }
        } catch (e) {
          job.error = e as Error;
        }
      }
      port.postMessage({ t: 'ack', n: m.len });
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
