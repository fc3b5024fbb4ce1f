// The `cabstore` command line, run as a user runs it: the built CLI
// (dist/tools/cli.js) in a child process, on stores in fresh temp directories,
// with real files, real sockets on 127.0.0.1 and real SIGKILLs.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { MerkleHasher, chunk, merkleRoot, sha256, toHex } from '../src/index.js';
import { prngBytes, prngStream } from '../tools/data.js';
import { tempDir } from './helpers/store.js';
import { assertFails, assertUsage, cli, finished, killed, ok, putLines, start, waitFor, writeFile, type RunOptions } from './helpers/cli.js';

const INDEX_URL = new URL('../src/index.js', import.meta.url).href;
const KiB = 1024;
const MiB = 1024 * KiB;

/** BEP 52 root and SHA-256 of a stream, without holding it. */
async function hashStream(s: Readable): Promise<{ root: string; sha: string; size: number }> {
  const m = new MerkleHasher();
  const h = crypto.createHash('sha256');
  let size = 0;
  for await (const b of s as AsyncIterable<Buffer>) {
    m.update(b);
    h.update(b);
    size += b.length;
  }
  return { root: toHex(m.digest()), sha: h.digest('hex'), size };
}

const hashFile = (file: string) => hashStream(fs.createReadStream(file, { highWaterMark: 4 * MiB }));

async function put(t: ExecutionContext, dir: string, file: string): Promise<string> {
  return putLines(await ok(t, dir, ['put', file]))[0]!.name;
}

interface LsRow {
  name: string;
  size: number;
  finalized: boolean;
  hash: string | null;
}
async function lsJson(t: ExecutionContext, dir: string): Promise<LsRow[]> {
  return JSON.parse(await ok(t, dir, ['--json', 'ls'])) as LsRow[];
}

/** Chunk hashes (hex) and sizes of bytes, with the store's default chunker. */
function chunkList(bytes: Buffer): Array<{ hash: string; size: number }> {
  const list = [];
  let at = 0;
  for (const size of chunk(bytes)) {
    list.push({ hash: toHex(sha256(bytes.subarray(at, at + size))), size });
    at += size;
  }
  return list;
}

// ---------------------------------------------------------------------------

test('put / get / cat / ls / stat / rm round trip, byte-exact for 0 B, 1 B and 20 MiB', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const files = [
    { label: 'empty', bytes: Buffer.alloc(0) },
    { label: 'one', bytes: Buffer.from([0x5a]) },
    { label: 'twenty', bytes: prngBytes('cli twenty', 20 * MiB) },
  ].map((f) => ({ ...f, file: writeFile(dir, f.label, f.bytes), hash: toHex(merkleRoot(f.bytes)), chunks: chunk(f.bytes).length }));

  const lines = putLines(await ok(t, store, ['put', ...files.map((f) => f.file)]));
  t.is(lines.length, 3, 'one line per file');
  t.deepEqual(
    lines.map((l) => l.hash),
    files.map((f) => f.hash),
    'each hash is the BEP 52 root of its file, in argument order',
  );
  t.is(new Set(lines.map((l) => l.name)).size, 3);
  const named = files.map((f, i) => ({ ...f, name: lines[i]!.name }));

  for (const f of named) {
    const outFile = path.join(dir, `${f.label}.out`);
    t.is(await ok(t, store, ['get', f.name, '-o', outFile]), '', 'get -o prints nothing on stdout');
    t.true(fs.readFileSync(outFile).equals(f.bytes), `get -o ${f.label}`);
    const viaStdout = await cli(['--store', store, 'get', f.name]);
    t.is(viaStdout.code, 0);
    t.true(viaStdout.stdout.equals(f.bytes), `get to stdout ${f.label}`);
    const viaCat = await cli(['--store', store, 'cat', f.name]);
    t.is(viaCat.code, 0);
    t.true(viaCat.stdout.equals(f.bytes), `cat ${f.label}`);
  }
  t.deepEqual(
    fs.readdirSync(dir).filter((f) => f.includes('.tmp')),
    [],
    'get -o leaves no temp file',
  );

  // ls: text and JSON.
  const ls = (await ok(t, store, ['ls'])).trim().split('\n');
  t.is(ls.length, 3);
  for (const f of named) {
    const row = ls.find((l) => l.startsWith(f.name));
    t.truthy(row, `ls lists ${f.label}`);
    t.deepEqual(row!.split(/\s+/), [f.name, String(f.bytes.length), 'final', f.hash]);
  }
  const rows = await lsJson(t, store);
  t.deepEqual(
    rows.sort((a, b) => (a.name < b.name ? -1 : 1)),
    named.map((f) => ({ name: f.name, size: f.bytes.length, finalized: true, hash: f.hash })).sort((a, b) => (a.name < b.name ? -1 : 1)),
  );

  // stat: text and JSON, with the chunk count of the default chunker.
  for (const f of named) {
    const text = await ok(t, store, ['stat', f.name]);
    t.regex(text, new RegExp(`^size ${f.bytes.length}$`, 'm'));
    t.regex(text, /^finalized true$/m);
    t.regex(text, new RegExp(`^hash ${f.hash}$`, 'm'));
    t.regex(text, new RegExp(`^chunks ${f.chunks}$`, 'm'));
    const js = JSON.parse(await ok(t, store, ['--json', 'stat', f.name])) as Record<string, unknown>;
    t.like(js, { name: f.name, size: f.bytes.length, finalized: true, hash: f.hash, chunks: f.chunks, sharedBytes: 0 });
  }
  t.true(named[2]!.chunks > 20, '20 MiB makes many chunks');

  // rm, then every read fails with one line naming the code.
  const [empty, one, twenty] = named;
  t.is(await ok(t, store, ['rm', one!.name, twenty!.name]), '');
  for (const f of [one!, twenty!]) {
    const r = await cli(['--store', store, 'get', f.name]);
    assertFails(t, r, 'ERR_NO_SUCH_BLOB', `get ${f.label} after rm`);
    t.is(r.stdout.length, 0);
    assertFails(t, await cli(['--store', store, 'get', f.name, '-o', path.join(dir, 'gone')]), 'ERR_NO_SUCH_BLOB', 'get -o after rm');
    t.false(fs.existsSync(path.join(dir, 'gone')));
    assertFails(t, await cli(['--store', store, 'stat', f.name]), 'ERR_NO_SUCH_BLOB', 'stat after rm');
  }
  t.deepEqual(
    (await lsJson(t, store)).map((r) => r.name),
    [empty!.name],
  );
  assertFails(t, await cli(['--store', store, 'get', 'NOT-A-NAME']), 'ERR_INVALID_BLOB_NAME', 'get with a bad name');
  assertFails(t, await cli(['--store', store, 'put', path.join(dir, 'no such file')]), 'ERR_NO_SUCH_FILE', 'put of a missing file');
});

// Serial: it runs alone, so the child's pace is not stolen by the other tests.
test.serial('put killed with SIGKILL mid-way, then resume finishes it with the right hash', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const size = 200 * MiB;
  const big = path.join(dir, 'big');
  {
    const next = prngStream('cli resume');
    const fd = fs.openSync(big, 'w');
    for (let left = size; left > 0; left -= 4 * MiB) fs.writeSync(fd, next(Math.min(4 * MiB, left)));
    fs.closeSync(fd);
  }
  const expected = await hashFile(big);
  t.is(expected.size, size);
  const name = crypto.randomBytes(16).toString('hex');
  const descriptor = path.join(store, 'blob', name.slice(0, 2), name);

  // Kill once the descriptor holds a checkpoint record (a header alone is
  // under 200 bytes; a checkpoint lists hundreds of chunks), so the blob has
  // a durable prefix and resume really continues from the middle.
  const c = start(['--store', store, 'put', '--name', name, big]);
  t.teardown(() => c.kill('SIGKILL'));
  const done = finished(c);
  let exited = false;
  void done.then(() => (exited = true));
  while (!exited) {
    const st = fs.statSync(descriptor, { throwIfNoEntry: false });
    if (st && st.size > 1024) break;
    await new Promise((r) => setTimeout(r, 2));
  }
  c.kill('SIGKILL');
  const r = await done;
  t.is(r.signal, 'SIGKILL', `put must be killed mid-way, not finish (exit ${r.code}; ${r.stderr})`);

  const before = (await lsJson(t, store)).find((x) => x.name === name);
  t.truthy(before, 'the killed blob is listed');
  t.false(before!.finalized, 'unfinalized before resume');
  t.true(before!.size > 0 && before!.size < size, `a durable prefix: ${before!.size} of ${size}`);
  t.is(before!.hash, null);
  t.log(`killed with ${before!.size} of ${size} bytes durable`);
  assertFails(t, await cli(['--store', store, 'put', '--name', name, big]), 'ERR_BLOB_EXISTS', 'put again under the same name');

  const resumed = putLines(await ok(t, store, ['resume', name, big]));
  t.deepEqual(resumed, [{ name, hash: expected.root }]);
  const after = (await lsJson(t, store)).find((x) => x.name === name);
  t.deepEqual(after, { name, size, finalized: true, hash: expected.root });
  assertFails(t, await cli(['--store', store, 'resume', name, big]), 'ERR_BLOB_FINALIZED', 'resume of a finalized blob');

  // Read back through stdout, hashed as it streams.
  const g = start(['--store', store, 'get', name]);
  const [back, gr] = await Promise.all([hashStream(g.stdout!), finished(g, false)]);
  t.is(gr.code, 0, gr.stderr);
  t.deepEqual(back, expected, 'get reads back the same bytes');
});

/** A process that holds the store open with a reader on `name`; "read" on stdin reads it all and prints "read SIZE ROOT". */
const HOLDER = `
import readline from 'node:readline';
const { BlobStore, MerkleHasher, toHex } = await import(process.argv[3]);
const [root, name] = process.argv.slice(1, 3);
const store = await BlobStore.open(root);
const r = await store.newBlobReader(name);
console.log('ready');
for await (const line of readline.createInterface({ input: process.stdin })) {
  if (line === 'read') {
    const m = new MerkleHasher();
    const buf = Buffer.alloc(1 << 20);
    let at = 0;
    for (let n; (n = await r.readAt(buf, at)) > 0; at += n) m.update(buf.subarray(0, n));
    console.log('read ' + at + ' ' + toHex(m.digest()));
  } else if (line === 'close') {
    await r.close();
    await store.close();
    console.log('closed');
  }
}
`;

test('gc and fsck (--dry-run, --verify, --json) while another process holds the store open; fsck catches a lost fragment, --repair fixes it', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const aBytes = prngBytes('cli held', 3 * MiB);
  const bBytes = prngBytes('cli other', 1 * MiB);
  const a = await put(t, store, writeFile(dir, 'a', aBytes));
  const casBefore = new Set(fs.readdirSync(path.join(store, 'cas'), { recursive: true }).map(String).filter((f) => /[0-9a-f]{64}$/.test(f)));
  const b = await put(t, store, writeFile(dir, 'b', bBytes));
  const bFragments = fs
    .readdirSync(path.join(store, 'cas'), { recursive: true })
    .map(String)
    .filter((f) => /[0-9a-f]{64}$/.test(f) && !casBefore.has(f));
  t.is(bFragments.length, 1, "b's own fragment");

  const holder = spawn(process.execPath, ['--input-type=module', '-e', HOLDER, store, a, INDEX_URL], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => holder.kill('SIGKILL'));
  await waitFor(holder, /^ready$/m, 'holder');
  const ask = async (cmd: string, re: RegExp) => {
    const m = waitFor(holder, re, 'holder');
    holder.stdin!.write(`${cmd}\n`);
    return m;
  };

  // The held blob is deleted; GC must keep its bytes for the holder.
  await ok(t, store, ['rm', a]);
  const dry = JSON.parse(await ok(t, store, ['--json', 'gc', '--dry-run'])) as Record<string, unknown>;
  t.like(dry, { dryRun: true, fragmentsDeleted: 0 });
  t.regex(await ok(t, store, ['gc', '--dry-run']), /^would delete 0 fragments/);
  t.regex(await ok(t, store, ['gc']), /^deleted 0 fragments/);
  const gc = JSON.parse(await ok(t, store, ['--json', 'gc'])) as Record<string, unknown>;
  t.like(gc, { dryRun: false, fragmentsDeleted: 0, fragmentsKept: 2 });
  t.regex(await ok(t, store, ['fsck']), /0 problems/);
  t.regex(await ok(t, store, ['fsck', '--verify']), /0 problems/);
  const fsck = JSON.parse(await ok(t, store, ['--json', 'fsck', '--verify'])) as { problems: unknown[]; unrepaired: number; bytesVerified: number };
  t.deepEqual(fsck.problems, []);
  t.is(fsck.unrepaired, 0);
  t.true(fsck.bytesVerified >= bBytes.length, 'verify hashed the data');

  const [, size, root] = await ask('read', /^read (\d+) ([0-9a-f]{64})$/m);
  t.is(Number(size), aBytes.length);
  t.is(root, toHex(merkleRoot(aBytes)), 'the held blob stays readable, intact, after rm + gc + fsck');
  t.true((await cli(['--store', store, 'get', b])).stdout.equals(bBytes), 'the other blob too');

  // Once the holder lets go, GC collects the deleted blob's fragment.
  await ask('close', /^closed$/m);
  t.like(JSON.parse(await ok(t, store, ['--json', 'gc'])), { fragmentsDeleted: 1, bytesDeleted: aBytes.length });
  await killed(holder);

  // A fragment deleted by hand: fsck fails, --repair records the damage, and fsck keeps failing while the blob is damaged.
  fs.rmSync(path.join(store, 'cas', bFragments[0]!));
  const broken = await cli(['--store', store, 'fsck']);
  t.is(broken.code, 1, `fsck exits 1 on a missing fragment: ${broken.out} ${broken.stderr}`);
  t.regex(broken.out, /PROBLEM/);
  t.true(broken.out.includes(b), 'names the blob that lost data');
  const brokenJson = await cli(['--store', store, '--json', 'fsck']);
  t.is(brokenJson.code, 1);
  t.true((JSON.parse(brokenJson.out) as { unrepaired: number }).unrepaired > 0);
  const repaired = await cli(['--store', store, 'fsck', '--repair']);
  t.is(repaired.code, 1, `fsck --repair: ${repaired.out} ${repaired.stderr}`);
  t.regex(repaired.out, /repaired/);
  const again = await cli(['--store', store, 'fsck']);
  t.is(again.code, 1, `fsck after repair: ${again.out} ${again.stderr}`);
  t.regex(again.out, /PROBLEM +damaged/);
  const lost = await cli(['--store', store, 'get', b]);
  t.is(lost.code, 1, 'the lost bytes are not served');
  t.regex(lost.stderr, /ERR_(BLOB_DAMAGED|FRAGMENT_MISSING)/);
});

test('serve + pull / push between two stores on 127.0.0.1, with token files and CABSTORE_TOKEN', async (t) => {
  const dir = tempDir(t);
  const server = path.join(dir, 'server');
  const client = path.join(dir, 'client');
  const files = Object.fromEntries(
    ['x1', 'x2', 'y1', 'y2', 'z'].map((k, i) => {
      const bytes = prngBytes(`cli serve ${k}`, (1 + i) * 700 * KiB);
      return [k, { bytes, file: writeFile(dir, k, bytes), hash: toHex(merkleRoot(bytes)) }];
    }),
  );
  const x1 = await put(t, server, files.x1!.file);
  const x2 = await put(t, server, files.x2!.file);
  const y1 = await put(t, client, files.y1!.file);
  const y2 = await put(t, client, files.y2!.file);
  const z = await put(t, client, files.z!.file);

  const tokens = writeFile(dir, 'tokens', Buffer.from('# server tokens\nrw-7f3a read,write\nro-19c2 read\n'));
  // A client's token file may be a line of the server's: the token is its first word.
  const rwFile = writeFile(dir, 'rw.token', Buffer.from('rw-7f3a read,write\n'));
  const roFile = writeFile(dir, 'ro.token', Buffer.from('ro-19c2\n'));
  const badFile = writeFile(dir, 'bad.token', Buffer.from('nobody\n'));

  const srv = start(['--store', server, 'serve', '--port', '0', '--token-file', tokens]);
  t.teardown(() => srv.kill('SIGKILL'));
  let srvErr = '';
  srv.stderr!.on('data', (d: Buffer) => (srvErr += d.toString()));
  const url = (await waitFor(srv, /^serving (ws:\/\/127\.0\.0\.1:\d+)$/m, 'serve'))[1]!;

  // pull with --token-file, and with CABSTORE_TOKEN.
  t.regex(await ok(t, client, ['pull', url, x1, '--token-file', rwFile]), new RegExp(`^${x1} ${files.x1!.hash}`));
  const pulled = JSON.parse(await ok(t, client, ['--json', 'pull', url, x2], { env: { CABSTORE_TOKEN: 'ro-19c2' } })) as Record<string, unknown>;
  t.true((await cli(['--store', client, 'get', x1])).stdout.equals(files.x1!.bytes), 'pulled x1 reads back');
  t.true((await cli(['--store', client, 'get', x2])).stdout.equals(files.x2!.bytes), 'pulled x2 reads back');

  // push with CABSTORE_TOKEN, and with --token-file.
  await ok(t, client, ['push', url, y1], { env: { CABSTORE_TOKEN: 'rw-7f3a' } });
  await ok(t, client, ['push', url, y2, '--token-file', rwFile], { env: { CABSTORE_TOKEN: 'ro-19c2' } });
  for (const [n, f] of [
    [y1, files.y1!],
    [y2, files.y2!],
  ] as const) {
    t.true((await cli(['--store', server, 'get', n])).stdout.equals(f.bytes), 'pushed blob reads back from the served store (opened alongside the server)');
  }

  // stat URL NAME, text and JSON.
  const st = await ok(t, client, ['stat', url, y2, '--token-file', roFile]);
  t.is(st.trim(), `size ${files.y2!.bytes.length}\nfinalized true\nhash ${files.y2!.hash}`);
  const remoteStat = JSON.parse(await ok(t, client, ['--json', 'stat', url, x1], { env: { CABSTORE_TOKEN: 'ro-19c2' } })) as Record<string, unknown>;

  // A read-only token cannot push; a wrong or missing token cannot even connect.
  assertFails(t, await cli(['--store', client, 'push', url, z, '--token-file', roFile]), 'ERR_PERMISSION', 'push with a read-only token');
  assertFails(t, await cli(['--store', client, 'push', url, z], { env: { CABSTORE_TOKEN: 'ro-19c2' } }), 'ERR_PERMISSION', 'push with a read-only CABSTORE_TOKEN');
  t.is((await cli(['--store', server, 'stat', z])).code, 1, 'the refused push left nothing on the server');
  assertFails(t, await cli(['--store', client, 'pull', url, x1, '--token-file', badFile]), 'ERR_AUTH', 'pull with an unknown token');
  assertFails(t, await cli(['--store', client, 'stat', url, x1]), 'ERR_AUTH', 'stat without a token');
  assertFails(t, await cli(['--store', client, 'pull', url, '0123456789abcdef0123456789abcdef', '--token-file', rwFile]), 'ERR_NO_SUCH_BLOB', 'pull of a blob the server lacks');

  const end = await killed(srv, 'SIGTERM');
  t.deepEqual(end, { code: 0, signal: null }, `serve exits cleanly on SIGTERM: ${srvErr}`);
  assertFails(t, await cli(['--store', client, 'pull', url, x1, '--token-file', rwFile]), 'ERR_CONNECTION', 'pull from a stopped server');

  // Last, so that a failure here does not hide the checks above: --json
  // prints hashes as hex, for remote blobs as for local ones.
  t.like(pulled, { name: x2, size: files.x2!.bytes.length, alreadyHad: false, hash: files.x2!.hash }, '--json pull');
  t.like(remoteStat, { name: x1, size: files.x1!.bytes.length, finalized: true, hash: files.x1!.hash }, '--json stat URL NAME');
});

test('have -> export --have -> import ships only the changed chunks; bad bundles are rejected and change nothing', async (t) => {
  const dir = tempDir(t);
  const sender = path.join(dir, 'sender');
  const receiver = path.join(dir, 'receiver');
  const v1 = prngBytes('cli bundle v1', 8 * MiB);
  // v2: a few small edits (an overwrite, an insert, a delete) spread over the file.
  const v2 = Buffer.concat([
    v1.subarray(0, 1 * MiB),
    prngBytes('edit 1', 100),
    v1.subarray(1 * MiB + 100, 4 * MiB),
    prngBytes('edit 2', 37),
    v1.subarray(4 * MiB, 6 * MiB + 5000),
    v1.subarray(6 * MiB + 5150),
  ]);
  const v1File = writeFile(dir, 'v1', v1);
  const v2File = writeFile(dir, 'v2', v2);
  await put(t, sender, v1File);
  const n2 = await put(t, sender, v2File);
  const n1 = await put(t, receiver, v1File);

  const haveFile = path.join(dir, 'receiver.have');
  t.regex(await ok(t, receiver, ['have', '-o', haveFile]), /chunks/);
  const bundle = path.join(dir, 'v2.bundle');
  const exp = JSON.parse(await ok(t, sender, ['--json', 'export', n2, '--have', haveFile, '-o', bundle])) as Record<string, number>;

  // The bound. The bundle carries v2's data only for chunks the receiver
  // lacks, so its data part is exactly the sizes of v2's chunks that are not
  // chunks of v1: the changed bytes rounded up to whole chunks (a chunk is at
  // most 256 KiB, 64 KiB on average). Allow 2x that, plus a fixed 4 KiB for
  // the magic, the header, blob and end records and the records' framing, plus
  // 64 bytes per chunk of v2 for its chunk list (a 32-byte hash and a size in
  // MessagePack each need under 40).
  const old = new Set(chunkList(v1).map((c) => c.hash));
  const list2 = chunkList(v2);
  const fresh = list2.filter((c) => !old.has(c.hash));
  const freshBytes = fresh.reduce((a, c) => a + c.size, 0);
  const bound = 2 * freshBytes + 4096 + 64 * list2.length;
  const bundleSize = fs.statSync(bundle).size;
  t.true(fresh.length >= 3 && freshBytes < 2 * MiB, `the edits touch a few chunks: ${fresh.length}, ${freshBytes} bytes`);
  t.true(bundleSize >= freshBytes, 'the bundle holds the new chunks');
  t.log(`bundle ${bundleSize} bytes; new chunks ${fresh.length} of ${list2.length}, ${freshBytes} bytes; bound ${bound}`);
  t.true(bundleSize < bound, `bundle ${bundleSize} bytes < bound ${bound} (new chunks: ${freshBytes} bytes)`);
  t.like(exp, { blobs: 1, chunks: fresh.length, dataBytes: freshBytes, bytes: bundleSize });

  // Bad bundles first: rejected, and the receiver is unchanged.
  const lsBefore = await ok(t, receiver, ['ls']);
  const data = fs.readFileSync(bundle);
  const truncated = writeFile(dir, 'truncated.bundle', data.subarray(0, Math.floor(data.length * 0.6)));
  assertFails(t, await cli(['--store', receiver, 'import', truncated]), 'ERR_BUNDLE_TRUNCATED', 'import of a truncated bundle');
  t.is(await ok(t, receiver, ['ls']), lsBefore, 'a truncated bundle changes nothing');
  const flipped = Buffer.from(data);
  flipped[Math.floor(flipped.length / 2)]! ^= 0x01;
  const corrupt = writeFile(dir, 'flipped.bundle', flipped);
  assertFails(t, await cli(['--store', receiver, 'import', corrupt]), 'ERR_BUNDLE_CORRUPT', 'import of a bundle with a flipped byte');
  t.is(await ok(t, receiver, ['ls']), lsBefore, 'a corrupt bundle changes nothing');
  const cut = writeFile(dir, 'cut.bundle', data.subarray(0, data.length - 1));
  assertFails(t, await cli(['--store', receiver, 'import', cut]), 'ERR_BUNDLE_TRUNCATED', 'import of a bundle missing its last byte');
  t.is(await ok(t, receiver, ['ls']), lsBefore);

  // The real import.
  const imported = await ok(t, receiver, ['import', bundle]);
  t.regex(imported, new RegExp(`^${n2} ${toHex(merkleRoot(v2))}`, 'm'));
  const rows = await lsJson(t, receiver);
  t.deepEqual(rows.find((r) => r.name === n2), { name: n2, size: v2.length, finalized: true, hash: toHex(merkleRoot(v2)) });
  t.deepEqual(rows.find((r) => r.name === n1), { name: n1, size: v1.length, finalized: true, hash: toHex(merkleRoot(v1)) });
  t.true((await cli(['--store', receiver, 'get', n2])).stdout.equals(v2), 'the imported blob reads back');
  t.regex(await ok(t, receiver, ['import', bundle]), /already here/, 'importing again is harmless');

  // Without --have the bundle is self-contained: an unrelated store takes it.
  const full = path.join(dir, 'full.bundle');
  await ok(t, sender, ['export', n2, '-o', full]);
  const other = path.join(dir, 'other');
  await ok(t, other, ['import', full]);
  t.deepEqual(await lsJson(t, other), [{ name: n2, size: v2.length, finalized: true, hash: toHex(merkleRoot(v2)) }]);

  // A bundle made for the receiver, imported into an empty store: the
  // chunks v2 shares with v1 are neither there nor in the bundle.
  const empty = path.join(dir, 'empty');
  const inc = await cli(['--store', empty, 'import', bundle]);
  t.is(inc.code, 1, `incomplete import exits 1: ${inc.stderr}`);
  const shared = list2.filter((c) => old.has(c.hash));
  t.regex(inc.out, new RegExp(`^INCOMPLETE ${n2}: ${shared.length} chunks?`, 'm'));
  const missing = [...inc.out.matchAll(/missing chunk ([0-9a-f]{64})/g)].map((m) => m[1]!);
  // At most 10 lines per blob, then how many more; --json lists them (the first 100).
  t.true(shared.length > 10, `more missing chunks than are listed: ${shared.length}`);
  t.is(missing.length, 10);
  t.regex(inc.out, new RegExp(`^  and ${shared.length - 10} more \\(--json lists the first ${Math.min(100, shared.length)}\\)$`, 'm'));
  const incJson = await cli(['--store', path.join(dir, 'empty2'), '--json', 'import', bundle]);
  t.is(incJson.code, 1, incJson.stderr);
  const incomplete = (JSON.parse(incJson.out) as { incomplete: Array<{ missing: unknown[]; missingCount: number }> }).incomplete;
  t.like(incomplete[0], { missingCount: shared.length });
  t.is(incomplete[0]!.missing.length, Math.min(100, shared.length));
  t.true(
    missing.every((h) => old.has(h) && !fresh.some((c) => c.hash === h)),
    'every chunk named missing is one the bundle left out',
  );
  t.false(
    (await lsJson(t, empty)).some((r) => r.finalized),
    'nothing unverified is finalized',
  );
});

test('bad usage exits 2 with help; --help on every command exits 0', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const a = writeFile(dir, 'a', Buffer.from('a'));
  const b = writeFile(dir, 'b', Buffer.from('b'));
  const bad: string[][] = [
    ['frobnicate'],
    ['get'],
    ['resume', '0123456789abcdef0123456789abcdef'],
    ['pull', 'ws://127.0.0.1:1'],
    ['export', '0123456789abcdef0123456789abcdef'], // no -o
    ['put', '--name', '0123456789abcdef0123456789abcdef', a, b],
    ['serve'],
    ['put', '--no-such-option', a],
  ];
  const results = await Promise.all(bad.map((args) => cli(['--store', store, ...args], { cwd: dir })));
  results.forEach((r, i) => assertUsage(t, r, bad[i]!.join(' ')));
  t.false(fs.existsSync(store), 'bad usage touches no store');
  t.false(fs.existsSync(path.join(dir, '.cabstore')));

  const commands = ['init', 'put', 'get', 'cat', 'ls', 'stat', 'rm', 'resume', 'gc', 'fsck', 'serve', 'pull', 'push', 'have', 'export', 'import'];
  const helps = await Promise.all([[], ...commands.map((c) => [c])].map((c) => cli([...c, '--help'], { cwd: dir })));
  helps.forEach((r, i) => {
    const c = i === 0 ? '' : commands[i - 1]!;
    t.is(r.code, 0, `${c} --help exits 0 (${r.stderr})`);
    t.regex(r.out, new RegExp(`Usage: cabstore ${c}`), `${c} --help prints its usage`);
  });
  t.is((await cli(['help', 'put'], { cwd: dir })).code, 0);
});

test('the store is --store, else CABSTORE_DIR, else ./.cabstore', async (t) => {
  const dir = tempDir(t);
  const cwd = path.join(dir, 'work');
  fs.mkdirSync(cwd);
  const envStore = path.join(dir, 'from-env');
  const flagStore = path.join(dir, 'from-flag');
  const f = writeFile(dir, 'f', prngBytes('cli env', 50_000));
  const hash = toHex(merkleRoot(fs.readFileSync(f)));

  const viaEnv = await cli(['put', f], { cwd, env: { CABSTORE_DIR: envStore } });
  t.is(viaEnv.code, 0, viaEnv.stderr);
  const e = putLines(viaEnv.out)[0]!.name;
  t.true(fs.existsSync(path.join(envStore, 'cabstore.json')), 'CABSTORE_DIR is the store');
  t.false(fs.existsSync(path.join(cwd, '.cabstore')));

  const viaFlag = await cli(['--store', flagStore, 'put', f], { cwd, env: { CABSTORE_DIR: envStore } });
  t.is(viaFlag.code, 0, viaFlag.stderr);
  const g = putLines(viaFlag.out)[0]!.name;
  t.true(fs.existsSync(path.join(flagStore, 'cabstore.json')), '--store wins over CABSTORE_DIR');

  const viaCwd = await cli(['put', f], { cwd });
  t.is(viaCwd.code, 0, viaCwd.stderr);
  const d = putLines(viaCwd.out)[0]!.name;
  t.true(fs.existsSync(path.join(cwd, '.cabstore', 'cabstore.json')), 'default ./.cabstore');

  const names = async (o: RunOptions, args: string[] = []) =>
    (JSON.parse((await cli([...args, '--json', 'ls'], o)).out) as LsRow[]).map((r) => [r.name, r.hash]);
  t.deepEqual(await names({ cwd, env: { CABSTORE_DIR: envStore } }), [[e, hash]]);
  t.deepEqual(await names({ cwd, env: { CABSTORE_DIR: envStore } }, ['--store', flagStore]), [[g, hash]]);
  t.deepEqual(await names({ cwd }), [[d, hash]]);
  t.deepEqual(await names({ cwd: dir }, ['--store', path.join('work', '.cabstore')]), [[d, hash]], 'a relative --store is relative to the cwd');
});
