import type { WebSocket, RawData } from 'ws';
import { CabError } from '../errors.js';
import type { Peer, Transport } from './peer.js';
import type { WireCount } from './stats.js';
import { FrameTap } from './frame-tap.js';

/** A send waits for the socket to drain while more than this many bytes are buffered on it. */
export const HIGH_WATER = 8 * 1024 * 1024;
/** A peer that takes none of a frame's bytes for this long is cut off. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 120_000;


export interface WsTransportOptions {
  /** Cut the connection when no frame has been written for this long while some wait (default 120 s). */
  drainTimeoutMs?: number;
  /** Told why, just before such a cut. */
  onStall?: (e: CabError) => void;
}

/**
 * Wraps a ws socket as a Transport with backpressure. Memory it holds is
 * bounded by its callers: a send resolves at once only while less than
 * HIGH_WATER is buffered, else when its frame is written. A peer that stops
 * reading stops all writes; after `drainTimeoutMs` of that, the connection is
 * cut and every waiting send fails, so nothing stays held by a dead peer.
 */
export function wsTransport(ws: WebSocket, count: WireCount, options: WsTransportOptions = {}): Transport {
  const drainMs = options.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
  let unwritten = 0;
  let stall: NodeJS.Timeout | undefined;
  const onStall = () => {
    options.onStall?.(new CabError('ERR_IDLE_TIMEOUT', `the peer took none of our data for ${drainMs} ms`));
    ws.terminate();
  };
  // Frames sent in one turn of the event loop leave in one write: the socket is corked at the first and
  // uncorked once the turn's callbacks have run (setImmediate). A pull sends a burst of requests per run
  // matched, and a server a burst of data frames per get; each frame was a writev of its own.
  const socket = (ws as unknown as { _socket?: { cork(): void; uncork(): void; destroyed?: boolean; bytesRead?: number } })._socket;
  let corked = false;
  const uncork = () => {
    corked = false;
    if (socket && !socket.destroyed) socket.uncork();
  };
  const written = () => {
    if (--unwritten === 0) clearTimeout(stall);
    else stall?.refresh();
  };
  return {
    bytesRead: () => socket?.bytesRead ?? count.received,
    send: (frame, o) =>
      new Promise<void>((resolve, reject) => {
        if (ws.readyState !== ws.OPEN) return reject(new CabError('ERR_CONNECTION', 'the connection is closed'));
        count.sent += frame.length;
        if (unwritten++ === 0) {
          stall = setTimeout(onStall, drainMs);
          stall.unref();
        }
        let waiting = false;
        if (!corked && socket) {
          corked = true;
          socket.cork();
          setImmediate(uncork);
        }
        ws.send(frame, { binary: true }, (err) => {
          written();
          o?.onWritten?.();
          if (!waiting) return;
          if (err) reject(new CabError('ERR_CONNECTION', err.message, {}, { cause: err }));
          else resolve();
        });
        if (ws.bufferedAmount > HIGH_WATER) waiting = true;
        else resolve();
      }),
    close: (code, reason, silent) => {
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, reason);
      // The close (and an `err` sent just before it) leaves with this turn's corked write (uncork, queued first).
      if (silent) setImmediate(() => ws.terminate());
    },
  };
}

/**
 * Feeds a socket's frames to its peer, and tells the peer when the socket is
 * gone. Binary frames are read by a FrameTap (`data` frames written straight
 * where the peer's taker wants them); what it leaves to ws comes as messages.
 */
export function wire(ws: WebSocket, peer: Peer, count: WireCount): void {
  FrameTap.attach(ws, {
    frame: (buf) => peer.onFrame(buf),
    data: (id, items, end) => peer.onData(id, items, end),
    place: (id, k, len) => peer.taker(id)?.place?.(k, len),
    placing: (id) => peer.taker(id)?.placing?.() ?? false,
    fault: (e) => peer.fail(e),
  }, (n) => (count.received += n));
  ws.on('message', (data: RawData, isBinary: boolean) => {
    if (!isBinary) {
      peer.onFrame(new Uint8Array(0)); // not MessagePack: a protocol error
      return;
    }
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer);
    count.received += buf.length;
    peer.onFrame(buf);
  });
  ws.on('close', (code, reason) =>
    peer.closed(new CabError('ERR_CONNECTION', `connection closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`, { found: code })),
  );
  ws.on('error', (e) => peer.closed(new CabError('ERR_CONNECTION', e.message, {}, { cause: e })));
}
