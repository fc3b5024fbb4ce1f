// fsck under real I/O faults: an error that is not "file absent" is an I/O
// error, reported as ERR_IO, and never recorded as damage.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore, CabError, merkleRoot, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, readAll, collect } from './helpers/store.js';
import { fragmentPath } from './helpers/paths.js';

const CHILD = fileURLToPath(new URL('./helpers/fsck-child.js', import.meta.url));

/** Blobs written in fragments of 100 kB; returns their bytes by name. */
async function manyFragments(dir: string, blobs: number, size: number): Promise<Map<string, Buffer>> {
  const store = await BlobStore.open(dir);
  const out = new Map<string, Buffer>();
  try {
    for (let i = 0; i < blobs; i++) {
      const bytes = prngBytes(`fsck-io ${i}`, size);
      const w = await store.newBlobWriter();
      for (let off = 0; off < size; off += 100_000) {
        await w.appendBytes(bytes.subarray(off, off + 100_000));
        await w.flush(); // a fragment each
      }
      await w.close();
      out.set(w.name, bytes);
    }
  } finally {
    await store.close();
  }
  return out;
}

/** Every descriptor's bytes, by path: what must not change. */
function descriptors(root: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const blobRoot = path.join(root, 'blob');
  for (const f of fs.readdirSync(blobRoot, { recursive: true }).map(String)) {
    const p = path.join(blobRoot, f);
    if (fs.statSync(p).isFile()) out.set(p, fs.readFileSync(p));
  }
  return out;
}

async function assertIntact(t: ExecutionContext, dir: string, contents: Map<string, Buffer>): Promise<void> {
  const store = await BlobStore.open(dir);
  try {
    const r = await store.fsck({ verify: true });
    t.deepEqual(r.problems, [], JSON.stringify(r.problems));
    for (const [name, bytes] of contents) {
      t.deepEqual(await readAll(store, name), bytes);
      const rd = await store.newBlobReader(name);
      t.is(toHex(rd.hash!), toHex(merkleRoot(bytes)));
      await rd.close();
    }
  } finally {
    await store.close();
  }
}

test('a fragment replaced by a directory: fsck (plain, --verify, --repair) stops with ERR_IO and records no damage', async (t) => {
  const dir = tempDir(t);
  const contents = await manyFragments(dir, 2, 600_000);
  const store = await BlobStore.open(dir);
  const frags = await collect(store.listCaIds());
  const victim = fragmentPath(store, frags[frags.length >> 1]!);
  const saved = path.join(dir, 'saved-fragment');
  fs.renameSync(victim, saved);
  fs.mkdirSync(victim);
  const before = descriptors(dir);
  try {
    for (const opts of [{ repair: true }, { verify: true, repair: true }, {}, { verify: true }]) {
      const e = await t.throwsAsync(store.fsck(opts), { instanceOf: CabError }, JSON.stringify(opts));
      t.is(e?.code, 'ERR_IO', `${JSON.stringify(opts)}: ${e?.message}`);
    }
  } finally {
    await store.close();
  }
  t.deepEqual(descriptors(dir), before, 'no descriptor changed: no damage recorded');
  fs.rmSync(victim, { recursive: true });
  fs.renameSync(saved, victim);
  await assertIntact(t, dir, contents);
});

/**
 * Runs the fsck child and, once it has opened the store, lowers its
 * RLIMIT_NOFILE (prlimit, as `ulimit -n` would at its start) to `spare`
 * descriptors above what it holds. Undefined (after a log line) where
 * prlimit is missing.
 */
async function fsckWithFewFds(t: ExecutionContext, dir: string, spare: number): Promise<{ code: number | null; out: string; err: string } | undefined> {
  const c = spawn(process.execPath, [CHILD, dir], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  c.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<number | null>((resolve) => c.on('close', resolve));
  const open = await new Promise<number>((resolve, reject) => {
    c.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /fds (\d+)\n/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    c.on('close', () => reject(new Error(`fsck child ended early: ${out} ${err}`)));
  });
  try {
    execFileSync('prlimit', ['--pid', String(c.pid), `--nofile=${open + spare}:${open + spare}`], { stdio: 'pipe' });
  } catch (e) {
    c.kill('SIGKILL');
    await done;
    t.log(`NOT RUN: prlimit failed (${(e as Error).message.split('\n')[0]}); this test needs util-linux prlimit`);
    t.pass();
    return undefined;
  }
  t.log(`fsck child: ${open} descriptors open, limit set to ${open + spare}`);
  c.stdin.end('go\n');
  const code = await done;
  return { code, out, err };
}

test('fsck --verify --repair out of file descriptors (RLIMIT_NOFILE): ERR_IO, and no damage recorded on healthy blobs', async (t) => {
  const dir = tempDir(t);
  const contents = await manyFragments(dir, 2, 2_000_000);
  const before = descriptors(dir);
  // Room to list the two blob directories, not to hold a blob's 20 fragments open.
  const r = await fsckWithFewFds(t, dir, 12);
  if (!r) return;
  t.log(`child: exit ${r.code}, ${r.out.trim()} ${r.err.trim()}`);
  t.is(r.code, 1, `${r.out} ${r.err}`);
  t.regex(r.out, /\nERR_IO\n/);
  t.deepEqual(descriptors(dir), before, 'no descriptor changed: no damage recorded');
  await assertIntact(t, dir, contents);
});
