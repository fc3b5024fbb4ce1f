// Where the command line writes what a user names with -o (get, have,
// export): a hostile review found a get whose output opened slowly lost the
// blob's first bytes, outputs that are devices, FIFOs or symlinks replaced
// instead of written, and errors without a code for a directory or a missing
// one. Real child processes, real FIFOs, a device node made in a temp dir.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { BlobStore, CabError, exportBundle, importBundle, writeHave } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { putBlob, tempDir } from './helpers/store.js';
import { assertFails, cli, finished, ok, start, writeFile } from './helpers/cli.js';

const MiB = 1024 * 1024;

/** A store with one blob of `size` bytes spread over several fragments; its root, the blob's name and bytes. */
async function storeWithBlob(t: ExecutionContext, seed: string, size: number): Promise<{ root: string; name: string; bytes: Buffer }> {
  const root = path.join(tempDir(t), 'store');
  const s = await BlobStore.open(root, { fragmentSize: MiB });
  const bytes = prngBytes(seed, size);
  const name = await putBlob(s, bytes);
  await s.close();
  return { root, name, bytes };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** open(2) and openat(2) by architecture, as /proc/PID/task/TID/syscall names them. */
const OPEN_SYSCALLS: Partial<Record<string, number[]>> = { x64: [2, 257], arm64: [56] };

/** Thread ids of `pid` now in open or openat, from /proc (an empty set where it cannot tell). */
function threadsInOpen(pid: number): Set<string> {
  const nrs = OPEN_SYSCALLS[process.arch] ?? [];
  const found = new Set<string>();
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return found; // no /proc, or the process has ended
  }
  for (const tid of tids) {
    try {
      if (nrs.includes(Number(fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').split(' ')[0]))) found.add(tid);
    } catch {
      // the thread ended
    }
  }
  return found;
}

/**
 * Resolves once the child has been waiting in an open (of a FIFO nobody
 * reads: it waits until someone does) for two looks running; where /proc
 * cannot tell, after a second. Either way, then gives it time to lose bytes
 * if it reads the blob before its output is open.
 */
async function waitingInOpen(c: ChildProcess): Promise<void> {
  const canTell = OPEN_SYSCALLS[process.arch] !== undefined && fs.existsSync(`/proc/${c.pid}/task`);
  if (!canTell) await sleep(1000);
  let before = new Set<string>();
  while (canTell && c.exitCode === null && c.signalCode === null) {
    const now = threadsInOpen(c.pid!);
    if ([...now].some((tid) => before.has(tid))) break;
    before = now;
    await sleep(50);
  }
  await sleep(300);
}

function readFifo(fifo: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    fs.createReadStream(fifo)
      .on('data', (b) => parts.push(b as Buffer))
      .on('end', () => resolve(Buffer.concat(parts)))
      .on('error', reject);
  });
}

test('get -o to an output whose open waits (a FIFO with no reader yet) loses no byte; get -o FILE and get to stdout give the blob exactly', async (t) => {
  const { root, name, bytes } = await storeWithBlob(t, 'slow open', 8 * MiB + 12345);
  const dir = tempDir(t);
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const c = start(['--store', root, 'get', name, '-o', fifo]);
  t.teardown(() => c.kill('SIGKILL'));
  const done = finished(c);
  // The get waits in open until a reader comes: a get that reads the blob meanwhile (its old 'data' listener) loses those bytes.
  await waitingInOpen(c);
  const got = await readFifo(fifo);
  const r = await done;
  t.is(r.code, 0, r.stderr);
  t.is(got.length, bytes.length, 'every byte arrived');
  t.true(got.equals(bytes), 'the blob, exactly');
  t.true(fs.lstatSync(fifo).isFIFO(), 'the FIFO is still a FIFO, not a file put in its place');

  const file = path.join(dir, 'out');
  await ok(t, root, ['get', name, '-o', file]);
  t.true(fs.readFileSync(file).equals(bytes), 'get -o FILE');
  t.true((await cli(['--store', root, 'get', name])).stdout.equals(bytes), 'get to stdout');
  t.deepEqual(fs.readdirSync(dir).sort(), ['fifo', 'out'], 'no temp file left');
});

test('get, have and export write into a FIFO or a device, never replacing it', async (t) => {
  const { root, name, bytes } = await storeWithBlob(t, 'special outputs', 3 * MiB);
  const dir = tempDir(t);
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  // have and export into the FIFO: what comes out is a have file and a bundle that an import takes.
  for (const args of [['have', '-o', fifo], ['export', name, '-o', fifo]]) {
    const c = start(['--store', root, ...args]);
    t.teardown(() => c.kill('SIGKILL'));
    const done = finished(c);
    const got = await readFifo(fifo);
    const r = await done;
    t.is(r.code, 0, `${args[0]}: ${r.stderr}`);
    t.true(fs.lstatSync(fifo).isFIFO(), `${args[0]}: still a FIFO`);
    fs.writeFileSync(path.join(dir, args[0]!), got);
  }
  const other = path.join(dir, 'other');
  t.regex(await ok(t, other, ['import', path.join(dir, 'export')]), new RegExp(`^${name} `));
  t.true((await cli(['--store', other, 'get', name])).stdout.equals(bytes), 'the bundle read from the FIFO imports the blob');
  const hs = await BlobStore.open(root);
  const expected = await haveBytes(t, hs);
  await hs.close();
  t.deepEqual(fs.readFileSync(path.join(dir, 'have')), expected, 'the have file read from the FIFO is the one a file gets');

  // A character device (the null device's numbers, made here, not /dev/null): written, still a device. Needs root to make.
  const dev = path.join(dir, 'null');
  try {
    execFileSync('mknod', [dev, 'c', '1', '3'], { stdio: 'ignore' });
  } catch {
    t.log('mknod refused (not root): the device case is not run here');
    return;
  }
  for (const args of [['get', name, '-o', dev], ['have', '-o', dev], ['export', name, '-o', dev]]) {
    await ok(t, root, args);
    const st = fs.lstatSync(dev);
    t.true(st.isCharacterDevice(), `${args[0]} -o a device leaves the device`);
  }
  t.deepEqual(fs.readdirSync(dir).sort(), ['export', 'fifo', 'have', 'null', 'other'], 'no temp files');
});

/** What `writeHave` puts in a regular file, for comparison. */
async function haveBytes(t: ExecutionContext, s: BlobStore): Promise<Buffer> {
  const f = path.join(tempDir(t), 'h');
  await writeHave(s, f);
  return fs.readFileSync(f);
}

test('get, have and export to a symlink replace the file it names (through a chain, or a dangling one), not the link', async (t) => {
  const { root, name, bytes } = await storeWithBlob(t, 'symlink outputs', 2 * MiB);
  const dir = tempDir(t);
  const sub = path.join(dir, 'sub');
  fs.mkdirSync(sub);
  const real = writeFile(sub, 'real', Buffer.from('old contents'));
  fs.symlinkSync('sub/real', path.join(dir, 'link'));
  fs.symlinkSync('link', path.join(dir, 'link2'));
  fs.symlinkSync('sub/new', path.join(dir, 'dangling'));
  const links = () => ['link', 'link2', 'dangling'].map((l) => fs.readlinkSync(path.join(dir, l)));

  await ok(t, root, ['get', name, '-o', path.join(dir, 'link2')]);
  t.true(fs.readFileSync(real).equals(bytes), 'the file at the end of the chain holds the blob');
  t.deepEqual(links(), ['sub/real', 'link', 'sub/new'], 'the links are as they were');
  await ok(t, root, ['get', name, '-o', path.join(dir, 'dangling')]);
  t.true(fs.readFileSync(path.join(sub, 'new')).equals(bytes), 'a dangling link: the file it names is made');
  t.true(fs.lstatSync(path.join(dir, 'dangling')).isSymbolicLink());

  await ok(t, root, ['have', '-o', path.join(dir, 'link')]);
  t.true(fs.lstatSync(path.join(dir, 'link')).isSymbolicLink(), 'have: the link stays');
  t.regex(fs.readFileSync(real, 'latin1'), /^CABHAVE1/, 'have: the file it names is the have file');
  await ok(t, root, ['export', name, '-o', path.join(dir, 'link2')]);
  t.deepEqual(links(), ['sub/real', 'link', 'sub/new'], 'export: the links stay');
  const other = path.join(dir, 'other');
  await ok(t, other, ['import', real]);
  t.true((await cli(['--store', other, 'get', name])).stdout.equals(bytes), 'export: the file it names is the bundle');
  t.deepEqual(fs.readdirSync(sub).sort(), ['new', 'real'], 'no temp files');
});

test('an output that is a directory, or under a missing one, fails at once with one line naming ERR_IO (no stack trace), leaving nothing', async (t) => {
  const { root, name } = await storeWithBlob(t, 'bad outputs', MiB);
  const dir = tempDir(t);
  const outDir = path.join(dir, 'outdir');
  fs.mkdirSync(outDir);
  for (const args of [['get', name, '-o', outDir], ['have', '-o', outDir], ['export', name, '-o', outDir]]) {
    const r = await cli(['--store', root, ...args]);
    assertFails(t, r, 'ERR_IO', `${args[0]} -o DIR`);
    t.regex(r.stderr, /EISDIR/, args[0]!);
  }
  const missing = path.join(dir, 'nonexistent', 'dir', 'f');
  for (const args of [['get', name, '-o', missing], ['have', '-o', missing], ['export', name, '-o', missing]]) {
    const r = await cli(['--store', root, ...args]);
    assertFails(t, r, 'ERR_IO', `${args[0]} -o under a missing directory`);
    t.regex(r.stderr, /ENOENT/, args[0]!);
  }
  t.deepEqual(fs.readdirSync(dir), ['outdir'], 'no temp files beside the directory');
  t.deepEqual(fs.readdirSync(outDir), []);

  // The library: the same, before any work; an import of a directory is a CabError too.
  const s = await BlobStore.open(root);
  t.teardown(() => s.close());
  for (const p of [exportBundle(s, [name], outDir), writeHave(s, outDir)]) {
    const e = await t.throwsAsync(p, { instanceOf: CabError });
    t.is(e!.code, 'ERR_IO', e!.message);
    t.is(e!.data.found, 'EISDIR');
  }
  const e = await t.throwsAsync(importBundle(s, outDir), { instanceOf: CabError });
  t.is(e!.code, 'ERR_NO_SUCH_FILE', e!.message);
  assertFails(t, await cli(['--store', root, 'import', outDir]), 'ERR_NO_SUCH_FILE', 'import DIR');
});
