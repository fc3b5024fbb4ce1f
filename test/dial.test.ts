// dial(): a connection opened before the store that takes it over
// (connect(store, dial)), with a blob's stat asked ahead; and the CLI pull
// that uses it, which asks a server for the blob on the pull's own
// connection before it makes a store. Real sockets, real stores, the built
// CLI as a child process.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, connect, dial, serve, toHex, type ServeEvent } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { codeOf, putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { assertFails, cli, ok } from './helpers/cli.js';

const TOKEN = 'dial-token';
const KiB = 1024;

/** A served store holding one blob; the server's events (one per connection) are kept. */
async function served(t: Parameters<typeof tempStore>[0], bytes: Uint8Array, options: { maxRequests?: number } = {}) {
  const store = await tempStore(t);
  const name = await putBlob(store, bytes);
  const events: ServeEvent[] = [];
  const srv = await serve(store, { tokens: { [TOKEN]: ['read', 'write'] }, onEvent: (e) => events.push(e), ...options });
  t.teardown(() => srv.close());
  return { store, name, srv, events };
}

/** Resolves once the server has no connection open (a closed dial's socket is gone there too). */
async function drained(srv: { connections: number }): Promise<boolean> {
  for (let i = 0; i < 100 && srv.connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
  return srv.connections === 0;
}

test('a dial asks a stat with no store; connect(store, dial) takes it over, and a pull takes the stat asked ahead instead of asking again', async (t) => {
  const bytes = prngBytes('dial pull', 3 * 1024 * KiB);
  const { name, srv, events } = await served(t, bytes);
  const d = dial(srv.url, { token: TOKEN, prefetch: name });
  await d.ready;
  const st = await d.stat(name);
  t.is(st.size, bytes.length);
  t.true(st.finalized);
  t.is(JSON.parse(JSON.stringify(st)).hash, toHex(st.hash!), 'the hash as hex in JSON, as CabClient.stat gives it');
  t.is(await codeOf(d.stat('ab'.repeat(16))), 'ERR_NO_SUCH_BLOB', 'an error answer fails that stat only');

  const store = await tempStore(t);
  const c = await connect(store, d);
  const r = await c.pull(name);
  t.is(r.size, bytes.length);
  t.deepEqual(await readAll(store, name), Buffer.from(bytes));
  t.is(await codeOf(d.stat(name)), 'ERR_BAD_ARGUMENT', 'a dial taken by connect asks nothing more');
  t.is(await codeOf(connect(store, d)), 'ERR_BAD_ARGUMENT', 'nor is it taken twice');
  const dialed = c.wire.sent;
  await c.close();

  // The same pull over a plain connect sends as many bytes: the stat the dial asked ahead was not asked again.
  const again = await tempStore(t);
  const plain = await connect(again, srv.url, { token: TOKEN });
  t.is(await codeOf(plain.stat('ab'.repeat(16))), 'ERR_NO_SUCH_BLOB');
  await plain.pull(name);
  t.is(dialed, plain.wire.sent, 'the same requests, each sent once');
  await plain.close();
  t.true(await drained(srv));
  t.is(events.length, 2, 'one connection each');
});

test('a dial that fails rejects ready, stat and connect with the code connect gives, and leaves no socket open', async (t) => {
  const { name, srv } = await served(t, prngBytes('dial fails', 100 * KiB));
  const store = await tempStore(t);
  // Nothing listens on port 1.
  const down = dial('ws://127.0.0.1:1', { prefetch: name });
  t.is(await codeOf(down.ready), 'ERR_CONNECTION');
  t.is(await codeOf(down.stat(name)), 'ERR_CONNECTION');
  t.is(await codeOf(connect(store, down)), 'ERR_CONNECTION');
  // A token the server does not know: its err, as connect gives it.
  const refused = dial(srv.url, { token: 'wrong', prefetch: name });
  t.is(await codeOf(refused.stat(name)), 'ERR_AUTH');
  t.is(await codeOf(connect(store, refused)), 'ERR_AUTH');
  // Cancelled while connecting: ERR_ABORTED, the socket closed.
  const ac = new AbortController();
  const aborted = dial(srv.url, { token: TOKEN, signal: ac.signal });
  ac.abort(new Error('changed my mind'));
  t.is(await codeOf(aborted.ready), 'ERR_ABORTED');
  t.is(await codeOf(connect(store, aborted)), 'ERR_ABORTED');
  // A dial no store took (its store failed to open): close() ends it, at the server too.
  const unused = dial(srv.url, { token: TOKEN, prefetch: name });
  await unused.stat(name);
  t.is(srv.connections, 1);
  await unused.close();
  await unused.close();
  t.true(await drained(srv), 'closed at the server');
  t.is(await codeOf(unused.stat(name)), 'ERR_CONNECTION');
});

test("dial's and connect's bad arguments: ERR_BAD_ARGUMENT (chunker parameters no store has: ERR_BAD_CHUNKER_PARAMS), before any socket", async (t) => {
  const store = await tempStore(t);
  const bad: Array<[() => unknown, string]> = [
    [() => dial('http://127.0.0.1:1'), 'ERR_BAD_ARGUMENT'],
    [() => dial('ws://127.0.0.1:1', { timeoutMs: -1 }), 'ERR_BAD_ARGUMENT'],
    [() => dial('ws://127.0.0.1:1', { prefetch: 'no good' }), 'ERR_INVALID_BLOB_NAME'],
    [() => dial('ws://127.0.0.1:1', { chunker: { min: 64, avg: 100, max: 1024 } }), 'ERR_BAD_CHUNKER_PARAMS'],
    [() => dial('ws://127.0.0.1:1', { chunker: 5 as never }), 'ERR_BAD_ARGUMENT'],
  ];
  for (const [f, code] of bad) t.is(await codeOf(Promise.resolve().then(f)), code, f.toString());
  t.is(await codeOf(connect(store, 'ws://127.0.0.1:1', { chunker: {} } as never)), 'ERR_BAD_ARGUMENT', 'the chunker is the store\'s');
  const d = dial('ws://127.0.0.1:1');
  t.is(await codeOf(connect(store, d, { token: 'x' })), 'ERR_BAD_ARGUMENT', 'a dial brings its own options');
  t.is(await codeOf(connect({} as BlobStore, d)), 'ERR_BAD_ARGUMENT');
  await d.close();
});

test('a store of other chunker parameters than the dial announced: connect dials again with its own, and the pull and a push work', async (t) => {
  const bytes = prngBytes('dial chunker', 600 * KiB);
  const { name, srv, events } = await served(t, bytes);
  const other = await tempStore(t, { chunker: { min: 4 * KiB, avg: 16 * KiB, max: 64 * KiB } });
  const d = dial(srv.url, { token: TOKEN, prefetch: name });
  const c = await connect(other, d);
  await c.pull(name);
  t.deepEqual(await readAll(other, name), Buffer.from(bytes));
  const mine = await putBlob(other, prngBytes('dial chunker push', 300 * KiB));
  t.is((await c.push(mine)).name, mine);
  await c.close();
  t.true(await drained(srv));
  t.is(events.length, 2, 'the dial, closed, and the connection with the store\'s parameters');
});

test('a server that allows one request at a time: the stat asked behind the hello is within its window, and the pull works', async (t) => {
  const bytes = prngBytes('dial one request', 400 * KiB);
  const { name, srv, events } = await served(t, bytes, { maxRequests: 1 });
  const store = await tempStore(t);
  const d = dial(srv.url, { token: TOKEN, prefetch: name });
  t.true((await d.stat(name)).finalized);
  const c = await connect(store, d);
  await c.pull(name);
  t.deepEqual(await readAll(store, name), Buffer.from(bytes));
  await c.close();
  t.true(await drained(srv));
  t.is(events[0]?.error, undefined, 'never over its window');
});

test('CLI pull into a store not made yet: one connection asks and pulls; a blob not finalized, or a refused token, makes no store', async (t) => {
  const dir = tempDir(t);
  const bytes = prngBytes('dial cli', 300 * KiB);
  const { store, name, srv, events } = await served(t, bytes);
  // A temp folder of its own: other CLI commands of the suite, running at once, make scratch stores in the shared one.
  const tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp);
  const env = { CABSTORE_TOKEN: TOKEN, TMPDIR: tmp };
  const scratch = () => fs.readdirSync(tmp).filter((f) => f.startsWith('cabstore-scratch-')).length;
  const before = scratch();
  const made = path.join(dir, 'made');
  t.regex(await ok(t, made, ['pull', srv.url, name], { env }), new RegExp(`^${name} `));
  t.true(fs.existsSync(path.join(made, 'cabstore.json')));
  t.true(await drained(srv));
  t.is(events.length, 1, 'the pull asked on its own connection');
  t.is(events[0]!.op, 'pull');
  t.is(scratch(), before, 'no scratch store');

  const w = await store.newBlobWriter('cd'.repeat(16));
  await w.appendBytes(prngBytes('dial cli partial', 50 * KiB));
  await w.closeWithoutFinalize();
  const none = path.join(dir, 'none');
  assertFails(t, await cli(['--store', none, 'pull', srv.url, 'cd'.repeat(16)], { env }), 'ERR_BLOB_NOT_FINALIZED', 'unfinalized');
  assertFails(t, await cli(['--store', none, 'pull', srv.url, name], { env: { CABSTORE_TOKEN: 'wrong' } }), 'ERR_AUTH', 'refused');
  t.false(fs.existsSync(none), 'no store made');
});

test('a blob the server deletes after the stat a dial asked ahead: the pull fails ERR_NO_SUCH_BLOB and leaves no empty blob it made; a blob it resumes stays', async (t) => {
  const bytes = prngBytes('dial gone', 300 * KiB);
  const { store: server, name, srv } = await served(t, bytes);
  const store = await tempStore(t);
  const pullGone = async () => {
    const d = dial(srv.url, { token: TOKEN, prefetch: name });
    t.true((await d.stat(name)).finalized);
    await server.deleteBlob(name);
    const c = await connect(store, d);
    try {
      return await codeOf(c.pull(name));
    } finally {
      await c.close();
    }
  };
  t.is(await pullGone(), 'ERR_NO_SUCH_BLOB');
  t.false(await store.has(name), 'the blob made for the pull went again');
  t.deepEqual([...store.index.blobNames()], [], "nor is it in the index");

  // An unfinalized blob of that name here, with bytes (an interrupted pull, or anyone's): never removed.
  await putBlob(server, bytes, name);
  const w = await store.newBlobWriter(name);
  await w.appendBytes(bytes.subarray(0, 100 * KiB));
  await w.closeWithoutFinalize();
  t.is(await pullGone(), 'ERR_NO_SUCH_BLOB');
  const st = await store.stat(name);
  t.is(st.size, 100 * KiB, 'the blob it would have resumed is kept, bytes and all');
  t.false(st.finalized);
});
