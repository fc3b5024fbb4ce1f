// `cabstore put` stopped by Ctrl-C (SIGINT) or SIGTERM: it names the blob as
// it starts, makes what it appended durable, says how to finish it, and dies
// of the signal (a shell shows 130 or 143); the command it prints finishes the
// blob with the right hash. Real child processes, real signals.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { MerkleHasher, merkleRoot, toHex } from '../src/index.js';
import { prngBytes, prngStream } from '../tools/data.js';
import { tempDir } from './helpers/store.js';
import { cli, finished, ok, putLines, start, waitFor } from './helpers/cli.js';

const MiB = 1024 * 1024;

const STARTED = /^cabstore: writing blob ([0-9a-f]{32}) \(if interrupted: (.+)\)$/m;

/** The command after "to finish it: ", as arguments for the CLI (paths here have no spaces, so they are printed bare). */
function finishCommand(t: ExecutionContext, stderr: string): string[] {
  const m = /to finish it: cabstore (.+?)(, FILE holding .*)?$/m.exec(stderr);
  if (!m) t.fail(`no command to finish it in: ${stderr}`);
  return m![1]!.split(' ');
}

interface LsRow {
  name: string;
  size: number;
  finalized: boolean;
  hash: string | null;
}
const lsRow = async (t: ExecutionContext, store: string, name: string) =>
  (JSON.parse(await ok(t, store, ['--json', 'ls'])) as LsRow[]).find((r) => r.name === name);

test('put of a FIFO stopped by SIGINT: ends by SIGINT (exit status 130), the blob named at the start keeps what was appended; resume from a file of the same bytes finishes it', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  // More than two of put's 4 MiB blocks: once the FIFO has taken it all, at least two were appended.
  const all = prngBytes('interrupt fifo', 12 * MiB + 777);
  const sent = all.subarray(0, 10 * MiB + 4321);
  const c = start(['--store', store, 'put', fifo]);
  t.teardown(() => c.kill('SIGKILL'));
  const done = finished(c);
  const started = waitFor(c, STARTED, 'put', 'stderr');
  const w = fs.createWriteStream(fifo);
  w.on('error', () => {}); // EPIPE once put has gone
  await new Promise<void>((resolve, reject) => w.write(sent, (e) => (e ? reject(e) : resolve())));
  const [, name] = await started;
  // The writer of the FIFO stays open: put cannot reach an end of input by itself.
  c.kill('SIGINT');
  const r = await done;
  w.destroy();
  t.is(r.signal, 'SIGINT', `ended by SIGINT, after cleaning up (exit ${r.code}; stderr: ${r.stderr})`);
  t.is(r.out, '', 'no NAME HASH: the blob is not finalized');
  const said = new RegExp(`^cabstore: interrupted: blob ${name} holds the first (\\d+) bytes of ${fifo.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, durably, unfinalized; to finish it: .* FILE holding the same bytes as`, 'm').exec(r.stderr);
  t.truthy(said, r.stderr);
  const held = Number(said![1]);
  t.true(held >= 8 * MiB && held <= sent.length && held % (4 * MiB) === 0, `whole 4 MiB blocks appended: ${held}`);
  t.like(await lsRow(t, store, name!), { size: held, finalized: false, hash: null });

  // The printed command, with FILE holding the same bytes (and the rest of them).
  const file = path.join(dir, 'same-bytes');
  fs.writeFileSync(file, all);
  const args = finishCommand(t, r.stderr).map((a) => (a === 'FILE' ? file : a));
  t.deepEqual(args.slice(0, 3), ['--store', store, 'resume']);
  const resumed = await cli(args);
  t.is(resumed.code, 0, resumed.stderr);
  t.deepEqual(putLines(resumed.out), [{ name: name!, hash: toHex(merkleRoot(all)) }]);
  t.like(await lsRow(t, store, name!), { size: all.length, finalized: true, hash: toHex(merkleRoot(all)) });
});

// Serial: the put must still be running when the signal comes.
test.serial('put of a large file stopped by SIGTERM: ends by SIGTERM (exit status 143); the printed resume command, run as printed, finishes it with the file\'s hash', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  const big = path.join(dir, 'big');
  const size = 200 * MiB;
  {
    const next = prngStream('interrupt file');
    const fd = fs.openSync(big, 'w');
    for (let left = size; left > 0; left -= 4 * MiB) fs.writeSync(fd, next(Math.min(4 * MiB, left)));
    fs.closeSync(fd);
  }
  const c = start(['--store', store, 'put', big]);
  t.teardown(() => c.kill('SIGKILL'));
  const done = finished(c);
  const [, name, hint] = await waitFor(c, STARTED, 'put', 'stderr');
  t.is(hint, `cabstore --store ${store} resume ${name} ${big}`, 'the start line says how to finish the blob');
  c.kill('SIGTERM');
  const r = await done;
  t.is(r.signal, 'SIGTERM', `ended by SIGTERM, not the end of the put (exit ${r.code}; stderr: ${r.stderr})`);
  t.regex(r.stderr, /^cabstore: interrupted: /m, 'after cleaning up');
  const held = Number(/holds the first (\d+) bytes/.exec(r.stderr)?.[1]);
  t.true(held > 0 && held < size, `a durable prefix: ${held}`);
  t.like(await lsRow(t, store, name!), { size: held, finalized: false });

  const args = finishCommand(t, r.stderr);
  t.deepEqual(args, ['--store', store, 'resume', name!, big]);
  const resumed = await cli(args);
  t.is(resumed.code, 0, resumed.stderr);
  const hash = putLines(resumed.out)[0]!.hash;
  const m = new MerkleHasher();
  for await (const b of fs.createReadStream(big, { highWaterMark: 4 * MiB })) m.update(b as Buffer);
  t.is(hash, toHex(m.digest()), "the blob's hash is the file's");
  t.like(await lsRow(t, store, name!), { size, finalized: true, hash });
});

test('put - stopped by SIGINT says resume needs the same bytes as stdin in a file', async (t) => {
  const store = path.join(tempDir(t), 'store');
  const c = start(['--store', store, 'put', '-'], { stdin: 'pipe' });
  t.teardown(() => c.kill('SIGKILL'));
  c.stdin!.on('error', () => {}); // EPIPE once put has gone
  const done = finished(c);
  const [, name, hint] = await waitFor(c, STARTED, 'put', 'stderr');
  t.regex(hint!, / FILE, FILE holding the same bytes as stdin$/);
  await new Promise<void>((resolve, reject) => c.stdin!.write(prngBytes('interrupt stdin', 5 * MiB), (e) => (e ? reject(e) : resolve())));
  c.kill('SIGINT');
  const r = await done;
  t.is(r.signal, 'SIGINT', r.stderr);
  t.regex(r.stderr, new RegExp(`^cabstore: interrupted: blob ${name} holds the first \\d+ bytes of stdin, .*resume ${name} FILE, FILE holding the same bytes as stdin$`, 'm'));
  t.like(await lsRow(t, store, name!), { finalized: false });
});
