import os from 'node:os';
import { execFileSync } from 'node:child_process';

/** One measured figure, beside an optional peer measured in the same run. */
export interface Row {
  case: string;
  metric: string;
  unit: string;
  ours: number | null;
  peer?: string;
  peerValue?: number | null;
  /** Our value / the peer's, oriented so that > 1 is better for us when `higherIsBetter`. */
  higherIsBetter: boolean;
  target?: string;
  note?: string;
}

export interface BenchContext {
  sizeBytes: number;
  runs: number;
  workDir: string;
  rows: Row[];
  log: (line: string) => void;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

export const MB = 1e6;

/** Runs `fn` `runs` times and returns the median of what it returns. */
export async function medianOf(runs: number, fn: () => Promise<number> | number): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) xs.push(await fn());
  return median(xs);
}

export function time<T>(fn: () => T): [T, number] {
  const t = performance.now();
  const r = fn();
  return [r, (performance.now() - t) / 1000];
}

export async function timeAsync<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const r = await fn();
  return [r, (performance.now() - t) / 1000];
}

export function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined) return '-';
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return String(x);
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

export function ratio(r: Row): number | null {
  if (r.ours === null || r.peerValue === null || r.peerValue === undefined || r.peerValue === 0) return null;
  return r.higherIsBetter ? r.ours / r.peerValue : r.peerValue / r.ours;
}

/** A Markdown table: the same text goes to the terminal, the closing note and docs/BENCHMARKS.md. */
export function table(rows: Row[]): string {
  const head = ['case', 'metric', 'cabstore', 'peer', 'peer value', 'ratio (>1 = we win)', 'target'];
  const body = rows.map((r) => [
    r.case,
    `${r.metric} (${r.unit})`,
    fmt(r.ours),
    r.peer ?? '',
    r.peer ? fmt(r.peerValue) : '',
    r.peer ? fmt(ratio(r)) : '',
    r.target ?? '',
  ]);
  const all = [head, ...body];
  const w = head.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(w[i]!)).join(' | ')} |`;
  return [line(head), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

export function machine(): Record<string, unknown> {
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    /* not a git checkout */
  }
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    date: new Date().toISOString(),
    commit,
  };
}
