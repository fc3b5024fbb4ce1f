// The CLI loads only what a command needs (issue 15, item 5): --help and
// --version load no store, no lmdb and no WebSocket code; put no WebSocket
// code; pull no bundle code. Each command runs in a real child process that
// lists the module files it loaded (helpers/loaded-modules.ts). The CLI is a
// bundle (dist/bin, scripts/bundle.mjs): each of its files that loaded stands
// for the modules esbuild put in it (its metafile, dist/bin/meta.json), so the
// same rules hold of the modules whatever files they were bundled into. How
// long start-up takes is measured by `npm run bench -- start`, not here.
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { prngBytes } from '../tools/data.js';
import { cli, type RunResult } from './helpers/cli.js';
import { tempDir } from './helpers/store.js';

const PRELOAD = new URL('helpers/loaded-modules.js', import.meta.url).href;
/** The package's root (dist/test/ is two levels below it), as a URL. */
const ROOT = new URL('../../', import.meta.url).href;

/** What esbuild put in each file of the bundle: output path (from the package's root) to its input modules. */
const META = JSON.parse(fs.readFileSync(new URL('../bin/meta.json', import.meta.url), 'utf8')) as { outputs: Record<string, { inputs: Record<string, unknown> }> };

/**
 * Runs `cabstore ARGS`; its result, and the modules it loaded (paths under
 * the package): the files themselves, and the modules bundled in those of dist/bin.
 */
async function loaded(t: ExecutionContext, args: string[]): Promise<{ r: RunResult; files: string[] }> {
  const list = path.join(tempDir(t), 'loaded');
  fs.writeFileSync(list, '');
  const r = await cli(args, { env: { NODE_OPTIONS: `--import=${PRELOAD}`, CABSTORE_TEST_LOADED: list } });
  const own = [...new Set(fs.readFileSync(list, 'utf8').split('\n'))].filter((u) => u.startsWith(ROOT)).map((u) => u.slice(ROOT.length));
  t.true(own.includes('dist/bin/cabstore.js'), `${args.join(' ')}: the bundle ran (${own.length} files)`);
  t.deepEqual(own.filter((f) => /^dist\/(src|tools)\//.test(f)), [], `${args.join(' ')}: every module of ours is in the bundle`);
  const bundled = own.filter((f) => f.startsWith('dist/bin/'));
  t.deepEqual(bundled.filter((f) => !META.outputs[f]), [], 'every file of the bundle that loaded is in the metafile');
  const files = [...own, ...bundled.flatMap((f) => Object.keys(META.outputs[f]?.inputs ?? {}))];
  return { r, files };
}

const STORE = /^dist\/src\/(store|index)\.js$|^node_modules\/(lmdb|msgpackr|proper-lockfile|fs-ext)\//;
const NET = /^dist\/src\/transfer\/ws\.js$|^node_modules\/ws\//;

test('--help and --version load no store, lmdb or WebSocket code', async (t) => {
  for (const args of [['--help'], ['--version'], ['put', '--help'], ['pull', '--help']]) {
    const { r, files } = await loaded(t, args);
    t.is(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    t.true(files.includes('dist/tools/cli.js'), `${args.join(' ')}: the list of loaded modules is there (${files.length} modules)`);
    t.true(files.some((f) => f.startsWith('node_modules/commander/')), `${args.join(' ')}: commander`);
    t.deepEqual(files.filter((f) => STORE.test(f) || NET.test(f)), [], args.join(' '));
  }
});

test('put loads the store but no WebSocket code; the blob is stored all the same', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'data');
  fs.writeFileSync(file, prngBytes('cli start put', 100_000));
  const { r, files } = await loaded(t, ['--store', path.join(dir, 'store'), 'put', file]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.out, /^[0-9a-f]{32} [0-9a-f]{64}\n$/);
  t.true(files.includes('dist/src/store.js'), 'the store');
  t.true(files.some((f) => f.startsWith('node_modules/lmdb/')), 'lmdb');
  t.deepEqual(files.filter((f) => NET.test(f)), []);
});

test('pull loads the WebSocket code but no bundle code', async (t) => {
  const dir = tempDir(t);
  // Nothing listens on port 1: the pull fails to connect, having loaded what a pull loads.
  const { r, files } = await loaded(t, ['--store', path.join(dir, 'store'), 'pull', 'ws://127.0.0.1:1', '0123456789abcdef0123456789abcdef']);
  t.is(r.code, 1, r.stderr);
  t.true(files.includes('dist/src/transfer/ws.js'), 'the transfer code');
  t.true(files.some((f) => f.startsWith('node_modules/ws/')), 'ws');
  t.deepEqual(files.filter((f) => /^dist\/src\/transfer\/bundle\.js$/.test(f)), []);
});

test('a process that started the hashing thread ahead of any job exits when its work is done', async (t) => {
  // What a CLI pull or serve does before its store opens; the idle thread must not keep the process alive.
  const pool = new URL('../src/hash/pool.js', import.meta.url).href;
  const c = spawn(process.execPath, ['--input-type=module', '-e', `(await import(${JSON.stringify(pool)})).startHashThread(); console.log('started');`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const timer = setTimeout(() => c.kill('SIGKILL'), 20_000);
  let out = '';
  c.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => c.on('exit', (x, s) => resolve([x, s])));
  clearTimeout(timer);
  t.is(out, 'started\n');
  t.deepEqual([code, signal], [0, null], 'it exited by itself (SIGKILL: it was still running after 20 s)');
});
