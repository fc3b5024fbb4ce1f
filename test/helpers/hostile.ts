// A lying peer for the hostile-*.test.ts reviews: a real server on `src`,
// a WebSocket proxy in front of it whose hook rewrites what the server says,
// and a client on a fresh store connected through it; all closed when the
// test ends.
import type { ExecutionContext } from 'ava';
import { once } from 'node:events';
import crypto from 'node:crypto';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { PROTOCOL_VERSION, connect, decodeMessage, encodeMessage, isCabError, serve, type BlobStore, type CabClient, type Message } from '../../src/index.js';

const MiB = 1024 * 1024;
const KiB = 1024;
import { wsProxy, type FrameHook } from './proxies.js';
import { tempStore } from './store.js';

export async function throughLiar(t: ExecutionContext, src: BlobStore, toClient: FrameHook): Promise<{ client: CabClient; dst: BlobStore; url: string }> {
  const srv = await serve(src, { tokens: { ro: ['read'] } });
  t.teardown(() => srv.close());
  const liar = await wsProxy(srv.url, { toClient });
  t.teardown(() => liar.close());
  const dst = await tempStore(t);
  const client = await connect(dst, liar.url, { token: 'ro' });
  t.teardown(() => client.close());
  return { client, dst, url: liar.url };
}

/** How `p` settles within `ms`: 'resolved', its CabError code (else `not a CabError: ...`), or 'pending'. */
export async function settle(p: Promise<unknown>, ms: number): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('pending'), ms)));
  try {
    return await Promise.race([p.then(() => 'resolved', (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`)), late]);
  } finally {
    clearTimeout(timer);
  }
}

export type Send = (m: Message | Record<string, unknown> | Uint8Array) => void;
export type Script = (m: Message, send: Send, ws: WebSocket) => void;

const toBuf = (d: RawData): Buffer => (Array.isArray(d) ? Buffer.concat(d) : Buffer.isBuffer(d) ? d : Buffer.from(d as ArrayBuffer));

/**
 * A WebSocket server on 127.0.0.1 that answers hello with a welcome (fields
 * overridden by `welcome`), then hands every message to `script`. It answers
 * pings (as every ws end does by itself) unless `autoPong` is false: a hung
 * process, or a TCP connection whose other end is gone.
 */
export async function fakeServer(t: ExecutionContext, script: Script, welcome: Record<string, unknown> = {}, o: { autoPong?: boolean } = {}): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 64 * MiB, autoPong: o.autoPong ?? true });
  await once(wss, 'listening');
  const socks = new Set<WebSocket>();
  wss.on('connection', (ws) => {
    socks.add(ws);
    ws.on('error', () => {});
    const send: Send = (x) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(x instanceof Uint8Array ? x : encodeMessage(x as Message), { binary: true });
    };
    ws.on('message', (d, isBinary) => {
      if (!isBinary) return;
      let m: Message;
      try {
        m = decodeMessage(toBuf(d));
      } catch (e) {
        // What a real server does with a malformed request: err without id, and close.
        send({ t: 'err', code: isCabError(e) ? e.code : 'ERR_PROTOCOL', msg: String(e) });
        ws.close(1008);
        return;
      }
      if (m.t === 'hello') {
        send({ t: 'welcome', v: PROTOCOL_VERSION, chunker: m.chunker, hash: 'sha256', perms: ['read'], maxFrame: 4 * MiB + 64 * KiB, maxRequests: 64, ...welcome });
        return;
      }
      script(m, send, ws);
    });
  });
  t.teardown(() => {
    for (const s of socks) s.terminate();
    return new Promise<void>((resolve) => wss.close(() => resolve()));
  });
  return `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
}

/** Everything a stream gives, and how it ended: 'end', or its CabError code. */
export async function drain(s: AsyncIterable<Uint8Array>, onBytes?: (n: number) => void): Promise<{ bytes: Buffer; how: string }> {
  const parts: Buffer[] = [];
  try {
    for await (const b of s) {
      parts.push(Buffer.from(b));
      onBytes?.(b.length);
    }
    return { bytes: Buffer.concat(parts), how: 'end' };
  } catch (e) {
    return { bytes: Buffer.concat(parts), how: isCabError(e) ? e.code : `not a CabError: ${String(e)}` };
  }
}

/** A raw TCP socket upgraded to WebSocket by hand (no ws library): the caller decides what it reads and writes. */
export async function rawUpgrade(t: ExecutionContext, port: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  t.teardown(() => s.destroy());
  s.on('error', () => {});
  await new Promise((r) => s.once('connect', r));
  s.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  let head = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (b: Buffer) => {
      head += b.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        s.off('data', onData);
        if (!head.startsWith('HTTP/1.1 101')) reject(new Error(`no upgrade: ${head}`));
        else resolve();
      }
    };
    s.on('data', onData);
  });
  return s;
}

/** A frame from a client: `b0` is the first byte as sent (FIN, RSV bits, opcode); masked with `key` (zeros: as cabstore's client masks). */
export function clientFrame(b0: number, payload: Buffer, key: Buffer = Buffer.alloc(4)): Buffer {
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i]! ^= key[i % 4]!;
  const len = payload.length;
  let head: Buffer;
  if (len < 126) head = Buffer.from([b0, 0x80 | len]);
  else if (len < 65536) head = Buffer.from([b0, 0x80 | 126, len >> 8, len & 0xff]);
  else {
    head = Buffer.alloc(10);
    head[0] = b0;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([head, key, masked]);
}
