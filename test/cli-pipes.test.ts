// `cabstore put` of sources whose size stat does not know: a pipe on stdin
// (as `-` and as /dev/stdin), a FIFO made with mkfifo, and `-` redirected
// from a regular file. Each must be read to its end and stored byte-exact.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import type { Writable } from 'node:stream';
import { merkleRoot, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir } from './helpers/store.js';
import { CLI, assertUsage, cli, finished, ok, putLines, start, writeFile } from './helpers/cli.js';

const MiB = 1024 * 1024;
/** Over two of the CLI's 4 MiB stream blocks, and not a multiple of anything. */
const BIG = prngBytes('cli pipe', 9 * MiB + 12_345);

/** Writes `bytes` to a stream in uneven pieces, honouring backpressure, then ends it. */
async function feed(w: Writable, bytes: Buffer): Promise<void> {
  for (let at = 0, step = 1; at < bytes.length; step = (step * 7) % 1_000_003) {
    const piece = bytes.subarray(at, at + 1 + step);
    at += piece.length;
    if (!w.write(piece)) await new Promise((r) => w.once('drain', r));
  }
  await new Promise<void>((resolve, reject) => w.end((e?: Error | null) => (e ? reject(e) : resolve())));
}

function ignore(e: NodeJS.ErrnoException, code: string): void {
  if (e.code !== code) throw e;
}

/** Runs `put ARGS` with `bytes` piped to its stdin; returns the printed name and hash. */
async function putPiped(store: string, args: string[], bytes: Buffer): Promise<{ code: number | null; stderr: string; name?: string; hash?: string }> {
  const c = start(['--store', store, 'put', ...args], { stdin: 'pipe' });
  c.stdin!.on('error', () => {}); // EPIPE if put exits without reading: the checks below say so
  const [r] = await Promise.all([finished(c), feed(c.stdin!, bytes).catch((e: NodeJS.ErrnoException) => ignore(e, 'EPIPE'))]);
  return { code: r.code, stderr: r.stderr, ...(r.code === 0 ? putLines(r.out)[0] : {}) };
}

test('put - and put /dev/stdin read a pipe to its end: "hi\\n", 9 MiB, and nothing at all', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const cases: Array<[string, string[], Buffer]> = [
    ['hi via /dev/stdin', ['/dev/stdin'], Buffer.from('hi\n')],
    ['hi via -', ['-'], Buffer.from('hi\n')],
    ['9 MiB via -', ['-'], BIG],
    ['9 MiB via /dev/stdin', ['/dev/stdin'], BIG],
    ['an empty pipe via -', ['-'], Buffer.alloc(0)],
  ];
  for (const [what, args, bytes] of cases) {
    const r = await putPiped(store, args, bytes);
    t.is(r.code, 0, `${what}: ${r.stderr}`);
    t.is(r.hash, toHex(merkleRoot(bytes)), `${what}: the hash of the bytes piped in`);
    const back = await cli(['--store', store, 'get', r.name!]);
    t.true(back.stdout.equals(bytes), `${what}: get returns them`);
  }
  // A shell pipeline: stdin is a pipe(2), not the socket pair a Node parent gives.
  const sh = await finished(spawn('sh', ['-c', `printf 'hi\\n' | "${process.execPath}" "${CLI}" --store "${store}" put /dev/stdin`], { stdio: ['ignore', 'pipe', 'pipe'] }));
  t.is(sh.code, 0, sh.stderr);
  t.is(putLines(sh.out)[0]!.hash, toHex(merkleRoot(Buffer.from('hi\n'))), "printf 'hi\\n' | cabstore put /dev/stdin");
  const named = await putPiped(store, ['--name', 'ab'.repeat(16), '-'], Buffer.from('named\n'));
  t.is(named.name, 'ab'.repeat(16), '--name with -');
  assertUsage(t, await cli(['--store', store, 'put', '-', '-']), 'stdin named twice');
});

test('put of a FIFO (mkfifo) reads what the writer sends until it closes', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const c = start(['--store', store, '--json', 'put', fifo]);
  let fed = false;
  const feeding = feed(fs.createWriteStream(fifo), BIG).then(() => (fed = true));
  const r = await finished(c);
  // A put that exits without reading to the end leaves our writer blocked (in
  // open, or on a full FIFO): read the rest here so that the test ends.
  if (!fed) fs.createReadStream(fifo).resume();
  await feeding;
  t.is(r.code, 0, r.stderr);
  const got = JSON.parse(r.out) as { name: string; hash: string; size: number };
  t.like(got, { hash: toHex(merkleRoot(BIG)), size: BIG.length });
  t.true((await cli(['--store', store, 'get', got.name])).stdout.equals(BIG));
});

test('put - with stdin redirected from a regular file (`< file`)', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const file = writeFile(dir, 'f', BIG);
  const fd = fs.openSync(file, 'r');
  t.teardown(() => fs.closeSync(fd));
  const [line] = putLines(await ok(t, store, ['put', '-'], { stdin: fd }));
  t.is(line!.hash, toHex(merkleRoot(BIG)));
});
