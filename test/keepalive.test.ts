// Keepalive (eighth session): WebSocket ping/pong keeps a connection whose
// other end works in silence for us (a push's server copying reused bytes, a
// follow stat held, a get behind other connections), and still cuts one that
// answers nothing, or answers pings and makes no progress. Real sockets on
// 127.0.0.1: real servers, fake ones (test/helpers/hostile.ts), raw clients.
import test from 'ava';
import { connect, isCabError, serve } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, tempStore } from './helpers/store.js';
import { RawClient } from './helpers/transfer.js';
import { fakeServer, settle } from './helpers/hostile.js';
import { decodedFrame, wsProxy } from './helpers/proxies.js';

const RW = 'keepalive-rw';
const IDLE_MS = 400;

const codeOf = (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`);

/** A fake server that takes a push and answers `done` only after `holdMs` of silence (its "local copy"). */
async function slowPushServer(t: Parameters<typeof fakeServer>[0], holdMs: number, autoPong: boolean): Promise<string> {
  const timers: NodeJS.Timeout[] = [];
  t.teardown(() => timers.forEach((x) => clearTimeout(x)));
  return fakeServer(
    t,
    (m, send) => {
      if (m.t === 'push') timers.push(setTimeout(() => send({ t: 'done', id: m.id, received: 0, reused: m.size }), holdMs));
    },
    { perms: ['read', 'write'] },
    { autoPong },
  );
}

/** A client of slowPushServer with a blob to push. */
async function pusher(t: Parameters<typeof fakeServer>[0], holdMs: number, autoPong: boolean) {
  const url = await slowPushServer(t, holdMs, autoPong);
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('keepalive push', 50_000));
  const c = await connect(store, url, { idleTimeoutMs: IDLE_MS });
  t.teardown(() => c.close());
  return { c, name };
}

test.serial('a push whose server works in silence longer than the client idleTimeoutMs, answering pings: not cut', async (t) => {
  const { c, name } = await pusher(t, 4 * IDLE_MS, true);
  const began = performance.now();
  t.is(await settle(c.push(name), 10_000), 'resolved');
  t.true(performance.now() - began >= 4 * IDLE_MS - 50, 'it did wait for the server');
});

test.serial('the same push against a server that answers no ping (a hung process): cut with ERR_IDLE_TIMEOUT at idleTimeoutMs', async (t) => {
  const { c, name } = await pusher(t, 20 * IDLE_MS, false);
  const began = performance.now();
  const e = await t.throwsAsync(c.push(name));
  t.is(codeOf(e), 'ERR_IDLE_TIMEOUT', String(e));
  t.regex(String(e), /no pong/);
  t.true(performance.now() - began < 10 * IDLE_MS, `cut after ${Math.round(performance.now() - began)} ms`);
});

test.serial('a quick question (stat) is owed within idleTimeoutMs: a server that answers pings and not the stat is cut with ERR_IDLE_TIMEOUT', async (t) => {
  const url = await fakeServer(t, () => {}); // answers hello, then nothing; its ws answers pings
  const c = await connect(await tempStore(t), url, { idleTimeoutMs: IDLE_MS });
  t.teardown(() => c.close());
  t.is(await settle(c.stat('ab'.repeat(16)), 10 * IDLE_MS), 'ERR_IDLE_TIMEOUT');
});

test.serial('a pull from a server that answers pings but never sends the chunks: the stall check (stallMs, about progress) cuts it; the idle timer does not first', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, prngBytes('keepalive pull', 300_000));
  const srv = await serve(src, { tokens: { [RW]: ['read'] } });
  t.teardown(() => srv.close());
  // In front of the server, a proxy whose ws answers the client's pings, and which drops every `data` frame.
  const proxy = await wsProxy(srv.url, { toClient: (f, isBinary) => (decodedFrame(f, isBinary)?.t === 'data' ? null : f) });
  t.teardown(() => proxy.close());
  const c = await connect(await tempStore(t), proxy.url, { token: RW, idleTimeoutMs: IDLE_MS });
  t.teardown(() => c.close());
  const began = performance.now();
  const e = await t.throwsAsync(c.pull(name, { stallMs: 6 * IDLE_MS }));
  const ms = performance.now() - began;
  t.is(codeOf(e), 'ERR_IDLE_TIMEOUT', String(e));
  t.regex(String(e), /sent nothing for 2400 ms/, 'the stall check, not the idle timer');
  t.true(ms >= 6 * IDLE_MS - 100, `cut after ${Math.round(ms)} ms: pongs kept the idle timer (${IDLE_MS} ms) from cutting first`);
});

test.serial('server side: a client silent while the server holds its follow stat is pinged, and stays if it answers; one that answers no ping is cut at idleTimeoutMs (ERR_IDLE_TIMEOUT), not 30 s later', async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  t.teardown(() => w.closeWithoutFinalize().catch(() => {}));
  await w.appendBytes(prngBytes('keepalive follow', 100_000));
  await w.flush();
  const srv = await serve(store, { tokens: { [RW]: ['read'] }, idleTimeoutMs: IDLE_MS });
  t.teardown(() => srv.close());
  const open = async (autoPong: boolean) => {
    const raw = await RawClient.open(srv.url, { autoPong });
    t.teardown(() => raw.close());
    t.like(await raw.hello(RW), { t: 'welcome' });
    raw.send({ t: 'stat', id: 1, name: w.name, after: 100_000 }); // held until the blob grows past 100,000 bytes
    return raw;
  };
  const answering = await open(true);
  const mute = await open(false);
  t.true(await mute.waitClosed(10 * IDLE_MS), 'the client that answers no ping is cut');
  t.deepEqual(mute.fatalErrors.map((e) => e.code), ['ERR_IDLE_TIMEOUT']);
  await new Promise((r) => setTimeout(r, 4 * IDLE_MS));
  t.true(answering.isOpen, 'the one that answers pings stays, its stat held');
  await w.appendBytes(prngBytes('keepalive follow 2', 50_000));
  await w.flush();
  t.like(await answering.waitFor((m) => m.t === 'statr' || m.t === 'err', 25_000), { t: 'statr', id: 1, size: 150_000 });
});

test.serial('an idle client (nothing asked, nothing being answered) is not pinged: the server still closes it at idleTimeoutMs', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { [RW]: ['read'] }, idleTimeoutMs: IDLE_MS });
  t.teardown(() => srv.close());
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  let pings = 0;
  raw.ws.on('ping', () => pings++);
  t.like(await raw.hello(RW), { t: 'welcome' });
  t.true(await raw.waitClosed(10 * IDLE_MS));
  t.deepEqual(raw.fatalErrors.map((e) => e.code), ['ERR_IDLE_TIMEOUT']);
  t.is(pings, 0);
});

test.serial('a client that pulled large chunks and then sits idle: the time the server gives its own bytes to get there (at 1 KiB/s) ends with the pong to its ping behind them, and the client is closed at idleTimeoutMs', async (t) => {
  const chunker = { min: 1536 * 1024, avg: 2 * 1024 * 1024, max: 4 * 1024 * 1024 };
  const src = await tempStore(t, { chunker });
  const name = await putBlob(src, prngBytes('keepalive idle after pull', 6 * 1024 * 1024));
  const srv = await serve(src, { tokens: { [RW]: ['read'] }, idleTimeoutMs: IDLE_MS });
  t.teardown(() => srv.close());
  const c = await connect(await tempStore(t, { chunker }), srv.url, { token: RW });
  t.teardown(() => c.close());
  await c.pull(name);
  const done = performance.now();
  // Megabytes sent since the client's last get would buy it an hour at 1 KiB/s; delivered, they buy nothing.
  for (const end = done + 20 * IDLE_MS; srv.connections > 0 && performance.now() < end; ) await new Promise((r) => setTimeout(r, 50));
  t.is(srv.connections, 0, `still open ${Math.round(performance.now() - done)} ms after the pull`);
});
