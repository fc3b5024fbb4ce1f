// Shared pieces of the transfer tests: edited copies of a blob, the chunk
// difference between two blobs, a server child process, and a raw
// WebSocket client that speaks (or mangles) the protocol frame by frame.
import { spawn, type ChildProcess } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { fileURLToPath } from 'node:url';
import { WebSocket, type RawData } from 'ws';
import { connect, decodeMessage, encodeMessage, serve, toHex, PROTOCOL_VERSION, type BlobStore, type CabClient, type CabServer, type Message } from '../../src/index.js';
import { prngBytes, prngInts } from '../../tools/data.js';
import { collect } from './store.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** A server of `store` on 127.0.0.1 where `token` may read and write; closed when the test ends. */
export async function serveRw(t: ExecutionContext, store: BlobStore, token: string): Promise<CabServer> {
  const srv = await serve(store, { tokens: { [token]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  return srv;
}

/** A client of `store` connected to `url` with `token`; closed when the test ends. */
export async function connectRw(t: ExecutionContext, store: BlobStore, url: string, token: string): Promise<CabClient> {
  const c = await connect(store, url, { token });
  t.teardown(() => c.close());
  return c;
}
/** The store's largest chunk (default chunker max). */
export const MAX_CHUNK = 256 * KiB;

export interface Edit {
  kind: 'insert' | 'delete' | 'overwrite';
  /** Offset in the original. */
  at: number;
  size: number;
}

/**
 * `count` edits of 1..200 bytes (inserts, deletes, overwrites with fresh
 * pseudo-random bytes), one in each of `count` equal stretches of `src`, so
 * they are spread and never overlap.
 */
export function edited(src: Buffer, seed: number, count = 20): { bytes: Buffer; edits: Edit[]; freshBytes: number } {
  const rnd = prngInts(seed);
  const stretch = Math.floor(src.length / count);
  const kinds = ['insert', 'delete', 'overwrite'] as const;
  const edits: Edit[] = [];
  for (let i = 0; i < count; i++) edits.push({ kind: kinds[rnd(3)]!, at: i * stretch + rnd(stretch - 400), size: 1 + rnd(200) });
  const pieces: Buffer[] = [];
  let pos = 0;
  let freshBytes = 0;
  edits.forEach((e, i) => {
    pieces.push(src.subarray(pos, e.at));
    const fresh = prngBytes(`edit ${seed} ${i}`, e.size);
    if (e.kind === 'insert') {
      pieces.push(fresh);
      pos = e.at;
    } else if (e.kind === 'delete') {
      pos = e.at + e.size;
    } else {
      pieces.push(fresh);
      pos = e.at + e.size;
    }
    if (e.kind !== 'delete') freshBytes += e.size;
  });
  pieces.push(src.subarray(pos));
  return { bytes: Buffer.concat(pieces), edits, freshBytes };
}

/**
 * The bytes that differ, rounded up to chunk size: the total size of the
 * chunks of `want` that `have` does not hold (what a whole-chunk sync must
 * move at most), and how many such chunks there are.
 */
export async function missingChunks(have: BlobStore, haveName: string, want: BlobStore, wantName: string): Promise<{ bytes: number; chunks: number }> {
  const old = new Set((await collect(have.blobChunkStream(haveName))).map((c) => toHex(c.hash)));
  let bytes = 0;
  let chunks = 0;
  for (const c of await collect(want.blobChunkStream(wantName))) {
    if (old.has(toHex(c.hash))) continue;
    bytes += c.size;
    chunks++;
  }
  return { bytes, chunks };
}

const CHILD = fileURLToPath(new URL('./transfer-child.js', import.meta.url));

/** Starts a server child on `root`; resolves with it and its URL once it serves. */
export function startServerChild(root: string, port: number, token: string): Promise<{ child: ChildProcess; url: string; port: number; stderr: () => string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, root, String(port), token], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /url (ws:\/\/127\.0\.0\.1:(\d+))\n/.exec(out);
      if (m) resolve({ child, url: m[1]!, port: Number(m[2]), stderr: () => err });
    });
    child.on('exit', (code, signal) => reject(new Error(`server child exited (${code ?? signal}) before serving: ${out}${err}`)));
  });
}

/** SIGKILLs a child and resolves once it is gone. */
export function killHard(c: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
}

/** What the server sent: a decoded message, or bytes that did not decode. */
export type Heard = { m: Message } | { undecodable: Buffer };

/**
 * A raw protocol client: sends any frame, records every frame it hears and
 * how the connection ended. Requests the server makes of it (during a push)
 * are answered with ERR_NO_SUCH_BLOB so that nothing waits on it.
 */
export class RawClient {
  readonly heard: Heard[] = [];
  closed: { code: number; reason: string } | undefined;
  #waiters: Array<() => void> = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d: RawData) => {
      const buf = Array.isArray(d) ? Buffer.concat(d) : Buffer.isBuffer(d) ? d : Buffer.from(d as ArrayBuffer);
      let m: Message | undefined;
      try {
        m = decodeMessage(buf);
      } catch {
        this.heard.push({ undecodable: buf });
      }
      if (m) {
        this.heard.push({ m });
        if ((m.t === 'stat' || m.t === 'list' || m.t === 'match' || m.t === 'fine' || m.t === 'get') && ws.readyState === WebSocket.OPEN) {
          ws.send(encodeMessage({ t: 'err', id: m.id, code: 'ERR_NO_SUCH_BLOB', msg: 'a raw client serves nothing' }));
        }
      }
      this.#wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.#wake();
    });
    ws.on('error', () => {});
  }

  /** `localAddress`: connect from this address (any 127.x.y.z on Linux), to look like another client; `autoPong` false: pings go unanswered. */
  static open(url: string, options: { localAddress?: string; autoPong?: boolean } = {}): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * MiB, ...options });
      const c = new RawClient(ws);
      ws.once('open', () => resolve(c));
      ws.once('error', reject);
    });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends a message (encoded), or raw bytes as a binary frame, or a string as a text frame. */
  send(x: Message | Record<string, unknown> | Buffer | Uint8Array | string): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    if (typeof x === 'string') this.ws.send(x, { binary: false });
    else if (x instanceof Uint8Array) this.ws.send(x, { binary: true });
    else this.ws.send(encodeMessage(x as Message), { binary: true });
  }

  /** Resolves with the first heard message matching `pred` (looking back from `from`), 'closed', or 'timeout'. */
  async waitFor(pred: (m: Message) => boolean, ms = 5000, from = 0): Promise<Message | 'closed' | 'timeout'> {
    const until = Date.now() + ms;
    for (;;) {
      for (let i = from; i < this.heard.length; i++) {
        const h = this.heard[i]!;
        if ('m' in h && pred(h.m)) return h.m;
      }
      if (this.closed) return 'closed';
      const left = until - Date.now();
      if (left <= 0) return 'timeout';
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Resolves once the connection is closed (true) or after `ms` (false). */
  async waitClosed(ms = 5000): Promise<boolean> {
    return (await this.waitFor(() => false, ms)) === 'closed';
  }

  /** Says hello with `token` and resolves with the welcome (or what came instead). */
  async hello(token: string | undefined, chunker = { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB }): Promise<Message | 'closed' | 'timeout'> {
    this.send({ t: 'hello', v: PROTOCOL_VERSION, ...(token === undefined ? {} : { token }), chunker, hash: 'sha256' });
    return this.waitFor((m) => m.t === 'welcome' || m.t === 'err');
  }

  /** Errors heard without an id: why the server hung up. */
  get fatalErrors(): Array<Extract<Message, { t: 'err' }>> {
    return this.heard.flatMap((h) => ('m' in h && h.m.t === 'err' && h.m.id === undefined ? [h.m] : []));
  }

  close(): void {
    this.ws.terminate();
  }
}
