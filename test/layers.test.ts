// The source tree's shape, checked: imports point down the layers of
// DESIGN.md ("Layout of the code"), and no source file grows past the size
// a reader can hold in mind. Reads the TypeScript sources beside dist/.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../../src/', import.meta.url));

/** Lower numbers are lower layers. Folders on one floor may not import each other. */
const LAYERS: Array<[RegExp, number, string]> = [
  [/^errors\.ts$/, 0, 'errors'],
  [/^lists\.ts$/, 0, 'lists'],
  [/^hash\//, 1, 'hash'],
  [/^chunker\//, 1, 'chunker'],
  [/^format\//, 2, 'format'],
  [/^bucket\//, 2.5, 'bucket'],
  [/^disk\//, 3, 'disk'],
  [/^index\//, 4, 'index'],
  [/^blob\//, 5, 'blob'],
  [/^upkeep\//, 5, 'upkeep'],
  [/^shared\//, 5, 'shared'],
  [/^store(\.ts$|\/)/, 6, 'store'],
  [/^transfer\//, 7, 'transfer'],
  [/^http\//, 7.5, 'http'],
  [/^index\.ts$/, 8, 'api'],
];

/** The most lines a source file may have. */
const MAX_LINES = 400;

function layerOf(file: string): { n: number; name: string } {
  for (const [re, n, name] of LAYERS) if (re.test(file)) return { n, name };
  throw new Error(`${file} is in no layer: add it to LAYERS`);
}

function sources(dir = SRC): string[] {
  const out: string[] = [];
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) out.push(...sources(p));
    else if (ent.name.endsWith('.ts')) out.push(path.relative(SRC, p));
  }
  return out;
}

function imports(file: string): string[] {
  const text = fs.readFileSync(path.join(SRC, file), 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
    out.push(path.normalize(path.join(path.dirname(file), m[1]!)).replace(/\.js$/, '.ts'));
  }
  return out;
}

test('every import in src/ points to a lower layer or within its own folder', (t) => {
  const wrong: string[] = [];
  for (const file of sources()) {
    const from = layerOf(file);
    for (const to of imports(file)) {
      const target = layerOf(to);
      if (target.name === from.name || target.n < from.n) continue;
      wrong.push(`${file} (${from.name}) imports ${to} (${target.name})`);
    }
  }
  t.deepEqual(wrong, []);
});

test(`no source file in src/ is over ${MAX_LINES} lines`, (t) => {
  const long = sources()
    .map((f) => [f, fs.readFileSync(path.join(SRC, f), 'utf8').split('\n').length] as const)
    .filter(([, n]) => n > MAX_LINES)
    .map(([f, n]) => `${f}: ${n}`);
  t.deepEqual(long, []);
});
