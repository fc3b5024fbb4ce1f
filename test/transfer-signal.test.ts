// One AbortSignal given to many pulls (an app's shutdown signal): each pull
// leaves no listener on it behind, and a pull cancelled through it while its
// chunks stream still stops with ERR_ABORTED and keeps what was verified.
import test from 'ava';
import { getEventListeners } from 'node:events';
import { connect, serve, isCabError } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob } from './helpers/store.js';

const TOKEN = 'sig';

test('pulls sharing one signal leave no abort listener on it; a cancel through it mid-stream is ERR_ABORTED', async (t) => {
  const src = await tempStore(t);
  const names: string[] = [];
  for (let i = 0; i < 4; i++) names.push(await putBlob(src, prngBytes(`s${i}`, 3 * 1024 * 1024)));
  const big = await putBlob(src, prngBytes('big', 48 * 1024 * 1024));
  const srv = await serve(src, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  const dst = await tempStore(t);
  const c = await connect(dst, srv.url, { token: TOKEN });
  t.teardown(() => c.close());
  const ac = new AbortController();
  const before = getEventListeners(ac.signal, 'abort').length;
  for (const name of names) {
    const st = await c.pull(name, { signal: ac.signal });
    t.is(st.verifiedBytes, st.size);
    t.is(getEventListeners(ac.signal, 'abort').length, before, `listeners left after pulling ${name}`);
  }
  // Cancelled once some chunks have landed: the pull stops, and the listeners go with it.
  let cancelled = false;
  const e = await t.throwsAsync(
    c.pull(big, {
      signal: ac.signal,
      onProgress: (p) => {
        if (!cancelled && p.verifiedBytes > 4 * 1024 * 1024) {
          cancelled = true;
          ac.abort(new Error('shutting down'));
        }
      },
    }),
  );
  t.true(cancelled);
  t.true(isCabError(e, 'ERR_ABORTED'), String(e));
  const r = await dst.newBlobReader(big);
  t.false(r.isFinalized);
  t.true(r.size > 0 && r.size < 48 * 1024 * 1024, `kept ${r.size} bytes`);
  await r.close();
  t.is(getEventListeners(ac.signal, 'abort').length, before);
});
