import { CabError, isCabError } from '../errors.js';
import { STORE_MAX_CHUNK, resolveStoreChunkerParams, type ChunkerParams } from '../chunker/params.js';
import { packr } from '../format/frame.js';

/**
 * The wire protocol, version 3: one MessagePack map per WebSocket binary
 * frame (or per bundle record). See docs/PROTOCOL.md. `decode` is pure and
 * bounded: it checks every field's type and size and throws
 * ERR_PROTOCOL naming the problem.
 *
 * Version 2 streams a `get`'s answer as `data` frames of about a chunk each
 * (version 1 sent one `data` of up to 4 MiB): a connection cut mid-answer
 * loses at most the frame in flight. Version 3 adds `match`: a resumed
 * transfer checks the chunks it holds against the sender's list with one
 * digest instead of reading that part of the list again. Version 4 adds
 * `range`: leaves of a finalized blob with the merkle proof that checks
 * them against its root (verified range reads from an untrusted peer).
 */
export const PROTOCOL_VERSION = 4;

/** Most 16 KiB leaves one `range` asks for (4 MiB: one frame, as a get). */
export const MAX_RANGE_LEAVES = 256;
/** Most proof nodes one `range` asks for: two per level of a tree over 2^40 leaves is 80. */
export const MAX_PROOF_NODES = 128;

/** Longest a `stat` with `after` waits before it answers (the client asks again): well inside the idle timeout. */
export const STAT_WAIT_MS = 20_000;
/** Most chunk references in one `list` answer. */
export const MAX_LIST = 4096;
/**
 * Chunk references a receiver asks for in its first `list` page; each next
 * page asks for twice as many, up to MAX_LIST. A connection cut every few
 * MiB then reads not much more of the list than it used.
 */
export const FIRST_LIST_PAGE = 128;
/** Most bytes asked for in one `get` (and so carried by one `data`). */
export const MAX_GET_BYTES = STORE_MAX_CHUNK; // a chunk, whole
/** Request ids and chunk numbers are below 2^32 (PROTOCOL.md): a chunk number is a u32 in the index's keys. */
export const MAX_U32 = 2 ** 32 - 1;
/** Most items in one `get`. */
export const MAX_GET_ITEMS = 4096;
/**
 * Bytes of a fine piece's SHA-256 that `finer` carries: a short name, to find
 * the piece among local bytes and check a fetched one. Every byte of a chunk
 * built from pieces is then checked against the chunk's whole SHA-256, so a
 * short name can make a transfer fail, never let a wrong byte in.
 */
export const FINE_HASH_BYTES = 8;

/** The fine chunker both ends use to match the bytes of a missing chunk against nearby local bytes (`fine`). */
export const FINE_CHUNKER = { min: 256, avg: 1024, max: 8192 } as const;
/**
 * A `data` frame carries the items of one `get` while they add up to at most
 * this many bytes, or one item if that alone is larger: what a cut can waste.
 */
export const DATA_FRAME_BYTES = 64 * 1024;
/** Default frame limit: the largest item a get may ask for, plus framing. */
export const MAX_FRAME = MAX_GET_BYTES + 64 * 1024;

export type Perm = 'read' | 'write';
/** [SHA-256, size] */
export type WireChunk = [Uint8Array, number];
/** [chunk SHA-256, offset in the chunk, length] */
export type GetItem = [Uint8Array, number, number];

export type Message =
  | { t: 'hello'; v: number; token?: string; chunker: ChunkerParams; hash: string }
  | { t: 'welcome'; v: number; chunker: ChunkerParams; hash: string; perms: Perm[]; maxFrame: number; maxRequests: number }
  /** `after`: answer once the blob's chunks end past this byte, it is finalized or deleted, or STAT_WAIT_MS have passed (a follower). */
  | { t: 'stat'; id: number; name: string; after?: number }
  | { t: 'statr'; id: number; size: number; fin: boolean; hash?: Uint8Array }
  /** `max`: at most this many chunks in the answer (default and at most MAX_LIST). */
  | { t: 'list'; id: number; name: string; from: number; max?: number }
  /** Are the blob's first `n` chunks the ones `digest` (listDigest) sums up? */
  | { t: 'match'; id: number; name: string; n: number; digest: Uint8Array }
  | { t: 'matchr'; id: number; ok: boolean }
  | { t: 'listr'; id: number; c: WireChunk[]; end: boolean }
  | { t: 'fine'; id: number; hash: Uint8Array; size: number }
  /** `c`: each fine piece's first FINE_HASH_BYTES of SHA-256, and its size. */
  | { t: 'finer'; id: number; c: WireChunk[] }
  | { t: 'get'; id: number; items: GetItem[] }
  | { t: 'data'; id: number; items: Uint8Array[]; end: boolean }
  /** Leaves [leaf, leaf + n) of a finalized blob, and the tree nodes `proof` names ([level, index]). */
  | { t: 'range'; id: number; name: string; leaf: number; n: number; proof: Array<[number, number]> }
  /** The leaves' bytes (the blob's last leaf may be short) and the hashes of the nodes asked for, in order. */
  | { t: 'ranger'; id: number; data: Uint8Array; proof: Uint8Array[] }
  | { t: 'push'; id: number; name: string; size: number; hash: Uint8Array }
  | { t: 'done'; id: number; received: number; reused: number }
  | { t: 'cancel'; id: number }
  | { t: 'err'; id?: number; code: string; msg: string };

export type MessageType = Message['t'];

export function encode(m: Message): Uint8Array {
  return packr.pack(m);
}

/**
 * A `data` frame with room for items of these lengths, encoded as `encode`
 * would (a map of t, id, end, items), its items' bytes left for the caller
 * to fill in place at `at[k]`: the server reads chunks from disk straight
 * into the frame it sends, with no copy in between. `alloc` gives the
 * memory (at least `size` bytes), by default a new buffer.
 */
export function encodeDataFrame(
  id: number,
  lengths: number[],
  end: boolean,
  alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
): { frame: Buffer; at: number[] } {
  const head: number[] = [0x84, 0xa1, 0x74, 0xa4, 0x64, 0x61, 0x74, 0x61, 0xa2, 0x69, 0x64];
  uint(head, id);
  head.push(0xa3, 0x65, 0x6e, 0x64, end ? 0xc3 : 0xc2, 0xa5, 0x69, 0x74, 0x65, 0x6d, 0x73);
  const n = lengths.length;
  if (n < 16) head.push(0x90 | n);
  else head.push(0xdc, n >>> 8, n & 0xff);
  let size = head.length;
  for (const len of lengths) size += binHeader(len) + len;
  const frame = alloc(size).subarray(0, size);
  frame.set(head);
  const at: number[] = [];
  let pos = head.length;
  for (const len of lengths) {
    const h = binHeader(len);
    if (h === 2) frame[pos] = 0xc4;
    else if (h === 3) frame[pos] = 0xc5;
    else frame[pos] = 0xc6;
    frame.writeUIntBE(len, pos + 1, h - 1);
    pos += h;
    at.push(pos);
    pos += len;
  }
  return { frame, at };
}

/** A MessagePack unsigned integer (below 2^32), in its shortest form. */
function uint(out: number[], x: number): void {
  if (x < 0x80) out.push(x);
  else if (x < 0x100) out.push(0xcc, x);
  else if (x < 0x10000) out.push(0xcd, x >>> 8, x & 0xff);
  else out.push(0xce, x >>> 24, (x >>> 16) & 0xff, (x >>> 8) & 0xff, x & 0xff);
}

/** Bytes of the MessagePack bin header for `len` bytes. */
function binHeader(len: number): number {
  return len < 0x100 ? 2 : len < 0x10000 ? 3 : 5;
}

function bad(why: string): CabError {
  return new CabError('ERR_PROTOCOL', why);
}

const isObj = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Uint8Array);
const count = (x: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number => {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0 || x > max) throw bad(`${what} is not an integer in 0..${max}`);
  return x;
};
const positive = (x: unknown, what: string, max: number): number => {
  if (count(x, what, max) === 0) throw bad(`${what} is not an integer in 1..${max}`);
  return x as number;
};
const str = (x: unknown, what: string, max = 1024): string => {
  if (typeof x !== 'string' || x.length > max) throw bad(`${what} is not a string of at most ${max} characters`);
  return x;
};
const hash = (x: unknown, what: string, bytes = 32): Uint8Array => {
  if (!(x instanceof Uint8Array) || x.length !== bytes) throw bad(`${what} is not a ${bytes}-byte hash`);
  return x;
};
const arr = (x: unknown, what: string, max: number): unknown[] => {
  if (!Array.isArray(x) || x.length > max) throw bad(`${what} is not an array of at most ${max} items`);
  return x;
};
const bool = (x: unknown, what: string): boolean => {
  if (typeof x !== 'boolean') throw bad(`${what} is not a boolean`);
  return x;
};
const chunks = (x: unknown, max: number, hashBytes = 32): WireChunk[] =>
  arr(x, 'c', max).map((c) => {
    const a = arr(c, 'a chunk', 2);
    const size = count(a[1], 'a chunk size', STORE_MAX_CHUNK);
    if (size === 0) throw bad('a chunk of size 0'); // no chunker cuts one
    return [hash(a[0], 'a chunk hash', hashBytes), size];
  });
/** Chunker params that a new store could have (resolveStoreChunkerParams' rules), else ERR_PROTOCOL. */
const params = (x: unknown): ChunkerParams => {
  if (!isObj(x)) throw bad('chunker is not a map');
  const p = { min: count(x.min, 'chunker.min'), avg: count(x.avg, 'chunker.avg'), max: count(x.max, 'chunker.max') };
  try {
    resolveStoreChunkerParams(p);
  } catch (e) {
    if (!isCabError(e, 'ERR_BAD_CHUNKER_PARAMS')) throw e;
    throw bad(`chunker: ${e.message}`);
  }
  return p;
};

/** Decodes and checks one frame. Throws ERR_PROTOCOL on anything malformed or unknown. */
export function decode(frame: Uint8Array): Message {
  let m: unknown;
  try {
    m = packr.unpack(frame);
  } catch {
    throw bad('the frame is not MessagePack');
  }
  if (!isObj(m)) throw bad('the message is not a map');
  const id = () => count(m.id, 'id', MAX_U32);
  switch (m.t) {
    case 'hello':
      return {
        t: 'hello',
        v: count(m.v, 'v'),
        ...(m.token === undefined ? {} : { token: str(m.token, 'token', 4096) }),
        chunker: params(m.chunker),
        hash: str(m.hash, 'hash', 32),
      };
    case 'welcome': {
      const perms = arr(m.perms, 'perms', 2).map((p) => {
        if (p !== 'read' && p !== 'write') throw bad(`unknown permission ${String(p)}`);
        return p;
      });
      return {
        t: 'welcome',
        v: count(m.v, 'v'),
        chunker: params(m.chunker),
        hash: str(m.hash, 'hash', 32),
        perms,
        maxFrame: count(m.maxFrame, 'maxFrame'),
        maxRequests: count(m.maxRequests, 'maxRequests'),
      };
    }
    case 'stat':
      return { t: 'stat', id: id(), name: str(m.name, 'name', 64), ...(m.after === undefined ? {} : { after: count(m.after, 'after') }) };
    case 'statr':
      return {
        t: 'statr',
        id: id(),
        size: count(m.size, 'size'),
        fin: bool(m.fin, 'fin'),
        ...(m.hash === undefined ? {} : { hash: hash(m.hash, 'hash') }),
      };
    case 'list':
      return {
        t: 'list',
        id: id(),
        name: str(m.name, 'name', 64),
        from: count(m.from, 'from', MAX_U32),
        ...(m.max === undefined ? {} : { max: positive(m.max, 'max', MAX_LIST) }),
      };
    case 'listr':
      return { t: 'listr', id: id(), c: chunks(m.c, MAX_LIST), end: bool(m.end, 'end') };
    case 'match':
      return { t: 'match', id: id(), name: str(m.name, 'name', 64), n: count(m.n, 'n', MAX_U32), digest: hash(m.digest, 'digest') };
    case 'matchr':
      return { t: 'matchr', id: id(), ok: bool(m.ok, 'ok') };
    case 'fine':
      return { t: 'fine', id: id(), hash: hash(m.hash, 'hash'), size: count(m.size, 'size', 64 * 1024 * 1024) };
    case 'finer': {
      // Pieces the fine chunker cuts: at most its max, at least its min but the last (a chunk shorter than min is one piece).
      const c = chunks(m.c, 1 << 16, FINE_HASH_BYTES);
      c.forEach(([, size], i) => {
        if (size > FINE_CHUNKER.max || (size < FINE_CHUNKER.min && i < c.length - 1)) throw bad(`a fine piece of ${size} bytes, which the fine chunker does not cut`);
      });
      return { t: 'finer', id: id(), c };
    }
    case 'get': {
      let total = 0;
      const items = arr(m.items, 'items', MAX_GET_ITEMS).map((it): GetItem => {
        const a = arr(it, 'an item', 3);
        const len = count(a[2], 'an item length', MAX_GET_BYTES);
        total += len;
        return [hash(a[0], 'an item hash'), count(a[1], 'an item offset', 64 * 1024 * 1024), len];
      });
      if (total > MAX_GET_BYTES) throw bad(`a get asks for ${total} bytes, more than ${MAX_GET_BYTES}`);
      return { t: 'get', id: id(), items };
    }
    case 'data':
      return {
        t: 'data',
        id: id(),
        items: arr(m.items, 'items', MAX_GET_ITEMS).map((b) => {
          if (!(b instanceof Uint8Array)) throw bad('a data item is not bytes');
          return b;
        }),
        end: bool(m.end, 'end'),
      };
    case 'range':
      return {
        t: 'range',
        id: id(),
        name: str(m.name, 'name', 64),
        leaf: count(m.leaf, 'leaf', 2 ** 40),
        n: positive(m.n, 'n', MAX_RANGE_LEAVES),
        proof: arr(m.proof, 'proof', MAX_PROOF_NODES).map((x) => {
          const a = arr(x, 'a proof node', 2);
          return [count(a[0], 'a proof level', 63), count(a[1], 'a proof index', 2 ** 40)];
        }),
      };
    case 'ranger': {
      if (!(m.data instanceof Uint8Array) || m.data.length > MAX_RANGE_LEAVES * 16384) throw bad(`data is not bytes of at most ${MAX_RANGE_LEAVES * 16384}`);
      return { t: 'ranger', id: id(), data: m.data, proof: arr(m.proof, 'proof', MAX_PROOF_NODES).map((h) => hash(h, 'a proof hash')) };
    }
    case 'push':
      return { t: 'push', id: id(), name: str(m.name, 'name', 64), size: count(m.size, 'size'), hash: hash(m.hash, 'hash') };
    case 'done':
      return { t: 'done', id: id(), received: count(m.received, 'received'), reused: count(m.reused, 'reused') };
    case 'cancel':
      return { t: 'cancel', id: id() };
    case 'err':
      return {
        t: 'err',
        ...(m.id === undefined ? {} : { id: id() }),
        code: str(m.code, 'code', 64),
        msg: str(m.msg, 'msg', 4096),
      };
    default:
      throw bad(`unknown message type ${typeof m.t === 'string' ? JSON.stringify(m.t.slice(0, 32)) : `of type ${typeof m.t}`}`);
  }
}
