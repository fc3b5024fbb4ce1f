// The http case: the HTTP face of `cabstore serve` beside the plain thing,
// each server a child process, the client (this process) on 127.0.0.1, in
// the same run. Uploads: tus-js-client sending a file (one PATCH) to ours
// (chunked, hashed, deduplicated, a checkpoint every 4 MiB, durable before
// the answer) and to @tus/server with its own @tus/file-store (bytes
// appended to a file, no fsync); ours a second time with
// NODE_OPTIONS=--max-semi-space-size=1 (see BENCHMARKS.md: V8's heuristics
// run a full GC every 15 MiB or so of an upload in a process whose heap is
// as small as serve's). Besides the speed, each server's CPU time (every
// thread; and the main thread and the busiest other one apart) per GiB
// uploaded, and the client's: the machine is shared, and CPU time moves less
// than wall time. Reads: a GET of the whole blob from our /blobs/NAME
// (every byte checked against its chunk hash) and from a server piping
// fs.createReadStream to the response. Each upload goes to a fresh store or
// folder, so dedup plays no part.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore } from '../../src/index.js';
import { type BenchContext, MB, median, timeAsync } from './harness.js';
import { dataFile } from './files.js';
import { BENCH_TOKEN as TOKEN, processCpu, serveStore } from './processes.js';
import { tusUploadFile } from './tus-kill.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const PEER = fileURLToPath(new URL('./tus-peer.js', import.meta.url));
/** The environment of the second run of ours. */
const SMALL_YOUNG_GEN = { NODE_OPTIONS: '--max-semi-space-size=1' };

interface Upload {
  mbps: number;
  /** Server CPU seconds per GiB uploaded. */
  cpu: number | null;
  /** The same, of the server's main thread and of its busiest other thread (ours: the hashing thread). */
  main: number | null;
  next: number | null;
  /** CPU seconds per GiB of this process (the client, tus-js-client) over the upload. */
  client: number | null;
  /** The load average when the upload ended. */
  load: number;
}

/** CPU seconds (user + system) of each thread of a live process, by thread id, from /proc (empty elsewhere). */
function threadCpu(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        const st = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
        out.set(Number(tid), (Number(f[11]) + Number(f[12])) / 100);
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    // no /proc
  }
  return out;
}

/** Uploads `file` to the tus endpoint of a server process `pid`: speed, the server's CPU time per GiB (all of it, and its two busiest threads), the client's. */
async function timedUpload(endpoint: string, file: string, size: number, pid: number): Promise<Upload & { name: string }> {
  const cpu0 = processCpu(pid);
  const threads0 = threadCpu(pid);
  const client0 = processCpu(process.pid);
  const [up, secs] = await timeAsync(() => tusUploadFile(endpoint, file));
  const cpu1 = processCpu(pid);
  const client1 = processCpu(process.pid);
  const perGiB = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null ? null : ((b - a) * GiB) / size);
  const used = [...threadCpu(pid)].map(([tid, t]) => [tid, t - (threads0.get(tid) ?? 0)] as const);
  const others = used.filter(([tid]) => tid !== pid).sort((a, b) => b[1] - a[1]);
  return {
    name: up.name,
    mbps: size / MB / secs,
    cpu: perGiB(cpu0, cpu1),
    main: perGiB(0, used.find(([tid]) => tid === pid)?.[1]),
    next: perGiB(0, others[0]?.[1]),
    client: perGiB(client0, client1),
    load: os.loadavg()[0]!,
  };
}

/** `cabstore serve` of a fresh store: a tus upload and (unless `upOnly`) a GET of the blob; the server's peak RSS. */
async function ours(ctx: BenchContext, file: string, tag: string, env: Record<string, string>, upOnly: boolean): Promise<{ up: Upload; get?: number; rss: number | null }> {
  const dir = path.join(ctx.workDir, `http-store-${tag}`);
  fs.rmSync(dir, { recursive: true, force: true });
  await (await BlobStore.open(dir, { create: true })).close();
  const srv = await serveStore(dir, ctx.workDir, 'read,write', env);
  try {
    const base = `http://127.0.0.1:${srv.port}`;
    const up = await timedUpload(`${base}/files/`, file, ctx.sizeBytes, srv.child.pid!);
    if (upOnly) return { up, rss: srv.peakRss() };
    const [n, getSecs] = await timeAsync(() => download(`${base}/blobs/${up.name}`));
    if (n !== ctx.sizeBytes) throw new Error(`GET gave ${n} bytes of ${ctx.sizeBytes}`);
    return { up, get: ctx.sizeBytes / MB / getSecs, rss: srv.peakRss() };
  } finally {
    await srv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The peer: @tus/server with @tus/file-store, and fs.createReadStream piped to the response (tus-peer.ts). */
async function peer(ctx: BenchContext, file: string, tag: string): Promise<{ up: Upload; get: number }> {
  const folder = path.join(ctx.workDir, `http-tus-${tag}`);
  fs.rmSync(folder, { recursive: true, force: true });
  fs.mkdirSync(folder, { recursive: true });
  const child = spawn(process.execPath, [PEER, folder, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', r));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.once('data', (d: Buffer) => resolve(Number(/port (\d+)/.exec(d.toString())?.[1])));
      child.once('exit', (code) => reject(new Error(`tus-peer exited ${code}`)));
    });
    const base = `http://127.0.0.1:${port}`;
    const up = await timedUpload(`${base}/files/`, file, ctx.sizeBytes, child.pid!);
    const [n, getSecs] = await timeAsync(() => download(`${base}/plain`));
    if (n !== ctx.sizeBytes) throw new Error(`plain GET gave ${n} bytes of ${ctx.sizeBytes}`);
    return { up, get: ctx.sizeBytes / MB / getSecs };
  } finally {
    child.kill('SIGTERM');
    await exited;
    fs.rmSync(folder, { recursive: true, force: true });
  }
}

export async function benchHttp(ctx: BenchContext): Promise<void> {
  const file = await dataFile(ctx, 'http', ctx.sizeBytes);
  const label = `http ${Math.round(ctx.sizeBytes / MiB)} MiB`;
  const runs: Array<{ ours: Awaited<ReturnType<typeof ours>>; tuned: Awaited<ReturnType<typeof ours>>; peer: Awaited<ReturnType<typeof peer>> }> = [];
  for (let i = 0; i < ctx.runs; i++) {
    const r = { ours: await ours(ctx, file, `${i}`, {}, false), tuned: await ours(ctx, file, `${i}-tuned`, SMALL_YOUNG_GEN, true), peer: await peer(ctx, file, `${i}`) };
    runs.push(r);
    const cpu = (u: Upload) => (u.cpu === null ? '?' : u.cpu.toFixed(2));
    const f = (x: number | null) => (x === null ? '?' : x.toFixed(2));
    const threads = (what: string, u: Upload) => `${what} ${cpu(u)} (main ${f(u.main)}, next ${f(u.next)}; client ${f(u.client)}; load ${u.load.toFixed(1)})`;
    ctx.log(
      `run ${i + 1}: tus ${r.ours.up.mbps.toFixed(0)} (${cpu(r.ours.up)} s CPU/GiB), with ${SMALL_YOUNG_GEN.NODE_OPTIONS} ${r.tuned.up.mbps.toFixed(0)} (${cpu(r.tuned.up)}) vs ${r.peer.up.mbps.toFixed(0)} MB/s (${cpu(r.peer.up)}); ` +
        `GET ${r.ours.get!.toFixed(0)} vs ${r.peer.get.toFixed(0)} MB/s`,
    );
    ctx.log(`  CPU s/GiB by thread: ${threads('ours', r.ours.up)}; ${threads('tuned', r.tuned.up)}; ${threads('peer', r.peer.up)}`);
  }
  const med = (f: (r: (typeof runs)[number]) => number | null | undefined) => {
    const xs = runs.map(f).filter((x): x is number => typeof x === 'number');
    return xs.length ? median(xs) : null;
  };
  const row = { case: label, unit: 'MB/s', higherIsBetter: true };
  const tusPeer = { peer: '@tus/server + @tus/file-store', peerValue: med((r) => r.peer.up.mbps) };
  ctx.rows.push({ ...row, ...tusPeer, metric: 'tus upload (tus-js-client), durable', ours: med((r) => r.ours.up.mbps), target: '>= 0.8x the peer' });
  ctx.rows.push({ ...row, ...tusPeer, metric: `tus upload, serve with NODE_OPTIONS=${SMALL_YOUNG_GEN.NODE_OPTIONS}`, ours: med((r) => r.tuned.up.mbps), target: '>= 0.8x the peer' });
  const cpuRow = { case: label, unit: 's', higherIsBetter: false, peer: '@tus/server + @tus/file-store', peerValue: med((r) => r.peer.up.cpu) };
  ctx.rows.push({ ...cpuRow, metric: 'tus upload: server CPU per GiB, all threads', ours: med((r) => r.ours.up.cpu) });
  ctx.rows.push({ ...cpuRow, metric: `tus upload: server CPU per GiB, ${SMALL_YOUNG_GEN.NODE_OPTIONS}`, ours: med((r) => r.tuned.up.cpu) });
  ctx.rows.push({ ...cpuRow, metric: 'tus upload: server CPU per GiB, main thread', ours: med((r) => r.ours.up.main), peerValue: med((r) => r.peer.up.main) });
  ctx.rows.push({ ...cpuRow, metric: 'tus upload: client CPU per GiB (tus-js-client)', ours: med((r) => r.ours.up.client), peerValue: med((r) => r.peer.up.client) });
  ctx.rows.push({ ...row, metric: 'GET whole blob, verified', ours: med((r) => r.ours.get), peer: 'fs.createReadStream piped', peerValue: med((r) => r.peer.get) });
  ctx.rows.push({ case: label, unit: 'MB', higherIsBetter: false, metric: 'peak RSS, cabstore serve', ours: Math.max(...runs.map((r) => r.ours.rss ?? 0)), target: '< 300 MB' });
}

/** GETs `url` with the token and counts the body's bytes. */
function download(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
        if (res.statusCode !== 200) reject(new Error(`GET ${url}: ${res.statusCode}`));
        let n = 0;
        res.on('data', (d: Buffer) => (n += d.length));
        res.on('end', () => resolve(n));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}
