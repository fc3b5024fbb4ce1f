// Hostile review of follow mode and the CLI around it (2026-12-04): each
// test here failed on the code it was written against and says what a
// demanding user expects instead.
import test from 'ava';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { BlobStore, connect, serve } from '../src/index.js';
import { wsProxy, decodedFrame } from './helpers/proxies.js';
import { cli } from './helpers/cli.js';
import { flipByte } from './helpers/damage.js';
import { tempDir, tempStore } from './helpers/store.js';

test('a remote follower whose blob is finalized while the server\'s index lags its descriptor still gets the whole blob (not ERR_PROTOCOL)', async (t) => {
  // Lagging index: a writer in another process makes its final record durable, then commits the index; the server answers the follower's
  // waiting stat as soon as the record is there. (Seen 1 run in 5 with a writer in another process; here the lag is made on purpose.)
  const store = await tempStore(t);
  const data = crypto.randomBytes(2_000_000);
  const w = await store.newBlobWriter();
  await w.appendBytes(data.subarray(0, 1_000_000));
  await w.flush();
  const srv = await serve(store, { tokens: { ro: ['read'] } });
  t.teardown(() => srv.close());
  // Hold the follower's list that comes after a stat said "finalized", long enough for the index to lag.
  let finalSeen = false;
  const px = await wsProxy(srv.url, {
    toClient: (f, bin) => {
      const m = decodedFrame(f, bin);
      if (m?.t === 'statr' && m.fin) finalSeen = true;
      return f;
    },
    toServer: (f, bin, link) => {
      const m = decodedFrame(f, bin);
      if (m?.t !== 'list' || !finalSeen) return f;
      setTimeout(() => link.up.send(f, { binary: true }), 500);
      return null;
    },
  });
  t.teardown(() => px.close());
  const c = await connect(await tempStore(t), px.url, { token: 'ro' });
  t.teardown(() => c.close());
  const parts: Buffer[] = [];
  let got = 0;
  const s = c.stream(w.name, { follow: true });
  const done = new Promise<string>((resolve) => {
    s.on('data', (b: Buffer) => {
      parts.push(b);
      got += b.length;
    });
    s.on('end', () => resolve('end'));
    s.on('error', (e: Error & { code?: string }) => resolve(`${String(e.code)}: ${e.message}`));
  });
  const deadline = Date.now() + 20_000;
  while (got < 900_000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300)); // the follower waits at the end, in a stat with `after`
  await w.appendBytes(data.subarray(1_000_000));
  await w.close();
  await store.index.removeBlob(w.name); // the index behind the descriptor, as in the window above (catchUpBlob mends exactly this)
  t.is(await done, 'end');
  t.true(Buffer.concat(parts).equals(data));
});

test('README: a failing `cabstore cat` / `get` to stdout exits 1 with the error code on the last stderr line (not an uncaught exception)', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  const w = await store.newBlobWriter();
  await w.appendBytes(crypto.randomBytes(3_000_000));
  await w.close();
  await flipByte(store, w.name, 2_500_000);
  await store.close();
  for (const cmd of ['cat', 'get']) {
    const r = await cli(['--store', dir, cmd, w.name]);
    const last = r.stderr.trim().split('\n').pop() ?? '';
    t.is(r.code, 1, cmd);
    t.regex(last, /^cabstore: ERR_HASH_MISMATCH/, `${cmd}: the last line of stderr was ${JSON.stringify(last)}`);
  }
});

test('newBlobReader under EMFILE (plain and following) rejects with a CabError ERR_IO, not a bare errno error', async (t) => {
  const dir = tempDir(t);
  // A child with a low file limit opens readers until one fails and prints how it failed.
  const child = `
    const { BlobStore, isCabError } = await import(${JSON.stringify(new URL('../src/index.js', import.meta.url).href)});
    const store = await BlobStore.open(${JSON.stringify(dir)});
    const w = await store.newBlobWriter();
    await w.appendBytes(new Uint8Array(100000).fill(1));
    await w.flush();
    const out = {};
    for (const follow of [false, true]) {
      const readers = [];
      try { for (let i = 0; i < 500; i++) readers.push(await store.newBlobReader(w.name, { follow })); out[follow] = 'no failure'; }
      catch (e) { out[follow] = isCabError(e) ? e.code : 'not a CabError: ' + e.code; }
      for (const r of readers) await r.close();
    }
    await w.closeWithoutFinalize();
    await store.close();
    console.log(JSON.stringify(out));
  `;
  const res = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const c = spawn('bash', ['-c', `ulimit -n 90 && exec "${process.execPath}" --input-type=module -e "$CHILD"`], { env: { ...process.env, CHILD: child } });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('close', (code) => resolve({ code, out, err }));
  });
  t.is(res.code, 0, res.err);
  const out = JSON.parse(res.out) as Record<string, string>;
  t.is(out.false, 'ERR_IO', 'a plain reader');
  t.is(out.true, 'ERR_IO', 'a follower');
});
