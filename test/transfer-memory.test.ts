// A server's memory under clients that ask and never read: the server runs in
// its own process (its RSS read from /proc), the clients are raw `ws`
// connections on 127.0.0.1 that say hello, pause their socket, and pipeline
// 64 `get`s of 4 MiB each. Whatever they do, the server must stay bounded,
// keep serving, and give back what it held once they go.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { WebSocket, type RawData } from 'ws';
import { BlobStore, connect, serve, decodeMessage, encodeMessage, PROTOCOL_VERSION, type Message } from '../src/index.js';
import { prngStream } from '../tools/data.js';
import { collect, tempDir, tempStore } from './helpers/store.js';
import { startServerChild, killHard, MiB, KiB } from './helpers/transfer.js';

const TOKEN = 'memory-rw';
const BLOB = 32 * MiB;
const CLIENTS = 3;
const GETS = 64;
const GET_BYTES = 4 * MiB;
/** The bound for three such clients (the server held 1.7 GiB). */
const RSS_LIMIT = 300 * 1000 * 1000;

function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** `get` requests of up to GET_BYTES each, walking the blob's chunks (round and round). */
function gets(chunks: Array<{ hash: Uint8Array; size: number }>, count: number): Array<{ id: number; bytes: number; m: Message }> {
  const out = [];
  let c = 0;
  for (let id = 1; id <= count; id++) {
    const items: Array<[Uint8Array, number, number]> = [];
    let bytes = 0;
    while (bytes + chunks[c % chunks.length]!.size <= GET_BYTES) {
      const { hash, size } = chunks[c++ % chunks.length]!;
      items.push([hash, 0, size]);
      bytes += size;
    }
    out.push({ id, bytes, m: { t: 'get', id, items } as Message });
  }
  return out;
}

/** A client that says hello, stops reading, and sends its requests. It counts `data` answers (sizes only, over their frames) once resumed. */
class Hoarder {
  /** Gets answered in full (the last frame came), and their bytes. */
  readonly answered = new Map<number, number>();
  readonly #bytes = new Map<number, number>();
  errors: string[] = [];
  #wake: (() => void) | undefined;
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d: RawData) => {
      const m = decodeMessage(d as Buffer);
      if (m.t === 'data') {
        this.#bytes.set(m.id, (this.#bytes.get(m.id) ?? 0) + m.items.reduce((a, b) => a + b.length, 0));
        if (m.end) this.answered.set(m.id, this.#bytes.get(m.id)!);
      }
      else this.errors.push(m.t === 'err' ? m.code : m.t);
      this.#wake?.();
    });
    ws.on('error', () => {});
  }

  static async open(url: string, requests: Message[]): Promise<Hoarder> {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 8 * MiB });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const welcome = new Promise<RawData>((resolve) => ws.once('message', resolve));
    ws.send(encodeMessage({ t: 'hello', v: PROTOCOL_VERSION, token: TOKEN, chunker: { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB }, hash: 'sha256' }));
    const w = decodeMessage((await welcome) as Buffer);
    if (w.t !== 'welcome') throw new Error(`no welcome: ${JSON.stringify(w)}`);
    const h = new Hoarder(ws);
    ws.pause(); // from here on, nothing is read: the server's answers pile up on its side
    for (const m of requests) ws.send(encodeMessage(m));
    return h;
  }

  /** Reads again; resolves once `n` answers are in (or the connection ends). */
  async drain(n: number): Promise<void> {
    this.ws.resume();
    this.ws.once('close', () => this.#wake?.());
    while (this.answered.size + this.errors.length < n && this.ws.readyState === WebSocket.OPEN) {
      await new Promise<void>((r) => (this.#wake = r));
    }
  }
}

test.serial('three clients that pipeline 64 gets of 4 MiB and never read keep the server under 300 MB; it serves them all once they read, and others meanwhile', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  let name: string;
  let chunks: Array<{ hash: Uint8Array; size: number }>;
  {
    const store = await BlobStore.open(root);
    const w = await store.newBlobWriter();
    const next = prngStream('memory blob');
    for (let left = BLOB; left > 0; left -= 4 * MiB) await w.appendBytes(next(Math.min(4 * MiB, left)));
    await w.close();
    name = w.name;
    chunks = await collect(store.blobChunkStream(name));
    await store.close();
  }
  const { child, url, stderr } = await startServerChild(root, 0, TOKEN);
  t.teardown(() => killHard(child));
  const before = rssOf(child.pid!);

  const requests = gets(chunks, GETS);
  t.true(requests.every((r) => r.bytes > GET_BYTES - 256 * KiB && r.bytes <= GET_BYTES), 'each get asks for nearly 4 MiB');
  const hoarders: Hoarder[] = [];
  t.teardown(() => hoarders.forEach((h) => h.ws.terminate()));
  for (let i = 0; i < CLIENTS; i++) hoarders.push(await Hoarder.open(url, requests.map((r) => r.m)));

  // Long enough for the unbounded server to read every answer (it reached 1 GB in about a second).
  let peak = 0;
  for (let i = 0; i < 24; i++) {
    await new Promise((r) => setTimeout(r, 250));
    peak = Math.max(peak, rssOf(child.pid!));
  }
  t.log(`server RSS: ${(before / 1e6).toFixed(0)} MB before, peak ${(peak / 1e6).toFixed(0)} MB with ${CLIENTS} clients not reading`);
  t.true(peak < RSS_LIMIT, `peak RSS ${(peak / 1e6).toFixed(0)} MB < ${RSS_LIMIT / 1e6} MB`);

  // Meanwhile a client that reads is served: the hoarders hold part of the server-wide budget, not all.
  const pull = async () => {
    const c = await connect(await tempStore(t), url, { token: TOKEN });
    try {
      return (await c.pull(name)).receivedBytes;
    } finally {
      await c.close();
    }
  };
  t.is(await pull(), BLOB, 'a pull beside the hoarders');

  // Held back, not dropped: one hoarder reads again and gets all 64 answers.
  await hoarders[0]!.drain(GETS);
  t.deepEqual(hoarders[0]!.errors, []);
  t.deepEqual(
    [...hoarders[0]!.answered.entries()].sort((a, b) => a[0] - b[0]),
    requests.map((r) => [r.id, r.bytes]),
    'every get answered in full',
  );
  // The other two go away and what they held comes back: a pull beside three
  // new hoarders (each holds at most 4 MiB of frames read and not written)
  // goes through.
  for (const h of hoarders.slice(1)) h.ws.terminate();
  for (let i = 0; i < 3; i++) hoarders.push(await Hoarder.open(url, requests.map((r) => r.m)));
  const stuck = new Promise<string>((r) => setTimeout(() => r('still waiting after 60 s'), 60_000).unref());
  t.is(await Promise.race([pull(), stuck]), BLOB, 'a pull after two hoarders left, beside three new ones');
  t.is(child.exitCode, null, `the server is alive: ${stderr()}`);
});

test('a client that reads nothing for drainTimeoutMs is cut off, and what it held is given back', async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  const next = prngStream('memory stall');
  for (let i = 0; i < 4; i++) await w.appendBytes(next(4 * MiB));
  await w.close();
  const chunks = await collect(store.blobChunkStream(w.name));
  // It keeps talking (idle never fires), but takes none of the answers.
  // The least get memory a server may have: all of it is what the one connection that stops reading can hold.
  const srv = await serve(store, { tokens: { [TOKEN]: ['read'] }, drainTimeoutMs: 1000, idleTimeoutMs: 60_000, maxGetMemory: 4 * MiB });
  t.teardown(() => srv.close());
  const h = await Hoarder.open(srv.url, gets(chunks, 16).map((r) => r.m));
  t.teardown(() => h.ws.terminate());
  const talk = setInterval(() => h.ws.send(encodeMessage({ t: 'stat', id: 1000, name: w.name })), 200);
  t.teardown(() => clearInterval(talk));
  let waited = 0;
  while (srv.connections > 0 && waited < 20_000) {
    await new Promise((r) => setTimeout(r, 100));
    waited += 100;
  }
  t.is(srv.connections, 0, 'the server cut the connection that stopped reading');
  clearInterval(talk);
  if (srv.connections > 0) return; // the pull below would wait for good
  // Its 4 MiB of the budget are back: a pull of the whole blob goes through.
  const c = await connect(await tempStore(t), srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  t.is((await c.pull(w.name)).receivedBytes, 16 * MiB);
});
