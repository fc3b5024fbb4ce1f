// Pulls from many sources at once (fetchBlob, issue 17) over real sockets
// on 127.0.0.1: servers in this process, one in a child process that is
// SIGKILLed mid-way, one behind a WebSocket proxy that flips a byte in what
// it sends or sends nothing at all. The pull completes from whoever is
// left, reports who was dropped and why, fetches little more than it
// lacked, and when no source is left fails resumably.
import test, { type ExecutionContext } from 'ava';
import {
  BlobStore,
  decodeMessage,
  encodeMessage,
  fetchBlob,
  isCabError,
  merkleRoot,
  serve,
  toHex,
  type CabServer,
  type FetchStats,
  type Message,
  type ServeOptions,
} from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll } from './helpers/store.js';
import { wsProxy, type FrameHook } from './helpers/proxies.js';
import { edited, killHard, startServerChild, MiB } from './helpers/transfer.js';

const TOKEN = 'token-multi';
const TOKENS = { [TOKEN]: ['read', 'write'] } as ServeOptions['tokens'];
const SIZE = 48 * MiB;
const BIG = prngBytes('multi big', SIZE);
const BIG_HASH = toHex(merkleRoot(BIG));

async function serveT(t: ExecutionContext, store: BlobStore, options: Partial<ServeOptions> = {}): Promise<CabServer> {
  const srv = await serve(store, { tokens: TOKENS, ...options });
  t.teardown(() => srv.close());
  return srv;
}

/** A store holding `bytes` under `name` (a fresh blob name if none), served; its URL. */
async function server(t: ExecutionContext, bytes: Uint8Array, name?: string): Promise<{ url: string; name: string; store: BlobStore }> {
  const store = await tempStore(t);
  const n = await putBlob(store, bytes, name);
  return { url: (await serveT(t, store)).url, name: n, store };
}

/** Rewrites every `data` frame the server sends: the first byte of its first item flipped. */
const flipData: FrameHook = (frame) => {
  const m = decodeMessage(frame) as Message;
  if (m.t !== 'data' || m.items.length === 0 || m.items[0]!.length === 0) return frame;
  const first = Buffer.from(m.items[0]!);
  first[0]! ^= 0xff;
  return Buffer.from(encodeMessage({ ...m, items: [first, ...m.items.slice(1)] }));
};

/** Drops every `data` frame: a source that accepts gets and never answers them. */
const swallowData: FrameHook = (frame) => ((decodeMessage(frame) as Message).t === 'data' ? null : frame);

async function proxyT(t: ExecutionContext, url: string, toClient: FrameHook): Promise<string> {
  const p = await wsProxy(url, { toClient });
  t.teardown(() => p.close());
  return p.url;
}

function report(stats: FetchStats | undefined, url: string) {
  return stats?.sources.find((s) => s.source === url);
}

async function assertHolds(t: ExecutionContext, store: BlobStore, name: string, bytes: Buffer, hash: string): Promise<void> {
  const r = await store.newBlobReader(name);
  await r.close();
  t.true(r.isFinalized, 'finalized');
  t.is(toHex(r.hash!), hash, 'with the right root');
  t.true((await readAll(store, name)).equals(bytes), 'byte-exact');
}

test('three servers, one SIGKILLed mid-way and one flipping a byte in its data: the pull completes, both are reported, bytes fetched <= 1.1x what was lacking', async (t) => {
  const honest = await server(t, BIG);
  const name = honest.name;
  const liar = await server(t, BIG, name);
  const liarUrl = await proxyT(t, liar.url, flipData);
  const childRoot = tempDir(t);
  const childStore = await BlobStore.open(childRoot);
  await putBlob(childStore, BIG, name);
  await childStore.close();
  const child = await startServerChild(childRoot, 0, TOKEN);
  t.teardown(() => killHard(child.child));

  const local = await tempStore(t);
  let killedAt: number | undefined;
  const stats = await fetchBlob(local, name, {
    // The child first: the root is its, and the first source listed keeps the work among like ones, so it dies with gets on its way.
    from: [child.url, honest.url, liarUrl],
    token: TOKEN,
    onProgress: (p) => {
      if (killedAt === undefined && p.verifiedBytes >= SIZE / 3) {
        killedAt = p.verifiedBytes;
        void killHard(child.child);
      }
    },
  });
  t.log(JSON.stringify(stats.sources));
  await assertHolds(t, local, name, BIG, BIG_HASH);
  t.truthy(killedAt, 'the child was killed during the pull');
  const dead = report(stats, child.url)!;
  const lying = report(stats, liarUrl)!;
  t.is(dead.dropped?.code, 'ERR_CONNECTION', 'the killed server is dropped: its connection closed');
  t.true(dead.chunks > 0, 'it had delivered chunks before it died');
  t.is(lying.dropped?.code, 'ERR_HASH_MISMATCH', 'the liar is dropped: its bytes failed their check');
  t.is(report(stats, honest.url)!.dropped, undefined, 'the honest server is not dropped');
  t.true(report(stats, honest.url)!.chunks > 0, 'and it took over');
  t.is(stats.neededBytes, SIZE, 'the store lacked the whole blob');
  const fetched = stats.sources.reduce((n, s) => n + s.receivedBytes, 0);
  t.log(`fetched ${fetched} for ${stats.neededBytes} lacking (${(fetched / stats.neededBytes).toFixed(4)}x)`);
  t.true(fetched <= 1.1 * stats.neededBytes, `bytes fetched ${fetched} <= 1.1 x ${stats.neededBytes}`);
  t.true(fetched >= stats.neededBytes, 'and at least what was lacking');
  const sp = await local.getSignpost(name);
  t.truthy(sp?.locations[honest.url], 'the source that served goes into the signpost');
  t.is(sp?.locations[liarUrl], undefined, 'a dropped one does not');
});

test('with no source left the pull fails, says why for each, keeps only verified bytes, and resumes from another source', async (t) => {
  const a = await server(t, BIG);
  const name = a.name;
  const liarUrl = await proxyT(t, a.url, flipData);
  const b = await server(t, BIG, name);
  let proxied = 0;
  // The second source answers a few gets and then its connection is cut.
  const cutUrl = await proxyT(t, b.url, (frame, _bin, link) => {
    if ((decodeMessage(frame) as Message).t === 'data' && ++proxied === 100) link.down.terminate();
    return frame;
  });
  const local = await tempStore(t);
  const err = await t.throwsAsync(fetchBlob(local, name, { from: [cutUrl, liarUrl], token: TOKEN }));
  if (!isCabError(err)) return t.fail(`not a CabError: ${String(err)}`);
  const reports = (err.data.sources ?? []) as FetchStats['sources'];
  t.deepEqual(reports.map((r) => [r.source, r.dropped?.code]).sort(), [
    [cutUrl, 'ERR_CONNECTION'],
    [liarUrl, 'ERR_HASH_MISMATCH'],
  ].sort() as Array<[string, string]>);
  const r = await local.newBlobReader(name);
  await r.close();
  t.false(r.isFinalized, 'unfinalized');
  t.true(r.size > 0, `a verified prefix stays (${r.size} bytes)`);
  t.true((await readAll(local, name)).equals(BIG.subarray(0, r.size)), 'every byte kept is the source byte');
  const again = await fetchBlob(local, name, { from: [a.url], token: TOKEN });
  t.is(again.resumedFrom, r.size, 'the next pull resumes where the failed one stopped');
  t.is(again.neededBytes, SIZE - r.size);
  await assertHolds(t, local, name, BIG, BIG_HASH);
});

test('a cancelled pull from many sources rejects with ERR_ABORTED, keeps what it verified, and resumes', async (t) => {
  const a = await server(t, BIG);
  const name = a.name;
  const b = await server(t, BIG, name);
  const local = await tempStore(t);
  const ac = new AbortController();
  const err = await t.throwsAsync(
    fetchBlob(local, name, {
      from: [a.url, b.url],
      token: TOKEN,
      signal: ac.signal,
      onProgress: (p) => p.verifiedBytes > SIZE / 4 && ac.abort(),
    }),
  );
  t.true(isCabError(err, 'ERR_ABORTED'), String(err));
  const r = await local.newBlobReader(name);
  await r.close();
  t.false(r.isFinalized);
  t.true(r.size >= SIZE / 4, `kept ${r.size}`);
  t.true((await readAll(local, name)).equals(BIG.subarray(0, r.size)));
  const again = await fetchBlob(local, name, { from: [b.url, a.url], token: TOKEN });
  t.is(again.resumedFrom, r.size);
  await assertHolds(t, local, name, BIG, BIG_HASH);
});

test('a source that stops answering is dropped after stallMs, its gets go to the others', async (t) => {
  const a = await server(t, BIG);
  const name = a.name;
  const mute = await proxyT(t, (await server(t, BIG, name)).url, swallowData);
  // The live source is held to about 16 MB/s (each data frame 4 ms, in order), so that the pull outlasts stallMs on any machine.
  let chain = Promise.resolve();
  const live = await proxyT(t, a.url, (frame, _bin, link) => {
    const delay = (decodeMessage(frame) as Message).t === 'data' ? 4 : 0;
    chain = chain.then(() => new Promise<void>((r) => setTimeout(r, delay))).then(() => link.down.send(frame, { binary: true }, () => {}));
    return null;
  });
  const local = await tempStore(t);
  const started = Date.now();
  const stats = await fetchBlob(local, name, { from: [mute, live], token: TOKEN, stallMs: 1500 });
  await assertHolds(t, local, name, BIG, BIG_HASH);
  t.true(Date.now() - started > 1500, 'the pull outlasted stallMs');
  t.is(report(stats, mute)?.dropped?.code, 'ERR_IDLE_TIMEOUT');
  t.is(report(stats, mute)?.chunks, 0);
  t.is(report(stats, live)?.dropped, undefined);
});

test('work goes by how fast each source answers: one that answers slowly sends a small share, and the pull does not wait on it', async (t) => {
  const a = await server(t, BIG);
  const name = a.name;
  const b = await server(t, BIG, name);
  // Each data frame of the slow source is held 40 ms (in order): about 1.5 MB/s against the others' tens or hundreds.
  let chain = Promise.resolve();
  const slowUrl = await proxyT(t, (await server(t, BIG, name)).url, (frame, _bin, link) => {
    const delay = (decodeMessage(frame) as Message).t === 'data' ? 40 : 0;
    chain = chain.then(() => new Promise<void>((r) => setTimeout(r, delay))).then(() => link.down.send(frame, { binary: true }, () => {}));
    return null;
  });
  const local = await tempStore(t);
  const stats = await fetchBlob(local, name, { from: [slowUrl, a.url, b.url], token: TOKEN });
  await assertHolds(t, local, name, BIG, BIG_HASH);
  t.log(JSON.stringify(stats.sources.map((s) => [s.source, s.receivedBytes, s.chunks, s.dropped?.code])));
  const slow = report(stats, slowUrl)!;
  t.is(slow.dropped, undefined, 'slow is not dead: it stays');
  t.true(slow.receivedBytes < SIZE / 5, `the slow source sent ${slow.receivedBytes} of ${SIZE}`);
  t.true(slow.receivedBytes < report(stats, a.url)!.receivedBytes && slow.receivedBytes < report(stats, b.url)!.receivedBytes, 'less than each fast one');
});

test('trust: a trusted hash drops a source announcing another root; without one, the first source sets the root and others must agree', async (t) => {
  const other = prngBytes('multi other', 3 * MiB);
  const small = BIG.subarray(0, 5 * MiB);
  const good = await server(t, small);
  const name = good.name;
  const bad = await server(t, other, name);
  const want = toHex(merkleRoot(small));

  const l1 = await tempStore(t);
  const s1 = await fetchBlob(l1, name, { from: [bad.url, good.url], token: TOKEN, hash: want });
  await assertHolds(t, l1, name, small, want);
  t.is(report(s1, bad.url)?.dropped?.code, 'ERR_HASH_MISMATCH', 'the trusted root wins over the first source');

  const l2 = await tempStore(t);
  const s2 = await fetchBlob(l2, name, { from: [good.url, bad.url], token: TOKEN });
  await assertHolds(t, l2, name, small, want);
  t.is(report(s2, bad.url)?.dropped?.code, 'ERR_HASH_MISMATCH', 'a source that disagrees with the first is dropped');

  const l3 = await tempStore(t);
  const s3 = await fetchBlob(l3, name, { from: [bad.url, good.url], token: TOKEN });
  await assertHolds(t, l3, name, Buffer.from(other), toHex(merkleRoot(other)));
  t.is(report(s3, good.url)?.dropped?.code, 'ERR_HASH_MISMATCH', 'without a trusted root the first source is believed (PROTOCOL.md, Trust)');

  const l4 = await tempStore(t);
  const err = await t.throwsAsync(fetchBlob(l4, name, { from: [bad.url], token: TOKEN, hash: want }));
  t.true(isCabError(err, 'ERR_HASH_MISMATCH'), 'with every source refused: the last refusal');
});

test('a receiver holding an older version matches finely across sources; a liar among them is dropped, the pull completes', async (t) => {
  const newer = edited(BIG, 17, 12);
  const a = await server(t, newer.bytes);
  const name = a.name;
  const liarUrl = await proxyT(t, (await server(t, newer.bytes, name)).url, flipData);
  const b = await server(t, newer.bytes, name);
  const local = await tempStore(t);
  await putBlob(local, BIG);
  const stats = await fetchBlob(local, name, { from: [liarUrl, a.url, b.url], token: TOKEN });
  await assertHolds(t, local, name, newer.bytes, toHex(merkleRoot(newer.bytes)));
  t.is(report(stats, liarUrl)?.dropped?.code, 'ERR_HASH_MISMATCH');
  t.true(stats.reusedBytes > SIZE / 2, `most bytes reused locally (${stats.reusedBytes})`);
  t.true(stats.receivedBytes < 4 * MiB, `few bytes fetched (${stats.receivedBytes})`);
});

test('from defaults to the signpost peers (URLs), with their token names looked up in tokens; other peer names are skipped', async (t) => {
  const bytes = BIG.subarray(0, 4 * MiB);
  const a = await server(t, bytes);
  const b = await server(t, bytes, a.name);
  const seen = new Date();
  const withSignpost = async () => {
    const s = await tempStore(t);
    await s.setSignpost(a.name, {
      locations: {
        [a.url]: { whenSeen: seen, isProxy: false, isServer: true, tokenName: 'alpha' },
        [b.url]: { whenSeen: seen, isProxy: false, isServer: true },
        'device-7': { whenSeen: seen, isProxy: false, isServer: false },
      },
      sgIds: [],
      fetchAttempts: 0,
    });
    return s;
  };
  const codes = (st: FetchStats) => st.sources.map((s) => [s.source, s.dropped?.code]).sort() as Array<[string, string | undefined]>;
  const l1 = await withSignpost();
  const s1 = await fetchBlob(l1, a.name, { token: TOKEN });
  t.deepEqual(codes(s1), [[a.url, 'ERR_AUTH'], [b.url, undefined]].sort() as Array<[string, string | undefined]>, 'a token name not in tokens: that source is not used');
  await assertHolds(t, l1, a.name, bytes, toHex(merkleRoot(bytes)));
  const l2 = await withSignpost();
  const s2 = await fetchBlob(l2, a.name, { token: 'none such', tokens: { alpha: TOKEN } });
  t.deepEqual(codes(s2), [[a.url, undefined], [b.url, 'ERR_AUTH']].sort() as Array<[string, string | undefined]>, 'the token name found; the default token refused by the other');
  const sp = await l2.getSignpost(a.name);
  t.is(sp?.locations[a.url]?.tokenName, 'alpha', 'the token name stays in the signpost');
  t.truthy(sp?.locations['device-7'], 'other peers stay');
  await t.throwsAsync(fetchBlob(l2, '0'.repeat(32), {}), { code: 'ERR_BAD_ARGUMENT' }, 'no signpost: no sources');
});

test('bad arguments: ERR_BAD_ARGUMENT before any connection', async (t) => {
  const local = await tempStore(t);
  const name = '1'.repeat(32);
  for (const o of [{ from: 'ws://x' }, { from: ['http://127.0.0.1:1'] }, { from: [{ url: 'ws://127.0.0.1:1', token: 5 }] }, { from: [] }, { from: ['ws://127.0.0.1:1'], hash: 'abcd' }]) {
    await t.throwsAsync(fetchBlob(local, name, o as never), { code: 'ERR_BAD_ARGUMENT' }, JSON.stringify(o));
  }
  await t.throwsAsync(fetchBlob(local, 'nope', { from: ['ws://127.0.0.1:1'] }), { code: 'ERR_INVALID_BLOB_NAME' });
});
