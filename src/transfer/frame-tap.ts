import { CabError } from '../errors.js';
import { MAX_GET_ITEMS } from './messages.js';
import { objectArray } from '../lists.js';

/** What the tap hands on (a Peer, through wire()). */
export interface TapSink {
  /** A whole binary message the tap did not take apart. */
  frame(buf: Uint8Array): void;
  /** A `data` frame's items, each whole. */
  data(id: number, items: Uint8Array[], end: boolean): void;
  /** Where item `k` of the frame now arriving for request `id` (of `len` bytes) may be written, or undefined. */
  place(id: number, k: number, len: number): Uint8Array | undefined;
  /** Whether the places given for request `id` are still to be written. */
  placing(id: number): boolean;
  fault(e: CabError): void;
}

/** The ws internals the tap relies on; without them (another ws) it stays out of the way. */
interface WsReceiver {
  write(chunk: Buffer): boolean;
  _bufferedBytes: number;
  _state: number;
  _fragmented: number;
  _maxPayload: number;
  _isServer: boolean;
  destroyed?: boolean;
  writableEnded?: boolean;
  /** Set by ws the moment it refuses a frame (the receiver is destroyed only on the next tick). */
  _errored?: boolean;
  /** Node's Writable: set once a write has failed. */
  errored?: unknown;
}
interface WsInternals {
  readyState: number;
  OPEN: number;
  _closeFrameReceived?: boolean;
  _receiver?: WsReceiver;
  _socket?: { on(e: 'data', f: (b: Buffer) => void): void; listeners(e: 'data'): Array<(b: Buffer) => void>; removeListener(e: 'data', f: (b: Buffer) => void): void; pause(): void };
}

// The head of a `data` frame as encodeDataFrame writes it: {t: 'data', id: <uint>, end: <bool>, items: [bin...]}.
const T_DATA_ID = Buffer.from([0x84, 0xa1, 0x74, 0xa4, 0x64, 0x61, 0x74, 0x61, 0xa2, 0x69, 0x64]);
const END = Buffer.from([0xa3, 0x65, 0x6e, 0x64]);
const ITEMS = Buffer.from([0xa5, 0x69, 0x74, 0x65, 0x6d, 0x73]);
/** Longest head: the prefix, a u32 id, end, items and a 16-bit array count. */
const MAX_HEAD = T_DATA_ID.length + 5 + END.length + 1 + ITEMS.length + 3;

const enum S {
  /** Frames go to ws until its parser stands between two frames. */
  Pass,
  Header,
  /** A frame ws reads (control, text, fragmented, masked, too large, ...): its payload goes to ws as it comes. */
  Forward,
  /** The first bytes of a binary message: a `data` frame's head, or not. */
  Head,
  /** A binary message gathered whole for msgpack. */
  Whole,
  /** An item's bin header. */
  ItemHeader,
  ItemBody,
  /** The connection is closing: ws has stopped reading too. */
  Off,
}

/**
 * Reads the WebSocket frames of a ws connection itself, in place of ws's
 * parser, so that `data` frames (the bytes of a pull or push) are taken
 * apart as they arrive: each item is written straight to where its taker
 * wants it (TapSink.place: the fetch window's buffer), instead of ws
 * joining each frame from its socket reads into a new buffer and msgpack
 * handing views of that on to be copied again. Other binary messages are
 * gathered and go to `frame` (the same bytes ws would give); every frame it
 * does not own (control frames, text, fragments, masked with a key, over the
 * size limit, anything after a close) goes to ws's own parser unchanged, so
 * ws keeps its checks, limits and close handshake. A `data` frame whose
 * items do not add up to it is ERR_PROTOCOL, as decode() would say.
 */
export class FrameTap {
  #s = S.Pass;
  readonly #hdr = Buffer.alloc(MAX_HEAD);
  #have = 0;
  #need = 2;
  /** Payload bytes of the current frame not yet read. */
  #left = 0;
  /** The current message's payload length (counted once it is whole, as ws's messages are). */
  #len = 0;
  #whole: Buffer | undefined;
  #at = 0;
  #id = 0;
  #end = false;
  #count = 0;
  #items: Uint8Array[] = objectArray();
  /** The item being read: its length, and where it goes (a place, a buffer of its own, or, read whole in one socket read, undefined). */
  #itemLen = 0;
  #item: Uint8Array | undefined;
  #placed = false;
  readonly #onData = (b: Buffer) => this.#feed(b);
  /** The socket reads into one buffer, again and again (readIntoOne): nothing of it may be kept past #feed. */
  #transient = false;

  private constructor(
    readonly ws: WsInternals,
    readonly r: WsReceiver,
    readonly sink: TapSink,
    readonly counted: (n: number) => void,
  ) {}

  /** Puts a tap on `ws`'s socket in place of ws's reader; false (nothing done) if this ws does not look as expected. */
  static attach(ws: unknown, sink: TapSink, counted: (n: number) => void): boolean {
    const w = ws as WsInternals;
    const r = w._receiver;
    const socket = w._socket;
    if (!r || !socket || typeof r._bufferedBytes !== 'number' || typeof r._fragmented !== 'number' || typeof r._state !== 'number') return false;
    const theirs = socket.listeners('data').find((f) => f.name === 'socketOnData');
    if (!theirs) return false;
    const tap = new FrameTap(w, r, sink, counted);
    if (r._bufferedBytes === 0 && r._state === 0) tap.#frameStart();
    socket.removeListener('data', theirs);
    socket.on('data', tap.#onData);
    tap.#transient = readIntoOne(socket, (b) => tap.#feed(b));
    return true;
  }

  #feed(b: Buffer): void {
    let i = 0;
    const n = b.length;
    while (i < n) {
      switch (this.#s) {
        case S.Off:
          return;
        case S.Pass:
          this.#toWs(b.subarray(i));
          if (this.#s === S.Pass && this.r._bufferedBytes === 0 && this.r._state === 0) this.#frameStart();
          return;
        case S.Header: {
          const k = Math.min(this.#need - this.#have, n - i);
          b.copy(this.#hdr, this.#have, i, i + k);
          this.#have += k;
          i += k;
          if (this.#have === this.#need) this.#header();
          break;
        }
        case S.Forward: {
          const k = Math.min(this.#left, n - i);
          this.#left -= k;
          this.#toWs(b.subarray(i, i + k));
          i += k;
          if (this.#left === 0 && this.#s === S.Forward) this.#frameStart();
          break;
        }
        case S.Whole: {
          const k = Math.min(this.#left, n - i);
          if (!this.#whole && k === this.#left && !this.#transient) {
            this.#left = 0;
            this.#message(b.subarray(i, i + k));
          } else {
            this.#whole ??= Buffer.allocUnsafe(this.#left);
            b.copy(this.#whole, this.#at, i, i + k);
            this.#at += k;
            this.#left -= k;
            if (this.#left === 0) this.#message(this.#whole);
          }
          i += k;
          break;
        }
        case S.Head:
        case S.ItemHeader: {
          const k = Math.min(this.#need - this.#have, n - i);
          b.copy(this.#hdr, this.#have, i, i + k);
          this.#have += k;
          this.#left -= k;
          i += k;
          if (this.#have === this.#need) {
            if (this.#s === S.Head) this.#head();
            else this.#itemHeader();
          }
          break;
        }
        case S.ItemBody: {
          const len = this.#itemLen;
          const k = Math.min(len - this.#at, n - i);
          if (this.#at === 0 && k === len && !this.#item && !this.#transient) this.#items.push(b.subarray(i, i + k)); // whole in this read: a view of it
          else {
            // A place no longer wanted (its get given up on, or written): the rest goes to a buffer of its own, which its taker drops.
            if (this.#placed && (this.#item!.byteLength === 0 || !this.sink.placing(this.#id))) this.#item = undefined;
            this.#item ??= Buffer.allocUnsafe(len);
            this.#item.set(b.subarray(i, i + k), this.#at);
            if (this.#at + k === len) this.#items.push(this.#item);
          }
          this.#at += k;
          this.#left -= k;
          i += k;
          if (this.#at === len) this.#nextItem();
          break;
        }
      }
    }
  }

  /** Whether ws still reads the socket: not once its parser failed or the peer's close frame came (ws then lets go of the socket's data, and so does this). */
  #reading(): boolean {
    const r = this.r;
    return !r.destroyed && !r.writableEnded && !r._errored && !r.errored && !this.ws._closeFrameReceived;
  }

  #toWs(b: Buffer): void {
    // ws resumes the socket on its receiver's drain.
    // ws keeps what it is given until its frame is whole: a copy, if the socket's buffer is read into again.
    if (this.#reading() && !this.r.write(this.#transient ? Buffer.from(b) : b) && this.#reading()) this.ws._socket?.pause();
    if (!this.#reading()) this.#s = S.Off;
  }

  #frameStart(): void {
    this.#s = S.Header;
    this.#have = 0;
    this.#need = 2;
  }

  #header(): void {
    const h = this.#hdr;
    const len7 = h[1]! & 0x7f;
    const masked = (h[1]! & 0x80) !== 0;
    const need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (masked ? 4 : 0);
    if (this.#need < need) {
      this.#need = need;
      return;
    }
    let len = len7;
    if (len7 === 126) len = h.readUInt16BE(2);
    else if (len7 === 127) len = h.readUInt32BE(2) * 2 ** 32 + h.readUInt32BE(6); // over 2^53: not ours, ws refuses it
    const keyAt = need - 4;
    const zeroKey = !masked || (h[keyAt] === 0 && h[keyAt + 1] === 0 && h[keyAt + 2] === 0 && h[keyAt + 3] === 0);
    const max = this.r._maxPayload;
    const ours =
      this.ws.readyState === this.ws.OPEN && h[0] === 0x82 && masked === this.r._isServer && zeroKey && this.r._fragmented === 0 && len > 0 && max > 0 && len <= max;
    this.#left = len;
    if (!ours) {
      this.#s = S.Forward;
      this.#toWs(Buffer.from(h.subarray(0, need)));
      if (this.#s === S.Forward && len === 0) this.#frameStart();
      return;
    }
    this.#len = len;
    this.#s = S.Head;
    this.#have = 0;
    this.#need = Math.min(len, MAX_HEAD);
  }

  /** The first bytes of a binary message: a `data` frame's head (its items follow), or any other message (gathered whole). */
  #head(): void {
    const h = this.#hdr;
    let p = T_DATA_ID.length;
    let id = -1;
    if (this.#have >= p && h.subarray(0, p).equals(T_DATA_ID)) {
      const t = h[p]!;
      if (t < 0x80) (id = t), (p += 1);
      else if (t === 0xcc) (id = h[p + 1]!), (p += 2);
      else if (t === 0xcd) (id = h.readUInt16BE(p + 1)), (p += 3);
      else if (t === 0xce) (id = h.readUInt32BE(p + 1)), (p += 5);
    }
    let count = -1;
    if (id >= 0 && p + 11 < this.#have && h.subarray(p, p + 4).equals(END) && (h[p + 4] === 0xc2 || h[p + 4] === 0xc3) && h.subarray(p + 5, p + 11).equals(ITEMS)) {
      this.#end = h[p + 4] === 0xc3;
      p += 11;
      const a = h[p]!;
      if ((a & 0xf0) === 0x90) (count = a & 0x0f), (p += 1);
      else if (a === 0xdc && p + 3 <= this.#have) (count = h.readUInt16BE(p + 1)), (p += 3);
    }
    if (count < 0 || count > MAX_GET_ITEMS) {
      // Not a data frame as this end writes them: msgpack decodes it (and says what is wrong with it).
      this.#s = S.Whole;
      this.#whole = Buffer.allocUnsafe(this.#have + this.#left);
      h.copy(this.#whole, 0, 0, this.#have);
      this.#at = this.#have;
      if (this.#left === 0) this.#message(this.#whole);
      return;
    }
    this.#id = id;
    this.#count = count;
    this.#items = objectArray();
    // The bytes read past the head are the first item's: read again as such.
    const rest = Buffer.from(h.subarray(p, this.#have));
    this.#left += rest.length;
    this.#nextItem();
    if (rest.length > 0) this.#feed(rest);
  }

  #itemHeader(): void {
    const h = this.#hdr;
    const t = h[0]!;
    const need = t === 0xc4 ? 2 : t === 0xc5 ? 3 : t === 0xc6 ? 5 : 0;
    if (need === 0) return this.#fault('a data item is not bytes');
    if (this.#need < need) {
      if (this.#left < need - 1) return this.#fault('the data frame ends inside an item');
      this.#need = need;
      return;
    }
    const len = need === 2 ? h[1]! : need === 3 ? h.readUInt16BE(1) : h.readUInt32BE(1);
    if (len > this.#left) return this.#fault('the data frame ends inside an item');
    this.#at = 0;
    if (len === 0) {
      this.#items.push(new Uint8Array(0));
      return this.#nextItem();
    }
    const place = this.sink.place(this.#id, this.#items.length, len);
    this.#placed = place !== undefined && place.length === len;
    this.#item = this.#placed ? place : undefined;
    this.#itemLen = len;
    this.#s = S.ItemBody;
  }

  /** The next item's header, or the frame's end. */
  #nextItem(): void {
    this.#item = undefined;
    this.#placed = false;
    if (this.#items.length < this.#count) {
      if (this.#left === 0) return this.#fault('the data frame ends before its items do');
      this.#s = S.ItemHeader;
      this.#have = 0;
      this.#need = 1;
      return;
    }
    if (this.#left !== 0) return this.#fault('the data frame goes on past its items');
    const items = this.#items;
    this.#items = objectArray();
    this.#frameStart();
    this.counted(this.#len);
    this.sink.data(this.#id, items, this.#end);
    if (!this.#reading()) this.#s = S.Off;
  }

  #message(buf: Uint8Array): void {
    this.#whole = undefined;
    this.#frameStart();
    this.counted(this.#len);
    this.sink.frame(buf);
    if (!this.#reading()) this.#s = S.Off;
  }

  #fault(msg: string): void {
    this.#s = S.Off;
    this.sink.fault(new CabError('ERR_PROTOCOL', `an undecodable message: ${msg}`));
  }
}

/** Bytes a connection's socket reads at once into its one buffer. */
const READ_BYTES = 256 * 1024;

/**
 * Makes a plain TCP socket read into one buffer of its own, again and again,
 * handing each read to `take` (as `net.Socket`'s `onread` option does, set
 * here once the WebSocket upgrade is done): Node otherwise makes a new
 * ArrayBuffer for every read, 16,000 a GiB, and they, not the heap, set off
 * most of a pull's full collections. False (nothing changed) on a socket
 * without those internals, a TLS one, or one holding unread data.
 */
function readIntoOne(socket: object, take: (b: Buffer) => void): boolean {
  const s = socket as Record<symbol, unknown> & { _handle?: { useUserBuffer?(b: Uint8Array): void }; encrypted?: boolean; readableLength?: number };
  const sym = (name: string) => Object.getOwnPropertySymbols(s).find((k) => k.description === name);
  const [kBuffer, kBufferCb, kBufferGen] = [sym('kBuffer'), sym('kBufferCb'), sym('kBufferGen')];
  if (!kBuffer || !kBufferCb || !kBufferGen || s[kBuffer] !== null || s[kBufferGen] !== null) return false;
  if (s.encrypted || s.readableLength !== 0 || typeof s._handle?.useUserBuffer !== 'function') return false;
  const buf = Buffer.allocUnsafeSlow(READ_BYTES);
  s[kBuffer] = buf;
  s[kBufferCb] = (n: number) => {
    take(buf.subarray(0, n));
  };
  s._handle.useUserBuffer(buf);
  return true;
}
