// A server and a client on 127.0.0.1 for tests, closed when the test ends.
import type { ExecutionContext } from 'ava';
import { connect, serve, type BlobStore, type CabClient, type CabServer } from '../../src/index.js';

export const PEER_TOKEN = 'peer-token';

export async function servePeer(t: ExecutionContext, store: BlobStore): Promise<CabServer> {
  const srv = await serve(store, { tokens: { [PEER_TOKEN]: ['read', 'write'] } });
  t.teardown(() => srv.close());
  return srv;
}

export async function connectPeer(t: ExecutionContext, store: BlobStore, url: string): Promise<CabClient> {
  const c = await connect(store, url, { token: PEER_TOKEN });
  t.teardown(() => c.close());
  return c;
}
