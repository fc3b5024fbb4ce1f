import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BlobStore } from '../../src/index.js';
import { type BenchContext, median, timeAsync, time, hasTool } from './harness.js';
import { baseAndEdited } from './files.js';

/** fsck and fsck --verify of a store holding `base` in 100 blobs, beside sha256sum of the same bytes. */
export async function benchFsck(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { base } = await baseAndEdited(ctx);
  const root = path.join(ctx.workDir, 'store-fsck');
  fs.rmSync(root, { recursive: true, force: true });
  const store = await BlobStore.open(root);
  try {
    const part = Math.ceil(size / 100);
    for (let off = 0; off < size; off += part) {
      const w = await store.newBlobWriter();
      await w.appendBytes({ file: base, offset: off, size: Math.min(part, size - off) });
      await w.close();
    }
    const label = `fsck ${Math.round(size / 2 ** 20)} MiB in 100 blobs`;
    const plain: number[] = [];
    const verify: number[] = [];
    const sum: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      plain.push((await timeAsync(() => store.fsck()))[1]);
      verify.push((await timeAsync(() => store.fsck({ verify: true })))[1]);
      if (hasTool('sha256sum')) sum.push(time(() => execFileSync('sha256sum', [base]))[1]);
    }
    const peer = sum.length ? { peer: 'sha256sum of the same bytes', peerValue: median(sum) } : {};
    ctx.rows.push({ case: label, metric: 'fsck', unit: 's', ours: median(plain), ...peer, higherIsBetter: false });
    ctx.rows.push({ case: label, metric: 'fsck --verify', unit: 's', ours: median(verify), ...peer, higherIsBetter: false, target: '<= 1.5x sha256sum' });
  } finally {
    await store.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}
