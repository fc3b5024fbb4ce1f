// Real-socket middlemen for the transfer tests: a TCP proxy that cuts a
// connection after an exact number of bytes either way, or where a watcher
// of the bytes says (mid-frame, so the cut lands anywhere in the stream;
// tools/proxy.ts, shared with the transfer bench), and a WebSocket proxy whose hooks see (and may rewrite)
// every frame, to play a lying peer or to watch the protocol. Neither mocks
// `ws`: both sit between a real client and server.
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { decodeMessage, type Message } from '../../src/index.js';

export { tcpProxy, type TcpProxy, type CutPlan, type ProxiedConnection } from '../../tools/proxy.js';

/** The two sockets of one proxied connection: to the real server, and to the client. */
export interface WsLink {
  up: WebSocket;
  down: WebSocket;
}

/** What a hook returns: the frame to forward (the same or rewritten), or null to drop it. */
export type FrameHook = (frame: Buffer, isBinary: boolean, link: WsLink) => Buffer | string | null;

export interface WsProxy {
  readonly url: string;
  close(): Promise<void>;
}

const sendable = (code: number) => code >= 1000 && code <= 4999 && code !== 1004 && code !== 1005 && code !== 1006 && code !== 1015;

/** A WebSocket proxy on 127.0.0.1 in front of `target`; hooks see each frame in each direction. */
export async function wsProxy(target: string, hooks: { toClient?: FrameHook; toServer?: FrameHook } = {}): Promise<WsProxy> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const all = new Set<WebSocket>();
  wss.on('connection', (down) => {
    const up = new WebSocket(target, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    all.add(down);
    all.add(up);
    const queue: Array<[Buffer | string, boolean]> = [];
    const toBuf = (d: RawData) => (Array.isArray(d) ? Buffer.concat(d) : Buffer.isBuffer(d) ? d : Buffer.from(d as ArrayBuffer));
    up.on('open', () => {
      for (const [d, b] of queue) up.send(d, { binary: b });
      queue.length = 0;
    });
    down.on('message', (d: RawData, isBinary: boolean) => {
      const out = hooks.toServer ? hooks.toServer(toBuf(d), isBinary, { up, down }) : toBuf(d);
      if (out === null) return;
      if (up.readyState === WebSocket.OPEN) up.send(out, { binary: isBinary });
      else queue.push([out, isBinary]);
    });
    up.on('message', (d: RawData, isBinary: boolean) => {
      const out = hooks.toClient ? hooks.toClient(toBuf(d), isBinary, { up, down }) : toBuf(d);
      if (out === null) return;
      if (down.readyState === WebSocket.OPEN) down.send(out, { binary: isBinary });
    });
    const relayClose = (to: WebSocket) => (code: number, reason: Buffer) => {
      all.delete(to === up ? down : up);
      if (to.readyState === WebSocket.OPEN) {
        if (sendable(code)) to.close(code, reason);
        else to.terminate();
      } else if (to.readyState === WebSocket.CONNECTING) to.terminate();
    };
    down.on('close', relayClose(up));
    up.on('close', relayClose(down));
    down.on('error', () => {});
    up.on('error', () => {});
  });
  const port = (wss.address() as AddressInfo).port;
  return {
    url: `ws://127.0.0.1:${port}`,
    close() {
      for (const s of all) s.terminate();
      return new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
}

/** A frame a hook sees, decoded: undefined for a text frame or one that is not a message. */
export function decodedFrame(frame: Buffer, isBinary: boolean): Message | undefined {
  if (!isBinary) return undefined;
  try {
    return decodeMessage(frame);
  } catch {
    return undefined;
  }
}
