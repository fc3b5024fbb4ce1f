// The real S3 server the bucket-backed tests run against: Ceph radosgw, as
// scripts/s3-server.sh starts it (README, "Tests"). No mock: where no server
// answers, those tests are registered as skipped (ava lists them as such,
// never as passed) and a line on stderr says why and how to start one;
// with CABSTORE_S3_REQUIRED=1 (.ci/run) an unreachable server fails instead.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import test, { type ExecutionContext, type ImplementationFn } from 'ava';
import { ObjectStore } from '../../src/bucket/object-store.js';
import { BlobStore, type ObjectStoreOptions, type StoreOptions } from '../../src/index.js';
import { prngBytes } from '../../tools/data.js';
import { putBlob, tempDir } from './store.js';

export const S3_ENDPOINT = process.env.CABSTORE_S3_ENDPOINT ?? 'http://127.0.0.1:17480';
// As a user would: the credentials in the environment (scripts/s3-server.sh's user unless set).
process.env.AWS_ACCESS_KEY_ID ??= 'testkey';
process.env.AWS_SECRET_ACCESS_KEY ??= 'testsecret';
export const S3_CREDENTIALS = { accessKeyId: process.env.AWS_ACCESS_KEY_ID, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY };
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Why the server cannot be used, or undefined if it answers. */
async function probe(): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = http.get(S3_ENDPOINT, { timeout: 3000 }, (res) => {
      res.resume();
      resolve(res.statusCode !== undefined && res.statusCode < 500 ? undefined : `it answers HTTP ${res.statusCode}`);
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 3 s')));
    req.on('error', (e) => resolve(e.message));
  });
}

// A server that refuses the connection is not there; one that is slow to answer (busy with other test files'
// traffic, on a loaded machine) is asked again, for up to about 20 s, before its tests count as NOT RUN.
let why = await probe();
for (let i = 0; i < 4 && why?.startsWith('no answer'); i++) why = await probe();
if (why !== undefined) {
  const msg = `S3 tests NOT RUN: no S3 server at ${S3_ENDPOINT} (${why}). Start one with \`scripts/s3-server.sh start\` (README, "Tests"), or set CABSTORE_S3_ENDPOINT.`;
  console.error(`\n*** ${msg}\n`);
  if (process.env.CABSTORE_S3_REQUIRED === '1') test('the S3 server is reachable (CABSTORE_S3_REQUIRED=1)', (t) => t.fail(msg));
}

/** An ava test that needs the S3 server: skipped (not passed) when there is none. */
export function s3Test(title: string, fn: ImplementationFn<[]>): void {
  if (why === undefined) test(title, fn);
  else test.skip(`${title} [no S3 server at ${S3_ENDPOINT}]`, fn);
}

/** The same, serial (for tests that time or count what the server holds). */
s3Test.serial = (title: string, fn: ImplementationFn<[]>): void => {
  if (why === undefined) test.serial(title, fn);
  else test.skip(`${title} [no S3 server at ${S3_ENDPOINT}]`, fn);
};

let shared: Promise<{ os: ObjectStore; bucket: string }> | undefined;

/**
 * A bucket for this test file, made on first use (a new bucket's first
 * write takes about 2 s on radosgw, so a file shares one and each test
 * takes a prefix of its own), emptied and removed when the file's tests
 * are done.
 */
export function fileBucket(): Promise<{ os: ObjectStore; bucket: string }> {
  shared ??= (async () => {
    const bucket = `cabstore-test-${crypto.randomBytes(6).toString('hex')}`;
    const os = await ObjectStore.connect({ endpoint: S3_ENDPOINT, bucket, region: 'us-east-1', credentials: S3_CREDENTIALS });
    await os.ensureBucket(true);
    await os.put('warm-up', new Uint8Array(1)); // the slow first write, done once
    return { os, bucket };
  })();
  return shared;
}

test.after.always('remove the test bucket', async () => {
  if (!shared) return;
  const { os } = await shared;
  await emptyBucket(os);
  os.close();
});

/** Deletes every object and upload in the bucket, and the bucket. */
export async function emptyBucket(os: ObjectStore): Promise<void> {
  const keys: string[] = [];
  for await (const o of os.list('')) keys.push(o.key);
  await os.deleteMany(keys);
  for await (const u of os.listUploads('')) await os.abortUpload(u.key, u.uploadId);
  await os.deleteBucket();
}

/** objectStore options for a store on this file's bucket under a prefix of the test's own. */
export async function bucketOptions(t: ExecutionContext, extra: Partial<ObjectStoreOptions> = {}): Promise<ObjectStoreOptions> {
  const { bucket } = await fileBucket();
  return { endpoint: S3_ENDPOINT, bucket, prefix: `t-${crypto.randomBytes(4).toString('hex')}/`, credentials: S3_CREDENTIALS, ...extra };
}

/** Keys and sizes of the objects under `prefix`. */
export async function objects(prefix: string): Promise<Map<string, number>> {
  const { os } = await fileBucket();
  const out = new Map<string, number>();
  for await (const o of os.list(prefix)) out.set(o.key, o.size);
  return out;
}

/** Files under `dir` of `root`, recursively (none if it is absent). */
export function filesUnder(root: string, dir: string): string[] {
  const at = path.join(root, dir);
  if (!fs.existsSync(at)) return [];
  return fs.readdirSync(at, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

/** Waits (up to 10 s, every 50 ms) for `cond`; throws naming `what` if it never holds. */
export async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 50));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

/** A store on a fresh folder, closed at the end of the test. */
export async function openTemp(t: ExecutionContext, o: StoreOptions): Promise<BlobStore> {
  const s = await BlobStore.open(path.join(tempDir(t), 's'), o);
  t.teardown(() => s.close());
  return s;
}

/**
 * A blob of `size` bytes of `seed` written in one fragment (so a blob offset
 * is a fragment offset) to a fresh bucket, whose object then has byte `at`
 * changed; `b`, a second store on the bucket with no cache, reads it cold.
 * `chunk`: the chunk holding `at`; `restore` puts the object back.
 */
export async function blobWithBadByte(t: ExecutionContext, seed: string, size: number, at: number, flip: number) {
  const objectStore = await bucketOptions(t, { syncInterval: 0 });
  const a = await openTemp(t, { objectStore, fragmentSize: 64 * 1024 * 1024 });
  const bytes = prngBytes(seed, size);
  const name = await putBlob(a, bytes);
  const frags = [...(await objects(`${objectStore.prefix}cas/`)).keys()];
  t.is(frags.length, 1, 'one fragment: blob offset = fragment offset');
  const { os } = await fileBucket();
  const saved = (await os.get(frags[0]!))!;
  const bad = Buffer.from(saved);
  bad[at] ^= flip;
  await os.put(frags[0]!, bad);
  const b = await openTemp(t, { objectStore: { ...objectStore, cacheBytes: 0 } });
  const r = await b.newBlobReader(name);
  let chunk = { start: 0, size: 0 };
  for await (const x of r.chunks()) if (x.start <= at && at < x.start + x.size) chunk = x;
  await r.close();
  return { b, name, bytes, fragment: frags[0]!, chunk, restore: () => os.put(frags[0]!, saved) };
}
