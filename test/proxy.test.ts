// tools/proxy.ts, the TCP proxy the transfer tests and the transfer bench
// share: it counts what it forwards each way, and a plan for every
// connection cuts each one after exactly its budget of server-to-client
// bytes. Real sockets on 127.0.0.1: an echo server behind the proxy.
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { dropConnection, tcpProxy } from '../tools/proxy.js';

/** An echo server; its port. */
async function echo(t: { teardown(fn: () => void): void }): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return (server.address() as AddressInfo).port;
}

/** Sends `bytes` through a connection to `port`; resolves with what came back when the connection ends. */
function exchange(port: number, bytes: number): Promise<number> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    let got = 0;
    c.on('data', (d: Buffer) => {
      got += d.length;
      if (got === bytes) c.end();
    });
    c.on('error', () => {});
    c.on('close', () => resolve(got));
    c.write(Buffer.alloc(bytes, 7));
  });
}

test('every connection is cut after its budget of server-to-client bytes; bytes are counted both ways', async (t) => {
  const port = await echo(t);
  let cuts = 0;
  const proxy = await tcpProxy(() => port, {
    every: {
      budget: 10_000,
      onCut: (c) => {
        cuts++;
        dropConnection(c);
      },
    },
  });
  t.teardown(() => proxy.close());
  t.is(await exchange(proxy.port, 50_000), 10_000, 'the first connection gets its budget, then is cut');
  t.is(await exchange(proxy.port, 50_000), 10_000, 'so does the second');
  t.is(await exchange(proxy.port, 3_000), 3_000, 'a connection within its budget is not cut');
  t.is(cuts, 2);
  t.is(proxy.connections, 3);
  t.is(proxy.totalDown, 23_000);
  t.true(proxy.totalUp >= 23_000 && proxy.totalUp <= 103_000, `client-to-server bytes counted: ${proxy.totalUp}`);
});

test('`next` plans the next connection only, ahead of `every`', async (t) => {
  const port = await echo(t);
  const proxy = await tcpProxy(() => port, { every: { budget: 5_000, onCut: dropConnection } });
  t.teardown(() => proxy.close());
  proxy.next = { budget: 1_000, onCut: dropConnection };
  t.is(await exchange(proxy.port, 20_000), 1_000);
  t.true(proxy.next === undefined, 'the plan was taken');
  t.is(await exchange(proxy.port, 20_000), 5_000);
});
