// Bundles the CLI into dist/bin/ (after tsc, from its output):
// - cli.cjs: dist/tools/cli.js and all it may load, one CommonJS-shaped
//   script, so that tools/launch.ts can run it from a V8 code cache (Node 20
//   caches no ES module's compilation). The library's parts stay lazy: esbuild
//   wraps each dynamically imported module in a function that runs at its first
//   import, so --help evaluates none of them, and the code cache spares the
//   parse of the rest.
// - cabstore.js: the bin, tools/launch.ts, with cli.cjs's content hash (the
//   code cache's key).
// - the worker threads' files (hash-worker.js, leaf-helper.js, fetch-worker.js,
//   ES modules and their chunks): a `new URL('./hash-worker.js', import.meta.url)`
//   in cli.cjs finds its file beside it.
// - meta.json: which modules esbuild put in which file (test/cli-start.test.ts).
// lmdb, msgpackr, fs-ext and the AWS SDK stay packages of their own (native
// addons; the SDK only loads for a bucket). Fewer, larger files load sooner
// than the ~180 module files of the unbundled CLI (issue 15; docs/BENCHMARKS.md,
// ninth session).
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import fs from 'node:fs';

const out = 'dist/bin';
fs.rmSync(out, { recursive: true, force: true });

/** src/transfer/ws-lib.ts requires ws (faster than importing it, unbundled); in the bundle, a static import bundles it. */
const bundleWs = {
  name: 'bundle-ws',
  setup(b) {
    b.onResolve({ filter: /\/ws-lib\.js$/ }, () => ({ path: 'ws-lib', namespace: 'bundle-ws' }));
    b.onLoad({ filter: /.*/, namespace: 'bundle-ws' }, () => ({ contents: "export { WebSocket, WebSocketServer } from 'ws';", resolveDir: process.cwd(), loader: 'js' }));
  },
};
const common = { bundle: true, platform: 'node', target: 'node20', metafile: true, logLevel: 'warning', external: ['lmdb', 'msgpackr', 'fs-ext', '@aws-sdk/*', '@smithy/*'] };

const cli = await build({
  ...common,
  entryPoints: ['dist/tools/cli.js'],
  outfile: `${out}/cli.cjs`,
  format: 'cjs',
  plugins: [bundleWs],
  // import.meta.url is the bundle's own URL, which tools/launch.ts passes in; the AWS SDK, external, is required when first used.
  define: { 'import.meta.url': '__cabstoreUrl' },
  supported: { 'dynamic-import': false },
});
const workers = await build({
  ...common,
  entryPoints: { 'hash-worker': 'dist/src/hash/hash-worker.js', 'leaf-helper': 'dist/src/hash/leaf-helper.js', 'fetch-worker': 'dist/src/disk/fetch-worker.js' },
  outdir: out,
  format: 'esm',
  splitting: true,
  chunkNames: 'chunk-[hash]',
});
const hash = createHash('sha256').update(fs.readFileSync(`${out}/cli.cjs`)).digest('hex').slice(0, 16);
const bin = await build({ ...common, entryPoints: ['dist/tools/launch.js'], outfile: `${out}/cabstore.js`, format: 'esm', define: { CABSTORE_CLI_HASH: JSON.stringify(hash) } });
fs.chmodSync(`${out}/cabstore.js`, 0o755);
const outputs = Object.assign({}, ...[cli, workers, bin].map((r) => r.metafile.outputs));
fs.writeFileSync(`${out}/meta.json`, JSON.stringify({ outputs }));
