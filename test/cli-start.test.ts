// The CLI loads only what a command needs (issue 15, item 5): --help and
// --version load no store, no lmdb and no WebSocket code; put no WebSocket
// code; pull no bundle code and no server code. Each command runs in a real child process that
// lists the module files it loaded (helpers/loaded-modules.ts) and, as the CLI
// is one bundled script (dist/bin/cli.cjs, scripts/bundle.mjs), which of the
// modules in it were evaluated: esbuild wraps each module that is imported
// lazily in a function named by its path, which runs at its first import, and
// V8's coverage (NODE_V8_COVERAGE) says which functions ran. So the same rules
// hold of the modules as when each was a file. Also: the code cache
// (tools/launch.ts) is written, used, and replaced when bad. How long start-up
// takes is measured by `npm run bench -- start`, not here.
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { prngBytes } from '../tools/data.js';
import { cli, type RunResult } from './helpers/cli.js';
import { tempDir } from './helpers/store.js';

const PRELOAD = new URL('helpers/loaded-modules.js', import.meta.url).href;
/** The package's root (dist/test/ is two levels below it), as a URL. */
const ROOT = new URL('../../', import.meta.url).href;

/** What esbuild put in each file of dist/bin: output path (from the package's root) to its input modules. */
const META = JSON.parse(fs.readFileSync(new URL('../bin/meta.json', import.meta.url), 'utf8')) as { outputs: Record<string, { inputs: Record<string, unknown> }> };
const BUNDLE = fileURLToPath(new URL('../bin/cli.cjs', import.meta.url));
/** The modules of cli.cjs that esbuild wrapped, each in a function named by its path (`"dist/src/store.js"() {`). */
const WRAPPED = new Set([...fs.readFileSync(BUNDLE, 'utf8').matchAll(/^\s+"([^"\n]+)"\((?:exports\d*(?:, module\d*)?)?\) \{$/gm)].map((m) => m[1]!));
/** The rest of cli.cjs's modules, evaluated whenever it runs. */
const HOISTED = Object.keys(META.outputs['dist/bin/cli.cjs']!.inputs).filter((f) => !WRAPPED.has(f));

type Coverage = { result: Array<{ url: string; functions: Array<{ functionName: string; ranges: Array<{ count: number }> }> }> };

/** The modules of cli.cjs that a process evaluated, from its V8 coverage files in `dir`; none if cli.cjs did not run. */
function evaluated(dir: string): string[] {
  const urls = [BUNDLE, pathToFileURL(BUNDLE).href];
  const scripts = fs.readdirSync(dir).flatMap((f) => (JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as Coverage).result.filter((s) => urls.includes(s.url)));
  if (scripts.length === 0) return [];
  const ran = scripts.flatMap((s) => s.functions.filter((fn) => WRAPPED.has(fn.functionName) && fn.ranges[0]!.count > 0).map((fn) => fn.functionName));
  return [...HOISTED, ...ran];
}

/**
 * Runs `cabstore ARGS`; its result, and the modules it evaluated (paths under
 * the package): the files it loaded (the worker threads' files of dist/bin
 * standing for the modules in them), and the modules of cli.cjs that ran.
 */
async function loaded(t: ExecutionContext, args: string[]): Promise<{ r: RunResult; files: string[] }> {
  const dir = tempDir(t);
  const list = path.join(dir, 'loaded');
  const coverage = path.join(dir, 'coverage');
  fs.writeFileSync(list, '');
  const r = await cli(args, { env: { NODE_OPTIONS: `--import=${PRELOAD}`, CABSTORE_TEST_LOADED: list, NODE_V8_COVERAGE: coverage, CABSTORE_CODE_CACHE: 'off' } });
  const own = [...new Set(fs.readFileSync(list, 'utf8').split('\n'))].filter((u) => u.startsWith(ROOT)).map((u) => u.slice(ROOT.length));
  t.true(own.includes('dist/bin/cabstore.js'), `${args.join(' ')}: the bin ran (${own.length} files)`);
  t.deepEqual(own.filter((f) => /^dist\/(src|tools)\//.test(f)), [], `${args.join(' ')}: every module of ours is in the bundle`);
  const bundled = own.filter((f) => f.startsWith('dist/bin/'));
  t.deepEqual(bundled.filter((f) => !META.outputs[f]), [], 'every file of dist/bin that loaded is in the metafile');
  const files = [...own, ...bundled.flatMap((f) => Object.keys(META.outputs[f]?.inputs ?? {})), ...evaluated(coverage)];
  return { r, files };
}

const STORE = /^dist\/src\/(store|index)\.js$|^node_modules\/(lmdb|msgpackr|proper-lockfile|fs-ext)\//;
const NET = /^dist\/src\/transfer\/(ws|dial|connect)\.js$|^node_modules\/ws\//;

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

test("pull loads the WebSocket code but no bundle code, nor the server's", async (t) => {
  const dir = tempDir(t);
  // Nothing listens on port 1: the pull fails to connect, having loaded what a pull loads.
  const { r, files } = await loaded(t, ['--store', path.join(dir, 'store'), 'pull', 'ws://127.0.0.1:1', '0123456789abcdef0123456789abcdef']);
  t.is(r.code, 1, r.stderr);
  t.true(files.includes('dist/src/transfer/dial.js'), 'the dialing code (the session\'s, connect.js, loads once a store is open)');
  t.true(files.some((f) => f.startsWith('node_modules/ws/')), 'ws');
  t.deepEqual(files.filter((f) => /^dist\/src\/(transfer\/(bundle|ws)|http\/\w+)\.js$/.test(f)), []);
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

test('the code cache: written by the first run of a command, kept by the next, replaced when bad; none when off', async (t) => {
  const dir = tempDir(t);
  const cache = path.join(dir, 'cache');
  const files = () => (fs.existsSync(cache) ? fs.readdirSync(cache).sort() : []);
  const version = async (env: Record<string, string>) => {
    const r = await cli(['--version'], { env });
    t.is(r.code, 0, r.stderr);
    t.regex(r.out, /^\d+\.\d+\.\d+\n$/);
  };
  await version({ CABSTORE_CODE_CACHE: cache });
  const [none] = files();
  t.regex(none ?? '', /^[0-9a-f]{16}-v\d+\.\d+\.\d+-\w+-none\.v8cache$/, 'one file, for no command');
  t.is(fs.statSync(cache).mode & 0o777, 0o700);
  t.is(fs.statSync(path.join(cache, none!)).mode & 0o777, 0o600);

  const data = path.join(dir, 'data');
  fs.writeFileSync(data, 'x');
  t.is((await cli(['--store', path.join(dir, 'store'), 'put', data], { env: { CABSTORE_CODE_CACHE: cache } })).code, 0);
  t.deepEqual(files(), [none, none!.replace('-none.', '-put.')].sort(), 'one more, for put');

  const first = fs.statSync(path.join(cache, none!)).mtimeMs;
  await version({ CABSTORE_CODE_CACHE: cache });
  t.is(fs.statSync(path.join(cache, none!)).mtimeMs, first, 'accepted, so not written again');

  // Bytes V8 rejects, and the cache of another bundle: the run is as without them, and leaves a good cache.
  fs.writeFileSync(path.join(cache, none!), 'not a code cache');
  const old = path.join(cache, '0000000000000000-v20.0.0-x64-none.v8cache');
  fs.writeFileSync(old, 'old');
  fs.utimesSync(old, new Date(Date.now() - 2 * 24 * 3600 * 1000), new Date(Date.now() - 2 * 24 * 3600 * 1000));
  fs.writeFileSync(path.join(cache, '0000000000000001-v20.0.0-x64-none.v8cache'), 'recent');
  await version({ CABSTORE_CODE_CACHE: cache });
  t.true(fs.statSync(path.join(cache, none!)).size > 1000, 'written again');
  t.false(files().includes(path.basename(old)), "another bundle's cache, two days old, is removed");
  t.true(files().includes('0000000000000001-v20.0.0-x64-none.v8cache'), "another bundle's recent cache is kept (two builds in turn)");

  // Off: no cache anywhere; the default place is $XDG_CACHE_HOME/cabstore.
  await version({ CABSTORE_CODE_CACHE: 'off', XDG_CACHE_HOME: path.join(dir, 'xdg-off') });
  t.false(fs.existsSync(path.join(dir, 'xdg-off')));
  await version({ XDG_CACHE_HOME: path.join(dir, 'xdg') });
  t.is(fs.readdirSync(path.join(dir, 'xdg', 'cabstore')).length, 1);
});

test("the code cache's command names (tools/launch.ts) are the CLI's commands: each command has a cache file of its own", async (t) => {
  const r = await cli(['--help'], { env: { CABSTORE_CODE_CACHE: 'off' } });
  t.is(r.code, 0, r.stderr);
  const commands = [...r.out.slice(r.out.indexOf('Commands:')).matchAll(/^ {2}([a-z]+)\b/gm)].map((m) => m[1]!).sort();
  t.true(commands.length > 10, commands.join(' '));
  const bin = fs.readFileSync(new URL('../bin/cabstore.js', import.meta.url), 'utf8');
  const listed = /new Set\(\[([^\]]*)\]\)/.exec(bin)?.[1];
  t.truthy(listed, 'the list is in the bin');
  const known = new Set([...listed!.matchAll(/"([a-z]+)"/g)].map((m) => m[1]!));
  t.deepEqual(commands.filter((c) => !known.has(c)), [], 'commands missing from launch.ts COMMANDS');
});
