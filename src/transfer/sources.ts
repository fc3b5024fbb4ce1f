import { setMaxListeners } from 'node:events';
import { CabError, isCabError, raceAbort, type ErrorCode } from '../errors.js';
import type { GetItem } from './messages.js';
import { getBytes, type RemoteSource, type Take } from './remote.js';
import { MAX_TIMER_MS, abortError } from './abort.js';
import { stillArriving } from './idle-watch.js';
import { objectArray } from '../lists.js';

/**
 * Failures that are the source's, not ours: a pull drops that source and
 * goes on with the others. Any error a peer sent (data.remote) is one too.
 * The rest (a local disk error, a cancel) stop the pull.
 */
const SOURCE_FAULTS = new Set<ErrorCode>([
  'ERR_CONNECTION',
  'ERR_PROTOCOL',
  'ERR_HASH_MISMATCH',
  'ERR_IDLE_TIMEOUT',
  'ERR_VERSION',
  'ERR_AUTH',
  'ERR_AUTH_LIMIT',
  'ERR_PERMISSION',
  'ERR_REMOTE',
  'ERR_TOO_MANY_REQUESTS',
]);

/** Whether `e` is a failure of the source that answered (or failed to), so that another source may do the work. */
export function isSourceFault(e: unknown): e is CabError {
  return isCabError(e) && (e.data.remote === true || SOURCE_FAULTS.has(e.code));
}

/** What one source did for a pull. */
export interface SourceReport {
  /** The source's name: its URL. */
  source: string;
  /** Chunk payload bytes it sent (those that failed their check, or came twice, included). */
  receivedBytes: number;
  /** Chunks it sent that passed their check (whole chunks, and chunks matched finely from its pieces). */
  chunks: number;
  /** Why it was dropped (a pull goes on without it), if it was: the error's code and message. */
  dropped?: { code: ErrorCode; message: string };
}

/**
 * One source of a pull as its SourceSet holds it. `src` is the source
 * wrapped: its calls count what arrives, and once the source is dropped they
 * fail at once (a call under way fails then too) with the reason.
 */
export class SourceEntry {
  readonly label: string;
  readonly src: RemoteSource;
  readonly report: SourceReport;
  /** Requests sent and not answered; when the last answer (or frame) came. */
  outstanding = 0;
  lastHeard = 0;
  /** The source's bytesRead when last looked at (undefined: it does not say). */
  lastBytes: number | undefined;
  readonly #gone = new AbortController();
  /** Why it was dropped. Read per frame: a field of our own, for an AbortSignal's map changes as it aborts, and the optimized readers of `signal.aborted` deopted in each new pull. */
  #why: CabError | undefined;

  constructor(
    raw: RemoteSource,
    readonly close: (() => Promise<void>) | undefined,
    /** The name of the token it was given, for the blob's signpost. */
    readonly tokenName: string | undefined,
  ) {
    this.label = raw.label;
    // Every call outstanding listens to it (bounded by the peer's request window): not a leak.
    setMaxListeners(0, this.#gone.signal);
    this.report = { source: raw.label, receivedBytes: 0, chunks: 0 };
    this.src = this.#wrap(raw);
  }

  get dropped(): CabError | undefined {
    return this.#why;
  }

  /** Marks it dropped for `why`; false if it was already. */
  drop(why: CabError): boolean {
    if (this.dropped) return false;
    this.report.dropped = { code: why.code, message: why.message };
    this.#why = why;
    this.#gone.abort(why);
    return true;
  }

  #heard(): void {
    this.lastHeard = performance.now();
  }

  #received(items: Uint8Array[]): void {
    for (const b of items) this.report.receivedBytes += b.length;
  }

  /** A call to the source: refused once dropped, counted while outstanding, and given up on when the source is dropped. */
  async #call<T>(f: () => Promise<T>): Promise<T> {
    if (this.dropped) throw this.dropped;
    if (this.outstanding++ === 0) this.#heard();
    try {
      const p = f();
      const v = await raceAbort(p, this.#gone.signal, () => {
        throw this.dropped!;
      });
      this.#heard();
      return v;
    } finally {
      this.outstanding--;
    }
  }

  #wrap(raw: RemoteSource): RemoteSource {
    const src: RemoteSource = {
      label: raw.label,
      ...(raw.maxGetBytes === undefined ? {} : { maxGetBytes: raw.maxGetBytes }),
      ...(raw.chunker === undefined ? {} : { chunker: raw.chunker }),
      ...(raw.bytesRead === undefined ? {} : { bytesRead: () => raw.bytesRead!() }),
      stat: (name, after) => this.#call(() => raw.stat(name, after)),
      list: (name, from, max) => this.#call(() => raw.list(name, from, max)),
      get: (items: GetItem[]) =>
        this.#call(async () => {
          const got = await raw.get(items);
          this.#received(got);
          return got;
        }),
    };
    if (raw.match) src.match = (name, n, digest) => this.#call(() => raw.match!(name, n, digest));
    if (raw.fine) src.fine = (hash, size) => this.#call(() => raw.fine!(hash, size));
    if (raw.stream) {
      src.stream = (items, take) => {
        const taking: Take = (got) => {
          if (this.dropped) return; // what a dropped source still sends is not taken
          this.#heard();
          this.#received(got);
          take(got);
        };
        if (take.place) {
          taking.place = (k, len) => (this.dropped ? undefined : take.place!(k, len));
          taking.placing = () => !this.dropped && take.placing!();
        }
        return this.#call(() => raw.stream!(items, taking));
      };
    }
    return src;
  }
}

/** A source that owes answers and sends nothing for this long is dropped. */
export const DEFAULT_STALL_MS = 30_000;

/** `stallMs` as given (undefined: none), else ERR_BAD_ARGUMENT: a whole number of milliseconds a timer holds. */
export function checkStallMs(ms: number | undefined, name: string): number | undefined {
  if (ms !== undefined && !(Number.isSafeInteger(ms) && ms > 0 && ms <= MAX_TIMER_MS)) {
    throw new CabError('ERR_BAD_ARGUMENT', `stallMs must be a whole number of milliseconds in 1..${MAX_TIMER_MS}, not ${String(ms)}`, { blob: name });
  }
  return ms;
}

export interface SourceSetOptions {
  /** Blob name, for errors. */
  name: string;
  signal?: AbortSignal | undefined;
  /** A source that owes answers and sends nothing for this long is dropped (ERR_IDLE_TIMEOUT). Default: never. */
  stallMs?: number | undefined;
  /** There will be one source only: nobody to hand its work to (see `solo`). */
  solo?: boolean;
}

/**
 * The sources of one pull: each answers any request about the blob (they
 * agreed on its root and chunker before they were added). A source whose
 * failure is its own (isSourceFault: it closed, timed out, or sent what
 * fails its check) is dropped, and the work goes to the others; the pull
 * fails only when none is left, with the last source's failure. A pull
 * from one peer or a bundle is a set of one.
 *
 *   added --(its failure, a stall, a bad byte)--> dropped
 *   sources still connecting are waited for before "none is left"
 */
export class SourceSet {
  readonly #entries: SourceEntry[] = objectArray();
  /** Sources never added (they failed to connect, or announced another root): reported, never used. */
  readonly #refused: SourceReport[] = objectArray();
  #pending = 0;
  #lastFailure: CabError | undefined;
  readonly #listeners = new Set<(e: SourceEntry | undefined) => void>();
  #waiters: Array<() => void> = objectArray();
  readonly #timer: NodeJS.Timeout | undefined;
  #checked = performance.now();
  #view: RemoteSource | undefined;
  #solo = false;
  #live: readonly SourceEntry[] | undefined;

  constructor(readonly o: SourceSetOptions) {
    this.#solo = o.solo === true;
    const stall = checkStallMs(o.stallMs, o.name);
    if (stall !== undefined) {
      const every = Math.max(10, Math.floor(stall / 4));
      this.#timer = setInterval(() => this.#checkStalls(stall, every), every);
      this.#timer.unref();
    }
  }

  /** A set of one source, which is never closed here, and never has another. */
  static of(src: RemoteSource, o: SourceSetOptions): SourceSet {
    const set = new SourceSet({ ...o, solo: true });
    set.add(src);
    return set;
  }

  /** One source, and never another (SourceSet.of, a fetchBlob from one): nobody to hand its work to. */
  get solo(): boolean {
    return this.#solo;
  }

  /** Adds a source; `close` ends its connection when it is dropped, or when the set closes. */
  add(src: RemoteSource, close?: () => Promise<void>, tokenName?: string): SourceEntry {
    const e = new SourceEntry(src, close, tokenName);
    this.#entries.push(e);
    this.#changed(undefined);
    return e;
  }

  /** A source that is still connecting: "none left" waits for it to be added or refused. */
  expect(p: Promise<unknown>): void {
    this.#pending++;
    void p.finally(() => {
      this.#pending--;
      this.#changed(undefined);
    });
  }

  /** A source that never joined, and why (reported among the sources). */
  refuse(label: string, why: CabError): void {
    this.#lastFailure = why;
    this.#refused.push({ source: label, receivedBytes: 0, chunks: 0, dropped: { code: why.code, message: why.message } });
  }

  /** The sources not dropped, in the order added: one array until the set changes (asked for on every landed frame). */
  get live(): readonly SourceEntry[] {
    return (this.#live ??= this.#entries.filter((e) => !e.dropped));
  }

  /** Sources still connecting. */
  get pending(): number {
    return this.#pending;
  }

  /** Every source, added or refused, with what it did. */
  reports(): SourceReport[] {
    return [...this.#entries.map((e) => ({ ...e.report })), ...this.#refused.map((r) => ({ ...r }))];
  }

  /** Called with a dropped source, or undefined when one is added or a pending one settles. */
  listen(f: (dropped: SourceEntry | undefined) => void): () => void {
    this.#listeners.add(f);
    return () => this.#listeners.delete(f);
  }

  /** Drops `e` for `why` (if it is a source fault; other failures are not the source's and are thrown back). */
  drop(e: SourceEntry, why: unknown): void {
    if (!isSourceFault(why)) throw why;
    if (!e.drop(why)) return;
    this.#lastFailure = why;
    void e.close?.().catch(() => {});
    this.#changed(e);
  }

  /** Undefined while a source is live or pending; else the failure that ends the pull (the last source's). */
  noneLeft(): CabError | undefined {
    if (this.#pending > 0 || this.#entries.some((e) => !e.dropped)) return undefined;
    return this.#lastFailure ?? new CabError('ERR_CONNECTION', `no source has blob ${this.o.name}`, { blob: this.o.name });
  }

  #changed(dropped: SourceEntry | undefined): void {
    this.#live = undefined;
    for (const f of this.#listeners) f(dropped);
    const w = this.#waiters;
    this.#waiters = objectArray();
    for (const f of w) f();
  }

  #checkStalls(ms: number, every: number): void {
    const now = performance.now();
    const late = now - this.#checked > 2 * every;
    this.#checked = now;
    for (const e of this.live) {
      // This process was busy (the check came late): what arrived meanwhile has not been read yet. The wait starts again.
      if (late) {
        e.lastHeard = Math.max(e.lastHeard, now);
        continue;
      }
      // Bytes still arriving, a frame not yet whole (one 4 MiB chunk on a slow link): not a stall, above a trickle.
      const read = e.src.bytesRead?.();
      if (read !== undefined) {
        const alive = e.lastBytes !== undefined && stillArriving(read - e.lastBytes, every);
        e.lastBytes = read;
        if (alive) {
          e.lastHeard = Math.max(e.lastHeard, now);
          continue;
        }
      }
      if (e.outstanding > 0 && now - e.lastHeard > ms) {
        this.drop(e, new CabError('ERR_IDLE_TIMEOUT', `${e.label} sent nothing for ${ms} ms with ${e.outstanding} requests waiting`, { blob: this.o.name }));
      }
    }
  }

  /**
   * The live source with the fewest requests outstanding (a fast source
   * clears them sooner, and so takes more), waiting for one still
   * connecting if none is live; the failure that ended the pull if none is left.
   */
  async pick(): Promise<SourceEntry> {
    for (;;) {
      if (this.o.signal?.aborted) throw abortError(this.o.signal, this.o.name);
      let best: SourceEntry | undefined;
      for (const e of this.#entries) if (!e.dropped && (!best || e.outstanding < best.outstanding)) best = e;
      if (best) return best;
      const none = this.noneLeft();
      if (none) throw none;
      await raceAbort(new Promise<void>((r) => this.#waiters.push(r)), this.o.signal, () => {
        throw abortError(this.o.signal!, this.o.name);
      });
    }
  }

  /** Runs `f` with a source; if it fails by that source's fault, drops it and runs `f` again with another. */
  async attempt<T>(f: (src: RemoteSource, e: SourceEntry) => Promise<T>): Promise<T> {
    for (;;) {
      const e = await this.pick();
      try {
        return await f(e.src, e);
      } catch (err) {
        // Not the source's fault: thrown back. A source dropped meanwhile fails its calls with the reason: another goes on.
        this.drop(e, err);
      }
    }
  }

  /** The set as one source: each call goes to one source, and to another if that one fails. */
  get view(): RemoteSource {
    if (this.#view) return this.#view;
    const srcs = this.#entries.map((e) => e.src);
    const first = srcs[0];
    if (!first) throw new CabError('ERR_BAD_ARGUMENT', 'a source set needs a source before it is used');
    const v: RemoteSource = {
      label: srcs.length === 1 ? first.label : `${srcs.length} sources`,
      maxGetBytes: Math.min(...srcs.map((s) => getBytes(s))),
      // Sources of one pull cut chunks alike (fetchBlob sees to it): the first's stands for all.
      ...(first.chunker === undefined ? {} : { chunker: first.chunker }),
      stat: (name, after) => this.attempt((s) => s.stat(name, after)),
      list: (name, from, max) => this.attempt((s) => s.list(name, from, max)),
      get: (items) => this.attempt((s) => s.get(items)),
    };
    if (first.match) v.match = (name, n, digest) => this.attempt((s) => s.match!(name, n, digest));
    if (first.fine) v.fine = (hash, size) => this.attempt((s) => s.fine!(hash, size));
    return (this.#view = v);
  }

  /** Stops watching for stalls and closes every source it may close. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await Promise.all(this.#entries.map((e) => e.close?.().catch(() => {})));
  }
}
