import { Readable } from 'node:stream';
import { CabError, abortError, isCabError } from '../errors.js';
import { LEAF_SIZE, sizeDoubt } from '../hash/merkle.js';
import { bytesEqual, hashArg, toHex } from '../hash/sha256.js';
import { leafCount, nodeKey, planProof, settle, treeDepth, verifyRange, type ProofPlan } from '../hash/proof.js';
import { HeldNodes } from './held-nodes.js';

export { MAX_HELD_NODES } from './held-nodes.js';
import { checkBlobName } from '../format/layout.js';
import { checkCount } from '../blob/input.js';
import { MAX_RANGE_LEAVES } from './messages.js';
import type { Peer } from './peer.js';
import { orAbort, throwIfAborted } from './abort.js';
import type { BlobStore } from '../store.js';
import { LocalCopy } from './local-copy.js';

/** Leaves one `range` asks for: 1 MiB of blob, verified as one piece. */
export const RANGE_LEAVES = 64;
/** `range` requests a stream (or a long read) keeps in flight ahead of its reader. */
export const RANGE_AHEAD = 8;

export interface OpenReaderOptions {
  /**
   * The blob's root as the application knows it, from a source it trusts
   * (32 bytes or 64 hex digits). A server announcing another root:
   * ERR_HASH_MISMATCH. Without it, the root the server announces is used:
   * that protects against accidents, not against a lying server.
   */
  hash?: Uint8Array | string;
  /**
   * The blob's size as the application knows it, with `hash`: a server
   * announcing another is ERR_HASH_MISMATCH. A root alone does not pin the
   * content (sizeDoubt): without a trusted size, a blob announced as 64
   * bytes is refused when `hash` is given.
   */
  size?: number;
  /** Stops waiting for the blob's size and root (ERR_ABORTED). */
  signal?: AbortSignal;
  /**
   * Read through into the local store: verified bytes that extend the
   * store's blob of the same name (new, or unfinalized: resumed from where
   * it ends) are appended to it, so a sequential read of the whole blob
   * leaves a full local copy, finalized once its root checks out. Bytes
   * read out of order are not kept. close() makes what was appended
   * durable; a later pull resumes it. The reader holds the blob's writer
   * until closed (ERR_BLOB_LOCKED for another); a blob held finalized with
   * another root: ERR_BLOB_EXISTS.
   */
  cache?: boolean;
}

export interface RemoteReaderStreamOptions {
  /** First byte (default 0). */
  start?: number;
  /** End, exclusive (default and at most the blob's size). */
  end?: number;
  /** Destroys the stream with ERR_ABORTED. */
  signal?: AbortSignal;
}

/** The keys of the nodes a plan's climb computes from its leaves, and of the uncles it asks for. */
function plannedKeys(plan: ProofPlan): number[] {
  const keys = plan.need.map(([level, index]) => nodeKey(level, index));
  let lo = plan.a;
  let hi = plan.b - 1;
  for (let level = 0; level < plan.stop; level++) {
    for (let i = lo; i <= hi; i++) keys.push(nodeKey(level, i));
    lo = Math.floor(lo / 2);
    hi = Math.floor(hi / 2);
  }
  return keys;
}

/**
 * A finalized blob on a server, read a range at a time without storing it:
 * only the 16 KiB leaves that cover what is read travel, each checked
 * against the blob's root (with the merkle proof the server sends beside
 * it) before any of its bytes is returned. Verified tree nodes are kept, so
 * the proof for a neighbouring range is not sent again.
 */
export class RemoteBlobReader {
  readonly name: string;
  readonly size: number;
  /** The root every byte is checked against. */
  readonly hash: Uint8Array;
  readonly #peer: Peer;
  readonly #leaves: number;
  readonly #perRequest: number;
  readonly #held: HeldNodes;
  /** What this reader fetched: `range` requests answered, blob bytes (whole leaves) and proof hashes received. */
  readonly fetched = { requests: 0, bytes: 0, proofHashes: 0 };
  #pos = 0;
  #closed = false;
  /** The last leaves fetched: small reads one after another take them from here. */
  #last: { a: number; data: Uint8Array } | undefined;
  /** With `cache`: the store's copy, filled as bytes are read in order. */
  readonly #copy: LocalCopy | undefined;

  private constructor(peer: Peer, name: string, size: number, hash: Uint8Array, maxGetBytes: number, copy: LocalCopy | undefined) {
    this.#peer = peer;
    this.#copy = copy;
    this.name = name;
    this.size = size;
    this.hash = hash;
    this.#leaves = leafCount(size);
    this.#perRequest = Math.max(1, Math.min(RANGE_LEAVES, MAX_RANGE_LEAVES, Math.floor(maxGetBytes / LEAF_SIZE)));
    this.#held = new HeldNodes(nodeKey(treeDepth(this.#leaves), 0), hash);
  }

  /** @internal Asks the server for the blob's size and root; ERR_BLOB_NOT_FINALIZED if it has no root yet, ERR_HASH_MISMATCH if it is not `options.hash`. `store`: where `cache` keeps a copy. */
  static async open(peer: Peer, name: string, options: OpenReaderOptions, store: BlobStore): Promise<RemoteBlobReader> {
    checkBlobName(name);
    const trusted = options.hash === undefined ? undefined : hashArg(options.hash, 'hash');
    if (options.size !== undefined) checkCount(options.size, 'size');
    throwIfAborted(options.signal, name);
    const source = peer.source();
    const st = await orAbort(source.stat(name), options.signal, name);
    if (!st.finalized || !st.hash) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized on ${peer.label}: it has no root to check against`, { blob: name });
    const doubt = announcedDoubt({ size: st.size, hash: st.hash }, trusted, options.size, peer.label, name);
    if (doubt) throw doubt;
    const root = trusted ?? st.hash;
    const copy = options.cache ? await LocalCopy.open(store, name, st.size, root) : undefined;
    return new RemoteBlobReader(peer, name, st.size, root, source.maxGetBytes ?? RANGE_LEAVES * LEAF_SIZE, copy);
  }

  #check(): void {
    if (this.#closed) throw new CabError('ERR_CLOSED', `remote reader of ${this.name} is closed`, { blob: this.name });
  }

  /** Leaves [a, b), if the last ones fetched cover them. */
  #kept(a: number, b: number): Uint8Array | undefined {
    const last = this.#last;
    if (!last || a < last.a || b > last.a + Math.ceil(last.data.length / LEAF_SIZE)) return undefined;
    return last.data.subarray((a - last.a) * LEAF_SIZE, Math.min(this.size, b * LEAF_SIZE) - last.a * LEAF_SIZE);
  }

  /** Leaves [a, b) (at most one request's), verified. */
  async #fetch(a: number, b: number, signal?: AbortSignal): Promise<Uint8Array> {
    const kept = this.#kept(a, b);
    if (kept) return kept;
    const plan = planProof(this.#leaves, a, b, (k) => this.#held.get(k));
    const keys = plannedKeys(plan);
    const verified = (async () => {
      const ans = await this.#peer.request({ t: 'range', id: 0, name: this.name, leaf: a, n: b - a, proof: plan.need }, 'ranger', signal);
      this.fetched.requests++;
      this.fetched.bytes += ans.data.length;
      this.fetched.proofHashes += ans.proof.length;
      await settle(plan);
      try {
        return { data: ans.data, nodes: verifyRange(plan, this.size, ans.data, ans.proof) };
      } catch (e) {
        if (!isCabError(e, 'ERR_HASH_MISMATCH')) throw e;
        throw new CabError('ERR_HASH_MISMATCH', `blob ${this.name} from ${this.#peer.label}: ${e.message}`, { blob: this.name, offset: a * LEAF_SIZE, expected: this.hash }, { cause: e });
      }
    })();
    this.#held.promise(keys, verified.then((v) => v.nodes));
    let nodes: Map<number, Uint8Array> | undefined;
    try {
      const v = await verified;
      nodes = v.nodes;
      this.#last = { a, data: v.data };
      return v.data;
    } finally {
      this.#held.settle(keys, nodes);
    }
  }

  /** The verified leaves covering bytes [start, end), one request's worth at a time, RANGE_AHEAD requests in flight; each with its first byte's offset. */
  async *#blocks(start: number, end: number, signal?: AbortSignal): AsyncGenerator<{ at: number; data: Uint8Array }> {
    const inflight: Array<Promise<{ at: number; data: Uint8Array }>> = [];
    let leaf = Math.floor(start / LEAF_SIZE);
    const stop = Math.ceil(end / LEAF_SIZE);
    try {
      while (leaf < stop || inflight.length > 0) {
        while (inflight.length < RANGE_AHEAD && leaf < stop) {
          const a = leaf;
          leaf = Math.min(stop, a + this.#perRequest);
          const p = this.#fetch(a, leaf, signal).then((data) => ({ at: a * LEAF_SIZE, data }));
          p.catch(() => {}); // awaited in turn; a reader that stops early must not leave it unhandled
          inflight.push(p);
        }
        this.#check();
        const b = await inflight.shift()!;
        await this.#copy?.add(b.at, b.data);
        yield b;
      }
    } finally {
      inflight.length = 0;
    }
  }

  #checkPosition(position: number): void {
    if (!Number.isSafeInteger(position) || position < 0) {
      throw new CabError('ERR_NEGATIVE_POSITION', `position ${position} is not a non-negative integer`, { blob: this.name, offset: position });
    }
    if (position > this.size) throw new CabError('ERR_ILLEGAL_POSITION', `position ${position} is past the end (${this.size})`, { blob: this.name, offset: position, expected: this.size });
  }

  /** Reads up to buf.length bytes at `position`, every one verified. Returns the count, 0 at the end; past the end: ERR_ILLEGAL_POSITION. */
  async readAt(buf: Uint8Array, position: number): Promise<number> {
    this.#check();
    this.#checkPosition(position);
    const end = position + Math.min(buf.length, this.size - position);
    for await (const { at, data } of this.#blocks(position, end)) {
      const from = Math.max(position, at);
      const to = Math.min(end, at + data.length);
      buf.set(data.subarray(from - at, to - at), from - position);
    }
    return end - position;
  }

  /** Reads from the seek position and advances it. A read fetches at least one request's worth (1 MiB), so that small reads one after another cost one round trip per MiB. */
  async read(buf: Uint8Array): Promise<number> {
    this.#check();
    const pos = this.#pos;
    const n = Math.min(buf.length, this.size - pos);
    const a = Math.floor(pos / LEAF_SIZE);
    const need = Math.ceil((pos + n) / LEAF_SIZE);
    const b = Math.min(this.#leaves, Math.max(need, a + this.#perRequest));
    if (n > 0 && b - a <= this.#perRequest) {
      let data = this.#kept(a, need);
      if (!data) {
        data = await this.#fetch(a, b);
        await this.#copy?.add(a * LEAF_SIZE, data);
      }
      buf.set(data.subarray(pos - a * LEAF_SIZE, pos - a * LEAF_SIZE + n));
    } else if (n > 0) await this.readAt(buf.subarray(0, n), pos);
    this.#pos = pos + n;
    return n;
  }

  /** Moves the read position: whence 0 from the start, 1 from here, 2 from the end. */
  seek(offset: number, whence: 0 | 1 | 2 = 0): number {
    this.#check();
    if (!Number.isSafeInteger(offset)) throw new CabError('ERR_NEGATIVE_POSITION', `offset ${offset} is not an integer`, { blob: this.name });
    if (whence !== 0 && whence !== 1 && whence !== 2) throw new CabError('ERR_BAD_WHENCE', `whence ${String(whence)} is not 0, 1 or 2`, { found: whence });
    const to = whence === 0 ? offset : whence === 1 ? this.#pos + offset : this.size + offset;
    if (to < 0) throw new CabError('ERR_NEGATIVE_POSITION', `seek to ${to}`, { blob: this.name, offset: to });
    this.#checkPosition(to);
    this.#pos = to;
    return to;
  }

  /** A Readable of bytes [start, end), verified, fetched RANGE_AHEAD requests ahead of its reader. Independent of the seek position. */
  stream(options: RemoteReaderStreamOptions = {}): Readable {
    this.#check();
    const start = options.start ?? 0;
    const asked = options.end ?? this.size;
    for (const [k, v] of [['start', start], ['end', asked]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new CabError('ERR_NEGATIVE_POSITION', `${k} ${String(v)} is not a non-negative integer`, { blob: this.name });
    }
    if (start > asked) throw new CabError('ERR_ILLEGAL_POSITION', `range [${start}, ${asked}) ends before it starts`, { blob: this.name, offset: start });
    const end = Math.min(asked, this.size);
    const { signal } = options;
    const self = this;
    const pieces = async function* (): AsyncGenerator<Buffer> {
      if (start >= end) return;
      for await (const { at, data } of self.#blocks(start, end, signal)) {
        const from = Math.max(start, at) - at;
        const to = Math.min(end, at + data.length) - at;
        yield Buffer.from(data.buffer, data.byteOffset + from, to - from);
      }
    };
    const stream = Readable.from(pieces(), { objectMode: false, highWaterMark: RANGE_LEAVES * LEAF_SIZE });
    if (signal) {
      const onAbort = () => stream.destroy(abortError(signal, `reading remote blob ${this.name}`, { blob: this.name }));
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener('abort', onAbort, { once: true });
        stream.once('close', () => signal.removeEventListener('abort', onAbort));
      }
    }
    return stream;
  }

  /** Forgets what it holds (with `cache`, makes the local copy durable and lets its writer go); the connection stays open. Calls after close: ERR_CLOSED. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#last = undefined;
    await this.#copy?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Why a source's announced size and root are not taken, or undefined: a
 * root other than the trusted one, a size other than the trusted one, or a
 * size the root cannot have (sizeDoubt).
 */
export function announcedDoubt(st: { size: number; hash: Uint8Array }, trusted: Uint8Array | undefined, size: number | undefined, label: string, name: string): CabError | undefined {
  const found = { root: toHex(st.hash), size: st.size };
  if (trusted && !bytesEqual(trusted, st.hash)) {
    return new CabError('ERR_HASH_MISMATCH', `${label} announces root ${toHex(st.hash)} for blob ${name}, not the trusted ${toHex(trusted)}`, { blob: name, expected: toHex(trusted), found });
  }
  if (size !== undefined && st.size !== size) {
    return new CabError('ERR_HASH_MISMATCH', `${label} announces ${st.size} bytes for blob ${name}, not the trusted ${size}`, { blob: name, expected: size, found });
  }
  const doubt = sizeDoubt(st.size, st.hash, size !== undefined || trusted === undefined);
  return doubt ? new CabError('ERR_HASH_MISMATCH', `${label} announces ${st.size} bytes for blob ${name}: ${doubt}`, { blob: name, found }) : undefined;
}
