// FragmentFiles after close: a read still under way (a reader closed while a
// cut connection's get was reading, say) must not open a file that nothing
// would close again; it fails with ERR_CLOSED, and no descriptor is left.
import test from 'ava';
import fs from 'node:fs';
import { FragmentFiles } from '../src/disk/fragments.js';
import { isCabError } from '../src/index.js';
import { putBlob, tempStore } from './helpers/store.js';
import { prngBytes } from '../tools/data.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

test('a read after close is ERR_CLOSED and opens no file', async (t) => {
  const s = await tempStore(t);
  await putBlob(s, prngBytes('ff', 100_000));
  const ids: string[] = [];
  for await (const id of s.listCaIds()) ids.push(id);
  const files = new FragmentFiles(s.cas, 4);
  const buf = new Uint8Array(10);
  await files.read(ids[0]!, buf, 0, 10, 0);
  await files.close();
  const before = openFds();
  const e = await t.throwsAsync(files.read(ids[0]!, buf, 0, 10, 0));
  t.true(isCabError(e, 'ERR_CLOSED'), String(e));
  t.is(openFds(), before);
});
