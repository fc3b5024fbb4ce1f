// The s3 case: a bucket-backed store on a real S3 server (radosgw from
// scripts/s3-server.sh, at $CABSTORE_S3_ENDPOINT, default
// http://127.0.0.1:17480) beside @aws-sdk/lib-storage's Upload and a plain
// GetObject of the same file, to the same server, in the same run:
//
// - first upload of the file: a writer of a fresh store appending the
//   file and closing (chunked, hashed, every fragment uploaded and the
//   descriptor published) vs Upload of the file (5 MiB parts, 4 at a time);
// - the 100-edit copy written next into the same store: bytes it uploads
//   against the file's size (dedup; nothing to compare it with);
// - cold read: a second store on another folder (empty cache) streaming
//   the blob, every chunk fetched and checked, vs GetObject of Upload's object.
//
// Each side's CPU time is this process's, all threads and the main one (the
// server's is not counted); the run's line also gives the cold read's CPU
// per thread other than the main one (fetching threads, V8's helpers, the
// libuv pool), busiest first.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { S3Client, GetObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Readable } from 'node:stream';
import { BlobStore, type ObjectStoreOptions } from '../../src/index.js';
import { ObjectStore } from '../../src/bucket/object-store.js';
import { type BenchContext, MB, median } from './harness.js';
import { baseAndEdited } from './files.js';

const MiB = 2 ** 20;
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** CPU seconds of this process's main thread (/proc/self/task/PID/stat fields 14 and 15, in clock ticks; 0 where there is no /proc). */
const mainCpu = () => {
  try {
    const f = fs.readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / 100;
  } catch {
    return 0;
  }
};

/** CPU seconds of each thread of this process, by thread id (empty where there is no /proc). */
const threadCpu = (): Map<string, number> => {
  const m = new Map<string, number>();
  try {
    for (const tid of fs.readdirSync('/proc/self/task')) {
      const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
      m.set(tid, (Number(rest[11]) + Number(rest[12])) / 100);
    }
  } catch {
    // a thread that ended between the listing and its read: the others are still right
  }
  return m;
};

/** Wall seconds and CPU seconds of `fn` (every thread, the main one's, and each thread's that used any, busiest first). */
async function measure(fn: () => Promise<unknown>): Promise<{ secs: number; cpu: number; main: number; threads: number[] }> {
  const c0 = cpu();
  const m0 = mainCpu();
  const t0 = performance.now();
  const before = threadCpu();
  await fn();
  const after = threadCpu();
  const threads = [...after].filter(([tid]) => tid !== String(process.pid)).map(([tid, s]) => s - (before.get(tid) ?? 0)).filter((s) => s > 0).sort((a, b) => b - a);
  return { secs: (performance.now() - t0) / 1000, cpu: cpu() - c0, main: mainCpu() - m0, threads };
}

export async function benchS3(ctx: BenchContext): Promise<void> {
  const endpoint = process.env.CABSTORE_S3_ENDPOINT ?? 'http://127.0.0.1:17480';
  const credentials = { accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? 'testkey', secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? 'testsecret' };
  const size = ctx.sizeBytes;
  const { base, edited } = await baseAndEdited(ctx);
  const bucket = `cabstore-bench-${crypto.randomBytes(4).toString('hex')}`;
  const admin = await ObjectStore.connect({ endpoint, bucket, region: 'us-east-1', credentials });
  await admin.ensureBucket(true);
  await admin.put('warm-up', new Uint8Array(1)); // a new bucket's first write is slow (about 2 s on radosgw)
  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const label = `s3 ${Math.round(size / MiB)} MiB`;
  const r = { up: [] as number[], upCpu: [] as number[], peerUp: [] as number[], peerUpCpu: [] as number[], edit: [] as number[] };
  const g = { ours: [] as number[], oursCpu: [] as number[], oursMain: [] as number[], oursThreads: [] as string[], peer: [] as number[], peerCpu: [] as number[], peerMain: [] as number[] };
  try {
    for (let i = 0; i < ctx.runs; i++) {
      const key = `peer-${i}`;
      const peerUp = await measure(() => new Upload({ client, params: { Bucket: bucket, Key: key, Body: fs.createReadStream(base) } }).done());
      r.peerUp.push(size / MB / peerUp.secs);
      r.peerUpCpu.push(peerUp.cpu);

      const objectStore: ObjectStoreOptions = { endpoint, bucket, prefix: `ours-${i}/`, credentials, syncInterval: 0 };
      const dirA = path.join(ctx.workDir, `s3-a-${i}`);
      const dirB = path.join(ctx.workDir, `s3-b-${i}`);
      fs.rmSync(dirA, { recursive: true, force: true });
      fs.rmSync(dirB, { recursive: true, force: true });
      const a = await BlobStore.open(dirA, { objectStore });
      let name = '';
      try {
        const up = await measure(async () => {
          const w = await a.newBlobWriter();
          await w.appendBytes({ file: base });
          await w.close();
          name = w.name;
        });
        r.up.push(size / MB / up.secs);
        r.upCpu.push(up.cpu);
        const stats = a.shared!.bucket.os.stats;
        const before = stats.bytesUp;
        const w = await a.newBlobWriter();
        await w.appendBytes({ file: edited });
        await w.close();
        r.edit.push((100 * (stats.bytesUp - before)) / fs.statSync(edited).size);
      } finally {
        await a.close();
      }

      const b = await BlobStore.open(dirB, { objectStore });
      try {
        const read = await measure(async () => {
          let n = 0;
          const reader = await b.newBlobReader(name);
          for await (const chunk of reader.stream()) n += (chunk as Buffer).length;
          await reader.close();
          if (n !== size) throw new Error(`read ${n} bytes of ${size}`);
        });
        g.ours.push(size / MB / read.secs);
        g.oursCpu.push(read.cpu);
        g.oursMain.push(read.main);
        g.oursThreads.push(read.threads.map((s) => s.toFixed(2)).join(' '));
      } finally {
        await b.close();
      }
      const peerGet = await measure(async () => {
        const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        let n = 0;
        for await (const chunk of out.Body as Readable) n += (chunk as Buffer).length;
        if (n !== size) throw new Error(`GetObject gave ${n} bytes of ${size}`);
      });
      g.peer.push(size / MB / peerGet.secs);
      g.peerCpu.push(peerGet.cpu);
      g.peerMain.push(peerGet.main);
      ctx.log(
        `run ${i + 1}: upload ${r.up[i]!.toFixed(0)} vs ${r.peerUp[i]!.toFixed(0)} MB/s (cpu ${r.upCpu[i]!.toFixed(2)} vs ${r.peerUpCpu[i]!.toFixed(2)} s), ` +
          `edited copy ${r.edit[i]!.toFixed(2)}% uploaded, cold read ${g.ours[i]!.toFixed(0)} vs ${g.peer[i]!.toFixed(0)} MB/s (cpu ${g.oursCpu[i]!.toFixed(2)} vs ${g.peerCpu[i]!.toFixed(2)} s, main thread ${g.oursMain[i]!.toFixed(2)} vs ${g.peerMain[i]!.toFixed(2)} s; ours, other threads: ${g.oursThreads[i]}), load ${os.loadavg()[0]!.toFixed(1)}`,
      );
      await emptyPrefix(admin, '');
      fs.rmSync(dirA, { recursive: true, force: true });
      fs.rmSync(dirB, { recursive: true, force: true });
    }
  } finally {
    await emptyPrefix(admin, '');
    await admin.deleteBucket().catch(() => {});
    admin.close();
    client.destroy();
  }
  const row = { case: label, higherIsBetter: true };
  const gib = size / 2 ** 30;
  ctx.rows.push({ ...row, metric: 'first upload', unit: 'MB/s', ours: median(r.up), peer: 'lib-storage Upload', peerValue: median(r.peerUp), target: '>= 0.8x the peer' });
  ctx.rows.push({ ...row, metric: 'first upload, CPU per GiB', unit: 's', ours: median(r.upCpu) / gib, peer: 'lib-storage Upload', peerValue: median(r.peerUpCpu) / gib, higherIsBetter: false });
  ctx.rows.push({ ...row, metric: 'upload of the 100-edit copy', unit: '% of its bytes', ours: median(r.edit), higherIsBetter: false, target: '<= 5%' });
  ctx.rows.push({ ...row, metric: 'cold read through the cache, verified', unit: 'MB/s', ours: median(g.ours), peer: 'GetObject', peerValue: median(g.peer), target: '>= 0.8x the peer' });
  ctx.rows.push({ ...row, metric: 'cold read, CPU per GiB', unit: 's', ours: median(g.oursCpu) / gib, peer: 'GetObject', peerValue: median(g.peerCpu) / gib, higherIsBetter: false });
  ctx.rows.push({ ...row, metric: 'cold read, CPU per GiB, main thread', unit: 's', ours: median(g.oursMain) / gib, peer: 'GetObject', peerValue: median(g.peerMain) / gib, higherIsBetter: false });
}

/** Deletes every object under `prefix` (the bench's bucket is its own). */
async function emptyPrefix(os: ObjectStore, prefix: string): Promise<void> {
  const keys: string[] = [];
  for await (const o of os.list(prefix)) keys.push(o.key);
  await os.deleteMany(keys);
}
