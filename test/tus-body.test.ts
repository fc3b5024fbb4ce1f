// tus request bodies read straight from Node's request (src/http/tus-body.ts):
// tus's rules still hold where @tus/server used to read the body itself.
import test from 'ava';
import crypto from 'node:crypto';
import http from 'node:http';
import { serve, merkleRoot, toHex } from '../src/index.js';
import { readAll, tempStore } from './helpers/store.js';
import { stalledPatch, tusHeaders } from './helpers/http.js';

const MiB = 1024 * 1024;
test('a PATCH whose client went silent gives way to a later request on the same upload: what it sent is kept and the upload goes on from there', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const base = `http://127.0.0.1:${srv.port}`;
  const bytes = crypto.randomBytes(8 * MiB);
  const created = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': String(bytes.length) }) });
  t.is(created.status, 201);
  const url = new URL(created.headers.get('location')!, base).href;

  // A body that stops after 3 MiB and never ends: a client whose connection went quiet.
  const first = bytes.subarray(0, 3 * MiB);
  const stalled = (await stalledPatch(url, 0, first)).answer;

  // The HEAD waits for the upload's lock; the stalled PATCH is asked to let go, and after tus's drain
  // time (3 s) it stops reading, keeps what it got and answers.
  const t0 = Date.now();
  const head = await fetch(url, { method: 'HEAD', headers: tusHeaders() });
  t.is(head.status, 200);
  const offset = Number(head.headers.get('upload-offset'));
  t.log(`the HEAD waited ${Date.now() - t0} ms; offset ${offset}`);
  t.true(offset > 0 && offset <= first.length, `offset ${offset}`);
  t.is((await store.stat(head.url.split('/').pop()!)).size, offset);
  await stalled;

  const rest = await fetch(url, {
    method: 'PATCH',
    headers: tusHeaders({ 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' }),
    body: bytes.subarray(offset),
  });
  t.is(rest.status, 204);
  t.is(rest.headers.get('upload-offset'), String(bytes.length));
  const st = await store.stat(url.split('/').pop()!);
  t.true(st.finalized);
  t.is(toHex(st.hash!), toHex(merkleRoot(bytes)));
});

test('creation-with-upload: a POST that carries the whole body makes the upload and finishes it', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const bytes = crypto.randomBytes(3 * MiB + 17);
  const r = await fetch(`http://127.0.0.1:${srv.port}/files/`, {
    method: 'POST',
    headers: tusHeaders({ 'upload-length': String(bytes.length), 'content-type': 'application/offset+octet-stream' }),
    body: bytes,
  });
  t.is(r.status, 201);
  t.is(r.headers.get('upload-offset'), String(bytes.length));
  const st = await store.stat(r.headers.get('location')!.split('/').pop()!);
  t.true(st.finalized);
  t.is(toHex(st.hash!), toHex(merkleRoot(bytes)));
});

test('a deferred-length upload streamed past maxUploadSize is 413; the bytes before the piece that crossed it stay', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] }, maxUploadSize: 2 * MiB });
  t.teardown(() => srv.close());
  const base = `http://127.0.0.1:${srv.port}`;
  const created = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-defer-length': '1' }) });
  t.is(created.status, 201);
  const name = created.headers.get('location')!.split('/').pop()!;
  const bytes = crypto.randomBytes(4 * MiB);
  // Chunked (no Content-Length): tus cannot refuse it up front; the limit is met as the body comes.
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (let at = 0; at < bytes.length; at += 256 * 1024) c.enqueue(bytes.subarray(at, at + 256 * 1024));
      c.close();
    },
  });
  const r = await fetch(new URL(`/files/${name}`, base), {
    method: 'PATCH',
    headers: tusHeaders({ 'upload-offset': '0', 'content-type': 'application/offset+octet-stream' }),
    body,
    duplex: 'half',
  } as RequestInit).catch((e: unknown) => e);
  if (r instanceof Response) t.is(r.status, 413);
  else t.log(`the client saw the connection close before the answer: ${String(r)}`);
  const st = await store.stat(name);
  t.false(st.finalized);
  t.true(st.size <= 2 * MiB, `${st.size} bytes stored`);
  t.true((await readAll(store, name)).equals(bytes.subarray(0, st.size)));
});

test('creation-with-upload refused (413) or cut leaves no upload behind: the client got no Location, so no one could resume or delete it', async (t) => {
  const store = await tempStore(t);
  // uploadExpiryMs 0: uploads never expire, so whatever is left would stay for good.
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] }, uploadExpiryMs: 0, maxUploadSize: 1000 });
  t.teardown(() => srv.close());
  const base = `http://127.0.0.1:${srv.port}`;
  const post = (headers: Record<string, string>, body: Uint8Array) => fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'content-type': 'application/offset+octet-stream', ...headers }), body });
  const left = async () => {
    const blobs: string[] = [];
    for await (const n of store.listBlobIds()) blobs.push(n);
    const records: string[] = [];
    for await (const [n] of store.tables.uploads.stream()) records.push(n);
    return { blobs, records };
  };

  // A body longer than the Upload-Length (refused by tus before the data store sees it).
  const over = await post({ 'upload-length': '50' }, crypto.randomBytes(80));
  t.is(over.status, 413);
  t.is(over.headers.get('location'), null);
  // A deferred length, and a body past maxUploadSize (refused by the data store part way).
  const deferred = await post({ 'upload-defer-length': '1' }, crypto.randomBytes(5000));
  t.is(deferred.status, 413);
  t.deepEqual(await left(), { blobs: [], records: [] });

  // A body cut short: the client went away mid-POST (its answer never came, nor its Location).
  const req = http.request(`${base}/files/`, {
    method: 'POST',
    headers: tusHeaders({ 'content-type': 'application/offset+octet-stream', 'upload-length': '900', 'content-length': '900' }),
  });
  req.on('error', () => {}); // destroyed below
  req.write(crypto.randomBytes(500));
  // Once the server has made the upload (its record is there), the client goes.
  const made = Date.now() + 10_000;
  while ((await left()).records.length === 0 && Date.now() < made) await new Promise((r) => setTimeout(r, 20));
  t.is((await left()).records.length, 1, 'the POST made its upload');
  req.destroy();
  const deadline = Date.now() + 10_000;
  while ((await left()).records.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(await left(), { blobs: [], records: [] });

  // A POST that is answered 201 keeps its upload.
  const ok = await post({ 'upload-length': '100' }, crypto.randomBytes(60));
  t.is(ok.status, 201);
  const name = ok.headers.get('location')!.split('/').pop()!;
  t.deepEqual(await left(), { blobs: [name], records: [name] });
  t.is((await store.stat(name)).size, 60);
});
