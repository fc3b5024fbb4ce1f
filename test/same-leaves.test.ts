// A second put takes the BEP 52 leaves of a stretch that repeats a finalized
// blob at the same offsets from that blob's leaf layer (src/blob/same-leaves.ts),
// which a writer now keeps at finalize. The root must stay the true root of
// the new bytes whatever the layer file holds, and a source deleted under
// the writer must not matter.
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { BlobStore, merkleRoot, toHex } from '../src/index.js';
import { checkLayer, LAYER_HEADER } from '../src/blob/leaf-layer.js';
import { prngBytes } from '../tools/data.js';
import { readAll, tempDir, tempStore } from './helpers/store.js';

const MiB = 1024 * 1024;
/** Past the 16 MiB at which a writer opens its layer's temp file, and long enough that most of a second put is lent. */
const SIZE = 40 * MiB + 12345;

function file(t: ExecutionContext, bytes: Uint8Array, name = 'data.bin'): string {
  const f = path.join(tempDir(t), name);
  fs.writeFileSync(f, bytes);
  return f;
}

async function put(store: BlobStore, f: string): Promise<{ name: string; hash: string; lent: number }> {
  const w = await store.newBlobWriter();
  await w.appendBytes({ file: f });
  await w.close();
  return { name: w.name, hash: toHex(w.hash), lent: w.leavesLent };
}

test('a finalized blob keeps its leaf layer; a second put takes most leaves from it and has the same root', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('same-1', SIZE);
  const f = file(t, bytes);
  const root = toHex(merkleRoot(bytes));
  const a = await put(store, f);
  t.is(a.hash, root);
  t.is(a.lent, 0);
  const layer = store.layout.leafLayer(a.name);
  t.is(fs.statSync(layer).size, LAYER_HEADER + 32 * Math.ceil(SIZE / 16384));
  t.truthy(await checkLayer(layer, SIZE, merkleRoot(bytes)), 'the layer checks out against the root');
  const b = await put(store, f);
  t.is(b.hash, root);
  t.true(b.lent > SIZE / 16384 / 2, `lent ${b.lent} leaves`);
  t.true((await readAll(store, b.name)).equals(bytes));
  t.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')).filter((e) => e.endsWith('.leaf')), []);
});

for (const [what, spoil] of [
  ['damaged (one leaf hash changed)', (layer: string) => {
    const fd = fs.openSync(layer, 'r+');
    fs.writeSync(fd, Buffer.from([0xff, 0x00, 0x55]), 0, 3, LAYER_HEADER + 32 * 1000 + 7);
    fs.closeSync(fd);
  }],
  ['missing', (layer: string) => fs.rmSync(layer)],
  ['cut short', (layer: string) => fs.truncateSync(layer, fs.statSync(layer).size - 32)],
] as const) {
  test(`a source whose layer is ${what}: the second put hashes every leaf and has the true root`, async (t) => {
    const store = await tempStore(t);
    const bytes = prngBytes(`same-${what}`, SIZE);
    const f = file(t, bytes);
    const a = await put(store, f);
    spoil(store.layout.leafLayer(a.name));
    const b = await put(store, f);
    t.is(b.hash, toHex(merkleRoot(bytes)));
    t.is(b.lent, 0);
  });
}

test("a source whose layer is another blob's of the same size, even under this blob's header: no leaf taken, true root", async (t) => {
  const store = await tempStore(t);
  const x = prngBytes('same-x', SIZE);
  const y = prngBytes('same-y', SIZE);
  const fx = file(t, x, 'x.bin');
  const a = await put(store, fx);
  const b = await put(store, file(t, y, 'y.bin'));
  const layerA = store.layout.leafLayer(a.name);
  const head = fs.readFileSync(layerA).subarray(0, LAYER_HEADER);
  fs.copyFileSync(store.layout.leafLayer(b.name), layerA);
  const c = await put(store, fx);
  t.is(c.hash, toHex(merkleRoot(x)));
  t.is(c.lent, 0);
  // Now with a's own header (its size and root) over b's leaf hashes; c (a good source of the same bytes) goes.
  await store.deleteBlob(c.name);
  const fd = fs.openSync(layerA, 'r+');
  fs.writeSync(fd, head, 0, head.length, 0);
  fs.closeSync(fd);
  const d = await put(store, fx);
  t.is(d.hash, toHex(merkleRoot(x)));
  t.is(d.lent, 0);
});

test('edited copies: shifted offsets and bytes changed in place both keep the true root; unchanged stretches at the same offsets are lent', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('same-edit', SIZE);
  await put(store, file(t, bytes));
  // Bytes inserted at 9 MiB: everything after moves.
  const shifted = Buffer.concat([bytes.subarray(0, 9 * MiB), prngBytes('ins', 100), bytes.subarray(9 * MiB)]);
  const s = await put(store, file(t, shifted, 'shifted.bin'));
  t.is(s.hash, toHex(merkleRoot(shifted)));
  // Bytes changed in place here and there (not on leaf boundaries): the runs around them are lent, their edges hashed.
  const inPlace = Buffer.from(bytes);
  for (const at of [12 * MiB + 5000, 20 * MiB + 16384 * 3 + 1, 31 * MiB - 7]) inPlace[at] = inPlace[at]! ^ 0x5a;
  const p = await put(store, file(t, inPlace, 'in-place.bin'));
  t.is(p.hash, toHex(merkleRoot(inPlace)));
  t.true(p.lent > 0);
  t.true((await readAll(store, p.name)).equals(inPlace));
});

test('the source deleted and collected under the writer: the new blob stands, with its own layer', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('same-gc', SIZE);
  const f = file(t, bytes);
  const a = await put(store, f);
  const w = await store.newBlobWriter();
  await w.appendBytes({ file: f, offset: 0, size: 24 * MiB });
  await store.deleteBlob(a.name);
  await store.gc();
  t.false(fs.existsSync(store.layout.leafLayer(a.name)));
  await w.appendBytes({ file: f, offset: 24 * MiB });
  await w.close();
  t.is(toHex(w.hash), toHex(merkleRoot(bytes)));
  await store.gc();
  t.true((await readAll(store, w.name)).equals(bytes));
  t.truthy(await checkLayer(store.layout.leafLayer(w.name), SIZE, merkleRoot(bytes)));
});

test('a blob not finalized keeps no layer and leaves no temp file; a resumed one finalizes without one', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('same-resume', SIZE);
  const f = file(t, bytes);
  const w = await store.newBlobWriter();
  await w.appendBytes({ file: f, offset: 0, size: 20 * MiB });
  await w.closeWithoutFinalize();
  t.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')).filter((e) => e.endsWith('.leaf')), []);
  const r = await store.resumeBlobWriter(w.name);
  await r.appendBytes({ file: f, offset: 20 * MiB });
  await r.close();
  t.is(toHex(r.hash), toHex(merkleRoot(bytes)));
  t.false(fs.existsSync(store.layout.leafLayer(w.name)));
});

test('a layer that cannot be kept (its folder is a file: ENOTDIR) fails nothing: the blob finalizes with its true root, no temp file is left, and a second put lends nothing', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('same-notdir', SIZE);
  const f = file(t, bytes);
  const layers = path.dirname(path.dirname(store.layout.leafLayer('0'.repeat(32))));
  fs.rmSync(layers, { recursive: true, force: true });
  fs.writeFileSync(layers, 'not a folder');
  const a = await put(store, f);
  t.is(a.hash, toHex(merkleRoot(bytes)));
  t.true((await readAll(store, a.name)).equals(bytes));
  t.false(fs.existsSync(store.layout.leafLayer(a.name)));
  t.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')), [], 'no temp file left');
  // The same bytes again: nothing to lend, the true root all the same.
  const b = await put(store, f);
  t.is(b.hash, a.hash);
  t.is(b.lent, 0);
});
