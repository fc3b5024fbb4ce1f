// Limits of the HTTP face against clients that hold uploads open: at most
// maxUploads upload requests at once (503 + Retry-After beyond), and an
// upload body that stops moving for uploadStallMs is cut, its bytes kept.
import test from 'ava';
import crypto from 'node:crypto';
import http from 'node:http';
import { serve, merkleRoot, toHex, type BlobStore } from '../src/index.js';
import { tempDir, tempStore } from './helpers/store.js';
import { create, served, stalledPatch, tusHeaders, tusUpload } from './helpers/http.js';
import { assertUsage, cli } from './helpers/cli.js';

const patch = (url: string, offset: number, body: Uint8Array) =>
  fetch(url, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' }), body });

/** Waits until a PATCH has taken upload `name` (its writer open: the record touched since `before`), up to 10 s. */
async function untilTaken(store: BlobStore, name: string, before: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((store.tables.uploads.get(name)?.touched.getTime() ?? 0) <= before) {
    if (Date.now() > deadline) throw new Error(`no PATCH took ${name}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('maxUploads: an upload request past the limit is 503 with Retry-After (ERR_TOO_MANY_REQUESTS), HEAD still answers, and once one ends the next is taken; tus-js-client retries the 503', async (t) => {
  const { store, base } = await served(t, { maxUploads: 1 });
  const a = crypto.randomBytes(1000);
  const b = crypto.randomBytes(1000);
  const urlA = await create(base, a.length);
  const urlB = await create(base, b.length);

  // A PATCH that sends 100 bytes and holds on: the one upload the server takes at once.
  const req = http.request(urlA, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': '0', 'content-type': 'application/offset+octet-stream', 'content-length': String(a.length) }) });
  const answerA = new Promise<number>((resolve, reject) => req.on('response', (res) => (res.resume(), resolve(res.statusCode!))).on('error', reject));
  const before = store.tables.uploads.get(urlA.split('/').pop()!)!.touched.getTime();
  await new Promise((r) => setTimeout(r, 5)); // a touch now is a later millisecond
  req.write(a.subarray(0, 100));
  await untilTaken(store, urlA.split('/').pop()!, before);

  const busy = await patch(urlB, 0, b);
  t.is(busy.status, 503);
  t.is(busy.headers.get('retry-after'), '5');
  t.regex(await busy.text(), /^ERR_TOO_MANY_REQUESTS/);
  const post = await fetch(`${base}/files/`, { method: 'POST', headers: tusHeaders({ 'upload-length': '10' }) });
  t.is(post.status, 503);
  t.is(post.headers.get('location'), null);
  const head = await fetch(urlB, { method: 'HEAD', headers: tusHeaders() });
  t.is(head.status, 200);
  t.is(head.headers.get('upload-offset'), '0');

  // tus-js-client, started while the server is full, gets 503s and retries until it is taken.
  const c = crypto.randomBytes(5000);
  let failed = 0;
  const client = tusUpload(`${base}/files/`, c, { token: 'rw', retryDelays: [100, 200, 400, 800, 1000, 1000, 2000, 2000] }).catch((e: unknown) => (failed++, Promise.reject(e)));
  await new Promise((r) => setTimeout(r, 500));
  req.end(a.subarray(100));
  t.is(await answerA, 204);

  t.is((await patch(urlB, 0, b)).status, 204);
  const up = await client;
  t.is(failed, 0);
  t.is(toHex((await store.stat(up.name)).hash!), toHex(merkleRoot(c)));
  t.is(toHex((await store.stat(urlA.split('/').pop()!)).hash!), toHex(merkleRoot(a)));
});

test('uploadStallMs: a PATCH body that stops moving is cut (connection reset); its bytes are durable, the lock is free, and the upload resumes from them', async (t) => {
  const { store, base } = await served(t, { uploadStallMs: 500 });
  const bytes = crypto.randomBytes(300_000);
  const url = await create(base, bytes.length);
  const name = url.split('/').pop()!;

  const t0 = Date.now();
  const { answer } = await stalledPatch(url, 0, bytes.subarray(0, 100_000));
  const got = await answer;
  const waited = Date.now() - t0;
  t.log(`the stalled PATCH ended after ${waited} ms: ${String(got)}`);
  // fetch fails (the connection was reset), it is not answered: the body was cut, not the request refused.
  t.true(got instanceof Error, `fetch gave ${String(got)}`);
  t.true(waited < 10_000, `cut after ${waited} ms`);
  const head = await fetch(url, { method: 'HEAD', headers: tusHeaders() });
  t.is(head.status, 200);
  t.is(head.headers.get('upload-offset'), '100000');
  t.is((await store.stat(name)).size, 100_000);

  const rest = await patch(url, 100_000, bytes.subarray(100_000));
  t.is(rest.status, 204);
  const st = await store.stat(name);
  t.true(st.finalized);
  t.is(toHex(st.hash!), toHex(merkleRoot(bytes)));
});

test('uploadStallMs: a slow body that keeps moving is not cut, however long it takes in all', async (t) => {
  const { store, base } = await served(t, { uploadStallMs: 400 });
  const bytes = crypto.randomBytes(12 * 1000);
  const url = await create(base, bytes.length);
  const req = http.request(url, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': '0', 'content-type': 'application/offset+octet-stream', 'content-length': String(bytes.length) }) });
  const answer = new Promise<number>((resolve, reject) => req.on('response', (res) => (res.resume(), resolve(res.statusCode!))).on('error', reject));
  // 1000 bytes every 150 ms: 1.8 s in all, never 400 ms without a byte.
  for (let at = 0; at < bytes.length; at += 1000) {
    req.write(bytes.subarray(at, at + 1000));
    await new Promise((r) => setTimeout(r, 150));
  }
  req.end();
  t.is(await answer, 204);
  t.is(toHex((await store.stat(url.split('/').pop()!)).hash!), toHex(merkleRoot(bytes)));
});

test('serve() refuses a bad maxUploads or uploadStallMs; the CLI a bad --max-uploads or --upload-stall', async (t) => {
  const store = await tempStore(t);
  for (const o of [{ maxUploads: 0 }, { maxUploads: 1.5 }, { uploadStallMs: -1 }, { uploadStallMs: Number.NaN }]) {
    await t.throwsAsync(serve(store, { tokens: { rw: ['read', 'write'] }, ...o }), { code: 'ERR_BAD_ARGUMENT' }, JSON.stringify(o));
  }
  const dir = tempDir(t);
  const many = await cli(['--store', dir, 'serve', '--insecure', '--max-uploads', '0']);
  assertUsage(t, many, '--max-uploads 0');
  t.regex(many.stderr, /a count is a whole number/);
  const stall = await cli(['--store', dir, 'serve', '--insecure', '--upload-stall', '30']);
  assertUsage(t, stall, '--upload-stall 30');
  t.regex(stall.stderr, /a duration is/);
});
