// Frames sent in one turn of the event loop leave the socket in one write
// (wsTransport corks it at the first and uncorks after the turn), in order
// and whole; a send in a later turn goes out on its own, not held back.
import test from 'ava';
import net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { wsTransport } from '../src/transfer/ws-transport.js';

test('200 frames sent in one turn leave in one or two socket writes, in order; a later frame is not held', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  t.teardown(() => wss.close());
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const got: Buffer[] = [];
  let arrived: () => void = () => {};
  wss.on('connection', (ws) => ws.on('message', (d: Buffer) => (got.push(d), arrived())));
  const ws = new WebSocket(`ws://127.0.0.1:${(wss.address() as net.AddressInfo).port}`);
  t.teardown(() => ws.terminate());
  await new Promise<void>((r, j) => (ws.once('open', () => r()), ws.once('error', j)));
  const socket = (ws as unknown as { _socket: net.Socket })._socket;
  let writes = 0;
  const w = socket as unknown as { _writev: (...a: unknown[]) => unknown; _write: (...a: unknown[]) => unknown };
  const writev = w._writev.bind(socket);
  const write = w._write.bind(socket);
  w._writev = (...a) => (writes++, writev(...a));
  w._write = (...a) => (writes++, write(...a));
  const tr = wsTransport(ws, { sent: 0, received: 0 });
  const all = (n: number) => new Promise<void>((r) => (arrived = () => got.length >= n && r()));
  let done = all(200);
  const sends = [];
  for (let i = 0; i < 200; i++) sends.push(tr.send(Buffer.from(`frame ${i}`)));
  await Promise.all(sends);
  await done;
  t.deepEqual(got.map((b) => b.toString()), Array.from({ length: 200 }, (_, i) => `frame ${i}`));
  t.true(writes <= 2, `${writes} writes for 200 frames`);
  // One frame alone, in a turn of its own: it goes out without waiting for anything else.
  done = all(201);
  const before = writes;
  await tr.send(Buffer.from('alone'));
  await done;
  t.is(got[200]!.toString(), 'alone');
  t.is(writes - before, 1);
});
