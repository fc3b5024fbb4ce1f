import test from 'ava';
import fs from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore, CabError } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, putBlob, readAll, collect } from './helpers/store.js';
import { tmpDir, leasesDir } from './helpers/paths.js';

const CHILD = fileURLToPath(new URL('./helpers/gc-child.js', import.meta.url));

/** Starts a child and resolves when it prints `line`. */
function child(args: string[], line: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(line)) resolve(c);
    });
    c.on('exit', (code) => reject(new Error(`child exited ${code} before "${line}": ${out}`)));
  });
}

function killed(c: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
}

async function fragmentCount(store: BlobStore): Promise<number> {
  return (await collect(store.listCaIds())).length;
}

test('the classic sequence: GC keeps what an open reader uses, then collects it; no fragment outlives all blobs', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const bytes = prngBytes('classic', 1_500_000);
  const a = await putBlob(store, bytes);
  const b = await putBlob(store, prngBytes('classic 2', 700_000));
  t.is(await fragmentCount(store), 2);
  const r = await store.newBlobReader(a);
  await store.deleteBlob(a);
  let rep = await store.gc();
  t.is(rep.fragmentsDeleted, 0);
  t.is(rep.fragmentsKept, 2);
  const buf = Buffer.alloc(bytes.length);
  t.is(await r.readAt(buf, 0), bytes.length);
  t.deepEqual(buf, bytes);
  await r.close();
  rep = await store.gc();
  t.is(rep.fragmentsDeleted, 1);
  t.is(rep.bytesDeleted, 1_500_000);
  t.is(await fragmentCount(store), 1);
  t.deepEqual(await readAll(store, b), prngBytes('classic 2', 700_000));
  await store.deleteBlob(b);
  await store.gc();
  t.is(await fragmentCount(store), 0);
});

test('a dry run deletes nothing but reports what a real run deletes', async (t) => {
  const store = await BlobStore.open(tempDir(t));
  t.teardown(() => store.close());
  const a = await putBlob(store, prngBytes('dry', 300_000));
  await putBlob(store, prngBytes('dry 2', 300_000));
  await store.deleteBlob(a);
  const dry = await store.gc({ dryRun: true });
  t.true(dry.dryRun);
  t.is(dry.fragmentsDeleted, 1);
  t.is(await fragmentCount(store), 2);
  const real = await store.gc();
  t.is(real.fragmentsDeleted, dry.fragmentsDeleted);
  t.is(real.bytesDeleted, dry.bytesDeleted);
  t.is(await fragmentCount(store), 1);
});

test('a process killed while holding a reader on a deleted blob: the next GC collects its fragments', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const name = await putBlob(store, prngBytes('held', 400_000));
  const c = await child(['hold-reader', dir, name], 'ready');
  t.teardown(() => c.kill('SIGKILL'));
  await store.deleteBlob(name);
  t.is((await store.gc()).fragmentsDeleted, 0, 'the live child pins them');
  await killed(c);
  const rep = await store.gc();
  t.is(rep.fragmentsDeleted, 1);
  t.is(rep.deadLeases, 1);
  t.is(await fragmentCount(store), 0);
  t.deepEqual(fs.readdirSync(leasesDir(store)).filter((f) => f.endsWith('.pins')).length, 1); // ours only
});

test('temp files of a killed writer are collected, those of a live one are not', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const c = await child(['slow-writer', dir], 'writing');
  t.teardown(() => c.kill('SIGKILL'));
  t.is(fs.readdirSync(tmpDir(store)).length, 1);
  t.is((await store.gc()).tempFilesDeleted, 0);
  await killed(c);
  t.is((await store.gc()).tempFilesDeleted, 1);
  t.deepEqual(fs.readdirSync(tmpDir(store)), []);
});

test('one GC at a time: ERR_GC_RUNNING, or wait', async (t) => {
  const store = await BlobStore.open(tempDir(t));
  t.teardown(() => store.close());
  for (let i = 0; i < 50; i++) await putBlob(store, prngBytes(`g${i}`, 20_000));
  const [a, b] = await Promise.allSettled([store.gc(), store.gc()]);
  const codes = [a, b].map((r) => (r.status === 'rejected' ? (r.reason as CabError).code : 'ok')).sort();
  t.deepEqual(codes, ['ERR_GC_RUNNING', 'ok']);
  const both = await Promise.all([store.gc({ wait: true }), store.gc({ wait: true })]);
  t.is(both.length, 2);
});

test('an aborted GC stops with ERR_ABORTED and deletes nothing wrong', async (t) => {
  const store = await BlobStore.open(tempDir(t));
  t.teardown(() => store.close());
  const keep = await putBlob(store, prngBytes('keep', 50_000));
  const ac = new AbortController();
  ac.abort();
  t.is((await t.throwsAsync(store.gc({ signal: ac.signal }), { instanceOf: CabError }))!.code, 'ERR_ABORTED');
  t.deepEqual(await readAll(store, keep), prngBytes('keep', 50_000));
  t.is((await store.gc()).fragmentsDeleted, 0); // and the GC lock was released
});

test('maxBytes evicts least recently accessed blobs, never owned or open ones', async (t) => {
  const store = await BlobStore.open(tempDir(t));
  t.teardown(() => store.close());
  const names: string[] = [];
  for (let i = 0; i < 5; i++) {
    const n = await putBlob(store, prngBytes(`evict ${i}`, 100_000));
    names.push(n);
    await store.setBlobMetadata(n, { ownerShares: i === 0 ? { sg: 1 } : {}, referenced: new Date(0), accessed: new Date(1000 * (i + 1)) });
  }
  const open = await store.newBlobReader(names[1]!);
  // 500,000 bytes stored; to fit 250,000, drop the oldest evictable ones: not 0 (owned), not 1 (open): 2, 3, 4
  const rep = await store.gc({ maxBytes: 250_000 });
  t.deepEqual(rep.evicted, [names[2], names[3], names[4]]);
  t.is(rep.bytesKept, 200_000);
  const left = new Set(await collect(store.listBlobIds()));
  t.deepEqual([...left].sort(), [names[0], names[1]].sort());
  await open.close();
  t.deepEqual((await store.gc({ maxBytes: 150_000, dryRun: true })).evicted, [names[1]]);
  t.deepEqual((await store.gc({ maxBytes: 200_000 })).evicted, []);
});
