// Recipe: pull one blob from several servers at once. Three servers hold
// the same blob; one of them has damaged bytes on its disk, so what it
// sends fails its check and it is dropped while the others finish the
// pull. The laptop finds the servers in the blob's signpost, each with the
// name of its token (never the token). Run: node dist/examples/many-sources.js [DIR]
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlobStore, fetchBlob, serve, toHex, type CabServer } from 'cabstore';

const dir = process.argv[2] ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-many-')));
const bytes = randomBytes(8 * 1024 * 1024);
const stores: BlobStore[] = [];
const servers: CabServer[] = [];
let name: string | undefined;
for (const host of ['alpha', 'beta', 'gamma']) {
  const s = await BlobStore.open(path.join(dir, host));
  const w = await s.newBlobWriter(name); // the same blob name on each: they hold the same blob
  await w.appendBytes(bytes);
  await w.close();
  name = w.name;
  stores.push(s);
  servers.push(await serve(s, { tokens: { [`token-of-${host}`]: ['read'] } }));
}

// gamma's disk goes bad: a byte in every 16 KiB of its fragment changes. It still announces the right root.
const frag = (await fs.readdir(path.join(dir, 'gamma', 'cas'), { recursive: true, withFileTypes: true })).find((f) => f.isFile())!;
const fh = await fs.open(path.join(frag.parentPath, frag.name), 'r+');
for (let at = 100; at < bytes.length; at += 16 * 1024) await fh.write(Buffer.from([bytes[at]! ^ 0xff]), 0, 1, at);
await fh.close();

// The laptop knows where the blob is (its signpost) and keeps its tokens elsewhere, by name.
const laptop = await BlobStore.open(path.join(dir, 'laptop'));
const hosts = ['alpha', 'beta', 'gamma'];
await laptop.setSignpost(name!, {
  locations: Object.fromEntries(servers.map((srv, i) => [srv.url, { whenSeen: new Date(), isProxy: false, isServer: true, tokenName: hosts[i]! }])),
  sgIds: [],
  fetchAttempts: 0,
});
const tokens = (tokenName: string) => `token-of-${tokenName}`; // e.g. from a keychain
try {
  const stats = await fetchBlob(laptop, name!, { tokens });
  console.log(`pulled ${name}: root ${toHex(stats.hash)}, ${stats.receivedBytes} bytes received for ${stats.neededBytes} lacking`);
  for (const s of stats.sources) {
    const host = hosts[servers.findIndex((srv) => srv.url === s.source)];
    console.log(`  ${host}: ${s.dropped ? `dropped, ${s.dropped.code}` : `${s.chunks} chunks, ${s.receivedBytes} bytes`}`);
  }
  const r = await laptop.newBlobReader(name!);
  const got = Buffer.alloc(r.size);
  await r.readAt(got, 0);
  await r.close();
  console.log(`the laptop's copy is the blob: ${got.equals(bytes)}`);
} finally {
  for (const srv of servers) await srv.close();
  for (const s of [...stores, laptop]) await s.close();
}
