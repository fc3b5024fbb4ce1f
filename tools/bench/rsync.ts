// rsync, the transfer case's peer: a daemon on 127.0.0.1 serving one
// module of files, and pulls from it, timed, with the bytes its --stats
// counts.
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { hasTool } from './harness.js';
import { freePort, run, waitForPort } from './processes.js';

export interface RsyncDaemon {
  readonly port: number;
  /** Pulls `file` of the module into `dest` through `port` (a proxy in front of the daemon; default the daemon's). */
  pull(file: string, dest: string, o?: { port?: number; flags?: string[] }): Promise<{ secs: number; bytes: number }>;
  stop(): Promise<void>;
}

/** Total bytes sent + received, from rsync's --stats. */
function statsBytes(out: string): number {
  const sent = /Total bytes sent: ([\d,]+)/.exec(out);
  const recv = /Total bytes received: ([\d,]+)/.exec(out);
  if (!sent || !recv) throw new Error(`no byte counts in rsync --stats output: ${out}`);
  return Number(sent[1]!.replace(/,/g, '')) + Number(recv[1]!.replace(/,/g, ''));
}

/** An rsync daemon serving `files` (name in the module -> path), read only; undefined when rsync is not installed. */
export async function rsyncDaemon(workDir: string, files: Record<string, string>): Promise<RsyncDaemon | undefined> {
  if (!hasTool('rsync')) return undefined;
  const modDir = path.join(workDir, 'rsync-module');
  fs.rmSync(modDir, { recursive: true, force: true });
  fs.mkdirSync(modDir, { recursive: true });
  // Hard links where they can be made: the module costs no copy of a 1 GiB file.
  for (const [name, file] of Object.entries(files)) {
    try {
      fs.linkSync(file, path.join(modDir, name));
    } catch {
      fs.copyFileSync(file, path.join(modDir, name));
    }
  }
  const port = await freePort();
  const conf = path.join(workDir, 'rsyncd.conf');
  // Run as root, the daemon serves as `nobody` unless told otherwise, and nobody cannot read the bench's
  // folders (mkdtemp makes them 0700): it serves as the user who runs the bench.
  const ids = `uid = ${process.getuid?.() ?? 0}\ngid = ${process.getgid?.() ?? 0}\n`;
  fs.writeFileSync(conf, `use chroot = no\n${ids}pid file = ${workDir}/rsyncd.pid\n[m]\npath = ${modDir}\nread only = yes\n`);
  const daemon: ChildProcess = spawn('rsync', ['--daemon', '--no-detach', `--config=${conf}`, `--port=${port}`, '--address=127.0.0.1'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => daemon.once('exit', () => resolve()));
  await waitForPort(port);
  return {
    port,
    async pull(file, dest, o = {}) {
      const r = await run('rsync', ['--stats', ...(o.flags ?? []), `rsync://127.0.0.1:${o.port ?? port}/m/${file}`, dest]);
      return { secs: r.secs, bytes: statsBytes(r.stdout) };
    },
    async stop() {
      daemon.kill();
      await exited;
      fs.rmSync(modDir, { recursive: true, force: true });
    },
  };
}
