import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore, connect } from '../../src/index.js';
import { type BenchContext, MB, median, timeAsync, time, hasTool } from './harness.js';
import { baseAndEdited, baseStore } from './files.js';

const CLI = fileURLToPath(new URL('../cli.js', import.meta.url));

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** Peak RSS (VmHWM) of a live process, in MB. */
function peakRss(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? (Number(m[1]) * 1024) / MB : null;
  } catch {
    return null;
  }
}

function startServer(root: string, tokenFile: string): Promise<{ child: ChildProcess; url: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, '--store', root, 'serve', '--token-file', tokenFile], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving (ws:\/\/\S+)/.exec(out);
      if (m) resolve({ child, url: m[1]! });
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}`)));
  });
}

function rsyncStats(out: string): number {
  const sent = /Total bytes sent: ([\d,]+)/.exec(out);
  const recv = /Total bytes received: ([\d,]+)/.exec(out);
  return Number(sent![1]!.replace(/,/g, '')) + Number(recv![1]!.replace(/,/g, ''));
}

/**
 * Pull of `edited` over ws on loopback into a store holding `base`: bytes on
 * the wire and wall time, beside rsync against a daemon on 127.0.0.1 and
 * casync extract --seed; and the full copy beside rsync of the whole file.
 */
export async function benchTransfer(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const { base, edited } = await baseAndEdited(ctx);
  const label = `transfer ${Math.round(size / 2 ** 20)} MiB, 100 edits`;

  // The sender: a store holding edited, served by the CLI in a child process.
  const src = path.join(ctx.workDir, 'store-sender');
  fs.rmSync(src, { recursive: true, force: true });
  const a = await BlobStore.open(src);
  const w = await a.newBlobWriter();
  await w.appendBytes({ file: edited });
  await w.close();
  const name = w.name;
  await a.close();
  const tokenFile = path.join(ctx.workDir, 'tokens');
  fs.writeFileSync(tokenFile, 'bench read\n');
  const server = await startServer(src, tokenFile);

  try {
    // The receiver holds base (shared with the other cases: copy it).
    const { root: baseRoot } = await baseStore(ctx);
    const recv = path.join(ctx.workDir, 'store-receiver');
    fs.rmSync(recv, { recursive: true, force: true });
    execFileSync('cp', ['-a', baseRoot, recv]);
    const b = await BlobStore.open(recv);
    const wire: number[] = [];
    const wall: number[] = [];
    for (let i = 0; i < ctx.runs; i++) {
      const c = await connect(b, server.url, { token: 'bench' });
      const [, secs] = await timeAsync(() => c.pull(name));
      wall.push(secs);
      wire.push(c.wire.sent + c.wire.received);
      await c.close();
      await b.deleteBlob(name);
      await b.gc();
    }
    // Full copy into an empty store.
    const full: number[] = [];
    const fullWire: number[] = [];
    for (let i = 0; i < Math.min(ctx.runs, 2); i++) {
      const root = path.join(ctx.workDir, 'store-empty');
      fs.rmSync(root, { recursive: true, force: true });
      const e = await BlobStore.open(root);
      const c = await connect(e, server.url, { token: 'bench' });
      const [, secs] = await timeAsync(() => c.pull(name));
      full.push(size / MB / secs);
      fullWire.push(c.wire.sent + c.wire.received);
      await c.close();
      await e.close();
      fs.rmSync(root, { recursive: true, force: true });
    }
    await b.close();
    fs.rmSync(recv, { recursive: true, force: true });
    const serverRss = peakRss(server.child.pid!);

    const rows = {
      bytes: { case: label, metric: 'update: bytes on the wire', unit: 'MB', ours: median(wire) / MB, higherIsBetter: false, target: '<= 1.0x rsync' },
      time: { case: label, metric: 'update: wall time', unit: 's', ours: median(wall), higherIsBetter: false, target: '<= 1.0x rsync' },
      full: { case: label, metric: 'full copy', unit: 'MB/s', ours: median(full), higherIsBetter: true },
    };
    if (hasTool('rsync')) {
      const port = await freePort();
      const modDir = path.join(ctx.workDir, 'rsync-src');
      fs.mkdirSync(modDir, { recursive: true });
      fs.copyFileSync(edited, path.join(modDir, 'edited.bin'));
      const conf = path.join(ctx.workDir, 'rsyncd.conf');
      fs.writeFileSync(conf, `use chroot = no\npid file = ${ctx.workDir}/rsyncd.pid\n[m]\npath = ${modDir}\nread only = yes\n`);
      const daemon = spawn('rsync', ['--daemon', '--no-detach', `--config=${conf}`, `--port=${port}`, '--address=127.0.0.1'], { stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 500));
      try {
        const dest = path.join(ctx.workDir, 'rsync-dest');
        const rb: number[] = [];
        const rt: number[] = [];
        for (let i = 0; i < ctx.runs; i++) {
          fs.rmSync(dest, { recursive: true, force: true });
          fs.mkdirSync(dest);
          fs.copyFileSync(base, path.join(dest, 'edited.bin'));
          const [out, secs] = time(() => execFileSync('rsync', ['--stats', `rsync://127.0.0.1:${port}/m/edited.bin`, path.join(dest, 'edited.bin')], { encoding: 'utf8' }));
          rb.push(rsyncStats(out));
          rt.push(secs);
        }
        const fr: number[] = [];
        for (let i = 0; i < Math.min(ctx.runs, 2); i++) {
          fs.rmSync(dest, { recursive: true, force: true });
          fs.mkdirSync(dest);
          fr.push(size / MB / time(() => execFileSync('rsync', ['--stats', `rsync://127.0.0.1:${port}/m/edited.bin`, path.join(dest, 'edited.bin')], { encoding: 'utf8' }))[1]);
        }
        fs.rmSync(dest, { recursive: true, force: true });
        ctx.rows.push({ ...rows.bytes, peer: 'rsync daemon, 127.0.0.1', peerValue: median(rb) / MB });
        ctx.rows.push({ ...rows.time, peer: 'rsync daemon, 127.0.0.1', peerValue: median(rt) });
        ctx.rows.push({ ...rows.full, peer: 'rsync, whole file', peerValue: median(fr) });
      } finally {
        daemon.kill();
      }
    } else {
      ctx.log('rsync not installed: apt-get install rsync');
      ctx.rows.push(rows.bytes, rows.time, rows.full);
    }
    if (hasTool('casync')) {
      const dir = path.join(ctx.workDir, 'casync-x');
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir);
      execFileSync('casync', ['make', '--chunk-size=16384:65536:262144', `--store=${dir}/s.castr`, `${dir}/edited.caibx`, edited]);
      const ct: number[] = [];
      for (let i = 0; i < ctx.runs; i++) {
        fs.rmSync(`${dir}/out.bin`, { force: true });
        ct.push(time(() => execFileSync('casync', ['extract', `--store=${dir}/s.castr`, `--seed=${base}`, `${dir}/edited.caibx`, `${dir}/out.bin`]))[1]);
      }
      fs.rmSync(dir, { recursive: true, force: true });
      ctx.rows.push({ ...rows.time, target: undefined, peer: 'casync extract --seed (local)', peerValue: median(ct) });
    } else ctx.log('casync not installed: apt-get install casync');
    if (serverRss !== null) ctx.rows.push({ case: label, metric: 'peak RSS, serving side', unit: 'MB', ours: serverRss, higherIsBetter: false, target: '< 300 MB' });
  } finally {
    server.child.kill('SIGTERM');
  }
}
