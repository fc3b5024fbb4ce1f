import crypto from 'node:crypto';
import { CabError, ERROR_CODES, isCabError, type ErrorCode } from '../errors.js';
import { chunk as cdc } from '../chunker/fastcdc.js';
import { sha256 } from '../hash/sha256.js';
import { checkBlobName } from '../format/layout.js';
import { catchUpBlob } from '../index/catchup.js';
import type { BlobStore } from '../store.js';
import type { BlobReader } from '../blob/reader.js';
import {
  PROTOCOL_VERSION,
  MAX_FRAME,
  MAX_LIST,
  MAX_GET_BYTES,
  FINE_CHUNKER,
  decode,
  encode,
  type GetItem,
  type Message,
  type Perm,
  type WireChunk,
} from './messages.js';
import { receive, type ReceiveOptions, type RemoteSource, type TransferStats } from './receive.js';
import { ByteBudget } from './budget.js';
import type { AuthGate } from './admission.js';

/** What a session needs from a transport (a WebSocket, or anything that carries frames in order). */
export interface Transport {
  /**
   * Sends one frame. Resolves when the transport can take more (under its
   * high-water mark: backpressure), or, with `written`, only once this frame
   * has left the process (so that whoever holds its memory can let go).
   */
  send(frame: Uint8Array, options?: { written?: boolean }): Promise<void>;
  close(code: number, reason: string): void;
}


export const DEFAULT_MAX_REQUESTS = 64;
/** Room for a `data` answer's map, ids and per-item headers within a frame. */
const FRAME_OVERHEAD = 64 * 1024;
export const DEFAULT_IDLE_MS = 120_000;
/**
 * `get` requests served at once per connection. A get holds its place from
 * the first read until its answer has left the process, so a peer that does
 * not read holds at most this many answers here.
 */
export const SERVE_GETS_AT_ONCE = 4;

export interface PeerOptions {
  store: BlobStore;
  role: 'server' | 'client';
  /** Server: token -> permissions. */
  tokens?: Map<string, Perm[]>;
  /** Server: accept anyone, with read and write. Only by explicit choice. */
  insecure?: boolean;
  /** Server: asked before a token from this peer's address is checked, and told when one fails. */
  authGate?: AuthGate;
  /** Client: the credential to present. */
  token?: string;
  /** Requests a peer may have outstanding here before it is cut off (server). */
  maxRequests?: number;
  /** Close a connection that sends nothing for this long (server). */
  idleMs?: number;
  /** A name for the other side (signposts). */
  label?: string;
  /** The largest frame this end accepts (its transport's limit); it bounds the gets it sends. */
  maxFrame?: number;
  /**
   * Bytes of `get` answers being read or waiting to be written, shared with
   * other connections (a server's); a get waits for its bytes. Default: this
   * connection's own, room for the gets it serves at once.
   */
  getBudget?: ByteBudget;
}

interface Pending {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
}

/** Turns an `err` message into a CabError with the remote's code when it is one of ours. */
function remoteError(m: { code: string; msg: string }): CabError {
  const code = (Object.hasOwn(ERROR_CODES, m.code) ? m.code : 'ERR_REMOTE') as ErrorCode;
  return new CabError(code, `peer: ${m.msg}`, { remote: true, found: m.code });
}

/**
 * One end of a connection: sends requests and matches their answers by id,
 * and serves the other end's requests from the local store. Knows nothing
 * of the transport. Both ends can request (a push makes the server ask the
 * client for chunks), each numbering its own requests.
 *
 *   client: --hello--> server: checks version and token --welcome--> ready
 *   either: --stat/list/fine/get/push {id}--> other: --statr/listr/finer/data/done {id} | err {id}
 *   a broken peer: --err (no id)--> and the connection is closed
 */
export class Peer {
  readonly #o: PeerOptions;
  readonly #t: Transport;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #serving = 0;
  #getsServing = 0;
  readonly #getQueue: Array<() => void> = [];
  #perms: Set<Perm> = new Set();
  #ready: Promise<void>;
  #readyResolve!: () => void;
  #readyReject!: (e: Error) => void;
  #closed: Error | undefined;
  #idle: NodeJS.Timeout | undefined;
  /** Blobs this end currently pushes: the only ones it serves to a server. */
  readonly #pushing = new Map<string, number>();
  readonly #readers = new Map<string, Promise<BlobReader>>();
  #windowWaiters: Array<() => void> = [];
  #remoteMaxRequests = DEFAULT_MAX_REQUESTS;
  readonly #getBudget: ByteBudget;
  remoteChunker: { min: number; avg: number; max: number } | undefined;

  constructor(transport: Transport, options: PeerOptions) {
    this.#t = transport;
    this.#o = options;
    this.#getBudget = options.getBudget ?? new ByteBudget(SERVE_GETS_AT_ONCE * MAX_GET_BYTES);
    this.#ready = new Promise((res, rej) => {
      this.#readyResolve = res;
      this.#readyReject = rej;
    });
    this.#ready.catch(() => {});
    this.#touch();
  }

  get label(): string {
    return this.#o.label ?? 'peer';
  }

  /** Resolves once hello is answered with welcome (on a server: once welcome is sent); rejects if the connection ends first. */
  get ready(): Promise<void> {
    return this.#ready;
  }

  /** Hangs up on the peer, telling it why (an `err` without id). */
  fail(e: CabError): void {
    this.#fatal(e);
  }

  /** Client: sends hello and resolves on welcome. */
  async hello(): Promise<void> {
    const { chunker } = this.#o.store;
    await this.#send({ t: 'hello', v: PROTOCOL_VERSION, ...(this.#o.token ? { token: this.#o.token } : {}), chunker: { min: chunker.min, avg: chunker.avg, max: chunker.max }, hash: 'sha256' });
    await this.#ready;
  }

  #touch(): void {
    if (this.#o.role !== 'server') return;
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => this.#fatal(new CabError('ERR_IDLE_TIMEOUT', `no message for ${this.#o.idleMs ?? DEFAULT_IDLE_MS} ms`)), this.#o.idleMs ?? DEFAULT_IDLE_MS);
    this.#idle.unref();
  }

  async #send(m: Message, options?: { written?: boolean }): Promise<void> {
    if (this.#closed) throw this.#closed;
    await this.#t.send(encode(m), options);
  }

  /** A broken peer: tell it why, and hang up. */
  #fatal(e: CabError): void {
    if (this.#closed) return;
    void this.#t.send(encode({ t: 'err', code: e.code, msg: e.message })).catch(() => {});
    this.#t.close(e.code === 'ERR_IDLE_TIMEOUT' ? 1001 : 1008, e.code);
    this.closed(e);
  }

  /** The transport is gone: fail everything outstanding. */
  closed(e?: Error): void {
    if (this.#closed) return;
    this.#closed = e ?? new CabError('ERR_CONNECTION', 'the connection closed');
    if (!isCabError(this.#closed)) this.#closed = new CabError('ERR_CONNECTION', this.#closed.message, {}, { cause: e });
    clearTimeout(this.#idle);
    this.#readyReject(this.#closed);
    for (const p of this.#pending.values()) p.reject(this.#closed);
    this.#pending.clear();
    for (const w of this.#windowWaiters) w();
    this.#windowWaiters = [];
    for (const w of this.#getQueue.splice(0)) w();
    for (const r of this.#readers.values()) void r.then((x) => x.close()).catch(() => {});
    this.#readers.clear();
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
    void this.#dispatch(m);
  }

  async #dispatch(m: Message): Promise<void> {
    // Answers to our requests.
    if (m.t === 'welcome') {
      if (this.#o.role !== 'client') return this.#fatal(new CabError('ERR_PROTOCOL', 'welcome sent to a server'));
      this.#perms = new Set(m.perms);
      this.#remoteMaxRequests = Math.max(1, m.maxRequests);
      this.remoteChunker = m.chunker;
      if (m.v !== PROTOCOL_VERSION) return this.#fatal(new CabError('ERR_VERSION', `server speaks version ${m.v}`));
      this.#readyResolve();
      return;
    }
    if (m.t === 'err' && m.id === undefined) {
      const e = remoteError(m);
      this.#t.close(1000, 'peer error');
      this.closed(e);
      return;
    }
    if (m.t === 'statr' || m.t === 'listr' || m.t === 'finer' || m.t === 'data' || m.t === 'done' || m.t === 'err') {
      const p = this.#pending.get(m.id!);
      if (!p) return this.#fatal(new CabError('ERR_PROTOCOL', `an answer to unknown request ${m.id}`));
      this.#pending.delete(m.id!);
      this.#windowWaiters.shift()?.();
      if (m.t === 'err') p.reject(remoteError(m));
      else p.resolve(m);
      return;
    }
    // Requests.
    if (m.t === 'hello') return this.#onHello(m);
    if (this.#o.role === 'server' && this.#perms.size === 0) {
      return this.#fatal(new CabError('ERR_PROTOCOL', `${m.t} before hello`));
    }
    if (++this.#serving > (this.#o.maxRequests ?? DEFAULT_MAX_REQUESTS)) {
      return this.#fatal(new CabError('ERR_TOO_MANY_REQUESTS', `more than ${this.#o.maxRequests ?? DEFAULT_MAX_REQUESTS} requests outstanding`));
    }
    try {
      if (m.t === 'get') await this.#serveGet(m);
      else await this.#send(await this.#serve(m));
    } catch (e) {
      const err = isCabError(e) ? e : new CabError('ERR_REMOTE', (e as Error).message ?? String(e));
      await this.#send({ t: 'err', id: (m as { id: number }).id, code: err.code, msg: err.message }).catch(() => {});
    } finally {
      this.#serving--;
    }
  }

  #onHello(m: Extract<Message, { t: 'hello' }>): void {
    if (this.#o.role !== 'server') return this.#fatal(new CabError('ERR_PROTOCOL', 'hello sent to a client'));
    if (this.#perms.size > 0) return this.#fatal(new CabError('ERR_PROTOCOL', 'a second hello'));
    if (m.v !== PROTOCOL_VERSION) return this.#fatal(new CabError('ERR_VERSION', `this server speaks version ${PROTOCOL_VERSION}, not ${m.v}`));
    let perms: Perm[] | undefined;
    if (this.#o.insecure) perms = ['read', 'write'];
    else if (this.#o.authGate?.mayTry() === false) {
      // Refused unchecked, so that a guesser learns nothing, even with the right token.
      return this.#fatal(new CabError('ERR_AUTH_LIMIT', 'too many failed tokens from this address; try again later'));
    } else if (m.token !== undefined) perms = findToken(this.#o.tokens ?? new Map(), m.token);
    if (!perms) {
      this.#o.authGate?.failed();
      return this.#fatal(new CabError('ERR_AUTH', m.token === undefined ? 'this server needs a token' : 'unknown token'));
    }
    this.#perms = new Set(perms);
    this.remoteChunker = m.chunker;
    const { chunker } = this.#o.store;
    void this.#send({
      t: 'welcome',
      v: PROTOCOL_VERSION,
      chunker: { min: chunker.min, avg: chunker.avg, max: chunker.max },
      hash: 'sha256',
      perms,
      maxFrame: this.#o.maxFrame ?? MAX_FRAME,
      maxRequests: this.#o.maxRequests ?? DEFAULT_MAX_REQUESTS,
    })
      .then(() => this.#readyResolve())
      .catch(() => {});
  }

  #need(p: Perm): void {
    // A client serves a server only what it pushes (checked per request), so permissions bind servers.
    if (this.#o.role === 'server' && !this.#perms.has(p)) throw new CabError('ERR_PERMISSION', `this token has no ${p} permission`);
  }

  /** A request from the other end. */
  async #serve(m: Message): Promise<Message> {
    const { store } = this.#o;
    switch (m.t) {
      case 'stat': {
        this.#need('read');
        const name = this.#servable(m.name);
        const r = await this.#o.store.newBlobReader(name); // fresh: an unfinalized blob grows
        await r.close();
        return { t: 'statr', id: m.id, size: r.size, fin: r.isFinalized, ...(r.hash ? { hash: r.hash } : {}) };
      }
      case 'list': {
        this.#need('read');
        const name = this.#servable(m.name);
        const r = await this.#reader(name);
        if (!r.isFinalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized`, { blob: name });
        // The index may be behind its descriptor (a commit that found the disk full): bring it up first.
        if (m.from === 0) await catchUpBlob(store.index, store.layout, name);
        const c: WireChunk[] = [];
        for (const x of store.index.blobChunks(name, m.from)) {
          c.push([x.hash, x.size]);
          if (c.length === MAX_LIST) break;
        }
        const entry = store.index.blob(name);
        return { t: 'listr', id: m.id, c, end: !entry || m.from + c.length >= entry.n };
      }
      case 'fine': {
        this.#need('read');
        // A chunk may be up to 64 MiB: its read counts against the same budget as gets.
        const release = await this.#getBudget.take(m.size);
        try {
          const bytes = await this.#chunkBytes(m.hash, 0, m.size, m.size);
          const c: WireChunk[] = [];
          let off = 0;
          for (const size of cdc(bytes, FINE_CHUNKER)) {
            c.push([sha256(bytes.subarray(off, off + size)), size]);
            off += size;
          }
          return { t: 'finer', id: m.id, c };
        } finally {
          release();
        }
      }
      case 'push': {
        this.#need('write');
        checkBlobName(m.name);
        const stats = await receive(store, this.source(), m.name, { label: this.label, expect: { size: m.size, hash: m.hash } });
        return { t: 'done', id: m.id, received: stats.receivedBytes, reused: stats.reusedBytes };
      }
      default:
        throw new CabError('ERR_PROTOCOL', `${m.t} is not a request`);
    }
  }

  /**
   * A `get`: its place among the gets served at once here, and its bytes of
   * the budget, are held from before the reads until the answer has left
   * the process. Memory is bounded whatever the peer does.
   */
  async #serveGet(m: Extract<Message, { t: 'get' }>): Promise<void> {
    this.#need('read');
    await this.#getSlot();
    let release: (() => void) | undefined;
    try {
      release = await this.#getBudget.take(m.items.reduce((a, it) => a + it[2], 0));
      if (this.#closed) throw this.#closed;
      // The reads of one answer run together (at most 4 MiB in all).
      const items = await Promise.all(m.items.map(([h, off, len]) => this.#chunkBytes(h, off, len)));
      await this.#send({ t: 'data', id: m.id, items }, { written: true });
    } finally {
      release?.();
      this.#getsServing--;
      this.#getQueue.shift()?.();
    }
  }

  /** Waits for a place among the gets served at once; throws, holding none, if the connection closes meanwhile. */
  async #getSlot(): Promise<void> {
    while (this.#getsServing >= SERVE_GETS_AT_ONCE) {
      await new Promise<void>((r) => this.#getQueue.push(r));
      if (this.#closed) throw this.#closed;
    }
    this.#getsServing++;
  }

  /** A name this end may serve: any on a server; on a client, only a blob it is pushing. */
  #servable(name: string): string {
    checkBlobName(name);
    if (this.#o.role === 'client' && !this.#pushing.has(name)) throw new CabError('ERR_PERMISSION', `blob ${name} is not being pushed`, { blob: name });
    return name;
  }

  #reader(name: string): Promise<BlobReader> {
    let r = this.#readers.get(name);
    if (!r) {
      r = this.#o.store.newBlobReader(name);
      this.#readers.set(name, r);
      r.catch(() => this.#readers.delete(name));
      if (this.#readers.size > 16) {
        const [oldest, p] = this.#readers.entries().next().value as [string, Promise<BlobReader>];
        this.#readers.delete(oldest);
        void p.then((x) => x.close()).catch(() => {});
      }
    }
    return r;
  }

  /** Bytes [off, off + len) of the chunk with this hash, from a local blob holding it. */
  async #chunkBytes(hash: Uint8Array, off: number, len: number, size?: number): Promise<Uint8Array> {
    const { store } = this.#o;
    let loc;
    for (const l of store.index.locations(hash)) {
      if (this.#o.role === 'client' && !this.#pushing.has(l.blob)) continue;
      loc = l;
      break;
    }
    if (!loc) throw new CabError('ERR_NO_SUCH_CHUNK', `no chunk ${Buffer.from(hash).toString('hex')}`);
    if ((size !== undefined && size !== loc.size) || off + len > loc.size) {
      throw new CabError('ERR_ILLEGAL_POSITION', `range ${off}+${len} is outside the chunk (${loc.size} bytes)`);
    }
    const r = await this.#reader(loc.blob);
    const buf = new Uint8Array(len);
    let at = 0;
    while (at < len) {
      const n = await r.readAt(buf.subarray(at), loc.offset + off + at);
      if (n === 0) throw new CabError('ERR_NO_SUCH_CHUNK', 'the chunk is no longer there');
      at += n;
    }
    return buf;
  }

  /** Sends a request and resolves with its answer; waits while the peer's window is full. */
  async request<T extends Message['t']>(m: Message, expect: T): Promise<Extract<Message, { t: T }>> {
    await this.#ready;
    while (this.#pending.size >= this.#remoteMaxRequests && !this.#closed) await new Promise<void>((r) => this.#windowWaiters.push(r));
    if (this.#closed) throw this.#closed;
    const id = this.#nextId++;
    const answer = new Promise<Message>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    try {
      await this.#send({ ...m, id } as Message);
    } catch (e) {
      // Never sent: nothing will answer it, and closing must not reject it unobserved.
      this.#pending.delete(id);
      answer.catch(() => {});
      throw isCabError(e) ? e : new CabError('ERR_CONNECTION', (e as Error).message, {}, { cause: e });
    }
    const a = await answer;
    if (a.t !== expect) throw new CabError('ERR_PROTOCOL', `expected ${expect}, got ${a.t}`);
    return a as Extract<Message, { t: T }>;
  }

  /** The other end as a source of blobs for `receive`. */
  source(): RemoteSource {
    return {
      label: this.label,
      // An answer must fit in a frame this end accepts, with room for its framing.
      maxGetBytes: Math.max(64 * 1024, Math.min(MAX_GET_BYTES, (this.#o.maxFrame ?? MAX_FRAME) - FRAME_OVERHEAD)),
      stat: async (name) => {
        const r = await this.request({ t: 'stat', id: 0, name }, 'statr');
        return { size: r.size, finalized: r.fin, hash: r.hash };
      },
      list: async (name, from) => {
        const r = await this.request({ t: 'list', id: 0, name, from }, 'listr');
        return { chunks: r.c, end: r.end };
      },
      fine: async (hash, size) => (await this.request({ t: 'fine', id: 0, hash, size }, 'finer')).c,
      get: async (items: GetItem[]) => {
        const r = await this.request({ t: 'get', id: 0, items }, 'data');
        if (r.items.length !== items.length) throw new CabError('ERR_PROTOCOL', `asked for ${items.length} items, got ${r.items.length}`);
        return r.items;
      },
    };
  }

  /** Client: fetches a remote blob into the local store. */
  async pull(name: string, options: ReceiveOptions = {}): Promise<TransferStats> {
    checkBlobName(name);
    return receive(this.#o.store, this.source(), name, { label: this.label, ...options });
  }

  /** Client: sends a local finalized blob to the server, which fetches what it lacks. */
  async push(name: string, options: { signal?: AbortSignal } = {}): Promise<{ received: number; reused: number }> {
    checkBlobName(name);
    await this.#ready;
    if (!this.#perms.has('write')) throw new CabError('ERR_PERMISSION', 'this token has no write permission');
    const r = await this.#o.store.newBlobReader(name);
    try {
      if (!r.isFinalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized`, { blob: name });
      this.#pushing.set(name, (this.#pushing.get(name) ?? 0) + 1);
      const abort = () => this.#t.close(1000, 'push cancelled');
      options.signal?.addEventListener('abort', abort, { once: true });
      try {
        const done = await this.request({ t: 'push', id: 0, name, size: r.size, hash: r.hash! }, 'done');
        return { received: done.received, reused: done.reused };
      } finally {
        options.signal?.removeEventListener('abort', abort);
        const n = this.#pushing.get(name)! - 1;
        if (n === 0) this.#pushing.delete(name);
        else this.#pushing.set(name, n);
      }
    } finally {
      await r.close();
    }
  }
}

/** Compares a token with every known one in constant time (per token). */
function findToken(tokens: Map<string, Perm[]>, token: string): Perm[] | undefined {
  const want = crypto.createHash('sha256').update(token).digest();
  let found: Perm[] | undefined;
  for (const [t, perms] of tokens) {
    const have = crypto.createHash('sha256').update(t).digest();
    if (crypto.timingSafeEqual(want, have)) found = perms;
  }
  return found;
}

