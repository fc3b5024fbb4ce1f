import type { ByteBudget } from './budget.js';

/** Spare bytes kept by all connections of one server (one getBudget). */
const heldBy = new WeakMap<ByteBudget, { bytes: number }>();

/**
 * A connection's frame buffers written and free for its next frames: fresh
 * memory for every frame cost a garbage collection every few MiB. At most
 * `most` bytes a connection, and across the server's connections at most
 * the get budget's total (as much as may be in flight: 256 connections of
 * 5 MiB each held 1.25 GiB); dropped after `idleMs` without a frame.
 */
export class SpareFrames {
  #bufs: Buffer[] = [];
  #bytes = 0;
  #timer: NodeJS.Timeout | undefined;
  readonly #held: { bytes: number };

  constructor(readonly budget: ByteBudget, readonly most: number, readonly idleMs: number) {
    let h = heldBy.get(budget);
    if (!h) heldBy.set(budget, (h = { bytes: 0 }));
    this.#held = h;
  }

  /** Keeps `buf` for a later frame, if there is room here and server-wide. */
  keep(buf: Buffer): void {
    if (this.#bytes + buf.length > this.most || this.#held.bytes + buf.length > this.budget.total) return;
    this.#bufs.push(buf);
    this.#bytes += buf.length;
    this.#held.bytes += buf.length;
    (this.#timer ??= setTimeout(() => this.drop(), this.idleMs).unref()).refresh();
  }

  /** The smallest spare buffer of at least `size` bytes, taken off the list. */
  take(size: number): Buffer | undefined {
    let k = -1;
    for (let i = 0; i < this.#bufs.length; i++) if (this.#bufs[i]!.length >= size && (k < 0 || this.#bufs[i]!.length < this.#bufs[k]!.length)) k = i;
    if (k < 0) return undefined;
    const [b] = this.#bufs.splice(k, 1);
    this.#bytes -= b!.length;
    this.#held.bytes -= b!.length;
    return b;
  }

  /** After idleMs without a frame written, or once closed: an idle connection holds no spare buffers. */
  drop(): void {
    clearTimeout(this.#timer);
    this.#held.bytes -= this.#bytes;
    [this.#bufs, this.#bytes, this.#timer] = [[], 0, undefined];
  }
}
