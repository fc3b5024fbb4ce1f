// The command line of issue 17's many-source pulls, run as a user runs it
// (a child process): `pull URL NAME --from URL...`, `pull NAME` from the
// signpost's peers (tokens by name from $CABSTORE_TOKEN_<NAME>), and
// `signpost NAME [--add URL]... [--remove URL]...`, with their exit codes.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { BlobStore, decodeMessage, encodeMessage, merkleRoot, serve, toHex, type Message, type ServeOptions } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, tempStore, putBlob } from './helpers/store.js';
import { wsProxy } from './helpers/proxies.js';
import { assertFails, assertUsage, cli, ok } from './helpers/cli.js';
import { MiB } from './helpers/transfer.js';

const TOKEN = 'tok-cli-multi';
const TOKENS = { [TOKEN]: ['read'] } as ServeOptions['tokens'];
const BYTES = prngBytes('cli multi', 6 * MiB);
const HASH = toHex(merkleRoot(BYTES));

/** `n` servers in this process, each with its own store holding BYTES under one name. */
async function servers(t: ExecutionContext, n: number): Promise<{ urls: string[]; name: string }> {
  const urls: string[] = [];
  let name: string | undefined;
  for (let i = 0; i < n; i++) {
    const s = await tempStore(t);
    name = await putBlob(s, BYTES, name);
    const srv = await serve(s, { tokens: TOKENS });
    t.teardown(() => srv.close());
    urls.push(srv.url);
  }
  return { urls, name: name! };
}

async function initStore(t: ExecutionContext): Promise<string> {
  const dir = path.join(tempDir(t), 'store');
  await ok(t, dir, ['init']);
  return dir;
}

interface PullJson {
  hash: string;
  receivedBytes: number;
  sources: Array<{ source: string; receivedBytes: number; chunks: number; dropped?: { code: string } }>;
}

test('pull URL NAME --from URL pulls from both at once; --json has each source', async (t) => {
  const { urls, name } = await servers(t, 2);
  const dir = path.join(tempDir(t), 'fresh');
  const r = JSON.parse(await ok(t, dir, ['--json', 'pull', urls[0]!, name, '--from', urls[1]!], { env: { CABSTORE_TOKEN: TOKEN } })) as PullJson;
  t.is(r.hash, HASH);
  t.deepEqual(r.sources.map((s) => s.source).sort(), [...urls].sort());
  // A get a slow source sat on may be asked again of the other (a steal, on a loaded machine): at most 1.1x in all.
  const got = r.sources.reduce((n, s) => n + s.receivedBytes, 0);
  t.true(got >= BYTES.length && got <= 1.1 * BYTES.length, `the bytes came from the two, about once (${got} for ${BYTES.length})`);
  t.is(await ok(t, dir, ['get', name]).then(() => 'ok'), 'ok');
  const text = await ok(t, path.join(tempDir(t), 'other'), ['pull', urls[0]!, name, '--from', urls[1]!, '--hash', HASH], { env: { CABSTORE_TOKEN: TOKEN } });
  t.regex(text, new RegExp(`^${name} ${HASH}: .* from 2 of 2 sources\\n  ws://`), text);
  const sp = JSON.parse(await ok(t, dir, ['--json', 'signpost', name])) as { locations: Record<string, unknown> };
  t.deepEqual(Object.keys(sp.locations).sort(), [...urls].sort(), 'the pull recorded both in the signpost');
});

test('pull NAME fetches from the signpost peers, the token by name from $CABSTORE_TOKEN_<NAME>; signpost --add, --remove, --json', async (t) => {
  const { urls, name } = await servers(t, 2);
  const dir = await initStore(t);
  t.regex(await ok(t, dir, ['signpost', name]), /no peers recorded/);
  await ok(t, dir, ['signpost', name, '--add', urls[0]!, '--add', urls[1]!, '--token-name', 'lab-1']);
  await ok(t, dir, ['signpost', name, '--add', 'ws://127.0.0.1:1', '--remove', urls[1]!]);
  const sp = JSON.parse(await ok(t, dir, ['--json', 'signpost', name])) as { locations: Record<string, { tokenName?: string; isServer: boolean; whenSeen: string }> };
  t.deepEqual(Object.keys(sp.locations).sort(), [urls[0]!, 'ws://127.0.0.1:1'].sort());
  t.is(sp.locations[urls[0]!]!.tokenName, 'lab-1');
  t.is(sp.locations['ws://127.0.0.1:1']!.tokenName, undefined);
  t.regex(await ok(t, dir, ['signpost', name]), new RegExp(`${urls[0]!.replace(/[.]/g, '\\.')}  seen \\S+  server  token lab-1`));

  const r = JSON.parse(await ok(t, dir, ['--json', 'pull', name], { env: { CABSTORE_TOKEN_LAB_1: TOKEN } })) as PullJson;
  t.is(r.hash, HASH);
  const by = Object.fromEntries(r.sources.map((s) => [s.source, s]));
  t.is(by[urls[0]!]?.dropped, undefined, 'the peer with a token name got its token');
  t.is(by['ws://127.0.0.1:1']?.dropped?.code, 'ERR_CONNECTION', 'a peer that is down is reported');
  t.is(by[urls[0]!]!.receivedBytes, BYTES.length);
});

test('pull failures: no signpost, a wrong --hash, every source failing (one line naming each); signpost bad arguments', async (t) => {
  const { urls, name } = await servers(t, 1);
  const dir = await initStore(t);
  assertFails(t, await cli(['--store', dir, 'pull', name]), 'ERR_BAD_ARGUMENT', 'no signpost, no URL');
  assertFails(t, await cli(['--store', dir, 'pull', urls[0]!, name, '--hash', 'ab'.repeat(32)], { env: { CABSTORE_TOKEN: TOKEN } }), 'ERR_HASH_MISMATCH', 'a server announcing another root than --hash');
  const fresh = path.join(tempDir(t), 'fresh');
  assertFails(t, await cli(['--store', fresh, 'pull', urls[0]!, name, '--from', 'ws://127.0.0.1:1', '--hash', 'ab'.repeat(32)], { env: { CABSTORE_TOKEN: TOKEN } }), 'ERR_', 'no server with that root');
  t.false(fs.existsSync(fresh), 'a pull bound to fail makes no store');
  const liar = await wsProxy(urls[0]!, {
    toClient: (frame) => {
      const m = decodeMessage(frame) as Message;
      if (m.t !== 'data') return frame;
      const items = m.items.map((b) => Buffer.from(b).fill(7, 0, 1));
      return Buffer.from(encodeMessage({ ...m, items }));
    },
  });
  t.teardown(() => liar.close());
  const r = await cli(['--store', dir, 'pull', liar.url, name, '--from', 'ws://127.0.0.1:1'], { env: { CABSTORE_TOKEN: TOKEN } });
  assertFails(t, r, 'ERR_', 'every source fails');
  t.regex(r.stderr, new RegExp(`no source left for blob ${name} \\(.*${liar.url.replace(/[.]/g, '\\.')} ERR_HASH_MISMATCH.*ws://127\\.0\\.0\\.1:1 ERR_CONNECTION|no source left for blob ${name} \\(.*ws://127\\.0\\.0\\.1:1 ERR_CONNECTION.*ERR_HASH_MISMATCH`), r.stderr);
  const held = await BlobStore.open(dir);
  const rd = await held.newBlobReader(name).catch(() => undefined);
  await rd?.close();
  await held.close();
  t.false(rd?.isFinalized ?? false, 'nothing unverified finalized');

  assertFails(t, await cli(['--store', dir, 'signpost', name, '--add', 'http://x']), 'ERR_BAD_ARGUMENT', '--add of a URL that is not ws://');
  assertFails(t, await cli(['--store', dir, 'signpost', name, '--token-name', 'x']), 'ERR_BAD_ARGUMENT', '--token-name without --add');
  assertFails(t, await cli(['--store', dir, 'signpost', 'nope']), 'ERR_INVALID_BLOB_NAME', 'a bad name');
  const none = path.join(tempDir(t), 'none');
  assertFails(t, await cli(['--store', none, 'signpost', name]), 'ERR_BAD_STORE', 'no store');
  t.false(fs.existsSync(none), 'signpost makes no store');
  assertUsage(t, await cli(['--store', dir, 'pull', urls[0]!]), 'pull URL without a name');
  assertUsage(t, await cli(['--store', dir, 'signpost']), 'signpost without a name');
});
