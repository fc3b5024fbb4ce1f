import { CabError, isCabError } from '../errors.js';
import { resolveChunkerParams, type ChunkerParams } from '../chunker/params.js';
import { packr } from '../format/frame.js';

/**
 * The wire protocol, version 1: one MessagePack map per WebSocket binary
 * frame (or per bundle record). See docs/PROTOCOL.md. `decode` is pure and
 * bounded: it checks every field's type and size and throws
 * ERR_PROTOCOL naming the problem.
 */
export const PROTOCOL_VERSION = 1;

/** Most chunk references in one `list` answer. */
export const MAX_LIST = 4096;
/** Most bytes asked for in one `get` (and so carried by one `data`). */
export const MAX_GET_BYTES = 4 * 1024 * 1024;
/** Request ids and chunk numbers are below 2^32 (PROTOCOL.md): a chunk number is a u32 in the index's keys. */
export const MAX_U32 = 2 ** 32 - 1;
/** Most items in one `get`. */
export const MAX_GET_ITEMS = 4096;
/** The fine chunker both ends use to match the bytes of a missing chunk against nearby local bytes (`fine`). */
export const FINE_CHUNKER = { min: 256, avg: 1024, max: 8192 } as const;
/** Default frame limit: a full `data` answer plus framing. */
export const MAX_FRAME = MAX_GET_BYTES + 64 * 1024;

export type Perm = 'read' | 'write';
/** [SHA-256, size] */
export type WireChunk = [Uint8Array, number];
/** [chunk SHA-256, offset in the chunk, length] */
export type GetItem = [Uint8Array, number, number];

export type Message =
  | { t: 'hello'; v: number; token?: string; chunker: ChunkerParams; hash: string }
  | { t: 'welcome'; v: number; chunker: ChunkerParams; hash: string; perms: Perm[]; maxFrame: number; maxRequests: number }
  | { t: 'stat'; id: number; name: string }
  | { t: 'statr'; id: number; size: number; fin: boolean; hash?: Uint8Array }
  | { t: 'list'; id: number; name: string; from: number }
  | { t: 'listr'; id: number; c: WireChunk[]; end: boolean }
  | { t: 'fine'; id: number; hash: Uint8Array; size: number }
  | { t: 'finer'; id: number; c: WireChunk[] }
  | { t: 'get'; id: number; items: GetItem[] }
  | { t: 'data'; id: number; items: Uint8Array[] }
  | { t: 'push'; id: number; name: string; size: number; hash: Uint8Array }
  | { t: 'done'; id: number; received: number; reused: number }
  | { t: 'cancel'; id: number }
  | { t: 'err'; id?: number; code: string; msg: string };

export type MessageType = Message['t'];

export function encode(m: Message): Uint8Array {
  return packr.pack(m);
}

function bad(why: string): CabError {
  return new CabError('ERR_PROTOCOL', why);
}

const isObj = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Uint8Array);
const count = (x: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number => {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0 || x > max) throw bad(`${what} is not an integer in 0..${max}`);
  return x;
};
const str = (x: unknown, what: string, max = 1024): string => {
  if (typeof x !== 'string' || x.length > max) throw bad(`${what} is not a string of at most ${max} characters`);
  return x;
};
const hash = (x: unknown, what: string): Uint8Array => {
  if (!(x instanceof Uint8Array) || x.length !== 32) throw bad(`${what} is not a 32-byte hash`);
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
const chunks = (x: unknown, max: number): WireChunk[] =>
  arr(x, 'c', max).map((c) => {
    const a = arr(c, 'a chunk', 2);
    return [hash(a[0], 'a chunk hash'), count(a[1], 'a chunk size', 64 * 1024 * 1024)];
  });
/** Chunker params that a store could have (resolveChunkerParams' rules), else ERR_PROTOCOL. */
const params = (x: unknown): ChunkerParams => {
  if (!isObj(x)) throw bad('chunker is not a map');
  const p = { min: count(x.min, 'chunker.min'), avg: count(x.avg, 'chunker.avg'), max: count(x.max, 'chunker.max') };
  try {
    resolveChunkerParams(p);
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
      return { t: 'stat', id: id(), name: str(m.name, 'name', 64) };
    case 'statr':
      return {
        t: 'statr',
        id: id(),
        size: count(m.size, 'size'),
        fin: bool(m.fin, 'fin'),
        ...(m.hash === undefined ? {} : { hash: hash(m.hash, 'hash') }),
      };
    case 'list':
      return { t: 'list', id: id(), name: str(m.name, 'name', 64), from: count(m.from, 'from', MAX_U32) };
    case 'listr':
      return { t: 'listr', id: id(), c: chunks(m.c, MAX_LIST), end: bool(m.end, 'end') };
    case 'fine':
      return { t: 'fine', id: id(), hash: hash(m.hash, 'hash'), size: count(m.size, 'size', 64 * 1024 * 1024) };
    case 'finer':
      return { t: 'finer', id: id(), c: chunks(m.c, 1 << 16) };
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
      };
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
