// The package as a consumer sees it: the published typings name the public
// API (stripInternal must not drop it) and import no dependency's types (a
// consumer's tsc without skipLibCheck would need them); the packed tarball
// holds what a consumer needs and no tests, installs with the dependency
// versions of our lockfile, and a small strict TypeScript app type-checks
// against it and runs, as does its `cabstore` bin.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/store.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TYPES = path.join(ROOT, 'dist/src');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string>; bin: Record<string, string>; engines: Record<string, string>; license: string; allowScripts: Record<string, boolean> };

/** The module specifiers every typing reachable from the entry imports, outside the package. */
function externalImports(): Set<string> {
  const seen = new Set<string>();
  const out = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
      const spec = m[1]!;
      if (spec.startsWith('.')) visit(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.d.ts')));
      else out.add(spec);
    }
  };
  visit(path.join(TYPES, 'index.d.ts'));
  return out;
}

test('the published typings import nothing but Node built-ins', (t) => {
  t.deepEqual([...externalImports()].filter((s) => !s.startsWith('node:')), []);
});

/** Runs a command to its end; a failure shows its output. */
function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.error ?? ''}${r.stdout}${r.stderr}`);
  return r.stdout;
}

/**
 * An app's package-lock.json that installs the tarball with exactly the
 * dependency versions our lockfile holds: from npm's cache, no registry
 * needed once `npm ci` has run here.
 */
function appLock(tarball: string): object {
  const ours = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  const packages: Record<string, object> = {
    '': { name: 'app', dependencies: { cabstore: tarball } },
    'node_modules/cabstore': { version: PKG.version, resolved: tarball, license: PKG.license, dependencies: PKG.dependencies, bin: PKG.bin, engines: PKG.engines },
  };
  for (const [k, v] of Object.entries(ours.packages)) if (k !== '' && !v.dev) packages[k] = v;
  return { name: 'app', lockfileVersion: 3, requires: true, packages };
}

const APP = `import { BlobStore, CabError, connect, dial, serve, toHex, type BlobReader, type BlobStat, type TransferStats } from 'cabstore';
const [dir, text] = process.argv.slice(2) as [string, string];
const a: BlobStore = await BlobStore.open(dir + '/a');
const w = await a.newBlobWriter();
await w.appendBytes(new TextEncoder().encode(text));
await w.close();
const r: BlobReader = await a.newBlobReader(w.name);
const buf = new Uint8Array(r.size);
await r.readFully(buf, 0);
await r.close();
if (new TextDecoder().decode(buf) !== text) throw new CabError('ERR_IO', 'read back other bytes');
const st: BlobStat = await a.stat(w.name);
const has: boolean = await a.has(w.name);
const srv = await serve(a, { tokens: { t: ['read'] } });
const b = await BlobStore.open(dir + '/b');
// docs/API.md: connect(store, url, options) is connect(store, dial(url, { ...options, chunker: store.chunker })).
const c = await connect(b, dial(srv.url, { token: 't', chunker: b.chunker }));
const p: TransferStats = await c.pull(w.name);
await c.close();
await srv.close();
await b.close();
await a.close();
console.log(w.name, toHex(st.hash!), toHex(p.hash), has);
`;

test('the packed package installs, a strict TypeScript app type-checks against it without skipLibCheck and runs, and so does its bin', (t) => {
  const dir = tempDir(t, 'cabstore-package-');
  const packed = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], ROOT)) as Array<{ filename: string; files: Array<{ path: string }> }>;
  const files = packed[0]!.files.map((f) => f.path);
  for (const f of ['package.json', 'README.md', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/bin/cabstore.js', 'dist/bin/cli.cjs', 'dist/bin/hash-worker.js', 'docs/FORMAT.md', 'docs/PROTOCOL.md']) t.true(files.includes(f), f);
  t.deepEqual(files.filter((f) => /(^|\/)test\/|\.test\.|^src\/|^tools\/|bench|demo|gen-vectors/.test(f)), [], 'no tests, sources or developer tools');
  t.deepEqual(files.filter((f) => /^dist\/(tools|bin\/meta)/.test(f)), [], 'the CLI is its bundle alone');

  // The app, with our lockfile's dependency versions and the published typings (no skipLibCheck).
  const app = path.join(dir, 'app');
  fs.mkdirSync(app);
  const tarball = `file:../${packed[0]!.filename}`;
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module', dependencies: { cabstore: tarball }, allowScripts: PKG.allowScripts }));
  fs.writeFileSync(path.join(app, 'package-lock.json'), JSON.stringify(appLock(tarball)));
  run('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], app);
  t.false(fs.lstatSync(path.join(app, 'node_modules/cabstore')).isSymbolicLink(), 'installed from the tarball');
  fs.writeFileSync(
    path.join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'es2022',
        lib: ['esnext'],
        module: 'nodenext',
        moduleResolution: 'nodenext',
        strict: true,
        outDir: 'out',
        types: ['node'],
        typeRoots: [path.join(ROOT, 'node_modules/@types')],
      },
      files: ['app.ts'],
    }),
  );
  fs.writeFileSync(path.join(app, 'app.ts'), APP);
  run(path.join(ROOT, 'node_modules/.bin/tsc'), ['-p', app], app);

  // It runs: write, read back, pull over WebSocket. Under 16 KiB the BEP 52 root is the plain SHA-256.
  const text = 'hello from an installed cabstore';
  const sha = createHash('sha256').update(text).digest('hex');
  const [name, hash, pulled, has] = run(process.execPath, ['out/app.js', path.join(dir, 'stores'), text], app).trim().split(' ');
  t.deepEqual([hash, pulled, has], [sha, sha, 'true']);

  // The installed bin.
  const bin = path.join(app, 'node_modules/.bin/cabstore');
  t.is(run(bin, ['--version'], app).trim(), PKG.version);
  const ls = JSON.parse(run(bin, ['--store', path.join(dir, 'stores/b'), 'ls', '--json'], app)) as Array<{ name: string; hash: string }>;
  t.deepEqual(ls.map((b) => [b.name, b.hash]), [[name, sha]]);
});
