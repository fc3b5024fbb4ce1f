// The multi case (issue 17): fetchBlob of `base` into an empty store from
// three `cabstore serve` child processes at once, beside the same pull
// from one of them (the peer, same run, same servers, runs alternating).
// All three serve the same store directory (a store may be open in many
// processes), so that the servers read the same page cache and the
// comparison is of the pull, not of three disks. Rows: MB/s of each, and
// CPU seconds per GiB of the puller (this process) and of the servers
// together: on two cores, what the pull costs matters as much as its
// wall time.
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, fetchBlob, type FetchStats } from '../../src/index.js';
import { type BenchContext, MB, median, timeAsync } from './harness.js';
import { baseStore } from './files.js';
import { BENCH_TOKEN, serveStore, type Served } from './processes.js';

const GiB = 2 ** 30;

/** CPU seconds (user + system) a process has used so far: /proc/PID/stat fields 14 and 15, in clock ticks. */
function cpuOf(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;
}

function ownCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

interface Pulled {
  mbps: number;
  /** CPU seconds per GiB: this process, the servers. */
  cpu: number;
  serverCpu: number;
  stats: FetchStats;
}

async function pullFrom(ctx: BenchContext, name: string, servers: Served[]): Promise<Pulled> {
  const empty = path.join(ctx.workDir, 'store-multi-pull');
  fs.rmSync(empty, { recursive: true, force: true });
  const s = await BlobStore.open(empty);
  try {
    const cpu0 = ownCpu();
    const srv0 = servers.reduce((n, x) => n + cpuOf(x.child.pid!), 0);
    const [stats, secs] = await timeAsync(() => fetchBlob(s, name, { from: servers.map((x) => x.url), token: BENCH_TOKEN }));
    const per = ctx.sizeBytes / GiB;
    return {
      mbps: ctx.sizeBytes / MB / secs,
      cpu: (ownCpu() - cpu0) / per,
      serverCpu: (servers.reduce((n, x) => n + cpuOf(x.child.pid!), 0) - srv0) / per,
      stats,
    };
  } finally {
    await s.close();
    fs.rmSync(empty, { recursive: true, force: true });
  }
}

export async function benchMulti(ctx: BenchContext): Promise<void> {
  const { root, name } = await baseStore(ctx);
  const servers: Served[] = [];
  try {
    for (let i = 0; i < 3; i++) servers.push(await serveStore(root, ctx.workDir));
    const one: Pulled[] = [];
    const three: Pulled[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      // Which goes first alternates: on a shared machine the load drifts.
      if (i % 2 === 0) one.push(await pullFrom(ctx, name, servers.slice(0, 1)));
      three.push(await pullFrom(ctx, name, servers));
      if (i % 2 === 1) one.push(await pullFrom(ctx, name, servers.slice(0, 1)));
      const t = three[i]!;
      ctx.log(
        `run ${i + 1}: one ${one[i]!.mbps.toFixed(0)} MB/s (cpu ${one[i]!.cpu.toFixed(2)} + ${one[i]!.serverCpu.toFixed(2)} s/GiB), ` +
          `three ${t.mbps.toFixed(0)} MB/s (cpu ${t.cpu.toFixed(2)} + ${t.serverCpu.toFixed(2)} s/GiB; ` +
          `${t.stats.sources.map((s) => `${(s.receivedBytes / MB).toFixed(0)} MB`).join(' / ')})`,
      );
    }
    const label = { case: `multi ${Math.round(ctx.sizeBytes / 2 ** 20)} MiB` };
    const m = (xs: Pulled[], f: (p: Pulled) => number) => median(xs.map(f));
    const share = three.map((p) => Math.max(...p.stats.sources.map((s) => s.receivedBytes)) / ctx.sizeBytes);
    ctx.rows.push(
      { ...label, metric: 'pull from 3 servers at once', unit: 'MB/s', ours: m(three, (p) => p.mbps), peer: 'pull from 1 of them', peerValue: m(one, (p) => p.mbps), higherIsBetter: true, target: '>= 1.0x one server' },
      { ...label, metric: 'puller CPU, 3 servers', unit: 's/GiB', ours: m(three, (p) => p.cpu), peer: 'pull from 1 of them', peerValue: m(one, (p) => p.cpu), higherIsBetter: false },
      { ...label, metric: 'servers CPU together, 3 servers', unit: 's/GiB', ours: m(three, (p) => p.serverCpu), peer: 'pull from 1 of them', peerValue: m(one, (p) => p.serverCpu), higherIsBetter: false },
      { ...label, metric: 'CPU of puller and servers, 3 servers', unit: 's/GiB', ours: m(three, (p) => p.cpu + p.serverCpu), peer: 'pull from 1 of them', peerValue: m(one, (p) => p.cpu + p.serverCpu), higherIsBetter: false, note: "loopback TCP's receive work is charged to whichever process runs: it moves from the puller to the servers" },
      { ...label, metric: 'largest share one server sent, 3 servers', unit: '%', ours: 100 * median(share), higherIsBetter: false, note: 'work stealing: about 33% when they are alike' },
    );
  } finally {
    for (const s of servers) await s.stop();
  }
}
