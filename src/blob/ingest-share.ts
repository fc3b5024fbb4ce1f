import type { HashJob } from '../hash/pool.js';
import { threadCpuNs } from '../hash/thread-cpu.js';

/** At most this long (ms) per block does the writer's thread hash chunks itself: about all of a 1 MiB block's. */
const MAX_SHARE_MS = 4;
/** How far below zero the balance may go (ms): how long a writer's thread that was the busier one takes to start sharing again. */
const MIN_BALANCE_MS = -8;
/** Blocks between readings of the two threads' CPU time (a read of /proc each), which the share holds for. */
const READ_EVERY = 4;

/**
 * How the chunk hashing of the write path (src/blob/ingest.ts) is shared
 * between the writer's thread, which also reads, chunks and decides, and
 * the hashing thread, which also hashes the merkle leaves and writes: for
 * `next()` ms per block the writer's thread hashes whole chunks itself,
 * while they are in cache.
 *
 * Moving x ms of hashing to the writer's thread takes about x from the
 * hashing thread, so each reading (every READ_EVERY blocks) moves the
 * share by a quarter of the difference per block between the CPU time the
 * two spent since the last reading (half would even them; a quarter damps
 * the noise). The balance is kept below zero too, rather than clamped
 * there: the hashing thread's time moves in steps (it is read as of its
 * last answer), and a balance clamped at zero turned that noise into a
 * share where there should be none (a second put, whose writer's thread is
 * the busier one, hashed 0.14 ms a block). Where the system does not say
 * what CPU time a thread used (threadCpuNs), it goes by how long the writer's thread
 * waited for the hashing thread per block, which on a loaded machine also
 * counts the time the hashing thread was runnable but not running: the
 * writer's thread then takes on too much.
 */
export class HashShare {
  readonly #job: HashJob;
  /** This thread's CPU time and the hashing thread's (ns) at the last reading. */
  #cpuAt: [number, number] | undefined;
  /** The share as the balance says (ms), below zero where this thread was the busier one: the share is it clamped to [0, MAX_SHARE_MS]. */
  #balanceMs = 0;
  #blocks = 0;
  /** How long this thread waited for a block's hashes, on average (a moving average, in ms). */
  #waitMs = 0;

  constructor(job: HashJob) {
    this.#job = job;
  }

  /** How long (ms) to hash whole chunks of the next block on this thread. */
  next(): number {
    if (this.#cpuAt && ++this.#blocks % READ_EVERY !== 0) return Math.max(0, this.#balanceMs);
    const main = threadCpuNs();
    const hashing = this.#job.threadCpuNs;
    if (main === undefined || hashing === undefined) return this.#waitMs;
    if (this.#cpuAt) {
      const diff = hashing - this.#cpuAt[1] - (main - this.#cpuAt[0]);
      this.#balanceMs = Math.min(MAX_SHARE_MS, Math.max(MIN_BALANCE_MS, this.#balanceMs + diff / (4e6 * READ_EVERY)));
    }
    this.#cpuAt = [main, hashing];
    return Math.max(0, this.#balanceMs);
  }

  /** This thread waited `ms` for a block's hashes, one block behind (the hashing thread was behind). */
  waited(ms: number): void {
    this.#waitMs = 0.75 * this.#waitMs + 0.25 * ms;
  }
}
