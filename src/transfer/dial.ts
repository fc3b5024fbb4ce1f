// A connection to a server opened before the store that will use it: the
// TCP connect, the WebSocket upgrade and the hello go out at once, and a
// stat can be asked, while the caller loads and opens its store; connect()
// then takes the connection over. This module is light (ws, the message
// codec and the handshake, no store code), so that a command line can dial
// before it loads the rest (issue 15).
import type { RawData } from 'ws';
import { WebSocket } from './ws-lib.js';
import { CabError, abortError, isCabError, throwIfAborted } from '../errors.js';
import { resolveStoreChunkerParams, type ChunkerParams } from '../chunker/params.js';
import { MAX_FRAME, decode, encode, type Message } from './messages.js';
import { checkBlobName } from '../format/layout.js';
import { checkPeer, helloFor } from './handshake.js';
import { remoteError } from './peer-types.js';
import { orAbort } from './abort.js';
import { checkDialArgs } from './connect-args.js';
import { remoteStat, type RemoteStat, type WireCount } from './stats.js';

/** How long a dial (or connect) waits for the upgrade and the welcome together. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** As DEFAULT_IDLE_MS (peer.ts), which this light module does not load: a stat unanswered this long fails. */
const DEFAULT_STAT_IDLE_MS = 120_000;

export interface ConnectOptions {
  /** The credential (a token the server knows). */
  token?: string;
  /** For wss:// with a private CA or a self-signed certificate. */
  ca?: string | Buffer;
  /** Largest frame accepted from the server. */
  maxFrame?: number;
  /** Give up connecting after this long, the WebSocket upgrade and the hello/welcome handshake together (default 10 s): ERR_CONNECTION. */
  timeoutMs?: number;
  /** Cancels the connect (the upgrade or the handshake): it rejects with ERR_ABORTED and leaves no socket open. Once connected, the signal plays no part. */
  signal?: AbortSignal;
  /** With requests outstanding, a server that sends nothing for this long is cut off: every waiting request (a pull, a stream, a remote read) fails with ERR_IDLE_TIMEOUT. While a push, get or follow stat is outstanding (its answer may rightly take long), the server is pinged and a pong will do. Data sent since the server was last heard (a push's chunks) adds its time at 1 KiB/s, until a pong to a ping sent behind it. Default DEFAULT_IDLE_MS (120 s). */
  idleTimeoutMs?: number;
}

export interface DialOptions extends ConnectOptions {
  /**
   * The chunker parameters the hello announces: those of the store that
   * will take the connection over (default: a new store's). connect() with
   * a store of other parameters closes this connection and connects again
   * (the server reads a client's chunks by them when it pushes).
   */
  chunker?: Partial<ChunkerParams>;
  /**
   * A blob this connection is opened to pull: its stat goes right behind
   * the hello, so that the answer is on its way while the store opens. A
   * pull of it (and `stat`) takes that answer instead of asking again, if
   * it found the blob finalized; else `stat` gives it once and the pull
   * asks again (see lasting).
   * (Its chunk list is not asked ahead: a pull of a blob the store already
   * has needs none, and the server's log would call it a pull.)
   */
  prefetch?: string;
}

type Welcome = Extract<Message, { t: 'welcome' }>;
type Waiter = { resolve: (m: Message) => void; reject: (e: Error) => void };

/** @internal What connect() takes over from a dial: the socket, welcomed, and the requests still unanswered. */
export interface Handover {
  ws: WebSocket;
  welcome: Welcome;
  chunker: ChunkerParams;
  count: WireCount;
  /** The first request id that is free. */
  nextId: number;
  pending: Map<number, Waiter>;
  /** The answer to a request sent ahead (`prefetch`), if `m` is one and it still holds (see lasting): each taken once. */
  early(m: Message): Promise<Message | undefined> | undefined;
  options: DialOptions;
}

/** A request sent ahead, as the answer to it is kept: a stat (not a follower's), by blob name. */
function earlyKey(m: Message): string | undefined {
  return m.t === 'stat' && m.after === undefined ? `stat ${m.name}` : undefined;
}

/**
 * Whether an answer asked ahead still holds when it is taken, maybe long
 * after: a finalized blob's stat (such a blob changes only by being
 * deleted, which the pull's next request finds). A blob unfinalized or
 * absent then may be finalized by now: its stat is asked again.
 */
const lasting = (a: Message): boolean => a.t === 'statr' && a.fin;

/**
 * A connection on its way to a server, or there, that no store has taken
 * yet (see dial). `ready` resolves once the server has welcomed it, or
 * rejects as connect() would (ERR_CONNECTION, ERR_AUTH, ERR_VERSION,
 * ERR_ABORTED, ...), the socket closed.
 */
export class Dial {
  readonly url: string;
  readonly ready: Promise<void>;
  readonly #ws: WebSocket;
  readonly #o: DialOptions;
  readonly #chunker: ChunkerParams;
  readonly #count: WireCount = { sent: 0, received: 0 };
  readonly #pending = new Map<number, Waiter>();
  /** Answers to the requests sent ahead (`prefetch`), by earlyKey: each taken once by the peer. */
  readonly #early = new Map<string, Promise<Message>>();
  #nextId = 1;
  #welcome: Welcome | undefined;
  #failed: CabError | undefined;
  #taken = false;
  #closing: Promise<void> | undefined;
  #idle: NodeJS.Timeout | undefined;
  readonly #closed: Promise<void>;
  #settle!: { resolve: () => void; reject: (e: CabError) => void };

  /** @internal Use dial(). */
  constructor(url: string, options: DialOptions) {
    this.url = url;
    this.#o = options;
    const p = resolveStoreChunkerParams(options.chunker);
    this.#chunker = { min: p.min, avg: p.avg, max: p.max };
    this.ready = new Promise<void>((resolve, reject) => (this.#settle = { resolve, reject }));
    this.ready.catch(() => {}); // a dial nobody waits for (its store failed to open) is no unhandled rejection
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const ws = new WebSocket(url, {
      maxPayload: options.maxFrame ?? MAX_FRAME,
      perMessageDeflate: false,
      // A zero mask: ws then neither masks what we send nor the server unmasks it, a pass over every
      // pushed byte on each side. Masking guards proxies against scripts in browsers; this is not one.
      generateMask: (mask: Buffer) => mask.fill(0),
      handshakeTimeout: timeoutMs,
      ...(options.ca ? { ca: options.ca } : {}),
    });
    this.#ws = ws;
    this.#closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    // An abort or the timeout ends the socket before the welcome; the close then says why.
    let why: CabError | undefined;
    const timer = setTimeout(() => {
      why = new CabError('ERR_CONNECTION', `cannot connect to ${url}: not connected (upgrade and welcome) within ${timeoutMs} ms`);
      ws.terminate();
    }, timeoutMs);
    const { signal } = options;
    const onAbort = () => {
      why = abortError(signal!, `connecting to ${url}`);
      ws.terminate();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    void this.ready.then(done, done);
    ws.on('open', () => {
      this.#send(helloFor(this.#chunker, options.token));
      // Right behind the hello, as the server reads it once it has welcomed us (PROTOCOL.md, "Roles and states").
      if (options.prefetch !== undefined) this.#ahead({ t: 'stat', id: 0, name: options.prefetch });
    });
    ws.on('message', this.#onMessage);
    ws.on('error', (e) => this.#fail(why ?? new CabError('ERR_CONNECTION', `cannot connect to ${url}: ${e.message}`, {}, { cause: e })));
    ws.on('close', (code, reason) =>
      this.#fail(why ?? new CabError('ERR_CONNECTION', `connection closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`, { found: code })),
    );
  }

  /** Frame payload bytes this connection has sent and received so far. */
  get wire(): Readonly<WireCount> {
    return this.#count;
  }

  /**
   * Size, finalized, and hash of a remote blob, asked on this connection
   * (sent once the server has welcomed it), with no store here: as
   * CabClient.stat. Once connect() has taken the dial, ask the client.
   */
  async stat(name: string, options?: { signal?: AbortSignal }): Promise<RemoteStat> {
    if (this.#taken) throw new CabError('ERR_BAD_ARGUMENT', `dial ${this.url}: taken by connect(); ask the client`);
    await orAbort(this.ready, options?.signal, name);
    if (this.#failed) throw this.#failed;
    const key = `stat ${name}`;
    const early = this.#early.get(key);
    // An answer asked ahead that may not hold for long is given once: a stat asked again (polling) asks the server.
    void early?.then((a) => lasting(a) || this.#early.delete(key), () => this.#early.delete(key));
    const r = await orAbort(early ?? this.#request({ t: 'stat', id: 0, name }), options?.signal, name);
    if (r.t !== 'statr') throw new CabError('ERR_PROTOCOL', `expected statr, got ${r.t}`);
    return remoteStat(r);
  }

  /** Closes the connection, unless connect() has taken it (then the client closes it); calling it again returns the same promise. */
  close(): Promise<void> {
    if (this.#taken) return Promise.resolve();
    this.#closing ??= (async () => {
      this.#fail(new CabError('ERR_CONNECTION', `dial ${this.url}: closed`));
      if (this.#ws.readyState === WebSocket.OPEN) {
        this.#ws.close(1000, 'bye');
        await Promise.race([this.#closed, new Promise((r) => setTimeout(r, 2000).unref())]);
      }
      this.#ws.terminate();
    })();
    return this.#closing;
  }

  /** `await using d = dial(...)`: close(). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * @internal For connect(): once welcomed, hands over the socket; this dial
   * stops listening to it and has no more part in it. Each dial is taken once.
   */
  async take(): Promise<Handover> {
    if (this.#taken) throw new CabError('ERR_BAD_ARGUMENT', `dial ${this.url}: already taken by connect()`);
    await this.ready;
    if (this.#failed) throw this.#failed;
    if (this.#taken) throw new CabError('ERR_BAD_ARGUMENT', `dial ${this.url}: already taken by connect()`);
    this.#taken = true;
    clearTimeout(this.#idle);
    this.#ws.removeAllListeners('message');
    this.#ws.removeAllListeners('error');
    this.#ws.removeAllListeners('close');
    this.#ws.on('error', () => {}); // the taker wires its own in this same turn
    const early = (m: Message) => {
      const key = earlyKey(m);
      const a = key === undefined ? undefined : this.#early.get(key);
      if (a) this.#early.delete(key!);
      return a?.then((r) => (lasting(r) ? r : undefined), () => undefined);
    };
    return { ws: this.#ws, welcome: this.#welcome!, chunker: this.#chunker, count: this.#count, nextId: this.#nextId, pending: this.#pending, early, options: this.#o };
  }

  /** Sends request `m` with the next id: its answer. */
  #request(m: Message): Promise<Message> {
    const id = this.#nextId++;
    const answer = new Promise<Message>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    answer.catch(() => {}); // awaited by whoever asked, if anyone still does
    this.#watch();
    this.#send({ ...m, id } as Message);
    return answer;
  }

  /** Sends request `m` ahead of a pull, its answer kept for it. */
  #ahead(m: Message): void {
    this.#early.set(earlyKey(m)!, this.#request(m));
  }

  #send(m: Message): void {
    const frame = encode(m);
    this.#count.sent += frame.length;
    this.#ws.send(frame, { binary: true }, () => {});
  }

  /** While stats are unanswered, a server silent for idleTimeoutMs fails them (and the dial), as a client's would. */
  #watch(): void {
    clearTimeout(this.#idle);
    if (this.#pending.size === 0) return;
    const ms = this.#o.idleTimeoutMs ?? DEFAULT_STAT_IDLE_MS;
    this.#idle = setTimeout(() => {
      this.#fail(new CabError('ERR_IDLE_TIMEOUT', `${this.url} sent nothing for ${ms} ms`));
      this.#ws.terminate();
    }, ms);
  }

  readonly #onMessage = (data: RawData, isBinary: boolean): void => {
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer);
    this.#count.received += buf.length;
    let m: Message;
    try {
      if (!isBinary) throw new CabError('ERR_PROTOCOL', 'a text frame');
      m = decode(buf);
    } catch (e) {
      return this.#broken(isCabError(e) ? e : new CabError('ERR_PROTOCOL', `an undecodable message: ${(e as Error).message}`));
    }
    if (m.t === 'err' && m.id === undefined) {
      this.#ws.close(1000, 'peer error');
      return this.#fail(remoteError(m));
    }
    if (m.t === 'welcome' && !this.#welcome) {
      try {
        checkPeer(m);
      } catch (e) {
        return this.#broken(e as CabError);
      }
      this.#welcome = m;
      return this.#settle.resolve();
    }
    const id = m.t === 'statr' || m.t === 'err' ? m.id : undefined;
    const p = id === undefined ? undefined : this.#pending.get(id);
    if (!this.#welcome || !p) return this.#broken(new CabError('ERR_PROTOCOL', `an unexpected ${m.t} ${this.#welcome ? 'after the welcome' : 'before the welcome'}`));
    this.#pending.delete(id!);
    this.#watch();
    if (m.t === 'err') p.reject(remoteError(m));
    else p.resolve(m);
  };

  /** A server that broke the protocol: told why, and hung up on. */
  #broken(e: CabError): void {
    this.#send({ t: 'err', code: e.code, msg: e.message });
    this.#ws.close(1008, e.code);
    setTimeout(() => this.#ws.terminate(), 1000).unref();
    this.#fail(e);
  }

  /** The connection is over (or being closed): whoever waits is told why, once. */
  #fail(e: CabError): void {
    if (this.#taken || this.#failed) return;
    this.#failed = e;
    clearTimeout(this.#idle);
    this.#settle.reject(e);
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }
}

/**
 * Starts connecting to a cabstore server before the local store is open:
 * the upgrade and the hello go out now, and `stat` may be asked meanwhile;
 * connect(store, dial) then takes the connection over (its options are the
 * dial's). Bad arguments throw ERR_BAD_ARGUMENT at once; a failed connection
 * rejects `ready`, `stat` and connect() with the error connect() would
 * give. Close a dial that no connect() takes (the store failed to open).
 */
export function dial(url: string, options: DialOptions = {}): Dial {
  checkDialArgs(url, options, 'dial');
  if (options.prefetch !== undefined) checkBlobName(options.prefetch);
  throwIfAborted(options.signal, `connecting to ${url}`);
  return new Dial(url, { ...options });
}
