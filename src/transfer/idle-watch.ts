import { CabError } from '../errors.js';
import { STAT_WAIT_MS } from './messages.js';

/** Bytes a second below which bytes still arriving are no sign of life (a trickle of a few bytes held a request for good). */
export const MIN_LIVE_RATE = 1024;

/** Whether `grown` more bytes read over `ms` are a sign of life: one byte at least, and MIN_LIVE_RATE. */
export function stillArriving(grown: number, ms: number): boolean {
  return grown > 0 && grown >= (MIN_LIVE_RATE * ms) / 1000;
}

/** A peer silent for this share of the idle wait is pinged (its pong, or any byte, is a sign of life). */
export const PING_SHARE = 4;

/**
 * Pongs keep a peer that owes an answer for at most this many idle waits
 * with no message (a server at work for a push may rightly say nothing for
 * long; one whose disk hung while its event loop runs answers pings for ever).
 */
export const PONGS_ONLY_WAITS = 10;

export interface IdleWatchOptions {
  /** Idle after this long with no message (or, with `ping`, no pong either). */
  ms: number;
  /** Bytes read from the connection so far: while they grow, a frame is on its way (one 4 MiB chunk on a slow link). */
  bytesRead?: (() => number) | undefined;
  /** Bytes we have sent so far: the peer may answer them (and our ping behind them) only once they have reached it. */
  bytesSent?: (() => number) | undefined;
  /** A follow stat is outstanding, which the server may hold STAT_WAIT_MS (or, on a server, one is being answered): wait at least that (and a margin). Without `ping` only. */
  waitLonger: () => boolean;
  /**
   * Pings the peer (a WebSocket ping, which its transport answers by itself
   * with a pong: `answered`) if it owes us something now, or whatever it
   * owes if `ours` (our own bytes on their way to it would take longer than
   * `ms` at MIN_LIVE_RATE), and says whether it did: a peer silent while it
   * works for us, or takes our bytes, is then cut only if it answers nothing.
   * A peer that owes nothing is not pinged, so an idle one is cut.
   */
  ping?: (ours: boolean) => boolean;
  onIdle: (e: CabError) => void;
}

/**
 * The idle timer of one connection: `heard` (a message came, or a client's
 * first request went out) starts the wait again, `stop` ends it. With
 * `ping`, a peer silent for a PING_SHARE of the wait is pinged, and its pong
 * (`answered`) starts the wait again: this timer asks only whether the peer
 * is there; whether a request makes progress is for the stall checks
 * (SourceSet's stallMs), which pongs do not satisfy. When it runs out with
 * bytes still arriving (at MIN_LIVE_RATE at least), or (without `ping`) a
 * follow stat that may rightly be held longer, it waits on; else `onIdle`
 * gets ERR_IDLE_TIMEOUT. Our own bytes sent since the peer was last heard
 * (its answer, and the pong to a ping sent behind them, comes only once they
 * have reached it) lengthen the wait by their time at MIN_LIVE_RATE: which
 * share of them still sits in socket buffers, ours or the kernel's (4 MB and
 * more), cannot be seen, and a slow, healthy link was cut. A peer that takes
 * nothing of what is still buffered here goes at the transport's drain
 * timeout; when they would take longer than `ms`, the peer is pinged, and its
 * pong (all before the ping has reached it) ends that extra wait. Pongs
 * alone keep a peer PONGS_ONLY_WAITS idle waits at most: a peer that answers
 * pings and says nothing for that long is cut too.
 */
export class IdleWatch {
  #timer: NodeJS.Timeout | undefined;
  #heardAt = 0;
  /** When the last message came (a pong is none). */
  #messageAt = 0;
  #read: number | undefined;
  #readAt = 0;
  /** A ping went out since the peer was last heard: its pong is a sign of life. */
  #pinged = false;
  /** bytesSent when the peer was last heard (or, once it answers, when our ping went out): what is sent after may not have reached it. */
  #sentHeard = 0;
  #sentAtPing = 0;
  /** How long between checks: with pings, a share of the wait, so that a ping goes out in time. */
  readonly #step: number;

  constructor(readonly o: IdleWatchOptions) {
    this.#step = o.ping ? Math.max(1, o.ms / PING_SHARE) : o.ms;
  }

  heard(): void {
    this.#heardAt = this.#messageAt = this.#readAt = performance.now();
    this.#read = this.o.bytesRead?.();
    this.#sentHeard = this.o.bytesSent?.() ?? 0;
    this.#pinged = false;
    // One timer, not one per message (a pull hears a frame per chunk): when it fires, it waits on from #heardAt.
    if (this.#timer === undefined) this.#arm(this.#step);
  }

  /** A pong came: the answer to our ping (an unasked one, or one while the timer is stopped, counts for nothing). */
  answered(): void {
    if (!this.#pinged || this.#timer === undefined) return;
    this.#pinged = false;
    this.#heardAt = performance.now();
    this.#sentHeard = this.#sentAtPing;
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
      if (alive) return this.#arm(this.#step);
    }
    const since = now - this.#heardAt;
    const sent = this.o.bytesSent?.() ?? 0;
    const base = !this.o.ping && this.o.waitLonger() ? Math.max(this.o.ms, STAT_WAIT_MS + 10_000) : this.o.ms;
    const longest = base + ((sent - this.#sentHeard) * 1000) / MIN_LIVE_RATE;
    // Pongs alone keep the peer PONGS_ONLY_WAITS idle waits at most (or while our bytes are still on their way).
    const quiet = now - this.#messageAt < Math.max(PONGS_ONLY_WAITS * this.o.ms, longest);
    if (since < longest && quiet) {
      if (!this.#pinged && since >= this.#step / 2) {
        this.#pinged = this.o.ping?.(longest - base >= this.o.ms) ?? false;
        this.#sentAtPing = sent;
      }
      return this.#arm(Math.max(1, Math.min(this.#step, longest - since)));
    }
    this.#timer = undefined;
    const why = quiet ? `no message${this.#pinged ? ' and no pong' : ''} for ${Math.round(since)} ms` : `no message for ${Math.round(now - this.#messageAt)} ms, only pongs`;
    this.o.onIdle(new CabError('ERR_IDLE_TIMEOUT', why));
  }
}
