// The package as a consumer sees it: the published typings name the public
// API (stripInternal must not drop it), import no dependency's types (a
// consumer's tsc without skipLibCheck would need them), and a small
// TypeScript app type-checks against them, strict.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/store.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TYPES = path.join(ROOT, 'dist/src');

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

test('a strict TypeScript app type-checks against the published typings without skipLibCheck', (t) => {
  const dir = tempDir(t);
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(ROOT, path.join(dir, 'node_modules', 'cabstore'));
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  fs.writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'es2022',
        lib: ['esnext'],
        module: 'nodenext',
        moduleResolution: 'nodenext',
        strict: true,
        noEmit: true,
        types: ['node'],
        typeRoots: [path.join(ROOT, 'node_modules/@types')],
      },
      files: ['app.ts'],
    }),
  );
  fs.writeFileSync(
    path.join(dir, 'app.ts'),
    `import { BlobStore, CabError, connect, serve, toHex, type BlobReader, type TransferStats } from 'cabstore';
const s: BlobStore = await BlobStore.open('store');
const w = await s.newBlobWriter();
await w.appendBytes(new Uint8Array(3));
await w.close();
const r: BlobReader = await s.newBlobReader(w.name);
const st = await s.stat(w.name);
const has: boolean = await s.has(w.name);
const srv = await serve(s, { tokens: { t: ['read'] } });
const c = await connect(s, srv.url, { token: 't' });
const p: TransferStats = await c.pull(w.name);
console.log(toHex(p.hash), st.size, has, r.size, new CabError('ERR_IO').code);
`,
  );
  const tsc = spawnSync(path.join(ROOT, 'node_modules/.bin/tsc'), ['-p', dir], { encoding: 'utf8' });
  t.is(tsc.status, 0, `${tsc.stdout}${tsc.stderr}`);
});
