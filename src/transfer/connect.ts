// connect(): a local store's session with a cabstore server, over a
// connection it opens, or one a dial (dial.ts) opened before the store was.
import { WebSocket } from './ws-lib.js';
import { CabError } from '../errors.js';
import { BlobStore } from '../store.js';
import { MAX_FRAME } from './messages.js';
import { Peer, DEFAULT_IDLE_MS, type PushOptions, type PushResult } from './peer.js';
import type { ReceiveOptions, TransferStats, WireCount } from './stats.js';
import { wire, wsTransport } from './ws-transport.js';
import { lively } from './ws-life.js';
import { orAbort } from './abort.js';
import { checkDialArgs } from './connect-args.js';
import type { Readable } from 'node:stream';
import { checkBlobName } from '../format/layout.js';
import { remoteStream, type RemoteStreamOptions } from './follow-remote.js';
import { RemoteBlobReader, type OpenReaderOptions } from './remote-reader.js';
import { Dial, dial, type ConnectOptions } from './dial.js';
import { sameChunkerParams } from '../chunker/params.js';

export type { ConnectOptions } from './dial.js';

export interface CabClient {
  readonly url: string;
  /** @internal The session, for fetchBlob (its source, and the server's chunker). */
  readonly peer: Peer;
  /** @internal Resolves once the connection has closed, for whatever reason. */
  readonly closed: Promise<void>;
  /** Frame payload bytes this connection has sent and received so far. */
  readonly wire: Readonly<WireCount>;
  /** Size, finalized, and hash (a Uint8Array, as everywhere; hex in JSON) of a remote blob. `signal` stops waiting for the answer (ERR_ABORTED). */
  stat(name: string, options?: { signal?: AbortSignal }): Promise<{ size: number; finalized: boolean; hash?: Uint8Array }>;
  /** Fetches a remote blob into the local store (only what the store lacks travels). `signal` cancels (ERR_ABORTED): what was written stays, unfinalized and resumable. */
  pull(name: string, options?: ReceiveOptions): Promise<TransferStats>;
  /** Sends a local blob to the remote store (only what it lacks travels). `signal` cancels that push only. */
  push(name: string, options?: PushOptions): Promise<PushResult>;
  /**
   * Reads a finalized remote blob without storing it: only the 16 KiB leaves
   * covering what is read travel, each checked against the blob's root (the
   * trusted `hash`, else the one the server announces) before it is returned.
   */
  openReader(name: string, options?: OpenReaderOptions): Promise<RemoteBlobReader>;
  /** A remote blob's bytes, each chunk checked as it comes, the root at the end; with `follow`, a blob still being written (see RemoteStreamOptions). Nothing is stored here. */
  stream(name: string, options?: RemoteStreamOptions): Readable;
  /** Closes the connection; calling it again returns the same promise. */
  close(): Promise<void>;
  /** `await using c = await connect(...)`: close(). */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Connects a local store to a cabstore server: at `url`, or over a
 * connection a dial opened (dial.ts; its options then stand, and connect
 * takes none). A dial whose hello announced other chunker parameters than
 * the store's is closed, and the server connected to again with the store's.
 */
export async function connect(store: BlobStore, to: string | Dial, options?: ConnectOptions): Promise<CabClient> {
  if (!(store instanceof BlobStore)) throw new CabError('ERR_BAD_ARGUMENT', 'connect: the first argument must be an open BlobStore');
  if (to instanceof Dial) {
    if (options !== undefined) throw new CabError('ERR_BAD_ARGUMENT', 'connect: a dial brings its own options (give them to dial())');
  } else checkDialArgs(to, options, 'connect');
  let d = to instanceof Dial ? to : dial(to, { ...options, chunker: store.chunker });
  let h;
  try {
    h = await d.take();
  } catch (e) {
    await d.close();
    throw e;
  }
  if (!sameChunkerParams(h.chunker, store.chunker)) {
    // Requests asked on the dial (its stat) that the closing socket leaves unanswered fail, rather than wait for good.
    const e = new CabError('ERR_CONNECTION', `dial ${d.url}: closed, its hello having announced other chunker parameters than the store's; ask the client`);
    for (const p of h.pending.values()) p.reject(e);
    void closeSocket(h.ws);
    d = dial(d.url, { ...h.options, chunker: store.chunker });
    h = await d.take().catch(async (e: unknown) => {
      await d.close();
      throw e;
    });
  }
  const { ws, count } = h;
  const url = d.url;
  const o = h.options;
  const peer = new Peer(lively(ws, wsTransport(ws, count), count, false), {
    store,
    role: 'client',
    label: url,
    maxFrame: o.maxFrame ?? MAX_FRAME,
    idleMs: o.idleTimeoutMs ?? DEFAULT_IDLE_MS,
    welcomed: h,
  });
  wire(ws, peer, count);
  ws.on('pong', () => peer.onPong());
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  let closing: Promise<void> | undefined;
  const client: CabClient = {
    url,
    peer,
    closed,
    wire: count,
    stat: (name, x) => orAbort(peer.source().stat(name), x?.signal, name),
    pull: (name, x) => peer.pull(name, x),
    push: (name, x) => peer.push(name, x),
    openReader: (name, x) => RemoteBlobReader.open(peer, name, x ?? {}, store),
    stream: (name, x) => remoteStream(peer.source(), checkBlobName(name), x),
    close() {
      closing ??= closeSocket(ws, closed);
      return closing;
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
  return client;
}

/** Closes a socket politely (a close frame, up to 2 s for the server's), then for sure. */
async function closeSocket(ws: WebSocket, closed?: Promise<void>): Promise<void> {
  if (ws.readyState !== WebSocket.CLOSED) {
    ws.close(1000, 'bye');
    await Promise.race([closed ?? new Promise((r) => ws.once('close', r)), new Promise((r) => setTimeout(r, 2000).unref())]);
    ws.terminate();
  }
}
