import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { BlobStore } from '../../src/index.js';
import { encodeHeader, encodeRecord } from '../../src/format/descriptor.js';
import { Layout } from '../../src/format/layout.js';
import { type BenchContext, timeAsync } from './harness.js';

const BLOBS = 10_000;
const FRAGS_PER_BLOB = 10;
const FRAG_SIZE = 256;

/**
 * GC on a store of 10,000 blobs and 100,000 fragments after deleting half of
 * the blobs. The store is laid down directly in format 1 (docs/FORMAT.md),
 * without fsync, because writing 100,000 fragments through writers (each a
 * durable checkpoint) would take minutes and measure the setup, not GC.
 */
export async function benchGc(ctx: BenchContext): Promise<void> {
  const root = path.join(ctx.workDir, 'store-gc');
  fs.rmSync(root, { recursive: true, force: true });
  await (await BlobStore.open(root)).close();
  const layout = new Layout(root);
  const names: string[] = [];
  const dirs = new Set<string>();
  const t0 = performance.now();
  for (let b = 0; b < BLOBS; b++) {
    const name = crypto.randomBytes(16).toString('hex');
    names.push(name);
    const extents: Array<[Uint8Array, number, number]> = [];
    for (let f = 0; f < FRAGS_PER_BLOB; f++) {
      const bytes = crypto.randomBytes(FRAG_SIZE);
      const id = crypto.createHash('sha256').update(bytes).digest();
      const hex = id.toString('hex');
      const dir = layout.fragmentDir(hex);
      if (!dirs.has(dir)) {
        fs.mkdirSync(dir, { recursive: true });
        dirs.add(dir);
      }
      fs.writeFileSync(layout.fragment(hex), bytes);
      extents.push([id, 0, FRAG_SIZE]);
    }
    fs.mkdirSync(layout.blobDir(name), { recursive: true });
    const size = FRAGS_PER_BLOB * FRAG_SIZE;
    fs.writeFileSync(
      layout.descriptor(name),
      Buffer.concat([encodeHeader(name, Date.now()), encodeRecord({ t: 'x', s: size, x: extents, c: new Uint8Array(0), m: [0, new Uint8Array(0)] })]),
    );
  }
  ctx.log(`gc: laid down ${BLOBS} blobs, ${BLOBS * FRAGS_PER_BLOB} fragments in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const store = await BlobStore.open(root);
  try {
    for (const name of names.slice(0, BLOBS / 2)) await store.deleteBlob(name);
    const [report, secs] = await timeAsync(() => store.gc());
    if (report.fragmentsDeleted !== (BLOBS / 2) * FRAGS_PER_BLOB) throw new Error(`gc deleted ${report.fragmentsDeleted} fragments`);
    ctx.rows.push({
      case: 'gc 10,000 blobs / 100,000 fragments',
      metric: 'gc after deleting half the blobs',
      unit: 's',
      ours: secs,
      higherIsBetter: false,
      target: '< 10 s',
      note: `${report.fragmentsDeleted} fragments deleted`,
    });
  } finally {
    await store.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}
