// npm run bench [-- CASE...] [--only CASE,...] [--size 1GiB[,64MiB...]] [--runs N] [--json FILE] [--dir DIR]
//
// With several sizes, every case runs at each (gc, start, follow and tus-kill, which have no size, once).
// Each case runs in a child process of its own, so that its peak RSS is its
// own; data files are generated once per run, deterministically, in the
// bench folder (a temp folder unless --dir is given).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type BenchContext, type Row, machine, table } from './bench/harness.js';
import { benchChunker } from './bench/chunker.js';
import { benchIngest, benchRead, benchResume, benchStream } from './bench/store.js';
import { benchTransfer } from './bench/transfer.js';
import { benchRange } from './bench/range.js';
import { benchMulti } from './bench/multi.js';
import { benchGc } from './bench/gc.js';
import { benchFsck } from './bench/fsck.js';
import { benchStart } from './bench/start.js';
import { benchHttp } from './bench/http.js';
import { benchFollow } from './bench/follow.js';
import { benchS3 } from './bench/s3.js';
import { benchTusKill } from './bench/tus-kill.js';
import { parseSize } from './size.js';

const CASES: Record<string, (ctx: BenchContext) => Promise<void>> = {
  chunk: benchChunker,
  ingest: benchIngest,
  read: benchRead,
  resume: benchResume,
  stream: benchStream,
  transfer: benchTransfer,
  range: benchRange,
  multi: benchMulti,
  gc: benchGc,
  fsck: benchFsck,
  start: benchStart,
  http: benchHttp,
  follow: benchFollow,
  s3: benchS3,
  'tus-kill': benchTusKill,
};
/** Older names, and groups. */
const ALIASES: Record<string, string[]> = { chunker: ['chunk'], store: ['ingest', 'read', 'resume', 'stream'] };

const OPTIONS = {
  only: { type: 'string' },
  size: { type: 'string', default: '1GiB' },
  runs: { type: 'string', default: '3' },
  json: { type: 'string' },
  dir: { type: 'string' },
  child: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The command line, or exit 2 with what is wrong in it (not a stack). */
function args() {
  try {
    return parseArgs({ allowPositionals: true, options: OPTIONS });
  } catch (e) {
    console.error(`bench: ${(e as Error).message.split('. ')[0]} (--help lists the options)`);
    process.exit(2);
  }
}

const { values, positionals } = args();
if (values.help) {
  console.log(`npm run bench [-- CASE...] [--only CASE,...] [--size 1GiB[,64MiB...]] [--runs N] [--json FILE] [--dir DIR]
cases: ${Object.keys(CASES).join(', ')}; groups: ${Object.entries(ALIASES).map(([k, v]) => `${k} = ${v.join(' ')}`).join('; ')}`);
  process.exit(0);
}

const sizes = values.size!.split(',').map((s) => parseSize(s.trim()));
const runs = Math.max(1, Number(values.runs));
/** Cases whose work does not depend on --size. */
const SIZELESS = new Set(['gc', 'start', 'follow', 'tus-kill']);

if (values.child) {
  // Child: run one case, print its rows as JSON on the last line.
  const rows: Row[] = [];
  await CASES[values.child]!({ sizeBytes: sizes[0]!, runs, workDir: values.dir!, rows, log: (l) => console.error(l) });
  rows.push({
    case: rows[0]?.case ?? values.child,
    metric: 'peak RSS',
    unit: 'MB',
    ours: (process.resourceUsage().maxRSS * 1024) / 1e6,
    higherIsBetter: false,
    target: values.child === 'chunk' || values.child === 'start' ? undefined : '< 300 MB',
  });
  console.log(JSON.stringify(rows));
  process.exit(0);
}

const wanted = [...positionals, ...(values.only ? values.only.split(',') : [])]
  .map((s) => s.trim())
  .filter(Boolean)
  .flatMap((s) => ALIASES[s] ?? [s]);
const names = wanted.length ? wanted : Object.keys(CASES);
for (const n of names) {
  if (!CASES[n]) {
    console.error(`unknown case ${n}; cases: ${Object.keys(CASES).join(', ')}`);
    process.exit(2);
  }
}
const workDir = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-bench-'));
fs.mkdirSync(workDir, { recursive: true });
const rows: Row[] = [];
let failed = false;
try {
  for (const [i, size] of sizes.entries()) {
    for (const n of names) {
      if (i > 0 && SIZELESS.has(n)) continue;
      console.error(`# ${n}${sizes.length > 1 ? ` ${values.size!.split(',')[i]!.trim()}` : ''}`);
      const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', n, '--size', String(size), '--runs', String(runs), '--dir', workDir], {
        stdio: ['ignore', 'pipe', 'inherit'],
        encoding: 'utf8',
        maxBuffer: 64 * 1024 * 1024,
      });
      const last = r.stdout.trim().split('\n').pop() ?? '';
      if (r.status !== 0 || !last.startsWith('[')) {
        console.error(`case ${n} failed (exit ${r.status})`);
        failed = true;
        continue;
      }
      rows.push(...(JSON.parse(last) as Row[]));
    }
  }
} finally {
  if (!values.dir) fs.rmSync(workDir, { recursive: true, force: true });
}
const info = machine();
console.log(`\ncabstore bench, ${info.date}, ${info.cpus} x ${info.cpuModel}, ${info.memGiB} GiB, Node ${info.node}, commit ${info.commit}\n`);
console.log(table(rows));
if (values.json) fs.writeFileSync(values.json, JSON.stringify({ machine: info, rows }, null, 2) + '\n');
process.exit(failed ? 1 : 0);
