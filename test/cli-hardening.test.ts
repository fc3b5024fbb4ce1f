// The command line where it used to fail badly: token files whose meaning
// was guessed, a port in use (a stack trace), bad numbers (exit 1, not 2), a
// failed `get -o` (a temp file left), a store path that cannot be created
// (mkdir spun forever). Each runs the built CLI as a child process.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { BlobStore } from '../src/index.js';
import { prngBytes, prngStream } from '../tools/data.js';
import { tempDir } from './helpers/store.js';
import { assertFails, assertUsage, cli, finished, killed, ok, start, waitFor, writeFile, type RunResult } from './helpers/cli.js';

const MiB = 1024 * 1024;

/** Starts `serve` with a token file holding `line`; resolves with its URL, or with how it ended if it did not serve. */
async function serveWith(t: ExecutionContext, store: string, tokens: string): Promise<string | RunResult> {
  const c = start(['--store', store, 'serve', '--token-file', tokens]);
  t.teardown(() => killed(c));
  const done = finished(c, false);
  return waitFor(c, /^serving (\S+)$/m, 'serve').then(
    (m) => m[1]!,
    () => done,
  );
}

test('token file lines: "read write", "read,write", "read, write" give both permissions; anything else is bad usage (exit 2) naming the line', async (t) => {
  const dir = tempDir(t);
  const server = path.join(dir, 'server');
  const client = path.join(dir, 'client');
  const name = (await ok(t, client, ['put', writeFile(dir, 'f', prngBytes('token lines', 100_000))])).split(' ')[0]!;
  await ok(t, server, ['init']);
  for (const perms of ['read write', 'read,write', 'read, write', 'write  read', 'read ,write']) {
    const url = await serveWith(t, server, writeFile(dir, 'tokens', Buffer.from(`# a comment\ntok-1 ${perms}\n`)));
    if (typeof url !== 'string') {
      t.fail(`serve with "tok-1 ${perms}" exited ${url.code}: ${url.stderr}`);
      continue;
    }
    t.regex(await ok(t, client, ['push', url, name], { env: { CABSTORE_TOKEN: 'tok-1' } }), /sent/, `"${perms}" may write`);
    t.regex(await ok(t, client, ['stat', url, name], { env: { CABSTORE_TOKEN: 'tok-1' } }), /^size 100000$/m, `"${perms}" may read`);
    await ok(t, server, ['rm', name]);
  }
  for (const line of ['tok-1 rw', 'tok-1 read write admin', 'tok-1 read;write', 'tok-1 read,', 'tok-1,read', 'tok-1 READ', 'tok-1 read, write, read']) {
    const r = await serveWith(t, server, writeFile(dir, 'tokens', Buffer.from(`# tokens\n\n${line}\n`)));
    if (typeof r === 'string') {
      t.fail(`serve accepted "${line}"`);
      continue;
    }
    assertUsage(t, r, `"${line}"`);
    t.true(r.stderr.includes(':3:'), `names the line: ${r.stderr.split('\n')[0]}`);
    t.false(r.stderr.includes('tok-1'), 'does not print the token');
  }
});

test('serve on a port in use fails with one line naming ERR_IO (no stack trace), exit 1', async (t) => {
  const dir = tempDir(t);
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  t.teardown(() => busy.close());
  const port = (busy.address() as net.AddressInfo).port;
  const store = path.join(dir, 's');
  await ok(t, store, ['init']);
  const r = await cli(['--store', store, 'serve', '--insecure', '--port', String(port)]);
  assertFails(t, r, 'ERR_IO', 'serve on a port in use');
  t.regex(r.stderr, /EADDRINUSE|in use/);
});

test('bad numbers are bad usage (exit 2 with help): serve --port abc / 70000 / -1 / 1.5, gc --max-bytes abc', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 's');
  const bad = [
    ['serve', '--insecure', '--port', 'abc'],
    ['serve', '--insecure', '--port', '70000'],
    ['serve', '--insecure', '--port=-1'],
    ['serve', '--insecure', '--port', '1.5'],
    ['serve', '--insecure', '--port', ''],
    ['gc', '--max-bytes', 'abc'],
    ['gc', '--max-bytes', '12 parsecs'],
  ];
  for (const args of bad) assertUsage(t, await cli(['--store', store, ...args]), args.join(' '));
  t.false(fs.existsSync(store), 'bad usage touches no store');
  await ok(t, store, ['init']);
  t.regex(await ok(t, store, ['gc', '--max-bytes', '1GiB']), /^deleted 0 fragments/, 'a good size still works');
});

test('get -o FILE that fails half-way (a fragment is missing) leaves neither FILE nor its temp file', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  // Small fragments, so that the blob spans several and the first bytes can be read before the missing one.
  const store = await BlobStore.open(root, { fragmentSize: 1 * MiB });
  const w = await store.newBlobWriter();
  const next = prngStream('get -o');
  for (let i = 0; i < 8; i++) await w.appendBytes(next(MiB / 2));
  await w.close();
  const name = w.name;
  await store.close();
  const cas = path.join(root, 'cas');
  const fragments = fs.readdirSync(cas, { recursive: true }).map(String).filter((f) => /[0-9a-f]{64}$/.test(f));
  t.true(fragments.length >= 3, `several fragments: ${fragments.length}`);
  const outDir = path.join(dir, 'out');
  fs.mkdirSync(outDir);
  for (const f of fragments.slice(1)) fs.rmSync(path.join(cas, f));
  const r = await cli(['--store', root, 'get', name, '-o', path.join(outDir, 'F')]);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /^cabstore: ERR_[A-Z_]+: /);
  t.deepEqual(fs.readdirSync(outDir), [], 'no F, no F.<pid>.tmp');
});

test('--store on a path that cannot be created (/proc/xx, under a file) fails at once with ERR_IO (under a file: ERR_BAD_STORE, not a directory), exit 1', async (t) => {
  const dir = tempDir(t);
  const file = writeFile(dir, 'file', Buffer.from('x'));
  for (const [store, code] of [['/proc/xx', 'ERR_IO'], ['/proc/xx/yy', 'ERR_IO'], [path.join(file, 'store'), 'ERR_BAD_STORE']] as const) {
    // put: a writing command, so it tries to make the store.
    const c = start(['--store', store, 'put', file]);
    const timer = setTimeout(() => c.kill('SIGKILL'), 20_000);
    const r = await finished(c);
    clearTimeout(timer);
    t.is(r.signal, null, `--store ${store}: ended by itself, not killed after 20 s`);
    assertFails(t, r, code, `--store ${store}`);
  }
});
