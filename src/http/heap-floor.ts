/**
 * Bytes of JavaScript heap that a process taking uploads keeps allocated
 * (HeapFloor). Enough to keep V8's headroom above the young generation's
 * size with room to spare (see HeapFloor); 16 MiB sufficed in the runs
 * measured, and twice that leaves a margin.
 */
export const HEAP_FLOOR_BYTES = 32 * 1024 * 1024;

/**
 * The floor is made of arrays of this many bytes: each large enough for
 * V8's large object space (over 128 KiB: never moved), small enough that
 * its garbage can go while the rest is built (an array filled with a
 * number first holds smis, then its numbers are copied to a new store,
 * and the first is garbage: a standalone check peaked at 66 MB more RSS
 * with one array of 32 MiB, 38 MB with these).
 */
const FLOOR_PIECE_BYTES = 1024 * 1024;

/** The floor, held while any HeapFloor holds it (one per process, whatever the servers). */
let floor: number[][] | undefined;
let holders = 0;

/**
 * Keeps the old generation of V8's heap at least HEAP_FLOOR_BYTES larger
 * while a server takes uploads. Why: `serve`'s heap is small (about 12 MB
 * after a full collection), and an upload grows V8's young generation to
 * its full 16 MiB. Node 20's V8 starts incremental marking as soon as the
 * old generation's room below its limit is less than the young
 * generation's size, and sets that limit at 1.1x the heap plus about 15
 * MiB whenever its growing factor drops to the minimum (a busy mutator):
 * the room is then below 16 MiB straight after each full collection, and
 * the next one starts at once. Such a run of the bench made 20 to 35 full
 * collections per 512 MiB uploaded and cost 1 to 2.5 s more CPU per GiB
 * (the main thread and V8's helper threads), in about one run out of
 * three; 18 runs with a floor of 16 or 32 MiB at load 2 to 5 made none
 * (at load 17 and up V8 still starts some, from a task: BENCHMARKS.md,
 * 2026-12-05). The floor is
 * arrays of numbers, which the collector does not scan and never moves
 * (large object space): it raises the heap's size, and so the limit, at
 * almost no cost per collection. `--max-semi-space-size=1` does the same from the
 * other side, but V8 takes it only at start-up (HTTP.md, "Serving large
 * uploads").
 */
export class HeapFloor {
  #held = false;

  /** Allocates the floor if no one holds it yet. Idempotent. */
  hold(): void {
    if (this.#held) return;
    this.#held = true;
    if (holders++ === 0) floor = Array.from({ length: HEAP_FLOOR_BYTES / FLOOR_PIECE_BYTES }, () => new Array<number>(FLOOR_PIECE_BYTES / 8).fill(0.5));
  }

  /** Lets the floor go once no one holds it. Idempotent. */
  release(): void {
    if (!this.#held) return;
    this.#held = false;
    if (--holders === 0) floor = undefined;
  }

  /** Whether this process holds the floor now (for tests). */
  static get held(): boolean {
    return floor !== undefined;
  }
}
