import type { SourceEntry, SourceSet } from './sources.js';
import { MIN_IN_FLIGHT, Pace } from './pace.js';
import { objectArray } from '../lists.js';

/**
 * Bytes of whole chunks asked for and not yet written, from one source:
 * what a fetch holds in memory, at most, and what a cancelled one still
 * takes in (and writes) before it stops. Each further source adds
 * MIN_IN_FLIGHT, up to twice this.
 */
export const FETCH_WINDOW_BYTES = 8 * 1024 * 1024;
/**
 * A get at the head of the window (the next to write) that its source has
 * sent nothing of for this long, while another source sits idle, is asked
 * of that one too (the first answer is used). Hiccups of a loaded machine
 * stay under it; a stalled source does not.
 */
export const STEAL_AFTER_MS = 500;

/** How long a cancelled fetch waits for the answers under way (what lands is written: the next run need not fetch it again). */
export const SALVAGE_MS = 1000;
/**
 * A source asked nothing for this long is measured again: it may take the
 * next get even if it looked slow (its speed was measured once, maybe while
 * it started up; left alone, it would never be measured again).
 */
export const PROBE_AFTER_MS = 1000;

/** One source as the fetch window uses it: how fast it delivers, and what is asked of it and not yet arrived. */
export class Lane {
  readonly pace: Pace;
  /** Bytes asked for and not yet arrived (nor given up on): what a cut of this source loses, at most. */
  inFlight = 0;
  /**
   * Bytes per ms it delivers while it has work (a moving average over its
   * asks, each timed from when the source could start on it): undefined
   * until one is answered. Time it sat with nothing asked of it does not
   * count, or a source given less work would look slower, and be given less.
   */
  speed: number | undefined;
  #lastEnd = 0;
  #lastAsked = 0;

  constructor(readonly entry: SourceEntry) {
    // A source that answers all at once (a bundle, a local file) has no connection to cut: as much on its way as the window holds.
    this.pace = new Pace(FETCH_WINDOW_BYTES, entry.src.stream ? undefined : FETCH_WINDOW_BYTES);
  }

  get live(): boolean {
    return !this.entry.dropped;
  }

  /** `bytes` are asked of it now. */
  asked(bytes: number): void {
    this.inFlight += bytes;
    this.#lastAsked = performance.now();
  }

  /** An ask of `bytes`, sent at `sent`, was wholly answered now. A source answers its gets one after another: it started on this one when asked, or when the one before ended. */
  served(bytes: number, sent: number): void {
    const now = performance.now();
    const r = bytes / Math.max(0.05, now - Math.max(sent, this.#lastEnd));
    // After a long rest (a probe), the new measure stands alone.
    this.speed = this.speed === undefined || sent - this.#lastEnd > PROBE_AFTER_MS ? r : 0.7 * this.speed + 0.3 * r;
    this.#lastEnd = now;
  }

  /** Not measured yet, or idle long enough to be measured again (PROBE_AFTER_MS). */
  get unmeasured(): boolean {
    return this.speed === undefined || (this.inFlight === 0 && performance.now() - this.#lastAsked > PROBE_AFTER_MS);
  }

  /** When (ms from now) it would have delivered `bytes` more asked of it now, at its speed; 0 while unmeasured. */
  finish(bytes: number): number {
    return this.unmeasured ? 0 : (this.inFlight + bytes) / this.speed!;
  }

  /** Whether `bytes` more may be asked of it now. */
  room(bytes: number): boolean {
    return this.inFlight === 0 || this.inFlight + bytes <= this.pace.limit;
  }
}

/** Event loop utilization over which the puller counts as the slower end, measured over BUSY_SPAN_MS. */
const BUSY_LOAD = 0.9;
const BUSY_SPAN_MS = 100;

/** Speeds within this factor of each other count as the same: the source listed first keeps the work (measures are noisy, and work spread over like sources costs more than it brings when the puller is the slower end). */
const SAME_SPEED = 1.25;

/** Whether lane `a` takes the next get rather than `b` (listed before it), both with room: one not yet measured, then a clearly faster one. */
function before(a: Lane, b: Lane): boolean {
  if (a.unmeasured !== b.unmeasured) return a.unmeasured;
  if (a.unmeasured) return a.inFlight < b.inFlight;
  return a.speed! > SAME_SPEED * b.speed!;
}

/**
 * The window's lanes, one per live source of the set. Work goes by
 * stealing: the next get goes to a lane with room, the fastest first (see
 * choose); a lane fills as gets are asked of it and empties as they land.
 */
export class Lanes {
  readonly #lanes = new Map<SourceEntry, Lane>();
  #liveOf: readonly SourceEntry[] | undefined;
  #live: readonly Lane[] = objectArray();
  #load = performance.eventLoopUtilization();
  #loadAt = performance.now();
  #wasBusy = false;

  constructor(readonly set: SourceSet) {}

  lane(e: SourceEntry): Lane {
    let l = this.#lanes.get(e);
    if (!l) this.#lanes.set(e, (l = new Lane(e)));
    return l;
  }

  /** The live sources' lanes: one array while the set's live sources stay the same. */
  get live(): readonly Lane[] {
    const entries = this.set.live;
    if (entries !== this.#liveOf) {
      this.#liveOf = entries;
      // An array of objects from the start, as #live's first: an empty `[]` and map()'s result are arrays of two kinds, and code made for one deopted at the other in each new pull.
      const live = objectArray<Lane>();
      for (const e of entries) live.push(this.lane(e));
      this.#live = live;
    }
    return this.#live;
  }

  /**
   * The lane to ask `bytes` of now: of those with room, one not yet
   * measured (so that each is), else the fastest; none if a measured lane
   * without room would still deliver them in less than half the time (the
   * get waits for its room). So work goes to the fastest source while it
   * has room, and to the next ones as it fills: as many sources are used as
   * add to the speed. When the puller is the slower end (its event loop
   * busy, #busy), only the fastest source is given work: the others drain,
   * are measured now and then, and stand by to steal; when the sources are
   * the slower end, they all work.
   */
  choose(bytes: number): Lane | undefined {
    let best: Lane | undefined;
    let top: Lane | undefined;
    let probe: Lane | undefined;
    let soonest = Number.POSITIVE_INFINITY;
    for (const l of this.live) {
      if (l.unmeasured) {
        if (l.room(bytes) && (!probe || before(l, probe))) probe = l;
        continue;
      }
      soonest = Math.min(soonest, l.finish(bytes)); // one not yet measured holds no one back
      if (!top || before(l, top)) top = l;
      if (l.room(bytes) && (!best || before(l, best))) best = l;
    }
    // This process is the slower end: a second source at work would only queue bytes for it. The fastest alone works (and any not yet measured is).
    if (top && this.#busy()) return probe ?? (top.room(bytes) ? top : undefined);
    best = probe ?? best;
    return best && best.finish(bytes) <= 2 * soonest + 1 ? best : undefined;
  }

  /**
   * Whether this process's event loop was busy (BUSY_LOAD of the time) over
   * the last BUSY_SPAN_MS: what lands is then read, checked and written
   * as fast as it can be, and more sources at work add only their costs.
   */
  #busy(): boolean {
    const now = performance.now();
    if (now - this.#loadAt >= BUSY_SPAN_MS) {
      this.#wasBusy = performance.eventLoopUtilization(this.#load).utilization > BUSY_LOAD;
      this.#load = performance.eventLoopUtilization();
      this.#loadAt = now;
    }
    return this.#wasBusy;
  }

  /** A lane with nothing on its way, other than `not`, that would deliver `bytes` soonest. */
  idle(not: Lane, bytes: number): Lane | undefined {
    let best: Lane | undefined;
    for (const l of this.live) {
      if (l === not || l.inFlight > 0) continue;
      if (!best || l.finish(bytes) < best.finish(bytes)) best = l;
    }
    return best;
  }

  /** The largest pace limit among the live lanes. */
  get limit(): number {
    return Math.max(0, ...this.live.map((l) => l.pace.limit));
  }

  /** Bytes the window may hold asked for and not written: more with more sources, so that each has work. */
  get windowBytes(): number {
    return Math.min(2 * FETCH_WINDOW_BYTES, FETCH_WINDOW_BYTES + Math.max(0, this.set.live.length - 1) * MIN_IN_FLIGHT);
  }

  /** Nothing is asked for for a while: no lane's rate is measured over it. */
  paused(): void {
    for (const l of this.#lanes.values()) l.pace.paused();
  }
}
