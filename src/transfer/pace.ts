import { objectArray } from '../lists.js';

/**
 * Bytes a fetch lets be on their way at least (asked for and not yet
 * landed). 1 MiB lost less to a cut, but slowed a full copy on 2 shared
 * cores by a tenth or more: the sender's answers come late often enough.
 */
export const MIN_IN_FLIGHT = 2 * 1024 * 1024;
/** Gets whose ends the delivery rate is measured over. */
const RATE_GETS = 4;

/**
 * How many bytes of whole chunks a fetch lets be on their way at once:
 * twice the link's bandwidth-delay product as the pull measures it (the
 * rate bytes landed at over the last few gets, times the shortest time a
 * get took to start answering), at least MIN_IN_FLIGHT and at most `max`.
 *
 * Bytes on their way are what a cut connection loses: a reset makes the
 * kernel drop what the receiver had not read yet, and on a fast local link
 * the sender can put megabytes there while the receiver hashes and writes.
 * So no more is asked for than keeps the receiver busy: over a local link
 * MIN_IN_FLIGHT; over a long one the window grows (doubling with each
 * round trip while it is what limits the rate) up to `max`.
 */
export class Pace {
  #rtt = Number.POSITIVE_INFINITY;
  #landed = 0;
  /** [time, bytes landed by then] at the ends of the last gets. */
  #marks: Array<[number, number]> = objectArray();
  limit: number;

  /** `min`: the least limit (MIN_IN_FLIGHT over a connection; a source with nothing to cut, the most). */
  constructor(
    readonly max: number,
    readonly min = MIN_IN_FLIGHT,
  ) {
    this.limit = min;
  }

  /** A get's first bytes landed, `ms` after it was asked for. */
  answered(ms: number): void {
    if (ms < this.#rtt) this.#rtt = ms;
  }

  landed(bytes: number): void {
    this.#landed += bytes;
  }

  /** A get has wholly landed: the rate, and the limit, are measured again. */
  ended(): void {
    const now = performance.now();
    this.#marks.push([now, this.#landed]);
    if (this.#marks.length > RATE_GETS + 1) this.#marks.shift();
    if (this.#marks.length < 3 || !Number.isFinite(this.#rtt)) return;
    const [t0, b0] = this.#marks[0]!;
    const rate = (this.#landed - b0) / Math.max(now - t0, 0.01); // bytes per ms
    this.limit = Math.min(this.max, Math.max(this.min, Math.round(2 * rate * this.#rtt)));
  }

  /** Nothing is asked for for a while (local ranges, fine matching): that time is no measure of the rate. */
  paused(): void {
    this.#marks = objectArray();
  }
}
