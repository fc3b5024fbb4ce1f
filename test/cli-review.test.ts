// The command line's other defects found by a hostile review: ls hiding a
// blob it could not open; hints that advised init where init fails; failed
// commands that made a store; resume without Ctrl-C handling; stat URL
// needing a store; exit 1 without a code line; usage errors with the wrong
// help. Real child processes, real sockets, real signals.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError, MerkleHasher, merkleRoot, serve, toHex } from '../src/index.js';
import { encodeRecord } from '../src/format/descriptor.js';
import { prngBytes, prngStream } from '../tools/data.js';
import { collect, putBlob, tempDir } from './helpers/store.js';
import { descriptorPath, fragmentPath } from './helpers/paths.js';
import { assertFails, cli, finished, ok, putLines, start, writeFile, type RunResult } from './helpers/cli.js';

const MiB = 1024 * 1024;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('ls names a blob it cannot open, with the code, lists the others, and exits 1', async (t) => {
  const root = path.join(tempDir(t), 'store');
  const s = await BlobStore.open(root);
  const good = await putBlob(s, Buffer.from('good'));
  const bad = await putBlob(s, Buffer.from('bad'));
  // A descriptor of a newer format, this code cannot open it; of the size the index knows, so opening the
  // store does not read it again (as when it changes behind the store's back after being indexed).
  const desc = descriptorPath(s, bad);
  const newer = encodeRecord({ t: 'h', v: 2, name: bad, ctime: 0 });
  const was = fs.statSync(desc).size;
  t.true(was >= newer.length);
  fs.writeFileSync(desc, Buffer.concat([newer, Buffer.alloc(was - newer.length)]));
  await s.close();
  for (const args of [['ls'], ['--json', 'ls']]) {
    const r = await cli(['--store', root, ...args]);
    assertFails(t, r, 'ERR_FORMAT_VERSION', args.join(' '));
    t.true(r.stderr.includes(`blob ${bad}`), `names the blob: ${r.stderr}`);
    t.true(r.out.includes(good), `lists the others: ${r.out}`);
    t.false(r.out.includes(bad));
  }
});

test('a store path that is a file, a folder of other files, or a store that lost cabstore.json: a hint that fits, never "init"', async (t) => {
  const dir = tempDir(t);
  const file = writeFile(dir, 'afile', Buffer.from('x'));
  const other = path.join(dir, 'other');
  fs.mkdirSync(other);
  writeFile(other, 'notes.txt', Buffer.from('mine'));
  const lost = path.join(dir, 'lost');
  const s = await BlobStore.open(lost);
  await putBlob(s, Buffer.from('kept'));
  await s.close();
  fs.rmSync(path.join(lost, 'cabstore.json'));
  const cases: Array<[string, RegExp]> = [
    [file, /is not a directory/],
    [path.join(file, 'below'), /is not a directory/],
    [other, /holds other files \(notes\.txt\) and no cabstore store/],
    [lost, /looks like a cabstore store .* that lost its cabstore\.json: restore/],
  ];
  for (const [store, hint] of cases) {
    for (const args of [['ls'], ['put', file]]) {
      const r = await cli(['--store', store, ...args]);
      assertFails(t, r, 'ERR_BAD_STORE', `${args[0]} with --store ${path.basename(store)}`);
      t.regex(r.stderr, hint);
      t.notRegex(r.stderr, /init/, 'init would fail there too');
    }
  }
  t.false(fs.existsSync(path.join(lost, 'cabstore.json')), 'no store made over the remains of one');
  const reason = async (p: Promise<unknown>) => ((await t.throwsAsync(p, { instanceOf: CabError }))!.data.reason as string);
  t.is(await reason(BlobStore.open(file, { create: false })), 'not-a-directory');
  t.is(await reason(BlobStore.open(other, { create: false })), 'not-empty');
  t.is(await reason(BlobStore.open(lost, { create: false })), 'not-empty');
});

test('a writing command bound to fail makes no store: a bad --name, a missing file or bundle, a server that is down or lacks the blob', async (t) => {
  const dir = tempDir(t);
  const f = writeFile(dir, 'f', Buffer.from('some bytes'));
  const served = path.join(dir, 'served');
  const ss = await BlobStore.open(served);
  const held = await putBlob(ss, prngBytes('pulled', 300_000));
  const srv = await serve(ss, { insecure: true });
  t.teardown(async () => {
    await srv.close();
    await ss.close();
  });
  const absent = 'ab'.repeat(16);
  const failing: Array<[string[], string]> = [
    [['put', '--name', 'bad', f], 'ERR_INVALID_BLOB_NAME'],
    [['put', path.join(dir, 'nonexistent')], 'ERR_NO_SUCH_FILE'],
    [['put', f, path.join(dir, 'nonexistent')], 'ERR_NO_SUCH_FILE'],
    [['put', dir], 'ERR_NO_SUCH_FILE'],
    [['import', path.join(dir, 'missing.bundle')], 'ERR_NO_SUCH_FILE'],
    [['pull', 'ws://127.0.0.1:1', absent], 'ERR_CONNECTION'],
    [['pull', srv.url, 'bad'], 'ERR_INVALID_BLOB_NAME'],
    [['pull', srv.url, absent], 'ERR_NO_SUCH_BLOB'],
  ];
  for (const [args, code] of failing) {
    const store = path.join(dir, 'newA');
    assertFails(t, await cli(['--store', store, ...args]), code, args.join(' '));
    t.false(fs.existsSync(store), `${args.join(' ')} made no store`);
  }
  // The same commands that can succeed still make it.
  const pulled = path.join(dir, 'newB');
  t.regex(await ok(t, pulled, ['pull', srv.url, held]), new RegExp(`^${held} `));
  t.true(fs.existsSync(path.join(pulled, 'cabstore.json')));
});

test('stat URL NAME needs no store here, and leaves none (nor a temp one) behind', async (t) => {
  const ss = await BlobStore.open(tempDir(t));
  const bytes = prngBytes('stat url', 100_000);
  const name = await putBlob(ss, bytes);
  const srv = await serve(ss, { insecure: true });
  t.teardown(async () => {
    await srv.close();
    await ss.close();
  });
  const cwd = tempDir(t);
  const tmp = tempDir(t);
  const r = await cli(['stat', srv.url, name], { cwd, env: { TMPDIR: tmp } });
  t.is(r.code, 0, r.stderr);
  t.regex(r.out, /^size 100000$/m);
  t.regex(r.out, new RegExp(`^hash ${toHex(merkleRoot(bytes))}$`, 'm'));
  t.deepEqual(fs.readdirSync(cwd), [], 'no ./.cabstore');
  t.deepEqual(fs.readdirSync(tmp), [], 'the scratch store is removed');
});

test('exit 1 always ends with a line naming a code: fsck with a problem (ERR_FSCK_FAILED), an incomplete import (ERR_NO_SUCH_CHUNK)', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const made = await BlobStore.open(root);
  const name = await putBlob(made, prngBytes('code lines', 2 * MiB));
  await made.close();
  // A bundle without chunk data (made for a store that has them), imported where they are not.
  const have = path.join(dir, 'have');
  const bundle = path.join(dir, 'b');
  await ok(t, root, ['have', '-o', have]);
  await ok(t, root, ['export', name, '--have', have, '-o', bundle]);
  const lastLine = (r: RunResult) => r.stderr.trimEnd().split('\n').pop()!;
  for (const json of [[], ['--json']]) {
    const imp = await cli(['--store', path.join(dir, `empty${json.length}`), ...json, 'import', bundle]);
    t.is(imp.code, 1, imp.stderr);
    t.regex(lastLine(imp), new RegExp(`^cabstore: ERR_NO_SUCH_CHUNK: 1 of the bundle's blobs not imported: \\d+ chunks`), imp.stderr);
    t.regex(imp.out, json.length ? /"incomplete"/ : /^INCOMPLETE /m, 'after the report');
  }
  // A fragment removed by hand: fsck reports it, then says why it exits 1.
  const s = await BlobStore.open(root);
  const frag = (await collect(s.listCaIds()))[0]!;
  const fragFile = fragmentPath(s, frag);
  await s.close();
  fs.rmSync(fragFile);
  for (const json of [[], ['--json']]) {
    const r = await cli(['--store', root, ...json, 'fsck']);
    t.is(r.code, 1, r.stderr);
    t.regex(lastLine(r), /^cabstore: ERR_FSCK_FAILED: [1-9]\d* problems? not repaired/, r.stderr);
  }
});

test('bad usage says what is wrong first, then the help of the command it concerns', async (t) => {
  const dir = tempDir(t);
  const f = writeFile(dir, 'f', Buffer.from('x'));
  const name = 'ab'.repeat(16);
  const cases: Array<[string[], string]> = [
    [['resume', name, f, '--expect-hash', '1234'], 'resume'],
    [['put', '--name', name, f, f], 'put'],
    [['serve'], 'serve'],
    [['get', '--bogus', name], 'get'],
    [['get'], 'get'],
    [['gc', '--max-bytes', 'lots'], 'gc'],
  ];
  for (const [args, cmd] of cases) {
    const r = await cli(['--store', path.join(dir, 's'), ...args]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, /^cabstore: \S/, `${args.join(' ')}: the message comes first`);
    t.regex(r.stderr, new RegExp(`\\nUsage: cabstore ${cmd} `), `${args.join(' ')}: the help of ${cmd}`);
    t.notRegex(r.stderr, /Usage: cabstore \[options\] \[command\]/, `${args.join(' ')}: not the top-level help`);
    t.is(r.out, '');
  }
  const unknown = await cli(['nosuch']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /^cabstore: unknown command 'nosuch'\n\nUsage: cabstore \[options\] \[command\]/);
  t.false(fs.existsSync(path.join(dir, 's')), 'no store made by bad usage');
});

// Serial: the resume must still be running when the signal comes.
test.serial('resume stopped by SIGINT: makes what it appended durable, says how to continue, dies of SIGINT; the printed command finishes the blob', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const big = path.join(dir, 'big');
  const size = 200 * MiB;
  const hasher = new MerkleHasher();
  {
    const next = prngStream('resume interrupt');
    const fd = fs.openSync(big, 'w');
    for (let left = size; left > 0; left -= 4 * MiB) {
      const b = next(Math.min(4 * MiB, left));
      hasher.update(b);
      fs.writeSync(fd, b);
    }
    fs.closeSync(fd);
  }
  const hash = toHex(hasher.digest());
  // A blob holding the file's first MiB, unfinalized: what an interrupted put leaves.
  const s = await BlobStore.open(store);
  const w = await s.newBlobWriter();
  const head = Buffer.alloc(MiB);
  const fd = fs.openSync(big, 'r');
  fs.readSync(fd, head, 0, MiB, 0);
  fs.closeSync(fd);
  await w.appendBytes(head);
  await w.closeWithoutFinalize();
  const name = w.name;
  await s.close();

  const c = start(['--store', store, 'resume', name, big]);
  t.teardown(() => c.kill('SIGKILL'));
  const done = finished(c);
  // Once the descriptor grows, the resume has made a checkpoint: it is appending, with what arrived since at stake.
  const desc = descriptorPath(s, name);
  const before = fs.statSync(desc).size;
  while (fs.statSync(desc).size === before && c.exitCode === null) await sleep(10);
  c.kill('SIGINT');
  const r = await done;
  t.is(r.signal, 'SIGINT', `ended by SIGINT, after cleaning up (exit ${r.code}; stderr: ${r.stderr})`);
  const said = /^cabstore: interrupted: blob ([0-9a-f]{32}) holds the first (\d+) bytes of (\S+), durably, unfinalized; to finish it: cabstore (.+)$/m.exec(r.stderr);
  t.truthy(said, r.stderr);
  const [, blob, heldText, file, again] = said!;
  t.is(blob, name);
  t.is(file, big);
  const held = Number(heldText);
  t.true(held > MiB && held < size, `a durable prefix, longer than before: ${held}`);
  const rows = JSON.parse(await ok(t, store, ['--json', 'ls'])) as Array<{ name: string; size: number; finalized: boolean }>;
  t.like(rows.find((x) => x.name === name), { size: held, finalized: false });
  const args = again!.split(' ');
  t.deepEqual(args, ['--store', store, 'resume', name, big]);
  const resumed = await cli(args);
  t.is(resumed.code, 0, resumed.stderr);
  t.deepEqual(putLines(resumed.out), [{ name, hash }]);
});
