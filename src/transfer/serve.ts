import { CabError, isCabError, type ErrorCode } from '../errors.js';
import { chunk as cdc } from '../chunker/fastcdc.js';
import { sha256, toHex } from '../hash/sha256.js';
import { checkBlobName } from '../format/layout.js';
import { catchUpBlob } from '../index/catchup.js';
import type { BlobStore } from '../store.js';
import { MAX_LIST, FINE_CHUNKER, type Message, type Perm, type WireChunk } from './messages.js';
import { receive } from './receive.js';
import type { RemoteSource } from './remote.js';
import { ByteBudget } from './budget.js';
import { ReaderCache } from './reader-cache.js';

/**
 * `get` requests served at once per connection. A get holds its place from
 * the first read until its answer has left the process, so a peer that does
 * not read holds at most this many answers here.
 */
export const SERVE_GETS_AT_ONCE = 4;

/** What answering needs from its connection. */
export interface ServeContext {
  store: BlobStore;
  role: 'server' | 'client';
  label: string;
  /** Bytes of `get` (and `fine`) reads and answers in memory, maybe shared with other connections. */
  getBudget: ByteBudget;
  /** What the other end may do (binds a server; a client serves only what it pushes). */
  perms(): ReadonlySet<Perm>;
  send(m: Message, options?: { written?: boolean }): Promise<void>;
  /** Why the connection is gone, if it is. */
  closedBy(): Error | undefined;
  /** The other end as a source of blobs (for a push it sends us). */
  source(): RemoteSource;
}

type Request = Extract<Message, { t: 'stat' | 'list' | 'fine' | 'get' | 'push' }>;

/**
 * What one connection to a server did, told to `ServeOptions.onEvent` when
 * it ends. A client command (pull, push, stat) is one connection, so one
 * event; a program that keeps a connection for many transfers gets one
 * event for all of them.
 */
export interface ServeEvent {
  /** The other end, "address:port". */
  peer: string;
  /**
   * The most it did: 'push' (it sent a blob), 'pull' (it listed or read a
   * blob's chunks), 'stat' (it only asked about blobs: a pull of a blob it
   * already had is one stat), or 'connect' (no request: refused, or idle).
   */
  op: 'push' | 'pull' | 'stat' | 'connect';
  /** Blobs it named (stat, list, push), in order, the first 16. */
  blobs: string[];
  /** Chunk bytes sent to it (its pulls). */
  bytesSent: number;
  /** Chunk bytes received from it (its pushes). */
  bytesReceived: number;
  /** When it connected (ms since the epoch), and for how long, in ms. */
  start: number;
  ms: number;
  /**
   * Absent if all went well; else the code of the first request that
   * failed, or of why the connection ended (ERR_AUTH, ERR_IDLE_TIMEOUT,
   * ERR_PROTOCOL, ERR_CONNECTION if it dropped without closing).
   */
  error?: ErrorCode;
}

/** Blob names a ServeEvent keeps. */
const EVENT_BLOBS = 16;
const RANK = { connect: 0, stat: 1, pull: 2, push: 3 } as const;

/** The running account of one connection, for its ServeEvent. */
export class ServeAccount {
  readonly #start = Date.now();
  #op: ServeEvent['op'] = 'connect';
  readonly #blobs: string[] = [];
  #error: ErrorCode | undefined;
  bytesSent = 0;
  bytesReceived = 0;

  /** A request came: what it does, and the blob it names. */
  note(m: Request): void {
    const op = m.t === 'stat' ? 'stat' : m.t === 'push' ? 'push' : 'pull';
    if (RANK[op] > RANK[this.#op]) this.#op = op;
    if ('name' in m && typeof m.name === 'string' && this.#blobs.length < EVENT_BLOBS && !this.#blobs.includes(m.name)) this.#blobs.push(m.name);
  }

  /** A request failed: the first such code is the event's error. */
  failed(code: ErrorCode): void {
    this.#error ??= code;
  }

  /** The event, now that the connection is over; `ended` is why, if not a clean close. */
  event(peer: string, ended: CabError | undefined): ServeEvent {
    const error = this.#error ?? ended?.code;
    return { peer, op: this.#op, blobs: [...this.#blobs], bytesSent: this.bytesSent, bytesReceived: this.bytesReceived, start: this.#start, ms: Date.now() - this.#start, ...(error ? { error } : {}) };
  }
}

/**
 * Answers the other end's requests from the local store: stat, list, fine
 * and get, and (on a server) push, which receives the pushed blob with the
 * other end as the source. A client serves a server only the blobs it is
 * pushing. Every answer is bounded: list pages, get bytes (a budget held
 * until the answer is written), gets at once.
 */
export class Serving {
  readonly #c: ServeContext;
  readonly #readers: ReaderCache;
  #getsServing = 0;
  readonly #getQueue: Array<() => void> = [];
  /** Blobs this end pushes: the only ones a client serves. */
  readonly #pushing = new Map<string, number>();
  /** Pushes being received (server), by request id: a `cancel` aborts one. */
  readonly #receiving = new Map<number, AbortController>();
  /** What the other end did here, for a server's ServeEvent. */
  readonly account = new ServeAccount();

  constructor(c: ServeContext) {
    this.#c = c;
    this.#readers = new ReaderCache(c.store);
  }

  /** Answers one request: its answer, or `err` with its id. */
  async answer(m: Request): Promise<void> {
    this.account.note(m);
    try {
      if (m.t === 'get') await this.#get(m);
      else await this.#c.send(await this.#answer(m));
    } catch (e) {
      const err = isCabError(e) ? e : new CabError('ERR_REMOTE', (e as Error).message ?? String(e));
      this.account.failed(err.code);
      await this.#c.send({ t: 'err', id: m.id, code: err.code, msg: err.message }).catch(() => {});
    }
  }

  /** The other end gave up push `id`: stop receiving it (it is answered ERR_ABORTED). A finished or unknown id is ignored. */
  cancel(id: number): void {
    this.#receiving.get(id)?.abort(new CabError('ERR_ABORTED', 'the pusher cancelled'));
  }

  /** Client: serve blob `name` to the server until the matching `unpush`. */
  pushing(name: string): void {
    this.#pushing.set(name, (this.#pushing.get(name) ?? 0) + 1);
  }

  unpush(name: string): void {
    const n = (this.#pushing.get(name) ?? 1) - 1;
    if (n === 0) this.#pushing.delete(name);
    else this.#pushing.set(name, n);
  }

  /** The connection is gone: wake waiting gets (they fail), close readers. A push being received fails on its next request. */
  close(): void {
    for (const w of this.#getQueue.splice(0)) w();
    void this.#readers.close();
  }

  #need(p: Perm): void {
    // A client serves a server only what it pushes (checked per request), so permissions bind servers.
    if (this.#c.role === 'server' && !this.#c.perms().has(p)) throw new CabError('ERR_PERMISSION', `this token has no ${p} permission`);
  }

  async #answer(m: Exclude<Request, { t: 'get' }>): Promise<Message> {
    const { store } = this.#c;
    switch (m.t) {
      case 'stat': {
        this.#need('read');
        const name = this.#servable(m.name);
        const r = await store.newBlobReader(name); // fresh: an unfinalized blob grows
        await r.close();
        return { t: 'statr', id: m.id, size: r.size, fin: r.isFinalized, ...(r.hash ? { hash: r.hash } : {}) };
      }
      case 'list': {
        this.#need('read');
        const name = this.#servable(m.name);
        const r = await this.#readers.get(name);
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
        const release = await this.#c.getBudget.take(m.size);
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
      case 'push':
        return this.#receivePush(m);
    }
  }

  /** A push (server): receive the blob from the pusher; a `cancel` for its id ends it with ERR_ABORTED. */
  async #receivePush(m: Extract<Message, { t: 'push' }>): Promise<Message> {
    this.#need('write');
    if (this.#c.role !== 'server') throw new CabError('ERR_PROTOCOL', 'push sent to a client');
    checkBlobName(m.name);
    const ac = new AbortController();
    this.#receiving.set(m.id, ac);
    try {
      const stats = await receive(this.#c.store, this.#c.source(), m.name, { label: this.#c.label, expect: { size: m.size, hash: m.hash }, signal: ac.signal });
      this.account.bytesReceived += stats.receivedBytes;
      return { t: 'done', id: m.id, received: stats.receivedBytes, reused: stats.reusedBytes };
    } catch (e) {
      // Cancelled: whatever the receive was doing when it stopped, the answer is that it was cancelled.
      if (ac.signal.aborted) throw new CabError('ERR_ABORTED', `the push of ${m.name} was cancelled`, { blob: m.name }, { cause: e });
      throw e;
    } finally {
      this.#receiving.delete(m.id);
    }
  }

  /**
   * A `get`: its place among the gets served at once here, and its bytes of
   * the budget, are held from before the reads until the answer has left
   * the process. Memory is bounded whatever the peer does.
   */
  async #get(m: Extract<Message, { t: 'get' }>): Promise<void> {
    this.#need('read');
    await this.#getSlot();
    let release: (() => void) | undefined;
    try {
      release = await this.#c.getBudget.take(m.items.reduce((a, it) => a + it[2], 0));
      const closed = this.#c.closedBy();
      if (closed) throw closed;
      // The reads of one answer run together (at most 4 MiB in all).
      const items = await Promise.all(m.items.map(([h, off, len]) => this.#chunkBytes(h, off, len)));
      await this.#c.send({ t: 'data', id: m.id, items }, { written: true });
      this.account.bytesSent += items.reduce((a, b) => a + b.length, 0);
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
      const closed = this.#c.closedBy();
      if (closed) throw closed;
    }
    this.#getsServing++;
  }

  /** A name this end may serve: any on a server; on a client, only a blob it is pushing. */
  #servable(name: string): string {
    checkBlobName(name);
    if (this.#c.role === 'client' && !this.#pushing.has(name)) throw new CabError('ERR_PERMISSION', `blob ${name} is not being pushed`, { blob: name });
    return name;
  }

  /** Bytes [off, off + len) of the chunk with this hash, from a local blob holding it. */
  async #chunkBytes(hash: Uint8Array, off: number, len: number, size?: number): Promise<Uint8Array> {
    const { store } = this.#c;
    let loc;
    for (const l of store.index.locations(hash)) {
      if (this.#c.role === 'client' && !this.#pushing.has(l.blob)) continue;
      loc = l;
      break;
    }
    if (!loc) throw new CabError('ERR_NO_SUCH_CHUNK', `no chunk ${toHex(hash)}`);
    if ((size !== undefined && size !== loc.size) || off + len > loc.size) {
      throw new CabError('ERR_ILLEGAL_POSITION', `range ${off}+${len} is outside the chunk (${loc.size} bytes)`);
    }
    const r = await this.#readers.get(loc.blob);
    if (loc.offset + off + len > r.size) throw new CabError('ERR_NO_SUCH_CHUNK', 'the chunk is no longer there');
    const buf = new Uint8Array(len);
    await r.readFully(buf, loc.offset + off);
    return buf;
  }
}
