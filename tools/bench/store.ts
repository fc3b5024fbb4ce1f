import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BlobStore, type BlobWriter } from '../../src/index.js';
import { prngInts, prngStream } from '../data.js';
import { type BenchContext, MB, median, percentile, timeAsync, time, hasTool } from './harness.js';
import { baseAndEdited, baseStore, du, dropCaches } from './files.js';

const MISSING = (tool: string, pkg: string) => `${tool} not installed: apt-get install ${pkg}`;

function sh(cmd: string, env: Record<string, string> = {}): string {
  return execFileSync('sh', ['-c', cmd], { encoding: 'utf8', env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

/** CPU seconds (user + system) of each thread of this process so far, by thread id: /proc/self/task/TID/stat fields 14 and 15. */
function threadCpu(): Map<number, number> {
  const hz = 100; // USER_HZ: the unit of /proc's tick counts on Linux
  const out = new Map<number, number>();
  for (const tid of fs.readdirSync('/proc/self/task')) {
    let f: string;
    try {
      f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // a thread that ended meanwhile
      throw e;
    }
    const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
    out.set(Number(tid), (Number(fields[11]) + Number(fields[12])) / hz);
  }
  return out;
}

/** CPU seconds per GiB between two threadCpu() readings: the main thread, the busiest other thread (the hashing thread), and all the others (libuv's pool: reads and fsyncs; V8's: GC and compiling). */
interface CpuSplit {
  main: number;
  hashing: number;
  rest: number;
}

function cpuPerGiB(before: Map<number, number>, after: Map<number, number>, bytes: number): CpuSplit {
  const perGiB = 2 ** 30 / bytes;
  const others: number[] = [];
  let main = 0;
  for (const [tid, cpu] of after) {
    const d = cpu - (before.get(tid) ?? 0);
    if (tid === process.pid) main = d;
    else others.push(d);
  }
  others.sort((a, b) => b - a);
  const rest = others.slice(1).reduce((a, b) => a + b, 0);
  return { main: main * perGiB, hashing: (others[0] ?? 0) * perGiB, rest: rest * perGiB };
}

/** Durable ingest of base, then of edited (store growth), beside cp+sync, casync make and borg create. */
export async function benchIngest(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { base, edited } = await baseAndEdited(ctx);
  const label = `ingest ${Math.round(size / 2 ** 20)} MiB`;
  const ours: number[] = [];
  const again: number[] = [];
  const againGrowth: number[] = [];
  const growth: number[] = [];
  const cpuPut: CpuSplit[] = [];
  const cpuAgain: CpuSplit[] = [];
  const put = async (store: BlobStore, file: string, cpu?: CpuSplit[]) => {
    const before = threadCpu();
    const w = await store.newBlobWriter();
    await w.appendBytes({ file });
    await w.close();
    cpu?.push(cpuPerGiB(before, threadCpu(), size));
  };
  const load = () => os.loadavg()[0]!.toFixed(1);
  for (let i = 0; i < ctx.runs; i++) {
    const root = path.join(ctx.workDir, `ingest-${i}`);
    dropCaches();
    const store = await BlobStore.open(root);
    const loadBefore = load();
    const [, secs] = await timeAsync(() => put(store, base, cpuPut));
    ours.push(size / MB / secs);
    // The same file again: every chunk is known (dedup), from a cold page cache as the first.
    const had = du(path.join(root, 'cas'));
    dropCaches();
    again.push(size / MB / (await timeAsync(() => put(store, base, cpuAgain)))[1]);
    againGrowth.push(du(path.join(root, 'cas')) - had);
    const split = (c: CpuSplit) => `main ${c.main.toFixed(2)} + hashing ${c.hashing.toFixed(2)} + other threads ${c.rest.toFixed(2)} s/GiB`;
    ctx.log(`run ${i + 1} (load ${loadBefore} -> ${load()}): put ${ours.at(-1)!.toFixed(0)} MB/s, ${split(cpuPut.at(-1)!)}; again ${again.at(-1)!.toFixed(0)} MB/s, ${split(cpuAgain.at(-1)!)}`);
    const before = du(path.join(root, 'cas'));
    const w = await store.newBlobWriter();
    await w.appendBytes({ file: edited });
    await w.close();
    growth.push(du(path.join(root, 'cas')) - before);
    await store.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
  const cp: number[] = [];
  for (let i = 0; i < ctx.runs; i++) {
    const copy = path.join(ctx.workDir, 'copy.bin');
    dropCaches();
    cp.push(size / MB / time(() => sh(`cp "${base}" "${copy}" && sync "${copy}"`))[1]);
    fs.rmSync(copy, { force: true });
  }
  const row = { case: label, unit: 'MB/s', higherIsBetter: true };
  ctx.rows.push({ ...row, metric: 'put base, durable', ours: median(ours), peer: 'cp + sync', peerValue: median(cp), target: '>= 600 MB/s' });
  ctx.rows.push({ ...row, metric: 'put base again (all chunks known)', ours: median(again), target: '>= 1000 MB/s' });
  ctx.rows.push({ case: label, metric: 'put base again: fragment bytes added', unit: 'MB', ours: median(againGrowth) / MB, higherIsBetter: false, target: '0' });
  // CPU per GiB, every thread of this process: what load on the machine does not change as much as it changes wall time.
  for (const [what, xs] of [['put base', cpuPut], ['put base again', cpuAgain]] as const) {
    const cpu = { case: label, unit: 's', higherIsBetter: false };
    ctx.rows.push({ ...cpu, metric: `${what}: CPU per GiB, all threads`, ours: median(xs.map((c) => c.main + c.hashing + c.rest)) });
    ctx.rows.push({ ...cpu, metric: `${what}: CPU per GiB, main thread`, ours: median(xs.map((c) => c.main)) });
    ctx.rows.push({ ...cpu, metric: `${what}: CPU per GiB, hashing thread`, ours: median(xs.map((c) => c.hashing)) });
  }

  // casync: same chunk sizes, into a chunk store (zstd: casync cannot store uncompressed)
  if (hasTool('casync')) {
    const speed: number[] = [];
    const grow: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      const dir = path.join(ctx.workDir, `casync-${i}`);
      fs.mkdirSync(dir, { recursive: true });
      dropCaches();
      const [, secs] = time(() => sh(`casync make --chunk-size=16384:65536:262144 --store="${dir}/s.castr" "${dir}/base.caibx" "${base}" && sync`));
      speed.push(size / MB / secs);
      const before = du(`${dir}/s.castr`);
      sh(`casync make --chunk-size=16384:65536:262144 --store="${dir}/s.castr" "${dir}/edited.caibx" "${edited}"`);
      grow.push(du(`${dir}/s.castr`) - before);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    ctx.rows.push({ ...row, metric: 'put base, durable', ours: median(ours), peer: 'casync make (zstd)', peerValue: median(speed), target: '>= 1.5x the faster chunker' });
    ctx.rows.push({ case: label, metric: 'store growth for edited', unit: 'MB', ours: median(growth) / MB, peer: 'casync, 16/64/256 KiB', peerValue: median(grow) / MB, higherIsBetter: false, target: '<= 1.0x casync' });
  } else ctx.log(MISSING('casync', 'casync'));

  if (hasTool('borg')) {
    const env = { BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes', BORG_BASE_DIR: path.join(ctx.workDir, 'borg-home') };
    const speed: number[] = [];
    const grow: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      const repo = path.join(ctx.workDir, `borg-${i}`);
      sh(`borg init --encryption=none "${repo}"`, env);
      dropCaches();
      const [, secs] = time(() => sh(`cd "${path.dirname(base)}" && borg create --compression none --chunker-params buzhash,14,18,16,4095 "${repo}::base" "${path.basename(base)}" && sync`, env));
      speed.push(size / MB / secs);
      const before = du(repo);
      sh(`cd "${path.dirname(edited)}" && borg create --compression none --chunker-params buzhash,14,18,16,4095 "${repo}::edited" "${path.basename(edited)}"`, env);
      grow.push(du(repo) - before);
      fs.rmSync(repo, { recursive: true, force: true });
    }
    ctx.rows.push({ ...row, metric: 'put base, durable', ours: median(ours), peer: 'borg create (none, 64K-like)', peerValue: median(speed), target: '>= 1.75x borg' });
    ctx.rows.push({ case: label, metric: 'store growth for edited', unit: 'MB', ours: median(growth) / MB, peer: 'borg, buzhash 14,18,16', peerValue: median(grow) / MB, higherIsBetter: false });
  } else ctx.log(MISSING('borg', 'borgbackup'));
}

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

/** Sequential stream and random readAt, beside fs and cat of the original file (all from the page cache). */
export async function benchRead(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { base } = await baseAndEdited(ctx);
  const { root, name } = await baseStore(ctx);
  const label = `read ${Math.round(size / 2 ** 20)} MiB`;
  const store = await BlobStore.open(root);
  try {
    const r = await store.newBlobReader(name);
    const mine: number[] = [];
    const fsRead: number[] = [];
    const cat: number[] = [];
    await drain(r.stream()); // warm both into the page cache
    await drain(fs.createReadStream(base));
    for (let i = 0; i < ctx.runs; i++) {
      fsRead.push(size / MB / (await timeAsync(() => drain(fs.createReadStream(base))))[1]);
      mine.push(size / MB / (await timeAsync(() => drain(r.stream())))[1]);
      cat.push(size / MB / time(() => sh(`cat "${base}" > /dev/null`))[1]);
    }
    ctx.rows.push({ case: label, metric: 'stream', unit: 'MB/s', ours: median(mine), peer: 'fs.createReadStream', peerValue: median(fsRead), higherIsBetter: true, target: '>= 0.8x' });
    ctx.rows.push({ case: label, metric: 'stream', unit: 'MB/s', ours: median(mine), peer: 'cat > /dev/null', peerValue: median(cat), higherIsBetter: true });
    const fh = await fsp.open(base, 'r');
    const theirs = await randomReads(size, (b, p) => fh.read(b, 0, 4096, p));
    await fh.close();
    const ours = await randomReads(size, (b, p) => r.readAt(b, p));
    await r.close();
    for (const p of [50, 99]) {
      ctx.rows.push({ case: label, metric: `random 4 KiB readAt p${p}`, unit: 'us', ours: percentile(ours, p), peer: 'fs read', peerValue: percentile(theirs, p), higherIsBetter: false });
    }
  } finally {
    await store.close();
  }
}

/** resumeBlobWriter on a 16 MiB and on a full-size unfinalized blob. */
export async function benchResume(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { base } = await baseAndEdited(ctx);
  const root = path.join(ctx.workDir, 'store-resume');
  fs.rmSync(root, { recursive: true, force: true });
  const store = await BlobStore.open(root);
  try {
    const times: number[] = [];
    for (const n of [16 * 1024 * 1024, size]) {
      const w = await store.newBlobWriter();
      await w.appendBytes({ file: base, offset: 0, size: n - 12345 });
      await w.closeWithoutFinalize();
      const xs: number[] = [];
      for (let i = 0; i < Math.max(7, ctx.runs); i++) {
        const [w2, secs] = await timeAsync(() => store.resumeBlobWriter(w.name));
        xs.push(secs * 1000);
        await w2.closeWithoutFinalize();
      }
      times.push(median(xs));
    }
    ctx.rows.push({
      case: `resume`,
      metric: `resumeBlobWriter, ${Math.round(size / 2 ** 20)} MiB blob`,
      unit: 'ms',
      ours: times[1]!,
      peer: 'same, 16 MiB blob',
      peerValue: times[0]!,
      higherIsBetter: false,
      target: '<= 2x the 16 MiB one',
    });
  } finally {
    await store.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/** `total` pseudo-random bytes (the same for every seed use) in pieces of `piece` bytes, made 1 MiB at a time. */
async function* pieces(total: number, piece: number): AsyncGenerator<Buffer> {
  const next = prngStream('cabstore bench stream');
  for (let off = 0; off < total; off += 2 ** 20) {
    const block = next(Math.min(2 ** 20, total - off));
    for (let o = 0; o < block.length; o += piece) yield block.subarray(o, o + piece);
  }
}

/**
 * Streaming ingest: the same bytes (at most 256 MiB) in 16 KiB and in 1 MiB
 * pieces, through appendStream, through createWriteStream (pipeline from a
 * Readable), and appendBytes called once per piece. Each run writes to a
 * fresh store and ends with a durable flush; the ways take turns within a
 * run, so that a busy spell of the machine falls on all of them. The bytes
 * are made as they go (AES-CTR, about 1 GB/s), the same cost in every row.
 */
export async function benchStream(ctx: BenchContext): Promise<void> {
  const size = Math.min(ctx.sizeBytes, 256 * 2 ** 20);
  const KiB16 = 16 * 1024;
  const ways: Array<[string, (w: BlobWriter) => Promise<unknown>]> = [
    ['appendStream, 1 MiB pieces', (w) => w.appendStream(pieces(size, 2 ** 20))],
    ['appendStream, 16 KiB pieces', (w) => w.appendStream(pieces(size, KiB16))],
    ['createWriteStream, 16 KiB pieces', (w) => pipeline(Readable.from(pieces(size, KiB16), { objectMode: false }), w.createWriteStream())],
    [
      'appendBytes per 16 KiB piece',
      async (w) => {
        for await (const p of pieces(size, KiB16)) await w.appendBytes(p);
      },
    ],
  ];
  const speeds = ways.map((): number[] => []);
  for (let i = 0; i < ctx.runs; i++) {
    for (const [k, [what, ingest]] of ways.entries()) {
      const root = path.join(ctx.workDir, 'stream');
      fs.rmSync(root, { recursive: true, force: true });
      const store = await BlobStore.open(root);
      try {
        const w = await store.newBlobWriter();
        const [, secs] = await timeAsync(async () => {
          await ingest(w);
          await w.flush();
        });
        if (w.size !== size) throw new Error(`${what}: ingested ${w.size} bytes, not ${size}`);
        await w.closeWithoutFinalize();
        speeds[k]!.push(size / MB / secs);
        ctx.log(`${what}: ${(size / MB / secs).toFixed(0)} MB/s`);
      } finally {
        await store.close();
        fs.rmSync(root, { recursive: true, force: true });
      }
    }
  }
  const [big, ...rest] = speeds.map(median);
  const row = { case: `stream ${Math.round(size / 2 ** 20)} MiB`, unit: 'MB/s', higherIsBetter: true, peer: ways[0]![0], peerValue: big! };
  rest.forEach((ours, k) => ctx.rows.push({ ...row, metric: ways[k + 1]![0], ours, target: k < 2 ? '>= 0.8x' : undefined }));
}
