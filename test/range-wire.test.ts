// Bytes on the wire for a verified range read (issue 17): 1 MiB from the
// middle of a 256 MiB remote blob moves less than 1.2 MiB, handshake, stat
// and proof included (the bench reads 1 MiB of a 1 GiB blob the same way).
import test from 'ava';
import { connect, serve } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tcpProxy } from '../tools/proxy.js';
import { putBlob, tempStore } from './helpers/store.js';
import { MiB } from './helpers/transfer.js';

const TOKEN = 'wire-token';

test('1 MiB from the middle of a 256 MiB remote blob moves less than 1.2 MiB on the wire, aligned or not', async (t) => {
  const server = await tempStore(t);
  const size = 256 * MiB;
  const name = await putBlob(server, prngBytes('range wire', size));
  const srv = await serve(server, { tokens: { [TOKEN]: ['read'] } });
  t.teardown(() => srv.close());
  for (const at of [128 * MiB, 100 * MiB + 12345]) {
    const proxy = await tcpProxy(() => srv.port);
    t.teardown(() => proxy.close());
    const c = await connect(await tempStore(t), proxy.url, { token: TOKEN });
    const r = await c.openReader(name);
    const buf = Buffer.alloc(MiB);
    t.is(await r.readAt(buf, at), MiB);
    const local = await server.newBlobReader(name);
    const want = Buffer.alloc(MiB);
    await local.readFully(want, at);
    await local.close();
    t.true(buf.equals(want));
    await c.close();
    const moved = proxy.totalDown + proxy.totalUp;
    t.log(`1 MiB at ${at}: ${moved} bytes on the wire (${(moved / MiB).toFixed(3)} MiB), ${r.fetched.proofHashes} proof hashes`);
    t.true(moved < 1.2 * MiB, `${moved} bytes`);
  }
});
