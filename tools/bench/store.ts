import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BlobStore } from '../../src/index.js';
import { prngInts } from '../data.js';
import { type BenchContext, MB, median, percentile, timeAsync, time } from './harness.js';
import { dataFile } from './files.js';

async function drain(stream: NodeJS.ReadableStream): Promise<number> {
  let n = 0;
  for await (const b of stream as AsyncIterable<Buffer>) n += b.length;
  return n;
}

/** Random 4 KiB reads: latencies in microseconds. */
async function randomReads(size: number, read: (buf: Buffer, pos: number) => Promise<unknown>, count = 5000): Promise<number[]> {
  const rnd = prngInts(42);
  const buf = Buffer.alloc(4096);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const pos = Math.floor((rnd(2 ** 30) / 2 ** 30) * (size - 4096));
    const t = performance.now();
    await read(buf, pos);
    out.push((performance.now() - t) * 1000);
  }
  return out;
}

/** The local store: durable ingest, sequential and random reads, resume. */
export async function benchStore(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const base = await dataFile(ctx, 'base', size);
  const label = `store ${Math.round(size / 2 ** 20)} MiB`;

  // ingest, beside cp + sync of the same file
  const ours: number[] = [];
  const cp: number[] = [];
  let name = '';
  let root = '';
  for (let i = 0; i < ctx.runs; i++) {
    const copy = path.join(ctx.workDir, 'copy.bin');
    execFileSync('sync');
    cp.push(size / MB / time(() => execFileSync('sh', ['-c', `cp "${base}" "${copy}" && sync "${copy}"`]))[1]);
    fs.rmSync(copy, { force: true });
    root = path.join(ctx.workDir, `store-${i}`);
    execFileSync('sync');
    const store = await BlobStore.open(root);
    const [, secs] = await timeAsync(async () => {
      const w = await store.newBlobWriter();
      await w.appendBytes({ file: base });
      await w.close();
      name = w.name;
    });
    ours.push(size / MB / secs);
    await store.close();
    if (i < ctx.runs - 1) fs.rmSync(root, { recursive: true, force: true });
  }
  ctx.rows.push({ case: label, metric: 'ingest, durable', unit: 'MB/s', ours: median(ours), peer: 'cp + sync', peerValue: median(cp), higherIsBetter: true, target: '>= 350 MB/s' });

  const store = await BlobStore.open(root);
  try {
    // sequential stream, beside fs.createReadStream of the original
    const r = await store.newBlobReader(name);
    const s1: number[] = [];
    const s2: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      s2.push(size / MB / (await timeAsync(() => drain(fs.createReadStream(base))))[1]);
      s1.push(size / MB / (await timeAsync(() => drain(r.stream())))[1]);
    }
    ctx.rows.push({ case: label, metric: 'read stream', unit: 'MB/s', ours: median(s1), peer: 'fs.createReadStream', peerValue: median(s2), higherIsBetter: true, target: '>= 0.8x' });

    // random 4 KiB readAt
    const fh = await fsp.open(base, 'r');
    const theirs = await randomReads(size, (b, p) => fh.read(b, 0, 4096, p));
    await fh.close();
    const mine = await randomReads(size, (b, p) => r.readAt(b, p));
    await r.close();
    for (const p of [50, 99]) {
      ctx.rows.push({ case: label, metric: `random 4 KiB readAt p${p}`, unit: 'us', ours: percentile(mine, p), peer: 'fs read', peerValue: percentile(theirs, p), higherIsBetter: false });
    }

    // resume of unfinalized blobs: 16 MiB and the full size
    const resumeTimes: Record<string, number> = {};
    for (const n of [16 * 1024 * 1024, size]) {
      const w = await store.newBlobWriter();
      await w.appendBytes({ file: base, offset: 0, size: n - 12345 });
      await w.closeWithoutFinalize();
      const xs: number[] = [];
      for (let i = 0; i < Math.max(5, ctx.runs); i++) {
        const [w2, secs] = await timeAsync(() => store.resumeBlobWriter(w.name));
        xs.push(secs * 1000);
        await w2.closeWithoutFinalize();
      }
      resumeTimes[n] = median(xs);
    }
    const big = resumeTimes[size]!;
    const small = resumeTimes[16 * 1024 * 1024]!;
    ctx.rows.push({
      case: label,
      metric: `resumeBlobWriter, ${Math.round(size / 2 ** 20)} MiB blob`,
      unit: 'ms',
      ours: big,
      peer: 'resume of a 16 MiB blob',
      peerValue: small,
      higherIsBetter: false,
      target: '<= 2x the 16 MiB one',
    });
  } finally {
    await store.close();
  }
}
