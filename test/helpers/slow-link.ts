// A slow but healthy link for the keepalive and stall tests: a TCP proxy on
// 127.0.0.1 that carries one direction at a steady rate (a slice every
// 20 ms) and the other freely, closed when the test ends.
import type { ExecutionContext } from 'ava';
import net, { type AddressInfo } from 'node:net';

/**
 * A proxy to `targetPort` whose client-to-server ('up') or server-to-client
 * ('down') direction carries `bytesPerSecond`; `moved()` is how many bytes
 * went the slow way.
 */
export async function slowLink(t: ExecutionContext, targetPort: number, bytesPerSecond: number, direction: 'up' | 'down'): Promise<{ port: number; moved: () => number }> {
  const sockets = new Set<net.Socket>();
  let moved = 0;
  const server = net.createServer((near) => {
    const far = net.connect(targetPort, '127.0.0.1');
    sockets.add(near).add(far);
    // `from` is the side whose bytes are slowed, `to` the side they go to.
    const [from, to] = direction === 'up' ? [near, far] : [far, near];
    to.pipe(from);
    const queue: Buffer[] = [];
    let queued = 0;
    from.on('data', (d: Buffer) => {
      queue.push(d);
      queued += d.length;
      if (queued > 256 * 1024) from.pause();
    });
    const tick = setInterval(() => {
      let room = Math.floor(bytesPerSecond / 50);
      while (room > 0 && queue.length > 0) {
        const d = queue[0]!;
        const part = d.subarray(0, room);
        to.write(part);
        moved += part.length;
        room -= part.length;
        queued -= part.length;
        if (part.length === d.length) queue.shift();
        else queue[0] = d.subarray(part.length);
      }
      if (queued <= 256 * 1024) from.resume();
    }, 20);
    const end = () => {
      clearInterval(tick);
      from.destroy();
      to.destroy();
    };
    from.on('close', end).on('error', end);
    to.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return { port: (server.address() as AddressInfo).port, moved: () => moved };
}
