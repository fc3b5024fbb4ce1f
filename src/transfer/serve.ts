import { CabError, isCabError } from '../errors.js';
import { bytesEqual, toHex } from '../hash/sha256.js';
import { checkBlobName } from '../format/layout.js';
import { overlapsDamage } from '../format/damage.js';
import { catchUpBlob } from '../index/catchup.js';
import type { BlobStore } from '../store.js';
import type { BlobReader } from '../blob/reader.js';
import { MAX_LIST, STAT_WAIT_MS, DATA_FRAME_BYTES, encodeDataFrame, type GetItem, type Message, type Perm, type WireChunk } from './messages.js';
import { receive } from './receive.js';
import type { RemoteSource } from './remote.js';
import { ByteBudget } from './budget.js';
import { SpareFrames } from './spare-frames.js';
import { DEFAULT_READERS, ReaderCache } from './reader-cache.js';
import type { WireCount } from './stats.js';
import { ServeAccount } from './serve-event.js';
import { ListDigest } from './list-digest.js';
import { answerRange } from './serve-range.js';
import { finePieces } from './fine.js';

export type { ServeEvent } from './serve-event.js';

/**
 * Bytes of `data` frames one connection may have read and not yet written
 * to its socket: a frame holds its bytes from before its reads until it has
 * left the process, so a peer that does not read holds at most this here.
 * Enough for reads to run ahead of the socket.
 */
export const SERVE_AHEAD_BYTES = 4 * 1024 * 1024;
/**
 * Bytes of frame buffers a connection keeps for reuse once written (fresh memory for every frame cost a garbage
 * collection every few MiB), each sized up to a multiple of FRAME_STEP. As much as may be ahead and some: with 2 MiB,
 * the frames of one burst of the socket did not all fit (58% of a full copy's were new). Dropped when idle.
 */
const [SPARE_BYTES, SPARE_IDLE_MS, FRAME_STEP] = [SERVE_AHEAD_BYTES + 1024 * 1024, 2000, DATA_FRAME_BYTES];

/** What answering needs from its connection. */
export interface ServeContext {
  store: BlobStore;
  role: 'server' | 'client';
  label: string;
  /** Bytes of `data` frames (and `fine` reads) in memory, maybe shared with other connections. */
  getBudget: ByteBudget;
  /** What the other end may do (binds a server; a client serves only what it pushes). */
  perms(): ReadonlySet<Perm>;
  send(m: Message): Promise<void>;
  /** Sends an encoded frame; `onWritten` once it has left the process or failed to (not if this rejects). */
  sendFrame(frame: Uint8Array, onWritten: () => void): Promise<void>;
  /** Why the connection is gone, if it is. */
  closedBy(): Error | undefined;
  /** The other end as a source of blobs (for a push it sends us). */
  source(): RemoteSource;
  /** The transport's count of frame bytes, for the ServeEvent. */
  wire?: WireCount;
}

type Request = Extract<Message, { t: 'stat' | 'list' | 'match' | 'fine' | 'get' | 'push' | 'range' }>;
/** Entries of a chunk list a `match` sums up between two turns of the event loop: other connections are served meanwhile. */
const MATCH_SLICE = 4096;

/**
 * Answers the other end's requests from the local store: stat, list, fine
 * and get, and (on a server) push, which receives the pushed blob with the
 * other end as the source. A client serves a server only the blobs it is
 * pushing. Every answer is bounded: list pages, and the bytes of `data`
 * frames read and not yet written (per connection, and over a server's).
 */
export class Serving {
  readonly #c: ServeContext;
  readonly #readers: ReaderCache;
  /** The get being answered: gets are answered one after another, in the order they came. */
  #getTurn: Promise<void> = Promise.resolve();
  /** Bytes of this connection's data frames read and not yet written. */
  readonly #ahead = new ByteBudget(SERVE_AHEAD_BYTES);
  /** Frame buffers written and free for the next frames. */
  readonly #spare: SpareFrames;
  /** Blobs this end pushes: the only ones a client serves. */
  readonly #pushing = new Map<string, number>();
  /** Pushes being received (server), by request id: a `cancel` aborts one. */
  readonly #receiving = new Map<number, AbortController>();
  /** What the other end did here, for a server's ServeEvent. */
  readonly account = new ServeAccount();
  /** Ends the `stat`s that wait (for a blob being written) when the connection goes. */
  readonly #gone = new AbortController();

  constructor(c: ServeContext) {
    this.#c = c;
    // Followers: a blob being written is served as far as its chunks are recorded, which grows.
    this.#readers = new ReaderCache(c.store, DEFAULT_READERS, true);
    this.#spare = new SpareFrames(c.getBudget, SPARE_BYTES, SPARE_IDLE_MS);
    if (c.wire) this.account.wire = c.wire;
  }

  /** Answers one request: its answer, or `err` with its id. */
  async answer(m: Request): Promise<void> {
    this.account.note(m);
    try {
      if (m.t === 'get') await this.#get(m);
      else if (m.t === 'range') this.account.bytesSent += await answerRange(this.#c, this.#readers, m, (name) => this.#listable(name, false));
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

  /** The connection is gone: close readers. Gets stop at their next frame; a push being received fails on its next request. */
  close(): void {
    this.#gone.abort();
    this.#spare.drop();
    void this.#readers.close();
  }

  #need(p: Perm): void {
    // A client serves a server only what it pushes (checked per request), so permissions bind servers.
    if (this.#c.role === 'server' && !this.#c.perms().has(p)) throw new CabError('ERR_PERMISSION', `this token has no ${p} permission`);
  }

  async #answer(m: Exclude<Request, { t: 'get' | 'range' }>): Promise<Message> {
    const { store } = this.#c;
    switch (m.t) {
      case 'stat': {
        this.#need('read');
        const name = this.#servable(m.name);
        // Fresh: an unfinalized blob grows. With `after`, a follower waits for its chunks to end past it.
        const follow = m.after !== undefined;
        const r = await store.newBlobReader(name, { follow });
        try {
          if (follow) await r.waitForChunks(m.after!, AbortSignal.any([this.#gone.signal, AbortSignal.timeout(STAT_WAIT_MS)])).catch((e: unknown) => {
            if (!isCabError(e, 'ERR_ABORTED')) throw e; // waited long enough: the answer is how the blob is now
          });
        } finally {
          await r.close();
        }
        return { t: 'statr', id: m.id, size: r.size, fin: r.isFinalized, ...(r.hash ? { hash: r.hash } : {}) };
      }
      case 'list': {
        const name = await this.#listable(m.name, m.from === 0, true);
        const c: WireChunk[] = [];
        for (const x of store.index.blobChunks(name, m.from)) {
          c.push([x.hash, x.size]);
          if (c.length === (m.max ?? MAX_LIST)) break;
        }
        const entry = store.index.blob(name);
        // Entries gone, or fewer than the blob has (a page short of its end): deleted since its reader opened, its
        // index entries going (remove.ts), or, rarer, rebuilt in another process (a heal). Not a list that ends
        // early, which the asker takes for a lie (ERR_PROTOCOL, the source dropped); its gets would find no chunk.
        if (!entry || (c.length < (m.max ?? MAX_LIST) && m.from + c.length < entry.n)) {
          throw new CabError('ERR_NO_SUCH_BLOB', `blob ${name} was deleted (or its index entries are being rebuilt)`, { blob: name });
        }
        return { t: 'listr', id: m.id, c, end: m.from + c.length >= entry.n };
      }
      case 'match': {
        // The first n entries of the list, summed up here: n entries read from the index, none sent.
        const name = await this.#listable(m.name, true);
        const d = new ListDigest();
        for (const x of store.index.blobChunks(name, 0)) {
          if (d.n === m.n) break;
          d.add(x.hash, x.size);
          if (d.n % MATCH_SLICE === 0) await new Promise((r) => setImmediate(r));
        }
        return { t: 'matchr', id: m.id, ok: d.n === m.n && bytesEqual(d.digest(), m.digest) };
      }
      case 'fine':
        return this.#fine(m);
      case 'push':
        return this.#receivePush(m);
    }
  }

  /** A `fine`: the fine chunks of a chunk held here (hash prefixes and sizes), for the asker to match its own bytes against. */
  async #fine(m: Extract<Message, { t: 'fine' }>): Promise<Message> {
    this.#need('read');
    // A chunk may be up to 4 MiB: its read counts against the same budget as gets, taken once the chunk is found
    // here with that size (a fine of a chunk not here, waiting its turn for 64 MiB, held up every get).
    const { r, at, release: letGo } = await this.#locate(m.hash, 0, m.size, m.size);
    try {
      const release = await this.#c.getBudget.take(m.size);
      try {
        // Read at once where the fragment is open, unchecked here as a get's items are (#locate passed over
        // recorded damage; the receiver checks what it builds from the answer).
        const bytes = Buffer.allocUnsafe(m.size); // every byte read, or the read throws
        await r.readUnchecked(bytes, at, true);
        return { t: 'finer', id: m.id, c: finePieces(bytes) };
      } finally {
        release();
      }
    } finally {
      letGo();
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
   * A `get`, answered as `data` frames of DATA_FRAME_BYTES (or one larger
   * item), the last marked `end`, each read from disk straight into the
   * frame. Gets are answered one after another in the order they came: the
   * receiver writes what lands in order, so nothing it holds waits for a
   * gap, and a cut costs it at most the frame in flight. A frame holds its
   * bytes, of this connection's SERVE_AHEAD_BYTES and of the shared budget,
   * from before its reads until it has left the process: memory is bounded
   * whatever the peer does, and reads run ahead of the socket by that much.
   */
  async #get(m: Extract<Message, { t: 'get' }>): Promise<void> {
    this.#need('read');
    const turn = this.#getTurn;
    let done!: () => void;
    this.#getTurn = new Promise<void>((r) => (done = r));
    try {
      await turn;
      const { items } = m;
      // Every item is found before anything is sent: a get naming a chunk not here, or a range outside one, is answered `err` alone.
      // Found once: each item is read where it was found (the readers are pinned), not looked up again.
      const found: Array<{ r: BlobReader; at: number }> = [];
      const releases: Array<() => void> = [];
      try {
        for (const [h, off, len] of items) {
          const f = await this.#locate(h, off, len);
          releases.push(f.release);
          found.push(f);
        }
        await this.#sendAll(m, found);
      } finally {
        for (const release of releases) release();
      }
    } finally {
      done();
    }
  }

  /** The frames of get `m`, each item read where `found` says. */
  async #sendAll(m: Extract<Message, { t: 'get' }>, found: Array<{ r: BlobReader; at: number }>): Promise<void> {
    const { items } = m;
    let i = 0;
    do {
      let j = i + 1;
      let bytes = items[i]?.[2] ?? 0;
      while (j < items.length && bytes + items[j]![2] <= DATA_FRAME_BYTES) bytes += items[j++]![2];
      j = Math.min(j, items.length);
      await this.#sendData(m.id, items.slice(i, j), found.slice(i, j), j === items.length, bytes);
      i = j;
    } while (i < items.length);
  }

  /** One `data` frame of a get: its bytes held, read in place, sent; given back once it has left. */
  async #sendData(id: number, items: GetItem[], found: Array<{ r: BlobReader; at: number }>, end: boolean, bytes: number): Promise<void> {
    const mine = await this.#ahead.take(bytes);
    const shared = await this.#c.getBudget.take(bytes);
    let buf: Buffer | undefined;
    const release = () => {
      shared();
      mine();
      if (buf && !this.#c.closedBy()) this.#spare.keep(buf);
      buf = undefined;
    };
    try {
      const closed = this.#c.closedBy();
      if (closed) throw closed;
      const alloc = (size: number) => (buf = this.#spare.take(size) ?? Buffer.allocUnsafeSlow(Math.ceil(size / FRAME_STEP) * FRAME_STEP));
      const { frame, at } = encodeDataFrame(id, items.map((it) => it[2]), end, alloc);
      // Every read ends before the frame's memory can go back (and be read into for another frame).
      // As they are on disk: the receiver checks every item against the hash it asked for (bytes hashed once on
      // their way, not also here), and #locate passed over recorded damage.
      // Read at once where the fragment is open (a frame is at most DATA_FRAME_BYTES, or one chunk): each
      // asynchronous read woke a thread-pool thread and waited for its callback, which cost the server's
      // thread more than the copy from the page cache.
      const reads = await Promise.allSettled(items.map(([, , len], k) => found[k]!.r.readUnchecked(frame.subarray(at[k]!, at[k]! + len), found[k]!.at, true)));
      for (const r of reads) if (r.status === 'rejected') throw r.reason;
      await this.#c.sendFrame(frame, release);
      this.account.bytesSent += bytes;
    } catch (e) {
      release();
      throw e;
    }
  }

  /**
   * A blob whose chunk list this end may serve: finalized (or, `open`, being
   * written: its chunks recorded so far), and servable. `catchUp`: the list
   * is read from its start, so the index is brought up to the descriptor
   * first (a commit that found the disk full leaves it behind); a blob
   * being written is always caught up (another process may be writing it).
   */
  async #listable(name: string, catchUp: boolean, open = false): Promise<string> {
    this.#need('read');
    this.#servable(name);
    const r = await this.#readers.get(name);
    const release = this.#readers.hold(r);
    try {
      // A cached reader may predate the final record; one that was open (a follower's) may have just seen it, and
      // the index may lag that record (the writer in another process commits it after): caught up too.
      const wasOpen = !r.isFinalized;
      if (wasOpen) await r.catchUp();
      if (!r.isFinalized && !open) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized`, { blob: name });
      // Nor may the index lag the reader: a reader another request caught up to the final record (a follower's,
      // shared through the cache) while the writer's index update, or that request's catch-up, is still to come.
      const entry = this.#c.store.index.blob(name);
      const behind = !entry || entry.s < r.size || (r.isFinalized && !entry.h);
      if (catchUp || wasOpen || behind) await catchUpBlob(this.#c.store.index, this.#c.store.layout, name);
      return name;
    } finally {
      release();
    }
  }

  /** A name this end may serve: any on a server; on a client, only a blob it is pushing. */
  #servable(name: string): string {
    checkBlobName(name);
    if (this.#c.role === 'client' && !this.#pushing.has(name)) throw new CabError('ERR_PERMISSION', `blob ${name} is not being pushed`, { blob: name });
    return name;
  }

  /** Where the chunk with this hash is held here: an open reader of a blob holding it (undamaged there), and the range's offset in it. */
  async #locate(hash: Uint8Array, off: number, len: number, size?: number): Promise<{ r: BlobReader; at: number; release: () => void }> {
    const { store } = this.#c;
    let gone = false;
    for (const loc of store.index.locations(hash)) {
      if (this.#c.role === 'client' && !this.#pushing.has(loc.blob)) continue;
      if ((size !== undefined && size !== loc.size) || off + len > loc.size) {
        throw new CabError('ERR_ILLEGAL_POSITION', `range ${off}+${len} is outside the chunk (${loc.size} bytes)`);
      }
      let r: BlobReader;
      try {
        r = await this.#readers.get(loc.blob);
      } catch (e) {
        // An index entry of a blob deleted (the next catch-up or GC removes it): look on.
        if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
        gone = true;
        continue;
      }
      const release = this.#readers.hold(r);
      try {
        // A blob being written: the chunk may have been recorded since its reader last looked.
        if (loc.offset + loc.size > r.size && !r.isFinalized) await r.catchUp();
      } catch (e) {
        release();
        throw e;
      }
      if (loc.offset + loc.size > r.size) gone = true;
      else if (!overlapsDamage(r.damage, loc.offset, loc.offset + loc.size)) return { r, at: loc.offset + off, release };
      release();
    }
    throw new CabError('ERR_NO_SUCH_CHUNK', gone ? 'the chunk is no longer there' : `no chunk ${toHex(hash)}`);
  }
}
