// A TCP proxy on 127.0.0.1 that counts the bytes it forwards each way and
// can cut a connection after an exact number of server-to-client (or
// client-to-server) bytes, or where a watcher of the bytes says (mid-frame:
// the cut lands anywhere in the stream). The transfer tests use
// it as a middleman, the transfer bench to count bytes on the wire and to
// cut every connection of a pull. It sits between a real client and a real
// server; nothing is mocked.
import net from 'node:net';
import type { AddressInfo } from 'node:net';

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

export interface TcpProxyOptions {
  /** The plan of every connection that `next` does not give one (default: none, no cut). */
  every?: CutPlan;
  /** Shown each server-to-client piece before it is forwarded; may change its bytes in place (a lying peer). */
  tamper?: (piece: Buffer) => void;
}

export interface TcpProxy {
  readonly port: number;
  readonly url: string;
  /** The plan the next accepted connection takes instead of `every` (undefined: `every`'s). */
  next: CutPlan | undefined;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Server-to-client bytes forwarded over all connections. */
  readonly totalDown: number;
  /** Client-to-server bytes forwarded over all connections. */
  readonly totalUp: number;
  close(): Promise<void>;
}

/** Ends both sides of a connection at once: what a CutPlan's onCut does to play a network that drops it. */
export function dropConnection(c: ProxiedConnection): void {
  c.client.destroy();
  c.upstream.destroy();
}

/** A TCP proxy on 127.0.0.1 in front of 127.0.0.1:targetPort. */
export async function tcpProxy(targetPort: () => number, options: TcpProxyOptions = {}): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let totalDown = 0;
  let totalUp = 0;
  let connections = 0;
  const proxy: { next: CutPlan | undefined } = { next: undefined };
  const server = net.createServer((client) => {
    const plan = proxy.next ?? options.every;
    proxy.next = undefined;
    connections++;
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
        if (dir === 'down') options.tamper?.(part);
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
    get connections() {
      return connections;
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
