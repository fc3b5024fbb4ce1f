// A lying peer for the hostile-*.test.ts reviews: a real server on `src`,
// a WebSocket proxy in front of it whose hook rewrites what the server says,
// and a client on a fresh store connected through it; all closed when the
// test ends.
import type { ExecutionContext } from 'ava';
import { connect, isCabError, serve, type BlobStore, type CabClient } from '../../src/index.js';
import { wsProxy, type FrameHook } from './proxies.js';
import { tempStore } from './store.js';

export async function throughLiar(t: ExecutionContext, src: BlobStore, toClient: FrameHook): Promise<{ client: CabClient; dst: BlobStore; url: string }> {
  const srv = await serve(src, { tokens: { ro: ['read'] } });
  t.teardown(() => srv.close());
  const liar = await wsProxy(srv.url, { toClient });
  t.teardown(() => liar.close());
  const dst = await tempStore(t);
  const client = await connect(dst, liar.url, { token: 'ro' });
  t.teardown(() => client.close());
  return { client, dst, url: liar.url };
}

/** How `p` settles within `ms`: 'resolved', its CabError code (else `not a CabError: ...`), or 'pending'. */
export async function settle(p: Promise<unknown>, ms: number): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('pending'), ms)));
  try {
    return await Promise.race([p.then(() => 'resolved', (e: unknown) => (isCabError(e) ? e.code : `not a CabError: ${String(e)}`)), late]);
  } finally {
    clearTimeout(timer);
  }
}
