// The transfer case: `edited` pulled from `cabstore serve` (a child
// process) by a store holding `base`, beside rsync updating a copy of base
// to edited from a daemon on 127.0.0.1, in the same run. Update pulls go
// through a counting TCP proxy (rsync's through one too: both pay the same
// hop); full copies go direct. Rows, with the targets of issue 15: bytes on
// the wire, wall time of a CLI pull and of a library pull, the first pull
// after serve starts against a warm one, the receiver's store growth against
// the bytes received, a resume through a proxy cutting every connection, the
// full copy into an empty store against rsync's whole-file copy, and peak RSS
// of both sides.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BlobStore, connect, type TransferStats } from '../../src/index.js';
import { Layout } from '../../src/format/layout.js';
import { dropConnection, tcpProxy, type TcpProxy } from '../proxy.js';
import { type BenchContext, type Row, MB, median, timeAsync, time, hasTool } from './harness.js';
import { baseAndEdited, baseStore, du, storeOf } from './files.js';
import { BENCH_TOKEN, cabstore, jsonOut, serveStore, type Served } from './processes.js';
import { rsyncDaemon, type RsyncDaemon } from './rsync.js';

const MiB = 2 ** 20;
/** Where the resume proxy cuts every connection (server-to-client bytes). */
const CUT_EVERY = 6 * MiB;
const PEER_MISSING = (tool: string, pkg: string) => `peer missing: ${tool} (apt-get install ${pkg})`;

/** What one run of the case keeps: the rows' figures, filled as it goes. */
interface Figures {
  wire: number[];
  cliSecs: number[];
  firstSecs: number[];
  /** The first library pull in this process (V8 compiles the pull's code as it goes). */
  libFirst: number[];
  libSecs: number[];
  growth: number[];
  received: number[];
  fullCli: number[];
  fullLib: number[];
  cliRss: number[];
  serverRss: number[];
}

export async function benchTransfer(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { base, edited } = await baseAndEdited(ctx);
  const label = `transfer ${Math.round(size / MiB)} MiB, 100 edits`;
  const src = path.join(ctx.workDir, 'store-sender');
  const [name] = (await storeOf(src, [edited])) as [string];
  const recv = path.join(ctx.workDir, 'store-receiver');
  fs.rmSync(recv, { recursive: true, force: true });
  execFileSync('cp', ['-a', (await baseStore(ctx)).root, recv]);
  const f: Figures = { wire: [], cliSecs: [], firstSecs: [], libFirst: [], libSecs: [], growth: [], received: [], fullCli: [], fullLib: [], cliRss: [], serverRss: [] };

  let server: Served | undefined;
  const restart = async () => {
    if (server) {
      f.serverRss.push(server.peakRss() ?? 0);
      await server.stop();
    }
    server = await serveStore(src, ctx.workDir);
  };
  await restart();
  const proxy = await tcpProxy(() => server!.port);
  const rsync = await rsyncDaemon(ctx.workDir, { 'edited.bin': edited });
  const rsyncProxy = rsync ? await tcpProxy(() => rsync.port) : undefined;
  try {
    // The CLI pull: each round starts a server, pulls once (the first pull) and again (warm).
    const cliPull = async (first: boolean) => {
      const before = { wire: proxy.totalUp + proxy.totalDown, cas: du(new Layout(recv).casRoot) };
      const r = await cabstore(['--json', '--store', recv, 'pull', proxy.url, name], { rss: true });
      (first ? f.firstSecs : f.cliSecs).push(r.secs);
      f.wire.push(proxy.totalUp + proxy.totalDown - before.wire);
      f.growth.push(du(new Layout(recv).casRoot) - before.cas);
      f.received.push(jsonOut<TransferStats>(r).receivedBytes);
      if (r.rssMB !== null) f.cliRss.push(r.rssMB);
      await forget(recv, name);
    };
    for (let round = 0; round < ctx.runs; round++) {
      if (round > 0) await restart();
      await cliPull(true);
      await cliPull(false);
    }
    ctx.log(`CLI pulls: first ${f.firstSecs.map((s) => s.toFixed(2)).join(', ')} s, warm ${f.cliSecs.map((s) => s.toFixed(2)).join(', ')} s`);

    // The library pull, in this process, the server warm: the first pull in the process, then `runs`
    // more (an application embedding the store pulls in a process already running).
    for (let i = 0; i <= ctx.runs; i++) {
      const s = await BlobStore.open(recv);
      const [, secs] = await timeAsync(async () => {
        const c = await connect(s, proxy.url, { token: BENCH_TOKEN });
        await c.pull(name);
        await c.close();
      });
      (i === 0 ? f.libFirst : f.libSecs).push(secs);
      await s.close();
      await forget(recv, name);
    }

    // The full copy into an empty store, direct (no proxy).
    const empty = path.join(ctx.workDir, 'store-empty');
    for (let i = 0; i < Math.min(ctx.runs, 2); i++) {
      fs.rmSync(empty, { recursive: true, force: true });
      const r = await cabstore(['--store', empty, 'pull', server!.url, name], { rss: true });
      f.fullCli.push(size / MB / r.secs);
      if (r.rssMB !== null) f.cliRss.push(r.rssMB);
      fs.rmSync(empty, { recursive: true, force: true });
      const s = await BlobStore.open(empty);
      const [, secs] = await timeAsync(async () => {
        const c = await connect(s, server!.url, { token: BENCH_TOKEN });
        await c.pull(name);
        await c.close();
      });
      f.fullLib.push(size / MB / secs);
      await s.close();
      fs.rmSync(empty, { recursive: true, force: true });
    }

    const resume = await resumeThroughCuts(ctx, server!, name);
    ctx.log(`resume through cuts every ${CUT_EVERY / MiB} MiB: ${resume.connections} connections, ${(resume.bytes / MB).toFixed(1)} MB moved`);

    f.serverRss.push(server!.peakRss() ?? 0);
    const peers = rsync ? await rsyncFigures(ctx, rsync, rsyncProxy!, base) : undefined;
    if (!rsync) ctx.log(PEER_MISSING('rsync', 'rsync'));
    ctx.rows.push(...transferRows(label, size, f, resume, peers));
    casyncRow(ctx, label, base, edited, f);
  } finally {
    await proxy.close();
    await rsyncProxy?.close();
    await rsync?.stop();
    await server?.stop();
    fs.rmSync(recv, { recursive: true, force: true });
  }
}

/** The receiver as it was before a pull: the pulled blob deleted, its new fragments collected. */
async function forget(root: string, name: string): Promise<void> {
  const s = await BlobStore.open(root);
  try {
    await s.deleteBlob(name);
    await s.gc();
  } finally {
    await s.close();
  }
}

/**
 * A pull into an empty store through a proxy that cuts every connection
 * after CUT_EVERY bytes to the client; each cut is followed by a new
 * connection and pull, as a user retrying would, until the pull completes.
 */
async function resumeThroughCuts(ctx: BenchContext, server: Served, name: string): Promise<{ connections: number; bytes: number }> {
  const root = path.join(ctx.workDir, 'store-resume');
  fs.rmSync(root, { recursive: true, force: true });
  const cutter: TcpProxy = await tcpProxy(() => server.port, { every: { budget: CUT_EVERY, onCut: dropConnection } });
  const s = await BlobStore.open(root);
  // Each connection moves CUT_EVERY bytes: far more tries than that means the pull does not resume.
  const tries = 10 + Math.ceil((2 * ctx.sizeBytes) / CUT_EVERY);
  try {
    for (let i = 0; ; i++) {
      try {
        const c = await connect(s, cutter.url, { token: BENCH_TOKEN });
        try {
          await c.pull(name);
          break;
        } finally {
          await c.close().catch(() => {});
        }
      } catch (e) {
        if (i >= tries) throw new Error(`the pull through cuts did not finish in ${tries} connections`, { cause: e });
      }
    }
    return { connections: cutter.connections, bytes: cutter.totalDown + cutter.totalUp };
  } finally {
    await s.close();
    await cutter.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

interface RsyncFigures {
  bytes: number[];
  secs: number[];
  whole: number[];
}

/** rsync updating a copy of base to edited through the same kind of proxy, and copying edited whole into an empty folder. */
async function rsyncFigures(ctx: BenchContext, rsync: RsyncDaemon, proxy: TcpProxy, base: string): Promise<RsyncFigures> {
  const dest = path.join(ctx.workDir, 'rsync-dest');
  const r: RsyncFigures = { bytes: [], secs: [], whole: [] };
  try {
    for (let i = 0; i < ctx.runs; i++) {
      fs.rmSync(dest, { recursive: true, force: true });
      fs.mkdirSync(dest);
      fs.copyFileSync(base, path.join(dest, 'edited.bin'));
      const x = await rsync.pull('edited.bin', path.join(dest, 'edited.bin'), { port: proxy.port });
      r.bytes.push(x.bytes);
      r.secs.push(x.secs);
    }
    for (let i = 0; i < Math.min(ctx.runs, 2); i++) {
      fs.rmSync(dest, { recursive: true, force: true });
      fs.mkdirSync(dest);
      const x = await rsync.pull('edited.bin', path.join(dest, 'edited.bin'), { flags: ['--whole-file'] });
      r.whole.push(ctx.sizeBytes / MB / x.secs);
    }
  } finally {
    fs.rmSync(dest, { recursive: true, force: true });
  }
  return r;
}

function transferRows(label: string, size: number, f: Figures, resume: { connections: number; bytes: number }, p: RsyncFigures | undefined): Row[] {
  const rsync = (metric: string, values: number[] | undefined) => (p ? { peer: metric, peerValue: median(values!) } : { peer: `${metric} (peer missing)`, peerValue: null });
  const upd = rsync('rsync daemon, 127.0.0.1', p?.bytes.map((b) => b / MB));
  const updTime = rsync('rsync daemon, 127.0.0.1', p?.secs);
  const whole = rsync('rsync --whole-file, daemon', p?.whole);
  const c = { case: label };
  const maxOf = (xs: number[]) => (xs.length ? Math.max(...xs) : null);
  const growth = median(f.growth);
  const received = median(f.received);
  return [
    { ...c, metric: 'update: bytes on the wire', unit: 'MB', ours: median(f.wire) / MB, ...upd, higherIsBetter: false, target: '<= 0.5x rsync' },
    { ...c, metric: 'update: CLI pull, wall time', unit: 's', ours: median(f.cliSecs), ...updTime, higherIsBetter: false, target: size >= 2 ** 30 ? '<= 1.0x rsync' : '<= 1.5x rsync' },
    { ...c, metric: 'update: library pull, server warm, first in the process', unit: 's', ours: median(f.libFirst), ...updTime, higherIsBetter: false },
    { ...c, metric: 'update: library pull, server warm, process warm', unit: 's', ours: median(f.libSecs), ...updTime, higherIsBetter: false, target: '<= 1.0x rsync' },
    { ...c, metric: 'update: first CLI pull after serve starts / warm', unit: 'x', ours: median(f.firstSecs) / median(f.cliSecs), higherIsBetter: false, target: '<= 1.2x' },
    {
      ...c,
      metric: 'update: receiver store growth',
      unit: 'MB',
      ours: growth / MB,
      peer: 'bytes received',
      peerValue: received / MB,
      higherIsBetter: false,
      target: '<= 2x received + 64 KiB',
      note: growth <= 2 * received + 65536 ? 'met' : 'missed',
    },
    { ...c, metric: `resume, cut every ${CUT_EVERY / MiB} MiB: bytes moved / blob`, unit: 'x', ours: resume.bytes / size, higherIsBetter: false, target: '<= 1.05x' },
    { ...c, metric: `resume, cut every ${CUT_EVERY / MiB} MiB: connections`, unit: 'n', ours: resume.connections, higherIsBetter: false, target: `(${Math.ceil(size / CUT_EVERY)} at the least)` },
    { ...c, metric: 'full copy into an empty store, CLI', unit: 'MB/s', ours: median(f.fullCli), ...whole, higherIsBetter: true, target: '>= 500 MB/s, >= 0.5x rsync' },
    { ...c, metric: 'full copy into an empty store, library', unit: 'MB/s', ours: median(f.fullLib), ...whole, higherIsBetter: true, target: '>= 500 MB/s, >= 0.5x rsync' },
    { ...c, metric: 'peak RSS, server (cabstore serve)', unit: 'MB', ours: maxOf(f.serverRss), higherIsBetter: false, target: '< 300 MB' },
    { ...c, metric: 'peak RSS, client (cabstore pull)', unit: 'MB', ours: maxOf(f.cliRss), higherIsBetter: false, target: '< 300 MB' },
  ];
}

/** casync extract --seed of edited from a local chunk store, base as the seed, beside the library pull. */
function casyncRow(ctx: BenchContext, label: string, base: string, edited: string, f: Figures): void {
  const row: Row = { case: label, metric: 'update: library pull, server warm, process warm', unit: 's', ours: median(f.libSecs), higherIsBetter: false };
  if (!hasTool('casync')) {
    ctx.log(PEER_MISSING('casync', 'casync'));
    ctx.rows.push({ ...row, peer: 'casync extract --seed (peer missing)', peerValue: null });
    return;
  }
  const dir = path.join(ctx.workDir, 'casync-x');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir);
  try {
    execFileSync('casync', ['make', '--chunk-size=16384:65536:262144', `--store=${dir}/s.castr`, `${dir}/edited.caibx`, edited]);
    const ct: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      fs.rmSync(`${dir}/out.bin`, { force: true });
      ct.push(time(() => execFileSync('casync', ['extract', `--store=${dir}/s.castr`, `--seed=${base}`, `${dir}/edited.caibx`, `${dir}/out.bin`]))[1]);
    }
    ctx.rows.push({ ...row, peer: 'casync extract --seed (local)', peerValue: median(ct) });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
