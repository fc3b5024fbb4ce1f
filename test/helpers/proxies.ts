// Real-socket middlemen for the transfer tests: a TCP proxy that cuts a
// connection after an exact number of server-to-client (or client-to-server)
// bytes, or where a watcher of the bytes says (mid-frame, so the cut lands
// anywhere in the stream), and a WebSocket proxy whose hooks
// see (and may rewrite) every frame, to play a lying peer or to watch the
// protocol. Neither mocks `ws`: both sit between a real client and server.
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer, type RawData } from 'ws';

export interface ProxiedConnection {
  readonly client: net.Socket;
  readonly upstream: net.Socket;
  /** Server-to-client bytes forwarded so far. */
  readonly down: number;
  /** Client-to-server bytes forwarded so far. */
  readonly up: number;
}

export interface CutPlan {
  /** Forward exactly this many bytes (of `direction`), then stop forwarding them and call onCut. */
  budget?: number;
  /** Instead of a budget: shown each piece before it is forwarded, says how many of its bytes to forward before the cut (undefined: all of them, no cut yet). */
  cutAt?: (piece: Buffer) => number | undefined;
  /** The bytes cut: server-to-client (default) or client-to-server. */
  direction?: 'down' | 'up';
  onCut: (c: ProxiedConnection) => void;
}

export interface TcpProxy {
  readonly port: number;
  readonly url: string;
  /** The plan the next accepted connection takes (undefined: no cut). */
  next: CutPlan | undefined;
  /** Server-to-client bytes forwarded over all connections. */
  readonly totalDown: number;
  /** Client-to-server bytes forwarded over all connections. */
  readonly totalUp: number;
  close(): Promise<void>;
}

/** A TCP proxy on 127.0.0.1 in front of 127.0.0.1:targetPort. */
export async function tcpProxy(targetPort: () => number): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let totalDown = 0;
  let totalUp = 0;
  const proxy: { next: CutPlan | undefined } = { next: undefined };
  const server = net.createServer((client) => {
    const plan = proxy.next;
    proxy.next = undefined;
    const upstream = net.connect(targetPort(), '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const moved = { down: 0, up: 0 };
    let frozen = false;
    const conn: ProxiedConnection = {
      client,
      upstream,
      get down() {
        return moved.down;
      },
      get up() {
        return moved.up;
      },
    };
    const relay = (from: net.Socket, to: net.Socket, dir: 'down' | 'up') =>
      from.on('data', (d: Buffer) => {
        const cutting = plan !== undefined && (plan.direction ?? 'down') === dir;
        if (cutting && frozen) return;
        let part = d;
        if (cutting) {
          const n = plan.cutAt ? plan.cutAt(d) : plan.budget !== undefined && moved[dir] + d.length >= plan.budget ? plan.budget - moved[dir] : undefined;
          if (n !== undefined) {
            part = d.subarray(0, n);
            frozen = true;
          }
        }
        moved[dir] += part.length;
        if (dir === 'down') totalDown += part.length;
        else totalUp += part.length;
        if (part.length > 0 && !to.write(part)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
        if (cutting && frozen) plan.onCut(conn);
      });
    relay(client, upstream, 'up');
    relay(upstream, client, 'down');
    const done = () => {
      sockets.delete(client);
      sockets.delete(upstream);
      if (!client.destroyed) client.destroy();
      if (!upstream.destroyed) upstream.destroy();
    };
    client.on('close', done);
    upstream.on('close', done);
    client.on('error', () => {});
    upstream.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    get next() {
      return proxy.next;
    },
    set next(p: CutPlan | undefined) {
      proxy.next = p;
    },
    get totalDown() {
      return totalDown;
    },
    get totalUp() {
      return totalUp;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

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
