// Hostile review of verified range reads and leaf layers (2026-12-04): each
// test here failed on the code it was written against and says what a
// demanding user expects instead.
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { isCabError } from '../src/index.js';
import { putBlob, tempStore } from './helpers/store.js';

test('deleteBlob of a blob whose leaf layer path is a directory: a CabError, and not half done (the blob gone, its metadata left)', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, crypto.randomBytes(50_000));
  await store.setBlobMetadata(name, { ownerShares: { sg: 1 }, referenced: new Date(), accessed: new Date() });
  const layer = store.layout.leafLayer(name);
  fs.mkdirSync(layer, { recursive: true });
  let err: unknown;
  try {
    await store.deleteBlob(name);
  } catch (e) {
    err = e;
  }
  t.log(err === undefined ? 'deleteBlob resolved' : `deleteBlob threw ${String((err as { code?: string }).code)}: ${String((err as Error).message)}`);
  if (err === undefined) {
    t.false(await store.has(name));
    t.is(await store.getBlobMetadata(name), undefined, 'its metadata went with it');
  } else {
    t.true(isCabError(err, 'ERR_IO'), 'an I/O failure is ERR_IO');
    t.true(await store.has(name), 'a delete that fails leaves the blob as it was');
  }
});
