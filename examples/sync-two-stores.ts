// Recipe: sync two stores over WebSocket. One serves, the other pulls what
// it lacks and pushes what the server lacks; every chunk and the blob root
// are verified on arrival. Run: node dist/examples/sync-two-stores.js [DIR]
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlobStore, connect, serve, toHex } from 'cabstore';

const dir = process.argv[2] ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-sync-')));
const laptop = await BlobStore.open(path.join(dir, 'laptop'));
const server = await BlobStore.open(path.join(dir, 'server'));

// A 4 MiB blob on the server, and an edited copy of it on the laptop.
const original = randomBytes(4 * 1024 * 1024);
const w = await server.newBlobWriter();
await w.appendBytes(original);
await w.close();

const edited = original.slice();
edited.set(new TextEncoder().encode('an edit in the middle'), 2_000_000);
const e = await laptop.newBlobWriter();
await e.appendBytes(edited);
await e.close();

// Serve with a token that may read and write; bind 127.0.0.1 (the default).
const srv = await serve(server, { tokens: { 'example-token': ['read', 'write'] } });
const client = await connect(laptop, srv.url, { token: 'example-token' });
try {
  // Pull: the laptop already holds most chunks (in its edited copy), so only the rest travel.
  const pulled = await client.pull(w.name);
  console.log(`pulled ${w.name}: ${pulled.receivedBytes} bytes received, ${pulled.reusedBytes} reused, root ${toHex(pulled.hash)}`);

  // Push the edited blob: the server sends back what it has, the laptop sends only the chunks around the edit.
  const pushed = await client.push(e.name);
  console.log(`pushed ${e.name}: ${pushed.received} bytes sent, ${pushed.reused} reused by the server`);
  console.log(`on the wire: ${client.wire.sent + client.wire.received} bytes for ${2 * original.length} bytes of blobs`);
} finally {
  await client.close();
  await srv.close();
  await laptop.close();
  await server.close();
}
