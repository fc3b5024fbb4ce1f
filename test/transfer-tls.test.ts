import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BlobStore, CabError, connect, serve, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, putBlob } from './helpers/store.js';

/** A self-signed certificate for 127.0.0.1, made with the openssl command line. */
function selfSigned(dir: string): { cert: Buffer; key: Buffer } {
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], {
    stdio: 'ignore',
  });
  return { cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
}

test('wss: a server with a certificate and key, a client that trusts it pulls; one that does not is refused', async (t) => {
  const dir = tempDir(t);
  const tls = selfSigned(dir);
  const a = await BlobStore.open(path.join(dir, 'a'));
  const b = await BlobStore.open(path.join(dir, 'b'));
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const bytes = prngBytes('tls', 3_000_000);
  const name = await putBlob(a, bytes);
  const srv = await serve(a, { tokens: { tok: ['read'] }, tls });
  t.teardown(() => srv.close());
  t.true(srv.url.startsWith('wss://127.0.0.1:'));
  const e = await t.throwsAsync(connect(b, srv.url, { token: 'tok' }), { instanceOf: CabError });
  t.is(e!.code, 'ERR_CONNECTION'); // self-signed and not trusted
  const c = await connect(b, srv.url, { token: 'tok', ca: tls.cert });
  const st = await c.pull(name);
  await c.close();
  const r = await b.newBlobReader(name);
  t.is(toHex(r.hash!), toHex(st.hash));
  await r.close();
});
