// The start-up case (issue 15, item 5): how long the CLI takes to do
// little, beside `node -e 0` (Node's own start-up, which no command can
// beat); a pull of a small blob into an empty store beside rsync of the same
// file; and the first pull after `serve` starts against later ones, for a
// small blob and a 64 MiB one.
import fs from 'node:fs';
import path from 'node:path';
import { type BenchContext, type Row, median } from './harness.js';
import { dataFile, storeOf } from './files.js';
import { cabstore, run, serveStore } from './processes.js';
import { rsyncDaemon } from './rsync.js';

const SMALL = 64 * 1024;
const LARGE = 64 * 2 ** 20;
/** Tries of each short command: they are short, and the machine is noisy. */
const TRIES = 15;

export async function benchStart(ctx: BenchContext): Promise<void> {
  const label = 'start';
  const ms = async (cmd: () => Promise<{ secs: number }>, tries = TRIES) => {
    const xs: number[] = [];
    for (let i = 0; i < tries; i++) xs.push((await cmd()).secs * 1000);
    return median(xs);
  };
  const node = await ms(() => run(process.execPath, ['-e', '0']));
  const help = await ms(() => cabstore(['--help']));
  const version = await ms(() => cabstore(['--version']));
  const nodeRow = { case: label, unit: 'ms', peer: 'node -e 0', peerValue: node, higherIsBetter: false };
  ctx.rows.push({ ...nodeRow, metric: 'cabstore --help', ours: help, target: '<= 1.5x node -e 0' });
  ctx.rows.push({ ...nodeRow, metric: 'cabstore --version', ours: version, target: '<= 1.5x node -e 0' });

  const small = await dataFile(ctx, 'start-small', SMALL);
  const large = await dataFile(ctx, 'start-large', LARGE);
  const src = path.join(ctx.workDir, 'store-start');
  const names = await storeOf(src, [small, large]);

  const dest = path.join(ctx.workDir, 'store-start-dest');
  const pull = async (url: string, name: string) => {
    fs.rmSync(dest, { recursive: true, force: true });
    return cabstore(['--store', dest, 'pull', url, name]);
  };
  // Each round starts a server and pulls each blob three times: the first pull, then warm ones.
  const first = [[], []] as number[][];
  const warm = [[], []] as number[][];
  for (let round = 0; round < Math.max(3, ctx.runs); round++) {
    const server = await serveStore(src, ctx.workDir);
    try {
      for (const [i, name] of names.entries()) {
        first[i]!.push((await pull(server.url, name)).secs * 1000);
        for (let k = 0; k < 2; k++) warm[i]!.push((await pull(server.url, name)).secs * 1000);
      }
    } finally {
      await server.stop();
      fs.rmSync(dest, { recursive: true, force: true });
    }
  }
  ctx.log(`first pulls after serve starts: ${first.map((xs) => xs.map((x) => x.toFixed(0)).join(' ')).join(' | ')} ms; warm: ${warm.map((xs) => xs.map((x) => x.toFixed(0)).join(' ')).join(' | ')} ms`);
  const pullSmall = median(warm[0]!);
  ctx.rows.push({ ...nodeRow, metric: 'pull of a 64 KiB blob into an empty store, CLI', ours: pullSmall, target: 'near node -e 0' });
  const rsync = await rsyncDaemon(ctx.workDir, { 'small.bin': small });
  const peer: Partial<Row> = { peer: 'rsync of the file, daemon (peer missing)', peerValue: null };
  if (rsync) {
    try {
      const to = path.join(ctx.workDir, 'start-small.copy');
      peer.peer = 'rsync of the file, daemon';
      peer.peerValue = await ms(async () => {
        fs.rmSync(to, { force: true });
        return rsync.pull('small.bin', to);
      });
      fs.rmSync(to, { force: true });
    } finally {
      await rsync.stop();
    }
  } else ctx.log('peer missing: rsync (apt-get install rsync)');
  ctx.rows.push({ case: label, metric: 'pull of a 64 KiB blob into an empty store, CLI', unit: 'ms', ours: pullSmall, ...peer, higherIsBetter: false });
  for (const [i, what] of ['64 KiB', '64 MiB'].entries()) {
    ctx.rows.push({ case: label, metric: `first CLI pull of a ${what} blob after serve starts / warm`, unit: 'x', ours: median(first[i]!) / median(warm[i]!), higherIsBetter: false, target: '<= 1.2x' });
  }
  fs.rmSync(src, { recursive: true, force: true });
}
