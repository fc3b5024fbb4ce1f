import { CabError } from '../errors.js';
import { STAT_WAIT_MS } from './messages.js';

export interface IdleWatchOptions {
  /** Idle after this long with no message. */
  ms: number;
  /** Bytes read from the connection so far: while they grow, a frame is on its way (one 4 MiB chunk on a slow link). */
  bytesRead?: (() => number) | undefined;
  /** A follow stat is outstanding, which the other end may hold STAT_WAIT_MS: wait at least that (and a margin). */
  waitLonger: () => boolean;
  onIdle: (e: CabError) => void;
}

/**
 * The idle timer of one connection: `heard` (a message came, or a client's
 * first request went out) starts the wait again, `stop` ends it. When it
 * runs out with bytes still arriving, or a follow stat that may rightly
 * be held longer, it waits on; else `onIdle` gets ERR_IDLE_TIMEOUT.
 */
export class IdleWatch {
  #timer: NodeJS.Timeout | undefined;
  #heardAt = 0;
  #read: number | undefined;

  constructor(readonly o: IdleWatchOptions) {}

  heard(): void {
    this.#heardAt = performance.now();
    this.#read = this.o.bytesRead?.();
    this.#arm(this.o.ms);
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
    const read = this.o.bytesRead?.();
    if (read !== undefined && read !== this.#read) {
      this.#read = read;
      return this.#arm(this.o.ms);
    }
    const since = performance.now() - this.#heardAt;
    const longest = this.o.waitLonger() ? Math.max(this.o.ms, STAT_WAIT_MS + 10_000) : this.o.ms;
    if (since < longest) return this.#arm(longest - since);
    this.o.onIdle(new CabError('ERR_IDLE_TIMEOUT', `no message for ${Math.round(since)} ms`));
  }
}
