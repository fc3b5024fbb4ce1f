// The eighth session's left-outs (ninth session, branch left9): tus metadata
// keys that name Object.prototype's properties, sync-table record sizes, a
// silent peer's slot freed at once by the idle cut, the leaf helper's
// BEHIND bound. Real sockets, real files.
import test from 'ava';
import { newBlobName } from '../src/format/layout.js';
import { served, tusHeaders } from './helpers/http.js';
import { tempStore } from './helpers/store.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');

test('tus: an Upload-Metadata key "__proto__", "constructor" or "toString" is 400 ERR_BAD_ARGUMENT with no upload made; "prototype" is kept as given', async (t) => {
  const { store, base } = await served(t, {});
  for (const key of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
    const r = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': `filename ${b64('a')},${key} ${b64('x')}` }) });
    t.is(r.status, 400, key);
    t.regex(await r.text(), /^ERR_BAD_ARGUMENT: .*Upload-Metadata.*key/, key);
    t.is(r.headers.get('tus-resumable'), '1.0.0');
  }
  const left: string[] = [];
  for await (const [name] of store.tables.uploads.stream()) left.push(name);
  t.deepEqual(left, [], 'no upload was made by a refused POST');

  const ok = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '5', 'upload-metadata': `prototype ${b64('x')},filename ${b64('f')}` }) });
  t.is(ok.status, 201);
  const head = await fetch(new URL(ok.headers.get('location')!, base), { method: 'HEAD', headers: tusHeaders() });
  t.is(head.headers.get('upload-metadata'), `prototype ${b64('x')},filename ${b64('f')}`);
});

test('the uploads table: a metadata key "__proto__" (from JSON) is ERR_BAD_ARGUMENT, not dropped; other names of Object.prototype are kept', async (t) => {
  const store = await tempStore(t);
  const name = newBlobName();
  const metadata = JSON.parse('{"__proto__": "x", "filename": "f"}') as Record<string, string>;
  const e = await t.throwsAsync(store.tables.uploads.set(name, { length: 5, metadata, touched: new Date() }));
  t.is((e as { code?: string }).code, 'ERR_BAD_ARGUMENT');
  t.is(store.tables.uploads.get(name), undefined, 'nothing stored');
  await store.tables.uploads.set(name, { length: 5, metadata: { constructor: 'c', toString: null }, touched: new Date() });
  t.deepEqual(Object.entries(store.tables.uploads.get(name)!.metadata), [['constructor', 'c'], ['toString', null]]);
});
