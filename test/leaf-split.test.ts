// Long runs of stored bytes (appendBlob's whole chunks, a pull's local
// ranges) are leaf-hashed over two threads: the hashing thread and a leaf
// helper it starts once a run is long (src/hash/leaf-split.ts). The blob
// hash must be exactly the bytes' merkle root whatever the split: runs
// starting mid-leaf after inserts at odd offsets, runs shorter and longer
// than the split threshold. The helper is a real thread, seen in
// /proc/self/task while a writer is open, with CPU time of its own, and
// gone once no writer is open.
import test from 'ava';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { connect, merkleRoot, serve, toHex, type ServeOptions } from '../src/index.js';
import { HashJob } from '../src/hash/pool.js';
import { MerkleHasher, type MerkleState } from '../src/hash/merkle.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll, codeOf, chunkStarts } from './helpers/store.js';
import { fragmentPath } from './helpers/paths.js';
import { edited } from './helpers/transfer.js';

const MiB = 1024 * 1024;
const linux = fs.existsSync('/proc/self/task');

/** This process's threads, with their CPU time so far (ns). */
function threads(): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      out.set(tid, Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1').split(' ')[0]));
    } catch {
      // A thread that ended meanwhile.
    }
  }
  return out;
}

/** The first chunk start at or after `pos`. */
const startAfter = (starts: number[], pos: number) => starts.find((s) => s >= pos)!;

test.serial('appendBlob runs shorter and longer than the split threshold, after inserts at odd offsets: the hash is the merkle root of the bytes; the helper thread hashes a share and is gone after close (2 s later)', async (t) => {
  const s = await tempStore(t, { fragmentSize: 8 * MiB });
  const a = prngBytes('leaf split a', 48 * MiB + 777);
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src);
  // Inserts: single chunks of another blob (odd sizes), so the runs after them start mid-leaf, and the
  // chunker stays at a boundary (appendBlob's whole chunks are what the hashing thread reads).
  const b = prngBytes('leaf split b', 4 * MiB);
  const other = await putBlob(s, b);
  const bStarts = await chunkStarts(s, other);
  await sleep(2500); // the previous writer's helper (if any) stopped
  const before = linux ? threads() : new Map<string, number>();
  const w = await s.newBlobWriter();
  const parts: Buffer[] = [];
  const range = async (from: number, to: number) => {
    await w.appendBlob(src, from, to - from);
    parts.push(a.subarray(from, to));
  };
  const insert = async (i: number) => {
    const [from, to] = [bStarts[i]!, bStarts[i + 1]!];
    await w.appendBlob(other, from, to - from);
    parts.push(b.subarray(from, to));
  };
  const at = (mib: number) => startAfter(starts, mib * MiB);
  // A long run starts the helper (its first reads are hashed here while it starts).
  await insert(1);
  await range(at(1), at(7));
  await sleep(300);
  const started = linux ? [...threads()].filter(([tid]) => !before.has(tid)) : [];
  const cpu0 = new Map(started);
  // Runs starting mid-leaf after inserts; long runs (split), short ones (not), one chunk, the last to the end.
  await insert(2);
  await range(at(8), at(20));
  await insert(3);
  await range(at(21), at(21.7));
  await insert(4);
  await range(at(22), starts[starts.indexOf(at(22)) + 1]!);
  await range(at(23), at(43));
  await insert(5);
  await range(at(44), at(46));
  await range(at(46), a.length);
  t.true(parts.some((p, i) => i > 0 && parts.slice(0, i).reduce((n, q) => n + q.length, 0) % 16384 !== 0), 'runs start mid-leaf');
  const want = Buffer.concat(parts);
  await w.digest(); // every read so far hashed (the helper's shares answered)
  const after = linux ? threads() : new Map<string, number>();
  // A checkpoint's state mid-way would be a wrong tree if the helper's leaves were not in yet: the root at close is checked.
  await w.close();
  t.is(toHex(w.hash), toHex(merkleRoot(want)));
  t.true((await readAll(s, w.name)).equals(want));
  if (!linux) return t.pass();
  t.true(started.length >= 1, 'a new thread while the writer is open');
  const helperCpu = Math.max(...started.map(([tid, ns]) => (after.get(tid) ?? ns) - ns));
  t.log(`helper thread CPU over the split runs: ${(helperCpu / 1e6).toFixed(1)} ms`);
  t.true(helperCpu > 5e6, 'the helper hashed a share');
  // It stays 2 s for the next writer, then stops.
  for (let i = 0; i < 40 && started.some(([tid]) => threads().has(tid)); i++) await sleep(100);
  const left = threads();
  t.deepEqual(started.filter(([tid]) => left.has(tid) && cpu0.has(tid)).length, 0, 'the helper is gone once no writer is open');
});

test.serial('a fragment cut short under a long run: ERR_FRAGMENT_MISSING, as a read on the hashing thread, never a blob with a wrong hash', async (t) => {
  const s = await tempStore(t);
  const a = prngBytes('leaf split cut', 24 * MiB);
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src);
  const ids: string[] = [];
  for await (const id of s.listCaIds()) ids.push(id);
  t.is(ids.length, 1);
  const w = await s.newBlobWriter();
  await w.appendBytes(prngBytes('leaf split cut insert', 3));
  await w.appendBlob(src, 0, startAfter(starts, 8 * MiB)); // the helper started and online
  await sleep(300);
  // Cut late in the next run: the helper's shares of its reads find it short.
  fs.truncateSync(fragmentPath(s, ids[0]!), 20 * MiB);
  const end = startAfter(starts, 23 * MiB);
  const from = startAfter(starts, 9 * MiB);
  const e1 = await codeOf(w.appendBlob(src, from, end - from));
  const e2 = await codeOf(w.close());
  t.true(e1 === 'ERR_FRAGMENT_MISSING' || e2 === 'ERR_FRAGMENT_MISSING', `appendBlob ${e1}, close ${e2}`);
  t.is(e2, 'ERR_FRAGMENT_MISSING', 'the failed writer finalizes nothing');
  const r = await s.newBlobReader(w.name);
  t.false(r.isFinalized);
  await r.close();
});

test.serial('pull of a blob with inserts at odd offsets into a store with the old version (long local runs): the pulled blob has the root of its bytes', async (t) => {
  const old = prngBytes('leaf split pull', 40 * MiB);
  const ed = edited(old, 21, 4);
  const src = await tempStore(t);
  const name = await putBlob(src, ed.bytes);
  const srv = await serve(src, { tokens: { rw: ['read', 'write'] } as ServeOptions['tokens'] });
  t.teardown(() => srv.close());
  const dst = await tempStore(t);
  await putBlob(dst, old);
  const c = await connect(dst, srv.url, { token: 'rw' });
  t.teardown(() => c.close());
  const st = await c.pull(name);
  t.true(st.reusedBytes > 30 * MiB, `reused ${st.reusedBytes}`);
  const r = await dst.newBlobReader(name);
  t.is(toHex(r.hash!), toHex(merkleRoot(ed.bytes)));
  await r.close();
  t.true((await readAll(dst, name)).equals(ed.bytes));
});

test.serial('states asked for while the helper is behind on reads (checkpoints): each is the state at its point of the stream, and the root at the end is right', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'bytes');
  const bytes = prngBytes('leaf split states', 40 * MiB + 12345);
  fs.writeFileSync(file, bytes);
  const job = new HashJob();
  let fed = 0;
  const read = (n: number) => {
    job.send({ files: [file, fed, n], length: n }, true, [], true);
    fed += n;
  };
  // A long run starts the helper; reads of odd lengths after it, so that states fall mid-leaf.
  read(3 * MiB + 7);
  await job.state();
  await sleep(300);
  const states: Array<[number, Promise<MerkleState>]> = [];
  for (const n of [4 * MiB + 1, 4 * MiB + 16383, 3 * MiB, 5 * MiB + 99, 4 * MiB, 1 * MiB + 5, 4 * MiB + 3]) {
    read(n);
    states.push([fed, job.state()]);
  }
  read(bytes.length - fed);
  const root = await job.digest();
  await job.close();
  t.is(toHex(root), toHex(merkleRoot(bytes)));
  for (const [at, p] of states) {
    const st = await p;
    t.is(st.size, at);
    const h = MerkleHasher.fromState(st).update(bytes.subarray(st.leaves * 16384, at));
    t.is(toHex(h.digest()), toHex(merkleRoot(bytes.subarray(0, at))), `the state at ${at}`);
  }
});

test.serial('a writer that defers its hash (as a pull) with checkpoints over long runs: closed unfinalized, resumed, it ends with the root of its bytes', async (t) => {
  const s = await tempStore(t, { fragmentSize: 8 * MiB });
  const a = prngBytes('leaf split resume', 40 * MiB);
  const src = await putBlob(s, a);
  const starts = await chunkStarts(s, src);
  const at = (mib: number) => startAfter(starts, mib * MiB);
  const b = prngBytes('leaf split resume b', 2 * MiB);
  const other = await putBlob(s, b);
  const bStarts = await chunkStarts(s, other);
  const w = await s.newBlobWriter();
  w.deferHash(); // as a pull: no digest after each append, so nothing waits for the helper but the checkpoints' states
  w.checkpointEvery(1 * MiB);
  const parts: Buffer[] = [];
  await w.appendBlob(src, 0, at(6));
  parts.push(a.subarray(0, at(6)));
  await sleep(300); // the helper online
  for (const [i, from, to] of [[1, 7, 15], [2, 16, 25], [3, 26, 34]] as const) {
    await w.appendBlob(other, bStarts[i]!, bStarts[i + 1]! - bStarts[i]!);
    parts.push(b.subarray(bStarts[i]!, bStarts[i + 1]!));
    await w.appendBlob(src, at(from), at(to) - at(from));
    parts.push(a.subarray(at(from), at(to)));
  }
  await w.closeWithoutFinalize();
  const again = await s.resumeBlobWriter(w.name);
  t.is(again.size, parts.reduce((n, p) => n + p.length, 0));
  await again.appendBlob(src, at(35), a.length - at(35));
  parts.push(a.subarray(at(35)));
  await again.close();
  const want = Buffer.concat(parts);
  t.is(toHex(again.hash), toHex(merkleRoot(want)));
  t.true((await readAll(s, w.name)).equals(want));
});
