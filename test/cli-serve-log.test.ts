// What a server tells of each connection: ServeOptions.onEvent in the
// library, and `cabstore serve`'s log line on stderr (--json: an object,
// --quiet: none). Real sockets on 127.0.0.1, the CLI in child processes.
import test, { type ExecutionContext } from 'ava';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { BlobStore, CabError, connect, serve, type ServeEvent } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, tempDir, tempStore } from './helpers/store.js';
import { cli, killed, ok, start, waitFor, writeFile } from './helpers/cli.js';

const MiB = 1024 * 1024;

/** Events as they come, and a way to wait for the next. */
function eventQueue(): { onEvent: (e: ServeEvent) => void; next: () => Promise<ServeEvent> } {
  const ready: ServeEvent[] = [];
  const waiting: Array<(e: ServeEvent) => void> = [];
  return {
    onEvent: (e) => (waiting.length ? waiting.shift()!(e) : ready.push(e)),
    next: () => (ready.length ? Promise.resolve(ready.shift()!) : new Promise((r) => waiting.push(r))),
  };
}

test('onEvent tells of each connection when it ends: pull, push, stat, a refused token', async (t) => {
  const server = await tempStore(t);
  const bytes = prngBytes('serve event', 1 * MiB + 17);
  const name = await putBlob(server, bytes);
  const q = eventQueue();
  const srv = await serve(server, { tokens: { rw: ['read', 'write'] }, onEvent: q.onEvent });
  t.teardown(() => srv.close());

  const client = await tempStore(t);
  const t0 = Date.now();
  const c = await connect(client, srv.url, { token: 'rw' });
  await c.pull(name);
  await c.close();
  const pull = await q.next();
  t.like(pull, { op: 'pull', blobs: [name], bytesSent: bytes.length, bytesReceived: 0 });
  t.is(pull.error, undefined, 'a clean close: no error');
  t.regex(pull.peer, /^127\.0\.0\.1:\d+$/);
  t.true(pull.start >= t0 - 1000 && pull.ms >= 0 && pull.start + pull.ms <= Date.now());

  const mine = await putBlob(client, prngBytes('pushed', 300_000));
  const p = await connect(client, srv.url, { token: 'rw' });
  await p.push(mine);
  await p.close();
  t.like(await q.next(), { op: 'push', blobs: [mine], bytesReceived: 300_000 });

  const missing = 'f'.repeat(32);
  const s = await connect(client, srv.url, { token: 'rw' });
  await t.throwsAsync(s.pull(missing), { instanceOf: CabError });
  await s.close();
  t.like(await q.next(), { op: 'stat', blobs: [missing], bytesSent: 0, error: 'ERR_NO_SUCH_BLOB' });

  await t.throwsAsync(connect(client, srv.url, { token: 'wrong' }), { instanceOf: CabError });
  t.like(await q.next(), { op: 'connect', blobs: [], error: 'ERR_AUTH' });
});

/** Starts `cabstore serve` on `store`; resolves with the child and its URL. */
async function startServe(t: ExecutionContext, store: string, tokens: string, extra: string[]): Promise<{ c: ChildProcess; url: string }> {
  const c = start(['--store', store, ...extra, 'serve', '--token-file', tokens]);
  t.teardown(() => killed(c));
  const url = (await waitFor(c, /(ws:\/\/127\.0\.0\.1:\d+)/, 'serve'))[1]!;
  return { c, url };
}

/** The child's stderr from now on: `lines()` waits for `n` lines. */
function stderrLines(c: ChildProcess): (n: number) => Promise<string[]> {
  let err = '';
  const waiters: Array<() => void> = [];
  c.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    for (const w of waiters.splice(0)) w();
  });
  return async (n) => {
    for (;;) {
      const lines = err.split('\n').filter(Boolean);
      if (lines.length >= n) return lines;
      await new Promise<void>((r) => waiters.push(r));
    }
  };
}

test('cabstore serve logs a line per transfer on stderr; --json makes it an object; --quiet silences it', async (t) => {
  const dir = tempDir(t);
  const server = path.join(dir, 'server');
  const client = path.join(dir, 'client');
  const tokens = writeFile(dir, 'tokens', Buffer.from('tok read,write\n'));
  const env = { CABSTORE_TOKEN: 'tok' };
  const s = await BlobStore.open(server);
  const name = await putBlob(s, prngBytes('serve log', 1 * MiB));
  await s.close();

  // The client's store exists: a pull that would make one first asks the server for a stat (a line of its own).
  await ok(t, client, ['init']);
  const text = await startServe(t, server, tokens, []);
  const lines = stderrLines(text.c);
  await ok(t, client, ['pull', text.url, name], { env });
  const [line] = await lines(1);
  t.regex(line!, new RegExp(`^\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z 127\\.0\\.0\\.1:\\d+ pull ${name} sent 1\\.0 MiB received 0 B \\d+\\.\\d\\ds ok$`), 'time, peer, op, blob, bytes, duration, outcome');
  const bad = await cli(['--store', client, 'stat', text.url, name], { env: { CABSTORE_TOKEN: 'nope' } });
  t.is(bad.code, 1, bad.stderr);
  const [, refused] = await lines(2);
  t.regex(refused!, / 127\.0\.0\.1:\d+ connect - sent 0 B received 0 B \d+\.\d\ds ERR_AUTH$/, 'a refused token is logged with its code');

  const js = await startServe(t, server, tokens, ['--json']);
  const jsLines = stderrLines(js.c);
  await ok(t, client, ['pull', js.url, name], { env }); // already here: the server sees a stat
  const [obj] = await jsLines(1);
  const e = JSON.parse(obj!) as ServeEvent & { time: string };
  t.like(e, { op: 'stat', blobs: [name], bytesSent: 0 });
  t.false('error' in e);
  t.is(new Date(e.time).getTime(), e.start + e.ms);

  const silent = start(['--store', server, 'serve', '--token-file', tokens, '--quiet']);
  t.teardown(() => killed(silent));
  let silentErr = '';
  silent.stderr!.on('data', (d: Buffer) => (silentErr += d.toString()));
  const silentUrl = (await waitFor(silent, /(ws:\/\/127\.0\.0\.1:\d+)/, 'serve --quiet'))[1]!;
  await ok(t, path.join(dir, 'client2'), ['pull', silentUrl, name], { env });
  // The server has logged (or not) before it exits: stop it and read all it wrote.
  await killed(silent, 'SIGTERM');
  t.is(silentErr, '', '--quiet: nothing on stderr');
});

test('cabstore serve --max-connections 1: a second client is refused with ERR_TOO_MANY_REQUESTS and logged with that code; served once the first has gone', async (t) => {
  const dir = tempDir(t);
  const server = path.join(dir, 'server');
  const tokens = writeFile(dir, 'tokens', Buffer.from('tok read,write\n'));
  const s = await BlobStore.open(server);
  const name = await putBlob(s, prngBytes('serve max connections', 100_000));
  await s.close();
  const child = start(['--store', server, 'serve', '--token-file', tokens, '--max-connections', '1']);
  t.teardown(() => killed(child));
  const one = { c: child, url: (await waitFor(child, /(ws:\/\/127\.0\.0\.1:\d+)/, 'serve'))[1]! };
  const lines = stderrLines(one.c);
  const holder = await connect(await tempStore(t), one.url, { token: 'tok' });
  t.teardown(() => holder.close());
  const client = path.join(dir, 'client');
  await ok(t, client, ['init']);
  const env = { CABSTORE_TOKEN: 'tok' };
  const refused = await cli(['--store', client, 'stat', one.url, name], { env });
  t.is(refused.code, 1, refused.stderr);
  t.regex(refused.stderr, /ERR_TOO_MANY_REQUESTS/);
  const [line] = await lines(1);
  t.regex(line!, / 127\.0\.0\.1:\d+ connect - sent 0 B received 0 B \d+\.\d\ds ERR_TOO_MANY_REQUESTS$/, 'the refusal is logged with its code');
  await holder.close();
  await lines(2);
  await ok(t, client, ['stat', one.url, name], { env });
  t.is((await cli(['--store', server, 'serve', '--token-file', tokens, '--max-connections', '0'])).code, 2, 'a count of 0 is bad usage');
});
