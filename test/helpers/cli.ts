// The built CLI (dist/bin/cabstore.js, the package's bin: the bundle of
// dist/tools/cli.js that `npm run build` makes) run as a user runs it: a
// child process with a clean environment, its exit code, stdout and stderr.
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';

export const CLI = fileURLToPath(new URL('../../bin/cabstore.js', import.meta.url));

// A bundle older than what tsc last built tests old code: say so rather than pass or fail on it.
const BUILT = fileURLToPath(new URL('../../tools/cli.js', import.meta.url));
if (!fs.existsSync(CLI) || fs.statSync(CLI).mtimeMs < fs.statSync(BUILT).mtimeMs) {
  throw new Error(`${CLI} is missing or older than ${BUILT}: run \`npm run bundle\` after tsc (npm run build does both)`);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
  /** stdout as text. */
  out: string;
}

export interface RunOptions {
  cwd?: string;
  /** Added to an environment from which CABSTORE_DIR and CABSTORE_TOKEN are removed, so the caller's shell does not leak in. */
  env?: Record<string, string>;
  /** The child's stdin (default 'ignore'): 'pipe' to write to it, or a file descriptor. */
  stdin?: 'ignore' | 'pipe' | number;
}

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.CABSTORE_DIR;
  delete env.CABSTORE_TOKEN;
  return { ...env, ...extra };
}

export function start(args: string[], o: RunOptions = {}): ChildProcess {
  const stdio: StdioOptions = [o.stdin ?? 'ignore', 'pipe', 'pipe'];
  return spawn(process.execPath, [CLI, ...args], { cwd: o.cwd, env: cleanEnv(o.env), stdio });
}

export function finished(c: ChildProcess, collectStdout = true): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    let err = '';
    if (collectStdout) c.stdout!.on('data', (d: Buffer) => out.push(d));
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    c.on('error', reject);
    c.on('close', (code, signal) => {
      const stdout = Buffer.concat(out);
      resolve({ code, signal, stdout, stderr: err, out: stdout.toString() });
    });
  });
}

/** Runs the CLI to the end. */
export function cli(args: string[], o: RunOptions = {}): Promise<RunResult> {
  return finished(start(args, o));
}

/** Runs the CLI with `--store dir`, asserts exit 0, returns stdout as text. */
export async function ok(t: ExecutionContext, dir: string, args: string[], o: RunOptions = {}): Promise<string> {
  const r = await cli(['--store', dir, ...args], o);
  if (r.code !== 0) t.fail(`cabstore ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr}`);
  return r.out;
}

/** The failure contract: exit 1, one line on stderr naming the code. */
export function assertFails(t: ExecutionContext, r: RunResult, code: string, what: string): void {
  t.is(r.code, 1, `${what}: exit code (stderr: ${r.stderr})`);
  t.true(r.stderr.includes(code), `${what}: stderr names ${code}: ${JSON.stringify(r.stderr)}`);
  t.is(r.stderr.trimEnd().split('\n').length, 1, `${what}: one line: ${JSON.stringify(r.stderr)}`);
}

/** The bad-usage contract: exit 2, what is wrong, then the help; nothing on stdout. */
export function assertUsage(t: ExecutionContext, r: RunResult, what: string): void {
  t.is(r.code, 2, `${what}: exit 2 (${r.stderr})`);
  t.regex(r.stderr, /^cabstore: /m, `${what}: says what is wrong`);
  t.regex(r.stderr, /Usage: cabstore/, `${what}: prints help`);
  t.is(r.out, '', `${what}: nothing on stdout`);
}

export function writeFile(dir: string, name: string, bytes: Uint8Array): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, bytes);
  return f;
}

/** Parses "NAME HASH" lines. */
export function putLines(out: string): Array<{ name: string; hash: string }> {
  return out
    .trim()
    .split('\n')
    .map((l) => {
      const [name, hash, ...rest] = l.split(' ');
      if (rest.length || !/^[0-9a-f]{32}$/.test(name!) || !/^[0-9a-f]{64}$/.test(hash!)) throw new Error(`not "NAME HASH": ${l}`);
      return { name: name!, hash: hash! };
    });
}

export function killed(c: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve({ code: c.exitCode, signal: c.signalCode });
    c.once('exit', (code, sig) => resolve({ code, signal: sig }));
    c.kill(signal);
  });
}

/** Resolves with the first match of `re` on the child's stdout (or stderr). */
export function waitFor(c: ChildProcess, re: RegExp, what: string, from: 'stdout' | 'stderr' = 'stdout'): Promise<RegExpMatchArray> {
  const [watched, other] = from === 'stdout' ? [c.stdout!, c.stderr] : [c.stderr!, c.stdout];
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const onOut = (d: Buffer) => {
      out += d.toString();
      const m = re.exec(out);
      if (m) {
        watched.off('data', onOut);
        resolve(m);
      }
    };
    watched.on('data', onOut);
    other?.on('data', (d: Buffer) => (err += d.toString()));
    c.once('exit', (code, sig) => reject(new Error(`${what} exited ${code ?? sig} before ${re}: ${out} ${err}`)));
  });
}

/** Runs `cabstore --store STORE ARGS...` to its end: exit code, stdout and stderr as text. */
export async function runCli(store: string, ...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const r = await cli(['--store', store, ...args]);
  return { code: r.code, stdout: r.out, stderr: r.stderr };
}
