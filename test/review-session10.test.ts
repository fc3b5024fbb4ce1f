// Review of the tenth session's merges: dial/connect (a dial's requests at
// a takeover that dials again, an answer asked ahead that is stale by the
// pull), the CLI pull into paths it cannot use, the index's point looks at
// a recipe's boundaries, and EIO codes. Real sockets, real stores, the
// built CLI as a child process.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, connect, dial, isCabError, serve } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { codeOf, putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { assertFails, cli } from './helpers/cli.js';
import { faultStore } from './helpers/faults.js';
import { removeBlob } from '../src/index/remove.js';

const TOKEN = 'review10-token';
const KiB = 1024;

async function served(t: Parameters<typeof tempStore>[0], bytes: Uint8Array) {
  const store = await tempStore(t);
  const name = await putBlob(store, bytes);
  const srv = await serve(store, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  return { store, name, srv };
}

/** Settles within `ms`, or says it hung. */
async function within<T>(p: Promise<T>, ms: number): Promise<'hung' | 'settled'> {
  return Promise.race([p.then(
    () => 'settled' as const,
    () => 'settled' as const,
  ), new Promise<'hung'>((r) => setTimeout(() => r('hung'), ms))]);
}

test("a dial's stat still unanswered when connect takes it with a store of other chunker parameters (it dials again) settles, not hangs", async (t) => {
  const bytes = prngBytes('review10 restat', 200 * KiB);
  const { name, srv } = await served(t, bytes);
  const other = await tempStore(t, { chunker: { min: 4 * KiB, avg: 16 * KiB, max: 64 * KiB } });
  const d = dial(srv.url, { token: TOKEN });
  await d.ready;
  // Sent in the same turn as the takeover: its answer cannot have come before the dial is taken.
  const asked = d.stat(name);
  const c = await connect(other, d);
  t.is(await within(asked, 3000), 'settled', 'the stat asked on the closed first socket is answered or failed');
  await c.pull(name);
  t.deepEqual(await readAll(other, name), Buffer.from(bytes));
  await c.close();
});

test('a stat asked ahead that found the blob unfinalized (or absent) is asked again by the pull, which then finds it finalized', async (t) => {
  const store = await tempStore(t);
  const srv = await serve(store, { tokens: { [TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const bytes = prngBytes('review10 stale', 300 * KiB);
  const part = 'ab'.repeat(16);
  const w = await store.newBlobWriter(part);
  await w.appendBytes(bytes.subarray(0, 100 * KiB));
  const absent = 'cd'.repeat(16);

  const d1 = dial(srv.url, { token: TOKEN, prefetch: part });
  t.false((await d1.stat(part)).finalized, 'unfinalized when the dial asked');
  const d2 = dial(srv.url, { token: TOKEN, prefetch: absent });
  t.is(await codeOf(d2.stat(absent)), 'ERR_NO_SUCH_BLOB', 'absent when the dial asked');
  // Meanwhile (the store opening here) the server's writer finishes, and the absent blob is put.
  await w.appendBytes(bytes.subarray(100 * KiB));
  await w.close();
  await putBlob(store, bytes, absent);

  for (const [d, name] of [[d1, part], [d2, absent]] as const) {
    const here = await tempStore(t);
    const c = await connect(here, d);
    const r = await c.pull(name);
    t.is(r.size, bytes.length, name);
    t.deepEqual(await readAll(here, name), Buffer.from(bytes));
    await c.close();
  }
});

test('CLI pull into a path it cannot use (a file, under a file, unwritable), or from a server down or without the blob: exits 1 with the code, no store left', async (t) => {
  const dir = tempDir(t);
  const { name, srv } = await served(t, prngBytes('review10 cli', 50 * KiB));
  const env = { CABSTORE_TOKEN: TOKEN };
  const file = path.join(dir, 'a-file');
  fs.writeFileSync(file, 'not a store');
  const r1 = await cli(['--store', file, 'pull', srv.url, name], { env });
  t.is(r1.code, 1, r1.stderr);
  t.is(fs.readFileSync(file, 'utf8'), 'not a store', 'the file untouched');
  const r2 = await cli(['--store', path.join(file, 'below'), 'pull', srv.url, name], { env });
  t.is(r2.code, 1, r2.stderr);
  if (process.getuid?.() !== 0) {
    const ro = path.join(dir, 'ro');
    fs.mkdirSync(ro, { mode: 0o555 });
    const r3 = await cli(['--store', path.join(ro, 's'), 'pull', srv.url, name], { env });
    t.is(r3.code, 1, r3.stderr);
    t.deepEqual(fs.readdirSync(ro), []);
  }
  const none = path.join(dir, 'none');
  assertFails(t, await cli(['--store', none, 'pull', 'ws://127.0.0.1:1', name], { env }), 'ERR_CONNECTION', 'server down');
  assertFails(t, await cli(['--store', none, 'pull', srv.url, 'ef'.repeat(16)], { env }), 'ERR_NO_SUCH_BLOB', 'absent');
  t.false(fs.existsSync(none), 'no store made');
});

test("(held) opening a store whose cabstore.json cannot be opened or read (EIO), or whose folder cannot be listed when it has none: ERR_IO, not a raw errno", async (t) => {
  const fsx = await faultStore(t);
  if (!fsx) return;
  for (const rule of ['open /cabstore\\.json$', 'read /cabstore\\.json$', 'getattr /cabstore\\.json$']) {
    fsx.fail(rule);
    const s = await BlobStore.open(fsx.root).catch((e: unknown) => e);
    fsx.fail();
    if (s instanceof BlobStore) await s.close();
    else t.true(isCabError(s, 'ERR_IO'), `${rule}: open fails with ERR_IO, not ${String(s)}`);
  }
  // A folder with no cabstore.json: whether it may become a store is a listing of it.
  const fresh = path.join(fsx.root, 'fresh');
  fs.mkdirSync(fresh);
  fsx.fail('readdir ^/fresh$');
  const e = await BlobStore.open(fresh).catch((x: unknown) => x);
  fsx.fail();
  t.true(isCabError(e, 'ERR_IO'), `a folder that cannot be listed: ERR_IO, not ${String(e)}`);
  t.deepEqual(fs.readdirSync(fresh), [], 'nothing made in it');
});

test('(held) a dial whose server goes away before connect, one given to two connects at once, and one whose signal fires after the welcome', async (t) => {
  const bytes = prngBytes('review10 held', 100 * KiB);
  const { name, srv } = await served(t, bytes);
  const store = await tempStore(t);
  // Two connects at once: one takes it, the other is ERR_BAD_ARGUMENT, and the pull works.
  const d = dial(srv.url, { token: TOKEN, prefetch: name });
  const [a, b] = await Promise.allSettled([connect(store, d), connect(store, d)]);
  const won = a.status === 'fulfilled' ? a.value : b.status === 'fulfilled' ? b.value : undefined;
  t.truthy(won);
  const lost = a.status === 'rejected' ? a.reason : b.status === 'rejected' ? b.reason : undefined;
  t.true(isCabError(lost, 'ERR_BAD_ARGUMENT'));
  await won!.pull(name);
  await won!.close();
  // The signal after the welcome plays no part.
  const ac = new AbortController();
  const late = dial(srv.url, { token: TOKEN, signal: ac.signal });
  await late.ready;
  ac.abort();
  const c = await connect(await tempStore(t), late);
  t.true((await c.stat(name)).finalized);
  await c.close();
  // The server goes away after the welcome: connect fails ERR_CONNECTION, in time.
  const gone = dial(srv.url, { token: TOKEN, prefetch: name });
  await gone.ready;
  await srv.close();
  // A stat not asked ahead goes to the server: once the socket is gone here, it fails at once.
  t.is(await codeOf(gone.stat('ab'.repeat(16))), 'ERR_CONNECTION');
  t.is(await codeOf(connect(store, gone)), 'ERR_CONNECTION');
});

test('a delete whose blob another deleter removed between its open and its lock, the name since taken by a new blob, leaves the new blob alone (ERR_NO_SUCH_BLOB)', async (t) => {
  const store = await tempStore(t);
  const name = 'ab'.repeat(16);
  const old = await store.newBlobWriter(name);
  await old.appendBytes(prngBytes('review10 old', 50 * KiB));
  await old.close();
  const fresh = prngBytes('review10 new', 70 * KiB);
  const e = await t.throwsAsync(
    removeBlob(store.layout, store.index, store.tables, name, {
      afterOpen: async () => {
        await store.deleteBlob(name); // the other deleter
        const w = await store.newBlobWriter(name); // and a new blob of the same name
        await w.appendBytes(fresh);
        await w.close();
      },
    }),
  );
  t.true(isCabError(e, 'ERR_NO_SUCH_BLOB'), `the late delete says the blob it found is gone, not ${String(e)}`);
  t.true((await store.stat(name)).finalized, 'the new blob is still there');
  t.true((await readAll(store, name)).equals(fresh));
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
});
