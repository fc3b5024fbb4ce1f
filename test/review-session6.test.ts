// Review of the sixth session's merged changes: one failing test per finding.
// Real files, real LMDB environments, real processes and sockets; no mocks.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import lockfile from 'proper-lockfile';
import { BlobStore } from '../src/index.js';
import { ChunkIndex } from '../src/index/chunk-index.js';
import { lmdbDamage } from '../src/index/lmdb-check.js';
import { tryLockExclusive, unlock } from '../src/disk/lock.js';
import { prngBytes } from '../tools/data.js';
import { cli } from './helpers/cli.js';
import { tcpProxy } from './helpers/proxies.js';
import { bucketOptions, S3_ENDPOINT, s3Test } from './helpers/s3.js';
import { putBlob, tempDir } from './helpers/store.js';

const MiB = 1024 * 1024;
const sha = (s: string) => crypto.createHash('sha256').update(s).digest();

/** An append record of `n` chunks of 8 KiB whose hashes come from `seed` (no bytes behind them: the index needs none). */
function chunksRecord(seed: string, n: number) {
  const c = Buffer.alloc(36 * n);
  for (let i = 0; i < n; i++) {
    sha(`${seed}/${i}`).copy(c, 36 * i);
    c.writeUInt32BE(8192, 36 * i + 32);
  }
  return { t: 'x' as const, s: n * 8192, x: [], c, m: [0, new Uint8Array()] as [number, Uint8Array] };
}

test('lmdb-check: a valid chunk index, after a blob of 400 chunks is added and removed, is taken for a damaged one (file shorter than the meta page\'s last page)', async (t) => {
  // mdb.c, MDB_meta.mm_last_pg: "Actually the file may be shorter if the freeDB lists the final pages."
  // A page made and freed in one transaction (P_LOOSE) is never written: removeBlob's transactions leave them at the end.
  const dir = tempDir(t);
  const index = ChunkIndex.open(dir);
  const name = sha('review6b blob').toString('hex', 0, 16);
  t.true(await index.applyAppends(name, [{ rec: chunksRecord('review6b', 400), start: 100, end: 110, chunkOffset: 0 }], 100));
  await index.removeBlob(name);
  t.is(lmdbDamage(dir), undefined, 'an environment LMDB itself wrote and opens fine is not damaged');
});

test('lmdb-check: a store that put and deleted one blob (8, 16 or 32 MiB) has its whole chunk index removed and rebuilt at the next open (nothing was damaged)', async (t) => {
  for (const mib of [8, 16, 32]) {
    const root = path.join(tempDir(t), 's');
    const store = await BlobStore.open(root);
    await store.deleteBlob(await putBlob(store, prngBytes(`g${mib}`, mib * MiB)));
    await store.close();
    const file = path.join(root, 'index', 'data.mdb');
    const side = path.join(root, 'data.mdb.seen');
    fs.linkSync(file, side); // a second name keeps the inode: a removed data.mdb drops its link count to 1
    const again = await BlobStore.open(root);
    await again.close();
    // With another process holding the store open, that removal pulls data.mdb and lock.mdb from under it:
    // the two then write separate index files until both reopen.
    t.is(fs.statSync(side).nlink, 2, `${mib} MiB: the index file LMDB wrote is opened as it is, not removed and made again`);
  }
});

test('gc lock: a GC holding proper-lockfile\'s leases/gc.lock without the flock (cabstore before this session, or another machine on a network file system) has its lock removed, and a second GC runs beside it', async (t) => {
  const root = path.join(tempDir(t), 's');
  await (await BlobStore.open(root)).close();
  // Exactly what the GC before this session took, and all it took; it refreshes the lock every 10 s while it runs.
  let compromised: unknown;
  const release = await lockfile.lock(path.join(root, 'leases', 'gc'), {
    realpath: false,
    stale: 60_000,
    update: 10_000,
    retries: 0,
    onCompromised: (e) => {
      compromised = e;
    },
  });
  t.teardown(() => release().catch(() => {}));
  const r = await cli(['--store', root, 'gc']);
  t.is(r.code, 1, `a second GC does not run while a live one holds gc.lock (exit ${r.code}: ${r.stderr.trim()})`);
  t.regex(r.stderr, /ERR_GC_RUNNING/);
  t.true(fs.existsSync(path.join(root, 'leases', 'gc.lock')), 'the live GC\'s lock is left where it is');
  t.is(compromised, undefined);
});

s3Test('delete: a bucket-backed delete that fails at the bucket (unpublish) has already deleted the blob\'s metadata: an owned blob loses its owner shares and GC may evict it', async (t) => {
  const proxy = await tcpProxy(() => Number(new URL(S3_ENDPOINT).port));
  const objectStore = { ...(await bucketOptions(t, { syncInterval: 0 })), endpoint: `http://127.0.0.1:${proxy.port}` };
  const store = await BlobStore.open(path.join(tempDir(t), 's'), { objectStore });
  const name = await putBlob(store, prngBytes('review6b owned', 300_000));
  const md = { ownerShares: { sg: 1 }, referenced: new Date(1000), accessed: new Date(2000) };
  await store.setBlobMetadata(name, md);
  await proxy.close(); // the bucket cannot be reached: the delete fails in unpublish, with the descriptor's lock held
  const failed = await store.deleteBlob(name).then(() => 'resolved', (e: unknown) => String((e as { code?: string }).code));
  t.not(failed, 'resolved', 'the delete fails (the bucket is unreachable)');
  t.true(await store.has(name), 'the blob is still here');
  t.deepEqual(await store.getBlobMetadata(name), md, 'a delete that fails has changed nothing: the blob keeps its metadata (owner shares)');
  await Promise.race([store.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
});

test('index readers: a recipe names a blob whose descriptor is gone (its index entries left behind, as a full disk or a process killed after the unlink leaves them), and the pull that follows it fails ERR_NO_SUCH_BLOB', async (t) => {
  const root = path.join(tempDir(t), 's');
  const store = await BlobStore.open(root);
  t.teardown(() => store.close());
  const bytes = prngBytes('review6b stale', 2 * MiB);
  const gone = await putBlob(store, bytes);
  const chunks = [];
  for await (const c of store.blobChunkStream(gone)) chunks.push(c);
  // What another process leaves when killed (or refused by a full disk) after the unlink, before the index entries went.
  fs.rmSync(path.join(root, 'blob', gone.slice(0, 2), gone));
  t.false(await store.has(gone));
  const steps = [];
  for await (const s of store.recipeStreamFromChunkStream(chunks)) steps.push(s);
  const named = steps.filter((s) => s.kind === 'blob').map((s) => (s as { blob: string }).blob);
  // The receiver copies a 'blob' step with appendBlob: what a pull does with that recipe.
  const w = await store.newBlobWriter();
  t.teardown(() => w.closeWithoutFinalize().catch(() => {}));
  const first = steps.find((s) => s.kind === 'blob') as { blob: string; offset: number; size: number } | undefined;
  const code = first && (await w.appendBlob(first.blob, first.offset, first.size).then(() => 'resolved', (e: unknown) => String((e as { code?: string }).code)));
  t.log(`recipe: ${steps.length} steps, ${named.length} copying from ${named.join(', ')}; appendBlob of the first: ${code}`);
  t.deepEqual(named, [], 'no step copies from a blob that is not here (lookupChunk and the writer\'s pins skip them; recipes do not)');
});

test('gc lock: gc({ wait: true, signal }) waiting for another GC does not stop when its signal aborts', async (t) => {
  const root = path.join(tempDir(t), 's');
  const store = await BlobStore.open(root);
  t.teardown(() => store.close());
  // Another GC holds the lock (the flock on leases/gc, as gcLock takes it).
  const fh = await fs.promises.open(path.join(root, 'leases', 'gc'), 'a');
  t.teardown(() => fh.close());
  t.true(tryLockExclusive(fh.fd));
  const ended = store.gc({ wait: true, signal: AbortSignal.timeout(200) }).then(() => 'resolved', (e: unknown) => String((e as { code?: string }).code));
  const how = await Promise.race([ended, new Promise<string>((r) => setTimeout(() => r('still waiting 5 s later'), 5000))]);
  t.is(how, 'ERR_ABORTED', 'an aborted wait for the GC lock ends with ERR_ABORTED');
  unlock(fh.fd); // let the waiting GC run and end before the store closes
  await ended;
});
