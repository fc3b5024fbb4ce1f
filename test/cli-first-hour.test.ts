// CLI faults a new user hits in the first hour: a reader that goes away
// (`cat X | head`), bare `cabstore`, `--version`, and remote errors that
// said their code twice.
import test from 'ava';
import fs from 'node:fs';
import { BlobStore, CabError, connect, serve } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob } from './helpers/store.js';
import { cli, start } from './helpers/cli.js';

test('cabstore cat into a reader that goes away ends quietly with exit 0, as cat does', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  const name = await putBlob(s, prngBytes('epipe', 16 * 1024 * 1024));
  await s.close();
  const c = start(['--store', dir, 'cat', name]);
  let err = '';
  c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  // Read a little, then hang up, as `head -c 100` does.
  await new Promise<void>((resolve) => c.stdout!.once('data', () => resolve()));
  c.stdout!.destroy();
  const code = await new Promise<number | null>((resolve) => c.on('close', (n) => resolve(n)));
  t.is(code, 0, `exit code (stderr: ${err})`);
  t.is(err, '', 'nothing on stderr');
});

test('bare cabstore is bad usage: the help on stderr, exit 2', async (t) => {
  const r = await cli([]);
  t.is(r.code, 2);
  t.regex(r.stderr, /Usage: cabstore/);
  t.is(r.out, '');
});

test('cabstore --version prints the package version and exits 0', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await cli([flag]);
    t.is(r.code, 0, r.stderr);
    t.is(r.out.trim(), pkg.version);
  }
});

test('a remote error names its code once', async (t) => {
  const server = await tempStore(t);
  const srv = await serve(server, { tokens: { tok: ['read'] } });
  t.teardown(() => srv.close());
  const e = await t.throwsAsync(connect(await tempStore(t), srv.url, { token: 'wrong' }), { instanceOf: CabError });
  t.is(e!.code, 'ERR_AUTH');
  t.is(e!.message.split('ERR_AUTH').length - 1, 1, e!.message);
  t.regex(e!.message, /^ERR_AUTH: peer: /);
});

test('every command help shows the global --store and --json', async (t) => {
  for (const cmd of ['ls', 'fsck', 'pull', 'put']) {
    const r = await cli([cmd, '--help']);
    t.is(r.code, 0, r.stderr);
    t.regex(r.out, /--json/, `${cmd} --help`);
    t.regex(r.out, /--store/, `${cmd} --help`);
  }
});

test('plain fsck says what it checked, not "0 fragments verified"; --verify says what it hashed', async (t) => {
  const dir = tempDir(t);
  const s = await BlobStore.open(dir);
  await putBlob(s, prngBytes('fsck words', 300_000));
  await s.close();
  const plain = await cli(['--store', dir, 'fsck']);
  t.is(plain.code, 0, plain.stderr);
  t.notRegex(plain.out, /fragments verified/);
  t.regex(plain.out, /1 blobs checked/);
  const verify = await cli(['--store', dir, 'fsck', '--verify']);
  t.is(verify.code, 0, verify.stderr);
  t.regex(verify.out, /1 blobs and 1 fragments verified/);
});
