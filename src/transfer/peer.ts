import { CabError, isCabError } from '../errors.js';
import { checkBlobName } from '../format/layout.js';
import { MAX_FRAME, MAX_GET_BYTES, decode, encode, type GetItem, type Message, type Perm } from './messages.js';
import { receive } from './receive.js';
import type { RemoteSource, Take } from './remote.js';
import { remoteStat, withHexJSON, type ReceiveOptions, type TransferStats } from './stats.js';
import { ByteBudget } from './budget.js';
import { abortError, orAbort, throwIfAborted } from './abort.js';
import { authenticate, checkPeer, welcomeFor } from './handshake.js';
import { Serving, SERVE_AHEAD_BYTES, type ServeEvent } from './serve.js';
import { remoteError, type PeerOptions, type PushOptions, type PushResult, type Transport } from './peer-types.js';
import { IdleWatch } from './idle-watch.js';

export type { Transport } from './peer-types.js';

export const DEFAULT_MAX_REQUESTS = 64;
/** Room for a `data` frame's map, id and per-item headers beside its largest item. */
const FRAME_OVERHEAD = 64 * 1024;
export const DEFAULT_IDLE_MS = 120_000;

export type { PeerOptions, PushOptions, PushResult } from './peer-types.js';

interface Pending {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  /** A request whose answer may rightly take long (see #slow). */
  slow: boolean;
  /** A get's: its items handed over frame by frame as they come, and how many are still to come. */
  take?: Take;
  items?: number;
}

const ANSWERS = new Set<Message['t']>(['statr', 'listr', 'matchr', 'finer', 'data', 'ranger', 'done', 'err']);

/**
 * One end of a connection: sends requests and matches their answers by id,
 * and hands the other end's requests to Serving. Knows nothing of the
 * transport. Both ends can request (a push makes the server ask the client
 * for chunks), each numbering its own requests.
 *
 *   client (its dial, dial.ts): --hello--> server: checks version, hash and token --welcome--> ready
 *   either: --stat/list/match/fine/get/push {id}--> other: --statr/listr/matchr/finer/data/done {id} | err {id}
 *   client: --cancel {id}--> server: stops receiving push id, answers err {id, ERR_ABORTED}
 *   a broken peer: --err (no id)--> and the connection is closed
 */
export class Peer {
  readonly #o: PeerOptions;
  readonly #t: Transport;
  readonly #serving: Serving;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #requestsServed = 0;
  #perms: Set<Perm> = new Set();
  #ready: Promise<void>;
  #readyResolve!: () => void;
  #readyReject!: (e: Error) => void;
  #closed: Error | undefined;
  readonly #idle: IdleWatch;
  #windowWaiters: Array<() => void> = [];
  #remoteMaxRequests = DEFAULT_MAX_REQUESTS;
  /** Follow stats (with `after`), which the server holds up to STAT_WAIT_MS: at most half the window, so other requests still go. */
  #parked: ByteBudget | undefined;
  /**
   * Requests outstanding whose answer may rightly take long: a push (the
   * server's work), a get (behind other connections' gets), a follow stat
   * (held). While there are some, a silent server is pinged, and its pong
   * will do; a quick question (stat, list, match, fine, range) owes its
   * answer within idleMs, pongs or not.
   */
  #slow = 0;
  remoteChunker: { min: number; avg: number; max: number } | undefined;

  constructor(transport: Transport, options: PeerOptions) {
    this.#t = transport;
    this.#o = options;
    this.#idle = new IdleWatch({
      ms: options.idleMs ?? DEFAULT_IDLE_MS,
      bytesRead: transport.bytesRead && (() => transport.bytesRead!()),
      bytesSent: transport.bytesSent && (() => transport.bytesSent!()),
      waitLonger: () => this.#requestsServed > 0 || (this.#parked !== undefined && this.#parked.free < this.#parked.total),
      onIdle: (e) => this.#fatal(e),
      // Pinged only while its silence is no fault: a server while it answers a slow request (#slow); a client while
      // this server answers one of its requests (it owes nothing then); either while our own bytes are on their way
      // to it (`ours`: a chunk on a slow link). An idle client still goes at idleMs.
      ...(transport.ping ? { ping: (ours: boolean) => (ours || (this.#o.role === 'server' ? this.#requestsServed > 0 : this.#slow > 0)) && transport.ping!() } : {}),
    });
    this.#serving = new Serving({
      store: options.store,
      role: options.role,
      label: this.label,
      getBudget: options.getBudget ?? new ByteBudget(SERVE_AHEAD_BYTES),
      perms: () => this.#perms,
      send: (m) => this.#send(m),
      sendFrame: (frame, onWritten) => this.#sendFrame(frame, onWritten),
      closedBy: () => this.#closed,
      source: () => this.source(),
      ...(options.wire ? { wire: options.wire } : {}),
    });
    this.#ready = new Promise((res, rej) => ((this.#readyResolve = res), (this.#readyReject = rej)));
    this.#ready.catch(() => {});
    // A client over a dial's connection (dial.ts): welcomed already, and its requests sent ahead are answered here.
    const w = options.welcomed;
    for (const [id, p] of w?.pending ?? []) this.#pending.set(id, { ...p, slow: false });
    this.#nextId = w?.nextId ?? 1;
    if (w) this.#onWelcome(w.welcome);
    this.#touch();
  }

  get label(): string {
    return this.#o.label ?? 'peer';
  }

  /** Resolves once hello is answered with welcome (on a server: once welcome is sent); rejects if the connection ends first. */
  get ready(): Promise<void> {
    return this.#ready;
  }

  /**
   * Server: what the other end did, once the connection is over. `clean`:
   * it closed normally, so a dropped connection is not the reason it ended.
   */
  serveEvent(clean: boolean): ServeEvent {
    const why = this.#closed;
    const ended = isCabError(why) && !(clean && why.code === 'ERR_CONNECTION') ? why : undefined;
    return this.#serving.account.event(this.label, ended);
  }

  /** Hangs up on the peer, telling it why (an `err` without id). */
  fail(e: CabError): void {
    this.#fatal(e);
  }

  #touch(): void {
    // A client waits only while it has asked: then an answer owes it a message every idleMs (a server that stopped
    // answering hung pulls, streams and remote reads for good).
    if (this.#o.role !== 'server' && this.#pending.size === 0) this.#idle.stop();
    else this.#idle.heard();
  }

  /** A request answered or never sent: a client with none left waits for nothing. */
  #settled(id: number): void {
    if (this.#pending.get(id)?.slow) this.#slow--;
    this.#pending.delete(id);
    if (this.#pending.size === 0 && this.#o.role !== 'server') this.#idle.stop();
  }

  async #send(m: Message): Promise<void> {
    if (this.#closed) throw this.#closed;
    await this.#t.send(encode(m));
  }

  /** An encoded frame (a `data` frame built in place); `onWritten` once it has left, or failed to (not if this rejects). */
  async #sendFrame(frame: Uint8Array, onWritten: () => void): Promise<void> {
    if (this.#closed) throw this.#closed;
    await this.#t.send(frame, { onWritten });
  }

  /** A broken peer: tell it why, and hang up (at once if it is silent: it would not answer the close either). */
  #fatal(e: CabError): void {
    if (this.#closed) return;
    void this.#t.send(encode({ t: 'err', code: e.code, msg: e.message })).catch(() => {});
    this.#t.close(e.code === 'ERR_IDLE_TIMEOUT' ? 1001 : 1008, e.code, e.code === 'ERR_IDLE_TIMEOUT');
    this.closed(e);
  }

  /** The transport is gone: fail everything outstanding. */
  closed(e?: Error): void {
    if (this.#closed) return;
    this.#closed = e ?? new CabError('ERR_CONNECTION', 'the connection closed');
    if (!isCabError(this.#closed)) this.#closed = new CabError('ERR_CONNECTION', this.#closed.message, {}, { cause: e });
    this.#idle.stop();
    this.#readyReject(this.#closed);
    for (const p of this.#pending.values()) p.reject(this.#closed);
    this.#pending.clear();
    this.#slow = 0;
    for (const w of this.#windowWaiters) w();
    this.#windowWaiters = [];
    this.#serving.close();
  }

  /** A pong arrived: if it answers our ping, the peer is there. */
  onPong(): void {
    this.#idle.answered();
  }

  /** A frame arrived. */
  onFrame(frame: Uint8Array): void {
    if (this.#closed) return;
    this.#touch();
    let m: Message;
    try {
      m = decode(frame);
    } catch (e) {
      this.#fatal(isCabError(e) ? e : new CabError('ERR_PROTOCOL', `an undecodable message: ${(e as Error).message}`));
      return;
    }
    if (m.t === 'welcome') return this.#onWelcome(m);
    if (m.t === 'hello') return this.#onHello(m);
    if (m.t === 'err' && m.id === undefined) {
      this.#t.close(1000, 'peer error');
      this.closed(remoteError(m));
      return;
    }
    // Answers are taken in this turn, with no promise of their own: a frame handed on at once is garbage young.
    if (ANSWERS.has(m.t)) return this.#onAnswer(m as Extract<Message, { id?: number }>);
    void this.#serve(m);
  }

  /** A `data` frame the transport took apart itself (FrameTap): as onFrame, decoded. */
  onData(id: number, items: Uint8Array[], end: boolean): void {
    if (this.#closed) return;
    this.#touch();
    this.#onAnswer({ t: 'data', id, items, end });
  }

  /** The taker of get `id`'s items, for the transport to write them in place (Take.place). */
  taker(id: number): Take | undefined {
    return this.#pending.get(id)?.take;
  }

  /** A request from the other end. */
  async #serve(m: Message): Promise<void> {
    if (this.#o.role === 'server' && this.#perms.size === 0) return this.#fatal(new CabError('ERR_PROTOCOL', `${m.t} before hello`));
    if (m.t === 'cancel') {
      if (this.#o.role !== 'server') return this.#fatal(new CabError('ERR_PROTOCOL', 'cancel sent to a client'));
      this.#serving.cancel(m.id);
      return;
    }
    if (++this.#requestsServed > (this.#o.maxRequests ?? DEFAULT_MAX_REQUESTS)) {
      return this.#fatal(new CabError('ERR_TOO_MANY_REQUESTS', `more than ${this.#o.maxRequests ?? DEFAULT_MAX_REQUESTS} requests outstanding`));
    }
    try {
      await this.#serving.answer(m as Parameters<Serving['answer']>[0]);
    } finally {
      this.#requestsServed--;
    }
  }

  #onAnswer(m: Extract<Message, { id?: number }>): void {
    const p = this.#pending.get(m.id!);
    if (!p) return this.#fatal(new CabError('ERR_PROTOCOL', `an answer to unknown request ${m.id}`));
    if (m.t === 'data' && p.take) {
      // A get's answer comes as frames, the last one marked `end`: their items, in order, are the ones asked for.
      const left = p.items! - m.items.length;
      if (left < 0 || m.end !== (left === 0)) {
        return this.#fatal(new CabError('ERR_PROTOCOL', `data frames for get ${m.id} do not add up to its ${p.items!} items`));
      }
      p.items = left;
      p.take(m.items);
      if (!m.end) return;
      // Its items went to `take`: the answer resolves without them, and so does not keep the frame alive.
      m = { t: 'data', id: m.id, items: [], end: true };
    }
    this.#settled(m.id!);
    this.#windowWaiters.shift()?.();
    if (m.t === 'err') p.reject(remoteError(m));
    else p.resolve(m);
  }

  #onWelcome(m: Extract<Message, { t: 'welcome' }>): void {
    if (this.#o.role !== 'client') return this.#fatal(new CabError('ERR_PROTOCOL', 'welcome sent to a server'));
    // The terms of a session are set once (a second welcome would swap its perms, chunker and window mid-way).
    if (this.remoteChunker !== undefined) return this.#fatal(new CabError('ERR_PROTOCOL', 'a second welcome'));
    try {
      checkPeer(m);
    } catch (e) {
      return this.#fatal(e as CabError);
    }
    this.#perms = new Set(m.perms);
    this.#remoteMaxRequests = Math.max(1, m.maxRequests);
    this.remoteChunker = m.chunker;
    this.#readyResolve();
  }

  #onHello(m: Extract<Message, { t: 'hello' }>): void {
    if (this.#o.role !== 'server') return this.#fatal(new CabError('ERR_PROTOCOL', 'hello sent to a client'));
    if (this.#perms.size > 0) return this.#fatal(new CabError('ERR_PROTOCOL', 'a second hello'));
    let perms: Perm[];
    try {
      checkPeer(m);
      perms = authenticate(this.#o, m.token);
    } catch (e) {
      return this.#fatal(e as CabError);
    }
    this.#perms = new Set(perms);
    this.remoteChunker = m.chunker;
    const limits = { maxFrame: this.#o.maxFrame ?? MAX_FRAME, maxRequests: this.#o.maxRequests ?? DEFAULT_MAX_REQUESTS };
    void this.#send(welcomeFor(this.#o.store.chunker, perms, limits))
      .then(() => this.#readyResolve())
      .catch(() => {});
  }

  /**
   * Sends a request and resolves with its answer; waits while the peer's
   * window is full. With a signal that fires first: rejects with
   * ERR_ABORTED and tells the peer (`cancel`); the late answer is dropped.
   * A `get` with `take`: its items go to `take` frame by frame as they
   * come, and it resolves with the last frame.
   */
  async request<T extends Message['t']>(m: Message, expect: T, signal?: AbortSignal, take?: Take): Promise<Extract<Message, { t: T }>> {
    // The answer to a request a dial sent ahead (dial.ts): taken once, instead of asking again, if it still holds.
    const early = this.#o.welcomed?.early(m);
    const a = (early && (await orAbort(early, signal))) || (await this.#ask(m, signal, take));
    if (a.t !== expect) throw new CabError('ERR_PROTOCOL', `expected ${expect}, got ${a.t}`);
    return a as Extract<Message, { t: T }>;
  }

  async #ask(m: Message, signal: AbortSignal | undefined, take: Take | undefined): Promise<Message> {
    await this.#ready;
    while (this.#pending.size >= this.#remoteMaxRequests && !this.#closed) await new Promise<void>((r) => this.#windowWaiters.push(r));
    if (this.#closed) throw this.#closed;
    throwIfAborted(signal);
    const id = this.#nextId++;
    const slow = m.t === 'push' || m.t === 'get' || (m.t === 'stat' && m.after !== undefined);
    const answer = new Promise<Message>((resolve, reject) =>
      this.#pending.set(id, { resolve, reject, slow, ...(m.t === 'get' && take ? { take, items: m.items.length } : {}) }),
    );
    if (slow) this.#slow++;
    answer.catch(() => {}); // awaited below, unless cancelled: then nobody waits for it
    if (this.#pending.size === 1 && this.#o.role !== 'server') this.#touch(); // the first outstanding: the wait starts
    try {
      await this.#send({ ...m, id } as Message);
    } catch (e) {
      // Never sent: nothing will answer it.
      this.#settled(id);
      throw isCabError(e) ? e : new CabError('ERR_CONNECTION', (e as Error).message, {}, { cause: e });
    }
    try {
      return await orAbort(answer, signal);
    } catch (e) {
      // The answer stays pending, so that it is matched (and dropped) when it comes.
      if (signal?.aborted && isCabError(e, 'ERR_ABORTED')) void this.#send({ t: 'cancel', id }).catch(() => {});
      throw e;
    }
  }

  /** The other end as a source of blobs for `receive`. */
  source(): RemoteSource {
    return {
      label: this.label,
      chunker: this.remoteChunker,
      // An answer must fit in a frame this end accepts, with room for its framing.
      maxGetBytes: Math.max(64 * 1024, Math.min(MAX_GET_BYTES, (this.#o.maxFrame ?? MAX_FRAME) - FRAME_OVERHEAD)),
      ...(this.#t.bytesRead ? { bytesRead: () => this.#t.bytesRead!() } : {}),
      stat: async (name, after) => {
        const parked = after === undefined ? undefined : await (this.#parked ??= new ByteBudget(Math.max(1, this.#remoteMaxRequests >> 1))).take(1);
        return remoteStat(await this.request({ t: 'stat', id: 0, name, ...(after === undefined ? {} : { after }) }, 'statr').finally(parked));
      },
      list: async (name, from, max) => {
        const r = await this.request({ t: 'list', id: 0, name, from, ...(max === undefined ? {} : { max }) }, 'listr');
        return { chunks: r.c, end: r.end };
      },
      match: async (name, n, digest) => (await this.request({ t: 'match', id: 0, name, n, digest }, 'matchr')).ok,
      fine: async (hash, size) => (await this.request({ t: 'fine', id: 0, hash, size }, 'finer')).c,
      get: async (items: GetItem[]) => {
        const out: Uint8Array[] = [];
        await this.request({ t: 'get', id: 0, items }, 'data', undefined, (got) => out.push(...got));
        return out;
      },
      stream: async (items: GetItem[], take: Take) => {
        await this.request({ t: 'get', id: 0, items }, 'data', undefined, take);
      },
    };
  }

  /** Client: fetches a remote blob into the local store. */
  async pull(name: string, options: ReceiveOptions = {}): Promise<TransferStats> {
    checkBlobName(name);
    throwIfAborted(options.signal, name);
    return receive(this.#o.store, this.source(), name, { label: this.label, ...options });
  }

  /** Client: sends a local finalized blob to the server, which fetches what it lacks. */
  async push(name: string, options: PushOptions = {}): Promise<PushResult> {
    checkBlobName(name);
    const { signal } = options;
    throwIfAborted(signal, name);
    await orAbort(this.#ready, signal, name);
    if (!this.#perms.has('write')) throw new CabError('ERR_PERMISSION', 'this token has no write permission');
    const r = await this.#o.store.newBlobReader(name);
    try {
      if (!r.isFinalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized`, { blob: name });
      this.#serving.pushing(name);
      try {
        const done = await this.request({ t: 'push', id: 0, name, size: r.size, hash: r.hash! }, 'done', signal);
        return withHexJSON({ name, hash: r.hash!, received: done.received, reused: done.reused });
      } catch (e) {
        if (signal?.aborted && isCabError(e, 'ERR_ABORTED')) throw abortError(signal, name);
        throw e;
      } finally {
        // Stop serving its chunks at once: a cancelled push's server gets ERR_PERMISSION until it sees the cancel.
        this.#serving.unpush(name);
      }
    } finally {
      await r.close();
    }
  }
}
