// The processes the transfer and start-up cases run: the cabstore CLI as a
// user runs it (wall time from spawn to exit, and its peak RSS), `cabstore
// serve` in a child, and the peers' daemons. Everything is spawned
// asynchronously, so that a proxy in the bench process keeps forwarding
// while a child runs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MB } from './harness.js';

/** The package's bin, the bundle of dist/tools/cli.js (scripts/bundle.mjs). */
export const CLI = fileURLToPath(new URL('../../bin/cabstore.js', import.meta.url));
const RSS_HOOK = new URL('./rss-hook.js', import.meta.url).href;

/** The token of the bench's servers (read only). */
export const BENCH_TOKEN = 'bench';

export interface Run {
  /** Wall time from spawn to exit. */
  secs: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end; a failure (exit code not 0) throws, with its stderr. */
export function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => {
      const r = { secs: (performance.now() - t) / 1000, code, stdout, stderr };
      if (code === 0) resolve(r);
      else reject(new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${code}: ${stderr.trim()}`));
    });
  });
}

let rssFiles = 0;

/** `cabstore ARGS` as a user runs it, with the token of the bench's servers; `rss` also reports its peak RSS (MB). */
export async function cabstore(args: string[], o: { rss?: boolean } = {}): Promise<Run & { rssMB: number | null }> {
  const env: Record<string, string> = { CABSTORE_TOKEN: BENCH_TOKEN };
  const pre: string[] = [];
  let rssFile: string | undefined;
  if (o.rss) {
    rssFile = path.join(os.tmpdir(), `cabstore-bench-rss-${process.pid}-${rssFiles++}`);
    env.CABSTORE_BENCH_RSS = rssFile;
    pre.push('--import', RSS_HOOK);
  }
  const r = await run(process.execPath, [...pre, CLI, ...args], env);
  let rssMB: number | null = null;
  if (rssFile) {
    rssMB = Number(fs.readFileSync(rssFile, 'utf8')) / MB;
    fs.rmSync(rssFile, { force: true });
  }
  return { ...r, rssMB };
}

/** The last line of a `--json` command's output. */
export function jsonOut<T>(r: Run): T {
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

/** Peak RSS (VmHWM) of a live process, in MB. */
export function peakRss(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? (Number(m[1]) * 1024) / MB : null;
  } catch {
    return null;
  }
}

export interface Served {
  readonly child: ChildProcess;
  readonly url: string;
  readonly port: number;
  /** Peak RSS so far (MB). */
  peakRss(): number | null;
  /** SIGTERM, and wait for the exit. */
  stop(): Promise<void>;
}

/** `cabstore serve` of `root` in a child process, with the bench's token (read only unless `perms` says more), and `env` added to ours. */
export async function serveStore(root: string, workDir: string, perms = 'read', env: Record<string, string> = {}): Promise<Served> {
  const tokenFile = path.join(workDir, 'tokens');
  fs.writeFileSync(tokenFile, `${BENCH_TOKEN} ${perms}\n`);
  const child = spawn(process.execPath, [CLI, '--store', root, 'serve', '--quiet', '--token-file', tokenFile], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving (ws:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`cabstore serve exited ${code}`)));
  });
  return {
    child,
    url,
    port: Number(new URL(url).port),
    peakRss: () => peakRss(child.pid!),
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** CPU seconds (user + system, every thread) a live process has used so far, from /proc (null elsewhere). */
export function processCpu(pid: number): number | null {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ: 100 on Linux)
  } catch {
    return null;
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** Resolves once something accepts connections on 127.0.0.1:port (a daemon started). */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nothing listens on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
