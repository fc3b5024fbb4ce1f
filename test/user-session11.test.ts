// The eleventh session's new user, following only README.md, docs/API.md
// and --help, from a shell: what they met that did not do what the docs say.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { BlobStore, Chunker, MerkleHasher, chunk, connect, merkleRoot, serve, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { serveRw } from './helpers/transfer.js';
import { decodedFrame, wsProxy } from './helpers/proxies.js';
import { CLI, assertFails, cli, finished, ok, putLines, start, writeFile } from './helpers/cli.js';

/** Runs the CLI with stdin and stdout given as file descriptors (a shell's `< FILE > FILE`). */
function withFds(args: string[], stdin: number | 'ignore', stdout: number | 'pipe'): ReturnType<typeof finished> {
  const env = { ...process.env };
  delete env.CABSTORE_DIR;
  return finished(spawn(process.execPath, [CLI, ...args], { env, stdio: [stdin, stdout, 'pipe'] }), stdout === 'pipe');
}

test('cat and ls to a full device (> /dev/full): exit 1 naming ERR_NO_SPACE, no stack trace', async (t) => {
  if (!fs.existsSync('/dev/full')) return t.pass('NOT RUN: no /dev/full here');
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const [{ name }] = putLines(await ok(t, store, ['put', writeFile(dir, 'f', Buffer.alloc(200_000, 1))]));
  const full = fs.openSync('/dev/full', 'w');
  t.teardown(() => fs.closeSync(full));
  for (const args of [['cat', name!], ['get', name!], ['ls']]) {
    const r = await withFds(['--store', store, ...args], 'ignore', full);
    assertFails(t, r, 'ERR_NO_SPACE', `${args[0]} > /dev/full`);
    t.notRegex(r.stderr, /\n\s+at /, `${args[0]} > /dev/full: a message, not a stack trace`);
  }
});

test('put - with a directory on stdin (< /tmp) stores nothing: ERR_NO_SUCH_FILE, not an empty blob', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  await ok(t, store, ['init']);
  const fd = fs.openSync(dir, 'r');
  t.teardown(() => fs.closeSync(fd));
  for (const arg of ['-', '/dev/stdin']) {
    const r = await withFds(['--store', store, 'put', arg], fd, 'pipe');
    assertFails(t, r, 'ERR_NO_SUCH_FILE', `put ${arg} < a directory`);
    t.regex(r.stderr, /directory/, `put ${arg} < a directory: says stdin is a directory`);
  }
  t.is((await cli(['--store', store, 'ls'])).out, '', 'no blob was made');
});

test('a --store that is a symbolic link to nothing: ls, put and init say so (ERR_BAD_STORE), not "init makes one" then ERR_IO on a temp file', async (t) => {
  const dir = tempDir(t);
  const link = path.join(dir, 'store');
  fs.symlinkSync(path.join(dir, 'elsewhere'), link);
  const file = writeFile(dir, 'f', Buffer.from('bytes'));
  for (const args of [['ls'], ['put', file], ['init']]) {
    const r = await cli(['--store', link, ...args]);
    assertFails(t, r, 'ERR_BAD_STORE', `${args[0]} through a link to nothing`);
    t.regex(r.stderr, /symbolic link to .*elsewhere, which does not exist/, `${args[0]}: names the link and its missing target`);
    t.notRegex(r.stderr, /cabstore init/, `${args[0]}: does not advise an init that cannot work`);
  }
  t.false(fs.existsSync(path.join(dir, 'elsewhere')), 'nothing was made');
  fs.mkdirSync(path.join(dir, 'elsewhere'));
  t.is(putLines(await ok(t, link, ['put', file])).length, 1, 'once the directory exists, the link serves as a store');
});

test('two pulls of one blob into one store at once: one makes it, the other finds it held (done, or ERR_BLOB_LOCKED), never ERR_BLOB_EXISTS', async (t) => {
  const server = await tempStore(t);
  const bytes = prngBytes('two pulls at once', 3 * 1024 * 1024 + 17);
  const srv = await serveRw(t, server, 'tok');
  const here = await tempStore(t);
  const [a, b] = [await connect(here, srv.url, { token: 'tok' }), await connect(here, srv.url, { token: 'tok' })];
  t.teardown(() => Promise.all([a.close(), b.close()]));
  for (let round = 0; round < 4; round++) {
    const name = await putBlob(server, bytes);
    const results = await Promise.allSettled([a.pull(name), b.pull(name)]);
    for (const r of results) {
      if (r.status === 'rejected') t.is((r.reason as { code?: string }).code, 'ERR_BLOB_LOCKED', `round ${round}: ${String(r.reason)}`);
    }
    t.true(results.some((r) => r.status === 'fulfilled'), `round ${round}: one pull made the blob`);
    t.true(Buffer.from(await readAll(here, name)).equals(bytes), `round ${round}: the blob reads back whole`);
  }
});

test('a fragment deleted by hand: fsck says it is missing (not that bytes fail their hash), and a read says what to do', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const [{ name }] = putLines(await ok(t, store, ['put', writeFile(dir, 'f', prngBytes('missing fragment', 300_000))]));
  const cas = path.join(store, 'cas');
  for (const a of fs.readdirSync(cas)) for (const b of fs.readdirSync(path.join(cas, a))) for (const f of fs.readdirSync(path.join(cas, a, b))) fs.rmSync(path.join(cas, a, b, f));
  const get = await cli(['--store', store, 'get', name!]);
  assertFails(t, get, 'ERR_FRAGMENT_MISSING', 'get');
  t.regex(get.stderr, /fsck --repair.*pull/, 'get: says how to go on');
  const r = await cli(['--store', store, '--json', 'fsck']);
  t.is(r.code, 1);
  const problems = (JSON.parse(r.out) as { problems: Array<{ kind: string; detail: string }> }).problems.filter((p) => p.kind === 'missing-fragment');
  t.is(problems.length, 1, r.out);
  t.regex(problems[0]!.detail, /missing/, 'the detail says the fragment is missing');
  t.notRegex(problems[0]!.detail, /hash/, 'and not that bytes failed a hash check, which nothing did');
});

test('pull NAME from a signpost peer whose token name has no $CABSTORE_TOKEN_<NAME>: the message names the variable to set', async (t) => {
  const server = await tempStore(t);
  const name = await putBlob(server, prngBytes('signpost token', 100_000));
  const srv = await serveRw(t, server, 'tok');
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  await ok(t, store, ['init']);
  await ok(t, store, ['signpost', name, '--add', srv.url, '--token-name', 'lab-1']);
  const r = await cli(['--store', store, 'pull', name]);
  assertFails(t, r, 'ERR_AUTH', 'pull NAME without the token');
  t.regex(r.stderr, /\$CABSTORE_TOKEN_LAB_1\b/, 'names the variable');
  t.notRegex(r.stderr, /tokens option/, "not the library's option");
  await ok(t, store, ['pull', name], { env: { CABSTORE_TOKEN_LAB_1: 'tok' } });
});

/**
 * A served blob of 6 MiB, and in front of the server a proxy that passes the
 * first `pass` frames of answers of kind `kind`, then drops the rest (the
 * server alive, its answers never coming) until `proxy.open()`. `held()`
 * resolves true once a frame was dropped.
 */
async function heldServer(t: ExecutionContext, seed: string, kind: 'data' | 'ranger' = 'data', pass = 8) {
  const server = await tempStore(t);
  const bytes = prngBytes(seed, 6 * 1024 * 1024 + 5);
  const name = await putBlob(server, bytes);
  const srv = await serveRw(t, server, 'tok');
  let seen = 0;
  let open = false;
  const ws = await wsProxy(srv.url, { toClient: (f, isBinary) => (open || decodedFrame(f, isBinary)?.t !== kind || seen++ < pass ? f : null) });
  t.teardown(() => ws.close());
  const held = async () => {
    for (let i = 0; seen <= pass && i < 600; i++) await new Promise((r) => setTimeout(r, 50));
    return seen > pass;
  };
  return { bytes, name, srv, held, proxy: { url: ws.url, open: () => void (open = true) } };
}

test('pull stopped by Ctrl-C (SIGINT): keeps what it verified, says so and the command that goes on (as put does), dies of SIGINT; that command finishes it', async (t) => {
  const { bytes, name, proxy, held: holding } = await heldServer(t, 'pull interrupted');
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const env = { CABSTORE_TOKEN: 'tok' };
  const c = start(['--store', store, 'pull', proxy.url, name], { env });
  const done = finished(c);
  t.true(await holding(), 'the pull got its first data and waits for more');
  c.kill('SIGINT');
  const r = await done;
  t.is(r.signal, 'SIGINT', `ended by SIGINT (exit ${r.code}; stderr: ${r.stderr})`);
  const m = /interrupted: blob ([0-9a-f]{32}) holds the first (\d+) bytes, durably, unfinalized; to go on: (.*)$/m.exec(r.stderr);
  t.truthy(m, r.stderr);
  t.is(m![1], name);
  const held = Number(m![2]);
  t.true(held > 0 && held < bytes.length, `holds a prefix (${held} bytes)`);
  t.deepEqual((await cli(['--store', store, '--json', 'stat', name])).out.includes(`"size":${held}`), true, 'stat says as much');
  t.is(m![3], `cabstore --store ${store} pull ${proxy.url} ${name}`);
  proxy.open();
  const again = await cli(['--store', store, '--json', 'pull', proxy.url, name], { env });
  t.is(again.code, 0, again.stderr);
  t.is((JSON.parse(again.out) as { resumedFrom: number }).resumedFrom, held, 'the rerun resumes where it stopped');
  t.true((await cli(['--store', store, 'get', name])).stdout.equals(bytes));
});

test('pull({ signal }) aborted while a live server is slow to send what was asked: rejects ERR_ABORTED at once, not at the stall limit (30 s), keeping what landed', async (t) => {
  const { bytes, name, srv, proxy, held } = await heldServer(t, 'abort while asked');
  const here = await tempStore(t);
  const c = await connect(here, proxy.url, { token: 'tok' });
  t.teardown(() => c.close());
  const ac = new AbortController();
  const pull = c.pull(name, { signal: ac.signal });
  pull.catch(() => {});
  t.true(await held(), 'some data landed, the rest is held');
  const began = performance.now();
  ac.abort();
  const e = await t.throwsAsync(pull);
  const ms = performance.now() - began;
  t.is((e as { code?: string }).code, 'ERR_ABORTED', String(e));
  t.true(ms < 10_000, `rejected ${Math.round(ms)} ms after the abort`);
  const st = await here.stat(name);
  t.false(st.finalized);
  t.true(st.size > 0, `what landed was kept (${st.size} bytes)`);
  const direct = await connect(here, srv.url, { token: 'tok' });
  const again = await direct.pull(name);
  await direct.close();
  t.is(again.resumedFrom, st.size, 'a pull from the server itself resumes from there');
  t.true(Buffer.from(await readAll(here, name)).equals(bytes));
});

test('closeWithoutFinalize or close called again while the first waits behind an append: both resolve, and store.close() after one does not reject with ERR_CLOSED', async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  const append = w.appendBytes(Buffer.alloc(8 << 20, 1));
  t.deepEqual((await Promise.allSettled([w.closeWithoutFinalize(), w.closeWithoutFinalize(), append])).map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled']);
  t.is((await store.stat(w.name)).size, 8 << 20, 'what was appended is durable');
  const f = await store.newBlobWriter();
  const append2 = f.appendBytes(Buffer.alloc(8 << 20, 2));
  t.deepEqual((await Promise.allSettled([f.close(), f.close(), append2])).map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled']);
  t.true((await store.stat(f.name)).finalized);
  const g = await store.newBlobWriter();
  const append3 = g.appendBytes(Buffer.alloc(8 << 20, 3));
  const closing = g.closeWithoutFinalize(); // a transfer's cleanup, say, still queued when the app shuts down
  await t.notThrowsAsync(store.close(), 'the store closes cleanly');
  await t.notThrowsAsync(Promise.all([closing, append3]));
});

test('ERR_GC_RUNNING says how to wait for the other GC', async (t) => {
  const store = await tempStore(t);
  for (let i = 0; i < 20; i++) await store.deleteBlob(await putBlob(store, prngBytes(`gc ${i}`, 70_000)));
  const [a, b] = await Promise.allSettled([store.gc(), store.gc()]);
  const refused = [a, b].find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
  if (!refused) return t.pass('NOT RUN: the first GC ended before the second began');
  t.is((refused.reason as { code?: string }).code, 'ERR_GC_RUNNING');
  t.regex(String(refused.reason), /wait: true.*cabstore gc --wait/);
});

test('get and cat of a blob not finalized write the bytes durable so far, and say on stderr that it is not the whole blob', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const store = await BlobStore.open(root);
  const w = await store.newBlobWriter();
  const bytes = prngBytes('partial get', 200_000);
  await w.appendBytes(bytes);
  await w.closeWithoutFinalize();
  await store.close();
  for (const args of [['get', w.name], ['cat', w.name], ['get', w.name, '-o', path.join(dir, 'out')]]) {
    const r = await cli(['--store', root, ...args]);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stderr, new RegExp(`blob ${w.name} is not finalized: these are the 200000 bytes durable so far`), args.join(' '));
  }
  t.true(fs.readFileSync(path.join(dir, 'out')).equals(bytes));
});

test('stat URL NAME of a wss:// server with its own CA: --ca, as pull, push and get --from take it', async (t) => {
  const dir = tempDir(t);
  const [key, cert] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')];
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const server = await tempStore(t);
  const name = await putBlob(server, prngBytes('stat over wss', 50_000));
  const srv = await serve(server, { tokens: { tok: ['read'] }, tls: { cert: fs.readFileSync(cert), key: fs.readFileSync(key) } });
  t.teardown(() => srv.close());
  const r = await cli(['--json', 'stat', srv.url, name, '--ca', cert], { env: { CABSTORE_TOKEN: 'tok' } });
  t.is(r.code, 0, r.stderr);
  t.like(JSON.parse(r.out), { name, size: 50_000, finalized: true });
  assertFails(t, await cli(['stat', srv.url, name], { env: { CABSTORE_TOKEN: 'tok' } }), 'ERR_CONNECTION', 'without --ca');
});

test('BlobStore.open at a new path with bad chunker parameters: ERR_BAD_CHUNKER_PARAMS, and no directory left behind', async (t) => {
  const root = path.join(tempDir(t), 'new', 'store');
  const e = await t.throwsAsync(BlobStore.open(root, { chunker: { min: 1, avg: 3, max: 2 } }));
  t.is((e as { code?: string }).code, 'ERR_BAD_CHUNKER_PARAMS');
  t.false(fs.existsSync(path.dirname(root)), 'nothing made');
});

test('the hasher and the chunker refuse what is not bytes with ERR_BAD_ARGUMENT, instead of a NaN size or a wrong root', (t) => {
  const bad: Array<[string, () => unknown]> = [
    ['update(string)', () => new MerkleHasher().update('abc' as unknown as Uint8Array)],
    ['update(number)', () => new MerkleHasher().update(5 as unknown as Uint8Array)],
    ['update(Uint16Array)', () => new MerkleHasher().update(new Uint16Array(3) as unknown as Uint8Array)],
    ['pushLeaves(31 bytes)', () => new MerkleHasher().pushLeaves(new Uint8Array(31))],
    ['pushLeaves mid-leaf', () => new MerkleHasher().update(new Uint8Array(5)).pushLeaves(new Uint8Array(32))],
    ['chunk(string)', () => chunk('abc' as unknown as Uint8Array)],
    ['Chunker.push(string)', () => new Chunker().push('abc' as unknown as Uint8Array)],
  ];
  for (const [what, f] of bad) t.is((t.throws(f, undefined, what) as { code?: string }).code, 'ERR_BAD_ARGUMENT', what);
  t.is(toHex(new MerkleHasher().update(Buffer.from('abc')).digest()), toHex(merkleRoot(new Uint8Array([97, 98, 99]))), 'a Buffer is bytes');
});

test('import of a truncated or corrupt bundle into no store makes no store (README: only once the bundle checks out); a good one makes it', async (t) => {
  const dir = tempDir(t);
  const from = path.join(dir, 'from');
  const [{ name }] = putLines(await ok(t, from, ['put', writeFile(dir, 'f', prngBytes('bundle check', 400_000))]));
  const bundle = path.join(dir, 'b.bundle');
  await ok(t, from, ['export', name!, '-o', bundle]);
  const whole = fs.readFileSync(bundle);
  const cut = writeFile(dir, 'cut.bundle', whole.subarray(0, whole.length - 100));
  const flipped = Buffer.from(whole);
  flipped[Math.floor(whole.length / 2)]! ^= 0xff;
  const bad = writeFile(dir, 'bad.bundle', flipped);
  for (const [file, code] of [[cut, 'ERR_BUNDLE_TRUNCATED'], [bad, 'ERR_BUNDLE_CORRUPT']] as const) {
    const store = path.join(dir, `new-${code}`);
    assertFails(t, await cli(['--store', store, 'import', file]), code, path.basename(file));
    t.false(fs.existsSync(store), `${path.basename(file)}: no store made`);
  }
  const store = path.join(dir, 'new-good');
  await ok(t, store, ['import', bundle]);
  t.true((await cli(['--store', store, 'get', name!])).stdout.equals(fs.readFileSync(path.join(dir, 'f'))));
});

test('get --from URL -o FILE stopped by Ctrl-C: no FILE, no temp file beside it, no scratch store left in the temp folder; it dies of SIGINT', async (t) => {
  const { name, proxy, held } = await heldServer(t, 'get interrupted', 'ranger', 1);
  const dir = tempDir(t);
  const [tmp, outDir] = [path.join(dir, 'tmp'), path.join(dir, 'out')];
  fs.mkdirSync(tmp);
  fs.mkdirSync(outDir);
  const c = start(['get', name, '--from', proxy.url, '-o', path.join(outDir, 'blob.bin')], { env: { CABSTORE_TOKEN: 'tok', TMPDIR: tmp } });
  const done = finished(c);
  t.true(await held(), 'the get has its first range and waits for the next');
  c.kill('SIGINT');
  const r = await done;
  t.is(r.signal, 'SIGINT', `ended by SIGINT (exit ${r.code}; stderr: ${r.stderr})`);
  t.regex(r.stderr, /interrupted: .*blob\.bin not written/);
  t.deepEqual(fs.readdirSync(outDir), [], 'neither FILE nor its temp file');
  t.deepEqual(fs.readdirSync(tmp), [], 'no scratch store left');
});

test('get --follow -o FILE of a blob nobody writes, stopped by Ctrl-C: no FILE and no temp file beside it', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const store = await BlobStore.open(root);
  const w = await store.newBlobWriter();
  await w.appendBytes(prngBytes('follow interrupted', 100_000));
  await w.closeWithoutFinalize();
  await store.close();
  const outDir = path.join(dir, 'out');
  fs.mkdirSync(outDir);
  const c = start(['--store', root, 'get', w.name, '--follow', '-o', path.join(outDir, 'blob.bin')]);
  const done = finished(c);
  for (let i = 0; fs.readdirSync(outDir).length === 0 && i < 600; i++) await new Promise((r) => setTimeout(r, 50));
  t.is(fs.readdirSync(outDir).length, 1, 'the get is writing its temp file');
  await new Promise((r) => setTimeout(r, 300));
  c.kill('SIGINT');
  const r = await done;
  t.is(r.signal, 'SIGINT', `ended by SIGINT (exit ${r.code}; stderr: ${r.stderr})`);
  t.deepEqual(fs.readdirSync(outDir), [], 'neither FILE nor its temp file');
});

test("a follower's stream destroyed while it waits for more bytes (a pipeline whose consumer went away) ends at once, not when the writer next writes", async (t) => {
  const store = await tempStore(t);
  const w = await store.newBlobWriter();
  t.teardown(() => w.closeWithoutFinalize());
  await w.appendBytes(prngBytes('follow destroyed', 1000));
  await w.flush();
  const r = await store.newBlobReader(w.name, { follow: true });
  t.teardown(() => r.close());
  const stream = r.stream();
  const got: Buffer[] = [];
  const reading = (async () => {
    for await (const b of stream) got.push(b as Buffer);
  })();
  reading.catch(() => {});
  while (got.length === 0) await new Promise((res) => setTimeout(res, 20));
  await new Promise((res) => setTimeout(res, 200)); // now waiting for more
  const began = performance.now();
  stream.destroy(new Error('the consumer went away'));
  const ended = await Promise.race([reading.then(() => 'ended', (e: Error) => e.message), new Promise((res) => setTimeout(() => res('still waiting'), 5000))]);
  t.is(ended, 'the consumer went away');
  t.true(performance.now() - began < 2000, `ended ${Math.round(performance.now() - began)} ms after destroy`);
});
