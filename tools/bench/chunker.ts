import { chunk, merkleRoot, sha256 } from '../../src/index.js';
import { prngBytes } from '../data.js';
import { type BenchContext, MB, medianOf, time } from './harness.js';

/** Chunker, SHA-256 and merkle throughput over the same in-memory data. */
export async function benchChunker(ctx: BenchContext): Promise<void> {
  const size = Math.min(ctx.sizeBytes, 256 * 1024 * 1024);
  const data = prngBytes('bench chunker', size);
  const mbps = (fn: () => unknown) => () => size / MB / time(fn)[1];
  const sha = await medianOf(ctx.runs, mbps(() => sha256(data)));
  const cdc = await medianOf(ctx.runs, mbps(() => chunk(data)));
  const merkle = await medianOf(ctx.runs, mbps(() => merkleRoot(data)));
  const label = `chunk ${Math.round(size / 2 ** 20)} MiB`;
  ctx.rows.push(
    { case: label, metric: 'FastCDC', unit: 'MB/s', ours: cdc, peer: 'SHA-256', peerValue: sha, higherIsBetter: true, target: '>= 800 MB/s' },
    { case: label, metric: 'BEP 52 merkle', unit: 'MB/s', ours: merkle, peer: 'SHA-256', peerValue: sha, higherIsBetter: true, target: '>= 0.8x SHA-256' },
  );
}
