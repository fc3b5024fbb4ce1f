// The follow case (issue 18): how long after a writer's flush (in one
// process) a follower (`cabstore cat NAME --follow`, another process) has
// the bytes: from the moment flush() is called to the moment the bytes up
// to that flush reach this process through the follower's stdout. Both
// children write wall-clock times (performance.timeOrigin + now()).
//
// The writer flushes a first piece and holds until the follower has handed
// it over: the follower's own start (node, the CLI, the store's open) is
// reported apart, not counted as the latency of the flushes made while it
// started (it was the whole p99 of the first version of this case).
import crypto from 'node:crypto';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore } from '../../src/index.js';
import { type BenchContext, median, percentile } from './harness.js';
import { CLI } from './processes.js';

const WRITER = fileURLToPath(new URL('./follow-writer.js', import.meta.url));
/** Bytes written; pieces up to MAX_PIECE, a flush after each, PAUSE_MS between: about 370 flushes. */
const SIZE = 48 * 2 ** 20;
const MAX_PIECE = 256 * 1024;
const PAUSE_MS = 20;

export async function benchFollow(ctx: BenchContext): Promise<void> {
  const dir = path.join(ctx.workDir, 'store-follow');
  await (await BlobStore.open(dir)).close();
  const name = crypto.randomBytes(16).toString('hex');
  const now = () => performance.timeOrigin + performance.now();
  const writer = spawn(process.execPath, [WRITER, dir, name, String(SIZE), 'bench-follow', String(PAUSE_MS), String(MAX_PIECE), 'hold'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const flushes: Array<[size: number, at: number, done: number]> = [];
  let lines = '';
  let firstFlush!: () => void;
  const flushedOnce = new Promise<void>((r) => (firstFlush = r));
  writer.stdout!.on('data', (d: Buffer) => {
    lines += d.toString();
    for (let nl = lines.indexOf('\n'); nl >= 0; nl = lines.indexOf('\n')) {
      const [what, size, at, done] = lines.slice(0, nl).split(' ');
      lines = lines.slice(nl + 1);
      if (what === 'flushed') flushes.push([Number(size), Number(at), Number(done)]);
      if (flushes.length === 1) firstFlush();
    }
  });
  const wrote = new Promise<number | null>((r) => writer.once('exit', r));
  await flushedOnce;
  const spawned = now();
  const follower = spawn(process.execPath, [CLI, '--store', dir, 'cat', name, '--follow'], { stdio: ['ignore', 'pipe', 'inherit'] });
  // Bytes the follower has handed over, and when: [running total, time].
  const seen: Array<[number, number]> = [];
  let got = 0;
  follower.stdout!.on('data', (d: Buffer) => {
    got += d.length;
    seen.push([got, now()]);
    // The follower has the first flush: let the writer go on.
    if (got >= flushes[0]![0] && writer.stdin!.writable) writer.stdin!.end('go\n');
  });
  const followed = new Promise<number | null>((r) => follower.once('exit', r));
  const [wc, fc] = await Promise.all([wrote, followed]);
  if (wc !== 0 || fc !== 0 || got !== SIZE) throw new Error(`follow: writer exited ${wc}, follower ${fc}, ${got} of ${SIZE} bytes`);
  const lat: number[] = [];
  const flushMs: number[] = [];
  /** From flush() resolving to the follower handing the bytes over (< 0: it had them before: the record is written before its fsync). */
  const after: number[] = [];
  let k = 0;
  for (const [size, at, done] of flushes.slice(1)) {
    while (seen[k]![0] < size) k++;
    lat.push(Math.max(0, seen[k]![1] - at));
    flushMs.push(done - at);
    after.push(seen[k]![1] - done);
  }
  const startMs = seen[0]![1] - spawned;
  const slow = lat.map((x, i) => [i + 1, Math.round(x)]).filter(([, x]) => x! > 20);
  ctx.log(`follow: ${lat.length} flushes; latency ms min ${Math.min(...lat).toFixed(1)}, max ${Math.max(...lat).toFixed(1)}; over 20 ms: ${JSON.stringify(slow)}`);
  ctx.log(`follow: flush() itself took ${median(flushMs).toFixed(1)} ms (median), ${percentile(flushMs, 99).toFixed(1)} ms (p99); from its end to the follower's bytes ${median(after).toFixed(1)} ms (median), ${percentile(after, 99).toFixed(1)} ms (p99); the follower had the first flush ${startMs.toFixed(0)} ms after it was spawned`);
  const row = { case: 'follow', unit: 'ms', higherIsBetter: false, note: `${lat.length} flushes of 1 B..256 KiB, ${PAUSE_MS} ms apart` };
  ctx.rows.push({ ...row, metric: 'writer flush() called -> cat --follow (another process) has the bytes, median', ours: median(lat), target: '< 20 ms' });
  ctx.rows.push({ ...row, metric: 'writer flush() called -> cat --follow (another process) has the bytes, p99', ours: percentile(lat, 99), target: '< 100 ms' });
  ctx.rows.push({ ...row, metric: 'writer flush() called -> cat --follow has the bytes, max', ours: Math.max(...lat) });
  ctx.rows.push({ ...row, metric: 'cat --follow spawned -> has the first flushed bytes (start-up)', ours: startMs });
}
