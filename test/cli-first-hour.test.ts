// CLI faults a new user hits in the first hour: a reader that goes away
// (`cat X | head`), bare `cabstore`, `--version`, remote errors that said
// their code twice, stores made by accident (`ls` anywhere, --store on a
// folder of other files), resume --expect-hash, what gc --dry-run would
// evict, and what fsck --verify hashed. (put's interrupt: cli-interrupt;
// serve's log: cli-serve-log.)
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, connect, merkleRoot, serve, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob } from './helpers/store.js';
import { assertFails, assertUsage, cli, ok, start, writeFile } from './helpers/cli.js';

test('cabstore cat into a reader that goes away ends quietly with exit 0, as cat does', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  const name = await putBlob(s, prngBytes('epipe', 16 * 1024 * 1024));
  await s.close();
  const c = start(['--store', dir, 'cat', name]);
  let err = '';
  c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  // Read a little, then hang up, as `head -c 100` does.
  await new Promise<void>((resolve) => c.stdout!.once('data', () => resolve()));
  c.stdout!.destroy();
  const code = await new Promise<number | null>((resolve) => c.on('close', (n) => resolve(n)));
  t.is(code, 0, `exit code (stderr: ${err})`);
  t.is(err, '', 'nothing on stderr');
});

test('bare cabstore is bad usage: the help on stderr, exit 2', async (t) => {
  const r = await cli([]);
  t.is(r.code, 2);
  t.regex(r.stderr, /Usage: cabstore/);
  t.is(r.out, '');
});

test('cabstore --version prints the package version and exits 0', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await cli([flag]);
    t.is(r.code, 0, r.stderr);
    t.is(r.out.trim(), pkg.version);
  }
});

test('a remote error names its code once', async (t) => {
  const server = await tempStore(t);
  const srv = await serve(server, { tokens: { tok: ['read'] } });
  t.teardown(() => srv.close());
  const e = await t.throwsAsync(connect(await tempStore(t), srv.url, { token: 'wrong' }), { instanceOf: CabError });
  t.is(e!.code, 'ERR_AUTH');
  t.is(e!.message.split('ERR_AUTH').length - 1, 1, e!.message);
  t.regex(e!.message, /^ERR_AUTH: peer: /);
});

test('every command help shows the global --store and --json', async (t) => {
  for (const cmd of ['ls', 'fsck', 'pull', 'put']) {
    const r = await cli([cmd, '--help']);
    t.is(r.code, 0, r.stderr);
    t.regex(r.out, /--json/, `${cmd} --help`);
    t.regex(r.out, /--store/, `${cmd} --help`);
  }
});

test('plain fsck says what it checked, not "0 fragments verified"; --verify says what it hashed', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  await putBlob(s, prngBytes('fsck words', 300_000));
  await s.close();
  const plain = await cli(['--store', dir, 'fsck']);
  t.is(plain.code, 0, plain.stderr);
  t.notRegex(plain.out, /fragments verified/);
  t.regex(plain.out, /1 blob checked/);
  const verify = await cli(['--store', dir, 'fsck', '--verify']);
  t.is(verify.code, 0, verify.stderr);
  t.regex(verify.out, /1 blob verified \(hashed 293\.0 KiB of blob content; 1 fragment\)/);
});

test('reading commands need an existing store: ERR_BAD_STORE saying how to make one, and nothing is created', async (t) => {
  const cwd = tempDir(t);
  const name = 'ab'.repeat(16);
  const file = writeFile(tempDir(t), 'f', Buffer.from('x'));
  const reads = [
    ['ls'],
    ['get', name],
    ['cat', name],
    ['stat', name],
    ['rm', name],
    ['resume', name, file],
    ['gc'],
    ['gc', '--dry-run'],
    ['fsck'],
    ['have'],
    ['export', name, '-o', 'x.bundle'],
    ['push', 'ws://127.0.0.1:1', name],
    ['serve', '--insecure'],
  ];
  const results = await Promise.all(reads.map((args) => cli(args, { cwd })));
  results.forEach((r, i) => {
    assertFails(t, r, 'ERR_BAD_STORE', reads[i]!.join(' '));
    t.true(r.stderr.includes(`no cabstore store at ${path.join(cwd, '.cabstore')}; \`cabstore init ./.cabstore\` or a writing command`), r.stderr);
  });
  t.deepEqual(fs.readdirSync(cwd), [], 'no ./.cabstore, no have file, no bundle');
  const elsewhere = path.join(tempDir(t), 'nope');
  assertFails(t, await cli(['--store', elsewhere, 'ls']), 'ERR_BAD_STORE', '--store DIR ls');
  t.false(fs.existsSync(elsewhere));
});

test('writing commands and init make a store, only in a new or empty directory; init prints its path and may run again', async (t) => {
  const dir = tempDir(t);
  const f = writeFile(dir, 'f', Buffer.from('some bytes'));
  // --store on a directory of other files: never turned into a store.
  for (const args of [['put', f], ['import', f], ['pull', 'ws://127.0.0.1:1', 'ab'.repeat(16)], ['init']]) {
    const r = await cli(['--store', dir, ...args]);
    assertFails(t, r, 'ERR_BAD_STORE', `${args[0]} in a directory of other files`);
    t.regex(r.stderr, /holds other files \(f\) and no cabstore store/);
  }
  const r = await cli(['init', dir]);
  assertFails(t, r, 'ERR_BAD_STORE', 'init DIR of other files');
  t.deepEqual(fs.readdirSync(dir), ['f'], 'left as it was');

  // init: a new directory, then again (idempotent), then an empty one.
  const fresh = path.join(dir, 'fresh');
  const first = await cli(['--json', 'init', fresh]);
  t.is(first.code, 0, first.stderr);
  t.deepEqual(JSON.parse(first.out), { store: fresh, created: true });
  const again = await cli(['init', fresh]);
  t.is(again.code, 0, again.stderr);
  t.is(again.out, `${fresh}\n`);
  t.deepEqual(JSON.parse((await cli(['--json', 'init', fresh])).out), { store: fresh, created: false });
  t.is(await ok(t, fresh, ['ls']), '', 'an empty store lists nothing');
  const empty = path.join(dir, 'empty');
  fs.mkdirSync(empty);
  t.is((await cli(['--store', empty, 'init'])).out, `${empty}\n`, 'init with no DIR: the store');
  // put makes one in a new directory (and in cwd's ./.cabstore).
  const cwd = tempDir(t);
  t.is((await cli(['put', f], { cwd })).code, 0);
  t.true(fs.existsSync(path.join(cwd, '.cabstore', 'cabstore.json')));
});

test('resume --expect-hash finalizes only a blob with that hash; otherwise ERR_HASH_MISMATCH and it stays unfinalized', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const bytes = prngBytes('expect hash', 700_000);
  const file = writeFile(dir, 'file', bytes);
  const s = await BlobStore.open(root);
  const w = await s.newBlobWriter();
  await w.appendBytes(bytes.subarray(0, 300_000));
  await w.closeWithoutFinalize();
  await s.close();
  const right = toHex(merkleRoot(bytes));
  const wrong = toHex(merkleRoot(bytes.subarray(1)));
  assertUsage(t, await cli(['--store', root, 'resume', w.name, file, '--expect-hash', 'abc']), '--expect-hash abc');

  const bad = await cli(['--store', root, 'resume', w.name, file, '--expect-hash', wrong]);
  assertFails(t, bad, 'ERR_HASH_MISMATCH', 'resume with the wrong hash');
  t.true(bad.stderr.includes(right) && bad.stderr.includes(wrong), bad.stderr);
  t.is(bad.out, '');
  const st = JSON.parse(await ok(t, root, ['--json', 'stat', w.name])) as { finalized: boolean; size: number };
  t.like(st, { finalized: false, size: bytes.length }, 'unfinalized, every byte kept');

  const good = await cli(['--store', root, 'resume', w.name, file, '--expect-hash', right.toUpperCase()]);
  t.is(good.code, 0, good.stderr);
  t.is(good.out, `${w.name} ${right}\n`);
  t.like(JSON.parse(await ok(t, root, ['--json', 'stat', w.name])), { finalized: true, hash: right });
});

test('gc --dry-run says "would evict" and names each blob it would evict; nothing is evicted', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  const names = [await putBlob(s, prngBytes('evict a', 200_000)), await putBlob(s, prngBytes('evict b', 200_000))].sort();
  await s.close();
  const dry = await ok(t, dir, ['gc', '--dry-run', '--max-bytes', '0']);
  const [summary, ...rest] = dry.trim().split('\n');
  t.regex(summary!, /^would delete .* would evict 2 blobs, in /);
  t.deepEqual(rest.sort(), names.map((n) => `would evict ${n}`));
  const js = JSON.parse(await ok(t, dir, ['--json', 'gc', '--dry-run', '--max-bytes', '0'])) as { evicted: string[] };
  t.deepEqual(js.evicted.sort(), names);
  t.is((await ok(t, dir, ['ls'])).trim().split('\n').length, 2, 'both blobs are still there');
  const real = await ok(t, dir, ['gc', '--max-bytes', '0']);
  t.regex(real, /, evicted 2 blobs, in /);
  for (const n of names) t.regex(real, new RegExp(`^evicted ${n}$`, 'm'));
  t.is(await ok(t, dir, ['ls']), '');
});

test('fsck --verify says how many bytes of blob content it hashed', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  const bytes = prngBytes('fsck twice', 300_000);
  await putBlob(s, bytes);
  await putBlob(s, bytes); // the same content: no new fragment, but a second blob to hash
  await s.close();
  const js = JSON.parse(await ok(t, dir, ['--json', 'fsck', '--verify'])) as { bytesVerified: number; fragments: number };
  t.is(js.bytesVerified, 2 * 300_000, 'each blob is hashed');
  t.is(js.fragments, 1, 'the second blob wrote no fragment');
  const text = await ok(t, dir, ['fsck', '--verify']);
  t.regex(text, /2 blobs verified \(hashed 585\.9 KiB of blob content; 1 fragment\), 0 problems/);
});
