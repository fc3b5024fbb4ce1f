// Eighth hostile session: the server-wide connection limit and WebSocket
// keepalive (what landed in the eighth session), bucket-backed stores on a real
// radosgw, the sync-app tables, and the maintenance CLI against damaged or busy
// stores. Each test is a finding (fails until fixed) or, named "held: ...", an
// attack the code withstood. Real sockets on 127.0.0.1, real processes, real files.
import test, { type ExecutionContext } from 'ava';
import http from 'node:http';
import net from 'node:net';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { BlobStore, connect, isCabError, serve, type CabServer, type ServeOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { collect, putBlob, readAll, tempDir, tempStore } from './helpers/store.js';
import { S3_ENDPOINT, bucketOptions, fileBucket, objects, s3Test } from './helpers/s3.js';
import { RawClient, killHard } from './helpers/transfer.js';
import { rawUpgrade } from './helpers/hostile.js';
import { assertFails, cli, finished, ok, putLines, start, waitFor, writeFile } from './helpers/cli.js';
import { slowLink } from './helpers/slow-link.js';

const RW = 'hostile8-rw';

const codeOf = (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 50 ms until it holds or `ms` have passed. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; !cond() && Date.now() < end; ) await sleep(50);
  return cond();
}

async function serveT(t: ExecutionContext, options: Partial<ServeOptions> = {}): Promise<{ srv: CabServer; name: string }> {
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('hostile8', 300_000));
  const srv = await serve(store, { tokens: { [RW]: ['read', 'write'] }, ...options });
  t.teardown(() => srv.close());
  return { srv, name };
}

/** A WebSocket frame from a client (masked, as RFC 6455 requires of clients). */
function clientFrame(opcode: number, payload: Buffer): Buffer {
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i]! ^= mask[i % 4]!;
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len]) : Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 0xff]);
  return Buffer.concat([head, mask, masked]);
}

/** Resident memory of a process, in bytes (Linux). */
function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

// ---------------------------------------------------------------------------
// 1. Connection limit and keepalive

test.serial('held: a client that floods pings before any hello and never reads the pongs: the server does not queue them without bound (ws cuts it at maxPendingAutoPongs)', async (t) => {
  const { spawnServer } = await serverChild(t);
  const { port, pid } = spawnServer;
  const s = await rawUpgrade(t, port);
  s.pause(); // never read: the server's pongs pile up in its process
  const before = rssOf(pid);
  const ping = clientFrame(0x9, Buffer.alloc(125, 7));
  const batch = Buffer.concat(Array.from({ length: 512 }, () => ping));
  let sent = 0;
  let closed = false;
  s.on('close', () => (closed = true));
  const end = Date.now() + 6000;
  while (!closed && Date.now() < end && sent < 400 * 1024 * 1024) {
    if (!s.write(batch)) await new Promise((r) => s.once('drain', r).once('close', r));
    sent += batch.length;
  }
  await sleep(300);
  const grown = rssOf(pid) - before;
  t.log(`sent ${(sent / 2 ** 20).toFixed(0)} MiB of pings; server RSS grew ${(grown / 2 ** 20).toFixed(0)} MiB; cut: ${closed}`);
  t.true(closed, 'cut');
  t.true(grown < 64 * 1024 * 1024, `the server holds ${(grown / 2 ** 20).toFixed(0)} MiB more for one unauthenticated client that sent pings and read nothing`);
});

/** A cabstore server in a child process (test/helpers/transfer-child), for measuring its memory. */
async function serverChild(t: ExecutionContext): Promise<{ spawnServer: { port: number; pid: number; url: string } }> {
  const root = tempDir(t);
  const child = spawn(process.execPath, [new URL('./helpers/transfer-child.js', import.meta.url).pathname, root, '0', RW], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => killHard(child));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /url (ws:\/\/\S+)\n/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', () => reject(new Error(`server child exited: ${out}`)));
  });
  return { spawnServer: { url, port: Number(new URL(url).port), pid: child.pid! } };
}

test.serial('a welcomed client that asks nothing but sends a ping every 10 ms is never cut at idleTimeoutMs: its pings count as "bytes still arriving"', async (t) => {
  const { srv } = await serveT(t, { idleTimeoutMs: 400 });
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  t.like(await raw.hello(RW), { t: 'welcome' });
  const timer = setInterval(() => raw.isOpen && raw.ws.ping(Buffer.alloc(125)), 10);
  t.teardown(() => clearInterval(timer));
  t.true(await raw.waitClosed(4000), 'an idle client (nothing asked) is closed at idleTimeoutMs (400 ms), pings or not');
});

test.serial('held: a welcomed client that asks nothing and sends pongs nobody asked for (one a second) is still closed at idleTimeoutMs', async (t) => {
  const { srv } = await serveT(t, { idleTimeoutMs: 400 });
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  t.like(await raw.hello(RW), { t: 'welcome' });
  const timer = setInterval(() => raw.isOpen && raw.ws.pong(), 100);
  t.teardown(() => clearInterval(timer));
  t.true(await raw.waitClosed(4000));
  t.deepEqual(raw.fatalErrors.map((e) => e.code), ['ERR_IDLE_TIMEOUT']);
});

test.serial('a refused HTTP client that retries after Retry-After: 1 on its keep-alive connection (as fetch does) is refused again though slots are free', async (t) => {
  const { srv, name } = await serveT(t, { maxConnections: 1 });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = () =>
    new Promise<number>((resolve, reject) => {
      const req = http.get(`http://127.0.0.1:${srv.port}/blobs/${name}`, { agent, headers: { authorization: `Bearer ${RW}` } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
    });
  const c = await connect(await tempStore(t), srv.url, { token: RW });
  t.is(await get(), 503, 'full: refused');
  await c.close();
  t.true(await until(() => srv.open === 0, 5000), `open ${srv.open}`);
  await sleep(1100); // Retry-After: 1
  t.is(await get(), 200, 'a slot is free, the retry the 503 asked for is served');
});

test.serial('held: after storms of connections that fail at every stage (reset before upgrade, mid-upgrade, bad tokens, reset after hello, keep-alive HTTP, downloads and tus uploads cut mid-body), the server takes exactly maxConnections again', async (t) => {
  const max = 4;
  const { srv, name } = await serveT(t, { maxConnections: max, helloTimeoutMs: 1500, maxAuthFailures: 1000 });
  const storms: Promise<unknown>[] = [];
  for (let i = 0; i < 20; i++) {
    // reset right after connect
    const a = net.connect(srv.port, '127.0.0.1');
    a.on('error', () => {});
    a.on('connect', () => a.resetAndDestroy());
    // half an upgrade request, then reset
    const b = net.connect(srv.port, '127.0.0.1');
    b.on('error', () => {});
    b.on('connect', () => {
      b.write('GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConn');
      setTimeout(() => b.resetAndDestroy(), 20);
    });
    // a bad token, then a reset
    storms.push(
      RawClient.open(srv.url).then(
        async (r) => {
          await r.hello('no-such-token');
          r.close();
        },
        () => {},
      ),
    );
    // a good hello then an abrupt reset
    storms.push(
      RawClient.open(srv.url).then(
        async (r) => {
          await r.hello(RW);
          r.ws.terminate();
        },
        () => {},
      ),
    );
    // keep-alive HTTP with a bad token, and an aborted download
    storms.push(
      new Promise<void>((resolve) => {
        const req = http.get(`http://127.0.0.1:${srv.port}/blobs/${name}`, { headers: { authorization: 'Bearer nope' } }, (res) => {
          res.resume();
          res.on('end', () => resolve());
        });
        req.on('error', () => resolve());
      }),
      new Promise<void>((resolve) => {
        const req = http.get(`http://127.0.0.1:${srv.port}/blobs/${name}`, { headers: { authorization: `Bearer ${RW}` } }, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', () => resolve());
      }),
    );
    // a tus creation-with-upload whose body is cut half-way
    storms.push(
      new Promise<void>((resolve) => {
        const req = http.request(`http://127.0.0.1:${srv.port}/files/`, {
          method: 'POST',
          headers: { authorization: `Bearer ${RW}`, 'tus-resumable': '1.0.0', 'upload-length': '1000000', 'content-type': 'application/offset+octet-stream', 'content-length': '1000000' },
        });
        req.on('error', () => resolve());
        req.on('response', (res) => (res.resume(), resolve()));
        req.write(Buffer.alloc(300_000, 3), () => setTimeout(() => (req.destroy(), resolve()), 30));
      }),
    );
    if (i % 5 === 4) await Promise.all(storms.splice(0));
  }
  await Promise.all(storms);
  t.true(await until(() => srv.open === 0 && srv.pending === 0, 8000), `after the storm: open ${srv.open}, pending ${srv.pending}`);
  const clients = [];
  for (let i = 0; i < max; i++) {
    const c = await connect(await tempStore(t), srv.url, { token: RW });
    t.teardown(() => c.close());
    clients.push(c);
  }
  t.is(codeOf(await t.throwsAsync(connect(await tempStore(t), srv.url, { token: RW }))), 'ERR_TOO_MANY_REQUESTS');
  for (const c of clients) t.like(await c.stat(name), { finalized: true });
});

// ---------------------------------------------------------------------------
// 2. Bucket-backed stores on a real radosgw, killed and stopped under them

const RGW_BASE = process.env.CABSTORE_S3_BASE ?? '/tmp/cabstore-s3-17480';
const rgwPid = () => Number(fs.readFileSync(path.join(RGW_BASE, 'run/rgw.pid'), 'utf8'));

/** Whether radosgw answers on its port now. */
function rgwAnswers(): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(S3_ENDPOINT, { timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

/** SIGKILLs the radosgw scripts/s3-server.sh started (its pid file), and waits until the port refuses. */
async function killRgw(): Promise<void> {
  process.kill(rgwPid(), 'SIGKILL');
  for (let i = 0; i < 100 && (await rgwAnswers()); i++) await sleep(50);
}

/** Starts radosgw again as scripts/s3-server.sh does (same config, same pid file), and waits until it answers. */
async function startRgw(): Promise<void> {
  if (await rgwAnswers()) return;
  const out = fs.openSync(path.join(RGW_BASE, 'log/rgw.out'), 'a');
  const c = spawn('radosgw', ['-f', '-n', 'client.rgw.a'], { env: { ...process.env, CEPH_CONF: path.join(RGW_BASE, 'ceph.conf') }, detached: true, stdio: ['ignore', out, out] });
  c.unref();
  fs.closeSync(out);
  fs.writeFileSync(path.join(RGW_BASE, 'run/rgw.pid'), `${c.pid}\n`);
  for (let i = 0; i < 300 && !(await rgwAnswers()); i++) await sleep(100);
  if (!(await rgwAnswers())) throw new Error('radosgw did not come back');
}

/** A bucket-backed store test that kills radosgw: it is always started again, whatever the test did. */
function rgwKillTest(title: string, fn: (t: ExecutionContext) => Promise<void>): void {
  s3Test.serial(title, async (t) => {
    t.teardown(() => startRgw());
    await fn(t);
  });
}

const MiB = 1024 * 1024;

rgwKillTest('held: radosgw SIGKILLed mid-write: the writer fails with ERR_OBJECT_STORE (no hang, no success); once radosgw is back the blob resumes from its durable size and another folder reads it byte-exact', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, idleTimeout: 2000 });
  const dir = path.join(tempDir(t), 'w');
  const bytes = prngBytes('rgw kill write', 24 * MiB);
  let store = await BlobStore.open(dir, { objectStore: o, fragmentSize: 2 * MiB });
  const w = await store.newBlobWriter();
  const name = w.name;
  let failure: unknown;
  let at = 0;
  try {
    for (; at < bytes.length; at += 256 * 1024) {
      if (at === 6 * MiB) await killRgw();
      await w.appendBytes(bytes.subarray(at, at + 256 * 1024));
    }
    await w.close();
  } catch (e) {
    failure = e;
  }
  t.is(codeOf(failure), 'ERR_OBJECT_STORE', `appended to ${at} with radosgw dead: ${String(failure)}`);
  await w.closeWithoutFinalize().catch(() => {});
  await store.close().catch(() => {});
  await startRgw();
  store = await BlobStore.open(dir, { objectStore: o, fragmentSize: 2 * MiB });
  t.teardown(() => store.close());
  const r = await store.resumeBlobWriter(name);
  const from = r.size;
  t.true(from <= at, `resumed at ${from}, after ${at} appended`);
  t.true(Buffer.from(bytes.subarray(0, from)).equals(await readPrefix(store, name, from)), 'what was kept is the prefix');
  await r.appendBytes(bytes.subarray(from));
  await r.close();
  const other = await BlobStore.open(path.join(tempDir(t), 'r'), { objectStore: o });
  t.teardown(() => other.close());
  t.true((await readAll(other, name)).equals(bytes));
});

async function readPrefix(store: BlobStore, name: string, n: number): Promise<Buffer> {
  const r = await store.newBlobReader(name);
  try {
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const k = await r.readAt(out.subarray(got), got);
      if (k === 0) break;
      got += k;
    }
    return out.subarray(0, got);
  } finally {
    await r.close();
  }
}

rgwKillTest('held: radosgw SIGKILLed mid cold read: the reader gets right bytes then ERR_OBJECT_STORE, never "absent" (ERR_FRAGMENT_MISSING, ERR_NO_SUCH_BLOB) nor wrong bytes; once back, a new reader reads it whole', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, idleTimeout: 2000 });
  const bytes = prngBytes('rgw kill read', 48 * MiB);
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o, fragmentSize: 4 * MiB });
  t.teardown(() => a.close());
  const name = await putBlob(a, bytes);
  const b = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: { ...o, cacheBytes: 0 } });
  t.teardown(() => b.close());
  const r = await b.newBlobReader(name);
  let got = 0;
  let failure: unknown;
  try {
    const buf = Buffer.alloc(256 * 1024);
    for (;;) {
      if (got === buf.length) await killRgw(); // after the first read: what was fetched ahead is all there is
      const n = await r.readAt(buf, got);
      if (n === 0) break;
      t.true(buf.subarray(0, n).equals(bytes.subarray(got, got + n)), `bytes at ${got} are right`);
      got += n;
    }
  } catch (e) {
    failure = e;
  } finally {
    await r.close();
  }
  t.log(`read ${got} bytes, then ${String(failure)}`);
  t.true(got < bytes.length, 'radosgw was dead for most of the blob');
  t.is(codeOf(failure), 'ERR_OBJECT_STORE');
  await startRgw();
  t.true((await readAll(b, name)).equals(bytes));
});

rgwKillTest('held: radosgw SIGKILLed mid-gc: gc rejects with ERR_OBJECT_STORE, the live blob loses nothing, and a gc once radosgw is back deletes the garbage', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, idleTimeout: 2000, gcGrace: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o, fragmentSize: 1 * MiB });
  t.teardown(() => a.close());
  const keep = prngBytes('rgw gc keep', 6 * MiB);
  const kept = await putBlob(a, keep);
  for (let i = 0; i < 6; i++) await a.deleteBlob(await putBlob(a, prngBytes(`rgw gc drop ${i}`, 4 * MiB)));
  const before = (await objects(`${o.prefix}cas/`)).size;
  const gc = a.gc();
  const killed = sleep(30).then(() => killRgw());
  const outcome = await gc.then((r) => `done: ${JSON.stringify(r.bucket)}`, (e: unknown) => codeOf(e));
  await killed;
  t.log(`${before} fragments; gc: ${outcome}`);
  await startRgw();
  if (outcome !== 'ERR_OBJECT_STORE') t.log('gc finished before radosgw died: the kill came late');
  const fresh = await BlobStore.open(path.join(tempDir(t), 'c'), { objectStore: { ...o, cacheBytes: 0 } });
  t.teardown(() => fresh.close());
  t.true((await readAll(fresh, kept)).equals(keep), 'the live blob is whole, read cold');
  const r = (await a.gc()).bucket!;
  t.is((await objects(`${o.prefix}cas/`)).size, r.fragmentsKept);
  t.true(r.fragmentsKept <= 7, `kept ${r.fragmentsKept}`);
  t.true((await readAll(fresh, kept)).equals(keep));
});

s3Test.serial('a descriptor object overwritten with garbage in the bucket: another store still opens and reads the other blobs; the damaged one fails with a documented code', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o });
  t.teardown(() => a.close().catch(() => {}));
  const good = prngBytes('desc good', 300_000);
  const goodName = await putBlob(a, good);
  const badName = await putBlob(a, prngBytes('desc bad', 300_000));
  const { os } = await fileBucket();
  await os.put(`${o.prefix}blob/${badName}`, Buffer.from('this is not a descriptor at all, just some bytes a clumsy operator copied here'));
  let b: BlobStore | undefined;
  const opened = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: o }).then(
    (s) => ((b = s), 'opened'),
    (e: unknown) => codeOf(e),
  );
  if (b) t.teardown(() => b!.close());
  const synced = await a.sync().then(() => 'synced', (e: unknown) => codeOf(e));
  await a.close();
  const reopened = await BlobStore.open(a.root, { objectStore: o }).then(
    async (s) => (await s.close(), 'opened'),
    (e: unknown) => codeOf(e),
  );
  t.log(`new store: ${opened}; sync of the store that wrote it: ${synced}; that store reopened: ${reopened}`);
  t.is(opened, 'opened', 'one bad object in the bucket does not stop every new store from opening');
  t.is(synced, 'synced', 'nor every sync');
  t.is(reopened, 'opened', 'nor the reopening of a store that has its folder');
  if (!b) return;
  t.true((await readAll(b, goodName)).equals(good));
  const e = await t.throwsAsync(readAll(b, badName));
  t.true(['ERR_DESCRIPTOR_CORRUPT', 'ERR_CORRUPT', 'ERR_OBJECT_STORE'].includes(codeOf(e)), String(e));
});

rgwKillTest('radosgw stopped (SIGSTOP, a hung server): a cold read fails with ERR_OBJECT_STORE in seconds, but gc (every request through the AWS SDK: list, head, put, delete) waits for good, idleTimeout notwithstanding', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, idleTimeout: 2000, gcGrace: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o, fragmentSize: 1 * MiB });
  t.teardown(() => a.close());
  const bytes = prngBytes('rgw stop', 3 * MiB);
  const name = await putBlob(a, bytes);
  await a.deleteBlob(await putBlob(a, prngBytes('rgw stop drop', 2 * MiB)));
  const b = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: { ...o, cacheBytes: 0 } });
  t.teardown(() => b.close());
  const r = await b.newBlobReader(name);
  const pid = rgwPid();
  process.kill(pid, 'SIGSTOP');
  let stopped = true;
  t.teardown(() => stopped && process.kill(pid, 'SIGCONT'));
  const began = performance.now();
  const bounded = (p: Promise<string>) => Promise.race([p.then((x) => `${x} after ${Math.round(performance.now() - began)} ms`), sleep(15_000).then(() => 'still waiting after 15 s')]);
  const gcP = a.gc().then(() => 'done', (e: unknown) => codeOf(e));
  const readP = r.readAt(Buffer.alloc(4096), 0).then(() => 'read', (e: unknown) => codeOf(e));
  const [gc, read] = await Promise.all([bounded(gcP), bounded(readP)]);
  process.kill(pid, 'SIGCONT');
  stopped = false;
  t.log(`gc: ${gc}; read: ${read}; once radosgw went on: gc ${await gcP}, read ${await readP}`);
  await r.close();
  t.regex(gc, /^ERR_OBJECT_STORE after/);
  t.regex(read, /^ERR_OBJECT_STORE after/);
  t.true((await readAll(b, name)).equals(bytes));
  t.is((await a.gc()).bucket!.fragmentsDeleted, 2);
});

s3Test.serial('held: a fragment object cut short, or made longer, behind the stores\' back: a cold read fails with a documented code (never its bytes, never "absent"), and caches nothing', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0 });
  const a = await BlobStore.open(path.join(tempDir(t), 'a'), { objectStore: o });
  t.teardown(() => a.close());
  const bytes = prngBytes('rgw cut object', 2 * MiB);
  const name = await putBlob(a, bytes);
  const frags = [...(await objects(`${o.prefix}cas/`)).keys()];
  t.is(frags.length, 1);
  const { os } = await fileBucket();
  const saved = (await os.get(frags[0]!))!;
  for (const changed of [saved.subarray(0, saved.length / 2), Buffer.concat([saved, Buffer.alloc(1000, 9)]), Buffer.alloc(0)]) {
    await os.put(frags[0]!, changed);
    const b = await BlobStore.open(path.join(tempDir(t), 'b'), { objectStore: { ...o, cacheBytes: 0 } });
    const got = await readAll(b, name).then(
      (x) => (x.equals(bytes) ? 'exact' : 'WRONG BYTES'),
      (e: unknown) => codeOf(e),
    );
    await b.close();
    t.true(['ERR_OBJECT_STORE', 'ERR_HASH_MISMATCH', 'ERR_FRAGMENT_MISSING', 'exact'].includes(got) && got !== 'WRONG BYTES', `an object of ${changed.length} bytes for one of ${saved.length}: ${got}`);
    t.not(got, 'ERR_FRAGMENT_MISSING', 'the object is there: not "absent"');
    if (changed.length > saved.length) t.log(`longer object: ${got}`);
  }
  await os.put(frags[0]!, saved);
});

// ---------------------------------------------------------------------------
// 3. The sync tables

const DIST_INDEX = new URL('../src/index.js', import.meta.url).pathname;

/** A node child that runs `body` (an async function body; `BlobStore` and `root` in scope), with stdout piped. */
function tablesChild(root: string, body: string) {
  const code = `import { BlobStore } from ${JSON.stringify(DIST_INDEX)}; const root = ${JSON.stringify(root)}; ${body}`;
  return spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
}

function finishedChild(c: ReturnType<typeof spawn>): Promise<{ code: number | null; out: string; err: string }> {
  let out = '';
  let err = '';
  c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve) => c.once('exit', (code) => resolve({ code, out, err })));
}

test.serial('held: two processes incrementing the same signpost counter and metadata share 150 times each lose no update', async (t) => {
  const root = tempDir(t);
  const s = await BlobStore.open(root);
  const name = await putBlob(s, prngBytes('tables race', 10_000));
  await s.close();
  const body = (who: string) => `
    const s = await BlobStore.open(root);
    for (let i = 0; i < 150; i++) {
      await s.updateSignpost(${JSON.stringify(name)}, (sp) => ({ fetchAttempts: (sp?.fetchAttempts ?? 0) + 1, locations: { ['ws://${who}:' + (i % 7)]: { whenSeen: new Date(), isProxy: false, isServer: true } } }));
      await s.updateBlobMetadata(${JSON.stringify(name)}, (md) => ({ ownerShares: { sg: (md?.ownerShares.sg ?? 0) + 1 } }));
    }
    await s.close();`;
  const runs = await Promise.all([finishedChild(tablesChild(root, body('a'))), finishedChild(tablesChild(root, body('b')))]);
  for (const r of runs) t.is(r.code, 0, r.err);
  const again = await BlobStore.open(root);
  t.teardown(() => again.close());
  const sp = (await again.getSignpost(name))!;
  t.is(sp.fetchAttempts, 300);
  t.is(Object.keys(sp.locations).length, 14);
  t.is((await again.getBlobMetadata(name))!.ownerShares.sg, 300);
});

test.serial('held: a process SIGKILLed in the middle of a stream of signpost updates: after it, the table holds the last update it saw resolve (or the one after), never less', async (t) => {
  const root = tempDir(t);
  const s = await BlobStore.open(root);
  await s.close();
  const name = 'c'.repeat(32);
  const c = tablesChild(root, `
    const s = await BlobStore.open(root);
    for (let i = 1; ; i++) {
      await s.updateSignpost(${JSON.stringify(name)}, { fetchAttempts: i, sgIds: ['x'.repeat(900) + i] });
      process.stdout.write(i + '\\n');
    }`);
  let out = '';
  c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  t.true(await until(() => out.split('\n').length > 300, 15_000), 'updates flow');
  await killHard(c);
  const lines = out.trim().split('\n');
  const last = Number(lines[lines.length - 1]);
  const again = await BlobStore.open(root);
  t.teardown(() => again.close());
  const sp = (await again.getSignpost(name))!;
  t.true(sp.fetchAttempts === last || sp.fetchAttempts === last + 1, `resolved ${last}, found ${sp.fetchAttempts}`);
  t.is(sp.sgIds[0], 'x'.repeat(900) + sp.fetchAttempts, 'the record is whole, one update, not a mix');
});

test.serial('held: a blob deleted while its metadata is updated: after both, the deleted blob has no metadata left (not an orphan record a later reader or gc --max-bytes sees)', async (t) => {
  const s = await tempStore(t);
  const names: string[] = [];
  for (let i = 0; i < 60; i++) names.push(await putBlob(s, prngBytes(`md race ${i}`, 2000)));
  const outcomes = await Promise.all(
    names.map(async (n, i) => {
      const del = (async () => {
        for (let k = 0; k < i % 5; k++) await Promise.resolve();
        await s.deleteBlob(n);
      })();
      const upd = s.updateBlobMetadata(n, { accessed: new Date(), ownerShares: { sg: 1 } }).then(
        () => 'updated',
        (e: unknown) => codeOf(e),
      );
      await del;
      return upd;
    }),
  );
  const orphans: string[] = [];
  for (const n of names) if ((await s.getBlobMetadata(n)) !== undefined) orphans.push(n);
  t.log(`update outcomes: ${JSON.stringify(Object.fromEntries([...new Set(outcomes)].map((o) => [o, outcomes.filter((x) => x === o).length])))}`);
  t.deepEqual(orphans, [], `${orphans.length} deleted blobs still have metadata`);
  t.deepEqual(await collect(s.blobMetadataStream()), []);
});

test.serial('held: huge table values: a signpost naming 200,000 peers or metadata with 200,000 syncgroups is refused (ERR_BAD_ARGUMENT) or stored and read back whole; nothing in between', async (t) => {
  const s = await tempStore(t);
  const name = await putBlob(s, prngBytes('huge md', 1000));
  const locations: Record<string, { whenSeen: Date; isProxy: boolean; isServer: boolean }> = {};
  for (let i = 0; i < 200_000; i++) locations[`ws://peer-${i}.example:${i % 65535}`] = { whenSeen: new Date(i), isProxy: false, isServer: true };
  const ownerShares: Record<string, number> = {};
  for (let i = 0; i < 200_000; i++) ownerShares[`syncgroup-${i}-${'y'.repeat(40)}`] = i;
  const sp = await s.setSignpost(name, { locations, sgIds: [], fetchAttempts: 0 }).then(
    () => 'stored',
    (e: unknown) => codeOf(e),
  );
  const md = await s.setBlobMetadata(name, { ownerShares, referenced: new Date(), accessed: new Date() }).then(
    () => 'stored',
    (e: unknown) => codeOf(e),
  );
  t.log(`signpost: ${sp}; metadata: ${md}`);
  t.true(['stored', 'ERR_BAD_ARGUMENT'].includes(sp) && ['stored', 'ERR_BAD_ARGUMENT'].includes(md));
  if (sp === 'stored') t.is(Object.keys((await s.getSignpost(name))!.locations).length, 200_000);
  if (md === 'stored') t.is(Object.keys((await s.getBlobMetadata(name))!.ownerShares).length, 200_000);
});

test.serial('a syncgroup or peer named "__proto__" (keys from JSON): its owner share and its signpost location are refused (ERR_BAD_ARGUMENT) or kept, never dropped without a word (as they were before the fix)', async (t) => {
  const s = await tempStore(t);
  const name = await putBlob(s, prngBytes('proto keys', 1000));
  const shares = JSON.parse('{"__proto__": 3, "sg-ok": 1}') as Record<string, number>;
  const md = await s.updateBlobMetadata(name, { ownerShares: shares }).then(
    (r) => JSON.stringify(r.ownerShares),
    (e: unknown) => codeOf(e),
  );
  const loc = JSON.parse('{"__proto__": {"isProxy": false, "isServer": true}, "ws://ok:1": {"isProxy": false, "isServer": true}}') as Record<string, { whenSeen: Date; isProxy: boolean; isServer: boolean }>;
  for (const v of Object.values(loc)) v.whenSeen = new Date(5);
  const sp = await s.setSignpost(name, { locations: loc, sgIds: [], fetchAttempts: 0 }).then(
    async () => JSON.stringify(Object.keys((await s.getSignpost(name))!.locations)),
    (e: unknown) => codeOf(e),
  );
  t.log(`metadata: ${md}; signpost: ${sp}`);
  t.true(md === 'ERR_BAD_ARGUMENT' || md === JSON.stringify({ __proto__: 3, 'sg-ok': 1 }) || md.includes('"__proto__":3'), `the share of syncgroup "__proto__" is kept or refused, not dropped: ${md}`);
  t.true(sp === 'ERR_BAD_ARGUMENT' || sp.includes('__proto__'), `the peer "__proto__" is kept or refused, not dropped: ${sp}`);
});

// ---------------------------------------------------------------------------
// 4. The maintenance CLI against damaged and busy stores

/** A store made by the CLI with four blobs, each in a fragment of its own (put one at a time); their names and bytes. */
async function cliStore(t: ExecutionContext): Promise<{ dir: string; blobs: Array<{ name: string; bytes: Buffer }> }> {
  const work = tempDir(t);
  const dir = path.join(work, 'store');
  const blobs: Array<{ name: string; bytes: Buffer }> = [];
  for (let i = 0; i < 4; i++) {
    const bytes = prngBytes(`cli damage ${i}`, 300_000 + i * 100_000);
    const file = writeFile(work, `f${i}`, bytes);
    const [line] = putLines(await ok(t, dir, ['put', file]));
    blobs.push({ name: line!.name, bytes });
  }
  return { dir, blobs };
}

const descriptorOf = (dir: string, name: string) => path.join(dir, 'blob', name.slice(0, 2), name);

/** What `cabstore gc` did to a blob: exact, or the code its read fails with. */
async function afterGc(t: ExecutionContext, dir: string, name: string, bytes: Buffer): Promise<string> {
  const gc = await cli(['--store', dir, 'gc']);
  const cat = await cli(['--store', dir, 'cat', name]);
  t.log(`gc: exit ${gc.code} ${gc.out.trim()} ${gc.stderr.trim()}; cat: exit ${cat.code} ${cat.stderr.trim()}`);
  return cat.code === 0 && cat.stdout.equals(bytes) ? 'exact' : /ERR_[A-Z_]+/.exec(cat.stderr)?.[0] ?? `exit ${cat.code}`;
}

test.serial('a blob whose descriptor is a symlink (an operator moved it to another disk): stat and cat read it, ls leaves it out with exit 0, and `cabstore gc` deletes its fragment: the blob is lost (ERR_FRAGMENT_MISSING)', async (t) => {
  const { dir, blobs } = await cliStore(t);
  const { name, bytes } = blobs[0]!;
  const elsewhere = path.join(tempDir(t), name);
  fs.renameSync(descriptorOf(dir, name), elsewhere);
  fs.symlinkSync(elsewhere, descriptorOf(dir, name));
  t.regex(await ok(t, dir, ['stat', name]), /finalized true/, 'the store reads the blob through the link');
  const ls = await cli(['--store', dir, 'ls']);
  t.true(ls.out.includes(name) || (ls.code === 1 && ls.stderr.includes(name)), `ls lists the blob or names it as one it cannot open (README): exit ${ls.code}, ${ls.stderr}`);
  t.is(await afterGc(t, dir, name, bytes), 'exact', 'gc deletes nothing a blob the store reads uses (or stops, as fsck does)');
});

test.serial('a blob fan-out directory that is a symlink (blob/ab -> another disk): gc deletes the fragments of every blob in it', async (t) => {
  const { dir, blobs } = await cliStore(t);
  const { name, bytes } = blobs[1]!;
  const fan = path.dirname(descriptorOf(dir, name));
  const moved = path.join(tempDir(t), 'fan');
  fs.renameSync(fan, moved);
  fs.symlinkSync(moved, fan);
  t.true((await cli(['--store', dir, 'cat', name])).stdout.equals(bytes), 'read through the link');
  t.is(await afterGc(t, dir, name, bytes), 'exact');
});

test.serial('a directory where a descriptor should be: fsck stops with ERR_IO (rule 16), but ls exits 0 without naming it and gc goes on and deletes the fragment the old blob used', async (t) => {
  const { dir, blobs } = await cliStore(t);
  const { name } = blobs[2]!;
  const d = descriptorOf(dir, name);
  const saved = fs.readFileSync(d);
  fs.rmSync(d);
  fs.mkdirSync(d);
  const fsck = await cli(['--store', dir, 'fsck']);
  assertFails(t, fsck, 'ERR_IO', 'fsck');
  const ls = await cli(['--store', dir, 'ls']);
  t.true(ls.code === 1 && ls.stderr.includes(name), `ls names the blob it cannot open, with its code, and exits 1 (README): exit ${ls.code} ${ls.stderr}`);
  const gc = await cli(['--store', dir, 'gc']);
  t.is(gc.code, 1, `gc stops, as fsck does, rather than take the blob for absent: ${gc.out} ${gc.stderr}`);
  // The operator puts the descriptor back: the blob must still be there.
  fs.rmdirSync(d);
  fs.writeFileSync(d, saved);
  t.true((await cli(['--store', dir, 'cat', name])).stdout.equals(blobs[2]!.bytes));
});

test.serial('held: gc, fsck, fsck --repair, rm and ls from other processes while `cabstore put -` writes a blob from a pipe: rm is ERR_BLOB_LOCKED, fsck leaves the live blob alone, and the blob ends byte-exact', async (t) => {
  const { dir } = await cliStore(t);
  const bytes = prngBytes('cli busy', 3_000_000);
  const put = start(['--store', dir, 'put', '-'], { stdin: 'pipe' });
  const done = finished(put);
  put.stdin!.write(bytes.subarray(0, 1_000_000));
  const m = await waitFor(put, /writing blob ([0-9a-f]{32})/, 'put names its blob', 'stderr');
  const name = m[1]!;
  await sleep(300);
  const gc = await cli(['--store', dir, 'gc']);
  t.is(gc.code, 0, gc.stderr);
  const fsck = await cli(['--store', dir, 'fsck', '--verify', '--repair']);
  t.is(fsck.code, 0, `${fsck.out} ${fsck.stderr}`);
  assertFails(t, await cli(['--store', dir, 'rm', name]), 'ERR_BLOB_LOCKED', 'rm of the blob being written');
  const ls = await cli(['--store', dir, 'ls']);
  t.is(ls.code, 0, ls.stderr);
  put.stdin!.end(bytes.subarray(1_000_000));
  const r = await done;
  t.is(r.code, 0, r.stderr);
  t.true((await cli(['--store', dir, 'cat', name])).stdout.equals(bytes));
  t.is((await cli(['--store', dir, 'fsck', '--verify'])).code, 0);
});

test.serial('keepalive across a push of large chunks over a slow, steady uplink (1 MiB/s, chunks of 1.5-4 MiB, connect idleTimeoutMs 1000): the push is not cut; the client\'s ping waits behind its own chunk frames', async (t) => {
  const chunker = { min: 1536 * 1024, avg: 2 * MiB, max: 4 * MiB };
  const src = await tempStore(t, { chunker });
  const bytes = prngBytes('hostile8 slow push', 6 * MiB);
  const name = await putBlob(src, bytes);
  const dst = await tempStore(t, { chunker });
  const srv = await serve(dst, { tokens: { [RW]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  const link = await slowLink(t, srv.port, MiB, 'up');
  const c = await connect(src, `ws://127.0.0.1:${link.port}`, { token: RW, idleTimeoutMs: 1000 });
  t.teardown(() => c.close());
  const began = performance.now();
  const got = await c.push(name).then(
    () => 'ok',
    (e: unknown) => `${codeOf(e)}: ${(e as Error).message} (${link.moved()} bytes had gone up the link after ${Math.round(performance.now() - began)} ms)`,
  );
  t.is(got, 'ok');
  if (got === 'ok') t.true((await readAll(dst, name)).equals(bytes));
});

test.serial('keepalive on the server side: a pull of large chunks over a slow, steady downlink (1 MiB/s, chunks of 1.5-4 MiB, serve idleTimeoutMs 1000) is not cut by the server; its ping waits behind its own data frames', async (t) => {
  const chunker = { min: 1536 * 1024, avg: 2 * MiB, max: 4 * MiB };
  const src = await tempStore(t, { chunker });
  const bytes = prngBytes('hostile8 slow pull', 6 * MiB);
  const name = await putBlob(src, bytes);
  const events: string[] = [];
  const srv = await serve(src, { tokens: { [RW]: ['read', 'write'] }, idleTimeoutMs: 1000, onEvent: (e) => events.push(JSON.stringify(e)) });
  t.teardown(() => srv.close());
  const link = await slowLink(t, srv.port, MiB, 'down');
  const dst = await tempStore(t, { chunker });
  const c = await connect(dst, `ws://127.0.0.1:${link.port}`, { token: RW });
  t.teardown(() => c.close());
  const got = await c.pull(name).then(
    () => 'ok',
    (e: unknown) => `${codeOf(e)}: ${(e as Error).message}`,
  );
  t.is(got, 'ok', events.join('\n'));
  if (got === 'ok') t.true((await readAll(dst, name)).equals(bytes));
});

test.serial('a keep-alive connection welcomed by one HTTP request (good token) and then upgraded to WebSocket, saying nothing more, holds its slot past helloTimeoutMs and idleTimeoutMs', async (t) => {
  const { srv, name } = await serveT(t, { maxConnections: 2, helloTimeoutMs: 800, idleTimeoutMs: 800 });
  const s = net.connect(srv.port, '127.0.0.1');
  t.teardown(() => s.destroy());
  s.on('error', () => {});
  let closed = false;
  s.on('close', () => (closed = true));
  let got = '';
  s.on('data', (b: Buffer) => (got += b.toString('latin1')));
  await new Promise((r) => s.once('connect', r));
  s.write(`HEAD /blobs/${name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${RW}\r\n\r\n`);
  t.true(await until(() => got.includes('\r\n\r\n'), 3000));
  t.regex(got, /^HTTP\/1.1 200/);
  s.write(`GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  t.true(await until(() => got.includes('101 Switching'), 3000), got);
  t.true(await until(() => closed, 5000), `a WebSocket that never says hello is closed (helloTimeoutMs, idleTimeoutMs 800 ms); open ${srv.open}`);
});

test.serial('on an insecure server anyone fills maxConnections for good: HEAD, then upgrade, then silence, twice; every later client is refused ERR_TOO_MANY_REQUESTS', async (t) => {
  const store = await tempStore(t);
  const name = await putBlob(store, prngBytes('hostile8 insecure', 10_000));
  const srv = await serve(store, { insecure: true, maxConnections: 2, helloTimeoutMs: 800, idleTimeoutMs: 800 });
  t.teardown(() => srv.close());
  for (let i = 0; i < 2; i++) {
    const s = net.connect(srv.port, '127.0.0.1');
    t.teardown(() => s.destroy());
    s.on('error', () => {});
    let got = '';
    s.on('data', (b: Buffer) => (got += b.toString('latin1')));
    await new Promise((r) => s.once('connect', r));
    s.write(`HEAD /blobs/${name} HTTP/1.1\r\nHost: x\r\n\r\n`);
    t.true(await until(() => got.includes('\r\n\r\n'), 3000));
    s.write(`GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    t.true(await until(() => got.includes('101 Switching'), 3000), got);
  }
  await sleep(3000);
  const c = await connect(await tempStore(t), srv.url).then(
    async (x) => (await x.close(), 'connected'),
    (e: unknown) => codeOf(e),
  );
  t.is(c, 'connected', 'the two silent sockets were closed long ago (hello or idle deadline, 800 ms)');
});
