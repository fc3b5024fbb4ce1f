// Bundles the CLI (dist/tools/cli.js, built by tsc) into dist/bin/: the entry
// cabstore.js, the chunks it loads lazily (the library's parts, split by
// esbuild), and the worker threads' files, each an entry point too, so that a
// chunk's `new URL('./hash-worker.js', import.meta.url)` finds its file beside
// it. Fewer, larger module files load sooner than the ~180 files of the
// unbundled CLI (issue 15; docs/BENCHMARKS.md, ninth session).
import { build } from 'esbuild';
import fs from 'node:fs';

const out = 'dist/bin';

/** src/transfer/ws-lib.ts requires ws (faster than importing it, unbundled); in the bundle, a static import bundles it. */
const bundleWs = {
  name: 'bundle-ws',
  setup(b) {
    b.onResolve({ filter: /\/ws-lib\.js$/ }, () => ({ path: 'ws-lib', namespace: 'bundle-ws' }));
    b.onLoad({ filter: /.*/, namespace: 'bundle-ws' }, () => ({ contents: "export { WebSocket, WebSocketServer } from 'ws';", resolveDir: process.cwd(), loader: 'js' }));
  },
};
fs.rmSync(out, { recursive: true, force: true });
const r = await build({
  entryPoints: {
    cabstore: 'dist/tools/cli.js',
    'hash-worker': 'dist/src/hash/hash-worker.js',
    'leaf-helper': 'dist/src/hash/leaf-helper.js',
    'fetch-worker': 'dist/src/disk/fetch-worker.js',
  },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  metafile: true,
  plugins: [bundleWs],
  logLevel: 'warning',
  // Native addons and what is only loaded for a bucket stay packages of their own.
  external: ['lmdb', 'msgpackr', 'fs-ext', '@aws-sdk/*', '@smithy/*'],
  // CommonJS code in the bundle (ws, commander) calls require for Node's built-ins.
  banner: { js: "import { createRequire as __cabRequire } from 'node:module'; const require = __cabRequire(import.meta.url);" },
});
fs.writeFileSync(`${out}/meta.json`, JSON.stringify(r.metafile));
fs.chmodSync(`${out}/cabstore.js`, 0o755);
