import type { WebSocket } from 'ws';
import type { Transport } from './peer-types.js';
import type { WireCount } from './stats.js';

/**
 * Bytes of a control frame (ping, pong) beside its payload: a 2-byte header
 * (the payload is at most 125 bytes), and on a frame from a client the 4-byte
 * mask, which ws requires of every frame a server reads.
 */
function controlHead(fromClient: boolean): number {
  return fromClient ? 6 : 2;
}

/**
 * `t` with what the peer's idle timer (IdleWatch) asks of a WebSocket.
 * `ping`: ws answers the other end's pings by itself, and pongs go to
 * Peer.onPong. `bytesRead` without control frames: bytes still arriving are a
 * frame on its way, and a peer that only pings (a ping every 10 ms is 13 KiB
 * a second) sends none; it kept an idle connection open for good.
 * `bytesSent`: frame bytes handed to the socket (`count.sent`), written or
 * still buffered. `server`: this end is the server, so the frames it reads are masked.
 */
export function lively(ws: WebSocket, t: Transport, count: WireCount, server: boolean): Transport {
  let control = 0;
  const onControl = (data: Buffer) => (control += controlHead(server) + data.length);
  ws.on('ping', onControl).on('pong', onControl);
  const read = t.bytesRead;
  return Object.assign(t, {
    ping: () => {
      if (ws.readyState !== ws.OPEN) return false;
      ws.ping();
      return true;
    },
    bytesSent: () => count.sent,
    ...(read ? { bytesRead: () => read.call(t) - control } : {}),
  });
}
