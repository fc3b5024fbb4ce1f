// The faces of a bucket-backed store (issue 19): the command line (--s3
// and --s3-endpoint, credentials from the environment, the bucket
// remembered) and the transfer server in front of one.
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, connect, serve } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { cli } from './helpers/cli.js';
import { S3_ENDPOINT, bucketOptions, s3Test } from './helpers/s3.js';
import { putBlob, readAll, tempDir } from './helpers/store.js';

s3Test('put on one store folder, cat on another: the blob goes through the bucket', async (t) => {
  const o = await bucketOptions(t);
  const s3 = ['--s3', `s3://${o.bucket}/${o.prefix}`, '--s3-endpoint', S3_ENDPOINT];
  const dir = tempDir(t);
  const file = path.join(dir, 'data');
  const bytes = prngBytes('s3 cli', 3 * 1024 * 1024 + 5);
  fs.writeFileSync(file, bytes);
  const put = await cli(['--store', path.join(dir, 'a'), ...s3, 'put', file]);
  t.is(put.code, 0, put.stderr);
  t.notRegex(put.stderr, /Warning/, 'no SDK warning on stderr');
  const name = put.out.split(' ')[0]!;
  const cat = await cli(['--store', path.join(dir, 'b'), ...s3, 'cat', name]);
  t.is(cat.code, 1, 'b is not a store yet: reading commands make none');
  t.regex(cat.stderr, /ERR_BAD_STORE: no cabstore store/, 'and say so before asking the bucket anything');
  const elsewhere = await cli(['--store', path.join(dir, 'c'), '--s3', 's3://cabstore-test-no-such-bucket/p', '--s3-endpoint', S3_ENDPOINT, 'cat', name]);
  t.regex(elsewhere.stderr, /ERR_BAD_STORE: no cabstore store/);
  t.is((await cli(['--store', path.join(dir, 'b'), ...s3, 'init'])).code, 0);
  const cat2 = await cli(['--store', path.join(dir, 'b'), 'cat', name]);
  t.is(cat2.code, 0, `the store remembers its bucket: ${cat2.stderr}`);
  t.notRegex(cat2.stderr, /Warning/, 'no SDK warning on stderr without --s3 either');
  t.true(cat2.stdout.equals(bytes));
});

s3Test('--s3 without an endpoint, or a malformed URL, is bad usage (exit 2)', async (t) => {
  const dir = tempDir(t);
  const noEndpoint = await cli(['--store', path.join(dir, 'a'), '--s3', 's3://bucket/p', 'init'], { env: { CABSTORE_S3_ENDPOINT: '' } });
  t.is(noEndpoint.code, 2, noEndpoint.stderr);
  t.regex(noEndpoint.stderr, /--s3-endpoint/);
  const bad = await cli(['--store', path.join(dir, 'a'), '--s3', 'http://bucket', '--s3-endpoint', S3_ENDPOINT, 'init']);
  t.is(bad.code, 1, bad.stderr);
  t.regex(bad.stderr, /ERR_BAD_ARGUMENT/);
  t.false(fs.existsSync(path.join(dir, 'a')), 'nothing made');
});

s3Test('serve in front of a bucket-backed store: a pull gets its blobs (fetched from the bucket), a push lands in the bucket', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, cacheBytes: 0 });
  const writer = await BlobStore.open(path.join(tempDir(t), 'w'), { objectStore: o });
  t.teardown(() => writer.close());
  const bytes = prngBytes('s3 serve', 5 * 1024 * 1024 + 3);
  const name = await putBlob(writer, bytes);
  // A server on another folder of the bucket, with nothing cached: it knows the blob from the bucket alone.
  const front = await BlobStore.open(path.join(tempDir(t), 'f'), { objectStore: o });
  t.teardown(() => front.close());
  const srv = await serve(front, { tokens: { secret: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const local = await BlobStore.open(path.join(tempDir(t), 'local'));
  t.teardown(() => local.close());
  const c = await connect(local, srv.url, { token: 'secret' });
  t.teardown(() => c.close());
  const st = await c.pull(name);
  t.is(st.receivedBytes, bytes.length);
  t.true((await readAll(local, name)).equals(bytes), 'pulled byte-exact');
  const back = prngBytes('s3 serve push', 2 * 1024 * 1024);
  const pushed = await putBlob(local, back);
  await c.push(pushed);
  t.true((await readAll(writer, pushed)).equals(back), 'pushed through the server into the bucket: another store reads it');
});

s3Test('cabstore gc on a bucket-backed store says what it did in the bucket', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0 });
  const dir = tempDir(t);
  const file = path.join(dir, 'data');
  fs.writeFileSync(file, prngBytes('s3 cli gc', 1024 * 1024));
  const s3 = ['--s3', `s3://${o.bucket}/${o.prefix}`, '--s3-endpoint', S3_ENDPOINT];
  t.is((await cli(['--store', path.join(dir, 'a'), ...s3, 'put', file])).code, 0);
  const gc = await cli(['--store', path.join(dir, 'a'), 'gc']);
  t.is(gc.code, 0, gc.stderr);
  t.regex(gc.out, /^bucket: deleted 0 fragments .*, kept \d+ .*; read 1 published descriptor, 1 lease$/m);
});
