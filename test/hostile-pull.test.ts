// Hostile review of pulls from lying peers (2026-12-04): each test here
// failed on the code it was written against and says what a demanding user
// expects instead.
import test from 'ava';
import crypto from 'node:crypto';
import { encodeMessage, isCabError, sha256 } from '../src/index.js';
import { decodedFrame } from './helpers/proxies.js';
import { throughLiar } from './helpers/hostile.js';
import { chunkKeys, chunksOf, keysOf, putBlob, readAll, tempStore } from './helpers/store.js';

const DEFAULT_CHUNKER = { min: 16384, avg: 65536, max: 262144 };

test('DESIGN "same content gives the same chunk list": a peer that announces our chunker but cuts elsewhere does not set the chunks of what we store', async (t) => {
  // The peer's store cuts 64..256-byte chunks; its welcome says it uses ours. The receiver takes its chunks as cut (claims checked by the
  // hashing thread, not chunked again): the blob's bytes are right, but it is stored as ~25,000 tiny chunks (descriptor and index about
  // 60-90x larger than honest ones), and the same bytes written locally dedup against none of them.
  const src = await tempStore(t, { create: true, chunker: { min: 64, avg: 128, max: 256 } });
  const bytes = crypto.randomBytes(3_000_000);
  const name = await putBlob(src, bytes);
  const { client: c, dst } = await throughLiar(t, src, (frame, isBinary) => {
    const m = decodedFrame(frame, isBinary);
    return m?.t === 'welcome' ? Buffer.from(encodeMessage({ ...m, chunker: DEFAULT_CHUNKER })) : frame;
  });
  await c.pull(name);
  t.true((await readAll(dst, name)).equals(bytes), 'the bytes are right');
  const got = await chunkKeys(dst, name);
  const ours = keysOf(chunksOf(bytes));
  t.is(got.length, ours.length, `stored as ${got.length} chunks; our chunker cuts ${ours.length}`);
  t.true(got.join() === ours.join(), "the stored blob's chunks are the ones our chunker cuts");
});

test('PROTOCOL.md: a zero-length chunk in a peer\'s list is a malformed message (ERR_PROTOCOL), not ERR_BAD_ARGUMENT, and nothing is stored', async (t) => {
  const src = await tempStore(t);
  const bytes = crypto.randomBytes(1_000_000);
  const name = await putBlob(src, bytes);
  const EMPTY = sha256(new Uint8Array(0));
  const { client: c } = await throughLiar(t, src, (frame, isBinary) => {
    const m = decodedFrame(frame, isBinary);
    return m?.t === 'listr' ? Buffer.from(encodeMessage({ ...m, c: [m.c[0]!, [EMPTY, 0], ...m.c.slice(1)] })) : frame;
  });
  const e = await t.throwsAsync(c.pull(name));
  t.true(isCabError(e, 'ERR_PROTOCOL'), `got ${String((e as { code?: string }).code)}: ${String(e?.message)}`);
});
