// The HTTP face on the server's port: ranged reads through Node's fetch and
// curl, tus uploads through tus-js-client, tokens, expiry.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { serve, merkleRoot, toHex, connect, type BlobStore, type CabServer, type ServeOptions } from '../src/index.js';
import { parseRange } from '../src/http/range.js';
import { putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { get, stalledPatch, tusHeaders, tusUpload } from './helpers/http.js';
import { fragmentBytes } from '../tools/bench/tus-kill.js';

const TOKENS = { rw: ['read', 'write'], ro: ['read'], wo: ['write'] } as const;

async function served(t: ExecutionContext, store: BlobStore, o: ServeOptions = {}): Promise<{ srv: CabServer; base: string }> {
  const srv = await serve(store, { tokens: { rw: [...TOKENS.rw], ro: [...TOKENS.ro], wo: [...TOKENS.wo] }, ...o });
  t.teardown(() => srv.close());
  return { srv, base: `http://127.0.0.1:${srv.port}` };
}

const random = (n: number) => crypto.randomBytes(n);

test('parseRange: single ranges, suffixes, ends past the blob, unsatisfiable, and what is ignored', (t) => {
  t.deepEqual(parseRange('bytes=1000-2000', 5000), { kind: 'range', start: 1000, end: 2001 });
  t.deepEqual(parseRange('bytes=1000-', 5000), { kind: 'range', start: 1000, end: 5000 });
  t.deepEqual(parseRange('bytes=-500', 5000), { kind: 'range', start: 4500, end: 5000 });
  t.deepEqual(parseRange('bytes=-9000', 5000), { kind: 'range', start: 0, end: 5000 });
  t.deepEqual(parseRange('bytes=4000-9999', 5000), { kind: 'range', start: 4000, end: 5000 });
  t.deepEqual(parseRange('bytes=5000-', 5000), { kind: 'unsatisfiable' });
  t.deepEqual(parseRange('bytes=-0', 5000), { kind: 'unsatisfiable' });
  t.deepEqual(parseRange('bytes=0-', 0), { kind: 'unsatisfiable' });
  // Positions past what a double holds exactly are still positions (RFC 9110: a last-pos past the end means the end).
  t.deepEqual(parseRange('bytes=0-99999999999999999999', 5000), { kind: 'range', start: 0, end: 5000 });
  t.deepEqual(parseRange(`bytes=10-${'9'.repeat(400)}`, 5000), { kind: 'range', start: 10, end: 5000 });
  t.deepEqual(parseRange('bytes=-99999999999999999999', 5000), { kind: 'range', start: 0, end: 5000 });
  t.deepEqual(parseRange('bytes=99999999999999999999-', 5000), { kind: 'unsatisfiable' });
  t.deepEqual(parseRange('bytes=99999999999999999999-99999999999999999999', 5000), { kind: 'unsatisfiable' });
  for (const ignored of [undefined, 'bytes=0-1,5-6', 'items=0-5', 'bytes=5-1', 'bytes=-', 'bytes=a-b', 'bytes=99999999999999999999-9']) {
    t.deepEqual(parseRange(ignored, 5000), { kind: 'all' }, String(ignored));
  }
});

test('GET and HEAD /blobs/NAME: ranges with fetch, 416, 304, ETag and the root header', async (t) => {
  const store = await tempStore(t);
  const bytes = random(300_000);
  const name = await putBlob(store, bytes);
  const root = toHex(merkleRoot(bytes));
  const { base } = await served(t, store);
  const url = `${base}/blobs/${name}`;

  const whole = await get(url, 'ro');
  t.is(whole.status, 200);
  t.true(Buffer.from(await whole.arrayBuffer()).equals(bytes));

  const part = await get(url, 'ro', { range: 'bytes=1000-2000' });
  t.is(part.status, 206);
  t.is(part.headers.get('content-range'), `bytes 1000-2000/${bytes.length}`);
  t.is(part.headers.get('content-length'), '1001');
  t.true(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(1000, 2001)));

  const tail = await get(url, 'ro', { range: 'bytes=-500' });
  t.true(Buffer.from(await tail.arrayBuffer()).equals(bytes.subarray(bytes.length - 500)));

  // A last position past what any blob holds is the end (RFC 9110 §14.1.2): 206 with what there is.
  const huge = await get(url, 'ro', { range: 'bytes=100-99999999999999999999' });
  t.is(huge.status, 206);
  t.is(huge.headers.get('content-range'), `bytes 100-${bytes.length - 1}/${bytes.length}`);
  t.true(Buffer.from(await huge.arrayBuffer()).equals(bytes.subarray(100)));

  const head = await get(url, 'ro', {}, 'HEAD');
  t.is(head.status, 200);
  t.is(head.headers.get('content-length'), String(bytes.length));
  t.is(head.headers.get('accept-ranges'), 'bytes');
  t.is(head.headers.get('etag'), `"${root}"`);
  t.is(head.headers.get('x-cabstore-root'), root);
  t.is((await head.arrayBuffer()).byteLength, 0);

  const bad = await get(url, 'ro', { range: `bytes=${bytes.length}-` });
  t.is(bad.status, 416);
  t.is(bad.headers.get('content-range'), `bytes */${bytes.length}`);
  t.is((await bad.arrayBuffer()).byteLength, 0);

  t.is((await get(url, 'ro', { 'if-none-match': `"${root}"` })).status, 304);
  // If-Range with another tag: the whole blob, not the range.
  const stale = await get(url, 'ro', { range: 'bytes=0-9', 'if-range': '"0000"' });
  t.is(stale.status, 200);
  t.is((await stale.arrayBuffer()).byteLength, bytes.length);
  // GET /files/NAME reads the blob too.
  const viaFiles = await get(`${base}/files/${name}`, 'ro', { range: 'bytes=10-19' });
  t.true(Buffer.from(await viaFiles.arrayBuffer()).equals(bytes.subarray(10, 20)));
});

test('tokens: a bad or missing one is 401 with no blob bytes, a token without the permission 403; unknown blobs 404, unfinished 409', async (t) => {
  const store = await tempStore(t);
  const bytes = random(50_000);
  const name = await putBlob(store, bytes);
  const { base } = await served(t, store);
  const url = `${base}/blobs/${name}`;
  for (const r of [await get(url, 'nope'), await fetch(url), await fetch(url, { headers: { authorization: 'Basic cnc6cnc=' } })]) {
    t.is(r.status, 401);
    t.regex(r.headers.get('www-authenticate') ?? '', /^Bearer/);
    t.is(r.headers.get('content-range'), null);
    const body = Buffer.from(await r.arrayBuffer());
    t.true(body.length < 100 && !body.includes(bytes.subarray(0, 16)));
  }
  const wo = await get(url, 'wo');
  t.is(wo.status, 403);
  await wo.arrayBuffer();
  const roUpload = await fetch(`${base}/files/`, { method: 'POST', headers: { authorization: 'Bearer ro', 'tus-resumable': '1.0.0', 'upload-length': '10' } });
  t.is(roUpload.status, 403);
  await roUpload.arrayBuffer();
  t.is((await get(`${base}/blobs/${'0'.repeat(32)}`, 'ro')).status, 404);
  t.is((await get(`${base}/blobs/not-a-name`, 'ro')).status, 404);
  t.is((await get(`${base}/elsewhere`, 'ro')).status, 404);
  const w = await store.newBlobWriter();
  await w.appendBytes(bytes);
  await w.flush();
  t.is((await get(`${base}/blobs/${w.name}`, 'ro')).status, 409);
  await w.close();
  t.is((await get(`${base}/blobs/${w.name}`, 'ro')).status, 200);
  // The WebSocket protocol still answers on the same port.
  const other = await tempStore(t);
  const c = await connect(other, `ws://127.0.0.1:${new URL(base).port}`, { token: 'ro' });
  t.is((await c.stat(name)).size, bytes.length);
  await c.close();
});

test('curl -r 1000-2000 returns exactly those bytes', async (t) => {
  if (spawnSync('curl', ['--version']).error) {
    t.log('curl is not installed here: this test checks nothing');
    t.pass();
    return;
  }
  const store = await tempStore(t);
  const bytes = random(100_000);
  const name = await putBlob(store, bytes);
  const { base } = await served(t, store);
  const r = await new Promise<{ status: number | null; out: Buffer }>((resolve) => {
    const c = spawn('curl', ['-s', '-f', '-r', '1000-2000', '-H', 'Authorization: Bearer ro', `${base}/blobs/${name}`]);
    const out: Buffer[] = [];
    c.stdout.on('data', (d: Buffer) => out.push(d));
    c.on('close', (status: number | null) => resolve({ status, out: Buffer.concat(out) }));
  });
  t.is(r.status, 0);
  t.true(r.out.equals(bytes.subarray(1000, 2001)));
});

test('tus-js-client uploads a file: Location /files/NAME, the blob at /blobs/NAME with the right root; the same file again is stored once', async (t) => {
  const store = await tempStore(t);
  const dir = tempDir(t);
  const file = path.join(dir, 'up.bin');
  const bytes = random(9 * 1024 * 1024 + 12345);
  fs.writeFileSync(file, bytes);
  const { base } = await served(t, store);
  const first = await tusUpload(`${base}/files/`, file, { token: 'rw', metadata: { filename: 'up.bin' } });
  t.is(new URL(first.url).pathname, `/files/${first.name}`);
  const st = await store.stat(first.name);
  t.true(st.finalized);
  t.is(toHex(st.hash!), toHex(merkleRoot(bytes)));
  const r = await get(`${base}/blobs/${first.name}`, 'ro');
  t.true(Buffer.from(await r.arrayBuffer()).equals(bytes));
  // The upload's metadata was kept: a HEAD on it says so.
  const head = await fetch(first.url, { method: 'HEAD', headers: { authorization: 'Bearer rw', 'tus-resumable': '1.0.0' } });
  t.is(head.headers.get('upload-offset'), String(bytes.length));
  t.is(head.headers.get('upload-metadata'), `filename ${Buffer.from('up.bin').toString('base64')}`);

  const before = fragmentBytes(store.layout.root);
  const second = await tusUpload(`${base}/files/`, bytes, { token: 'rw', chunkSize: 3 * 1024 * 1024 });
  t.not(second.name, first.name);
  t.is(toHex((await store.stat(second.name)).hash!), toHex(merkleRoot(bytes)));
  t.true(fragmentBytes(store.layout.root) - before < 1024 * 1024, 'the second copy adds (almost) no fragment bytes');
});

const patch = (url: string, offset: number, body: Buffer) =>
  fetch(url, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' }), body });

async function create(base: string, length: number): Promise<{ url: string; name: string }> {
  const r = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': String(length) }) });
  if (r.status !== 201) throw new Error(`POST answered ${r.status}: ${await r.text()}`);
  const loc = r.headers.get('location')!;
  return { url: new URL(loc, base).href, name: loc.split('/').pop()! };
}

test('tus by hand: a body past Upload-Length is 413 and stores nothing past the length; a wrong offset 409; the right bytes finish it', async (t) => {
  const store = await tempStore(t);
  const { base } = await served(t, store);
  const { url, name } = await create(base, 100);
  t.regex(new URL(url).pathname, /^\/files\/[0-9a-f]{32}$/);
  const body = random(150);
  const over = await patch(url, 0, body);
  t.is(over.status, 413);
  t.true((await store.stat(name)).size <= 100);
  t.false((await store.stat(name)).finalized);
  t.is((await patch(url, 7, body.subarray(0, 10))).status, 409);
  const at = (await store.stat(name)).size;
  const done = await patch(url, at, body.subarray(at, 100));
  t.is(done.status, 204);
  t.is(done.headers.get('upload-offset'), '100');
  t.true((await readAll(store, name)).equals(body.subarray(0, 100)));
  t.true((await store.stat(name)).finalized);
  // Finished: not terminable through tus; a zero-length upload is finished at once.
  t.is((await fetch(url, { method: 'DELETE', headers: tusHeaders() })).status, 400);
  t.true(await store.has(name));
  const empty = await create(base, 0);
  t.true((await store.stat(empty.name)).finalized);
});

test('tus termination deletes the unfinished blob; an upload untouched past uploadExpiryMs expires, a finished one keeps its blob', async (t) => {
  const store = await tempStore(t);
  const { base } = await served(t, store, { uploadExpiryMs: 1000 });
  const gone = await create(base, 1000);
  t.is((await patch(gone.url, 0, random(300))).status, 204);
  t.is((await fetch(gone.url, { method: 'DELETE', headers: tusHeaders() })).status, 204);
  t.false(await store.has(gone.name));
  t.is((await fetch(gone.url, { method: 'HEAD', headers: tusHeaders() })).status, 404);

  const abandoned = await create(base, 1000);
  t.is((await patch(abandoned.url, 0, random(300))).status, 204);
  const finished = await create(base, 10);
  t.is((await patch(finished.url, 0, random(10))).status, 204);
  const deadline = Date.now() + 15_000;
  while ((await store.has(abandoned.name)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  t.false(await store.has(abandoned.name), 'the abandoned upload was swept');
  t.true((await store.stat(finished.name)).finalized, 'the finished upload stays');
  t.is((await fetch(abandoned.url, { method: 'HEAD', headers: tusHeaders() })).status, 404);
});

test('failed tokens over HTTP count against the address: past maxAuthFailures every request is 429, even with a good token', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, random(1000));
  const { base } = await served(t, store, { maxAuthFailures: 2, authFailureWindowMs: 60_000 });
  const url = `${base}/blobs/${name}`;
  t.is((await get(url, 'bad1')).status, 401);
  t.is((await get(url, 'bad2')).status, 401);
  const refused = await get(url, 'ro');
  t.is(refused.status, 429);
  t.truthy(refused.headers.get('retry-after'));
});

test('closing the server during a PATCH: the request ends, what arrived is durable, and the store closes', async (t) => {
  const dir = tempDir(t);
  const { BlobStore } = await import('../src/index.js');
  const store = await BlobStore.open(dir);
  const srv = await serve(store, { tokens: { rw: ['read', 'write'] } });
  const base = `http://127.0.0.1:${srv.port}`;
  const { url, name } = await create(base, 10 * 1024 * 1024);
  const first = random(3 * 1024 * 1024);
  // A body that never ends: the request hangs until the server goes.
  const req = (await stalledPatch(url, 0, first)).answer;
  await srv.close();
  await req;
  await store.close();
  const again = await BlobStore.open(dir);
  t.teardown(() => again.close());
  const st = await again.stat(name);
  t.false(st.finalized);
  t.true(st.size <= first.length);
  t.log(`${st.size} of ${first.length} bytes durable`);
  t.true((await readAll(again, name)).equals(first.subarray(0, st.size)));
});

test('serve --upload-expiry takes a duration with a unit; anything else is bad usage', async (t) => {
  const { durationArg } = await import('../tools/args.js');
  t.is(durationArg('90s'), 90_000);
  t.is(durationArg('24h'), 86_400_000);
  t.is(durationArg('500ms'), 500);
  t.is(durationArg('0'), 0);
  for (const bad of ['10', '1.5h', 'soon', '-1s']) t.throws(() => durationArg(bad), undefined, bad);
  const { cli, assertUsage } = await import('./helpers/cli.js');
  const dir = tempDir(t);
  assertUsage(t, await cli(['--store', dir, 'serve', '--insecure', '--upload-expiry', 'soon']), 'a duration');
});

test('GET ?follow=1 of a blob being written streams its bytes as they are flushed and ends at finalize, with the root in a trailer', async (t) => {
  const store = await tempStore(t);
  const { base } = await served(t, store);
  const data = random(3 * 1024 * 1024 + 777);
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, 1_000_000));
  await w.flush();
  const http = await import('node:http');
  const body: Buffer[] = [];
  let got = 0;
  const firstBytes = new Promise<void>((resolve) => {
    const wait = setInterval(() => {
      if (got > 0) {
        clearInterval(wait);
        resolve();
      }
    }, 5);
  });
  const done = new Promise<{ status: number; trailers: NodeJS.Dict<string> }>((resolve, reject) => {
    http
      .get(`${base}/blobs/${w.name}?follow=1`, { headers: { authorization: 'Bearer ro' } }, (res) => {
        res.on('data', (b: Buffer) => {
          body.push(b);
          got += b.length;
        });
        res.on('end', () => resolve({ status: res.statusCode!, trailers: res.trailers }));
        res.on('error', reject);
      })
      .on('error', reject);
  });
  await firstBytes; // bytes flushed before the blob is finalized reach the client
  t.false(w.isFinalized);
  await w.appendBytes(data.subarray(1_000_000));
  await w.close();
  const r = await done;
  t.is(r.status, 200);
  t.true(Buffer.concat(body).equals(data), 'every byte, in order');
  t.is(r.trailers['x-cabstore-root'], toHex(merkleRoot(data)));
  // A Range cannot be followed; HEAD of an unfinished blob is still 409.
  const w2 = await store.newBlobWriter();
  await w2.appendBytes(data.subarray(0, 1000));
  await w2.flush();
  t.is((await get(`${base}/blobs/${w2.name}?follow=1`, 'ro', { range: 'bytes=0-10' })).status, 416);
  t.is((await get(`${base}/blobs/${w2.name}`, 'ro')).status, 409);
  await w2.closeWithoutFinalize();
});
