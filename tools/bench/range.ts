// The range case (issue 17): a remote blob read through client.openReader,
// every 16 KiB leaf checked against the root, beside a full pull of the
// same blob into an empty store (the peer, same run, same server: a
// `cabstore serve` child process). Rows: the sequential stream's speed
// against the full pull's (target >= 0.8x), bytes on the wire for 1 MiB
// from the middle (through a counting proxy; target < 1.2 MiB), and what
// the server's leaf layer costs: the first range's wait while it is made,
// and its size on disk.
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, connect } from '../../src/index.js';
import { Layout } from '../../src/format/layout.js';
import { tcpProxy } from '../proxy.js';
import { type BenchContext, MB, median, timeAsync } from './harness.js';
import { baseStore } from './files.js';
import { BENCH_TOKEN, serveStore } from './processes.js';

const MiB = 2 ** 20;

export async function benchRange(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { root, name } = await baseStore(ctx);
  const layer = new Layout(root).leafLayer(name);
  fs.rmSync(layer, { force: true }); // the first range makes it: measured below
  const server = await serveStore(root, ctx.workDir);
  const proxy = await tcpProxy(() => server.port);
  const scratch = path.join(ctx.workDir, 'store-range-client');
  fs.rmSync(scratch, { recursive: true, force: true });
  const local = await BlobStore.open(scratch);
  const label = `range ${Math.round(size / MiB)} MiB`;
  try {
    const c = await connect(local, server.url, { token: BENCH_TOKEN });
    const r = await c.openReader(name);
    const [, firstSecs] = await timeAsync(() => r.readAt(Buffer.alloc(1), 0));
    const layerBytes = fs.statSync(layer).size;
    ctx.log(`first range (the server makes the leaf layer): ${firstSecs.toFixed(2)} s; layer ${layerBytes} bytes`);
    const streamed: number[] = [];
    const pulled: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      const fresh = await c.openReader(name); // holds no nodes: the proofs travel again
      const [n, secs] = await timeAsync(async () => {
        let got = 0;
        for await (const b of fresh.stream() as AsyncIterable<Uint8Array>) got += b.length;
        return got;
      });
      if (n !== size) throw new Error(`streamed ${n} bytes of ${size}`);
      streamed.push(size / MB / secs);
      const empty = path.join(ctx.workDir, 'store-range-pull');
      fs.rmSync(empty, { recursive: true, force: true });
      const s = await BlobStore.open(empty);
      const [, pullSecs] = await timeAsync(async () => {
        const p = await connect(s, server.url, { token: BENCH_TOKEN });
        await p.pull(name);
        await p.close();
      });
      pulled.push(size / MB / pullSecs);
      await s.close();
      fs.rmSync(empty, { recursive: true, force: true });
      ctx.log(`run ${i + 1}: stream ${streamed[i]!.toFixed(0)} MB/s, full pull ${pulled[i]!.toFixed(0)} MB/s`);
    }
    await c.close();
    const wire: number[] = [];
    for (const at of [Math.floor(size / 2), Math.floor(size / 2) + 12345]) {
      const before = proxy.totalDown + proxy.totalUp;
      const pc = await connect(local, proxy.url, { token: BENCH_TOKEN });
      await (await pc.openReader(name)).readAt(Buffer.alloc(Math.min(MiB, size - at)), at);
      await pc.close();
      wire.push(proxy.totalDown + proxy.totalUp - before);
    }
    const c0 = { case: label };
    ctx.rows.push(
      { ...c0, metric: 'remote stream, verified, sequential', unit: 'MB/s', ours: median(streamed), peer: 'full pull into an empty store', peerValue: median(pulled), higherIsBetter: true, target: '>= 0.8x the full pull' },
      { ...c0, metric: '1 MiB from the middle: bytes on the wire (aligned / not)', unit: 'MiB', ours: Math.max(...wire) / MiB, higherIsBetter: false, target: '< 1.2 MiB', note: wire.map((w) => (w / MiB).toFixed(3)).join(' / ') },
      { ...c0, metric: 'first range: server makes the leaf layer', unit: 's', ours: firstSecs, higherIsBetter: false },
      { ...c0, metric: 'leaf layer on disk / blob', unit: '%', ours: (100 * layerBytes) / size, higherIsBetter: false, target: '0.2%' },
    );
  } finally {
    await local.close();
    await proxy.close();
    await server.stop();
  }
}
