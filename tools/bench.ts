// npm run bench [-- CASE...] [--only CASE,...] [--size 1GiB] [--runs N] [--json FILE]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { type BenchContext, type Row, machine, table } from './bench/harness.js';
import { benchChunker } from './bench/chunker.js';
import { parseSize } from './size.js';

const CASES: Record<string, (ctx: BenchContext) => Promise<void>> = {
  chunker: benchChunker,
};

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    only: { type: 'string' },
    size: { type: 'string', default: '1GiB' },
    runs: { type: 'string', default: '3' },
    json: { type: 'string' },
    dir: { type: 'string' },
  },
});
const wanted = [...positionals, ...(values.only ? values.only.split(',') : [])].map((s) => s.trim()).filter(Boolean);
const names = wanted.length ? wanted : Object.keys(CASES);
for (const n of names) {
  if (!CASES[n]) {
    console.error(`unknown case ${n}; cases: ${Object.keys(CASES).join(', ')}`);
    process.exit(2);
  }
}
const workDir = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-bench-'));
const rows: Row[] = [];
const ctx: BenchContext = {
  sizeBytes: parseSize(values.size!),
  runs: Math.max(1, Number(values.runs)),
  workDir,
  rows,
  log: (line) => console.error(line),
};
try {
  for (const n of names) {
    ctx.log(`# ${n}`);
    await CASES[n]!(ctx);
  }
} finally {
  if (!values.dir) fs.rmSync(workDir, { recursive: true, force: true });
}
const info = machine();
console.log(`\ncabstore bench, ${info.date}, ${info.cpus} x ${info.cpuModel}, ${info.memGiB} GiB, Node ${info.node}, commit ${info.commit}\n`);
console.log(table(rows));
if (values.json) fs.writeFileSync(values.json, JSON.stringify({ machine: info, rows }, null, 2) + '\n');
