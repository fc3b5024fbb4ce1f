// Review of the eighth session's leaf split (branch leaves8): long runs of
// stored bytes leaf-hashed over two threads (src/hash/leaf-split.ts). Each
// test attacks one interleaving or failure; the blob hash must always be the
// merkle root of the bytes, a failure a coded error with nothing finalized.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import crypto from 'node:crypto';
import { BlobStore, connect, merkleRoot, serve, toHex, type ServeOptions } from '../src/index.js';
import { Layout } from '../src/format/layout.js';
import { LAYER_HEADER } from '../src/blob/leaf-layer.js';
import { edited } from './helpers/transfer.js';
import { slowLink } from './helpers/slow-link.js';
import { HashJob } from '../src/hash/pool.js';
import { MerkleHasher, type MerkleState } from '../src/hash/merkle.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll, codeOf, blobState, chunkStarts } from './helpers/store.js';
import { fragmentPath } from './helpers/paths.js';

const MiB = 1024 * 1024;
const LEAF = 16384;
const indexJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/index.js');

/** This process's threads and their CPU time so far (ns). */
function threads(): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      out.set(tid, Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1').split(' ')[0]));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return out;
}

const startAfter = (starts: number[], pos: number) => starts.find((s) => s >= pos)!;

/**
 * Appends `ins` (fresh bytes: the chunker leaves the source's boundaries), four chunks of `src` from
 * `from` (read and chunked on the main thread, back on the source's boundaries), then the rest to `to`:
 * whole chunks, read by the hashing thread (a long run). The bytes go to `parts`.
 */
async function insertRun(w: { appendBytes(b: Uint8Array): Promise<unknown>; appendBlob(b: string, o: number, n: number): Promise<void> }, parts: Buffer[], ins: Buffer, src: string, bytes: Buffer, starts: number[], from: number, to: number): Promise<void> {
  const i = starts.indexOf(from);
  const sync = Math.min(starts[i + 4] ?? to, to);
  await w.appendBytes(ins);
  await w.appendBlob(src, from, sync - from);
  await w.appendBlob(src, sync, to - sync);
  parts.push(ins, bytes.subarray(from, to));
}

/** Watches for threads started from now on: `cpu()` is the most CPU (ns) one of them has used since it was first seen. */
function newThreads(): { seen: () => void; cpu: () => number } {
  const before = threads();
  const first = new Map<string, number>();
  const seen = () => {
    for (const [tid, ns] of threads()) if (!before.has(tid) && !first.has(tid)) first.set(tid, ns);
  };
  return {
    seen,
    cpu: () => {
      seen();
      const now = threads();
      return Math.max(0, ...[...first].map(([tid, ns]) => (now.get(tid) ?? ns) - ns));
    },
  };
}

function checkState(t: import('ava').ExecutionContext, bytes: Uint8Array, at: number, st: MerkleState, what: string): void {
  t.is(st.size, at, `${what}: size`);
  const h = MerkleHasher.fromState(st).update(bytes.subarray(st.leaves * LEAF, at));
  t.is(toHex(h.digest()), toHex(merkleRoot(bytes.subarray(0, at))), `${what}: the state at ${at}`);
}

test.serial('HashJob: received blocks (odd sizes) between long reads, an empty read, a read of exactly 2 MiB, states after each: every state and the root are right', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'bytes');
  const disk = prngBytes('review8b states disk', 48 * MiB);
  fs.writeFileSync(file, disk);
  const job = new HashJob();
  const stream: Buffer[] = [];
  let fed = 0;
  let pos = 0; // in the file
  const read = (n: number) => {
    job.send({ files: [file, pos, n], length: n }, true, [], true);
    stream.push(disk.subarray(pos, pos + n));
    pos += n;
    fed += n;
  };
  const block = (n: number, seed: string) => {
    const b = prngBytes(seed, n);
    job.send(b, true, [], false);
    stream.push(b);
    fed += n;
  };
  const states: Array<[number, Promise<MerkleState>, string]> = [];
  const state = (what: string) => states.push([fed, job.state(), what]);
  await sleep(2500); // an earlier test's helper gone
  const before = threads();
  read(3 * MiB + 7);
  await job.state();
  await sleep(300); // the helper online
  const mid = threads();
  for (let i = 0; i < 5; i++) {
    read(4 * MiB + 1000 * i + 1);
    state(`after read ${i}`);
    block(100 + 7 * i, `blk ${i}`);
    state(`after block ${i}`);
    read(0);
    state(`after empty read ${i}`);
    // Two reads in a row, the second starting where the block left the stream mid-leaf.
    read(2 * MiB);
    block(LEAF * 2 + 3, `blk2 ${i}`);
    read(2 * MiB + 16383);
    state(`after two reads ${i}`);
  }
  const bytes = Buffer.concat(stream);
  const root = await job.digest();
  const after = threads();
  await job.close();
  const helperCpu = Math.max(0, ...[...mid].filter(([tid]) => !before.has(tid)).map(([tid, ns]) => (after.get(tid) ?? ns) - ns));
  t.true(helperCpu > 5e6, `a helper thread hashed a share (${helperCpu} ns)`);
  t.is(toHex(root), toHex(merkleRoot(bytes)));
  for (const [at, p, what] of states) checkState(t, bytes, at, await p, what);
});

test.serial('two stores, three writers at once sharing the helper, each with long runs after odd inserts: every blob has the root of its bytes', async (t) => {
  const s1 = await tempStore(t, { fragmentSize: 8 * MiB });
  const s2 = await tempStore(t, { fragmentSize: 4 * MiB, chunker: { min: 64, avg: 1024, max: 256 * 1024 } });
  const a = prngBytes('review8b many a', 30 * MiB + 5);
  const b = prngBytes('review8b many b', 20 * MiB + 11);
  const srcA = await putBlob(s1, a);
  const srcB = await putBlob(s2, b);
  const startsA = await chunkStarts(s1, srcA, true);
  const startsB = await chunkStarts(s2, srcB, true);
  await sleep(2500); // an earlier test's helper gone
  const watch = newThreads();
  const one = async (s: BlobStore, src: string, bytes: Buffer, starts: number[], seed: string) => {
    const w = await s.newBlobWriter();
    const parts: Buffer[] = [];
    for (let i = 0, mib = 0; ; mib += 5, i++) {
      const from = startAfter(starts, mib * MiB);
      if (from >= bytes.length) break;
      const to = startAfter(starts, (mib + 4) * MiB) ?? bytes.length;
      await insertRun(w, parts, prngBytes(`${seed} ${i}`, 1 + ((i * 4099) % 9000)), src, bytes, starts, from, to);
      watch.seen();
    }
    await w.close();
    const want = Buffer.concat(parts);
    return { got: toHex(w.hash), want: toHex(merkleRoot(want)), same: (await readAll(s, w.name)).equals(want) };
  };
  const r = await Promise.all([one(s1, srcA, a, startsA, 'w1'), one(s2, srcB, b, startsB, 'w2'), one(s1, srcA, a, startsA, 'w3')]);
  t.true(watch.cpu() > 5e6, `the helper hashed a share (${watch.cpu()} ns)`);
  for (const x of r) {
    t.is(x.got, x.want);
    t.true(x.same);
  }
});

test.serial('a fragment deleted under one writer\'s long run while another store\'s writer runs too: ERR_FRAGMENT_MISSING and nothing finalized for the one, the right root for the other', async (t) => {
  const s1 = await tempStore(t);
  const s2 = await tempStore(t);
  const a = prngBytes('review8b del a', 24 * MiB);
  const b = prngBytes('review8b del b', 24 * MiB);
  const srcA = await putBlob(s1, a);
  const srcB = await putBlob(s2, b);
  const ids: string[] = [];
  for await (const id of s1.listCaIds()) ids.push(id);
  const startsA = await chunkStarts(s1, srcA, true);
  await sleep(2500); // an earlier test's helper gone
  const watch = newThreads();
  const w1 = await s1.newBlobWriter();
  const w2 = await s2.newBlobWriter();
  await insertRun(w1, [], Buffer.from('abc'), srcA, a, startsA, 0, startAfter(startsA, 6 * MiB));
  await sleep(300);
  watch.seen(); // the helper, started by w1's run
  for (const id of ids) fs.unlinkSync(fragmentPath(s1, id));
  const from = startAfter(startsA, 7 * MiB);
  const [e1, ok2] = await Promise.all([
    codeOf(w1.appendBlob(srcA, from, a.length - from)),
    w2.appendBlob(srcB, 0, b.length).then(() => 'ok', (e) => String(e)),
  ]);
  t.true(watch.cpu() > 5e6, `the helper hashed a share (${watch.cpu()} ns)`);
  const c1 = await codeOf(w1.close());
  t.true(e1 === 'ERR_FRAGMENT_MISSING' || c1 === 'ERR_FRAGMENT_MISSING', `appendBlob ${e1}, close ${c1}`);
  t.not(c1, 'resolved');
  const r = await s1.newBlobReader(w1.name);
  t.false(r.isFinalized);
  await r.close();
  t.is(ok2, 'ok');
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(b)));
});

let children = 0;
/**
 * Runs `code` (an ES module body; `index` is the library) in a child node, with a preload that notes each
 * start of the leaf helper (the one thread with an `answers` port in its workerData, src/hash/leaf-split.ts)
 * and, with REVIEW8B_DIE_MS in `env`, makes it die that long after it starts (REVIEW8B_HOW: throw or exit).
 */
function child(dir: string, code: string, onLine?: (line: string, kill: (afterHelper?: boolean) => void) => void, env: Record<string, string> = {}): Promise<{ lines: string[]; code: number | null; signal: string | null; exitAfterLastLine: number; helperStarts: number; helperDeaths: number; stderr: string }> {
  const hook = path.join(dir, 'hook.mjs');
  const marks = path.join(dir, `helper-${++children}`);
  fs.writeFileSync(
    hook,
    `import { isMainThread, workerData } from 'node:worker_threads';
     import fs from 'node:fs';
     if (!isMainThread && workerData && workerData.answers) {
       fs.appendFileSync(process.env.REVIEW8B_MARKS, 's');
       // A starved helper: busy most of the time between its tasks.
       if (process.env.REVIEW8B_SLOW) setInterval(() => { const end = Date.now() + 15; while (Date.now() < end); }, 16);
       const ms = process.env.REVIEW8B_DIE_MS;
       if (ms) setTimeout(() => { fs.appendFileSync(process.env.REVIEW8B_MARKS, 'd'); if (process.env.REVIEW8B_HOW === 'exit') process.exit(3); else throw new Error('the helper dies'); }, Number(ms));
     }`,
  );
  const script = path.join(dir, `child-${children}.mjs`);
  fs.writeFileSync(script, `const index = await import(${JSON.stringify(indexJs)});\n${code}`);
  const p = spawn(process.execPath, ['--import', hook, script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env, REVIEW8B_MARKS: marks } });
  const lines: string[] = [];
  // SIGKILL, with `afterHelper` once the leaf helper has started (its thread takes a while to start on a busy machine).
  const kill = (afterHelper = false) => {
    const began = Date.now();
    const poll = (): unknown => (!afterHelper || fs.readFileSync(marks, { encoding: 'latin1', flag: 'a+' }).includes('s') || Date.now() - began > 5000 ? p.kill('SIGKILL') : setTimeout(poll, 5));
    poll();
  };
  let buf = '';
  let stderr = '';
  let last = Date.now();
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  p.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      last = Date.now();
      onLine?.(line, kill);
    }
  });
  const killer = setTimeout(() => p.kill('SIGKILL'), 18000);
  return new Promise((resolve) =>
    p.on('exit', (code, signal) => {
      clearTimeout(killer);
      const m = fs.existsSync(marks) ? fs.readFileSync(marks, 'latin1') : '';
      resolve({ lines, code, signal, exitAfterLastLine: Date.now() - last, helperStarts: m.split('s').length - 1, helperDeaths: m.split('d').length - 1, stderr });
    }),
  );
}

for (const slow of [false, true]) {
test.serial(`a writer child SIGKILLed mid-appendBlob of long runs (checkpoints every 1 MiB, taken while the helper is behind${slow ? ', a starved helper' : ''}), resumed: the root of its bytes`, async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b kill', 40 * MiB);
  let s = await BlobStore.open(path.join(dir, 'store'), { fragmentSize: 8 * MiB });
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src, true);
  await s.close();
  // The child's stream: for k = 0.., 7 bytes of insert, then src[start after k*5 MiB, start after k*5+4 MiB)
  // (four chunks read on the main thread, back on the source's boundaries, then whole chunks: a long run).
  const plan: Array<[number, number, number, number]> = [];
  for (let k = 0; k < 7; k++) {
    const f = startAfter(starts, k * 5 * MiB);
    plan.push([k, f, starts[starts.indexOf(f) + 4]!, startAfter(starts, (k * 5 + 4) * MiB)]);
  }
  const ins = (k: number) => Buffer.from(`ins${k}!!`);
  const want = Buffer.concat(plan.flatMap(([k, f, , e]) => [ins(k), a.subarray(f, e)]));
  let appended = 0;
  const r = await child(
    dir,
    `const s = await index.BlobStore.open(${JSON.stringify(path.join(dir, 'store'))});
     const w = await s.newBlobWriter();
     w.deferHash();
     w.checkpointEvery(1024 * 1024);
     console.log(JSON.stringify({ name: w.name }));
     for (const [k, f, m, e] of ${JSON.stringify(plan)}) {
       await w.appendBytes(Buffer.from('ins' + k + '!!'));
       await w.appendBlob(${JSON.stringify(src)}, f, m - f);
       await w.appendBlob(${JSON.stringify(src)}, m, e - m);
       console.log(JSON.stringify({ k }));
     }
     await new Promise(() => setInterval(() => {}, 1000));`,
    (line, kill) => {
      if (JSON.parse(line).k !== undefined && ++appended === 6) kill(true);
    },
    slow ? { REVIEW8B_SLOW: '1' } : {},
  );
  t.is(r.signal, 'SIGKILL');
  t.log(`child: ${r.lines.join(' ')}; helper started ${r.helperStarts}; ${r.stderr}; ${fs.readdirSync(dir).join(',')}`);
  t.true(r.helperStarts >= 1, 'the helper started in the child');
  const name = JSON.parse(r.lines[0]!).name as string;
  s = await BlobStore.open(path.join(dir, 'store'));
  t.teardown(() => s.close());
  const again = await s.resumeBlobWriter(name);
  t.true(again.size > 8 * MiB, `resumed at ${again.size}`);
  t.true((await readAll(s, name)).equals(want.subarray(0, again.size)));
  await again.appendBytes(want.subarray(again.size));
  await again.close();
  t.is(toHex(again.hash), toHex(merkleRoot(want)));
});
}

test.serial('store.close() while a long appendBlob is being hashed (helper busy): close resolves, the writer fails with a code, a new store in the process hashes right', async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b close', 40 * MiB);
  const s = await BlobStore.open(dir);
  const src = await putBlob(s, a);
  await sleep(2500); // an earlier test's helper gone
  const watch = newThreads();
  const w = await s.newBlobWriter();
  const p = w.appendBlob(src, 0, a.length).then(() => 'resolved', (e) => (e as { code?: string }).code ?? String(e));
  for (let i = 0; i < 200 && watch.cpu() < 3e6; i++) await sleep(2); // the helper busy
  t.true(watch.cpu() >= 3e6, 'the helper hashing when close() is called');
  const closed = await Promise.race([s.close().then(() => 'closed', (e) => `close failed ${String(e)}`), sleep(15000).then(() => 'close hung')]);
  t.is(closed, 'closed');
  const code = await Promise.race([p, sleep(15000).then(() => 'appendBlob hung')]);
  t.log(`appendBlob: ${code}`);
  t.not(code, 'appendBlob hung');
  const s2 = await tempStore(t);
  const src2 = await putBlob(s2, a);
  const w2 = await s2.newBlobWriter();
  await w2.appendBlob(src2, 0, a.length);
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(a)));
});

test.serial('a process that ran a long appendBlob (the helper started) exits on its own once its store is closed, without waiting for the helper\'s idle time', async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b exit', 24 * MiB);
  const s = await BlobStore.open(path.join(dir, 'store'));
  const src = await putBlob(s, a);
  await s.close();
  // On a busy machine the run may be over before the helper's thread is up (its preload marks the start; seen
  // in CI, twelfth session): the child runs again, up to five times, until the helper did start. Every run
  // must exit at once, helper or not.
  let started = 0;
  for (let attempt = 0; attempt < 5 && started === 0; attempt++) {
    const r = await child(
      dir,
      `const s = await index.BlobStore.open(${JSON.stringify(path.join(dir, 'store'))});
       const w = await s.newBlobWriter();
       await w.appendBlob(${JSON.stringify(src)}, 0, ${a.length});
       await w.close();
       await s.close();
       console.log(JSON.stringify({ hash: index.toHex(w.hash) }));`,
    );
    t.is(r.code, 0);
    started = r.helperStarts;
    t.is(JSON.parse(r.lines[0]!).hash, toHex(merkleRoot(a)));
    t.log(`run ${attempt + 1}: the helper started ${r.helperStarts} times; exit ${r.exitAfterLastLine} ms after the last line`);
    t.true(r.exitAfterLastLine < 1500, `exited ${r.exitAfterLastLine} ms after its work was done (the helper's idle time is 2 s)`);
  }
  t.true(started >= 1, 'the helper started in the child in one of five runs');
});

test.serial('odd chunker parameters (big chunks near the 4 MiB max, groups past 4 MiB; tiny chunks): long runs after odd inserts hash to the root', async (t) => {
  for (const chunker of [{ min: 1024 * 1024, avg: 2 * 1024 * 1024, max: 4 * 1024 * 1024 - 1 }, { min: 64, avg: 256, max: 4096 }]) {
    const s = await tempStore(t, { chunker, fragmentSize: 5 * MiB + 3 });
    const a = prngBytes(`review8b chunker ${chunker.avg}`, chunker.avg === 256 ? 12 * MiB + 9 : 36 * MiB + 9);
    const src = await putBlob(s, a);
    const starts = await chunkStarts(s, src, true);
    await sleep(2500); // an earlier writer's helper gone
    const watch = newThreads();
    const w = await s.newBlobWriter();
    const parts: Buffer[] = [];
    const third = startAfter(starts, Math.floor(a.length / 3));
    for (const [f, e, ins] of [[0, third, 'i1'], [third, a.length, 'i22'], [0, a.length, 'i333']] as const) {
      await insertRun(w, parts, Buffer.from(ins), src, a, starts, f, e);
      watch.seen();
    }
    await w.close();
    t.true(watch.cpu() > 5e6, `chunker ${JSON.stringify(chunker)}: the helper hashed a share (${watch.cpu()} ns)`);
    const want = Buffer.concat(parts);
    t.is(toHex(w.hash), toHex(merkleRoot(want)), `chunker ${JSON.stringify(chunker)}`);
  }
});

test.serial('the leaf layer a writer keeps for a blob made of long runs of two blobs after odd inserts, with empty appendBlobs between, is the SHA-256 of each of its leaves', async (t) => {
  const s = await tempStore(t, { fragmentSize: 8 * MiB });
  const a = prngBytes('review8b layer', 40 * MiB + 3);
  const b = prngBytes('review8b layer b', 12 * MiB + 5);
  const src = await putBlob(s, a);
  const srcB = await putBlob(s, b);
  const starts = await chunkStarts(s, src, true);
  const startsB = await chunkStarts(s, srcB, true);
  await sleep(2500); // an earlier test's helper gone
  const watch = newThreads();
  const w = await s.newBlobWriter();
  const parts: Buffer[] = [];
  for (const [f, e, ins] of [[2, 12, 'x'], [13, 25, 'yy'], [26, 41, 'zzz']] as const) {
    await insertRun(w, parts, Buffer.from(ins), src, a, starts, startAfter(starts, f * MiB), startAfter(starts, e * MiB) ?? a.length);
    await w.appendBlob(src, startAfter(starts, 1 * MiB), 0);
    await w.appendBlob(srcB, startAfter(startsB, 3 * MiB), 0);
    const [bf, be] = [startAfter(startsB, f * 0.3 * MiB), startAfter(startsB, (f * 0.3 + 3.5) * MiB)];
    await w.appendBlob(srcB, bf, be - bf); // another blob's whole chunks, straight after (no insert): one run over two sources
    parts.push(b.subarray(bf, be));
    watch.seen();
  }
  await w.close();
  t.true(watch.cpu() > 5e6, `the helper hashed a share (${watch.cpu()} ns)`);
  const want = Buffer.concat(parts);
  t.is(toHex(w.hash), toHex(merkleRoot(want)));
  const layer = fs.readFileSync(new Layout(s.root).leafLayer(w.name));
  const leaves = Math.ceil(want.length / LEAF);
  t.is(layer.length, LAYER_HEADER + 32 * leaves);
  let bad = -1;
  for (let i = 0; i < leaves && bad < 0; i++) {
    const h = crypto.createHash('sha256').update(want.subarray(i * LEAF, (i + 1) * LEAF)).digest();
    if (!h.equals(layer.subarray(LAYER_HEADER + 32 * i, LAYER_HEADER + 32 * (i + 1)))) bad = i;
  }
  t.is(bad, -1, 'the first wrong leaf hash in the layer');
});

for (const slow of [false, true]) {
test.serial(`a pulling child SIGKILLed mid-pull of an update with long local runs (slow link${slow ? ', a starved helper' : ''}), the pull resumed: the blob has the root of its bytes`, async (t) => {
  const old = prngBytes('review8b pull', 40 * MiB);
  const ed = edited(old, 811, 12);
  const src = await tempStore(t);
  const name = await putBlob(src, ed.bytes);
  const srv = await serve(src, { tokens: { rw: ['read', 'write'] } as ServeOptions['tokens'] });
  t.teardown(() => srv.close());
  const link = await slowLink(t, srv.port, 40 * 1024, 'down');
  const dir = tempDir(t);
  const dst = await BlobStore.open(dir);
  await putBlob(dst, old);
  // This process watches the blob's durable size (the store is shared by processes) and kills the child once
  // checkpoints have gone past the first long runs.
  let watching = true;
  const r = await child(
    tempDir(t),
    `const s = await index.BlobStore.open(${JSON.stringify(dir)});
     const c = await index.connect(s, 'ws://127.0.0.1:${link.port}', { token: 'rw' });
     console.log('pulling');
     await c.pull(${JSON.stringify(name)});
     console.log('done');`,
    (line, kill) => {
      if (line !== 'pulling') return;
      void (async () => {
        for (let i = 0; i < 1000 && watching; i++) {
          const st = await blobState(dst, name);
          if (st && st.size > 6 * MiB) return kill(true);
          await sleep(5);
        }
      })();
    },
    slow ? { REVIEW8B_SLOW: '1' } : {},
  );
  watching = false;
  t.is(r.signal, 'SIGKILL', `the child ended first: ${r.lines.join(' / ')}`);
  t.true(r.helperStarts >= 1, 'the helper started in the child');
  t.teardown(() => dst.close());
  const mid = await blobState(dst, name);
  t.log(`at the kill: ${JSON.stringify(mid)}; child said ${r.lines.join(' / ')}; ${link.moved()} bytes down`);
  t.true(mid !== undefined && !mid.finalized && mid.size > 4 * MiB, 'killed mid-pull, with a checkpoint past the first long run');
  const c = await connect(dst, srv.url, { token: 'rw' });
  t.teardown(() => c.close());
  await c.pull(name);
  const rd = await dst.newBlobReader(name);
  t.is(toHex(rd.hash!), toHex(merkleRoot(ed.bytes)));
  await rd.close();
  t.true((await readAll(dst, name)).equals(ed.bytes));
});
}

test.serial('appendBlob of a long run aborted by its signal while the helper has shares: a coded rejection, and the writer (if open) ends with the root of the bytes it says it has', async (t) => {
  const s = await tempStore(t, { fragmentSize: 8 * MiB });
  const a = prngBytes('review8b abort', 48 * MiB);
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src, true);
  const results: string[] = [];
  const from = startAfter(starts, 3 * MiB);
  for (const delay of [0, 2, 8]) {
    const w = await s.newBlobWriter();
    await w.appendBlob(src, 0, from); // whole chunks: the helper started (a run past 2 MiB)
    const ac = new AbortController();
    const p = codeOf(w.appendBlob(src, from, 40 * MiB, { signal: ac.signal }));
    await sleep(delay);
    ac.abort();
    const code = await p;
    results.push(`${delay} ms: ${code}, size ${w.size}`);
    t.true(code === 'resolved' || code === 'ERR_ABORTED', `abort after ${delay} ms: ${code}`);
    const want = Buffer.concat([a.subarray(0, w.size), Buffer.from('tail')]);
    const closed = await codeOf(w.appendBytes(Buffer.from('tail')).then(() => w.close()));
    if (closed !== 'resolved') {
      results.push(`  then closed: ${closed}`);
      continue;
    }
    t.is(toHex(w.hash), toHex(merkleRoot(want)), `abort after ${delay} ms`);
    t.true((await readAll(s, w.name)).equals(want));
  }
  t.log(results.join('\n'));
});

test.serial('a checkpointing writer fails under a long run (a source fragment cut short while the helper has shares), then is resumed from its last checkpoint: the resumed blob has the root of its bytes', async (t) => {
  const s = await tempStore(t, { fragmentSize: 8 * MiB });
  const a = prngBytes('review8b fail-resume a', 24 * MiB);
  const srcA = await putBlob(s, a);
  const before = new Set<string>();
  for await (const id of s.listCaIds()) before.add(id);
  const b = prngBytes('review8b fail-resume b', 24 * MiB);
  const srcB = await putBlob(s, b);
  const idsB: string[] = [];
  for await (const id of s.listCaIds()) if (!before.has(id)) idsB.push(id);
  const startsB = await chunkStarts(s, srcB, true);
  const w = await s.newBlobWriter();
  w.deferHash();
  w.checkpointEvery(1 * MiB);
  const endA = startAfter(await chunkStarts(s, srcA, true), 20 * MiB);
  const parts: Buffer[] = [a.subarray(0, endA), Buffer.from('67')];
  await w.appendBlob(srcA, 0, endA); // whole chunks: the helper's shares, checkpoints while it is behind
  await w.appendBytes(parts[1]!);
  // B's fragments cut to their first half: the run from B fails part-way (in the helper's share or here).
  const cut = () => {
    for (const id of idsB) {
      const f = fragmentPath(s, id);
      fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
    }
  };
  const from = startAfter(startsB, 1 * MiB);
  const sync = startsB[startsB.indexOf(from) + 4]!;
  await w.appendBlob(srcB, from, sync - from); // back on B's boundaries (read on the main thread, before the cut)
  cut();
  const e1 = await codeOf(w.appendBlob(srcB, sync, b.length - sync));
  const e2 = await codeOf(w.close());
  t.log(`appendBlob ${e1}, close ${e2}`);
  t.true(e1 === 'ERR_FRAGMENT_MISSING' || e2 === 'ERR_FRAGMENT_MISSING', `appendBlob ${e1}, close ${e2}`);
  const again = await s.resumeBlobWriter(w.name);
  const want = Buffer.concat([...parts, b.subarray(from)]);
  t.log(`resumed at ${again.size} of ${want.length}`);
  t.true(again.size >= 20 * MiB, `resumed at ${again.size}`);
  t.true(again.size <= want.length);
  // The bytes B still has (before the cut) are what the resumed writer holds past the first run; it goes on with fresh bytes.
  const tail = Buffer.from('the end');
  await again.appendBytes(tail);
  await again.close();
  const full = Buffer.concat([want.subarray(0, again.size - tail.length), tail]);
  t.is(toHex(again.hash), toHex(merkleRoot(full)));
  t.true((await readAll(s, w.name)).subarray(0, endA).equals(full.subarray(0, endA)));
});

test.serial('the helper thread dies mid-run (an uncaught exception or process.exit in it, from a preload the process runs in every thread): the shares it had are hashed on the hashing thread and every root is right', async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b helper dies', 40 * MiB);
  const s = await BlobStore.open(path.join(dir, 'store'), { fragmentSize: 8 * MiB });
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src, true);
  await s.close();
  const plan: Array<[number, number, number]> = [];
  for (let k = 0; k < 7; k++) {
    const f = startAfter(starts, k * 5 * MiB + 3);
    plan.push([f, starts[starts.indexOf(f) + 4]!, startAfter(starts, (k * 5 + 5) * MiB) ?? a.length]);
  }
  const want = toHex(merkleRoot(Buffer.concat(plan.flatMap(([f, , e], k) => [Buffer.from(`ins${k}`), a.subarray(f, e)]))));
  const code = `const s = await index.BlobStore.open(${JSON.stringify(path.join(dir, 'store'))});
     const w = await s.newBlobWriter();
     for (const [k, [f, m, e]] of ${JSON.stringify(plan)}.entries()) {
       await w.appendBytes(Buffer.from('ins' + k));
       await w.appendBlob(${JSON.stringify(src)}, f, m - f);
       await w.appendBlob(${JSON.stringify(src)}, m, e - m);
     }
     await w.close();
     await s.close();
     console.log(JSON.stringify({ hash: index.toHex(w.hash) }));`;
  const runs: string[] = [];
  for (const [how, ms] of [['throw', 5], ['throw', 30], ['exit', 5], ['exit', 30]] as const) {
    // The helper starts only once a job has read 2 MiB in a row; on a busy machine it may start so late that
    // the run is over before its timer fires, even at 5 ms (seen at load 12), or before it is up at all (seen
    // at load 5). At 5 ms the child runs again (up to five times) until the helper does die; every run's root
    // is checked.
    let died = false;
    for (let attempt = 0; attempt < (ms === 5 ? 5 : 1) && !died; attempt++) {
      const r = await child(dir, code, undefined, { REVIEW8B_DIE_MS: String(ms), REVIEW8B_HOW: how });
      runs.push(`${how} at ${ms} ms: exit ${r.code} ${r.signal ?? ''}, helper started ${r.helperStarts}, died ${r.helperDeaths}: ${r.lines.join(' ')} ${r.stderr.trim().split('\n').slice(0, 3).join(' | ')}`);
      t.is(r.code, 0, `${how} at ${ms} ms: ${r.stderr}`);
      t.true(r.helperDeaths <= Math.min(1, r.helperStarts), `${how} at ${ms} ms: the helper died at most once, and only if it started`);
      if (r.code === 0) t.is(JSON.parse(r.lines[0]!).hash, want, `${how} at ${ms} ms`);
      died = r.helperDeaths === 1;
    }
    if (ms === 5) t.true(died, `${how} at ${ms} ms: the helper started and died in one of five runs`);
  }
  t.log(runs.join('\n'));
});

test.serial('HashJob resumed from a state taken mid-leaf while the helper was behind, fed on by reads only (its partial leaf too): the root of the bytes', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'bytes');
  const bytes = prngBytes('review8b resume job', 30 * MiB + 777);
  fs.writeFileSync(file, bytes);
  const read = (job: HashJob, from: number, n: number) => job.send({ files: [file, from, n], length: n }, true, [], true);
  const first = new HashJob();
  read(first, 0, 3 * MiB + 5);
  await first.state();
  await sleep(300); // the helper online
  read(first, 3 * MiB + 5, 4 * MiB);
  read(first, 7 * MiB + 5, 4 * MiB + 999);
  const at = 11 * MiB + 1004;
  const st = await first.state();
  await first.close();
  t.is(st.size, at);
  const job = new HashJob(st);
  read(job, st.leaves * LEAF, at - st.leaves * LEAF); // the partial leaf, as a read
  for (let pos = at; pos < bytes.length; ) {
    const n = Math.min(bytes.length - pos, 4 * MiB + 4097);
    read(job, pos, n);
    pos += n;
  }
  const root = await job.digest();
  await job.close();
  t.is(toHex(root), toHex(merkleRoot(bytes)));
});
