// The command line on a bucket-backed store (issue 19): --s3 and
// --s3-endpoint, credentials from the environment, the bucket remembered.
import fs from 'node:fs';
import path from 'node:path';
import { prngBytes } from '../tools/data.js';
import { cli } from './helpers/cli.js';
import { S3_ENDPOINT, bucketOptions, s3Test } from './helpers/s3.js';
import { tempDir } from './helpers/store.js';

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
  t.is((await cli(['--store', path.join(dir, 'b'), ...s3, 'init'])).code, 0);
  const cat2 = await cli(['--store', path.join(dir, 'b'), 'cat', name]);
  t.is(cat2.code, 0, `the store remembers its bucket: ${cat2.stderr}`);
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
