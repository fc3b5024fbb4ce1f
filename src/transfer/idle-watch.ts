import { CabError } from '../errors.js';
import { STAT_WAIT_MS } from './messages.js';

/** Bytes a second below which bytes still arriving are no sign of life (a trickle of a few bytes held a request for good). */
export const MIN_LIVE_RATE = 1024;

/** Whether `grown` more bytes read over `ms` are a sign of life: one byte at least, and MIN_LIVE_RATE. */
export function stillArriving(grown: number, ms: number): boolean {
  return grown > 0 && grown >= (MIN_LIVE_RATE * ms) / 1000;
}

export interface IdleWatchOptions {
  /** Idle after this long with no message. */
  ms: number;
  /** Bytes read from the connection so far: while they grow, a frame is on its way (one 4 MiB chunk on a slow link). */
  bytesRead?: (() => number) | undefined;
  /** A follow stat is outstanding, which the server may hold STAT_WAIT_MS (or, on a server, one is being answered): wait at least that (and a margin). */
  waitLonger: () => boolean;
  onIdle: (e: CabError) => void;
}

/**
 * The idle timer of one connection: `heard` (a message came, or a client's
 * first request went out) starts the wait again, `stop` ends it. When it
 * runs out with bytes still arriving (at MIN_LIVE_RATE at least), or a
 * follow stat that may rightly be held longer, it waits on; else `onIdle`
 * gets ERR_IDLE_TIMEOUT.
 */
export class IdleWatch {
  #timer: NodeJS.Timeout | undefined;
  #heardAt = 0;
  #read: number | undefined;
  #readAt = 0;

  constructor(readonly o: IdleWatchOptions) {}

  heard(): void {
    this.#heardAt = this.#readAt = performance.now();
    this.#read = this.o.bytesRead?.();
    // One timer, not one per message (a pull hears a frame per chunk): when it fires, it waits on from #heardAt.
    if (this.#timer === undefined) this.#arm(this.o.ms);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#check(), ms);
    this.#timer.unref();
  }

  #check(): void {
    const now = performance.now();
    const read = this.o.bytesRead?.();
    if (read !== undefined && this.#read !== undefined) {
      const alive = stillArriving(read - this.#read, now - this.#readAt);
      this.#read = read;
      this.#readAt = now;
      if (alive) return this.#arm(this.o.ms);
    }
    const since = now - this.#heardAt;
    const longest = this.o.waitLonger() ? Math.max(this.o.ms, STAT_WAIT_MS + 10_000) : this.o.ms;
    if (since < longest) return this.#arm(Math.max(1, longest - since));
    this.#timer = undefined;
    this.o.onIdle(new CabError('ERR_IDLE_TIMEOUT', `no message for ${Math.round(since)} ms`));
  }
}
