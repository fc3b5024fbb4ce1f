// Ninth hostile session: what landed in the ninth session. The CLI as an
// esbuild bundle run from a V8 code cache (tools/launch.ts), the sync-table
// record size limit, tus metadata keys, and the idle cut of a silent peer.
// Each test is a finding (fails until fixed) or, named "held: ...", an attack
// the code withstood. Real processes, real sockets on 127.0.0.1, real files.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { BlobStore, connect, isCabError, serve, type BlobMetadata } from '../src/index.js';
import { MAX_RECORD_BYTES, recordBytes } from '../src/index/table-records.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { cli, finished, killed, start, waitFor, writeFile, type RunOptions, type RunResult } from './helpers/cli.js';
import { served, tusHeaders } from './helpers/http.js';
import { servePeer, connectPeer } from './helpers/peers.js';
import { fakeServer, settle } from './helpers/hostile.js';
import { slowLink } from './helpers/slow-link.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const b64 = (s: string) => Buffer.from(s).toString('base64');

// ---------------------------------------------------------------------------
// 1. The bundled CLI and its code cache

/** A store made and filled by the CLI with the cache off, and what `ls` prints without a cache. */
async function cliStore(t: ExecutionContext): Promise<{ store: string; plain: RunResult }> {
  const root = tempDir(t);
  const store = path.join(root, 'store');
  const off = { env: { CABSTORE_CODE_CACHE: 'off' } };
  const put = await cli(['--store', store, 'put', writeFile(root, 'a.bin', prngBytes('hostile9', 100_000))], off);
  if (put.code !== 0) throw new Error(`put: ${put.stderr}`);
  const plain = await cli(['--store', store, 'ls'], off);
  return { store, plain };
}

/** Runs `ls` and asserts it is exactly as without a cache: exit 0, same stdout, nothing on stderr. */
async function lsAsPlain(t: ExecutionContext, store: string, plain: RunResult, o: RunOptions, what: string): Promise<void> {
  const r = await cli(['--store', store, 'ls'], o);
  t.is(r.code, 0, `${what}: exit (${r.stderr})`);
  t.is(r.out, plain.out, `${what}: stdout`);
  t.is(r.stderr, '', `${what}: stderr`);
}

const cacheFiles = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []);

test.serial('held: a cache file that is garbage, truncated, empty, a directory, a symlink to another file, or owned by another user: the CLI works as without a cache, silently, and writes nothing through the symlink', async (t) => {
  const { store, plain } = await cliStore(t);
  const dir = path.join(tempDir(t), 'cache');
  const env = { env: { CABSTORE_CODE_CACHE: dir } };
  await lsAsPlain(t, store, plain, env, 'first run');
  const [file] = cacheFiles(dir).filter((f) => f.endsWith('-ls.v8cache'));
  t.truthy(file, `a cache file for ls: ${cacheFiles(dir).join(', ')}`);
  const f = path.join(dir, file!);
  const good = fs.readFileSync(f);
  fs.writeFileSync(f, crypto.randomBytes(good.length));
  await lsAsPlain(t, store, plain, env, 'garbage');
  fs.writeFileSync(f, good.subarray(0, good.length >> 1));
  await lsAsPlain(t, store, plain, env, 'truncated');
  fs.writeFileSync(f, '');
  await lsAsPlain(t, store, plain, env, 'empty');
  fs.rmSync(f);
  fs.mkdirSync(f);
  await lsAsPlain(t, store, plain, env, 'a directory');
  fs.rmdirSync(f);
  const victim = path.join(tempDir(t), 'victim');
  fs.writeFileSync(victim, 'not a cache');
  fs.symlinkSync(victim, f);
  await lsAsPlain(t, store, plain, env, 'a symlink');
  t.is(fs.readFileSync(victim, 'utf8'), 'not a cache', 'the symlink target is untouched');
  fs.rmSync(f, { force: true });
  fs.writeFileSync(f, good);
  fs.chownSync(f, 65534, 65534);
  await lsAsPlain(t, store, plain, env, "another user's file");
  t.deepEqual(cacheFiles(dir).filter((x) => x.endsWith('.tmp')), [], 'no temporary file left');
});

test.serial('held: a cache directory that is a file, or on a full tmpfs: the CLI works as without a cache, silently, and leaves no partial file', async (t) => {
  const { store, plain } = await cliStore(t);
  const asFile = path.join(tempDir(t), 'a-file');
  fs.writeFileSync(asFile, 'x');
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: asFile } }, 'cache dir is a file');
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: path.join(asFile, 'sub') } }, 'cache dir under a file');
  const mnt = tempDir(t);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]);
  t.is(m.status, 0, `mount a 64 KiB tmpfs: ${String(m.stderr)}`);
  t.teardown(() => void spawnSync('umount', [mnt]));
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: mnt } }, 'full tmpfs');
  t.deepEqual(fs.readdirSync(mnt), [], 'nothing left on the full tmpfs');
  // Read-only: a read-only remount.
  t.is(spawnSync('mount', ['-o', 'remount,ro', mnt]).status, 0);
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: path.join(mnt, 'sub') } }, 'read-only');
});

test.serial('with HOME empty and no XDG_CACHE_HOME, the CLI writes no .cache directory into the current directory', async (t) => {
  const { store, plain } = await cliStore(t);
  const cwd = tempDir(t);
  await lsAsPlain(t, store, plain, { cwd, env: { HOME: '', XDG_CACHE_HOME: '', CABSTORE_CODE_CACHE: '' } }, 'HOME empty');
  t.deepEqual(fs.readdirSync(cwd), [], 'the working directory is left as it was (a cache in ./.cache is a surprise in any directory the CLI is run from)');
});

test.serial('a relative XDG_CACHE_HOME is ignored (the XDG spec: "If an implementation encounters a relative path ... it should consider the path invalid"): nothing is written under the current directory', async (t) => {
  const { store, plain } = await cliStore(t);
  const cwd = tempDir(t);
  await lsAsPlain(t, store, plain, { cwd, env: { XDG_CACHE_HOME: 'rel-cache', CABSTORE_CODE_CACHE: '' } }, 'relative XDG_CACHE_HOME');
  t.deepEqual(fs.readdirSync(cwd), [], 'nothing under the working directory');
});

test.serial('the cache does not grow with every unknown word given as a command: mistyped commands (exit 2) share one cache file at most', async (t) => {
  const dir = path.join(tempDir(t), 'cache');
  const words = ['lss', 'pul', 'psuh', 'statt', 'foo', 'bar', 'baz', 'quux'];
  for (const w of words) {
    const r = await cli([w], { env: { CABSTORE_CODE_CACHE: dir } });
    t.is(r.code, 2, `${w}: bad usage`);
  }
  const files = cacheFiles(dir);
  const bytes = files.reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
  t.log(`${files.length} cache files, ${(bytes / 2 ** 20).toFixed(1)} MiB, after ${words.length} mistyped commands`);
  t.true(files.length <= 1, `one cache file per mistyped word (about 380 KB each; a script looping over user input fills the disk): ${files.join(', ')}`);
});

test.serial("the cache's temporary file is not written through a symlink planted at its (predictable) name: the file it points to is left as it was", async (t) => {
  const root = tempDir(t);
  const dir = path.join(root, 'cache');
  fs.mkdirSync(dir);
  const store = path.join(root, 'store');
  const victim = path.join(root, 'victim');
  fs.writeFileSync(victim, 'precious');
  // put - reads stdin: the process is there (its pid known) until stdin ends, then writes its cache at exit.
  const c = start(['--store', store, 'put', '-'], { stdin: 'pipe', env: { CABSTORE_CODE_CACHE: dir } });
  const done = finished(c);
  await sleep(300);
  const stem = cacheFiles(dir).length === 0 ? undefined : cacheFiles(dir)[0];
  t.is(stem, undefined, 'no cache yet');
  // The name launch.ts writes: <bundle hash>-<node version>-<arch>-put.v8cache.<pid>.tmp. The hash is in the bin.
  const bin = fs.readFileSync(new URL('../bin/cabstore.js', import.meta.url), 'utf8');
  const hash = /"([0-9a-f]{16})"/.exec(bin)![1]!;
  fs.symlinkSync(victim, path.join(dir, `${hash}-${process.version}-${process.arch}-put.v8cache.${c.pid}.tmp`));
  c.stdin!.end('some bytes');
  const r = await done;
  t.is(r.code, 0, r.stderr);
  t.is(fs.readFileSync(victim, 'utf8'), 'precious', 'the victim file was overwritten with a V8 code cache (open the temporary file with O_EXCL / flag "wx")');
});

test.serial('a cache file that is a FIFO, or a symlink to /dev/zero or /dev/urandom, does not hang the CLI: it reads only a regular file', async (t) => {
  const { store, plain } = await cliStore(t);
  const dir = path.join(tempDir(t), 'cache');
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: dir } }, 'first run');
  const f = path.join(dir, cacheFiles(dir).find((x) => x.endsWith('-ls.v8cache'))!);
  const makers: Record<string, () => void> = {
    FIFO: () => t.is(spawnSync('mkfifo', [f]).status, 0),
    '/dev/zero': () => fs.symlinkSync('/dev/zero', f),
    '/dev/urandom': () => fs.symlinkSync('/dev/urandom', f),
  };
  for (const [what, make] of Object.entries(makers)) {
    fs.rmSync(f, { force: true });
    make();
    const c = start(['--store', store, 'ls'], { env: { CABSTORE_CODE_CACHE: dir } });
    const done = finished(c);
    const r = await Promise.race([done, sleep(10_000).then(() => undefined)]);
    if (!r) await killed(c);
    t.truthy(r, `${what}: the CLI still runs after 10 s (launch.ts readOurs opens and reads the cache file whatever it is: a FIFO blocks the open, a device never ends)`);
    if (r) t.is(r.out, plain.out, what);
  }
  fs.rmSync(f, { force: true });
});

test.serial('held: eight first runs at once (all writing the cache): every one works, and one cache file per command is left, no temporary file', async (t) => {
  const { store, plain } = await cliStore(t);
  const dir = path.join(tempDir(t), 'cache');
  const runs = await Promise.all(Array.from({ length: 8 }, () => cli(['--store', store, 'ls'], { env: { CABSTORE_CODE_CACHE: dir } })));
  for (const r of runs) {
    t.is(r.code, 0, r.stderr);
    t.is(r.out, plain.out);
    t.is(r.stderr, '');
  }
  t.is(cacheFiles(dir).length, 1, cacheFiles(dir).join(', '));
  t.true(cacheFiles(dir)[0]!.endsWith('-ls.v8cache'));
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: dir } }, 'from the cache');
});

test.serial('held: a cache made under other V8 flags (NODE_OPTIONS) is rejected and rewritten, silently; runs alternating flags all work', async (t) => {
  const { store, plain } = await cliStore(t);
  const dir = path.join(tempDir(t), 'cache');
  for (const opts of ['', '--max-semi-space-size=4', '--max-old-space-size=300', '', '--stack-trace-limit=3', '']) {
    await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: dir, NODE_OPTIONS: opts } }, `NODE_OPTIONS=${opts}`);
  }
  t.is(cacheFiles(dir).length, 1);
});

test.serial("a temporary cache file left by a writer killed before its rename (a day old) is removed by a later write, as old bundles' caches are", async (t) => {
  const { store, plain } = await cliStore(t);
  const dir = path.join(tempDir(t), 'cache');
  fs.mkdirSync(dir);
  const old = new Date(Date.now() - 3 * 24 * 3600 * 1000);
  const staleBundle = path.join(dir, `0000000000000000-${process.version}-${process.arch}-ls.v8cache`);
  const staleTmp = path.join(dir, `0000000000000000-${process.version}-${process.arch}-ls.v8cache.12345.tmp`);
  for (const f of [staleBundle, staleTmp]) {
    fs.writeFileSync(f, crypto.randomBytes(300_000));
    fs.utimesSync(f, old, old);
  }
  await lsAsPlain(t, store, plain, { env: { CABSTORE_CODE_CACHE: dir } }, 'ls');
  t.false(fs.existsSync(staleBundle), "an old bundle's cache is removed");
  t.false(fs.existsSync(staleTmp), 'a three-day-old temporary file (a SIGKILLed writer) stays forever: nothing ever removes *.tmp');
});

test.serial('held: with HOME pointing nowhere, the CLI works (its cache goes or fails silently)', async (t) => {
  const { store, plain } = await cliStore(t);
  const nowhere = path.join(tempDir(t), 'no', 'such', 'home');
  await lsAsPlain(t, store, plain, { env: { HOME: nowhere, XDG_CACHE_HOME: '', CABSTORE_CODE_CACHE: '' } }, 'HOME nowhere');
  const env = { ...process.env };
  delete env.HOME;
  delete env.XDG_CACHE_HOME;
  delete env.CABSTORE_CODE_CACHE;
  const r = spawnSync(process.execPath, [new URL('../bin/cabstore.js', import.meta.url).pathname, '--store', store, 'ls'], { env, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, plain.out);
  t.is(r.stderr, '');
});

test.serial('held: from the bundle, serve/push/pull/cat --follow/gc/fsck/signpost/export/import all work, a large put uses the worker threads, --s3 fails with its code (not a missing module), serve stops cleanly at SIGINT/SIGTERM, an interrupted put dies of the signal (130/143)', async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a');
  const b = path.join(root, 'b');
  const env = { env: { CABSTORE_CODE_CACHE: path.join(root, 'cache') } };
  const big = prngBytes('hostile9-big', 48 * 1024 * 1024);
  const put = await cli(['--store', a, 'put', writeFile(root, 'big.bin', big)], env);
  t.is(put.code, 0, put.stderr);
  const name = put.out.split(' ')[0]!;
  t.regex(name, /^[0-9a-f]{32}$/);
  const tokens = writeFile(root, 'tokens', Buffer.from('rw read,write\n'));
  const srv = start(['--store', a, 'serve', '--port', '0', '--token-file', tokens, '--quiet'], env);
  t.teardown(() => void killed(srv));
  const [, url] = await waitFor(srv, /serving (ws:\/\/\S+)/, 'serve');
  const tokenEnv = { env: { ...env.env, CABSTORE_TOKEN: 'rw' } };
  const pull = await cli(['--store', b, 'pull', url!, name], tokenEnv);
  t.is(pull.code, 0, pull.stderr);
  const cat = await cli(['--store', b, 'cat', name], env);
  t.true(cat.stdout.equals(Buffer.from(big)), 'pulled bytes');
  const small = await cli(['--store', b, 'put', writeFile(root, 's.bin', prngBytes('s', 5000))], env);
  const sname = small.out.split(' ')[0]!;
  const push = await cli(['--store', b, 'push', url!, sname], tokenEnv);
  t.is(push.code, 0, push.stderr);
  for (const args of [['gc'], ['fsck'], ['ls'], ['signpost', name]]) {
    const r = await cli(['--store', b, ...args], env);
    t.is(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    t.notRegex(r.stderr, /Cannot find module|ERR_MODULE_NOT_FOUND/);
  }
  const haveFile = path.join(root, 'have');
  t.is((await cli(['--store', b, 'have', '-o', haveFile], env)).code, 0);
  const bundle = path.join(root, 'x.bundle');
  const ex = await cli(['--store', a, 'export', '--have', haveFile, '-o', bundle, name], env);
  t.is(ex.code, 0, ex.stderr);
  const im = await cli(['--store', b, 'import', bundle], env);
  t.is(im.code, 0, im.stderr);
  const s3 = await cli(['--store', path.join(root, 'c'), '--s3', 's3://nobucket/p', '--s3-endpoint', 'http://127.0.0.1:1', 'init'], { env: { ...env.env, AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y' } });
  t.is(s3.code, 1, s3.stderr);
  t.notRegex(s3.stderr, /Cannot find module|ERR_MODULE_NOT_FOUND|MODULE/);
  t.regex(s3.stderr, /ERR_[A-Z_]+/);
  const none = await cli([], env);
  t.is(none.code, 2);
  // serve stops cleanly at either signal (exit 0, as before the bundle); put, interrupted, dies of the signal (130, 143).
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const s = start(['--store', a, 'serve', '--port', '0', '--insecure', '--quiet'], env);
    await waitFor(s, /serving ws:\/\//, 'serve');
    const done = finished(s);
    s.kill(sig);
    const r = await done;
    t.is(r.code, 0, `serve at ${sig}: ${r.code ?? r.signal} ${r.stderr}`);
    const p = start(['--store', a, 'put', '-'], { ...env, stdin: 'pipe' });
    const pdone = finished(p);
    p.stdin!.write(Buffer.alloc(100_000, 1));
    await sleep(700);
    p.kill(sig);
    const pr = await pdone;
    t.is(pr.signal, sig, `put - at ${sig}: ${pr.code ?? pr.signal} ${pr.stderr}`);
  }
});

test.serial('held: cat --follow from the bundle prints a blob as it grows and ends when it is finalized', async (t) => {
  const root = tempDir(t);
  const dir = path.join(root, 's');
  const env = { CABSTORE_CODE_CACHE: path.join(root, 'cache') };
  const store = await BlobStore.open(dir, { create: true });
  const w = await store.newBlobWriter();
  await w.appendBytes(Buffer.from('first part\n'));
  await w.flush();
  const name = w.name;
  const c = start(['--store', dir, 'cat', '--follow', name], { env });
  const out = finished(c);
  await waitFor(c, /first part/, 'cat --follow');
  await w.appendBytes(Buffer.from('second part\n'));
  await w.close();
  await store.close();
  const r = await out;
  t.is(r.code, 0, r.stderr);
  t.is(r.out, 'first part\nsecond part\n');
});

// ---------------------------------------------------------------------------
// 2. The record size limit

test('a blob whose metadata sits within 4 bytes of MAX_RECORD_BYTES still has its pulls noted: the server goes into its empty signpost, and accessed is updated (a Date of whole seconds packs 4 bytes shorter than one with milliseconds)', async (t) => {
  const src = await tempStore(t);
  const name = await putBlob(src, crypto.randomBytes(50_000));
  const dst = await tempStore(t);
  const whole = new Date(1_700_000_000_000); // whole seconds: msgpack's 32-bit timestamp, 4 bytes shorter than one with ms
  const md = (n: number, pad: number): BlobMetadata => ({
    ownerShares: { ...Object.fromEntries(Array.from({ length: n }, (_, i) => [`sg-${String(i).padStart(6, '0')}-${'x'.repeat(26)}`, 1])), [`p${'y'.repeat(pad)}`]: 1 },
    referenced: whole,
    accessed: whole,
  });
  let n = 0;
  while (recordBytes(md(n + 1, 0)) < MAX_RECORD_BYTES - 900) n += 1;
  let pad = 0;
  while (recordBytes(md(n, pad + 1)) <= MAX_RECORD_BYTES - 1) pad++;
  const near = md(n, pad);
  t.true(recordBytes(near) <= MAX_RECORD_BYTES && recordBytes(near) > MAX_RECORD_BYTES - 4, `${recordBytes(near)}`);
  const srv = await servePeer(t, src);
  const c = await connectPeer(t, dst, srv.url);
  await c.pull(name);
  t.deepEqual(Object.keys((await dst.getSignpost(name))!.locations), [srv.url], 'a pull notes the server (its URL)');
  await dst.setBlobMetadata(name, near);
  await dst.deleteSignpost(name);
  // A second pull of the blob (already held) notes its source, as every pull does (receive.ts noteSources).
  const before = Date.now();
  t.true((await c.pull(name)).alreadyHad);
  const sp = await dst.getSignpost(name);
  t.deepEqual(Object.keys(sp?.locations ?? {}), [srv.url], 'the signpost (empty, all the room it wants) does not get the server: noteSources gives up on both when the metadata update is too large');
  t.true((await dst.getBlobMetadata(name))!.accessed.getTime() >= before, 'accessed not updated: a record at the limit never counts as accessed again');
  const touched = await dst.updateBlobMetadata(name, { accessed: new Date(1_700_000_000_123) }).then(
    () => 'taken',
    (e: unknown) => (isCabError(e) ? `${e.code} ${(e.data as { reason?: string }).reason}` : String(e)),
  );
  t.is(touched, 'taken', 'an update of accessed alone (a new date in place of the old) is refused as growing the record (a Date with milliseconds packs 4 bytes longer than one of whole seconds)');
});

test('held: blob metadata of 70,000 owner shares (a map over 65,535 entries, past msgpack\'s 16-bit map size) is ERR_BAD_ARGUMENT too-large, not a plain Error', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, crypto.randomBytes(1000));
  const huge: BlobMetadata = { ownerShares: Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`s${i}`, i])), referenced: new Date(0), accessed: new Date(0) };
  const e = await store.setBlobMetadata(name, huge).then(() => undefined, (x: unknown) => x);
  t.true(isCabError(e, 'ERR_BAD_ARGUMENT'), `a map over 65,535 entries: ${String(e)}`);
  t.is((e as { data: { reason?: string } }).data.reason, 'too-large');
});

// ---------------------------------------------------------------------------
// 3. tus Upload-Metadata

test('a tus POST whose Upload-Metadata is malformed (a repeated key, an empty key, a non-ASCII key, a value not base64, a space after the comma) is 400 with a body naming ERR_BAD_ARGUMENT and Tus-Resumable, and makes no upload', async (t) => {
  const { store, base } = await served(t, {});
  const cases: Record<string, string> = {
    'repeated key': `filename ${b64('a')},filename ${b64('b')}`,
    'empty key': `filename ${b64('a')}, ${b64('b')}`,
    'empty pair': `filename ${b64('a')},`,
    'non-ASCII key': `f\u00e9 ${b64('a')}`,
    'value not base64': 'filename !!!!',
    'space after the comma': `filename ${b64('a')}, __proto__ ${b64('x')}`,
    'three tokens': `filename ${b64('a')} extra`,
  };
  const got: Record<string, string> = {};
  const want: Record<string, string> = {};
  for (const [what, header] of Object.entries(cases)) {
    const r = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': header }) });
    const body = await r.text();
    got[what] = `${r.status} ${/^ERR_[A-Z_]+/.exec(body)?.[0] ?? JSON.stringify(body)} tus-resumable ${r.headers.get('tus-resumable')}`;
    want[what] = '400 ERR_BAD_ARGUMENT tus-resumable 1.0.0';
  }
  t.deepEqual(got, want, "@tus/server's own 400, a body with no code");
  const left: string[] = [];
  for await (const [name] of store.tables.uploads.stream()) left.push(name);
  t.deepEqual(left, [], 'no upload made');
});

test('held: tus keys of Object.prototype are refused with ERR_BAD_ARGUMENT however they are given (bare, with an empty value, last of many, __defineGetter__, valueOf); ordinary odd keys (prototype, hasOwn, __proto) are kept', async (t) => {
  const { base } = await served(t, {});
  // In two CI runs of many (the eleventh and twelfth sessions) one request here failed with undici's bare
  // "fetch failed" on a reused keep-alive connection; 36 runs here, 30 of them beside two busy loops, did not
  // show it, and its cause is not known. Each request goes on a connection of its own (`connection: close`),
  // which is not what this test is about; a failure still says its cause (undici's error code and message).
  const ask = (url: string | URL, init: { method: string; headers: Record<string, string> }) =>
    fetch(url, { ...init, headers: { ...init.headers, connection: 'close' } }).catch((e: unknown) => {
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new Error(`${init.method} ${String(url)}: ${(e as Error).message} (${cause?.code ?? ''} ${cause?.message ?? ''})`);
    });
  for (const header of ['__proto__', `__proto__ `, `a ${b64('1')},b ${b64('2')},constructor`, `__defineGetter__ ${b64('x')}`, `valueOf ${b64('x')}`, `isPrototypeOf`]) {
    const r = await ask(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': header }) });
    t.is(r.status, 400, header);
    t.regex(await r.text(), /^ERR_BAD_ARGUMENT: /, header);
  }
  for (const header of [`prototype ${b64('x')}`, `hasOwn ${b64('x')}`, `__proto ${b64('x')}`, `__PROTO__ ${b64('x')}`]) {
    const r = await ask(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': header }) });
    t.is(r.status, 201, `${header}: ${await r.text()}`);
    const head = await ask(new URL(r.headers.get('location')!, base), { method: 'HEAD', headers: tusHeaders() });
    t.is(head.headers.get('upload-metadata'), header);
  }
});

// ---------------------------------------------------------------------------
// 4. The idle cut

test.serial('held: a slow but alive client (its link carries 128 KiB/s down) pulling 1.5 MiB from a server with idleTimeoutMs 500 is not cut: it gets every byte', async (t) => {
  const src = await tempStore(t);
  const bytes = prngBytes('hostile9-slow', 1536 * 1024);
  const name = await putBlob(src, bytes);
  const srv = await serve(src, { tokens: { ro: ['read'] }, idleTimeoutMs: 500 });
  t.teardown(() => srv.close());
  const link = await slowLink(t, Number(new URL(srv.url).port), 128 * 1024, 'down');
  const dst = await tempStore(t);
  const c = await connect(dst, `ws://127.0.0.1:${link.port}`, { token: 'ro', idleTimeoutMs: 500 });
  t.teardown(() => c.close());
  await c.pull(name);
  t.true((await readAll(dst, name)).equals(Buffer.from(bytes)));
});

test.serial('held: a server that answers pings but never answers a get: the client cuts it at idleTimeoutMs, the get rejects with ERR_IDLE_TIMEOUT (no crash), and a new connection works', async (t) => {
  const url = await fakeServer(t, () => {});
  const dst = await tempStore(t);
  const c = await connect(dst, url, { idleTimeoutMs: 400 });
  t.teardown(() => c.close());
  const name = crypto.randomBytes(16).toString('hex');
  const got = await settle(c.pull(name), 5000);
  t.true(got === 'ERR_IDLE_TIMEOUT' || got === 'ERR_CLOSED', got);
  const c2 = await connect(dst, url, { idleTimeoutMs: 400 });
  t.teardown(() => c2.close());
  t.pass();
});

test.serial('held: a half-open server (no pongs, nothing) during a get: the client cuts it at idleTimeoutMs with ERR_IDLE_TIMEOUT, promptly', async (t) => {
  const url = await fakeServer(t, () => {}, {}, { autoPong: false });
  const dst = await tempStore(t);
  const c = await connect(dst, url, { idleTimeoutMs: 400 });
  t.teardown(() => c.close());
  const t0 = Date.now();
  const got = await settle(c.pull(crypto.randomBytes(16).toString('hex')), 5000);
  t.true(got === 'ERR_IDLE_TIMEOUT' || got === 'ERR_CLOSED', got);
  t.true(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
});

test.serial('held: a server with maxConnections 1 serving a slow client (a 96 KiB/s link) keeps it past several idleTimeoutMs; the slot is free for the next client as soon as it is done', async (t) => {
  const src = await tempStore(t);
  const bytes = prngBytes('hostile9-slot', 600 * 1024);
  const name = await putBlob(src, bytes);
  const srv = await serve(src, { tokens: { ro: ['read'] }, idleTimeoutMs: 300, maxConnections: 1 });
  t.teardown(() => srv.close());
  const link = await slowLink(t, Number(new URL(srv.url).port), 96 * 1024, 'down');
  const dst = await tempStore(t);
  const c = await connect(dst, `ws://127.0.0.1:${link.port}`, { token: 'ro', idleTimeoutMs: 300 });
  await c.pull(name);
  await c.close();
  const dst2 = await tempStore(t);
  const c2 = await connect(dst2, srv.url, { token: 'ro' });
  t.teardown(() => c2.close());
  await c2.pull(name);
  t.true((await readAll(dst2, name)).equals(Buffer.from(bytes)));
});
