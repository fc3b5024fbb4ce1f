import test from 'ava';
import fs from 'node:fs';
import { ERROR_CODES, CabError, isCabError } from '../src/index.js';
import { descriptorPath, blobDirPath } from './helpers/paths.js';

test('every error code is documented in the README', (t) => {
  const readme = fs.readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  for (const code of Object.keys(ERROR_CODES)) t.true(readme.includes(`\`${code}\``), `${code} is missing from README.md`);
});

test('CabError carries its code, data and cause', (t) => {
  const cause = new Error('low level');
  const e = new CabError('ERR_NO_SUCH_BLOB', 'no blob x', { blob: 'x' }, { cause });
  t.is(e.code, 'ERR_NO_SUCH_BLOB');
  t.is(e.data.blob, 'x');
  t.is(e.cause, cause);
  t.true(isCabError(e, 'ERR_NO_SUCH_BLOB'));
  t.false(isCabError(e, 'ERR_CLOSED'));
  t.false(isCabError(cause));
  t.regex(e.message, /^ERR_NO_SUCH_BLOB: /);
});

test('a store or descriptor of a newer format is refused with ERR_FORMAT_VERSION; a damaged cabstore.json with ERR_BAD_STORE', async (t) => {
  const os = await import('node:os');
  const path = await import('node:path');
  const { BlobStore, encodeMessage, decodeMessage, serve } = await import('../src/index.js');
  const { encodeRecord } = await import('../src/format/descriptor.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-errors-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 's');
  const s = await BlobStore.open(root);
  // a descriptor whose header says format 2
  const name = 'c'.repeat(32);
  fs.mkdirSync(blobDirPath(s, name), { recursive: true });
  fs.writeFileSync(descriptorPath(s, name), encodeRecord({ t: 'h', v: 2, name, ctime: 0 }));
  t.is((await t.throwsAsync(s.newBlobReader(name), { instanceOf: CabError }))!.code, 'ERR_FORMAT_VERSION');
  fs.rmSync(descriptorPath(s, name));
  await s.close();
  const config = path.join(root, 'cabstore.json');
  const good = fs.readFileSync(config, 'utf8');
  fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(good), format: 2 }));
  t.is((await t.throwsAsync(BlobStore.open(root), { instanceOf: CabError }))!.code, 'ERR_FORMAT_VERSION');
  for (const bad of ['{not json', JSON.stringify({ ...JSON.parse(good), hash: 'md5' }), '[]']) {
    fs.writeFileSync(config, bad);
    t.is((await t.throwsAsync(BlobStore.open(root), { instanceOf: CabError }))!.code, 'ERR_BAD_STORE', bad);
  }
  fs.writeFileSync(config, good);
  // a client of another protocol version gets ERR_VERSION and is closed
  const store = await BlobStore.open(root);
  t.teardown(() => store.close());
  const srv = await serve(store, { insecure: true });
  t.teardown(() => srv.close());
  const { WebSocket } = await import('ws');
  const ws = new WebSocket(srv.url);
  await new Promise((r) => ws.once('open', r));
  const answer = new Promise<{ code: string }>((resolve) => ws.once('message', (d: Buffer) => resolve(decodeMessage(d) as { code: string })));
  ws.send(encodeMessage({ t: 'hello', v: 99, chunker: { min: 16384, avg: 65536, max: 262144 }, hash: 'sha256' }));
  t.is((await answer).code, 'ERR_VERSION');
  await new Promise((r) => ws.once('close', r));
});
