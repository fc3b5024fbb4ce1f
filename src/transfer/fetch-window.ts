import { CabError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import type { BlobWriter } from '../blob/writer.js';
import type { ChunkRef } from '../store.js';
import { MAX_GET_ITEMS, type GetItem } from './messages.js';
import { getBytes, type Take } from './remote.js';
import type { TransferStats } from './stats.js';
import { abortError, throwIfAborted } from './abort.js';
import { recycledBuffer, RECYCLED_BYTES } from '../hash/pool.js';
import { isSourceFault, type SourceEntry, type SourceSet } from './sources.js';
import type { ChunkerParams } from '../chunker/params.js';
import { Lanes, SALVAGE_MS, STEAL_AFTER_MS, type Lane } from './lanes.js';
import { objectArray } from '../lists.js';

export { FETCH_WINDOW_BYTES } from './lanes.js';

/** Gets are at least this large (a quarter of the least in flight), unless a chunk alone is. */
const MIN_GET_BYTES = 256 * 1024;

/** One asking of a get's chunks not yet landed, of one source. Only the get's current ask lands; an earlier one's frames are dropped. */
interface Ask {
  g: Get;
  lane: Lane;
  sent: number;
  /** Bytes asked for, and those that have not arrived. */
  bytes: number;
  left: number;
  answered: boolean;
}

/**
 * One get: its chunks, in order, landing in one buffer of their total size,
 * which is written as one append once they are all there.
 */
interface Get {
  chunks: ChunkRef[];
  bytes: number;
  /** Chunks landed (checked and copied into `buf`), and their bytes. */
  got: number;
  at: number;
  buf: Buffer | undefined;
  /** Chunks written (a get written in part: what landed before a failure), and their bytes. */
  written: number;
  writtenBytes: number;
  /** The ask whose frames land; undefined while the rest waits for a source with room (new, or its source dropped). */
  ask: Ask | undefined;
  /** When it was asked, or last landed a frame. */
  moved: number;
}

/**
 * Whole chunks, streamed from the sources of a SourceSet: gathered into
 * gets of a quarter of what may be on its way (Pace: 2 MiB on a local link,
 * more over a long one; gets up to getBytes, 1 MiB), each get asked of a
 * source whose lane has room (Lanes: work stealing, so a faster source
 * takes more), and as many written or waiting to be as the window holds
 * (FETCH_WINDOW_BYTES, more with more sources). Each chunk is checked
 * against its hash as it lands, while its bytes are in the CPU's cache, and
 * copied into its get's buffer, so the frame is garbage at once (frames
 * kept for longer were promoted, and cost a full collection every few MiB);
 * a get's buffer, once full, is one append, handed to the hashing thread
 * without a copy. Gets are written in blob order.
 *
 * A source that fails (it closes, errs, or sends a chunk that fails its
 * check) is dropped from the set: its gets' chunks not yet landed are asked
 * of the others. A get at the head that its source is slow to answer while
 * another sits idle is asked of that one too (STEAL_AFTER_MS). When no
 * source is left, or the transfer is cancelled, everything that landed is
 * written before the error goes up, so the next run resumes after it.
 *
 *   fetch --> batch --(1 MiB)--> get --(a lane with room)--> asked --frames--> checked, copied --(get complete, in order)--> written
 *                                  ^---------(its source dropped: the rest)------'
 */
export class FetchWindow {
  #batch: ChunkRef[] = objectArray();
  #batchBytes = 0;
  /** Gets asked for (or waiting for a lane) and not wholly written, oldest first. */
  readonly #queue: Get[] = objectArray();
  /** Bytes asked for and not yet written. */
  #held = 0;
  /** Asks whose answer has not settled, on sources not dropped. */
  readonly #asks = new Set<Ask>();
  readonly #lanes: Lanes;
  /** Write what landed of a get not wholly landed too (salvaging: nothing more will land). */
  #flushing = false;
  /** The first failure that ends the fetch: no source left, a write, a cancel (then nothing more lands). */
  #failure: unknown;
  /** A write failed: nothing more is written. */
  #broken = false;
  /** Salvaging: nothing more is asked for. */
  #stopped = false;
  /** Waiting for room or for the end: a head get may be stolen. */
  #blocked = false;
  /** When #dispatch last looked (the wait looks again every STEAL_AFTER_MS / 4 while there is a source to steal for). */
  #looked = performance.now();
  #writing: Promise<void> | undefined;
  #waiters: Array<() => void> = objectArray();
  readonly #unlisten: () => void;
  /** The sources' chunker (a peer's, in its welcome): their chunks are claims the writer checks (appendVerified). */
  readonly #chunker: ChunkerParams | undefined;
  /** Check each chunk as it lands (see #land). */
  readonly #check: boolean;

  constructor(
    readonly set: SourceSet,
    readonly name: string,
    readonly w: BlobWriter,
    readonly stats: TransferStats,
    readonly signal: AbortSignal | undefined,
    readonly progress: () => void,
  ) {
    this.#lanes = new Lanes(set);
    this.#chunker = set.view.chunker;
    this.#check = !(set.solo && this.#chunker);
    const unlisten = set.listen((dropped) => {
      if (dropped) this.#orphan(dropped);
      this.#poke();
    });
    // One listener for the window's life rather than one per wait (#step waits once per frame landed).
    const onAbort = () => this.#poke();
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#unlisten = () => {
      unlisten();
      signal?.removeEventListener('abort', onAbort);
    };
  }

  /** The transfer is over: the window stops listening to the set and the signal. */
  close(): void {
    this.#unlisten();
  }

  /** Queues a chunk; asks for a batch once it is full. */
  async fetch(c: ChunkRef): Promise<void> {
    const most = Math.min(getBytes(this.set.view), Math.max(MIN_GET_BYTES, this.#lanes.limit / 4));
    // Within the peer's item limit too: tiny chunks (a peer that cuts elsewhere) fill a get's bytes only past it.
    if (this.#batch.length && (this.#batchBytes + c.size > most || this.#batch.length >= MAX_GET_ITEMS)) await this.#launch();
    this.#batch.push(c);
    this.#batchBytes += c.size;
  }

  /** Everything queued so far is fetched and written. */
  async drain(): Promise<void> {
    await this.#launch();
    this.#blocked = true;
    try {
      while (this.#queue.length > 0 || this.#writing) await this.#step();
    } finally {
      this.#blocked = false;
    }
    if (this.#failure !== undefined) await this.#fail();
    this.#lanes.paused();
  }

  /**
   * After the transfer failed or was cancelled: the asks still under way on
   * live sources land (paid for; on a dead connection they fail at once; if
   * cancelled, for SALVAGE_MS at most, not the 30 s stall of a slow source), then
   * everything that landed is written, so the next run need not fetch it.
   */
  async salvage(): Promise<void> {
    this.#stopped = true;
    const giveUp = () => ((this.#failure ??= abortError(this.signal!, this.name)), this.#poke());
    const timer = this.signal?.aborted ? setTimeout(giveUp, SALVAGE_MS) : undefined;
    while (this.#asks.size > 0 && this.#failure === undefined) await new Promise<void>((r) => this.#waiters.push(r));
    clearTimeout(timer);
    await this.#flush();
    this.#unlisten();
  }

  async #launch(): Promise<void> {
    throwIfAborted(this.signal, this.name);
    if (this.#batch.length === 0) return;
    // Room first: what was asked for before lands, and is written as it does; and every get before has a source.
    this.#blocked = true;
    try {
      while ((this.#held > 0 && this.#held + this.#batchBytes > this.#lanes.windowBytes) || this.#queue.some((g) => !g.ask && g.got < g.chunks.length)) {
        await this.#step();
      }
    } finally {
      this.#blocked = false;
    }
    const g: Get = { chunks: this.#batch, bytes: this.#batchBytes, got: 0, at: 0, buf: undefined, written: 0, writtenBytes: 0, ask: undefined, moved: 0 };
    this.#held += g.bytes;
    this.#batch = objectArray();
    this.#batchBytes = 0;
    this.#queue.push(g);
    this.#dispatch();
  }

  /** Asks a source for each get waiting for one (oldest first) while one has room; steals a slow head get for an idle source. */
  #dispatch(): void {
    if (this.#failure !== undefined || this.#stopped) return;
    for (const g of this.#queue) {
      if (g.ask || g.got === g.chunks.length) continue;
      const lane = this.#lanes.choose(g.bytes - g.at);
      if (!lane) break;
      this.#ask(g, lane);
    }
    const waiting = this.#queue.some((g) => !g.ask && g.got < g.chunks.length);
    if (waiting && this.#lanes.live.length === 0) {
      const none = this.set.noneLeft();
      if (none) this.#failure = none;
    }
    const head = this.#queue.find((g) => g.got < g.chunks.length);
    const now = performance.now();
    // This process was busy (a look came late): what arrived meanwhile is not read yet, so the head's wait starts again.
    const late = now - this.#looked > STEAL_AFTER_MS / 2;
    this.#looked = now;
    if (this.#blocked && head?.ask) {
      const rest = head.bytes - head.at;
      const idle = this.#lanes.idle(head.ask.lane, rest);
      if (late) head.moved = Math.max(head.moved, now);
      else if (idle && now - head.moved > Math.max(STEAL_AFTER_MS, 4 * idle.finish(rest))) this.#ask(head, idle);
    }
  }

  /** Asks `lane` for the chunks of `g` not yet landed: this ask's frames land from now on, an earlier one's are dropped. */
  #ask(g: Get, lane: Lane): void {
    const rest = g.bytes - g.at;
    const a: Ask = { g, lane, sent: performance.now(), bytes: rest, left: rest, answered: false };
    g.ask = a;
    g.moved = a.sent;
    lane.asked(rest);
    this.#asks.add(a);
    const items = g.chunks.slice(g.got).map((c): GetItem => [c.hash, 0, c.size]);
    const src = lane.entry.src;
    const take: Take = (got) => this.#land(a, got);
    take.place = (k, len) => this.#place(a, k, len);
    take.placing = () => this.#failure === undefined && !this.#flushing && g.ask === a;
    const answer = src.stream ? src.stream(items, take) : src.get(items).then(take);
    answer
      .then(() => {
        if (g.ask === a && g.got < g.chunks.length) throw new CabError('ERR_PROTOCOL', `${lane.entry.label} answered ${g.got} of ${g.chunks.length} chunks`, { blob: this.name });
      })
      .catch((e: unknown) => {
        if (g.ask !== a || !lane.live) return; // an ask given up on: its failure is nobody's
        if (isSourceFault(e)) this.set.drop(lane.entry, e);
        else this.#failure ??= e;
      })
      .finally(() => {
        // What never arrived is no longer on its way.
        lane.inFlight -= a.left;
        a.left = 0;
        this.#asks.delete(a);
        if (g.ask === a && g.got === g.chunks.length) {
          lane.pace.ended();
          lane.served(a.bytes, a.sent);
        }
        this.#poke();
      });
  }

  /** A dropped source: its gets' chunks not yet landed wait for another source. */
  #orphan(e: SourceEntry): void {
    for (const g of this.#queue) if (g.ask?.lane.entry === e) g.ask = undefined;
    for (const a of this.#asks) if (a.lane.entry === e) this.#asks.delete(a);
  }

  /** Where item `k` of the frame arriving for `a` is to be written (Take.place): its place in the get's buffer, if it is the chunk due there. */
  #place(a: Ask, k: number, len: number): Uint8Array | undefined {
    const g = a.g;
    if (this.#failure !== undefined || this.#flushing || g.ask !== a || g.got + k >= g.chunks.length || g.chunks[g.got + k]!.size !== len) return undefined;
    let at = g.at;
    for (let j = g.got; j < g.got + k; j++) at += g.chunks[j]!.size;
    g.buf ??= g.bytes <= RECYCLED_BYTES ? recycledBuffer(g.bytes) : Buffer.allocUnsafeSlow(g.bytes);
    return g.buf.subarray(at, at + len);
  }

  /** Frames of an ask arrived (called as they do, in order): each chunk checked (or, from a source alone, left to the writer), then copied into the get's buffer. */
  #land(a: Ask, items: Uint8Array[]): void {
    let n = 0;
    for (const b of items) n += b.length;
    this.stats.receivedBytes += n;
    const arrived = Math.min(n, a.left);
    a.left -= arrived;
    a.lane.inFlight -= arrived;
    const g = a.g;
    if (this.#failure !== undefined || g.ask !== a) return; // given up on, or asked of a faster source meanwhile
    const lane = a.lane;
    if (!a.answered) {
      a.answered = true;
      lane.pace.answered(performance.now() - a.sent);
    }
    if (g.got + items.length > g.chunks.length) return this.set.drop(lane.entry, new CabError('ERR_PROTOCOL', `${lane.entry.label} answered a get with more items than asked`, { blob: this.name }));
    const before = g.at;
    for (const bytes of items) {
      const c = g.chunks[g.got]!;
      // A source alone that names its chunker (a peer): the writer's hashing thread checks the hash (appendVerified), before the chunk counts.
      // Among many, each chunk is checked as it lands: the source that sent a bad one is dropped, and its work goes to the others.
      if (bytes.length !== c.size || (this.#check && !bytesEqual(sha256(bytes), c.hash))) {
        this.set.drop(lane.entry, new CabError('ERR_HASH_MISMATCH', `chunk ${toHex(c.hash)} from ${lane.entry.label} does not hash to what was asked for`, { blob: this.name }));
        break;
      }
      // Memory the hashing thread takes without a copy (and hands back for the next get, if recycled).
      g.buf ??= g.bytes <= RECYCLED_BYTES ? recycledBuffer(g.bytes) : Buffer.allocUnsafeSlow(g.bytes);
      if (bytes.buffer !== g.buf.buffer || bytes.byteOffset !== g.buf.byteOffset + g.at) g.buf.set(bytes, g.at); // not written in place
      g.at += bytes.length;
      g.got++;
      lane.entry.report.chunks++;
    }
    if (g.at > before) g.moved = performance.now();
    lane.pace.landed(g.at - before);
    if (this.#ready()) this.#kick();
    this.#poke();
  }

  /** Whether to write now: the oldest get has wholly landed, or (salvaging) some of it has. */
  #ready(): boolean {
    const g = this.#queue[0];
    return g !== undefined && (g.got === g.chunks.length || (this.#flushing && g.got > g.written));
  }

  #kick(): void {
    if (this.#writing || this.#broken) return;
    this.#writing = this.#write().finally(() => {
      this.#writing = undefined;
      if (this.#ready()) this.#kick();
      this.#poke();
    });
  }

  /** Writes what landed of the oldest get. */
  async #write(): Promise<void> {
    const g = this.#queue[0]!;
    const from = g.written;
    const to = g.got;
    if (to === g.chunks.length) this.#queue.shift();
    g.written = to;
    let off = g.writtenBytes;
    const start = off;
    const chunks = g.chunks.slice(from, to).map((c) => {
      const bytes = g.buf!.subarray(off, off + c.size);
      off += c.size;
      return { bytes, hash: c.hash };
    });
    g.writtenBytes = off;
    try {
      // A whole get's buffer goes to the hashing thread as it is (appendVerified takes it): g.buf is not touched again.
      // Chunks checked here (many sources) are cut as their source cut them and not checked again.
      // A short chunk is taken as cut only as the blob's last (stats.size): a peer cannot put tiny chunks into our index.
      await this.w.appendVerified(chunks, this.#chunker, this.#check, this.stats.size);
    } catch (e) {
      this.#failure ??= e;
      this.#broken = true;
      return;
    }
    this.stats.verifiedBytes += off - start;
    this.stats.chunksFetched += to - from;
    this.#held -= off - start;
    this.progress();
  }

  /**
   * Waits for something to land, a get to end, a write to end, a source to
   * come or go (or, while a head get may be stolen, a while); writes what is
   * ready. Throws (having salvaged) on a failure or an abort. Nothing is
   * awaited before the wait begins: a change in between would wake no one.
   */
  async #step(): Promise<void> {
    this.#dispatch();
    if (this.#failure !== undefined) await this.#fail();
    throwIfAborted(this.signal, this.name);
    if (this.#ready()) this.#kick();
    let timer: NodeJS.Timeout | undefined;
    const woken = new Promise<void>((r) => {
      this.#waiters.push(r);
      // A head get may become worth stealing with nothing else happening: look again in a while.
      if (this.#lanes.live.length > 1) timer = setTimeout(r, STEAL_AFTER_MS / 4);
    });
    // An abort wakes it too (the constructor's listener pokes).
    await woken;
    clearTimeout(timer);
    throwIfAborted(this.signal, this.name);
  }

  /** Throws the failure once what landed is written. */
  async #fail(): Promise<never> {
    await this.#flush();
    throw this.#failure;
  }

  /** Writes everything that landed (unless a write failed). */
  async #flush(): Promise<void> {
    this.#flushing = true;
    while (!this.#broken && (this.#writing || this.#ready())) {
      this.#kick();
      await this.#writing;
    }
  }

  /** Something changed: work goes to sources with room, and whoever waits looks again. */
  #poke(): void {
    this.#dispatch();
    const w = this.#waiters;
    this.#waiters = objectArray();
    for (const f of w) f();
  }
}
