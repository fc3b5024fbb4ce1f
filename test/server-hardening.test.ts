// A server against clients that cost it without a credential, or guess one,
// or send numbers past the protocol's range: real sockets on 127.0.0.1.
import test, { type ExecutionContext } from 'ava';
import http from 'node:http';
import net from 'node:net';
import { connect, decodeMessage, encodeMessage, isCabError, serve, type CabServer, type Message, type ServeOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, tempStore } from './helpers/store.js';
import { RawClient } from './helpers/transfer.js';

const RW = 'hardening-rw';

async function serveT(t: ExecutionContext, options: Partial<ServeOptions> = {}): Promise<{ srv: CabServer; name: string }> {
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('hardening', 300_000));
  const srv = await serve(store, { tokens: { [RW]: ['read', 'write'] }, ...options });
  t.teardown(() => srv.close());
  return { srv, name };
}

/** A TCP connection that says nothing; `closed` is set when the server hangs up. */
async function silentSocket(t: ExecutionContext, port: number): Promise<{ s: net.Socket; closed: boolean }> {
  const s = net.connect(port, '127.0.0.1');
  t.teardown(() => s.destroy());
  const h = { s, closed: false };
  s.on('error', () => {});
  s.on('close', () => (h.closed = true));
  await new Promise((r) => s.once('connect', r));
  return h;
}

/** Polls `cond` every 50 ms until it holds or `ms` have passed. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; !cond() && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
  return cond();
}

const raw = async (t: ExecutionContext, url: string, localAddress?: string) => {
  const c = await RawClient.open(url, localAddress ? { localAddress } : {});
  t.teardown(() => c.close());
  return c;
};

test('connections that have not been welcomed are capped server-wide: past maxPending they are closed on arrival', async (t) => {
  const { srv, name } = await serveT(t, { maxPending: 8, helloTimeoutMs: 60_000 });
  const socks: Array<{ s: net.Socket; closed: boolean }> = [];
  for (let i = 0; i < 20; i++) socks.push(await silentSocket(t, srv.port));
  t.true(await until(() => socks.filter((x) => x.closed).length >= 12, 5000), `closed: ${socks.filter((x) => x.closed).length}`);
  await new Promise((r) => setTimeout(r, 300));
  t.deepEqual(
    socks.map((x) => x.closed),
    [...Array(8).fill(false), ...Array(12).fill(true)],
    'the first 8 wait, the 12 past the cap are closed',
  );
  t.is(srv.pending, 8);
  // Welcomed connections do not count: with the 8 gone, more than 8 clients are served at once.
  for (const x of socks) x.s.destroy();
  t.true(await until(() => srv.pending === 0, 5000));
  const clients: Awaited<ReturnType<typeof connect>>[] = [];
  for (let i = 0; i < 12; i++) {
    const c = await connect(await tempStore(t), srv.url, { token: RW });
    t.teardown(() => c.close());
    clients.push(c);
  }
  for (const c of clients) t.like(await c.stat(name), { finalized: true });
});

test('a connection not welcomed within helloTimeoutMs is closed (told why if it speaks WebSocket); a welcomed one stays', async (t) => {
  const { srv, name } = await serveT(t, { helloTimeoutMs: 500, idleTimeoutMs: 60_000 });
  const tcp = await silentSocket(t, srv.port);
  const mute = await raw(t, srv.url);
  const good = await raw(t, srv.url);
  t.like(await good.hello(RW), { t: 'welcome' });
  t.true(await until(() => tcp.closed, 10_000), 'a TCP connection that never upgrades is closed');
  t.true(await mute.waitClosed(10_000), 'a WebSocket that never says hello is closed');
  t.deepEqual(
    mute.fatalErrors.map((e) => e.code),
    ['ERR_IDLE_TIMEOUT'],
  );
  await new Promise((r) => setTimeout(r, 1500));
  t.true(good.isOpen, 'the welcomed connection stays past the deadline');
  good.send({ t: 'stat', id: 1, name });
  t.like(await good.waitFor((m) => m.t === 'statr' || m.t === 'err'), { t: 'statr' });
});

test('failed tokens are limited per address: past maxAuthFailures, hellos are refused with ERR_AUTH_LIMIT unchecked; another address is not affected', async (t) => {
  const { srv, name } = await serveT(t, { maxAuthFailures: 10, authFailureWindowMs: 3_600_000 });
  const codes: Record<string, number> = {};
  for (let i = 0; i < 50; i++) {
    const c = await raw(t, srv.url);
    const a = await c.hello(`guess-${i}`);
    const code = typeof a === 'string' ? a : a.t === 'err' ? a.code : a.t;
    codes[code] = (codes[code] ?? 0) + 1;
    c.close();
  }
  t.deepEqual(codes, { ERR_AUTH: 10, ERR_AUTH_LIMIT: 40 }, '50 quick guesses from one address: 10 checked, 40 refused');
  // Refused even with the right token, so that a guess that hits is not told apart.
  t.like(await (await raw(t, srv.url)).hello(RW), { t: 'err', code: 'ERR_AUTH_LIMIT' });
  const e = await t.throwsAsync(connect(await tempStore(t), srv.url, { token: RW }));
  t.true(isCabError(e, 'ERR_AUTH_LIMIT'), `the client API names it: ${String(e)}`);
  // Another address has its own allowance.
  const other = await raw(t, srv.url, '127.0.0.2');
  t.like(await other.hello(RW), { t: 'welcome' });
  other.send({ t: 'stat', id: 1, name });
  t.like(await other.waitFor((m) => m.t === 'statr'), { t: 'statr' });
  t.like(await (await raw(t, srv.url, '127.0.0.3')).hello('wrong'), { t: 'err', code: 'ERR_AUTH' });
});

test('id and list.from are below 2^32: 2^32 is ERR_PROTOCOL in the decoder and on the wire; 2^32 - 1 is served', async (t) => {
  const name = 'ab'.repeat(16);
  const list = (from: number, id = 1) => encodeMessage({ t: 'list', id, name, from } as Message);
  const code = (f: () => unknown) => {
    try {
      f();
      return 'decoded';
    } catch (e) {
      return isCabError(e) ? e.code : String(e);
    }
  };
  t.is(code(() => decodeMessage(list(2 ** 32))), 'ERR_PROTOCOL');
  t.is(code(() => decodeMessage(list(0, 2 ** 32))), 'ERR_PROTOCOL');
  t.like(decodeMessage(list(2 ** 32 - 1, 2 ** 32 - 1)), { from: 2 ** 32 - 1, id: 2 ** 32 - 1 });

  const { srv, name: blob } = await serveT(t);
  const over = await raw(t, srv.url);
  t.like(await over.hello(RW), { t: 'welcome' });
  over.send({ t: 'list', id: 1, name: blob, from: 2 ** 32 });
  t.true(await over.waitClosed());
  t.deepEqual(
    over.fatalErrors.map((e) => e.code),
    ['ERR_PROTOCOL'],
  );
  t.false(over.heard.some((h) => 'm' in h && h.m.t === 'err' && h.m.code === 'ERR_REMOTE'), 'no internal error leaks');
  const edge = await raw(t, srv.url);
  t.like(await edge.hello(RW), { t: 'welcome' });
  edge.send({ t: 'list', id: 2 ** 32 - 1, name: blob, from: 2 ** 32 - 1 });
  t.like(await edge.waitFor((m) => m.t === 'listr' || m.t === 'err'), { t: 'listr', id: 2 ** 32 - 1, c: [], end: true });
});

// --- maxConnections (eighth session) ----------------------------------------------------------------

const codeOf = (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`);

test('maxConnections: N clients are served, the next is refused with ERR_TOO_MANY_REQUESTS, the others go on; a slot freed by a close is used again', async (t) => {
  const { srv, name } = await serveT(t, { maxConnections: 3 });
  const clients: Awaited<ReturnType<typeof connect>>[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await connect(await tempStore(t), srv.url, { token: RW });
    t.teardown(() => c.close());
    clients.push(c);
  }
  t.is(srv.open, 3);
  const e = await t.throwsAsync(connect(await tempStore(t), srv.url, { token: RW }));
  t.is(codeOf(e), 'ERR_TOO_MANY_REQUESTS', String(e));
  t.regex(String(e), /3 connections open/);
  for (const c of clients) t.like(await c.stat(name), { finalized: true }, 'the connections already open are not affected');
  await clients[0]!.close();
  t.true(await until(() => srv.open === 2, 5000), `open: ${srv.open}`);
  const again = await connect(await tempStore(t), srv.url, { token: RW });
  t.teardown(() => again.close());
  t.like(await again.stat(name), { finalized: true }, 'the freed slot is taken');
  t.is(codeOf(await t.throwsAsync(connect(await tempStore(t), srv.url, { token: RW }))), 'ERR_TOO_MANY_REQUESTS', 'full again');
  t.is(codeOf(await t.throwsAsync(serve(await tempStore(t), { insecure: true, maxConnections: 0 }))), 'ERR_BAD_ARGUMENT');
});

test('maxConnections: connections not welcomed (TCP only, WebSocket without hello) hold slots until helloTimeoutMs closes them', async (t) => {
  const { srv, name } = await serveT(t, { maxConnections: 2, helloTimeoutMs: 800 });
  const tcp = await silentSocket(t, srv.port);
  const mute = await raw(t, srv.url);
  t.is(srv.open, 2);
  t.is(codeOf(await t.throwsAsync(connect(await tempStore(t), srv.url, { token: RW }))), 'ERR_TOO_MANY_REQUESTS', 'half-open sockets count');
  t.true(await until(() => tcp.closed, 10_000), 'the TCP connection is closed at the hello deadline');
  t.true(await mute.waitClosed(10_000), 'so is the WebSocket that said nothing');
  t.true(await until(() => srv.open === 0, 5000), `open: ${srv.open}`);
  const c = await connect(await tempStore(t), srv.url, { token: RW });
  t.teardown(() => c.close());
  t.like(await c.stat(name), { finalized: true });
});

test('maxConnections covers the HTTP face on the same port: an HTTP request past it is answered 503 with Retry-After and the code', async (t) => {
  const { serve: serveHttp } = await import('../src/http/serve.js');
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('hardening http', 100_000));
  const srv = await serveHttp(store, { tokens: { [RW]: ['read'] }, maxConnections: 1 });
  t.teardown(() => srv.close());
  const get = (): Promise<{ status: number; retry?: string; body: string }> =>
    new Promise((resolve, reject) => {
      const req = http.get(`http://127.0.0.1:${srv.port}/blobs/${name}`, { agent: false, headers: { authorization: `Bearer ${RW}` } }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (b: Buffer) => parts.push(b));
        res.on('end', () => resolve({ status: res.statusCode!, ...(res.headers['retry-after'] ? { retry: String(res.headers['retry-after']) } : {}), body: Buffer.concat(parts).toString() }));
      });
      req.on('error', reject);
    });
  t.is((await get()).status, 200, 'a free slot: served');
  t.true(await until(() => srv.open === 0, 5000), 'the HTTP connection (agent: false) closed');
  const c = await connect(await tempStore(t), srv.url, { token: RW });
  t.teardown(() => c.close());
  const busy = await get();
  t.is(busy.status, 503);
  t.is(busy.retry, '1');
  t.regex(busy.body, /^ERR_TOO_MANY_REQUESTS: /);
  // An upload with a body the server never reads: the client sees the 503, not a reset.
  const upload = await new Promise<number>((resolve, reject) => {
    const req = http.request(`http://127.0.0.1:${srv.port}/files/`, { method: 'POST', agent: false, headers: { authorization: `Bearer ${RW}`, 'tus-resumable': '1.0.0', 'upload-length': '4194304', 'content-type': 'application/offset+octet-stream' } }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    });
    req.on('error', reject);
    req.end(Buffer.alloc(4 * 1024 * 1024, 1));
  });
  t.is(upload, 503);
  await c.close();
  t.true(await until(() => srv.open === 0, 5000));
  t.is((await get()).status, 200, 'served again once the WebSocket closed');
});

test('before its welcome a connection may send a frame of 64 KiB at most (closed 1009): the connections waiting cannot make the server hold maxFrame each; after it, maxFrame', async (t) => {
  const { srv } = await serveT(t);
  const big = await raw(t, srv.url);
  big.send(Buffer.alloc(100 * 1024, 0x90));
  t.true(await big.waitClosed(5000));
  t.is(big.closed?.code, 1009);
  const welcomed = await raw(t, srv.url);
  t.like(await welcomed.hello(RW), { t: 'welcome' });
  welcomed.send(Buffer.alloc(1024 * 1024, 0x90)); // not a message: ERR_PROTOCOL, but read whole
  t.true(await welcomed.waitClosed(5000));
  t.is(welcomed.closed?.code, 1008);
  t.deepEqual(welcomed.fatalErrors.map((e) => e.code), ['ERR_PROTOCOL']);
});
