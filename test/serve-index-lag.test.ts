// A server whose chunk index lags a blob's descriptor (the writer's index
// update still to come, or another request's catch-up under way) while its
// cached reader has already seen the final record: a list page must be read
// from an index brought up to date, not end early. Under load, followers of
// one blob on one connection (sharing the server's reader) got such short
// lists and failed with ERR_PROTOCOL (hostile-session7, "many followers").
import test from 'ava';
import { PROTOCOL_VERSION, serve, type Message } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore } from './helpers/store.js';
import { RawClient, KiB } from './helpers/transfer.js';

const TOKEN = 'lag-token';

test('a list page of a finalized blob whose index entries lag its descriptor (the cached reader already final): the index is caught up first, the page is whole', async (t) => {
  const store = await tempStore(t);
  const bytes = prngBytes('index lag', 900 * KiB);
  const w = await store.newBlobWriter();
  await w.appendBytes(bytes.subarray(0, 300 * KiB));
  await w.flush();
  const srv = await serve(store, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  const raw = await RawClient.open(srv.url);
  t.teardown(() => raw.close());
  raw.send({ t: 'hello', v: PROTOCOL_VERSION, token: TOKEN, chunker: store.chunker, hash: 'sha256' });
  t.like(await raw.waitFor((m) => m.t === 'welcome' || m.t === 'err'), { t: 'welcome' });
  let id = 0;
  const list = async (from: number, max?: number) => {
    const n = raw.heard.length;
    const ask = ++id;
    raw.send({ t: 'list', id: ask, name: w.name, from, ...(max === undefined ? {} : { max }) });
    const m = await raw.waitFor((x) => (x.t === 'listr' || x.t === 'err') && x.id === ask, 5000, n);
    t.true(typeof m === 'object' && m.t === 'listr', JSON.stringify(m));
    return m as Extract<Message, { t: 'listr' }>;
  };
  await list(0, 1); // the server's reader of the open blob, cached
  await w.appendBytes(bytes.subarray(300 * KiB));
  await w.close();
  const all = [...store.index.blobChunks(w.name, 0)].length;
  t.true(all > 3, `${all} chunks`);
  await list(0, 1); // the cached reader catches up to the final record
  // The index loses the blob's entries (as if its update were still to come): derived data, made again from the descriptor.
  await store.index.removeBlob(w.name);
  const page = await list(1);
  t.is(page.c.length, all - 1, 'every chunk after the first, not a list ended early');
  t.true(page.end);
});
