// When BlobStore.open makes a store: in a new or empty directory unless
// `create: false`; never in a directory that holds other files.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, CabError } from '../src/index.js';
import { putBlob, readAll, tempDir } from './helpers/store.js';

async function refused(t: import('ava').ExecutionContext, p: Promise<unknown>, reason: string): Promise<void> {
  const e = await t.throwsAsync(p, { instanceOf: CabError });
  t.is(e!.code, 'ERR_BAD_STORE', e!.message);
  t.is(e!.data.reason, reason, e!.message);
}

test('create: false on a missing or empty directory is ERR_BAD_STORE (reason absent), on a file not-a-directory, and creates nothing', async (t) => {
  const dir = tempDir(t);
  const absent = path.join(dir, 'absent', 'deeper');
  await refused(t, BlobStore.open(absent, { create: false }), 'absent');
  t.false(fs.existsSync(path.join(dir, 'absent')), 'no directory made');
  const empty = path.join(dir, 'empty');
  fs.mkdirSync(empty);
  await refused(t, BlobStore.open(empty, { create: false }), 'absent');
  t.deepEqual(fs.readdirSync(empty), [], 'the empty directory stays empty');
  const file = path.join(dir, 'file');
  fs.writeFileSync(file, 'x');
  // A file in the way is not "absent": init would fail there too.
  await refused(t, BlobStore.open(file, { create: false }), 'not-a-directory');
  await refused(t, BlobStore.open(path.join(file, 'below'), { create: false }), 'not-a-directory');
});

test('an existing store opens with create: false', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  const name = await putBlob(s, Buffer.from('kept'));
  await s.close();
  const again = await BlobStore.open(dir, { create: false });
  t.teardown(() => again.close());
  t.deepEqual(await readAll(again, name), Buffer.from('kept'));
});

test('a directory of other files is never made a store (reason not-empty), and is left as it was', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine');
  fs.mkdirSync(path.join(dir, 'photos'));
  await refused(t, BlobStore.open(dir), 'not-empty');
  await refused(t, BlobStore.open(dir, { create: true }), 'not-empty');
  t.deepEqual(fs.readdirSync(dir).sort(), ['notes.txt', 'photos']);
  // A dotfile is a file too.
  const hidden = tempDir(t);
  fs.writeFileSync(path.join(hidden, '.DS_Store'), '');
  await refused(t, BlobStore.open(hidden), 'not-empty');
});

test('a file where the store should be is ERR_BAD_STORE (reason not-a-directory)', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'file');
  fs.writeFileSync(file, 'x');
  await refused(t, BlobStore.open(file), 'not-a-directory');
  t.is(fs.readFileSync(file, 'utf8'), 'x');
});

test('a new or empty directory becomes a store, also with a temp cabstore.json left by a process that died making it', async (t) => {
  for (const root of [path.join(tempDir(t), 'new', 'deeper'), tempDir(t)]) {
    const s = await BlobStore.open(root);
    await s.close();
    t.true(fs.existsSync(path.join(root, 'cabstore.json')), root);
  }
  const leftover = tempDir(t);
  fs.writeFileSync(path.join(leftover, 'cabstore.json.12345.tmp'), '{"form');
  const s = await BlobStore.open(leftover);
  await s.close();
  t.true(fs.existsSync(path.join(leftover, 'cabstore.json')));
});

test('opens racing to make the same new store all succeed, on one store', async (t) => {
  const root = path.join(tempDir(t), 'race');
  const stores = await Promise.all(Array.from({ length: 6 }, () => BlobStore.open(root)));
  t.teardown(() => Promise.all(stores.map((s) => s.close())));
  const name = await putBlob(stores[0]!, Buffer.from('seen by all'));
  for (const s of stores) t.deepEqual(await readAll(s, name), Buffer.from('seen by all'));
});
