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
import { tempDir, tempStore, putBlob, readAll, codeOf, blobState } from './helpers/store.js';
import { fragmentPath } from './helpers/paths.js';

const MiB = 1024 * 1024;
const LEAF = 16384;
const indexJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/index.js');

async function chunkStarts(s: BlobStore, blob: string): Promise<number[]> {
  const starts: number[] = [];
  let at = 0;
  for await (const c of s.blobChunkStream(blob)) {
    starts.push(at);
    at += c.size;
  }
  starts.push(at);
  return starts;
}
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
  const startsA = await chunkStarts(s1, srcA);
  const startsB = await chunkStarts(s2, srcB);
  const one = async (s: BlobStore, src: string, bytes: Buffer, starts: number[], seed: string) => {
    const w = await s.newBlobWriter();
    const parts: Buffer[] = [];
    let i = 0;
    for (let mib = 0; ; mib += 5) {
      const from = startAfter(starts, mib * MiB);
      const to = startAfter(starts, (mib + 4) * MiB) ?? bytes.length;
      if (from === undefined || from >= bytes.length) break;
      const ins = prngBytes(`${seed} ${i++}`, 1 + ((i * 4099) % 9000));
      await w.appendBytes(ins);
      parts.push(ins);
      await w.appendBlob(src, from, to - from);
      parts.push(bytes.subarray(from, to));
    }
    await w.close();
    const want = Buffer.concat(parts);
    return { got: toHex(w.hash), want: toHex(merkleRoot(want)), same: (await readAll(s, w.name)).equals(want) };
  };
  const r = await Promise.all([one(s1, srcA, a, startsA, 'w1'), one(s2, srcB, b, startsB, 'w2'), one(s1, srcA, a, startsA, 'w3')]);
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
  const startsA = await chunkStarts(s1, srcA);
  const w1 = await s1.newBlobWriter();
  const w2 = await s2.newBlobWriter();
  await w1.appendBytes(Buffer.from('abc'));
  await w2.appendBytes(Buffer.from('abcde'));
  await w1.appendBlob(srcA, 0, startAfter(startsA, 6 * MiB));
  await sleep(300);
  for (const id of ids) fs.unlinkSync(fragmentPath(s1, id));
  const from = startAfter(startsA, 7 * MiB);
  const [e1, ok2] = await Promise.all([
    codeOf(w1.appendBlob(srcA, from, a.length - from)),
    w2.appendBlob(srcB, 0, b.length).then(() => 'ok', (e) => String(e)),
  ]);
  const c1 = await codeOf(w1.close());
  t.true(e1 === 'ERR_FRAGMENT_MISSING' || c1 === 'ERR_FRAGMENT_MISSING', `appendBlob ${e1}, close ${c1}`);
  t.not(c1, 'resolved');
  const r = await s1.newBlobReader(w1.name);
  t.false(r.isFinalized);
  await r.close();
  t.is(ok2, 'ok');
  await w2.close();
  const want = Buffer.concat([Buffer.from('abcde'), b]);
  t.is(toHex(w2.hash), toHex(merkleRoot(want)));
});

/** Runs `code` (an ES module body; `index` is the library) in a child node; resolves with its stdout lines and exit code. */
function child(code: string, onLine?: (line: string, kill: () => void) => void): Promise<{ lines: string[]; code: number | null; signal: string | null; exitAfterLastLine: number }> {
  const p = spawn(process.execPath, ['--input-type=module', '-e', `const index = await import(${JSON.stringify(indexJs)});\n${code}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buf = '';
  let last = Date.now();
  p.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      last = Date.now();
      onLine?.(line, () => p.kill('SIGKILL'));
    }
  });
  return new Promise((resolve) => p.on('exit', (code, signal) => resolve({ lines, code, signal, exitAfterLastLine: Date.now() - last })));
}

test.serial('a writer child SIGKILLed mid-appendBlob of long runs (checkpoints every 1 MiB, taken while the helper is behind), resumed: the root of its bytes', async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b kill', 40 * MiB);
  let s = await BlobStore.open(dir, { fragmentSize: 8 * MiB });
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src);
  await s.close();
  // The child's stream: for k = 0.., 7 bytes of insert, then src[start after k*5 MiB, start after k*5+4 MiB).
  const plan: Array<[number, number, number]> = [];
  for (let k = 0; k < 7; k++) plan.push([k, startAfter(starts, k * 5 * MiB), startAfter(starts, (k * 5 + 4) * MiB)]);
  const ins = (k: number) => Buffer.from(`ins${k}!!`);
  const want = Buffer.concat(plan.flatMap(([k, f, e]) => [ins(k), a.subarray(f, e)]));
  let appended = 0;
  const r = await child(
    `const s = await index.BlobStore.open(${JSON.stringify(dir)});
     const w = await s.newBlobWriter();
     w.deferHash();
     w.checkpointEvery(1024 * 1024);
     console.log(JSON.stringify({ name: w.name }));
     for (const [k, f, e] of ${JSON.stringify(plan)}) {
       await w.appendBytes(Buffer.from('ins' + k + '!!'));
       await w.appendBlob(${JSON.stringify(src)}, f, e - f);
       console.log(JSON.stringify({ k }));
     }
     await new Promise(() => setInterval(() => {}, 1000));`,
    (line, kill) => {
      if (JSON.parse(line).k !== undefined && ++appended === 4) kill();
    },
  );
  t.is(r.signal, 'SIGKILL');
  const name = JSON.parse(r.lines[0]!).name as string;
  s = await BlobStore.open(dir);
  t.teardown(() => s.close());
  const again = await s.resumeBlobWriter(name);
  t.true(again.size > 8 * MiB, `resumed at ${again.size}`);
  t.true((await readAll(s, name)).equals(want.subarray(0, again.size)));
  await again.appendBytes(want.subarray(again.size));
  await again.close();
  t.is(toHex(again.hash), toHex(merkleRoot(want)));
});

test.serial('store.close() while a long appendBlob is being hashed (helper busy): close resolves, the writer fails with a code, a new store in the process hashes right', async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b close', 40 * MiB);
  const s = await BlobStore.open(dir);
  const src = await putBlob(s, a);
  const w = await s.newBlobWriter();
  await w.appendBytes(Buffer.from('x'));
  const p = w.appendBlob(src, 0, a.length).then(() => 'resolved', (e) => (e as { code?: string }).code ?? String(e));
  await sleep(120);
  const closed = await Promise.race([s.close().then(() => 'closed', (e) => `close failed ${String(e)}`), sleep(15000).then(() => 'close hung')]);
  t.is(closed, 'closed');
  const code = await Promise.race([p, sleep(15000).then(() => 'appendBlob hung')]);
  t.log(`appendBlob: ${code}`);
  t.not(code, 'appendBlob hung');
  const s2 = await tempStore(t);
  const src2 = await putBlob(s2, a);
  const w2 = await s2.newBlobWriter();
  await w2.appendBytes(Buffer.from('yy'));
  await w2.appendBlob(src2, 0, a.length);
  await w2.close();
  t.is(toHex(w2.hash), toHex(merkleRoot(Buffer.concat([Buffer.from('yy'), a]))));
});

test.serial('a process that ran a long appendBlob (the helper started) exits on its own once its store is closed, without waiting for the helper\'s idle time', async (t) => {
  const dir = tempDir(t);
  const a = prngBytes('review8b exit', 24 * MiB);
  const s = await BlobStore.open(dir);
  const src = await putBlob(s, a);
  await s.close();
  const r = await child(
    `const s = await index.BlobStore.open(${JSON.stringify(dir)});
     const w = await s.newBlobWriter();
     await w.appendBytes(Buffer.from('q'));
     await w.appendBlob(${JSON.stringify(src)}, 0, ${a.length});
     await w.close();
     await s.close();
     console.log(JSON.stringify({ hash: index.toHex(w.hash) }));`,
  );
  t.is(r.code, 0);
  t.is(JSON.parse(r.lines[0]!).hash, toHex(merkleRoot(Buffer.concat([Buffer.from('q'), a]))));
  t.log(`exit ${r.exitAfterLastLine} ms after the last line`);
  t.true(r.exitAfterLastLine < 1500, `exited ${r.exitAfterLastLine} ms after its work was done (the helper's idle time is 2 s)`);
});

test.serial('odd chunker parameters (big chunks near the 4 MiB max, groups past 4 MiB; tiny chunks): long runs after odd inserts hash to the root', async (t) => {
  for (const chunker of [{ min: 1024 * 1024, avg: 2 * 1024 * 1024, max: 4 * 1024 * 1024 - 1 }, { min: 64, avg: 256, max: 4096 }]) {
    const s = await tempStore(t, { chunker, fragmentSize: 5 * MiB + 3 });
    const a = prngBytes(`review8b chunker ${chunker.avg}`, chunker.avg === 256 ? 12 * MiB + 9 : 36 * MiB + 9);
    const src = await putBlob(s, a);
    const starts = await chunkStarts(s, src);
    const w = await s.newBlobWriter();
    const parts: Buffer[] = [];
    const third = startAfter(starts, Math.floor(a.length / 3));
    for (const [f, e, ins] of [[0, third, 'i1'], [third, a.length, 'i22'], [0, a.length, 'i333']] as const) {
      await w.appendBytes(Buffer.from(ins));
      parts.push(Buffer.from(ins));
      await w.appendBlob(src, f, e - f);
      parts.push(a.subarray(f, e));
    }
    await w.close();
    const want = Buffer.concat(parts);
    t.is(toHex(w.hash), toHex(merkleRoot(want)), `chunker ${JSON.stringify(chunker)}`);
  }
});

test.serial('the leaf layer a writer keeps for a blob made of long runs after odd inserts is the SHA-256 of each of its leaves', async (t) => {
  const s = await tempStore(t, { fragmentSize: 8 * MiB });
  const a = prngBytes('review8b layer', 40 * MiB + 3);
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src);
  const w = await s.newBlobWriter();
  const parts: Buffer[] = [];
  for (const [f, e, ins] of [[2, 12, 'x'], [13, 25, 'yy'], [26, 41, 'zzz']] as const) {
    const [from, to] = [startAfter(starts, f * MiB), startAfter(starts, e * MiB) ?? a.length];
    await w.appendBytes(Buffer.from(ins));
    parts.push(Buffer.from(ins));
    await w.appendBlob(src, from, to - from);
    parts.push(a.subarray(from, to));
  }
  await w.close();
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

test.serial('a pulling child SIGKILLed mid-pull of an update with long local runs (slow link), the pull resumed: the blob has the root of its bytes', async (t) => {
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
          if (st && st.size > 6 * MiB) return kill();
          await sleep(5);
        }
      })();
    },
  );
  watching = false;
  t.is(r.signal, 'SIGKILL', `the child ended first: ${r.lines.join(' / ')}`);
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
